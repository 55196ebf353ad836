//! The HTTP listener that asynchronous providers notify (Alipay, WeChat Pay).

use std::{future::Future, net::SocketAddr, sync::Arc};

use axum::{
    Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Path, State},
    http::{HeaderMap, StatusCode},
    routing::post,
};
use service_kit::conn::{ConnectionLimits, GuardedListener, GuardedStream};
use tokio::net::TcpListener;

use crate::{
    domain::payment::PaymentMethod,
    flow::{NotificationResult, PaymentFlow},
    providers::signature::SIGNATURE_HEADER,
    storage::OutboxKind,
};

/// The largest notification body read; providers' are a few hundred bytes.
pub const NOTIFY_BODY_BYTES_MAX: usize = 64 * 1024;

/// The notify listener, bound. It faces the providers, so the outside: every
/// connection is held to [`ConnectionLimits`] (cap, idle and header-read timeout,
/// age) and bodies are capped at [`NOTIFY_BODY_BYTES_MAX`].
#[derive(Debug)]
pub struct NotifyListener {
    listener: TcpListener,
    limits: ConnectionLimits,
}

/// [`GuardedListener`] as axum serves it.
struct NotifyConnections(GuardedListener);

impl axum::serve::Listener for NotifyConnections {
    type Io = GuardedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok(accepted) => return accepted,
                Err(error) => {
                    // Out of file descriptors, most likely: wait a little, as axum does.
                    tracing::warn!(%error, "notify listener cannot accept");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

impl NotifyListener {
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        Ok(Self {
            listener: TcpListener::bind(addr).await?,
            limits: ConnectionLimits::default(),
        })
    }

    /// Holds every connection to `limits`.
    pub fn with_limits(mut self, limits: ConnectionLimits) -> Self {
        self.limits = limits;
        self
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `POST /notify/{provider}` until `shutdown`.
    pub async fn run_until_stopped(
        self,
        flow: Arc<PaymentFlow>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let router = Router::new()
            .route("/notify/{provider}", post(notified))
            .layer(DefaultBodyLimit::max(NOTIFY_BODY_BYTES_MAX))
            .with_state(flow);
        let connections = NotifyConnections(GuardedListener::new(self.listener, self.limits));
        axum::serve(connections, router)
            .with_graceful_shutdown(shutdown)
            .await
    }
}

async fn notified(
    State(flow): State<Arc<PaymentFlow>>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let Some(method) = PaymentMethod::ALL
        .into_iter()
        .find(|m| m.provider_name() == provider)
    else {
        return StatusCode::NOT_FOUND;
    };
    let signature = headers
        .get(SIGNATURE_HEADER)
        .and_then(|value| value.to_str().ok());
    match flow.on_notification(method, &body, signature).await {
        Ok(NotificationResult::Succeeded(payment_id)) => {
            // Tell billing now rather than at the next outbox pass; the provider need
            // not wait for it.
            let flow = Arc::clone(&flow);
            tokio::spawn(async move {
                if let Err(error) = flow.deliver(&payment_id, OutboxKind::Apply, None).await {
                    tracing::info!(%error, "inline apply failed; the outbox will retry");
                }
            });
            StatusCode::OK
        }
        Ok(NotificationResult::Failed | NotificationResult::Ignored) => StatusCode::OK,
        Ok(NotificationResult::BadSignature) => {
            tracing::warn!(provider, "notification with a bad signature refused");
            StatusCode::UNAUTHORIZED
        }
        Ok(NotificationResult::Malformed) => StatusCode::BAD_REQUEST,
        Ok(NotificationResult::UnknownPayment) => StatusCode::NOT_FOUND,
        Err(error) => {
            tracing::error!(%error, "cannot record a notification");
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}
