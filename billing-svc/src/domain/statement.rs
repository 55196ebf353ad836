//! What an account owes and how it has repaid: the summary and the credit record,
//! computed from its bills so every figure is the sum of its parts.

use chrono::NaiveDate;
use service_kit::money::{Currency, Money, MoneyError};

use super::bill::{Bill, BillState, BillStatus};

/// What an account owes on a business date.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Unpaid on every unpaid bill.
    pub outstanding_total: Money,
    /// Unpaid on DUE and OVERDUE bills.
    pub due_now: Money,
    pub overdue_amount: Money,
    pub overdue_bill_count: u32,
    /// The earliest due date after today with an unpaid bill, and what is unpaid then.
    pub next_due: Option<(NaiveDate, Money)>,
}

/// Sums `bills` (any order; paid ones are ignored) as of `today`.
pub fn summarize(
    currency: Currency,
    bills: &[Bill],
    today: NaiveDate,
) -> Result<Summary, MoneyError> {
    let zero = Money::zero(currency);
    let mut summary = Summary {
        outstanding_total: zero,
        due_now: zero,
        overdue_amount: zero,
        overdue_bill_count: 0,
        next_due: None,
    };
    for bill in bills {
        let outstanding = bill.outstanding()?.total()?;
        let status = bill.status(today);
        if !BillStatus::UNPAID.contains(&status) {
            continue;
        }
        summary.outstanding_total = summary.outstanding_total.checked_add(outstanding)?;
        if matches!(status, BillStatus::Due | BillStatus::Overdue) {
            summary.due_now = summary.due_now.checked_add(outstanding)?;
        }
        if status == BillStatus::Overdue {
            summary.overdue_amount = summary.overdue_amount.checked_add(outstanding)?;
            summary.overdue_bill_count += 1;
        }
        if status == BillStatus::Upcoming {
            summary.next_due = match summary.next_due {
                Some((date, amount)) if date == bill.due_date => {
                    Some((date, amount.checked_add(outstanding)?))
                }
                Some((date, amount)) if date < bill.due_date => Some((date, amount)),
                _ => Some((bill.due_date, outstanding)),
            };
        }
    }
    Ok(summary)
}

/// How a bill due so far was, or is being, repaid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Paid in full by the end of its grace days.
    OnTime,
    /// Paid in full after its grace days.
    Late,
    /// Due and unpaid, within grace.
    Due,
    /// Unpaid after its grace days.
    Overdue,
    /// Its plan was cancelled (goods returned): never late, never overdue.
    Cancelled,
}

/// Days past due in the industry's buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Bucket {
    /// Never past due.
    N,
    /// 1–30 days.
    M1,
    /// 31–60 days.
    M2,
    /// 61–90 days.
    M3,
    /// More than 90 days.
    M3Plus,
}

impl Bucket {
    pub fn of(days_past_due: i64) -> Self {
        match days_past_due {
            ..=0 => Self::N,
            1..=30 => Self::M1,
            31..=60 => Self::M2,
            61..=90 => Self::M3,
            _ => Self::M3Plus,
        }
    }
}

/// One line of the credit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordEntry<'a> {
    pub bill: &'a Bill,
    pub standing: Standing,
    /// When paid for a paid bill; as of today for an unpaid one.
    pub days_past_due: i64,
}

/// The credit record: every bill due by `today` (early-settled ones excluded), by due
/// date, and the worst bucket. A bill paid within `grace_days` of its due date is on
/// time, as SPEC §5.8 says; grace is the product's, given per bill by `grace_days`.
/// An unpaid bill is OVERDUE here exactly when day close has marked it so, keeping
/// the record in step with the bills' statuses. A cancelled plan's bills show as
/// cancelled, with no days past due, and never count towards the worst bucket.
pub fn credit_record<'a>(
    bills: &'a [Bill],
    today: NaiveDate,
    grace_days: impl Fn(&Bill) -> u32,
) -> (Vec<RecordEntry<'a>>, Bucket) {
    let mut entries: Vec<_> = bills
        .iter()
        .filter(|bill| bill.due_date <= today && bill.state != BillState::SettledEarly)
        .map(|bill| {
            let grace = i64::from(grace_days(bill));
            let (standing, days_past_due) = match (bill.state, bill.paid_on) {
                (BillState::Cancelled, _) => (Standing::Cancelled, 0),
                (BillState::Paid, Some(paid_on)) => {
                    let days = (paid_on - bill.due_date).num_days().max(0);
                    (
                        if days > grace {
                            Standing::Late
                        } else {
                            Standing::OnTime
                        },
                        days,
                    )
                }
                (BillState::Paid, None) => (Standing::OnTime, 0),
                (BillState::Overdue, _) => (Standing::Overdue, (today - bill.due_date).num_days()),
                // Unpaid but not marked OVERDUE: day close has not found it past grace.
                _ => (Standing::Due, (today - bill.due_date).num_days()),
            };
            RecordEntry {
                bill,
                standing,
                days_past_due,
            }
        })
        .collect();
    entries.sort_by(|a, b| {
        (a.bill.due_date, &a.bill.plan_id, a.bill.seq).cmp(&(
            b.bill.due_date,
            &b.bill.plan_id,
            b.bill.seq,
        ))
    });
    let worst = entries
        .iter()
        .filter(|entry| matches!(entry.standing, Standing::Late | Standing::Overdue))
        .map(|entry| Bucket::of(entry.days_past_due))
        .max()
        .unwrap_or(Bucket::N);
    (entries, worst)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::bill::Components;

    fn money(amount: &str) -> Money {
        Money::parse("CNY", amount).unwrap()
    }

    fn bill(seq: u32, due: &str, principal: &str, state: BillState, paid_on: Option<&str>) -> Bill {
        let mut charged = Components::zero(Currency::Cny);
        charged.principal = money(principal);
        Bill {
            bill_id: format!("b{seq}"),
            plan_id: "p".into(),
            account_id: "a".into(),
            seq,
            due_date: due.parse().unwrap(),
            charged,
            paid: if state == BillState::Paid {
                charged
            } else {
                Components::zero(Currency::Cny)
            },
            state,
            paid_at_micros: None,
            paid_on: paid_on.map(|d| d.parse().unwrap()),
        }
    }

    #[test]
    fn summary_sums_unpaid_bills_by_status() {
        let today: NaiveDate = "2026-05-10".parse().unwrap();
        let bills = [
            bill(
                1,
                "2026-03-10",
                "100.00",
                BillState::Paid,
                Some("2026-03-10"),
            ),
            bill(2, "2026-04-10", "100.00", BillState::Overdue, None),
            bill(3, "2026-05-10", "100.00", BillState::Open, None),
            bill(4, "2026-06-10", "100.00", BillState::Open, None),
            bill(5, "2026-07-10", "100.00", BillState::Open, None),
        ];
        let summary = summarize(Currency::Cny, &bills, today).unwrap();
        assert_eq!(summary.outstanding_total, money("400.00"));
        assert_eq!(summary.due_now, money("200.00"));
        assert_eq!(summary.overdue_amount, money("100.00"));
        assert_eq!(summary.overdue_bill_count, 1);
        assert_eq!(
            summary.next_due,
            Some(("2026-06-10".parse().unwrap(), money("100.00")))
        );
    }

    #[test]
    fn credit_record_grades_each_bill_and_the_worst() {
        let today: NaiveDate = "2026-08-01".parse().unwrap();
        let bills = [
            bill(1, "2026-03-10", "1", BillState::Paid, Some("2026-03-13")),
            bill(2, "2026-04-10", "1", BillState::Paid, Some("2026-05-20")),
            bill(3, "2026-07-30", "1", BillState::Open, None),
            bill(4, "2026-09-10", "1", BillState::Open, None),
            bill(5, "2026-06-01", "1", BillState::Overdue, None),
            bill(6, "2026-01-01", "1", BillState::Cancelled, None),
        ];
        let (entries, worst) = credit_record(&bills, today, |_| 3);
        let standings: Vec<_> = entries
            .iter()
            .map(|e| (e.bill.seq, e.standing, e.days_past_due))
            .collect();
        assert_eq!(
            standings,
            [
                (6, Standing::Cancelled, 0),
                (1, Standing::OnTime, 3),
                (2, Standing::Late, 40),
                (5, Standing::Overdue, 61),
                (3, Standing::Due, 2)
            ]
        );
        assert_eq!(worst, Bucket::M3);
        assert_eq!(
            [
                Bucket::of(0),
                Bucket::of(30),
                Bucket::of(61),
                Bucket::of(91)
            ],
            [Bucket::N, Bucket::M1, Bucket::M3, Bucket::M3Plus]
        );
    }
}
