//! payment-svc's events table: mandate and autopay changes worth telling a customer,
//! written inside the transaction that makes the change, read in id order by
//! WatchPaymentEvents. The same design as billing-svc's events (and its reader
//! horizon on PostgreSQL).

use service_kit::db::WriteTransaction;
use service_kit::{
    db::{Dialect, EventTable},
    money::{Currency, Money},
};
use sqlx::Row;

use super::{StorageError, Store};

/// payment-svc's event table (see [`EventTable`] for how readers never pass an id in
/// flight).
const PAYMENT_EVENTS: EventTable = EventTable {
    table: "payment_events",
    lock_key: 0x0070_6576_656e_7473, // "pevents" in ASCII
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentEventKind {
    MandateCreated,
    MandateRevoked,
    MandateSuspended,
    AutopayNotice,
    AutopayDebited,
    AutopayFailed,
    AutopaySkipped,
}

impl PaymentEventKind {
    pub const ALL: [Self; 7] = [
        Self::MandateCreated,
        Self::MandateRevoked,
        Self::MandateSuspended,
        Self::AutopayNotice,
        Self::AutopayDebited,
        Self::AutopayFailed,
        Self::AutopaySkipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::MandateCreated => "MANDATE_CREATED",
            Self::MandateRevoked => "MANDATE_REVOKED",
            Self::MandateSuspended => "MANDATE_SUSPENDED",
            Self::AutopayNotice => "AUTOPAY_NOTICE",
            Self::AutopayDebited => "AUTOPAY_DEBITED",
            Self::AutopayFailed => "AUTOPAY_FAILED",
            Self::AutopaySkipped => "AUTOPAY_SKIPPED",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == text)
    }
}

/// An event to write; `subject_id` makes it unique per kind.
#[derive(Debug, Clone, Default)]
pub struct NewPaymentEvent<'a> {
    pub account_id: &'a str,
    pub subject_id: &'a str,
    pub mandate_id: Option<&'a str>,
    pub payment_id: Option<&'a str>,
    pub amount: Option<Money>,
    pub due_date: Option<&'a str>,
    pub instrument_last4: Option<&'a str>,
    pub reason: Option<&'a str>,
    pub attempt: Option<i64>,
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPaymentEvent {
    pub event_id: i64,
    pub kind: PaymentEventKind,
    pub account_id: String,
    pub mandate_id: Option<String>,
    pub payment_id: Option<String>,
    pub amount: Option<Money>,
    pub due_date: Option<String>,
    pub instrument_last4: Option<String>,
    pub reason: Option<String>,
    pub attempt: Option<i64>,
    pub created_at_micros: i64,
}

/// Writes `event` of `kind` unless that kind and subject were written before; true
/// when written.
pub(super) async fn insert_event(
    transaction: &mut WriteTransaction,
    dialect: Dialect,
    kind: PaymentEventKind,
    event: &NewPaymentEvent<'_>,
    now: i64,
) -> Result<bool, StorageError> {
    PAYMENT_EVENTS.before_insert(transaction, dialect).await?;
    let written = sqlx::query(
        "INSERT INTO payment_events (account_id, kind, subject_id, mandate_id, payment_id, amount_minor, \
           currency_code, due_date, instrument_last4, reason, attempt, created_at_micros) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
         ON CONFLICT (kind, subject_id) DO NOTHING",
    )
    .bind(event.account_id)
    .bind(kind.as_str())
    .bind(event.subject_id)
    .bind(event.mandate_id)
    .bind(event.payment_id)
    .bind(event.amount.map(|amount| amount.minor()))
    .bind(event.amount.map(|amount| amount.currency().code()))
    .bind(event.due_date)
    .bind(event.instrument_last4)
    .bind(event.reason)
    .bind(event.attempt)
    .bind(now)
    .execute(&mut **transaction)
    .await?
    .rows_affected();
    Ok(written == 1)
}

impl Store {
    /// Up to `limit` events with ids above `after_id`, in id order, none above the
    /// horizon (so an id still in flight is never passed over).
    pub async fn payment_events_after(
        &self,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<StoredPaymentEvent>, StorageError> {
        let horizon = self.last_payment_event_id().await?;
        let rows = sqlx::query(
            "SELECT event_id, kind, account_id, mandate_id, payment_id, amount_minor, currency_code, due_date, \
               instrument_last4, reason, attempt, created_at_micros FROM payment_events \
             WHERE event_id > $1 AND event_id <= $3 ORDER BY event_id LIMIT $2",
        )
        .bind(after_id)
        .bind(i64::from(limit))
        .bind(horizon)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    /// The horizon of payment-svc's events ([`EventTable::horizon`]).
    pub async fn last_payment_event_id(&self) -> Result<i64, StorageError> {
        Ok(PAYMENT_EVENTS.horizon(&self.db).await?)
    }
}

fn event_from_row(row: &sqlx::any::AnyRow) -> Result<StoredPaymentEvent, StorageError> {
    let corrupt = |what: &str| StorageError::Corrupt(format!("payment_events.{what}"));
    let amount_minor: Option<i64> = row.try_get("amount_minor")?;
    let currency: Option<String> = row.try_get("currency_code")?;
    let amount = match (amount_minor, currency) {
        (Some(minor), Some(code)) => Some(
            Currency::parse(&code)
                .and_then(|currency| Money::from_minor(currency, minor))
                .map_err(|_| corrupt("amount_minor"))?,
        ),
        _ => None,
    };
    Ok(StoredPaymentEvent {
        event_id: row.try_get("event_id")?,
        kind: PaymentEventKind::parse(row.try_get("kind")?).ok_or_else(|| corrupt("kind"))?,
        account_id: row.try_get("account_id")?,
        mandate_id: row.try_get("mandate_id")?,
        payment_id: row.try_get("payment_id")?,
        amount,
        due_date: row.try_get("due_date")?,
        instrument_last4: row.try_get("instrument_last4")?,
        reason: row.try_get("reason")?,
        attempt: row.try_get("attempt")?,
        created_at_micros: row.try_get("created_at_micros")?,
    })
}
