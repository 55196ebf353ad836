//! Cancelling a plan (退货): its bills, the account's credit and credit balance, the
//! cancellation row that makes a retry answer the same, and the PLAN_CANCELLED event,
//! in one transaction under the account's row lock.

use chrono::NaiveDate;
use service_kit::db::WriteTransaction;
use service_kit::{
    clock::now_micros,
    money::{Currency, Money},
};
use sqlx::Row;

use super::{
    StorageError, Store,
    bills::{BILL_COLUMNS, bill_from_row},
    events::{EventKind, NewEvent, insert_event},
    plans::{PLAN_COLUMNS, plan_from_row},
    repayments::{lock_account, money_error, refresh_account_status},
};
use crate::domain::{
    bill::Bill,
    cancellation::{CancelRefusal, cancel},
    credit_limit::Reason,
    plan::Plan,
};

/// A cancelled plan and what its cancellation moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cancelled {
    pub plan: Plan,
    pub bills: Vec<Bill>,
    pub released_principal: Money,
    pub refunded: Money,
}

#[derive(Debug)]
pub enum CancelOutcome {
    Cancelled(Cancelled),
    /// This request cancelled the plan before; here is that answer.
    Replayed(Cancelled),
    /// This request_id cancelled the plan with another reason.
    RequestIdReused,
    NotCancellable(CancelRefusal),
    UnknownPlan,
}

impl Store {
    /// Cancels `plan_id` once: every bill becomes CANCELLED, the unpaid principal stops
    /// counting against the limit, everything paid on the plan becomes credit balance.
    pub async fn cancel_plan(
        &self,
        plan_id: &str,
        request_id: &str,
        reason: &Reason,
        today: NaiveDate,
    ) -> Result<CancelOutcome, StorageError> {
        let account_id: Option<String> =
            sqlx::query_scalar("SELECT account_id FROM plans WHERE plan_id = $1")
                .bind(plan_id)
                .fetch_optional(self.db.pool())
                .await?;
        let Some(account_id) = account_id else {
            return Ok(CancelOutcome::UnknownPlan);
        };
        let now = now_micros();
        let mut transaction = self.db.begin_write().await?;
        lock_account(&mut transaction, &account_id, now).await?;
        let earlier = sqlx::query(
            "SELECT request_id, reason, currency_code, released_principal_minor, refunded_minor \
             FROM plan_cancellations WHERE plan_id = $1",
        )
        .bind(plan_id)
        .fetch_optional(&mut *transaction)
        .await?;
        let (plan, bills) = plan_in(&mut transaction, plan_id).await?;
        if let Some(row) = earlier {
            transaction.rollback().await?;
            let same_request = row.try_get::<String, _>("request_id")? == request_id;
            let same_reason = row.try_get::<String, _>("reason")? == reason.as_str();
            return Ok(match (same_request, same_reason) {
                (true, true) => {
                    let currency = Currency::parse(row.try_get("currency_code")?)
                        .map_err(|_| StorageError::Corrupt("plan_cancellations.currency".into()))?;
                    let money = |column: &str| -> Result<Money, StorageError> {
                        Money::from_minor(currency, row.try_get(column)?).map_err(money_error)
                    };
                    CancelOutcome::Replayed(Cancelled {
                        plan,
                        bills,
                        released_principal: money("released_principal_minor")?,
                        refunded: money("refunded_minor")?,
                    })
                }
                (true, false) => CancelOutcome::RequestIdReused,
                (false, _) => CancelOutcome::NotCancellable(CancelRefusal::AlreadyCancelled),
            });
        }
        let cancellation = match cancel(plan.status, plan.principal.currency(), &bills) {
            Ok(cancellation) => cancellation,
            Err(refusal) => {
                transaction.rollback().await?;
                return Ok(CancelOutcome::NotCancellable(refusal));
            }
        };
        sqlx::query(
            "UPDATE bills SET state = 'CANCELLED', updated_at_micros = $1 \
             WHERE plan_id = $2 AND state IN ('OPEN', 'OVERDUE', 'PAID')",
        )
        .bind(now)
        .bind(plan_id)
        .execute(&mut *transaction)
        .await?;
        sqlx::query(
            "UPDATE plans SET status = 'CANCELLED', updated_at_micros = $1 \
             WHERE plan_id = $2 AND status IN ('ACTIVE', 'SETTLED')",
        )
        .bind(now)
        .bind(plan_id)
        .execute(&mut *transaction)
        .await?;
        let updated = sqlx::query(
            "UPDATE accounts SET principal_unpaid_minor = principal_unpaid_minor - $1, \
               credit_balance_minor = credit_balance_minor + $2 \
             WHERE account_id = $3 AND principal_unpaid_minor >= $1",
        )
        .bind(cancellation.released_principal.minor())
        .bind(cancellation.refunded.minor())
        .bind(account_id.as_str())
        .execute(&mut *transaction)
        .await?
        .rows_affected();
        if updated != 1 {
            return Err(StorageError::Corrupt(
                "the plan's unpaid principal exceeds the account's".into(),
            ));
        }
        insert_cancellation(
            &mut transaction,
            &plan,
            request_id,
            reason,
            (cancellation.released_principal, cancellation.refunded),
            today,
            now,
        )
        .await?;
        refresh_account_status(&mut transaction, &account_id).await?;
        let event = NewEvent {
            account_id: &account_id,
            kind: EventKind::PlanCancelled,
            subject_id: plan_id,
            plan_id: Some(plan_id),
            bill_id: None,
            payment_id: None,
            amount: Some(cancellation.refunded),
            due_date: None,
            limit_change: None,
        };
        insert_event(&mut transaction, self.db.dialect(), &event, now).await?;
        let (plan, bills) = plan_in(&mut transaction, plan_id).await?;
        transaction.commit().await?;
        Ok(CancelOutcome::Cancelled(Cancelled {
            plan,
            bills,
            released_principal: cancellation.released_principal,
            refunded: cancellation.refunded,
        }))
    }
}

async fn insert_cancellation(
    transaction: &mut WriteTransaction,
    plan: &Plan,
    request_id: &str,
    reason: &Reason,
    (released_principal, refunded): (Money, Money),
    today: NaiveDate,
    now: i64,
) -> Result<(), StorageError> {
    sqlx::query(
        "INSERT INTO plan_cancellations (plan_id, account_id, request_id, reason, currency_code, \
           released_principal_minor, refunded_minor, business_date, cancelled_at_micros) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(plan.plan_id.as_str())
    .bind(plan.account_id.as_str())
    .bind(request_id)
    .bind(reason.as_str())
    .bind(refunded.currency().code())
    .bind(released_principal.minor())
    .bind(refunded.minor())
    .bind(today.to_string())
    .bind(now)
    .execute(&mut **transaction)
    .await?;
    Ok(())
}

/// A plan and its bills in seq order, read inside the transaction.
async fn plan_in(
    transaction: &mut WriteTransaction,
    plan_id: &str,
) -> Result<(Plan, Vec<Bill>), StorageError> {
    let row = sqlx::query(&format!(
        "SELECT {PLAN_COLUMNS} FROM plans WHERE plan_id = $1"
    ))
    .bind(plan_id)
    .fetch_one(&mut **transaction)
    .await?;
    let plan = plan_from_row(&row)?;
    let rows = sqlx::query(&format!(
        "SELECT {BILL_COLUMNS} FROM bills WHERE plan_id = $1 ORDER BY seq"
    ))
    .bind(plan_id)
    .fetch_all(&mut **transaction)
    .await?;
    let bills = rows
        .iter()
        .map(|row| bill_from_row(row))
        .collect::<Result<_, _>>()?;
    Ok((plan, bills))
}
