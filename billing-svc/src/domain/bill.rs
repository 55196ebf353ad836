//! Bills: what each one charges, what was paid, and its status on a business date.

use chrono::NaiveDate;
use service_kit::money::{Currency, Money, MoneyError};

/// Money per bill component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Components {
    pub principal: Money,
    pub interest: Money,
    pub fee: Money,
    pub penalty: Money,
}

impl Components {
    pub fn zero(currency: Currency) -> Self {
        let zero = Money::zero(currency);
        Self {
            principal: zero,
            interest: zero,
            fee: zero,
            penalty: zero,
        }
    }

    /// principal + interest + fee + penalty.
    pub fn total(&self) -> Result<Money, MoneyError> {
        self.principal
            .checked_add(self.interest)?
            .checked_add(self.fee)?
            .checked_add(self.penalty)
    }

    /// Component-wise `self - other`; refuses a negative component.
    pub fn checked_sub(&self, other: &Self) -> Result<Self, MoneyError> {
        Ok(Self {
            principal: self.principal.checked_sub(other.principal)?,
            interest: self.interest.checked_sub(other.interest)?,
            fee: self.fee.checked_sub(other.fee)?,
            penalty: self.penalty.checked_sub(other.penalty)?,
        })
    }
}

/// What storage remembers of a bill's life; the status shown is derived from it and
/// the business date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BillState {
    /// Unpaid, not overdue: UPCOMING or DUE depending on the date.
    Open,
    /// Unpaid after grace (set by day close).
    Overdue,
    Paid,
    /// Closed by an early payoff.
    SettledEarly,
    /// Closed by CancelPlan: owes nothing; what was paid on it went to credit balance.
    Cancelled,
}

impl BillState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "OPEN",
            Self::Overdue => "OVERDUE",
            Self::Paid => "PAID",
            Self::SettledEarly => "SETTLED_EARLY",
            Self::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Open,
            Self::Overdue,
            Self::Paid,
            Self::SettledEarly,
            Self::Cancelled,
        ]
        .into_iter()
        .find(|state| state.as_str() == text)
    }
}

/// A bill's status on a business date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BillStatus {
    Upcoming,
    Due,
    Overdue,
    Paid,
    SettledEarly,
    Cancelled,
}

impl BillStatus {
    /// Every status a bill can show, in the order of a bill's life.
    pub const ALL: [Self; 6] = [
        Self::Upcoming,
        Self::Due,
        Self::Overdue,
        Self::Paid,
        Self::SettledEarly,
        Self::Cancelled,
    ];
    /// The statuses of unpaid bills (待还款): what ListBills shows without a filter.
    pub const UNPAID: [Self; 3] = [Self::Upcoming, Self::Due, Self::Overdue];
}

/// One installment bill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bill {
    pub bill_id: String,
    pub plan_id: String,
    pub account_id: String,
    pub seq: u32,
    pub due_date: NaiveDate,
    pub charged: Components,
    pub paid: Components,
    pub state: BillState,
    pub paid_at_micros: Option<i64>,
    /// The business date it was paid in full.
    pub paid_on: Option<NaiveDate>,
}

impl Bill {
    /// Everything the bill charges.
    pub fn amount_due(&self) -> Result<Money, MoneyError> {
        self.charged.total()
    }

    pub fn amount_paid(&self) -> Result<Money, MoneyError> {
        self.paid.total()
    }

    /// What is still owed: amount_due − amount_paid, per component; nothing once
    /// its plan is cancelled.
    pub fn outstanding(&self) -> Result<Components, MoneyError> {
        if self.state == BillState::Cancelled {
            return Ok(Components::zero(self.charged.principal.currency()));
        }
        self.charged.checked_sub(&self.paid)
    }

    /// The status on `today`.
    pub fn status(&self, today: NaiveDate) -> BillStatus {
        match self.state {
            BillState::Paid => BillStatus::Paid,
            BillState::SettledEarly => BillStatus::SettledEarly,
            BillState::Cancelled => BillStatus::Cancelled,
            BillState::Overdue => BillStatus::Overdue,
            BillState::Open if self.due_date > today => BillStatus::Upcoming,
            BillState::Open => BillStatus::Due,
        }
    }

    /// Days after the due date it was paid in full, when paid after it.
    pub fn days_late(&self) -> Option<i64> {
        let days = (self.paid_on? - self.due_date).num_days();
        (days > 0).then_some(days)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn money(amount: &str) -> Money {
        Money::parse("CNY", amount).unwrap()
    }

    fn bill(due: &str, state: BillState) -> Bill {
        Bill {
            bill_id: "b".into(),
            plan_id: "p".into(),
            account_id: "a".into(),
            seq: 1,
            due_date: due.parse().unwrap(),
            charged: Components {
                principal: money("946.19"),
                interest: money("120.00"),
                fee: money("0"),
                penalty: money("1.88"),
            },
            paid: Components {
                principal: money("0"),
                interest: money("120.00"),
                fee: money("0"),
                penalty: money("1.88"),
            },
            state,
            paid_at_micros: None,
            paid_on: None,
        }
    }

    #[test]
    fn status_follows_the_business_date() {
        let today: NaiveDate = "2026-02-15".parse().unwrap();
        assert_eq!(
            bill("2026-02-16", BillState::Open).status(today),
            BillStatus::Upcoming
        );
        assert_eq!(
            bill("2026-02-15", BillState::Open).status(today),
            BillStatus::Due
        );
        assert_eq!(
            bill("2026-01-15", BillState::Open).status(today),
            BillStatus::Due
        );
        assert_eq!(
            bill("2026-01-15", BillState::Overdue).status(today),
            BillStatus::Overdue
        );
        assert_eq!(
            bill("2026-03-15", BillState::Paid).status(today),
            BillStatus::Paid
        );
    }

    #[test]
    fn a_cancelled_bill_owes_nothing_whatever_its_dates() {
        let bill = bill("2026-01-15", BillState::Cancelled);
        let today: NaiveDate = "2026-03-01".parse().unwrap();
        assert_eq!(bill.status(today), BillStatus::Cancelled);
        assert!(!BillStatus::UNPAID.contains(&bill.status(today)));
        assert_eq!(bill.outstanding().unwrap().total().unwrap(), money("0"));
        assert_eq!(bill.amount_paid().unwrap(), money("121.88"));
    }

    #[test]
    fn amounts_are_sums_of_components() {
        let bill = bill("2026-02-15", BillState::Open);
        assert_eq!(bill.amount_due().unwrap(), money("1068.07"));
        assert_eq!(bill.amount_paid().unwrap(), money("121.88"));
        assert_eq!(
            bill.outstanding().unwrap().total().unwrap(),
            money("946.19")
        );
    }
}
