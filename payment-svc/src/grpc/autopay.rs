//! RunAutopay and WatchPaymentEvents.

use std::pin::Pin;

use billpay_contracts::payment::v1 as wire;
use chrono::NaiveDate;
use service_kit::{
    auth::{Caller, Role, TokenExpiry},
    clock::timestamp_from_micros,
    errors::invalid_field,
    event_watch::{EVENT_BATCH_MAX, StreamRequest, Streamed, stream_events},
    wire::money_to_wire,
};
use tokio_stream::Stream;
use tonic::{Request, Status};

use super::PaymentApi;
use crate::{
    autopay::AutopayError,
    storage::{PaymentEventKind, StoredPaymentEvent},
};

pub type PaymentEventStream =
    Pin<Box<dyn Stream<Item = Result<wire::WatchPaymentEventsResponse, Status>> + Send>>;

fn autopay_status(error: AutopayError) -> Status {
    match error {
        AutopayError::Storage(error) => error.into(),
        AutopayError::Billing(status) => service_kit::errors::unavailable(format!(
            "billing-svc did not answer: {}",
            status.message()
        )),
        other => service_kit::errors::internal(other),
    }
}

impl Streamed for StoredPaymentEvent {
    fn event_id(&self) -> i64 {
        self.event_id
    }

    fn account_id(&self) -> &str {
        &self.account_id
    }
}

impl PaymentApi {
    pub(super) async fn handle_run_autopay(
        &self,
        request: Request<wire::RunAutopayRequest>,
    ) -> Result<wire::RunAutopayResponse, Status> {
        let as_of_text = &request.get_ref().as_of;
        let as_of: NaiveDate = as_of_text
            .parse()
            .map_err(|_| invalid_field("as_of", "must be a date, YYYY-MM-DD"))?;
        let summary = self.autopay.run(as_of).await.map_err(autopay_status)?;
        let count = |value: u32| i32::try_from(value).unwrap_or(i32::MAX);
        Ok(wire::RunAutopayResponse {
            as_of: as_of.to_string(),
            mandates: count(summary.mandates),
            notices_sent: count(summary.notices_sent),
            debits_started: count(summary.debits_started),
            debits_succeeded: count(summary.debits_succeeded),
            debits_failed: count(summary.debits_failed),
            skipped: count(summary.skipped),
        })
    }

    pub(super) async fn handle_watch_payment_events(
        &self,
        request: Request<wire::WatchPaymentEventsRequest>,
    ) -> Result<PaymentEventStream, Status> {
        let caller = Caller::of(&request)?.clone();
        let expires_at = request
            .extensions()
            .get::<TokenExpiry>()
            .map(|expiry| expiry.0)
            .ok_or_else(|| Status::unauthenticated("no verified token on this request"))?;
        let message = request.into_inner();
        let after_id = message.after_id;
        let stop_at_end = message.stop_at_end;
        if after_id < 0 {
            return Err(invalid_field("after_id", "must not be negative"));
        }
        if message.account_id.len() > 64 {
            return Err(invalid_field("account_id", "must be at most 64 characters"));
        }
        // A customer sees their own account's events only.
        let account_filter = match (&caller.role, caller.account_id.as_ref()) {
            (Role::Customer, Some(own)) => {
                caller.check_account(if message.account_id.is_empty() {
                    own
                } else {
                    &message.account_id
                })?;
                Some(own.clone())
            }
            _ => Some(message.account_id).filter(|id| !id.is_empty()),
        };
        if let Some(account_id) = &account_filter
            && caller.is_operator()
        {
            service_kit::audit::note_account(account_id);
        }
        let store = self.flow.store().clone();
        let newest = store.clone();
        let tail = self.watch.open_tail(
            StreamRequest {
                rpc: "WatchPaymentEvents",
                caller: &caller.subject,
                after_id,
                account: account_filter,
                stop_at_end,
                expires_at,
            },
            move || {
                let store = newest.clone();
                async move { store.last_payment_event_id().await }
            },
        )?;
        let read = move |cursor| {
            let store = store.clone();
            async move { store.payment_events_after(cursor, EVENT_BATCH_MAX).await }
        };
        Ok(Box::pin(stream_events(tail, read, |event| {
            wire::WatchPaymentEventsResponse {
                event: Some(event_to_wire(event)),
            }
        })))
    }
}

fn event_to_wire(event: StoredPaymentEvent) -> wire::PaymentEvent {
    let kind = match event.kind {
        PaymentEventKind::MandateCreated => wire::PaymentEventKind::MandateCreated,
        PaymentEventKind::MandateRevoked => wire::PaymentEventKind::MandateRevoked,
        PaymentEventKind::MandateSuspended => wire::PaymentEventKind::MandateSuspended,
        PaymentEventKind::AutopayNotice => wire::PaymentEventKind::AutopayNotice,
        PaymentEventKind::AutopayDebited => wire::PaymentEventKind::AutopayDebited,
        PaymentEventKind::AutopayFailed => wire::PaymentEventKind::AutopayFailed,
        PaymentEventKind::AutopaySkipped => wire::PaymentEventKind::AutopaySkipped,
    };
    wire::PaymentEvent {
        event_id: event.event_id,
        kind: kind.into(),
        account_id: event.account_id,
        mandate_id: event.mandate_id.unwrap_or_default(),
        payment_id: event.payment_id.unwrap_or_default(),
        amount: event.amount.map(money_to_wire),
        due_date: event.due_date.unwrap_or_default(),
        instrument_last4: event.instrument_last4.unwrap_or_default(),
        reason: event.reason.unwrap_or_default(),
        attempt: event
            .attempt
            .and_then(|attempt| i32::try_from(attempt).ok())
            .unwrap_or_default(),
        created_at: Some(timestamp_from_micros(event.created_at_micros)),
    }
}
