//! Settings every service shares, from flags with environment fallbacks, validated
//! at start-up so a bad value fails there with one clear line.

use std::{path::PathBuf, time::Duration};

use secrecy::{ExposeSecret as _, SecretString};

use crate::{
    auth::{
        DEV_JWT_SECRET, SECRET_BYTES_MIN, TokenVerifier,
        keys::{KeyFileError, load_trusted},
    },
    conn::ConnectionLimits,
    server::ServerLimits,
};

/// Flags shared by billing-svc and payment-svc (flattened into each one's own).
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// The token issuers' public keys (TOML, by kid; see service_kit::auth::keys).
    /// Required outside dev mode.
    #[arg(long, env = "BILLPAY_JWT_KEYS_FILE")]
    pub jwt_keys_file: Option<PathBuf>,
    /// Dev mode only, without a keys file: the HS256 secret tokens are checked with
    /// (at least 32 bytes; the documented dev secret when unset).
    #[arg(long, env = "BILLPAY_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<SecretString>,
    /// Dev mode: dev defaults for unset secrets, and HS256 tokens when no keys file
    /// is set.
    #[arg(long, env = "BILLPAY_DEV")]
    pub dev: bool,
    /// Log JSON lines instead of text.
    #[arg(long, env = "BILLPAY_JSON_LOGS")]
    pub json_logs: bool,
    /// Export spans over OTLP/gRPC to this collector (e.g. `http://127.0.0.1:4317`);
    /// unset or empty: no export (trace ids are still logged and propagated).
    #[arg(long, env = "BILLPAY_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Per-RPC timeout in milliseconds.
    #[arg(long, env = "BILLPAY_REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    pub request_timeout_ms: u64,
    /// Calls served at once per connection.
    #[arg(
        long,
        env = "BILLPAY_CONCURRENCY_PER_CONNECTION",
        default_value_t = 256
    )]
    pub concurrency_per_connection: usize,
    /// Milliseconds in-flight calls may take to finish on shutdown.
    #[arg(long, env = "BILLPAY_DRAIN_TIMEOUT_MS", default_value_t = 10_000)]
    pub drain_timeout_ms: u64,
    /// Database connections in the pool (on PostgreSQL, half as many again for the hot
    /// reads' own pool).
    #[arg(long, env = "BILLPAY_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,
    /// Connections open at once on each listener; more are closed as they arrive.
    #[arg(long, env = "BILLPAY_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// A connection whose peer sends nothing for this long is closed (bare TCP,
    /// a stalled TLS/HTTP/2 handshake, half an HTTP/1.1 header).
    #[arg(
        long,
        env = "BILLPAY_CONNECTION_IDLE_TIMEOUT_MS",
        default_value_t = 60_000
    )]
    pub connection_idle_timeout_ms: u64,
    /// A connection is asked to close once this old (30 s more to finish).
    #[arg(
        long,
        env = "BILLPAY_MAX_CONNECTION_AGE_MS",
        default_value_t = 1_800_000
    )]
    pub max_connection_age_ms: u64,
    /// gRPC: HTTP/2 keepalive ping period; must be below the idle timeout.
    #[arg(
        long,
        env = "BILLPAY_HTTP2_KEEPALIVE_INTERVAL_MS",
        default_value_t = 20_000
    )]
    pub http2_keepalive_interval_ms: u64,
    /// TLS: this listener's certificate chain (PEM). With --tls-key-file, the gRPC
    /// listener speaks TLS only.
    #[arg(long, env = "BILLPAY_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// TLS: the certificate's private key (PEM).
    #[arg(long, env = "BILLPAY_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// Mutual TLS: clients must present a certificate this CA (PEM) signed.
    #[arg(long, env = "BILLPAY_TLS_CLIENT_CA_FILE")]
    pub tls_client_ca_file: Option<PathBuf>,
    /// Serve Prometheus metrics on GET /metrics at this address (port 0: a free one);
    /// unset: no metrics port.
    #[arg(long, env = "BILLPAY_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// gRPC: a ping unanswered this long closes the connection.
    #[arg(
        long,
        env = "BILLPAY_HTTP2_KEEPALIVE_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub http2_keepalive_timeout_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "BILLPAY_JWT_KEYS_FILE (--jwt-keys-file) is not set; name the token issuers' public keys file, or pass --dev for local use"
    )]
    MissingKeys,
    #[error(
        "BILLPAY_JWT_SECRET (HS256) is accepted in dev mode only; set BILLPAY_JWT_KEYS_FILE instead"
    )]
    SecretOutsideDev,
    #[error("BILLPAY_JWT_SECRET (--jwt-secret) must be at least {SECRET_BYTES_MIN} bytes")]
    ShortSecret,
    #[error(transparent)]
    Keys(#[from] KeyFileError),
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    #[error(
        "--http2-keepalive-interval-ms must be below --connection-idle-timeout-ms, or quiet gRPC streams would be cut"
    )]
    KeepaliveNotBelowIdle,
    #[error("TLS: {0}")]
    Tls(String),
}

impl CommonArgs {
    /// Settings for dev mode (`billpay up`, tests): the dev secret and default limits.
    pub fn dev() -> Self {
        Self {
            jwt_keys_file: None,
            jwt_secret: None,
            dev: true,
            json_logs: false,
            otlp_endpoint: None,
            request_timeout_ms: 10_000,
            concurrency_per_connection: 256,
            drain_timeout_ms: 10_000,
            db_max_connections: 16,
            max_connections: 4096,
            connection_idle_timeout_ms: 60_000,
            max_connection_age_ms: 1_800_000,
            http2_keepalive_interval_ms: 20_000,
            http2_keepalive_timeout_ms: 10_000,
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
            metrics_addr: None,
        }
    }

    /// Installs logging and tracing for `service` as these flags say
    /// ([`crate::telemetry::init`]); keep what it returns while the service runs.
    pub fn telemetry(&self, service: &'static str) -> crate::telemetry::Telemetry {
        let endpoint = self.otlp_endpoint.as_deref().filter(|url| !url.is_empty());
        crate::telemetry::init(self.json_logs, service, endpoint)
    }

    /// The token verifier for `audience`: the keys file's public keys; without one,
    /// in dev mode only, HS256 with the configured or the dev secret.
    pub fn verifier(&self, audience: &str) -> Result<TokenVerifier, ConfigError> {
        // An empty value (as `VAR=` or compose's `${VAR:-}` gives) means "not set".
        let secret = self
            .jwt_secret
            .as_ref()
            .map(|secret| secret.expose_secret())
            .filter(|secret| !secret.is_empty());
        let keys_file = self
            .jwt_keys_file
            .as_ref()
            .filter(|path| !path.as_os_str().is_empty());
        match (keys_file, self.dev) {
            (Some(path), _) => Ok(TokenVerifier::new(audience, load_trusted(path)?)),
            (None, true) => {
                let secret = secret.unwrap_or(DEV_JWT_SECRET);
                TokenVerifier::hs256_dev(audience, secret.as_bytes())
                    .map_err(|_| ConfigError::ShortSecret)
            }
            (None, false) if secret.is_some() => Err(ConfigError::SecretOutsideDev),
            (None, false) => Err(ConfigError::MissingKeys),
        }
    }

    /// The gRPC listener's TLS settings: none (plaintext) when no certificate is set.
    pub fn server_tls(&self) -> Result<Option<tonic::transport::ServerTlsConfig>, ConfigError> {
        let read = |path: &PathBuf| {
            std::fs::read(path)
                .map_err(|error| ConfigError::Tls(format!("{}: {error}", path.display())))
        };
        let (cert, key) = match (&self.tls_cert_file, &self.tls_key_file) {
            (None, None) => {
                if self.tls_client_ca_file.is_some() {
                    return Err(ConfigError::Tls(
                        "--tls-client-ca-file needs --tls-cert-file and --tls-key-file".into(),
                    ));
                }
                return Ok(None);
            }
            (Some(cert), Some(key)) => (read(cert)?, read(key)?),
            _ => {
                return Err(ConfigError::Tls(
                    "--tls-cert-file and --tls-key-file go together".into(),
                ));
            }
        };
        let mut tls = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(cert, key));
        if let Some(ca) = &self.tls_client_ca_file {
            tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(read(ca)?));
        }
        Ok(Some(tls))
    }

    /// Every listener's connection limits, checked.
    pub fn connection_limits(&self) -> Result<ConnectionLimits, ConfigError> {
        for (name, value) in [
            ("--max-connections", self.max_connections as u64),
            (
                "--connection-idle-timeout-ms",
                self.connection_idle_timeout_ms,
            ),
            ("--max-connection-age-ms", self.max_connection_age_ms),
            (
                "--http2-keepalive-interval-ms",
                self.http2_keepalive_interval_ms,
            ),
            (
                "--http2-keepalive-timeout-ms",
                self.http2_keepalive_timeout_ms,
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        if self.http2_keepalive_interval_ms >= self.connection_idle_timeout_ms {
            return Err(ConfigError::KeepaliveNotBelowIdle);
        }
        Ok(ConnectionLimits {
            max_connections: self.max_connections,
            idle_timeout: Duration::from_millis(self.connection_idle_timeout_ms),
            max_age: Duration::from_millis(self.max_connection_age_ms),
            keepalive_interval: Duration::from_millis(self.http2_keepalive_interval_ms),
            keepalive_timeout: Duration::from_millis(self.http2_keepalive_timeout_ms),
        })
    }

    /// The server limits, refusing zeros that would stop every call.
    pub fn limits(&self) -> Result<ServerLimits, ConfigError> {
        for (name, value) in [
            ("--request-timeout-ms", self.request_timeout_ms),
            ("--drain-timeout-ms", self.drain_timeout_ms),
            (
                "--concurrency-per-connection",
                self.concurrency_per_connection as u64,
            ),
            ("--db-max-connections", u64::from(self.db_max_connections)),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        Ok(ServerLimits {
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            concurrency_per_connection: self.concurrency_per_connection,
            drain_timeout: Duration::from_millis(self.drain_timeout_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_required_outside_dev_mode_and_hs256_is_dev_only() {
        let production = CommonArgs {
            dev: false,
            ..CommonArgs::dev()
        };
        assert!(matches!(
            production.verifier("billing"),
            Err(ConfigError::MissingKeys)
        ));
        let with_secret = CommonArgs {
            jwt_secret: Some("0123456789abcdef0123456789abcdef".into()),
            ..production.clone()
        };
        assert!(matches!(
            with_secret.verifier("billing"),
            Err(ConfigError::SecretOutsideDev)
        ));
        let short = CommonArgs {
            jwt_secret: Some("short".into()),
            ..CommonArgs::dev()
        };
        assert!(matches!(
            short.verifier("billing"),
            Err(ConfigError::ShortSecret)
        ));
        assert!(CommonArgs::dev().verifier("billing").is_ok());
        let dir = tempfile::tempdir().unwrap();
        let keys = crate::auth::keys::DevKeys::ensure(dir.path()).unwrap();
        let configured = CommonArgs {
            jwt_keys_file: Some(keys.keys_file),
            ..production
        };
        assert!(configured.verifier("billing").is_ok());
    }

    #[test]
    fn zero_limits_are_refused() {
        let args = CommonArgs {
            request_timeout_ms: 0,
            ..CommonArgs::dev()
        };
        assert!(matches!(
            args.limits(),
            Err(ConfigError::Zero("--request-timeout-ms"))
        ));
    }
}
