//! A billing-svc stand-in for payment-svc that forwards every call to the real
//! billing-svc, except ApplyRepayment while "down" (it answers UNAVAILABLE, as a
//! crashed billing-svc would), "refused" (FAILED_PRECONDITION, as a billing that
//! refuses the request for good), or "slow" (it waits that long first). Lets a test
//! change billing between the quote and the apply of one repayment.

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Status, body::Body, server::NamedService, transport::Channel};
use tower::{Service, ServiceExt as _};

#[derive(Clone)]
pub struct FlakyBilling {
    channel: Channel,
    switches: Arc<Switches>,
}

/// How ApplyRepayment misbehaves; all off at first.
#[derive(Debug, Default)]
pub struct Switches {
    pub apply_down: AtomicBool,
    pub apply_refused: AtomicBool,
    pub apply_delay_ms: AtomicU64,
}

impl NamedService for FlakyBilling {
    const NAME: &'static str = "billing.v1.BillingService";
}

impl Service<http::Request<Body>> for FlakyBilling {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _context: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let apply = request.uri().path().ends_with("/ApplyRepayment");
        let switches = &self.switches;
        let down = apply && switches.apply_down.load(Ordering::SeqCst);
        let refused = apply && switches.apply_refused.load(Ordering::SeqCst);
        let delay = if apply {
            switches.apply_delay_ms.load(Ordering::SeqCst)
        } else {
            0
        };
        let channel = self.channel.clone();
        Box::pin(async move {
            if down {
                return Ok(Status::unavailable("billing-svc is down (test)").into_http());
            }
            if refused {
                return Ok(
                    Status::failed_precondition("billing-svc refuses this (test)").into_http(),
                );
            }
            tokio::time::sleep(Duration::from_millis(delay)).await;
            match channel.oneshot(request).await {
                Ok(response) => Ok(response),
                Err(error) => Ok(Status::unavailable(error.to_string()).into_http()),
            }
        })
    }
}

/// Starts the stand-in in front of billing at `billing_addr`; returns its address and
/// the switches that change ApplyRepayment.
pub async fn start(
    billing_addr: SocketAddr,
    stopped: tokio::sync::watch::Receiver<()>,
) -> (SocketAddr, Arc<Switches>) {
    let channel = Channel::from_shared(format!("http://{billing_addr}"))
        .unwrap()
        .connect_lazy();
    let switches = Arc::new(Switches::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = FlakyBilling {
        channel,
        switches: Arc::clone(&switches),
    };
    tokio::spawn(async move {
        let mut stopped = stopped;
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                let _ = stopped.changed().await;
            })
            .await
    });
    (addr, switches)
}
