//! Closing a business day for one account, in one transaction under the account's
//! lock: reminders, OVERDUE, penalties through the date, the credit balance paying
//! due bills, the account's standing, and the lapse of a temporary credit limit.

use std::collections::{BTreeSet, HashMap};

use chrono::NaiveDate;
use rust_decimal::Decimal;
use service_kit::{clock::now_micros, money::Money};
use sqlx::Row;

use super::{
    DayCloseRun, StorageError, Store,
    bills::{BILL_COLUMNS, bill_from_row},
    credit_limits::lapse_temporary_limit,
    events::{EventKind, NewEvent, insert_event},
    repayments::{
        add, lock_account, money_error, refresh_account_status, set_paid, settle_plan_if_paid,
    },
};
use crate::domain::{
    account::AccountId,
    allocation::{Target, allocate, covered},
    bill::{Bill, BillState},
    calendar::parse_date,
    day_close::{Reminder, close_bill},
};

/// A product's terms that day close applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProductTerms {
    pub grace_days: u32,
    pub penalty_daily_rate: Decimal,
}

/// What closing a day did to one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountClose {
    pub bills_overdue: u32,
    pub penalties_posted: Money,
    pub credit_balance_applied: Money,
}

impl Store {
    /// Closes `run`'s date for one account as `replica`; `terms` gives each plan's
    /// product terms. None when another replica closed the account in this run first:
    /// the account's work row turns closed in the same transaction as its close, under
    /// the account's lock, so it is closed once per run.
    pub async fn close_account_day(
        &self,
        account_id: &AccountId,
        run: DayCloseRun,
        replica: &str,
        terms: impl Fn(&str) -> Option<ProductTerms>,
    ) -> Result<Option<AccountClose>, StorageError> {
        let as_of = run.as_of;
        let now = now_micros();
        let mut transaction = self.db.begin_write().await?;
        lock_account(&mut transaction, account_id.as_str(), now).await?;
        let mine = sqlx::query(
            "UPDATE day_close_work SET closed_by = $1, closed_at_micros = $2 \
             WHERE run_id = $3 AND account_id = $4 AND closed_at_micros IS NULL",
        )
        .bind(replica)
        .bind(now)
        .bind(run.run_id)
        .bind(account_id.as_str())
        .execute(&mut *transaction)
        .await?
        .rows_affected();
        if mine != 1 {
            transaction.rollback().await?;
            return Ok(None);
        }
        lapse_temporary_limit(&mut transaction, self.db.dialect(), account_id, as_of, now).await?;
        let rows = sqlx::query(&format!(
            "SELECT {BILL_COLUMNS}, penalty_through FROM bills \
             WHERE account_id = $1 AND state IN ('OPEN', 'OVERDUE') ORDER BY due_date, plan_id, seq"
        ))
        .bind(account_id.as_str())
        .fetch_all(&mut *transaction)
        .await?;
        let mut principal_paid: HashMap<String, Vec<(NaiveDate, Decimal)>> = HashMap::new();
        for row in sqlx::query(
            "SELECT log.bill_id, log.on_date, log.delta_minor FROM principal_paid_log log \
             JOIN bills ON bills.bill_id = log.bill_id \
             WHERE log.account_id = $1 AND bills.state IN ('OPEN', 'OVERDUE')",
        )
        .bind(account_id.as_str())
        .fetch_all(&mut *transaction)
        .await?
        {
            let on: String = row.try_get("on_date")?;
            let on = parse_date(&on)
                .map_err(|_| StorageError::Corrupt("principal_paid_log.on_date".into()))?;
            let delta = Decimal::new(row.try_get::<i64, _>("delta_minor")?, 2);
            principal_paid
                .entry(row.try_get("bill_id")?)
                .or_default()
                .push((on, delta));
        }
        let mut bills = Vec::with_capacity(rows.len());
        let mut result = AccountClose {
            bills_overdue: 0,
            penalties_posted: Money::zero(service_kit::money::Currency::Cny),
            credit_balance_applied: Money::zero(service_kit::money::Currency::Cny),
        };
        for row in &rows {
            let mut bill = bill_from_row(row)?;
            let through: Option<String> = row.try_get("penalty_through")?;
            let through = through
                .map(|text| {
                    parse_date(&text)
                        .map_err(|_| StorageError::Corrupt("bills.penalty_through".into()))
                })
                .transpose()?;
            let Some(terms) = terms(&bill.plan_id) else {
                tracing::error!(plan_id = %bill.plan_id, "no product terms for a plan; its bills are not closed");
                bills.push(bill);
                continue;
            };
            let change = close_bill(
                &bill,
                through,
                terms.grace_days,
                terms.penalty_daily_rate,
                principal_paid
                    .get(&bill.bill_id)
                    .map_or(&[][..], Vec::as_slice),
                as_of,
            )
            .map_err(money_error)?;
            if change.changes_the_bill() {
                let state = if change.becomes_overdue {
                    BillState::Overdue
                } else {
                    bill.state
                };
                let updated = sqlx::query(
                    "UPDATE bills SET penalty_minor = penalty_minor + $1, state = $2, \
                       penalty_through = COALESCE($3, penalty_through), updated_at_micros = $4 \
                     WHERE bill_id = $5 AND penalty_minor = $6 AND state = $7",
                )
                .bind(change.penalty_added.minor())
                .bind(state.as_str())
                .bind(change.penalty_through.map(|date| date.to_string()))
                .bind(now)
                .bind(bill.bill_id.as_str())
                .bind(bill.charged.penalty.minor())
                .bind(bill.state.as_str())
                .execute(&mut *transaction)
                .await?
                .rows_affected();
                if updated != 1 {
                    return Err(StorageError::Corrupt(format!(
                        "bill {} changed under the account lock",
                        bill.bill_id
                    )));
                }
                bill.charged.penalty = bill
                    .charged
                    .penalty
                    .checked_add(change.penalty_added)
                    .map_err(money_error)?;
                bill.state = state;
                result.bills_overdue += u32::from(change.becomes_overdue);
                result.penalties_posted = result
                    .penalties_posted
                    .checked_add(change.penalty_added)
                    .map_err(money_error)?;
            }
            for reminder in &change.reminders {
                let kind = match reminder {
                    Reminder::DueSoon => EventKind::BillDueSoon,
                    Reminder::Due => EventKind::BillDue,
                    Reminder::Overdue => EventKind::BillOverdue,
                };
                let event = NewEvent {
                    account_id: account_id.as_str(),
                    kind,
                    subject_id: &bill.bill_id,
                    plan_id: Some(&bill.plan_id),
                    bill_id: Some(&bill.bill_id),
                    payment_id: None,
                    amount: Some(bill.amount_due().map_err(money_error)?),
                    due_date: Some(bill.due_date),
                    limit_change: None,
                };
                insert_event(&mut transaction, self.db.dialect(), &event, now).await?;
            }
            bills.push(bill);
        }
        result.credit_balance_applied = self
            .apply_credit_balance(&mut transaction, account_id, &bills, as_of, now)
            .await?;
        refresh_account_status(&mut transaction, account_id.as_str()).await?;
        sqlx::query(
            "UPDATE day_close_work SET bills_overdue = $1, penalties_minor = $2, credit_applied_minor = $3 \
             WHERE run_id = $4 AND account_id = $5",
        )
        .bind(i64::from(result.bills_overdue))
        .bind(result.penalties_posted.minor())
        .bind(result.credit_balance_applied.minor())
        .bind(run.run_id)
        .bind(account_id.as_str())
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(Some(result))
    }

    /// Pays DUE and OVERDUE bills from the account's credit balance (溢缴款), oldest
    /// first, penalty before interest, fee and principal.
    async fn apply_credit_balance(
        &self,
        transaction: &mut service_kit::db::WriteTransaction,
        account_id: &AccountId,
        bills: &[Bill],
        as_of: NaiveDate,
        now: i64,
    ) -> Result<Money, StorageError> {
        let credit_minor: i64 =
            sqlx::query_scalar("SELECT credit_balance_minor FROM accounts WHERE account_id = $1")
                .bind(account_id.as_str())
                .fetch_one(&mut **transaction)
                .await?;
        let currency = service_kit::money::Currency::Cny;
        let credit = Money::from_minor(currency, credit_minor).map_err(money_error)?;
        if credit.is_zero() {
            return Ok(credit);
        }
        let owed = covered(&Target::AllDue, bills, as_of).map_err(money_error)?;
        let (allocations, left) = allocate(credit, &owed).map_err(money_error)?;
        let mut principal = Money::zero(currency);
        let mut plans = BTreeSet::new();
        for allocation in &allocations {
            let Some(bill) = bills.iter().find(|bill| bill.bill_id == allocation.bill_id) else {
                continue;
            };
            let paid = add(&bill.paid, &allocation.parts).map_err(money_error)?;
            let state = if paid == bill.charged {
                BillState::Paid
            } else {
                bill.state
            };
            // The close of as_of has posted as_of's penalty already: the principal
            // this pays stops bearing penalty from the next day.
            let counts_from = as_of.succ_opt().unwrap_or(as_of);
            set_paid(
                transaction,
                bill,
                &paid,
                state,
                Some((now, as_of)),
                counts_from,
                now,
            )
            .await?;
            principal = principal
                .checked_add(allocation.parts.principal)
                .map_err(money_error)?;
            plans.insert(bill.plan_id.clone());
        }
        let applied = credit.checked_sub(left).map_err(money_error)?;
        sqlx::query(
            "UPDATE accounts SET credit_balance_minor = credit_balance_minor - $1, \
               principal_unpaid_minor = principal_unpaid_minor - $2 WHERE account_id = $3",
        )
        .bind(applied.minor())
        .bind(principal.minor())
        .bind(account_id.as_str())
        .execute(&mut **transaction)
        .await?;
        for plan_id in &plans {
            settle_plan_if_paid(
                transaction,
                self.db.dialect(),
                account_id.as_str(),
                plan_id,
                now,
            )
            .await?;
        }
        Ok(applied)
    }

    /// The latest date closed, if any.
    pub async fn last_day_closed(&self) -> Result<Option<NaiveDate>, StorageError> {
        let latest: Option<String> = sqlx::query_scalar("SELECT MAX(as_of) FROM day_closes")
            .fetch_one(self.db.pool())
            .await?;
        latest
            .map(|text| {
                parse_date(&text).map_err(|_| StorageError::Corrupt("day_closes.as_of".into()))
            })
            .transpose()
    }
}
