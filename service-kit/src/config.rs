//! Settings every service shares, from flags with environment fallbacks, validated
//! at start-up so a bad value fails there with one clear line.

use std::time::Duration;

use crate::{
    auth::{DEV_JWT_SECRET, JwtKey, SECRET_BYTES_MIN},
    server::ServerLimits,
};

/// Flags shared by billing-svc and payment-svc (flattened into each one's own).
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// HS256 secret for bearer tokens, at least 32 bytes. Required outside dev mode.
    #[arg(long, env = "BILLPAY_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Dev mode: fall back to the documented dev secret when no secret is set.
    #[arg(long, env = "BILLPAY_DEV")]
    pub dev: bool,
    /// Log JSON lines instead of text.
    #[arg(long, env = "BILLPAY_JSON_LOGS")]
    pub json_logs: bool,
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
    /// Database connections in the pool.
    #[arg(long, env = "BILLPAY_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "BILLPAY_JWT_SECRET (--jwt-secret) is not set; set a secret of at least {SECRET_BYTES_MIN} bytes, or pass --dev for local use"
    )]
    MissingSecret,
    #[error("BILLPAY_JWT_SECRET (--jwt-secret) must be at least {SECRET_BYTES_MIN} bytes")]
    ShortSecret,
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
}

impl CommonArgs {
    /// Settings for dev mode (`billpay up`, tests): the dev secret and default limits.
    pub fn dev() -> Self {
        Self {
            jwt_secret: None,
            dev: true,
            json_logs: false,
            request_timeout_ms: 10_000,
            concurrency_per_connection: 256,
            drain_timeout_ms: 10_000,
            db_max_connections: 16,
        }
    }

    /// The token key: the configured secret, or the dev secret in dev mode only.
    pub fn jwt_key(&self) -> Result<JwtKey, ConfigError> {
        // An empty value (as `VAR=` or compose's `${VAR:-}` gives) means "not set".
        let configured = self
            .jwt_secret
            .as_deref()
            .filter(|secret| !secret.is_empty());
        let secret = match (configured, self.dev) {
            (Some(secret), _) => secret,
            (None, true) => DEV_JWT_SECRET,
            (None, false) => return Err(ConfigError::MissingSecret),
        };
        JwtKey::new(secret.as_bytes()).map_err(|_| ConfigError::ShortSecret)
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
    fn a_secret_is_required_outside_dev_mode() {
        let production = CommonArgs {
            dev: false,
            ..CommonArgs::dev()
        };
        assert!(matches!(
            production.jwt_key(),
            Err(ConfigError::MissingSecret)
        ));
        let short = CommonArgs {
            jwt_secret: Some("short".into()),
            ..production.clone()
        };
        assert!(matches!(short.jwt_key(), Err(ConfigError::ShortSecret)));
        assert!(CommonArgs::dev().jwt_key().is_ok());
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
