//! Repayments end to end: payment-svc, the provider simulator and billing-svc, for
//! every row of SPEC §6.2's table, idempotency, races, outages, crashes and refunds.
//! After each scenario, R1 holds: what the provider captured minus what it refunded
//! equals what billing applied (to bills and to credit balance).

use billpay_contracts::{
    billing::v1::{
        ApplyRepaymentRequest, ApplyRepaymentResponse, BillStatus, GetAccountRequest,
        GetBillRequest, QuoteRepaymentRequest,
    },
    common::v1::{AllDue, Money, RepaymentTarget, repayment_target::Kind},
    payment::v1::{
        CreateRepaymentRequest, GetPaymentRequest, Payment, PaymentMethod, PaymentStatus,
        RefundPaymentRequest, payment_service_client::PaymentServiceClient,
    },
};
use chrono::Months;
use integration_tests::{Backend, StackOptions, TestApp, authorized, connect};
use tonic::Code;

use crate::{
    on_both_backends,
    support::{
        bills_target, business_today, expect_code, new_plan, open_account, pay, poll_until, reason,
        repayment, violated_fields,
    },
};

on_both_backends!(
    a_bank_card_success_pays_the_bill_at_once,
    declines_fail_with_their_code_and_leave_the_bill_unpaid,
    wallets_succeed_by_notification,
    a_lost_reply_is_reconciled_and_applied_once,
    a_provider_error_fails_with_nothing_charged,
    duplicate_and_stale_notifications_apply_once,
    the_same_key_is_the_same_payment,
    concurrent_identical_requests_charge_once_across_replicas,
    two_keys_paying_one_bill_leave_the_surplus_as_credit,
    a_changed_amount_is_refused_and_stores_nothing,
    captured_money_reaches_billing_after_an_outage,
    a_refund_reopens_the_bill,
    a_notification_with_a_bad_signature_changes_nothing,
    malformed_repayments_are_refused_and_write_nothing,
    an_applied_payment_id_replays_its_first_result_and_changes_nothing,
);

/// An account with a 5999.00 phone on mall-fee over 12 terms, bought three months
/// ago: bills 1 to 3 are DUE. Returns the account and the bill ids in seq order.
pub(crate) async fn account_with_bills(app: &TestApp, customer_ref: &str) -> (String, Vec<String>) {
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

pub(crate) async fn get_payment(app: &TestApp, payment_id: &str) -> Payment {
    let mut payment = PaymentServiceClient::new(connect(app.payment_addr).await);
    let request = GetPaymentRequest {
        payment_id: payment_id.into(),
    };
    payment
        .get_payment(authorized(request, &app.payment_token()))
        .await
        .unwrap()
        .into_inner()
        .payment
        .unwrap()
}

pub(crate) async fn bill_status(app: &TestApp, bill_id: &str) -> BillStatus {
    let request = GetBillRequest {
        bill_id: bill_id.into(),
    };
    let bill = app
        .billing()
        .await
        .get_bill(authorized(request, &app.service_token(&["billing:read"])))
        .await;
    bill.unwrap().into_inner().bill.unwrap().status()
}

pub(crate) async fn credit_balance(app: &TestApp, account_id: &str) -> String {
    let request = GetAccountRequest {
        account_id: account_id.into(),
    };
    let account = app
        .billing()
        .await
        .get_account(authorized(request, &app.service_token(&["billing:read"])))
        .await;
    account
        .unwrap()
        .into_inner()
        .account
        .unwrap()
        .credit_balance
        .unwrap()
        .amount
}

/// Waits until the payment is SUCCEEDED and applied.
pub(crate) async fn until_applied(app: &TestApp, payment_id: &str) {
    poll_until("the payment is SUCCEEDED and applied", || async {
        let payment = get_payment(app, payment_id).await;
        payment.status() == PaymentStatus::Succeeded && payment.applied
    })
    .await;
}

/// R1: captured − refunded at the provider = what billing holds as applied.
pub(crate) async fn assert_conservation(app: &TestApp) {
    let (captured, refunded, _) = app.ledger().await;
    let applied: i64 = sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(amount_minor), 0) AS BIGINT) FROM repayments WHERE state = 'APPLIED'",
    )
    .fetch_one(app.billing_db.pool())
    .await
    .unwrap();
    assert_eq!(
        captured - refunded,
        applied,
        "R1: provider ledger = billing's applied money"
    );
}

async fn a_bank_card_success_pays_the_bill_at_once(backend: Backend, test: &str) {
    let Some(app) = TestApp::spawn(backend, test).await else {
        return;
    };
    let (account_id, bills) = account_with_bills(&app, "c-card").await;
    let request = repayment(
        "k-1",
        &account_id,
        bills_target(&[&bills[0]]),
        "535.91",
        PaymentMethod::BankCard,
        "tok_4242",
    );
    let payment = pay(&app, request).await.unwrap();
    assert_eq!(payment.status(), PaymentStatus::Succeeded);
    assert!(payment.applied, "applied inline");
    assert_eq!(payment.instrument_last4, "4242");
    assert_eq!(
        bill_status(&app, &bills[0]).await,
        BillStatus::Paid,
        "the bill is PAID when the call returns"
    );
    assert_eq!(bill_status(&app, &bills[1]).await, BillStatus::Due);
    let (captured, _, entries) = app.ledger().await;
    assert_eq!((captured, entries.len()), (53_591, 1));
    assert_conservation(&app).await;
    app.stop().await;
}

async fn declines_fail_with_their_code_and_leave_the_bill_unpaid(backend: Backend, test: &str) {
    let Some(app) = TestApp::spawn(backend, test).await else {
        return;
    };
    let (account_id, bills) = account_with_bills(&app, "c-decline").await;
    for (key, instrument, code) in [
        ("k-1", "tok_0002", "INSUFFICIENT_FUNDS"),
        ("k-2", "tok_0069", "EXPIRED_INSTRUMENT"),
    ] {
        let request = repayment(
            key,
            &account_id,
            bills_target(&[&bills[0]]),
            "535.91",
            PaymentMethod::BankCard,
            instrument,
        );
        let payment = pay(&app, request).await.unwrap();
        assert_eq!(payment.status(), PaymentStatus::Failed, "{instrument}");
        assert_eq!(payment.failure_code, code);
        assert!(!payment.failure_message.is_empty());
        assert!(!payment.applied);
    }
    assert_eq!(bill_status(&app, &bills[0]).await, BillStatus::Due);
    assert_eq!(app.ledger().await.0, 0, "nothing captured");
    assert_conservation(&app).await;
    app.stop().await;
}

async fn wallets_succeed_by_notification(backend: Backend, test: &str) {
    let Some(app) = TestApp::spawn(backend, test).await else {
        return;
    };
    let (account_id, bills) = account_with_bills(&app, "c-wallet").await;
    for (index, method) in [PaymentMethod::Alipay, PaymentMethod::WechatPay]
        .into_iter()
        .enumerate()
    {
        let bill = &bills[index];
        let request = repayment(
            &format!("k-{index}"),
            &account_id,
            bills_target(&[bill]),
            "535.91",
            method,
            "payer-8888",
        );
        let payment = pay(&app, request).await.unwrap();
        assert_eq!(
            payment.status(),
            PaymentStatus::Processing,
            "{method:?} answers PENDING first"
        );
        until_applied(&app, &payment.payment_id).await;
        assert_eq!(
            bill_status(&app, bill).await,
            BillStatus::Paid,
            "{method:?}"
        );
    }
    assert_eq!(app.ledger().await.0, 2 * 53_591);
    assert_conservation(&app).await;
    app.stop().await;
}

async fn a_lost_reply_is_reconciled_and_applied_once(backend: Backend, test: &str) {
    let Some(app) = TestApp::spawn(backend, test).await else {
        return;
    };
    let (account_id, bills) = account_with_bills(&app, "c-lost").await;
    let request = repayment(
        "k-1",
        &account_id,
        bills_target(&[&bills[0]]),
        "535.91",
        PaymentMethod::BankCard,
        "tok_0119",
    );
    let payment = pay(&app, request).await.unwrap();
    assert_eq!(
        payment.status(),
        PaymentStatus::Processing,
        "no answer is not a failure"
    );
    until_applied(&app, &payment.payment_id).await;
    assert_eq!(bill_status(&app, &bills[0]).await, BillStatus::Paid);
    let (captured, _, entries) = app.ledger().await;
    assert_eq!((captured, entries.len()), (53_591, 1), "charged once");
    let applications = app.billing_rows("repayments").await;
    assert_eq!(applications, 1, "applied once");
    assert_conservation(&app).await;
    app.stop().await;
}

async fn a_provider_error_fails_with_nothing_charged(backend: Backend, test: &str) {
    let Some(app) = TestApp::spawn(backend, test).await else {
        return;
    };
    let (account_id, bills) = account_with_bills(&app, "c-500").await;
    let request = repayment(
        "k-1",
        &account_id,
        bills_target(&[&bills[0]]),
        "535.91",
        PaymentMethod::BankCard,
        "tok_0341",
    );
    let payment = pay(&app, request).await.unwrap();
    assert_eq!(payment.status(), PaymentStatus::Failed);
    assert_eq!(payment.failure_code, "PROVIDER_ERROR");
    assert_eq!(app.ledger().await.0, 0);
    assert_eq!(bill_status(&app, &bills[0]).await, BillStatus::Due);
    assert_conservation(&app).await;
    app.stop().await;
}

async fn duplicate_and_stale_notifications_apply_once(backend: Backend, test: &str) {
    let Some(app) = TestApp::spawn(backend, test).await else {
        return;
    };
    let (account_id, bills) = account_with_bills(&app, "c-0777").await;
    let request = repayment(
        "k-1",
        &account_id,
        bills_target(&[&bills[0]]),
        "535.91",
        PaymentMethod::Alipay,
        "payer-0777",
    );
    let payment = pay(&app, request).await.unwrap();
    until_applied(&app, &payment.payment_id).await;
    // The simulator sends the success twice and then a stale PENDING; wait until it
    // has delivered all three (its ledger of deliveries is not exposed, so wait for
    // the payment to stay put while the outbox and listener settle).
    poll_until("the outbox has delivered", || async {
        app.payment_rows("outbox WHERE delivered_at_micros IS NULL")
            .await
            == 0
    })
    .await;
    let after = get_payment(&app, &payment.payment_id).await;
    assert_eq!(
        after.status(),
        PaymentStatus::Succeeded,
        "a stale notification does not move it back"
    );
    let applications = app.billing_rows("repayments").await;
    assert_eq!(applications, 1);
    assert_eq!(
        credit_balance(&app, &account_id).await,
        "0.00",
        "not applied twice"
    );
    assert_conservation(&app).await;
    app.stop().await;
}

async fn the_same_key_is_the_same_payment(backend: Backend, test: &str) {
    let Some(app) = TestApp::spawn(backend, test).await else {
        return;
    };
    let (account_id, bills) = account_with_bills(&app, "c-idem").await;
    let request = repayment(
        "k-1",
        &account_id,
        bills_target(&[&bills[0]]),
        "535.91",
        PaymentMethod::BankCard,
        "tok_4242",
    );
    let first = pay(&app, request.clone()).await.unwrap();
    let again = pay(&app, request.clone()).await.unwrap();
    assert_eq!(first.payment_id, again.payment_id);
    assert_eq!(again.status(), PaymentStatus::Succeeded);
    assert_eq!(app.ledger().await.2.len(), 1, "one charge");

    let mut other = request;
    other.target = Some(bills_target(&[&bills[1]]));
    let status = expect_code(pay(&app, other).await, Code::AlreadyExists);
    assert_eq!(reason(&status).as_deref(), Some("IDEMPOTENCY_KEY_REUSED"));
    assert_eq!(app.payment_rows("payments").await, 1);
    assert_conservation(&app).await;
    app.stop().await;
}

async fn concurrent_identical_requests_charge_once_across_replicas(backend: Backend, test: &str) {
    let Some(mut app) = TestApp::spawn(backend, test).await else {
        return;
    };
    let replica = app.spawn_payment_replica().await;
    let (account_id, bills) = account_with_bills(&app, "c-race").await;
    let request = repayment(
        "k-race",
        &account_id,
        bills_target(&[&bills[0]]),
        "535.91",
        PaymentMethod::BankCard,
        "tok_4242",
    );
    let token = app.payment_token();
    let calls: Vec<_> = (0..50)
        .map(|i| {
            let addr = if i % 2 == 0 {
                app.payment_addr
            } else {
                replica
            };
            let request = authorized(request.clone(), &token);
            tokio::spawn(async move {
                PaymentServiceClient::new(connect(addr).await)
                    .create_repayment(request)
                    .await
            })
        })
        .collect();
    let mut ids = Vec::new();
    for call in calls {
        ids.push(
            call.await
                .unwrap()
                .expect("every duplicate gets the payment")
                .into_inner()
                .payment
                .unwrap()
                .payment_id,
        );
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "one payment per key");
    until_applied(&app, &ids[0]).await;
    let (captured, _, entries) = app.ledger().await;
    assert_eq!((captured, entries.len()), (53_591, 1), "one charge");
    assert_conservation(&app).await;
    app.stop().await;
}

async fn two_keys_paying_one_bill_leave_the_surplus_as_credit(backend: Backend, test: &str) {
    let options = StackOptions {
        flaky_billing: true,
        ..StackOptions::default()
    };
    let Some(app) = TestApp::spawn_with(backend, test, options).await else {
        return;
    };
    let (account_id, bills) = account_with_bills(&app, "c-twice").await;
    // Billing applies nothing until both are captured, so both quotes see the bill
    // unpaid however the two calls interleave (otherwise the later one could be
    // refused NOTHING_TO_PAY before any money moved, which is right but not this test).
    app.set_billing_apply_down(true);
    let calls: Vec<_> = ["k-a", "k-b"]
        .into_iter()
        .map(|key| {
            let request = authorized(
                repayment(
                    key,
                    &account_id,
                    bills_target(&[&bills[0]]),
                    "535.91",
                    PaymentMethod::BankCard,
                    "tok_4242",
                ),
                &app.payment_token(),
            );
            let addr = app.payment_addr;
            tokio::spawn(async move {
                PaymentServiceClient::new(connect(addr).await)
                    .create_repayment(request)
                    .await
            })
        })
        .collect();
    let mut captured = Vec::new();
    for call in calls {
        let payment = call.await.unwrap().unwrap().into_inner().payment.unwrap();
        assert_eq!(payment.status(), PaymentStatus::Succeeded);
        captured.push(payment.payment_id);
    }
    app.set_billing_apply_down(false);
    for payment_id in &captured {
        until_applied(&app, payment_id).await;
    }
    assert_eq!(captured.len(), 2, "captured money is never refused");
    assert_eq!(bill_status(&app, &bills[0]).await, BillStatus::Paid);
    assert_eq!(
        credit_balance(&app, &account_id).await,
        "535.91",
        "the second capture is credit balance"
    );
    assert_eq!(app.ledger().await.0, 2 * 53_591);
    assert_conservation(&app).await;
    app.stop().await;
}

async fn a_changed_amount_is_refused_and_stores_nothing(backend: Backend, test: &str) {
    let Some(app) = TestApp::spawn(backend, test).await else {
        return;
    };
    let (account_id, bills) = account_with_bills(&app, "c-changed").await;
    let request = repayment(
        "k-1",
        &account_id,
        bills_target(&[&bills[0]]),
        "535.90",
        PaymentMethod::BankCard,
        "tok_4242",
    );
    let status = expect_code(pay(&app, request).await, Code::FailedPrecondition);
    assert_eq!(reason(&status).as_deref(), Some("AMOUNT_CHANGED"));
    assert!(
        status.message().contains("535.91"),
        "says the current amount: {}",
        status.message()
    );
    assert_eq!(app.payment_rows("payments").await, 0);
    assert_eq!(app.ledger().await.2.len(), 0);
    app.stop().await;
}

async fn captured_money_reaches_billing_after_an_outage(backend: Backend, test: &str) {
    let options = StackOptions {
        flaky_billing: true,
        ..StackOptions::default()
    };
    let Some(app) = TestApp::spawn_with(backend, test, options).await else {
        return;
    };
    let (account_id, bills) = account_with_bills(&app, "c-outage").await;
    app.set_billing_apply_down(true);
    let request = repayment(
        "k-1",
        &account_id,
        bills_target(&[&bills[0]]),
        "535.91",
        PaymentMethod::BankCard,
        "tok_4242",
    );
    let payment = pay(&app, request).await.unwrap();
    assert_eq!(payment.status(), PaymentStatus::Succeeded, "captured");
    assert!(!payment.applied, "billing could not be told yet");
    assert_eq!(bill_status(&app, &bills[0]).await, BillStatus::Due);
    app.set_billing_apply_down(false);
    until_applied(&app, &payment.payment_id).await;
    assert_eq!(
        bill_status(&app, &bills[0]).await,
        BillStatus::Paid,
        "the outbox applied it"
    );
    assert_conservation(&app).await;
    app.stop().await;
}

async fn a_refund_reopens_the_bill(backend: Backend, test: &str) {
    let Some(app) = TestApp::spawn(backend, test).await else {
        return;
    };
    let (account_id, bills) = account_with_bills(&app, "c-refund").await;
    let request = repayment(
        "k-1",
        &account_id,
        bills_target(&[&bills[0]]),
        "535.91",
        PaymentMethod::BankCard,
        "tok_4242",
    );
    let payment = pay(&app, request).await.unwrap();
    assert_eq!(bill_status(&app, &bills[0]).await, BillStatus::Paid);

    let mut client = PaymentServiceClient::new(connect(app.payment_addr).await);
    let refund = RefundPaymentRequest {
        payment_id: payment.payment_id.clone(),
        idempotency_key: "r-1".into(),
        reason: "returned the phone".into(),
    };
    let refunded = client
        .refund_payment(authorized(refund.clone(), &app.payment_token()))
        .await
        .unwrap();
    assert_eq!(
        refunded.into_inner().payment.unwrap().status(),
        PaymentStatus::Refunded
    );
    poll_until("billing reversed the payment", || async {
        bill_status(&app, &bills[0]).await == BillStatus::Due
    })
    .await;
    let again = client
        .refund_payment(authorized(refund.clone(), &app.payment_token()))
        .await
        .unwrap();
    assert_eq!(
        again.into_inner().payment.unwrap().status(),
        PaymentStatus::Refunded,
        "idempotent"
    );
    let other_key = RefundPaymentRequest {
        idempotency_key: "r-2".into(),
        ..refund
    };
    let status = expect_code(
        client
            .refund_payment(authorized(other_key, &app.payment_token()))
            .await,
        Code::AlreadyExists,
    );
    assert_eq!(reason(&status).as_deref(), Some("IDEMPOTENCY_KEY_REUSED"));
    let (captured, refunded, _) = app.ledger().await;
    assert_eq!((captured, refunded), (53_591, 53_591), "refunded once");
    assert_conservation(&app).await;
    app.stop().await;
}

async fn a_notification_with_a_bad_signature_changes_nothing(backend: Backend, test: &str) {
    // The real notification is held back and the reconciler waits a minute, so the
    // payment is PROCESSING when the forged one arrives, however slow the machine.
    let options = StackOptions {
        sim_notify_delay_ms: Some(3_000),
        reconcile_after_ms: Some(60_000),
        ..StackOptions::default()
    };
    let Some(app) = TestApp::spawn_with(backend, test, options).await else {
        return;
    };
    let (account_id, bills) = account_with_bills(&app, "c-forged").await;
    let request = repayment(
        "k-1",
        &account_id,
        bills_target(&[&bills[0]]),
        "535.91",
        PaymentMethod::Alipay,
        "payer-8888",
    );
    let payment = pay(&app, request).await.unwrap();
    assert_eq!(payment.status(), PaymentStatus::Processing);
    // ...and a forged success for it, signed with the wrong secret.
    let body = serde_json::json!({
        "payment_id": payment.payment_id, "provider_ref": "forged", "status": "SUCCEEDED",
        "decline_code": null, "amount_minor": 53591, "sequence": 9
    })
    .to_string();
    let notify_addr = app.payment_notify_addr;
    let response = reqwest::Client::new()
        .post(format!("http://{notify_addr}/notify/alipay"))
        .header(
            "x-billpay-signature",
            payment_svc::providers::signature::sign(b"wrong-secret", body.as_bytes()),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::UNAUTHORIZED);
    let after = get_payment(&app, &payment.payment_id).await;
    assert_eq!(
        after.status(),
        PaymentStatus::Processing,
        "the forged success changed nothing"
    );
    assert_eq!(bill_status(&app, &bills[0]).await, BillStatus::Due);
    until_applied(&app, &payment.payment_id).await;
    let applications = app.billing_rows("repayments").await;
    assert_eq!(applications, 1);
    assert_conservation(&app).await;
    app.stop().await;
}

async fn malformed_repayments_are_refused_and_write_nothing(backend: Backend, test: &str) {
    let Some(app) = TestApp::spawn(backend, test).await else {
        return;
    };
    let (account_id, bills) = account_with_bills(&app, "c-bad").await;
    let (other_account, other_bills) = account_with_bills(&app, "c-other").await;
    let valid = || {
        repayment(
            "k-1",
            &account_id,
            bills_target(&[&bills[0]]),
            "535.91",
            PaymentMethod::BankCard,
            "tok_4242",
        )
    };
    type Breaker = Box<dyn Fn(&mut CreateRepaymentRequest)>;
    let other_bill = other_bills[0].clone();
    let cases: Vec<(&str, Breaker, Code, &str)> = vec![
        (
            "unknown bill",
            Box::new(|r| r.target = Some(bills_target(&["bill_nope"]))),
            Code::NotFound,
            "",
        ),
        (
            "another account's bill",
            Box::new(move |r| r.target = Some(bills_target(&[&other_bill]))),
            Code::NotFound,
            "",
        ),
        (
            "empty target",
            Box::new(|r| r.target = Some(RepaymentTarget { kind: None })),
            Code::InvalidArgument,
            "target",
        ),
        (
            "no bills in the selection",
            Box::new(|r| r.target = Some(bills_target(&[]))),
            Code::InvalidArgument,
            "target.bills.bill_ids",
        ),
        (
            "unspecified method",
            Box::new(|r| r.method = PaymentMethod::Unspecified as i32),
            Code::InvalidArgument,
            "method",
        ),
        (
            "empty key",
            Box::new(|r| r.idempotency_key.clear()),
            Code::InvalidArgument,
            "idempotency_key",
        ),
        (
            "300-byte key",
            Box::new(|r| r.idempotency_key = "k".repeat(300)),
            Code::InvalidArgument,
            "idempotency_key",
        ),
        (
            "amount with 3 decimals",
            Box::new(|r| r.expected_amount = Some(Money::new("CNY", "535.910"))),
            Code::InvalidArgument,
            "expected_amount.amount",
        ),
        (
            "empty instrument",
            Box::new(|r| r.instrument.clear()),
            Code::InvalidArgument,
            "instrument",
        ),
        (
            "unknown account",
            Box::new(|r| {
                r.target = Some(RepaymentTarget {
                    kind: Some(Kind::AllDue(AllDue {})),
                });
                r.account_id = "acc_unknown".into();
            }),
            Code::NotFound,
            "",
        ),
    ];
    for (what, break_it, code, field) in cases {
        let mut request = valid();
        break_it(&mut request);
        let status = expect_code(pay(&app, request).await, code);
        if code == Code::InvalidArgument {
            assert_eq!(violated_fields(&status), [field], "{what}: {status:?}");
        }
    }
    assert_eq!(app.payment_rows("payments").await, 0, "nothing stored");
    assert_eq!(app.ledger().await.2.len(), 0, "nothing charged");
    let _ = other_account;

    // A quote for a paid-up target answers NOTHING_TO_PAY.
    pay(&app, valid()).await.unwrap();
    let quote = QuoteRepaymentRequest {
        account_id: account_id.clone(),
        target: Some(bills_target(&[&bills[0]])),
    };
    let status = expect_code(
        app.billing()
            .await
            .quote_repayment(authorized(quote, &app.service_token(&["billing:read"])))
            .await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&status).as_deref(), Some("NOTHING_TO_PAY"));
    app.stop().await;
}

/// ApplyRepayment retried with a payment_id it applied before, while the bill still
/// owes enough for the retry to be allocated again: the first result comes back,
/// marked replayed, and nothing changes (on PostgreSQL the retry's writes ride in
/// the statement that moves the principal, and are rolled back there). The same
/// payment_id with another amount is refused, also writing nothing.
async fn an_applied_payment_id_replays_its_first_result_and_changes_nothing(
    backend: Backend,
    test: &str,
) {
    let Some(app) = TestApp::spawn(backend, test).await else {
        return;
    };
    let (account_id, bills) = account_with_bills(&app, "c-replay").await;
    let token = app.service_token(&["billing:apply"]);
    let apply = |amount: &str| {
        let request = ApplyRepaymentRequest {
            payment_id: "pay_applied_once".into(),
            account_id: account_id.clone(),
            amount: Some(Money::new("CNY", amount)),
            target: Some(bills_target(&[&bills[0]])),
        };
        let app = &app;
        let token = &token;
        async move {
            app.billing()
                .await
                .apply_repayment(authorized(request, token))
                .await
        }
    };
    let first = apply("100.00").await.unwrap().into_inner();
    assert!(!first.replayed);
    assert_eq!(applied_figures(&first), ("100.00".into(), "0.00".into(), 1));
    let after_first = stored_money(&app, &account_id).await;

    let again = apply("100.00").await.unwrap().into_inner();
    assert!(
        again.replayed,
        "the retry is the first application's result"
    );
    assert_eq!(applied_figures(&again), applied_figures(&first));
    assert_eq!(again.allocations, first.allocations);
    assert_eq!(stored_money(&app, &account_id).await, after_first);

    expect_code(apply("200.00").await, Code::AlreadyExists);
    assert_eq!(stored_money(&app, &account_id).await, after_first);
    assert_eq!(bill_status(&app, &bills[0]).await, BillStatus::Due);
    app.stop().await;
}

/// Applied to bills, added to credit balance, and how many bills the money went to.
fn applied_figures(applied: &ApplyRepaymentResponse) -> (String, String, usize) {
    let amount = |money: &Option<Money>| money.as_ref().unwrap().amount.clone();
    (
        amount(&applied.applied_to_bills),
        amount(&applied.added_to_credit_balance),
        applied.allocations.len(),
    )
}

/// Every figure an ApplyRepayment can change: the rows it adds, what the account's
/// bills have been paid, its principal, credit balance and status.
async fn stored_money(app: &TestApp, account_id: &str) -> (Vec<i64>, String) {
    let mut figures = Vec::new();
    for table in ["repayments", "allocations", "principal_paid_log", "events"] {
        figures.push(app.billing_rows(table).await);
    }
    for sql in [
        "SELECT CAST(SUM(paid_principal_minor + paid_interest_minor + paid_fee_minor + paid_penalty_minor) AS BIGINT) \
         FROM bills WHERE account_id = $1",
        "SELECT principal_unpaid_minor FROM accounts WHERE account_id = $1",
        "SELECT credit_balance_minor FROM accounts WHERE account_id = $1",
    ] {
        figures.push(
            sqlx::query_scalar(sql)
                .bind(account_id)
                .fetch_one(app.billing_db.pool())
                .await
                .unwrap(),
        );
    }
    let status = sqlx::query_scalar("SELECT status FROM accounts WHERE account_id = $1")
        .bind(account_id)
        .fetch_one(app.billing_db.pool())
        .await
        .unwrap();
    (figures, status)
}

/// On PostgreSQL ApplyRepayment reads the account's bills in the statement that takes
/// the account's lock, with a snapshot taken before any wait for it. Here another
/// transaction holds the lock and pays bill 1 meanwhile (as a concurrent repayment
/// would): the waiting repayment must see bill 1 paid once it gets the lock, and put
/// its money on bill 2. Read from the stale snapshot, it would allocate to bill 1,
/// whose update would then find the bill changed, and fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repayment_waiting_for_the_account_sees_what_the_holder_committed() {
    let test = "repayments::a_repayment_waiting_for_the_account_sees_what_the_holder_committed";
    let Some(app) = TestApp::spawn(Backend::Postgres, test).await else {
        return;
    };
    let (account_id, bills) = account_with_bills(&app, "c-contended").await;
    let mut holder = app.billing_db.pool().begin().await.unwrap();
    for (sql, id) in [
        (
            "UPDATE accounts SET updated_at_micros = updated_at_micros + 1, \
               principal_unpaid_minor = principal_unpaid_minor - (SELECT principal_minor FROM bills WHERE bill_id = $1) \
             WHERE account_id = (SELECT account_id FROM bills WHERE bill_id = $1)",
            &bills[0],
        ),
        (
            "UPDATE bills SET paid_principal_minor = principal_minor, paid_interest_minor = interest_minor, \
               paid_fee_minor = fee_minor, paid_penalty_minor = penalty_minor, state = 'PAID' \
             WHERE bill_id = $1",
            &bills[0],
        ),
    ] {
        sqlx::query(sql)
            .bind(id)
            .execute(&mut *holder)
            .await
            .unwrap();
    }

    let request = ApplyRepaymentRequest {
        payment_id: "pay_waited_for_the_lock".into(),
        account_id: account_id.clone(),
        amount: Some(Money::new("CNY", "100.00")),
        target: Some(RepaymentTarget {
            kind: Some(Kind::Amount(Money::new("CNY", "100.00"))),
        }),
    };
    let token = app.service_token(&["billing:apply"]);
    let mut billing = app.billing().await;
    let apply =
        tokio::spawn(async move { billing.apply_repayment(authorized(request, &token)).await });
    poll_until("the repayment waits for the account's lock", || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(app.billing_db.pool())
        .await
        .unwrap();
        waiting == 1
    })
    .await;
    holder.commit().await.unwrap();

    let applied = apply.await.unwrap().unwrap().into_inner();
    let allocated: Vec<_> = applied
        .allocations
        .iter()
        .map(|allocation| {
            let amount = allocation.amount.as_ref().unwrap().amount.clone();
            (allocation.bill_id.clone(), amount)
        })
        .collect();
    assert_eq!(allocated, [(bills[1].clone(), "100.00".to_owned())]);
    assert_eq!(bill_status(&app, &bills[0]).await, BillStatus::Paid);
    assert_eq!(bill_status(&app, &bills[1]).await, BillStatus::Due);
    app.stop().await;
}
