//! Start-up: connect, migrate, bind (gRPC and the notify listener); then serve, run
//! the outbox dispatcher and the reconciler, until told to stop.

use std::{future::Future, net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use billpay_contracts::payment::v1::payment_service_server::{PaymentServiceServer, SERVICE_NAME};
use service_kit::{server::ServeError, startup::Foundation};
use tokio::sync::watch;
use tonic::service::Routes;

use crate::{
    autopay::Autopay,
    billing::BillingClient,
    config::Config,
    domain::payment::FingerprintKey,
    flow::PaymentFlow,
    grpc::{PaymentApi, RPC_RULES},
    jobs::{self, JobTimings},
    notify::NotifyListener,
    providers::Providers,
    storage::{MIGRATIONS, Store},
};

/// The largest request payment-svc decodes.
const REQUEST_BYTES_MAX: usize = 1024 * 1024;

/// payment-svc, built and bound, not yet serving.
#[derive(Debug)]
pub struct Application {
    foundation: Foundation,
    notify: NotifyListener,
    notify_addr: SocketAddr,
    flow: Arc<PaymentFlow>,
    fingerprint_key: FingerprintKey,
    autopay: Arc<Autopay>,
    auto_autopay: Option<chrono::FixedOffset>,
    timings: JobTimings,
}

impl Application {
    /// Validates `config`, connects and migrates the database, binds both ports.
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        let [bank_card, alipay, wechat_pay] = config.providers()?;
        let timings = config.job_timings()?;
        let fingerprint_key = config.fingerprint_key()?;
        let billing_signer = config.billing_token_signer()?;
        let providers =
            Providers::new(&bank_card, &alipay, &wechat_pay, config.provider_timeout()?)
                .context("payment-svc: cannot build the provider clients")?;
        let foundation = Foundation::build(
            "payment-svc",
            &config.common,
            &config.database_url,
            &MIGRATIONS,
            config.listen_addr,
        )
        .await?;
        let billing =
            BillingClient::with_tls(&config.billing_url, billing_signer, config.billing_tls()?)
                .with_context(|| format!("payment-svc: bad billing URL {}", config.billing_url))?;
        let notify = NotifyListener::bind(config.notify_listen_addr)
            .await
            .with_context(|| {
                format!(
                    "payment-svc: cannot listen on {}",
                    config.notify_listen_addr
                )
            })?
            .with_limits(config.common.connection_limits()?);
        let notify_addr = notify.local_addr()?;
        let notify_base_url = config
            .notify_base_url
            .clone()
            .unwrap_or_else(|| format!("http://{notify_addr}"));
        let flow = PaymentFlow::new(
            Store::new(foundation.db.clone()),
            providers,
            billing,
            notify_base_url,
        );
        let flow = Arc::new(flow);
        let autopay = Autopay::new(
            Arc::clone(&flow),
            fingerprint_key.clone(),
            config.autopay_pause.clone(),
        )
        .context("payment-svc: cannot derive the instrument sealing key")?;
        Ok(Self {
            foundation,
            notify,
            notify_addr,
            flow,
            fingerprint_key,
            autopay: Arc::new(autopay),
            auto_autopay: config.auto_autopay.then_some(config.business_utc_offset),
            timings,
        })
    }

    /// The bound gRPC address (the real port when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.foundation.local_addr()
    }

    /// The bound notify listener address.
    pub fn notify_addr(&self) -> SocketAddr {
        self.notify_addr
    }

    /// Serves and runs the jobs until `shutdown` resolves; then drains and stops them.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        tracing::info!(addr = %self.local_addr(), notify = %self.notify_addr, "payment-svc serving");
        let (stop, stopped) = watch::channel(());
        let until_stopped = |mut stopped: watch::Receiver<()>| async move {
            let _ = stopped.changed().await;
        };
        let outbox = tokio::spawn(jobs::run_outbox(
            Arc::clone(&self.flow),
            self.timings,
            stopped.clone(),
        ));
        let reconciler = tokio::spawn(jobs::run_reconciler(
            Arc::clone(&self.flow),
            self.timings,
            stopped.clone(),
        ));
        let mut background = vec![outbox, reconciler];
        if let Some(offset) = self.auto_autopay {
            background.push(tokio::spawn(jobs::run_autopay(
                Arc::clone(&self.autopay),
                offset,
                stopped.clone(),
            )));
        }
        let notify = tokio::spawn(
            self.notify
                .run_until_stopped(Arc::clone(&self.flow), until_stopped(stopped.clone())),
        );
        let mut routes = Routes::builder();
        routes.add_service(
            PaymentServiceServer::new(PaymentApi::new(
                Arc::clone(&self.flow),
                self.fingerprint_key.clone(),
                Arc::clone(&self.autopay),
            ))
            .max_decoding_message_size(REQUEST_BYTES_MAX),
        );
        let served = self
            .foundation
            .run_until_stopped(routes, &[SERVICE_NAME], RPC_RULES, shutdown)
            .await;
        let _ = stop.send(());
        for job in background {
            if let Err(error) = job.await {
                tracing::error!(%error, "a background job failed");
            }
        }
        match notify.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "the notify listener failed"),
            Err(error) => tracing::error!(%error, "the notify listener task failed"),
        }
        served
    }
}
