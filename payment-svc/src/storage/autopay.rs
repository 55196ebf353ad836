//! Autopay's records: each due date's notice (sent once), each debit attempt (claimed
//! by its insert while the mandate is ACTIVE, so a rerun or another replica starts no
//! second one, and no debit starts after a revocation), each attempt's settlement,
//! and the skips — every one with its event in the same transaction.

use chrono::NaiveDate;
use service_kit::{
    clock::now_micros,
    db::Dialect,
    money::{Currency, Money},
};
use sqlx::{Row, any::AnyRow};

use super::{
    StorageError, Store,
    events::{NewPaymentEvent, PaymentEventKind, insert_event},
    mandates::Mandate,
};
use crate::domain::autopay::{EXPIRED_INSTRUMENT, SkipReason};

const ATTEMPT_COLUMNS: &str = "mandate_id, due_date, attempt, run_date, account_id, idempotency_key, \
     outcome, failure_code, created_at_micros";

/// A due date's notice as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub mandate_id: String,
    pub due_date: NaiveDate,
    pub notice_date: NaiveDate,
    pub amount: Money,
}

/// How a settled attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    Succeeded,
    Failed,
    /// No payment was ever stored for it (the process stopped in between).
    NotCharged,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "SUCCEEDED",
            Self::Failed => "FAILED",
            Self::NotCharged => "NOT_CHARGED",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [Self::Succeeded, Self::Failed, Self::NotCharged]
            .into_iter()
            .find(|outcome| outcome.as_str() == text)
    }
}

/// A debit attempt as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub mandate_id: String,
    pub due_date: NaiveDate,
    pub attempt: u32,
    pub run_date: NaiveDate,
    pub account_id: String,
    pub idempotency_key: String,
    /// None until the payment's outcome is known.
    pub outcome: Option<AttemptOutcome>,
    pub failure_code: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptClaim {
    /// Recorded by this call: the debit has started and is this caller's to charge.
    Claimed(Attempt),
    /// Recorded before (a rerun, another replica): nothing to start.
    Taken,
    /// The mandate is no longer ACTIVE: no debit.
    MandateNotActive,
}

/// How to settle an attempt.
#[derive(Debug, Clone, Copy)]
pub struct Settlement<'a> {
    pub outcome: AttemptOutcome,
    pub failure_code: Option<&'a str>,
    pub payment_id: Option<&'a str>,
    pub amount: Option<Money>,
    /// The last attempt this due date gets (the customer is told autopay stopped).
    pub last: bool,
}

impl Store {
    pub async fn notice(
        &self,
        mandate_id: &str,
        due_date: NaiveDate,
    ) -> Result<Option<Notice>, StorageError> {
        let row = sqlx::query(
            "SELECT mandate_id, due_date, notice_date, currency_code, amount_minor FROM autopay_notices \
             WHERE mandate_id = $1 AND due_date = $2",
        )
        .bind(mandate_id)
        .bind(due_date.to_string())
        .fetch_optional(self.db.pool())
        .await?;
        row.as_ref().map(notice_from_row).transpose()
    }

    /// Sends `due_date`'s notice of `amount` (the notice row and its AUTOPAY_NOTICE
    /// event) unless sent before or the mandate is no longer ACTIVE; true when sent.
    pub async fn send_notice(
        &self,
        mandate: &Mandate,
        due_date: NaiveDate,
        notice_date: NaiveDate,
        amount: Money,
    ) -> Result<bool, StorageError> {
        let now = now_micros();
        let mut transaction = self.db.begin_write().await?;
        let due = due_date.to_string();
        let sent = sqlx::query(
            "INSERT INTO autopay_notices (mandate_id, due_date, account_id, notice_date, currency_code, \
               amount_minor, created_at_micros) \
             SELECT $1, $2, $3, $4, $5, $6, $7 WHERE EXISTS \
               (SELECT 1 FROM mandates WHERE mandate_id = $1 AND status = 'ACTIVE') \
             ON CONFLICT DO NOTHING",
        )
        .bind(mandate.mandate_id.as_str())
        .bind(due.as_str())
        .bind(mandate.account_id.as_str())
        .bind(notice_date.to_string())
        .bind(amount.currency().code())
        .bind(amount.minor())
        .bind(now)
        .execute(&mut *transaction)
        .await?
        .rows_affected();
        if sent == 1 {
            let subject = format!("{}:{due}", mandate.mandate_id);
            let event = NewPaymentEvent {
                account_id: &mandate.account_id,
                subject_id: &subject,
                mandate_id: Some(&mandate.mandate_id),
                amount: Some(amount),
                due_date: Some(&due),
                instrument_last4: Some(&mandate.instrument_last4),
                ..NewPaymentEvent::default()
            };
            insert_event(
                &mut transaction,
                self.db.dialect(),
                PaymentEventKind::AutopayNotice,
                &event,
                now,
            )
            .await?;
        }
        transaction.commit().await?;
        Ok(sent == 1)
    }

    /// The attempts of `mandate_id`'s `due_date`, in order.
    pub async fn attempts(
        &self,
        mandate_id: &str,
        due_date: NaiveDate,
    ) -> Result<Vec<Attempt>, StorageError> {
        let rows = sqlx::query(&format!(
            "SELECT {ATTEMPT_COLUMNS} FROM autopay_attempts WHERE mandate_id = $1 AND due_date = $2 \
             ORDER BY attempt"
        ))
        .bind(mandate_id)
        .bind(due_date.to_string())
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(attempt_from_row).collect()
    }

    /// `mandate_id`'s attempts whose outcome is not known yet (whatever the mandate's
    /// status now: a debit that started completes).
    pub async fn unsettled_attempts(&self, mandate_id: &str) -> Result<Vec<Attempt>, StorageError> {
        let rows = sqlx::query(&format!(
            "SELECT {ATTEMPT_COLUMNS} FROM autopay_attempts WHERE mandate_id = $1 AND outcome IS NULL \
             ORDER BY due_date, attempt LIMIT 10"
        ))
        .bind(mandate_id)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(attempt_from_row).collect()
    }

    /// Mandates (any status) with attempts not settled yet, at most `limit`.
    pub async fn mandates_with_unsettled_attempts(
        &self,
        limit: u32,
    ) -> Result<Vec<String>, StorageError> {
        let ids = sqlx::query_scalar(
            "SELECT DISTINCT mandate_id FROM autopay_attempts WHERE outcome IS NULL \
             ORDER BY mandate_id LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(self.db.pool())
        .await?;
        Ok(ids)
    }

    /// Records attempt `attempt` of `due_date` on `run_date` — the start of a debit —
    /// if the mandate is ACTIVE now and neither this attempt nor one on this run date
    /// was recorded before. The mandate's row is held (PostgreSQL) or the database is
    /// (SQLite) while deciding, so a revocation is either committed before (no debit)
    /// or waits for this to commit (the debit started first and completes).
    pub async fn claim_attempt(
        &self,
        mandate: &Mandate,
        due_date: NaiveDate,
        attempt: u32,
        run_date: NaiveDate,
        idempotency_key: &str,
    ) -> Result<AttemptClaim, StorageError> {
        let mut transaction = self.db.begin_write().await?;
        let lock = match self.db.dialect() {
            Dialect::Postgres => "SELECT status FROM mandates WHERE mandate_id = $1 FOR UPDATE",
            Dialect::Sqlite => "SELECT status FROM mandates WHERE mandate_id = $1",
        };
        let status: Option<String> = sqlx::query_scalar(lock)
            .bind(mandate.mandate_id.as_str())
            .fetch_optional(&mut *transaction)
            .await?;
        if status.as_deref() != Some("ACTIVE") {
            transaction.rollback().await?;
            return Ok(AttemptClaim::MandateNotActive);
        }
        let claimed = sqlx::query(
            "INSERT INTO autopay_attempts (mandate_id, due_date, attempt, run_date, account_id, \
               idempotency_key, created_at_micros) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT DO NOTHING",
        )
        .bind(mandate.mandate_id.as_str())
        .bind(due_date.to_string())
        .bind(i64::from(attempt))
        .bind(run_date.to_string())
        .bind(mandate.account_id.as_str())
        .bind(idempotency_key)
        .bind(now_micros())
        .execute(&mut *transaction)
        .await?
        .rows_affected();
        transaction.commit().await?;
        if claimed != 1 {
            return Ok(AttemptClaim::Taken);
        }
        Ok(AttemptClaim::Claimed(Attempt {
            mandate_id: mandate.mandate_id.clone(),
            due_date,
            attempt,
            run_date,
            account_id: mandate.account_id.clone(),
            idempotency_key: idempotency_key.to_owned(),
            outcome: None,
            failure_code: None,
        }))
    }

    /// Settles `attempt` with its event (AUTOPAY_DEBITED or AUTOPAY_FAILED), and on an
    /// expired instrument suspends the mandate (MANDATE_SUSPENDED), in one
    /// transaction. False when it was settled before (nothing written).
    pub async fn settle_attempt(
        &self,
        attempt: &Attempt,
        mandate: &Mandate,
        settlement: Settlement<'_>,
    ) -> Result<bool, StorageError> {
        let now = now_micros();
        let mut transaction = self.db.begin_write().await?;
        let moved = sqlx::query(
            "UPDATE autopay_attempts SET outcome = $1, failure_code = $2 \
             WHERE mandate_id = $3 AND due_date = $4 AND attempt = $5 AND outcome IS NULL",
        )
        .bind(settlement.outcome.as_str())
        .bind(settlement.failure_code)
        .bind(attempt.mandate_id.as_str())
        .bind(attempt.due_date.to_string())
        .bind(i64::from(attempt.attempt))
        .execute(&mut *transaction)
        .await?
        .rows_affected();
        if moved != 1 {
            transaction.rollback().await?;
            return Ok(false);
        }
        let due = attempt.due_date.to_string();
        let reason = match (settlement.outcome, settlement.last) {
            (AttemptOutcome::Succeeded, _) => None,
            (_, true) => Some(format!(
                "{}; autopay stopped for this due date, please pay by hand",
                settlement.failure_code.unwrap_or("NOT_CHARGED")
            )),
            (_, false) => Some(format!(
                "{}; will try again tomorrow",
                settlement.failure_code.unwrap_or("NOT_CHARGED")
            )),
        };
        let kind = match settlement.outcome {
            AttemptOutcome::Succeeded => PaymentEventKind::AutopayDebited,
            AttemptOutcome::Failed | AttemptOutcome::NotCharged => PaymentEventKind::AutopayFailed,
        };
        let event = NewPaymentEvent {
            account_id: &attempt.account_id,
            subject_id: &attempt.idempotency_key,
            mandate_id: Some(&attempt.mandate_id),
            payment_id: settlement.payment_id,
            amount: settlement.amount,
            due_date: Some(&due),
            instrument_last4: Some(&mandate.instrument_last4),
            reason: reason.as_deref(),
            attempt: Some(i64::from(attempt.attempt)),
        };
        insert_event(&mut transaction, self.db.dialect(), kind, &event, now).await?;
        if settlement.failure_code == Some(EXPIRED_INSTRUMENT) {
            let suspended = sqlx::query(
                "UPDATE mandates SET status = 'SUSPENDED', status_reason = $1, updated_at_micros = $2 \
                 WHERE mandate_id = $3 AND status = 'ACTIVE'",
            )
            .bind(EXPIRED_INSTRUMENT)
            .bind(now)
            .bind(attempt.mandate_id.as_str())
            .execute(&mut *transaction)
            .await?
            .rows_affected();
            if suspended == 1 {
                let event = NewPaymentEvent {
                    account_id: &attempt.account_id,
                    subject_id: &attempt.mandate_id,
                    mandate_id: Some(&attempt.mandate_id),
                    instrument_last4: Some(&mandate.instrument_last4),
                    reason: Some(EXPIRED_INSTRUMENT),
                    ..NewPaymentEvent::default()
                };
                insert_event(
                    &mut transaction,
                    self.db.dialect(),
                    PaymentEventKind::MandateSuspended,
                    &event,
                    now,
                )
                .await?;
            }
        }
        transaction.commit().await?;
        Ok(true)
    }

    /// Tells the customer `due_date` is not debited for `reason` (once per mandate,
    /// due date and reason); true when written.
    pub async fn record_skip(
        &self,
        mandate: &Mandate,
        due_date: NaiveDate,
        reason: SkipReason,
        amount: Option<Money>,
    ) -> Result<bool, StorageError> {
        let now = now_micros();
        let due = due_date.to_string();
        let subject = format!("{}:{due}:{}", mandate.mandate_id, reason.as_str());
        let mut transaction = self.db.begin_write().await?;
        let event = NewPaymentEvent {
            account_id: &mandate.account_id,
            subject_id: &subject,
            mandate_id: Some(&mandate.mandate_id),
            amount,
            due_date: Some(&due),
            instrument_last4: Some(&mandate.instrument_last4),
            reason: Some(reason.as_str()),
            ..NewPaymentEvent::default()
        };
        let written = insert_event(
            &mut transaction,
            self.db.dialect(),
            PaymentEventKind::AutopaySkipped,
            &event,
            now,
        )
        .await?;
        transaction.commit().await?;
        Ok(written)
    }

    /// Whether the automatic run of `as_of` has finished (in any replica).
    pub async fn autopay_run_finished(&self, as_of: NaiveDate) -> Result<bool, StorageError> {
        let found: Option<String> =
            sqlx::query_scalar("SELECT as_of FROM autopay_runs WHERE as_of = $1")
                .bind(as_of.to_string())
                .fetch_optional(self.db.pool())
                .await?;
        Ok(found.is_some())
    }

    pub async fn record_autopay_run(&self, as_of: NaiveDate) -> Result<(), StorageError> {
        sqlx::query(
            "INSERT INTO autopay_runs (as_of, finished_at_micros) VALUES ($1, $2) \
             ON CONFLICT (as_of) DO NOTHING",
        )
        .bind(as_of.to_string())
        .bind(now_micros())
        .execute(&mut *self.db.write_connection().await?)
        .await?;
        Ok(())
    }
}

fn parse_date(text: &str, what: &str) -> Result<NaiveDate, StorageError> {
    text.parse()
        .map_err(|_| StorageError::Corrupt(format!("autopay: {what}")))
}

fn notice_from_row(row: &AnyRow) -> Result<Notice, StorageError> {
    let currency = Currency::parse(row.try_get("currency_code")?)
        .map_err(|_| StorageError::Corrupt("autopay_notices.currency_code".into()))?;
    Ok(Notice {
        mandate_id: row.try_get("mandate_id")?,
        due_date: parse_date(row.try_get("due_date")?, "due_date")?,
        notice_date: parse_date(row.try_get("notice_date")?, "notice_date")?,
        amount: Money::from_minor(currency, row.try_get("amount_minor")?)
            .map_err(|_| StorageError::Corrupt("autopay_notices.amount_minor".into()))?,
    })
}

fn attempt_from_row(row: &AnyRow) -> Result<Attempt, StorageError> {
    let outcome: Option<String> = row.try_get("outcome")?;
    let attempt: i64 = row.try_get("attempt")?;
    Ok(Attempt {
        mandate_id: row.try_get("mandate_id")?,
        due_date: parse_date(row.try_get("due_date")?, "due_date")?,
        attempt: u32::try_from(attempt)
            .map_err(|_| StorageError::Corrupt("autopay_attempts.attempt".into()))?,
        run_date: parse_date(row.try_get("run_date")?, "run_date")?,
        account_id: row.try_get("account_id")?,
        idempotency_key: row.try_get("idempotency_key")?,
        outcome: outcome
            .as_deref()
            .map(|text| {
                AttemptOutcome::parse(text)
                    .ok_or_else(|| StorageError::Corrupt("autopay_attempts.outcome".into()))
            })
            .transpose()?,
        failure_code: row.try_get("failure_code")?,
    })
}
