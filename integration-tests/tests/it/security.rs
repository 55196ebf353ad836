//! Issue 10: what a stolen database gives away, and who may move money in billing.

use billpay_contracts::payment::v1::{PaymentMethod, PaymentStatus};
use chrono::Months;
use integration_tests::{Backend, TestApp, authorized};
use payment_svc::domain::payment::{
    DEV_FINGERPRINT_KEY, FingerprintKey, Instrument, PaymentMethod as DomainMethod,
    request_fingerprint,
};
use prost::Message as _;
use service_kit::money::{Currency, Money as DomainMoney};
use sha2::{Digest as _, Sha256};

use crate::{
    on_both_backends,
    support::{bills_target, business_today, new_plan, open_account, pay, repayment},
};

on_both_backends!(a_stolen_payment_row_does_not_give_back_the_card);

/// The card: a known issuer prefix (6 digits), 6 middle digits, the stored last 4.
const CARD_PREFIX: &str = "622202";
const CARD_MIDDLE: &str = "483915";
const CARD_LAST4: &str = "7731";

/// An account with a plan three months old, and its bills' ids.
async fn account_with_bills(app: &TestApp, customer_ref: &str) -> (String, Vec<String>) {
    let account_id = open_account(app, customer_ref, "50000.00").await;
    let mut request = new_plan(&account_id, "phone", "mall-fee", 12, "5999.00");
    request.purchase_date = (business_today() - Months::new(3)).to_string();
    let token = app.service_token(&["billing:write"]);
    let plan = app
        .billing()
        .await
        .create_plan(authorized(request, &token))
        .await
        .unwrap();
    let bills = plan.into_inner().plan.unwrap().bills;
    (
        account_id,
        bills.into_iter().map(|bill| bill.bill_id).collect(),
    )
}

/// The request fingerprint as it was before issue 10: an unkeyed SHA-256 of the same
/// parts, which a stolen row let anyone brute-force.
fn unkeyed_fingerprint(parts: &[&[u8]]) -> String {
    let mut digest = Sha256::new();
    for part in parts {
        digest.update((part.len() as u64).to_be_bytes());
        digest.update(part);
    }
    digest
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The attacker holds the stored row and everything about the request but the card's
/// middle six digits (even the target's exact bytes), and tries all 10^6 of them.
async fn a_stolen_payment_row_does_not_give_back_the_card(backend: Backend, test: &str) {
    let Some(app) = TestApp::spawn(backend, test).await else {
        return;
    };
    let (account_id, bills) = account_with_bills(&app, "c-pan").await;
    let card = format!("{CARD_PREFIX}{CARD_MIDDLE}{CARD_LAST4}");
    let target = bills_target(&[&bills[0]]);
    let payment = pay(
        &app,
        repayment(
            "k-pan",
            &account_id,
            target.clone(),
            "535.91",
            PaymentMethod::BankCard,
            &card,
        ),
    )
    .await
    .unwrap();
    assert_eq!(payment.status(), PaymentStatus::Succeeded);

    // Everything payment.db holds about the payment.
    let row = sqlx::query(
        "SELECT request_fingerprint, account_id, amount_minor, method, instrument_last4 \
         FROM payments WHERE payment_id = $1",
    )
    .bind(&payment.payment_id)
    .fetch_one(app.payment_db.pool())
    .await
    .unwrap();
    use sqlx::Row as _;
    let stored: String = row.get("request_fingerprint");
    let stored_account: String = row.get("account_id");
    let amount_minor: i64 = row.get("amount_minor");
    let method: String = row.get("method");
    let last4: String = row.get("instrument_last4");
    assert_eq!(last4, CARD_LAST4, "the last four are stored, in the clear");
    let all_text: String = sqlx::query_scalar(
        "SELECT payment_id || caller || idempotency_key || request_fingerprint || account_id || target \
         FROM payments WHERE payment_id = $1",
    )
    .bind(&payment.payment_id)
    .fetch_one(app.payment_db.pool())
    .await
    .unwrap();
    assert!(
        !all_text.contains(CARD_MIDDLE),
        "the middle digits are stored nowhere"
    );

    let amount = DomainMoney::from_minor(Currency::Cny, amount_minor).unwrap();
    let method = DomainMethod::parse(&method).unwrap();
    let target_bytes = target.encode_to_vec();
    let keys = [
        ("a wrong key", FingerprintKey::new(&[0x5a; 32]).unwrap()),
        (
            "the key",
            FingerprintKey::new(DEV_FINGERPRINT_KEY.as_bytes()).unwrap(),
        ),
    ];
    let found = tokio::task::spawn_blocking(move || {
        let amount_text = amount.to_string();
        let mut found: Vec<(&str, String)> = Vec::new();
        for middle in 0..1_000_000u32 {
            let guess = format!("{CARD_PREFIX}{middle:06}{last4}");
            let unkeyed = unkeyed_fingerprint(&[
                stored_account.as_bytes(),
                &target_bytes,
                amount_text.as_bytes(),
                method.as_str().as_bytes(),
                guess.as_bytes(),
            ]);
            if unkeyed == stored {
                found.push(("no key (plain SHA-256)", guess.clone()));
            }
            let instrument = Instrument::parse(&guess).unwrap();
            for (name, key) in &keys {
                let keyed = request_fingerprint(
                    key,
                    &stored_account,
                    &target_bytes,
                    amount,
                    method,
                    &instrument,
                );
                if keyed == stored {
                    found.push((name, guess.clone()));
                }
            }
        }
        found
    })
    .await
    .unwrap();
    // The control: with the key, the same search does find the card, so the search
    // is right and finding nothing without the key means something.
    assert_eq!(
        found,
        vec![("the key", card)],
        "only the configured key recovers the card"
    );
    app.stop().await;
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_files_are_owner_only() {
    use std::os::unix::fs::PermissionsExt as _;
    let app = TestApp::spawn(Backend::Sqlite, "security::database_files_are_owner_only")
        .await
        .unwrap();
    // A write, so the WAL files exist too.
    let _ = open_account(&app, "c-perm", "100.00").await;
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(app.data_dir()).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.contains(".db") {
            let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{name} is {mode:o}");
            checked.push(name);
        }
    }
    checked.sort();
    for expected in [
        "billing.db",
        "billing.db-wal",
        "payment.db",
        "provider-sim.db",
    ] {
        assert!(
            checked.iter().any(|name| name == expected),
            "{expected} not among {checked:?}"
        );
    }
    app.stop().await;
}
