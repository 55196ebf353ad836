//! The provider simulator: plays the bank-card, Alipay and WeChat Pay providers of
//! PROVIDER_PROTOCOL.md over HTTP, in-process (`billpay up`, tests) or as the
//! `provider-sim` binary.
//!
//! - `provider`, `behaviour`: pure — which provider, and what a charge does by its
//!   instrument's last four characters.
//! - `wire`: the protocol's JSON bodies (public, for tests and tools).
//! - `routes`, `charges`, `refunds`: the HTTP handlers; `routes` maps refusals to
//!   status codes in one place.
//! - `ledger`: the only SQL. Idempotency (R2) is a primary key, not an in-process lock,
//!   and the ledger is a file, so it survives restarts.
//! - `notify`: wallet notifications, retried with backoff, stopped with the server.
//!
//! The simulator keeps at most the last four characters of an instrument, in its
//! ledger and in its logs.

mod behaviour;
mod charges;
mod config;
mod ledger;
mod notify;
mod provider;
mod refunds;
mod request;
mod routes;
pub mod wire;

use std::{
    future::{Future, IntoFuture as _},
    net::SocketAddr,
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use tokio::{net::TcpListener, sync::watch};

pub use config::{
    DEV_ALIPAY_SECRET, DEV_BANK_CARD_SECRET, DEV_WECHAT_PAY_SECRET, ProviderSecrets, SimConfig,
    SimConfigError,
};

use self::{ledger::Ledger, request::SimState};

/// The simulator, built and bound, not yet serving.
#[derive(Debug)]
pub struct ProviderSim {
    listener: TcpListener,
    local_addr: SocketAddr,
    ledger: Ledger,
    client: reqwest::Client,
    secrets: ProviderSecrets,
    notify_delay: Duration,
    lost_reply_delay: Duration,
}

impl ProviderSim {
    /// Validates `config`, opens and migrates the ledger, and binds the port (port 0
    /// picks a free one). Every configuration error surfaces here.
    pub async fn build(config: &SimConfig) -> anyhow::Result<Self> {
        config.validate()?;
        let ledger = Ledger::open(&config.database_url)
            .await
            .with_context(|| format!("opening the ledger at {}", config.database_url))?;
        let client = notify::client().context("building the notification client")?;
        let listener = TcpListener::bind(config.listen_addr)
            .await
            .with_context(|| format!("binding {}", config.listen_addr))?;
        let local_addr = listener.local_addr().context("reading the bound address")?;
        Ok(Self {
            listener,
            local_addr,
            ledger,
            client,
            secrets: config.secrets.clone(),
            notify_delay: Duration::from_millis(config.notify_delay_ms),
            lost_reply_delay: Duration::from_millis(config.lost_reply_delay_ms),
        })
    }

    /// The bound address (the real port when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` resolves; then stops taking connections, cuts held
    /// replies short, finishes requests in progress, and aborts the notifications
    /// still being delivered, so nothing outlives the call.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!(addr = %self.local_addr, "provider-sim serving");
        let (stop_sender, stop) = watch::channel(false);
        let stop = Stop(stop);
        let (notifier, dispatcher) = notify::start(
            self.client,
            self.secrets.clone(),
            self.notify_delay,
            stop.clone(),
        );
        let state = Arc::new(SimState {
            ledger: self.ledger,
            secrets: self.secrets,
            notifier,
            lost_reply_delay: self.lost_reply_delay,
            stop: stop.clone(),
        });
        let mut serve_stop = stop;
        let serve = axum::serve(self.listener, routes::router(state))
            .with_graceful_shutdown(async move { serve_stop.stopped().await })
            .into_future();
        tokio::pin!(serve);
        let served = tokio::select! {
            served = &mut serve => served,
            () = shutdown => {
                tracing::info!("provider-sim stopping");
                stop_sender.send_replace(true);
                serve.await
            }
        };
        // Also when serving failed on its own: the dispatcher must not outlive us.
        stop_sender.send_replace(true);
        dispatcher
            .await
            .context("the notification dispatcher failed")?;
        served.context("serving HTTP")?;
        tracing::info!("provider-sim stopped");
        Ok(())
    }
}

/// Resolves once the simulator is stopping. Cheap to clone; every task that could
/// otherwise outlive the server waits on one.
#[derive(Debug, Clone)]
struct Stop(watch::Receiver<bool>);

impl Stop {
    async fn stopped(&mut self) {
        // An error means the sender is gone, which also means stopping.
        let _stopping = self.0.wait_for(|stopping| *stopping).await;
    }
}
