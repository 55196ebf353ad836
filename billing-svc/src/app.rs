//! Start-up: connect, migrate, bind; then serve until told to stop.

use std::{future::Future, net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use chrono::FixedOffset;

use billpay_contracts::billing::v1::billing_service_server::{BillingServiceServer, SERVICE_NAME};
use service_kit::{
    auth::{APPLY_SCOPE, OwnedScope},
    server::ServeError,
    startup::Foundation,
};
use tokio::sync::watch;
use tonic::service::Routes;

use crate::{
    clock::BusinessClock,
    config::Config,
    domain::product::Catalog,
    grpc::{BillingApi, RPC_RULES},
    jobs,
    storage::{MIGRATIONS, Store},
};

/// The largest request billing-svc decodes.
const REQUEST_BYTES_MAX: usize = 1024 * 1024;

/// billing-svc, built and bound, not yet serving.
#[derive(Debug)]
pub struct Application {
    foundation: Foundation,
    catalog: Arc<Catalog>,
    business_offset: FixedOffset,
    clock: BusinessClock,
    auto_day_close: bool,
    day_close_parallelism: usize,
    watch_streams_per_caller: usize,
}

impl Application {
    /// Validates `config`, connects and migrates the database, and binds the port.
    /// Every configuration error surfaces here, before any request.
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        let catalog = match &config.products_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| {
                    format!("billing-svc: cannot read products file {}", path.display())
                })?;
                Catalog::from_toml(&text)
            }
            None => Catalog::demo(),
        }
        .context("billing-svc: the product catalog is not valid")?;
        if config.payment_svc_subject.trim().is_empty()
            || config.payment_svc_issuer.trim().is_empty()
        {
            anyhow::bail!(
                "billing-svc: BILLING_PAYMENT_SVC_SUBJECT and BILLING_PAYMENT_SVC_ISSUER must not be empty"
            );
        }
        let mut foundation = Foundation::build(
            "billing-svc",
            &config.common,
            &config.database_url,
            &MIGRATIONS,
            config.listen_addr,
        )
        .await?;
        foundation.grant_only_to(OwnedScope {
            scope: APPLY_SCOPE,
            issuer: config.payment_svc_issuer.clone(),
            subject: config.payment_svc_subject.clone(),
        });
        Ok(Self {
            foundation,
            catalog: Arc::new(catalog),
            business_offset: config.business_utc_offset,
            clock: config.clock.clone(),
            auto_day_close: config.auto_day_close,
            day_close_parallelism: config.day_close_parallelism,
            watch_streams_per_caller: config.watch_streams_per_caller.max(1),
        })
    }

    /// The bound address (the real port when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.foundation.local_addr()
    }

    /// The metrics port, when configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.foundation.metrics_addr()
    }

    /// Serves until `shutdown` resolves, then drains.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        tracing::info!(addr = %self.local_addr(), "billing-svc serving");
        let store = Store::new(self.foundation.db.clone());
        let (stop, stopped) = watch::channel(());
        let closer = jobs::DayCloser::new(
            store.clone(),
            Arc::clone(&self.catalog),
            self.day_close_parallelism,
        );
        let auto_close = self.auto_day_close.then(|| {
            tokio::spawn(jobs::run_auto_close(
                closer.clone(),
                self.business_offset,
                self.clock.clone(),
                stopped,
            ))
        });
        let api = BillingApi::new(
            store,
            self.catalog,
            self.business_offset,
            self.clock,
            closer,
        )
        .with_streams_per_caller(self.watch_streams_per_caller);
        let mut routes = Routes::builder();
        routes.add_service(
            BillingServiceServer::new(api).max_decoding_message_size(REQUEST_BYTES_MAX),
        );
        let served = self
            .foundation
            .run_until_stopped(routes, &[SERVICE_NAME], RPC_RULES, shutdown)
            .await;
        let _ = stop.send(());
        if let Some(Err(error)) = match auto_close {
            Some(job) => Some(job.await),
            None => None,
        } {
            tracing::error!(%error, "the day close job failed");
        }
        served
    }
}
