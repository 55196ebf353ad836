//! The randomized model test (issue 13): seeded random sequences of purchases,
//! repayments, day closes, reversals, cancellations and credit limit changes run through the real stack over gRPC — on
//! SQLite and PostgreSQL — and after every step every bill, plan status and account
//! figure is compared with [`reference`], a model written from SPEC §5 alone.
//!
//! A failing sequence is shrunk (steps removed while it still fails, each attempt on a
//! fresh stack) and printed as a ready-to-paste regression test for `regressions.rs`.
//!
//! `BILLPAY_MODEL_CASES=N` (per backend; default [`DEFAULT_CASES`]) and `BILLPAY_MODEL_SEED=S` set
//! the run; `BILLPAY_MODEL_FIRST=K` starts at sequence K, so a long run can be split into
//! shards (K a multiple of 20) that together cover exactly the sequences of one run.
//! billing-svc's "today" is the harness's fixed clock, moved by the steps.

pub mod reference;
mod regressions;

use std::{fmt::Write as _, time::Instant};

use billpay_contracts::{
    billing::v1::{
        self as wire, ApplyRepaymentRequest, GetAccountRequest, GetAccountSummaryRequest,
        GetPlanRequest, QuoteRepaymentRequest, ReverseRepaymentRequest, RunDayCloseRequest,
        billing_service_client::BillingServiceClient,
    },
    common::v1::{
        AllDue, BillSelection, Money, PlanPayoff, RepaymentTarget, repayment_target::Kind,
    },
    payment::v1::{PaymentMethod, PaymentStatus},
};
use chrono::{Datelike as _, Days, Months, NaiveDate};
use integration_tests::{Backend, StackOptions, TestApp, authorized, connect};
use rust_decimal::Decimal;
use tonic::{Code, transport::Channel};

use self::reference::{Account, Fen, PRODUCTS, PlanStatus, Refusal, State, Status, Target};
use crate::support::{open_account, pay, reason, repayment};

/// Sequences in a plain `cargo test` run, per backend: SQLite, PostgreSQL (slower per
/// step; together they fit CI's couple of minutes).
pub const DEFAULT_CASES: (usize, usize) = (200, 100);
/// The seed CI runs.
pub const DEFAULT_SEED: u64 = 13;
/// Sequences sharing one stack (each on its own account and its own span of dates).
const CASES_PER_STACK: usize = 20;
const CREDIT_LIMIT: Fen = 10_000_000;
const SCOPES: &[&str] = &[
    "billing:read",
    "billing:write",
    "billing:admin",
    "billing:apply",
    "billing:limits",
];

/// How a Pay step picks its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// Bills of the plan by index (mod its bill count), paid in full.
    Bills([u8; 2]),
    AllDue,
    /// This share (‰, 1..=1000) of everything unpaid on the account.
    Amount(u16),
    Payoff,
}

/// Which closes an Advance runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseMode {
    NoClose,
    /// One close a day, as the days pass.
    Daily,
    /// After the jump, every day since the last close, in order (the automatic catch-up).
    CatchUp,
    /// After the jump, one close of yesterday.
    Single,
}

/// One step of a sequence. Plan and payment references are indexes taken modulo what
/// exists, so any subsequence is still a valid sequence (for shrinking).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A purchase `back_days` ago (snapped to the 28th/29th/30th/31st or a Feb 29 when
    /// `month_end` is 1..=5), `price` fen on PRODUCTS[product], term index `term`.
    NewPlan {
        product: u8,
        term: u8,
        price: i64,
        back_days: u16,
        month_end: u8,
    },
    /// A repayment through payment-svc (bank card), after checking the quote.
    Pay {
        plan: u8,
        how: How,
    },
    /// A capture larger than everything due, straight to billing's ApplyRepayment: the
    /// rest becomes credit balance.
    Overpay {
        extra: i64,
    },
    Advance {
        days: u16,
        close: CloseMode,
    },
    /// To the next unpaid due date of a plan, plus `offset` days.
    AdvanceToDue {
        plan: u8,
        offset: i8,
        close: CloseMode,
    },
    /// billing's ReverseRepayment of an earlier payment.
    Reverse {
        payment: u8,
    },
    /// CancelPlan (goods returned).
    Cancel {
        plan: u8,
    },
    /// UpdateCreditLimit to `share` ‰ of the opening limit: permanent when
    /// `until_days` is 0, else temporary until that many days after today.
    Limit {
        share: u16,
        until_days: u8,
    },
}

/// A sequence: the business date it starts on, and its steps.
#[derive(Debug, Clone)]
pub struct Case {
    pub start: NaiveDate,
    pub steps: Vec<Step>,
}

/// A small seeded generator (SplitMix64): the same seed gives the same sequences.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn range(&mut self, low: i64, high: i64) -> i64 {
        low + self.below((high - low + 1) as u64) as i64
    }
}

fn close_mode(rng: &mut Rng) -> CloseMode {
    // Daily and catch-up closes cost one RunDayClose a day: fewer of them, so that a
    // few hundred sequences fit CI's budget.
    match rng.below(10) {
        0..=2 => CloseMode::NoClose,
        3 => CloseMode::Daily,
        4 => CloseMode::CatchUp,
        _ => CloseMode::Single,
    }
}

/// The sequence number `index` of `seed`, starting on `start`.
pub fn generate(seed: u64, index: usize, start: NaiveDate) -> Case {
    let mut rng = Rng(seed ^ (index as u64).wrapping_mul(0xA076_1D64_78BD_642F));
    let length = rng.range(4, 16) as usize;
    let mut steps = Vec::with_capacity(length);
    for i in 0..length {
        let kind = if i == 0 { 0 } else { rng.below(100) };
        let step = match kind {
            0..=16 => {
                let price = match rng.below(4) {
                    0 => rng.range(10_000, 50_000),
                    1 => rng.range(10_000, 5_000_000),
                    _ => rng.range(100_000, 2_000_000),
                };
                Step::NewPlan {
                    product: rng.below(PRODUCTS.len() as u64) as u8,
                    term: rng.below(3) as u8,
                    price,
                    back_days: match rng.below(3) {
                        0 => 0,
                        1 => rng.range(1, 40) as u16,
                        _ => rng.range(1, 400) as u16,
                    },
                    month_end: if rng.below(2) == 0 {
                        0
                    } else {
                        rng.range(1, 5) as u8
                    },
                }
            }
            17..=45 => Step::Pay {
                plan: rng.below(4) as u8,
                how: match rng.below(10) {
                    0..=2 => {
                        // Mostly the first bills (paying the current one early), sometimes any.
                        let mut pick = || if rng.below(4) == 0 { rng.below(24) } else { rng.below(3) } as u8;
                        How::Bills([pick(), pick()])
                    }
                    3..=4 => How::AllDue,
                    5..=7 => How::Amount(rng.range(1, 1000) as u16),
                    _ => How::Payoff,
                },
            },
            46..=50 => Step::Overpay {
                extra: rng.range(1, 300_000),
            },
            51..=71 => Step::Advance {
                days: match rng.below(10) {
                    0..=4 => rng.range(1, 3),
                    5..=7 => rng.range(4, 15),
                    _ => rng.range(16, 45),
                } as u16,
                close: close_mode(&mut rng),
            },
            72..=87 => Step::AdvanceToDue {
                plan: rng.below(4) as u8,
                offset: rng.range(-1, 5) as i8,
                close: close_mode(&mut rng),
            },
            88..=92 => Step::Reverse {
                payment: rng.below(8) as u8,
            },
            93..=95 => Step::Cancel {
                plan: rng.below(4) as u8,
            },
            _ => Step::Limit {
                // Mostly around what the sequences borrow, sometimes far below or above.
                share: match rng.below(4) {
                    0 => rng.range(1, 100),
                    1 => rng.range(1000, 3000),
                    _ => rng.range(100, 1000),
                } as u16,
                until_days: if rng.below(2) == 0 {
                    0
                } else {
                    rng.range(1, 60) as u8
                },
            },
        };
        steps.push(step);
    }
    Case { start, steps }
}

/// One sequence running against one stack.
struct Run<'a> {
    app: &'a TestApp,
    billing: BillingServiceClient<Channel>,
    token: String,
    account_id: String,
    model: Account,
    /// The last date closed (the day before the start, to begin with).
    last_closed: NaiveDate,
    order: u32,
}

type Outcome = Result<(), String>;

fn money(fen: Fen) -> Option<Money> {
    Some(Money::new("CNY", Decimal::new(fen, 2).to_string()))
}

fn fen(money: &Option<Money>) -> Fen {
    let Some(money) = money else { return 0 };
    let amount: Decimal = money.amount.parse().unwrap_or_default();
    i64::try_from((amount * Decimal::from(100)).trunc().mantissa()).unwrap_or(i64::MIN)
}

impl<'a> Run<'a> {
    async fn new(app: &'a TestApp, start: NaiveDate) -> Result<Self, String> {
        app.set_today(start);
        let customer = format!("model-{}", uuid::Uuid::now_v7().simple());
        let account_id =
            open_account(app, &customer, &Decimal::new(CREDIT_LIMIT, 2).to_string()).await;
        Ok(Self {
            app,
            billing: BillingServiceClient::new(connect(app.billing_addr).await),
            token: app.service_token(SCOPES),
            account_id,
            model: Account::new(start, CREDIT_LIMIT),
            last_closed: start.pred_opt().unwrap(),
            order: 0,
        })
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        authorized(message, &self.token)
    }

    fn wire_target(&self, target: &Target) -> RepaymentTarget {
        let kind = match target {
            Target::Bills(bills) => Kind::Bills(BillSelection {
                bill_ids: bills
                    .iter()
                    .map(|(p, seq)| self.bill_id(*p, *seq))
                    .collect(),
            }),
            Target::AllDue => Kind::AllDue(AllDue {}),
            Target::Payoff(p) => Kind::PlanPayoff(PlanPayoff {
                plan_id: self.model.plans[*p].plan_id.clone(),
            }),
            Target::Amount(amount) => Kind::Amount(money(*amount).unwrap()),
        };
        RepaymentTarget { kind: Some(kind) }
    }

    /// Bill ids are the service's; the model remembers them from GetPlan.
    fn bill_id(&self, p: usize, seq: u32) -> String {
        self.model.plans[p].bill_ids[seq as usize - 1].clone()
    }

    async fn step(&mut self, step: Step) -> Outcome {
        match step {
            Step::NewPlan {
                product,
                term,
                price,
                back_days,
                month_end,
            } => {
                self.new_plan(product, term, price, back_days, month_end)
                    .await
            }
            Step::Pay { plan, how } => self.pay(plan, how).await,
            Step::Overpay { extra } => self.overpay(extra).await,
            Step::Advance { days, close } => {
                let to = self.model.today + Days::new(u64::from(days));
                self.advance(to, close).await
            }
            Step::AdvanceToDue {
                plan,
                offset,
                close,
            } => {
                if self.model.plans.is_empty() {
                    return Ok(());
                }
                let plan = &self.model.plans[plan as usize % self.model.plans.len()];
                let today = self.model.today;
                let Some(bill) = plan.bills.iter().find(|bill| {
                    matches!(bill.state, State::Open | State::Overdue) && bill.due >= today
                }) else {
                    return Ok(());
                };
                let to = if offset >= 0 {
                    bill.due + Days::new(offset as u64)
                } else {
                    bill.due - Days::new(offset.unsigned_abs() as u64)
                };
                if to <= today {
                    return Ok(());
                }
                self.advance(to, close).await
            }
            Step::Reverse { payment } => self.reverse(payment).await,
            Step::Cancel { plan } => self.cancel(plan).await,
            Step::Limit { share, until_days } => self.change_limit(share, until_days).await,
        }
    }

    async fn new_plan(
        &mut self,
        product: u8,
        term: u8,
        price: i64,
        back_days: u16,
        month_end: u8,
    ) -> Outcome {
        let today = self.model.today;
        let product = product as usize % PRODUCTS.len();
        let (product_id, _, terms) = PRODUCTS[product];
        let term = terms[term as usize % terms.len()].0;
        let mut bought = today - Days::new(u64::from(back_days));
        let earliest = today - Months::new(60);
        let snapped = match month_end {
            1..=4 => (0..60u32)
                .filter_map(|back| {
                    let month = bought.with_day(1)? - Months::new(back);
                    month.with_day(27 + u32::from(month_end))
                })
                .find(|date| *date <= bought),
            5 => (0..6)
                .filter_map(|back| NaiveDate::from_ymd_opt(bought.year() - back, 2, 29))
                .find(|date| *date <= bought),
            _ => None,
        };
        if let Some(snapped) = snapped.filter(|date| *date >= earliest) {
            bought = snapped;
        }
        self.order += 1;
        let request = wire::CreatePlanRequest {
            account_id: self.account_id.clone(),
            order_ref: format!("o-{}", self.order),
            product_id: product_id.into(),
            term_count: term as i32,
            price: money(price),
            down_payment: None,
            purchase_date: bought.to_string(),
        };
        let expected = self
            .model
            .create_plan(String::new(), product, term, price, bought);
        let answer = self.billing.create_plan(self.request(request)).await;
        match (expected, answer) {
            (Ok(()), Ok(response)) => {
                let plan = response.into_inner().plan.unwrap();
                let last = self.model.plans.last_mut().unwrap();
                last.plan_id = plan.plan_id;
                last.bill_ids = plan.bills.into_iter().map(|bill| bill.bill_id).collect();
                Ok(())
            }
            (Err(refusals), Err(status)) => {
                let got = reason(&status).unwrap_or_default();
                let wanted: Vec<&str> = refusals
                    .iter()
                    .map(|refusal| match refusal {
                        Refusal::Delinquent => "ACCOUNT_DELINQUENT",
                        _ => "CREDIT_LIMIT_EXCEEDED",
                    })
                    .collect();
                if status.code() == Code::FailedPrecondition && wanted.contains(&got.as_str()) {
                    Ok(())
                } else {
                    Err(format!(
                        "CreatePlan: the model refuses with {wanted:?}, the service with {status:?}"
                    ))
                }
            }
            (Ok(()), Err(status)) => Err(format!(
                "CreatePlan: the model accepts {price} fen bought {bought}, the service refuses: {status:?}"
            )),
            (Err(refusals), Ok(_)) => Err(format!(
                "CreatePlan: the model refuses ({refusals:?}), the service accepted"
            )),
        }
    }

    fn target(&self, plan: u8, how: How) -> Option<Target> {
        if self.model.plans.is_empty() {
            return None;
        }
        let p = plan as usize % self.model.plans.len();
        Some(match how {
            How::Bills(picks) => {
                let count = self.model.plans[p].bills.len();
                let mut seqs: Vec<(usize, u32)> = picks
                    .iter()
                    .map(|pick| (p, (*pick as usize % count) as u32 + 1))
                    .collect();
                seqs.dedup();
                Target::Bills(seqs)
            }
            How::AllDue => Target::AllDue,
            How::Payoff => Target::Payoff(p),
            How::Amount(share) => {
                let unpaid = self.model.figures().outstanding_total;
                if unpaid == 0 {
                    return None;
                }
                Target::Amount((unpaid * i64::from(share) / 1000).max(1))
            }
        })
    }

    /// QuoteRepayment against the model; Some(amount) when there is something to pay.
    async fn check_quote(&mut self, target: &Target) -> Result<Option<Fen>, String> {
        let expected = self.model.quote(target);
        let request = QuoteRepaymentRequest {
            account_id: self.account_id.clone(),
            target: Some(self.wire_target(target)),
        };
        let answer = self.billing.quote_repayment(self.request(request)).await;
        match (expected, answer) {
            (Ok(amount), Ok(quote)) => {
                let quoted = fen(&quote.into_inner().amount);
                if quoted == amount {
                    Ok(Some(amount))
                } else {
                    Err(format!(
                        "QuoteRepayment {target:?}: the model owes {}, the service quotes {}",
                        show(amount),
                        show(quoted)
                    ))
                }
            }
            (Err(Refusal::NothingToPay), Err(status))
                if reason(&status).as_deref() == Some("NOTHING_TO_PAY") =>
            {
                Ok(None)
            }
            (expected, answer) => Err(format!(
                "QuoteRepayment {target:?}: the model says {expected:?}, the service {answer:?}"
            )),
        }
    }

    async fn pay(&mut self, plan: u8, how: How) -> Outcome {
        let Some(target) = self.target(plan, how) else {
            return Ok(());
        };
        let Some(amount) = self.check_quote(&target).await? else {
            return Ok(());
        };
        let request = repayment(
            &uuid::Uuid::now_v7().to_string(),
            &self.account_id,
            self.wire_target(&target),
            &Decimal::new(amount, 2).to_string(),
            PaymentMethod::BankCard,
            "tok_4242",
        );
        let payment = pay(self.app, request).await.map_err(|status| {
            format!("CreateRepayment {target:?} of {}: {status:?}", show(amount))
        })?;
        if payment.status() != PaymentStatus::Succeeded || !payment.applied {
            return Err(format!(
                "CreateRepayment {target:?}: not applied at once: {payment:?}"
            ));
        }
        self.model.apply(payment.payment_id, amount, &target);
        Ok(())
    }

    async fn overpay(&mut self, extra: i64) -> Outcome {
        let owed = self.model.quote(&Target::AllDue).unwrap_or(0);
        let amount = owed + extra;
        let payment_id = format!("model-{}", uuid::Uuid::now_v7().simple());
        let request = ApplyRepaymentRequest {
            payment_id: payment_id.clone(),
            account_id: self.account_id.clone(),
            amount: money(amount),
            target: Some(self.wire_target(&Target::AllDue)),
        };
        let applied = self
            .billing
            .apply_repayment(self.request(request))
            .await
            .map_err(|status| format!("ApplyRepayment all_due of {}: {status:?}", show(amount)))?
            .into_inner();
        self.model.apply(payment_id, amount, &Target::AllDue);
        let to_credit = self.model.payments.last().unwrap().to_credit;
        let got = fen(&applied.added_to_credit_balance);
        if got != to_credit {
            return Err(format!(
                "ApplyRepayment of {}: the model adds {} to credit balance, the service {}",
                show(amount),
                show(to_credit),
                show(got)
            ));
        }
        Ok(())
    }

    async fn reverse(&mut self, payment: u8) -> Outcome {
        if self.model.payments.is_empty() {
            return Ok(());
        }
        let index = payment as usize % self.model.payments.len();
        let payment_id = self.model.payments[index].payment_id.clone();
        let expected = self.model.reverse(index);
        let request = ReverseRepaymentRequest {
            payment_id: payment_id.clone(),
        };
        let answer = self.billing.reverse_repayment(self.request(request)).await;
        match (expected, answer) {
            (Ok(()), Ok(_)) => Ok(()),
            (Err(Refusal::NotReversible), Err(status))
                if status.code() == Code::FailedPrecondition =>
            {
                Ok(())
            }
            (expected, answer) => Err(format!(
                "ReverseRepayment of payment #{index}: the model says {expected:?}, the service {answer:?}"
            )),
        }
    }

    async fn cancel(&mut self, plan: u8) -> Outcome {
        if self.model.plans.is_empty() {
            return Ok(());
        }
        let p = plan as usize % self.model.plans.len();
        let expected = self.model.cancel(p);
        let request = wire::CancelPlanRequest {
            plan_id: self.model.plans[p].plan_id.clone(),
            request_id: uuid::Uuid::now_v7().to_string(),
            reason: "goods returned".into(),
        };
        let answer = self.billing.cancel_plan(self.request(request)).await;
        match (expected, answer) {
            (Ok(()), Ok(_)) => Ok(()),
            (Err(Refusal::NotCancellable), Err(status))
                if reason(&status).as_deref() == Some("PLAN_NOT_CANCELLABLE") =>
            {
                Ok(())
            }
            (expected, answer) => Err(format!(
                "CancelPlan of plan #{p}: the model says {expected:?}, the service {answer:?}"
            )),
        }
    }

    async fn change_limit(&mut self, share: u16, until_days: u8) -> Outcome {
        let limit = (CREDIT_LIMIT * i64::from(share) / 1000).max(100);
        let until = (until_days > 0).then(|| self.model.today + Days::new(u64::from(until_days)));
        let expected = self.model.change_limit(limit, until);
        let request = wire::UpdateCreditLimitRequest {
            account_id: self.account_id.clone(),
            request_id: uuid::Uuid::now_v7().to_string(),
            new_limit: money(limit),
            reason: "risk review".into(),
            until: until.map(|date| date.to_string()).unwrap_or_default(),
        };
        let answer = self
            .billing
            .update_credit_limit(self.request(request))
            .await;
        match (expected, answer) {
            (Ok(()), Ok(_)) => Ok(()),
            (Err(Refusal::TemporaryNotAbove), Err(status))
                if status.code() == Code::InvalidArgument =>
            {
                Ok(())
            }
            (expected, answer) => Err(format!(
                "UpdateCreditLimit to {} until {until:?}: the model says {expected:?}, the service {answer:?}",
                show(limit)
            )),
        }
    }

    async fn close(&mut self, as_of: NaiveDate) -> Outcome {
        let request = RunDayCloseRequest {
            as_of: as_of.to_string(),
            run_id: 0,
        };
        let answer = self
            .billing
            .run_day_close(self.request(request))
            .await
            .map_err(|status| format!("RunDayClose {as_of}: {status:?}"))?
            .into_inner();
        if !answer.finished {
            return Err(format!(
                "RunDayClose {as_of} answered before finishing: {answer:?}"
            ));
        }
        self.model.close(as_of);
        self.last_closed = self.last_closed.max(as_of);
        Ok(())
    }

    async fn advance(&mut self, to: NaiveDate, close: CloseMode) -> Outcome {
        let set_today = |run: &mut Self, today: NaiveDate| {
            run.model.today = today;
            run.app.set_today(today);
        };
        match close {
            CloseMode::NoClose => set_today(self, to),
            CloseMode::Daily => {
                while self.model.today < to {
                    let ended = self.model.today;
                    set_today(self, ended.succ_opt().unwrap());
                    self.close(ended).await?;
                }
            }
            CloseMode::CatchUp => {
                set_today(self, to);
                let yesterday = to.pred_opt().unwrap();
                let mut day = self.last_closed.succ_opt().unwrap();
                while day <= yesterday {
                    self.close(day).await?;
                    day = day.succ_opt().unwrap();
                }
            }
            CloseMode::Single => {
                set_today(self, to);
                self.close(to.pred_opt().unwrap()).await?;
            }
        }
        Ok(())
    }

    /// Every bill, plan status and account figure, the service's against the model's.
    async fn compare(&mut self) -> Outcome {
        let today = self.model.today;
        let figures = self.model.figures();
        let mut differences = String::new();
        let summary = self
            .billing
            .get_account_summary(self.request(GetAccountSummaryRequest {
                account_id: self.account_id.clone(),
            }))
            .await
            .map_err(|status| format!("GetAccountSummary: {status:?}"))?
            .into_inner();
        let mut same = |what: &str, model: String, service: String| {
            if model != service {
                let _ = writeln!(differences, "  {what}: model {model}, service {service}");
            }
        };
        same(
            "business_date",
            today.to_string(),
            summary.business_date.clone(),
        );
        for (what, model, service) in [
            (
                "outstanding_total",
                figures.outstanding_total,
                &summary.outstanding_total,
            ),
            ("due_now", figures.due_now, &summary.due_now),
            (
                "overdue_amount",
                figures.overdue_amount,
                &summary.overdue_amount,
            ),
            ("credit_limit", figures.credit_limit, &summary.credit_limit),
            (
                "available_credit",
                figures.available_credit,
                &summary.available_credit,
            ),
            (
                "credit_balance",
                figures.credit_balance,
                &summary.credit_balance,
            ),
        ] {
            same(what, show(model), show(fen(service)));
        }
        same(
            "overdue_bill_count",
            figures.overdue_bill_count.to_string(),
            summary.overdue_bill_count.to_string(),
        );
        let (next_date, next_amount) = figures
            .next_due
            .map_or((String::new(), 0), |(date, amount)| {
                (date.to_string(), amount)
            });
        same("next_due_date", next_date, summary.next_due_date.clone());
        same(
            "next_due_amount",
            show(next_amount),
            show(fen(&summary.next_due_amount)),
        );
        let account = self
            .billing
            .get_account(self.request(GetAccountRequest {
                account_id: self.account_id.clone(),
            }))
            .await
            .map_err(|status| format!("GetAccount: {status:?}"))?
            .into_inner()
            .account
            .unwrap();
        let mut same = |what: &str, model: String, service: String| {
            if model != service {
                let _ = writeln!(differences, "  {what}: model {model}, service {service}");
            }
        };
        same(
            "account status",
            if figures.delinquent {
                "DELINQUENT"
            } else {
                "ACTIVE"
            }
            .into(),
            account
                .status()
                .as_str_name()
                .trim_start_matches("ACCOUNT_STATUS_")
                .into(),
        );
        for (index, plan) in self.model.plans.iter().enumerate() {
            let got = self
                .billing
                .get_plan(self.request(GetPlanRequest {
                    plan_id: plan.plan_id.clone(),
                }))
                .await
                .map_err(|status| format!("GetPlan: {status:?}"))?
                .into_inner()
                .plan
                .unwrap();
            let status = match plan.status {
                PlanStatus::Active => "ACTIVE",
                PlanStatus::Settled => "SETTLED",
                PlanStatus::SettledEarly => "SETTLED_EARLY",
                PlanStatus::Cancelled => "CANCELLED",
            };
            if status
                != got
                    .status()
                    .as_str_name()
                    .trim_start_matches("PLAN_STATUS_")
            {
                let _ = writeln!(
                    differences,
                    "  plan #{index} status: model {status}, service {:?}",
                    got.status()
                );
            }
            for (bill, wire) in plan.bills.iter().zip(&got.bills) {
                let status = match bill.status(today) {
                    Status::Upcoming => "UPCOMING",
                    Status::Due => "DUE",
                    Status::Overdue => "OVERDUE",
                    Status::Paid => "PAID",
                    Status::SettledEarly => "SETTLED_EARLY",
                    Status::Cancelled => "CANCELLED",
                };
                let paid = wire.paid.clone().unwrap_or_default();
                let model = format!(
                    "due {} charges {}/{}/{}/{} paid {}/{}/{}/{} {status} late {}",
                    bill.due,
                    show(bill.charged.principal),
                    show(bill.charged.interest),
                    show(bill.charged.fee),
                    show(bill.charged.penalty),
                    show(bill.paid.principal),
                    show(bill.paid.interest),
                    show(bill.paid.fee),
                    show(bill.paid.penalty),
                    bill.days_late(),
                );
                let service = format!(
                    "due {} charges {}/{}/{}/{} paid {}/{}/{}/{} {} late {}",
                    wire.due_date,
                    show(fen(&wire.principal)),
                    show(fen(&wire.interest)),
                    show(fen(&wire.fee)),
                    show(fen(&wire.penalty)),
                    show(fen(&paid.principal)),
                    show(fen(&paid.interest)),
                    show(fen(&paid.fee)),
                    show(fen(&paid.penalty)),
                    wire.status()
                        .as_str_name()
                        .trim_start_matches("BILL_STATUS_"),
                    wire.days_late,
                );
                if model != service {
                    let _ = writeln!(
                        differences,
                        "  plan #{index} bill {}:\n    model   {model}\n    service {service}",
                        bill.seq
                    );
                }
            }
            if plan.bills.len() != got.bills.len() {
                let _ = writeln!(
                    differences,
                    "  plan #{index}: {} bills in the model, {} in the service",
                    plan.bills.len(),
                    got.bills.len()
                );
            }
        }
        // §5.7's events, counted per kind (WatchEvents has no account filter, so the
        // count is read from billing's table).
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT kind, COUNT(*) FROM events WHERE account_id = $1 GROUP BY kind ORDER BY kind",
        )
        .bind(self.account_id.as_str())
        .fetch_all(self.app.billing_db.pool())
        .await
        .map_err(|error| format!("counting events: {error}"))?;
        let mut expected: std::collections::BTreeMap<String, i64> = Default::default();
        for (kind, _, _) in &self.model.events {
            *expected.entry((*kind).to_owned()).or_default() += 1;
        }
        let got: std::collections::BTreeMap<String, i64> = rows.into_iter().collect();
        if expected != got {
            let _ = writeln!(differences, "  events: model {expected:?}, service {got:?}");
        }
        if differences.is_empty() {
            Ok(())
        } else {
            Err(format!("after the step, on {today}:\n{differences}"))
        }
    }
}

fn show(fen: Fen) -> String {
    Decimal::new(fen, 2).to_string()
}

/// Runs `case` on `app`: Err(the failing step's index and what differed).
async fn run_case(app: &TestApp, case: &Case) -> Result<(), (usize, String)> {
    let mut run = Run::new(app, case.start)
        .await
        .map_err(|error| (0, error))?;
    for (index, step) in case.steps.iter().enumerate() {
        let began = Instant::now();
        run.step(*step).await.map_err(|error| (index, error))?;
        let stepped = Instant::now();
        run.compare().await.map_err(|error| (index, error))?;
        if std::env::var_os("BILLPAY_MODEL_PROFILE").is_some() {
            eprintln!(
                "{:?} {:?} compare {:?}",
                step,
                stepped - began,
                stepped.elapsed()
            );
        }
    }
    Ok(())
}

async fn stack(backend: Backend, test: &str) -> Option<TestApp> {
    let options = StackOptions {
        today: Some("2099-01-01".parse().unwrap()),
        ..StackOptions::default()
    };
    TestApp::spawn_with(backend, test, options).await
}

/// Whether `case` fails on a fresh stack.
async fn fails(backend: Backend, test: &str, case: &Case) -> Option<(usize, String)> {
    let app = stack(backend, test).await?;
    let outcome = run_case(&app, case).await.err();
    app.stop().await;
    outcome
}

/// Removes steps while the case still fails; returns the smallest failing case.
async fn shrink(backend: Backend, test: &str, mut case: Case) -> (Case, (usize, String)) {
    let mut failure = fails(backend, test, &case)
        .await
        .unwrap_or((0, "did not fail again on a fresh stack".into()));
    let mut attempts = 0;
    loop {
        let mut smaller = false;
        let mut index = case.steps.len();
        while index > 0 && attempts < 300 {
            index -= 1;
            if index >= case.steps.len() {
                continue;
            }
            let mut candidate = case.clone();
            candidate.steps.remove(index);
            candidate
                .steps
                .truncate(failure.0.min(candidate.steps.len() - 1) + 1);
            attempts += 1;
            if let Some(found) = fails(backend, test, &candidate).await {
                case = candidate;
                case.steps.truncate(found.0 + 1);
                failure = found;
                smaller = true;
            }
        }
        if !smaller || attempts >= 300 {
            return (case, failure);
        }
    }
}

/// The failing case as a test to paste into `model/regressions.rs`.
pub fn as_regression(case: &Case, failure: &(usize, String)) -> String {
    let steps = format!("{:#?}", case.steps).replace('\n', "\n    ");
    format!(
        "/// Shrunk by the model test. It failed at step {} with:\n{}\nasync fn model_regression_NAME(backend: Backend, test: &str) {{\n    replay(backend, test, \"{}\", &{}).await;\n}}\n// and add model_regression_NAME to on_both_backends! in regressions.rs",
        failure.0,
        failure
            .1
            .lines()
            .map(|line| format!("/// {line}"))
            .collect::<Vec<_>>()
            .join("\n"),
        case.start,
        steps,
    )
}

/// Replays `steps` from `start` on a fresh stack; panics with the difference.
pub async fn replay(backend: Backend, test: &str, start: &str, steps: &[Step]) {
    let Some(app) = stack(backend, test).await else {
        return;
    };
    let case = Case {
        start: start.parse().unwrap(),
        steps: steps.to_vec(),
    };
    let outcome = run_case(&app, &case).await;
    app.stop().await;
    if let Err((index, error)) = outcome {
        panic!("step {index} ({:?}): {error}", case.steps[index]);
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(default)
}

/// The seeded run: BILLPAY_MODEL_CASES sequences of BILLPAY_MODEL_SEED.
async fn model_sequences_agree_with_the_spec(backend: Backend, test: &str) {
    let default_cases = match backend {
        Backend::Sqlite => DEFAULT_CASES.0,
        Backend::Postgres => DEFAULT_CASES.1,
    };
    let cases = env_number("BILLPAY_MODEL_CASES", default_cases as u64) as usize;
    let seed = env_number("BILLPAY_MODEL_SEED", DEFAULT_SEED);
    let first = env_number("BILLPAY_MODEL_FIRST", 0) as usize;
    let began = Instant::now();
    let mut steps = 0;
    let mut done = 0;
    while done < cases {
        let Some(app) = stack(backend, test).await else {
            return;
        };
        for offset in 0..CASES_PER_STACK.min(cases - done) {
            let index = first + done + offset;
            let slot = index % CASES_PER_STACK;
            // Each sequence of a stack lives on its own span of dates, the later ones
            // earlier, so a sequence's closes never reach another's bills.
            let start = NaiveDate::from_ymd_opt(2099, 6, 15).unwrap()
                - Days::new(slot as u64 * 1200)
                - Days::new(Rng(seed.wrapping_add(index as u64)).below(400));
            let case = generate(seed, index, start);
            steps += case.steps.len();
            if let Err(failure) = run_case(&app, &case).await {
                app.stop().await;
                eprintln!(
                    "model: sequence {index} of seed {seed} failed at step {}: {}\nshrinking…",
                    failure.0, failure.1
                );
                let (small, failure) = shrink(backend, test, case).await;
                panic!(
                    "the model and the service disagree (seed {seed}, sequence {index}); shrunk to {} steps:\n\n{}\n",
                    small.steps.len(),
                    as_regression(&small, &failure)
                );
            }
        }
        done += CASES_PER_STACK.min(cases - done);
        app.stop().await;
    }
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!(
            "model {test}: {cases} sequences ({steps} steps) of seed {seed}, from {first}, agree, in {:.1} s\n",
            began.elapsed().as_secs_f64()
        )
        .as_bytes(),
    );
}

crate::on_both_backends!(model_sequences_agree_with_the_spec);
