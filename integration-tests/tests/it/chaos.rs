//! The chaos run (SPEC §8, issue 9): two replicas of each service on PostgreSQL as
//! separate processes plus the provider simulator; many repayments over every method
//! with the fault instruments (0119 lost reply, 0341 provider error, 0777 duplicate
//! and stale notifications), the same idempotency key from several tasks at once,
//! refunds, and each service SIGKILLed several times mid-run and started again.
//! After quiet it prints and asserts R1 (both figures), R2, R3 and that every
//! payment is terminal.
//!
//! Ignored by default (CI runs it with `--ignored`):
//! `cargo test -p integration-tests --test it chaos:: -- --ignored --nocapture`.
//! `BILLPAY_CHAOS_REPAYMENTS` (default 600) sizes a longer run; the kills (one per
//! 40 repayments, at least 8, rotating over the four processes) are spread evenly
//! over the run by progress.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use billpay_contracts::{
    common::v1::{Money, RepaymentTarget, repayment_target::Kind},
    payment::v1::{
        GetPaymentRequest, Payment, PaymentMethod, PaymentStatus, RefundPaymentRequest,
        payment_service_client::PaymentServiceClient,
    },
};
use chrono::Months;
use integration_tests::{Backend, StackOptions, TestApp, authorized, processes};
use tokio::time::Instant;
use tonic::{Code, transport::Channel};

use crate::support::{business_today, new_plan, open_account, repayment};

/// Repayments in a run unless `BILLPAY_CHAOS_REPAYMENTS` says otherwise.
const DEFAULT_REPAYMENTS: usize = 600;
/// Tasks making repayments at once.
const WORKERS: usize = 8;
/// Accounts the repayments are spread over.
const ACCOUNTS: usize = 12;
/// How long one client keeps retrying one request across replicas.
const CLIENT_PATIENCE: Duration = Duration::from_secs(90);
/// How long the stack may take to become quiet after the last repayment.
const QUIET_DEADLINE: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the chaos run: minutes, PostgreSQL and child processes; CI runs it with --ignored"]
async fn chaos_run() {
    let repayments = std::env::var("BILLPAY_CHAOS_REPAYMENTS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(DEFAULT_REPAYMENTS);
    let options = StackOptions {
        processes: true,
        ..StackOptions::default()
    };
    let Some(mut app) = TestApp::spawn_with(Backend::Postgres, "chaos::chaos_run", options).await
    else {
        return;
    };
    let started = Instant::now();
    let mut replicas = SecondReplicas::start(&app).await;
    let accounts = open_accounts(&app).await;
    let client = Client {
        payment_addrs: [app.payment_addr, replicas.payment_addr],
        token: app.payment_token(),
    };
    let tally = Arc::new(Mutex::new(Tally::default()));

    // The workload runs on its own tasks; this task kills and restarts services,
    // spread evenly over the run by progress (so a fast machine gets them too).
    let completed = Arc::new(AtomicUsize::new(0));
    let workload = {
        let (client, tally, completed) =
            (client.clone(), Arc::clone(&tally), Arc::clone(&completed));
        tokio::spawn(run_workload(client, accounts, repayments, tally, completed))
    };
    let planned = (repayments / 40).max(8);
    let mut kills = [0_u32; 2];
    let mut turn = 0_usize;
    while !workload.is_finished() && turn < planned {
        if completed.load(Ordering::Relaxed) < (turn + 1) * repayments / (planned + 1) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        // billing #1, payment #1, billing #2, payment #2, ...
        match turn % 4 {
            0 => {
                app.kill_billing().await;
                app.restart_billing().await;
            }
            1 => {
                app.kill_payment().await;
                app.restart_payment().await;
            }
            2 => replicas.restart_billing().await,
            _ => replicas.restart_payment().await,
        }
        kills[turn % 2] += 1;
        turn += 1;
    }
    workload.await.unwrap();
    let workload_secs = started.elapsed().as_secs_f64();

    let quiet = wait_for_quiet(&app).await;
    let report = Report::gather(&app).await;
    let tally = tally.lock().unwrap().clone();
    println!(
        "chaos run: {repayments} repayments in {workload_secs:.1} s ({WORKERS} workers, {ACCOUNTS} accounts)"
    );
    println!(
        "kills (SIGKILL, then restart): billing-svc {}, payment-svc {}",
        kills[0], kills[1]
    );
    println!(
        "faults injected: lost replies (0119) {}, provider errors (0341) {}, \
         duplicate/stale notifications (0777) {}, keys sent from 3 tasks at once {}, \
         refunds asked {} (of them from 2 tasks at once {})",
        tally.lost_replies,
        tally.provider_errors,
        tally.duplicate_notifications,
        tally.concurrent_keys,
        tally.refunds_asked,
        tally.concurrent_refunds
    );
    println!(
        "client retries after a dead replica: {}; answers by code: {:?}",
        tally.retries, tally.errors
    );
    println!(
        "payments: {} stored for {} keys ({} SUCCEEDED, {} FAILED, {} REFUNDED); \
         refunds: {} REFUNDED, {} FAILED",
        report.payments,
        repayments,
        report.by_status("SUCCEEDED"),
        report.by_status("FAILED"),
        report.by_status("REFUNDED"),
        report.refunds_refunded,
        report.refunds_failed
    );
    println!(
        "quiet after {:.1} s: {}",
        started.elapsed().as_secs_f64() - workload_secs,
        if quiet { "yes" } else { "NO (deadline passed)" }
    );
    println!(
        "R1: provider net {} (captured {} - refunded {}) vs billing applied {}: {}",
        minor(report.captured - report.refunded),
        minor(report.captured),
        minor(report.refunded),
        minor(report.applied),
        verdict(report.captured - report.refunded == report.applied)
    );
    println!(
        "R2: payment ids charged more than once: {}; idempotency keys with more than one payment: {}: {}",
        report.charged_twice,
        report.keys_with_two_payments,
        verdict(report.charged_twice == 0 && report.keys_with_two_payments == 0)
    );
    println!(
        "R3: bills with a component paid above what it owes: {}: {}",
        report.overpaid_bills,
        verdict(report.overpaid_bills == 0)
    );
    println!(
        "unfinished refunds: {}; outbox rows not delivered: {} (dead letters {})",
        report.unfinished_refunds, report.undelivered, report.dead_letters
    );
    println!("payments not terminal: {}", report.by_status("PROCESSING"));

    assert_eq!(
        report.captured - report.refunded,
        report.applied,
        "R1: provider net = billing's applied money"
    );
    assert_eq!(report.charged_twice, 0, "R2: one charge per payment id");
    assert_eq!(
        report.keys_with_two_payments, 0,
        "R2: one payment per idempotency key"
    );
    assert_eq!(
        report.payments,
        i64::try_from(repayments).unwrap(),
        "every key ended with a payment"
    );
    assert_eq!(report.overpaid_bills, 0, "R3");
    assert_eq!(report.by_status("PROCESSING"), 0, "payments not terminal");
    assert_eq!(report.unfinished_refunds, 0, "refunds not finished");
    assert_eq!(report.undelivered, 0, "the outbox is empty");
    assert!(
        kills.iter().all(|&count| count >= 2),
        "each service was killed at least twice mid-run: {kills:?}"
    );
    assert!(quiet, "the stack became quiet within {QUIET_DEADLINE:?}");
    replicas.stop().await;
    app.stop().await;
}

/// The second replica of each service, as child processes on the same databases;
/// payment #2 talks to billing #2.
struct SecondReplicas {
    billing: Option<processes::ServiceProcess>,
    billing_args: Vec<String>,
    payment: Option<processes::ServiceProcess>,
    payment_args: Vec<String>,
    payment_addr: SocketAddr,
}

impl SecondReplicas {
    async fn start(app: &TestApp) -> Self {
        let any_port: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let billing_url = app.billing_database_url().to_owned();
        let payment_url = app.payment_database_url().to_owned();
        let billing = processes::ServiceProcess::start(
            "billing",
            &processes::billing_args(&app.keys, &billing_url, any_port),
            "",
        )
        .await;
        let billing_for_payment = format!("http://{}", billing.grpc_addr);
        let payment = processes::ServiceProcess::start(
            "payment",
            &processes::payment_args(
                &app.keys,
                &payment_url,
                any_port,
                any_port,
                &billing_for_payment,
                app.sim_addr,
            ),
            "",
        )
        .await;
        let payment_addr = payment.grpc_addr;
        Self {
            billing_args: processes::billing_args(&app.keys, &billing_url, billing.grpc_addr),
            payment_args: processes::payment_args(
                &app.keys,
                &payment_url,
                payment.grpc_addr,
                payment.notify_addr.unwrap(),
                &billing_for_payment,
                app.sim_addr,
            ),
            billing: Some(billing),
            payment: Some(payment),
            payment_addr,
        }
    }

    /// SIGKILL billing #2 and start it again on its port.
    async fn restart_billing(&mut self) {
        self.billing.take().unwrap().kill9().await;
        self.billing =
            Some(processes::ServiceProcess::start("billing", &self.billing_args, "").await);
    }

    /// SIGKILL payment #2 and start it again on its ports.
    async fn restart_payment(&mut self) {
        self.payment.take().unwrap().kill9().await;
        let payment = processes::ServiceProcess::start("payment", &self.payment_args, "").await;
        assert_eq!(payment.grpc_addr, self.payment_addr);
        self.payment = Some(payment);
    }

    async fn stop(self) {
        for child in [self.billing, self.payment].into_iter().flatten() {
            child.kill9().await;
        }
    }
}

/// Accounts with a 5999.00 phone over 12 terms bought three months ago: plenty
/// unpaid for small "amount" repayments.
async fn open_accounts(app: &TestApp) -> Vec<String> {
    let token = app.service_token(&["billing:write"]);
    let mut accounts = Vec::new();
    for index in 0..ACCOUNTS {
        let account_id = open_account(app, &format!("c-chaos-{index}"), "50000.00").await;
        let mut request = new_plan(&account_id, "phone", "mall-fee", 12, "5999.00");
        request.purchase_date = (business_today() - Months::new(3)).to_string();
        app.billing()
            .await
            .create_plan(authorized(request, &token))
            .await
            .unwrap();
        accounts.push(account_id);
    }
    accounts
}

/// What the clients saw and injected.
#[derive(Debug, Default, Clone)]
struct Tally {
    lost_replies: u32,
    provider_errors: u32,
    duplicate_notifications: u32,
    concurrent_keys: u32,
    refunds_asked: u32,
    concurrent_refunds: u32,
    retries: u32,
    /// Final answers that were errors, by gRPC code (a refused refund, say).
    errors: BTreeMap<String, u32>,
}

/// A client of both payment-svc replicas: a request that meets a dead replica is
/// sent again, with the same idempotency key, to the other one.
#[derive(Clone)]
struct Client {
    payment_addrs: [SocketAddr; 2],
    token: String,
}

/// Whether an error means "the replica died or is restarting": try again.
fn retryable(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
    ) || (status.code() == Code::Internal && status.message().contains("h2"))
}

impl Client {
    async fn channel(&self, replica: usize) -> Option<PaymentServiceClient<Channel>> {
        let addr = self.payment_addrs[replica % 2];
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(15))
            .connect()
            .await
            .ok()?;
        Some(PaymentServiceClient::new(channel))
    }

    /// Sends `call` to replica `first`, then alternates on retryable errors.
    async fn send<T, F, Fut>(&self, first: usize, tally: &Mutex<Tally>, call: F) -> Result<T, Code>
    where
        F: Fn(PaymentServiceClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let deadline = Instant::now() + CLIENT_PATIENCE;
        let mut replica = first;
        loop {
            let outcome = match self.channel(replica).await {
                Some(client) => call(client).await,
                None => Err(tonic::Status::unavailable("connect refused")),
            };
            match outcome {
                Ok(answer) => return Ok(answer),
                Err(status) if retryable(&status) && Instant::now() < deadline => {
                    tally.lock().unwrap().retries += 1;
                    replica += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(status) => {
                    *tally
                        .lock()
                        .unwrap()
                        .errors
                        .entry(format!("{:?}", status.code()))
                        .or_default() += 1;
                    return Err(status.code());
                }
            }
        }
    }
}

/// Method and instrument of repayment `index`: mostly successes, with every fault
/// instrument on every method that has it.
fn instrument(index: usize) -> (PaymentMethod, &'static str) {
    match index % 20 {
        0 => (PaymentMethod::BankCard, "tok_0119"),
        1 => (PaymentMethod::BankCard, "tok_0341"),
        2 => (PaymentMethod::Alipay, "payer-0777"),
        3 => (PaymentMethod::WechatPay, "payer-0777"),
        4 => (PaymentMethod::Alipay, "payer-0119"),
        5 => (PaymentMethod::WechatPay, "payer-0341"),
        6..=8 => (PaymentMethod::Alipay, "payer-8888"),
        9..=11 => (PaymentMethod::WechatPay, "payer-8888"),
        _ => (PaymentMethod::BankCard, "tok_4242"),
    }
}

async fn run_workload(
    client: Client,
    accounts: Vec<String>,
    repayments: usize,
    tally: Arc<Mutex<Tally>>,
    completed: Arc<AtomicUsize>,
) {
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..WORKERS {
        let (client, accounts, tally, completed) = (
            client.clone(),
            accounts.clone(),
            Arc::clone(&tally),
            Arc::clone(&completed),
        );
        workers.spawn(async move {
            for index in (worker..repayments).step_by(WORKERS) {
                one_repayment(&client, &accounts, index, &tally).await;
                completed.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done.unwrap();
    }
}

/// Repayment `index`: an amount between 1.00 and 50.99 on one account, sent from
/// three tasks at once for every tenth; a SUCCEEDED answer is refunded for every
/// seventh (from two tasks at once for every fourteenth).
async fn one_repayment(client: &Client, accounts: &[String], index: usize, tally: &Mutex<Tally>) {
    let (method, instrument) = instrument(index);
    {
        let mut tally = tally.lock().unwrap();
        match &instrument[instrument.len() - 4..] {
            "0119" => tally.lost_replies += 1,
            "0341" => tally.provider_errors += 1,
            "0777" => tally.duplicate_notifications += 1,
            _ => {}
        }
    }
    let amount = format!("{}.{:02}", 1 + index * 37 % 50, index * 13 % 100);
    let account_id = &accounts[index % accounts.len()];
    let request = repayment(
        &format!("chaos-{index}"),
        account_id,
        RepaymentTarget {
            kind: Some(Kind::Amount(Money::new("CNY", &amount))),
        },
        &amount,
        method,
        instrument,
    );
    let senders = if index.is_multiple_of(10) { 3 } else { 1 };
    if senders > 1 {
        tally.lock().unwrap().concurrent_keys += 1;
    }
    let answers = futures_join(senders, |sender| {
        let request = request.clone();
        async move {
            client
                .send(index + sender, tally, |mut payment| {
                    let request = authorized(request.clone(), &client.token);
                    async move {
                        payment
                            .create_repayment(request)
                            .await
                            .map(|response| response.into_inner().payment.unwrap())
                    }
                })
                .await
        }
    })
    .await;
    let ids: Vec<&str> = answers
        .iter()
        .filter_map(|answer| answer.as_ref().ok())
        .map(|payment| payment.payment_id.as_str())
        .collect();
    assert!(
        ids.windows(2).all(|pair| pair[0] == pair[1]),
        "one key, one payment: {ids:?}"
    );
    let Some(Ok(mut payment)) = answers.into_iter().next() else {
        return;
    };
    if !index.is_multiple_of(7) {
        return;
    }
    if payment.status() == PaymentStatus::Processing {
        // A wallet or a lost reply: wait (with a deadline) until it is final and
        // applied, so its refund goes through the same faults (a 0119 charge's
        // refund loses its first reply too).
        let Some(done) = until_final(client, tally, index, &payment.payment_id).await else {
            return;
        };
        payment = done;
    }
    if payment.status() != PaymentStatus::Succeeded {
        return;
    }
    let senders = if index.is_multiple_of(14) { 2 } else { 1 };
    {
        let mut tally = tally.lock().unwrap();
        tally.refunds_asked += 1;
        if senders > 1 {
            tally.concurrent_refunds += 1;
        }
    }
    let refund = RefundPaymentRequest {
        payment_id: payment.payment_id.clone(),
        idempotency_key: format!("chaos-refund-{index}"),
        reason: "chaos".into(),
    };
    futures_join(senders, |sender| {
        let refund = refund.clone();
        async move {
            let _ = client
                .send(index + sender, tally, |mut payment| {
                    let request = authorized(refund.clone(), &client.token);
                    async move { payment.refund_payment(request).await.map(|_| ()) }
                })
                .await;
        }
    })
    .await;
}

/// Polls GetPayment until the payment is final (and applied if it succeeded);
/// `None` if that takes longer than a client waits.
async fn until_final(
    client: &Client,
    tally: &Mutex<Tally>,
    index: usize,
    payment_id: &str,
) -> Option<Payment> {
    let deadline = Instant::now() + CLIENT_PATIENCE;
    while Instant::now() < deadline {
        let request = GetPaymentRequest {
            payment_id: payment_id.to_owned(),
        };
        let payment = client
            .send(index, tally, |mut payment| {
                let request = authorized(request.clone(), &client.token);
                async move {
                    payment
                        .get_payment(request)
                        .await
                        .map(|response| response.into_inner().payment.unwrap())
                }
            })
            .await
            .ok()?;
        let done = match payment.status() {
            PaymentStatus::Succeeded => payment.applied,
            PaymentStatus::Processing => false,
            _ => true,
        };
        if done {
            return Some(payment);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Runs `count` copies of `task(i)` at once and collects their answers in order.
async fn futures_join<T, F, Fut>(count: usize, task: F) -> Vec<T>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let mut pending: Vec<_> = (0..count).map(|i| Box::pin(task(i))).collect();
    // Poll every copy together: all requests are in flight at once.
    let mut results: Vec<Option<T>> = (0..count).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut ready = true;
        for (slot, future) in results.iter_mut().zip(pending.iter_mut()) {
            if slot.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(answer) => *slot = Some(answer),
                    std::task::Poll::Pending => ready = false,
                }
            }
        }
        if ready {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    results.into_iter().map(Option::unwrap).collect()
}

async fn count(db: &service_kit::db::Db, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(db.pool()).await.unwrap()
}

/// Polls until no payment is PROCESSING, no refund is unfinished and the outbox is
/// empty; false if the deadline passed first.
async fn wait_for_quiet(app: &TestApp) -> bool {
    let deadline = Instant::now() + QUIET_DEADLINE;
    loop {
        let open = count(
            &app.payment_db,
            "SELECT (SELECT COUNT(*) FROM payments WHERE status = 'PROCESSING') \
               + (SELECT COUNT(*) FROM refunds WHERE status NOT IN ('REFUNDED', 'FAILED')) \
               + (SELECT COUNT(*) FROM outbox WHERE delivered_at_micros IS NULL)",
        )
        .await;
        if open == 0 {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The figures the run ends with, read from the simulator's ledger and both databases.
struct Report {
    captured: i64,
    refunded: i64,
    applied: i64,
    payments: i64,
    statuses: BTreeMap<String, i64>,
    charged_twice: usize,
    keys_with_two_payments: i64,
    overpaid_bills: i64,
    refunds_refunded: i64,
    refunds_failed: i64,
    unfinished_refunds: i64,
    undelivered: i64,
    dead_letters: i64,
}

impl Report {
    async fn gather(app: &TestApp) -> Self {
        let (captured, refunded, entries) = app.ledger().await;
        // R1's billing figure, as the other R1 checks compute it: applied
        // repayments (allocations plus credit balance).
        let applied = count(
            &app.billing_db,
            "SELECT CAST(COALESCE(SUM(amount_minor), 0) AS BIGINT) FROM repayments \
             WHERE state = 'APPLIED'",
        )
        .await;
        let mut charges: BTreeMap<&str, usize> = BTreeMap::new();
        for entry in entries.iter().filter(|entry| entry["kind"] == "CHARGE") {
            *charges
                .entry(entry["payment_id"].as_str().unwrap())
                .or_default() += 1;
        }
        let statuses: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, COUNT(*) FROM payments GROUP BY status")
                .fetch_all(app.payment_db.pool())
                .await
                .unwrap();
        let payment_db = &app.payment_db;
        Self {
            captured,
            refunded,
            applied,
            payments: count(payment_db, "SELECT COUNT(*) FROM payments").await,
            statuses: statuses.into_iter().collect(),
            charged_twice: charges.values().filter(|&&n| n > 1).count(),
            keys_with_two_payments: count(
                payment_db,
                "SELECT COUNT(*) FROM (SELECT caller, idempotency_key FROM payments \
                 GROUP BY caller, idempotency_key HAVING COUNT(*) > 1) AS twice",
            )
            .await,
            overpaid_bills: count(
                &app.billing_db,
                "SELECT COUNT(*) FROM bills WHERE paid_principal_minor > principal_minor \
                 OR paid_interest_minor > interest_minor OR paid_fee_minor > fee_minor \
                 OR paid_penalty_minor > penalty_minor",
            )
            .await,
            refunds_refunded: count(
                payment_db,
                "SELECT COUNT(*) FROM refunds WHERE status = 'REFUNDED'",
            )
            .await,
            refunds_failed: count(
                payment_db,
                "SELECT COUNT(*) FROM refunds WHERE status = 'FAILED'",
            )
            .await,
            unfinished_refunds: count(
                payment_db,
                "SELECT COUNT(*) FROM refunds WHERE status NOT IN ('REFUNDED', 'FAILED')",
            )
            .await,
            undelivered: count(
                payment_db,
                "SELECT COUNT(*) FROM outbox WHERE delivered_at_micros IS NULL",
            )
            .await,
            dead_letters: count(
                payment_db,
                "SELECT COUNT(*) FROM outbox WHERE dead_at_micros IS NOT NULL \
                 AND delivered_at_micros IS NULL",
            )
            .await,
        }
    }

    fn by_status(&self, status: &str) -> i64 {
        self.statuses.get(status).copied().unwrap_or(0)
    }
}

/// Minor units as yuan: 123456 -> "1234.56".
fn minor(amount: i64) -> String {
    let sign = if amount < 0 { "-" } else { "" };
    let amount = amount.unsigned_abs();
    format!("{sign}{}.{:02}", amount / 100, amount % 100)
}

fn verdict(holds: bool) -> &'static str {
    if holds { "holds" } else { "VIOLATED" }
}
