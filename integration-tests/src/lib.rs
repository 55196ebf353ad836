//! The test harness: spawns billing-svc and payment-svc in-process on free ports,
//! each on a fresh database (a temporary SQLite file, or a new PostgreSQL database
//! when `BILLPAY_TEST_POSTGRES_URL` is set), and hands out clients and tokens.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod flaky;
pub mod processes;

use std::{io::Write as _, net::SocketAddr, sync::Arc, time::Duration};

use billpay_contracts::{
    billing::v1::billing_service_client::BillingServiceClient,
    payment::v1::payment_service_client::PaymentServiceClient,
};
use payment_svc::sim::{ProviderSim, SimConfig};
use service_kit::{
    auth::{
        APPLY_SCOPE, Audience, BILLING_AUDIENCE, PAYMENT_AUDIENCE, PAYMENT_SVC_SUBJECT, Role,
        TokenSigner,
        keys::{DevKeys, load_signer},
        mint, mint_for,
    },
    db::Db,
    server::ServeError,
};
use tokio::{sync::watch, task::JoinHandle};
use tonic::transport::Channel;

/// The environment variable naming the PostgreSQL server tests may create databases on.
pub const POSTGRES_URL_VAR: &str = "BILLPAY_TEST_POSTGRES_URL";

/// Set to `1` (as `.ci/run` does) to make a PostgreSQL case without
/// `BILLPAY_TEST_POSTGRES_URL` fail instead of skipping; `CI=true` does the same.
pub const REQUIRE_POSTGRES_VAR: &str = "BILLPAY_REQUIRE_POSTGRES";

/// Whether a PostgreSQL case must run: in CI, or when asked to explicitly.
pub fn postgres_required() -> bool {
    let set = |name: &str, value: &str| {
        std::env::var(name).is_ok_and(|actual| actual.trim().eq_ignore_ascii_case(value))
    };
    set(REQUIRE_POSTGRES_VAR, "1") || set("CI", "true")
}

/// The PostgreSQL server URL for `test`, or `None` after saying the test skipped; a
/// run that requires PostgreSQL fails here instead of skipping.
pub fn postgres_server_url(test: &str) -> Option<String> {
    let Ok(server_url) = std::env::var(POSTGRES_URL_VAR) else {
        assert!(
            !postgres_required(),
            "{test}: {POSTGRES_URL_VAR} is not set, and PostgreSQL is required \
             here ({REQUIRE_POSTGRES_VAR}=1 or CI=true): a skipped case must \
             not count as a pass"
        );
        say_skipped(test, &format!("{POSTGRES_URL_VAR} is not set"));
        return None;
    };
    Some(server_url)
}

/// Which database the stack runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Says a test skipped, past the test runner's output capture so it shows in CI.
pub fn say_skipped(test: &str, why: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// How to vary the stack for one test.
#[derive(Debug, Clone, Copy, Default)]
pub struct StackOptions {
    /// payment-svc reaches billing through [`flaky::FlakyBilling`], switched by
    /// [`TestApp::set_billing_apply_down`].
    pub flaky_billing: bool,
    /// Hold wallet notifications back this long instead of the fast default.
    pub sim_notify_delay_ms: Option<u64>,
    /// Ask providers about PROCESSING payments only after this long, instead of the
    /// fast default (1 s), for tests that look at a payment while it is PROCESSING.
    pub reconcile_after_ms: Option<u64>,
    /// billing-svc's business "today" stands on this date (moved with
    /// [`TestApp::set_today`]) instead of following the wall clock.
    pub today: Option<chrono::NaiveDate>,
    /// billing-svc and payment-svc run as child processes (see [`processes`]), which
    /// [`TestApp::kill_billing`] and [`TestApp::kill_payment`] kill with SIGKILL.
    pub processes: bool,
    /// Fail points armed in the first billing-svc child (comma-separated).
    pub billing_failpoints: &'static str,
    /// Fail points armed in the first payment-svc child (comma-separated).
    pub payment_failpoints: &'static str,
    /// Close connections idle this long (every listener), instead of the default 60 s.
    pub connection_idle_timeout_ms: Option<u64>,
    /// The first autopay run to reach this point stops there until
    /// [`TestApp::autopay_pause`] releases it (`before-claim`, `after-claim`).
    pub autopay_pause_at: Option<&'static str>,
    /// With `processes`: every service (the provider simulator too, then a child as
    /// well) logs, and exports its spans over OTLP/gRPC to a collector at this address.
    pub otlp_collector: Option<SocketAddr>,
}

impl TestApp {
    /// Starts another billing-svc on the same database with the automatic day close
    /// on, as production runs it; it stops with the rest.
    pub async fn spawn_billing_with_auto_close(&mut self) -> SocketAddr {
        let mut config = keyed_billing(&self.keys, self.billing_url.clone());
        config.auto_day_close = true;
        config.clock = self.clock.clone();
        let billing = billing_svc::app::Application::build(&config).await.unwrap();
        let addr = billing.local_addr();
        self.tasks.push(tokio::spawn(
            billing.run_until_stopped(wait_for(self.stopped.clone())),
        ));
        addr
    }
}

/// The provider simulator: a task of the test's process, or a child process.
enum Sim {
    Task(JoinHandle<anyhow::Result<()>>),
    Child(Box<processes::ServiceProcess>),
}

impl Sim {
    fn task(self) -> Option<JoinHandle<anyhow::Result<()>>> {
        match self {
            Self::Task(task) => Some(task),
            Self::Child(_) => None,
        }
    }
}

/// A running stack with its own databases.
pub struct TestApp {
    pub backend: Backend,
    pub billing_addr: SocketAddr,
    pub payment_addr: SocketAddr,
    /// billing-svc's database, for counting rows behind the API's back.
    pub billing_db: Db,
    billing_url: String,
    payment_url: String,
    billing_url_for_payment: String,
    billing_switches: Option<Arc<flaky::Switches>>,
    payment_task: Option<JoinHandle<Result<(), ServeError>>>,
    /// payment-svc's database, for counting rows behind the API's back.
    pub payment_db: Db,
    /// payment-svc's provider-notification listener.
    pub payment_notify_addr: SocketAddr,
    /// The provider simulator's address (`http://{sim_addr}/ledger`).
    pub sim_addr: SocketAddr,
    sim_task: Option<JoinHandle<anyhow::Result<()>>>,
    stopped: watch::Receiver<()>,
    /// The stack's token keys (in the data dir): the services trust `keys_file`.
    pub keys: DevKeys,
    /// The dev issuer's signing key: what `billpay token` mints with.
    key: TokenSigner,
    /// payment-svc's own signing key.
    payment_key: TokenSigner,
    stop: watch::Sender<()>,
    postgres_databases: Vec<String>,
    tasks: Vec<JoinHandle<Result<(), ServeError>>>,
    /// billing-svc's clock: the wall clock unless spawned with `today`.
    clock: billing_svc::clock::BusinessClock,
    /// Where payment-svc's autopay run stops, when spawned with `autopay_pause_at`.
    pub autopay_pause: payment_svc::autopay::Pause,
    children: Children,
    _data_dir: tempfile::TempDir,
}

/// The services' child processes and the flags each restarts with (their first
/// ports), when the stack runs them as processes.
#[derive(Default)]
struct Children {
    /// The provider simulator, when it runs as a child.
    sim: Option<processes::ServiceProcess>,
    billing: Option<processes::ServiceProcess>,
    billing_args: Vec<String>,
    payment: Option<processes::ServiceProcess>,
    payment_args: Vec<String>,
}

impl TestApp {
    /// Spawns the stack on `backend`; `None` (and a SKIPPED line) when the backend is
    /// PostgreSQL and no server is configured.
    pub async fn spawn(backend: Backend, test: &str) -> Option<Self> {
        Self::spawn_with(backend, test, StackOptions::default()).await
    }

    /// Like [`TestApp::spawn`], with `options`.
    pub async fn spawn_with(backend: Backend, test: &str, options: StackOptions) -> Option<Self> {
        let flaky_billing = options.flaky_billing;
        if std::env::var_os("BILLPAY_TEST_LOG").is_some() {
            // The services' logs, for debugging a test: BILLPAY_TEST_LOG=1 RUST_LOG=debug.
            let _ = service_kit::telemetry::init(false, "integration-tests", None);
        }
        let data_dir = tempfile::tempdir().unwrap();
        let keys = DevKeys::ensure(data_dir.path()).unwrap();
        let mut postgres_databases = Vec::new();
        let (billing_url, payment_url) = match backend {
            Backend::Sqlite => (
                format!("sqlite://{}", data_dir.path().join("billing.db").display()),
                format!("sqlite://{}", data_dir.path().join("payment.db").display()),
            ),
            Backend::Postgres => {
                let server_url = postgres_server_url(test)?;
                let (billing, payment) = (database_name("billing"), database_name("payment"));
                let urls = (
                    fresh_postgres_database(&server_url, &billing).await,
                    fresh_postgres_database(&server_url, &payment).await,
                );
                postgres_databases = vec![billing, payment];
                urls
            }
        };
        let any_port: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let sim_url = format!(
            "sqlite://{}",
            data_dir.path().join("provider-sim.db").display()
        );
        let mut sim_config = fast_sim_config(any_port, sim_url);
        if let Some(delay) = options.sim_notify_delay_ms {
            sim_config.notify_delay_ms = delay;
        }
        let (stop, stopped) = watch::channel(());
        let otlp_endpoint = options
            .otlp_collector
            .filter(|_| options.processes)
            .map(|addr| format!("http://{addr}"));
        let (sim_addr, sim) = if let Some(endpoint) = &otlp_endpoint {
            sim_config.otlp_endpoint = Some(endpoint.clone());
            let child =
                processes::ServiceProcess::start("sim", &processes::sim_args(&sim_config), "")
                    .await;
            (child.grpc_addr, Sim::Child(Box::new(child)))
        } else {
            let sim = ProviderSim::build(&sim_config).await.unwrap();
            let addr = sim.local_addr();
            let task = tokio::spawn(sim.run_until_stopped(wait_for(stopped.clone())));
            (addr, Sim::Task(task))
        };
        if options.processes {
            return Some(
                Self::spawn_processes(
                    backend,
                    options,
                    (billing_url, payment_url),
                    (sim_addr, sim),
                    (stop, stopped),
                    (data_dir, postgres_databases),
                )
                .await,
            );
        }
        let clock = options
            .today
            .map(billing_svc::clock::BusinessClock::fixed)
            .unwrap_or_default();
        let mut config = keyed_billing(&keys, billing_url.clone());
        config.clock = clock.clone();
        if let Some(idle) = options.connection_idle_timeout_ms {
            set_idle_timeout(&mut config.common, idle);
        }
        let billing = billing_svc::app::Application::build(&config).await.unwrap();
        let billing_addr = billing.local_addr();
        let (billing_for_payment, billing_switches) = if flaky_billing {
            let (addr, switch) = flaky::start(billing_addr, stopped.clone()).await;
            (addr, Some(switch))
        } else {
            (billing_addr, None)
        };
        let billing_url_for_payment = format!("http://{billing_for_payment}");
        let mut payment_config = keyed_payment(
            &keys,
            fast_payment_config(
                payment_url.clone(),
                billing_url_for_payment.clone(),
                sim_addr,
            ),
        );
        if let Some(after) = options.reconcile_after_ms {
            payment_config.reconcile_after_ms = after;
        }
        let autopay_pause = options
            .autopay_pause_at
            .map(payment_svc::autopay::Pause::at)
            .unwrap_or_default();
        payment_config.autopay_pause = autopay_pause.clone();
        if let Some(idle) = options.connection_idle_timeout_ms {
            set_idle_timeout(&mut payment_config.common, idle);
        }
        let payment = payment_svc::app::Application::build(&payment_config)
            .await
            .unwrap();
        let payment_addr = payment.local_addr();
        let payment_notify_addr = payment.notify_addr();
        let payment_url_for_counts = payment_url.clone();
        let tasks = vec![tokio::spawn(
            billing.run_until_stopped(wait_for(stopped.clone())),
        )];
        let payment_task = tokio::spawn(payment.run_until_stopped(wait_for(stopped.clone())));
        Some(Self {
            backend,
            billing_addr,
            payment_addr,
            billing_db: Db::connect(&billing_url, 2).await.unwrap(),
            billing_url,
            payment_url,
            billing_url_for_payment,
            billing_switches,
            payment_task: Some(payment_task),
            payment_notify_addr,
            payment_db: Db::connect(&payment_url_for_counts, 2).await.unwrap(),
            sim_addr,
            sim_task: sim.task(),
            stopped,
            key: load_signer(&keys.dev_signing_key).unwrap(),
            payment_key: load_signer(&keys.payment_signing_key).unwrap(),
            keys,
            stop,
            postgres_databases,
            tasks,
            clock,
            autopay_pause,
            children: Children::default(),
            _data_dir: data_dir,
        })
    }

    /// The stack with billing-svc and payment-svc as child processes.
    async fn spawn_processes(
        backend: Backend,
        options: StackOptions,
        (billing_url, payment_url): (String, String),
        (sim_addr, sim): (SocketAddr, Sim),
        (stop, stopped): (watch::Sender<()>, watch::Receiver<()>),
        (data_dir, postgres_databases): (tempfile::TempDir, Vec<String>),
    ) -> Self {
        assert!(!options.flaky_billing, "no flaky billing with processes");
        assert!(options.today.is_none(), "no fixed today with processes");
        let keys = DevKeys::ensure(data_dir.path()).unwrap();
        let any_port: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let (sim_task, sim_child) = match sim {
            Sim::Task(task) => (Some(task), None),
            Sim::Child(child) => (None, Some(*child)),
        };
        let traced = |mut args: Vec<String>| {
            if let Some(addr) = options.otlp_collector {
                args.extend(["--otlp-endpoint".to_owned(), format!("http://{addr}")]);
            }
            args
        };
        let mut billing_args = traced(processes::billing_args(&keys, &billing_url, any_port));
        if !options.billing_failpoints.is_empty() {
            // A fail point stops the thread that reaches it; with one account closing
            // at a time, a day close stops there as a whole.
            billing_args.extend(["--day-close-parallelism".to_owned(), "1".to_owned()]);
        }
        let billing =
            processes::ServiceProcess::start("billing", &billing_args, options.billing_failpoints)
                .await;
        let billing_addr = billing.grpc_addr;
        let billing_url_for_payment = format!("http://{billing_addr}");
        let payment = processes::ServiceProcess::start(
            "payment",
            &traced(processes::payment_args(
                &keys,
                &payment_url,
                any_port,
                any_port,
                &billing_url_for_payment,
                sim_addr,
            )),
            options.payment_failpoints,
        )
        .await;
        let (payment_addr, payment_notify_addr) = (payment.grpc_addr, payment.notify_addr.unwrap());
        let children = Children {
            sim: sim_child,
            billing: Some(billing),
            billing_args: traced(processes::billing_args(&keys, &billing_url, billing_addr)),
            payment: Some(payment),
            payment_args: traced(processes::payment_args(
                &keys,
                &payment_url,
                payment_addr,
                payment_notify_addr,
                &billing_url_for_payment,
                sim_addr,
            )),
        };
        Self {
            backend,
            billing_addr,
            payment_addr,
            billing_db: Db::connect(&billing_url, 2).await.unwrap(),
            payment_db: Db::connect(&payment_url, 2).await.unwrap(),
            billing_url,
            payment_url,
            billing_url_for_payment,
            billing_switches: None,
            payment_task: None,
            payment_notify_addr,
            sim_addr,
            sim_task,
            stopped,
            key: load_signer(&keys.dev_signing_key).unwrap(),
            payment_key: load_signer(&keys.payment_signing_key).unwrap(),
            keys,
            stop,
            postgres_databases,
            tasks: Vec::new(),
            // Children follow the wall clock: a fixed "today" cannot reach them.
            clock: billing_svc::clock::BusinessClock::default(),
            autopay_pause: payment_svc::autopay::Pause::default(),
            children,
            _data_dir: data_dir,
        }
    }

    /// The log lines a child (`billing`, `payment` or `sim`) wrote so far.
    pub fn child_logs(&self, service: &str) -> Vec<String> {
        let child = match service {
            "billing" => &self.children.billing,
            "payment" => &self.children.payment,
            _ => &self.children.sim,
        };
        child
            .as_ref()
            .map(processes::ServiceProcess::stderr_lines)
            .unwrap_or_default()
    }

    /// Waits until the billing-svc child stands at fail point `name`.
    pub async fn billing_reached(&self, name: &str) {
        let child = self
            .children
            .billing
            .as_ref()
            .expect("billing runs as a child");
        child.wait_for_failpoint(name).await;
    }

    /// Waits until the payment-svc child stands at fail point `name`.
    pub async fn payment_reached(&self, name: &str) {
        let child = self
            .children
            .payment
            .as_ref()
            .expect("payment runs as a child");
        child.wait_for_failpoint(name).await;
    }

    /// SIGKILLs the billing-svc child.
    pub async fn kill_billing(&mut self) {
        let child = self
            .children
            .billing
            .take()
            .expect("billing runs as a child");
        child.kill9().await;
    }

    /// SIGKILLs the payment-svc child.
    pub async fn kill_payment(&mut self) {
        let child = self
            .children
            .payment
            .take()
            .expect("payment runs as a child");
        child.kill9().await;
    }

    /// Starts billing-svc again, on its first port and database, no fail point armed.
    pub async fn restart_billing(&mut self) {
        assert!(self.children.billing.is_none(), "kill it first");
        let child =
            processes::ServiceProcess::start("billing", &self.children.billing_args, "").await;
        assert_eq!(child.grpc_addr, self.billing_addr);
        self.children.billing = Some(child);
    }

    /// Starts payment-svc again, on its first ports and database, no fail point armed.
    pub async fn restart_payment(&mut self) {
        assert!(self.children.payment.is_none(), "kill it first");
        let child =
            processes::ServiceProcess::start("payment", &self.children.payment_args, "").await;
        assert_eq!(child.grpc_addr, self.payment_addr);
        self.children.payment = Some(child);
    }

    /// Moves billing-svc's business date; only for a stack spawned with `today`.
    pub fn set_today(&self, today: chrono::NaiveDate) {
        self.clock.set(today);
    }

    /// Starts another billing-svc on the same database, as a second replica behind a
    /// load balancer would be, and returns its address. It stops with the rest.
    pub async fn spawn_billing_replica(&mut self) -> SocketAddr {
        let mut config = keyed_billing(&self.keys, self.billing_url.clone());
        config.clock = self.clock.clone();
        let replica = billing_svc::app::Application::build(&config).await.unwrap();
        let addr = replica.local_addr();
        self.tasks.push(tokio::spawn(
            replica.run_until_stopped(wait_for(self.stopped.clone())),
        ));
        addr
    }

    /// Starts another billing-svc on the same database trusting the keys in
    /// `keys_file` (as after a key rotation and restart), and returns its address.
    pub async fn spawn_billing_trusting(&mut self, keys_file: std::path::PathBuf) -> SocketAddr {
        let mut config = billing_config(self.billing_url.clone());
        config.common.jwt_keys_file = Some(keys_file);
        let replica = billing_svc::app::Application::build(&config).await.unwrap();
        let addr = replica.local_addr();
        self.tasks.push(tokio::spawn(
            replica.run_until_stopped(wait_for(self.stopped.clone())),
        ));
        addr
    }

    /// Starts another payment-svc on the same database and returns its address.
    pub async fn spawn_payment_replica(&mut self) -> SocketAddr {
        let config = keyed_payment(
            &self.keys,
            fast_payment_config(
                self.payment_url.clone(),
                self.billing_url_for_payment.clone(),
                self.sim_addr,
            ),
        );
        let replica = payment_svc::app::Application::build(&config).await.unwrap();
        let addr = replica.local_addr();
        self.tasks.push(tokio::spawn(
            replica.run_until_stopped(wait_for(self.stopped.clone())),
        ));
        addr
    }

    /// The directory holding the stack's SQLite files (`billing.db`, `payment.db`,
    /// `provider-sim.db`).
    pub fn data_dir(&self) -> &std::path::Path {
        self._data_dir.path()
    }

    /// Takes billing's ApplyRepayment down (or back up) for payment-svc; only for a
    /// stack spawned with `flaky_billing`.
    pub fn set_billing_apply_down(&self, down: bool) {
        self.billing_switches()
            .apply_down
            .store(down, std::sync::atomic::Ordering::SeqCst);
    }

    /// Makes billing's ApplyRepayment refuse for good (FAILED_PRECONDITION), or stop
    /// refusing; only for a stack spawned with `flaky_billing`.
    pub fn set_billing_apply_refused(&self, refused: bool) {
        self.billing_switches()
            .apply_refused
            .store(refused, std::sync::atomic::Ordering::SeqCst);
    }

    /// Makes billing's ApplyRepayment wait `delay_ms` first; only for a stack spawned
    /// with `flaky_billing`.
    pub fn set_billing_apply_delay_ms(&self, delay_ms: u64) {
        self.billing_switches()
            .apply_delay_ms
            .store(delay_ms, std::sync::atomic::Ordering::SeqCst);
    }

    fn billing_switches(&self) -> &flaky::Switches {
        self.billing_switches
            .as_deref()
            .expect("spawned with flaky_billing")
    }

    /// The simulator's ledger: (captured, refunded) in minor units, and its entries.
    pub async fn ledger(&self) -> (i64, i64, Vec<serde_json::Value>) {
        let body: serde_json::Value = reqwest::get(format!("http://{}/ledger", self.sim_addr))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (
            body["captured_minor"].as_i64().unwrap(),
            body["refunded_minor"].as_i64().unwrap(),
            body["entries"].as_array().cloned().unwrap_or_default(),
        )
    }

    /// billing-svc's database URL, for starting more replicas on it.
    pub fn billing_database_url(&self) -> &str {
        &self.billing_url
    }

    /// payment-svc's database URL, for starting more replicas on it.
    pub fn payment_database_url(&self) -> &str {
        &self.payment_url
    }

    /// Rows in a payment-svc table.
    pub async fn payment_rows(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(self.payment_db.pool())
            .await
            .unwrap()
    }

    /// A service token for payment-svc.
    pub fn payment_token(&self) -> String {
        self.service_token(&["payment:read", "payment:write", "payment:refund"])
    }

    pub async fn billing(&self) -> BillingServiceClient<Channel> {
        BillingServiceClient::new(connect(self.billing_addr).await)
    }

    pub async fn payment(&self) -> PaymentServiceClient<Channel> {
        PaymentServiceClient::new(connect(self.payment_addr).await)
    }

    /// A service token holding `scopes`. Billing honours `billing:apply` from
    /// payment-svc alone, so a token asking for it is signed with payment-svc's own
    /// key, as payment-svc (the tests that apply or reverse by hand stand in for it).
    pub fn service_token(&self, scopes: &[&str]) -> String {
        if scopes.contains(&APPLY_SCOPE) {
            return mint(
                &self.payment_key,
                PAYMENT_SVC_SUBJECT,
                Role::Service,
                scopes,
                None,
                600,
            );
        }
        self.service_token_as("test-service", scopes)
    }

    /// The dev issuer's signing key (what `billpay token` mints with).
    pub fn dev_signer(&self) -> &TokenSigner {
        &self.key
    }

    /// payment-svc's own signing key.
    pub fn payment_signer(&self) -> &TokenSigner {
        &self.payment_key
    }

    /// A service token for `subject` holding `scopes`: some other service. Test
    /// tokens of the dev issuer name both services as audience, so a call with the
    /// wrong scope is PERMISSION_DENIED at either (audience refusals are tested with
    /// tokens made for the purpose).
    pub fn service_token_as(&self, subject: &str, scopes: &[&str]) -> String {
        self.dev_token(subject, Role::Service, scopes, None)
    }

    /// A token of the dev issuer for both services.
    pub fn dev_token(
        &self,
        subject: &str,
        role: Role,
        scopes: &[&str],
        account_id: Option<&str>,
    ) -> String {
        let both = Audience::Many(vec![BILLING_AUDIENCE.into(), PAYMENT_AUDIENCE.into()]);
        mint_for(&self.key, both, subject, role, scopes, account_id, 600)
    }

    pub fn operator_token(&self, subject: &str) -> String {
        self.dev_token(subject, Role::Operator, &[], None)
    }

    pub fn customer_token(&self, account_id: &str) -> String {
        self.dev_token("test-customer", Role::Customer, &[], Some(account_id))
    }

    /// Rows in a billing-svc table.
    pub async fn billing_rows(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(self.billing_db.pool())
            .await
            .unwrap()
    }

    /// Stops both services and waits for them to drain; fails if either failed.
    /// PostgreSQL test databases are dropped afterwards.
    pub async fn stop(self) {
        for child in [
            self.children.billing,
            self.children.payment,
            self.children.sim,
        ]
        .into_iter()
        .flatten()
        {
            child.kill9().await;
        }
        let _ = self.stop.send(());
        for task in self.tasks {
            task.await.unwrap().unwrap();
        }
        if let Some(payment) = self.payment_task {
            payment.await.unwrap().unwrap();
        }
        if let Some(sim) = self.sim_task {
            sim.await.unwrap().unwrap();
        }
        self.billing_db.pool().close().await;
        self.payment_db.pool().close().await;
        if let (Backend::Postgres, Ok(server_url)) = (self.backend, std::env::var(POSTGRES_URL_VAR))
        {
            let admin = Db::connect(&server_url, 1).await.unwrap();
            for name in &self.postgres_databases {
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(admin.pool())
                    .await
                    .unwrap();
            }
            admin.pool().close().await;
        }
    }
}

/// billing-svc settings for tests: no automatic day close, so each test decides
/// which days are closed (RunDayClose).
pub fn billing_config(database_url: String) -> billing_svc::config::Config {
    let mut config = billing_svc::config::Config::dev("127.0.0.1:0".parse().unwrap(), database_url);
    config.auto_day_close = false;
    config
}

/// Connections idle `idle_ms` are closed; keepalive pings at half that.
fn set_idle_timeout(common: &mut service_kit::config::CommonArgs, idle_ms: u64) {
    common.connection_idle_timeout_ms = idle_ms;
    common.http2_keepalive_interval_ms = (idle_ms / 2).max(1);
}

/// `billing_config` trusting the stack's token keys.
pub fn keyed_billing(keys: &DevKeys, database_url: String) -> billing_svc::config::Config {
    let mut config = billing_config(database_url);
    config.common.jwt_keys_file = Some(keys.keys_file.clone());
    config
}

/// `config` trusting the stack's token keys, signing with payment-svc's own key.
pub fn keyed_payment(
    keys: &DevKeys,
    mut config: payment_svc::config::Config,
) -> payment_svc::config::Config {
    config.common.jwt_keys_file = Some(keys.keys_file.clone());
    config.jwt_signing_key_file = Some(keys.payment_signing_key.clone());
    config
}

/// Simulator settings for tests: quick notifications, and a "lost" reply held back
/// well past payment-svc's provider timeout.
pub fn fast_sim_config(listen_addr: SocketAddr, database_url: String) -> SimConfig {
    let mut config = SimConfig::dev(listen_addr, database_url);
    config.notify_delay_ms = 20;
    config.lost_reply_delay_ms = 3_000;
    config
}

/// payment-svc settings for tests: short provider timeout, quick reconciler and outbox.
pub fn fast_payment_config(
    database_url: String,
    billing_url: String,
    sim_addr: SocketAddr,
) -> payment_svc::config::Config {
    let any_port: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut config = payment_svc::config::Config::dev(
        any_port,
        database_url,
        billing_url,
        &format!("http://{sim_addr}"),
    );
    config.provider_timeout_ms = 500;
    config.reconcile_after_ms = 1_000;
    config.reconcile_interval_ms = 100;
    config.outbox_poll_ms = 50;
    // Each test decides which business days autopay runs (RunAutopay).
    config.auto_autopay = false;
    config
}

/// Resolves when the stack is told to stop.
async fn wait_for(mut stopped: watch::Receiver<()>) {
    let _ = stopped.changed().await;
}

/// `message` with `authorization: Bearer <token>`.
pub fn authorized<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// A channel to `addr`, connected now.
pub async fn connect(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap()
}

/// A database name no other test uses.
fn database_name(service: &str) -> String {
    format!("billpay_it_{service}_{}", uuid::Uuid::now_v7().simple())
}

/// Creates the empty database `name` on the server at `server_url` (whose URL must
/// name some database, e.g. `/postgres`) and returns the new database's URL.
async fn fresh_postgres_database(server_url: &str, name: &str) -> String {
    let admin = Db::connect(server_url, 1).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(admin.pool())
        .await
        .unwrap();
    admin.pool().close().await;
    let (base, _database) = server_url
        .split_once('?')
        .map_or(server_url, |(base, _)| base)
        .rsplit_once('/')
        .unwrap();
    format!("{base}/{name}")
}
