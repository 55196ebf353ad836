//! The mandates table: consent recorded (replacing the account's ACTIVE mandate) with
//! its event, revocation and suspension as compare-and-set updates with theirs.

use service_kit::{
    clock::now_micros,
    money::{Currency, Money},
};
use sqlx::{Row, any::AnyRow};

use super::{
    StorageError, Store,
    events::{NewPaymentEvent, PaymentEventKind, insert_event},
};
use crate::domain::{mandate::MandateStatus, payment::PaymentMethod};

const MANDATE_COLUMNS: &str = "mandate_id, account_id, idempotency_key, request_fingerprint, method, \
     instrument_last4, instrument_sealed, currency_code, max_amount_minor, consent_text_version, \
     consent_accepted_at_micros, status, status_reason, created_at_micros, updated_at_micros";

/// Mandates one page of the ACTIVE list holds at most, and an account's list.
pub const MANDATES_PAGE_MAX: u32 = 100;

/// A mandate as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mandate {
    pub mandate_id: String,
    pub account_id: String,
    pub idempotency_key: String,
    pub request_fingerprint: String,
    pub method: PaymentMethod,
    pub instrument_last4: String,
    /// The instrument sealed (see `seal.rs`); opened only to charge it.
    pub instrument_sealed: String,
    pub max_amount_per_debit: Money,
    pub consent_text_version: String,
    pub consent_accepted_at_micros: i64,
    pub status: MandateStatus,
    pub status_reason: String,
    pub created_at_micros: i64,
    pub updated_at_micros: i64,
}

/// A mandate to record as ACTIVE.
#[derive(Debug)]
pub struct NewMandate<'a> {
    pub account_id: &'a str,
    pub idempotency_key: &'a str,
    pub request_fingerprint: &'a str,
    pub method: PaymentMethod,
    pub instrument_last4: &'a str,
    pub instrument_sealed: &'a str,
    pub max_amount_per_debit: Money,
    pub consent_text_version: &'a str,
    pub consent_accepted_at_micros: i64,
}

#[derive(Debug)]
pub enum MandateInsert {
    Inserted(Mandate),
    /// The account's key was used before: that mandate (the caller compares).
    Existing(Mandate),
    /// Another mandate of the account was recorded at the same moment.
    Contended,
}

impl Store {
    pub async fn mandate(&self, mandate_id: &str) -> Result<Option<Mandate>, StorageError> {
        let row = sqlx::query(&format!(
            "SELECT {MANDATE_COLUMNS} FROM mandates WHERE mandate_id = $1"
        ))
        .bind(mandate_id)
        .fetch_optional(self.db.pool())
        .await?;
        row.as_ref().map(mandate_from_row).transpose()
    }

    async fn mandate_by_key(
        &self,
        account_id: &str,
        idempotency_key: &str,
    ) -> Result<Option<Mandate>, StorageError> {
        let row = sqlx::query(&format!(
            "SELECT {MANDATE_COLUMNS} FROM mandates WHERE account_id = $1 AND idempotency_key = $2"
        ))
        .bind(account_id)
        .bind(idempotency_key)
        .fetch_optional(self.db.pool())
        .await?;
        row.as_ref().map(mandate_from_row).transpose()
    }

    /// An account's mandates, newest first (at most [`MANDATES_PAGE_MAX`]).
    pub async fn mandates_of(&self, account_id: &str) -> Result<Vec<Mandate>, StorageError> {
        let rows = sqlx::query(&format!(
            "SELECT {MANDATE_COLUMNS} FROM mandates WHERE account_id = $1 ORDER BY mandate_id DESC LIMIT $2"
        ))
        .bind(account_id)
        .bind(i64::from(MANDATES_PAGE_MAX))
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(mandate_from_row).collect()
    }

    /// Up to `limit` ACTIVE mandates with ids after `after`, in id order.
    pub async fn active_mandates(
        &self,
        after: &str,
        limit: u32,
    ) -> Result<Vec<Mandate>, StorageError> {
        let rows = sqlx::query(&format!(
            "SELECT {MANDATE_COLUMNS} FROM mandates WHERE status = 'ACTIVE' AND mandate_id > $1 \
             ORDER BY mandate_id LIMIT $2"
        ))
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(mandate_from_row).collect()
    }

    /// Records `new` as the account's ACTIVE mandate, the previous one REPLACED, with
    /// a MANDATE_CREATED event, in one transaction — unless the account's key was
    /// used before (that mandate is returned, nothing written).
    pub async fn insert_mandate(
        &self,
        new: &NewMandate<'_>,
    ) -> Result<MandateInsert, StorageError> {
        if let Some(existing) = self
            .mandate_by_key(new.account_id, new.idempotency_key)
            .await?
        {
            return Ok(MandateInsert::Existing(existing));
        }
        let mandate_id = format!("mdt_{}", uuid::Uuid::now_v7().simple());
        let now = now_micros();
        let mut transaction = self.db.begin_write().await?;
        sqlx::query(
            "UPDATE mandates SET status = 'REPLACED', status_reason = $1, updated_at_micros = $2 \
             WHERE account_id = $3 AND status = 'ACTIVE'",
        )
        .bind(format!("replaced by {mandate_id}"))
        .bind(now)
        .bind(new.account_id)
        .execute(&mut *transaction)
        .await?;
        let inserted = sqlx::query(
            "INSERT INTO mandates (mandate_id, account_id, idempotency_key, request_fingerprint, method, \
               instrument_last4, instrument_sealed, currency_code, max_amount_minor, consent_text_version, \
               consent_accepted_at_micros, status, status_reason, created_at_micros, updated_at_micros) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'ACTIVE', '', $12, $12) \
             ON CONFLICT DO NOTHING",
        )
        .bind(mandate_id.as_str())
        .bind(new.account_id)
        .bind(new.idempotency_key)
        .bind(new.request_fingerprint)
        .bind(new.method.as_str())
        .bind(new.instrument_last4)
        .bind(new.instrument_sealed)
        .bind(new.max_amount_per_debit.currency().code())
        .bind(new.max_amount_per_debit.minor())
        .bind(new.consent_text_version)
        .bind(new.consent_accepted_at_micros)
        .bind(now)
        .execute(&mut *transaction)
        .await?
        .rows_affected();
        if inserted != 1 {
            transaction.rollback().await?;
            return Ok(
                match self
                    .mandate_by_key(new.account_id, new.idempotency_key)
                    .await?
                {
                    Some(existing) => MandateInsert::Existing(existing),
                    None => MandateInsert::Contended,
                },
            );
        }
        let event = NewPaymentEvent {
            account_id: new.account_id,
            subject_id: &mandate_id,
            mandate_id: Some(&mandate_id),
            amount: Some(new.max_amount_per_debit),
            instrument_last4: Some(new.instrument_last4),
            reason: Some(new.consent_text_version),
            ..NewPaymentEvent::default()
        };
        insert_event(
            &mut transaction,
            self.db.dialect(),
            PaymentEventKind::MandateCreated,
            &event,
            now,
        )
        .await?;
        transaction.commit().await?;
        let stored = self
            .mandate(&mandate_id)
            .await?
            .ok_or_else(|| StorageError::Corrupt("mandate vanished after insert".into()))?;
        Ok(MandateInsert::Inserted(stored))
    }

    /// ACTIVE → REVOKED with a MANDATE_REVOKED event, in one transaction. On
    /// PostgreSQL the update waits for a debit being recorded on this mandate (it holds
    /// the row), so once this returns no debit can start. False when the mandate was
    /// not ACTIVE (nothing written).
    pub async fn revoke_mandate(
        &self,
        mandate: &Mandate,
        reason: &str,
    ) -> Result<bool, StorageError> {
        self.end_mandate(
            mandate,
            MandateStatus::Revoked,
            reason,
            PaymentEventKind::MandateRevoked,
        )
        .await
    }

    async fn end_mandate(
        &self,
        mandate: &Mandate,
        to: MandateStatus,
        reason: &str,
        kind: PaymentEventKind,
    ) -> Result<bool, StorageError> {
        let now = now_micros();
        let mut transaction = self.db.begin_write().await?;
        let moved = sqlx::query(
            "UPDATE mandates SET status = $1, status_reason = $2, updated_at_micros = $3 \
             WHERE mandate_id = $4 AND status = 'ACTIVE'",
        )
        .bind(to.as_str())
        .bind(reason)
        .bind(now)
        .bind(mandate.mandate_id.as_str())
        .execute(&mut *transaction)
        .await?
        .rows_affected();
        if moved == 1 {
            let event = NewPaymentEvent {
                account_id: &mandate.account_id,
                subject_id: &mandate.mandate_id,
                mandate_id: Some(&mandate.mandate_id),
                instrument_last4: Some(&mandate.instrument_last4),
                reason: Some(reason),
                ..NewPaymentEvent::default()
            };
            insert_event(&mut transaction, self.db.dialect(), kind, &event, now).await?;
        }
        transaction.commit().await?;
        Ok(moved == 1)
    }
}

pub(super) fn mandate_from_row(row: &AnyRow) -> Result<Mandate, StorageError> {
    let corrupt = |what: &str| StorageError::Corrupt(format!("mandates.{what}"));
    let currency =
        Currency::parse(row.try_get("currency_code")?).map_err(|_| corrupt("currency_code"))?;
    Ok(Mandate {
        mandate_id: row.try_get("mandate_id")?,
        account_id: row.try_get("account_id")?,
        idempotency_key: row.try_get("idempotency_key")?,
        request_fingerprint: row.try_get("request_fingerprint")?,
        method: PaymentMethod::parse(row.try_get("method")?).ok_or_else(|| corrupt("method"))?,
        instrument_last4: row.try_get("instrument_last4")?,
        instrument_sealed: row.try_get("instrument_sealed")?,
        max_amount_per_debit: Money::from_minor(currency, row.try_get("max_amount_minor")?)
            .map_err(|_| corrupt("max_amount_minor"))?,
        consent_text_version: row.try_get("consent_text_version")?,
        consent_accepted_at_micros: row.try_get("consent_accepted_at_micros")?,
        status: MandateStatus::parse(row.try_get("status")?).ok_or_else(|| corrupt("status"))?,
        status_reason: row.try_get("status_reason")?,
        created_at_micros: row.try_get("created_at_micros")?,
        updated_at_micros: row.try_get("updated_at_micros")?,
    })
}
