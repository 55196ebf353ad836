//! Applying and reversing repayments: every money movement on an account happens in
//! one transaction that first takes the account's row (a per-account lock on
//! PostgreSQL; SQLite's write lock does the same), so replicas never interleave.

use std::collections::BTreeSet;

use chrono::NaiveDate;
use service_kit::db::{Dialect, Param, Statements};
use service_kit::{
    clock::now_micros,
    money::{Currency, Money, MoneyError},
};
use sqlx::{Any, Row};

use super::{
    StorageError, Store,
    bills::{BILL_COLUMNS, bill_from_row},
    events::{EventDates, EventInsert, EventKind, NewEvent, insert_event, placeholders},
};
use crate::domain::{
    account::{AccountId, AccountStatus},
    allocation::BillAllocation,
    bill::{Bill, BillState, Components},
};

/// What to do with a repayment's money, decided from the bills inside the
/// transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyDecision {
    pub allocations: Vec<BillAllocation>,
    /// What no bill owes: it becomes credit balance.
    pub surplus: Money,
    /// Bills settled early by a payoff, with what each charges once settled.
    pub settled_charges: Vec<(String, Components)>,
    /// The plan an early payoff settles.
    pub settles_plan_early: Option<String>,
}

impl ApplyDecision {
    /// A plain allocation: no payoff.
    pub fn allocation((allocations, surplus): (Vec<BillAllocation>, Money)) -> Self {
        Self {
            allocations,
            surplus,
            settled_charges: Vec::new(),
            settles_plan_early: None,
        }
    }
}

/// A repayment's effect on the account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub payment_id: String,
    pub allocations: Vec<BillAllocation>,
    pub applied_to_bills: Money,
    pub added_to_credit_balance: Money,
}

#[derive(Debug)]
pub enum ApplyOutcome {
    Applied(Applied),
    /// This payment_id was applied before; here is that result.
    Replayed(Applied),
    /// This payment_id was applied before with another account or amount.
    PaymentIdReused,
    UnknownAccount,
}

/// What a reversal took back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reversed {
    pub payment_id: String,
    pub from_bills: Money,
    pub from_credit_balance: Money,
}

#[derive(Debug)]
pub enum ReverseOutcome {
    Reversed(Reversed),
    Replayed(Reversed),
    UnknownPayment,
    /// What the payment paid can no longer be taken back as it was (why).
    NotReversible(&'static str),
}

/// Takes the account's row for the rest of the transaction; false if no such account.
pub(super) async fn lock_account(
    transaction: &mut impl Statements,
    account_id: &str,
    now: i64,
) -> Result<bool, StorageError> {
    let touched = transaction
        .execute(
            "UPDATE accounts SET updated_at_micros = $1 WHERE account_id = $2",
            &[Param::Integer(now), Param::Text(account_id)],
        )
        .await?;
    Ok(touched == 1)
}

/// Takes the account's row (as [`lock_account`]) and reads its bills as they are
/// under that lock, oldest first; None if no such account.
async fn locked_bills(
    transaction: &mut impl Statements,
    account_id: &str,
    now: i64,
) -> Result<Option<Vec<Bill>>, StorageError> {
    let params = [Param::Text(account_id), Param::Integer(now)];
    if transaction.dialect() == Dialect::Postgres {
        // One round trip instead of two, when nobody else holds the account: the
        // bills are read in the statement that takes the lock. That statement's
        // snapshot was taken before any wait for the lock, so its bills are current
        // only if the row it locked is the version the snapshot saw. `xmin` tells:
        // every transaction that changes an account's bills updates the account's
        // row first (the lock), which gives the row a new `xmin`, and a concurrent
        // update makes PostgreSQL re-check the WHERE against the row as committed.
        // Otherwise (or with no such account) nothing was locked: lock, then read.
        let rows = transaction
            .rows(
                &format!(
                    "WITH seen AS (SELECT xmin AS version FROM accounts WHERE account_id = $1), \
                       locked AS (UPDATE accounts SET updated_at_micros = $2 \
                         WHERE account_id = $1 AND xmin = (SELECT version FROM seen) RETURNING 1) \
                     SELECT (SELECT COUNT(*) FROM locked) AS locked, {BILL_COLUMNS} \
                     FROM (SELECT 1) AS one LEFT JOIN bills ON bills.account_id = $1 \
                     ORDER BY due_date, plan_id, seq"
                ),
                &params,
                |row| {
                    let bill = match row.optional_text("bill_id")? {
                        Some(_) => Some(bill_from_row(row)?),
                        None => None,
                    };
                    Ok((row.integer("locked")?, bill))
                },
            )
            .await?;
        if rows.first().is_some_and(|(locked, _)| *locked == 1) {
            return Ok(Some(
                rows.into_iter().filter_map(|(_, bill)| bill).collect(),
            ));
        }
    }
    if !lock_account(transaction, account_id, now).await? {
        return Ok(None);
    }
    let bills = transaction
        .rows(
            &format!(
                "SELECT {BILL_COLUMNS} FROM bills WHERE account_id = $1 ORDER BY due_date, plan_id, seq"
            ),
            &params[..1],
            bill_from_row,
        )
        .await?;
    Ok(Some(bills))
}

impl Store {
    /// Applies `amount` captured by `payment_id`: `allocate` decides, from the
    /// account's bills (oldest first) as they are inside the transaction, what each
    /// bill receives and what is left for the credit balance.
    pub async fn apply_repayment(
        &self,
        payment_id: &str,
        account_id: &AccountId,
        amount: Money,
        today: NaiveDate,
        decide: impl FnOnce(&[Bill]) -> Result<ApplyDecision, MoneyError>,
    ) -> Result<ApplyOutcome, StorageError> {
        let now = now_micros();
        // The whole transaction runs on the calling thread on SQLite (no hop per
        // statement while every other writer waits; `service_kit::sqlite_writes`).
        let mut transaction = self.db.begin_direct().await?;
        let Some(mut bills) = locked_bills(&mut transaction, account_id.as_str(), now).await?
        else {
            drop(transaction);
            return Ok(ApplyOutcome::UnknownAccount);
        };
        let decision = match decide(&bills) {
            Ok(decision) => decision,
            Err(error) => {
                drop(transaction);
                // A retry of a repayment applied before decides on bills it has since
                // paid: the first result stands, whatever this decision says.
                return match self.replay(payment_id, account_id, amount).await? {
                    Some(replayed) => Ok(replayed),
                    None => Err(money_error(error)),
                };
            }
        };
        let (allocations, surplus) = (&decision.allocations, decision.surplus);
        let applied_to_bills = amount.checked_sub(surplus).map_err(money_error)?;
        let dialect = self.db.dialect();
        // The repayment row, with its final figures once they are known (one statement
        // fewer than inserting first and updating at the end). A payment_id applied
        // before stops here: on SQLite at once, before its bills are touched; on
        // PostgreSQL, where it rides in the account update below, there.
        let repayment = [
            Param::Text(payment_id),
            Param::Text(account_id.as_str()),
            Param::Text(amount.currency().code()),
            Param::Integer(amount.minor()),
            Param::Integer(applied_to_bills.minor()),
            Param::Integer(surplus.minor()),
            Param::Integer(now),
        ];
        const REPAYMENT_INSERT: &str = "INSERT INTO repayments (payment_id, account_id, currency_code, amount_minor, \
               applied_to_bills_minor, added_to_credit_balance_minor, state, applied_at_micros) \
             VALUES ($1, $2, $3, $4, $5, $6, 'APPLIED', $7) ON CONFLICT (payment_id) DO NOTHING";
        if dialect == Dialect::Sqlite
            && transaction.execute(REPAYMENT_INSERT, &repayment).await? == 0
        {
            drop(transaction);
            return self.replayed(payment_id, account_id, amount).await;
        }
        for (bill_id, charge) in &decision.settled_charges {
            cut_charge(&mut transaction, bill_id, charge, now).await?;
            if let Some(bill) = bills.iter_mut().find(|bill| &bill.bill_id == bill_id) {
                bill.charged = *charge;
            }
        }

        let today_text = today.to_string();
        let mut principal_paid = Money::zero(amount.currency());
        let mut plans = BTreeSet::new();
        // Bills this repayment closes (PAID or SETTLED_EARLY).
        let mut closed_now = BTreeSet::new();
        let mut bills_paid = Vec::new();
        for allocation in allocations {
            let bill = bills
                .iter()
                .find(|bill| bill.bill_id == allocation.bill_id)
                .ok_or_else(|| {
                    StorageError::Corrupt("allocation to a bill not on the account".into())
                })?;
            let paid = add(&bill.paid, &allocation.parts).map_err(money_error)?;
            let settled_early = decision
                .settled_charges
                .iter()
                .any(|(id, _)| id == &bill.bill_id);
            let state = match (paid == bill.charged, settled_early) {
                (true, true) => BillState::SettledEarly,
                (true, false) => BillState::Paid,
                (false, _) => bill.state,
            };
            bills_paid.push(BillPaid::new(
                bill,
                &paid,
                state,
                Some((now, &today_text)),
                &today_text,
                now,
            ));
            principal_paid = principal_paid
                .checked_add(allocation.parts.principal)
                .map_err(money_error)?;
            if state != bill.state {
                closed_now.insert(bill.bill_id.as_str());
            }
            plans.insert(bill.plan_id.clone());
        }
        // A bill the payoff settles that owes nothing once its charge is cut (its
        // principal was paid ahead, say) gets no allocation, but is settled early all
        // the same: otherwise it would stay open, paid in full, with a due date.
        for (bill_id, charge) in &decision.settled_charges {
            if allocations
                .iter()
                .any(|allocation| &allocation.bill_id == bill_id)
            {
                continue;
            }
            if let Some(bill) = bills.iter().find(|bill| &bill.bill_id == bill_id)
                && bill.paid == *charge
            {
                bills_paid.push(BillPaid::new(
                    bill,
                    &bill.paid,
                    BillState::SettledEarly,
                    Some((now, &today_text)),
                    &today_text,
                    now,
                ));
                closed_now.insert(bill.bill_id.as_str());
                plans.insert(bill.plan_id.clone());
            }
        }
        // The account's bills were read in this transaction, under the account's
        // lock, so what is left unpaid after this repayment is known without another
        // statement: whether a plan can have become settled, and the account's status
        // (DELINQUENT exactly while a bill is OVERDUE: `refresh_account_status`).
        let still_unpaid = |bill: &&Bill| {
            matches!(bill.state, BillState::Open | BillState::Overdue)
                && !closed_now.contains(bill.bill_id.as_str())
        };
        plans.retain(|plan_id| {
            !bills
                .iter()
                .filter(still_unpaid)
                .any(|bill| &bill.plan_id == plan_id)
        });
        let standing = if bills
            .iter()
            .filter(still_unpaid)
            .any(|bill| bill.state == BillState::Overdue)
        {
            AccountStatus::Delinquent
        } else {
            AccountStatus::Active
        };
        let event = NewEvent {
            account_id: account_id.as_str(),
            kind: EventKind::RepaymentApplied,
            subject_id: payment_id,
            plan_id: None,
            bill_id: None,
            payment_id: Some(payment_id),
            amount: Some(amount),
            due_date: None,
            limit_change: None,
        };
        let event_dates = EventDates::of(&event);
        let mut params = vec![
            Param::Integer(principal_paid.minor()),
            Param::Integer(surplus.minor()),
            Param::Text(account_id.as_str()),
            Param::Text(standing.as_str()),
        ];
        const ACCOUNT_UPDATE: &str = "UPDATE accounts SET principal_unpaid_minor = principal_unpaid_minor - $1, \
               credit_balance_minor = credit_balance_minor + $2, \
               status = CASE WHEN status = 'CLOSED' THEN status ELSE $4 END \
             WHERE account_id = $3 AND principal_unpaid_minor >= $1";
        // On PostgreSQL the repayment row, the bills' updates, the allocations and the
        // REPAYMENT_APPLIED event ride in the account's update (data-modifying WITHs,
        // which SQLite lacks; there a statement costs no round trip): one round trip
        // instead of three or more. The update takes place only if the repayment row
        // and every bill's update did, so a replay or a bill changed under the lock
        // leaves it undone, and the transaction is rolled back.
        let sql = match dialect {
            Dialect::Postgres => {
                let mut riders = vec![format!(
                    "repaid AS ({} RETURNING 1)",
                    renumbered(REPAYMENT_INSERT, params.len() + 1)
                )];
                params.extend(repayment);
                let mut conditions = vec!["EXISTS (SELECT 1 FROM repaid)".to_owned()];
                for (index, bill_paid) in bills_paid.into_iter().enumerate() {
                    let name = bill_paid.ride(index, &mut riders, &mut params);
                    conditions.push(format!("EXISTS (SELECT 1 FROM {name})"));
                }
                if !allocations.is_empty() {
                    // Only with a repayment row inserted now: a replay's allocations
                    // are there already, and would conflict.
                    let (insert, allocation_params) = allocations_insert(
                        payment_id,
                        account_id,
                        allocations,
                        params.len() + 1,
                        Some("EXISTS (SELECT 1 FROM repaid)"),
                    );
                    riders.push(format!("allocated AS ({insert})"));
                    params.extend(allocation_params);
                }
                let event = EventInsert::new(
                    Dialect::Postgres,
                    &event,
                    &event_dates,
                    now,
                    params.len() + 1,
                );
                riders.extend(event.lock);
                riders.push(format!("evented AS ({})", event.insert));
                params.extend(event.params);
                format!(
                    "WITH {} {ACCOUNT_UPDATE} AND {}",
                    riders.join(", "),
                    conditions.join(" AND ")
                )
            }
            Dialect::Sqlite => {
                for bill_paid in bills_paid {
                    bill_paid.execute(&mut transaction).await?;
                }
                if !allocations.is_empty() {
                    let (insert, allocation_params) =
                        allocations_insert(payment_id, account_id, allocations, 1, None);
                    transaction.execute(&insert, &allocation_params).await?;
                }
                insert_event(&mut transaction, Dialect::Sqlite, &event, now).await?;
                ACCOUNT_UPDATE.to_owned()
            }
        };
        if transaction.execute(&sql, &params).await? != 1 {
            drop(transaction);
            if dialect == Dialect::Postgres
                && let Some(replayed) = self.replay(payment_id, account_id, amount).await?
            {
                return Ok(replayed);
            }
            return Err(StorageError::Corrupt(
                "principal repaid exceeds the principal owed, or a bill changed under the account lock"
                    .into(),
            ));
        }
        if let Some(plan_id) = &decision.settles_plan_early {
            transaction
                .execute(
                    "UPDATE plans SET status = 'SETTLED_EARLY', updated_at_micros = $1 WHERE plan_id = $2 AND status = 'ACTIVE'",
                    &[Param::Integer(now), Param::Text(plan_id.as_str())],
                )
                .await?;
        }
        for plan_id in &plans {
            settle_plan_if_paid(
                &mut transaction,
                self.db.dialect(),
                account_id.as_str(),
                plan_id,
                now,
            )
            .await?;
        }
        transaction.commit().await?;
        Ok(ApplyOutcome::Applied(Applied {
            payment_id: payment_id.to_owned(),
            allocations: decision.allocations.clone(),
            applied_to_bills,
            added_to_credit_balance: surplus,
        }))
    }

    /// The result of `payment_id`'s earlier application, whose repayment row
    /// conflicted with this one's.
    async fn replayed(
        &self,
        payment_id: &str,
        account_id: &AccountId,
        amount: Money,
    ) -> Result<ApplyOutcome, StorageError> {
        self.replay(payment_id, account_id, amount)
            .await?
            .ok_or_else(|| {
                StorageError::Corrupt("a payment_id that conflicts but is not stored".into())
            })
    }

    async fn replay(
        &self,
        payment_id: &str,
        account_id: &AccountId,
        amount: Money,
    ) -> Result<Option<ApplyOutcome>, StorageError> {
        let Some(row) = sqlx::query(
            "SELECT account_id, currency_code, amount_minor, applied_to_bills_minor, added_to_credit_balance_minor \
             FROM repayments WHERE payment_id = $1",
        )
        .bind(payment_id)
        .fetch_optional(self.db.pool())
        .await?
        else {
            return Ok(None);
        };
        let currency = currency_of(&row)?;
        let stored_account: String = row.try_get("account_id")?;
        let stored_amount =
            Money::from_minor(currency, row.try_get("amount_minor")?).map_err(money_error)?;
        if stored_account != account_id.as_str() || stored_amount != amount {
            return Ok(Some(ApplyOutcome::PaymentIdReused));
        }
        let applied = Applied {
            payment_id: payment_id.to_owned(),
            allocations: self.allocations_of(payment_id, currency).await?,
            applied_to_bills: Money::from_minor(currency, row.try_get("applied_to_bills_minor")?)
                .map_err(money_error)?,
            added_to_credit_balance: Money::from_minor(
                currency,
                row.try_get("added_to_credit_balance_minor")?,
            )
            .map_err(money_error)?,
        };
        Ok(Some(ApplyOutcome::Replayed(applied)))
    }

    async fn allocations_of(
        &self,
        payment_id: &str,
        currency: Currency,
    ) -> Result<Vec<BillAllocation>, StorageError> {
        allocations_of(self.db.pool(), payment_id, currency).await
    }
}

/// `payment_id`'s allocations, read through `executor`: the pool, or the open
/// transaction of a reversal, which must not wait for a second connection.
async fn allocations_of<'e>(
    executor: impl sqlx::Executor<'e, Database = Any>,
    payment_id: &str,
    currency: Currency,
) -> Result<Vec<BillAllocation>, StorageError> {
    let rows = sqlx::query(
            "SELECT a.bill_id, b.plan_id, b.seq, b.due_date, a.principal_minor, a.interest_minor, a.fee_minor, \
               a.penalty_minor \
             FROM allocations a JOIN bills b ON b.bill_id = a.bill_id \
             WHERE a.payment_id = $1 ORDER BY b.due_date, b.plan_id, b.seq",
        )
        .bind(payment_id)
        .fetch_all(executor)
        .await?;
    rows.iter()
        .map(|row| {
            let money = |column: &str| -> Result<Money, StorageError> {
                Money::from_minor(currency, row.try_get(column)?).map_err(money_error)
            };
            Ok(BillAllocation {
                bill_id: row.try_get("bill_id")?,
                plan_id: row.try_get("plan_id")?,
                seq: u32::try_from(row.try_get::<i64, _>("seq")?).unwrap_or(0),
                due_date: crate::domain::calendar::parse_date(row.try_get("due_date")?)
                    .map_err(|_| StorageError::Corrupt("bills.due_date".into()))?,
                parts: Components {
                    principal: money("principal_minor")?,
                    interest: money("interest_minor")?,
                    fee: money("fee_minor")?,
                    penalty: money("penalty_minor")?,
                },
            })
        })
        .collect()
}

impl Store {
    /// Undoes exactly `payment_id`'s allocations: bills reopen, principal counts
    /// against the credit limit again (and bears penalty again from `today`), its
    /// credit_balance share is taken back. What it paid on a plan cancelled since is
    /// taken back from the credit balance the cancellation put it in (the bill stays
    /// CANCELLED); when that balance has been spent, nothing is reversed.
    pub async fn reverse_repayment(
        &self,
        payment_id: &str,
        today: NaiveDate,
    ) -> Result<ReverseOutcome, StorageError> {
        let account_id: Option<String> =
            sqlx::query_scalar("SELECT account_id FROM repayments WHERE payment_id = $1")
                .bind(payment_id)
                .fetch_optional(self.db.pool())
                .await?;
        let Some(account_id) = account_id else {
            return Ok(ReverseOutcome::UnknownPayment);
        };
        let now = now_micros();
        let mut transaction = self.db.begin_write().await?;
        lock_account(&mut transaction, &account_id, now).await?;
        let row = sqlx::query(
            "SELECT currency_code, state, applied_to_bills_minor, added_to_credit_balance_minor \
             FROM repayments WHERE payment_id = $1",
        )
        .bind(payment_id)
        .fetch_one(&mut *transaction)
        .await?;
        let currency = currency_of(&row)?;
        let reversed = Reversed {
            payment_id: payment_id.to_owned(),
            from_bills: Money::from_minor(currency, row.try_get("applied_to_bills_minor")?)
                .map_err(money_error)?,
            from_credit_balance: Money::from_minor(
                currency,
                row.try_get("added_to_credit_balance_minor")?,
            )
            .map_err(money_error)?,
        };
        if row.try_get::<String, _>("state")? == "REVERSED" {
            transaction.rollback().await?;
            return Ok(ReverseOutcome::Replayed(reversed));
        }
        let allocations = allocations_of(&mut *transaction, payment_id, currency).await?;
        let mut principal = Money::zero(currency);
        // What the payment paid on bills of plans cancelled since: CancelPlan moved it
        // to the credit balance, so that is where the reversal takes it back from.
        let mut from_cancelled = Money::zero(currency);
        let mut plans = BTreeSet::new();
        for allocation in &allocations {
            let row = sqlx::query(&format!(
                "SELECT {BILL_COLUMNS} FROM bills WHERE bill_id = $1"
            ))
            .bind(allocation.bill_id.as_str())
            .fetch_one(&mut *transaction)
            .await?;
            let bill = bill_from_row(&row)?;
            if bill.state == BillState::SettledEarly {
                transaction.rollback().await?;
                return Ok(ReverseOutcome::NotReversible("it settled a plan early"));
            }
            let paid = bill
                .paid
                .checked_sub(&allocation.parts)
                .map_err(money_error)?;
            if bill.state == BillState::Cancelled {
                set_paid(&mut transaction, &bill, &paid, bill.state, None, today, now).await?;
                from_cancelled = from_cancelled
                    .checked_add(allocation.parts.total().map_err(money_error)?)
                    .map_err(money_error)?;
                continue;
            }
            let state = if bill.state == BillState::Paid {
                BillState::Open
            } else {
                bill.state
            };
            set_paid(&mut transaction, &bill, &paid, state, None, today, now).await?;
            principal = principal
                .checked_add(allocation.parts.principal)
                .map_err(money_error)?;
            plans.insert(bill.plan_id);
        }
        let updated = sqlx::query(
            "UPDATE accounts SET principal_unpaid_minor = principal_unpaid_minor + $1, \
               credit_balance_minor = credit_balance_minor - $2 \
             WHERE account_id = $3 AND credit_balance_minor >= $2",
        )
        .bind(principal.minor())
        .bind(
            reversed
                .from_credit_balance
                .checked_add(from_cancelled)
                .map_err(money_error)?
                .minor(),
        )
        .bind(account_id.as_str())
        .execute(&mut *transaction)
        .await?
        .rows_affected();
        if updated != 1 {
            transaction.rollback().await?;
            return Ok(ReverseOutcome::NotReversible(if from_cancelled.is_zero() {
                "its credit balance share has already paid other bills"
            } else {
                "its plan was cancelled and the credit balance it left has already paid other bills"
            }));
        }
        for plan_id in &plans {
            sqlx::query("UPDATE plans SET status = 'ACTIVE', updated_at_micros = $1 WHERE plan_id = $2 AND status = 'SETTLED'")
                .bind(now)
                .bind(plan_id.as_str())
                .execute(&mut *transaction)
                .await?;
        }
        sqlx::query("UPDATE repayments SET state = 'REVERSED', reversed_at_micros = $1 WHERE payment_id = $2")
            .bind(now)
            .bind(payment_id)
            .execute(&mut *transaction)
            .await?;
        refresh_account_status(&mut transaction, &account_id).await?;
        let event = NewEvent {
            account_id: &account_id,
            kind: EventKind::RepaymentReversed,
            subject_id: payment_id,
            plan_id: None,
            bill_id: None,
            payment_id: Some(payment_id),
            amount: Some(
                reversed
                    .from_bills
                    .checked_add(reversed.from_credit_balance)
                    .map_err(money_error)?,
            ),
            due_date: None,
            limit_change: None,
        };
        insert_event(&mut transaction, self.db.dialect(), &event, now).await?;
        transaction.commit().await?;
        Ok(ReverseOutcome::Reversed(reversed))
    }
}

pub(super) fn money_error(error: MoneyError) -> StorageError {
    StorageError::Corrupt(format!("money does not add up: {error}"))
}

fn currency_of(row: &sqlx::any::AnyRow) -> Result<Currency, StorageError> {
    Currency::parse(row.try_get("currency_code")?)
        .map_err(|_| StorageError::Corrupt("currency_code".into()))
}

pub(super) fn add(a: &Components, b: &Components) -> Result<Components, MoneyError> {
    Ok(Components {
        principal: a.principal.checked_add(b.principal)?,
        interest: a.interest.checked_add(b.interest)?,
        fee: a.fee.checked_add(b.fee)?,
        penalty: a.penalty.checked_add(b.penalty)?,
    })
}

/// Sets a bill's paid amounts, only if they are still what `bill` says (the account
/// lock makes this certain; the condition makes it checked). `paid_now` stamps
/// paid_at / paid_on when the bill becomes PAID; None clears them. A change of paid
/// principal is logged as of the business day `counts_from`, for the per-day penalty.
pub(super) async fn set_paid(
    transaction: &mut impl Statements,
    bill: &Bill,
    paid: &Components,
    state: BillState,
    paid_now: Option<(i64, NaiveDate)>,
    counts_from: NaiveDate,
    now: i64,
) -> Result<(), StorageError> {
    let paid_on = paid_now.map(|(at, on)| (at, on.to_string()));
    let counts_from = counts_from.to_string();
    BillPaid::new(
        bill,
        paid,
        state,
        paid_on.as_ref().map(|(at, on)| (*at, on.as_str())),
        &counts_from,
        now,
    )
    .execute(transaction)
    .await
}

/// A bill's paid amounts set ([`set_paid`]), as SQL that runs alone or rides in
/// another statement on PostgreSQL.
struct BillPaid<'a> {
    bill_id: &'a str,
    /// `PAID_LOG_INSERT`'s parameters, if the paid principal changes.
    log: Option<[Param<'a>; 4]>,
    /// `PAID_UPDATE`'s parameters.
    update: [Param<'a>; 13],
}

const PAID_LOG_INSERT: &str = "INSERT INTO principal_paid_log (bill_id, account_id, on_date, delta_minor) VALUES ($1, $2, $3, $4)";
const PAID_UPDATE: &str = "UPDATE bills SET paid_principal_minor = $1, paid_interest_minor = $2, paid_fee_minor = $3, \
       paid_penalty_minor = $4, state = $5, paid_at_micros = $6, paid_on = $7, updated_at_micros = $8 \
     WHERE bill_id = $9 AND paid_principal_minor = $10 AND paid_interest_minor = $11 \
       AND paid_fee_minor = $12 AND paid_penalty_minor = $13";

impl<'a> BillPaid<'a> {
    /// `paid_now` and `counts_from` as [`set_paid`]'s, the dates as text.
    fn new(
        bill: &'a Bill,
        paid: &Components,
        state: BillState,
        paid_now: Option<(i64, &'a str)>,
        counts_from: &'a str,
        now: i64,
    ) -> Self {
        let principal_delta = paid.principal.minor() - bill.paid.principal.minor();
        let (paid_at, paid_on) = match (state, paid_now) {
            (BillState::Paid, Some((at, on))) => (Some(at), Some(on)),
            _ => (None, None),
        };
        Self {
            bill_id: bill.bill_id.as_str(),
            log: (principal_delta != 0).then_some([
                Param::Text(bill.bill_id.as_str()),
                Param::Text(bill.account_id.as_str()),
                Param::Text(counts_from),
                Param::Integer(principal_delta),
            ]),
            update: [
                Param::Integer(paid.principal.minor()),
                Param::Integer(paid.interest.minor()),
                Param::Integer(paid.fee.minor()),
                Param::Integer(paid.penalty.minor()),
                Param::Text(state.as_str()),
                Param::OptionalInteger(paid_at),
                Param::OptionalText(paid_on),
                Param::Integer(now),
                Param::Text(bill.bill_id.as_str()),
                Param::Integer(bill.paid.principal.minor()),
                Param::Integer(bill.paid.interest.minor()),
                Param::Integer(bill.paid.fee.minor()),
                Param::Integer(bill.paid.penalty.minor()),
            ],
        }
    }

    /// Runs the update, with its log row: on PostgreSQL in the same statement (a
    /// data-modifying WITH, which SQLite lacks; there a statement costs no trip).
    async fn execute(self, transaction: &mut impl Statements) -> Result<(), StorageError> {
        let mut params = self.update.to_vec();
        let sql = match (self.log, transaction.dialect()) {
            (None, _) => PAID_UPDATE.to_owned(),
            (Some(log), Dialect::Postgres) => {
                let sql = format!(
                    "WITH logged AS ({}) {PAID_UPDATE}",
                    renumbered(PAID_LOG_INSERT, params.len() + 1)
                );
                params.extend(log);
                sql
            }
            (Some(log), Dialect::Sqlite) => {
                transaction.execute(PAID_LOG_INSERT, &log).await?;
                PAID_UPDATE.to_owned()
            }
        };
        if transaction.execute(&sql, &params).await? != 1 {
            return Err(StorageError::Corrupt(format!(
                "bill {} changed under the account lock",
                self.bill_id
            )));
        }
        Ok(())
    }

    /// Adds the update and its log row to `riders` as CTEs of a PostgreSQL
    /// statement whose parameters are `params`; returns the name of the update's,
    /// which yields a row only if the bill was updated.
    fn ride(self, index: usize, riders: &mut Vec<String>, params: &mut Vec<Param<'a>>) -> String {
        if let Some(log) = self.log {
            riders.push(format!(
                "logged{index} AS ({})",
                renumbered(PAID_LOG_INSERT, params.len() + 1)
            ));
            params.extend(log);
        }
        let name = format!("paid{index}");
        riders.push(format!(
            "{name} AS ({} RETURNING 1)",
            renumbered(PAID_UPDATE, params.len() + 1)
        ));
        params.extend(self.update);
        name
    }
}

/// `sql` written with placeholders from `$1`, numbered from `$first` instead, so
/// that it can ride in another statement after that one's parameters. (Our SQL has
/// no `$` other than placeholders.)
fn renumbered(sql: &str, first: usize) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut rest = sql;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        match rest[..digits].parse::<usize>() {
            Ok(number) => out.push_str(&(number + first - 1).to_string()),
            Err(_) => out.push_str(&rest[..digits]),
        }
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out
}

/// One INSERT of a repayment's `allocations`, its placeholders numbered from `$first`;
/// with `only_if`, it inserts them only where that SQL condition holds.
fn allocations_insert<'a>(
    payment_id: &'a str,
    account_id: &'a AccountId,
    allocations: &'a [BillAllocation],
    first: usize,
    only_if: Option<&str>,
) -> (String, Vec<Param<'a>>) {
    const COLUMNS: usize = 7;
    let mut params = Vec::with_capacity(allocations.len() * COLUMNS);
    let mut rows = Vec::with_capacity(allocations.len());
    for allocation in allocations {
        rows.push(format!("({})", placeholders(first + params.len(), COLUMNS)));
        params.extend([
            Param::Text(payment_id),
            Param::Text(allocation.bill_id.as_str()),
            Param::Text(account_id.as_str()),
            Param::Integer(allocation.parts.principal.minor()),
            Param::Integer(allocation.parts.interest.minor()),
            Param::Integer(allocation.parts.fee.minor()),
            Param::Integer(allocation.parts.penalty.minor()),
        ]);
    }
    const INSERT: &str = "INSERT INTO allocations \
        (payment_id, bill_id, account_id, principal_minor, interest_minor, fee_minor, penalty_minor)";
    let rows = rows.join(", ");
    let sql = match only_if {
        None => format!("{INSERT} VALUES {rows}"),
        Some(condition) => {
            format!("{INSERT} SELECT new_rows.* FROM (VALUES {rows}) AS new_rows WHERE {condition}")
        }
    };
    (sql, params)
}

/// Marks a plan SETTLED once none of its bills is unpaid, with its PLAN_SETTLED event.
pub(super) async fn settle_plan_if_paid(
    transaction: &mut impl Statements,
    dialect: service_kit::db::Dialect,
    account_id: &str,
    plan_id: &str,
    now: i64,
) -> Result<(), StorageError> {
    let settled = transaction
        .execute(
            "UPDATE plans SET status = 'SETTLED', updated_at_micros = $1 \
             WHERE plan_id = $2 AND status = 'ACTIVE' \
               AND NOT EXISTS (SELECT 1 FROM bills WHERE bills.plan_id = $3 AND bills.state IN ('OPEN', 'OVERDUE'))",
            &[
                Param::Integer(now),
                Param::Text(plan_id),
                Param::Text(plan_id),
            ],
        )
        .await?;
    if settled == 1 {
        let event = NewEvent {
            account_id,
            kind: EventKind::PlanSettled,
            subject_id: plan_id,
            plan_id: Some(plan_id),
            bill_id: None,
            payment_id: None,
            amount: None,
            due_date: None,
            limit_change: None,
        };
        insert_event(transaction, dialect, &event, now).await?;
    }
    Ok(())
}

/// Cuts a bill's interest and fee to what an early payoff charges (never raises them).
async fn cut_charge(
    transaction: &mut impl Statements,
    bill_id: &str,
    charge: &Components,
    now: i64,
) -> Result<(), StorageError> {
    let updated = transaction
        .execute(
            "UPDATE bills SET interest_minor = $1, fee_minor = $2, updated_at_micros = $3 \
             WHERE bill_id = $4 AND interest_minor >= $1 AND fee_minor >= $2",
            &[
                Param::Integer(charge.interest.minor()),
                Param::Integer(charge.fee.minor()),
                Param::Integer(now),
                Param::Text(bill_id),
            ],
        )
        .await?;
    if updated != 1 {
        return Err(StorageError::Corrupt(format!(
            "bill {bill_id} cannot be settled early"
        )));
    }
    Ok(())
}

/// An account is DELINQUENT exactly while one of its bills is OVERDUE (a CLOSED
/// account stays closed).
pub(super) async fn refresh_account_status(
    transaction: &mut impl Statements,
    account_id: &str,
) -> Result<(), StorageError> {
    transaction
        .execute(
            "UPDATE accounts SET status = CASE \
               WHEN EXISTS (SELECT 1 FROM bills WHERE bills.account_id = $1 AND bills.state = 'OVERDUE') \
               THEN 'DELINQUENT' ELSE 'ACTIVE' END \
             WHERE account_id = $1 AND status <> 'CLOSED'",
            &[Param::Text(account_id)],
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::renumbered;

    #[test]
    fn renumbered_shifts_every_placeholder_and_nothing_else() {
        assert_eq!(
            renumbered("UPDATE t SET a = $1, b = $12 WHERE c = $2", 5),
            "UPDATE t SET a = $5, b = $16 WHERE c = $6"
        );
        assert_eq!(renumbered("VALUES ($1, $2)", 1), "VALUES ($1, $2)");
        assert_eq!(renumbered("no placeholders", 9), "no placeholders");
    }
}
