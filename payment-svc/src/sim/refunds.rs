//! `POST {base}/refunds`: idempotent on the refund id, never more than the charge.

use std::sync::Arc;

use axum::{
    Json,
    body::Bytes,
    extract::{Path, State},
    http::HeaderMap,
};
use service_kit::clock::now_micros;
use tracing::field::Empty;

use super::{
    behaviour::Behaviour,
    charges::hold_reply,
    ledger::{Refund, RefundOutcome},
    request::{RequestError, SimState, authenticate, check_amount, check_id, parse_body},
    wire::{RefundReply, RefundRequest},
};

#[tracing::instrument(skip_all, fields(provider = Empty, payment_id = Empty, refund_id = Empty))]
pub async fn refund(
    State(state): State<Arc<SimState>>,
    Path(segment): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<RefundReply>, RequestError> {
    let provider = authenticate(&state.secrets, &segment, &headers, &body)?;
    let request: RefundRequest = parse_body(&body)?;
    check_id("payment_id", &request.payment_id)?;
    check_id("refund_id", &request.refund_id)?;
    check_amount(request.amount_minor)?;
    let span = tracing::Span::current();
    span.record("provider", provider.ledger_name());
    span.record("payment_id", request.payment_id.as_str());
    span.record("refund_id", request.refund_id.as_str());

    let refund = Refund {
        provider,
        refund_id: request.refund_id,
        payment_id: request.payment_id,
        amount_minor: request.amount_minor,
    };
    match state.ledger.record_refund(&refund, now_micros()).await? {
        RefundOutcome::Refunded => {
            tracing::info!(amount_minor = refund.amount_minor, "refund recorded");
            // A charge whose reply was lost (0119) loses its refund's first reply
            // too; a repeat of the refund id answers at once.
            let charge = state
                .ledger
                .find_charge(provider, &refund.payment_id)
                .await?;
            if charge.is_some_and(|charge| Behaviour::of(&charge.instrument_last4).holds_reply()) {
                tracing::info!("holding the refund's reply back (lost reply)");
                hold_reply(&state).await?;
            }
        }
        RefundOutcome::Replayed => tracing::info!("repeated refund: nothing more refunded"),
        RefundOutcome::NoSuccessfulCharge => {
            tracing::warn!("refused: no successful charge to refund");
            return Err(RequestError::NotFound);
        }
        RefundOutcome::ExceedsRefundable { refundable_minor } => {
            tracing::warn!(
                amount_minor = refund.amount_minor,
                refundable_minor,
                "refused: more than is left to refund"
            );
            return Err(RequestError::ExceedsRefundable);
        }
    }
    Ok(Json(RefundReply {
        refund_id: refund.refund_id,
        status: "REFUNDED".to_owned(),
    }))
}
