//! Where repayment money goes (SPEC §5.6): which bills a target covers, what they
//! owe, and how money is spread over them — oldest due date first (then plan, then
//! seq), and within a bill penalty, then interest, then fee, then principal.

use chrono::NaiveDate;
use service_kit::money::{Currency, Money, MoneyError};

use super::bill::{Bill, BillStatus, Components};

/// What a repayment pays for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// These bills, in full.
    Bills(Vec<String>),
    /// Every DUE and OVERDUE bill.
    AllDue,
    /// Settle a plan early (SPEC §5.9).
    PlanPayoff(String),
    /// This amount, spread over every unpaid bill oldest first.
    Amount(Money),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("no bill {0} on this account")]
    UnknownBill(String),
    #[error("the target owes nothing")]
    NothingToPay,
    #[error("the amount {amount} is above everything unpaid ({owed})")]
    AmountAboveOwed { amount: Money, owed: Money },
    #[error("a plan payoff is priced with its plan's terms (payoff_lines), not here")]
    PlanPayoffNeedsTerms,
    #[error(transparent)]
    Money(#[from] MoneyError),
}

/// Money applied to one bill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillAllocation {
    pub bill_id: String,
    pub plan_id: String,
    pub seq: u32,
    pub due_date: NaiveDate,
    pub parts: Components,
}

/// A bill a target covers and what is still owed on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owed<'a> {
    pub bill: &'a Bill,
    pub outstanding: Components,
}

/// The bills `target` covers among an account's `bills` (sorted oldest first) on
/// `today`, each with what it owes; and the total the target owes (for an amount
/// target, the amount itself).
pub fn owed<'a>(
    target: &Target,
    bills: &'a [Bill],
    today: NaiveDate,
) -> Result<(Vec<Owed<'a>>, Money), TargetError> {
    match target {
        Target::Bills(ids) => {
            if let Some(unknown) = ids
                .iter()
                .find(|id| !bills.iter().any(|bill| &bill.bill_id == *id))
            {
                return Err(TargetError::UnknownBill(unknown.clone()));
            }
        }
        Target::PlanPayoff(_) => return Err(TargetError::PlanPayoffNeedsTerms),
        Target::AllDue | Target::Amount(_) => {}
    }
    let owed = covered(target, bills, today)?;
    let currency = bills
        .first()
        .map_or(Currency::Cny, |bill| bill.charged.principal.currency());
    let total = owed.iter().try_fold(Money::zero(currency), |sum, line| {
        sum.checked_add(line.outstanding.total()?)
    })?;
    let amount = match target {
        Target::Amount(amount) if amount.amount() > total.amount() => {
            return Err(TargetError::AmountAboveOwed {
                amount: *amount,
                owed: total,
            });
        }
        Target::Amount(amount) => *amount,
        _ => total,
    };
    if amount.is_zero() {
        return Err(TargetError::NothingToPay);
    }
    Ok((owed, amount))
}

/// What `target` covers among `bills` (sorted oldest first) on `today`, with what each
/// still owes. Never refuses: applying captured money uses this as it stands at apply
/// time (an unknown or already paid bill simply owes nothing), and what no bill owes
/// becomes credit balance.
pub fn covered<'a>(
    target: &Target,
    bills: &'a [Bill],
    today: NaiveDate,
) -> Result<Vec<Owed<'a>>, MoneyError> {
    let unpaid = |bill: &&Bill| BillStatus::UNPAID.contains(&bill.status(today));
    let covered: Vec<&Bill> = match target {
        Target::Bills(ids) => bills
            .iter()
            .filter(|bill| ids.contains(&bill.bill_id))
            .filter(unpaid)
            .collect(),
        Target::AllDue => bills
            .iter()
            .filter(|bill| matches!(bill.status(today), BillStatus::Due | BillStatus::Overdue))
            .collect(),
        Target::Amount(_) => bills.iter().filter(unpaid).collect(),
        Target::PlanPayoff(plan_id) => bills
            .iter()
            .filter(|bill| &bill.plan_id == plan_id)
            .filter(unpaid)
            .collect(),
    };
    covered
        .into_iter()
        .map(|bill| {
            Ok(Owed {
                bill,
                outstanding: bill.outstanding()?,
            })
        })
        .collect()
}

/// Spreads `money` over `owed` in order, each bill penalty → interest → fee →
/// principal, never above what a component owes. Returns the allocations (bills that
/// received nothing are left out) and the surplus no bill owed.
pub fn allocate(
    money: Money,
    owed: &[Owed<'_>],
) -> Result<(Vec<BillAllocation>, Money), MoneyError> {
    let mut left = money;
    let mut allocations = Vec::new();
    for line in owed {
        let zero = Money::zero(money.currency());
        let mut parts = Components::zero(money.currency());
        let mut take = |owes: Money| -> Result<Money, MoneyError> {
            let taken = if left.amount() < owes.amount() {
                left
            } else {
                owes
            };
            left = left.checked_sub(taken)?;
            Ok(taken)
        };
        parts.penalty = take(line.outstanding.penalty)?;
        parts.interest = take(line.outstanding.interest)?;
        parts.fee = take(line.outstanding.fee)?;
        parts.principal = take(line.outstanding.principal)?;
        if parts.total()? != zero {
            allocations.push(BillAllocation {
                bill_id: line.bill.bill_id.clone(),
                plan_id: line.bill.plan_id.clone(),
                seq: line.bill.seq,
                due_date: line.bill.due_date,
                parts,
            });
        }
        if left.is_zero() {
            break;
        }
    }
    Ok((allocations, left))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::bill::BillState;

    fn money(amount: &str) -> Money {
        Money::parse("CNY", amount).unwrap()
    }

    /// A bill charging principal/interest/fee/penalty, with `paid` already paid of
    /// interest.
    fn bill(id: &str, due: &str, charged: [&str; 4], interest_paid: &str) -> Bill {
        let [principal, interest, fee, penalty] = charged.map(money);
        let mut paid = Components::zero(Currency::Cny);
        paid.interest = money(interest_paid);
        Bill {
            bill_id: id.into(),
            plan_id: "p".into(),
            account_id: "a".into(),
            seq: id[1..].parse().unwrap(),
            due_date: due.parse().unwrap(),
            charged: Components {
                principal,
                interest,
                fee,
                penalty,
            },
            paid,
            state: BillState::Open,
            paid_at_micros: None,
            paid_on: None,
        }
    }

    fn bills() -> Vec<Bill> {
        vec![
            bill("b1", "2026-01-15", ["946.19", "120.00", "0", "1.88"], "0"),
            bill("b2", "2026-02-15", ["955.65", "110.54", "0", "0"], "10.54"),
            bill("b3", "2026-03-15", ["500.00", "0", "35.99", "0"], "0"),
            bill("b4", "2026-04-15", ["500.00", "0", "35.99", "0"], "0"),
        ]
    }

    fn today() -> NaiveDate {
        "2026-03-20".parse().unwrap()
    }

    /// (bill, penalty, interest, fee, principal) per allocation, as strings.
    fn table(allocations: &[BillAllocation]) -> Vec<(String, String, String, String, String)> {
        allocations
            .iter()
            .map(|a| {
                let p = &a.parts;
                (
                    a.bill_id.clone(),
                    p.penalty.to_string(),
                    p.interest.to_string(),
                    p.fee.to_string(),
                    p.principal.to_string(),
                )
            })
            .collect()
    }

    fn row(
        bill: &str,
        penalty: &str,
        interest: &str,
        fee: &str,
        principal: &str,
    ) -> (String, String, String, String, String) {
        (
            bill.into(),
            penalty.into(),
            interest.into(),
            fee.into(),
            principal.into(),
        )
    }

    #[test]
    fn partial_amounts_fill_the_oldest_bill_penalty_first() {
        let bills = bills();
        let cases = [
            ("1.00", vec![row("b1", "1.00", "0.00", "0.00", "0.00")]),
            ("50.00", vec![row("b1", "1.88", "48.12", "0.00", "0.00")]),
            ("200.00", vec![row("b1", "1.88", "120.00", "0.00", "78.12")]),
            (
                "1200.00",
                vec![
                    row("b1", "1.88", "120.00", "0.00", "946.19"),
                    row("b2", "0.00", "100.00", "0.00", "31.93"),
                ],
            ),
            (
                "2600.00",
                vec![
                    row("b1", "1.88", "120.00", "0.00", "946.19"),
                    row("b2", "0.00", "100.00", "0.00", "955.65"),
                    row("b3", "0.00", "0.00", "35.99", "440.29"),
                ],
            ),
        ];
        for (amount, expected) in cases {
            let (owed, total) = owed(&Target::Amount(money(amount)), &bills, today()).unwrap();
            assert_eq!(total, money(amount));
            let (allocations, surplus) = allocate(money(amount), &owed).unwrap();
            assert_eq!(table(&allocations), expected, "{amount}");
            assert!(surplus.is_zero(), "{amount}");
        }
    }

    #[test]
    fn targets_choose_their_bills() {
        let bills = bills();
        let (owed_all_due, amount) = owed(&Target::AllDue, &bills, today()).unwrap();
        let ids: Vec<_> = owed_all_due
            .iter()
            .map(|o| o.bill.bill_id.as_str())
            .collect();
        assert_eq!(ids, ["b1", "b2", "b3"], "b4 is not due yet");
        assert_eq!(
            amount,
            money("2659.71"),
            "1068.07 + (1066.19 - 10.54 paid) + 535.99"
        );

        let (selected, amount) = owed(
            &Target::Bills(vec!["b4".into(), "b2".into()]),
            &bills,
            today(),
        )
        .unwrap();
        let ids: Vec<_> = selected.iter().map(|o| o.bill.bill_id.as_str()).collect();
        assert_eq!(ids, ["b2", "b4"], "oldest first whatever the order asked");
        assert_eq!(amount, money("1591.64"));

        assert_eq!(
            owed(&Target::Bills(vec!["b9".into()]), &bills, today()).unwrap_err(),
            TargetError::UnknownBill("b9".into())
        );
        assert!(matches!(
            owed(&Target::Amount(money("999999.00")), &bills, today()),
            Err(TargetError::AmountAboveOwed { .. })
        ));
        let mut paid = bills.clone();
        for bill in &mut paid {
            bill.paid = bill.charged;
            bill.state = BillState::Paid;
        }
        assert_eq!(
            owed(&Target::AllDue, &paid, today()).unwrap_err(),
            TargetError::NothingToPay
        );
        assert_eq!(
            owed(&Target::Bills(vec!["b1".into()]), &paid, today()).unwrap_err(),
            TargetError::NothingToPay
        );
    }

    #[test]
    fn money_beyond_what_is_owed_is_surplus() {
        let bills = bills();
        let (owed, amount) = owed(&Target::Bills(vec!["b3".into()]), &bills, today()).unwrap();
        assert_eq!(amount, money("535.99"));
        let (allocations, surplus) = allocate(money("600.00"), &owed).unwrap();
        assert_eq!(
            table(&allocations),
            [row("b3", "0.00", "0.00", "35.99", "500.00")]
        );
        assert_eq!(surplus, money("64.01"));
        let (nothing, surplus) = allocate(money("10.00"), &[]).unwrap();
        assert!(nothing.is_empty());
        assert_eq!(
            surplus,
            money("10.00"),
            "with no bill owing, all of it is kept as credit"
        );
    }
}
