//! Property tests of the schedule engine and the APR solver (SPEC §5.3, R4): for
//! any principal in a product's range, any offered term and any rate up to the APR
//! cap, the numbers add up exactly.

use chrono::NaiveDate;
use proptest::prelude::*;
use rust_decimal::Decimal;
use service_kit::money::{Currency, Money};

use super::{
    apr::{Apr, present_value_gap},
    product::{Catalog, InstallmentMethod},
    schedule::Schedule,
};

const METHODS: [InstallmentMethod; 4] = [
    InstallmentMethod::EqualInstallment,
    InstallmentMethod::EqualPrincipal,
    InstallmentMethod::FlatFee,
    InstallmentMethod::InterestFree,
];

/// A principal between 100.00 and 50000.00 (every demo product's range).
fn principal() -> impl Strategy<Value = Money> {
    (10_000_i64..=5_000_000).prop_map(|minor| Money::from_minor(Currency::Cny, minor).unwrap())
}

/// A rate per period up to 2.5 % (above the 24 % APR cap for every method; plans
/// above the cap are filtered out below, so the whole range up to it is covered).
fn rate() -> impl Strategy<Value = Decimal> {
    (0_i64..=250).prop_map(|basis_points| Decimal::new(basis_points, 4))
}

/// Every term any demo product offers, and every term from 1 to 36.
fn term_count() -> impl Strategy<Value = u32> {
    let offered: Vec<u32> = Catalog::demo()
        .unwrap()
        .products()
        .iter()
        .flat_map(|product| product.terms.keys().copied())
        .collect();
    prop_oneof![proptest::sample::select(offered), 1_u32..=36]
}

fn purchase_date() -> impl Strategy<Value = NaiveDate> {
    (0_i64..3650).prop_map(|days| {
        NaiveDate::from_ymd_opt(2024, 1, 1).unwrap() + chrono::Duration::days(days)
    })
}

fn round(value: Decimal) -> Money {
    Money::round_half_up(Currency::Cny, value).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn schedules_add_up_exactly(
        method in proptest::sample::select(METHODS.to_vec()),
        principal in principal(),
        term_count in term_count(),
        rate in rate(),
        purchase_date in purchase_date(),
    ) {
        let rate = if method == InstallmentMethod::InterestFree { Decimal::ZERO } else { rate };
        let schedule = Schedule::build(method, principal, term_count, rate, purchase_date).unwrap();
        let apr = Apr::of(principal.amount(), &schedule);
        prop_assume!(apr.annual_percent <= Decimal::new(2400, 2));
        let lines = schedule.lines();
        prop_assert_eq!(lines.len(), term_count as usize);

        // Principal sums to P exactly; every total is the sum of the bills.
        let totals = schedule.totals().unwrap();
        let sum = |part: fn(&super::schedule::ScheduleLine) -> Decimal| lines.iter().map(part).sum::<Decimal>();
        prop_assert_eq!(totals.principal, principal);
        prop_assert_eq!(sum(|l| l.principal.amount()), principal.amount());
        prop_assert_eq!(totals.interest.amount(), sum(|l| l.interest.amount()));
        prop_assert_eq!(totals.fee.amount(), sum(|l| l.fee.amount()));
        prop_assert_eq!(totals.amount_due.amount(), sum(|l| l.amount_due().unwrap().amount()));
        prop_assert_eq!(
            totals.amount_due.amount(),
            totals.principal.amount() + totals.interest.amount() + totals.fee.amount()
        );

        // No component negative, seq 1..n, due dates strictly increasing.
        for (index, line) in lines.iter().enumerate() {
            prop_assert_eq!(line.seq as usize, index + 1);
            for component in [line.principal, line.interest, line.fee] {
                prop_assert!(!component.amount().is_sign_negative() || component.is_zero());
            }
            if index > 0 {
                prop_assert!(line.due_date > lines[index - 1].due_date);
            }
        }

        // The last-bill rule, and interest on the balance.
        let n = term_count as usize;
        let mut balance = principal.amount();
        for (index, line) in lines.iter().enumerate() {
            let last = index + 1 == n;
            match method {
                InstallmentMethod::EqualInstallment if !rate.is_zero() => {
                    prop_assert_eq!(line.interest, round(balance * rate));
                    if last {
                        prop_assert_eq!(line.principal.amount(), balance, "the last bill takes the balance");
                    } else {
                        prop_assert_eq!(line.amount_due().unwrap(), lines[0].amount_due().unwrap(), "equal installments");
                    }
                }
                _ => {
                    let part = round(principal.amount() / Decimal::from(term_count)).amount();
                    let expected = if last { principal.amount() - part * Decimal::from(term_count - 1) } else { part };
                    prop_assert_eq!(line.principal.amount(), expected);
                    let interest_rate = if method == InstallmentMethod::EqualPrincipal { rate } else { Decimal::ZERO };
                    prop_assert_eq!(line.interest, round(balance * interest_rate));
                    let fee_rate = if method == InstallmentMethod::FlatFee { rate } else { Decimal::ZERO };
                    prop_assert_eq!(line.fee, round(principal.amount() * fee_rate));
                }
            }
            balance -= line.principal.amount();
        }
        prop_assert!(balance.is_zero());

        // The APR's monthly rate solves the IRR equation.
        let payments: Vec<f64> = lines
            .iter()
            .map(|line| line.amount_due().unwrap().amount().to_string().parse().unwrap())
            .collect();
        let principal_f64: f64 = principal.amount().to_string().parse().unwrap();
        let gap = present_value_gap(apr.monthly_rate, principal_f64, &payments);
        prop_assert!(gap.abs() / principal_f64 < 1e-9, "IRR gap {gap} at r = {}", apr.monthly_rate);
    }
}
