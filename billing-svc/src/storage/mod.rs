//! Everything billing-svc keeps, and the only module that speaks SQL.

mod accounts;

use service_kit::db::{Db, Migration, Migrations};

pub use accounts::CreateOutcome;

/// billing-svc's schema, per dialect, in version order.
pub const MIGRATIONS: Migrations = Migrations {
    sqlite: &[Migration {
        version: 1,
        name: "accounts",
        sql: include_str!("../../migrations/sqlite/0001_accounts.sql"),
    }],
    postgres: &[Migration {
        version: 1,
        name: "accounts",
        sql: include_str!("../../migrations/postgres/0001_accounts.sql"),
    }],
};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
    #[error("stored row is not valid: {0}")]
    Corrupt(String),
}

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
