//! Everything billing-svc keeps, and the only module that speaks SQL.

mod accounts;
mod bills;
mod bulk;
mod cancellations;
mod credit_limits;
mod day_close;
mod day_close_runs;
mod events;
mod plans;
mod repayments;

use service_kit::db::{Db, Migration, MigrationSql, Migrations};

pub use accounts::CreateOutcome;
pub use bills::BillPageKey;
pub use cancellations::{CancelOutcome, Cancelled};
pub use credit_limits::{LimitChangeRecord, LimitOutcome};
pub use day_close::{AccountClose, ProductTerms};
pub use day_close_runs::{Claimed, DayCloseRun, RunProgress};
pub use events::{EventKind, StoredEvent};
pub use plans::{CreatePlanOutcome, NewPlan};
pub use repayments::{Applied, ApplyDecision, ApplyOutcome, ReverseOutcome, Reversed};

/// billing-svc's schema in version order (`migrations/`: one template per change, a
/// file per dialect where the change itself differs).
pub const MIGRATIONS: Migrations = Migrations(&[
    Migration {
        version: 1,
        name: "accounts",
        sql: MigrationSql::Template(include_str!("../../migrations/0001_accounts.sql")),
    },
    Migration {
        version: 2,
        name: "plans",
        sql: MigrationSql::Template(include_str!("../../migrations/0002_plans.sql")),
    },
    Migration {
        version: 3,
        name: "repayments",
        sql: MigrationSql::Template(include_str!("../../migrations/0003_repayments.sql")),
    },
    Migration {
        version: 4,
        name: "day_close",
        sql: MigrationSql::Template(include_str!("../../migrations/0004_day_close.sql")),
    },
    Migration {
        version: 5,
        name: "principal_paid_log",
        sql: MigrationSql::Template(include_str!("../../migrations/0005_principal_paid_log.sql")),
    },
    Migration {
        version: 6,
        name: "credit_limits_and_cancellation",
        sql: MigrationSql::PerDialect {
            sqlite: include_str!("../../migrations/sqlite/0006_credit_limits_and_cancellation.sql"),
            postgres: include_str!(
                "../../migrations/postgres/0006_credit_limits_and_cancellation.sql"
            ),
        },
    },
    Migration {
        version: 10,
        name: "audit_outcome",
        sql: MigrationSql::Template(include_str!("../../migrations/0010_audit_outcome.sql")),
    },
    Migration {
        version: 11,
        name: "day_close_runs",
        sql: MigrationSql::Template(include_str!("../../migrations/0011_day_close_runs.sql")),
    },
    Migration {
        version: 12,
        name: "bills_by_account_state",
        sql: MigrationSql::Template(include_str!(
            "../../migrations/0012_bills_by_account_state.sql"
        )),
    },
]);

pub use service_kit::db::StorageError;

/// billing-svc's database.
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
