//! The accounts table.

use service_kit::db::{Param, StoredRow};
use service_kit::{
    clock::now_micros,
    money::{Currency, Money},
};

use super::{StorageError, Store};
use crate::domain::{
    account::{
        Account, AccountId, AccountStatus, CustomerRef, DisplayName, NewAccount, Phone,
        TemporaryLimit,
    },
    calendar::parse_date,
};

pub(super) const ACCOUNT_COLUMNS: &str = "account_id, customer_ref, display_name, phone, status, currency_code, \
     credit_limit_minor, temporary_limit_minor, temporary_limit_until, \
     COALESCE(opening_credit_limit_minor, credit_limit_minor) AS opening_credit_limit_minor, \
     principal_unpaid_minor, credit_balance_minor, created_at_micros";

/// What CreateAccount found.
#[derive(Debug)]
pub enum CreateOutcome {
    /// This call opened the account.
    Created(Account),
    /// An account with that customer_ref already existed; the caller compares.
    Existing(Account),
}

impl Store {
    /// Opens an account unless one with the same customer_ref exists; the unique
    /// constraint, not a read-then-write, decides between racing callers.
    pub async fn create_account(
        &self,
        request: &NewAccount,
    ) -> Result<CreateOutcome, StorageError> {
        let now = now_micros();
        let inserted = sqlx::query(
            "INSERT INTO accounts (account_id, customer_ref, display_name, phone, status, currency_code, \
               credit_limit_minor, opening_credit_limit_minor, principal_unpaid_minor, credit_balance_minor, \
               created_at_micros, updated_at_micros) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7, 0, 0, $8, $8) \
             ON CONFLICT (customer_ref) DO NOTHING",
        )
        .bind(AccountId::from_uuid(uuid::Uuid::now_v7()).as_str())
        .bind(request.customer_ref.as_str())
        .bind(request.display_name.as_str())
        .bind(request.phone.as_str())
        .bind(AccountStatus::Active.as_str())
        .bind(request.credit_limit.currency().code())
        .bind(request.credit_limit.minor())
        .bind(now)
        .execute(&mut *self.db.write_connection().await?)
        .await?
        .rows_affected();
        let account = self
            .account_by_customer_ref(&request.customer_ref)
            .await?
            .ok_or_else(|| StorageError::Corrupt("account vanished after insert".into()))?;
        Ok(if inserted == 1 {
            CreateOutcome::Created(account)
        } else {
            CreateOutcome::Existing(account)
        })
    }

    pub async fn account(&self, account_id: &AccountId) -> Result<Option<Account>, StorageError> {
        self.db
            .read_row(
                &format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE account_id = $1"),
                &[Param::Text(account_id.as_str())],
                account_from_row,
            )
            .await
    }

    async fn account_by_customer_ref(
        &self,
        customer_ref: &CustomerRef,
    ) -> Result<Option<Account>, StorageError> {
        let row = sqlx::query(&format!(
            "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE customer_ref = $1"
        ))
        .bind(customer_ref.as_str())
        .fetch_optional(self.db.pool())
        .await?;
        row.as_ref().map(|row| account_from_row(row)).transpose()
    }
}

pub(super) fn account_from_row(row: &dyn StoredRow) -> Result<Account, StorageError> {
    let corrupt = |what: &str| StorageError::Corrupt(format!("accounts.{what}"));
    // Columns are asked for in ACCOUNT_COLUMNS' order (see `bill_from_row`).
    let account_id =
        AccountId::parse(&row.text("account_id")?).map_err(|_| corrupt("account_id"))?;
    let customer_ref =
        CustomerRef::parse(&row.text("customer_ref")?).map_err(|_| corrupt("customer_ref"))?;
    let display_name =
        DisplayName::parse(&row.text("display_name")?).map_err(|_| corrupt("display_name"))?;
    let phone = Phone::parse(&row.text("phone")?).map_err(|_| corrupt("phone"))?;
    let status = AccountStatus::parse(&row.text("status")?).ok_or_else(|| corrupt("status"))?;
    let currency =
        Currency::parse(&row.text("currency_code")?).map_err(|_| corrupt("currency_code"))?;
    let money = |column: &str| -> Result<Money, StorageError> {
        Money::from_minor(currency, row.integer(column)?).map_err(|_| corrupt(column))
    };
    Ok(Account {
        account_id,
        customer_ref,
        display_name,
        phone,
        status,
        credit_limit: money("credit_limit_minor")?,
        temporary_limit: temporary_limit(row, currency)?,
        opening_credit_limit: money("opening_credit_limit_minor")?,
        principal_unpaid: money("principal_unpaid_minor")?,
        credit_balance: money("credit_balance_minor")?,
        created_at_micros: row.integer("created_at_micros")?,
    })
}

/// The temporary limit columns: both set, or neither.
fn temporary_limit(
    row: &dyn StoredRow,
    currency: Currency,
) -> Result<Option<TemporaryLimit>, StorageError> {
    let corrupt = |what: &str| StorageError::Corrupt(format!("accounts.{what}"));
    let limit = row.optional_integer("temporary_limit_minor")?;
    let until = row.optional_text("temporary_limit_until")?;
    match (limit, until) {
        (Some(limit), Some(until)) => Ok(Some(TemporaryLimit {
            limit: Money::from_minor(currency, limit)
                .map_err(|_| corrupt("temporary_limit_minor"))?,
            until: parse_date(&until).map_err(|_| corrupt("temporary_limit_until"))?,
        })),
        (None, None) => Ok(None),
        _ => Err(corrupt("temporary_limit_minor")),
    }
}
