//! HS256 JSON Web Tokens: just what billpay needs, verified strictly.
//!
//! Verification checks, in order: three base64url parts, a header naming `HS256`
//! (any other `alg`, `none` included, is refused), the HMAC-SHA256 signature in
//! constant time, then the claims, whose `exp` is required and must be in the future.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::Role;

type HmacSha256 = Hmac<Sha256>;

/// The shortest secret accepted: HS256 keys shorter than the hash add no strength.
pub const SECRET_BYTES_MIN: usize = 32;

/// What a token says about its bearer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// Expiry, unix seconds. Required.
    pub exp: i64,
    #[serde(default)]
    pub iat: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token must be signed with HS256")]
    WrongAlgorithm,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the JWT secret must be at least {SECRET_BYTES_MIN} bytes")]
pub struct SecretTooShort;

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
}

/// Signs and verifies tokens with one shared secret.
#[derive(Clone)]
pub struct JwtKey {
    mac: HmacSha256,
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtKey(<redacted>)")
    }
}

impl JwtKey {
    pub fn new(secret: &[u8]) -> Result<Self, SecretTooShort> {
        if secret.len() < SECRET_BYTES_MIN {
            return Err(SecretTooShort);
        }
        let mac = HmacSha256::new_from_slice(secret).map_err(|_| SecretTooShort)?;
        Ok(Self { mac })
    }

    /// Encodes and signs `claims`.
    pub fn sign(&self, claims: &Claims) -> String {
        let header = Header {
            alg: "HS256".into(),
            typ: Some("JWT".into()),
        };
        let signing_input = format!("{}.{}", encode_part(&header), encode_part(claims));
        let mut mac = self.mac.clone();
        mac.update(signing_input.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{signing_input}.{signature}")
    }

    /// Verifies `token` and returns its claims, checking `exp` against `now_unix_seconds`.
    pub fn verify(&self, token: &str, now_unix_seconds: i64) -> Result<Claims, TokenError> {
        let (signing_input, signature) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let (header, payload) = signing_input.split_once('.').ok_or(TokenError::Malformed)?;
        if payload.contains('.') {
            return Err(TokenError::Malformed);
        }
        let header: Header = decode_part(header)?;
        if header.alg != "HS256" {
            return Err(TokenError::WrongAlgorithm);
        }
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenError::Malformed)?;
        let mut mac = self.mac.clone();
        mac.update(signing_input.as_bytes());
        mac.verify_slice(&signature)
            .map_err(|_| TokenError::BadSignature)?;
        let claims: Claims = decode_part(payload)?;
        if claims.exp <= now_unix_seconds {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

fn encode_part<T: Serialize>(value: &T) -> String {
    // Serializing these plain structs to JSON cannot fail.
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap_or_default())
}

fn decode_part<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn key() -> JwtKey {
        JwtKey::new(b"0123456789abcdef0123456789abcdef").unwrap()
    }

    fn claims(exp: i64) -> Claims {
        Claims {
            sub: "svc".into(),
            role: Role::Service,
            scopes: vec!["billing:read".into()],
            account_id: None,
            exp,
            iat: NOW,
        }
    }

    #[test]
    fn a_signed_token_verifies() {
        let token = key().sign(&claims(NOW + 60));
        assert_eq!(key().verify(&token, NOW).unwrap(), claims(NOW + 60));
    }

    #[test]
    fn refuses_expired_forged_and_malformed_tokens() {
        let expired = key().sign(&claims(NOW - 1));
        assert_eq!(key().verify(&expired, NOW), Err(TokenError::Expired));

        let other = JwtKey::new(b"another-secret-another-secret-!!").unwrap();
        let forged = other.sign(&claims(NOW + 60));
        assert_eq!(key().verify(&forged, NOW), Err(TokenError::BadSignature));

        let token = key().sign(&claims(NOW + 60));
        let (head, _) = token.split_once('.').unwrap();
        let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        let alg_none = token.replacen(head, &none_header, 1);
        assert_eq!(
            key().verify(&alg_none, NOW),
            Err(TokenError::WrongAlgorithm)
        );

        for malformed in ["", "a.b", "a.b.c.d", "!!.!!.!!"] {
            assert_eq!(key().verify(malformed, NOW), Err(TokenError::Malformed));
        }
    }

    #[test]
    fn refuses_short_secrets() {
        assert!(JwtKey::new(b"short").is_err());
    }
}
