//! The refunds table: one full refund per payment, idempotent per caller's key, each
//! a state machine of its own (see [`RefundStatus`]) that the request starts and the
//! reconciler finishes.

use service_kit::clock::now_micros;
use sqlx::{Row, any::AnyRow};

use super::{StorageError, Store};

const REFUND_COLUMNS: &str = "refund_id, payment_id, caller, idempotency_key, status, failure_code, \
     failure_message, updated_at_micros";

/// Where a refund stands. Money moves at the provider only in SENT, and only after
/// billing reversed the payment, so billing never counts money the provider returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundStatus {
    /// Stored; billing has not yet agreed to reverse the payment.
    Requested,
    /// Billing reversed the payment; the provider is asked to refund.
    Sent,
    /// The provider refunded: done.
    Refunded,
    /// The provider refused after billing reversed: billing is to apply the money
    /// again (under a derived id) before the refund is FAILED.
    Reinstating,
    /// Nothing was refunded, and billing counts the payment as paid.
    Failed,
}

impl RefundStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "REQUESTED",
            Self::Sent => "SENT",
            Self::Refunded => "REFUNDED",
            Self::Reinstating => "REINSTATING",
            Self::Failed => "FAILED",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [
            Self::Requested,
            Self::Sent,
            Self::Refunded,
            Self::Reinstating,
            Self::Failed,
        ]
        .into_iter()
        .find(|status| status.as_str() == text)
    }

    /// Whether the reconciler still has work to do on it.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Refunded | Self::Failed)
    }
}

/// A refund as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund {
    pub refund_id: String,
    pub payment_id: String,
    pub caller: String,
    pub idempotency_key: String,
    pub status: RefundStatus,
    /// Why it FAILED (e.g. billing's NOT_REVERSIBLE), or why it is REINSTATING.
    pub failure_code: Option<String>,
    pub failure_message: Option<String>,
    updated_at_micros: i64,
}

/// Why a refund did not go through, recorded with its step.
#[derive(Debug, Clone, Copy)]
pub struct RefundFailure<'a> {
    pub code: &'a str,
    pub message: &'a str,
}

impl Store {
    /// Records the refund of `payment_id` as REQUESTED unless one exists; returns the
    /// refund that stands (this one, or the earlier one for the payment or the key).
    pub async fn insert_refund(
        &self,
        payment_id: &str,
        account_id: &str,
        caller: &str,
        idempotency_key: &str,
        reason: &str,
    ) -> Result<Refund, StorageError> {
        let now = now_micros();
        sqlx::query(
            "INSERT INTO refunds (refund_id, payment_id, account_id, caller, idempotency_key, reason, created_at_micros, \
               status, updated_at_micros) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'REQUESTED', $7) ON CONFLICT DO NOTHING",
        )
        .bind(format!("rf_{}", uuid::Uuid::now_v7().simple()))
        .bind(payment_id)
        .bind(account_id)
        .bind(caller)
        .bind(idempotency_key)
        .bind(reason)
        .bind(now)
        .execute(&mut *self.db.write_connection().await?)
        .await?;
        let row = sqlx::query(&format!(
            "SELECT {REFUND_COLUMNS} FROM refunds \
             WHERE payment_id = $1 OR (caller = $2 AND idempotency_key = $3) ORDER BY created_at_micros LIMIT 1"
        ))
        .bind(payment_id)
        .bind(caller)
        .bind(idempotency_key)
        .fetch_one(self.db.pool())
        .await?;
        refund_from_row(&row)
    }

    /// The refund of `payment_id`, if one was asked for.
    pub async fn refund_of_payment(
        &self,
        payment_id: &str,
    ) -> Result<Option<Refund>, StorageError> {
        let row = sqlx::query(&format!(
            "SELECT {REFUND_COLUMNS} FROM refunds WHERE payment_id = $1"
        ))
        .bind(payment_id)
        .fetch_optional(self.db.pool())
        .await?;
        row.as_ref().map(refund_from_row).transpose()
    }

    /// Moves a refund `from` → `to` (recording `failure` when given); false if it was
    /// no longer in `from` (another replica moved it first).
    pub async fn refund_step(
        &self,
        refund_id: &str,
        from: RefundStatus,
        to: RefundStatus,
        failure: Option<RefundFailure<'_>>,
    ) -> Result<bool, StorageError> {
        let moved = sqlx::query(
            "UPDATE refunds SET status = $1, failure_code = COALESCE($2, failure_code), \
               failure_message = COALESCE($3, failure_message), updated_at_micros = $4 \
             WHERE refund_id = $5 AND status = $6",
        )
        .bind(to.as_str())
        .bind(failure.map(|failure| failure.code))
        .bind(failure.map(|failure| failure.message))
        .bind(now_micros())
        .bind(refund_id)
        .bind(from.as_str())
        .execute(&mut *self.db.write_connection().await?)
        .await?
        .rows_affected();
        Ok(moved == 1)
    }

    /// The provider refunded: the refund SENT → REFUNDED and its payment SUCCEEDED →
    /// REFUNDED, in one transaction. Billing reversed before the provider was asked,
    /// so nothing more is owed to it. False if the refund was no longer SENT.
    pub async fn record_refunded(&self, refund: &Refund) -> Result<bool, StorageError> {
        let now = now_micros();
        let mut transaction = self.db.begin_write().await?;
        let moved = sqlx::query(
            "UPDATE refunds SET status = 'REFUNDED', updated_at_micros = $1 WHERE refund_id = $2 AND status = 'SENT'",
        )
        .bind(now)
        .bind(refund.refund_id.as_str())
        .execute(&mut *transaction)
        .await?
        .rows_affected();
        if moved == 1 {
            sqlx::query(
                "UPDATE payments SET status = 'REFUNDED', updated_at_micros = $1 \
                 WHERE payment_id = $2 AND status = 'SUCCEEDED'",
            )
            .bind(now)
            .bind(refund.payment_id.as_str())
            .execute(&mut *transaction)
            .await?;
        }
        transaction.commit().await?;
        Ok(moved == 1)
    }

    /// Refunds not yet final that were last touched before `cutoff_micros`.
    pub async fn unfinished_refunds(
        &self,
        cutoff_micros: i64,
        limit: u32,
    ) -> Result<Vec<Refund>, StorageError> {
        let rows = sqlx::query(&format!(
            "SELECT {REFUND_COLUMNS} FROM refunds \
             WHERE status IN ('REQUESTED', 'SENT', 'REINSTATING') AND updated_at_micros < $1 \
             ORDER BY updated_at_micros LIMIT $2"
        ))
        .bind(cutoff_micros)
        .bind(i64::from(limit))
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(refund_from_row).collect()
    }

    /// Claims `refund` for one reconciler pass (among replicas, the first to touch it
    /// since it was read); false if another claimed or moved it.
    pub async fn claim_refund(&self, refund: &Refund) -> Result<bool, StorageError> {
        let claimed = sqlx::query(
            "UPDATE refunds SET updated_at_micros = $1 \
             WHERE refund_id = $2 AND status = $3 AND updated_at_micros = $4",
        )
        .bind(now_micros())
        .bind(refund.refund_id.as_str())
        .bind(refund.status.as_str())
        .bind(refund.updated_at_micros)
        .execute(&mut *self.db.write_connection().await?)
        .await?
        .rows_affected();
        Ok(claimed == 1)
    }
}

fn refund_from_row(row: &AnyRow) -> Result<Refund, StorageError> {
    Ok(Refund {
        refund_id: row.try_get("refund_id")?,
        payment_id: row.try_get("payment_id")?,
        caller: row.try_get("caller")?,
        idempotency_key: row.try_get("idempotency_key")?,
        status: RefundStatus::parse(row.try_get("status")?)
            .ok_or_else(|| StorageError::Corrupt("refunds.status".into()))?,
        failure_code: row.try_get("failure_code")?,
        failure_message: row.try_get("failure_message")?,
        updated_at_micros: row.try_get("updated_at_micros")?,
    })
}
