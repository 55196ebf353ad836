//! Early payoff (提前还款, SPEC §5.9): what settling a plan today owes — everything
//! due, the remaining principal, and interest only for time actually borrowed (Civil
//! Code art. 677): the current period's interest pro rata by days, or for a fee plan
//! the current period's fee (or every remaining fee, by product setting).

use chrono::NaiveDate;
use rust_decimal::Decimal;
use service_kit::money::{Money, MoneyError};

use super::{
    allocation::BillAllocation,
    bill::{Bill, BillStatus, Components},
    product::{InstallmentMethod, PrepayFee},
};

/// The plan facts a payoff depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayoffTerms {
    pub method: InstallmentMethod,
    pub prepay_fee: PrepayFee,
    pub purchase_date: NaiveDate,
}

/// One bill's part of a payoff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayoffLine {
    pub bill_id: String,
    /// What the payoff pays on this bill.
    pub owed: Components,
    /// For a bill not yet due: what it charges once settled early (interest and fees
    /// cut to the time borrowed). None for a due bill, which is paid as it stands.
    pub settled_charge: Option<Components>,
}

/// The payoff of a plan whose bills (in seq order) are `bills`, on `today`.
///
/// The current period is the one `today` falls in: after the previous due date (or the
/// purchase), up to and including the next due date — the first bill due on or after
/// today. Only that bill's interest (pro rata by days) or fee is owed, and only while
/// it is still upcoming and unpaid: a current bill already paid (say, early) owes
/// nothing more, a current bill due today is paid as it stands, and no later period's
/// fee or interest is ever charged (SPEC §5.9).
pub fn payoff_lines(
    terms: PayoffTerms,
    bills: &[Bill],
    today: NaiveDate,
) -> Result<Vec<PayoffLine>, MoneyError> {
    let current_seq = bills
        .iter()
        .find(|bill| bill.due_date >= today)
        .map(|bill| bill.seq);
    let mut lines = Vec::new();
    let mut period_start = terms.purchase_date;
    for bill in bills {
        let status = bill.status(today);
        let outstanding = bill.outstanding()?;
        match status {
            BillStatus::Paid | BillStatus::SettledEarly | BillStatus::Cancelled => {}
            BillStatus::Due | BillStatus::Overdue => lines.push(PayoffLine {
                bill_id: bill.bill_id.clone(),
                owed: outstanding,
                settled_charge: None,
            }),
            BillStatus::Upcoming => {
                let current = current_seq == Some(bill.seq);
                let zero = Money::zero(bill.charged.principal.currency());
                let interest = match terms.method {
                    InstallmentMethod::EqualInstallment | InstallmentMethod::EqualPrincipal
                        if current =>
                    {
                        let earned =
                            pro_rata(bill.charged.interest, period_start, bill.due_date, today)?;
                        earned.checked_sub(bill.paid.interest).unwrap_or(zero)
                    }
                    _ => zero,
                };
                let fee = match (terms.method, terms.prepay_fee) {
                    (InstallmentMethod::FlatFee, PrepayFee::AllRemaining) => outstanding.fee,
                    (InstallmentMethod::FlatFee, PrepayFee::Current) if current => outstanding.fee,
                    _ => zero,
                };
                let owed = Components {
                    principal: outstanding.principal,
                    interest,
                    fee,
                    penalty: outstanding.penalty,
                };
                let settled_charge = Components {
                    principal: bill.charged.principal,
                    interest: bill.paid.interest.checked_add(interest)?,
                    fee: bill.paid.fee.checked_add(fee)?,
                    penalty: bill.charged.penalty,
                };
                lines.push(PayoffLine {
                    bill_id: bill.bill_id.clone(),
                    owed,
                    settled_charge: Some(settled_charge),
                });
            }
        }
        period_start = bill.due_date;
    }
    Ok(lines)
}

/// Whether a payoff of `lines` closes any bill early (SETTLED_EARLY); when it pays
/// only bills already due, the plan is simply SETTLED.
pub fn settles_early(lines: &[PayoffLine]) -> bool {
    lines.iter().any(|line| line.settled_charge.is_some())
}

/// The payoff as allocations (seq order; bills owing nothing left out) and its total.
pub fn payoff_allocations(
    lines: &[PayoffLine],
    bills: &[Bill],
) -> Result<(Vec<BillAllocation>, Money), MoneyError> {
    let currency = bills
        .first()
        .map_or(service_kit::money::Currency::Cny, |bill| {
            bill.charged.principal.currency()
        });
    let mut total = Money::zero(currency);
    let mut allocations = Vec::new();
    for line in lines {
        let Some(bill) = bills.iter().find(|bill| bill.bill_id == line.bill_id) else {
            continue;
        };
        let owed = line.owed.total()?;
        if owed.is_zero() {
            continue;
        }
        total = total.checked_add(owed)?;
        allocations.push(BillAllocation {
            bill_id: bill.bill_id.clone(),
            plan_id: bill.plan_id.clone(),
            seq: bill.seq,
            due_date: bill.due_date,
            parts: line.owed,
        });
    }
    Ok((allocations, total))
}

/// `amount` × days elapsed in [start, end) up to `today` / days in the period, half-up.
fn pro_rata(
    amount: Money,
    start: NaiveDate,
    end: NaiveDate,
    today: NaiveDate,
) -> Result<Money, MoneyError> {
    let period_days = (end - start).num_days().max(1);
    let elapsed = (today - start).num_days().clamp(0, period_days);
    Money::round_half_up(
        amount.currency(),
        amount.amount() * Decimal::from(elapsed) / Decimal::from(period_days),
    )
}

#[cfg(test)]
mod tests {
    use service_kit::money::Currency;

    use super::*;
    use crate::domain::{bill::BillState, product::Catalog, schedule::Schedule};

    fn date(text: &str) -> NaiveDate {
        text.parse().unwrap()
    }

    /// The bills of a plan bought 2026-01-15, as CreatePlan makes them.
    fn bills(product_id: &str, principal: &str) -> (PayoffTerms, Vec<Bill>) {
        let catalog = Catalog::demo().unwrap();
        let product = catalog.product(product_id).unwrap();
        let principal = Money::parse("CNY", principal).unwrap();
        let schedule = Schedule::build(
            product.method,
            principal,
            12,
            product.rate(12).unwrap(),
            date("2026-01-15"),
        )
        .unwrap();
        let bills = open_bills(&schedule);
        let terms = PayoffTerms {
            method: product.method,
            prepay_fee: product.prepay_fee,
            purchase_date: date("2026-01-15"),
        };
        (terms, bills)
    }

    /// (total owed, what the current bill owes as interest, fee) on 2026-03-01: bill 1
    /// (due 02-15) is due; bill 2's period 02-15 to 03-15 is 14 of 28 days gone.
    fn payoff(product_id: &str, principal: &str) -> (String, String, String, usize) {
        let (terms, bills) = bills(product_id, principal);
        let lines = payoff_lines(terms, &bills, date("2026-03-01")).unwrap();
        let total = lines
            .iter()
            .try_fold(Money::zero(Currency::Cny), |sum, line| {
                sum.checked_add(line.owed.total()?)
            })
            .unwrap();
        let current = &lines[1];
        let settled_early = lines
            .iter()
            .filter(|line| line.settled_charge.is_some())
            .count();
        (
            total.to_string(),
            current.owed.interest.to_string(),
            current.owed.fee.to_string(),
            settled_early,
        )
    }

    #[test]
    fn equal_installment_owes_half_the_current_interest() {
        // 1066.19 due + 12000.00 - 946.19 principal + round(110.54 × 14 / 28) = 55.27.
        assert_eq!(
            payoff("cash-loan", "12000.00"),
            ("12175.27".into(), "55.27".into(), "0.00".into(), 11)
        );
    }

    #[test]
    fn equal_principal_owes_half_the_current_interest() {
        // 1120.00 due + 11000.00 principal + 110.00 × 14 / 28 = 55.00.
        assert_eq!(
            payoff("cash-loan-ep", "12000.00"),
            ("12175.00".into(), "55.00".into(), "0.00".into(), 11)
        );
    }

    #[test]
    fn flat_fee_owes_the_current_fee_only() {
        // 535.91 due + 5999.00 - 499.92 principal + this period's fee 35.99.
        assert_eq!(
            payoff("mall-fee", "5999.00"),
            ("6070.98".into(), "0.00".into(), "35.99".into(), 11)
        );
    }

    #[test]
    fn interest_free_owes_the_principal() {
        assert_eq!(
            payoff("mall-free", "5999.00"),
            ("5999.00".into(), "0.00".into(), "0.00".into(), 11)
        );
    }

    /// Issue 13's example: mall-fee/3, 10074.28 bought 2026-11-29, bill 1 (due
    /// 2026-12-29) paid in full the same day; the payoff the next day is the remaining
    /// principal only — bill 2's period has not started.
    #[test]
    fn flat_fee_owes_no_later_fee_when_the_current_bill_is_paid() {
        let catalog = Catalog::demo().unwrap();
        let product = catalog.product("mall-fee").unwrap();
        let bought = date("2026-11-29");
        let schedule = Schedule::build(
            product.method,
            Money::parse("CNY", "10074.28").unwrap(),
            3,
            product.rate(3).unwrap(),
            bought,
        )
        .unwrap();
        let mut bills = open_bills(&schedule);
        bills[0].paid = bills[0].charged;
        bills[0].state = BillState::Paid;
        let terms = PayoffTerms {
            method: product.method,
            prepay_fee: product.prepay_fee,
            purchase_date: bought,
        };
        let lines = payoff_lines(terms, &bills, date("2026-11-30")).unwrap();
        let (_, total) = payoff_allocations(&lines, &bills).unwrap();
        assert_eq!(total.to_string(), "6716.19", "no fee of bill 2 (74.55)");
        assert!(settles_early(&lines));
    }

    /// On a due date the current period is the one ending today: its bill is paid as
    /// it stands, no later fee is owed, and with no bill left upcoming nothing closes
    /// early.
    #[test]
    fn a_payoff_on_the_last_due_date_settles_nothing_early() {
        let (terms, fresh) = bills("mall-fee", "5999.00");
        let mut paid = fresh.clone();
        for bill in &mut paid[..11] {
            bill.paid = bill.charged;
            bill.state = BillState::Paid;
        }
        let lines = payoff_lines(terms, &paid, paid[11].due_date).unwrap();
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].owed.total().unwrap().to_string(), "535.87");
        assert!(!settles_early(&lines));
        let on_bill_2_due = payoff_lines(terms, &fresh, date("2026-03-15")).unwrap();
        let fees: Vec<String> = on_bill_2_due
            .iter()
            .map(|line| line.owed.fee.to_string())
            .collect();
        assert_eq!(
            fees[..3],
            ["35.99", "35.99", "0.00"],
            "bills 1 and 2 are due; bill 3's period has not started"
        );
    }

    #[test]
    fn all_remaining_fees_when_the_product_says_so() {
        let (mut terms, bills) = bills("mall-fee", "5999.00");
        terms.prepay_fee = PrepayFee::AllRemaining;
        let lines = payoff_lines(terms, &bills, date("2026-03-01")).unwrap();
        let fees = lines
            .iter()
            .try_fold(Money::zero(Currency::Cny), |sum, line| {
                sum.checked_add(line.owed.fee)
            })
            .unwrap();
        assert_eq!(
            fees.to_string(),
            "431.88",
            "every fee, the due bill's included"
        );
    }

    /// The bills of `schedule` as a new plan has them: open, nothing paid.
    fn open_bills(schedule: &Schedule) -> Vec<Bill> {
        schedule
            .lines()
            .iter()
            .map(|line| Bill {
                bill_id: format!("b{}", line.seq),
                plan_id: "p".into(),
                account_id: "a".into(),
                seq: line.seq,
                due_date: line.due_date,
                charged: Components {
                    principal: line.principal,
                    interest: line.interest,
                    fee: line.fee,
                    penalty: Money::zero(Currency::Cny),
                },
                paid: Components::zero(Currency::Cny),
                state: BillState::Open,
                paid_at_micros: None,
                paid_on: None,
            })
            .collect()
    }
}
