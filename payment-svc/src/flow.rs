//! The repayment flow between the wire and the world: charging through a provider
//! and recording its answer, hearing notifications, asking providers about payments
//! left PROCESSING, and telling billing-svc what happened.

use base64::{Engine as _, engine::general_purpose::STANDARD};
use billpay_contracts::{billing::v1::ApplyRepaymentRequest, common::v1::RepaymentTarget};
use prost::Message as _;
use tonic::Status;

use crate::{
    billing::BillingClient,
    domain::payment::{Instrument, PaymentMethod},
    providers::{
        ChargeOutcome, ChargeRequest, NotificationError, NotifiedStatus, Provider, Providers,
        QueryOutcome, RefundOutcome,
    },
    storage::{OutboxKind, Payment, StorageError, Store},
};

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
    /// key, and records the answer.
    pub async fn charge(
        &self,
        payment: &Payment,
        instrument: &Instrument,
    ) -> Result<(), StorageError> {
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
        let outcome = self
            .providers
            .for_method(payment.method)
            .charge(&request)
            .await;
        tracing::debug!(
            payment_id = %payment.payment_id,
            method = payment.method.as_str(),
            last4 = %payment.instrument_last4,
            outcome = ?outcome,
            "charge answered"
        );
        match outcome {
            ChargeOutcome::Succeeded { provider_ref } => {
                self.succeeded(&payment.payment_id, &provider_ref).await
            }
            ChargeOutcome::Declined { code, message } => {
                self.store
                    .record_failure(&payment.payment_id, &code, &message)
                    .await?;
                Ok(())
            }
            ChargeOutcome::Pending { provider_ref } => {
                self.store
                    .record_pending(&payment.payment_id, &provider_ref)
                    .await
            }
            // No explicit answer: the payment stays PROCESSING for the reconciler.
            ChargeOutcome::Unknown { .. } => Ok(()),
        }
    }

    async fn succeeded(&self, payment_id: &str, provider_ref: &str) -> Result<(), StorageError> {
        self.store.record_success(payment_id, provider_ref).await?;
        Ok(())
    }

    /// Tells billing-svc about `payment_id` (apply or reverse) and marks the outbox row
    /// delivered. Safe to repeat: billing is idempotent on the payment id.
    pub async fn deliver(
        &self,
        payment_id: &str,
        kind: OutboxKind,
        request_id: Option<&str>,
    ) -> Result<(), DeliveryError> {
        let payment = self
            .store
            .payment(payment_id)
            .await?
            .ok_or_else(|| DeliveryError::BadPayment(payment_id.to_owned()))?;
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
        self.store.outbox_delivered(payment_id, kind).await?;
        Ok(())
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

    /// Refunds a SUCCEEDED payment in full under `refund_id` (the provider's
    /// idempotency key) and, once the provider confirms, records REFUNDED with a
    /// REVERSE outbox row.
    pub async fn refund(
        &self,
        payment: &Payment,
        refund_id: &str,
    ) -> Result<RefundOutcome, StorageError> {
        let outcome = self
            .providers
            .for_method(payment.method)
            .refund(&payment.payment_id, refund_id, payment.amount)
            .await;
        tracing::info!(payment_id = %payment.payment_id, refund_id, outcome = ?outcome, "refund answered");
        if outcome == RefundOutcome::Refunded {
            self.store.record_refund(&payment.payment_id).await?;
        }
        Ok(outcome)
    }

    /// Asks the provider about a payment left PROCESSING and records an explicit
    /// answer; "no such charge" is one (nothing was taken), silence is not.
    pub async fn reconcile(&self, payment: &Payment) -> Result<(), StorageError> {
        let answer = self
            .providers
            .for_method(payment.method)
            .query(&payment.payment_id)
            .await;
        tracing::info!(payment_id = %payment.payment_id, answer = ?answer, "reconciling");
        match answer {
            QueryOutcome::Succeeded { provider_ref } => {
                self.succeeded(&payment.payment_id, &provider_ref).await
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
