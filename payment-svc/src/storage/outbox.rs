//! The outbox: what billing-svc must still be told, written in the same transaction
//! as the state change that requires it, and delivered until acknowledged.

use service_kit::{
    clock::now_micros,
    db::{DirectWrite, Param, Statements as _},
};
use sqlx::Row;

use super::{StorageError, Store};

/// What to tell billing-svc about a payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxKind {
    /// ApplyRepayment: money was captured.
    Apply,
    /// ReverseRepayment: money was refunded.
    Reverse,
}

impl OutboxKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Apply => "APPLY",
            Self::Reverse => "REVERSE",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "APPLY" => Some(Self::Apply),
            "REVERSE" => Some(Self::Reverse),
            _ => None,
        }
    }
}

/// An undelivered outbox row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub payment_id: String,
    pub kind: OutboxKind,
    pub attempts: i64,
    next_attempt_at_micros: i64,
}

/// The request that records a state change first tells billing itself (the fast
/// path); the dispatcher's first try waits this long so the two rarely overlap.
/// Overlap is harmless: billing is idempotent on the payment id.
pub(super) const INLINE_DELIVERY_GRACE_MICROS: i64 = 2_000_000;

pub(super) async fn insert_outbox(
    write: &mut DirectWrite,
    payment_id: &str,
    kind: OutboxKind,
    now: i64,
) -> Result<(), StorageError> {
    write
        .execute(
            "INSERT INTO outbox (payment_id, kind, account_id, attempts, next_attempt_at_micros, created_at_micros) \
             SELECT payment_id, $1, account_id, 0, $2, $3 FROM payments WHERE payment_id = $4 \
             ON CONFLICT (payment_id, kind) DO NOTHING",
            &[
                Param::Text(kind.as_str()),
                Param::Integer(now + INLINE_DELIVERY_GRACE_MICROS),
                Param::Integer(now),
                Param::Text(payment_id),
            ],
        )
        .await?;
    Ok(())
}

impl Store {
    /// Undelivered rows whose next attempt is due, oldest first (an APPLY before the
    /// REVERSE of the same payment).
    pub async fn due_outbox(&self, limit: u32) -> Result<Vec<OutboxRow>, StorageError> {
        let rows = sqlx::query(
            "SELECT payment_id, kind, attempts, next_attempt_at_micros FROM outbox \
             WHERE delivered_at_micros IS NULL AND dead_at_micros IS NULL AND next_attempt_at_micros <= $1 \
             ORDER BY created_at_micros, kind LIMIT $2",
        )
        .bind(now_micros())
        .bind(i64::from(limit))
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(OutboxRow {
                    payment_id: row.try_get("payment_id")?,
                    kind: OutboxKind::parse(row.try_get("kind")?)
                        .ok_or_else(|| StorageError::Corrupt("outbox.kind".into()))?,
                    attempts: row.try_get("attempts")?,
                    next_attempt_at_micros: row.try_get("next_attempt_at_micros")?,
                })
            })
            .collect()
    }

    /// Claims `row` until `lease_until_micros` so that one dispatcher among replicas
    /// delivers it; false if another claimed it first.
    pub async fn claim_outbox(
        &self,
        row: &OutboxRow,
        lease_until_micros: i64,
    ) -> Result<bool, StorageError> {
        let claimed = sqlx::query(
            "UPDATE outbox SET next_attempt_at_micros = $1, attempts = attempts + 1 \
             WHERE payment_id = $2 AND kind = $3 AND delivered_at_micros IS NULL AND dead_at_micros IS NULL \
               AND next_attempt_at_micros = $4",
        )
        .bind(lease_until_micros)
        .bind(row.payment_id.as_str())
        .bind(row.kind.as_str())
        .bind(row.next_attempt_at_micros)
        .execute(&mut *self.db.write_connection().await?)
        .await?
        .rows_affected();
        Ok(claimed == 1)
    }

    /// Delivery failed: try again at `retry_at_micros`.
    pub async fn outbox_retry(
        &self,
        payment_id: &str,
        kind: OutboxKind,
        retry_at_micros: i64,
        error: &str,
    ) -> Result<(), StorageError> {
        sqlx::query(
            "UPDATE outbox SET next_attempt_at_micros = $1, last_error = $2 \
             WHERE payment_id = $3 AND kind = $4 AND delivered_at_micros IS NULL",
        )
        .bind(retry_at_micros)
        .bind(error)
        .bind(payment_id)
        .bind(kind.as_str())
        .execute(&mut *self.db.write_connection().await?)
        .await?;
        Ok(())
    }

    /// Billing refused for good, or the attempts ran out: the row is a dead letter,
    /// no longer retried until an admin asks. Returns how many dead letters there are.
    pub async fn outbox_dead(
        &self,
        payment_id: &str,
        kind: OutboxKind,
        error: &str,
    ) -> Result<i64, StorageError> {
        sqlx::query(
            "UPDATE outbox SET dead_at_micros = $1, last_error = $2 \
             WHERE payment_id = $3 AND kind = $4 AND delivered_at_micros IS NULL",
        )
        .bind(now_micros())
        .bind(error)
        .bind(payment_id)
        .bind(kind.as_str())
        .execute(&mut *self.db.write_connection().await?)
        .await?;
        self.dead_letter_count().await
    }

    /// For the metrics: undelivered rows still being tried, when the oldest of them
    /// was written (None: there are none), and dead letters.
    pub async fn outbox_gauges(&self) -> Result<(i64, Option<i64>, i64), StorageError> {
        let row = sqlx::query(
            "SELECT \
               COALESCE(SUM(CASE WHEN dead_at_micros IS NULL THEN 1 ELSE 0 END), 0), \
               MIN(CASE WHEN dead_at_micros IS NULL THEN created_at_micros END), \
               COALESCE(SUM(CASE WHEN dead_at_micros IS NOT NULL THEN 1 ELSE 0 END), 0) \
             FROM outbox WHERE delivered_at_micros IS NULL",
        )
        .fetch_one(self.db.pool())
        .await?;
        Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
    }

    pub async fn dead_letter_count(&self) -> Result<i64, StorageError> {
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM outbox WHERE dead_at_micros IS NOT NULL AND delivered_at_micros IS NULL",
        )
        .fetch_one(self.db.pool())
        .await?;
        Ok(count)
    }

    /// Up to `limit` dead letters in (payment_id, kind) order, after `after`.
    pub async fn dead_letters_page(
        &self,
        after: Option<(&str, OutboxKind)>,
        limit: u32,
    ) -> Result<Vec<DeadLetter>, StorageError> {
        let (after_payment, after_kind) = after.map_or(("", ""), |(id, kind)| (id, kind.as_str()));
        let rows = sqlx::query(
            "SELECT payment_id, account_id, kind, attempts, last_error, dead_at_micros FROM outbox \
             WHERE dead_at_micros IS NOT NULL AND delivered_at_micros IS NULL \
               AND (payment_id > $1 OR (payment_id = $2 AND kind > $3)) \
             ORDER BY payment_id, kind LIMIT $4",
        )
        .bind(after_payment)
        .bind(after_payment)
        .bind(after_kind)
        .bind(i64::from(limit))
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(dead_letter_from_row).collect()
    }

    /// Puts a dead letter back in the outbox, due now, with its attempts reset; None
    /// if there is no such dead letter.
    pub async fn retry_dead_letter(
        &self,
        payment_id: &str,
        kind: OutboxKind,
    ) -> Result<Option<DeadLetter>, StorageError> {
        let row = sqlx::query(
            "SELECT payment_id, account_id, kind, attempts, last_error, dead_at_micros FROM outbox \
             WHERE payment_id = $1 AND kind = $2 AND dead_at_micros IS NOT NULL AND delivered_at_micros IS NULL",
        )
        .bind(payment_id)
        .bind(kind.as_str())
        .fetch_optional(self.db.pool())
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let letter = dead_letter_from_row(&row)?;
        let revived = sqlx::query(
            "UPDATE outbox SET dead_at_micros = NULL, attempts = 0, next_attempt_at_micros = $1 \
             WHERE payment_id = $2 AND kind = $3 AND dead_at_micros IS NOT NULL AND delivered_at_micros IS NULL",
        )
        .bind(now_micros())
        .bind(payment_id)
        .bind(kind.as_str())
        .execute(&mut *self.db.write_connection().await?)
        .await?
        .rows_affected();
        Ok((revived == 1).then_some(letter))
    }
}

/// An outbox row no longer retried on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub payment_id: String,
    pub account_id: String,
    pub kind: OutboxKind,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub dead_at_micros: i64,
}

fn dead_letter_from_row(row: &sqlx::any::AnyRow) -> Result<DeadLetter, StorageError> {
    Ok(DeadLetter {
        payment_id: row.try_get("payment_id")?,
        account_id: row.try_get("account_id")?,
        kind: OutboxKind::parse(row.try_get("kind")?)
            .ok_or_else(|| StorageError::Corrupt("outbox.kind".into()))?,
        attempts: row.try_get("attempts")?,
        last_error: row.try_get("last_error")?,
        dead_at_micros: row.try_get("dead_at_micros")?,
    })
}
