//! Everything payment-svc keeps, and the only module (with the simulator's ledger)
//! that speaks SQL.

mod autopay;
mod events;
mod mandates;
mod outbox;
mod payments;
mod refunds;

use service_kit::db::{Db, Migration, Migrations};

pub use autopay::{Attempt, AttemptClaim, AttemptOutcome, Notice, Settlement};
pub use events::{NewPaymentEvent, PaymentEventKind, StoredPaymentEvent};
pub use mandates::{MANDATES_PAGE_MAX, Mandate, MandateInsert, NewMandate};
pub use outbox::{DeadLetter, OutboxKind, OutboxRow};
pub use payments::{InsertOutcome, NewPayment, Payment};
pub use refunds::{Refund, RefundFailure, RefundStatus};

/// payment-svc's schema, per dialect, in version order.
pub const MIGRATIONS: Migrations = Migrations {
    sqlite: &[
        Migration {
            version: 1,
            name: "audit",
            sql: include_str!("../../migrations/sqlite/0001_audit.sql"),
        },
        Migration {
            version: 2,
            name: "payments",
            sql: include_str!("../../migrations/sqlite/0002_payments.sql"),
        },
        Migration {
            version: 3,
            name: "refund_states_dead_letters",
            sql: include_str!("../../migrations/sqlite/0003_refund_states_dead_letters.sql"),
        },
        Migration {
            version: 4,
            name: "autopay",
            sql: include_str!("../../migrations/sqlite/0004_autopay.sql"),
        },
        Migration {
            version: 10,
            name: "audit_outcome",
            sql: include_str!("../../migrations/sqlite/0010_audit_outcome.sql"),
        },
    ],
    postgres: &[
        Migration {
            version: 1,
            name: "audit",
            sql: include_str!("../../migrations/postgres/0001_audit.sql"),
        },
        Migration {
            version: 2,
            name: "payments",
            sql: include_str!("../../migrations/postgres/0002_payments.sql"),
        },
        Migration {
            version: 3,
            name: "refund_states_dead_letters",
            sql: include_str!("../../migrations/postgres/0003_refund_states_dead_letters.sql"),
        },
        Migration {
            version: 4,
            name: "autopay",
            sql: include_str!("../../migrations/postgres/0004_autopay.sql"),
        },
        Migration {
            version: 10,
            name: "audit_outcome",
            sql: include_str!("../../migrations/postgres/0010_audit_outcome.sql"),
        },
    ],
};

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
