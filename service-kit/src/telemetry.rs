//! Logging set-up and the per-RPC span.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use tower::{Layer, Service};
use tracing::{Instrument, field::Empty};
use tracing_subscriber::{EnvFilter, fmt};

/// The metadata key that carries a request id between services.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The request id of the current call, in the request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

/// Installs the global subscriber: `RUST_LOG` filters (default `info`), JSON lines when
/// `json` is set, on stderr (stdout is for what a command prints). Calling it twice is harmless (tests spawn many services).
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr);
    let _already_installed = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Counts and times every RPC ([`crate::metrics::record_rpc`]) and wraps it in one span carrying the method, the request id (taken from
/// `x-request-id` or made fresh, and echoed in the response) and fields that handlers
/// fill in (`caller`, `account_id`, `payment_id`).
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcSpanLayer;

impl<S> Layer<S> for RpcSpanLayer {
    type Service = RpcSpan<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcSpan { inner }
    }
}

#[derive(Debug, Clone)]
pub struct RpcSpan<S> {
    inner: S,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'static>>;

impl<S, RequestBody, ResponseBody> Service<http::Request<RequestBody>> for RpcSpan<S>
where
    S: Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    RequestBody: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, mut request: http::Request<RequestBody>) -> Self::Future {
        let request_id = request
            .headers()
            .get(REQUEST_ID_HEADER)
            .and_then(|value| value.to_str().ok())
            .filter(|value| !value.is_empty() && value.len() <= 128)
            .map_or_else(|| uuid::Uuid::now_v7().simple().to_string(), str::to_owned);
        let span = tracing::info_span!(
            "rpc",
            rpc = request.uri().path(),
            request_id = request_id.as_str(),
            caller = Empty,
            account_id = Empty,
            payment_id = Empty,
        );
        request
            .extensions_mut()
            .insert(RequestId(request_id.clone()));
        let clone = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, clone);
        let started = Instant::now();
        let path = request.uri().path().to_owned();
        let future = {
            let _entered = span.enter();
            ready.call(request)
        };
        Box::pin(
            async move {
                let mut response = future.await?;
                crate::metrics::record_rpc(
                    &path,
                    crate::metrics::code_label(
                        response
                            .headers()
                            .get("grpc-status")
                            .and_then(|value| value.to_str().ok()),
                    ),
                    started.elapsed(),
                );
                if let Ok(value) = http::HeaderValue::from_str(&request_id) {
                    response.headers_mut().insert(REQUEST_ID_HEADER, value);
                }
                tracing::debug!(elapsed_us = started.elapsed().as_micros() as u64, "done");
                Ok(response)
            }
            .instrument(span),
        )
    }
}
