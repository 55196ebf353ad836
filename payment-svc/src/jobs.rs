//! Background work: the outbox dispatcher, which tells billing-svc about captured and
//! refunded money until it acknowledges (or, refused for good or out of attempts,
//! leaves a dead letter for an operator), and the reconciler, which asks providers
//! about payments left PROCESSING and finishes refunds left unfinished. Both run in
//! every replica; the database decides who handles what.

use std::{sync::Arc, time::Duration};

use service_kit::clock::now_micros;
use tokio::sync::watch;

use chrono::{FixedOffset, NaiveDate};

use crate::{
    autopay::{Autopay, AutopayError},
    flow::{DeliveryError, PaymentFlow},
};

/// Rows one dispatcher pass handles at most.
const OUTBOX_BATCH_MAX: u32 = 32;
/// Payments one reconciler pass asks about at most.
const RECONCILE_BATCH_MAX: u32 = 100;
/// Deliveries of one outbox row before it becomes a dead letter: with the backoff
/// below, about 25 minutes of trying (an outage longer than that needs an operator).
pub const OUTBOX_ATTEMPTS_MAX: i64 = 60;
/// Refunds one reconciler pass drives at most.
const REFUND_BATCH_MAX: u32 = 32;
/// How long a claimed outbox row is left to its claimant before others may retry it.
const OUTBOX_LEASE: Duration = Duration::from_secs(15);
/// Retry delays grow from this, doubling, up to the maximum: bounded backoff.
const RETRY_DELAY_MIN: Duration = Duration::from_millis(100);
const RETRY_DELAY_MAX: Duration = Duration::from_secs(30);

/// Timings of the background jobs.
#[derive(Debug, Clone, Copy)]
pub struct JobTimings {
    pub outbox_poll: Duration,
    pub reconcile_interval: Duration,
    /// A payment PROCESSING for longer than this is asked about.
    pub reconcile_after: Duration,
}

/// The delay before retry number `attempts` (1-based).
pub fn retry_delay(attempts: i64) -> Duration {
    let doublings = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(u32::MAX)
        .min(20);
    RETRY_DELAY_MIN
        .saturating_mul(2_u32.saturating_pow(doublings))
        .min(RETRY_DELAY_MAX)
}

/// Whether a failed delivery ends as a dead letter: billing refused the request for
/// good, or this was the last attempt.
fn is_dead_letter(error: &DeliveryError, attempts: i64) -> bool {
    error.is_permanent() || attempts >= OUTBOX_ATTEMPTS_MAX
}

fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

/// Delivers due outbox rows until `stopped` changes.
pub async fn run_outbox(
    flow: Arc<PaymentFlow>,
    timings: JobTimings,
    mut stopped: watch::Receiver<()>,
) {
    let mut sampled: Option<std::time::Instant> = None;
    loop {
        if let Err(error) = outbox_pass(&flow).await {
            tracing::warn!(%error, "outbox pass failed");
        }
        if sampled.is_none_or(|at| at.elapsed() >= OUTBOX_SAMPLE) {
            sampled = Some(std::time::Instant::now());
            if let Err(error) = sample_outbox(&flow).await {
                tracing::warn!(%error, "cannot sample the outbox for metrics");
            }
        }
        tokio::select! {
            _ = stopped.changed() => return,
            () = tokio::time::sleep(timings.outbox_poll) => {}
        }
    }
}

/// How often the outbox gauges are refreshed.
const OUTBOX_SAMPLE: Duration = Duration::from_secs(5);

/// `payment_outbox_rows`, `payment_outbox_oldest_age_seconds`, `payment_dead_letters`.
async fn sample_outbox(flow: &PaymentFlow) -> Result<(), crate::storage::StorageError> {
    let (pending, oldest_micros, dead) = flow.store().outbox_gauges().await?;
    let age_seconds = oldest_micros.map_or(0.0, |oldest| {
        (now_micros().saturating_sub(oldest)).max(0) as f64 / 1e6
    });
    metrics::gauge!("payment_outbox_rows").set(pending as f64);
    metrics::gauge!("payment_outbox_oldest_age_seconds").set(age_seconds);
    metrics::gauge!("payment_dead_letters").set(dead as f64);
    Ok(())
}

async fn outbox_pass(flow: &PaymentFlow) -> Result<(), crate::storage::StorageError> {
    for row in flow.store().due_outbox(OUTBOX_BATCH_MAX).await? {
        if !flow
            .store()
            .claim_outbox(&row, now_micros() + micros(OUTBOX_LEASE))
            .await?
        {
            continue;
        }
        match flow.deliver(&row.payment_id, row.kind, None).await {
            Ok(_) => {
                tracing::debug!(payment_id = %row.payment_id, kind = row.kind.as_str(), "delivered to billing")
            }
            Err(error) => {
                let attempts = row.attempts + 1;
                if is_dead_letter(&error, attempts) {
                    let dead_letters = flow
                        .store()
                        .outbox_dead(&row.payment_id, row.kind, &error.to_string())
                        .await?;
                    tracing::error!(
                        payment_id = %row.payment_id,
                        kind = row.kind.as_str(),
                        %error,
                        attempts,
                        dead_letters,
                        "outbox row is a dead letter: an operator must look (ListDeadLetters, RetryDeadLetter)"
                    );
                    continue;
                }
                let delay = retry_delay(attempts);
                tracing::warn!(payment_id = %row.payment_id, %error, ?delay, "delivery failed; will retry");
                let retry_at = now_micros() + micros(delay);
                flow.store()
                    .outbox_retry(&row.payment_id, row.kind, retry_at, &error.to_string())
                    .await?;
            }
        }
    }
    Ok(())
}

/// Reconciles stale PROCESSING payments now (at start-up) and then every interval,
/// until `stopped` changes.
pub async fn run_reconciler(
    flow: Arc<PaymentFlow>,
    timings: JobTimings,
    mut stopped: watch::Receiver<()>,
) {
    loop {
        if let Err(error) = reconcile_pass(&flow, timings.reconcile_after).await {
            tracing::warn!(%error, "reconcile pass failed");
        }
        tokio::select! {
            _ = stopped.changed() => return,
            () = tokio::time::sleep(timings.reconcile_interval) => {}
        }
    }
}

async fn reconcile_pass(
    flow: &PaymentFlow,
    after: Duration,
) -> Result<(), crate::storage::StorageError> {
    let cutoff = now_micros() - micros(after);
    for payment in flow
        .store()
        .stale_processing(cutoff, RECONCILE_BATCH_MAX)
        .await?
    {
        flow.reconcile(&payment).await?;
    }
    for refund in flow
        .store()
        .unfinished_refunds(cutoff, REFUND_BATCH_MAX)
        .await?
    {
        if flow.store().claim_refund(&refund).await? {
            let refund = flow.drive_refund(refund, None).await?;
            tracing::info!(refund_id = %refund.refund_id, status = refund.status.as_str(), "refund reconciled");
        }
    }
    Ok(())
}

/// How often the automatic autopay looks for a business day to run.
const AUTOPAY_PERIOD: Duration = Duration::from_secs(60);
/// The automatic run of a business day starts this long after its midnight: billing's
/// automatic close of the day before looks every minute, so it has finished by then
/// (and a run before it would only charge a bill the close's credit balance pays).
pub const AUTOPAY_AFTER_MIDNIGHT: Duration = Duration::from_secs(30 * 60);

/// The business date at `now_micros` in `offset`, and how far into it that is.
pub fn business_moment(now_micros: i64, offset: FixedOffset) -> Option<(NaiveDate, Duration)> {
    let local = chrono::DateTime::from_timestamp_micros(now_micros)?.with_timezone(&offset);
    let since_midnight = local.time() - chrono::NaiveTime::MIN;
    Some((local.date_naive(), since_midnight.to_std().ok()?))
}

/// Runs autopay once per business day, [`AUTOPAY_AFTER_MIDNIGHT`] into it, unless a
/// replica has finished that day's run; until `stopped` changes.
pub async fn run_autopay(
    autopay: Arc<Autopay>,
    offset: FixedOffset,
    mut stopped: watch::Receiver<()>,
) {
    loop {
        if let Some((today, into_day)) = business_moment(now_micros(), offset)
            && into_day >= AUTOPAY_AFTER_MIDNIGHT
            && let Err(error) = autopay_day(&autopay, today).await
        {
            tracing::warn!(%error, %today, "automatic autopay failed; will retry");
        }
        tokio::select! {
            _ = stopped.changed() => return,
            () = tokio::time::sleep(AUTOPAY_PERIOD) => {}
        }
    }
}

async fn autopay_day(autopay: &Autopay, today: NaiveDate) -> Result<(), AutopayError> {
    let store = autopay.store();
    if store.autopay_run_finished(today).await? {
        return Ok(());
    }
    let summary = autopay.run(today).await?;
    if summary.errors == 0 {
        store.record_autopay_run(today).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_business_day_turns_at_midnight_in_the_business_zone() {
        let shanghai = crate::config::shanghai();
        // 2026-11-29T16:10:00Z is 00:10 on the 30th in Shanghai.
        let micros = 1_795_968_600_000_000;
        let (date, into) = business_moment(micros, shanghai).unwrap();
        assert_eq!(date, "2026-11-30".parse::<NaiveDate>().unwrap());
        assert_eq!(into, Duration::from_secs(600));
    }

    #[test]
    fn retries_back_off_to_a_bound() {
        let delays: Vec<_> = [1, 2, 3, 9, 10, 1000]
            .iter()
            .map(|n| retry_delay(*n).as_millis())
            .collect();
        assert_eq!(delays, [100, 200, 400, 25_600, 30_000, 30_000]);
    }

    #[test]
    fn refusals_for_good_and_the_last_attempt_make_dead_letters() {
        use tonic::Status;
        let cases = [
            (Status::failed_precondition("NOT_REVERSIBLE"), 1, true),
            (Status::already_exists("IDEMPOTENCY_KEY_REUSED"), 1, true),
            (Status::invalid_argument("bad"), 1, true),
            (Status::unavailable("down"), 1, false),
            (Status::deadline_exceeded("slow"), 1, false),
            (Status::not_found("no account yet"), 1, false),
            (Status::unavailable("down"), OUTBOX_ATTEMPTS_MAX - 1, false),
            (Status::unavailable("down"), OUTBOX_ATTEMPTS_MAX, true),
        ];
        for (status, attempts, dead) in cases {
            let error = DeliveryError::Billing(status.clone());
            assert_eq!(
                is_dead_letter(&error, attempts),
                dead,
                "{status:?} {attempts}"
            );
        }
        let total: Duration = (1..OUTBOX_ATTEMPTS_MAX).map(retry_delay).sum();
        assert!(
            total > Duration::from_secs(20 * 60),
            "{total:?} of retries first"
        );
    }
}
