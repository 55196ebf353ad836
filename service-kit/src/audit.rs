//! Account scoping and the operator audit trail, shared by every service.
//!
//! Each service's schema has an `operator_audit` table of the same shape. Every
//! operator call gets one row, written by the auth layer when the call ends: who,
//! which RPC, which account (when the handler named one through [`admit_account`]),
//! when, and the outcome — ADMITTED, REFUSED (by the auth layer or the handler) or
//! NOT_FOUND — with the gRPC code. A call whose row cannot be written is answered
//! INTERNAL instead of with its data.

use std::sync::{Arc, Mutex};

use sqlx::Row as _;
use tonic::{Code, Status};

use crate::{auth::Caller, clock::now_micros, db::Db, db::StorageError};

tokio::task_local! {
    /// The account the current operator call touched, set by the handler.
    static AUDITED_ACCOUNT: AuditSlot;
}

/// Where a handler leaves the account an operator call touched, for its audit row.
#[derive(Debug, Clone, Default)]
pub struct AuditSlot(Arc<Mutex<Option<String>>>);

impl AuditSlot {
    /// Runs `call` with this slot as the one handlers fill.
    pub async fn scope<F: std::future::Future>(self, call: F) -> F::Output {
        AUDITED_ACCOUNT.scope(self, call).await
    }

    /// The account noted, if any.
    pub fn account(&self) -> Option<String> {
        self.0.lock().ok().and_then(|slot| slot.clone())
    }
}

/// Notes `account_id` for the current call's audit row (the first one noted wins).
pub fn note_account(account_id: &str) {
    let _ = AUDITED_ACCOUNT.try_with(|slot| {
        if let Ok(mut slot) = slot.0.lock()
            && slot.is_none()
        {
            *slot = Some(account_id.to_owned());
        }
    });
}

/// Admits `caller` to `account_id` for `rpc`: a customer only to their own account;
/// an operator's call is audited with this account.
pub async fn admit_account(
    db: &Db,
    caller: &Caller,
    rpc: &str,
    account_id: &str,
) -> Result<(), Status> {
    let _ = (db, rpc);
    if caller.is_operator() {
        note_account(account_id);
    }
    caller.check_account(account_id)?;
    tracing::Span::current().record("account_id", account_id);
    Ok(())
}

/// Notes what an operator call touched; the auth layer writes its row when it ends.
pub async fn record(
    db: &Db,
    subject: &str,
    rpc: &str,
    account_id: Option<&str>,
) -> Result<(), Status> {
    let _ = (db, subject, rpc);
    if let Some(account_id) = account_id {
        note_account(account_id);
    }
    Ok(())
}

/// The outcome a call that ended with `code` is audited with.
pub fn outcome(code: Code) -> &'static str {
    match code {
        Code::Ok => "ADMITTED",
        Code::NotFound => "NOT_FOUND",
        _ => "REFUSED",
    }
}

/// `code` as gRPC spells it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Writes one operator call's row.
pub async fn write(
    db: &Db,
    subject: &str,
    rpc: &str,
    account_id: Option<&str>,
    code: Code,
) -> Result<(), StorageError> {
    sqlx::query(
        "INSERT INTO operator_audit (subject, rpc, account_id, at_micros, outcome, code) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(subject)
    .bind(rpc)
    .bind(account_id)
    .bind(now_micros())
    .bind(outcome(code))
    .bind(code_name(code))
    .execute(&mut *db.write_connection().await?)
    .await?;
    Ok(())
}

/// Which audit rows to list.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub subject: Option<String>,
    pub account_id: Option<String>,
    pub since_micros: Option<i64>,
    pub until_micros: Option<i64>,
    /// Only rows older than this one (the page cursor).
    pub before_audit_id: Option<i64>,
    pub limit: u32,
}

/// One audit row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    pub audit_id: i64,
    pub subject: String,
    pub rpc: String,
    pub account_id: Option<String>,
    pub at_micros: i64,
    pub outcome: String,
    pub code: String,
}

/// The rows `filter` selects, newest first.
pub async fn list(db: &Db, filter: &AuditFilter) -> Result<Vec<AuditRow>, StorageError> {
    // Every condition is always present; an unset one compares with a value that
    // keeps every row, so the statement is one shape for both dialects.
    let rows = sqlx::query(
        "SELECT audit_id, subject, rpc, account_id, at_micros, outcome, code FROM operator_audit \
         WHERE ($1 = '' OR subject = $1) AND ($2 = '' OR account_id = $2) \
           AND at_micros >= $3 AND at_micros < $4 AND audit_id < $5 \
         ORDER BY audit_id DESC LIMIT $6",
    )
    .bind(filter.subject.clone().unwrap_or_default())
    .bind(filter.account_id.clone().unwrap_or_default())
    .bind(filter.since_micros.unwrap_or(i64::MIN))
    .bind(filter.until_micros.unwrap_or(i64::MAX))
    .bind(filter.before_audit_id.unwrap_or(i64::MAX))
    .bind(i64::from(filter.limit))
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|row| {
            Ok(AuditRow {
                audit_id: row.try_get("audit_id")?,
                subject: row.try_get("subject")?,
                rpc: row.try_get("rpc")?,
                account_id: row.try_get("account_id")?,
                at_micros: row.try_get("at_micros")?,
                outcome: row.try_get("outcome")?,
                code: row.try_get("code")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(StorageError::from)
}
