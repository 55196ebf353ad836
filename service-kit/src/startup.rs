//! What every service does at start-up, in the same order: validate the shared
//! settings, open and migrate its own database, bind its port.

use std::{future::Future, net::SocketAddr};

use anyhow::Context as _;
use tonic::service::RoutesBuilder;

use crate::{
    auth::{AuthLayer, OwnedScope, RpcRule, TokenVerifier},
    config::CommonArgs,
    db::{Db, Migrations},
    metrics::MetricsServer,
    server::{GrpcServer, ServeError, ServerLimits},
};

/// A service's database, port, limits and token key, ready for its handlers.
#[derive(Debug)]
pub struct Foundation {
    pub db: Db,
    pub verifier: TokenVerifier,
    server: GrpcServer,
    limits: ServerLimits,
    owned_scopes: Vec<OwnedScope>,
    service: &'static str,
    metrics: Option<MetricsServer>,
}

impl Foundation {
    /// Fails with one clear message on any bad setting, unreachable database, failed
    /// migration or taken port.
    pub async fn build(
        service: &'static str,
        common: &CommonArgs,
        database_url: &str,
        migrations: &Migrations,
        listen_addr: SocketAddr,
    ) -> anyhow::Result<Self> {
        crate::failpoint::check_allowed(common.dev)?;
        let limits = common.limits()?;
        // Each service accepts the tokens for its own audience: "billing-svc" → "billing".
        let audience = service.strip_suffix("-svc").unwrap_or(service);
        let verifier = common.verifier(audience)?;
        let db = Db::connect(database_url, common.db_max_connections)
            .await
            .with_context(|| format!("{service}: cannot open database {}", redact(database_url)))?;
        db.migrate(migrations)
            .await
            .with_context(|| format!("{service}: cannot migrate database"))?;
        let connection_limits = common.connection_limits()?;
        let tls = common.server_tls()?;
        let server = GrpcServer::bind(listen_addr)
            .await
            .with_context(|| format!("{service}: cannot listen on {listen_addr}"))?
            .with_connection_limits(connection_limits)
            .with_tls(tls);
        let metrics = match common.metrics_addr {
            Some(addr) => Some(MetricsServer::bind(addr).await.with_context(|| {
                format!("{service}: cannot serve metrics on {addr} (--metrics-addr)")
            })?),
            None => None,
        };
        Ok(Self {
            db,
            verifier,
            server,
            limits,
            owned_scopes: Vec::new(),
            service,
            metrics,
        })
    }

    /// Honours a scope only in its owner's tokens (see [`AuthLayer::grant_only_to`]).
    pub fn grant_only_to(&mut self, owned: OwnedScope) {
        self.owned_scopes.push(owned);
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// The metrics port, when one is configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(MetricsServer::local_addr)
    }

    /// Serves `routes` behind auth (`rules`) until `shutdown`, then drains.
    pub async fn run_until_stopped(
        self,
        routes: RoutesBuilder,
        service_names: &[&str],
        rules: &'static [RpcRule],
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        let auth = self
            .owned_scopes
            .into_iter()
            .fold(
                AuthLayer::new(self.verifier, rules),
                AuthLayer::grant_only_to,
            )
            .audit_operators_in(self.db.clone());
        let (stop, stopped) = tokio::sync::watch::channel(());
        let pool_sampler = tokio::spawn(crate::metrics::sample_pool(
            self.service,
            self.db.clone(),
            stopped.clone(),
        ));
        let metrics = self.metrics.map(|server| {
            tracing::info!(
                service = self.service,
                "metrics on http://{}/metrics",
                server.local_addr()
            );
            let mut stopped = stopped.clone();
            tokio::spawn(server.run_until_stopped(async move {
                let _ = stopped.changed().await;
            }))
        });
        let served = self
            .server
            .run_until_stopped(routes, service_names, self.limits, auth, shutdown)
            .await;
        let _ = stop.send(());
        let _ = pool_sampler.await;
        if let Some(Ok(Err(error))) = match metrics {
            Some(task) => Some(task.await),
            None => None,
        } {
            tracing::warn!(%error, "the metrics port failed");
        }
        served
    }
}

/// A database URL fit for logs: no password.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://…{}", &url[..scheme_end], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_passwords() {
        assert_eq!(
            super::redact("postgres://u:secret@h/db"),
            "postgres://…@h/db"
        );
        assert_eq!(super::redact("sqlite://data/x.db"), "sqlite://data/x.db");
    }
}
