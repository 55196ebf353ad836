//! payment-svc's configuration: flags with environment fallbacks.

use std::net::SocketAddr;

use service_kit::config::CommonArgs;

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
    #[command(flatten)]
    pub common: CommonArgs,
}

impl Config {
    /// Dev settings for `billpay up` and tests.
    pub fn dev(listen_addr: SocketAddr, database_url: String) -> Self {
        Self {
            listen_addr,
            database_url,
            common: CommonArgs::dev(),
        }
    }
}
