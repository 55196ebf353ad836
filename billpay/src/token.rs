//! `billpay token`: mints a bearer token signed with an issuer's key (the dev issuer's,
//! which `billpay up` makes in its data dir, unless told otherwise).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use service_kit::auth::{
    ALL_SCOPES, DEFAULT_SERVICE_SCOPES, Role, TokenSigner,
    keys::{DEV_ISSUER, DevKeys, load_signer},
    max_lifetime_seconds, mint,
};

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
    /// The signing key file to mint with; without it, the dev issuer's key that
    /// `billpay up` made in --data-dir.
    #[arg(long, env = "BILLPAY_SIGNING_KEY_FILE")]
    pub signing_key_file: Option<PathBuf>,
    /// Where `billpay up` keeps its data (and dev keys).
    #[arg(long, env = "BILLPAY_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Mint an HS256 token with this secret instead: only for services running in
    /// dev mode without a keys file.
    #[arg(long, env = "BILLPAY_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<secrecy::SecretString>,
}

/// The key to mint with: `signing_key_file`, else the HS256 `jwt_secret`, else the
/// dev issuer's key in `data_dir`.
pub fn signer(
    signing_key_file: Option<&Path>,
    data_dir: &Path,
    jwt_secret: Option<&str>,
) -> anyhow::Result<TokenSigner> {
    if let Some(path) = signing_key_file {
        return load_signer(path).context("--signing-key-file");
    }
    if let Some(secret) = jwt_secret.filter(|secret| !secret.is_empty()) {
        return TokenSigner::hs256(DEV_ISSUER, secret.as_bytes()).context("BILLPAY_JWT_SECRET");
    }
    let path = DevKeys::in_dir(data_dir).dev_signing_key;
    if !path.exists() {
        bail!(
            "no signing key at {}: run `billpay up` once (it makes the dev keys there), or pass --signing-key-file",
            path.display()
        );
    }
    load_signer(&path).with_context(|| format!("the dev signing key {}", path.display()))
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
    let key = signer(
        args.signing_key_file.as_deref(),
        &args.data_dir,
        args.jwt_secret
            .as_ref()
            .map(secrecy::ExposeSecret::expose_secret),
    )?;
    let max = max_lifetime_seconds(args.role);
    if args.ttl_secs <= 0 || args.ttl_secs > max {
        bail!("--ttl-secs must be 1 to {max} for this role");
    }
    if args.subject.trim().is_empty() {
        bail!("--subject must not be empty");
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
