//! payment-svc's schema. Payments, idempotency keys and the outbox arrive with the
//! repayments issue; today it holds the operator audit trail.

use service_kit::db::{Migration, Migrations};

/// payment-svc's schema, per dialect, in version order.
pub const MIGRATIONS: Migrations = Migrations {
    sqlite: &[Migration {
        version: 1,
        name: "audit",
        sql: include_str!("../migrations/sqlite/0001_audit.sql"),
    }],
    postgres: &[Migration {
        version: 1,
        name: "audit",
        sql: include_str!("../migrations/postgres/0001_audit.sql"),
    }],
};
