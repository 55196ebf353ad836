//! A billing-svc stand-in for payment-svc that forwards every call to the real
//! billing-svc, except ApplyRepayment while "down": then it answers UNAVAILABLE, as a
//! crashed billing-svc would. Lets a test take billing down between the quote and
//! the apply of one repayment.

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
};

use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Status, body::Body, server::NamedService, transport::Channel};
use tower::{Service, ServiceExt as _};

#[derive(Clone)]
pub struct FlakyBilling {
    channel: Channel,
    apply_down: Arc<AtomicBool>,
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
        let down = self.apply_down.load(Ordering::SeqCst)
            && request.uri().path().ends_with("/ApplyRepayment");
        let channel = self.channel.clone();
        Box::pin(async move {
            if down {
                return Ok(Status::unavailable("billing-svc is down (test)").into_http());
            }
            match channel.oneshot(request).await {
                Ok(response) => Ok(response),
                Err(error) => Ok(Status::unavailable(error.to_string()).into_http()),
            }
        })
    }
}

/// Starts the stand-in in front of billing at `billing_addr`; returns its address and
/// the switch that takes ApplyRepayment down.
pub async fn start(
    billing_addr: SocketAddr,
    stopped: tokio::sync::watch::Receiver<()>,
) -> (SocketAddr, Arc<AtomicBool>) {
    let channel = Channel::from_shared(format!("http://{billing_addr}"))
        .unwrap()
        .connect_lazy();
    let apply_down = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = FlakyBilling {
        channel,
        apply_down: Arc::clone(&apply_down),
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
    (addr, apply_down)
}
