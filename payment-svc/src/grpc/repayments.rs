//! CreateRepayment, GetPayment, ListPayments and RefundPayment.

use billpay_contracts::payment::v1 as wire;
use prost::Message as _;
use service_kit::{
    audit::admit_account,
    auth::{Caller, Role},
    deadline::Deadline,
    errors::{AllChecked as _, FieldViolations, invalid_field, refusal},
    failpoint::failpoint,
    telemetry::RequestId,
    wire::{decode_page_token, encode_page_token, money_field, page_size},
};
use std::time::Duration;

use tokio::time::Instant;
use tonic::{Code, Request, Status};
use tracing::Instrument as _;

use super::{
    PaymentApi,
    convert::{checked_method, payment_to_wire},
};
use crate::{
    domain::payment::{Instrument, PaymentStatus, parse_idempotency_key, request_fingerprint},
    flow::encode_target,
    storage::{InsertOutcome, NewPayment, Payment, Refund, RefundStatus, StorageError},
};

/// Kept back from the call's deadline to read the payment and answer.
const ANSWER_RESERVE: Duration = Duration::from_millis(150);
/// Below this much time left, a repayment is refused before anything is stored.
const CHARGE_TIME_MIN: Duration = Duration::from_millis(400);
/// The budget of a call that arrives without a deadline (outside the server's layer).
const CALL_TIME_DEFAULT: Duration = Duration::from_secs(10);

/// The longest account or payment id accepted.
const ID_BYTES_MAX: usize = 64;

fn key_reused() -> Status {
    refusal(
        Code::AlreadyExists,
        "IDEMPOTENCY_KEY_REUSED",
        "this idempotency_key was used for a different request",
    )
}

/// The namespace of a caller's idempotency keys: a customer's account (so two
/// customers never collide, whatever their tokens' subject), a service's subject.
fn idempotency_scope(caller: &Caller, account_id: &str) -> String {
    match caller.role {
        Role::Customer => format!("customer-account:{account_id}"),
        Role::Service | Role::Operator => caller.subject.clone(),
    }
}

fn check_id(violations: &mut FieldViolations, field: &str, id: &str) {
    if id.is_empty() || id.len() > ID_BYTES_MAX {
        violations.add(field, format!("must be 1 to {ID_BYTES_MAX} characters"));
    }
}

impl PaymentApi {
    pub(super) async fn handle_create_repayment(
        &self,
        request: Request<wire::CreateRepaymentRequest>,
    ) -> Result<wire::CreateRepaymentResponse, Status> {
        let caller = Caller::of(&request)?.clone();
        let request_id = request
            .extensions()
            .get::<RequestId>()
            .map(|id| id.0.clone());
        let deadline = request
            .extensions()
            .get::<Deadline>()
            .copied()
            .unwrap_or_else(|| Deadline(Instant::now() + CALL_TIME_DEFAULT));
        let message = request.into_inner();
        let mut violations = FieldViolations::new();
        let key = violations.check(
            "idempotency_key",
            parse_idempotency_key(&message.idempotency_key),
        );
        check_id(&mut violations, "account_id", &message.account_id);
        let target = match message
            .target
            .clone()
            .filter(|target| target.kind.is_some())
        {
            Some(target) => Ok(target),
            None => Err(violations.add(
                "target",
                "is required: one of bills, all_due, plan_payoff, amount",
            )),
        };
        let expected = money_field(
            &mut violations,
            "expected_amount",
            message.expected_amount.as_ref(),
        );
        if expected.is_ok_and(|amount| amount.is_zero()) {
            violations.add("expected_amount", "must be greater than zero");
        }
        let method = checked_method(&mut violations, message.method);
        let instrument = violations.check("instrument", Instrument::parse(&message.instrument));
        let (key, target, expected, method, instrument) =
            violations.finish((key, target, expected, method, instrument).all())?;
        caller.check_account(&message.account_id)?;
        tracing::Span::current().record("account_id", message.account_id.as_str());

        let fingerprint = request_fingerprint(
            &self.fingerprint_key,
            &message.account_id,
            &target.encode_to_vec(),
            expected,
            method,
            &instrument,
        );
        // Whose keys these are: a customer's are their account's (every customer token
        // of one app may share a subject), a service's its own.
        let key_scope = idempotency_scope(&caller, &message.account_id);
        let store = self.flow.store();
        if let Some(existing) = store.payment_by_key(&key_scope, key).await? {
            return self.replay(existing, &fingerprint);
        }

        // Check the amount before any money moves (the customer confirmed it), with
        // a third of the time left, so the charge keeps the rest.
        let quoted = self
            .flow
            .billing()
            .quote(
                &message.account_id,
                target.clone(),
                request_id.as_deref(),
                deadline.remaining() / 3,
            )
            .await
            .map_err(billing_refusal)
            .and_then(|quote| {
                let quoted = quote.amount.map(|money| money.amount).unwrap_or_default();
                if quoted == expected.to_string() {
                    Ok(())
                } else {
                    Err(refusal(
                        Code::FailedPrecondition,
                        "AMOUNT_CHANGED",
                        format!(
                            "the amount due is now {quoted}, not {expected}; confirm the new amount"
                        ),
                    ))
                }
            });
        if let Err(refused) = quoted {
            // A concurrent duplicate of this key may have paid the target meanwhile
            // (so it now owes nothing): the same key still gets that payment.
            return match store.payment_by_key(&key_scope, key).await? {
                Some(existing) => self.replay(existing, &fingerprint),
                None => Err(refused),
            };
        }

        if deadline.remaining() < CHARGE_TIME_MIN {
            return Err(Status::deadline_exceeded(
                "too little of the call's deadline is left to pay; nothing was charged",
            ));
        }
        let stored_target = encode_target(&target);
        let new = NewPayment {
            caller: &key_scope,
            idempotency_key: key,
            request_fingerprint: &fingerprint,
            account_id: &message.account_id,
            target: &stored_target,
            amount: expected,
            method,
            instrument_last4: &instrument.last4(),
        };
        let payment = match store.insert_payment(&new).await? {
            InsertOutcome::Inserted(payment) => payment,
            // A concurrent duplicate stored it first; it charges, this one reports.
            InsertOutcome::Existing(existing) => return self.replay(existing, &fingerprint),
        };
        tracing::Span::current().record("payment_id", payment.payment_id.as_str());
        failpoint("payment-after-processing-stored");
        // From here money may move: whatever happens, the answer is the payment in
        // the state it reached, never an error. The charge and the inline apply run
        // on their own task, so a caller's deadline cuts the wait, not the work.
        let work = tokio::spawn({
            let (api, payment) = (self.clone(), payment.clone());
            async move {
                let succeeded = api.flow.charge(&payment, &instrument).await?;
                // A failed read here only costs the answer's row: it is read again.
                Ok::<_, StorageError>(
                    api.flow
                        .apply_now_if_succeeded(
                            succeeded,
                            &payment.payment_id,
                            request_id.as_deref(),
                        )
                        .await
                        .ok()
                        .flatten(),
                )
            }
            .instrument(tracing::Span::current())
        });
        let answer_by = deadline.0.checked_sub(ANSWER_RESERVE).unwrap_or(deadline.0);
        let last_written = match tokio::time::timeout_at(answer_by, work).await {
            Ok(Ok(Ok(last_written))) => last_written,
            Ok(Ok(Err(error))) => {
                tracing::error!(%error, "recording the charge failed; the reconciler resolves it");
                None
            }
            Ok(Err(error)) => {
                tracing::error!(%error, "the charge task failed");
                None
            }
            Err(_) => {
                tracing::warn!(
                    "the deadline is near: answering the payment as it stands; the work goes on"
                );
                None
            }
        };
        // The row the work last wrote or read is the payment as it stands; read it
        // only when the work did not finish with one.
        let payment = match last_written {
            Some(payment) => payment,
            None => self.reload(&payment.payment_id).await?,
        };
        Ok(wire::CreateRepaymentResponse {
            payment: Some(payment_to_wire(&payment)),
        })
    }

    fn replay(
        &self,
        existing: Payment,
        fingerprint: &str,
    ) -> Result<wire::CreateRepaymentResponse, Status> {
        if existing.request_fingerprint != fingerprint {
            return Err(key_reused());
        }
        Ok(wire::CreateRepaymentResponse {
            payment: Some(payment_to_wire(&existing)),
        })
    }

    async fn reload(&self, payment_id: &str) -> Result<Payment, Status> {
        self.flow
            .store()
            .payment(payment_id)
            .await?
            .ok_or_else(|| Status::not_found(format!("no payment {payment_id}")))
    }

    /// A payment the caller may see (customers their own; operators audited).
    async fn visible_payment<T>(
        &self,
        request: &Request<T>,
        payment_id: &str,
        rpc: &str,
    ) -> Result<Payment, Status> {
        let caller = Caller::of(request)?;
        if payment_id.is_empty() || payment_id.len() > ID_BYTES_MAX {
            return Err(invalid_field(
                "payment_id",
                format!("must be 1 to {ID_BYTES_MAX} characters"),
            ));
        }
        let payment = self.reload(payment_id).await?;
        admit_account(self.flow.store().db(), caller, rpc, &payment.account_id).await?;
        tracing::Span::current().record("payment_id", payment_id);
        Ok(payment)
    }

    pub(super) async fn handle_get_payment(
        &self,
        request: Request<wire::GetPaymentRequest>,
    ) -> Result<wire::GetPaymentResponse, Status> {
        let payment = self
            .visible_payment(&request, &request.get_ref().payment_id, "GetPayment")
            .await?;
        Ok(wire::GetPaymentResponse {
            payment: Some(payment_to_wire(&payment)),
        })
    }

    pub(super) async fn handle_list_payments(
        &self,
        request: Request<wire::ListPaymentsRequest>,
    ) -> Result<wire::ListPaymentsResponse, Status> {
        const TOKEN_KIND: &str = "payments";
        let caller = Caller::of(&request)?;
        let message = request.get_ref();
        let mut violations = FieldViolations::new();
        check_id(&mut violations, "account_id", &message.account_id);
        violations.into_result()?;
        let limit = page_size(message.page_size)?;
        let after = decode_page_token(TOKEN_KIND, &message.page_token)?;
        admit_account(
            self.flow.store().db(),
            caller,
            "ListPayments",
            &message.account_id,
        )
        .await?;
        let payments = self
            .flow
            .store()
            .payments_page(&message.account_id, after.as_deref(), limit)
            .await?;
        let next_page_token = match payments.last() {
            Some(last) if payments.len() == limit as usize => {
                encode_page_token(TOKEN_KIND, &last.payment_id)
            }
            _ => String::new(),
        };
        Ok(wire::ListPaymentsResponse {
            payments: payments.iter().map(payment_to_wire).collect(),
            next_page_token,
        })
    }

    pub(super) async fn handle_refund_payment(
        &self,
        request: Request<wire::RefundPaymentRequest>,
    ) -> Result<wire::RefundPaymentResponse, Status> {
        let caller = Caller::of(&request)?.clone();
        let request_id = request
            .extensions()
            .get::<RequestId>()
            .map(|id| id.0.clone());
        let message = request.get_ref();
        let mut violations = FieldViolations::new();
        check_id(&mut violations, "payment_id", &message.payment_id);
        let key = violations.check(
            "idempotency_key",
            parse_idempotency_key(&message.idempotency_key),
        );
        if message.reason.len() > 500 {
            violations.add("reason", "must be at most 500 bytes");
        }
        let key = violations.finish(key)?;
        let payment = self.reload(&message.payment_id).await?;
        tracing::Span::current().record("payment_id", payment.payment_id.as_str());
        if !matches!(
            payment.status,
            PaymentStatus::Succeeded | PaymentStatus::Refunded
        ) {
            return Err(refusal(
                Code::FailedPrecondition,
                "NOT_REFUNDABLE",
                format!(
                    "only a SUCCEEDED payment can be refunded; this one is {}",
                    payment.status.as_str()
                ),
            ));
        }
        let store = self.flow.store();
        if payment.status == PaymentStatus::Succeeded
            && !payment.applied
            && store
                .refund_of_payment(&payment.payment_id)
                .await?
                .is_none()
        {
            // Billing reverses only what it applied; the outbox applies it shortly.
            return Err(service_kit::errors::unavailable(
                "billing-svc has not applied this payment yet; retry shortly",
            ));
        }
        let refund = store
            .insert_refund(
                &payment.payment_id,
                &payment.account_id,
                &caller.subject,
                key,
                &message.reason,
            )
            .await?;
        if refund.payment_id != payment.payment_id
            || refund.caller != caller.subject
            || refund.idempotency_key != key
        {
            return Err(key_reused());
        }
        let refund = self
            .flow
            .drive_refund(refund, request_id.as_deref())
            .await?;
        let refund_status = match refund.status {
            RefundStatus::Requested => wire::RefundStatus::Requested,
            RefundStatus::Sent => wire::RefundStatus::Sent,
            RefundStatus::Refunded => wire::RefundStatus::Refunded,
            RefundStatus::Reinstating | RefundStatus::Failed => {
                return Err(refund_refusal(&refund));
            }
        };
        let payment = self.reload(&payment.payment_id).await?;
        Ok(wire::RefundPaymentResponse {
            payment: Some(payment_to_wire(&payment)),
            refund_status: refund_status as i32,
        })
    }
}

/// A refund that moved no money, as the caller hears it: billing's refusal
/// (NOT_REVERSIBLE) passed on, or the provider's (NOT_REFUNDABLE).
fn refund_refusal(refund: &Refund) -> Status {
    let message = refund
        .failure_message
        .clone()
        .unwrap_or_else(|| "the refund was refused".to_owned());
    match refund.failure_code.as_deref() {
        Some("PROVIDER_REFUSED") | None => refusal(
            Code::FailedPrecondition,
            "NOT_REFUNDABLE",
            format!("the provider refused the refund; the payment stands: {message}"),
        ),
        Some(reason) => refusal(Code::FailedPrecondition, reason, message),
    }
}

/// billing-svc's answer to the quote, passed on: its refusals are the caller's
/// (unknown bill, nothing to pay, bad target); its absence is UNAVAILABLE.
fn billing_refusal(status: Status) -> Status {
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled => {
            service_kit::errors::unavailable(format!("billing-svc: {}", status.message()))
        }
        Code::Unauthenticated | Code::PermissionDenied | Code::Internal => {
            service_kit::errors::internal(format!(
                "billing-svc refused payment-svc: {:?} {}",
                status.code(),
                status.message()
            ))
        }
        _ => status,
    }
}
