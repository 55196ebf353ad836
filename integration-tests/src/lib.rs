//! The test harness: spawns billing-svc and payment-svc in-process on free ports,
//! each on a fresh database (a temporary SQLite file, or a new PostgreSQL database
//! when `BILLPAY_TEST_POSTGRES_URL` is set), and hands out clients and tokens.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{io::Write as _, net::SocketAddr, time::Duration};

use billpay_contracts::{
    billing::v1::billing_service_client::BillingServiceClient,
    payment::v1::payment_service_client::PaymentServiceClient,
};
use service_kit::{
    auth::{DEV_JWT_SECRET, JwtKey, Role, mint},
    db::Db,
    server::ServeError,
};
use tokio::{sync::watch, task::JoinHandle};
use tonic::transport::Channel;

/// The environment variable naming the PostgreSQL server tests may create databases on.
pub const POSTGRES_URL_VAR: &str = "BILLPAY_TEST_POSTGRES_URL";

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

/// A running stack with its own databases.
pub struct TestApp {
    pub backend: Backend,
    pub billing_addr: SocketAddr,
    pub payment_addr: SocketAddr,
    /// billing-svc's database, for counting rows behind the API's back.
    pub billing_db: Db,
    billing_url: String,
    stopped: watch::Receiver<()>,
    key: JwtKey,
    stop: watch::Sender<()>,
    postgres_databases: Vec<String>,
    tasks: Vec<JoinHandle<Result<(), ServeError>>>,
    _data_dir: tempfile::TempDir,
}

impl TestApp {
    /// Spawns the stack on `backend`; `None` (and a SKIPPED line) when the backend is
    /// PostgreSQL and no server is configured.
    pub async fn spawn(backend: Backend, test: &str) -> Option<Self> {
        let data_dir = tempfile::tempdir().unwrap();
        let mut postgres_databases = Vec::new();
        let (billing_url, payment_url) = match backend {
            Backend::Sqlite => (
                format!("sqlite://{}", data_dir.path().join("billing.db").display()),
                format!("sqlite://{}", data_dir.path().join("payment.db").display()),
            ),
            Backend::Postgres => {
                let Ok(server_url) = std::env::var(POSTGRES_URL_VAR) else {
                    say_skipped(test, &format!("{POSTGRES_URL_VAR} is not set"));
                    return None;
                };
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
        let billing = billing_svc::app::Application::build(&billing_svc::config::Config::dev(
            any_port,
            billing_url.clone(),
        ))
        .await
        .unwrap();
        let payment = payment_svc::app::Application::build(&payment_svc::config::Config::dev(
            any_port,
            payment_url,
        ))
        .await
        .unwrap();
        let (billing_addr, payment_addr) = (billing.local_addr(), payment.local_addr());
        let (stop, stopped) = watch::channel(());
        let tasks = vec![
            tokio::spawn(billing.run_until_stopped(wait_for(stopped.clone()))),
            tokio::spawn(payment.run_until_stopped(wait_for(stopped.clone()))),
        ];
        Some(Self {
            backend,
            billing_addr,
            payment_addr,
            billing_db: Db::connect(&billing_url, 2).await.unwrap(),
            billing_url,
            stopped,
            key: JwtKey::new(DEV_JWT_SECRET.as_bytes()).unwrap(),
            stop,
            postgres_databases,
            tasks,
            _data_dir: data_dir,
        })
    }

    /// Starts another billing-svc on the same database, as a second replica behind a
    /// load balancer would be, and returns its address. It stops with the rest.
    pub async fn spawn_billing_replica(&mut self) -> SocketAddr {
        let config = billing_svc::config::Config::dev(
            "127.0.0.1:0".parse().unwrap(),
            self.billing_url.clone(),
        );
        let replica = billing_svc::app::Application::build(&config).await.unwrap();
        let addr = replica.local_addr();
        self.tasks.push(tokio::spawn(
            replica.run_until_stopped(wait_for(self.stopped.clone())),
        ));
        addr
    }

    pub async fn billing(&self) -> BillingServiceClient<Channel> {
        BillingServiceClient::new(connect(self.billing_addr).await)
    }

    pub async fn payment(&self) -> PaymentServiceClient<Channel> {
        PaymentServiceClient::new(connect(self.payment_addr).await)
    }

    /// A service token holding `scopes`.
    pub fn service_token(&self, scopes: &[&str]) -> String {
        mint(&self.key, "test-service", Role::Service, scopes, None, 600)
    }

    pub fn operator_token(&self, subject: &str) -> String {
        mint(&self.key, subject, Role::Operator, &[], None, 600)
    }

    pub fn customer_token(&self, account_id: &str) -> String {
        mint(
            &self.key,
            "test-customer",
            Role::Customer,
            &[],
            Some(account_id),
            600,
        )
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
        let _ = self.stop.send(());
        for task in self.tasks {
            task.await.unwrap().unwrap();
        }
        self.billing_db.pool().close().await;
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
