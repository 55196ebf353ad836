//! The stack a bench run measures: provider-sim, billing-svc, payment-svc and a no-op
//! echo server (the transport ceiling), all in this process on free loopback ports,
//! on fresh SQLite files or fresh PostgreSQL databases that are dropped afterwards.

use std::net::SocketAddr;

use anyhow::Context as _;
use payment_svc::sim::{ProviderSim, SimConfig};
use service_kit::{
    auth::{
        AuthLayer, TokenVerifier,
        keys::{DevKeys, load_signer},
    },
    config::CommonArgs,
    db::Db,
    server::{GrpcServer, ServeError},
};
use tokio::{sync::watch, task::JoinHandle};
use tonic::service::RoutesBuilder;

/// Where the services keep their data.
#[derive(Debug, Clone)]
pub enum Backend {
    /// Fresh SQLite files in a temporary directory.
    Sqlite,
    /// Fresh databases on the PostgreSQL server at this URL (which names some
    /// database the bench may connect to, e.g. `/postgres`).
    Postgres(String),
}

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }
}

/// A running stack.
pub struct Stack {
    pub billing_addr: SocketAddr,
    /// A second billing-svc on the same database: the day close runs on both.
    pub billing_replica_addr: SocketAddr,
    pub payment_addr: SocketAddr,
    pub echo_addr: SocketAddr,
    /// billing-svc's database URL, for bulk seeding.
    pub billing_url: String,
    /// Signs the bench's tokens as the dev issuer the services trust.
    pub signer: service_kit::auth::TokenSigner,
    stop: watch::Sender<()>,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
    dropped_databases: Option<(String, Vec<String>)>,
    _data_dir: tempfile::TempDir,
}

impl Stack {
    /// Starts everything on `backend` and returns when every port is bound.
    pub async fn start(backend: &Backend) -> anyhow::Result<Self> {
        let data_dir = tempfile::tempdir().context("bench: cannot make a temporary directory")?;
        let sqlite_url = |file: &str| format!("sqlite://{}", data_dir.path().join(file).display());
        let (billing_url, payment_url, dropped_databases) = match backend {
            Backend::Sqlite => (sqlite_url("billing.db"), sqlite_url("payment.db"), None),
            Backend::Postgres(server_url) => {
                let suffix = uuid::Uuid::now_v7().simple().to_string();
                let names = vec![
                    format!("billpay_bench_billing_{suffix}"),
                    format!("billpay_bench_payment_{suffix}"),
                ];
                let billing = create_database(server_url, &names[0]).await?;
                let payment = create_database(server_url, &names[1]).await?;
                (billing, payment, Some((server_url.clone(), names)))
            }
        };
        // Dev token keys, as `up` makes them: the services trust the public halves.
        let keys = DevKeys::ensure(data_dir.path()).context("bench: cannot make token keys")?;
        let signer = load_signer(&keys.dev_signing_key).context("bench: the dev signing key")?;
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        let sim =
            ProviderSim::build(&SimConfig::dev(any_port, sqlite_url("provider-sim.db"))).await?;
        let mut billing_config = billing_svc::config::Config::dev(any_port, billing_url.clone());
        // Day closes happen when the bench asks, never in the middle of a measurement.
        billing_config.auto_day_close = false;
        billing_config.common.jwt_keys_file = Some(keys.keys_file.clone());
        let billing = billing_svc::app::Application::build(&billing_config).await?;
        let billing_addr = billing.local_addr();
        let billing_replica = billing_svc::app::Application::build(&billing_config).await?;
        let billing_replica_addr = billing_replica.local_addr();
        let mut payment_config = payment_svc::config::Config::dev(
            any_port,
            payment_url,
            format!("http://{billing_addr}"),
            &format!("http://{}", sim.local_addr()),
        );
        payment_config.common.jwt_keys_file = Some(keys.keys_file.clone());
        payment_config.jwt_signing_key_file = Some(keys.payment_signing_key.clone());
        let payment = payment_svc::app::Application::build(&payment_config).await?;
        let payment_addr = payment.local_addr();
        let echo = GrpcServer::bind(any_port).await?;
        let echo_addr = echo.local_addr();

        let (stop, stopped) = watch::channel(());
        let until = |mut stopped: watch::Receiver<()>| async move {
            let _ = stopped.changed().await;
        };
        let served = |result: Result<(), ServeError>| result.map_err(anyhow::Error::from);
        let limits = CommonArgs::dev().limits()?;
        let echo_task = echo.run_until_stopped(
            RoutesBuilder::default(),
            &[],
            limits,
            // Only health is served: a public path, so no key is ever needed.
            AuthLayer::new(TokenVerifier::new("echo", Default::default()), &[]),
            until(stopped.clone()),
        );
        let tasks = vec![
            tokio::spawn(sim.run_until_stopped(until(stopped.clone()))),
            tokio::spawn({
                let stopped = stop.subscribe();
                async move { served(billing.run_until_stopped(until(stopped)).await) }
            }),
            tokio::spawn({
                let stopped = stop.subscribe();
                async move { served(billing_replica.run_until_stopped(until(stopped)).await) }
            }),
            tokio::spawn({
                let stopped = stop.subscribe();
                async move { served(payment.run_until_stopped(until(stopped)).await) }
            }),
            tokio::spawn(async move { served(echo_task.await) }),
        ];
        Ok(Self {
            billing_addr,
            billing_replica_addr,
            payment_addr,
            echo_addr,
            billing_url,
            signer,
            stop,
            tasks,
            dropped_databases,
            _data_dir: data_dir,
        })
    }

    /// Stops every service, waits for them, and drops the PostgreSQL databases.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        for task in self.tasks {
            task.await??;
        }
        if let Some((server_url, names)) = self.dropped_databases {
            let admin = Db::connect(&server_url, 1).await?;
            for name in names {
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(admin.pool())
                    .await
                    .with_context(|| format!("bench: cannot drop database {name}"))?;
            }
            admin.pool().close().await;
        }
        Ok(())
    }
}

/// Creates database `name` on `server_url`'s server and returns its URL.
pub async fn create_database(server_url: &str, name: &str) -> anyhow::Result<String> {
    let admin = Db::connect(server_url, 1).await.with_context(|| {
        format!(
            "bench: cannot reach PostgreSQL at {}",
            service_kit::startup::redact(server_url)
        )
    })?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(admin.pool())
        .await
        .with_context(|| format!("bench: cannot create database {name}"))?;
    admin.pool().close().await;
    let base = server_url
        .split_once('?')
        .map_or(server_url, |(base, _)| base);
    let (server, _database) = base
        .rsplit_once('/')
        .context("bench: the PostgreSQL URL must name a database, e.g. /postgres")?;
    Ok(format!("{server}/{name}"))
}
