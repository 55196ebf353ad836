//! Serving a service: health, reflection (v1 and v1alpha), auth, per-RPC spans,
//! limits, and a bounded drain on shutdown.

use std::{future::Future, net::SocketAddr, time::Duration};

use tokio::net::TcpListener;
use tonic::{service::RoutesBuilder, transport::Server};
use tonic_health::ServingStatus;
use tower::ServiceBuilder;

use crate::{
    auth::AuthLayer,
    conn::{AGE_GRACE, ConnectionLimits, GuardedListener},
    deadline::DeadlineLayer,
    telemetry::RpcSpanLayer,
};

/// Limits that apply to every RPC of a server.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// A call still running after this is cancelled with DEADLINE_EXCEEDED.
    pub request_timeout: Duration,
    /// Calls served at once on one connection.
    pub concurrency_per_connection: usize,
    /// How long in-flight calls may take to finish after shutdown begins.
    pub drain_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("the contracts' descriptor set does not decode: {0}")]
    Contracts(#[from] prost::DecodeError),
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
    #[error("the server task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A gRPC server bound to its port, ready to serve.
#[derive(Debug)]
pub struct GrpcServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    connection_limits: ConnectionLimits,
    tls: Option<tonic::transport::ServerTlsConfig>,
}

impl GrpcServer {
    /// Binds `addr`; port 0 picks a free port (see [`GrpcServer::local_addr`]).
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        Ok(Self {
            listener,
            local_addr,
            connection_limits: ConnectionLimits::default(),
            tls: None,
        })
    }

    /// Serves TLS only (mutual when the config names a client CA).
    pub fn with_tls(mut self, tls: Option<tonic::transport::ServerTlsConfig>) -> Self {
        self.tls = tls;
        self
    }

    /// Holds every connection to `limits` (cap, idle timeout, age, keepalive).
    pub fn with_connection_limits(mut self, limits: ConnectionLimits) -> Self {
        self.connection_limits = limits;
        self
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves `routes` (whose services are named in `service_names`, for health) plus
    /// health and reflection until `shutdown` resolves; then reports NOT_SERVING,
    /// stops accepting, and waits up to the drain timeout for in-flight calls.
    pub async fn run_until_stopped(
        self,
        mut routes: RoutesBuilder,
        service_names: &[&str],
        limits: ServerLimits,
        auth: AuthLayer,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        for name in service_names {
            health_reporter
                .set_service_status(*name, ServingStatus::Serving)
                .await;
        }
        // grpcurl 1.8 speaks only v1alpha; newer clients use v1. Serve both, each with
        // only this server's contract (plus health and the google.rpc error details).
        let reflection = || crate::reflection::builder(service_names);
        let (v1, v1alpha) = (reflection()?.build_v1()?, reflection()?.build_v1alpha()?);
        routes
            .add_service(health_service)
            .add_service(v1)
            .add_service(v1alpha);

        let (stop_sender, stop_receiver) = tokio::sync::oneshot::channel::<()>();
        let builder = match self.tls {
            Some(tls) => Server::builder().tls_config(tls)?,
            None => Server::builder(),
        };
        let server = builder
            .concurrency_limit_per_connection(limits.concurrency_per_connection)
            .http2_keepalive_interval(Some(self.connection_limits.keepalive_interval))
            .http2_keepalive_timeout(Some(self.connection_limits.keepalive_timeout))
            .max_connection_age(self.connection_limits.max_age)
            .max_connection_age_grace(AGE_GRACE)
            // The per-RPC timeout: DEADLINE_EXCEEDED, where tonic's own says CANCELLED.
            .layer(
                ServiceBuilder::new()
                    .layer(RpcSpanLayer)
                    .layer(DeadlineLayer::new(limits.request_timeout))
                    .layer(auth),
            )
            .add_routes(routes.routes())
            // GuardedListener sets TCP_NODELAY on each accepted socket: tonic applies
            // its own `tcp_nodelay` only to listeners it binds itself, and without it
            // every reply over a segment waits ~40 ms for the client's delayed ACK.
            .serve_with_incoming_shutdown(
                GuardedListener::new(self.listener, self.connection_limits).into_incoming(),
                async {
                    let _ = stop_receiver.await;
                },
            );
        let mut server = tokio::spawn(server);
        tokio::select! {
            result = &mut server => return Ok(result??),
            () = shutdown => {}
        }

        tracing::info!(addr = %self.local_addr, "draining");
        health_reporter
            .set_service_status("", ServingStatus::NotServing)
            .await;
        for name in service_names {
            health_reporter
                .set_service_status(*name, ServingStatus::NotServing)
                .await;
        }
        let _ = stop_sender.send(());
        match tokio::time::timeout(limits.drain_timeout, &mut server).await {
            Ok(result) => result??,
            Err(_) => {
                tracing::warn!(timeout = ?limits.drain_timeout, "drain timed out; cancelling the calls still running");
                server.abort();
            }
        }
        tracing::info!(addr = %self.local_addr, "stopped");
        Ok(())
    }
}
