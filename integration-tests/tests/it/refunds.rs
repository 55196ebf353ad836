//! Refunds that cannot break R1 (billing agrees before the provider returns money, and
//! a refund whose answer is lost is finished without the client), the outbox's dead
//! letters, and CreateRepayment's deadline budget.

use std::time::{Duration, Instant};

use billpay_contracts::{
    billing::v1::{
        ApplyRepaymentRequest, BillStatus, GetBillRequest, QuoteRepaymentRequest,
        ReverseRepaymentRequest, RunDayCloseRequest,
    },
    common::v1::{Money, PlanPayoff, RepaymentTarget, repayment_target::Kind},
    payment::v1::{
        ListDeadLettersRequest, OutboxKind, PaymentMethod, PaymentStatus, RefundPaymentRequest,
        RefundPaymentResponse, RefundStatus, RetryDeadLetterRequest,
        payment_service_client::PaymentServiceClient,
    },
};
use integration_tests::{Backend, StackOptions, TestApp, authorized, connect};
use tonic::{Code, Status};

use crate::{
    on_both_backends,
    repayments::{
        account_with_bills, assert_conservation, bill_status, credit_balance, get_payment,
        until_applied,
    },
    support::{bills_target, business_today, expect_code, pay, poll_until, reason, repayment},
};

on_both_backends!(
    a_refund_after_a_payoff_moves_no_money,
    a_refund_of_credit_a_close_spent_moves_no_money,
    a_refund_whose_reply_is_lost_is_finished_without_the_client,
    a_refund_the_provider_refuses_after_billing_reversed_is_applied_again,
    a_permanent_apply_refusal_waits_in_the_dead_letters_for_an_admin,
    a_slow_billing_past_the_deadline_still_answers_the_payment,
    more_reversals_at_once_than_pool_connections_all_finish,
    too_short_a_deadline_is_refused_before_anything_is_stored,
);

async fn refund(
    app: &TestApp,
    payment_id: &str,
    key: &str,
) -> Result<RefundPaymentResponse, Status> {
    let request = RefundPaymentRequest {
        payment_id: payment_id.into(),
        idempotency_key: key.into(),
        reason: "returned the phone".into(),
    };
    PaymentServiceClient::new(connect(app.payment_addr).await)
        .refund_payment(authorized(request, &app.payment_token()))
        .await
        .map(tonic::Response::into_inner)
}

async fn plan_of(app: &TestApp, bill_id: &str) -> String {
    let request = GetBillRequest {
        bill_id: bill_id.into(),
    };
    let bill = app
        .billing()
        .await
        .get_bill(authorized(request, &app.service_token(&["billing:read"])))
        .await;
    bill.unwrap().into_inner().bill.unwrap().plan_id
}

async fn quote(app: &TestApp, account_id: &str, target: RepaymentTarget) -> String {
    let request = QuoteRepaymentRequest {
        account_id: account_id.into(),
        target: Some(target),
    };
    let quote = app
        .billing()
        .await
        .quote_repayment(authorized(request, &app.service_token(&["billing:read"])))
        .await;
    quote.unwrap().into_inner().amount.unwrap().amount
}

/// What billing counts as applied, in minor units.
async fn billing_applied(app: &TestApp) -> i64 {
    sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(amount_minor), 0) AS BIGINT) FROM repayments WHERE state = 'APPLIED'",
    )
    .fetch_one(app.billing_db.pool())
    .await
    .unwrap()
}

/// A refused refund: NOT_REVERSIBLE, nothing refunded at the provider, billing's
/// figures as they were, the payment still SUCCEEDED, and R1.
async fn assert_refused_and_nothing_moved(app: &TestApp, payment_id: &str) {
    let applied_before = billing_applied(app).await;
    let status = expect_code(
        refund(app, payment_id, "r-1").await,
        Code::FailedPrecondition,
    );
    assert_eq!(
        reason(&status).as_deref(),
        Some("NOT_REVERSIBLE"),
        "{status:?}"
    );
    let again = expect_code(
        refund(app, payment_id, "r-1").await,
        Code::FailedPrecondition,
    );
    assert_eq!(
        reason(&again).as_deref(),
        Some("NOT_REVERSIBLE"),
        "a replay answers the same"
    );
    let (_, refunded, _) = app.ledger().await;
    assert_eq!(refunded, 0, "no money moved at the provider");
    assert_eq!(
        billing_applied(app).await,
        applied_before,
        "billing unchanged"
    );
    assert_eq!(
        get_payment(app, payment_id).await.status(),
        PaymentStatus::Succeeded
    );
    assert_conservation(app).await;
}

async fn a_refund_after_a_payoff_moves_no_money(backend: Backend, test: &str) {
    let Some(app) = TestApp::spawn(backend, test).await else {
        return;
    };
    let (account_id, bills) = account_with_bills(&app, "c-payoff-refund").await;
    let plan_id = plan_of(&app, &bills[0]).await;
    let target = RepaymentTarget {
        kind: Some(Kind::PlanPayoff(PlanPayoff { plan_id })),
    };
    let quoted = quote(&app, &account_id, target.clone()).await;
    let request = repayment(
        "payoff",
        &account_id,
        target,
        &quoted,
        PaymentMethod::BankCard,
        "tok_4242",
    );
    let paid = pay(&app, request).await.unwrap();
    assert!(paid.applied);
    assert_eq!(bill_status(&app, &bills[5]).await, BillStatus::SettledEarly);

    assert_refused_and_nothing_moved(&app, &paid.payment_id).await;
    assert_eq!(
        bill_status(&app, &bills[5]).await,
        BillStatus::SettledEarly,
        "the payoff stands"
    );
    app.stop().await;
}

async fn a_refund_of_credit_a_close_spent_moves_no_money(backend: Backend, test: &str) {
    let options = StackOptions {
        flaky_billing: true,
        ..StackOptions::default()
    };
    let Some(app) = TestApp::spawn_with(backend, test, options).await else {
        return;
    };
    let (account_id, bills) = account_with_bills(&app, "c-credit-refund").await;
    // Two keys pay bill 1 at once: both captures are kept, one of them as credit.
    // Billing applies nothing until both are captured, so both quotes see the bill
    // unpaid however the calls interleave (a repayment fast enough to be applied
    // before the other's quote would get that one refused NOTHING_TO_PAY).
    app.set_billing_apply_down(true);
    let calls: Vec<_> = ["k-a", "k-b"]
        .into_iter()
        .map(|key| {
            let request = repayment(
                key,
                &account_id,
                bills_target(&[&bills[0]]),
                "535.91",
                PaymentMethod::BankCard,
                "tok_4242",
            );
            let app_addr = app.payment_addr;
            let token = app.payment_token();
            tokio::spawn(async move {
                PaymentServiceClient::new(connect(app_addr).await)
                    .create_repayment(authorized(request, &token))
                    .await
                    .unwrap()
                    .into_inner()
                    .payment
                    .unwrap()
            })
        })
        .collect();
    let mut captured = Vec::new();
    for call in calls {
        captured.push(call.await.unwrap().payment_id);
    }
    app.set_billing_apply_down(false);
    for payment_id in &captured {
        until_applied(&app, payment_id).await;
    }
    assert_eq!(credit_balance(&app, &account_id).await, "535.91");
    let in_credit: String = sqlx::query_scalar(
        "SELECT payment_id FROM repayments WHERE added_to_credit_balance_minor > 0",
    )
    .fetch_one(app.billing_db.pool())
    .await
    .unwrap();
    // The close spends the credit on the next due bill.
    let close = RunDayCloseRequest {
        // The last day that has ended: a close of today is refused.
        as_of: (business_today() - chrono::Days::new(1)).to_string(),
        run_id: 0,
    };
    app.billing()
        .await
        .run_day_close(authorized(close, &app.service_token(&["billing:admin"])))
        .await
        .unwrap();
    assert_eq!(credit_balance(&app, &account_id).await, "0.00", "spent");

    assert_refused_and_nothing_moved(&app, &in_credit).await;
    assert_eq!(credit_balance(&app, &account_id).await, "0.00");
    app.stop().await;
}

async fn a_refund_whose_reply_is_lost_is_finished_without_the_client(backend: Backend, test: &str) {
    let Some(app) = TestApp::spawn(backend, test).await else {
        return;
    };
    let (account_id, bills) = account_with_bills(&app, "c-lost-refund").await;
    // 0119: the provider loses its first reply to the charge and to the refund.
    let request = repayment(
        "k-1",
        &account_id,
        bills_target(&[&bills[0]]),
        "535.91",
        PaymentMethod::BankCard,
        "tok_0119",
    );
    let paid = pay(&app, request).await.unwrap();
    until_applied(&app, &paid.payment_id).await;

    let answered = refund(&app, &paid.payment_id, "r-1").await.unwrap();
    assert_eq!(
        answered.refund_status(),
        RefundStatus::Sent,
        "billing reversed; the provider's answer was lost"
    );
    assert_eq!(answered.payment.unwrap().status(), PaymentStatus::Succeeded);
    // No client retry: the reconciler asks the provider again and finishes it.
    poll_until("the refund is finished", || async {
        get_payment(&app, &paid.payment_id).await.status() == PaymentStatus::Refunded
    })
    .await;
    assert_eq!(
        bill_status(&app, &bills[0]).await,
        BillStatus::Due,
        "reversed"
    );
    let (captured, refunded, entries) = app.ledger().await;
    assert_eq!((captured, refunded), (53_591, 53_591));
    let refunds = entries
        .iter()
        .filter(|entry| entry["kind"] == "REFUND")
        .count();
    assert_eq!(refunds, 1, "refunded once");
    assert_conservation(&app).await;
    let replay = refund(&app, &paid.payment_id, "r-1").await.unwrap();
    assert_eq!(replay.refund_status(), RefundStatus::Refunded);
    app.stop().await;
}

async fn dead_letters(app: &TestApp, token: &str) -> Result<(Vec<(String, i64)>, i64), Status> {
    let response = PaymentServiceClient::new(connect(app.payment_addr).await)
        .list_dead_letters(authorized(ListDeadLettersRequest::default(), token))
        .await?
        .into_inner();
    let letters = response
        .dead_letters
        .into_iter()
        .map(|letter| {
            assert_eq!(letter.kind(), OutboxKind::Apply);
            (letter.payment_id, letter.attempts)
        })
        .collect();
    Ok((letters, response.total_count))
}

async fn retry_dead_letter(app: &TestApp, payment_id: &str, token: &str) -> Result<(), Status> {
    let request = RetryDeadLetterRequest {
        payment_id: payment_id.into(),
        kind: OutboxKind::Apply as i32,
    };
    PaymentServiceClient::new(connect(app.payment_addr).await)
        .retry_dead_letter(authorized(request, token))
        .await
        .map(|_| ())
}

async fn a_permanent_apply_refusal_waits_in_the_dead_letters_for_an_admin(
    backend: Backend,
    test: &str,
) {
    let options = StackOptions {
        flaky_billing: true,
        ..StackOptions::default()
    };
    let Some(app) = TestApp::spawn_with(backend, test, options).await else {
        return;
    };
    let (account_id, bills) = account_with_bills(&app, "c-dead").await;
    app.set_billing_apply_refused(true);
    let request = repayment(
        "k-1",
        &account_id,
        bills_target(&[&bills[0]]),
        "535.91",
        PaymentMethod::BankCard,
        "tok_4242",
    );
    let paid = pay(&app, request).await.unwrap();
    assert_eq!(paid.status(), PaymentStatus::Succeeded);
    assert!(!paid.applied);

    let operator = app.operator_token("op-1");
    poll_until("the refused row is a dead letter", || async {
        !dead_letters(&app, &operator).await.unwrap().0.is_empty()
    })
    .await;
    let (letters, total) = dead_letters(&app, &operator).await.unwrap();
    assert_eq!(
        letters,
        [(paid.payment_id.clone(), 1)],
        "dead after one try"
    );
    assert_eq!(total, 1);
    let customer = app.customer_token(&account_id);
    expect_code(dead_letters(&app, &customer).await, Code::PermissionDenied);
    expect_code(
        retry_dead_letter(&app, &paid.payment_id, &operator).await,
        Code::PermissionDenied,
    );
    expect_code(
        retry_dead_letter(&app, &paid.payment_id, &app.payment_token()).await,
        Code::PermissionDenied,
    );

    // The cause is fixed; an admin sends it again.
    app.set_billing_apply_refused(false);
    let admin = app.service_token(&["payment:admin"]);
    retry_dead_letter(&app, &paid.payment_id, &admin)
        .await
        .unwrap();
    until_applied(&app, &paid.payment_id).await;
    assert_eq!(bill_status(&app, &bills[0]).await, BillStatus::Paid);
    assert_eq!(dead_letters(&app, &operator).await.unwrap(), (vec![], 0));
    expect_code(
        retry_dead_letter(&app, &paid.payment_id, &admin).await,
        Code::NotFound,
    );
    assert_eq!(app.billing_rows("repayments").await, 1, "applied once");
    assert_conservation(&app).await;
    app.stop().await;
}

async fn a_slow_billing_past_the_deadline_still_answers_the_payment(backend: Backend, test: &str) {
    let options = StackOptions {
        flaky_billing: true,
        ..StackOptions::default()
    };
    let Some(app) = TestApp::spawn_with(backend, test, options).await else {
        return;
    };
    let (account_id, bills) = account_with_bills(&app, "c-slow").await;
    app.set_billing_apply_delay_ms(4_000);
    let mut request = authorized(
        repayment(
            "k-1",
            &account_id,
            bills_target(&[&bills[0]]),
            "535.91",
            PaymentMethod::BankCard,
            "tok_4242",
        ),
        &app.payment_token(),
    );
    request.set_timeout(Duration::from_millis(1_500));
    let started = Instant::now();
    let answer = PaymentServiceClient::new(connect(app.payment_addr).await)
        .create_repayment(request)
        .await;
    let payment = answer
        .expect("captured money is answered with the payment, never an error")
        .into_inner()
        .payment
        .unwrap();
    assert!(started.elapsed() < Duration::from_millis(1_500));
    assert_eq!(payment.status(), PaymentStatus::Succeeded);
    assert!(!payment.applied, "billing had not answered yet");
    until_applied(&app, &payment.payment_id).await;
    assert_eq!(bill_status(&app, &bills[0]).await, BillStatus::Paid);
    assert_eq!(app.ledger().await.2.len(), 1, "one charge");
    assert_conservation(&app).await;
    app.stop().await;
}

async fn a_refund_the_provider_refuses_after_billing_reversed_is_applied_again(
    backend: Backend,
    test: &str,
) {
    let Some(app) = TestApp::spawn(backend, test).await else {
        return;
    };
    let (account_id, bills) = account_with_bills(&app, "c-provider-refuses").await;
    let request = repayment(
        "k-1",
        &account_id,
        bills_target(&[&bills[0]]),
        "535.91",
        PaymentMethod::BankCard,
        "tok_4242",
    );
    let paid = pay(&app, request).await.unwrap();
    assert!(paid.applied);
    // Someone refunds the whole charge at the provider behind payment-svc's back, so
    // the provider refuses payment-svc's refund after billing has reversed.
    let body = serde_json::to_vec(&serde_json::json!({
        "payment_id": paid.payment_id,
        "refund_id": "rf_elsewhere",
        "amount_minor": 53_591,
    }))
    .unwrap();
    let signature = payment_svc::providers::signature::sign(
        payment_svc::sim::DEV_BANK_CARD_SECRET.as_bytes(),
        &body,
    );
    let elsewhere = reqwest::Client::new()
        .post(format!("http://{}/bank-card/refunds", app.sim_addr))
        .header(
            payment_svc::providers::signature::SIGNATURE_HEADER,
            signature,
        )
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert!(elsewhere.status().is_success());

    let status = expect_code(
        refund(&app, &paid.payment_id, "r-1").await,
        Code::FailedPrecondition,
    );
    assert_eq!(
        reason(&status).as_deref(),
        Some("NOT_REFUNDABLE"),
        "{status:?}"
    );
    let states: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT payment_id, state, amount_minor FROM repayments ORDER BY payment_id",
    )
    .fetch_all(app.billing_db.pool())
    .await
    .unwrap();
    assert_eq!(
        states,
        [
            (paid.payment_id.clone(), "REVERSED".to_owned(), 53_591),
            (
                format!("{}-reinstated", paid.payment_id),
                "APPLIED".to_owned(),
                53_591
            ),
        ],
        "billing holds the money again, once"
    );
    assert_eq!(bill_status(&app, &bills[0]).await, BillStatus::Paid);
    assert_eq!(
        get_payment(&app, &paid.payment_id).await.status(),
        PaymentStatus::Succeeded
    );
    app.stop().await;
}

/// Item 4 of issue 9: a reversal holds its transaction's connection only, so more
/// concurrent reversals than pool connections (16) finish instead of waiting on each
/// other until the pool's acquire timeout.
async fn more_reversals_at_once_than_pool_connections_all_finish(backend: Backend, test: &str) {
    const REVERSALS: usize = 24;
    let Some(app) = TestApp::spawn(backend, test).await else {
        return;
    };
    let (account_id, _) = account_with_bills(&app, "c-many-reversals").await;
    let token = app.service_token(&["billing:apply"]);
    let mut billing = app.billing().await;
    for n in 0..REVERSALS {
        let request = ApplyRepaymentRequest {
            payment_id: format!("pay_many_{n}"),
            account_id: account_id.clone(),
            amount: Some(Money::new("CNY", "10.00")),
            target: Some(RepaymentTarget {
                kind: Some(Kind::Amount(Money::new("CNY", "10.00"))),
            }),
        };
        billing
            .apply_repayment(authorized(request, &token))
            .await
            .unwrap();
    }
    let started = Instant::now();
    let calls: Vec<_> = (0..REVERSALS)
        .map(|n| {
            let (mut billing, token) = (billing.clone(), token.clone());
            tokio::spawn(async move {
                let request = ReverseRepaymentRequest {
                    payment_id: format!("pay_many_{n}"),
                };
                billing.reverse_repayment(authorized(request, &token)).await
            })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "reversals waited for connections: {:?}",
        started.elapsed()
    );
    assert_eq!(billing_applied(&app).await, 0, "all reversed");
    app.stop().await;
}

async fn too_short_a_deadline_is_refused_before_anything_is_stored(backend: Backend, test: &str) {
    let Some(app) = TestApp::spawn(backend, test).await else {
        return;
    };
    let (account_id, bills) = account_with_bills(&app, "c-short-deadline").await;
    let mut request = authorized(
        repayment(
            "k-1",
            &account_id,
            bills_target(&[&bills[0]]),
            "535.91",
            PaymentMethod::BankCard,
            "tok_4242",
        ),
        &app.payment_token(),
    );
    // Less than the charge needs: refused while nothing has moved.
    request.set_timeout(Duration::from_millis(300));
    let status = PaymentServiceClient::new(connect(app.payment_addr).await)
        .create_repayment(request)
        .await
        .unwrap_err();
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Unavailable),
        "{status:?}"
    );
    assert_eq!(app.payment_rows("payments").await, 0, "nothing stored");
    assert!(app.ledger().await.2.is_empty(), "nothing charged");
    app.stop().await;
}
