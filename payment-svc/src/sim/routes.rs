//! The simulator's HTTP surface: the router, the shared state handlers see, request
//! authentication, and the one place a refusal becomes a status code.

use std::{sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::de::DeserializeOwned;

use super::{
    Stop, charges,
    config::ProviderSecrets,
    ledger::{Ledger, LedgerError, totals},
    notify::Notifier,
    provider::Provider,
    refunds,
    wire::{self, LedgerEntry, LedgerReply, StatusReply},
};
use crate::providers::signature::{SIGNATURE_HEADER, verify};

/// The largest request body read; the protocol's bodies are a few hundred bytes.
const REQUEST_BYTES_MAX: usize = 16 * 1024;

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

/// The three providers under their base paths, plus the simulator's own endpoints.
pub fn router(state: Arc<SimState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ledger", get(ledger))
        .route("/{provider}/charges", post(charges::charge))
        .route("/{provider}/charges/{payment_id}", get(charges::get_charge))
        .route("/{provider}/refunds", post(refunds::refund))
        .layer(DefaultBodyLimit::max(REQUEST_BYTES_MAX))
        .with_state(state)
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

async fn health() -> StatusCode {
    StatusCode::OK
}

#[tracing::instrument(skip_all)]
async fn ledger(State(state): State<Arc<SimState>>) -> Result<Json<LedgerReply>, RequestError> {
    let entries = state.ledger.entries().await?;
    let (captured_minor, refunded_minor) =
        totals(&entries).ok_or_else(|| LedgerError::Corrupt("ledger totals overflow".into()))?;
    let entries = entries
        .into_iter()
        .map(|entry| LedgerEntry {
            provider: entry.provider.ledger_name().to_owned(),
            payment_id: entry.payment_id,
            kind: entry.kind.as_str().to_owned(),
            amount_minor: entry.amount_minor,
        })
        .collect();
    Ok(Json(LedgerReply {
        entries,
        captured_minor,
        refunded_minor,
    }))
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
