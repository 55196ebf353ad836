//! payment-svc's configuration: flags with environment fallbacks.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use secrecy::{ExposeSecret as _, SecretString};

use service_kit::{
    auth::{DEV_JWT_SECRET, PAYMENT_SVC_SUBJECT, TokenSigner, keys::load_signer},
    config::CommonArgs,
};

use crate::{
    domain::payment::{DEV_FINGERPRINT_KEY, FINGERPRINT_KEY_BYTES_MIN, FingerprintKey},
    jobs::JobTimings,
    providers::ProviderSettings,
    sim::{DEV_ALIPAY_SECRET, DEV_BANK_CARD_SECRET, DEV_WECHAT_PAY_SECRET},
};

/// The provider secrets dev mode uses when none is configured: the simulator's.
pub const DEV_PROVIDER_SECRETS: [&str; 3] = [
    DEV_BANK_CARD_SECRET,
    DEV_ALIPAY_SECRET,
    DEV_WECHAT_PAY_SECRET,
];

/// payment-svc's settings.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "payment-svc",
    about = "Repayments through bank card, Alipay and WeChat Pay over gRPC"
)]
pub struct Config {
    /// Address to serve gRPC on.
    #[arg(long, env = "PAYMENT_LISTEN_ADDR", default_value = "127.0.0.1:50052")]
    pub listen_addr: SocketAddr,
    /// `sqlite://path` or `postgres://…`; payment-svc's own database.
    #[arg(
        long,
        env = "PAYMENT_DATABASE_URL",
        default_value = "sqlite://data/payment.db"
    )]
    pub database_url: String,
    /// billing-svc's gRPC URL.
    #[arg(
        long,
        env = "PAYMENT_BILLING_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub billing_url: String,
    /// Address of the HTTP listener providers send notifications to.
    #[arg(
        long,
        env = "PAYMENT_NOTIFY_LISTEN_ADDR",
        default_value = "127.0.0.1:50053"
    )]
    pub notify_listen_addr: SocketAddr,
    /// The notify listener's URL as providers reach it; `http://<notify-listen-addr>`
    /// when unset.
    #[arg(long, env = "PAYMENT_NOTIFY_BASE_URL")]
    pub notify_base_url: Option<String>,
    #[arg(
        long,
        env = "PAYMENT_BANK_CARD_URL",
        default_value = "http://127.0.0.1:50060/bank-card"
    )]
    pub bank_card_url: String,
    #[arg(
        long,
        env = "PAYMENT_ALIPAY_URL",
        default_value = "http://127.0.0.1:50060/alipay"
    )]
    pub alipay_url: String,
    #[arg(
        long,
        env = "PAYMENT_WECHAT_PAY_URL",
        default_value = "http://127.0.0.1:50060/wechat-pay"
    )]
    pub wechat_pay_url: String,
    /// Shared secrets with each provider; required outside dev mode.
    #[arg(long, env = "BILLPAY_BANK_CARD_SECRET", hide_env_values = true)]
    pub bank_card_secret: Option<SecretString>,
    #[arg(long, env = "BILLPAY_ALIPAY_SECRET", hide_env_values = true)]
    pub alipay_secret: Option<SecretString>,
    #[arg(long, env = "BILLPAY_WECHAT_PAY_SECRET", hide_env_values = true)]
    pub wechat_pay_secret: Option<SecretString>,
    /// The HMAC key request fingerprints are keyed with (at least 32 bytes); required
    /// outside dev mode. Keep it out of the database's backups: with it, a stolen
    /// fingerprint can be brute-forced back to the instrument.
    #[arg(long, env = "BILLPAY_FINGERPRINT_KEY", hide_env_values = true)]
    pub fingerprint_key: Option<SecretString>,
    /// payment-svc's own signing key file (issuer payment-svc), for the tokens it sends
    /// billing; required with BILLPAY_JWT_KEYS_FILE. It can mint nothing else that
    /// either service accepts.
    #[arg(long, env = "PAYMENT_JWT_SIGNING_KEY_FILE")]
    pub jwt_signing_key_file: Option<PathBuf>,
    /// TLS to billing: the CA (PEM) billing's certificate must chain to. Setting it
    /// makes payment-svc call billing over TLS (use an https:// --billing-url).
    #[arg(long, env = "PAYMENT_BILLING_TLS_CA_FILE")]
    pub billing_tls_ca_file: Option<PathBuf>,
    /// Mutual TLS to billing: payment-svc's client certificate and key (PEM).
    #[arg(long, env = "PAYMENT_BILLING_TLS_CERT_FILE")]
    pub billing_tls_cert_file: Option<PathBuf>,
    #[arg(long, env = "PAYMENT_BILLING_TLS_KEY_FILE")]
    pub billing_tls_key_file: Option<PathBuf>,
    /// How long one provider request may take.
    #[arg(long, env = "PAYMENT_PROVIDER_TIMEOUT_MS", default_value_t = 3_000)]
    pub provider_timeout_ms: u64,
    /// A payment PROCESSING this long is asked about by the reconciler.
    #[arg(long, env = "PAYMENT_RECONCILE_AFTER_MS", default_value_t = 30_000)]
    pub reconcile_after_ms: u64,
    #[arg(long, env = "PAYMENT_RECONCILE_INTERVAL_MS", default_value_t = 5_000)]
    pub reconcile_interval_ms: u64,
    #[arg(long, env = "PAYMENT_OUTBOX_POLL_MS", default_value_t = 500)]
    pub outbox_poll_ms: u64,
    /// Run autopay on its own once each business day, after billing's day close (see
    /// ARCHITECTURE.md, "Autopay"); off, only RunAutopay runs it.
    #[arg(
        long,
        env = "PAYMENT_AUTO_AUTOPAY",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub auto_autopay: bool,
    /// The business time zone (billing-svc's): autopay's business date turns at its
    /// midnight.
    #[arg(
        long,
        env = "PAYMENT_BUSINESS_UTC_OFFSET",
        default_value = "+08:00",
        allow_hyphen_values = true
    )]
    pub business_utc_offset: chrono::FixedOffset,
    /// Tests only: where an autopay run stops until released. No flag sets it.
    #[arg(skip)]
    pub autopay_pause: crate::autopay::Pause,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// UTC+8, the business zone by default.
pub fn shanghai() -> chrono::FixedOffset {
    use chrono::Offset as _;
    // 8 hours is within the ±24 h east_opt accepts; the fallback is never taken.
    chrono::FixedOffset::east_opt(8 * 3600).unwrap_or(chrono::Utc.fix())
}

#[derive(Debug, thiserror::Error)]
pub enum PaymentConfigError {
    #[error("{0} is not set; set it, or pass --dev for local use")]
    MissingSecret(&'static str),
    #[error(
        "--reconcile-after-ms must exceed --provider-timeout-ms, or a charge still in flight could be resolved as not charged"
    )]
    ReconcileTooSoon,
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    #[error("{0}")]
    SigningKey(String),
    #[error("BILLPAY_FINGERPRINT_KEY must be at least {FINGERPRINT_KEY_BYTES_MIN} bytes")]
    ShortFingerprintKey,
}

impl Config {
    /// Dev settings for `billpay up` and tests: providers at `provider_base_url`
    /// (`http://127.0.0.1:50060`), billing at `billing_url`.
    pub fn dev(
        listen_addr: SocketAddr,
        database_url: String,
        billing_url: String,
        provider_base_url: &str,
    ) -> Self {
        Self {
            listen_addr,
            database_url,
            billing_url,
            notify_listen_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            notify_base_url: None,
            bank_card_url: format!("{provider_base_url}/bank-card"),
            alipay_url: format!("{provider_base_url}/alipay"),
            wechat_pay_url: format!("{provider_base_url}/wechat-pay"),
            bank_card_secret: None,
            alipay_secret: None,
            wechat_pay_secret: None,
            fingerprint_key: None,
            jwt_signing_key_file: None,
            billing_tls_ca_file: None,
            billing_tls_cert_file: None,
            billing_tls_key_file: None,
            provider_timeout_ms: 3_000,
            reconcile_after_ms: 30_000,
            reconcile_interval_ms: 5_000,
            outbox_poll_ms: 500,
            auto_autopay: true,
            business_utc_offset: shanghai(),
            autopay_pause: crate::autopay::Pause::default(),
            common: CommonArgs::dev(),
        }
    }

    /// Each provider's URL and secret (the dev secrets only in dev mode).
    pub fn providers(&self) -> Result<[ProviderSettings; 3], PaymentConfigError> {
        let settings = |url: &str, secret: &Option<SecretString>, name: &'static str, dev: &str| {
            let configured = secret
                .as_ref()
                .map(|s| s.expose_secret())
                .filter(|s| !s.is_empty());
            let secret: SecretString = match (configured, self.common.dev) {
                (Some(secret), _) => secret.into(),
                (None, true) => dev.into(),
                (None, false) => return Err(PaymentConfigError::MissingSecret(name)),
            };
            Ok(ProviderSettings {
                base_url: url.to_owned(),
                secret,
            })
        };
        let [bank_card_dev, alipay_dev, wechat_pay_dev] = DEV_PROVIDER_SECRETS;
        Ok([
            settings(
                &self.bank_card_url,
                &self.bank_card_secret,
                "BILLPAY_BANK_CARD_SECRET",
                bank_card_dev,
            )?,
            settings(
                &self.alipay_url,
                &self.alipay_secret,
                "BILLPAY_ALIPAY_SECRET",
                alipay_dev,
            )?,
            settings(
                &self.wechat_pay_url,
                &self.wechat_pay_secret,
                "BILLPAY_WECHAT_PAY_SECRET",
                wechat_pay_dev,
            )?,
        ])
    }

    /// The fingerprint key: the configured one, or the dev key in dev mode only.
    pub fn fingerprint_key(&self) -> Result<FingerprintKey, PaymentConfigError> {
        let secret = match (
            self.fingerprint_key
                .as_ref()
                .map(|s| s.expose_secret())
                .filter(|s| !s.is_empty()),
            self.common.dev,
        ) {
            (Some(secret), _) => secret,
            (None, true) => DEV_FINGERPRINT_KEY,
            (None, false) => {
                return Err(PaymentConfigError::MissingSecret("BILLPAY_FINGERPRINT_KEY"));
            }
        };
        FingerprintKey::new(secret.as_bytes()).map_err(|_| PaymentConfigError::ShortFingerprintKey)
    }

    /// The key payment-svc signs its tokens to billing with: its signing key file;
    /// in dev mode without a keys file, the HS256 dev secret under issuer payment-svc.
    pub fn billing_token_signer(&self) -> Result<TokenSigner, PaymentConfigError> {
        let keys_file = self
            .common
            .jwt_keys_file
            .as_ref()
            .filter(|path| !path.as_os_str().is_empty());
        let signing_file = self
            .jwt_signing_key_file
            .as_ref()
            .filter(|path| !path.as_os_str().is_empty());
        match (signing_file, keys_file, self.common.dev) {
            (Some(path), _, _) => {
                load_signer(path).map_err(|error| PaymentConfigError::SigningKey(error.to_string()))
            }
            (None, None, true) => {
                let secret = self
                    .common
                    .jwt_secret
                    .as_ref()
                    .map(|secret| secret.expose_secret())
                    .filter(|secret| !secret.is_empty())
                    .unwrap_or(DEV_JWT_SECRET);
                TokenSigner::hs256(PAYMENT_SVC_SUBJECT, secret.as_bytes())
                    .map_err(|error| PaymentConfigError::SigningKey(error.to_string()))
            }
            _ => Err(PaymentConfigError::MissingSecret(
                "PAYMENT_JWT_SIGNING_KEY_FILE (payment-svc's key for its tokens to billing)",
            )),
        }
    }

    /// payment-svc's TLS settings for billing: none (plaintext) without a CA file.
    pub fn billing_tls(
        &self,
    ) -> Result<Option<tonic::transport::ClientTlsConfig>, PaymentConfigError> {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|error| {
                PaymentConfigError::SigningKey(format!("TLS file {}: {error}", path.display()))
            })
        };
        let Some(ca) = &self.billing_tls_ca_file else {
            return Ok(None);
        };
        let mut tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?));
        match (&self.billing_tls_cert_file, &self.billing_tls_key_file) {
            (Some(cert), Some(key)) => {
                tls = tls.identity(tonic::transport::Identity::from_pem(
                    read(cert)?,
                    read(key)?,
                ));
            }
            (None, None) => {}
            _ => {
                return Err(PaymentConfigError::SigningKey(
                    "PAYMENT_BILLING_TLS_CERT_FILE and PAYMENT_BILLING_TLS_KEY_FILE go together"
                        .into(),
                ));
            }
        }
        Ok(Some(tls))
    }

    pub fn provider_timeout(&self) -> Result<Duration, PaymentConfigError> {
        nonzero("--provider-timeout-ms", self.provider_timeout_ms)
    }

    /// The background jobs' timings, checked.
    pub fn job_timings(&self) -> Result<JobTimings, PaymentConfigError> {
        if self.reconcile_after_ms <= self.provider_timeout_ms {
            return Err(PaymentConfigError::ReconcileTooSoon);
        }
        Ok(JobTimings {
            outbox_poll: nonzero("--outbox-poll-ms", self.outbox_poll_ms)?,
            reconcile_interval: nonzero("--reconcile-interval-ms", self.reconcile_interval_ms)?,
            reconcile_after: Duration::from_millis(self.reconcile_after_ms),
        })
    }
}

fn nonzero(name: &'static str, millis: u64) -> Result<Duration, PaymentConfigError> {
    if millis == 0 {
        return Err(PaymentConfigError::Zero(name));
    }
    Ok(Duration::from_millis(millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_a_secret() {
        let mut config = Config::dev(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            "sqlite://x.db".into(),
            "http://127.0.0.1:1".into(),
            "http://127.0.0.1:2",
        );
        config.bank_card_secret = Some("card-secret-card-secret".into());
        config.alipay_secret = Some("alipay-secret-alipay".into());
        config.wechat_pay_secret = Some("wechat-secret-wechat".into());
        config.fingerprint_key = Some("fingerprint-key-fingerprint-key-0123".into());
        config.common.jwt_secret = Some("jwt-secret-jwt-secret-jwt-secret-01".into());
        let shown = format!("{config:?} {:?}", config.providers().unwrap());
        for secret in [
            "card-secret",
            "alipay-secret",
            "wechat-secret",
            "fingerprint-key",
            "jwt-secret",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(config.fingerprint_key().is_ok());
    }
}
