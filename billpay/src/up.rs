//! `billpay up`: billing-svc and payment-svc in one process on SQLite files, with a
//! demo account, printing addresses, dev tokens and grpcurl commands.

use std::{future::Future, net::SocketAddr, path::PathBuf};

use anyhow::{Context as _, bail};
use billpay_contracts::{
    billing::v1::{CreateAccountRequest, billing_service_client::BillingServiceClient},
    common::v1::Money,
};
use payment_svc::sim::{ProviderSim, SimConfig};
use service_kit::auth::{
    DEFAULT_SERVICE_SCOPES, Role, TokenSigner,
    keys::{DevKeys, load_signer},
    max_lifetime_seconds, mint,
};
use tokio::sync::watch;

/// Dev tokens printed by `up` last this long (or their role's maximum, if shorter).
const DEV_TOKEN_TTL_SECONDS: i64 = 24 * 3600;
/// The account `up` opens so there is something to look at.
const DEMO_CUSTOMER_REF: &str = "demo-customer";

/// Arguments of `billpay up`.
#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// Where the SQLite files live.
    #[arg(long, env = "BILLPAY_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// billing-svc's address (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub billing_addr: SocketAddr,
    /// payment-svc's address (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:50052")]
    pub payment_addr: SocketAddr,
    /// payment-svc's provider-notification listener (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:50053")]
    pub notify_addr: SocketAddr,
    /// The provider simulator's address (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:50060")]
    pub sim_addr: SocketAddr,
    /// Log JSON lines instead of text.
    #[arg(long, env = "BILLPAY_JSON_LOGS")]
    pub json_logs: bool,
    /// Serve Prometheus metrics of both services (one process, one registry) on
    /// GET /metrics at this address; unset: none.
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
    /// Export both services' spans over OTLP/gRPC to this collector (one process:
    /// service name `billpay`); unset: none.
    #[arg(long, env = "BILLPAY_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Serve TLS (rustls) with a dev CA made in <data-dir>/tls: mutual TLS between
    /// payment-svc and billing-svc; grpcurl lines get -cacert.
    #[arg(long)]
    pub tls: bool,
}

/// A service task's end, for the one-line error: its error's message, or that it ended.
fn display_exit<E: std::fmt::Display>(result: Result<(), E>) -> String {
    match result {
        Ok(()) => "it returned without being asked to stop".to_owned(),
        Err(error) => format!("{error:#}"),
    }
}

/// What a failed start says: which part, where, and the flag that moves it.
fn starting(part: &str, addr: SocketAddr, flag: &str) -> String {
    format!("{part} cannot start on {addr} (change it with {flag}; port 0 picks a free one)")
}

/// Runs both services until `shutdown`, then drains both and returns.
pub async fn run(args: &UpArgs, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let sqlite_url = |file: &str| format!("sqlite://{}", args.data_dir.join(file).display());
    // Dev token keys, made on the first `up`: the services trust only their public
    // halves; payment-svc gets its own signing key, `up` and `billpay token` the dev
    // issuer's.
    let keys = DevKeys::ensure(&args.data_dir).context("cannot make the dev token keys")?;
    let key = load_signer(&keys.dev_signing_key).context("the dev signing key")?;
    let sim = ProviderSim::build(&SimConfig::dev(
        args.sim_addr,
        sqlite_url("provider-sim.db"),
    ))
    .await
    .with_context(|| starting("provider-sim", args.sim_addr, "--sim-addr"))?;
    let pki = if args.tls {
        Some(crate::tls::DevPki::ensure(&args.data_dir).context("cannot make the dev CA")?)
    } else {
        None
    };
    let mut billing_config =
        billing_svc::config::Config::dev(args.billing_addr, sqlite_url("billing.db"));
    billing_config.common.jwt_keys_file = Some(keys.keys_file.clone());
    billing_config.common.metrics_addr = args.metrics_addr;
    if let Some(pki) = &pki {
        billing_config.common.tls_cert_file = Some(pki.server_cert.clone());
        billing_config.common.tls_key_file = Some(pki.server_key.clone());
        billing_config.common.tls_client_ca_file = Some(pki.ca.clone());
    }
    let billing = billing_svc::app::Application::build(&billing_config)
        .await
        .with_context(|| starting("billing-svc", args.billing_addr, "--billing-addr"))?;
    let billing_addr = billing.local_addr();
    let metrics_addr = billing.metrics_addr();
    let mut payment_config = payment_svc::config::Config::dev(
        args.payment_addr,
        sqlite_url("payment.db"),
        format!(
            "{}://{billing_addr}",
            if pki.is_some() { "https" } else { "http" }
        ),
        &format!("http://{}", sim.local_addr()),
    );
    if let Some(pki) = &pki {
        payment_config.common.tls_cert_file = Some(pki.server_cert.clone());
        payment_config.common.tls_key_file = Some(pki.server_key.clone());
        payment_config.billing_tls_ca_file = Some(pki.ca.clone());
        payment_config.billing_tls_cert_file = Some(pki.client_cert.clone());
        payment_config.billing_tls_key_file = Some(pki.client_key.clone());
    }
    payment_config.notify_listen_addr = args.notify_addr;
    payment_config.common.jwt_keys_file = Some(keys.keys_file.clone());
    payment_config.jwt_signing_key_file = Some(keys.payment_signing_key.clone());
    let payment = payment_svc::app::Application::build(&payment_config)
        .await
        .with_context(|| {
            format!(
                "payment-svc cannot start on {} and {} (change them with --payment-addr and --notify-addr; \
                 port 0 picks a free one)",
                args.payment_addr, args.notify_addr
            )
        })?;
    let payment_addr = payment.local_addr();
    let notify_addr = payment.notify_addr();
    let sim_addr = sim.local_addr();

    let (stop, stopped) = watch::channel(());
    let until_stopped = |mut stopped: watch::Receiver<()>| async move {
        let _ = stopped.changed().await;
    };
    let mut sim_task = tokio::spawn(sim.run_until_stopped(until_stopped(stopped.clone())));
    let mut billing_task = tokio::spawn(billing.run_until_stopped(until_stopped(stopped.clone())));
    let stopped_notifier = stopped.clone();
    let mut payment_task = tokio::spawn(payment.run_until_stopped(until_stopped(stopped)));

    let billing_endpoint = crate::tls::BillingEndpoint {
        addr: billing_addr,
        tls: pki
            .as_ref()
            .map(crate::tls::DevPki::billing_client)
            .transpose()?,
    };
    let demo_account_id = open_demo_account(&billing_endpoint, &key).await?;
    let payment_endpoint = crate::tls::BillingEndpoint {
        addr: payment_addr,
        tls: billing_endpoint.tls.clone(),
    };
    let notifier = tokio::spawn(crate::notifier::run(
        billing_endpoint,
        key.clone(),
        args.data_dir.join("notifier.cursor"),
        stopped_notifier.clone(),
    ));
    let payment_notifier = tokio::spawn(crate::notifier::payments::run(
        payment_endpoint,
        key.clone(),
        args.data_dir.join("notifier-payments.cursor"),
        stopped_notifier,
    ));
    print_banner(
        args,
        [billing_addr, payment_addr, notify_addr, sim_addr],
        &key,
        &demo_account_id,
        pki.as_ref(),
    );
    if let Some(addr) = metrics_addr {
        println!("Metrics (both services, Prometheus text): curl http://{addr}/metrics");
    }

    tokio::select! {
        () = shutdown => {}
        result = &mut billing_task => bail!("billing-svc stopped unexpectedly: {}", display_exit(result?)),
        result = &mut payment_task => bail!("payment-svc stopped unexpectedly: {}", display_exit(result?)),
        result = &mut sim_task => bail!("provider-sim stopped unexpectedly: {}", display_exit(result?)),
    }
    let _ = stop.send(());
    let _ = notifier.await;
    let _ = payment_notifier.await;
    payment_task.await??;
    billing_task.await??;
    sim_task.await??;
    println!("billpay stopped cleanly.");
    Ok(())
}

/// Opens (or finds, on a restart) the demo account through the public API.
async fn open_demo_account(
    billing: &crate::tls::BillingEndpoint,
    key: &TokenSigner,
) -> anyhow::Result<String> {
    let token = mint(
        key,
        "billpay-up",
        Role::Service,
        &["billing:write"],
        None,
        60,
    );
    let mut client = BillingServiceClient::new(
        billing
            .connect()
            .await
            .context("cannot reach billing-svc to open the demo account")?,
    );
    let mut request = tonic::Request::new(CreateAccountRequest {
        customer_ref: DEMO_CUSTOMER_REF.into(),
        display_name: "Demo Customer".into(),
        phone: "13812341234".into(),
        credit_limit: Some(Money::new("CNY", "50000.00")),
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .context("token as metadata")?,
    );
    let account = client
        .create_account(request)
        .await
        .context("cannot open the demo account")?
        .into_inner()
        .account
        .context("CreateAccount answered without an account")?;
    Ok(account.account_id)
}

fn print_banner(
    args: &UpArgs,
    addrs: [SocketAddr; 4],
    key: &TokenSigner,
    demo_account_id: &str,
    pki: Option<&crate::tls::DevPki>,
) {
    // How grpcurl reaches each service: plaintext, or TLS with the dev CA (and, for
    // billing, which asks for one, the dev client certificate).
    let (billing_tls, payment_tls) = match pki {
        None => ("-plaintext".to_owned(), "-plaintext".to_owned()),
        Some(pki) => (
            format!(
                "-cacert {} -cert {} -key {}",
                pki.ca.display(),
                pki.client_cert.display(),
                pki.client_key.display()
            ),
            format!("-cacert {}", pki.ca.display()),
        ),
    };
    let ttl = |role| DEV_TOKEN_TTL_SECONDS.min(max_lifetime_seconds(role));
    let [billing, payment, notify, sim] = addrs;
    let service = mint(
        key,
        "dev-service",
        Role::Service,
        DEFAULT_SERVICE_SCOPES,
        None,
        ttl(Role::Service),
    );
    let operator = mint(
        key,
        "dev-operator",
        Role::Operator,
        &[],
        None,
        ttl(Role::Operator),
    );
    let customer = mint(
        key,
        "dev-customer",
        Role::Customer,
        &[],
        Some(demo_account_id),
        ttl(Role::Customer),
    );
    let auth = |token: &str| format!("-H 'authorization: Bearer {token}'");
    println!(
        "\
billpay is up (dev mode{tls_note}, data in {data}).
  billing-svc  {billing}
  payment-svc  {payment} (provider notifications on {notify})
  provider-sim {sim} (its ledger: curl http://{sim}/ledger)
  demo account {demo_account_id}

Dev tokens (signed with the dev issuer key in {keys}; service 24 h, operator 8 h, customer 24 h):
  service (all scopes but billing:apply)  {service}
  operator              {operator}
  customer ({demo_account_id})  {customer}

Try (grpcurl):
  grpcurl {billing_tls} {billing} list
  grpcurl {payment_tls} {payment} list
  grpcurl {billing_tls} {billing} describe billing.v1.BillingService
  grpcurl {billing_tls} {billing} grpc.health.v1.Health/Check
  grpcurl {payment_tls} {payment} grpc.health.v1.Health/Check
  grpcurl {billing_tls} {service_auth} -d '{{\"customer_ref\":\"c-1001\",\"display_name\":\"Li Lei\",\"phone\":\"13912345678\",\"credit_limit\":{{\"currency_code\":\"CNY\",\"amount\":\"20000.00\"}}}}' {billing} billing.v1.BillingService/CreateAccount
  grpcurl {billing_tls} {operator_auth} -d '{{\"account_id\":\"{demo_account_id}\"}}' {billing} billing.v1.BillingService/GetAccount
  grpcurl {billing_tls} {customer_auth} -d '{{\"account_id\":\"{demo_account_id}\"}}' {billing} billing.v1.BillingService/GetAccount
  grpcurl {billing_tls} {service_auth} {billing} billing.v1.BillingService/ListProducts
  grpcurl {billing_tls} {service_auth} -d '{{\"product_id\":\"mall-fee\",\"term_count\":12,\"price\":{{\"currency_code\":\"CNY\",\"amount\":\"5999.00\"}}}}' {billing} billing.v1.BillingService/QuotePlan
  grpcurl {billing_tls} {service_auth} -d '{{\"account_id\":\"{demo_account_id}\",\"order_ref\":\"demo-phone\",\"product_id\":\"mall-fee\",\"term_count\":12,\"price\":{{\"currency_code\":\"CNY\",\"amount\":\"5999.00\"}}}}' {billing} billing.v1.BillingService/CreatePlan
  grpcurl {billing_tls} {customer_auth} -d '{{\"account_id\":\"{demo_account_id}\",\"page_size\":3}}' {billing} billing.v1.BillingService/ListBills
  grpcurl {billing_tls} {customer_auth} -d '{{\"account_id\":\"{demo_account_id}\"}}' {billing} billing.v1.BillingService/GetAccountSummary
  grpcurl {billing_tls} {customer_auth} -d '{{\"account_id\":\"{demo_account_id}\",\"target\":{{\"amount\":{{\"currency_code\":\"CNY\",\"amount\":\"100.00\"}}}}}}' {billing} billing.v1.BillingService/QuoteRepayment
  grpcurl {payment_tls} {customer_auth} -d '{{\"idempotency_key\":\"banner-pay-1\",\"account_id\":\"{demo_account_id}\",\"target\":{{\"amount\":{{\"currency_code\":\"CNY\",\"amount\":\"100.00\"}}}},\"expected_amount\":{{\"currency_code\":\"CNY\",\"amount\":\"100.00\"}},\"method\":\"PAYMENT_METHOD_BANK_CARD\",\"instrument\":\"tok_6222020000004242\"}}' {payment} payment.v1.PaymentService/CreateRepayment
  grpcurl {billing_tls} {service_auth} -d '{{}}' {billing} billing.v1.BillingService/RunDayClose
  grpcurl {billing_tls} {service_auth} -d '{{\"after_id\":0,\"stop_at_end\":true}}' {billing} billing.v1.BillingService/WatchEvents
  grpcurl {billing_tls} {service_auth} -d '{{\"account_id\":\"{demo_account_id}\",\"request_id\":\"risk-review-1\",\"new_limit\":{{\"currency_code\":\"CNY\",\"amount\":\"60000.00\"}},\"reason\":\"annual risk review\"}}' {billing} billing.v1.BillingService/UpdateCreditLimit
  grpcurl {billing_tls} {customer_auth} -d '{{\"account_id\":\"{demo_account_id}\"}}' {billing} billing.v1.BillingService/ListCreditLimitChanges
  grpcurl {billing_tls} {service_auth} -d '{{\"plan_id\":\"PLAN_ID_FROM_CREATEPLAN\",\"request_id\":\"return-1\",\"reason\":\"goods returned\"}}' {billing} billing.v1.BillingService/CancelPlan

Autopay (consent is the customer's alone; revoke as customer, operator or service):
  grpcurl {payment_tls} {customer_auth} -d '{{\"account_id\":\"{demo_account_id}\",\"idempotency_key\":\"consent-1\",\"method\":\"PAYMENT_METHOD_BANK_CARD\",\"instrument\":\"tok_4242424242424242\",\"max_amount_per_debit\":{{\"currency_code\":\"CNY\",\"amount\":\"1000.00\"}},\"consent\":{{\"text_version\":\"autopay-v1\",\"accepted_at\":\"{consent_time}\"}}}}' {payment} payment.v1.PaymentService/CreateMandate
  grpcurl {payment_tls} {customer_auth} -d '{{\"account_id\":\"{demo_account_id}\"}}' {payment} payment.v1.PaymentService/ListMandates
  grpcurl {payment_tls} {customer_auth} -d '{{\"mandate_id\":\"<mandate_id>\"}}' {payment} payment.v1.PaymentService/GetMandate
  grpcurl {payment_tls} {operator_auth} -d '{{\"mandate_id\":\"<mandate_id>\",\"reason\":\"customer called\"}}' {payment} payment.v1.PaymentService/RevokeMandate
  grpcurl {payment_tls} {service_auth} -d '{{\"as_of\":\"{today}\"}}' {payment} payment.v1.PaymentService/RunAutopay
  grpcurl {payment_tls} {service_auth} -d '{{\"after_id\":0,\"stop_at_end\":true}}' {payment} payment.v1.PaymentService/WatchPaymentEvents

Customer notifications (an SMS simulator following WatchEvents and WatchPaymentEvents) appear in the log.

Ctrl-C (or SIGTERM) stops it cleanly.",
        data = args.data_dir.display(),
        keys = service_kit::auth::keys::DevKeys::in_dir(&args.data_dir).dev_signing_key.display(),
        service_auth = auth(&service),
        operator_auth = auth(&operator),
        customer_auth = auth(&customer),
        tls_note = if pki.is_some() { ", TLS with the dev CA" } else { "" },
        consent_time = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ"),
        today = chrono::Utc::now()
            .with_timezone(&payment_svc::config::shanghai())
            .date_naive(),
        billing_tls = billing_tls,
        payment_tls = payment_tls,
    );
}
