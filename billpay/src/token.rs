//! `billpay token`: mints a bearer token signed with the configured secret.

use anyhow::{Context as _, bail};
use service_kit::auth::{ALL_SCOPES, DEFAULT_SERVICE_SCOPES, DEV_JWT_SECRET, JwtKey, Role, mint};

/// Arguments of `billpay token`.
#[derive(Debug, Clone, clap::Args)]
pub struct TokenArgs {
    /// service, operator or customer.
    #[arg(long, value_parser = parse_role)]
    pub role: Role,
    /// A scope for a service token (repeatable). A service token without --scope gets
    /// every scope but billing:apply, which billing honours from payment-svc alone.
    #[arg(long = "scope")]
    pub scopes: Vec<String>,
    /// The account a customer token is limited to (required for customers).
    #[arg(long)]
    pub account: Option<String>,
    /// The token's subject.
    #[arg(long, default_value = "dev")]
    pub subject: String,
    /// Seconds until the token expires.
    #[arg(long, default_value_t = 3600)]
    pub ttl_secs: i64,
    /// Signing secret; without it, the documented dev secret.
    #[arg(long, env = "BILLPAY_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
}

fn parse_role(text: &str) -> Result<Role, String> {
    match text {
        "service" => Ok(Role::Service),
        "operator" => Ok(Role::Operator),
        "customer" => Ok(Role::Customer),
        _ => Err("must be service, operator or customer".into()),
    }
}

/// The token `args` describe.
pub fn run(args: &TokenArgs) -> anyhow::Result<String> {
    let secret = args.jwt_secret.as_deref().unwrap_or(DEV_JWT_SECRET);
    let key = JwtKey::new(secret.as_bytes()).context("BILLPAY_JWT_SECRET")?;
    if args.ttl_secs <= 0 {
        bail!("--ttl-secs must be positive");
    }
    let unknown: Vec<_> = args
        .scopes
        .iter()
        .filter(|scope| !ALL_SCOPES.contains(&scope.as_str()))
        .collect();
    if !unknown.is_empty() {
        bail!(
            "unknown scope(s) {unknown:?}; known: {}",
            ALL_SCOPES.join(", ")
        );
    }
    let scopes: Vec<&str> = match args.role {
        Role::Service if args.scopes.is_empty() => DEFAULT_SERVICE_SCOPES.to_vec(),
        Role::Service => args.scopes.iter().map(String::as_str).collect(),
        Role::Operator | Role::Customer if !args.scopes.is_empty() => {
            bail!("--scope applies to service tokens only")
        }
        Role::Operator | Role::Customer => Vec::new(),
    };
    match (args.role, &args.account) {
        (Role::Customer, None) => bail!("a customer token needs --account"),
        (Role::Service | Role::Operator, Some(_)) => {
            bail!("--account applies to customer tokens only")
        }
        _ => {}
    }
    Ok(mint(
        &key,
        &args.subject,
        args.role,
        &scopes,
        args.account.as_deref(),
        args.ttl_secs,
    ))
}
