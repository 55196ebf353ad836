//! Everything payment-svc keeps, and the only module (with the simulator's ledger)
//! that speaks SQL.

mod autopay;
mod events;
mod mandates;
mod outbox;
mod payments;
mod refunds;

use service_kit::db::{Db, Migration, MigrationSql, Migrations};

pub use autopay::{Attempt, AttemptClaim, AttemptOutcome, Notice, Settlement};
pub use events::{NewPaymentEvent, PaymentEventKind, StoredPaymentEvent};
pub use mandates::{MANDATES_PAGE_MAX, Mandate, MandateInsert, NewMandate};
pub use outbox::{DeadLetter, OutboxKind, OutboxRow};
pub use payments::{InsertOutcome, NewPayment, Payment};
pub use refunds::{Refund, RefundFailure, RefundStatus};

/// payment-svc's schema in version order (`migrations/`: one template per change).
pub const MIGRATIONS: Migrations = Migrations(&[
    Migration {
        version: 1,
        name: "audit",
        sql: MigrationSql::Template(include_str!("../../migrations/0001_audit.sql")),
    },
    Migration {
        version: 2,
        name: "payments",
        sql: MigrationSql::Template(include_str!("../../migrations/0002_payments.sql")),
    },
    Migration {
        version: 3,
        name: "refund_states_dead_letters",
        sql: MigrationSql::Template(include_str!(
            "../../migrations/0003_refund_states_dead_letters.sql"
        )),
    },
    Migration {
        version: 4,
        name: "autopay",
        sql: MigrationSql::Template(include_str!("../../migrations/0004_autopay.sql")),
    },
    Migration {
        version: 10,
        name: "audit_outcome",
        sql: MigrationSql::Template(include_str!("../../migrations/0010_audit_outcome.sql")),
    },
]);

pub use service_kit::db::StorageError;

/// payment-svc's database.
#[derive(Debug, Clone)]
pub struct Store {
    db: Db,
}

impl Store {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }
}
