//! The simulator's configuration: flags with environment fallbacks, validated at
//! start-up.

use std::{fmt, net::SocketAddr};

use super::provider::Provider;

/// Bank card's dev-only secret: public, so never for anything but a laptop or a test.
pub const DEV_BANK_CARD_SECRET: &str = "dev-bank-card-secret";
/// Alipay's dev-only secret.
pub const DEV_ALIPAY_SECRET: &str = "dev-alipay-secret";
/// WeChat Pay's dev-only secret.
pub const DEV_WECHAT_PAY_SECRET: &str = "dev-wechat-pay-secret";

/// The longest delay a flag accepts (10 minutes): a bigger one is a typo, and would
/// keep a held reply or a queued notification alive past any use.
const DELAY_MS_MAX: u64 = 600_000;

/// The simulator's settings.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "provider-sim",
    about = "Plays the bank-card, Alipay and WeChat Pay providers over HTTP (PROVIDER_PROTOCOL.md)"
)]
pub struct SimConfig {
    /// Address to serve HTTP on.
    #[arg(
        long,
        env = "BILLPAY_SIM_LISTEN_ADDR",
        default_value = "127.0.0.1:50060"
    )]
    pub listen_addr: SocketAddr,
    /// `sqlite://path` (or `postgres://…`): the ledger, which must be the simulator's
    /// own database.
    #[arg(
        long,
        env = "BILLPAY_SIM_DATABASE_URL",
        default_value = "sqlite://data/provider-sim.db"
    )]
    pub database_url: String,
    #[command(flatten)]
    pub secrets: ProviderSecrets,
    /// Milliseconds between a wallet's PENDING answer and its first notification.
    #[arg(long, env = "BILLPAY_SIM_NOTIFY_DELAY_MS", default_value_t = 200)]
    pub notify_delay_ms: u64,
    /// Milliseconds a "lost" reply (instrument ending 0119) is held back.
    #[arg(
        long,
        env = "BILLPAY_SIM_LOST_REPLY_DELAY_MS",
        default_value_t = 10_000
    )]
    pub lost_reply_delay_ms: u64,
    /// Export spans over OTLP/gRPC to this collector; unset or empty: no export.
    #[arg(long, env = "BILLPAY_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

/// Each provider's shared secret for signing requests and notifications.
#[derive(Clone, clap::Args)]
pub struct ProviderSecrets {
    /// Bank card's secret. The default is a public dev-only value: set a real one
    /// anywhere but a laptop.
    #[arg(
        long = "bank-card-secret",
        env = "BILLPAY_BANK_CARD_SECRET",
        default_value = DEV_BANK_CARD_SECRET,
        hide_env_values = true
    )]
    pub bank_card: String,
    /// Alipay's secret. The default is a public dev-only value: set a real one
    /// anywhere but a laptop.
    #[arg(
        long = "alipay-secret",
        env = "BILLPAY_ALIPAY_SECRET",
        default_value = DEV_ALIPAY_SECRET,
        hide_env_values = true
    )]
    pub alipay: String,
    /// WeChat Pay's secret. The default is a public dev-only value: set a real one
    /// anywhere but a laptop.
    #[arg(
        long = "wechat-pay-secret",
        env = "BILLPAY_WECHAT_PAY_SECRET",
        default_value = DEV_WECHAT_PAY_SECRET,
        hide_env_values = true
    )]
    pub wechat_pay: String,
}

/// A setting the simulator cannot start with.
#[derive(Debug, thiserror::Error)]
pub enum SimConfigError {
    #[error("the {0} secret is empty")]
    EmptySecret(&'static str),
    #[error("{name} is {value_ms} ms; at most {DELAY_MS_MAX} ms is accepted")]
    DelayTooLong { name: &'static str, value_ms: u64 },
}

impl SimConfig {
    /// Dev settings for `billpay up` and tests: dev secrets and the default delays.
    pub fn dev(listen_addr: SocketAddr, database_url: String) -> Self {
        Self {
            listen_addr,
            database_url,
            secrets: ProviderSecrets::dev(),
            notify_delay_ms: 200,
            lost_reply_delay_ms: 10_000,
            otlp_endpoint: None,
        }
    }

    /// Installs logging and tracing as these flags say; keep what it returns.
    pub fn telemetry(&self) -> service_kit::telemetry::Telemetry {
        let endpoint = self.otlp_endpoint.as_deref().filter(|url| !url.is_empty());
        service_kit::telemetry::init(false, "provider-sim", endpoint)
    }

    /// Refuses settings the simulator cannot honour.
    pub fn validate(&self) -> Result<(), SimConfigError> {
        for provider in Provider::ALL {
            if self.secrets.of(provider).is_empty() {
                return Err(SimConfigError::EmptySecret(provider.ledger_name()));
            }
        }
        for (name, value_ms) in [
            ("--notify-delay-ms", self.notify_delay_ms),
            ("--lost-reply-delay-ms", self.lost_reply_delay_ms),
        ] {
            if value_ms > DELAY_MS_MAX {
                return Err(SimConfigError::DelayTooLong { name, value_ms });
            }
        }
        Ok(())
    }
}

impl ProviderSecrets {
    /// The documented dev-only secrets.
    pub fn dev() -> Self {
        Self {
            bank_card: DEV_BANK_CARD_SECRET.to_owned(),
            alipay: DEV_ALIPAY_SECRET.to_owned(),
            wechat_pay: DEV_WECHAT_PAY_SECRET.to_owned(),
        }
    }

    /// `provider`'s secret, as HMAC key bytes.
    pub fn of(&self, provider: Provider) -> &[u8] {
        match provider {
            Provider::BankCard => self.bank_card.as_bytes(),
            Provider::Alipay => self.alipay.as_bytes(),
            Provider::WechatPay => self.wechat_pay.as_bytes(),
        }
    }
}

// Secrets stay out of logs and panics: Debug shows only which are the dev defaults.
impl fmt::Debug for ProviderSecrets {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = |secret: &str, dev: &str| if secret == dev { "<dev>" } else { "<set>" };
        formatter
            .debug_struct("ProviderSecrets")
            .field("bank_card", &shown(&self.bank_card, DEV_BANK_CARD_SECRET))
            .field("alipay", &shown(&self.alipay, DEV_ALIPAY_SECRET))
            .field(
                "wechat_pay",
                &shown(&self.wechat_pay, DEV_WECHAT_PAY_SECRET),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let config = SimConfig::try_parse_from(["provider-sim"]).unwrap();
        assert_eq!(config.listen_addr.to_string(), "127.0.0.1:50060");
        assert_eq!(config.database_url, "sqlite://data/provider-sim.db");
        assert_eq!(
            (config.notify_delay_ms, config.lost_reply_delay_ms),
            (200, 10_000)
        );
        assert_eq!(
            config.secrets.of(Provider::Alipay),
            DEV_ALIPAY_SECRET.as_bytes()
        );
        assert!(config.validate().is_ok());
    }

    #[test]
    fn refuses_empty_secrets_and_huge_delays() {
        let addr = "127.0.0.1:0".parse().unwrap();
        let mut config = SimConfig::dev(addr, "sqlite://x.db".into());
        config.secrets.wechat_pay.clear();
        assert!(matches!(
            config.validate(),
            Err(SimConfigError::EmptySecret("wechat_pay"))
        ));
        let mut config = SimConfig::dev(addr, "sqlite://x.db".into());
        config.lost_reply_delay_ms = DELAY_MS_MAX + 1;
        assert!(matches!(
            config.validate(),
            Err(SimConfigError::DelayTooLong { .. })
        ));
    }

    #[test]
    fn debug_hides_secrets() {
        let mut secrets = ProviderSecrets::dev();
        secrets.alipay = "real-alipay-secret".into();
        let shown = format!("{secrets:?}");
        assert!(!shown.contains("real-alipay-secret"), "{shown}");
        assert!(!shown.contains(DEV_BANK_CARD_SECRET), "{shown}");
    }
}
