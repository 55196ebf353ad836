//! The notifier `billpay up` runs: a WatchEvents consumer that "sends" each customer
//! message by logging it (an SMS simulator). It keeps its cursor in a file beside the
//! data, so a restart resumes where it stopped: nothing missed, nothing sent twice.
//! `payments` follows payment-svc's stream (autopay) the same way.

pub mod payments;

use std::{path::PathBuf, time::Duration};

use billpay_contracts::billing::v1::{
    Event, EventKind, WatchEventsRequest, billing_service_client::BillingServiceClient,
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
    mut stopped: watch::Receiver<()>,
) {
    let mut cursor = read_cursor(&cursor_file);
    loop {
        tokio::select! {
            _ = stopped.changed() => return,
            result = follow(&billing, &key, &cursor_file, &mut cursor) => {
                if let Err(error) = result {
                    tracing::warn!(%error, "notifier lost the event stream; reconnecting");
                }
            }
        }
        tokio::select! {
            _ = stopped.changed() => return,
            () = tokio::time::sleep(RECONNECT_DELAY) => {}
        }
    }
}

async fn follow(
    billing: &BillingEndpoint,
    key: &TokenSigner,
    cursor_file: &PathBuf,
    cursor: &mut i64,
) -> anyhow::Result<()> {
    let mut client = BillingServiceClient::new(billing.connect().await?);
    let mut request = tonic::Request::new(WatchEventsRequest {
        after_id: *cursor,
        ..Default::default()
    });
    let token = mint(
        key,
        "billpay-notifier",
        Role::Service,
        &["billing:events"],
        None,
        24 * 3600,
    );
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let mut stream = client.watch_events(request).await?.into_inner();
    while let Some(response) = stream.message().await? {
        let Some(event) = response.event else {
            continue;
        };
        if let Some(text) = message(&event) {
            tracing::info!(target: "notifier", account_id = %event.account_id, "SMS: {text}");
        }
        *cursor = event.event_id;
        std::fs::write(cursor_file, cursor.to_string())?;
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
        EventKind::Unspecified => return None,
    };
    Some(text)
}
