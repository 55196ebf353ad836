//! Background work: closing business days, on demand (RunDayClose) and automatically
//! after midnight business time, catching up missed days in order.

use std::{collections::HashMap, sync::Arc, time::Duration};

use chrono::{Days, FixedOffset, NaiveDate};
use service_kit::money::Money;
use tokio::sync::watch;

use crate::{
    clock::BusinessClock,
    domain::{calendar::earliest_close, product::Catalog},
    storage::{ProductTerms, StorageError, Store},
};

/// How often the automatic close looks for a day to close.
const AUTO_CLOSE_PERIOD: Duration = Duration::from_secs(60);

/// What closing one day did, summed over accounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayCloseSummary {
    pub as_of: NaiveDate,
    pub accounts_closed: u32,
    pub bills_overdue: u32,
    pub penalties_posted: Money,
    pub credit_balance_applied: Money,
}

impl std::fmt::Display for DayCloseSummary {
    /// The log's words: `2026-11-29: 3 accounts closed, 1 bill overdue, penalties
    /// 1.23, credit balance applied 0.00`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} accounts closed, {} bills overdue, penalties {}, credit balance applied {}",
            self.as_of,
            self.accounts_closed,
            self.bills_overdue,
            self.penalties_posted,
            self.credit_balance_applied
        )
    }
}

/// Closes `as_of` for every account it may change, each in its own transaction, and
/// records the date as closed. Safe to run twice, and from several replicas.
pub async fn close_day(
    store: &Store,
    catalog: &Catalog,
    as_of: NaiveDate,
) -> Result<DayCloseSummary, StorageError> {
    close_day_unless(store, catalog, as_of, || false)
        .await?
        .ok_or_else(|| StorageError::Corrupt("a day close that cannot stop stopped".into()))
}

/// Like [`close_day`], but checks `stop` before each account: when it says stop, the
/// day is left unrecorded (None) so that the next run closes it again — each account's
/// close is its own transaction and closing one twice changes nothing.
async fn close_day_unless(
    store: &Store,
    catalog: &Catalog,
    as_of: NaiveDate,
    stop: impl Fn() -> bool,
) -> Result<Option<DayCloseSummary>, StorageError> {
    let began = std::time::Instant::now();
    let zero = Money::zero(service_kit::money::Currency::Cny);
    let mut summary = DayCloseSummary {
        as_of,
        accounts_closed: 0,
        bills_overdue: 0,
        penalties_posted: zero,
        credit_balance_applied: zero,
    };
    let sum = |a: Money, b: Money| {
        a.checked_add(b)
            .map_err(|error| StorageError::Corrupt(error.to_string()))
    };
    for account_id in store.accounts_to_close(as_of).await? {
        if stop() {
            tracing::info!(%as_of, "day close stopped for shutdown; the next start resumes it");
            return Ok(None);
        }
        let products: HashMap<String, String> = store.plan_products(&account_id).await?;
        let terms = |plan_id: &str| {
            let product = catalog.product(products.get(plan_id)?)?;
            Some(ProductTerms {
                grace_days: product.grace_days,
                penalty_daily_rate: product.penalty_daily_rate,
            })
        };
        let closed = store.close_account_day(&account_id, as_of, terms).await?;
        summary.accounts_closed += 1;
        service_kit::failpoint::failpoint("day-close-after-an-account");
        summary.bills_overdue += closed.bills_overdue;
        summary.penalties_posted = sum(summary.penalties_posted, closed.penalties_posted)?;
        summary.credit_balance_applied = sum(
            summary.credit_balance_applied,
            closed.credit_balance_applied,
        )?;
    }
    store.record_day_closed(as_of).await?;
    metrics::histogram!("billing_day_close_duration_seconds").record(began.elapsed().as_secs_f64());
    metrics::counter!("billing_day_close_accounts_closed_total")
        .increment(u64::from(summary.accounts_closed));
    tracing::info!(%summary, "day closed");
    Ok(Some(summary))
}

/// Closes every finished business day not closed yet (from the day after the last
/// close, or yesterday on a fresh database), in order; then checks again every minute
/// until `stopped` changes.
pub async fn run_auto_close(
    store: Store,
    catalog: Arc<Catalog>,
    offset: FixedOffset,
    clock: BusinessClock,
    mut stopped: watch::Receiver<()>,
) {
    loop {
        let today = clock.today(offset);
        if let Err(error) = catch_up(&store, &catalog, today, &stopped).await {
            tracing::warn!(%error, "automatic day close failed; will retry");
        }
        tokio::select! {
            _ = stopped.changed() => return,
            () = tokio::time::sleep(AUTO_CLOSE_PERIOD) => {}
        }
    }
}

/// Closes, in order, every day before `today` not closed yet: from the day after the
/// last close (never before [`earliest_close`]), or only yesterday on a fresh
/// database. Today itself is closed only once it has ended. Stops between accounts
/// as soon as `stopped` changes (shutdown), leaving the rest to the next start.
/// Returns the days closed.
pub async fn catch_up(
    store: &Store,
    catalog: &Catalog,
    today: NaiveDate,
    stopped: &watch::Receiver<()>,
) -> Result<u32, StorageError> {
    let Some(yesterday) = today.checked_sub_days(Days::new(1)) else {
        return Ok(0);
    };
    let mut next = match store.last_day_closed().await? {
        Some(last) => last
            .checked_add_days(Days::new(1))
            .unwrap_or(today)
            .max(earliest_close(today)),
        None => yesterday,
    };
    let mut closed = 0;
    let stop = || stopped.has_changed().unwrap_or(true);
    while next <= yesterday {
        if close_day_unless(store, catalog, next, stop)
            .await?
            .is_none()
            || stop()
        {
            break;
        }
        closed += 1;
        next = next.checked_add_days(Days::new(1)).unwrap_or(today);
    }
    Ok(closed)
}
