//! Who may call what: JWT verification as a tower layer, and the caller it leaves in
//! each request's extensions for handlers to scope accounts with.
//!
//! The layer decides by role and scope from a per-service table of RPC rules. It
//! cannot see request bodies, so account scoping (customers see only their own
//! account) and operator auditing happen in the handlers, through [`Caller`].

mod jwt;
pub mod keys;
mod layer;

use serde::{Deserialize, Serialize};
use tonic::Status;

pub use jwt::{
    Audience, BILLING_AUDIENCE, BadKey, Claims, LEEWAY_SECONDS, PAYMENT_AUDIENCE, SECRET_BYTES_MIN,
    SecretTooShort, TokenError, TokenSigner, TokenVerifier, TrustedKey, max_lifetime_seconds,
};
pub use layer::{AuthLayer, AuthService, OwnedScope, TokenExpiry};

/// The HS256 secret a service in dev mode without a keys file accepts when none is
/// configured. Public on purpose: outside dev mode HS256 is refused altogether.
pub const DEV_JWT_SECRET: &str = "billpay-dev-secret-not-for-production-use";

/// The scope that marks money applied to bills. No default token carries it: billing
/// grants it to payment-svc's identity alone (see [`AuthLayer::grant_only_to`]).
pub const APPLY_SCOPE: &str = "billing:apply";

/// The identity payment-svc mints its tokens to billing under.
pub const PAYMENT_SVC_SUBJECT: &str = "payment-svc";

/// The scopes a service token gets when none are asked for: every scope but
/// [`APPLY_SCOPE`].
pub const DEFAULT_SERVICE_SCOPES: &[&str] = &[
    "billing:read",
    "billing:write",
    "billing:limits",
    "billing:admin",
    "billing:events",
    "payment:read",
    "payment:write",
    "payment:refund",
    "payment:admin",
];

/// Every scope a service token can hold (SPEC §7).
pub const ALL_SCOPES: &[&str] = &[
    "billing:read",
    "billing:write",
    "billing:limits",
    "billing:apply",
    "billing:admin",
    "billing:events",
    "payment:read",
    "payment:write",
    "payment:refund",
    "payment:admin",
];

/// Mints a token of `signer`'s issuer for `subject`, valid from now for `ttl_seconds`,
/// for the audiences its role and scopes reach ([`audiences_for`]): what `billpay
/// token`, `billpay up`, payment-svc and the tests hand out.
pub fn mint(
    signer: &TokenSigner,
    subject: &str,
    role: Role,
    scopes: &[&str],
    account_id: Option<&str>,
    ttl_seconds: i64,
) -> String {
    mint_for(
        signer,
        audiences_for(role, scopes),
        subject,
        role,
        scopes,
        account_id,
        ttl_seconds,
    )
}

/// Like [`mint`], for the audiences `aud`.
pub fn mint_for(
    signer: &TokenSigner,
    aud: Audience,
    subject: &str,
    role: Role,
    scopes: &[&str],
    account_id: Option<&str>,
    ttl_seconds: i64,
) -> String {
    let now = crate::clock::now_unix_seconds();
    signer.sign(&Claims {
        iss: signer.issuer().to_owned(),
        sub: subject.to_owned(),
        aud,
        role,
        scopes: scopes.iter().map(|scope| (*scope).to_owned()).collect(),
        account_id: account_id.map(str::to_owned),
        exp: now + ttl_seconds,
        iat: now,
        nbf: Some(now),
    })
}

/// The services a token may be used at: a service token where its scopes apply
/// (`billing:*` at billing, `payment:*` at payment), an operator's or customer's at
/// both.
pub fn audiences_for(role: Role, scopes: &[&str]) -> Audience {
    let mut audiences = Vec::new();
    for (prefix, audience) in [
        ("billing:", BILLING_AUDIENCE),
        ("payment:", PAYMENT_AUDIENCE),
    ] {
        let reaches = match role {
            Role::Service => scopes.iter().any(|scope| scope.starts_with(prefix)),
            Role::Operator | Role::Customer => true,
        };
        if reaches {
            audiences.push(audience.to_owned());
        }
    }
    Audience::Many(audiences)
}

/// What kind of party a token speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Another service; allowed what its scopes name.
    Service,
    /// A support operator; read-only everywhere, every call audited.
    Operator,
    /// A customer; their own account only.
    Customer,
}

/// Which roles an RPC admits, besides services holding its scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Services with the scope only.
    ServiceOnly,
    /// Also operators (audited) and the customer, for their own account.
    Read,
    /// Also the customer, for their own account; not operators.
    CustomerWrite,
    /// The customer alone, for their own account: an act only they may do (consent);
    /// no service or operator, whatever its scopes.
    CustomerOnly,
    /// The customer, services with the scope, and operators acting on the customer's
    /// call (audited): a write operators may do, the one exception to read-only.
    OperatorWrite,
}

/// The rule for one RPC, by its full gRPC path.
#[derive(Debug, Clone, Copy)]
pub struct RpcRule {
    /// `/package.Service/Method`.
    pub path: &'static str,
    /// The scope a service token needs.
    pub scope: &'static str,
    pub access: Access,
}

/// The verified bearer of a request, put in its extensions by [`AuthLayer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub subject: String,
    pub role: Role,
    /// Set for customers: the only account they may touch.
    pub account_id: Option<String>,
}

impl Caller {
    /// The caller of a request that passed [`AuthLayer`].
    pub fn of<T>(request: &tonic::Request<T>) -> Result<&Caller, Status> {
        request
            .extensions()
            .get::<Caller>()
            .ok_or_else(|| Status::unauthenticated("no verified caller on this request"))
    }

    /// Refuses a customer acting on any account but their own. Services and
    /// operators (whose role already limits what they may do) pass.
    pub fn check_account(&self, account_id: &str) -> Result<(), Status> {
        match (&self.role, &self.account_id) {
            (Role::Customer, Some(own)) if own == account_id => Ok(()),
            (Role::Customer, _) => Err(Status::permission_denied(
                "a customer token may only access its own account",
            )),
            (Role::Service | Role::Operator, _) => Ok(()),
        }
    }

    pub fn is_operator(&self) -> bool {
        self.role == Role::Operator
    }
}

/// The paths of `service`'s methods (e.g. `billing.v1.BillingService`) in the
/// contracts that `rules` does not cover: each would be refused to everyone.
pub fn methods_without_rules(service: &str, rules: &[RpcRule]) -> Vec<String> {
    use prost::Message as _;
    let Ok(files) = prost_types::FileDescriptorSet::decode(billpay_contracts::FILE_DESCRIPTOR_SET)
    else {
        return vec!["<the descriptor set does not decode>".to_owned()];
    };
    let (package, name) = service.rsplit_once('.').unwrap_or(("", service));
    files
        .file
        .iter()
        .filter(|file| file.package() == package)
        .flat_map(|file| file.service.iter())
        .filter(|candidate| candidate.name() == name)
        .flat_map(|found| found.method.iter())
        .map(|method| format!("/{service}/{}", method.name()))
        .filter(|path| !rules.iter().any(|rule| rule.path == path))
        .collect()
}

/// Decides whether `claims` may call the RPC `rule` describes.
fn admits(rule: &RpcRule, claims: &Claims) -> bool {
    match claims.role {
        Role::Service => {
            rule.access != Access::CustomerOnly
                && claims.scopes.iter().any(|scope| scope == rule.scope)
        }
        Role::Operator => matches!(rule.access, Access::Read | Access::OperatorWrite),
        Role::Customer => claims.account_id.is_some() && rule.access != Access::ServiceOnly,
    }
}

#[cfg(test)]
mod admits_tests {
    use super::*;

    fn claims(role: Role, scopes: &[&str], account_id: Option<&str>) -> Claims {
        Claims {
            iss: "t".into(),
            sub: "t".into(),
            aud: Audience::One("x".into()),
            role,
            scopes: scopes.iter().map(|scope| (*scope).to_owned()).collect(),
            account_id: account_id.map(str::to_owned),
            exp: 0,
            iat: 0,
            nbf: None,
        }
    }

    #[test]
    fn consent_is_the_customers_alone_and_revocation_admits_operators() {
        let consent = RpcRule {
            path: "/x.v1.S/Consent",
            scope: "x:write",
            access: Access::CustomerOnly,
        };
        let revoke = RpcRule {
            path: "/x.v1.S/Revoke",
            scope: "x:write",
            access: Access::OperatorWrite,
        };
        let service = claims(Role::Service, &["x:write"], None);
        let operator = claims(Role::Operator, &[], None);
        let customer = claims(Role::Customer, &[], Some("acc_1"));
        let cases = [
            (&consent, &service, false),
            (&consent, &operator, false),
            (&consent, &customer, true),
            (&revoke, &service, true),
            (&revoke, &claims(Role::Service, &["x:read"], None), false),
            (&revoke, &operator, true),
            (&revoke, &customer, true),
        ];
        for (rule, claims, admitted) in cases {
            assert_eq!(
                admits(rule, claims),
                admitted,
                "{} {:?}",
                rule.path,
                claims.role
            );
        }
    }
}
