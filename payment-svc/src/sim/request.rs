//! What the simulator's handlers share: their state, request authentication and
//! checks, and the one place a refusal becomes a status code. The router
//! (`routes`) and the handlers (`charges`, `refunds`) both use it; it uses neither.

use std::time::Duration;

use axum::{
    Json,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use serde::de::DeserializeOwned;

use super::{
    Stop,
    config::ProviderSecrets,
    ledger::{Ledger, LedgerError},
    notify::Notifier,
    provider::Provider,
    wire::{self, StatusReply},
};
use crate::providers::signature::{SIGNATURE_HEADER, verify};

/// What every handler shares.
#[derive(Debug)]
pub struct SimState {
    pub ledger: Ledger,
    pub secrets: ProviderSecrets,
    pub notifier: Notifier,
    pub lost_reply_delay: Duration,
    /// Resolves when the simulator stops, so held replies do not delay shutdown.
    pub stop: Stop,
}
/// Why a request was not answered 200.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("no provider has this base path")]
    UnknownProvider,
    #[error("missing or wrong signature")]
    BadSignature,
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("not found")]
    NotFound,
    #[error("the refund exceeds what is left to refund")]
    ExceedsRefundable,
    #[error("simulated provider failure")]
    SimulatedFailure,
    #[error("the simulator is stopping")]
    ShuttingDown,
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

impl IntoResponse for RequestError {
    fn into_response(self) -> Response {
        let (code, status) = match &self {
            Self::UnknownProvider | Self::NotFound => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            Self::BadSignature => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "BAD_REQUEST"),
            Self::ExceedsRefundable => (StatusCode::CONFLICT, "EXCEEDS_REFUNDABLE"),
            Self::SimulatedFailure => (StatusCode::INTERNAL_SERVER_ERROR, "PROVIDER_ERROR"),
            Self::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
            Self::Ledger(error) => {
                // The detail is for the log; the caller learns only that it failed.
                tracing::error!(%error, "ledger failure");
                (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL")
            }
        };
        let body = StatusReply {
            status: status.to_owned(),
        };
        (code, Json(body)).into_response()
    }
}

/// The provider at `/{segment}`, once `payload` (a body, or a GET's path) is shown
/// to carry its signature. Checked before anything is parsed or recorded.
pub fn authenticate(
    secrets: &ProviderSecrets,
    segment: &str,
    headers: &HeaderMap,
    payload: &[u8],
) -> Result<Provider, RequestError> {
    let provider = Provider::from_path_segment(segment).ok_or(RequestError::UnknownProvider)?;
    let signature = headers
        .get(SIGNATURE_HEADER)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    if verify(secrets.of(provider), payload, signature) {
        Ok(provider)
    } else {
        tracing::warn!(
            provider = provider.ledger_name(),
            signed = !signature.is_empty(),
            "refused: bad signature"
        );
        Err(RequestError::BadSignature)
    }
}

/// `body` parsed as JSON. The log gets the error's kind and place, not its text,
/// which can quote the body (and so an instrument).
pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, RequestError> {
    wire::from_body(body).map_err(|error| {
        let detail = format!(
            "malformed JSON ({:?} at line {} column {})",
            error.classify(),
            error.line(),
            error.column()
        );
        tracing::warn!(%detail, "refused");
        RequestError::BadRequest(detail)
    })
}

/// The longest payment or refund id accepted.
const ID_CHARS_MAX: usize = 128;

/// Refuses an id that is empty, long, or holds characters that would not survive a
/// URL path unescaped (ids appear in `GET …/charges/{payment_id}`).
pub fn check_id(field: &str, id: &str) -> Result<(), RequestError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':');
    if id.is_empty() || id.len() > ID_CHARS_MAX || !id.chars().all(allowed) {
        tracing::warn!(field, "refused: bad id");
        return Err(RequestError::BadRequest(format!(
            "{field} is not a valid id"
        )));
    }
    Ok(())
}

/// Refuses an amount that is not a positive number of minor units.
pub fn check_amount(amount_minor: i64) -> Result<(), RequestError> {
    if amount_minor <= 0 {
        tracing::warn!(amount_minor, "refused: amount not positive");
        return Err(RequestError::BadRequest(
            "amount_minor must be positive".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::signature::sign;

    #[test]
    fn ids_are_checked() {
        for good in ["pay_1", "pay_0190a5b2-7c1d-7e4f-8a9b-0c1d2e3f4a5b", "r.1:2"] {
            assert!(check_id("payment_id", good).is_ok(), "{good}");
        }
        let long = "p".repeat(ID_CHARS_MAX + 1);
        for bad in ["", "pay/1", "pay 1", "pay%2F1", "支付", long.as_str()] {
            assert!(check_id("payment_id", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn amounts_must_be_positive() {
        assert!(check_amount(1).is_ok());
        assert!(check_amount(0).is_err());
        assert!(check_amount(-5).is_err());
    }

    #[test]
    fn each_provider_takes_only_its_own_signature() {
        let secrets = ProviderSecrets::dev();
        let body = b"{}";
        let mut headers = HeaderMap::new();
        let alipay_signature = sign(secrets.of(Provider::Alipay), body);
        headers.insert(SIGNATURE_HEADER, alipay_signature.parse().unwrap());
        assert_eq!(
            authenticate(&secrets, "alipay", &headers, body).unwrap(),
            Provider::Alipay
        );
        assert!(matches!(
            authenticate(&secrets, "wechat-pay", &headers, body),
            Err(RequestError::BadSignature)
        ));
        assert!(matches!(
            authenticate(&secrets, "paypal", &headers, body),
            Err(RequestError::UnknownProvider)
        ));
        assert!(matches!(
            authenticate(&secrets, "alipay", &HeaderMap::new(), body),
            Err(RequestError::BadSignature)
        ));
    }
}
