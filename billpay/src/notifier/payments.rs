//! The notifier's second stream: payment-svc's WatchPaymentEvents (mandates and
//! autopay), with its own cursor file, told to the customer as SMS-style lines.

use std::path::PathBuf;

use billpay_contracts::payment::v1::{
    PaymentEvent, PaymentEventKind, WatchPaymentEventsRequest,
    payment_service_client::PaymentServiceClient,
};
use service_kit::auth::TokenSigner;
use tokio::sync::watch;

use crate::tls::BillingEndpoint as Endpoint;

/// Follows payment-svc's events until `stopped` changes.
pub async fn run(
    payment: Endpoint,
    key: TokenSigner,
    cursor_file: PathBuf,
    stopped: watch::Receiver<()>,
) {
    super::keep_following("payment-svc's event stream", stopped, move || {
        follow(payment.clone(), key.clone(), cursor_file.clone())
    })
    .await;
}

/// One connection: from the cursor kept in `cursor_file`, until the stream ends.
async fn follow(payment: Endpoint, key: TokenSigner, cursor_file: PathBuf) -> anyhow::Result<()> {
    let mut cursor = super::read_cursor(&cursor_file);
    let mut client = PaymentServiceClient::new(payment.connect().await?);
    let request = WatchPaymentEventsRequest {
        after_id: cursor,
        ..Default::default()
    };
    let mut stream = client
        .watch_payment_events(super::authorized(request, &key, "payment:read")?)
        .await?
        .into_inner();
    while let Some(response) = stream.message().await? {
        if let Some(event) = response.event {
            let text = message(&event);
            super::tell(
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

/// The customer's message for a payment event, if it has one.
pub fn message(event: &PaymentEvent) -> Option<String> {
    let amount = event
        .amount
        .as_ref()
        .map_or("", |money| money.amount.as_str());
    let card = &event.instrument_last4;
    let text = match event.kind() {
        PaymentEventKind::MandateCreated => format!(
            "autopay is on: we will debit what is due from the account ending {card} (at most {amount} CNY each time), always telling you 3 days before"
        ),
        PaymentEventKind::MandateRevoked => format!(
            "autopay is off ({}): nothing more will be debited from the account ending {card}",
            event.reason
        ),
        PaymentEventKind::MandateSuspended => format!(
            "autopay is paused: the card ending {card} has expired; set up autopay again with a new card"
        ),
        PaymentEventKind::AutopayNotice => format!(
            "on {} we will debit {amount} CNY from the account ending {card} for your bill; to stop it, revoke autopay {} in the app or call us",
            event.due_date, event.mandate_id
        ),
        PaymentEventKind::AutopayDebited => format!(
            "we debited {amount} CNY from the account ending {card} for your bill due {}",
            event.due_date
        ),
        PaymentEventKind::AutopayFailed => format!(
            "we could not debit {amount} CNY from the account ending {card} for your bill due {} (attempt {}): {}",
            event.due_date, event.attempt, event.reason
        ),
        PaymentEventKind::AutopaySkipped => match event.reason.as_str() {
            "OVER_CAP" => format!(
                "your bill due {} is {amount} CNY, above your autopay limit: nothing was debited, please pay it by hand",
                event.due_date
            ),
            "NO_NOTICE" => format!(
                "autopay will not debit your bill due {} (we could not tell you in time): please pay it by hand",
                event.due_date
            ),
            other => format!(
                "autopay skipped your bill due {} ({other}): please pay it by hand",
                event.due_date
            ),
        },
        PaymentEventKind::Unspecified => return None,
    };
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use billpay_contracts::common::v1::Money;

    #[test]
    fn each_autopay_event_tells_the_customer_something() {
        let event = |kind: PaymentEventKind, reason: &str| PaymentEvent {
            kind: kind.into(),
            amount: Some(Money::new("CNY", "100.00")),
            due_date: "2026-06-15".into(),
            instrument_last4: "4242".into(),
            mandate_id: "mdt_1".into(),
            reason: reason.into(),
            attempt: 3,
            ..PaymentEvent::default()
        };
        let notice = message(&event(PaymentEventKind::AutopayNotice, "")).unwrap();
        assert!(
            notice.contains("100.00") && notice.contains("4242") && notice.contains("2026-06-15")
        );
        assert!(notice.contains("revoke autopay mdt_1"), "{notice}");
        let skipped = message(&event(PaymentEventKind::AutopaySkipped, "OVER_CAP")).unwrap();
        assert!(skipped.contains("pay it by hand"), "{skipped}");
        let failed = message(&event(
            PaymentEventKind::AutopayFailed,
            "INSUFFICIENT_FUNDS",
        ))
        .unwrap();
        assert!(failed.contains("attempt 3"), "{failed}");
        assert_eq!(message(&event(PaymentEventKind::Unspecified, "")), None);
    }
}
