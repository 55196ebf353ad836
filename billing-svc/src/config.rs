//! billing-svc's configuration: flags with environment fallbacks.

use std::net::SocketAddr;

use service_kit::config::CommonArgs;

/// billing-svc's settings.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "billing-svc",
    about = "Accounts, credit limits, installment plans and bills over gRPC"
)]
pub struct Config {
    /// Address to serve gRPC on.
    #[arg(long, env = "BILLING_LISTEN_ADDR", default_value = "127.0.0.1:50051")]
    pub listen_addr: SocketAddr,
    /// `sqlite://path` or `postgres://…`; billing-svc's own database.
    #[arg(
        long,
        env = "BILLING_DATABASE_URL",
        default_value = "sqlite://data/billing.db"
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
