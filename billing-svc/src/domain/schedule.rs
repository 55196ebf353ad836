//! The schedule engine: what every bill of a plan charges, exactly (SPEC §5.3).
//!
//! All arithmetic is `Decimal`; every component is rounded half-up to 0.01 by
//! [`Money::round_half_up`], and the last bill absorbs what rounding left over, so the
//! bills' principal always sums to exactly the financed principal.

use chrono::{Months, NaiveDate};
use rust_decimal::Decimal;
use service_kit::money::{Currency, Money, MoneyError};

use super::method::InstallmentMethod;

/// The most bills one plan may have.
pub const TERM_COUNT_MAX: u32 = 60;

/// One bill of a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduleLine {
    /// 1-based position in the plan.
    pub seq: u32,
    pub due_date: NaiveDate,
    pub principal: Money,
    pub interest: Money,
    pub fee: Money,
}

impl ScheduleLine {
    /// principal + interest + fee.
    pub fn amount_due(&self) -> Result<Money, MoneyError> {
        self.principal
            .checked_add(self.interest)?
            .checked_add(self.fee)
    }
}

/// A plan's bills, in seq order. Guarantees: `term_count` lines; principal sums to
/// the financed principal; no component negative.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    lines: Vec<ScheduleLine>,
    currency: Currency,
}

/// Totals of a schedule, each the sum of its lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduleTotals {
    pub principal: Money,
    pub interest: Money,
    pub fee: Money,
    pub amount_due: Money,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("term_count must be between 1 and {TERM_COUNT_MAX}")]
    TermCount,
    #[error("the rate must not be negative")]
    NegativeRate,
    #[error("a due date falls outside the calendar")]
    DateOutOfRange,
    #[error("the principal is too small to spread over this many bills")]
    PrincipalTooSmall,
    #[error(transparent)]
    Money(#[from] MoneyError),
}

impl Schedule {
    /// The bills of a plan financing `principal` over `term_count` months at `rate`
    /// per period (monthly interest, or the flat fee rate on the original principal),
    /// bought on `purchase_date`.
    pub fn build(
        method: InstallmentMethod,
        principal: Money,
        term_count: u32,
        rate: Decimal,
        purchase_date: NaiveDate,
    ) -> Result<Self, ScheduleError> {
        if term_count == 0 || term_count > TERM_COUNT_MAX {
            return Err(ScheduleError::TermCount);
        }
        if rate.is_sign_negative() && !rate.is_zero() {
            return Err(ScheduleError::NegativeRate);
        }
        let components = match method {
            InstallmentMethod::EqualInstallment if !rate.is_zero() => {
                equal_installment(principal, term_count, rate)?
            }
            InstallmentMethod::EqualInstallment | InstallmentMethod::InterestFree => {
                equal_principal(principal, term_count, Decimal::ZERO, Decimal::ZERO)?
            }
            InstallmentMethod::EqualPrincipal => {
                equal_principal(principal, term_count, rate, Decimal::ZERO)?
            }
            InstallmentMethod::FlatFee => {
                equal_principal(principal, term_count, Decimal::ZERO, rate)?
            }
        };
        let lines = components
            .into_iter()
            .zip(1..)
            .map(|((principal, interest, fee), seq)| {
                Ok(ScheduleLine {
                    seq,
                    due_date: due_date(purchase_date, seq)?,
                    principal,
                    interest,
                    fee,
                })
            })
            .collect::<Result<Vec<_>, ScheduleError>>()?;
        Ok(Self {
            lines,
            currency: principal.currency(),
        })
    }

    pub fn lines(&self) -> &[ScheduleLine] {
        &self.lines
    }

    /// The sums of the lines' components.
    pub fn totals(&self) -> Result<ScheduleTotals, MoneyError> {
        let zero = Money::zero(self.currency);
        let mut totals = ScheduleTotals {
            principal: zero,
            interest: zero,
            fee: zero,
            amount_due: zero,
        };
        for line in &self.lines {
            totals.principal = totals.principal.checked_add(line.principal)?;
            totals.interest = totals.interest.checked_add(line.interest)?;
            totals.fee = totals.fee.checked_add(line.fee)?;
            totals.amount_due = totals.amount_due.checked_add(line.amount_due()?)?;
        }
        Ok(totals)
    }
}

/// Bill `seq`'s due date: `seq` calendar months after the purchase, each computed from
/// the purchase date (not chained) and clamped to the month's end.
pub fn due_date(purchase_date: NaiveDate, seq: u32) -> Result<NaiveDate, ScheduleError> {
    purchase_date
        .checked_add_months(Months::new(seq))
        .ok_or(ScheduleError::DateOutOfRange)
}

type Components = Vec<(Money, Money, Money)>;

/// 等额本息: equal totals A = round(P·i·(1+i)^n / ((1+i)^n − 1)); interest on the
/// balance; the last bill takes the whole remaining balance.
fn equal_installment(
    principal: Money,
    term_count: u32,
    rate: Decimal,
) -> Result<Components, ScheduleError> {
    let currency = principal.currency();
    let round = |value: Decimal| Money::round_half_up(currency, value);
    let overflow = || ScheduleError::Money(MoneyError::Overflow);
    let one_plus_rate = Decimal::ONE + rate;
    let mut growth = Decimal::ONE;
    for _ in 0..term_count {
        growth = growth.checked_mul(one_plus_rate).ok_or_else(overflow)?;
    }
    let installment = round(
        principal
            .amount()
            .checked_mul(rate)
            .and_then(|x| x.checked_mul(growth))
            .and_then(|x| x.checked_div(growth - Decimal::ONE))
            .ok_or_else(overflow)?,
    )?;
    let mut balance = principal;
    let mut lines = Vec::with_capacity(term_count as usize);
    for seq in 1..=term_count {
        let interest = round(balance.amount() * rate)?;
        let principal_part = if seq == term_count {
            balance
        } else {
            // An installment always exceeds the interest on the balance it repays; if
            // rounding ever made the principal part overshoot the balance, cap it.
            let part = installment.checked_sub(interest)?;
            if part.amount() > balance.amount() {
                balance
            } else {
                part
            }
        };
        balance = balance.checked_sub(principal_part)?;
        lines.push((principal_part, interest, Money::zero(currency)));
    }
    Ok(lines)
}

/// Equal principal round(P/n), the last bill taking P − (n−1)·round(P/n); interest
/// round(balance·interest_rate); fee round(P·fee_rate) every period.
fn equal_principal(
    principal: Money,
    term_count: u32,
    interest_rate: Decimal,
    fee_rate: Decimal,
) -> Result<Components, ScheduleError> {
    let currency = principal.currency();
    let round = |value: Decimal| Money::round_half_up(currency, value);
    let part = round(principal.amount() / Decimal::from(term_count))?;
    let fee = round(principal.amount() * fee_rate)?;
    let mut balance = principal;
    let mut lines = Vec::with_capacity(term_count as usize);
    for seq in 1..=term_count {
        let interest = round(balance.amount() * interest_rate)?;
        let principal_part = if seq == term_count { balance } else { part };
        balance = balance
            .checked_sub(principal_part)
            .map_err(|_| ScheduleError::PrincipalTooSmall)?;
        lines.push((principal_part, interest, fee));
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn money(amount: &str) -> Money {
        Money::parse("CNY", amount).unwrap()
    }

    fn date(text: &str) -> NaiveDate {
        text.parse().unwrap()
    }

    fn build(method: InstallmentMethod, principal: &str, n: u32, rate: &str) -> Schedule {
        Schedule::build(
            method,
            money(principal),
            n,
            rate.parse().unwrap(),
            date("2026-01-15"),
        )
        .unwrap()
    }

    fn line(schedule: &Schedule, seq: usize) -> (String, String, String, String) {
        let line = schedule.lines()[seq - 1];
        (
            line.principal.to_string(),
            line.interest.to_string(),
            line.fee.to_string(),
            line.amount_due().unwrap().to_string(),
        )
    }

    fn strings(a: &str, b: &str, c: &str, d: &str) -> (String, String, String, String) {
        (a.into(), b.into(), c.into(), d.into())
    }

    #[test]
    fn equal_installment_matches_the_worked_example() {
        let schedule = build(InstallmentMethod::EqualInstallment, "12000.00", 12, "0.01");
        assert_eq!(
            line(&schedule, 1),
            strings("946.19", "120.00", "0.00", "1066.19")
        );
        assert_eq!(
            line(&schedule, 2),
            strings("955.65", "110.54", "0.00", "1066.19")
        );
        assert_eq!(
            line(&schedule, 12),
            strings("1055.58", "10.56", "0.00", "1066.14")
        );
        let totals = schedule.totals().unwrap();
        assert_eq!(totals.principal, money("12000.00"));
        assert_eq!(totals.interest, money("794.23"));
    }

    #[test]
    fn equal_principal_matches_the_worked_example() {
        let schedule = build(InstallmentMethod::EqualPrincipal, "12000.00", 12, "0.01");
        assert_eq!(
            line(&schedule, 1),
            strings("1000.00", "120.00", "0.00", "1120.00")
        );
        assert_eq!(
            line(&schedule, 2),
            strings("1000.00", "110.00", "0.00", "1110.00")
        );
        assert_eq!(
            line(&schedule, 12),
            strings("1000.00", "10.00", "0.00", "1010.00")
        );
        assert_eq!(schedule.totals().unwrap().interest, money("780.00"));
    }

    #[test]
    fn flat_fee_matches_the_worked_example() {
        let schedule = build(InstallmentMethod::FlatFee, "5999.00", 12, "0.006");
        assert_eq!(
            line(&schedule, 1),
            strings("499.92", "0.00", "35.99", "535.91")
        );
        assert_eq!(
            line(&schedule, 11),
            strings("499.92", "0.00", "35.99", "535.91")
        );
        assert_eq!(
            line(&schedule, 12),
            strings("499.88", "0.00", "35.99", "535.87")
        );
        let totals = schedule.totals().unwrap();
        assert_eq!(totals.fee, money("431.88"));
        assert_eq!(totals.principal, money("5999.00"));
    }

    #[test]
    fn interest_free_charges_principal_only() {
        let schedule = build(InstallmentMethod::InterestFree, "1000.00", 3, "0");
        assert_eq!(
            line(&schedule, 1),
            strings("333.33", "0.00", "0.00", "333.33")
        );
        assert_eq!(
            line(&schedule, 3),
            strings("333.34", "0.00", "0.00", "333.34")
        );
    }

    #[test]
    fn equal_installment_at_zero_rate_is_interest_free() {
        let free = build(InstallmentMethod::InterestFree, "1000.00", 3, "0");
        let zero = build(InstallmentMethod::EqualInstallment, "1000.00", 3, "0");
        assert_eq!(free, zero);
    }

    #[test]
    fn due_dates_clamp_to_month_end_from_the_purchase_date() {
        let from_jan_31: Vec<_> = (1..=4)
            .map(|k| due_date(date("2026-01-31"), k).unwrap().to_string())
            .collect();
        assert_eq!(
            from_jan_31,
            ["2026-02-28", "2026-03-31", "2026-04-30", "2026-05-31"]
        );
        let leap: Vec<_> = (1..=2)
            .map(|k| due_date(date("2028-01-31"), k).unwrap().to_string())
            .collect();
        assert_eq!(leap, ["2028-02-29", "2028-03-31"]);
        let from_leap_day: Vec<_> = [1, 12]
            .iter()
            .map(|k| due_date(date("2028-02-29"), *k).unwrap().to_string())
            .collect();
        assert_eq!(from_leap_day, ["2028-03-29", "2029-02-28"]);
    }

    #[test]
    fn refuses_impossible_terms() {
        let build = |n, rate: &str| {
            Schedule::build(
                InstallmentMethod::FlatFee,
                money("100.00"),
                n,
                rate.parse().unwrap(),
                date("2026-01-01"),
            )
        };
        assert_eq!(build(0, "0.01"), Err(ScheduleError::TermCount));
        assert_eq!(build(61, "0.01"), Err(ScheduleError::TermCount));
        assert_eq!(build(12, "-0.01"), Err(ScheduleError::NegativeRate));
    }
}
