//! Bearer tokens: JWTs signed and checked with `jsonwebtoken`.
//!
//! Each issuer signs with its own Ed25519 key, named in the header by `kid`; a service
//! that verifies holds only public keys (a keys file, see [`super::keys`]), so holding
//! one service is no way to mint tokens another trusts. HS256 with one shared secret is
//! accepted only when a service runs in dev mode without a keys file.
//!
//! The library checks the signature and the `alg` the key is for; the claims are
//! checked here, against a clock the caller passes, each refusal with its own message:
//! `iss` is the issuer of the key, `aud` names this service, `sub` is not empty, `exp`
//! is in the future and `nbf`/`iat` are not (both with [`LEEWAY_SECONDS`]), and the
//! token lives no longer than its role may ([`max_lifetime_seconds`]).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};

use super::Role;

/// The shortest HS256 secret accepted: keys shorter than the hash add no strength.
pub const SECRET_BYTES_MIN: usize = 32;

/// Clock skew tolerated on `exp`, `nbf` and `iat`.
pub const LEEWAY_SECONDS: i64 = 30;

/// The audience billing-svc accepts.
pub const BILLING_AUDIENCE: &str = "billing";
/// The audience payment-svc accepts.
pub const PAYMENT_AUDIENCE: &str = "payment";

/// The longest a token of `role` may live (`exp - iat`): a service a day, an operator
/// a shift, a customer a session.
pub fn max_lifetime_seconds(role: Role) -> i64 {
    match role {
        Role::Service => 24 * 3600,
        Role::Operator => 8 * 3600,
        Role::Customer => 24 * 3600,
    }
}

/// One audience or several, as RFC 7519 allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Default for Audience {
    fn default() -> Self {
        Self::Many(Vec::new())
    }
}

impl Audience {
    pub fn contains(&self, audience: &str) -> bool {
        match self {
            Self::One(one) => one == audience,
            Self::Many(many) => many.iter().any(|candidate| candidate == audience),
        }
    }
}

/// What a token says about its bearer. Missing registered claims deserialize empty,
/// so they are refused with the check that names them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    #[serde(default)]
    pub iss: String,
    #[serde(default)]
    pub sub: String,
    #[serde(default)]
    pub aud: Audience,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// Expiry, unix seconds. Required.
    pub exp: i64,
    /// Issued at, unix seconds; the lifetime is counted from it.
    #[serde(default)]
    pub iat: i64,
    /// Not before, unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error(
        "HS256 tokens are not accepted: this service verifies tokens signed with its issuers' EdDSA keys"
    )]
    HmacRefused,
    #[error("the token's algorithm {0} is not accepted (EdDSA only)")]
    WrongAlgorithm(String),
    #[error("the token names no key id (kid)")]
    MissingKeyId,
    #[error(
        "the token's key id (kid) {0:?} is not a key this service trusts (unknown or rotated out)"
    )]
    UnknownKey(String),
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token's issuer (iss) {found:?} is not {expected:?}, the issuer of its key")]
    WrongIssuer { expected: String, found: String },
    #[error("the token's audience (aud) does not include {0:?}")]
    WrongAudience(String),
    #[error("the token's subject (sub) is empty")]
    EmptySubject,
    #[error("issuer {issuer:?} may not issue a {role:?} token for subject {subject:?}")]
    SubjectNotAllowed {
        issuer: String,
        subject: String,
        role: Role,
    },
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf is in the future)")]
    NotYetValid,
    #[error("the token was issued in the future (iat)")]
    IssuedInFuture,
    #[error("the token lives {lifetime} s; a {role:?} token may live at most {max} s")]
    LivesTooLong { role: Role, lifetime: i64, max: i64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the JWT secret must be at least {SECRET_BYTES_MIN} bytes")]
pub struct SecretTooShort;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not an Ed25519 key (PKCS#8 private or 32-byte public)")]
pub struct BadKey;

/// An issuer's signing key: what mints its tokens.
#[derive(Clone)]
pub struct TokenSigner {
    issuer: String,
    kid: Option<String>,
    algorithm: Algorithm,
    key: EncodingKey,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TokenSigner({}, kid {:?}, <redacted>)",
            self.issuer, self.kid
        )
    }
}

impl TokenSigner {
    /// `issuer`'s Ed25519 key (PKCS#8 DER), named `kid` in the tokens it signs.
    pub fn ed25519(issuer: &str, kid: &str, pkcs8: &[u8]) -> Result<Self, BadKey> {
        ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8).map_err(|_| BadKey)?;
        Ok(Self {
            issuer: issuer.to_owned(),
            kid: Some(kid.to_owned()),
            algorithm: Algorithm::EdDSA,
            key: EncodingKey::from_ed_der(pkcs8),
        })
    }

    /// A shared HS256 secret: dev mode only.
    pub fn hs256(issuer: &str, secret: &[u8]) -> Result<Self, SecretTooShort> {
        if secret.len() < SECRET_BYTES_MIN {
            return Err(SecretTooShort);
        }
        Ok(Self {
            issuer: issuer.to_owned(),
            kid: None,
            algorithm: Algorithm::HS256,
            key: EncodingKey::from_secret(secret),
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// Encodes and signs `claims` as they are (their `iss` included).
    pub fn sign(&self, claims: &Claims) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = self.kid.clone();
        // Signing plain claims with a key checked at construction cannot fail; an
        // empty token would be refused as malformed anyway.
        jsonwebtoken::encode(&header, claims, &self.key).unwrap_or_default()
    }
}

/// A public key an issuer signs with, and what its tokens may say.
#[derive(Clone)]
pub struct TrustedKey {
    pub issuer: String,
    key: DecodingKey,
    /// When set, the only subjects the issuer may speak for.
    pub subjects: Option<Vec<String>>,
    /// When set, the only roles its tokens may carry.
    pub roles: Option<Vec<Role>>,
}

impl TrustedKey {
    /// `issuer`'s Ed25519 public key (32 bytes).
    pub fn ed25519(issuer: &str, public_key: &[u8]) -> Result<Self, BadKey> {
        if public_key.len() != 32 {
            return Err(BadKey);
        }
        Ok(Self {
            issuer: issuer.to_owned(),
            key: DecodingKey::from_ed_der(public_key),
            subjects: None,
            roles: None,
        })
    }
}

/// Checks tokens for one audience against the keys it trusts.
#[derive(Clone)]
pub struct TokenVerifier {
    audience: String,
    /// By `kid`.
    keys: Arc<HashMap<String, TrustedKey>>,
    /// Dev mode without a keys file only.
    hs256: Option<DecodingKey>,
    /// Tokens whose signature, issuer, audience and subject checked out, with their
    /// claims: an Ed25519 check costs more than a whole cached read, and a client sends
    /// the same token call after call. The time checks run on every call regardless.
    verified: Arc<Mutex<HashMap<String, Claims>>>,
}

/// Verified tokens remembered per verifier; past this the memory starts afresh.
const VERIFIED_TOKENS_MAX: usize = 4096;

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut kids: Vec<_> = self.keys.keys().collect();
        kids.sort();
        write!(
            f,
            "TokenVerifier(aud {}, kids {kids:?}, hs256 {})",
            self.audience,
            self.hs256.is_some()
        )
    }
}

impl TokenVerifier {
    /// Accepts tokens for `audience` signed by one of `keys` (by `kid`).
    pub fn new(audience: &str, keys: HashMap<String, TrustedKey>) -> Self {
        Self {
            audience: audience.to_owned(),
            keys: Arc::new(keys),
            hs256: None,
            verified: Arc::default(),
        }
    }

    /// Accepts HS256 tokens under one shared secret, and nothing else: dev mode.
    pub fn hs256_dev(audience: &str, secret: &[u8]) -> Result<Self, SecretTooShort> {
        if secret.len() < SECRET_BYTES_MIN {
            return Err(SecretTooShort);
        }
        Ok(Self {
            audience: audience.to_owned(),
            keys: Arc::new(HashMap::new()),
            hs256: Some(DecodingKey::from_secret(secret)),
            verified: Arc::default(),
        })
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// Verifies `token` and returns its claims, as of `now` (unix seconds).
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        let remembered = self
            .verified
            .lock()
            .ok()
            .and_then(|verified| verified.get(token).cloned());
        let claims = match remembered {
            Some(claims) => claims,
            None => {
                let claims = self.verify_signed(token)?;
                if let Ok(mut verified) = self.verified.lock() {
                    if verified.len() >= VERIFIED_TOKENS_MAX {
                        verified.clear();
                    }
                    verified.insert(token.to_owned(), claims.clone());
                }
                claims
            }
        };
        check_times(claims, now)
    }

    /// The claims of `token` once its signature, issuer, audience and subject check
    /// out; nothing here depends on the time.
    fn verify_signed(&self, token: &str) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        let (key, trusted) = match header.alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => match &self.hs256 {
                Some(secret) if header.alg == Algorithm::HS256 => (secret, None),
                Some(_) => return Err(TokenError::WrongAlgorithm(format!("{:?}", header.alg))),
                None => return Err(TokenError::HmacRefused),
            },
            Algorithm::EdDSA => {
                let kid = header.kid.as_deref().ok_or(TokenError::MissingKeyId)?;
                let trusted = self
                    .keys
                    .get(kid)
                    .ok_or_else(|| TokenError::UnknownKey(kid.to_owned()))?;
                (&trusted.key, Some(trusted))
            }
            other => return Err(TokenError::WrongAlgorithm(format!("{other:?}"))),
        };
        let mut validation = Validation::new(header.alg);
        // The claims are checked below, against `now`, with clearer messages.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let claims = jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map_err(|error| match error.kind() {
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                ErrorKind::InvalidAlgorithm => {
                    TokenError::WrongAlgorithm(format!("{:?}", header.alg))
                }
                _ => TokenError::Malformed,
            })?
            .claims;
        if let Some(trusted) = trusted
            && claims.iss != trusted.issuer
        {
            return Err(TokenError::WrongIssuer {
                expected: trusted.issuer.clone(),
                found: claims.iss,
            });
        }
        if !claims.aud.contains(&self.audience) {
            return Err(TokenError::WrongAudience(self.audience.clone()));
        }
        if claims.sub.trim().is_empty() {
            return Err(TokenError::EmptySubject);
        }
        if let Some(trusted) = trusted {
            let subject_ok = trusted
                .subjects
                .as_ref()
                .is_none_or(|subjects| subjects.contains(&claims.sub));
            let role_ok = trusted
                .roles
                .as_ref()
                .is_none_or(|roles| roles.contains(&claims.role));
            if !subject_ok || !role_ok {
                return Err(TokenError::SubjectNotAllowed {
                    issuer: claims.iss,
                    subject: claims.sub,
                    role: claims.role,
                });
            }
        }
        Ok(claims)
    }
}

/// `claims` if they are valid at `now`: not expired, not before `nbf`, not issued in
/// the future, and not living longer than their role allows.
fn check_times(claims: Claims, now: i64) -> Result<Claims, TokenError> {
    if claims.exp <= now - LEEWAY_SECONDS {
        return Err(TokenError::Expired);
    }
    if claims.nbf.is_some_and(|nbf| nbf > now + LEEWAY_SECONDS) {
        return Err(TokenError::NotYetValid);
    }
    if claims.iat > now + LEEWAY_SECONDS {
        return Err(TokenError::IssuedInFuture);
    }
    let max = max_lifetime_seconds(claims.role);
    let lifetime = claims.exp.saturating_sub(claims.iat);
    if lifetime > max {
        return Err(TokenError::LivesTooLong {
            role: claims.role,
            lifetime,
            max,
        });
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};

    use super::*;
    use crate::auth::keys::generate_ed25519;

    const NOW: i64 = 1_800_000_000;

    struct Issuer {
        signer: TokenSigner,
        trusted: TrustedKey,
    }

    fn issuer(name: &str, kid: &str) -> Issuer {
        let (pkcs8, public) = generate_ed25519().unwrap();
        Issuer {
            signer: TokenSigner::ed25519(name, kid, &pkcs8).unwrap(),
            trusted: TrustedKey::ed25519(name, &public).unwrap(),
        }
    }

    fn claims() -> Claims {
        Claims {
            iss: "dev".into(),
            sub: "svc".into(),
            aud: Audience::One("billing".into()),
            role: Role::Service,
            scopes: vec!["billing:read".into()],
            account_id: None,
            exp: NOW + 60,
            iat: NOW,
            nbf: None,
        }
    }

    fn verifier(keys: &[(&str, &Issuer)]) -> TokenVerifier {
        TokenVerifier::new(
            "billing",
            keys.iter()
                .map(|(kid, issuer)| ((*kid).to_owned(), issuer.trusted.clone()))
                .collect(),
        )
    }

    #[test]
    fn a_remembered_token_is_still_checked_against_the_clock() {
        let dev = issuer("dev", "dev-1");
        let verifier = verifier(&[("dev-1", &dev)]);
        let token = dev.signer.sign(&claims());
        assert_eq!(verifier.verify(&token, NOW).unwrap(), claims());
        // The second call finds it remembered, and the expiry still applies.
        assert_eq!(verifier.verify(&token, NOW + 1).unwrap(), claims());
        assert_eq!(
            verifier
                .verify(&token, NOW + 60 + LEEWAY_SECONDS)
                .unwrap_err(),
            TokenError::Expired
        );
        // A clone shares what was verified; another verifier's keys are its own.
        let stranger = verifier_with_no_keys();
        assert!(matches!(
            stranger.verify(&token, NOW),
            Err(TokenError::UnknownKey(_))
        ));
    }

    fn verifier_with_no_keys() -> TokenVerifier {
        TokenVerifier::new("billing", HashMap::new())
    }

    #[test]
    fn a_signed_token_verifies_and_every_bad_claim_is_refused_by_name() {
        let dev = issuer("dev", "dev-1");
        let other = issuer("other", "other-1");
        let verifier = verifier(&[("dev-1", &dev), ("other-1", &other)]);
        let sign = |change: &dyn Fn(&mut Claims)| {
            let mut claims = claims();
            change(&mut claims);
            dev.signer.sign(&claims)
        };
        assert_eq!(verifier.verify(&sign(&|_| {}), NOW).unwrap(), claims());

        let cases: Vec<(&str, String, TokenError)> = vec![
            (
                "wrong aud",
                sign(&|c| c.aud = Audience::One("payment".into())),
                TokenError::WrongAudience("billing".into()),
            ),
            (
                "no aud",
                sign(&|c| c.aud = Audience::default()),
                TokenError::WrongAudience("billing".into()),
            ),
            (
                "wrong iss",
                sign(&|c| c.iss = "other".into()),
                TokenError::WrongIssuer {
                    expected: "dev".into(),
                    found: "other".into(),
                },
            ),
            (
                "empty sub",
                sign(&|c| c.sub = String::new()),
                TokenError::EmptySubject,
            ),
            (
                "future nbf",
                sign(&|c| c.nbf = Some(NOW + 86_400)),
                TokenError::NotYetValid,
            ),
            ("expired", sign(&|c| c.exp = NOW - 31), TokenError::Expired),
            (
                "exp 2^62",
                sign(&|c| c.exp = 1 << 62),
                TokenError::LivesTooLong {
                    role: Role::Service,
                    lifetime: (1 << 62) - NOW,
                    max: 86_400,
                },
            ),
            (
                "no iat",
                sign(&|c| c.iat = 0),
                TokenError::LivesTooLong {
                    role: Role::Service,
                    lifetime: NOW + 60,
                    max: 86_400,
                },
            ),
            (
                "future iat",
                sign(&|c| {
                    c.iat = NOW + 3600;
                    c.exp = NOW + 3700;
                }),
                TokenError::IssuedInFuture,
            ),
        ];
        for (name, token, expected) in cases {
            assert_eq!(verifier.verify(&token, NOW), Err(expected), "{name}");
        }
        // Within the leeway, nbf and exp are tolerated.
        assert!(
            verifier
                .verify(&sign(&|c| c.nbf = Some(NOW + 20)), NOW)
                .is_ok()
        );
        assert!(verifier.verify(&sign(&|c| c.exp = NOW - 10), NOW).is_ok());
    }

    #[test]
    fn keys_algorithms_and_signatures_are_checked() {
        let dev = issuer("dev", "dev-1");
        let stranger = issuer("dev", "dev-1");
        let verifier = verifier(&[("dev-1", &dev)]);

        let forged = stranger.signer.sign(&claims());
        assert_eq!(verifier.verify(&forged, NOW), Err(TokenError::BadSignature));

        let unknown = TokenSigner::ed25519("dev", "dev-0", &generate_ed25519().unwrap().0)
            .unwrap()
            .sign(&claims());
        assert_eq!(
            verifier.verify(&unknown, NOW),
            Err(TokenError::UnknownKey("dev-0".into()))
        );

        let hs = TokenSigner::hs256("dev", &[1; 32]).unwrap().sign(&claims());
        assert_eq!(verifier.verify(&hs, NOW), Err(TokenError::HmacRefused));

        let token = dev.signer.sign(&claims());
        let (head, _) = token.split_once('.').unwrap();
        let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","kid":"dev-1"}"#);
        assert!(
            verifier
                .verify(&token.replacen(head, &none_header, 1), NOW)
                .is_err()
        );
        let no_kid = URL_SAFE_NO_PAD.encode(br#"{"alg":"EdDSA"}"#);
        assert_eq!(
            verifier.verify(&token.replacen(head, &no_kid, 1), NOW),
            Err(TokenError::MissingKeyId)
        );
        for malformed in ["", "a.b", "a.b.c.d", "!!.!!.!!"] {
            assert_eq!(verifier.verify(malformed, NOW), Err(TokenError::Malformed));
        }
    }

    #[test]
    fn an_issuer_bound_to_subjects_speaks_for_them_alone() {
        let mut payment = issuer("payment-svc", "pay-1");
        payment.trusted.subjects = Some(vec!["payment-svc".into()]);
        payment.trusted.roles = Some(vec![Role::Service]);
        let verifier = verifier(&[("pay-1", &payment)]);
        let mut own = claims();
        own.iss = "payment-svc".into();
        own.sub = "payment-svc".into();
        assert!(verifier.verify(&payment.signer.sign(&own), NOW).is_ok());
        let mut operator = own.clone();
        operator.role = Role::Operator;
        assert!(matches!(
            verifier.verify(&payment.signer.sign(&operator), NOW),
            Err(TokenError::SubjectNotAllowed { .. })
        ));
        own.sub = "admin".into();
        assert!(matches!(
            verifier.verify(&payment.signer.sign(&own), NOW),
            Err(TokenError::SubjectNotAllowed { .. })
        ));
    }

    #[test]
    fn hs256_in_dev_mode_only_and_secrets_are_long() {
        let verifier = TokenVerifier::hs256_dev("billing", &[1; 32]).unwrap();
        let token = TokenSigner::hs256("dev", &[1; 32]).unwrap().sign(&claims());
        assert!(verifier.verify(&token, NOW).is_ok());
        let ed = issuer("dev", "dev-1").signer.sign(&claims());
        assert_eq!(
            verifier.verify(&ed, NOW),
            Err(TokenError::UnknownKey("dev-1".into()))
        );
        assert!(TokenSigner::hs256("dev", b"short").is_err());
        assert!(TokenVerifier::hs256_dev("billing", b"short").is_err());
    }
}
