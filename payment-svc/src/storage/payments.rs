//! The payments table: idempotent creation, state transitions (each with its outbox
//! row in the same transaction), and reads.

use service_kit::{
    clock::now_micros,
    db::{Dialect, Param, Statements as _, StoredRow},
    money::{Currency, Money},
};

use super::{
    StorageError, Store,
    outbox::{INLINE_DELIVERY_GRACE_MICROS, OutboxKind, insert_outbox},
};
use crate::domain::payment::{PaymentMethod, PaymentStatus};

const PAYMENT_COLUMNS: &str = "payment_id, caller, idempotency_key, request_fingerprint, account_id, target, \
     currency_code, amount_minor, method, instrument_last4, status, provider_ref, failure_code, failure_message, \
     applied, created_at_micros, updated_at_micros";

/// A state change that billing must hear about.
struct Transition<'a> {
    from: PaymentStatus,
    to: PaymentStatus,
    /// Recorded when set; kept otherwise.
    provider_ref: Option<&'a str>,
    outbox: OutboxKind,
}

/// A payment as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    pub payment_id: String,
    pub caller: String,
    pub idempotency_key: String,
    pub request_fingerprint: String,
    pub account_id: String,
    /// The repayment target, protobuf bytes in base64.
    pub target: String,
    pub amount: Money,
    pub method: PaymentMethod,
    pub instrument_last4: String,
    pub status: PaymentStatus,
    pub provider_ref: Option<String>,
    pub failure_code: Option<String>,
    pub failure_message: Option<String>,
    /// billing-svc has acknowledged applying it.
    pub applied: bool,
    pub created_at_micros: i64,
    pub updated_at_micros: i64,
}

/// A payment to store as PROCESSING before any money moves.
#[derive(Debug)]
pub struct NewPayment<'a> {
    pub caller: &'a str,
    pub idempotency_key: &'a str,
    pub request_fingerprint: &'a str,
    pub account_id: &'a str,
    pub target: &'a str,
    pub amount: Money,
    pub method: PaymentMethod,
    pub instrument_last4: &'a str,
}

#[derive(Debug)]
pub enum InsertOutcome {
    Inserted(Payment),
    /// The caller's key was taken first (a concurrent duplicate): that payment.
    Existing(Payment),
}

impl Store {
    pub async fn payment_by_key(
        &self,
        caller: &str,
        idempotency_key: &str,
    ) -> Result<Option<Payment>, StorageError> {
        self.db
            .read_row(
                &format!(
                    "SELECT {PAYMENT_COLUMNS} FROM payments WHERE caller = $1 AND idempotency_key = $2"
                ),
                &[Param::Text(caller), Param::Text(idempotency_key)],
                payment_from_row,
            )
            .await
    }

    pub async fn payment(&self, payment_id: &str) -> Result<Option<Payment>, StorageError> {
        self.db
            .read_row(
                &format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE payment_id = $1"),
                &[Param::Text(payment_id)],
                payment_from_row,
            )
            .await
    }

    /// Stores `new` as PROCESSING unless the caller's key is taken; the unique
    /// (caller, idempotency_key) decides between concurrent duplicates.
    pub async fn insert_payment(
        &self,
        new: &NewPayment<'_>,
    ) -> Result<InsertOutcome, StorageError> {
        let payment_id = format!("pay_{}", uuid::Uuid::now_v7().simple());
        let now = now_micros();
        let inserted = self
            .db
            .write_rows(
                &format!(
                    "INSERT INTO payments (payment_id, caller, idempotency_key, request_fingerprint, account_id, target, \
                       currency_code, amount_minor, method, instrument_last4, status, applied, created_at_micros, updated_at_micros) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'PROCESSING', 0, $11, $11) \
                     ON CONFLICT (caller, idempotency_key) DO NOTHING RETURNING {PAYMENT_COLUMNS}"
                ),
                &[
                    Param::Text(&payment_id),
                    Param::Text(new.caller),
                    Param::Text(new.idempotency_key),
                    Param::Text(new.request_fingerprint),
                    Param::Text(new.account_id),
                    Param::Text(new.target),
                    Param::Text(new.amount.currency().code()),
                    Param::Integer(new.amount.minor()),
                    Param::Text(new.method.as_str()),
                    Param::Text(new.instrument_last4),
                    Param::Integer(now),
                ],
                payment_from_row,
            )
            .await?
            .pop();
        if let Some(stored) = inserted {
            return Ok(InsertOutcome::Inserted(stored));
        }
        let stored = self
            .payment_by_key(new.caller, new.idempotency_key)
            .await?
            .ok_or_else(|| {
                StorageError::Corrupt("a payment's key is taken by no payment".into())
            })?;
        Ok(InsertOutcome::Existing(stored))
    }

    /// PROCESSING → SUCCEEDED with an APPLY outbox row, in one transaction: the
    /// payment as it became, or `None` if it was no longer PROCESSING (a duplicate or
    /// stale answer).
    pub async fn record_success(
        &self,
        payment_id: &str,
        provider_ref: &str,
    ) -> Result<Option<Payment>, StorageError> {
        let step = Transition {
            from: PaymentStatus::Processing,
            to: PaymentStatus::Succeeded,
            provider_ref: Some(provider_ref),
            outbox: OutboxKind::Apply,
        };
        self.transition_with_outbox(payment_id, step).await
    }

    /// PROCESSING → FAILED with the provider's code. False if no longer PROCESSING.
    pub async fn record_failure(
        &self,
        payment_id: &str,
        code: &str,
        message: &str,
    ) -> Result<bool, StorageError> {
        let moved = self
            .db
            .write(
                "UPDATE payments SET status = 'FAILED', failure_code = $1, failure_message = $2, updated_at_micros = $3 \
                 WHERE payment_id = $4 AND status = 'PROCESSING'",
                &[
                    Param::Text(code),
                    Param::Text(message),
                    Param::Integer(now_micros()),
                    Param::Text(payment_id),
                ],
            )
            .await?;
        Ok(moved == 1)
    }

    /// Remembers the provider's reference of a payment still PROCESSING (PENDING).
    pub async fn record_pending(
        &self,
        payment_id: &str,
        provider_ref: &str,
    ) -> Result<(), StorageError> {
        self.db
            .write(
                "UPDATE payments SET provider_ref = $1 WHERE payment_id = $2 AND status = 'PROCESSING'",
                &[Param::Text(provider_ref), Param::Text(payment_id)],
            )
            .await?;
        Ok(())
    }

    // Here rather than in `outbox`: it returns the payment row, and `outbox` is the
    // leaf that this module builds on.
    /// Billing acknowledged an outbox row: the row is done, and an APPLY marks the
    /// payment applied and returns it as it now is (so the caller need not read it
    /// again).
    pub async fn outbox_delivered(
        &self,
        payment_id: &str,
        kind: OutboxKind,
    ) -> Result<Option<Payment>, StorageError> {
        let now = now_micros();
        if kind == OutboxKind::Apply && self.db.dialect() == Dialect::Postgres {
            // One statement (a data-modifying WITH, which SQLite lacks): one round
            // trip instead of four, and as atomic as the transaction below.
            let applied = self
                .db
                .write_rows(
                    &format!(
                        "WITH delivered AS ( \
                           UPDATE outbox SET delivered_at_micros = $1, last_error = NULL, dead_at_micros = NULL \
                           WHERE payment_id = $2 AND kind = $3) \
                         UPDATE payments SET applied = 1 WHERE payment_id = $2 RETURNING {PAYMENT_COLUMNS}"
                    ),
                    &[
                        Param::Integer(now),
                        Param::Text(payment_id),
                        Param::Text(kind.as_str()),
                    ],
                    payment_from_row,
                )
                .await?;
            return Ok(applied.into_iter().next());
        }
        let mut write = self.db.begin_direct().await?;
        write
            .execute(
                "UPDATE outbox SET delivered_at_micros = $1, last_error = NULL, dead_at_micros = NULL \
                 WHERE payment_id = $2 AND kind = $3",
                &[
                    Param::Integer(now),
                    Param::Text(payment_id),
                    Param::Text(kind.as_str()),
                ],
            )
            .await?;
        let applied = match kind {
            OutboxKind::Apply => write
                .rows(
                    &format!(
                        "UPDATE payments SET applied = 1 WHERE payment_id = $1 RETURNING {PAYMENT_COLUMNS}"
                    ),
                    &[Param::Text(payment_id)],
                    payment_from_row,
                )
                .await?
                .pop(),
            OutboxKind::Reverse => None,
        };
        write.commit().await?;
        Ok(applied)
    }

    /// Moves a payment `step.from` → `step.to` and writes the outbox row billing must
    /// hear about, in one transaction: the payment as it became (`RETURNING`, so no
    /// read after), or `None` (and nothing written) if it was no longer in
    /// `step.from`: a duplicate or stale answer.
    async fn transition_with_outbox(
        &self,
        payment_id: &str,
        step: Transition<'_>,
    ) -> Result<Option<Payment>, StorageError> {
        if !step.from.may_become(step.to) {
            return Err(StorageError::Corrupt(format!(
                "{} → {} is not a payment transition",
                step.from.as_str(),
                step.to.as_str()
            )));
        }
        let now = now_micros();
        if self.db.dialect() == Dialect::Postgres {
            return self
                .transition_in_one_statement(payment_id, &step, now)
                .await;
        }
        let mut write = self.db.begin_direct().await?;
        let moved = write
            .rows(
                &format!(
                    "UPDATE payments SET status = $1, provider_ref = COALESCE($2, provider_ref), updated_at_micros = $3 \
                     WHERE payment_id = $4 AND status = $5 RETURNING {PAYMENT_COLUMNS}"
                ),
                &[
                    Param::Text(step.to.as_str()),
                    Param::OptionalText(step.provider_ref),
                    Param::Integer(now),
                    Param::Text(payment_id),
                    Param::Text(step.from.as_str()),
                ],
                payment_from_row,
            )
            .await?
            .pop();
        if moved.is_some() {
            insert_outbox(&mut write, payment_id, step.outbox, now).await?;
        }
        write.commit().await?;
        Ok(moved)
    }

    /// [`Store::transition_with_outbox`] on PostgreSQL: the move and its outbox row in
    /// one statement (a data-modifying WITH, which SQLite lacks), so one round trip
    /// instead of four (BEGIN, two statements, COMMIT). The statement is atomic as
    /// the transaction was; the outbox row is inserted only if the payment moved.
    async fn transition_in_one_statement(
        &self,
        payment_id: &str,
        step: &Transition<'_>,
        now: i64,
    ) -> Result<Option<Payment>, StorageError> {
        let moved = self
            .db
            .write_rows(
                &format!(
                    "WITH moved AS ( \
                       UPDATE payments SET status = $1, provider_ref = COALESCE($2, provider_ref), updated_at_micros = $3 \
                       WHERE payment_id = $4 AND status = $5 RETURNING {PAYMENT_COLUMNS}), \
                     queued AS ( \
                       INSERT INTO outbox (payment_id, kind, account_id, attempts, next_attempt_at_micros, created_at_micros) \
                       SELECT payment_id, $6, account_id, 0, $7, $3 FROM moved \
                       ON CONFLICT (payment_id, kind) DO NOTHING) \
                     SELECT {PAYMENT_COLUMNS} FROM moved"
                ),
                &[
                    Param::Text(step.to.as_str()),
                    Param::OptionalText(step.provider_ref),
                    Param::Integer(now),
                    Param::Text(payment_id),
                    Param::Text(step.from.as_str()),
                    Param::Text(step.outbox.as_str()),
                    Param::Integer(now + INLINE_DELIVERY_GRACE_MICROS),
                ],
                payment_from_row,
            )
            .await?;
        Ok(moved.into_iter().next())
    }

    /// Payments still PROCESSING that were last touched before `cutoff_micros`.
    pub async fn stale_processing(
        &self,
        cutoff_micros: i64,
        limit: u32,
    ) -> Result<Vec<Payment>, StorageError> {
        let rows = sqlx::query(&format!(
            "SELECT {PAYMENT_COLUMNS} FROM payments WHERE status = 'PROCESSING' AND updated_at_micros < $1 \
             ORDER BY updated_at_micros LIMIT $2"
        ))
        .bind(cutoff_micros)
        .bind(i64::from(limit))
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(|row| payment_from_row(row)).collect()
    }

    /// Up to `limit` payments of an account, newest first, after payment `after`.
    pub async fn payments_page(
        &self,
        account_id: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Payment>, StorageError> {
        // Payment ids are time-ordered (UUIDv7), so id order is creation order.
        let rows = sqlx::query(&format!(
            "SELECT {PAYMENT_COLUMNS} FROM payments WHERE account_id = $1 AND payment_id < $2 \
             ORDER BY payment_id DESC LIMIT $3"
        ))
        .bind(account_id)
        .bind(after.unwrap_or("\u{10FFFF}"))
        .bind(i64::from(limit))
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(|row| payment_from_row(row)).collect()
    }
}

fn payment_from_row(row: &dyn StoredRow) -> Result<Payment, StorageError> {
    let corrupt = |what: &str| StorageError::Corrupt(format!("payments.{what}"));
    let currency =
        Currency::parse(&row.text("currency_code")?).map_err(|_| corrupt("currency_code"))?;
    Ok(Payment {
        payment_id: row.text("payment_id")?,
        caller: row.text("caller")?,
        idempotency_key: row.text("idempotency_key")?,
        request_fingerprint: row.text("request_fingerprint")?,
        account_id: row.text("account_id")?,
        target: row.text("target")?,
        amount: Money::from_minor(currency, row.integer("amount_minor")?)
            .map_err(|_| corrupt("amount_minor"))?,
        method: PaymentMethod::parse(&row.text("method")?).ok_or_else(|| corrupt("method"))?,
        instrument_last4: row.text("instrument_last4")?,
        status: PaymentStatus::parse(&row.text("status")?).ok_or_else(|| corrupt("status"))?,
        provider_ref: row.optional_text("provider_ref")?,
        failure_code: row.optional_text("failure_code")?,
        failure_message: row.optional_text("failure_message")?,
        applied: row.integer("applied")? == 1,
        created_at_micros: row.integer("created_at_micros")?,
        updated_at_micros: row.integer("updated_at_micros")?,
    })
}
