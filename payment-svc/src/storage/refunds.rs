//! The refunds table: one full refund per payment, idempotent per caller's key.

use service_kit::clock::now_micros;
use sqlx::Row;

use super::{StorageError, Store};

/// A refund as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund {
    pub refund_id: String,
    pub payment_id: String,
    pub caller: String,
    pub idempotency_key: String,
}

impl Store {
    /// Records the refund of `payment_id` unless one exists; returns the refund that
    /// stands (this one, or the earlier one for the payment or the key).
    pub async fn insert_refund(
        &self,
        payment_id: &str,
        account_id: &str,
        caller: &str,
        idempotency_key: &str,
        reason: &str,
    ) -> Result<Refund, StorageError> {
        sqlx::query(
            "INSERT INTO refunds (refund_id, payment_id, account_id, caller, idempotency_key, reason, created_at_micros) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        )
        .bind(format!("rf_{}", uuid::Uuid::now_v7().simple()))
        .bind(payment_id)
        .bind(account_id)
        .bind(caller)
        .bind(idempotency_key)
        .bind(reason)
        .bind(now_micros())
        .execute(self.db.writer())
        .await?;
        let row = sqlx::query(
            "SELECT refund_id, payment_id, caller, idempotency_key FROM refunds \
             WHERE payment_id = $1 OR (caller = $2 AND idempotency_key = $3) ORDER BY created_at_micros LIMIT 1",
        )
        .bind(payment_id)
        .bind(caller)
        .bind(idempotency_key)
        .fetch_one(self.db.pool())
        .await?;
        Ok(Refund {
            refund_id: row.try_get("refund_id")?,
            payment_id: row.try_get("payment_id")?,
            caller: row.try_get("caller")?,
            idempotency_key: row.try_get("idempotency_key")?,
        })
    }
}
