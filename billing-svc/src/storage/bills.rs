//! The bills table: reading bills, pages of them, and turning rows into domain bills.

use chrono::NaiveDate;
use service_kit::money::{Currency, Money};
use service_kit::{db::StoredRow, sqlite_reads::rows};
use sqlx::{Any, query::Query};

use super::{StorageError, Store, accounts::account_on};
use crate::domain::{
    account::{Account, AccountId},
    bill::{Bill, BillState, BillStatus, Components},
    calendar::parse_date,
};

pub(super) const BILL_COLUMNS: &str = "bill_id, plan_id, account_id, seq, due_date, currency_code, \
     principal_minor, interest_minor, fee_minor, penalty_minor, \
     paid_principal_minor, paid_interest_minor, paid_fee_minor, paid_penalty_minor, \
     state, paid_at_micros, paid_on";

/// Where a page of bills ends: the sort key of its last bill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillPageKey {
    pub due_date: NaiveDate,
    pub plan_id: String,
    pub seq: u32,
}

impl BillPageKey {
    pub fn of(bill: &Bill) -> Self {
        Self {
            due_date: bill.due_date,
            plan_id: bill.plan_id.clone(),
            seq: bill.seq,
        }
    }
}

/// A value to bind, so that dynamically built queries bind in placeholder order.
enum Bind {
    Text(String),
    Integer(i64),
}

/// Adds `bind` to `binds` and returns its placeholder.
fn placeholder(bind: Bind, binds: &mut Vec<Bind>) -> String {
    binds.push(bind);
    format!("${}", binds.len())
}

fn bind_all<'q>(
    mut query: Query<'q, Any, sqlx::any::AnyArguments<'q>>,
    binds: Vec<Bind>,
) -> Query<'q, Any, sqlx::any::AnyArguments<'q>> {
    for bind in binds {
        query = match bind {
            Bind::Text(text) => query.bind(text),
            Bind::Integer(integer) => query.bind(integer),
        };
    }
    query
}

impl Store {
    pub async fn bill(&self, bill_id: &str) -> Result<Option<Bill>, StorageError> {
        let sql = format!("SELECT {BILL_COLUMNS} FROM bills WHERE bill_id = $1");
        if let Some(reads) = self.db.sqlite_reads() {
            return reads.read(|connection| {
                Ok(rows(connection, &sql, &[&bill_id], |row| bill_from_row(row))?.pop())
            });
        }
        let row = sqlx::query(&sql)
            .bind(bill_id)
            .fetch_optional(self.db.pool())
            .await?;
        row.as_ref().map(bill_from_row).transpose()
    }

    /// Every bill of an account, any state, in due-date order.
    pub async fn account_bills(&self, account_id: &AccountId) -> Result<Vec<Bill>, StorageError> {
        if let Some(reads) = self.db.sqlite_reads() {
            return reads.read(|connection| account_bills_on(connection, account_id));
        }
        let rows = sqlx::query(&account_bills_sql())
            .bind(account_id.as_str())
            .fetch_all(self.db.pool())
            .await?;
        rows.iter().map(bill_from_row).collect()
    }

    /// An account and its unpaid (OPEN and OVERDUE) bills in due-date order, as of one
    /// moment on SQLite (`None` for no such account): what its summary is made of.
    /// Paid, settled and cancelled bills stay behind the `(account_id, state)` index.
    pub async fn account_with_unpaid_bills(
        &self,
        account_id: &AccountId,
    ) -> Result<Option<(Account, Vec<Bill>)>, StorageError> {
        let bills_sql = format!(
            "SELECT {BILL_COLUMNS} FROM bills WHERE account_id = $1 AND state IN ('OPEN', 'OVERDUE') \
             ORDER BY due_date, plan_id, seq"
        );
        if let Some(reads) = self.db.sqlite_reads() {
            return reads.read(|connection| {
                let Some(account) = account_on(connection, account_id)? else {
                    return Ok(None);
                };
                let bills = rows(connection, &bills_sql, &[&account_id.as_str()], |row| {
                    bill_from_row(row)
                })?;
                Ok(Some((account, bills)))
            });
        }
        let Some(account) = self.account(account_id).await? else {
            return Ok(None);
        };
        let rows = sqlx::query(&bills_sql)
            .bind(account_id.as_str())
            .fetch_all(self.db.pool())
            .await?;
        let bills = rows.iter().map(bill_from_row).collect::<Result<_, _>>()?;
        Ok(Some((account, bills)))
    }

    /// The bills of `plan_ids`, in plan then seq order.
    pub async fn bills_of_plans(&self, plan_ids: &[&str]) -> Result<Vec<Bill>, StorageError> {
        if plan_ids.is_empty() {
            return Ok(Vec::new());
        }
        let placeholders: Vec<String> = (1..=plan_ids.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT {BILL_COLUMNS} FROM bills WHERE plan_id IN ({}) ORDER BY plan_id, seq",
            placeholders.join(", ")
        );
        let binds = plan_ids
            .iter()
            .map(|id| Bind::Text((*id).to_owned()))
            .collect();
        let rows = bind_all(sqlx::query(&sql), binds)
            .fetch_all(self.db.pool())
            .await?;
        rows.iter().map(bill_from_row).collect()
    }

    /// Up to `limit` bills of an account showing one of `statuses` on `today`, sorted
    /// by due date, plan, seq, starting after `after`.
    pub async fn bills_page(
        &self,
        account_id: &AccountId,
        statuses: &[BillStatus],
        today: NaiveDate,
        after: Option<&BillPageKey>,
        limit: u32,
    ) -> Result<Vec<Bill>, StorageError> {
        let mut binds = vec![Bind::Text(account_id.as_str().to_owned())];
        let today_text = today.to_string();
        let conditions: Vec<String> = statuses
            .iter()
            .map(|status| match status {
                BillStatus::Upcoming => format!(
                    "(state = 'OPEN' AND due_date > {})",
                    placeholder(Bind::Text(today_text.clone()), &mut binds)
                ),
                BillStatus::Due => format!(
                    "(state = 'OPEN' AND due_date <= {})",
                    placeholder(Bind::Text(today_text.clone()), &mut binds)
                ),
                BillStatus::Overdue => "state = 'OVERDUE'".to_owned(),
                BillStatus::Paid => "state = 'PAID'".to_owned(),
                BillStatus::SettledEarly => "state = 'SETTLED_EARLY'".to_owned(),
                BillStatus::Cancelled => "state = 'CANCELLED'".to_owned(),
            })
            .collect();
        let mut sql = format!(
            "SELECT {BILL_COLUMNS} FROM bills WHERE account_id = $1 AND ({})",
            conditions.join(" OR ")
        );
        if let Some(key) = after {
            let due_date = placeholder(Bind::Text(key.due_date.to_string()), &mut binds);
            let plan_id = placeholder(Bind::Text(key.plan_id.clone()), &mut binds);
            let seq = placeholder(Bind::Integer(i64::from(key.seq)), &mut binds);
            sql.push_str(&format!(
                " AND (due_date, plan_id, seq) > ({due_date}, {plan_id}, {seq})"
            ));
        }
        let limit = placeholder(Bind::Integer(i64::from(limit)), &mut binds);
        sql.push_str(&format!(" ORDER BY due_date, plan_id, seq LIMIT {limit}"));
        if let Some(reads) = self.db.sqlite_reads() {
            let values: Vec<&dyn rusqlite::ToSql> = binds
                .iter()
                .map(|bind| match bind {
                    Bind::Text(text) => text as &dyn rusqlite::ToSql,
                    Bind::Integer(integer) => integer,
                })
                .collect();
            return reads
                .read(|connection| rows(connection, &sql, &values, |row| bill_from_row(row)));
        }
        let rows = bind_all(sqlx::query(&sql), binds)
            .fetch_all(self.db.pool())
            .await?;
        rows.iter().map(bill_from_row).collect()
    }
}

/// Every bill of an account (`$1`), any state, in due-date order.
fn account_bills_sql() -> String {
    format!(
        "SELECT {BILL_COLUMNS} FROM bills WHERE account_id = $1 ORDER BY due_date, plan_id, seq"
    )
}

/// Every bill of an account on a SQLite read connection.
fn account_bills_on(
    connection: &rusqlite::Connection,
    account_id: &AccountId,
) -> Result<Vec<Bill>, StorageError> {
    rows(
        connection,
        &account_bills_sql(),
        &[&account_id.as_str()],
        |row| bill_from_row(row),
    )
}

pub(super) fn bill_from_row(row: &impl StoredRow) -> Result<Bill, StorageError> {
    let corrupt = |what: &str| StorageError::Corrupt(format!("bills.{what}"));
    let currency =
        Currency::parse(&row.text("currency_code")?).map_err(|_| corrupt("currency_code"))?;
    let money = |column: &str| -> Result<Money, StorageError> {
        Money::from_minor(currency, row.integer(column)?).map_err(|_| corrupt(column))
    };
    let date = |column: &str| -> Result<NaiveDate, StorageError> {
        parse_date(&row.text(column)?).map_err(|_| corrupt(column))
    };
    let paid_on = row.optional_text("paid_on")?;
    Ok(Bill {
        bill_id: row.text("bill_id")?,
        plan_id: row.text("plan_id")?,
        account_id: row.text("account_id")?,
        seq: u32::try_from(row.integer("seq")?).map_err(|_| corrupt("seq"))?,
        due_date: date("due_date")?,
        charged: Components {
            principal: money("principal_minor")?,
            interest: money("interest_minor")?,
            fee: money("fee_minor")?,
            penalty: money("penalty_minor")?,
        },
        paid: Components {
            principal: money("paid_principal_minor")?,
            interest: money("paid_interest_minor")?,
            fee: money("paid_fee_minor")?,
            penalty: money("paid_penalty_minor")?,
        },
        state: BillState::parse(&row.text("state")?).ok_or_else(|| corrupt("state"))?,
        paid_at_micros: row.optional_integer("paid_at_micros")?,
        paid_on: paid_on
            .map(|text| parse_date(&text).map_err(|_| corrupt("paid_on")))
            .transpose()?,
    })
}
