//! The plans table, and opening a plan: plan, credit reservation and bills in one
//! transaction, with races settled by the database.

use std::collections::HashMap;

use service_kit::{
    clock::now_micros,
    db::{Param, Statements, StoredRow},
    money::{Currency, Money},
};
use sqlx::Row;

use super::{
    StorageError, Store,
    bills::{BILL_COLUMNS, bill_from_row},
    events::{EventKind, NewEvent, insert_event},
};
use crate::domain::{
    account::{AccountId, AccountStatus},
    bill::Bill,
    calendar::parse_date,
    plan::{Plan, PlanStatus, PricedPlan},
    product::InstallmentMethod,
};

pub(super) const PLAN_COLUMNS: &str = "plan_id, account_id, order_ref, request_fingerprint, product_id, method, \
     term_count, rate, currency_code, price_minor, down_payment_minor, principal_minor, purchase_date, \
     apr, effective_rate, status, created_at_micros";

/// A priced plan to open for an account.
#[derive(Debug)]
pub struct NewPlan<'a> {
    pub account_id: &'a AccountId,
    pub order_ref: &'a str,
    pub fingerprint: String,
    pub priced: &'a PricedPlan,
}

/// What CreatePlan found.
#[derive(Debug)]
pub enum CreatePlanOutcome {
    /// This call opened the plan.
    Created(Plan, Vec<Bill>),
    /// The same request opened it before.
    Existing(Plan, Vec<Bill>),
    /// Another request already used this order_ref.
    OrderRefReused,
    UnknownAccount,
    AccountNotActive(AccountStatus),
    CreditLimitExceeded {
        available: Money,
    },
}

impl Store {
    /// Opens `new` unless its order_ref is taken: inserts the plan (the unique
    /// (account_id, order_ref) decides between racing retries), reserves the principal
    /// from the account's credit with a conditional update (which decides between
    /// racing plans), and inserts the bills. Any refusal rolls everything back.
    pub async fn create_plan(&self, new: &NewPlan<'_>) -> Result<CreatePlanOutcome, StorageError> {
        let Some(account) = self.account(new.account_id).await? else {
            return Ok(CreatePlanOutcome::UnknownAccount);
        };
        let now = now_micros();
        let plan_id = format!("plan_{}", uuid::Uuid::now_v7().simple());
        let priced = new.priced;
        let (rate, purchase_date) = (priced.rate.to_string(), priced.purchase_date.to_string());
        let (apr, effective) = (
            priced.apr.annual_percent.to_string(),
            priced.apr.effective_percent.to_string(),
        );
        // On SQLite the whole transaction runs on the calling thread
        // (`service_kit::sqlite_writes`).
        let mut transaction = self.db.begin_direct().await?;
        let inserted = transaction
            .execute(
                "INSERT INTO plans (plan_id, account_id, order_ref, request_fingerprint, product_id, method, \
                   term_count, rate, currency_code, price_minor, down_payment_minor, principal_minor, purchase_date, \
                   apr, effective_rate, status, created_at_micros, updated_at_micros) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $17) \
                 ON CONFLICT (account_id, order_ref) DO NOTHING",
                &[
                    Param::Text(&plan_id),
                    Param::Text(new.account_id.as_str()),
                    Param::Text(new.order_ref),
                    Param::Text(new.fingerprint.as_str()),
                    Param::Text(priced.product_id.as_str()),
                    Param::Text(priced.method.as_str()),
                    Param::Integer(i64::from(priced.term_count)),
                    Param::Text(&rate),
                    Param::Text(priced.principal.currency().code()),
                    Param::Integer(priced.price.minor()),
                    Param::Integer(priced.down_payment.minor()),
                    Param::Integer(priced.principal.minor()),
                    Param::Text(&purchase_date),
                    Param::Text(&apr),
                    Param::Text(&effective),
                    Param::Text(PlanStatus::Active.as_str()),
                    Param::Integer(now),
                ],
            )
            .await?;
        if inserted == 0 {
            drop(transaction);
            return self.existing_plan(new).await;
        }

        // The limit in force: a temporary limit while one is in force (day close ends
        // it), else the permanent one.
        let reserved = transaction
            .execute(
                "UPDATE accounts SET principal_unpaid_minor = principal_unpaid_minor + $1, updated_at_micros = $2 \
                 WHERE account_id = $3 AND status = 'ACTIVE' \
                   AND COALESCE(temporary_limit_minor, credit_limit_minor) - principal_unpaid_minor >= $1",
                &[
                    Param::Integer(priced.principal.minor()),
                    Param::Integer(now),
                    Param::Text(new.account_id.as_str()),
                ],
            )
            .await?;
        if reserved == 0 {
            drop(transaction);
            let account = self.account(new.account_id).await?.unwrap_or(account);
            return Ok(match account.status {
                AccountStatus::Active => CreatePlanOutcome::CreditLimitExceeded {
                    available: account.available_credit(),
                },
                status => CreatePlanOutcome::AccountNotActive(status),
            });
        }

        insert_bills(&mut transaction, &plan_id, new, now).await?;
        let event = NewEvent {
            account_id: new.account_id.as_str(),
            kind: EventKind::PlanCreated,
            subject_id: &plan_id,
            plan_id: Some(&plan_id),
            bill_id: None,
            payment_id: None,
            amount: Some(priced.principal),
            due_date: None,
            limit_change: None,
        };
        insert_event(&mut transaction, self.db.dialect(), &event, now).await?;
        transaction.commit().await?;
        let (plan, bills) = self
            .plan(&plan_id)
            .await?
            .ok_or_else(|| StorageError::Corrupt("plan vanished after commit".into()))?;
        Ok(CreatePlanOutcome::Created(plan, bills))
    }

    async fn existing_plan(&self, new: &NewPlan<'_>) -> Result<CreatePlanOutcome, StorageError> {
        let row = sqlx::query(&format!(
            "SELECT {PLAN_COLUMNS} FROM plans WHERE account_id = $1 AND order_ref = $2"
        ))
        .bind(new.account_id.as_str())
        .bind(new.order_ref)
        .fetch_optional(self.db.pool())
        .await?
        .ok_or_else(|| StorageError::Corrupt("order_ref conflicted but no plan holds it".into()))?;
        let fingerprint: String = row.try_get("request_fingerprint")?;
        if fingerprint != new.fingerprint {
            return Ok(CreatePlanOutcome::OrderRefReused);
        }
        let plan = plan_from_row(&row)?;
        let bills = self.bills_of_plans(&[plan.plan_id.as_str()]).await?;
        Ok(CreatePlanOutcome::Existing(plan, bills))
    }

    /// A plan and its bills in seq order.
    pub async fn plan(&self, plan_id: &str) -> Result<Option<(Plan, Vec<Bill>)>, StorageError> {
        let Some(plan) = self
            .db
            .read_row(
                &format!("SELECT {PLAN_COLUMNS} FROM plans WHERE plan_id = $1"),
                &[Param::Text(plan_id)],
                plan_from_row,
            )
            .await?
        else {
            return Ok(None);
        };
        let bills = self
            .db
            .read_rows(
                &format!("SELECT {BILL_COLUMNS} FROM bills WHERE plan_id = $1 ORDER BY seq"),
                &[Param::Text(plan_id)],
                bill_from_row,
            )
            .await?;
        Ok(Some((plan, bills)))
    }

    /// The product of each of an account's plans, by plan id.
    pub async fn plan_products(
        &self,
        account_id: &AccountId,
    ) -> Result<HashMap<String, String>, StorageError> {
        let rows = sqlx::query("SELECT plan_id, product_id FROM plans WHERE account_id = $1")
            .bind(account_id.as_str())
            .fetch_all(self.db.pool())
            .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("plan_id")?, row.try_get("product_id")?)))
            .collect()
    }

    /// Up to `limit` plans of an account, newest first, after plan `after`.
    pub async fn plans_page(
        &self,
        account_id: &AccountId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Plan>, StorageError> {
        // Plan ids are time-ordered (UUIDv7), so id order is creation order.
        let rows = sqlx::query(&format!(
            "SELECT {PLAN_COLUMNS} FROM plans WHERE account_id = $1 AND plan_id < $2 \
             ORDER BY plan_id DESC LIMIT $3"
        ))
        .bind(account_id.as_str())
        .bind(after.unwrap_or("\u{10FFFF}"))
        .bind(i64::from(limit))
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(|row| plan_from_row(row)).collect()
    }
}

/// Inserts a plan's bills in one statement.
async fn insert_bills(
    transaction: &mut impl Statements,
    plan_id: &str,
    new: &NewPlan<'_>,
    now: i64,
) -> Result<(), StorageError> {
    const COLUMNS_PER_BILL: usize = 9;
    let lines = new.priced.schedule.lines();
    let now_placeholder = format!("${}", lines.len() * COLUMNS_PER_BILL + 1);
    let values: Vec<String> = (0..lines.len())
        .map(|index| {
            let first = index * COLUMNS_PER_BILL;
            let placeholders: Vec<String> = (1..=COLUMNS_PER_BILL)
                .map(|i| format!("${}", first + i))
                .collect();
            format!(
                "({}, 'OPEN', 0, {now_placeholder})",
                placeholders.join(", ")
            )
        })
        .collect();
    let sql = format!(
        "INSERT INTO bills (bill_id, plan_id, account_id, seq, due_date, currency_code, principal_minor, \
           interest_minor, fee_minor, state, penalty_minor, updated_at_micros) VALUES {}",
        values.join(", ")
    );
    let texts: Vec<(String, String)> = lines
        .iter()
        .map(|line| {
            (
                format!("bill_{}", uuid::Uuid::now_v7().simple()),
                line.due_date.to_string(),
            )
        })
        .collect();
    let mut params = Vec::with_capacity(lines.len() * COLUMNS_PER_BILL + 1);
    for (line, (bill_id, due_date)) in lines.iter().zip(&texts) {
        params.extend([
            Param::Text(bill_id),
            Param::Text(plan_id),
            Param::Text(new.account_id.as_str()),
            Param::Integer(i64::from(line.seq)),
            Param::Text(due_date),
            Param::Text(line.principal.currency().code()),
            Param::Integer(line.principal.minor()),
            Param::Integer(line.interest.minor()),
            Param::Integer(line.fee.minor()),
        ]);
    }
    params.push(Param::Integer(now));
    transaction.execute(&sql, &params).await?;
    Ok(())
}

pub(super) fn plan_from_row(row: &dyn StoredRow) -> Result<Plan, StorageError> {
    let corrupt = |what: &str| StorageError::Corrupt(format!("plans.{what}"));
    let currency =
        Currency::parse(&row.text("currency_code")?).map_err(|_| corrupt("currency_code"))?;
    let money = |column: &str| -> Result<Money, StorageError> {
        Money::from_minor(currency, row.integer(column)?).map_err(|_| corrupt(column))
    };
    let decimal = |column: &str| -> Result<rust_decimal::Decimal, StorageError> {
        row.text(column)?.parse().map_err(|_| corrupt(column))
    };
    Ok(Plan {
        plan_id: row.text("plan_id")?,
        account_id: row.text("account_id")?,
        order_ref: row.text("order_ref")?,
        product_id: row.text("product_id")?,
        method: InstallmentMethod::parse(&row.text("method")?).ok_or_else(|| corrupt("method"))?,
        term_count: u32::try_from(row.integer("term_count")?).map_err(|_| corrupt("term_count"))?,
        rate: decimal("rate")?,
        price: money("price_minor")?,
        down_payment: money("down_payment_minor")?,
        principal: money("principal_minor")?,
        purchase_date: parse_date(&row.text("purchase_date")?)
            .map_err(|_| corrupt("purchase_date"))?,
        apr: decimal("apr")?,
        effective_rate: decimal("effective_rate")?,
        status: PlanStatus::parse(&row.text("status")?).ok_or_else(|| corrupt("status"))?,
        created_at_micros: row.integer("created_at_micros")?,
    })
}
