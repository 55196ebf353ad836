//! R5 with real crashes: billing-svc and payment-svc run as child processes, stop at
//! a named fail point, are killed there with SIGKILL and started again on the same
//! databases; then, with no client retry, every payment and refund ends in a final
//! state and R1 (provider net = billing's applied money), R2 (one charge per
//! payment) and R3 (no bill component paid above what it owes) hold.

use billpay_contracts::{
    billing::v1::{BillStatus, RunDayCloseRequest},
    payment::v1::{PaymentMethod, PaymentStatus, RefundPaymentRequest},
};
use integration_tests::{Backend, StackOptions, TestApp, authorized, processes};

use crate::{
    on_both_backends,
    repayments::{account_with_bills, assert_conservation, bill_status, get_payment},
    support::{bills_target, business_today, close_until_finished, pay, poll_until, repayment},
};

on_both_backends!(
    payment_killed_after_processing_is_stored,
    payment_killed_after_the_provider_captured,
    payment_killed_before_the_outbox_row_is_acknowledged,
    billing_killed_after_apply_commits_before_the_reply,
    billing_killed_in_the_middle_of_a_day_close,
    payment_killed_after_billing_reversed_a_refund,
    payment_killed_after_the_provider_refunded,
);

/// The body of every child process the crash tests start. Run directly, it does
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "runs as a child process of the crash tests"]
async fn service_child() {
    integration_tests::processes::run_child().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_outside_dev_mode_refuses_fail_points() {
    let data_dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", data_dir.path().join("billing.db").display());
    let keys = service_kit::auth::keys::DevKeys::ensure(data_dir.path()).unwrap();
    let mut args = processes::billing_args(&keys, &url, "127.0.0.1:0".parse().unwrap());
    args.retain(|arg| arg != "--dev");
    args.extend([
        "--jwt-secret".to_owned(),
        "a-production-secret-of-at-least-32-bytes".to_owned(),
    ]);
    let (status, stderr) =
        processes::run_to_end("billing", &args, "billing-apply-after-commit").await;
    assert!(!status.success());
    assert!(stderr.contains("BILLPAY_FAILPOINTS"), "{stderr}");
    // The same flags without fail points start: the refusal was theirs.
    processes::ServiceProcess::start("billing", &args, "")
        .await
        .kill9()
        .await;
}

async fn spawn(
    backend: Backend,
    test: &str,
    billing_failpoints: &'static str,
    payment_failpoints: &'static str,
) -> Option<TestApp> {
    let options = StackOptions {
        processes: true,
        billing_failpoints,
        payment_failpoints,
        ..StackOptions::default()
    };
    TestApp::spawn_with(backend, test, options).await
}

async fn count(db: &service_kit::db::Db, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(db.pool()).await.unwrap()
}

/// Waits until no payment is PROCESSING, no refund is unfinished and the outbox is
/// empty, then checks R1, R2 and R3.
async fn assert_recovered(app: &TestApp) {
    poll_until(
        "every payment and refund is final and billing told",
        || async {
            let open = count(
                &app.payment_db,
                "SELECT (SELECT COUNT(*) FROM payments WHERE status = 'PROCESSING') \
               + (SELECT COUNT(*) FROM refunds WHERE status NOT IN ('REFUNDED', 'FAILED')) \
               + (SELECT COUNT(*) FROM outbox WHERE delivered_at_micros IS NULL)",
            )
            .await;
            open == 0
        },
    )
    .await;
    assert_conservation(app).await;
    let (_, _, entries) = app.ledger().await;
    let mut charged: Vec<&str> = entries
        .iter()
        .filter(|entry| entry["kind"] == "CHARGE")
        .map(|entry| entry["payment_id"].as_str().unwrap())
        .collect();
    let charges = charged.len();
    charged.sort_unstable();
    charged.dedup();
    assert_eq!(charged.len(), charges, "R2: one charge per payment");
    let overpaid = count(
        &app.billing_db,
        "SELECT COUNT(*) FROM bills WHERE paid_principal_minor > principal_minor \
           OR paid_interest_minor > interest_minor OR paid_fee_minor > fee_minor \
           OR paid_penalty_minor > penalty_minor",
    )
    .await;
    assert_eq!(overpaid, 0, "R3: nothing paid above what it owes");
}

/// Starts CreateRepayment for bill 1 on its own task (its caller may see the crash).
fn start_paying(
    app: &TestApp,
    account_id: &str,
    bill_id: &str,
) -> tokio::task::JoinHandle<Result<billpay_contracts::payment::v1::Payment, tonic::Status>> {
    let request = repayment(
        "k-1",
        account_id,
        bills_target(&[bill_id]),
        "535.91",
        PaymentMethod::BankCard,
        "tok_4242",
    );
    let (addr, token) = (app.payment_addr, app.payment_token());
    tokio::spawn(async move {
        let mut client =
            billpay_contracts::payment::v1::payment_service_client::PaymentServiceClient::new(
                integration_tests::connect(addr).await,
            );
        client
            .create_repayment(authorized(request, &token))
            .await
            .map(|response| response.into_inner().payment.unwrap())
    })
}

async fn the_payment_id(app: &TestApp) -> String {
    sqlx::query_scalar("SELECT payment_id FROM payments")
        .fetch_one(app.payment_db.pool())
        .await
        .unwrap()
}

async fn payment_killed_after_processing_is_stored(backend: Backend, test: &str) {
    let Some(mut app) = spawn(backend, test, "", "payment-after-processing-stored").await else {
        return;
    };
    let (account_id, bills) = account_with_bills(&app, "c-stored").await;
    let call = start_paying(&app, &account_id, &bills[0]);
    app.payment_reached("payment-after-processing-stored").await;
    app.kill_payment().await;
    assert!(call.await.unwrap().is_err(), "the caller saw the crash");
    app.restart_payment().await;

    assert_recovered(&app).await;
    let payment = get_payment(&app, &the_payment_id(&app).await).await;
    assert_eq!(
        payment.status(),
        PaymentStatus::Failed,
        "nothing was charged"
    );
    assert_eq!(payment.failure_code, "NOT_CHARGED");
    assert!(app.ledger().await.2.is_empty());
    assert_eq!(bill_status(&app, &bills[0]).await, BillStatus::Due);
    app.stop().await;
}

async fn payment_killed_after_the_provider_captured(backend: Backend, test: &str) {
    let Some(mut app) = spawn(backend, test, "", "payment-after-provider-answered").await else {
        return;
    };
    let (account_id, bills) = account_with_bills(&app, "c-captured").await;
    let call = start_paying(&app, &account_id, &bills[0]);
    app.payment_reached("payment-after-provider-answered").await;
    assert_eq!(app.ledger().await.0, 53_591, "the provider captured");
    app.kill_payment().await;
    assert!(call.await.unwrap().is_err(), "the caller saw the crash");
    app.restart_payment().await;

    assert_recovered(&app).await;
    let payment = get_payment(&app, &the_payment_id(&app).await).await;
    assert_eq!(payment.status(), PaymentStatus::Succeeded);
    assert!(payment.applied);
    assert_eq!(bill_status(&app, &bills[0]).await, BillStatus::Paid);
    app.stop().await;
}

async fn payment_killed_before_the_outbox_row_is_acknowledged(backend: Backend, test: &str) {
    let Some(mut app) = spawn(backend, test, "", "payment-before-outbox-acknowledged").await else {
        return;
    };
    let (account_id, bills) = account_with_bills(&app, "c-unacknowledged").await;
    let call = start_paying(&app, &account_id, &bills[0]);
    app.payment_reached("payment-before-outbox-acknowledged")
        .await;
    assert_eq!(
        app.billing_rows("repayments").await,
        1,
        "billing applied it"
    );
    app.kill_payment().await;
    assert!(call.await.unwrap().is_err(), "the caller saw the crash");
    app.restart_payment().await;

    assert_recovered(&app).await;
    let payment = get_payment(&app, &the_payment_id(&app).await).await;
    assert!(payment.applied, "the outbox delivered it again");
    assert_eq!(app.billing_rows("repayments").await, 1, "applied once");
    assert_eq!(bill_status(&app, &bills[0]).await, BillStatus::Paid);
    app.stop().await;
}

async fn billing_killed_after_apply_commits_before_the_reply(backend: Backend, test: &str) {
    let Some(mut app) = spawn(backend, test, "billing-apply-after-commit", "").await else {
        return;
    };
    let (account_id, bills) = account_with_bills(&app, "c-apply-commit").await;
    let call = start_paying(&app, &account_id, &bills[0]);
    app.billing_reached("billing-apply-after-commit").await;
    app.kill_billing().await;
    let answered = call
        .await
        .unwrap()
        .expect("captured money is answered, not an error");
    assert_eq!(answered.status(), PaymentStatus::Succeeded);
    assert!(!answered.applied, "billing never replied");
    app.restart_billing().await;

    assert_recovered(&app).await;
    let payment = get_payment(&app, &answered.payment_id).await;
    assert!(payment.applied);
    assert_eq!(app.billing_rows("repayments").await, 1, "applied once");
    assert_eq!(bill_status(&app, &bills[0]).await, BillStatus::Paid);
    app.stop().await;
}

async fn close_yesterday(app: &TestApp) -> Result<(), tonic::Status> {
    // The last day that has ended: a close of today is refused.
    close_until_finished(app, business_today() - chrono::Days::new(1))
        .await
        .map(|_| ())
}

/// Each account's penalties, in account order.
async fn penalties(app: &TestApp) -> Vec<i64> {
    sqlx::query_scalar(
        "SELECT CAST(SUM(penalty_minor) AS BIGINT) FROM bills GROUP BY account_id ORDER BY account_id",
    )
    .fetch_all(app.billing_db.pool())
    .await
    .unwrap()
}

async fn billing_killed_in_the_middle_of_a_day_close(backend: Backend, test: &str) {
    let Some(mut app) = spawn(backend, test, "day-close-after-an-account", "").await else {
        return;
    };
    // Two accounts with the same overdue bills: the close posts the same penalties.
    account_with_bills(&app, "c-close-a").await;
    account_with_bills(&app, "c-close-b").await;
    let call = tokio::spawn({
        let app_billing = app.billing().await;
        let token = app.service_token(&["billing:admin"]);
        async move {
            let request = RunDayCloseRequest {
                // The last day that has ended: a close of today is refused.
                as_of: (business_today() - chrono::Days::new(1)).to_string(),
                run_id: 0,
            };
            app_billing
                .clone()
                .run_day_close(authorized(request, &token))
                .await
        }
    });
    app.billing_reached("day-close-after-an-account").await;
    let halfway = penalties(&app).await;
    assert_eq!(
        halfway.iter().filter(|penalty| **penalty > 0).count(),
        1,
        "one account closed before the crash: {halfway:?}"
    );
    app.kill_billing().await;
    assert!(call.await.unwrap().is_err(), "the caller saw the crash");
    app.restart_billing().await;

    close_yesterday(&app).await.unwrap();
    let closed = penalties(&app).await;
    assert_eq!(closed.len(), 2);
    assert!(closed[0] > 0, "{closed:?}");
    assert_eq!(
        closed[0], closed[1],
        "the account closed twice is charged once"
    );
    close_yesterday(&app).await.unwrap();
    assert_eq!(
        penalties(&app).await,
        closed,
        "R6: closing again changes nothing"
    );
    assert_recovered(&app).await;
    app.stop().await;
}

/// Pays bill 1, then asks for its refund on a task (its caller may see the crash).
async fn pay_then_start_refund(
    app: &TestApp,
    customer_ref: &str,
) -> (
    String,
    String,
    tokio::task::JoinHandle<
        Result<
            tonic::Response<billpay_contracts::payment::v1::RefundPaymentResponse>,
            tonic::Status,
        >,
    >,
) {
    let (account_id, bills) = account_with_bills(app, customer_ref).await;
    let request = repayment(
        "k-1",
        &account_id,
        bills_target(&[&bills[0]]),
        "535.91",
        PaymentMethod::BankCard,
        "tok_4242",
    );
    let paid = pay(app, request).await.unwrap();
    assert!(paid.applied);
    let refund = RefundPaymentRequest {
        payment_id: paid.payment_id.clone(),
        idempotency_key: "r-1".into(),
        reason: "returned".into(),
    };
    let (addr, token) = (app.payment_addr, app.payment_token());
    let call = tokio::spawn(async move {
        billpay_contracts::payment::v1::payment_service_client::PaymentServiceClient::new(
            integration_tests::connect(addr).await,
        )
        .refund_payment(authorized(refund, &token))
        .await
    });
    (paid.payment_id, bills[0].clone(), call)
}

async fn payment_killed_after_billing_reversed_a_refund(backend: Backend, test: &str) {
    let Some(mut app) = spawn(backend, test, "", "refund-after-billing-reversed").await else {
        return;
    };
    let (payment_id, bill_id, call) = pay_then_start_refund(&app, "c-reversed").await;
    app.payment_reached("refund-after-billing-reversed").await;
    assert_eq!(app.ledger().await.1, 0, "nothing refunded yet");
    app.kill_payment().await;
    assert!(call.await.unwrap().is_err(), "the caller saw the crash");
    app.restart_payment().await;

    assert_recovered(&app).await;
    assert_eq!(
        get_payment(&app, &payment_id).await.status(),
        PaymentStatus::Refunded
    );
    assert_eq!(app.ledger().await.1, 53_591, "refunded once");
    assert_eq!(bill_status(&app, &bill_id).await, BillStatus::Due);
    app.stop().await;
}

async fn payment_killed_after_the_provider_refunded(backend: Backend, test: &str) {
    let Some(mut app) = spawn(backend, test, "", "refund-after-provider-refunded").await else {
        return;
    };
    let (payment_id, bill_id, call) = pay_then_start_refund(&app, "c-refunded").await;
    app.payment_reached("refund-after-provider-refunded").await;
    assert_eq!(app.ledger().await.1, 53_591, "the provider refunded");
    app.kill_payment().await;
    assert!(call.await.unwrap().is_err(), "the caller saw the crash");
    app.restart_payment().await;

    assert_recovered(&app).await;
    assert_eq!(
        get_payment(&app, &payment_id).await.status(),
        PaymentStatus::Refunded
    );
    let (_, refunded, entries) = app.ledger().await;
    assert_eq!(refunded, 53_591);
    assert_eq!(
        entries
            .iter()
            .filter(|entry| entry["kind"] == "REFUND")
            .count(),
        1,
        "refunded once"
    );
    assert_eq!(bill_status(&app, &bill_id).await, BillStatus::Due);
    app.stop().await;
}
