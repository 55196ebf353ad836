//! RunDayClose and WatchEvents.

use std::{pin::Pin, time::Duration};

use billpay_contracts::billing::v1 as wire;
use chrono::NaiveDate;
use service_kit::{
    auth::{Caller, TokenExpiry},
    clock::timestamp_from_micros,
    deadline::Deadline,
    errors::invalid_field,
    event_watch::{EVENT_BATCH_MAX, StreamRequest, Streamed, stream_events},
    money::{Currency, Money},
};
use tokio_stream::Stream;
use tonic::{Request, Status};

use super::{BillingApi, convert::money_to_wire};
use crate::{
    domain::calendar::{earliest_close, parse_date},
    jobs::DayCloseSummary,
    storage::{EventKind, StorageError, StoredEvent},
};

/// How long RunDayClose waits for the close when the call carries no deadline.
const DEFAULT_WAIT: Duration = Duration::from_secs(10);

/// How long before its deadline RunDayClose stops waiting and answers the progress.
const ANSWER_MARGIN: Duration = Duration::from_secs(1);

pub type EventStream =
    Pin<Box<dyn Stream<Item = Result<wire::WatchEventsResponse, Status>> + Send>>;

impl Streamed for StoredEvent {
    fn event_id(&self) -> i64 {
        self.event_id
    }

    fn account_id(&self) -> &str {
        &self.account_id
    }
}

impl BillingApi {
    pub(super) async fn handle_run_day_close(
        &self,
        request: Request<wire::RunDayCloseRequest>,
    ) -> Result<wire::RunDayCloseResponse, Status> {
        // The caller's deadline (or the server's limit): the answer must leave
        // before it, finished or not.
        let wait = request
            .extensions()
            .get::<Deadline>()
            .map_or(DEFAULT_WAIT, |deadline| deadline.remaining())
            .saturating_sub(ANSWER_MARGIN);
        let message = request.into_inner();
        let (as_of, known_run) = if message.run_id != 0 {
            let run = self
                .store
                .day_close_run(message.run_id)
                .await?
                .ok_or_else(|| invalid_field("run_id", "names no day close run"))?;
            (run.as_of, Some(run))
        } else {
            (self.closable_date(&message.as_of)?, None)
        };
        let listing = |as_of: NaiveDate| wire::RunDayCloseResponse {
            as_of: as_of.to_string(),
            penalties_posted: Some(money_to_wire(Money::zero(Currency::Cny))),
            credit_balance_applied: Some(money_to_wire(Money::zero(Currency::Cny))),
            ..wire::RunDayCloseResponse::default()
        };
        if known_run.is_none() && self.closer.is_listing(as_of) {
            return Ok(listing(as_of));
        }
        // Listing the run's accounts and closing them happen on a task of their own:
        // when the call ends first (its deadline, or the caller leaving), a big close
        // goes on, and is not rolled back half listed.
        let (started, mut run_started) = tokio::sync::oneshot::channel();
        let closer = self.closer.clone();
        let work = tokio::spawn(async move {
            let closed = async {
                let run = match known_run {
                    Some(run) => run,
                    None => closer.start_or_join(as_of, true).await?.ok_or_else(|| {
                        StorageError::Corrupt("a day close run that did not start".into())
                    })?,
                };
                let _ = started.send(run);
                closer.work_on(run, || false).await.map(|_| ())
            }
            .await;
            if let Err(error) = &closed {
                tracing::error!(%error, %as_of, "day close failed; run it again to resume");
            }
            closed
        });
        match tokio::time::timeout(wait, work).await {
            Ok(Ok(closed)) => closed?,
            Ok(Err(error)) => {
                return Err(Status::internal(format!("the day close stopped: {error}")));
            }
            Err(_still_running) => {}
        }
        let Ok(run) = run_started.try_recv() else {
            // Still listing the accounts: ask again (by date) to follow it.
            return Ok(listing(as_of));
        };
        let progress = self.store.run_progress(run).await?;
        let summary = DayCloseSummary::of(run.as_of, &progress)?;
        Ok(wire::RunDayCloseResponse {
            as_of: run.as_of.to_string(),
            accounts_closed: i32::try_from(summary.accounts_closed).unwrap_or(i32::MAX),
            bills_overdue: i32::try_from(summary.bills_overdue).unwrap_or(i32::MAX),
            penalties_posted: Some(money_to_wire(summary.penalties_posted)),
            credit_balance_applied: Some(money_to_wire(summary.credit_balance_applied)),
            run_id: run.run_id,
            finished: progress.finished,
            accounts_to_close: i32::try_from(progress.accounts_to_close).unwrap_or(i32::MAX),
        })
    }

    /// The date a RunDayClose asks for: yesterday when empty; a day that has ended,
    /// not before the earliest close.
    fn closable_date(&self, text: &str) -> Result<NaiveDate, Status> {
        let today = self.today();
        let yesterday = today.pred_opt().unwrap_or(today);
        let as_of = if text.is_empty() {
            yesterday
        } else {
            parse_date(text).map_err(|error| invalid_field("as_of", error.to_string()))?
        };
        // Today is closed once it has ended (by the automatic close after midnight):
        // a close now would post today's penalty before today's repayments land.
        if as_of >= today {
            return Err(invalid_field(
                "as_of",
                format!("must be a day that has ended: yesterday ({yesterday}) or earlier"),
            ));
        }
        let earliest = earliest_close(today);
        if as_of < earliest {
            return Err(invalid_field(
                "as_of",
                format!("must be on or after {earliest} (no plan may be older)"),
            ));
        }
        Ok(as_of)
    }

    /// Replays events after the cursor (of one account, if asked), then tails new
    /// ones, until the client leaves or its token expires (or, with `stop_at_end`,
    /// ends once caught up).
    pub(super) async fn handle_watch_events(
        &self,
        request: Request<wire::WatchEventsRequest>,
    ) -> Result<EventStream, Status> {
        let caller = Caller::of(&request)?.subject.clone();
        let expires_at = request
            .extensions()
            .get::<TokenExpiry>()
            .map(|expiry| expiry.0)
            .ok_or_else(|| Status::unauthenticated("no verified token on this request"))?;
        let message = request.into_inner();
        let newest = self.store.clone();
        let tail = self.watch.open_tail(
            StreamRequest {
                rpc: "WatchEvents",
                caller: &caller,
                after_id: message.after_id,
                account: Some(message.account_id).filter(|id| !id.is_empty()),
                stop_at_end: message.stop_at_end,
                expires_at,
            },
            move || {
                let store = newest.clone();
                async move { store.last_event_id().await }
            },
        )?;
        let store = self.store.clone();
        let read = move |cursor| {
            let store = store.clone();
            async move { store.events_after(cursor, EVENT_BATCH_MAX).await }
        };
        Ok(Box::pin(stream_events(tail, read, |event| {
            wire::WatchEventsResponse {
                event: Some(event_to_wire(event)),
            }
        })))
    }
}

fn event_to_wire(event: StoredEvent) -> wire::Event {
    let kind = match event.kind {
        EventKind::PlanCreated => wire::EventKind::PlanCreated,
        EventKind::BillDueSoon => wire::EventKind::BillDueSoon,
        EventKind::BillDue => wire::EventKind::BillDue,
        EventKind::BillOverdue => wire::EventKind::BillOverdue,
        EventKind::RepaymentApplied => wire::EventKind::RepaymentApplied,
        EventKind::RepaymentReversed => wire::EventKind::RepaymentReversed,
        EventKind::PlanSettled => wire::EventKind::PlanSettled,
        EventKind::CreditLimitChanged => wire::EventKind::CreditLimitChanged,
        EventKind::PlanCancelled => wire::EventKind::PlanCancelled,
    };
    wire::Event {
        event_id: event.event_id,
        kind: kind.into(),
        account_id: event.account_id,
        plan_id: event.plan_id.unwrap_or_default(),
        bill_id: event.bill_id.unwrap_or_default(),
        payment_id: event.payment_id.unwrap_or_default(),
        amount: event.amount.map(money_to_wire),
        due_date: event.due_date.unwrap_or_default(),
        created_at: Some(timestamp_from_micros(event.created_at_micros)),
        credit_limit_change: event
            .limit_change
            .map(|detail| wire::CreditLimitChangeDetail {
                previous_limit: Some(money_to_wire(detail.previous_limit)),
                kind: super::credit_limits::change_kind_to_wire(detail.kind).into(),
                until: detail
                    .until
                    .map(|date| date.to_string())
                    .unwrap_or_default(),
            }),
    }
}
