//! `POST {base}/charges` and `GET {base}/charges/{payment_id}`: the behaviour table
//! applied, recorded once per payment id, answered at once (bank card) or PENDING
//! with a notification to follow (wallets).

use std::sync::Arc;

use axum::{
    Json,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, Uri},
};
use service_kit::clock::now_micros;
use tracing::field::Empty;

use super::{
    behaviour::{Behaviour, Reported, last_four},
    ledger::{Charge, Recorded},
    notify::Delivery,
    provider::Provider,
    request::{RequestError, SimState, authenticate, check_amount, check_id, parse_body},
    wire::{ChargeReply, ChargeRequest, Notification},
};

/// The longest instrument token accepted.
const INSTRUMENT_CHARS_MAX: usize = 64;
/// The longest `notify_url` accepted.
const NOTIFY_URL_BYTES_MAX: usize = 2_048;

/// A charge request that passed every check, instrument reduced to its last four.
struct Order {
    payment_id: String,
    amount_minor: i64,
    currency_code: String,
    instrument_last4: String,
    behaviour: Behaviour,
    /// Present exactly when the provider notifies.
    notify_url: Option<reqwest::Url>,
}

#[tracing::instrument(skip_all, fields(provider = Empty, payment_id = Empty, instrument_last4 = Empty))]
pub async fn charge(
    State(state): State<Arc<SimState>>,
    Path(segment): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<ChargeReply>, RequestError> {
    let provider = authenticate(&state.secrets, &segment, &headers, &body)?;
    let order = order_of(provider, parse_body(&body)?)?;
    let span = tracing::Span::current();
    span.record("provider", provider.ledger_name());
    span.record("payment_id", order.payment_id.as_str());
    span.record("instrument_last4", order.instrument_last4.as_str());

    let Some(outcome) = order.behaviour.outcome() else {
        tracing::warn!("simulated provider failure: nothing recorded");
        return Err(RequestError::SimulatedFailure);
    };
    let charge = Charge {
        provider,
        payment_id: order.payment_id.clone(),
        amount_minor: order.amount_minor,
        currency_code: order.currency_code.clone(),
        instrument_last4: order.instrument_last4.clone(),
        outcome,
        provider_ref: new_provider_ref(provider),
    };
    if let Recorded::Existing(first) = state.ledger.record_charge(&charge, now_micros()).await? {
        if (
            first.amount_minor,
            &first.currency_code,
            &first.instrument_last4,
        ) != (
            order.amount_minor,
            &order.currency_code,
            &order.instrument_last4,
        ) {
            tracing::warn!("payment id repeated with a different charge; answering the first");
        }
        tracing::info!(
            status = first.outcome.status(),
            "repeated charge: first outcome"
        );
        return Ok(Json(reply(&first, Reported::Final(first.outcome))));
    }
    tracing::info!(status = outcome.status(), "charge recorded");
    if let Some(delivery) = delivery_of(&charge, order.behaviour, order.notify_url)
        && state.notifier.schedule(delivery).await.is_err()
    {
        tracing::warn!("stopping: the charge's notifications will not be sent");
    }
    if order.behaviour.holds_reply() {
        tracing::info!(
            delay_ms = state.lost_reply_delay.as_millis(),
            "holding the reply back (lost reply)"
        );
        hold_reply(&state).await?;
    }
    let answered = if provider.notifies() {
        Reported::Pending
    } else {
        Reported::Final(outcome)
    };
    Ok(Json(reply(&charge, answered)))
}

#[tracing::instrument(skip_all, fields(provider = %segment, payment_id = %payment_id))]
pub async fn get_charge(
    State(state): State<Arc<SimState>>,
    Path((segment, payment_id)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Json<ChargeReply>, RequestError> {
    // A GET signs the path it was sent to, as sent.
    let provider = authenticate(&state.secrets, &segment, &headers, uri.path().as_bytes())?;
    let charge = state
        .ledger
        .find_charge(provider, &payment_id)
        .await?
        .ok_or(RequestError::NotFound)?;
    Ok(Json(reply(&charge, Reported::Final(charge.outcome))))
}

fn order_of(provider: Provider, request: ChargeRequest) -> Result<Order, RequestError> {
    check_id("payment_id", &request.payment_id)?;
    check_amount(request.amount_minor)?;
    let currency_is_code =
        request.currency.len() == 3 && request.currency.chars().all(|c| c.is_ascii_uppercase());
    if !currency_is_code {
        return Err(refused("currency is not a three-letter code"));
    }
    let instrument_chars = request.instrument.chars().count();
    if instrument_chars == 0 || instrument_chars > INSTRUMENT_CHARS_MAX {
        return Err(refused("instrument is empty or too long"));
    }
    let notify_url = if provider.notifies() {
        Some(notify_url_of(request.notify_url.as_deref())?)
    } else {
        None
    };
    Ok(Order {
        payment_id: request.payment_id,
        amount_minor: request.amount_minor,
        currency_code: request.currency,
        instrument_last4: last_four(&request.instrument).to_owned(),
        behaviour: Behaviour::of(&request.instrument),
        notify_url,
    })
}

/// A wallet's `notify_url`: required, and plain `http://`, the only scheme the
/// simulator's client speaks (it is built without TLS).
fn notify_url_of(text: Option<&str>) -> Result<reqwest::Url, RequestError> {
    let text = text.ok_or_else(|| refused("a wallet charge needs notify_url"))?;
    if text.len() > NOTIFY_URL_BYTES_MAX {
        return Err(refused("notify_url is too long"));
    }
    match reqwest::Url::parse(text) {
        Ok(url) if url.scheme() == "http" && url.host().is_some() => Ok(url),
        _ => Err(refused("notify_url is not an http:// URL")),
    }
}

fn refused(why: &'static str) -> RequestError {
    tracing::warn!(why, "refused");
    RequestError::BadRequest(why.to_owned())
}

/// A fresh reference, prefixed so it names its provider.
fn new_provider_ref(provider: Provider) -> String {
    format!(
        "{}_{}",
        provider.reference_prefix(),
        uuid::Uuid::now_v7().simple()
    )
}

/// Waits out the lost-reply delay, unless the simulator stops first.
pub(super) async fn hold_reply(state: &SimState) -> Result<(), RequestError> {
    let mut stop = state.stop.clone();
    tokio::select! {
        () = tokio::time::sleep(state.lost_reply_delay) => Ok(()),
        () = stop.stopped() => Err(RequestError::ShuttingDown),
    }
}

fn reply(charge: &Charge, reported: Reported) -> ChargeReply {
    ChargeReply {
        payment_id: charge.payment_id.clone(),
        status: reported.status().to_owned(),
        provider_ref: charge.provider_ref.clone(),
        decline_code: reported.decline_code().map(|code| code.as_str().to_owned()),
    }
}

/// The notifications a newly recorded charge sends, if its provider notifies.
fn delivery_of(
    charge: &Charge,
    behaviour: Behaviour,
    notify_url: Option<reqwest::Url>,
) -> Option<Delivery> {
    let notifications: Vec<_> = behaviour
        .notifications(charge.provider, charge.outcome)
        .into_iter()
        .map(|reported| Notification {
            payment_id: charge.payment_id.clone(),
            provider_ref: charge.provider_ref.clone(),
            status: reported.status().to_owned(),
            decline_code: reported.decline_code().map(|code| code.as_str().to_owned()),
            amount_minor: charge.amount_minor,
            sequence: reported.sequence(),
        })
        .collect();
    if notifications.is_empty() {
        return None;
    }
    Some(Delivery {
        provider: charge.provider,
        notify_url: notify_url?,
        notifications,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(instrument: &str, notify_url: Option<&str>) -> ChargeRequest {
        ChargeRequest {
            payment_id: "pay_1".into(),
            amount_minor: 53_591,
            currency: "CNY".into(),
            instrument: instrument.into(),
            notify_url: notify_url.map(str::to_owned),
        }
    }

    #[test]
    fn orders_keep_only_the_last_four() {
        let order = order_of(Provider::BankCard, request("tok_4242424242420002", None)).unwrap();
        assert_eq!(order.instrument_last4, "0002");
        assert!(matches!(order.behaviour, Behaviour::Decline(_)));
        assert!(order.notify_url.is_none());
    }

    #[test]
    fn wallets_need_an_http_notify_url() {
        let url = Some("http://127.0.0.1:50053/notify/alipay");
        assert!(order_of(Provider::Alipay, request("tok_4242", url)).is_ok());
        for bad in [
            None,
            Some("https://example.com/n"),
            Some("not a url"),
            Some("ftp://h/"),
        ] {
            assert!(
                order_of(Provider::WechatPay, request("tok_4242", bad)).is_err(),
                "{bad:?}"
            );
        }
        // Bank card never notifies, so its notify_url is not looked at.
        assert!(order_of(Provider::BankCard, request("tok_4242", Some("junk"))).is_ok());
    }

    #[test]
    fn bad_fields_are_refused() {
        let mut bad_currency = request("tok_4242", None);
        bad_currency.currency = "cny".into();
        let mut zero = request("tok_4242", None);
        zero.amount_minor = 0;
        let too_long = request(&"9".repeat(INSTRUMENT_CHARS_MAX + 1), None);
        for bad in [bad_currency, zero, too_long, request("", None)] {
            assert!(order_of(Provider::BankCard, bad).is_err());
        }
    }

    #[test]
    fn the_stale_duplicate_delivery_is_built_in_order() {
        let charge = Charge {
            provider: Provider::WechatPay,
            payment_id: "pay_1".into(),
            amount_minor: 100,
            currency_code: "CNY".into(),
            instrument_last4: "0777".into(),
            outcome: super::super::behaviour::Outcome::Succeeded,
            provider_ref: "wx_1".into(),
        };
        let url = reqwest::Url::parse("http://127.0.0.1:9/n").ok();
        let delivery = delivery_of(&charge, Behaviour::NotifyTwiceThenStale, url).unwrap();
        let sent: Vec<_> = delivery
            .notifications
            .iter()
            .map(|n| (n.status.as_str(), n.sequence))
            .collect();
        assert_eq!(sent, [("SUCCEEDED", 2), ("SUCCEEDED", 2), ("PENDING", 1)]);
        let bank_card = Charge {
            provider: Provider::BankCard,
            ..charge
        };
        assert!(delivery_of(&bank_card, Behaviour::Succeed, None).is_none());
    }
}
