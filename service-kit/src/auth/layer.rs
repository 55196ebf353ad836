//! The tower layer that authenticates every RPC but health and reflection.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use tonic::{Status, body::Body};
use tower::{Layer, Service};

use super::{Caller, RpcRule, TokenVerifier, admits};
use crate::{
    audit::{self, AuditSlot},
    clock::now_unix_seconds,
    db::Db,
    text::{STATUS_MESSAGE_BYTES_MAX, bounded},
};

/// Paths anyone may call: load balancers and grpcurl need them before any token.
const PUBLIC_PATH_PREFIXES: &[&str] = &["/grpc.health.v1.Health/", "/grpc.reflection."];

/// Verifies `authorization: Bearer <JWT>` and the caller's right to the RPC.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    verifier: TokenVerifier,
    rules: &'static [RpcRule],
    /// Scopes honoured only in the tokens of one issuer and subject.
    owned_scopes: Vec<OwnedScope>,
    /// Where operator calls are audited.
    audit: Option<Db>,
}

/// When the request's token expires (unix seconds), in its extensions beside the
/// [`Caller`]: long streams end then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenExpiry(pub i64);

/// A refusal, and the operator it refused (for the audit), if the token was one's.
type Refusal = (Status, Option<String>);

/// A scope honoured only in the tokens `issuer` signs for `subject`.
#[derive(Debug, Clone)]
pub struct OwnedScope {
    pub scope: &'static str,
    pub issuer: String,
    pub subject: String,
}

impl AuthLayer {
    /// `rules` lists every RPC of the service; a path it does not list is refused.
    pub fn new(verifier: TokenVerifier, rules: &'static [RpcRule]) -> Self {
        Self {
            verifier,
            rules,
            owned_scopes: Vec::new(),
            audit: None,
        }
    }

    /// Audits every operator call, admitted or refused, in `db`'s `operator_audit`.
    pub fn audit_operators_in(mut self, db: Db) -> Self {
        self.audit = Some(db);
        self
    }

    /// Honours `owned.scope` only in tokens its issuer signed for its subject: any
    /// other token calling an RPC that needs it is PERMISSION_DENIED, whatever it
    /// claims.
    pub fn grant_only_to(mut self, owned: OwnedScope) -> Self {
        self.owned_scopes.push(owned);
        self
    }

    /// UNIMPLEMENTED for a path this server does not serve, naming what it does serve.
    fn unknown_method(&self, path: &str) -> Status {
        let mut services: Vec<&str> = self
            .rules
            .iter()
            .filter_map(|rule| rule.path.trim_start_matches('/').split('/').next())
            .collect();
        services.dedup();
        Status::unimplemented(bounded(
            &format!(
                "this server does not serve {path}; it serves {}",
                services.join(", ")
            ),
            STATUS_MESSAGE_BYTES_MAX,
        ))
    }

    /// The caller for `path` and `authorization`, or the status that refuses them.
    /// `Ok(None)` for public paths.
    fn authorize(
        &self,
        path: &str,
        authorization: Option<&[u8]>,
    ) -> Result<Option<(Caller, TokenExpiry)>, Refusal> {
        if PUBLIC_PATH_PREFIXES
            .iter()
            .any(|prefix| path.starts_with(prefix))
        {
            return Ok(None);
        }
        // Reflection already tells anyone what this server serves, so a path it does not
        // serve (the other service's port, a typo) is named before any token is asked for.
        let rule = self
            .rules
            .iter()
            .find(|rule| rule.path == path)
            .ok_or_else(|| (self.unknown_method(path), None))?;
        let token = authorization
            .and_then(|value| std::str::from_utf8(value).ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or_else(|| {
                (
                    Status::unauthenticated("missing 'authorization: Bearer <token>' metadata"),
                    None,
                )
            })?;
        let claims = self
            .verifier
            .verify(token.trim(), now_unix_seconds())
            .map_err(|error| (Status::unauthenticated(error.to_string()), None))?;
        let operator = (claims.role == super::Role::Operator).then(|| claims.sub.clone());
        if !admits(rule, &claims) {
            return Err((
                Status::permission_denied(format!(
                    "role {:?} with scopes {:?} may not call {path} (needs scope {})",
                    claims.role, claims.scopes, rule.scope
                )),
                operator,
            ));
        }
        if let Some(owned) = self.owned_scopes.iter().find(|owned| {
            owned.scope == rule.scope && (owned.issuer != claims.iss || owned.subject != claims.sub)
        }) {
            return Err((
                Status::permission_denied(format!(
                    "{} is granted to {} (as issued by {}) alone; {path} is not open to other callers",
                    owned.scope, owned.subject, owned.issuer
                )),
                operator,
            ));
        }
        Ok(Some((
            Caller {
                subject: claims.sub,
                role: claims.role,
                account_id: claims.account_id,
            },
            TokenExpiry(claims.exp),
        )))
    }
}

/// `response` with its status message cut to [`STATUS_MESSAGE_BYTES_MAX`]: no
/// handler's error echoes a caller's input unbounded.
fn bounded_status(response: http::Response<Body>) -> http::Response<Body> {
    match Status::from_header_map(response.headers()) {
        Some(status) if status.message().len() > STATUS_MESSAGE_BYTES_MAX => {
            let message = bounded(status.message(), STATUS_MESSAGE_BYTES_MAX).into_owned();
            Status::with_details(status.code(), message, status.details().to_vec().into())
                .into_http()
        }
        _ => response,
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    layer: AuthLayer,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'static>>;

impl<S, RequestBody> Service<http::Request<RequestBody>> for AuthService<S>
where
    S: Service<http::Request<RequestBody>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    RequestBody: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, mut request: http::Request<RequestBody>) -> Self::Future {
        let authorization = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(http::HeaderValue::as_bytes);
        let path = request.uri().path().to_owned();
        let rpc = path.rsplit('/').next().unwrap_or_default().to_owned();
        match self.layer.authorize(&path, authorization) {
            Ok(caller) => {
                let audit = caller
                    .as_ref()
                    .map(|(caller, _)| caller)
                    .filter(|caller| caller.is_operator())
                    .and_then(|caller| Some((self.layer.audit.clone()?, caller.subject.clone())));
                if let Some((caller, expiry)) = caller {
                    tracing::Span::current().record("caller", caller.subject.as_str());
                    request.extensions_mut().insert(caller);
                    request.extensions_mut().insert(expiry);
                }
                // The clone that was driven ready is the one that must serve the call.
                let clone = self.inner.clone();
                let mut ready = std::mem::replace(&mut self.inner, clone);
                let call = ready.call(request);
                let Some((db, subject)) = audit else {
                    return Box::pin(async move { call.await.map(bounded_status) });
                };
                Box::pin(async move {
                    let slot = AuditSlot::default();
                    let response = bounded_status(slot.clone().scope(call).await?);
                    let code = Status::from_header_map(response.headers())
                        .map_or(tonic::Code::Ok, |status| status.code());
                    let account = slot.account();
                    match audit::write(&db, &subject, &rpc, account.as_deref(), code).await {
                        Ok(()) => Ok(response),
                        Err(error) => {
                            tracing::error!(%error, "operator audit row not written; refusing the call");
                            Ok(Status::internal("the call could not be audited").into_http())
                        }
                    }
                })
            }
            Err((status, operator)) => {
                tracing::info!(code = ?status.code(), message = status.message(), "refused");
                match (operator, self.layer.audit.clone()) {
                    (Some(subject), Some(db)) => Box::pin(async move {
                        if let Err(error) =
                            audit::write(&db, &subject, &rpc, None, status.code()).await
                        {
                            tracing::error!(%error, "operator audit row of a refusal not written");
                        }
                        Ok(status.into_http())
                    }),
                    _ => Box::pin(async move { Ok(status.into_http()) }),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Access, Claims, Role, TokenSigner};

    const RULES: &[RpcRule] = &[
        RpcRule {
            path: "/x.v1.S/Read",
            scope: "x:read",
            access: Access::Read,
        },
        RpcRule {
            path: "/x.v1.S/Write",
            scope: "x:write",
            access: Access::ServiceOnly,
        },
        RpcRule {
            path: "/x.v1.S/Pay",
            scope: "x:pay",
            access: Access::CustomerWrite,
        },
        RpcRule {
            path: "/x.v1.S/Apply",
            scope: "x:apply",
            access: Access::ServiceOnly,
        },
    ];

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn layer() -> AuthLayer {
        AuthLayer::new(TokenVerifier::hs256_dev("x", SECRET).unwrap(), RULES).grant_only_to(
            OwnedScope {
                scope: "x:apply",
                issuer: "payer".into(),
                subject: "payer".into(),
            },
        )
    }

    fn bearer(role: Role, scopes: &[&str], account_id: Option<&str>) -> Vec<u8> {
        bearer_as("t", role, scopes, account_id)
    }

    fn bearer_as(subject: &str, role: Role, scopes: &[&str], account_id: Option<&str>) -> Vec<u8> {
        let claims = Claims {
            iss: subject.into(),
            sub: subject.into(),
            aud: crate::auth::Audience::One("x".into()),
            role,
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            account_id: account_id.map(str::to_owned),
            exp: now_unix_seconds() + 60,
            iat: now_unix_seconds(),
            nbf: None,
        };
        let signer = TokenSigner::hs256(subject, SECRET).unwrap();
        format!("Bearer {}", signer.sign(&claims)).into_bytes()
    }

    #[test]
    fn decides_by_role_scope_and_path() {
        use tonic::Code::{PermissionDenied as Denied, Unauthenticated, Unimplemented};
        let service_read = bearer(Role::Service, &["x:read"], None);
        let operator = bearer(Role::Operator, &[], None);
        let customer = bearer(Role::Customer, &[], Some("acc_1"));
        let customer_without_account = bearer(Role::Customer, &[], None);
        let payer = bearer_as("payer", Role::Service, &["x:apply"], None);
        let other_payer = bearer(Role::Service, &["x:apply", "x:read", "x:write"], None);
        // (path, authorization metadata, the refusal expected or None)
        type Case<'a> = (&'a str, Option<&'a [u8]>, Option<tonic::Code>);
        let cases: &[Case] = &[
            ("/grpc.health.v1.Health/Check", None, None),
            (
                "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                None,
                None,
            ),
            ("/x.v1.S/Read", None, Some(Unauthenticated)),
            (
                "/x.v1.S/Read",
                Some(b"Bearer nonsense"),
                Some(Unauthenticated),
            ),
            ("/x.v1.S/Read", Some(b"Basic abc"), Some(Unauthenticated)),
            ("/x.v1.S/Read", Some(&service_read), None),
            ("/x.v1.S/Write", Some(&service_read), Some(Denied)),
            // A path this server does not serve: named as such, token or not.
            ("/x.v1.S/Unknown", Some(&service_read), Some(Unimplemented)),
            ("/y.v1.Other/Read", None, Some(Unimplemented)),
            ("/x.v1.S/Read", Some(&operator), None),
            ("/x.v1.S/Write", Some(&operator), Some(Denied)),
            ("/x.v1.S/Pay", Some(&operator), Some(Denied)),
            ("/x.v1.S/Read", Some(&customer), None),
            ("/x.v1.S/Pay", Some(&customer), None),
            ("/x.v1.S/Apply", Some(&payer), None),
            ("/x.v1.S/Apply", Some(&other_payer), Some(Denied)),
            ("/x.v1.S/Apply", Some(&customer), Some(Denied)),
            ("/x.v1.S/Read", Some(&other_payer), None),
            ("/x.v1.S/Write", Some(&customer), Some(Denied)),
            (
                "/x.v1.S/Read",
                Some(&customer_without_account),
                Some(Denied),
            ),
        ];
        for (path, authorization, expected) in cases {
            let got = layer()
                .authorize(path, *authorization)
                .err()
                .map(|(s, _)| s.code());
            assert_eq!(
                got,
                *expected,
                "{path} {:?}",
                authorization.map(String::from_utf8_lossy)
            );
        }
    }

    #[test]
    fn an_unknown_path_names_the_services_served() {
        let (status, operator) = layer().authorize("/y.v1.Other/Read", None).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unimplemented);
        assert!(
            status.message().contains("it serves x.v1.S"),
            "{}",
            status.message()
        );
        assert_eq!(operator, None);
    }
}
