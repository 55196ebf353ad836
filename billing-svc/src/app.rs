//! Start-up: connect, migrate, bind; then serve until told to stop.

use std::{future::Future, net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use chrono::FixedOffset;

use billpay_contracts::billing::v1::billing_service_server::{BillingServiceServer, SERVICE_NAME};
use service_kit::{server::ServeError, startup::Foundation};
use tonic::service::Routes;

use crate::{
    config::Config,
    domain::product::Catalog,
    grpc::{BillingApi, RPC_RULES},
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
        let foundation = Foundation::build(
            "billing-svc",
            &config.common,
            &config.database_url,
            &MIGRATIONS,
            config.listen_addr,
        )
        .await?;
        Ok(Self {
            foundation,
            catalog: Arc::new(catalog),
            business_offset: config.business_utc_offset,
        })
    }

    /// The bound address (the real port when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.foundation.local_addr()
    }

    /// Serves until `shutdown` resolves, then drains.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        tracing::info!(addr = %self.local_addr(), "billing-svc serving");
        let api = BillingApi::new(
            Store::new(self.foundation.db.clone()),
            self.catalog,
            self.business_offset,
        );
        let mut routes = Routes::builder();
        routes.add_service(
            BillingServiceServer::new(api).max_decoding_message_size(REQUEST_BYTES_MAX),
        );
        self.foundation
            .run_until_stopped(routes, &[SERVICE_NAME], RPC_RULES, shutdown)
            .await
    }
}
