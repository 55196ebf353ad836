//! The reference model of billing's money, written from SPEC §5 alone: plain, slow
//! code over integer fen that calls nothing of billing-svc. Each function cites the
//! sentence of the spec it follows. Where the spec is silent the choice is said.

use std::collections::BTreeSet;

use chrono::{Datelike as _, Days, NaiveDate};
use rust_decimal::{Decimal, RoundingStrategy};

/// Fen (0.01 CNY).
pub type Fen = i64;

/// principal, interest, fee, penalty (§5.5's components, in allocation's reverse order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Parts {
    pub principal: Fen,
    pub interest: Fen,
    pub fee: Fen,
    pub penalty: Fen,
}

impl Parts {
    pub fn total(&self) -> Fen {
        self.principal + self.interest + self.fee + self.penalty
    }
    fn minus(&self, other: &Self) -> Self {
        Self {
            principal: self.principal - other.principal,
            interest: self.interest - other.interest,
            fee: self.fee - other.fee,
            penalty: self.penalty - other.penalty,
        }
    }
    fn plus(&self, other: &Self) -> Self {
        Self {
            principal: self.principal + other.principal,
            interest: self.interest + other.interest,
            fee: self.fee + other.fee,
            penalty: self.penalty + other.penalty,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    FlatFee,
    InterestFree,
    EqualInstallment,
    EqualPrincipal,
}

/// A product: id, method, [(term, rate)].
pub type Product = (&'static str, Method, &'static [(u32, &'static str)]);

/// §5.2's demo set.
pub const PRODUCTS: &[Product] = &[
    (
        "mall-fee",
        Method::FlatFee,
        &[(3, "0.0074"), (6, "0.0065"), (12, "0.006")],
    ),
    (
        "mall-free",
        Method::InterestFree,
        &[(3, "0"), (6, "0"), (12, "0")],
    ),
    (
        "cash-loan",
        Method::EqualInstallment,
        &[(6, "0.01"), (12, "0.01"), (24, "0.01")],
    ),
    (
        "cash-loan-ep",
        Method::EqualPrincipal,
        &[(12, "0.01"), (24, "0.01")],
    ),
];
/// §5.2 defaults.
pub const GRACE_DAYS: u64 = 3;
pub const PENALTY_DAILY_RATE: &str = "0.0005";

/// round(x) = half-up to 0.01 (§5.3), of a value in yuan, as fen.
pub fn round_fen(yuan: Decimal) -> Fen {
    let fen = (yuan * Decimal::from(100))
        .round_dp_with_strategy(0, RoundingStrategy::MidpointAwayFromZero);
    i64::try_from(fen.mantissa() / 10i128.pow(fen.scale())).unwrap()
}

fn yuan(fen: Fen) -> Decimal {
    Decimal::new(fen, 2)
}

/// §5.3 due dates: purchase + k calendar months, each from the purchase date, clamped
/// to the month's end.
pub fn add_months(date: NaiveDate, months: u32) -> NaiveDate {
    let index = date.year() * 12 + date.month0() as i32 + months as i32;
    let (year, month) = (index.div_euclid(12), index.rem_euclid(12) as u32 + 1);
    let mut day = date.day();
    loop {
        if let Some(due) = NaiveDate::from_ymd_opt(year, month, day) {
            return due;
        }
        day -= 1;
    }
}

/// §5.3 schedules: each bill's (principal, interest, fee), in fen.
pub fn schedule(method: Method, principal: Fen, n: u32, rate: Decimal) -> Vec<(Fen, Fen, Fen)> {
    let p = yuan(principal);
    let equal_principal = |k: u32| -> Fen {
        let base = round_fen(p / Decimal::from(n));
        if k < n {
            base
        } else {
            principal - (i64::from(n) - 1) * base
        }
    };
    let mut lines = Vec::new();
    match method {
        Method::EqualInstallment if !rate.is_zero() => {
            let mut growth = Decimal::ONE;
            for _ in 0..n {
                growth *= Decimal::ONE + rate;
            }
            let a = round_fen(p * rate * growth / (growth - Decimal::ONE));
            let mut balance = principal;
            for k in 1..=n {
                let interest = round_fen(yuan(balance) * rate);
                let part = if k < n { a - interest } else { balance };
                balance -= part;
                lines.push((part, interest, 0));
            }
        }
        Method::EqualPrincipal => {
            let mut balance = principal;
            for k in 1..=n {
                let interest = round_fen(yuan(balance) * rate);
                let part = equal_principal(k);
                balance -= part;
                lines.push((part, interest, 0));
            }
        }
        Method::FlatFee => {
            let fee = round_fen(p * rate);
            for k in 1..=n {
                lines.push((equal_principal(k), 0, fee));
            }
        }
        // INTEREST_FREE, and EQUAL_INSTALLMENT at i = 0 which "behaves like" it.
        _ => {
            for k in 1..=n {
                lines.push((equal_principal(k), 0, 0));
            }
        }
    }
    lines
}

/// What storage-independent state a bill has (§5.5): unpaid (OPEN), OVERDUE (set by a
/// close), PAID, SETTLED_EARLY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Open,
    Overdue,
    Paid,
    SettledEarly,
    /// Its plan was cancelled (§5.4 CancelPlan).
    Cancelled,
}

/// §5.5 statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Upcoming,
    Due,
    Overdue,
    Paid,
    SettledEarly,
    Cancelled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanStatus {
    Active,
    Settled,
    SettledEarly,
    Cancelled,
}

#[derive(Debug, Clone)]
pub struct Bill {
    pub seq: u32,
    pub due: NaiveDate,
    pub charged: Parts,
    pub paid: Parts,
    pub state: State,
    pub paid_on: Option<NaiveDate>,
    /// The day the penalty is posted through (§5.8 "each bill remembers").
    pub penalty_through: Option<NaiveDate>,
    /// Paid principal by the day it counts from (a reversal's negative).
    pub principal_paid: Vec<(NaiveDate, Fen)>,
}

impl Bill {
    pub fn outstanding(&self) -> Parts {
        self.charged.minus(&self.paid)
    }
    /// §5.5: UPCOMING (due date after today), DUE (due, unpaid, not yet marked
    /// OVERDUE by a close), OVERDUE, PAID.
    pub fn status(&self, today: NaiveDate) -> Status {
        match self.state {
            State::Paid => Status::Paid,
            State::SettledEarly => Status::SettledEarly,
            State::Cancelled => Status::Cancelled,
            State::Overdue => Status::Overdue,
            State::Open if self.due > today => Status::Upcoming,
            State::Open => Status::Due,
        }
    }
    fn unpaid(&self) -> bool {
        matches!(self.state, State::Open | State::Overdue)
    }
    /// §5.5 days_late: days after the due date it was paid, when paid late.
    pub fn days_late(&self) -> i64 {
        self.paid_on
            .map_or(0, |on| (on - self.due).num_days().max(0))
    }
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub plan_id: String,
    /// The service's bill ids, by seq (to name bills in requests).
    pub bill_ids: Vec<String>,
    pub method: Method,
    pub purchase: NaiveDate,
    pub status: PlanStatus,
    pub bills: Vec<Bill>,
}

/// A repayment as applied: what each bill got, and what went to credit balance.
#[derive(Debug, Clone)]
pub struct Payment {
    pub payment_id: String,
    pub allocations: Vec<(usize, usize, Parts)>,
    pub to_credit: Fen,
    pub reversed: bool,
}

/// What a repayment pays for (§5.6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// (plan index, seq) of bills to pay in full.
    Bills(Vec<(usize, u32)>),
    AllDue,
    Payoff(usize),
    Amount(Fen),
}

/// Why the model expects a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NothingToPay,
    CreditLimitExceeded,
    Delinquent,
    NotReversible,
    /// §5.4: CancelPlan of a SETTLED_EARLY or CANCELLED plan.
    NotCancellable,
    /// §5.1.1: a temporary limit not above the permanent one.
    TemporaryNotAbove,
}

/// One account (the model runs one per sequence).
#[derive(Debug, Clone)]
pub struct Account {
    pub today: NaiveDate,
    /// The permanent limit, and a temporary one (limit, until) while in force (§5.1.1).
    pub permanent_limit: Fen,
    pub temporary_limit: Option<(Fen, NaiveDate)>,
    /// How many CREDIT_LIMIT_CHANGED events were written (grants, changes, lapses).
    pub limit_changes: usize,
    pub credit_balance: Fen,
    pub plans: Vec<Plan>,
    pub payments: Vec<Payment>,
    /// §5.7 events, at most one per kind and subject: (kind, plan or payment index, bill
    /// index).
    pub events: BTreeSet<(&'static str, usize, usize)>,
}

/// An account's figures (§5.1, §5.5 GetAccountSummary).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Figures {
    pub outstanding_total: Fen,
    pub due_now: Fen,
    pub overdue_amount: Fen,
    pub overdue_bill_count: i32,
    pub next_due: Option<(NaiveDate, Fen)>,
    pub credit_limit: Fen,
    pub available_credit: Fen,
    pub credit_balance: Fen,
    pub delinquent: bool,
}

impl Account {
    pub fn new(today: NaiveDate, credit_limit: Fen) -> Self {
        Self {
            today,
            permanent_limit: credit_limit,
            temporary_limit: None,
            limit_changes: 0,
            credit_balance: 0,
            plans: Vec::new(),
            payments: Vec::new(),
            events: BTreeSet::new(),
        }
    }

    /// The limit in force: a temporary limit while it lasts, else the permanent one.
    pub fn credit_limit(&self) -> Fen {
        self.temporary_limit
            .map_or(self.permanent_limit, |(limit, _)| limit)
    }

    /// §5.1.1 UpdateCreditLimit: `until` None sets the permanent limit (and ends a
    /// temporary one, the choice ARCHITECTURE states); Some grants a temporary limit,
    /// which must be above the permanent one.
    pub fn change_limit(&mut self, limit: Fen, until: Option<NaiveDate>) -> Result<(), Refusal> {
        match until {
            None => {
                self.permanent_limit = limit;
                self.temporary_limit = None;
            }
            Some(_) if limit <= self.permanent_limit => return Err(Refusal::TemporaryNotAbove),
            Some(until) => self.temporary_limit = Some((limit, until)),
        }
        self.limit_changes += 1;
        self.events
            .insert(("CREDIT_LIMIT_CHANGED", self.limit_changes, 0));
        Ok(())
    }

    /// §5.4 CancelPlan: the plan's bills become CANCELLED (all of them, paid ones too:
    /// the choice ARCHITECTURE states, since their money is given back), its unpaid
    /// principal no longer counts, and everything paid on it becomes credit balance.
    /// Refused for SETTLED_EARLY and CANCELLED plans.
    pub fn cancel(&mut self, p: usize) -> Result<(), Refusal> {
        let plan = &mut self.plans[p];
        if matches!(
            plan.status,
            PlanStatus::SettledEarly | PlanStatus::Cancelled
        ) {
            return Err(Refusal::NotCancellable);
        }
        let mut refunded = 0;
        for bill in &mut plan.bills {
            refunded += bill.paid.total();
            bill.state = State::Cancelled;
        }
        plan.status = PlanStatus::Cancelled;
        self.credit_balance += refunded;
        self.events.insert(("PLAN_CANCELLED", p, 0));
        Ok(())
    }

    /// Unpaid principal of all plans (§5.1).
    pub fn unpaid_principal(&self) -> Fen {
        self.bills()
            .filter(|(_, _, bill)| bill.unpaid())
            .map(|(_, _, bill)| bill.outstanding().principal)
            .sum()
    }

    /// §5.1: DELINQUENT while a bill is OVERDUE.
    pub fn delinquent(&self) -> bool {
        self.bills()
            .any(|(_, _, bill)| bill.state == State::Overdue)
    }

    /// Every bill as (plan index, bill index, bill), oldest due date first, then plan
    /// (by its id, as ListBills sorts), then seq (§5.6's allocation order).
    pub fn bills(&self) -> impl Iterator<Item = (usize, usize, &Bill)> {
        let mut all: Vec<(usize, usize, &Bill)> = self
            .plans
            .iter()
            .enumerate()
            .flat_map(|(p, plan)| {
                plan.bills
                    .iter()
                    .enumerate()
                    .map(move |(b, bill)| (p, b, bill))
            })
            .collect();
        all.sort_by(|a, b| {
            (a.2.due, &self.plans[a.0].plan_id, a.2.seq).cmp(&(
                b.2.due,
                &self.plans[b.0].plan_id,
                b.2.seq,
            ))
        });
        all.into_iter()
    }

    pub fn figures(&self) -> Figures {
        let today = self.today;
        let mut figures = Figures {
            outstanding_total: 0,
            due_now: 0,
            overdue_amount: 0,
            overdue_bill_count: 0,
            next_due: None,
            credit_limit: self.credit_limit(),
            available_credit: (self.credit_limit() - self.unpaid_principal()).max(0),
            credit_balance: self.credit_balance,
            delinquent: self.delinquent(),
        };
        for (_, _, bill) in self.bills() {
            let owed = bill.outstanding().total();
            match bill.status(today) {
                Status::Upcoming => {
                    figures.outstanding_total += owed;
                    figures.next_due = match figures.next_due {
                        Some((date, sum)) if date == bill.due => Some((date, sum + owed)),
                        Some(earlier) => Some(earlier),
                        None => Some((bill.due, owed)),
                    };
                }
                Status::Due => {
                    figures.outstanding_total += owed;
                    figures.due_now += owed;
                }
                Status::Overdue => {
                    figures.outstanding_total += owed;
                    figures.due_now += owed;
                    figures.overdue_amount += owed;
                    figures.overdue_bill_count += 1;
                }
                Status::Paid | Status::SettledEarly | Status::Cancelled => {}
            }
        }
        figures
    }

    /// §5.4 CreatePlan: refused when the account is DELINQUENT or P exceeds available
    /// credit. Returns the refusal, or the new plan's bills (to add with the id the
    /// service gave).
    pub fn create_plan(
        &mut self,
        plan_id: String,
        product: usize,
        term: u32,
        principal: Fen,
        purchase: NaiveDate,
    ) -> Result<(), Vec<Refusal>> {
        let mut refusals = Vec::new();
        if self.delinquent() {
            refusals.push(Refusal::Delinquent);
        }
        if principal > (self.credit_limit() - self.unpaid_principal()).max(0) {
            refusals.push(Refusal::CreditLimitExceeded);
        }
        if !refusals.is_empty() {
            return Err(refusals);
        }
        let (_, method, terms) = PRODUCTS[product];
        let rate: Decimal = terms
            .iter()
            .find(|(n, _)| *n == term)
            .unwrap()
            .1
            .parse()
            .unwrap();
        let bills = schedule(method, principal, term, rate)
            .into_iter()
            .zip(1..)
            .map(|((principal, interest, fee), seq)| Bill {
                seq,
                due: add_months(purchase, seq),
                charged: Parts {
                    principal,
                    interest,
                    fee,
                    penalty: 0,
                },
                paid: Parts::default(),
                state: State::Open,
                paid_on: None,
                penalty_through: None,
                principal_paid: Vec::new(),
            })
            .collect();
        self.events.insert(("PLAN_CREATED", self.plans.len(), 0));
        self.plans.push(Plan {
            plan_id,
            bill_ids: Vec::new(),
            method,
            purchase,
            status: PlanStatus::Active,
            bills,
        });
        Ok(())
    }

    /// The payoff of plan `p` today (§5.9): per bill (index, what it pays, its charge
    /// once settled early — None for a bill already due).
    fn payoff_lines(&self, p: usize) -> Vec<(usize, Parts, Option<Parts>)> {
        let today = self.today;
        let plan = &self.plans[p];
        // "The current period is the one today falls in (after the previous due date
        // or the purchase, up to and including the next due date)."
        let current = plan.bills.iter().position(|bill| bill.due >= today);
        let mut lines = Vec::new();
        for (b, bill) in plan.bills.iter().enumerate() {
            let owed = bill.outstanding();
            match bill.status(today) {
                Status::Paid | Status::SettledEarly | Status::Cancelled => {}
                Status::Due | Status::Overdue => lines.push((b, owed, None)),
                Status::Upcoming => {
                    let mut pays = Parts {
                        principal: owed.principal,
                        penalty: owed.penalty,
                        ..Parts::default()
                    };
                    if current == Some(b) {
                        match plan.method {
                            // "the current period's interest pro rata by days"
                            Method::EqualInstallment | Method::EqualPrincipal => {
                                let start = if b == 0 {
                                    plan.purchase
                                } else {
                                    plan.bills[b - 1].due
                                };
                                let period = (bill.due - start).num_days().max(1);
                                let elapsed = (today - start).num_days().clamp(0, period);
                                let earned = round_fen(
                                    yuan(bill.charged.interest) * Decimal::from(elapsed)
                                        / Decimal::from(period),
                                );
                                pays.interest = (earned - bill.paid.interest).max(0);
                            }
                            // "for FLAT_FEE the current period's fee" (prepay_fee = current
                            // in the demo set).
                            Method::FlatFee => pays.fee = owed.fee,
                            Method::InterestFree => {}
                        }
                    }
                    // Settled early, a bill charges what was paid plus what the payoff pays
                    // (the spec is silent on refunding interest paid ahead; none is).
                    let settled = Parts {
                        principal: bill.charged.principal,
                        interest: bill.paid.interest + pays.interest,
                        fee: bill.paid.fee + pays.fee,
                        penalty: bill.charged.penalty,
                    };
                    lines.push((b, pays, Some(settled)));
                }
            }
        }
        lines
    }

    /// §5.6 QuoteRepayment: what `target` owes now.
    pub fn quote(&self, target: &Target) -> Result<Fen, Refusal> {
        let owed = match target {
            Target::Payoff(p) => self
                .payoff_lines(*p)
                .iter()
                .map(|(_, pays, _)| pays.total())
                .sum(),
            Target::Amount(amount) => *amount,
            _ => self
                .covered(target)
                .iter()
                .map(|(p, b)| self.plans[*p].bills[*b].outstanding().total())
                .sum(),
        };
        if owed == 0 {
            Err(Refusal::NothingToPay)
        } else {
            Ok(owed)
        }
    }

    /// The unpaid bills `target` covers, in allocation order.
    fn covered(&self, target: &Target) -> Vec<(usize, usize)> {
        let today = self.today;
        self.bills()
            .filter(|(p, _, bill)| {
                let status = bill.status(today);
                let unpaid = matches!(status, Status::Upcoming | Status::Due | Status::Overdue);
                match target {
                    Target::Bills(wanted) => unpaid && wanted.contains(&(*p, bill.seq)),
                    Target::AllDue => matches!(status, Status::Due | Status::Overdue),
                    Target::Amount(_) => unpaid,
                    Target::Payoff(plan) => unpaid && p == plan,
                }
            })
            .map(|(p, b, _)| (p, b))
            .collect()
    }

    /// §5.6 ApplyRepayment of `amount` for `target`: oldest first, penalty → interest →
    /// fee → principal within a bill; what no bill owes goes to credit balance. A
    /// payoff paid in full closes the bills not yet due SETTLED_EARLY (§5.9).
    pub fn apply(&mut self, payment_id: String, amount: Fen, target: &Target) {
        let today = self.today;
        let mut allocations = Vec::new();
        let mut left = amount;
        let mut early_plan = None;
        if let Target::Payoff(p) = target {
            let lines = self.payoff_lines(*p);
            let total: Fen = lines.iter().map(|(_, pays, _)| pays.total()).sum();
            if total > 0 && amount >= total {
                for (b, pays, settled) in &lines {
                    let bill = &mut self.plans[*p].bills[*b];
                    if let Some(settled) = settled {
                        bill.charged = *settled;
                    }
                    if pays.total() > 0 {
                        allocations.push((*p, *b, *pays));
                    }
                }
                left = amount - total;
                // "Bills not yet due are closed as SETTLED_EARLY and the plan becomes
                // SETTLED_EARLY; when no bill was closed early ... simply SETTLED."
                if lines.iter().any(|(_, _, settled)| settled.is_some()) {
                    early_plan = Some(*p);
                    for (b, _, settled) in &lines {
                        if settled.is_some() {
                            self.plans[*p].bills[*b].state = State::SettledEarly;
                        }
                    }
                }
            }
        }
        if allocations.is_empty() && early_plan.is_none() {
            for (p, b) in self.covered(target) {
                if left == 0 {
                    break;
                }
                let owed = self.plans[p].bills[b].outstanding();
                let mut parts = Parts::default();
                for (take, owes) in [
                    (&mut parts.penalty, owed.penalty),
                    (&mut parts.interest, owed.interest),
                    (&mut parts.fee, owed.fee),
                    (&mut parts.principal, owed.principal),
                ] {
                    *take = left.min(owes);
                    left -= *take;
                }
                if parts.total() > 0 {
                    allocations.push((p, b, parts));
                }
            }
        }
        for (p, b, parts) in &allocations {
            let bill = &mut self.plans[*p].bills[*b];
            bill.paid = bill.paid.plus(parts);
            if parts.principal != 0 {
                bill.principal_paid.push((today, parts.principal));
            }
            if bill.paid == bill.charged && bill.state != State::SettledEarly {
                bill.state = State::Paid;
                bill.paid_on = Some(today);
            }
        }
        if let Some(p) = early_plan {
            self.plans[p].status = PlanStatus::SettledEarly;
        }
        self.credit_balance += left;
        self.settle_paid_plans();
        self.events
            .insert(("REPAYMENT_APPLIED", self.payments.len(), 0));
        self.payments.push(Payment {
            payment_id,
            allocations,
            to_credit: left,
            reversed: false,
        });
    }

    /// §5.4: a plan whose bills are all PAID is SETTLED.
    fn settle_paid_plans(&mut self) {
        for (p, plan) in self.plans.iter_mut().enumerate() {
            if plan.status == PlanStatus::Active && plan.bills.iter().all(|bill| !bill.unpaid()) {
                plan.status = PlanStatus::Settled;
                self.events.insert(("PLAN_SETTLED", p, 0));
            }
        }
    }

    /// §5.6 ReverseRepayment: undoes exactly that payment's allocations (bills reopen,
    /// credit restored). Refused (the spec's refund rules, issue 9) when it settled a
    /// plan early or its credit-balance share is already spent.
    pub fn reverse(&mut self, index: usize) -> Result<(), Refusal> {
        let today = self.today;
        let payment = self.payments[index].clone();
        if payment.reversed {
            return Ok(());
        }
        // What it paid on bills cancelled since is in the credit balance now (CancelPlan
        // put it there), so that is where the reversal takes it from, as it does its
        // own credit-balance share; refused whole when the balance is short.
        let from_cancelled: Fen = payment
            .allocations
            .iter()
            .filter(|(p, b, _)| self.plans[*p].bills[*b].state == State::Cancelled)
            .map(|(_, _, parts)| parts.total())
            .sum();
        if payment
            .allocations
            .iter()
            .any(|(p, b, _)| self.plans[*p].bills[*b].state == State::SettledEarly)
            || payment.to_credit + from_cancelled > self.credit_balance
        {
            return Err(Refusal::NotReversible);
        }
        self.credit_balance -= from_cancelled;
        for (p, b, parts) in &payment.allocations {
            let bill = &mut self.plans[*p].bills[*b];
            bill.paid = bill.paid.minus(parts);
            if bill.state == State::Cancelled {
                bill.paid_on = None;
                continue;
            }
            if parts.principal != 0 {
                bill.principal_paid.push((today, -parts.principal));
            }
            if bill.state == State::Paid {
                // Reopened; a close marks it OVERDUE again when past grace.
                bill.state = State::Open;
            }
            bill.paid_on = None;
            if self.plans[*p].status == PlanStatus::Settled {
                self.plans[*p].status = PlanStatus::Active;
            }
        }
        self.credit_balance -= payment.to_credit;
        self.payments[index].reversed = true;
        self.events.insert(("REPAYMENT_REVERSED", index, 0));
        Ok(())
    }

    /// §5.8 the close of `as_of`: OVERDUE after grace, penalties day by day on the
    /// principal unpaid at the end of each day, then credit balance to due bills.
    pub fn close(&mut self, as_of: NaiveDate) {
        // §5.1.1: a temporary limit lapses at the close of its until date (or a later
        // close, when closes were skipped).
        if self
            .temporary_limit
            .is_some_and(|(_, until)| until <= as_of)
        {
            self.temporary_limit = None;
            self.limit_changes += 1;
            self.events
                .insert(("CREDIT_LIMIT_CHANGED", self.limit_changes, 0));
        }
        let rate: Decimal = PENALTY_DAILY_RATE.parse().unwrap();
        let order: Vec<(usize, usize)> = self.bills().map(|(p, b, _)| (p, b)).collect();
        for &(p, b) in &order {
            let bill = &mut self.plans[p].bills[b];
            if !bill.unpaid() {
                continue;
            }
            // "reminder events are written": due soon (N=3 days before), due, overdue.
            let key = |kind| (kind, p, b);
            if bill.due - Days::new(3) <= as_of && as_of < bill.due {
                self.events.insert(key("BILL_DUE_SOON"));
            }
            if bill.due <= as_of {
                self.events.insert(key("BILL_DUE"));
            }
            let grace_ends = bill.due + Days::new(GRACE_DAYS);
            if bill.state == State::Open && as_of <= grace_ends {
                continue;
            }
            self.events.insert(key("BILL_OVERDUE"));
            bill.state = State::Overdue;
            // "each day d from the day after due_date posts
            // round(unpaid_principal_at_end_of_day(d) × penalty_daily_rate)"
            let mut day = bill.penalty_through.unwrap_or(bill.due).max(bill.due);
            if as_of <= day {
                continue;
            }
            while day < as_of {
                day = day.succ_opt().unwrap();
                let paid: Fen = bill
                    .principal_paid
                    .iter()
                    .filter(|(on, _)| *on <= day)
                    .map(|(_, fen)| fen)
                    .sum();
                let unpaid = (bill.charged.principal - paid).max(0);
                bill.charged.penalty += round_fen(yuan(unpaid) * rate);
            }
            bill.penalty_through = Some(as_of);
        }
        // "credit_balance is applied to due bills" — oldest first; the close of as_of
        // has posted as_of's penalty, so this principal counts as paid from the next day.
        if self.credit_balance > 0 {
            let mut left = self.credit_balance;
            for &(p, b) in &order {
                let bill = &mut self.plans[p].bills[b];
                if left == 0 || !matches!(bill.status(as_of), Status::Due | Status::Overdue) {
                    continue;
                }
                let owed = bill.outstanding();
                let mut parts = Parts::default();
                for (take, owes) in [
                    (&mut parts.penalty, owed.penalty),
                    (&mut parts.interest, owed.interest),
                    (&mut parts.fee, owed.fee),
                    (&mut parts.principal, owed.principal),
                ] {
                    *take = left.min(owes);
                    left -= *take;
                }
                bill.paid = bill.paid.plus(&parts);
                if parts.principal != 0 {
                    bill.principal_paid
                        .push((as_of.succ_opt().unwrap(), parts.principal));
                }
                if bill.paid == bill.charged {
                    bill.state = State::Paid;
                    bill.paid_on = Some(as_of);
                }
            }
            self.credit_balance = left;
            self.settle_paid_plans();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The model agrees with §5.3's worked examples before it judges anything.
    #[test]
    fn the_spec_examples() {
        let ei = schedule(
            Method::EqualInstallment,
            1_200_000,
            12,
            "0.01".parse().unwrap(),
        );
        assert_eq!(ei[0], (94_619, 12_000, 0));
        assert_eq!(ei[1], (95_565, 11_054, 0));
        assert_eq!(ei[11], (105_558, 1_056, 0));
        assert_eq!(ei.iter().map(|l| l.1).sum::<Fen>(), 79_423);
        let ff = schedule(Method::FlatFee, 599_900, 12, "0.006".parse().unwrap());
        assert_eq!(ff[0], (49_992, 0, 3_599));
        assert_eq!(ff[11], (49_988, 0, 3_599));
        let ep = schedule(
            Method::EqualPrincipal,
            1_200_000,
            12,
            "0.01".parse().unwrap(),
        );
        assert_eq!(ep.iter().map(|l| l.1).sum::<Fen>(), 78_000);
        let bought: NaiveDate = "2026-01-31".parse().unwrap();
        assert_eq!(add_months(bought, 1).to_string(), "2026-02-28");
        assert_eq!(add_months(bought, 2).to_string(), "2026-03-31");
        assert_eq!(
            add_months("2028-02-29".parse().unwrap(), 12).to_string(),
            "2029-02-28"
        );
    }
}
