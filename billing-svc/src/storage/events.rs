//! The events table: state changes worth telling a customer, written inside the
//! transaction that makes the change, read in id order by WatchEvents.

use chrono::NaiveDate;
use service_kit::db::{Param, Statements};
use service_kit::{
    db::{Dialect, EventTable},
    money::{Currency, Money},
};
use sqlx::Row;

use super::{StorageError, Store};
use crate::domain::{calendar::parse_date, credit_limit::ChangeKind};

/// What a CREDIT_LIMIT_CHANGED event says beside its amount (the new limit in force).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitChangeDetail {
    pub previous_limit: Money,
    pub kind: ChangeKind,
    pub until: Option<NaiveDate>,
}

/// billing's event table (see [`EventTable`] for how readers never pass an id in flight).
const EVENTS: EventTable = EventTable {
    table: "events",
    lock_key: 0x0000_6576_656e_7473, // "events" in ASCII
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    PlanCreated,
    BillDueSoon,
    BillDue,
    BillOverdue,
    RepaymentApplied,
    RepaymentReversed,
    PlanSettled,
    CreditLimitChanged,
    PlanCancelled,
}

impl EventKind {
    pub const ALL: [Self; 9] = [
        Self::PlanCreated,
        Self::BillDueSoon,
        Self::BillDue,
        Self::BillOverdue,
        Self::RepaymentApplied,
        Self::RepaymentReversed,
        Self::PlanSettled,
        Self::CreditLimitChanged,
        Self::PlanCancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::PlanCreated => "PLAN_CREATED",
            Self::BillDueSoon => "BILL_DUE_SOON",
            Self::BillDue => "BILL_DUE",
            Self::BillOverdue => "BILL_OVERDUE",
            Self::RepaymentApplied => "REPAYMENT_APPLIED",
            Self::RepaymentReversed => "REPAYMENT_REVERSED",
            Self::PlanSettled => "PLAN_SETTLED",
            Self::CreditLimitChanged => "CREDIT_LIMIT_CHANGED",
            Self::PlanCancelled => "PLAN_CANCELLED",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == text)
    }
}

/// An event to write. `subject_id` (the bill, plan or payment) makes it unique per kind.
#[derive(Debug, Clone)]
pub(super) struct NewEvent<'a> {
    pub account_id: &'a str,
    pub kind: EventKind,
    pub subject_id: &'a str,
    pub plan_id: Option<&'a str>,
    pub bill_id: Option<&'a str>,
    pub payment_id: Option<&'a str>,
    pub amount: Option<Money>,
    pub due_date: Option<NaiveDate>,
    pub limit_change: Option<LimitChangeDetail>,
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub event_id: i64,
    pub kind: EventKind,
    pub account_id: String,
    pub plan_id: Option<String>,
    pub bill_id: Option<String>,
    pub payment_id: Option<String>,
    pub amount: Option<Money>,
    pub due_date: Option<String>,
    pub limit_change: Option<LimitChangeDetail>,
    pub created_at_micros: i64,
}

/// The text of an event's dates, which its insert's parameters borrow.
pub(super) struct EventDates {
    due_date: Option<String>,
    until_date: Option<String>,
}

impl EventDates {
    pub(super) fn of(event: &NewEvent<'_>) -> Self {
        Self {
            due_date: event.due_date.map(|date| date.to_string()),
            until_date: event
                .limit_change
                .and_then(|detail| detail.until)
                .map(|date| date.to_string()),
        }
    }
}

/// An event's insert (unless its kind and subject were written before) as SQL and
/// parameters, its placeholders numbered from `$first`, so that it can also ride in
/// another statement on PostgreSQL.
pub(super) struct EventInsert<'a> {
    /// PostgreSQL: the CTE `shared_lock` taking the writers' shared lock
    /// (`EventTable`), which `insert` reads from, so that the row is produced only
    /// once the lock is held.
    pub lock: Option<String>,
    pub insert: String,
    pub params: Vec<Param<'a>>,
}

impl<'a> EventInsert<'a> {
    pub(super) fn new(
        dialect: Dialect,
        event: &NewEvent<'a>,
        dates: &'a EventDates,
        now: i64,
        first: usize,
    ) -> Self {
        let mut params = vec![
            Param::Text(event.account_id),
            Param::Text(event.kind.as_str()),
            Param::Text(event.subject_id),
            Param::OptionalText(event.plan_id),
            Param::OptionalText(event.bill_id),
            Param::OptionalText(event.payment_id),
            Param::OptionalInteger(event.amount.map(|amount| amount.minor())),
            Param::OptionalText(event.amount.map(|amount| amount.currency().code())),
            Param::OptionalText(dates.due_date.as_deref()),
            Param::Integer(now),
            Param::OptionalInteger(
                event
                    .limit_change
                    .map(|detail| detail.previous_limit.minor()),
            ),
            Param::OptionalText(event.limit_change.map(|detail| detail.kind.as_str())),
            Param::OptionalText(dates.until_date.as_deref()),
        ];
        const COLUMNS: &str = "account_id, kind, subject_id, plan_id, bill_id, payment_id, amount_minor, \
            currency_code, due_date, created_at_micros, previous_amount_minor, limit_change_kind, until_date";
        let values = placeholders(first, params.len());
        match dialect {
            Dialect::Postgres => {
                let lock = format!(
                    "shared_lock AS (SELECT pg_advisory_xact_lock_shared(${}))",
                    first + params.len()
                );
                params.push(Param::Integer(EVENTS.lock_key));
                Self {
                    lock: Some(lock),
                    insert: format!(
                        "INSERT INTO events ({COLUMNS}) SELECT {values} FROM shared_lock \
                         ON CONFLICT (kind, subject_id) DO NOTHING"
                    ),
                    params,
                }
            }
            Dialect::Sqlite => Self {
                lock: None,
                insert: format!(
                    "INSERT INTO events ({COLUMNS}) VALUES ({values}) ON CONFLICT (kind, subject_id) DO NOTHING"
                ),
                params,
            },
        }
    }
}

/// `$first, …` for `count` placeholders.
pub(super) fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|number| format!("${number}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Writes `event` unless its kind and subject were written before.
pub(super) async fn insert_event(
    transaction: &mut impl Statements,
    dialect: Dialect,
    event: &NewEvent<'_>,
    now: i64,
) -> Result<(), StorageError> {
    let dates = EventDates::of(event);
    let insert = EventInsert::new(dialect, event, &dates, now, 1);
    let sql = match &insert.lock {
        // The lock taken in the insert's own statement: one round trip fewer.
        Some(lock) => format!("WITH {lock} {}", insert.insert),
        None => {
            EVENTS.before_insert(transaction, dialect).await?;
            insert.insert
        }
    };
    transaction.execute(&sql, &insert.params).await?;
    Ok(())
}

impl Store {
    /// Up to `limit` events with ids above `after_id`, in id order, none above the
    /// horizon (so an id still in flight is never passed over).
    pub async fn events_after(
        &self,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StorageError> {
        let horizon = self.last_event_id().await?;
        let rows = sqlx::query(
            "SELECT event_id, kind, account_id, plan_id, bill_id, payment_id, amount_minor, currency_code, due_date, \
               created_at_micros, previous_amount_minor, limit_change_kind, until_date FROM events WHERE event_id > $1 AND event_id <= $3 ORDER BY event_id LIMIT $2",
        )
        .bind(after_id)
        .bind(i64::from(limit))
        .bind(horizon)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|row| {
                let corrupt = |what: &str| StorageError::Corrupt(format!("events.{what}"));
                let amount_minor: Option<i64> = row.try_get("amount_minor")?;
                let currency: Option<String> = row.try_get("currency_code")?;
                let currency = currency
                    .map(|code| Currency::parse(&code).map_err(|_| corrupt("currency_code")))
                    .transpose()?;
                let amount = match (amount_minor, currency) {
                    (Some(minor), Some(currency)) => Some(
                        Money::from_minor(currency, minor).map_err(|_| corrupt("amount_minor"))?,
                    ),
                    _ => None,
                };
                let previous_minor: Option<i64> = row.try_get("previous_amount_minor")?;
                let limit_kind: Option<String> = row.try_get("limit_change_kind")?;
                let until: Option<String> = row.try_get("until_date")?;
                let limit_change = match (previous_minor, limit_kind, currency) {
                    (Some(minor), Some(kind), Some(currency)) => Some(LimitChangeDetail {
                        previous_limit: Money::from_minor(currency, minor)
                            .map_err(|_| corrupt("previous_amount_minor"))?,
                        kind: ChangeKind::parse(&kind)
                            .ok_or_else(|| corrupt("limit_change_kind"))?,
                        until: until
                            .map(|text| parse_date(&text).map_err(|_| corrupt("until_date")))
                            .transpose()?,
                    }),
                    _ => None,
                };
                Ok(StoredEvent {
                    event_id: row.try_get("event_id")?,
                    kind: EventKind::parse(row.try_get("kind")?).ok_or_else(|| corrupt("kind"))?,
                    account_id: row.try_get("account_id")?,
                    plan_id: row.try_get("plan_id")?,
                    bill_id: row.try_get("bill_id")?,
                    payment_id: row.try_get("payment_id")?,
                    amount,
                    due_date: row.try_get("due_date")?,
                    limit_change,
                    created_at_micros: row.try_get("created_at_micros")?,
                })
            })
            .collect()
    }

    /// The horizon of billing's events ([`EventTable::horizon`]).
    pub async fn last_event_id(&self) -> Result<i64, StorageError> {
        Ok(EVENTS.horizon(&self.db).await?)
    }
}
