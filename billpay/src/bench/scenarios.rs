//! The calls each scenario makes, and the accounts they work on, seeded through the
//! public RPCs the way a store's backend would open them.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use billpay_contracts::{
    billing::v1::{
        CreateAccountRequest, CreatePlanRequest, GetAccountSummaryRequest, ListBillsRequest,
        QuotePlanRequest, billing_service_client::BillingServiceClient,
    },
    common::v1::{Money, RepaymentTarget, repayment_target::Kind},
    payment::v1::{
        CreateRepaymentRequest, PaymentMethod, PaymentStatus,
        payment_service_client::PaymentServiceClient,
    },
};
use service_kit::auth::{Role, TokenSigner, mint};
use tonic::{metadata::MetadataValue, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// Connections each target gets; calls are spread over them round robin, as a client
/// library with a small connection pool would.
const CONNECTIONS_PER_TARGET: usize = 4;
/// Seeded accounts may buy this much in total, enough for every CreatePlan a run makes.
const SEED_CREDIT_LIMIT: &str = "1000000.00";
/// The plan every seeded account has: bought three months ago, so bills are due.
const SEED_PRICE: &str = "5999.00";
/// What one bench repayment pays, spread oldest bill first.
const REPAYMENT_AMOUNT: &str = "1.00";
/// Accounts without a plan at the start (at most; no more than the seeded ones) that
/// the create_plan scenario buys on: plans opened on the accounts that reads read
/// would change what a read reads between one measurement and the next (10 s of
/// CreatePlan added some 50 bills to each).
const BUYER_ACCOUNTS: usize = 256;
/// Failures printed per bench run; the rest are only counted.
const FAILURES_REPORTED_MAX: u64 = 5;

/// The scenarios `billpay bench` knows, in the order it runs them.
pub const ALL: &[&str] = &[
    "echo",
    "reads",
    "quote_plan",
    "create_plan",
    "repay_card",
    "repay_alipay",
    "repay_wechat",
];

/// The account a worker's `sequence`th call works on: workers walk `accounts` from
/// different starting points so they rarely meet on one account's row.
fn pick(accounts: &[String], worker: usize, sequence: u64) -> &str {
    let count = accounts.len();
    &accounts[(worker.wrapping_mul(7919) + sequence as usize) % count.max(1)]
}

/// Runs `open` for every index of `indexes`, `concurrency` at a time, and collects
/// what each returned, in index order.
async fn in_chunks<F>(
    indexes: std::ops::Range<usize>,
    concurrency: usize,
    open: impl Fn(usize) -> F,
) -> anyhow::Result<Vec<String>>
where
    F: std::future::Future<Output = anyhow::Result<String>> + Send + 'static,
{
    let mut opened = Vec::with_capacity(indexes.len());
    for chunk_start in indexes.clone().step_by(concurrency.max(1)) {
        let chunk_end = (chunk_start + concurrency).min(indexes.end);
        let handles: Vec<_> = (chunk_start..chunk_end)
            .map(|index| tokio::spawn(open(index)))
            .collect();
        for handle in handles {
            opened.push(handle.await??);
        }
    }
    Ok(opened)
}

/// Clients and credentials shared by every call of a run.
#[derive(Clone)]
pub struct Clients {
    billing: Vec<Channel>,
    payment: Vec<Channel>,
    echo: Vec<Channel>,
    service_bearer: MetadataValue<tonic::metadata::Ascii>,
    /// Accounts with a seeded plan: what reads, quotes and repayments work on.
    pub accounts: Arc<Vec<String>>,
    /// Accounts opened without a plan, that CreatePlan buys on.
    buyers: Arc<Vec<String>>,
    /// Makes order refs and idempotency keys unique to one measurement.
    run_id: Arc<String>,
    /// Failures reported so far, so a run shows its first few and not thousands.
    reported_failures: Arc<AtomicU64>,
}

impl Clients {
    /// Connects to the stack; accounts are seeded separately.
    pub async fn connect(
        billing: SocketAddr,
        payment: SocketAddr,
        echo: SocketAddr,
        signer: &TokenSigner,
    ) -> anyhow::Result<Self> {
        let token = mint(
            signer,
            "billpay-bench",
            Role::Service,
            &[
                "billing:read",
                "billing:write",
                "billing:admin",
                "payment:write",
            ],
            None,
            24 * 3600,
        );
        Ok(Self {
            billing: channels(billing).await?,
            payment: channels(payment).await?,
            echo: channels(echo).await?,
            service_bearer: format!("Bearer {token}")
                .parse()
                .context("token is not ASCII")?,
            accounts: Arc::new(Vec::new()),
            buyers: Arc::new(Vec::new()),
            run_id: Arc::new(uuid::Uuid::now_v7().simple().to_string()),
            reported_failures: Arc::new(AtomicU64::new(0)),
        })
    }

    pub fn authorized<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", self.service_bearer.clone());
        request
    }

    pub fn billing(&self, worker: usize) -> BillingServiceClient<Channel> {
        BillingServiceClient::new(self.billing[worker % self.billing.len()].clone())
    }

    fn payment(&self, worker: usize) -> PaymentServiceClient<Channel> {
        PaymentServiceClient::new(self.payment[worker % self.payment.len()].clone())
    }

    /// The account a worker's `sequence`th read, quote or repayment works on.
    fn account(&self, worker: usize, sequence: u64) -> &str {
        pick(&self.accounts, worker, sequence)
    }

    /// The account a worker's `sequence`th CreatePlan buys on.
    fn buyer(&self, worker: usize, sequence: u64) -> &str {
        pick(&self.buyers, worker, sequence)
    }

    /// Adds `count` copies of the first seeded account and its plan straight into
    /// billing-svc's database (see `billing_svc::storage::bulk`).
    pub async fn seed_in_bulk(&mut self, billing_url: &str, count: u64) -> anyhow::Result<()> {
        let template_account = self
            .accounts
            .first()
            .context("bench: seed one account first")?
            .clone();
        let store =
            billing_svc::storage::Store::new(service_kit::db::Db::connect(billing_url, 1).await?);
        let plan_id: String = sqlx::query_scalar("SELECT plan_id FROM plans WHERE account_id = $1")
            .bind(template_account.as_str())
            .fetch_one(store.db().pool())
            .await
            .context("bench: the template account has no plan")?;
        let copies = store
            .copy_account_in_bulk(&template_account, &plan_id, 0, count)
            .await?;
        store.db().pool().close().await;
        let mut accounts = self.accounts.as_ref().clone();
        accounts.extend(copies);
        self.accounts = Arc::new(accounts);
        Ok(())
    }

    /// Opens `count` accounts, each with one back-dated plan, through the public RPCs,
    /// `concurrency` at a time.
    pub async fn seed(&mut self, count: usize, concurrency: usize) -> anyhow::Result<()> {
        let purchase_date = (chrono::Utc::now().date_naive() - chrono::Months::new(3))
            .format("%Y-%m-%d")
            .to_string();
        let accounts = in_chunks(0..count, concurrency, |index| {
            let clients = self.clone();
            let purchase_date = purchase_date.clone();
            async move { clients.open_account(index, &purchase_date).await }
        })
        .await?;
        self.accounts = Arc::new(accounts);
        let buyers = in_chunks(
            count..count + BUYER_ACCOUNTS.min(count).max(1),
            concurrency,
            |index| {
                let clients = self.clone();
                async move { clients.create_account(index).await }
            },
        )
        .await?;
        self.buyers = Arc::new(buyers);
        Ok(())
    }

    async fn create_account(&self, index: usize) -> anyhow::Result<String> {
        let account = self
            .billing(index)
            .create_account(self.authorized(CreateAccountRequest {
                customer_ref: format!("bench-{}-{index}", self.run_id),
                display_name: format!("Bench customer {index}"),
                phone: format!("139{index:08}"),
                credit_limit: Some(cny(SEED_CREDIT_LIMIT)),
            }))
            .await
            .context("bench: CreateAccount failed while seeding")?
            .into_inner()
            .account
            .context("bench: CreateAccount answered no account")?;
        Ok(account.account_id)
    }

    async fn open_account(&self, index: usize, purchase_date: &str) -> anyhow::Result<String> {
        let account_id = self.create_account(index).await?;
        self.billing(index)
            .create_plan(self.authorized(CreatePlanRequest {
                account_id: account_id.clone(),
                order_ref: format!("seed-{index}"),
                product_id: "mall-fee".to_owned(),
                term_count: 12,
                price: Some(cny(SEED_PRICE)),
                down_payment: Some(cny("0.00")),
                purchase_date: purchase_date.to_owned(),
            }))
            .await
            .context("bench: CreatePlan failed while seeding")?;
        Ok(account_id)
    }

    /// The same clients with fresh order refs and idempotency keys, for a new
    /// measurement.
    pub fn for_new_measurement(&self) -> Self {
        Self {
            run_id: Arc::new(uuid::Uuid::now_v7().simple().to_string()),
            ..self.clone()
        }
    }

    /// Prints the first few failures of a run to stderr.
    fn failed(&self, scenario: &str, what: impl std::fmt::Debug) -> bool {
        if self.reported_failures.fetch_add(1, Ordering::Relaxed) < FAILURES_REPORTED_MAX {
            eprintln!("\nbench: {scenario} failed: {what:?}");
        }
        false
    }

    /// One call of `scenario`; `true` when it answered as the scenario expects.
    pub async fn call(&self, scenario: &str, worker: usize, sequence: u64) -> bool {
        match scenario {
            "echo" => self.echo(worker).await,
            "reads" => self.read(worker, sequence).await,
            "quote_plan" => self.quote_plan(worker).await,
            "create_plan" => self.create_plan(worker, sequence).await,
            "repay_card" => self.repay(worker, sequence, PaymentMethod::BankCard).await,
            "repay_alipay" => self.repay(worker, sequence, PaymentMethod::Alipay).await,
            "repay_wechat" => self.repay(worker, sequence, PaymentMethod::WechatPay).await,
            _ => false,
        }
    }

    async fn echo(&self, worker: usize) -> bool {
        let mut client = HealthClient::new(self.echo[worker % self.echo.len()].clone());
        client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .is_ok()
    }

    /// GetAccountSummary and ListBills, half each.
    async fn read(&self, worker: usize, sequence: u64) -> bool {
        let account_id = self.account(worker, sequence).to_owned();
        let mut billing = self.billing(worker);
        if sequence.is_multiple_of(2) {
            billing
                .get_account_summary(self.authorized(GetAccountSummaryRequest { account_id }))
                .await
                .is_ok()
        } else {
            billing
                .list_bills(self.authorized(ListBillsRequest {
                    account_id,
                    statuses: Vec::new(),
                    page_size: 20,
                    page_token: String::new(),
                }))
                .await
                .is_ok()
        }
    }

    async fn quote_plan(&self, worker: usize) -> bool {
        self.billing(worker)
            .quote_plan(self.authorized(QuotePlanRequest {
                account_id: String::new(),
                product_id: "mall-fee".to_owned(),
                term_count: 12,
                price: Some(cny(SEED_PRICE)),
                down_payment: Some(cny("0.00")),
                purchase_date: String::new(),
            }))
            .await
            .is_ok()
    }

    async fn create_plan(&self, worker: usize, sequence: u64) -> bool {
        let account_id = self.buyer(worker, sequence).to_owned();
        match self
            .billing(worker)
            .create_plan(self.authorized(CreatePlanRequest {
                account_id,
                order_ref: format!("bench-{}-{worker}-{sequence}", self.run_id),
                product_id: "mall-free".to_owned(),
                term_count: 3,
                price: Some(cny("100.00")),
                down_payment: Some(cny("0.00")),
                purchase_date: String::new(),
            }))
            .await
        {
            Ok(reply) if reply.get_ref().created => true,
            Ok(_) => self.failed("create_plan", "an existing plan was returned"),
            Err(status) => self.failed("create_plan", status),
        }
    }

    /// A repayment of 1.00 by `method`: a card must come back SUCCEEDED and applied,
    /// a wallet PROCESSING (its notification completes it later).
    async fn repay(&self, worker: usize, sequence: u64, method: PaymentMethod) -> bool {
        let account_id = self.account(worker, sequence).to_owned();
        let reply = self
            .payment(worker)
            .create_repayment(self.authorized(CreateRepaymentRequest {
                idempotency_key: format!("bench-{}-{method:?}-{worker}-{sequence}", self.run_id),
                account_id,
                target: Some(RepaymentTarget {
                    kind: Some(Kind::Amount(cny(REPAYMENT_AMOUNT))),
                }),
                expected_amount: Some(cny(REPAYMENT_AMOUNT)),
                method: method.into(),
                // Ends in 4242: the simulator's plain success (0002, 0119 … would inject faults).
                instrument: format!("tok_bench_{worker:04}_4242"),
            }))
            .await;
        let payment = match reply.map(|reply| reply.into_inner().payment) {
            Ok(Some(payment)) => payment,
            Ok(None) => return self.failed("repayment", "no payment in the reply"),
            Err(status) => return self.failed("repayment", status),
        };
        let expected = match method {
            PaymentMethod::BankCard => {
                payment.status == i32::from(PaymentStatus::Succeeded) && payment.applied
            }
            _ => payment.status != i32::from(PaymentStatus::Failed),
        };
        expected
            || self.failed(
                "repayment",
                (payment.status, payment.applied, payment.failure_code),
            )
    }
}

fn cny(amount: &str) -> Money {
    Money {
        currency_code: "CNY".to_owned(),
        amount: amount.to_owned(),
    }
}

async fn channels(addr: SocketAddr) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(CONNECTIONS_PER_TARGET);
    for _ in 0..CONNECTIONS_PER_TARGET {
        channels.push(
            Channel::from_shared(format!("http://{addr}"))?
                .connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true)
                .connect()
                .await
                .with_context(|| format!("bench: cannot connect to {addr}"))?,
        );
    }
    Ok(channels)
}
