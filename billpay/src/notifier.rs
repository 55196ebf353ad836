//! The notifier `billpay up` runs: a WatchEvents consumer that "sends" each customer
//! message by logging it (an SMS simulator). It keeps its cursor in a file beside the
//! data, so a restart resumes where it stopped: nothing missed, nothing sent twice.
//! `payments` follows payment-svc's stream (autopay) the same way.

pub mod payments;

use std::{path::PathBuf, time::Duration};

use billpay_contracts::billing::v1::{
    CreditLimitChangeKind, Event, EventKind, WatchEventsRequest,
    billing_service_client::BillingServiceClient,
};
use service_kit::auth::{Role, TokenSigner, mint};
use tokio::sync::watch;

use crate::tls::BillingEndpoint;

/// Wait before reconnecting after the stream ends.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// Follows billing's events until `stopped` changes.
pub async fn run(
    billing: BillingEndpoint,
    key: TokenSigner,
    cursor_file: PathBuf,
    stopped: watch::Receiver<()>,
) {
    keep_following("billing's event stream", stopped, move || {
        follow(billing.clone(), key.clone(), cursor_file.clone())
    })
    .await;
}

/// Runs `follow` (one connection to a stream) again and again, a pause between, until
/// `stopped` changes.
pub(crate) async fn keep_following<F, Fut>(
    stream: &str,
    mut stopped: watch::Receiver<()>,
    mut follow: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    loop {
        tokio::select! {
            _ = stopped.changed() => return,
            result = follow() => {
                if let Err(error) = result {
                    tracing::warn!(%error, "notifier lost {stream}; reconnecting");
                }
            }
        }
        tokio::select! {
            _ = stopped.changed() => return,
            () = tokio::time::sleep(RECONNECT_DELAY) => {}
        }
    }
}

/// A stream request with the notifier's own token for `scope`.
pub(crate) fn authorized<T>(
    message: T,
    key: &TokenSigner,
    scope: &str,
) -> anyhow::Result<tonic::Request<T>> {
    let token = mint(
        key,
        "billpay-notifier",
        Role::Service,
        &[scope],
        None,
        24 * 3600,
    );
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(request)
}

/// Tells the customer `text` (an SMS, here a log line), then moves the cursor past the
/// event and keeps it, so a restart neither misses nor repeats a message.
pub(crate) fn tell(
    account_id: &str,
    text: Option<String>,
    event_id: i64,
    cursor: &mut i64,
    cursor_file: &PathBuf,
) -> anyhow::Result<()> {
    if let Some(text) = text {
        tracing::info!(target: "notifier", account_id, "SMS: {text}");
    }
    *cursor = event_id;
    std::fs::write(cursor_file, cursor.to_string())?;
    Ok(())
}

/// One connection: from the cursor kept in `cursor_file`, until the stream ends.
async fn follow(
    billing: BillingEndpoint,
    key: TokenSigner,
    cursor_file: PathBuf,
) -> anyhow::Result<()> {
    let mut cursor = read_cursor(&cursor_file);
    let mut client = BillingServiceClient::new(billing.connect().await?);
    let request = WatchEventsRequest {
        after_id: cursor,
        ..Default::default()
    };
    let mut stream = client
        .watch_events(authorized(request, &key, "billing:events")?)
        .await?
        .into_inner();
    while let Some(response) = stream.message().await? {
        if let Some(event) = response.event {
            let text = message(&event);
            tell(
                &event.account_id,
                text,
                event.event_id,
                &mut cursor,
                &cursor_file,
            )?;
        }
    }
    Ok(())
}

pub(crate) fn read_cursor(cursor_file: &PathBuf) -> i64 {
    std::fs::read_to_string(cursor_file)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(0)
}

/// The customer's message for an event, if it has one.
fn message(event: &Event) -> Option<String> {
    let amount = event
        .amount
        .as_ref()
        .map_or("", |money| money.amount.as_str());
    let text = match event.kind() {
        EventKind::PlanCreated => format!("your installment plan for {amount} CNY is open"),
        EventKind::BillDueSoon => format!("a bill of {amount} CNY is due on {}", event.due_date),
        EventKind::BillDue => format!("a bill of {amount} CNY is due today ({})", event.due_date),
        EventKind::BillOverdue => {
            format!("your bill due {} is overdue: {amount} CNY", event.due_date)
        }
        EventKind::RepaymentApplied => format!("we received your repayment of {amount} CNY"),
        EventKind::RepaymentReversed => format!("your repayment of {amount} CNY was refunded"),
        EventKind::PlanSettled => "your installment plan is fully repaid".to_owned(),
        EventKind::CreditLimitChanged => credit_limit_message(event, amount),
        EventKind::PlanCancelled => format!(
            "your installment plan was cancelled (goods returned); {amount} CNY you paid on it is now credit balance for your next bills"
        ),
        EventKind::Unspecified => return None,
    };
    Some(text)
}

/// The customer's message for a credit limit change: a new permanent limit, a
/// temporary one until a date, or the end of a temporary one.
fn credit_limit_message(event: &Event, amount: &str) -> String {
    let detail = event.credit_limit_change.as_ref();
    let previous = detail
        .and_then(|detail| detail.previous_limit.as_ref())
        .map_or("", |money| money.amount.as_str());
    let until = detail.map_or("", |detail| detail.until.as_str());
    match detail.map(|detail| detail.kind()) {
        Some(CreditLimitChangeKind::Temporary) => format!(
            "you have a temporary credit limit of {amount} CNY (was {previous} CNY) until the end of {until}"
        ),
        Some(CreditLimitChangeKind::TemporaryLapsed) => format!(
            "your temporary credit limit ended with {until}; your credit limit is {amount} CNY again"
        ),
        _ => format!("your credit limit is now {amount} CNY (was {previous} CNY)"),
    }
}

#[cfg(test)]
mod tests {
    use billpay_contracts::{billing::v1::CreditLimitChangeDetail, common::v1::Money};

    use super::*;

    fn event(
        kind: EventKind,
        amount: &str,
        detail: Option<(CreditLimitChangeKind, &str)>,
    ) -> Event {
        Event {
            kind: kind.into(),
            amount: Some(Money::new("CNY", amount)),
            credit_limit_change: detail.map(|(kind, until)| CreditLimitChangeDetail {
                previous_limit: Some(Money::new("CNY", "5000.00")),
                kind: kind.into(),
                until: until.into(),
            }),
            ..Event::default()
        }
    }

    #[test]
    fn tells_the_customer_about_limits_and_cancelled_plans() {
        let cases = [
            (
                event(
                    EventKind::CreditLimitChanged,
                    "8000.00",
                    Some((CreditLimitChangeKind::Permanent, "")),
                ),
                "your credit limit is now 8000.00 CNY (was 5000.00 CNY)",
            ),
            (
                event(
                    EventKind::CreditLimitChanged,
                    "12000.00",
                    Some((CreditLimitChangeKind::Temporary, "2026-12-31")),
                ),
                "you have a temporary credit limit of 12000.00 CNY (was 5000.00 CNY) until the end of 2026-12-31",
            ),
            (
                event(
                    EventKind::CreditLimitChanged,
                    "5000.00",
                    Some((CreditLimitChangeKind::TemporaryLapsed, "2026-12-31")),
                ),
                "your temporary credit limit ended with 2026-12-31; your credit limit is 5000.00 CNY again",
            ),
            (
                event(EventKind::PlanCancelled, "1071.82", None),
                "your installment plan was cancelled (goods returned); 1071.82 CNY you paid on it is now credit balance for your next bills",
            ),
        ];
        for (event, expected) in cases {
            assert_eq!(message(&event).as_deref(), Some(expected));
        }
    }
}
