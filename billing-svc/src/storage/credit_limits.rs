//! Credit limit changes: UpdateCreditLimit, the history ListCreditLimitChanges reads,
//! and the lapse of a temporary limit at day close. Each change happens under the
//! account's row lock, with its history row and its CREDIT_LIMIT_CHANGED event.

use chrono::NaiveDate;
use service_kit::db::WriteTransaction;
use service_kit::{
    clock::now_micros,
    db::Dialect,
    money::{Currency, Money},
};
use sqlx::{Row, any::AnyRow};

use super::{
    StorageError, Store,
    accounts::{ACCOUNT_COLUMNS, account_from_row},
    events::{EventKind, LimitChangeDetail, NewEvent, insert_event},
    repayments::lock_account,
};
use crate::domain::{
    account::{Account, AccountId},
    calendar::parse_date,
    credit_limit::{ChangeKind, LimitChange, LimitRefusal, LimitRequest, change_limit, lapse},
};

const CHANGE_COLUMNS: &str = "change_id, account_id, request_id, kind, currency_code, previous_limit_minor, \
     new_limit_minor, permanent_limit_minor, until_date, reason, business_date, changed_at_micros";

/// One row of an account's credit limit history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitChangeRecord {
    pub change_id: String,
    pub account_id: String,
    pub kind: ChangeKind,
    pub previous_limit: Money,
    pub new_limit: Money,
    pub permanent_limit: Money,
    pub until: Option<NaiveDate>,
    pub reason: String,
    /// None for a lapse, which day close writes.
    pub request_id: Option<String>,
    pub business_date: NaiveDate,
    pub changed_at_micros: i64,
}

/// What UpdateCreditLimit found.
#[derive(Debug)]
pub enum LimitOutcome {
    Changed(LimitChangeRecord, Account),
    /// The same request changed the limit before; here is that change.
    Replayed(LimitChangeRecord, Account),
    /// Another request already used this request_id on this account.
    RequestIdReused,
    UnknownAccount,
    Refused(LimitRefusal),
}

/// The limit columns' new values and the history row of one change.
struct ChangeToWrite<'a> {
    account_id: &'a str,
    change: &'a LimitChange,
    reason: &'a str,
    request: Option<(&'a str, String)>,
    business_date: NaiveDate,
}

impl Store {
    /// Changes an account's limit as `request` says, once per (account, request_id).
    pub async fn update_credit_limit(
        &self,
        account_id: &AccountId,
        request_id: &str,
        request: &LimitRequest,
        today: NaiveDate,
    ) -> Result<LimitOutcome, StorageError> {
        let now = now_micros();
        let mut transaction = self.db.begin_write().await?;
        if !lock_account(&mut transaction, account_id.as_str(), now).await? {
            transaction.rollback().await?;
            return Ok(LimitOutcome::UnknownAccount);
        }
        let earlier = sqlx::query(&format!(
            "SELECT {CHANGE_COLUMNS}, request_fingerprint FROM credit_limit_changes \
             WHERE account_id = $1 AND request_id = $2"
        ))
        .bind(account_id.as_str())
        .bind(request_id)
        .fetch_optional(&mut *transaction)
        .await?;
        let account = account_in(&mut transaction, account_id).await?;
        if let Some(row) = earlier {
            transaction.rollback().await?;
            let fingerprint: Option<String> = row.try_get("request_fingerprint")?;
            if fingerprint.as_deref() != Some(request.fingerprint().as_str()) {
                return Ok(LimitOutcome::RequestIdReused);
            }
            return Ok(LimitOutcome::Replayed(change_from_row(&row)?, account));
        }
        let change = match change_limit(&account, request) {
            Ok(change) => change,
            Err(refusal) => {
                transaction.rollback().await?;
                return Ok(LimitOutcome::Refused(refusal));
            }
        };
        let write = ChangeToWrite {
            account_id: account_id.as_str(),
            change: &change,
            reason: request.reason.as_str(),
            request: Some((request_id, request.fingerprint())),
            business_date: today,
        };
        let change_id = write_change(&mut transaction, self.db.dialect(), &write, now).await?;
        let record = change_by_id(&mut transaction, &change_id).await?;
        let account = account_in(&mut transaction, account_id).await?;
        transaction.commit().await?;
        Ok(LimitOutcome::Changed(record, account))
    }

    /// Up to `limit` of an account's limit changes, newest first, after change `after`.
    pub async fn credit_limit_changes(
        &self,
        account_id: &AccountId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<LimitChangeRecord>, StorageError> {
        // Change ids are time-ordered (UUIDv7), so id order is the order of changes.
        let rows = sqlx::query(&format!(
            "SELECT {CHANGE_COLUMNS} FROM credit_limit_changes WHERE account_id = $1 AND change_id < $2 \
             ORDER BY change_id DESC LIMIT $3"
        ))
        .bind(account_id.as_str())
        .bind(after.unwrap_or("\u{10FFFF}"))
        .bind(i64::from(limit))
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(change_from_row).collect()
    }
}

/// Ends the account's temporary limit if a close of `as_of` lapses it (its until is
/// `as_of` or earlier), with its history row and event. The caller holds the
/// account's lock.
pub(super) async fn lapse_temporary_limit(
    transaction: &mut WriteTransaction,
    dialect: Dialect,
    account_id: &AccountId,
    as_of: NaiveDate,
    now: i64,
) -> Result<(), StorageError> {
    let account = account_in(transaction, account_id).await?;
    let Some(change) = lapse(&account, as_of) else {
        return Ok(());
    };
    let until = account.temporary_limit.map(|temporary| temporary.until);
    let reason = format!(
        "the temporary limit lapsed at the close of {}",
        until.map(|date| date.to_string()).unwrap_or_default()
    );
    let write = ChangeToWrite {
        account_id: account_id.as_str(),
        change: &change,
        reason: &reason,
        request: None,
        business_date: as_of,
    };
    // The lapse row says until what the limit ran, as the grant's row did.
    write_change_with_until(transaction, dialect, &write, until, now).await?;
    Ok(())
}

async fn write_change(
    transaction: &mut WriteTransaction,
    dialect: Dialect,
    write: &ChangeToWrite<'_>,
    now: i64,
) -> Result<String, StorageError> {
    let until = write.change.temporary.map(|temporary| temporary.until);
    write_change_with_until(transaction, dialect, write, until, now).await
}

/// Sets the account's limits, writes the history row and the event; returns the
/// change id.
async fn write_change_with_until(
    transaction: &mut WriteTransaction,
    dialect: Dialect,
    write: &ChangeToWrite<'_>,
    until: Option<NaiveDate>,
    now: i64,
) -> Result<String, StorageError> {
    let change = write.change;
    sqlx::query(
        "UPDATE accounts SET credit_limit_minor = $1, temporary_limit_minor = $2, temporary_limit_until = $3, \
           updated_at_micros = $4 WHERE account_id = $5",
    )
    .bind(change.permanent_limit.minor())
    .bind(change.temporary.map(|temporary| temporary.limit.minor()))
    .bind(change.temporary.map(|temporary| temporary.until.to_string()))
    .bind(now)
    .bind(write.account_id)
    .execute(&mut **transaction)
    .await?;
    let change_id = format!("clc_{}", uuid::Uuid::now_v7().simple());
    let (request_id, fingerprint) = match &write.request {
        Some((request_id, fingerprint)) => (Some(*request_id), Some(fingerprint.as_str())),
        None => (None, None),
    };
    sqlx::query(
        "INSERT INTO credit_limit_changes (change_id, account_id, request_id, request_fingerprint, kind, \
           currency_code, previous_limit_minor, new_limit_minor, permanent_limit_minor, until_date, reason, \
           business_date, changed_at_micros) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(change_id.as_str())
    .bind(write.account_id)
    .bind(request_id)
    .bind(fingerprint)
    .bind(change.kind.as_str())
    .bind(change.new_limit.currency().code())
    .bind(change.previous_limit.minor())
    .bind(change.new_limit.minor())
    .bind(change.permanent_limit.minor())
    .bind(until.map(|date| date.to_string()))
    .bind(write.reason)
    .bind(write.business_date.to_string())
    .bind(now)
    .execute(&mut **transaction)
    .await?;
    let event = NewEvent {
        account_id: write.account_id,
        kind: EventKind::CreditLimitChanged,
        subject_id: &change_id,
        plan_id: None,
        bill_id: None,
        payment_id: None,
        amount: Some(change.new_limit),
        due_date: None,
        limit_change: Some(LimitChangeDetail {
            previous_limit: change.previous_limit,
            kind: change.kind,
            until,
        }),
    };
    insert_event(transaction, dialect, &event, now).await?;
    Ok(change_id)
}

async fn account_in(
    transaction: &mut WriteTransaction,
    account_id: &AccountId,
) -> Result<Account, StorageError> {
    let row = sqlx::query(&format!(
        "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE account_id = $1"
    ))
    .bind(account_id.as_str())
    .fetch_one(&mut **transaction)
    .await?;
    account_from_row(&row)
}

async fn change_by_id(
    transaction: &mut WriteTransaction,
    change_id: &str,
) -> Result<LimitChangeRecord, StorageError> {
    let row = sqlx::query(&format!(
        "SELECT {CHANGE_COLUMNS} FROM credit_limit_changes WHERE change_id = $1"
    ))
    .bind(change_id)
    .fetch_one(&mut **transaction)
    .await?;
    change_from_row(&row)
}

fn change_from_row(row: &AnyRow) -> Result<LimitChangeRecord, StorageError> {
    let corrupt = |what: &str| StorageError::Corrupt(format!("credit_limit_changes.{what}"));
    let currency =
        Currency::parse(row.try_get("currency_code")?).map_err(|_| corrupt("currency_code"))?;
    let money = |column: &str| -> Result<Money, StorageError> {
        Money::from_minor(currency, row.try_get(column)?).map_err(|_| corrupt(column))
    };
    let until: Option<String> = row.try_get("until_date")?;
    Ok(LimitChangeRecord {
        change_id: row.try_get("change_id")?,
        account_id: row.try_get("account_id")?,
        kind: ChangeKind::parse(row.try_get("kind")?).ok_or_else(|| corrupt("kind"))?,
        previous_limit: money("previous_limit_minor")?,
        new_limit: money("new_limit_minor")?,
        permanent_limit: money("permanent_limit_minor")?,
        until: until
            .map(|text| parse_date(&text).map_err(|_| corrupt("until_date")))
            .transpose()?,
        reason: row.try_get("reason")?,
        request_id: row.try_get("request_id")?,
        business_date: parse_date(row.try_get("business_date")?)
            .map_err(|_| corrupt("business_date"))?,
        changed_at_micros: row.try_get("changed_at_micros")?,
    })
}
