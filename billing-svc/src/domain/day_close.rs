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
/// A bill unpaid after `due_date + grace_days` is OVERDUE; from then on each day d from
/// the day after its due date posts round(principal unpaid at the end of d × rate) —
/// on principal only, never on interest, fees or penalty. `principal_paid` lists the
/// bill's changes of paid principal by the business day they count from (a reversal's
/// negative), so a repayment landing inside a window of days closed late lowers the
/// penalty only from its own day on, as daily closes would have.
pub fn close_bill(
    bill: &Bill,
    penalty_through: Option<NaiveDate>,
    grace_days: u32,
    penalty_daily_rate: Decimal,
    principal_paid: &[(NaiveDate, Decimal)],
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
    if as_of > posted_through {
        let mut changes = principal_paid.to_vec();
        changes.sort_by_key(|(day, _)| *day);
        let mut changes = changes.into_iter().peekable();
        let mut paid = Decimal::ZERO;
        let mut total = Decimal::ZERO;
        let mut day = posted_through;
        while day < as_of {
            day = day.succ_opt().unwrap_or(as_of);
            while let Some((_, delta)) = changes.next_if(|(on, _)| *on <= day) {
                paid += delta;
            }
            let unpaid = (bill.charged.principal.amount() - paid).max(Decimal::ZERO);
            total += Money::round_half_up(currency, unpaid * penalty_daily_rate)?.amount();
        }
        close.penalty_added = Money::round_half_up(currency, total)?;
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
        close_paid(bill, through, &[], as_of)
    }

    /// `close` with the bill's paid principal changes (day, amount).
    fn close_paid(
        bill: &Bill,
        through: Option<&str>,
        paid: &[(&str, &str)],
        as_of: &str,
    ) -> BillClose {
        let paid: Vec<(NaiveDate, Decimal)> = paid
            .iter()
            .map(|(day, amount)| (date(day), amount.parse().unwrap()))
            .collect();
        close_bill(
            bill,
            through.map(date),
            3,
            "0.0005".parse().unwrap(),
            &paid,
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
        let next = close_paid(
            &partly_paid,
            Some("2026-02-19"),
            &[("2026-02-19", "846.19")],
            "2026-02-21",
        );
        assert_eq!(
            next.penalty_added,
            money("0.10"),
            "2 × round(100.00 × 0.0005)"
        );
    }

    /// SPEC §5.8: a repayment inside a window closed late lowers the penalty only from
    /// its own day on, so one catch-up close equals the daily closes.
    #[test]
    fn a_repayment_inside_a_catch_up_window_counts_from_its_day() {
        let mut bill = bill(BillState::Overdue);
        bill.paid.principal = money("846.19");
        let paid = [("2026-02-23", "846.19")];
        // A 10-day missed window, 02-19..02-28, with the partial repayment on 02-23.
        let caught_up = close_paid(&bill, Some("2026-02-18"), &paid, "2026-02-28");
        // 02-19..02-22 on 946.19 (0.47 a day), 02-23..02-28 on 100.00 (0.05 a day).
        assert_eq!(
            caught_up.penalty_added,
            money("2.18"),
            "4 × 0.47 + 6 × 0.05"
        );
        let daily = (19..=28)
            .map(|day| {
                close_paid(
                    &bill,
                    Some(&format!("2026-02-{}", day - 1)),
                    &paid,
                    &format!("2026-02-{day}"),
                )
                .penalty_added
            })
            .fold(money("0"), |sum, penalty| sum.checked_add(penalty).unwrap());
        assert_eq!(daily, caught_up.penalty_added);
    }

    #[test]
    fn paid_bills_are_left_alone() {
        let paid = bill(BillState::Paid);
        let close = close(&paid, None, "2026-03-30");
        assert!(!close.changes_the_bill());
        assert!(close.reminders.is_empty());
    }
}
