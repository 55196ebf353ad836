//! The simulator's HTTP surface: the router and its own endpoints (health, ledger).

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, Request, State},
    http::StatusCode,
    middleware::{self, Next},
    response::Response,
    routing::{get, post},
};
use tracing::{Instrument as _, field::Empty};

use super::{
    charges,
    ledger::{LedgerError, totals},
    refunds,
    request::{RequestError, SimState},
    wire::{LedgerEntry, LedgerReply},
};

/// The largest request body read; the protocol's bodies are a few hundred bytes.
const REQUEST_BYTES_MAX: usize = 16 * 1024;

/// The three providers under their base paths, plus the simulator's own endpoints.
pub fn router(state: Arc<SimState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ledger", get(ledger))
        .route("/{provider}/charges", post(charges::charge))
        .route("/{provider}/charges/{payment_id}", get(charges::get_charge))
        .route("/{provider}/refunds", post(refunds::refund))
        .layer(DefaultBodyLimit::max(REQUEST_BYTES_MAX))
        .layer(middleware::from_fn(traced))
        .with_state(state)
}

/// Each request in one span that continues the caller's trace (its `traceparent`), as
/// a real provider's tracing would: the repayment's trace id is in the simulator's
/// log lines too.
async fn traced(request: Request, next: Next) -> Response {
    let span = tracing::info_span!(
        "provider_request",
        method = %request.method(),
        path = request.uri().path(),
        trace_id = Empty,
    );
    service_kit::telemetry::continue_trace(&span, request.headers());
    next.run(request).instrument(span).await
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
