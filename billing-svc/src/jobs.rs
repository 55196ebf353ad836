//! Background work: closing business days, on demand (RunDayClose) and automatically
//! after midnight business time, catching up missed days in order.

use std::{collections::HashMap, sync::Arc, time::Duration};

use chrono::{Days, FixedOffset, NaiveDate};
use service_kit::money::Money;
use tokio::sync::watch;

use crate::{
    clock::BusinessClock,
    domain::account::AccountId,
    domain::{calendar::earliest_close, product::Catalog},
    storage::{Claimed, DayCloseRun, ProductTerms, RunProgress, StorageError, Store},
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

/// Accounts a replica claims at a time, per account it closes at once: small batches
/// spread a close over replicas; each claim is one indexed statement.
const CLAIM_PER_WORKER: usize = 4;

/// How long a claim holds: a replica that died holding one delays its accounts this
/// long, then another replica takes them over. A batch takes well under a second.
const CLAIM_LEASE: Duration = Duration::from_secs(10);

/// How often a replica with nothing left to claim looks whether the others finished
/// (or one of their claims expired).
const OTHERS_POLL: Duration = Duration::from_millis(50);

/// Closes business days as one replica among any number: the date's run lists its
/// accounts once, replicas claim them in batches and close up to `parallelism`
/// accounts at a time, each account once per run.
#[derive(Debug, Clone)]
pub struct DayCloser {
    store: Store,
    catalog: Arc<Catalog>,
    /// This replica's name in claims and `closed_by`.
    replica: Arc<str>,
    parallelism: usize,
    /// Dates whose run this replica is starting (listing its accounts) right now, so
    /// that a RunDayClose asking meanwhile answers at once instead of queueing a
    /// second start behind the first one's long write.
    listing: Arc<std::sync::Mutex<HashMap<NaiveDate, usize>>>,
}

/// Marks a date as being listed while it lives.
struct Listing<'a> {
    dates: &'a std::sync::Mutex<HashMap<NaiveDate, usize>>,
    as_of: NaiveDate,
}

impl<'a> Listing<'a> {
    fn enter(dates: &'a std::sync::Mutex<HashMap<NaiveDate, usize>>, as_of: NaiveDate) -> Self {
        *dates
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(as_of)
            .or_default() += 1;
        Self { dates, as_of }
    }
}

impl Drop for Listing<'_> {
    fn drop(&mut self) {
        let mut dates = self
            .dates
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = dates.get_mut(&self.as_of) {
            *count -= 1;
            if *count == 0 {
                dates.remove(&self.as_of);
            }
        }
    }
}

impl DayCloser {
    pub fn new(store: Store, catalog: Arc<Catalog>, parallelism: usize) -> Self {
        let replica = format!(
            "billing-{}-{}",
            std::process::id(),
            &uuid::Uuid::now_v7().simple().to_string()[20..]
        );
        Self {
            store,
            catalog,
            replica: replica.into(),
            parallelism: parallelism.max(1),
            listing: Arc::default(),
        }
    }

    fn claim_batch(&self) -> i64 {
        i64::try_from(self.parallelism.saturating_mul(CLAIM_PER_WORKER)).unwrap_or(i64::MAX)
    }

    /// The run of `as_of` to take part in (see [`Store::start_or_join_run`]).
    pub async fn start_or_join(
        &self,
        as_of: NaiveDate,
        again: bool,
    ) -> Result<Option<DayCloseRun>, StorageError> {
        let _listing = Listing::enter(&self.listing, as_of);
        self.store
            .start_or_join_run(as_of, again, service_kit::clock::now_micros())
            .await
    }

    /// Whether this replica is starting the run of `as_of` right now.
    pub fn is_listing(&self, as_of: NaiveDate) -> bool {
        self.listing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains_key(&as_of)
    }

    /// Closes `run`'s accounts until none is left, checking `stop` between batches:
    /// when it says stop, the run is left unfinished (None) and the next run of the
    /// date joins it — closed accounts stay closed, claimed ones are free again once
    /// their claim expires.
    pub async fn work_on(
        &self,
        run: DayCloseRun,
        stop: impl Fn() -> bool,
    ) -> Result<Option<DayCloseSummary>, StorageError> {
        let began = std::time::Instant::now();
        let mut closed_here: u64 = 0;
        loop {
            if stop() {
                tracing::info!(as_of = %run.as_of, "day close stopped for shutdown; the next start resumes it");
                return Ok(None);
            }
            let now = service_kit::clock::now_micros();
            let lease = i64::try_from(CLAIM_LEASE.as_micros()).unwrap_or(i64::MAX);
            match self
                .store
                .claim_accounts(
                    run,
                    &self.replica,
                    self.claim_batch(),
                    now,
                    now.saturating_add(lease),
                )
                .await?
            {
                Claimed::Accounts(accounts) => {
                    closed_here += self.close_accounts(run, accounts).await?;
                }
                Claimed::OthersBusy => tokio::time::sleep(OTHERS_POLL).await,
                Claimed::AllClosed => break,
            }
        }
        self.store
            .finish_run(run, service_kit::clock::now_micros())
            .await?;
        let summary = DayCloseSummary::of(run.as_of, &self.store.run_progress(run).await?)?;
        metrics::histogram!("billing_day_close_duration_seconds")
            .record(began.elapsed().as_secs_f64());
        metrics::counter!("billing_day_close_accounts_closed_total").increment(closed_here);
        tracing::info!(%summary, closed_by_this_replica = closed_here, "day closed");
        Ok(Some(summary))
    }

    /// Closes claimed accounts, up to `parallelism` at once; how many this replica
    /// closed (another may have closed one first, after this claim expired).
    async fn close_accounts(
        &self,
        run: DayCloseRun,
        accounts: Vec<String>,
    ) -> Result<u64, StorageError> {
        let mut closing = tokio::task::JoinSet::new();
        let mut accounts = accounts.into_iter();
        let mut closed = 0;
        loop {
            while closing.len() < self.parallelism {
                let Some(account_id) = accounts.next() else {
                    break;
                };
                let closer = self.clone();
                closing.spawn(async move { closer.close_account(run, &account_id).await });
            }
            let Some(done) = closing.join_next().await else {
                return Ok(closed);
            };
            let done = done.map_err(|error| {
                StorageError::Corrupt(format!("an account's day close panicked: {error}"))
            })?;
            closed += u64::from(done?);
        }
    }

    /// One account's close; false when another replica closed it first.
    async fn close_account(
        &self,
        run: DayCloseRun,
        account_id: &str,
    ) -> Result<bool, StorageError> {
        let account_id = AccountId::parse(account_id)
            .map_err(|_| StorageError::Corrupt("day_close_work.account_id".into()))?;
        let products: HashMap<String, String> = self.store.plan_products(&account_id).await?;
        let terms = |plan_id: &str| {
            let product = self.catalog.product(products.get(plan_id)?)?;
            Some(ProductTerms {
                grace_days: product.grace_days,
                penalty_daily_rate: product.penalty_daily_rate,
            })
        };
        let closed = self
            .store
            .close_account_day(&account_id, run, &self.replica, terms)
            .await?;
        service_kit::failpoint::failpoint("day-close-after-an-account");
        Ok(closed.is_some())
    }
}

impl DayCloseSummary {
    /// A run's summary from its progress.
    pub fn of(as_of: NaiveDate, progress: &RunProgress) -> Result<Self, StorageError> {
        let money = |minor: i64| {
            Money::from_minor(service_kit::money::Currency::Cny, minor)
                .map_err(|error| StorageError::Corrupt(error.to_string()))
        };
        Ok(Self {
            as_of,
            accounts_closed: u32::try_from(progress.accounts_closed).unwrap_or(u32::MAX),
            bills_overdue: u32::try_from(progress.bills_overdue).unwrap_or(u32::MAX),
            penalties_posted: money(progress.penalties_minor)?,
            credit_balance_applied: money(progress.credit_applied_minor)?,
        })
    }
}

/// Closes every finished business day not closed yet (from the day after the last
/// close, or yesterday on a fresh database), in order; then checks again every minute
/// until `stopped` changes.
pub async fn run_auto_close(
    closer: DayCloser,
    offset: FixedOffset,
    clock: BusinessClock,
    mut stopped: watch::Receiver<()>,
) {
    loop {
        let today = clock.today(offset);
        if let Err(error) = catch_up(&closer, today, &stopped).await {
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
    closer: &DayCloser,
    today: NaiveDate,
    stopped: &watch::Receiver<()>,
) -> Result<u32, StorageError> {
    let Some(yesterday) = today.checked_sub_days(Days::new(1)) else {
        return Ok(0);
    };
    let mut next = match closer.store.last_day_closed().await? {
        Some(last) => last
            .checked_add_days(Days::new(1))
            .unwrap_or(today)
            .max(earliest_close(today)),
        None => yesterday,
    };
    let mut closed = 0;
    let stop = || stopped.has_changed().unwrap_or(true);
    while next <= yesterday {
        // A date another replica closed meanwhile starts nothing here.
        if let Some(run) = closer.start_or_join(next, false).await?
            && (closer.work_on(run, stop).await?.is_none() || stop())
        {
            break;
        }
        closed += 1;
        next = next.checked_add_days(Days::new(1)).unwrap_or(today);
    }
    Ok(closed)
}
