//! The repayment flow between the wire and the world: charging through a provider
//! and recording its answer, hearing notifications, asking providers about payments
//! left PROCESSING, and telling billing-svc what happened.

use base64::{Engine as _, engine::general_purpose::STANDARD};
use billpay_contracts::{billing::v1::ApplyRepaymentRequest, common::v1::RepaymentTarget};
use prost::Message as _;
use service_kit::failpoint::failpoint;
use tonic::Status;

use crate::{
    billing::BillingClient,
    domain::payment::{Instrument, PaymentMethod, PaymentStatus},
    providers::{
        ChargeOutcome, ChargeRequest, NotificationError, NotifiedStatus, Provider, Providers,
        QueryOutcome, RefundOutcome,
    },
    storage::{OutboxKind, Payment, Refund, RefundFailure, RefundStatus, StorageError, Store},
};

/// The id under which billing applies again the money of a payment whose refund the
/// provider refused after billing had reversed it.
pub fn reinstated_id(payment_id: &str) -> String {
    format!("{payment_id}-reinstated")
}

/// A refusal that no retry can change (the request itself is wrong for billing):
/// such an outbox row is a dead letter, such a reversal fails the refund.
pub fn is_permanent_refusal(status: &Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::FailedPrecondition
            | tonic::Code::AlreadyExists
            | tonic::Code::InvalidArgument
            | tonic::Code::OutOfRange
    )
}

/// The ErrorInfo reason billing gave, or the code's name.
pub fn refusal_reason(status: &Status) -> String {
    use tonic_types::StatusExt as _;
    status
        .get_details_error_info()
        .map(|info| info.reason)
        .unwrap_or_else(|| format!("{:?}", status.code()))
}

/// Why telling billing-svc failed; the outbox tries again.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("billing-svc refused or is unreachable: {0}")]
    Billing(#[from] Status),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("stored payment {0} is missing or its target unreadable")]
    BadPayment(String),
}

impl DeliveryError {
    /// Whether retrying cannot help: billing refused the request itself, or the
    /// stored payment cannot make one.
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::Billing(status) => is_permanent_refusal(status),
            Self::BadPayment(_) => true,
            Self::Storage(_) => false,
        }
    }
}

/// What became of a provider's notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotificationResult {
    /// It moved this payment to SUCCEEDED: billing is to be told.
    Succeeded(String),
    /// It moved the payment to FAILED.
    Failed,
    /// Duplicate, stale, or about a payment already settled: nothing to do.
    Ignored,
    BadSignature,
    Malformed,
    UnknownPayment,
}

/// The target as stored: protobuf bytes in base64, forwarded to billing as sent.
pub fn encode_target(target: &RepaymentTarget) -> String {
    STANDARD.encode(target.encode_to_vec())
}

pub fn decode_target(stored: &str) -> Option<RepaymentTarget> {
    let bytes = STANDARD.decode(stored).ok()?;
    RepaymentTarget::decode(bytes.as_slice()).ok()
}

#[derive(Debug)]
pub struct PaymentFlow {
    store: Store,
    providers: Providers,
    billing: BillingClient,
    notify_base_url: String,
}

impl PaymentFlow {
    pub fn new(
        store: Store,
        providers: Providers,
        billing: BillingClient,
        notify_base_url: String,
    ) -> Self {
        Self {
            store,
            providers,
            billing,
            notify_base_url,
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn billing(&self) -> &BillingClient {
        &self.billing
    }

    /// Charges a stored PROCESSING payment, with its id as the provider's idempotency
    /// key, and records the answer: the payment as this charge made it SUCCEEDED, or
    /// `None` when it did not (declined, pending, no answer, or moved meanwhile).
    pub async fn charge(
        &self,
        payment: &Payment,
        instrument: &Instrument,
    ) -> Result<Option<Payment>, StorageError> {
        let notify_url = format!(
            "{}/notify/{}",
            self.notify_base_url,
            payment.method.provider_name()
        );
        let request = ChargeRequest {
            payment_id: &payment.payment_id,
            amount: payment.amount,
            instrument,
            notify_url: &notify_url,
        };
        let asked = std::time::Instant::now();
        let outcome = self
            .providers
            .for_method(payment.method)
            .charge(&request)
            .await;
        record_charge(payment, &outcome, asked.elapsed());
        failpoint("payment-after-provider-answered");
        // One line per charge: money moved (or not) is what an operator looks for.
        tracing::info!(
            payment_id = %payment.payment_id,
            method = payment.method.as_str(),
            amount = %payment.amount,
            last4 = %payment.instrument_last4,
            outcome = outcome_label(&outcome),
            "charge answered"
        );
        match outcome {
            ChargeOutcome::Succeeded { provider_ref } => {
                self.store
                    .record_success(&payment.payment_id, &provider_ref)
                    .await
            }
            ChargeOutcome::Declined { code, message } => {
                self.store
                    .record_failure(&payment.payment_id, &code, &message)
                    .await?;
                Ok(None)
            }
            ChargeOutcome::Pending { provider_ref } => {
                self.store
                    .record_pending(&payment.payment_id, &provider_ref)
                    .await?;
                Ok(None)
            }
            // No explicit answer: the payment stays PROCESSING for the reconciler.
            ChargeOutcome::Unknown { .. } => Ok(None),
        }
    }

    /// The fast path after a charge: tell billing at once, so a synchronous success
    /// answers with the bill already PAID; if billing is down the outbox delivers it
    /// later. `succeeded` is the payment as the charge made it SUCCEEDED (`None`: it
    /// is read). Answers the payment as this last wrote or read it.
    pub async fn apply_now_if_succeeded(
        &self,
        succeeded: Option<Payment>,
        payment_id: &str,
        request_id: Option<&str>,
    ) -> Result<Option<Payment>, StorageError> {
        let payment = match succeeded {
            Some(payment) => payment,
            None => match self.store.payment(payment_id).await? {
                Some(payment) => payment,
                None => return Ok(None),
            },
        };
        if payment.status != PaymentStatus::Succeeded || payment.applied {
            return Ok(Some(payment));
        }
        match self
            .deliver_payment(&payment, OutboxKind::Apply, request_id)
            .await
        {
            Ok(applied) => Ok(applied),
            Err(error) => {
                tracing::warn!(%error, "billing not told yet; the outbox will deliver");
                Ok(Some(payment))
            }
        }
    }

    /// Tells billing-svc about `payment_id` (apply or reverse) and marks the outbox row
    /// delivered. Safe to repeat: billing is idempotent on the payment id. An APPLY
    /// answers the payment as it is once marked applied.
    pub async fn deliver(
        &self,
        payment_id: &str,
        kind: OutboxKind,
        request_id: Option<&str>,
    ) -> Result<Option<Payment>, DeliveryError> {
        let payment = self
            .store
            .payment(payment_id)
            .await?
            .ok_or_else(|| DeliveryError::BadPayment(payment_id.to_owned()))?;
        self.deliver_payment(&payment, kind, request_id).await
    }

    /// [`PaymentFlow::deliver`] for a payment the caller has just read.
    pub async fn deliver_payment(
        &self,
        payment: &Payment,
        kind: OutboxKind,
        request_id: Option<&str>,
    ) -> Result<Option<Payment>, DeliveryError> {
        let payment_id = payment.payment_id.as_str();
        match kind {
            OutboxKind::Apply => {
                let target = decode_target(&payment.target)
                    .ok_or_else(|| DeliveryError::BadPayment(payment_id.to_owned()))?;
                let request = ApplyRepaymentRequest {
                    payment_id: payment.payment_id.clone(),
                    account_id: payment.account_id.clone(),
                    amount: Some(billpay_contracts::common::v1::Money::new(
                        payment.amount.currency().code(),
                        payment.amount.to_string(),
                    )),
                    target: Some(target),
                };
                self.billing.apply(request, request_id).await?;
            }
            OutboxKind::Reverse => {
                self.billing.reverse(payment_id, request_id).await?;
            }
        }
        failpoint("payment-before-outbox-acknowledged");
        Ok(self.store.outbox_delivered(payment_id, kind).await?)
    }

    /// Verifies and acts on a notification from `method`'s provider.
    pub async fn on_notification(
        &self,
        method: PaymentMethod,
        body: &[u8],
        signature: Option<&str>,
    ) -> Result<NotificationResult, StorageError> {
        let notification = match self
            .providers
            .for_method(method)
            .verify_notification(body, signature)
        {
            Ok(notification) => notification,
            Err(NotificationError::BadSignature) => return Ok(NotificationResult::BadSignature),
            Err(NotificationError::Malformed) => return Ok(NotificationResult::Malformed),
        };
        let Some(payment) = self.store.payment(&notification.payment_id).await? else {
            return Ok(NotificationResult::UnknownPayment);
        };
        if payment.method != method || notification.amount_minor != payment.amount.minor() {
            tracing::warn!(payment_id = %payment.payment_id, "notification does not match the payment; ignored");
            return Ok(NotificationResult::Ignored);
        }
        let result = match notification.status {
            NotifiedStatus::Succeeded => {
                if self
                    .store
                    .record_success(&payment.payment_id, &notification.provider_ref)
                    .await?
                    .is_some()
                {
                    NotificationResult::Succeeded(payment.payment_id.clone())
                } else {
                    NotificationResult::Ignored
                }
            }
            NotifiedStatus::Declined { code } => {
                let message = format!("the provider declined the payment: {code}");
                if self
                    .store
                    .record_failure(&payment.payment_id, &code, &message)
                    .await?
                {
                    NotificationResult::Failed
                } else {
                    NotificationResult::Ignored
                }
            }
            NotifiedStatus::Other(_) => NotificationResult::Ignored,
        };
        tracing::debug!(
            payment_id = %payment.payment_id,
            sequence = notification.sequence,
            result = ?result,
            "notification"
        );
        Ok(result)
    }

    /// Drives `refund` as far as it goes now: billing first (it reverses the payment
    /// or refuses, and then nothing moves), then the provider (idempotent on the
    /// refund id), and, should the provider refuse after billing reversed, billing
    /// again to take the money back. Each step is recorded before the next, so the
    /// reconciler finishes a refund whose answer was lost or whose process died.
    /// Returns the refund as it now stands.
    pub async fn drive_refund(
        &self,
        refund: Refund,
        request_id: Option<&str>,
    ) -> Result<Refund, StorageError> {
        let mut refund = refund;
        // Each pass moves the refund one step or stops; four steps reach a final state.
        for _ in 0..4 {
            if refund.status.is_final() {
                break;
            }
            let Some(payment) = self.store.payment(&refund.payment_id).await? else {
                return Err(StorageError::Corrupt(
                    "a refund's payment is missing".into(),
                ));
            };
            if !self.refund_step(&refund, &payment, request_id).await? {
                break;
            }
            refund = self
                .store
                .refund_of_payment(&refund.payment_id)
                .await?
                .ok_or_else(|| StorageError::Corrupt("a refund vanished".into()))?;
        }
        Ok(refund)
    }

    /// One step of a refund; false when it must wait (an answer is missing).
    async fn refund_step(
        &self,
        refund: &Refund,
        payment: &Payment,
        request_id: Option<&str>,
    ) -> Result<bool, StorageError> {
        match refund.status {
            RefundStatus::Requested => {
                match self.billing.reverse(&payment.payment_id, request_id).await {
                    Ok(_) => {
                        failpoint("refund-after-billing-reversed");
                        self.store
                            .refund_step(
                                &refund.refund_id,
                                RefundStatus::Requested,
                                RefundStatus::Sent,
                                None,
                            )
                            .await?;
                        Ok(true)
                    }
                    Err(status) if is_permanent_refusal(&status) => {
                        tracing::warn!(refund_id = %refund.refund_id, %status, "billing refused the reversal: nothing refunded");
                        let failure = RefundFailure {
                            code: &refusal_reason(&status),
                            message: status.message(),
                        };
                        self.store
                            .refund_step(
                                &refund.refund_id,
                                RefundStatus::Requested,
                                RefundStatus::Failed,
                                Some(failure),
                            )
                            .await?;
                        Ok(true)
                    }
                    Err(status) => {
                        tracing::warn!(refund_id = %refund.refund_id, %status, "billing not reached for the reversal; will retry");
                        Ok(false)
                    }
                }
            }
            RefundStatus::Sent => {
                let outcome = self
                    .providers
                    .for_method(payment.method)
                    .refund(&payment.payment_id, &refund.refund_id, payment.amount)
                    .await;
                tracing::info!(payment_id = %payment.payment_id, refund_id = %refund.refund_id, %outcome, "refund answered");
                match outcome {
                    RefundOutcome::Refunded => {
                        failpoint("refund-after-provider-refunded");
                        self.store.record_refunded(refund).await?;
                        Ok(true)
                    }
                    RefundOutcome::Refused { reason } => {
                        let failure = RefundFailure {
                            code: "PROVIDER_REFUSED",
                            message: &reason,
                        };
                        self.store
                            .refund_step(
                                &refund.refund_id,
                                RefundStatus::Sent,
                                RefundStatus::Reinstating,
                                Some(failure),
                            )
                            .await?;
                        Ok(true)
                    }
                    RefundOutcome::Unknown { .. } => Ok(false),
                }
            }
            RefundStatus::Reinstating => {
                // Billing reversed the payment but the provider kept the money:
                // billing applies it again, idempotently, under a derived id.
                let Some(target) = decode_target(&payment.target) else {
                    return Err(StorageError::Corrupt(
                        "a payment's target is unreadable".into(),
                    ));
                };
                let request = ApplyRepaymentRequest {
                    payment_id: reinstated_id(&payment.payment_id),
                    account_id: payment.account_id.clone(),
                    amount: Some(billpay_contracts::common::v1::Money::new(
                        payment.amount.currency().code(),
                        payment.amount.to_string(),
                    )),
                    target: Some(target),
                };
                match self.billing.apply(request, request_id).await {
                    Ok(_) => {
                        self.store
                            .refund_step(
                                &refund.refund_id,
                                RefundStatus::Reinstating,
                                RefundStatus::Failed,
                                None,
                            )
                            .await?;
                        Ok(true)
                    }
                    Err(status) => {
                        tracing::warn!(refund_id = %refund.refund_id, %status, "billing has not re-applied a refused refund; will retry");
                        Ok(false)
                    }
                }
            }
            RefundStatus::Refunded | RefundStatus::Failed => Ok(false),
        }
    }

    /// Asks the provider about a payment left PROCESSING and records an explicit
    /// answer; "no such charge" is one (nothing was taken), silence is not.
    pub async fn reconcile(&self, payment: &Payment) -> Result<(), StorageError> {
        let answer = self
            .providers
            .for_method(payment.method)
            .query(&payment.payment_id)
            .await;
        tracing::info!(payment_id = %payment.payment_id, %answer, "reconciling");
        match answer {
            QueryOutcome::Succeeded { provider_ref } => {
                self.store
                    .record_success(&payment.payment_id, &provider_ref)
                    .await?;
                Ok(())
            }
            QueryOutcome::Declined { code, message } => {
                self.store
                    .record_failure(&payment.payment_id, &code, &message)
                    .await?;
                Ok(())
            }
            QueryOutcome::NotFound => {
                let message = "the provider has no charge for this payment; nothing was taken";
                self.store
                    .record_failure(&payment.payment_id, "NOT_CHARGED", message)
                    .await?;
                Ok(())
            }
            QueryOutcome::Unknown { .. } => Ok(()),
        }
    }
}

/// A charge's answer in one word, for logs and metric labels.
fn outcome_label(outcome: &ChargeOutcome) -> &'static str {
    match outcome {
        ChargeOutcome::Succeeded { .. } => "succeeded",
        ChargeOutcome::Declined { .. } => "declined",
        ChargeOutcome::Pending { .. } => "pending",
        ChargeOutcome::Unknown { .. } => "unknown",
    }
}

/// `payment_charges_total{method, outcome}` and
/// `provider_call_duration_seconds{provider, operation, outcome}` for one charge.
fn record_charge(payment: &Payment, outcome: &ChargeOutcome, elapsed: std::time::Duration) {
    let outcome = outcome_label(outcome);
    metrics::counter!(
        "payment_charges_total",
        "method" => payment.method.as_str(),
        "outcome" => outcome
    )
    .increment(1);
    metrics::histogram!(
        "provider_call_duration_seconds",
        "provider" => payment.method.provider_name(),
        "operation" => "charge",
        "outcome" => outcome
    )
    .record(elapsed.as_secs_f64());
}
