//! Credit limit changes (额度调整, SPEC §5.1.1): a permanent limit, or a temporary one
//! above it that lapses at the close of its until date.

use chrono::NaiveDate;
use service_kit::money::Money;

use super::account::{Account, TemporaryLimit};

/// The longest reason accepted.
const REASON_CHARS_MAX: usize = 200;

/// Why a free-text reason was refused. The message is shown to callers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReasonError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {REASON_CHARS_MAX} characters")]
    TooLong,
    #[error("must not contain control or invisible format characters or be only spaces")]
    BadCharacters,
}

/// Why a change was asked for (a risk review, a purchase, a return): 1 to 200
/// characters, none of them control or invisible format characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason(String);

impl Reason {
    pub fn parse(text: &str) -> Result<Self, ReasonError> {
        if text.is_empty() {
            return Err(ReasonError::Empty);
        }
        if text.chars().count() > REASON_CHARS_MAX {
            return Err(ReasonError::TooLong);
        }
        if text.trim().is_empty()
            || text.chars().any(char::is_control)
            || service_kit::text::has_invisible_characters(text)
        {
            return Err(ReasonError::BadCharacters);
        }
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What kind of change a history row records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// The permanent limit was set (ending any temporary limit in force).
    Permanent,
    /// A temporary limit was granted.
    Temporary,
    /// A temporary limit lapsed at the close of its until date.
    TemporaryLapsed,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Permanent => "PERMANENT",
            Self::Temporary => "TEMPORARY",
            Self::TemporaryLapsed => "TEMPORARY_LAPSED",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Permanent, Self::Temporary, Self::TemporaryLapsed]
            .into_iter()
            .find(|kind| kind.as_str() == text)
    }
}

/// A well-formed UpdateCreditLimit request. `until` is after the business date it was
/// parsed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitRequest {
    pub new_limit: Money,
    pub until: Option<NaiveDate>,
    pub reason: Reason,
}

impl LimitRequest {
    /// What identifies the request, to tell a retry from another request with the
    /// same request id.
    pub fn fingerprint(&self) -> String {
        format!(
            "{}|{}|{}|{}",
            self.new_limit.currency().code(),
            self.new_limit.minor(),
            self.until.map(|date| date.to_string()).unwrap_or_default(),
            self.reason.as_str()
        )
    }

    pub fn kind(&self) -> ChangeKind {
        if self.until.is_some() {
            ChangeKind::Temporary
        } else {
            ChangeKind::Permanent
        }
    }
}

/// Why a change cannot be made to the account as it stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitRefusal {
    #[error("a temporary limit must be above the permanent limit {permanent}")]
    TemporaryNotAbovePermanent { permanent: Money },
    #[error("the limit must be in the account's currency")]
    OtherCurrency,
}

/// The account's limits after a change, and what the history row says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitChange {
    pub kind: ChangeKind,
    /// The limit in force before and after.
    pub previous_limit: Money,
    pub new_limit: Money,
    /// The permanent limit after.
    pub permanent_limit: Money,
    /// The temporary limit in force after, if any.
    pub temporary: Option<TemporaryLimit>,
}

/// Applies `request` to `account`: a permanent change sets the permanent limit and
/// ends any temporary limit in force (the new decision replaces what the old one
/// granted); a temporary one must be above the permanent limit. Lowering below what is
/// borrowed is allowed (available credit is then zero).
pub fn change_limit(
    account: &Account,
    request: &LimitRequest,
) -> Result<LimitChange, LimitRefusal> {
    if request.new_limit.currency() != account.credit_limit.currency() {
        return Err(LimitRefusal::OtherCurrency);
    }
    let previous_limit = account.effective_limit();
    match request.until {
        None => Ok(LimitChange {
            kind: ChangeKind::Permanent,
            previous_limit,
            new_limit: request.new_limit,
            permanent_limit: request.new_limit,
            temporary: None,
        }),
        Some(until) => {
            if request.new_limit.amount() <= account.credit_limit.amount() {
                return Err(LimitRefusal::TemporaryNotAbovePermanent {
                    permanent: account.credit_limit,
                });
            }
            Ok(LimitChange {
                kind: ChangeKind::Temporary,
                previous_limit,
                new_limit: request.new_limit,
                permanent_limit: account.credit_limit,
                temporary: Some(TemporaryLimit {
                    limit: request.new_limit,
                    until,
                }),
            })
        }
    }
}

/// The lapse a close of `as_of` brings: a temporary limit whose until is `as_of` or
/// earlier (a catch-up close past it) ends, and the permanent limit is in force again.
pub fn lapse(account: &Account, as_of: NaiveDate) -> Option<LimitChange> {
    let temporary = account.temporary_limit?;
    (temporary.until <= as_of).then_some(LimitChange {
        kind: ChangeKind::TemporaryLapsed,
        previous_limit: temporary.limit,
        new_limit: account.credit_limit,
        permanent_limit: account.credit_limit,
        temporary: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::account::{AccountId, AccountStatus, CustomerRef, DisplayName, Phone};

    fn money(amount: &str) -> Money {
        Money::parse("CNY", amount).unwrap()
    }

    fn date(text: &str) -> NaiveDate {
        text.parse().unwrap()
    }

    fn account(limit: &str, temporary: Option<(&str, &str)>) -> Account {
        Account {
            account_id: AccountId::from_uuid(uuid::Uuid::nil()),
            customer_ref: CustomerRef::parse("c").unwrap(),
            display_name: DisplayName::parse("n").unwrap(),
            phone: Phone::parse("13812341234").unwrap(),
            status: AccountStatus::Active,
            credit_limit: money(limit),
            temporary_limit: temporary.map(|(limit, until)| TemporaryLimit {
                limit: money(limit),
                until: date(until),
            }),
            opening_credit_limit: money(limit),
            principal_unpaid: money("0"),
            credit_balance: money("0"),
            created_at_micros: 0,
        }
    }

    fn request(limit: &str, until: Option<&str>) -> LimitRequest {
        LimitRequest {
            new_limit: money(limit),
            until: until.map(date),
            reason: Reason::parse("risk review").unwrap(),
        }
    }

    #[test]
    fn a_permanent_change_sets_the_limit_and_ends_a_temporary_one() {
        let change = change_limit(
            &account("1000.00", Some(("3000.00", "2026-05-01"))),
            &request("500.00", None),
        )
        .unwrap();
        assert_eq!(change.kind, ChangeKind::Permanent);
        assert_eq!(change.previous_limit, money("3000.00"));
        assert_eq!(change.new_limit, money("500.00"));
        assert_eq!(change.permanent_limit, money("500.00"));
        assert_eq!(change.temporary, None);
    }

    #[test]
    fn a_temporary_limit_must_be_above_the_permanent_one() {
        for (limit, refused) in [("999.99", true), ("1000.00", true), ("1000.01", false)] {
            let result = change_limit(
                &account("1000.00", None),
                &request(limit, Some("2026-05-01")),
            );
            assert_eq!(result.is_err(), refused, "{limit}");
        }
        let change = change_limit(
            &account("1000.00", None),
            &request("2000.00", Some("2026-05-01")),
        )
        .unwrap();
        assert_eq!(change.kind, ChangeKind::Temporary);
        assert_eq!(change.previous_limit, money("1000.00"));
        assert_eq!(change.permanent_limit, money("1000.00"));
        assert_eq!(
            change.temporary.map(|temporary| temporary.until),
            Some(date("2026-05-01"))
        );
    }

    #[test]
    fn a_temporary_limit_lapses_at_the_close_of_until_or_a_later_one() {
        let account = account("1000.00", Some(("3000.00", "2026-05-01")));
        assert_eq!(lapse(&account, date("2026-04-30")), None);
        for as_of in ["2026-05-01", "2026-05-09"] {
            let change = lapse(&account, date(as_of)).unwrap();
            assert_eq!(change.kind, ChangeKind::TemporaryLapsed);
            assert_eq!(change.previous_limit, money("3000.00"));
            assert_eq!(change.new_limit, money("1000.00"));
        }
        assert_eq!(
            lapse(&super::tests::account("1000.00", None), date("2026-05-09")),
            None
        );
    }

    #[test]
    fn reasons_are_short_visible_text() {
        assert!(Reason::parse("").is_err());
        assert!(Reason::parse("   ").is_err());
        assert!(Reason::parse("a\u{202e}b").is_err());
        assert!(Reason::parse(&"x".repeat(201)).is_err());
        assert!(Reason::parse("退货 goods returned").is_ok());
    }
}
