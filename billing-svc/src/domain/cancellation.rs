//! Cancelling a plan when its goods are returned (退货, SPEC §5.4): what it releases and
//! what it gives back.

use service_kit::money::{Currency, Money, MoneyError};

use super::{
    bill::{Bill, BillState},
    plan::PlanStatus,
};

/// Why a plan cannot be cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CancelRefusal {
    #[error("the plan was settled early and cannot be cancelled")]
    SettledEarly,
    #[error("the plan is already cancelled")]
    AlreadyCancelled,
    #[error("a stored amount does not add up: {0}")]
    Money(#[from] MoneyError),
}

/// What cancelling a plan does to the account's money.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cancellation {
    /// Principal still unpaid on the plan: it stops counting against the limit.
    pub released_principal: Money,
    /// Everything paid on the plan's bills (principal, interest, fee, penalty): it
    /// becomes credit balance.
    pub refunded: Money,
    /// Every bill of the plan; each becomes CANCELLED.
    pub bill_ids: Vec<String>,
}

/// What cancelling a plan in `status` with `bills` does. ACTIVE plans and SETTLED
/// ones (every bill paid: a return after the last payment must still give the
/// customer their money back) can be cancelled; SETTLED_EARLY ones cannot (the payoff
/// closed the plan's credit on its own terms), nor CANCELLED ones.
pub fn cancel(
    status: PlanStatus,
    currency: Currency,
    bills: &[Bill],
) -> Result<Cancellation, CancelRefusal> {
    match status {
        PlanStatus::SettledEarly => return Err(CancelRefusal::SettledEarly),
        PlanStatus::Cancelled => return Err(CancelRefusal::AlreadyCancelled),
        PlanStatus::Active | PlanStatus::Settled => {}
    }
    if bills
        .iter()
        .any(|bill| bill.state == BillState::SettledEarly)
    {
        return Err(CancelRefusal::SettledEarly);
    }
    let mut cancellation = Cancellation {
        released_principal: Money::zero(currency),
        refunded: Money::zero(currency),
        bill_ids: Vec::with_capacity(bills.len()),
    };
    for bill in bills {
        if matches!(bill.state, BillState::Open | BillState::Overdue) {
            let unpaid = bill.charged.principal.checked_sub(bill.paid.principal)?;
            cancellation.released_principal =
                cancellation.released_principal.checked_add(unpaid)?;
        }
        cancellation.refunded = cancellation.refunded.checked_add(bill.amount_paid()?)?;
        cancellation.bill_ids.push(bill.bill_id.clone());
    }
    Ok(cancellation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::bill::Components;

    fn money(amount: &str) -> Money {
        Money::parse("CNY", amount).unwrap()
    }

    fn bill(seq: u32, paid: &str, state: BillState) -> Bill {
        let paid_principal = money(paid);
        Bill {
            bill_id: format!("b{seq}"),
            plan_id: "p".into(),
            account_id: "a".into(),
            seq,
            due_date: "2026-02-15".parse().unwrap(),
            charged: Components {
                principal: money("499.92"),
                interest: money("0"),
                fee: money("35.99"),
                penalty: money("1.00"),
            },
            paid: Components {
                principal: paid_principal,
                interest: money("0"),
                fee: if paid_principal.is_zero() {
                    money("0")
                } else {
                    money("35.99")
                },
                penalty: if paid_principal.is_zero() {
                    money("0")
                } else {
                    money("1.00")
                },
            },
            state,
            paid_at_micros: None,
            paid_on: None,
        }
    }

    #[test]
    fn releases_unpaid_principal_and_refunds_everything_paid() {
        let bills = [
            bill(1, "499.92", BillState::Paid),
            bill(2, "100.00", BillState::Overdue),
            bill(3, "0", BillState::Open),
        ];
        let cancellation = cancel(PlanStatus::Active, Currency::Cny, &bills).unwrap();
        // 399.92 + 499.92 unpaid; paid 536.91 + 136.99.
        assert_eq!(cancellation.released_principal, money("899.84"));
        assert_eq!(cancellation.refunded, money("673.90"));
        assert_eq!(cancellation.bill_ids, ["b1", "b2", "b3"]);
    }

    #[test]
    fn a_settled_plan_refunds_all_and_releases_nothing() {
        let bills = [bill(1, "499.92", BillState::Paid)];
        let cancellation = cancel(PlanStatus::Settled, Currency::Cny, &bills).unwrap();
        assert_eq!(cancellation.released_principal, money("0"));
        assert_eq!(cancellation.refunded, money("536.91"));
    }

    #[test]
    fn settled_early_and_cancelled_plans_are_refused() {
        let bills = [bill(1, "0", BillState::Open)];
        assert_eq!(
            cancel(PlanStatus::SettledEarly, Currency::Cny, &bills),
            Err(CancelRefusal::SettledEarly)
        );
        assert_eq!(
            cancel(PlanStatus::Cancelled, Currency::Cny, &bills),
            Err(CancelRefusal::AlreadyCancelled)
        );
    }
}
