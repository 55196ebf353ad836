//! A day close as shareable work (`day_close_runs`, `day_close_work`): the run of a
//! date lists the accounts it has to visit once, replicas claim them in batches, and
//! each account's close marks its row closed in the account's own transaction, so an
//! account is closed once per run whichever replicas took part.

use chrono::{Days, NaiveDate};
use service_kit::db::Dialect;
use sqlx::Row;

use super::{StorageError, Store};
use crate::domain::day_close::DUE_SOON_DAYS;

/// One run of a date's close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DayCloseRun {
    pub run_id: i64,
    pub as_of: NaiveDate,
}

/// Where a run stands; the sums are the run's once it finished (zero before).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunProgress {
    pub accounts_to_close: i64,
    pub accounts_closed: i64,
    pub bills_overdue: i64,
    pub penalties_minor: i64,
    pub credit_applied_minor: i64,
    pub finished: bool,
}

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claimed {
    /// These accounts are this replica's until the claim expires.
    Accounts(Vec<String>),
    /// Nothing is free to claim, but other replicas' claims are not closed yet.
    OthersBusy,
    /// Every account of the run is closed.
    AllClosed,
}

impl Store {
    /// The run of `as_of` to take part in: the unfinished one if there is one, else a
    /// new one listing every account the close may change (an unpaid bill due by
    /// `as_of` plus the reminder window, a credit balance to apply, a temporary limit
    /// that lapses). With `again` false, a date already closed starts nothing (None):
    /// the automatic close of two replicas must not close a finished day twice.
    pub async fn start_or_join_run(
        &self,
        as_of: NaiveDate,
        again: bool,
        now: i64,
    ) -> Result<Option<DayCloseRun>, StorageError> {
        let mut transaction = self.db.begin_write().await?;
        if !again {
            let closed: Option<String> =
                sqlx::query_scalar("SELECT as_of FROM day_closes WHERE as_of = $1")
                    .bind(as_of.to_string())
                    .fetch_optional(&mut *transaction)
                    .await?;
            if closed.is_some() {
                transaction.commit().await?;
                return Ok(None);
            }
        }
        let unfinished =
            "SELECT run_id FROM day_close_runs WHERE as_of = $1 AND finished_at_micros IS NULL";
        if let Some(run_id) = sqlx::query_scalar::<_, i64>(unfinished)
            .bind(as_of.to_string())
            .fetch_optional(&mut *transaction)
            .await?
        {
            transaction.commit().await?;
            return Ok(Some(DayCloseRun { run_id, as_of }));
        }
        let started: Option<i64> = sqlx::query_scalar(
            "INSERT INTO day_close_runs (as_of, started_at_micros) VALUES ($1, $2) \
             ON CONFLICT (as_of) WHERE finished_at_micros IS NULL DO NOTHING RETURNING run_id",
        )
        .bind(as_of.to_string())
        .bind(now)
        .fetch_optional(&mut *transaction)
        .await?;
        let Some(run_id) = started else {
            // Another replica's run of this date committed first (PostgreSQL): join it.
            let run_id: i64 = sqlx::query_scalar(unfinished)
                .bind(as_of.to_string())
                .fetch_one(&mut *transaction)
                .await?;
            transaction.commit().await?;
            return Ok(Some(DayCloseRun { run_id, as_of }));
        };
        let horizon = as_of
            .checked_add_days(Days::new(DUE_SOON_DAYS))
            .unwrap_or(as_of);
        // The bills half walks the (state, due_date) index: only unpaid bills due
        // soon are read, however many accounts there are.
        let listed = sqlx::query(
            "INSERT INTO day_close_work (run_id, account_id) \
             SELECT CAST($1 AS BIGINT), account_id FROM bills WHERE state IN ('OPEN', 'OVERDUE') AND due_date <= $2 \
             UNION SELECT CAST($1 AS BIGINT), account_id FROM accounts WHERE credit_balance_minor > 0 \
             UNION SELECT CAST($1 AS BIGINT), account_id FROM accounts WHERE temporary_limit_until <= $3",
        )
        .bind(run_id)
        .bind(horizon.to_string())
        .bind(as_of.to_string())
        .execute(&mut *transaction)
        .await?
        .rows_affected();
        sqlx::query("UPDATE day_close_runs SET accounts_to_close = $1 WHERE run_id = $2")
            .bind(i64::try_from(listed).unwrap_or(i64::MAX))
            .bind(run_id)
            .execute(&mut *transaction)
            .await?;
        transaction.commit().await?;
        Ok(Some(DayCloseRun { run_id, as_of }))
    }

    /// Claims up to `batch` accounts of `run` that nobody holds (or whose holder's
    /// claim expired) for `replica` until `expires`. On PostgreSQL replicas claiming at
    /// once skip each other's rows instead of waiting for them.
    pub async fn claim_accounts(
        &self,
        run: DayCloseRun,
        replica: &str,
        batch: i64,
        now: i64,
        expires: i64,
    ) -> Result<Claimed, StorageError> {
        let skip_locked = match self.db.dialect() {
            Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
            Dialect::Sqlite => "",
        };
        let rows = sqlx::query(&format!(
            "UPDATE day_close_work SET claimed_by = $1, claim_expires_micros = $2 \
             WHERE run_id = $3 AND account_id IN ( \
               SELECT account_id FROM day_close_work \
               WHERE run_id = $3 AND closed_at_micros IS NULL \
                 AND (claim_expires_micros IS NULL OR claim_expires_micros < $4) \
               ORDER BY account_id LIMIT $5{skip_locked}) \
             RETURNING account_id"
        ))
        .bind(replica)
        .bind(expires)
        .bind(run.run_id)
        .bind(now)
        .bind(batch)
        .fetch_all(&mut *self.db.write_connection().await?)
        .await?;
        if !rows.is_empty() {
            return rows
                .iter()
                .map(|row| row.try_get("account_id").map_err(StorageError::from))
                .collect::<Result<_, _>>()
                .map(Claimed::Accounts);
        }
        let open: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM day_close_work WHERE run_id = $1 AND closed_at_micros IS NULL",
        )
        .bind(run.run_id)
        .fetch_one(self.db.pool())
        .await?;
        Ok(if open == 0 {
            Claimed::AllClosed
        } else {
            Claimed::OthersBusy
        })
    }

    /// Ends `run` (every account closed) and records its date as closed; the same
    /// answer however many replicas call it.
    pub async fn finish_run(&self, run: DayCloseRun, now: i64) -> Result<(), StorageError> {
        let mut transaction = self.db.begin_write().await?;
        sqlx::query(
            "UPDATE day_close_runs SET finished_at_micros = $1, \
               bills_overdue = (SELECT CAST(COALESCE(SUM(bills_overdue), 0) AS BIGINT) FROM day_close_work WHERE run_id = $2), \
               penalties_minor = (SELECT CAST(COALESCE(SUM(penalties_minor), 0) AS BIGINT) FROM day_close_work WHERE run_id = $2), \
               credit_applied_minor = (SELECT CAST(COALESCE(SUM(credit_applied_minor), 0) AS BIGINT) FROM day_close_work WHERE run_id = $2) \
             WHERE run_id = $2 AND finished_at_micros IS NULL",
        )
        .bind(now)
        .bind(run.run_id)
        .execute(&mut *transaction)
        .await?;
        sqlx::query(
            "INSERT INTO day_closes (as_of, closed_at_micros) VALUES ($1, $2) ON CONFLICT (as_of) DO NOTHING",
        )
        .bind(run.as_of.to_string())
        .bind(now)
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(())
    }

    /// The run with this id, if any.
    pub async fn day_close_run(&self, run_id: i64) -> Result<Option<DayCloseRun>, StorageError> {
        let as_of: Option<String> =
            sqlx::query_scalar("SELECT as_of FROM day_close_runs WHERE run_id = $1")
                .bind(run_id)
                .fetch_optional(self.db.pool())
                .await?;
        as_of
            .map(|text| {
                crate::domain::calendar::parse_date(&text)
                    .map(|as_of| DayCloseRun { run_id, as_of })
                    .map_err(|_| StorageError::Corrupt("day_close_runs.as_of".into()))
            })
            .transpose()
    }

    /// How far `run` has got: the accounts left are counted on the index of unclosed
    /// rows, so asking is cheap however big the run; the sums come once it finished.
    pub async fn run_progress(&self, run: DayCloseRun) -> Result<RunProgress, StorageError> {
        let row = sqlx::query(
            "SELECT accounts_to_close, finished_at_micros, bills_overdue, penalties_minor, credit_applied_minor \
             FROM day_close_runs WHERE run_id = $1",
        )
        .bind(run.run_id)
        .fetch_one(self.db.pool())
        .await?;
        let accounts_to_close: i64 = row.try_get("accounts_to_close")?;
        let finished = row
            .try_get::<Option<i64>, _>("finished_at_micros")?
            .is_some();
        let open: i64 = if finished {
            0
        } else {
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM day_close_work WHERE run_id = $1 AND closed_at_micros IS NULL",
            )
            .bind(run.run_id)
            .fetch_one(self.db.pool())
            .await?
        };
        let sum = |column: &str| -> Result<i64, StorageError> {
            Ok(row.try_get::<Option<i64>, _>(column)?.unwrap_or(0))
        };
        Ok(RunProgress {
            accounts_to_close,
            accounts_closed: accounts_to_close - open,
            bills_overdue: sum("bills_overdue")?,
            penalties_minor: sum("penalties_minor")?,
            credit_applied_minor: sum("credit_applied_minor")?,
            finished,
        })
    }
}
