//! Credit accounts: who may borrow, how much, and how much is still free.

use service_kit::money::{Money, MoneyError};

/// The longest id, reference or name the service accepts.
const CUSTOMER_REF_CHARS_MAX: usize = 64;
const DISPLAY_NAME_CHARS_MAX: usize = 100;
const ACCOUNT_ID_CHARS_MAX: usize = 64;

/// Why a field of an account request was refused. The message is shown to callers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountFieldError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {0} characters")]
    TooLong(usize),
    #[error("may contain only letters, digits and . _ : -")]
    BadCharacters,
    #[error(
        "must not contain control or invisible format characters (bidi overrides, zero-width spaces) or be only spaces"
    )]
    BadName,
    #[error("must be an 11-digit mainland mobile number starting 13-19, e.g. 13812341234")]
    BadPhone,
    #[error("must be an account id such as acc_0190c7f4…")]
    BadAccountId,
    #[error(transparent)]
    Money(#[from] MoneyError),
}

/// An account's id: `acc_` and a time-ordered UUID, made by billing-svc.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AccountId(String);

impl AccountId {
    /// The id of a new account from a time-ordered UUID that storage draws (the domain
    /// reads no clock).
    pub fn from_uuid(uuid: uuid::Uuid) -> Self {
        Self(format!("acc_{}", uuid.simple()))
    }

    /// An id as a caller sends it: non-empty, at most 64 of `[A-Za-z0-9_]`.
    pub fn parse(text: &str) -> Result<Self, AccountFieldError> {
        if text.is_empty() {
            return Err(AccountFieldError::Empty);
        }
        if text.len() > ACCOUNT_ID_CHARS_MAX
            || !text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(AccountFieldError::BadAccountId);
        }
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The caller's own reference for a customer; CreateAccount is idempotent on it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CustomerRef(String);

impl CustomerRef {
    /// 1 to 64 characters of `[A-Za-z0-9._:-]`.
    pub fn parse(text: &str) -> Result<Self, AccountFieldError> {
        if text.is_empty() {
            return Err(AccountFieldError::Empty);
        }
        if text.chars().count() > CUSTOMER_REF_CHARS_MAX {
            return Err(AccountFieldError::TooLong(CUSTOMER_REF_CHARS_MAX));
        }
        if !text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        {
            return Err(AccountFieldError::BadCharacters);
        }
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The name shown to operators and on statements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayName(String);

impl DisplayName {
    /// 1 to 100 characters, no control characters, not only white space.
    pub fn parse(text: &str) -> Result<Self, AccountFieldError> {
        if text.is_empty() {
            return Err(AccountFieldError::Empty);
        }
        if text.chars().count() > DISPLAY_NAME_CHARS_MAX {
            return Err(AccountFieldError::TooLong(DISPLAY_NAME_CHARS_MAX));
        }
        if text.trim().is_empty() || service_kit::text::has_invisible_characters(text) {
            return Err(AccountFieldError::BadName);
        }
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A mainland China mobile number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phone(String);

impl Phone {
    /// Exactly 11 ASCII digits, `1` then `3`–`9`.
    pub fn parse(text: &str) -> Result<Self, AccountFieldError> {
        let bytes = text.as_bytes();
        let well_formed = bytes.len() == 11
            && bytes.iter().all(u8::is_ascii_digit)
            && bytes[0] == b'1'
            && (b'3'..=b'9').contains(&bytes[1]);
        if !well_formed {
            return Err(AccountFieldError::BadPhone);
        }
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The form operators see: the first three and last four digits, `138****1234`.
    pub fn masked(&self) -> String {
        format!("{}****{}", &self.0[..3], &self.0[7..])
    }
}

/// Whether an account may borrow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountStatus {
    Active,
    /// Has an OVERDUE bill.
    Delinquent,
    Closed,
}

impl AccountStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "ACTIVE",
            Self::Delinquent => "DELINQUENT",
            Self::Closed => "CLOSED",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "ACTIVE" => Some(Self::Active),
            "DELINQUENT" => Some(Self::Delinquent),
            "CLOSED" => Some(Self::Closed),
            _ => None,
        }
    }
}

/// A request to open an account, every field well-formed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAccount {
    pub customer_ref: CustomerRef,
    pub display_name: DisplayName,
    pub phone: Phone,
    pub credit_limit: Money,
}

/// A temporary limit (临时额度) in force: above the permanent limit until the close of
/// `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TemporaryLimit {
    pub limit: Money,
    pub until: chrono::NaiveDate,
}

/// A credit account as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub account_id: AccountId,
    pub customer_ref: CustomerRef,
    pub display_name: DisplayName,
    pub phone: Phone,
    pub status: AccountStatus,
    /// The permanent limit.
    pub credit_limit: Money,
    /// The temporary limit in force, if any (day close ends it).
    pub temporary_limit: Option<TemporaryLimit>,
    /// The limit CreateAccount was called with.
    pub opening_credit_limit: Money,
    /// Principal of all plans not yet repaid.
    pub principal_unpaid: Money,
    /// Overpaid money (溢缴款) waiting for the next bills.
    pub credit_balance: Money,
    pub created_at_micros: i64,
}

impl Account {
    /// The limit in force: the temporary limit while one is in force, else the
    /// permanent limit.
    pub fn effective_limit(&self) -> Money {
        self.temporary_limit
            .map_or(self.credit_limit, |temporary| temporary.limit)
    }

    /// `effective_limit - principal_unpaid`, never below zero (a limit lowered under
    /// what is already borrowed leaves nothing available, not a negative amount).
    pub fn available_credit(&self) -> Money {
        self.effective_limit()
            .checked_sub(self.principal_unpaid)
            .unwrap_or_else(|_| Money::zero(self.credit_limit.currency()))
    }

    /// Whether `request` is the request that created this account, so that a retry
    /// returns it and a different request with the same reference is refused.
    pub fn was_created_by(&self, request: &NewAccount) -> bool {
        self.customer_ref == request.customer_ref
            && self.display_name == request.display_name
            && self.phone == request.phone
            && self.opening_credit_limit == request.credit_limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_phones_for_operators() {
        assert_eq!(Phone::parse("13812341234").unwrap().masked(), "138****1234");
    }

    #[test]
    fn refuses_malformed_fields() {
        for bad in [
            "",
            "1381234123",
            "138123412345",
            "23812341234",
            "12812341234",
            "1381234123a",
            "+8613812341234",
            "１3812341234",
        ] {
            assert!(Phone::parse(bad).is_err(), "{bad}");
        }
        for bad in ["", "has space", "semi;colon", "中文"] {
            assert!(CustomerRef::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            CustomerRef::parse(&"x".repeat(65)),
            Err(AccountFieldError::TooLong(64))
        );
        assert!(CustomerRef::parse(&"x".repeat(64)).is_ok());
        for bad in ["", "   ", "tab\there"] {
            assert!(DisplayName::parse(bad).is_err(), "{bad:?}");
        }
        assert!(DisplayName::parse("李雷 Li Lei").is_ok());
        for bad in ["", "acc-1", "acc 1", &"a".repeat(65)] {
            assert!(AccountId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn available_credit_never_goes_negative() {
        let money = |amount| Money::parse("CNY", amount).unwrap();
        let mut account = Account {
            account_id: AccountId::from_uuid(uuid::Uuid::nil()),
            customer_ref: CustomerRef::parse("c").unwrap(),
            display_name: DisplayName::parse("n").unwrap(),
            phone: Phone::parse("13812341234").unwrap(),
            status: AccountStatus::Active,
            credit_limit: money("1000.00"),
            temporary_limit: None,
            opening_credit_limit: money("1000.00"),
            principal_unpaid: money("400.00"),
            credit_balance: money("0"),
            created_at_micros: 0,
        };
        assert_eq!(account.available_credit(), money("600.00"));
        account.principal_unpaid = money("1200.00");
        assert_eq!(account.available_credit(), money("0"));
        account.temporary_limit = Some(TemporaryLimit {
            limit: money("1500.00"),
            until: "2026-03-01".parse().unwrap(),
        });
        assert_eq!(account.effective_limit(), money("1500.00"));
        assert_eq!(account.available_credit(), money("300.00"));
    }
}
