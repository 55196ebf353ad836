//! Logging, tracing and the per-RPC span.
//!
//! Every RPC runs in one `rpc` span whose trace id comes from the caller's W3C
//! `traceparent` header (or is new), so every log line of the call carries its
//! request id and trace id. Outgoing calls (payment-svc to billing-svc and to the
//! providers) send the current span's `traceparent` ([`outgoing_trace_headers`]). Spans
//! are exported over OTLP/gRPC when an endpoint is configured.

use std::{
    collections::HashMap,
    future::Future,
    io::IsTerminal as _,
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use opentelemetry::{
    propagation::{Extractor, TextMapPropagator as _},
    trace::{TraceContextExt as _, TracerProvider as _},
};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::{
    Resource,
    propagation::TraceContextPropagator,
    trace::{Sampler, SdkTracerProvider},
};
use tower::{Layer, Service};
use tracing::{Instrument, field::Empty, level_filters::LevelFilter};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::{
    EnvFilter, Layer as _, fmt, layer::SubscriberExt as _, util::SubscriberInitExt as _,
};

/// The metadata key that carries a request id between services.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The request id of the current call, in the request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

/// What [`init`] installed. Keep it for the life of the process: dropping it sends the
/// spans not yet exported and stops the exporter.
#[must_use = "dropping it stops the span exporter"]
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            // Flushes the batch; an unreachable collector is not the process's failure.
            let _ = provider.shutdown();
        }
    }
}

/// Installs the global subscriber: log lines on stderr (stdout is for what a command
/// prints), filtered by `RUST_LOG` (default `info`), JSON when `json` is set; and
/// spans for `service`, exported over OTLP/gRPC to `otlp_endpoint` when one is given
/// (else trace ids are still made, for the logs and for propagation, but nothing is
/// recorded). Must run inside the Tokio runtime when exporting. Calling it twice is
/// harmless (tests spawn many services): the first subscriber stays.
pub fn init(json: bool, service: &'static str, otlp_endpoint: Option<&str>) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let exporter = otlp_endpoint.map(|endpoint| {
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
    });
    let mut builder = SdkTracerProvider::builder()
        .with_resource(Resource::builder().with_service_name(service).build());
    let mut exporting = false;
    builder = match exporter {
        Some(Ok(exporter)) => {
            exporting = true;
            builder
                .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
                .with_batch_exporter(exporter)
        }
        Some(Err(error)) => {
            eprintln!("{service}: OTLP export to {otlp_endpoint:?} is off: {error}");
            builder.with_sampler(Sampler::AlwaysOff)
        }
        None => builder.with_sampler(Sampler::AlwaysOff),
    };
    let provider = builder.build();
    let spans = span_layer(&provider, service, exporting).with_filter(LevelFilter::INFO);
    let logs = if json {
        fmt::layer()
            .json()
            .with_target(false)
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        // Colours only for a terminal: a log file or collector gets plain text.
        fmt::layer()
            .with_target(false)
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .boxed()
    };
    let installed = tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(spans)
        .try_init()
        .is_ok();
    Telemetry {
        provider: (installed && exporting).then_some(provider),
    }
}

/// The layer that gives spans their OpenTelemetry context, and records them for export
/// when `exporting`. Without an exporter it is kept for the trace ids alone: nothing
/// reads a span's busy and idle times, location or thread then, and no other
/// OpenTelemetry instrumentation needs the span's context made current each time it is
/// entered (every poll of an instrumented future enters and leaves its span). Those
/// cost about 4 % of a read's CPU.
fn span_layer<S>(
    provider: &SdkTracerProvider,
    service: &'static str,
    exporting: bool,
) -> tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(service))
        .with_tracked_inactivity(exporting)
        .with_context_activation(exporting)
        .with_location(exporting)
        .with_threads(exporting)
}

/// The W3C trace context headers (`traceparent`, and `tracestate` when set) of the
/// current span, for an outgoing call; empty outside any span.
pub fn outgoing_trace_headers() -> HashMap<String, String> {
    let mut headers = HashMap::new();
    TraceContextPropagator::new().inject_context(&tracing::Span::current().context(), &mut headers);
    headers
}

/// Reads the trace context headers of an incoming request.
struct IncomingHeaders<'a>(&'a http::HeaderMap);

impl Extractor for IncomingHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Makes `span` continue the caller's trace when the request carries a valid
/// `traceparent`, and records the span's trace id in its `trace_id` field (which the
/// span must declare). Call it before the span is entered.
pub fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    let remote = TraceContextPropagator::new().extract(&IncomingHeaders(headers));
    if remote.span().span_context().is_valid() {
        let _ = span.set_parent(remote);
    }
    let context = span.context();
    let trace_id = context.span().span_context().trace_id();
    if trace_id != opentelemetry::trace::TraceId::INVALID {
        span.record("trace_id", tracing::field::display(trace_id));
    }
}

/// Counts and times every RPC ([`crate::metrics::record_rpc`]) and wraps it in one
/// span carrying the method, the request id (taken from `x-request-id` or made fresh,
/// and echoed in the response), the trace id (the caller's `traceparent`, or new) and
/// fields that handlers fill in (`caller`, `account_id`, `payment_id`).
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
            trace_id = Empty,
            caller = Empty,
            account_id = Empty,
            payment_id = Empty,
        );
        continue_trace(&span, request.headers());
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

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    /// A subscriber like [`init`]'s without an exporter (nothing sampled), for one
    /// test's thread.
    fn unexported() -> impl tracing::Subscriber {
        let provider = SdkTracerProvider::builder()
            .with_sampler(Sampler::AlwaysOff)
            .build();
        tracing_subscriber::registry().with(span_layer(&provider, "test", false))
    }

    fn rpc_span() -> tracing::Span {
        tracing::info_span!("rpc", trace_id = Empty)
    }

    #[test]
    fn a_call_continues_the_callers_trace_and_passes_it_on() {
        tracing::subscriber::with_default(unexported(), || {
            let mut headers = http::HeaderMap::new();
            headers.insert("traceparent", PARENT.parse().unwrap());
            let span = rpc_span();
            continue_trace(&span, &headers);
            let outgoing = span.in_scope(outgoing_trace_headers);
            let traceparent = &outgoing["traceparent"];
            assert!(
                traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
                "{traceparent}"
            );
            // This span's own id, not the caller's.
            assert!(!traceparent.contains("00f067aa0ba902b7"), "{traceparent}");
        });
    }

    #[test]
    fn a_call_without_a_valid_traceparent_starts_a_trace() {
        tracing::subscriber::with_default(unexported(), || {
            let mut traces = Vec::new();
            for header in [
                None,
                Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
                Some("garbage"),
            ] {
                let mut headers = http::HeaderMap::new();
                if let Some(header) = header {
                    headers.insert("traceparent", header.parse().unwrap());
                }
                let span = rpc_span();
                continue_trace(&span, &headers);
                let outgoing = span.in_scope(outgoing_trace_headers);
                let trace_id = outgoing["traceparent"]
                    .split('-')
                    .nth(1)
                    .unwrap()
                    .to_owned();
                assert_eq!(trace_id.len(), 32);
                assert_ne!(trace_id, "0".repeat(32));
                traces.push(trace_id);
            }
            traces.dedup();
            assert_eq!(traces.len(), 3, "each call its own trace: {traces:?}");
        });
    }

    #[test]
    fn outside_any_span_nothing_is_sent() {
        tracing::subscriber::with_default(unexported(), || {
            assert!(outgoing_trace_headers().is_empty());
        });
    }
}
