//! APR by the IRR method (年化利率, PBoC 2021 No. 3): the monthly rate r that makes
//! the bills' present value equal the financed principal; APR = 12·r.

use rust_decimal::{Decimal, RoundingStrategy};

use super::schedule::Schedule;

/// The solver stops when the present value is this close to the principal, relative.
const TOLERANCE_RELATIVE: f64 = 1e-13;
const ITERATIONS_MAX: u32 = 200;
/// The monthly rate is searched in [0, this]: 1000 % a month is beyond any product.
const MONTHLY_RATE_MAX: f64 = 10.0;

/// A schedule's cost as a rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Apr {
    /// r, the monthly internal rate of return. f64 is fine here: it is a rate, not
    /// money, and it is reported only rounded.
    pub monthly_rate: f64,
    /// 12·r as a percent, half-up to two decimals ("13.03").
    pub annual_percent: Decimal,
    /// (1+r)^12 − 1 as a percent, half-up to two decimals ("13.84").
    pub effective_percent: Decimal,
}

impl Apr {
    /// The APR of `schedule` financing `principal` (the amount at t = 0).
    pub fn of(principal: Decimal, schedule: &Schedule) -> Self {
        let payments: Vec<f64> = schedule
            .lines()
            .iter()
            .map(|line| {
                let total = line.principal.amount() + line.interest.amount() + line.fee.amount();
                to_f64(total)
            })
            .collect();
        let monthly_rate = solve_monthly_rate(to_f64(principal), &payments);
        Self {
            monthly_rate,
            annual_percent: percent(12.0 * monthly_rate),
            effective_percent: percent((1.0 + monthly_rate).powi(12) - 1.0),
        }
    }
}

/// Σ payments_k / (1+r)^k − principal.
pub fn present_value_gap(monthly_rate: f64, principal: f64, payments: &[f64]) -> f64 {
    let discount = 1.0 / (1.0 + monthly_rate);
    let mut factor = 1.0;
    let mut value = 0.0;
    for payment in payments {
        factor *= discount;
        value += payment * factor;
    }
    value - principal
}

/// Bisection on [0, MONTHLY_RATE_MAX]: the gap falls as r grows, and payments summing
/// to at least the principal put the root there (r = 0 when they sum to exactly it).
/// Bisection is slower than Newton but cannot diverge; 200 halvings reach f64's limit.
fn solve_monthly_rate(principal: f64, payments: &[f64]) -> f64 {
    let (mut low, mut high) = (0.0_f64, MONTHLY_RATE_MAX);
    if present_value_gap(low, principal, payments) <= 0.0 {
        return 0.0;
    }
    for _ in 0..ITERATIONS_MAX {
        let middle = (low + high) / 2.0;
        let gap = present_value_gap(middle, principal, payments);
        if gap.abs() <= TOLERANCE_RELATIVE * principal || high - low <= f64::EPSILON {
            return middle;
        }
        if gap > 0.0 {
            low = middle;
        } else {
            high = middle;
        }
    }
    (low + high) / 2.0
}

/// The f64 nearest `value`, as parsing its text gives, without the text: a mantissa
/// below 2^53 and a power of ten up to 10^22 are both exact in f64, and IEEE 754
/// rounds their quotient once, to the nearest.
fn to_f64(value: Decimal) -> f64 {
    const POWERS_OF_TEN: [f64; 23] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
        1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
    ];
    let mantissa = value.mantissa();
    match POWERS_OF_TEN.get(value.scale() as usize) {
        Some(power) if mantissa.unsigned_abs() < 1 << 53 => mantissa as f64 / power,
        _ => value.to_string().parse().unwrap_or(f64::NAN),
    }
}

fn percent(rate: f64) -> Decimal {
    let mut value = Decimal::from_f64_retain(rate * 100.0)
        .unwrap_or_default()
        .round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
    value.rescale(2);
    value
}

#[cfg(test)]
mod tests {
    use chrono::NaiveDate;
    use service_kit::money::Money;

    use super::*;
    use crate::domain::method::InstallmentMethod;

    #[test]
    fn decimals_become_the_f64_their_text_parses_to() {
        let values = (0..5_000_i64).flat_map(|n| {
            let mantissa = n * 104_729 % 1_000_000_007;
            (0..=24).map(move |scale| Decimal::new(mantissa, scale))
        });
        for value in values
            .chain(["9007199254740993.5", "0.1", "1066.19", "-1066.19"].map(|t| t.parse().unwrap()))
        {
            let parsed: f64 = value.to_string().parse().unwrap();
            assert_eq!(to_f64(value).to_bits(), parsed.to_bits(), "{value}");
        }
    }

    fn apr(method: InstallmentMethod, principal: &str, n: u32, rate: &str) -> Apr {
        let principal = Money::parse("CNY", principal).unwrap();
        let date = NaiveDate::from_ymd_opt(2026, 1, 15).unwrap();
        let schedule = Schedule::build(method, principal, n, rate.parse().unwrap(), date).unwrap();
        Apr::of(principal.amount(), &schedule)
    }

    #[test]
    fn matches_the_worked_examples() {
        let flat_fee = apr(InstallmentMethod::FlatFee, "5999.00", 12, "0.006");
        assert_eq!(flat_fee.annual_percent.to_string(), "13.03");
        assert_eq!(flat_fee.effective_percent.to_string(), "13.84");
        let equal = apr(InstallmentMethod::EqualInstallment, "12000.00", 12, "0.01");
        assert_eq!(equal.annual_percent.to_string(), "12.00");
        let free = apr(InstallmentMethod::InterestFree, "5999.00", 12, "0");
        assert_eq!(free.annual_percent.to_string(), "0.00");
        assert_eq!(free.effective_percent.to_string(), "0.00");
    }
}
