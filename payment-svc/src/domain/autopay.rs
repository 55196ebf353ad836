//! The autopay calendar (SPEC §11), with no IO: when a due date's notice goes out,
//! when its debit may be tried, and what the attempts so far allow next.
//!
//! The rules, per mandate and due date D (the due date of one or more unpaid bills):
//! - the notice goes out with the first run dated D−3 … D−1 (three days before when
//!   runs are daily; later only if the mandate is younger than that);
//! - a debit may be tried on D, D+1 and D+2, at most once per run date and at most
//!   three times: a retry only after INSUFFICIENT_FUNDS (or a charge that never
//!   reached the provider); any other outcome ends the due date;
//! - no debit without a notice sent on a date before D (that cycle is skipped).

use chrono::{Days, NaiveDate};

/// The notice goes out this many days before the due date, at the earliest.
pub const NOTICE_DAYS_BEFORE: u64 = 3;
/// Debits of one due date are tried on at most this many days, once a day.
pub const ATTEMPTS_MAX: u32 = 3;

/// Why a due date's debit was not tried, as AUTOPAY_SKIPPED events say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// The amount due exceeds the mandate's max_amount_per_debit.
    OverCap,
    /// No notice went out before the due date.
    NoNotice,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OverCap => "OVER_CAP",
            Self::NoNotice => "NO_NOTICE",
        }
    }
}

/// Whether a run dated `as_of` sends the notice of `due_date` (if not sent yet).
pub fn notice_window(due_date: NaiveDate, as_of: NaiveDate) -> bool {
    let opens = due_date
        .checked_sub_days(Days::new(NOTICE_DAYS_BEFORE))
        .unwrap_or(due_date);
    opens <= as_of && as_of < due_date
}

/// Whether a notice sent on `notice_date` allows debiting `due_date`: it went out at
/// least one day before.
pub fn notice_allows_debit(notice_date: NaiveDate, due_date: NaiveDate) -> bool {
    notice_date < due_date
}

/// Whether a run dated `as_of` may try a debit of `due_date`: on the due date or on
/// one of the retry days after it.
pub fn debit_window(due_date: NaiveDate, as_of: NaiveDate) -> bool {
    let closes = due_date
        .checked_add_days(Days::new(u64::from(ATTEMPTS_MAX - 1)))
        .unwrap_or(due_date);
    due_date <= as_of && as_of <= closes
}

/// How an earlier attempt of a due date ended, as far as the next one cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptEnd {
    /// Not known yet (the charge is in flight, or its payment PROCESSING).
    Open,
    Succeeded,
    /// Declined for lack of funds, or never charged: another day may try again.
    Retryable,
    /// Declined otherwise (expired instrument, …): no more attempts for this date.
    Final,
}

/// What a run may do about one due date given its earlier attempts (in order) and
/// whether one was already made on this run's date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextAttempt {
    /// Try attempt number `n` (1-based).
    Try(u32),
    /// Nothing to do: paid, in flight, tried today, out of attempts, or ended.
    Nothing,
}

pub fn next_attempt(earlier: &[AttemptEnd], tried_today: bool) -> NextAttempt {
    if tried_today {
        return NextAttempt::Nothing;
    }
    let made = u32::try_from(earlier.len()).unwrap_or(u32::MAX);
    let all_retryable = earlier.iter().all(|end| *end == AttemptEnd::Retryable);
    if made < ATTEMPTS_MAX && all_retryable {
        NextAttempt::Try(made + 1)
    } else {
        NextAttempt::Nothing
    }
}

/// How a declined charge ends its attempt: a retry later, or the end of the due date.
pub fn end_of_decline(failure_code: &str) -> AttemptEnd {
    match failure_code {
        "INSUFFICIENT_FUNDS" | "NOT_CHARGED" => AttemptEnd::Retryable,
        _ => AttemptEnd::Final,
    }
}

/// The provider's code that suspends a mandate.
pub const EXPIRED_INSTRUMENT: &str = "EXPIRED_INSTRUMENT";

/// The debit's idempotency key: a rerun of the same day, or another replica, asks
/// for the same payment and so charges nothing twice.
pub fn debit_key(mandate_id: &str, due_date: NaiveDate, attempt: u32) -> String {
    format!("autopay:{mandate_id}:{due_date}:{attempt}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(text: &str) -> NaiveDate {
        text.parse().unwrap()
    }

    #[test]
    fn the_notice_goes_out_from_three_days_before_to_the_day_before() {
        let due = date("2027-03-15");
        let cases = [
            ("2027-03-11", false),
            ("2027-03-12", true),
            ("2027-03-14", true),
            ("2027-03-15", false),
            ("2027-03-16", false),
        ];
        for (as_of, sent) in cases {
            assert_eq!(notice_window(due, date(as_of)), sent, "{as_of}");
        }
        assert!(notice_allows_debit(date("2027-03-14"), due));
        assert!(!notice_allows_debit(due, due));
    }

    #[test]
    fn debits_are_tried_on_the_due_date_and_the_two_days_after() {
        let due = date("2027-03-15");
        let cases = [
            ("2027-03-14", false),
            ("2027-03-15", true),
            ("2027-03-17", true),
            ("2027-03-18", false),
        ];
        for (as_of, tried) in cases {
            assert_eq!(debit_window(due, date(as_of)), tried, "{as_of}");
        }
    }

    #[test]
    fn retries_follow_insufficient_funds_only_and_stop_at_three() {
        use AttemptEnd::*;
        let cases: &[(&[AttemptEnd], bool, NextAttempt)] = &[
            (&[], false, NextAttempt::Try(1)),
            (&[], true, NextAttempt::Nothing),
            (&[Retryable], false, NextAttempt::Try(2)),
            (&[Retryable, Retryable], false, NextAttempt::Try(3)),
            (
                &[Retryable, Retryable, Retryable],
                false,
                NextAttempt::Nothing,
            ),
            (&[Open], false, NextAttempt::Nothing),
            (&[Succeeded], false, NextAttempt::Nothing),
            (&[Retryable, Final], false, NextAttempt::Nothing),
            (&[Retryable], true, NextAttempt::Nothing),
        ];
        for (earlier, today, next) in cases {
            assert_eq!(next_attempt(earlier, *today), *next, "{earlier:?} {today}");
        }
        assert_eq!(end_of_decline("INSUFFICIENT_FUNDS"), Retryable);
        assert_eq!(end_of_decline(EXPIRED_INSTRUMENT), Final);
        assert_eq!(
            debit_key("mdt_1", date("2027-03-15"), 2),
            "autopay:mdt_1:2027-03-15:2"
        );
    }
}
