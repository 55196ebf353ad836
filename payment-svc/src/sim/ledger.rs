//! The simulator's ledger, and the only part of the simulator that speaks SQL: every
//! charge it decided and every refund, in its own database, so it survives restarts
//! and stays the ground truth for reconciliation (R1). Idempotency is settled by
//! primary keys and row locks, never by an in-process lock.

use service_kit::db::{Db, DbError, Migration, MigrationSql, Migrations};
use sqlx::{Row, any::AnyRow};

use super::{behaviour::Outcome, provider::Provider};

/// The ledger's schema (`migrations/sim/`).
pub const MIGRATIONS: Migrations = Migrations(&[Migration {
    version: 1,
    name: "ledger",
    sql: MigrationSql::Template(include_str!("../../migrations/sim/0001_ledger.sql")),
}]);

/// SQLite admits one writer at a time; a few connections let reads go alongside.
const CONNECTIONS_MAX: u32 = 8;

const CHARGE_COLUMNS: &str = "provider, payment_id, amount_minor, currency_code, \
     instrument_last4, status, decline_code, provider_ref";

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
    #[error("stored row is not valid: {0}")]
    Corrupt(String),
}

/// A charge as the provider decided it. Only the instrument's last four characters
/// are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    pub provider: Provider,
    pub payment_id: String,
    pub amount_minor: i64,
    pub currency_code: String,
    pub instrument_last4: String,
    pub outcome: Outcome,
    pub provider_ref: String,
}

/// What recording a charge did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// The charge is new and now recorded.
    New,
    /// The payment id was charged before; this is that first charge, unchanged.
    Existing(Charge),
}

/// A refund asked of a provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund {
    pub provider: Provider,
    pub refund_id: String,
    pub payment_id: String,
    pub amount_minor: i64,
}

/// What recording a refund did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundOutcome {
    Refunded,
    /// The refund id was recorded before; nothing more was refunded.
    Replayed,
    /// There is no successful charge to refund.
    NoSuccessfulCharge,
    /// More than `refundable_minor`, what is left of the charge, was asked.
    ExceedsRefundable {
        refundable_minor: i64,
    },
}

/// Which way money moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Charge,
    Refund,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Charge => "CHARGE",
            Self::Refund => "REFUND",
        }
    }
}

/// One movement of money: a captured charge or a refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub provider: Provider,
    pub payment_id: String,
    pub kind: EntryKind,
    pub amount_minor: i64,
}

/// The simulator's database.
#[derive(Debug, Clone)]
pub struct Ledger {
    db: Db,
}

impl Ledger {
    /// Connects to `database_url` (creating a SQLite file when missing) and migrates.
    pub async fn open(database_url: &str) -> Result<Self, DbError> {
        let db = Db::connect(database_url, CONNECTIONS_MAX).await?;
        db.migrate(&MIGRATIONS).await?;
        Ok(Self { db })
    }

    /// Records `charge` unless its payment id was charged before at this provider,
    /// in which case the first charge is returned and nothing changes. One statement,
    /// so concurrent repeats race only on the primary key, and exactly one wins.
    pub async fn record_charge(
        &self,
        charge: &Charge,
        now_micros: i64,
    ) -> Result<Recorded, LedgerError> {
        let inserted = sqlx::query(
            "INSERT INTO charges (provider, payment_id, amount_minor, currency_code, instrument_last4, \
               status, decline_code, provider_ref, charged_at_micros) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (provider, payment_id) DO NOTHING",
        )
        .bind(charge.provider.ledger_name())
        .bind(charge.payment_id.as_str())
        .bind(charge.amount_minor)
        .bind(charge.currency_code.as_str())
        .bind(charge.instrument_last4.as_str())
        .bind(charge.outcome.status())
        .bind(charge.outcome.decline_code().map(|code| code.as_str()))
        .bind(charge.provider_ref.as_str())
        .bind(now_micros)
        .execute(&mut *self.db.write_connection().await?)
        .await?
        .rows_affected();
        if inserted == 1 {
            return Ok(Recorded::New);
        }
        let first = self
            .find_charge(charge.provider, &charge.payment_id)
            .await?
            .ok_or_else(|| LedgerError::Corrupt("a conflicting charge is not there".into()))?;
        Ok(Recorded::Existing(first))
    }

    /// The charge recorded under `payment_id` at `provider`, if any.
    pub async fn find_charge(
        &self,
        provider: Provider,
        payment_id: &str,
    ) -> Result<Option<Charge>, LedgerError> {
        let row = sqlx::query(&format!(
            "SELECT {CHARGE_COLUMNS} FROM charges WHERE provider = $1 AND payment_id = $2"
        ))
        .bind(provider.ledger_name())
        .bind(payment_id)
        .fetch_optional(self.db.pool())
        .await?;
        row.as_ref().map(charge_from_row).transpose()
    }

    /// Records `refund` if its charge succeeded and has at least its amount left to
    /// refund; a repeated refund id changes nothing.
    pub async fn record_refund(
        &self,
        refund: &Refund,
        now_micros: i64,
    ) -> Result<RefundOutcome, LedgerError> {
        let provider = refund.provider.ledger_name();
        let mut transaction = self.db.begin_write().await?;
        // Takes the charge's row for the rest of the transaction (a row lock on
        // PostgreSQL; SQLite's write lock already serialises), so two refunds of one
        // charge cannot both pass the check on what is left.
        let charged: Option<i64> = sqlx::query_scalar(
            "UPDATE charges SET status = status \
             WHERE provider = $1 AND payment_id = $2 AND status = 'SUCCEEDED' RETURNING amount_minor",
        )
        .bind(provider)
        .bind(refund.payment_id.as_str())
        .fetch_optional(&mut *transaction)
        .await?;
        let Some(charged_minor) = charged else {
            transaction.rollback().await?;
            return Ok(RefundOutcome::NoSuccessfulCharge);
        };
        let known: Option<String> = sqlx::query_scalar(
            "SELECT refund_id FROM refunds WHERE provider = $1 AND refund_id = $2",
        )
        .bind(provider)
        .bind(refund.refund_id.as_str())
        .fetch_optional(&mut *transaction)
        .await?;
        if known.is_some() {
            transaction.rollback().await?;
            return Ok(RefundOutcome::Replayed);
        }
        let earlier: Vec<i64> = sqlx::query_scalar(
            "SELECT amount_minor FROM refunds WHERE provider = $1 AND payment_id = $2",
        )
        .bind(provider)
        .bind(refund.payment_id.as_str())
        .fetch_all(&mut *transaction)
        .await?;
        let refundable_minor = earlier
            .iter()
            .try_fold(charged_minor, |left, amount| left.checked_sub(*amount))
            .ok_or_else(|| LedgerError::Corrupt("refunds overflow their charge".into()))?;
        if refund.amount_minor > refundable_minor {
            transaction.rollback().await?;
            return Ok(RefundOutcome::ExceedsRefundable { refundable_minor });
        }
        sqlx::query(
            "INSERT INTO refunds (provider, refund_id, payment_id, amount_minor, refunded_at_micros) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(provider)
        .bind(refund.refund_id.as_str())
        .bind(refund.payment_id.as_str())
        .bind(refund.amount_minor)
        .bind(now_micros)
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(RefundOutcome::Refunded)
    }

    /// Every movement of money, in the order it happened: captured charges (declined
    /// ones moved nothing) and refunds.
    pub async fn entries(&self) -> Result<Vec<Entry>, LedgerError> {
        let rows = sqlx::query(
            "SELECT provider, payment_id, 'CHARGE' AS kind, amount_minor, charged_at_micros AS at_micros \
               FROM charges WHERE status = 'SUCCEEDED' \
             UNION ALL \
             SELECT provider, payment_id, 'REFUND' AS kind, amount_minor, refunded_at_micros AS at_micros \
               FROM refunds \
             ORDER BY at_micros, provider, payment_id, kind",
        )
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(entry_from_row).collect()
    }
}

/// The money captured and refunded in `entries`; `None` if a sum overflows.
pub fn totals(entries: &[Entry]) -> Option<(i64, i64)> {
    entries
        .iter()
        .try_fold((0_i64, 0_i64), |(captured, refunded), entry| {
            match entry.kind {
                EntryKind::Charge => Some((captured.checked_add(entry.amount_minor)?, refunded)),
                EntryKind::Refund => Some((captured, refunded.checked_add(entry.amount_minor)?)),
            }
        })
}

fn provider_of(row: &AnyRow) -> Result<Provider, LedgerError> {
    let name: String = row.try_get("provider")?;
    Provider::from_ledger_name(&name)
        .ok_or_else(|| LedgerError::Corrupt(format!("unknown provider {name:?}")))
}

fn charge_from_row(row: &AnyRow) -> Result<Charge, LedgerError> {
    let status: String = row.try_get("status")?;
    let decline_code: Option<String> = row.try_get("decline_code")?;
    let outcome = Outcome::from_stored(&status, decline_code.as_deref()).ok_or_else(|| {
        LedgerError::Corrupt(format!(
            "charge status {status:?} with code {decline_code:?}"
        ))
    })?;
    Ok(Charge {
        provider: provider_of(row)?,
        payment_id: row.try_get("payment_id")?,
        amount_minor: row.try_get("amount_minor")?,
        currency_code: row.try_get("currency_code")?,
        instrument_last4: row.try_get("instrument_last4")?,
        outcome,
        provider_ref: row.try_get("provider_ref")?,
    })
}

fn entry_from_row(row: &AnyRow) -> Result<Entry, LedgerError> {
    let kind: String = row.try_get("kind")?;
    let kind = match kind.as_str() {
        "CHARGE" => EntryKind::Charge,
        "REFUND" => EntryKind::Refund,
        other => return Err(LedgerError::Corrupt(format!("entry kind {other:?}"))),
    };
    Ok(Entry {
        provider: provider_of(row)?,
        payment_id: row.try_get("payment_id")?,
        kind,
        amount_minor: row.try_get("amount_minor")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: EntryKind, amount_minor: i64) -> Entry {
        Entry {
            provider: Provider::Alipay,
            payment_id: "pay_1".into(),
            kind,
            amount_minor,
        }
    }

    #[test]
    fn totals_are_summed_by_kind() {
        assert_eq!(totals(&[]), Some((0, 0)));
        let entries = [
            entry(EntryKind::Charge, 500),
            entry(EntryKind::Refund, 200),
            entry(EntryKind::Charge, 300),
            entry(EntryKind::Refund, 100),
        ];
        assert_eq!(totals(&entries), Some((800, 300)));
        let overflowing = [
            entry(EntryKind::Charge, i64::MAX),
            entry(EntryKind::Charge, 1),
        ];
        assert_eq!(totals(&overflowing), None);
    }
}
