//! The bills table: reading bills, pages of them, and turning rows into domain bills.

use chrono::NaiveDate;
use service_kit::{
    db::{Param, StoredRow},
    money::{Currency, Money},
};

use super::{
    StorageError, Store,
    accounts::{ACCOUNT_COLUMNS, account_from_row},
};
use crate::domain::{
    account::{Account, AccountId},
    bill::{Bill, BillState, BillStatus, Components},
    calendar::parse_date,
};

pub(super) const BILL_COLUMNS: &str = "bill_id, plan_id, account_id, seq, due_date, currency_code, \
     principal_minor, interest_minor, fee_minor, penalty_minor, \
     paid_principal_minor, paid_interest_minor, paid_fee_minor, paid_penalty_minor, \
     state, paid_at_micros, paid_on";

/// [`BILL_COLUMNS`] beside an account's columns, whose names two of them share.
const SUMMARY_BILL_COLUMNS: &str = "bill_id, plan_id, account_id AS bill_account_id, seq, due_date, \
     currency_code AS bill_currency_code, \
     principal_minor, interest_minor, fee_minor, penalty_minor, \
     paid_principal_minor, paid_interest_minor, paid_fee_minor, paid_penalty_minor, \
     state, paid_at_micros, paid_on";
const SUMMARY_BILL_RENAMES: &[(&str, &str)] = &[
    ("account_id", "bill_account_id"),
    ("currency_code", "bill_currency_code"),
];

/// A row whose columns `bill_from_row` reads under other names.
struct Renamed<'a> {
    row: &'a dyn StoredRow,
    renames: &'a [(&'a str, &'a str)],
}

impl Renamed<'_> {
    fn name<'c>(&self, column: &'c str) -> &'c str
    where
        Self: 'c,
    {
        self.renames
            .iter()
            .find(|(wanted, _)| *wanted == column)
            .map_or(column, |(_, stored)| stored)
    }
}

impl StoredRow for Renamed<'_> {
    fn text(&self, column: &str) -> Result<String, StorageError> {
        self.row.text(self.name(column))
    }
    fn integer(&self, column: &str) -> Result<i64, StorageError> {
        self.row.integer(self.name(column))
    }
    fn optional_text(&self, column: &str) -> Result<Option<String>, StorageError> {
        self.row.optional_text(self.name(column))
    }
    fn optional_integer(&self, column: &str) -> Result<Option<i64>, StorageError> {
        self.row.optional_integer(self.name(column))
    }
}

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

/// Adds `param` to `params` and returns its placeholder.
fn placeholder<'a>(param: Param<'a>, params: &mut Vec<Param<'a>>) -> String {
    params.push(param);
    format!("${}", params.len())
}

impl Store {
    pub async fn bill(&self, bill_id: &str) -> Result<Option<Bill>, StorageError> {
        self.db
            .read_row(
                &format!("SELECT {BILL_COLUMNS} FROM bills WHERE bill_id = $1"),
                &[Param::Text(bill_id)],
                bill_from_row,
            )
            .await
    }

    /// An account and its unpaid (OPEN and OVERDUE) bills in due-date order (`None`
    /// for no such account): what its summary is made of. Paid, settled and cancelled
    /// bills stay behind the `(account_id, state)` index.
    pub async fn account_with_unpaid_bills(
        &self,
        account_id: &AccountId,
    ) -> Result<Option<(Account, Vec<Bill>)>, StorageError> {
        self.account_joined_to_bills(account_id, "AND state IN ('OPEN', 'OVERDUE')")
            .await
    }

    /// An account and every bill of it, any state, in due-date order (`None` for no
    /// such account): what a repayment is quoted from.
    pub async fn account_with_bills(
        &self,
        account_id: &AccountId,
    ) -> Result<Option<(Account, Vec<Bill>)>, StorageError> {
        self.account_joined_to_bills(account_id, "").await
    }

    /// One statement, so one snapshot and, on PostgreSQL, one round trip: the account
    /// row joined to its bills that meet `bill_condition` (SQL after `account_id =
    /// $1`), the account's columns repeated on each (or once, with the bill's columns
    /// NULL, when it has none).
    async fn account_joined_to_bills(
        &self,
        account_id: &AccountId,
        bill_condition: &str,
    ) -> Result<Option<(Account, Vec<Bill>)>, StorageError> {
        let sql = format!(
            "SELECT a.*, b.* FROM (SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE account_id = $1) a \
             LEFT JOIN (SELECT {SUMMARY_BILL_COLUMNS} FROM bills \
                        WHERE account_id = $1 {bill_condition}) b ON TRUE \
             ORDER BY b.due_date, b.plan_id, b.seq"
        );
        // The account is decoded from the first row only.
        let first = std::sync::atomic::AtomicBool::new(true);
        let rows = self
            .db
            .read_rows(&sql, &[Param::Text(account_id.as_str())], |row| {
                let account = first
                    .swap(false, std::sync::atomic::Ordering::Relaxed)
                    .then(|| account_from_row(row))
                    .transpose()?;
                let bill = match row.optional_text("bill_id")? {
                    Some(_) => Some(bill_from_row(&Renamed {
                        row,
                        renames: SUMMARY_BILL_RENAMES,
                    })?),
                    None => None,
                };
                Ok((account, bill))
            })
            .await?;
        let mut rows = rows.into_iter();
        let Some((Some(account), first_bill)) = rows.next() else {
            return Ok(None);
        };
        let bills = first_bill
            .into_iter()
            .chain(rows.filter_map(|(_, bill)| bill))
            .collect();
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
        let params: Vec<Param<'_>> = plan_ids.iter().map(|id| Param::Text(id)).collect();
        self.db.read_rows(&sql, &params, bill_from_row).await
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
        let today_text = today.to_string();
        let after_due_date = after.map(|key| key.due_date.to_string());
        let mut params = vec![Param::Text(account_id.as_str())];
        let conditions: Vec<String> = statuses
            .iter()
            .map(|status| match status {
                BillStatus::Upcoming => format!(
                    "(state = 'OPEN' AND due_date > {})",
                    placeholder(Param::Text(&today_text), &mut params)
                ),
                BillStatus::Due => format!(
                    "(state = 'OPEN' AND due_date <= {})",
                    placeholder(Param::Text(&today_text), &mut params)
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
        if let (Some(key), Some(after_due_date)) = (after, &after_due_date) {
            let due_date = placeholder(Param::Text(after_due_date), &mut params);
            let plan_id = placeholder(Param::Text(&key.plan_id), &mut params);
            let seq = placeholder(Param::Integer(i64::from(key.seq)), &mut params);
            sql.push_str(&format!(
                " AND (due_date, plan_id, seq) > ({due_date}, {plan_id}, {seq})"
            ));
        }
        let limit = placeholder(Param::Integer(i64::from(limit)), &mut params);
        sql.push_str(&format!(" ORDER BY due_date, plan_id, seq LIMIT {limit}"));
        self.db.read_rows(&sql, &params, bill_from_row).await
    }
}

pub(super) fn bill_from_row(row: &dyn StoredRow) -> Result<Bill, StorageError> {
    let corrupt = |what: &str| StorageError::Corrupt(format!("bills.{what}"));
    let date = |column: &str| -> Result<NaiveDate, StorageError> {
        parse_date(&row.text(column)?).map_err(|_| corrupt(column))
    };
    // Columns are asked for in BILL_COLUMNS' order: a SQLite row finds each where
    // the one before it ended, without searching the names.
    let bill_id = row.text("bill_id")?;
    let plan_id = row.text("plan_id")?;
    let account_id = row.text("account_id")?;
    let seq = u32::try_from(row.integer("seq")?).map_err(|_| corrupt("seq"))?;
    let due_date = date("due_date")?;
    let currency =
        Currency::parse(&row.text("currency_code")?).map_err(|_| corrupt("currency_code"))?;
    let money = |column: &str| -> Result<Money, StorageError> {
        Money::from_minor(currency, row.integer(column)?).map_err(|_| corrupt(column))
    };
    Ok(Bill {
        bill_id,
        plan_id,
        account_id,
        seq,
        due_date,
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
        paid_on: row
            .optional_text("paid_on")?
            .map(|text| parse_date(&text).map_err(|_| corrupt("paid_on")))
            .transpose()?,
    })
}
