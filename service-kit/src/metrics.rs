//! Prometheus metrics. Code records through the `metrics` facade (`counter!`,
//! `histogram!`, `gauge!`); one recorder per process keeps them, and each service's
//! metrics port renders them in Prometheus' text format on `GET /metrics`. A process
//! that runs both services (`billpay up`) has one registry: the series say which
//! service they belong to by their labels (`service`, or the gRPC service in
//! `grpc_service`).
//!
//! Names follow Prometheus' conventions: `_total` counters, `_seconds` histograms.

use std::{net::SocketAddr, sync::OnceLock, time::Duration};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

use crate::db::Db;

/// Histogram buckets for latencies, in seconds: 0.5 ms to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How often the pool gauges are refreshed.
const POOL_SAMPLE: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's recorder, installed on first use. If something else installed a
/// recorder first, the handle renders nothing and recording goes there instead.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        // set_buckets refuses only an empty list; LATENCY_BUCKETS is not one.
        let recorder = match PrometheusBuilder::new().set_buckets(LATENCY_BUCKETS) {
            Ok(builder) => builder,
            Err(_) => PrometheusBuilder::new(),
        }
        .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
        }
        describe();
        handle
    })
}

/// Every series' help text (Prometheus' `# HELP`), in one place for both services.
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "grpc_server_requests_total",
        "gRPC calls answered, by service, method and status code"
    );
    describe_histogram!(
        "grpc_server_request_duration_seconds",
        Unit::Seconds,
        "time from a call's arrival to its answer's headers"
    );
    describe_counter!(
        "payment_charges_total",
        "provider charges answered, by payment method and outcome"
    );
    describe_histogram!(
        "provider_call_duration_seconds",
        Unit::Seconds,
        "time a provider took to answer, by provider, operation and outcome"
    );
    describe_gauge!(
        "payment_outbox_rows",
        "outbox rows billing has not acknowledged yet (dead letters excluded)"
    );
    describe_gauge!(
        "payment_outbox_oldest_age_seconds",
        Unit::Seconds,
        "age of the oldest undelivered outbox row (0 when there is none)"
    );
    describe_gauge!(
        "payment_dead_letters",
        "outbox rows given up on: an operator must look (ListDeadLetters)"
    );
    describe_histogram!(
        "billing_day_close_duration_seconds",
        Unit::Seconds,
        "time one business day's close took"
    );
    describe_counter!(
        "billing_day_close_accounts_closed_total",
        "accounts closed by day closes"
    );
    describe_gauge!(
        "db_pool_connections",
        "database pool connections, by service, pool and state"
    );
}

/// A bound metrics port, not yet serving.
#[derive(Debug)]
pub struct MetricsServer {
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl MetricsServer {
    /// Binds `addr` (port 0 picks a free one) and installs the recorder.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        handle();
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        Ok(Self {
            listener,
            local_addr,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves `GET /metrics` until `shutdown` resolves.
    pub async fn run_until_stopped(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let router = axum::Router::new().route(
            "/metrics",
            axum::routing::get(|| async {
                let handle = handle();
                handle.run_upkeep();
                (
                    [(
                        http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    handle.render(),
                )
            }),
        );
        axum::serve(self.listener, router)
            .with_graceful_shutdown(shutdown)
            .await
    }
}

/// Samples `db`'s pools into `db_pool_connections{service, pool, state}` every few
/// seconds until `stopped` changes.
pub async fn sample_pool(
    service: &'static str,
    db: Db,
    mut stopped: tokio::sync::watch::Receiver<()>,
) {
    loop {
        for (pool_name, in_use, idle) in db.pool_gauges() {
            metrics::gauge!("db_pool_connections", "service" => service, "pool" => pool_name, "state" => "in_use")
                .set(in_use as f64);
            metrics::gauge!("db_pool_connections", "service" => service, "pool" => pool_name, "state" => "idle")
                .set(idle as f64);
        }
        tokio::select! {
            _ = stopped.changed() => return,
            () = tokio::time::sleep(POOL_SAMPLE) => {}
        }
    }
}

/// Records one finished RPC: `grpc_server_requests_total{grpc_service, grpc_method,
/// grpc_code}` and `grpc_server_request_duration_seconds{grpc_service, grpc_method}`.
pub fn record_rpc(path: &str, code: &str, elapsed: Duration) {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let service = parts.next().unwrap_or_default().to_owned();
    let method = parts.next().unwrap_or_default().to_owned();
    metrics::counter!(
        "grpc_server_requests_total",
        "grpc_service" => service.clone(),
        "grpc_method" => method.clone(),
        "grpc_code" => code.to_owned()
    )
    .increment(1);
    metrics::histogram!(
        "grpc_server_request_duration_seconds",
        "grpc_service" => service,
        "grpc_method" => method
    )
    .record(elapsed.as_secs_f64());
}

/// The name of a gRPC status code as a label (`OK`, `NOT_FOUND`, …) from the
/// `grpc-status` value; an answer without one in its headers is OK (tonic sends a
/// handler's error in the headers, a success's status in the trailers).
pub fn code_label(grpc_status: Option<&str>) -> &'static str {
    let code = grpc_status
        .and_then(|value| value.parse::<i32>().ok())
        .map_or(tonic::Code::Ok, tonic::Code::from_i32);
    match code {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "CANCELLED",
        tonic::Code::Unknown => "UNKNOWN",
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::AlreadyExists => "ALREADY_EXISTS",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::Aborted => "ABORTED",
        tonic::Code::OutOfRange => "OUT_OF_RANGE",
        tonic::Code::Unimplemented => "UNIMPLEMENTED",
        tonic::Code::Internal => "INTERNAL",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::DataLoss => "DATA_LOSS",
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_named_and_a_missing_status_is_ok() {
        assert_eq!(code_label(None), "OK");
        assert_eq!(code_label(Some("0")), "OK");
        assert_eq!(code_label(Some("5")), "NOT_FOUND");
        assert_eq!(code_label(Some("9")), "FAILED_PRECONDITION");
    }

    #[tokio::test]
    async fn the_metrics_port_renders_what_was_recorded() {
        let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = server.local_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(server.run_until_stopped(async {
            let _ = stopped.await;
        }));
        record_rpc("/x.v1.S/Read", "NOT_FOUND", Duration::from_millis(3));
        let body = http_get(addr, "/metrics").await;
        assert!(body.contains("grpc_server_requests_total{"), "{body}");
        assert!(body.contains("grpc_method=\"Read\""), "{body}");
        assert!(body.contains("grpc_code=\"NOT_FOUND\""), "{body}");
        assert!(
            body.contains("grpc_server_request_duration_seconds_bucket{"),
            "latencies are histograms: {body}"
        );
        let _ = stop.send(());
        serving.await.unwrap().unwrap();
    }

    /// A bare HTTP/1.0 GET: the body.
    async fn http_get(addr: SocketAddr, path: &str) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await.unwrap();
        reply
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or(reply)
    }
}
