//! What closing a business day does to one unpaid bill (SPEC §5.8): reminders, the
//! turn to OVERDUE after grace, and penalties posted day by day "through" a date, so
//! that closing a date twice, catching up ten days at once, or closing a back-dated
//! plan once all come out the same as daily closes.

use chrono::{Days, NaiveDate};
use rust_decimal::Decimal;
use service_kit::money::{Money, MoneyError};

use super::bill::{Bill, BillState};

/// Reminders go out this many days before the due date.
pub const DUE_SOON_DAYS: u64 = 3;

/// A reminder a close writes (once per bill, whatever the number of closes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reminder {
    DueSoon,
    Due,
    Overdue,
}

/// What the close of `as_of` changes on a bill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillClose {
    pub becomes_overdue: bool,
    /// Penalty to add (zero if none).
    pub penalty_added: Money,
    /// The new "penalty posted through" date, if it moved.
    pub penalty_through: Option<NaiveDate>,
    pub reminders: Vec<Reminder>,
}

impl BillClose {
    pub fn changes_the_bill(&self) -> bool {
        self.becomes_overdue || !self.penalty_added.is_zero() || self.penalty_through.is_some()
    }
}

/// Closes `as_of` for `bill`, whose penalty is posted through `penalty_through`.
/// A bill unpaid after `due_date + grace_days` is OVERDUE; from then on each day from
/// the day after its due date posts round(unpaid principal × rate) — on principal only,
/// never on interest, fees or penalty.
pub fn close_bill(
    bill: &Bill,
    penalty_through: Option<NaiveDate>,
    grace_days: u32,
    penalty_daily_rate: Decimal,
    as_of: NaiveDate,
) -> Result<BillClose, MoneyError> {
    let currency = bill.charged.principal.currency();
    let mut close = BillClose {
        becomes_overdue: false,
        penalty_added: Money::zero(currency),
        penalty_through: None,
        reminders: Vec::new(),
    };
    if !matches!(bill.state, BillState::Open | BillState::Overdue) {
        return Ok(close);
    }
    let due_soon_from = bill
        .due_date
        .checked_sub_days(Days::new(DUE_SOON_DAYS))
        .unwrap_or(bill.due_date);
    // The reminder is for the days before the due date; a close that catches up past
    // them sends the due reminder instead.
    if due_soon_from <= as_of && as_of < bill.due_date {
        close.reminders.push(Reminder::DueSoon);
    }
    if bill.due_date <= as_of {
        close.reminders.push(Reminder::Due);
    }
    let grace_ends = bill
        .due_date
        .checked_add_days(Days::new(u64::from(grace_days)))
        .unwrap_or(bill.due_date);
    let overdue = bill.state == BillState::Overdue || as_of > grace_ends;
    if !overdue {
        return Ok(close);
    }
    close.reminders.push(Reminder::Overdue);
    close.becomes_overdue = bill.state == BillState::Open;
    let posted_through = penalty_through.unwrap_or(bill.due_date).max(bill.due_date);
    let days = (as_of - posted_through).num_days();
    if days > 0 {
        let unpaid_principal = bill.charged.principal.checked_sub(bill.paid.principal)?;
        let daily = Money::round_half_up(currency, unpaid_principal.amount() * penalty_daily_rate)?;
        close.penalty_added = Money::round_half_up(currency, daily.amount() * Decimal::from(days))?;
        close.penalty_through = Some(as_of);
    }
    Ok(close)
}

#[cfg(test)]
mod tests {
    use service_kit::money::Currency;

    use super::*;
    use crate::domain::bill::Components;

    fn date(text: &str) -> NaiveDate {
        text.parse().unwrap()
    }

    fn money(amount: &str) -> Money {
        Money::parse("CNY", amount).unwrap()
    }

    /// SPEC §5.8's bill: principal 946.19 (plus 120.00 interest) due 2026-02-15.
    fn bill(state: BillState) -> Bill {
        Bill {
            bill_id: "b1".into(),
            plan_id: "p".into(),
            account_id: "a".into(),
            seq: 1,
            due_date: date("2026-02-15"),
            charged: Components {
                principal: money("946.19"),
                interest: money("120.00"),
                fee: money("0"),
                penalty: money("0"),
            },
            paid: Components::zero(Currency::Cny),
            state,
            paid_at_micros: None,
            paid_on: None,
        }
    }

    fn close(bill: &Bill, through: Option<&str>, as_of: &str) -> BillClose {
        close_bill(
            bill,
            through.map(date),
            3,
            "0.0005".parse().unwrap(),
            date(as_of),
        )
        .unwrap()
    }

    #[test]
    fn the_spec_example_turns_overdue_with_four_days_of_penalty() {
        let open = bill(BillState::Open);
        let at_18 = close(&open, None, "2026-02-18");
        assert!(
            !at_18.becomes_overdue,
            "still DUE within grace at the close of 02-18"
        );
        assert!(at_18.penalty_added.is_zero());
        assert_eq!(at_18.reminders, [Reminder::Due]);
        let at_13 = close(&open, None, "2026-02-13");
        assert_eq!(at_13.reminders, [Reminder::DueSoon], "three days before");

        let at_19 = close(&open, None, "2026-02-19");
        assert!(at_19.becomes_overdue);
        assert_eq!(
            at_19.penalty_added,
            money("1.88"),
            "4 × round(946.19 × 0.0005) = 4 × 0.47"
        );
        assert_eq!(at_19.penalty_through, Some(date("2026-02-19")));
        assert_eq!(at_19.reminders, [Reminder::Due, Reminder::Overdue]);
    }

    #[test]
    fn closing_again_or_catching_up_posts_the_same_days() {
        let overdue = bill(BillState::Overdue);
        let again = close(&overdue, Some("2026-02-19"), "2026-02-19");
        assert!(
            !again.changes_the_bill(),
            "the same date twice changes nothing"
        );

        // Nine daily closes, 02-20 to 02-28, each posting the day it closes...
        let daily_sum = (20..=28)
            .map(|day| {
                close(
                    &overdue,
                    Some(&format!("2026-02-{}", day - 1)),
                    &format!("2026-02-{day}"),
                )
                .penalty_added
            })
            .fold(money("0"), |sum, penalty| sum.checked_add(penalty).unwrap());
        // ...post what one catch-up close of 02-28 posts.
        let caught_up = close(&overdue, Some("2026-02-19"), "2026-02-28");
        assert_eq!(caught_up.penalty_added, daily_sum);
        assert_eq!(daily_sum, money("4.23"), "9 × 0.47");
        let back_dated_once = close(&bill(BillState::Open), None, "2026-02-28");
        assert_eq!(
            back_dated_once.penalty_added,
            money("6.11"),
            "13 days × 0.47"
        );
    }

    #[test]
    fn penalty_is_on_unpaid_principal_only() {
        let mut partly_paid = bill(BillState::Overdue);
        partly_paid.paid.principal = money("846.19");
        partly_paid.paid.interest = money("120.00");
        partly_paid.charged.penalty = money("1.88");
        let next = close(&partly_paid, Some("2026-02-19"), "2026-02-21");
        assert_eq!(
            next.penalty_added,
            money("0.10"),
            "2 × round(100.00 × 0.0005)"
        );
    }

    #[test]
    fn paid_bills_are_left_alone() {
        let paid = bill(BillState::Paid);
        let close = close(&paid, None, "2026-03-30");
        assert!(!close.changes_the_bill());
        assert!(close.reminders.is_empty());
    }
}
