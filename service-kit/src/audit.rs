//! Account scoping and the operator audit trail, shared by every service.
//!
//! Each service's schema has an `operator_audit` table of the same shape; a read by
//! an operator is refused if its audit row cannot be written.

use tonic::Status;

use crate::{auth::Caller, clock::now_micros, db::Db, errors::internal};

/// Admits `caller` to `account_id` for `rpc`: a customer only to their own account;
/// an operator's access is written to the audit table first.
pub async fn admit_account(
    db: &Db,
    caller: &Caller,
    rpc: &str,
    account_id: &str,
) -> Result<(), Status> {
    caller.check_account(account_id)?;
    tracing::Span::current().record("account_id", account_id);
    if caller.is_operator() {
        record(db, &caller.subject, rpc, Some(account_id)).await?;
    }
    Ok(())
}

/// Writes one audit row: who called which RPC on which account, and when.
pub async fn record(
    db: &Db,
    subject: &str,
    rpc: &str,
    account_id: Option<&str>,
) -> Result<(), Status> {
    sqlx::query(
        "INSERT INTO operator_audit (subject, rpc, account_id, at_micros) VALUES ($1, $2, $3, $4)",
    )
    .bind(subject)
    .bind(rpc)
    .bind(account_id)
    .bind(now_micros())
    .execute(db.writer())
    .await
    .map_err(internal)?;
    Ok(())
}
