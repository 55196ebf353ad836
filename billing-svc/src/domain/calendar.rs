//! Business dates: the calendar day in the business time zone (Asia/Shanghai, UTC+8,
//! by default), which decides what is due.

use chrono::{DateTime, Datelike, FixedOffset, Months, NaiveDate};

/// How far back a plan's purchase date may go (a back-dated import).
pub const BACKDATE_YEARS_MAX: u32 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DateError {
    #[error("must be a date written YYYY-MM-DD")]
    Malformed,
    #[error("must not be in the future (today is {0})")]
    Future(NaiveDate),
    #[error("must be at most {BACKDATE_YEARS_MAX} years ago (on or after {0})")]
    TooOld(NaiveDate),
}

/// The business date at `now_micros` (unix microseconds) in the zone `offset`.
pub fn business_date(now_micros: i64, offset: FixedOffset) -> NaiveDate {
    DateTime::from_timestamp_micros(now_micros)
        .unwrap_or_default()
        .with_timezone(&offset)
        .date_naive()
}

/// The earliest date a day close accepts on `today`: the oldest purchase date a plan
/// may have ([`BACKDATE_YEARS_MAX`] years back), so no bill can be due before it and
/// no catch-up ever runs longer than that many years of days.
pub fn earliest_close(today: NaiveDate) -> NaiveDate {
    today
        .checked_sub_months(Months::new(12 * BACKDATE_YEARS_MAX))
        .unwrap_or(NaiveDate::MIN)
}

/// Parses exactly `YYYY-MM-DD`.
pub fn parse_date(text: &str) -> Result<NaiveDate, DateError> {
    let well_formed = text.len() == 10
        && text.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            _ => b.is_ascii_digit(),
        });
    if !well_formed {
        return Err(DateError::Malformed);
    }
    // The shape is checked, so the fields are digits: no format string to interpret
    // (chrono's `parse_from_str` was a per cent of every read, one date per bill).
    let number = |range: std::ops::Range<usize>| {
        text.as_bytes()[range]
            .iter()
            .fold(0_u32, |value, digit| value * 10 + u32::from(digit - b'0'))
    };
    let year = i32::try_from(number(0..4)).map_err(|_| DateError::Malformed)?;
    NaiveDate::from_ymd_opt(year, number(5..7), number(8..10)).ok_or(DateError::Malformed)
}

/// `date` as `YYYY-MM-DD`, what `parse_date` reads: written digit by digit, since a
/// reply carries a date per bill and chrono's `Display` goes through `write!`.
pub fn date_text(date: NaiveDate) -> String {
    let year = date.year();
    if !(0..=9999).contains(&year) {
        return date.to_string();
    }
    let digit = |value: u32| char::from(b'0' + (value % 10) as u8);
    let year = year.unsigned_abs();
    let mut text = String::with_capacity(10);
    text.extend([year / 1000, year / 100, year / 10, year].map(digit));
    text.push('-');
    text.extend([date.month() / 10, date.month()].map(digit));
    text.push('-');
    text.extend([date.day() / 10, date.day()].map(digit));
    text
}

/// A purchase date: absent means today; otherwise today or up to five years back.
pub fn purchase_date(text: &str, today: NaiveDate) -> Result<NaiveDate, DateError> {
    if text.is_empty() {
        return Ok(today);
    }
    let date = parse_date(text)?;
    let earliest = earliest_close(today);
    if date > today {
        Err(DateError::Future(today))
    } else if date < earliest {
        Err(DateError::TooOld(earliest))
    } else {
        Ok(date)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(text: &str) -> NaiveDate {
        text.parse().unwrap()
    }

    #[test]
    fn the_business_day_turns_at_midnight_in_shanghai() {
        let shanghai = FixedOffset::east_opt(8 * 3600).unwrap();
        // 2026-03-01T15:59:59Z is 23:59:59 in Shanghai; a second later is the 2nd.
        let before = 1_772_380_799_000_000;
        assert_eq!(business_date(before, shanghai), date("2026-03-01"));
        assert_eq!(
            business_date(before + 1_000_000, shanghai),
            date("2026-03-02")
        );
    }

    #[test]
    fn every_day_reads_back_as_written() {
        let mut day = date("2023-12-25");
        while day < date("2025-01-10") {
            assert_eq!(date_text(day), day.to_string());
            assert_eq!(parse_date(&date_text(day)), Ok(day));
            day = day.succ_opt().unwrap();
        }
        for text in ["0001-01-01", "0999-09-09", "9999-12-31"] {
            assert_eq!(date_text(date(text)), text);
        }
        // Beyond four digits chrono's own form (with its sign) is kept.
        let far = NaiveDate::from_ymd_opt(10_000, 1, 1).unwrap();
        assert_eq!(date_text(far), far.to_string());
    }

    #[test]
    fn purchase_dates_are_checked() {
        let today = date("2026-11-29");
        assert_eq!(purchase_date("", today), Ok(today));
        assert_eq!(purchase_date("2026-11-29", today), Ok(today));
        assert_eq!(purchase_date("2021-11-29", today), Ok(date("2021-11-29")));
        assert_eq!(
            purchase_date("2026-11-30", today),
            Err(DateError::Future(today))
        );
        assert_eq!(
            purchase_date("2021-11-28", today),
            Err(DateError::TooOld(date("2021-11-29")))
        );
        for bad in [
            "2026-02-30",
            "2025-02-29",
            "2026-13-01",
            "2026-00-10",
            "2026-01-00",
            "26-01-01",
            "2026/01/01",
            "2026-1-1",
            " 2026-01-01",
            "yesterday",
        ] {
            assert_eq!(
                purchase_date(bad, today),
                Err(DateError::Malformed),
                "{bad}"
            );
        }
    }
}
