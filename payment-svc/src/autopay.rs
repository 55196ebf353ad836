//! The autopay run (SPEC §11): for each ACTIVE mandate, notices for the bills due
//! within three days, then the debit of what is due — re-quoted from billing, capped,
//! only after a notice, charged through the normal repayment flow under the key
//! `autopay:{mandate_id}:{due date}:{attempt}`. The calendar is `domain::autopay`;
//! who starts a debit is decided by the database (`Store::claim_attempt`), never by
//! this process, so reruns and replicas charge once.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use billpay_contracts::common::v1::{AllDue, RepaymentTarget, repayment_target::Kind};
use chrono::NaiveDate;
use prost::Message as _;
use service_kit::money::Money;
use tokio::sync::{Semaphore, watch};
use tonic::Status;

use crate::{
    domain::{
        autopay::{
            ATTEMPTS_MAX, AttemptEnd, NextAttempt, SkipReason, debit_key, debit_window,
            end_of_decline, next_attempt, notice_allows_debit, notice_window,
        },
        payment::{FingerprintKey, PaymentStatus, request_fingerprint},
    },
    flow::{PaymentFlow, encode_target, refusal_reason},
    seal::{InstrumentSeal, SealError},
    storage::{
        Attempt, AttemptClaim, AttemptOutcome, InsertOutcome, Mandate, NewPayment, Settlement,
        StorageError,
    },
};

/// The idempotency namespace of autopay's payments (no token's subject has a slash).
pub const AUTOPAY_CALLER: &str = "payment-svc/autopay";
/// ACTIVE mandates read per page, and the most pages one run reads.
const MANDATE_PAGE: u32 = 100;
const MANDATE_PAGES_MAX: usize = 10_000;
/// Pages of an account's unpaid bills read at most (100 bills a page).
const BILL_PAGES_MAX: usize = 10;
/// How long billing may take to quote.
const QUOTE_BUDGET: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AutopayError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("billing-svc: {0}")]
    Billing(#[from] Status),
    #[error("a mandate's instrument: {0}")]
    Seal(#[from] SealError),
    #[error("billing-svc answered something unreadable: {0}")]
    BadAnswer(String),
}

/// What one run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSummary {
    pub mandates: u32,
    pub notices_sent: u32,
    pub debits_started: u32,
    pub debits_succeeded: u32,
    pub debits_failed: u32,
    pub skipped: u32,
    /// Mandates whose turn failed (billing unreachable, …); the next run retries.
    pub errors: u32,
}

impl std::fmt::Display for RunSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} mandates: {} notices, {} debits started ({} succeeded, {} failed), {} skipped, {} errors",
            self.mandates,
            self.notices_sent,
            self.debits_started,
            self.debits_succeeded,
            self.debits_failed,
            self.skipped,
            self.errors
        )
    }
}

/// A test hook: the run stops once at the named point until released. Only code can
/// set it (the integration harness); no flag or environment variable reaches it.
#[derive(Debug, Clone, Default)]
pub struct Pause(Option<Arc<PauseAt>>);

#[derive(Debug)]
struct PauseAt {
    point: String,
    fired: AtomicBool,
    reached: watch::Sender<bool>,
    release: Semaphore,
}

impl Pause {
    /// Points: `before-claim` (the debit is decided, not recorded) and `after-claim`
    /// (the attempt is recorded, nothing charged yet).
    pub fn at(point: &str) -> Self {
        Self(Some(Arc::new(PauseAt {
            point: point.to_owned(),
            fired: AtomicBool::new(false),
            reached: watch::channel(false).0,
            release: Semaphore::new(0),
        })))
    }

    /// Waits until a run stands at the point.
    pub async fn reached(&self) {
        if let Some(pause) = &self.0 {
            let mut reached = pause.reached.subscribe();
            let _ = reached.wait_for(|reached| *reached).await;
        }
    }

    /// Lets the run go on.
    pub fn release(&self) {
        if let Some(pause) = &self.0 {
            pause.release.add_permits(1);
        }
    }

    async fn point(&self, name: &str) {
        if let Some(pause) = &self.0
            && pause.point == name
            && !pause.fired.swap(true, Ordering::SeqCst)
        {
            pause.reached.send_replace(true);
            if let Ok(permit) = pause.release.acquire().await {
                permit.forget();
            }
        }
    }
}

/// An unpaid bill as the run needs it.
#[derive(Debug, Clone, Copy)]
struct UnpaidBill {
    due_date: NaiveDate,
    outstanding: Money,
}

#[derive(Debug)]
pub struct Autopay {
    flow: Arc<PaymentFlow>,
    fingerprint_key: FingerprintKey,
    seal: InstrumentSeal,
    pause: Pause,
}

fn all_due() -> RepaymentTarget {
    RepaymentTarget {
        kind: Some(Kind::AllDue(AllDue {})),
    }
}

impl Autopay {
    pub fn new(
        flow: Arc<PaymentFlow>,
        fingerprint_key: FingerprintKey,
        pause: Pause,
    ) -> Result<Self, SealError> {
        let seal = InstrumentSeal::new(&fingerprint_key)?;
        Ok(Self {
            flow,
            fingerprint_key,
            seal,
            pause,
        })
    }

    pub fn store(&self) -> &crate::storage::Store {
        self.flow.store()
    }

    pub fn seal(&self) -> &InstrumentSeal {
        &self.seal
    }

    pub fn fingerprint_key(&self) -> &FingerprintKey {
        &self.fingerprint_key
    }

    /// Runs autopay for the business date `as_of`. Safe to repeat, and to run in
    /// several replicas at once.
    pub async fn run(&self, as_of: NaiveDate) -> Result<RunSummary, AutopayError> {
        let store = self.flow.store();
        let mut summary = RunSummary::default();
        // Debits that started before their mandate ended still complete and are told.
        for mandate_id in store.mandates_with_unsettled_attempts(MANDATE_PAGE).await? {
            if let Some(mandate) = store.mandate(&mandate_id).await? {
                for attempt in store.unsettled_attempts(&mandate_id).await? {
                    self.settle(&mandate, &attempt, as_of, &mut summary).await?;
                }
            }
        }
        let mut after = String::new();
        for _ in 0..MANDATE_PAGES_MAX {
            let page = store.active_mandates(&after, MANDATE_PAGE).await?;
            for mandate in &page {
                summary.mandates += 1;
                if let Err(error) = self.run_mandate(mandate, as_of, &mut summary).await {
                    summary.errors += 1;
                    tracing::warn!(mandate_id = %mandate.mandate_id, %error, "autopay: this mandate's turn failed; the next run retries");
                }
            }
            match page.last() {
                Some(last) if page.len() == MANDATE_PAGE as usize => {
                    after.clone_from(&last.mandate_id);
                }
                _ => break,
            }
        }
        tracing::info!(%as_of, %summary, "autopay run");
        Ok(summary)
    }

    async fn run_mandate(
        &self,
        mandate: &Mandate,
        as_of: NaiveDate,
        summary: &mut RunSummary,
    ) -> Result<(), AutopayError> {
        let bills = self.unpaid_bills(&mandate.account_id).await?;
        let mut due_dates: BTreeMap<NaiveDate, ()> = BTreeMap::new();
        for bill in &bills {
            due_dates.insert(bill.due_date, ());
        }
        for due_date in due_dates.keys().copied() {
            if notice_window(due_date, as_of) {
                let amount = owed_through(&bills, due_date)?;
                if self
                    .flow
                    .store()
                    .send_notice(mandate, due_date, as_of, amount)
                    .await?
                {
                    summary.notices_sent += 1;
                }
            }
        }
        // At most one debit per mandate and run: it pays everything due (all_due).
        for due_date in due_dates.keys().copied() {
            if debit_window(due_date, as_of)
                && self.debit(mandate, due_date, as_of, summary).await?
            {
                break;
            }
        }
        Ok(())
    }

    /// Tries `due_date`'s debit; true when a charge was made or resumed.
    async fn debit(
        &self,
        mandate: &Mandate,
        due_date: NaiveDate,
        as_of: NaiveDate,
        summary: &mut RunSummary,
    ) -> Result<bool, AutopayError> {
        let store = self.flow.store();
        let attempts = store.attempts(&mandate.mandate_id, due_date).await?;
        // An attempt of today recorded without its payment (the process stopped in
        // between) is resumed: the payment key lets only one process store it.
        let resume = attempts
            .iter()
            .find(|attempt| attempt.outcome.is_none() && attempt.run_date == as_of);
        let next = match resume {
            Some(attempt) => {
                if store
                    .payment_by_key(AUTOPAY_CALLER, &attempt.idempotency_key)
                    .await?
                    .is_some()
                {
                    return Ok(false);
                }
                None
            }
            None => {
                let ends: Vec<AttemptEnd> = attempts.iter().map(attempt_end).collect();
                let tried_today = attempts.iter().any(|attempt| attempt.run_date == as_of);
                match next_attempt(&ends, tried_today) {
                    NextAttempt::Try(number) => Some(number),
                    NextAttempt::Nothing => return Ok(false),
                }
            }
        };
        let noticed = store
            .notice(&mandate.mandate_id, due_date)
            .await?
            .is_some_and(|notice| notice_allows_debit(notice.notice_date, due_date));
        if !noticed {
            if store
                .record_skip(mandate, due_date, SkipReason::NoNotice, None)
                .await?
            {
                summary.skipped += 1;
            }
            return Ok(false);
        }
        let Some(amount) = self.quote(&mandate.account_id).await? else {
            // Nothing due: paid by hand (or its plan cancelled).
            return Ok(false);
        };
        if amount.amount() > mandate.max_amount_per_debit.amount() {
            if store
                .record_skip(mandate, due_date, SkipReason::OverCap, Some(amount))
                .await?
            {
                summary.skipped += 1;
            }
            return Ok(false);
        }
        let attempt = match (next, resume) {
            (Some(number), _) => {
                self.pause.point("before-claim").await;
                let key = debit_key(&mandate.mandate_id, due_date, number);
                match store
                    .claim_attempt(mandate, due_date, number, as_of, &key)
                    .await?
                {
                    AttemptClaim::Claimed(attempt) => attempt,
                    AttemptClaim::Taken | AttemptClaim::MandateNotActive => return Ok(false),
                }
            }
            (None, Some(attempt)) => attempt.clone(),
            (None, None) => return Ok(false),
        };
        self.pause.point("after-claim").await;
        self.charge(mandate, &attempt, amount, summary).await?;
        self.settle(mandate, &attempt, as_of, summary).await?;
        Ok(true)
    }

    /// Stores the attempt's payment and, if this call stored it, charges it and tells
    /// billing at once (the outbox does it later otherwise), as CreateRepayment does.
    async fn charge(
        &self,
        mandate: &Mandate,
        attempt: &Attempt,
        amount: Money,
        summary: &mut RunSummary,
    ) -> Result<(), AutopayError> {
        let instrument = self
            .seal
            .open(&mandate.instrument_sealed, &mandate.account_id)?;
        let target = all_due();
        let fingerprint = request_fingerprint(
            &self.fingerprint_key,
            &mandate.account_id,
            &target.encode_to_vec(),
            amount,
            mandate.method,
            &instrument,
        );
        let stored_target = encode_target(&target);
        let new = NewPayment {
            caller: AUTOPAY_CALLER,
            idempotency_key: &attempt.idempotency_key,
            request_fingerprint: &fingerprint,
            account_id: &mandate.account_id,
            target: &stored_target,
            amount,
            method: mandate.method,
            instrument_last4: &mandate.instrument_last4,
        };
        let store = self.flow.store();
        let InsertOutcome::Inserted(payment) = store.insert_payment(&new).await? else {
            return Ok(());
        };
        summary.debits_started += 1;
        tracing::info!(payment_id = %payment.payment_id, mandate_id = %mandate.mandate_id, key = %attempt.idempotency_key, "autopay debit");
        let succeeded = self.flow.charge(&payment, &instrument).await?;
        self.flow
            .apply_now_if_succeeded(succeeded, &payment.payment_id, None)
            .await?;
        Ok(())
    }

    /// Settles `attempt` once its payment's outcome is known (with its event, and the
    /// mandate SUSPENDED on an expired instrument). An attempt of an earlier day with
    /// no payment was never charged.
    async fn settle(
        &self,
        mandate: &Mandate,
        attempt: &Attempt,
        as_of: NaiveDate,
        summary: &mut RunSummary,
    ) -> Result<(), AutopayError> {
        let store = self.flow.store();
        let payment = store
            .payment_by_key(AUTOPAY_CALLER, &attempt.idempotency_key)
            .await?;
        let last_number = attempt.attempt >= ATTEMPTS_MAX;
        let settlement = match &payment {
            None if attempt.run_date < as_of => Settlement {
                outcome: AttemptOutcome::NotCharged,
                failure_code: None,
                payment_id: None,
                amount: None,
                last: last_number,
            },
            None => return Ok(()),
            Some(payment) => match payment.status {
                PaymentStatus::Processing => return Ok(()),
                PaymentStatus::Succeeded | PaymentStatus::Refunded => Settlement {
                    outcome: AttemptOutcome::Succeeded,
                    failure_code: None,
                    payment_id: Some(&payment.payment_id),
                    amount: Some(payment.amount),
                    last: true,
                },
                PaymentStatus::Failed => {
                    let code = payment.failure_code.as_deref().unwrap_or("DECLINED");
                    Settlement {
                        outcome: AttemptOutcome::Failed,
                        failure_code: Some(code),
                        payment_id: Some(&payment.payment_id),
                        amount: Some(payment.amount),
                        last: last_number || end_of_decline(code) == AttemptEnd::Final,
                    }
                }
            },
        };
        if store.settle_attempt(attempt, mandate, settlement).await? {
            match settlement.outcome {
                AttemptOutcome::Succeeded => summary.debits_succeeded += 1,
                AttemptOutcome::Failed | AttemptOutcome::NotCharged => summary.debits_failed += 1,
            }
        }
        Ok(())
    }

    /// What billing says the account owes now for every due bill; None when nothing.
    async fn quote(&self, account_id: &str) -> Result<Option<Money>, AutopayError> {
        let quote = match self
            .flow
            .billing()
            .quote(account_id, all_due(), None, QUOTE_BUDGET)
            .await
        {
            Ok(quote) => quote,
            Err(status) if refusal_reason(&status) == "NOTHING_TO_PAY" => return Ok(None),
            Err(status) => return Err(status.into()),
        };
        let amount = quote
            .amount
            .ok_or_else(|| AutopayError::BadAnswer("a quote without an amount".into()))?;
        let amount = Money::parse(&amount.currency_code, &amount.amount)
            .map_err(|error| AutopayError::BadAnswer(error.to_string()))?;
        Ok((!amount.is_zero()).then_some(amount))
    }

    async fn unpaid_bills(&self, account_id: &str) -> Result<Vec<UnpaidBill>, AutopayError> {
        let mut bills = Vec::new();
        let mut page_token = String::new();
        for _ in 0..BILL_PAGES_MAX {
            let page = self
                .flow
                .billing()
                .unpaid_bills(account_id, &page_token)
                .await?;
            for bill in page.bills {
                let due_date = bill
                    .due_date
                    .parse()
                    .map_err(|_| AutopayError::BadAnswer(format!("due date {}", bill.due_date)))?;
                let outstanding = bill
                    .outstanding
                    .ok_or_else(|| AutopayError::BadAnswer("a bill without outstanding".into()))?;
                let outstanding = Money::parse(&outstanding.currency_code, &outstanding.amount)
                    .map_err(|error| AutopayError::BadAnswer(error.to_string()))?;
                if !outstanding.is_zero() {
                    bills.push(UnpaidBill {
                        due_date,
                        outstanding,
                    });
                }
            }
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        Ok(bills)
    }
}

/// How an attempt counts for the next one.
fn attempt_end(attempt: &Attempt) -> AttemptEnd {
    match attempt.outcome {
        None => AttemptEnd::Open,
        Some(AttemptOutcome::Succeeded) => AttemptEnd::Succeeded,
        Some(AttemptOutcome::NotCharged) => AttemptEnd::Retryable,
        Some(AttemptOutcome::Failed) => {
            end_of_decline(attempt.failure_code.as_deref().unwrap_or(""))
        }
    }
}

/// What the debit of `due_date` is expected to be: every unpaid bill due by then.
fn owed_through(bills: &[UnpaidBill], due_date: NaiveDate) -> Result<Money, AutopayError> {
    let mut total: Option<Money> = None;
    for bill in bills.iter().filter(|bill| bill.due_date <= due_date) {
        total = Some(match total {
            None => bill.outstanding,
            Some(sum) => sum
                .checked_add(bill.outstanding)
                .map_err(|error| AutopayError::BadAnswer(error.to_string()))?,
        });
    }
    total.ok_or_else(|| AutopayError::BadAnswer("no bill for a due date".into()))
}
