//! billing-svc's configuration: flags with environment fallbacks.

use std::{net::SocketAddr, path::PathBuf};

use chrono::{FixedOffset, Offset as _};

use service_kit::{auth::PAYMENT_SVC_SUBJECT, config::CommonArgs};

use crate::clock::BusinessClock;

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
    /// A products file (TOML, the shape of billing-svc/products.toml); the demo set
    /// when unset.
    #[arg(long, env = "BILLING_PRODUCTS_FILE")]
    pub products_file: Option<PathBuf>,
    /// The business time zone as a UTC offset: bills fall due at its midnight.
    #[arg(
        long,
        env = "BILLING_BUSINESS_UTC_OFFSET",
        default_value = "+08:00",
        allow_hyphen_values = true
    )]
    pub business_utc_offset: FixedOffset,
    /// Close each business day automatically after midnight (catching up missed days).
    #[arg(long, env = "BILLING_AUTO_DAY_CLOSE", default_value_t = true, action = clap::ArgAction::Set)]
    pub auto_day_close: bool,
    /// Accounts one replica closes at once in a day close (each in its own
    /// transaction); replicas on one database share a close on top of this.
    #[arg(long, env = "BILLING_DAY_CLOSE_PARALLELISM", default_value_t = 4)]
    pub day_close_parallelism: usize,
    /// The token subject of payment-svc: with its issuer, the only caller
    /// ApplyRepayment and ReverseRepayment (scope billing:apply) are open to.
    #[arg(long, env = "BILLING_PAYMENT_SVC_SUBJECT", default_value = PAYMENT_SVC_SUBJECT)]
    pub payment_svc_subject: String,
    /// WatchEvents streams one caller may hold open at once.
    #[arg(long, env = "BILLING_WATCH_STREAMS_PER_CALLER", default_value_t = 16)]
    pub watch_streams_per_caller: usize,
    /// The issuer (`iss`, and its key in the keys file) of payment-svc's tokens.
    #[arg(long, env = "BILLING_PAYMENT_SVC_ISSUER", default_value = PAYMENT_SVC_SUBJECT)]
    pub payment_svc_issuer: String,
    #[command(flatten)]
    pub common: CommonArgs,
    /// Where "today" comes from: the wall clock, unless a test fixes it (no flag).
    #[arg(skip)]
    pub clock: BusinessClock,
}

impl Config {
    /// Dev settings for `billpay up` and tests.
    pub fn dev(listen_addr: SocketAddr, database_url: String) -> Self {
        Self {
            listen_addr,
            database_url,
            products_file: None,
            business_utc_offset: shanghai(),
            auto_day_close: true,
            day_close_parallelism: 4,
            payment_svc_subject: PAYMENT_SVC_SUBJECT.to_owned(),
            payment_svc_issuer: PAYMENT_SVC_SUBJECT.to_owned(),
            watch_streams_per_caller: 16,
            common: CommonArgs::dev(),
            clock: BusinessClock::default(),
        }
    }
}

/// Asia/Shanghai's offset, UTC+8 (no daylight saving), the default business zone.
pub fn shanghai() -> FixedOffset {
    // 8 hours is within the ±24 h east_opt accepts; the fallback is never taken.
    FixedOffset::east_opt(8 * 3600).unwrap_or(chrono::Utc.fix())
}
