//! Autopay over gRPC (SPEC §11): consent, the notice three days before, the debit on
//! the due date charged once (reruns, replicas), revocation, the refusals, retries on
//! insufficient funds, suspension on an expired instrument, and a revocation racing
//! a run in both orders.

use billpay_contracts::{
    billing::v1::{
        Bill, BillStatus, CreatePlanRequest, EventKind, GetBillRequest, RunDayCloseRequest,
        WatchEventsRequest, billing_service_client::BillingServiceClient,
    },
    common::v1::Money,
    payment::v1::{
        Consent, CreateMandateRequest, GetMandateRequest, ListMandatesRequest, ListPaymentsRequest,
        Mandate, MandateStatus, Payment, PaymentEvent, PaymentEventKind, PaymentMethod,
        PaymentStatus, RevokeMandateRequest, RunAutopayRequest, RunAutopayResponse,
        WatchPaymentEventsRequest, payment_service_client::PaymentServiceClient,
    },
};
use chrono::NaiveDate;
use integration_tests::{Backend, StackOptions, TestApp, authorized, connect};
use tonic::Code;

use crate::{
    on_both_backends,
    support::{POLL_DEADLINE, expect_code, new_plan, open_account, reason},
};

on_both_backends!(
    consent_notice_debit_once_then_revoke_and_no_debit,
    refusals_write_nothing_and_charge_nothing,
    insufficient_funds_three_days_then_stop_and_expired_suspends,
    a_revocation_committed_before_the_debit_starts_charges_nothing,
    a_debit_started_before_the_revocation_completes_once,
);

/// The first bill falls due on this date; billing's "today" is moved around it.
const DUE: &str = "2026-06-15";
const PURCHASE: &str = "2026-05-15";
const CARD: &str = "tok_4242424242424242";

fn date(text: &str) -> NaiveDate {
    text.parse().unwrap()
}

fn day(offset: i64) -> NaiveDate {
    date(DUE) + chrono::Duration::days(offset)
}

async fn spawn(backend: Backend, test: &str, pause_at: Option<&'static str>) -> Option<TestApp> {
    let options = StackOptions {
        today: Some(day(-3)),
        autopay_pause_at: pause_at,
        ..StackOptions::default()
    };
    TestApp::spawn_with(backend, test, options).await
}

/// An account with a 3-term interest-free plan of 300.00 bought on PURCHASE: bills of
/// 100.00 due on DUE, a month later and two months later.
async fn account_with_plan(app: &TestApp, customer_ref: &str) -> (String, Vec<Bill>) {
    let account_id = open_account(app, customer_ref, "50000.00").await;
    let mut request: CreatePlanRequest = new_plan(
        &account_id,
        &format!("o-{customer_ref}"),
        "mall-free",
        3,
        "300.00",
    );
    request.purchase_date = PURCHASE.into();
    let plan = app
        .billing()
        .await
        .create_plan(authorized(request, &app.service_token(&["billing:write"])))
        .await
        .unwrap()
        .into_inner()
        .plan
        .unwrap();
    assert_eq!(plan.bills[0].due_date, DUE);
    (account_id, plan.bills)
}

fn mandate_request(
    account_id: &str,
    key: &str,
    instrument: &str,
    cap: &str,
) -> CreateMandateRequest {
    CreateMandateRequest {
        account_id: account_id.into(),
        idempotency_key: key.into(),
        method: PaymentMethod::BankCard as i32,
        instrument: instrument.into(),
        max_amount_per_debit: Some(Money::new("CNY", cap)),
        consent: Some(Consent {
            text_version: "autopay-consent-v1".into(),
            accepted_at: Some(prost_types::Timestamp {
                seconds: chrono::Utc::now().timestamp() - 60,
                nanos: 0,
            }),
        }),
    }
}

async fn consent(app: &TestApp, account_id: &str, instrument: &str, cap: &str) -> Mandate {
    app.payment()
        .await
        .create_mandate(authorized(
            mandate_request(account_id, "consent-1", instrument, cap),
            &app.customer_token(account_id),
        ))
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap()
}

/// RunAutopay for `as_of` with billing standing on that date.
async fn run_on(app: &TestApp, as_of: NaiveDate) -> RunAutopayResponse {
    app.set_today(as_of);
    run_at(app.payment().await, app, as_of).await
}

async fn run_at(
    mut client: PaymentServiceClient<tonic::transport::Channel>,
    app: &TestApp,
    as_of: NaiveDate,
) -> RunAutopayResponse {
    client
        .run_autopay(authorized(
            RunAutopayRequest {
                as_of: as_of.to_string(),
            },
            &app.service_token(&["payment:admin"]),
        ))
        .await
        .unwrap()
        .into_inner()
}

async fn revoke(app: &TestApp, mandate_id: &str, token: &str) -> Mandate {
    app.payment()
        .await
        .revoke_mandate(authorized(
            RevokeMandateRequest {
                mandate_id: mandate_id.into(),
                reason: "the customer asked".into(),
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap()
}

async fn mandate(app: &TestApp, mandate_id: &str) -> Mandate {
    app.payment()
        .await
        .get_mandate(authorized(
            GetMandateRequest {
                mandate_id: mandate_id.into(),
            },
            &app.payment_token(),
        ))
        .await
        .unwrap()
        .into_inner()
        .mandate
        .unwrap()
}

async fn payments(app: &TestApp, account_id: &str) -> Vec<Payment> {
    app.payment()
        .await
        .list_payments(authorized(
            ListPaymentsRequest {
                account_id: account_id.into(),
                ..Default::default()
            },
            &app.payment_token(),
        ))
        .await
        .unwrap()
        .into_inner()
        .payments
}

async fn bill_status(app: &TestApp, bill_id: &str) -> BillStatus {
    app.billing()
        .await
        .get_bill(authorized(
            GetBillRequest {
                bill_id: bill_id.into(),
            },
            &app.service_token(&["billing:read"]),
        ))
        .await
        .unwrap()
        .into_inner()
        .bill
        .unwrap()
        .status()
}

/// The account's payment events from the start, read from WatchPaymentEvents until
/// `enough` holds (failing after the deadline).
async fn payment_events(
    app: &TestApp,
    account_id: &str,
    enough: impl Fn(&[PaymentEvent]) -> bool,
) -> Vec<PaymentEvent> {
    let mut stream = PaymentServiceClient::new(connect(app.payment_addr).await)
        .watch_payment_events(authorized(
            WatchPaymentEventsRequest {
                after_id: 0,
                account_id: account_id.into(),
                ..Default::default()
            },
            &app.service_token(&["payment:read"]),
        ))
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while !enough(&seen) {
        let next = tokio::time::timeout(POLL_DEADLINE, stream.message())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for payment events; saw {seen:#?}"));
        seen.push(next.unwrap().unwrap().event.unwrap());
    }
    seen
}

fn kinds(events: &[PaymentEvent]) -> Vec<PaymentEventKind> {
    events.iter().map(PaymentEvent::kind).collect()
}

fn has(kind: PaymentEventKind) -> impl Fn(&[PaymentEvent]) -> bool {
    move |events| events.iter().any(|event| event.kind() == kind)
}

/// Payment events of `account_id` of `kind`, counted behind the API's back.
async fn event_count(app: &TestApp, account_id: &str, kind: &str) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM payment_events WHERE account_id = $1 AND kind = $2")
        .bind(account_id)
        .bind(kind)
        .fetch_one(app.payment_db.pool())
        .await
        .unwrap()
}

async fn captured_minor(app: &TestApp) -> i64 {
    app.ledger().await.0
}

async fn consent_notice_debit_once_then_revoke_and_no_debit(backend: Backend, test: &str) {
    let Some(mut app) = spawn(backend, test, None).await else {
        return;
    };
    let (account_id, bills) = account_with_plan(&app, "c-autopay").await;
    let customer = app.customer_token(&account_id);
    let created = consent(&app, &account_id, CARD, "500.00").await;
    assert_eq!(created.status(), MandateStatus::Active);
    assert_eq!(created.instrument_last4, "4242");
    assert_eq!(
        created.consent.as_ref().unwrap().text_version,
        "autopay-consent-v1"
    );
    // The same request again is the same mandate; another with the key is refused.
    let again = consent(&app, &account_id, CARD, "500.00").await;
    assert_eq!(again.mandate_id, created.mandate_id);
    let reused = app
        .payment()
        .await
        .create_mandate(authorized(
            mandate_request(&account_id, "consent-1", CARD, "600.00"),
            &customer,
        ))
        .await;
    let status = expect_code(reused, Code::AlreadyExists);
    assert_eq!(reason(&status).as_deref(), Some("IDEMPOTENCY_KEY_REUSED"));

    // Three days before: the notice, once.
    let run = run_on(&app, day(-3)).await;
    assert_eq!(
        (run.mandates, run.notices_sent, run.debits_started),
        (1, 1, 0)
    );
    assert_eq!(run_on(&app, day(-3)).await.notices_sent, 0, "sent once");
    let events = payment_events(&app, &account_id, has(PaymentEventKind::AutopayNotice)).await;
    let notice = events
        .iter()
        .find(|event| event.kind() == PaymentEventKind::AutopayNotice)
        .unwrap();
    assert_eq!(notice.due_date, DUE);
    assert_eq!(notice.amount.as_ref().unwrap().amount, "100.00");
    assert_eq!(notice.instrument_last4, "4242");
    assert_eq!(
        notice.mandate_id, created.mandate_id,
        "says which mandate to revoke"
    );
    assert_eq!(
        run_on(&app, day(-1)).await.debits_started,
        0,
        "not before the due date"
    );

    // The due date: debited once, the bill PAID.
    let run = run_on(&app, day(0)).await;
    assert_eq!(
        (run.debits_started, run.debits_succeeded),
        (1, 1),
        "{run:?}"
    );
    assert_eq!(bill_status(&app, &bills[0].bill_id).await, BillStatus::Paid);
    let paid = payments(&app, &account_id).await;
    assert_eq!(paid.len(), 1);
    assert_eq!(paid[0].status(), PaymentStatus::Succeeded);
    assert_eq!(paid[0].amount.as_ref().unwrap().amount, "100.00");
    assert!(paid[0].applied);
    assert_eq!(captured_minor(&app).await, 10_000);

    // A rerun of the date, and another replica's run, charge nothing more.
    let rerun = run_on(&app, day(0)).await;
    assert_eq!(rerun.debits_started, 0, "{rerun:?}");
    if backend == Backend::Postgres {
        let replica = app.spawn_payment_replica().await;
        let other = run_at(
            PaymentServiceClient::new(connect(replica).await),
            &app,
            day(0),
        )
        .await;
        assert_eq!(other.debits_started, 0, "{other:?}");
    }
    assert_eq!(payments(&app, &account_id).await.len(), 1);
    assert_eq!(captured_minor(&app).await, 10_000);
    let events = payment_events(&app, &account_id, has(PaymentEventKind::AutopayDebited)).await;
    let debited = events
        .iter()
        .find(|event| event.kind() == PaymentEventKind::AutopayDebited)
        .unwrap();
    assert_eq!(debited.payment_id, paid[0].payment_id);
    assert_eq!(event_count(&app, &account_id, "AUTOPAY_DEBITED").await, 1);

    // The customer revokes; the next due date passes with no notice and no debit.
    let revoked = revoke(&app, &created.mandate_id, &customer).await;
    assert_eq!(revoked.status(), MandateStatus::Revoked);
    let next_due = date(&bills[1].due_date);
    let run = run_on(&app, next_due - chrono::Duration::days(3)).await;
    assert_eq!((run.mandates, run.notices_sent), (0, 0));
    let run = run_on(&app, next_due).await;
    assert_eq!((run.mandates, run.debits_started), (0, 0));
    assert_eq!(payments(&app, &account_id).await.len(), 1);
    assert_eq!(captured_minor(&app).await, 10_000);
    assert_eq!(bill_status(&app, &bills[1].bill_id).await, BillStatus::Due);
    assert_eq!(event_count(&app, &account_id, "AUTOPAY_NOTICE").await, 1);
    // The reminder instead: billing's own, to pay by hand.
    app.set_today(next_due + chrono::Duration::days(1));
    app.billing()
        .await
        .run_day_close(authorized(
            RunDayCloseRequest {
                as_of: next_due.to_string(),
                run_id: 0,
            },
            &app.service_token(&["billing:admin"]),
        ))
        .await
        .unwrap();
    let bill_id = bills[1].bill_id.clone();
    let mut stream = BillingServiceClient::new(connect(app.billing_addr).await)
        .watch_events(authorized(
            WatchEventsRequest {
                after_id: 0,
                account_id: account_id.clone(),
                ..Default::default()
            },
            &app.service_token(&["billing:events"]),
        ))
        .await
        .unwrap()
        .into_inner();
    loop {
        let event = tokio::time::timeout(POLL_DEADLINE, stream.message())
            .await
            .expect("billing's reminder in time")
            .unwrap()
            .unwrap()
            .event
            .unwrap();
        if event.kind() == EventKind::BillDue && event.bill_id == bill_id {
            break;
        }
    }
    let events = payment_events(&app, &account_id, has(PaymentEventKind::MandateRevoked)).await;
    assert_eq!(
        kinds(&events),
        [
            PaymentEventKind::MandateCreated,
            PaymentEventKind::AutopayNotice,
            PaymentEventKind::AutopayDebited,
            PaymentEventKind::MandateRevoked,
        ]
    );
    app.stop().await;
}

async fn refusals_write_nothing_and_charge_nothing(backend: Backend, test: &str) {
    let Some(app) = spawn(backend, test, None).await else {
        return;
    };
    // A service or an operator cannot consent for the customer.
    let (account_id, bills) = account_with_plan(&app, "c-refused").await;
    for token in [
        app.service_token(&["payment:read", "payment:write", "payment:admin"]),
        app.operator_token("op-1"),
    ] {
        let refused = app
            .payment()
            .await
            .create_mandate(authorized(
                mandate_request(&account_id, "k", CARD, "500.00"),
                &token,
            ))
            .await;
        expect_code(refused, Code::PermissionDenied);
    }
    // Another customer cannot either.
    let refused = app
        .payment()
        .await
        .create_mandate(authorized(
            mandate_request(&account_id, "k", CARD, "500.00"),
            &app.customer_token("acc_someone_else"),
        ))
        .await;
    expect_code(refused, Code::PermissionDenied);
    assert_eq!(app.payment_rows("mandates").await, 0);
    assert_eq!(app.payment_rows("payment_events").await, 0);
    let listed = app
        .payment()
        .await
        .list_mandates(authorized(
            ListMandatesRequest {
                account_id: account_id.clone(),
            },
            &app.customer_token(&account_id),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.mandates.is_empty());

    // Over the cap: skipped with the reason, nothing charged.
    let capped = consent(&app, &account_id, CARD, "50.00").await;
    // A revoked mandate: noticed, then revoked before its due date.
    let (revoked_account, revoked_bills) = account_with_plan(&app, "c-revoked").await;
    let revoked = consent(&app, &revoked_account, CARD, "500.00").await;
    let run = run_on(&app, day(-3)).await;
    assert_eq!(run.notices_sent, 2);
    revoke(&app, &revoked.mandate_id, &app.operator_token("op-2")).await;
    // No notice: consent given the day before the due date, after that day's run.
    let (late_account, late_bills) = account_with_plan(&app, "c-late").await;
    run_on(&app, day(-1)).await;
    let late = consent(&app, &late_account, CARD, "500.00").await;

    let run = run_on(&app, day(0)).await;
    assert_eq!((run.debits_started, run.skipped), (0, 2), "{run:?}");
    let skipped = payment_events(&app, &account_id, has(PaymentEventKind::AutopaySkipped)).await;
    let skip = skipped.last().unwrap();
    assert_eq!(skip.reason, "OVER_CAP");
    assert_eq!(skip.amount.as_ref().unwrap().amount, "100.00");
    assert_eq!(skip.mandate_id, capped.mandate_id);
    let skipped = payment_events(&app, &late_account, has(PaymentEventKind::AutopaySkipped)).await;
    assert_eq!(skipped.last().unwrap().reason, "NO_NOTICE");
    assert_eq!(skipped.last().unwrap().mandate_id, late.mandate_id);
    // A rerun tells nobody twice.
    assert_eq!(run_on(&app, day(0)).await.skipped, 0);
    for (account, bill) in [
        (&account_id, &bills[0]),
        (&revoked_account, &revoked_bills[0]),
        (&late_account, &late_bills[0]),
    ] {
        assert!(payments(&app, account).await.is_empty(), "{account}");
        assert_eq!(bill_status(&app, &bill.bill_id).await, BillStatus::Due);
    }
    assert_eq!(app.payment_rows("payments").await, 0);
    assert_eq!(app.payment_rows("autopay_attempts").await, 0);
    assert_eq!(captured_minor(&app).await, 0);
    // Revocation: not by a reader or another customer; by a service with payment:write.
    for token in [
        app.service_token(&["payment:read"]),
        app.customer_token(&account_id),
    ] {
        let refused = app
            .payment()
            .await
            .revoke_mandate(authorized(
                RevokeMandateRequest {
                    mandate_id: late.mandate_id.clone(),
                    reason: String::new(),
                },
                &token,
            ))
            .await;
        expect_code(refused, Code::PermissionDenied);
    }
    assert_eq!(
        mandate(&app, &late.mandate_id).await.status(),
        MandateStatus::Active
    );
    let by_service = revoke(
        &app,
        &late.mandate_id,
        &app.service_token(&["payment:write"]),
    )
    .await;
    assert_eq!(by_service.status(), MandateStatus::Revoked);
    // The operator's revocation was audited.
    let audited: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM operator_audit WHERE rpc LIKE '%RevokeMandate' AND account_id = $1",
    )
    .bind(revoked_account.as_str())
    .fetch_one(app.payment_db.pool())
    .await
    .unwrap();
    assert_eq!(audited, 1);
    app.stop().await;
}

async fn insufficient_funds_three_days_then_stop_and_expired_suspends(
    backend: Backend,
    test: &str,
) {
    let Some(app) = spawn(backend, test, None).await else {
        return;
    };
    let (poor_account, poor_bills) = account_with_plan(&app, "c-poor").await;
    consent(&app, &poor_account, "tok_4000000000000002", "500.00").await;
    let (expired_account, _) = account_with_plan(&app, "c-expired").await;
    let expired = consent(&app, &expired_account, "tok_4000000000000069", "500.00").await;
    assert_eq!(run_on(&app, day(-3)).await.notices_sent, 2);

    let run = run_on(&app, day(0)).await;
    assert_eq!((run.debits_started, run.debits_failed), (2, 2), "{run:?}");
    assert_eq!(run_on(&app, day(0)).await.debits_started, 0, "once a day");
    // The expired card suspends its mandate and tells the customer.
    assert_eq!(
        mandate(&app, &expired.mandate_id).await.status(),
        MandateStatus::Suspended
    );
    let events = payment_events(
        &app,
        &expired_account,
        has(PaymentEventKind::MandateSuspended),
    )
    .await;
    assert!(kinds(&events).contains(&PaymentEventKind::AutopayFailed));
    // Insufficient funds: tried again on the next two days, then stopped.
    for offset in [1, 2] {
        let run = run_on(&app, day(offset)).await;
        assert_eq!(
            (run.debits_started, run.debits_failed),
            (1, 1),
            "day {offset}: {run:?}"
        );
    }
    assert_eq!(run_on(&app, day(3)).await.debits_started, 0);
    let tried = payments(&app, &poor_account).await;
    assert_eq!(tried.len(), 3);
    assert!(
        tried
            .iter()
            .all(|payment| payment.status() == PaymentStatus::Failed
                && payment.failure_code == "INSUFFICIENT_FUNDS")
    );
    assert_eq!(payments(&app, &expired_account).await.len(), 1);
    let failed = payment_events(&app, &poor_account, |events| {
        events
            .iter()
            .filter(|event| event.kind() == PaymentEventKind::AutopayFailed)
            .count()
            == 3
    })
    .await;
    let last = failed.last().unwrap();
    assert_eq!(last.attempt, 3);
    assert!(last.reason.contains("stopped"), "{}", last.reason);
    assert_eq!(
        bill_status(&app, &poor_bills[0].bill_id).await,
        BillStatus::Due
    );
    assert_eq!(captured_minor(&app).await, 0);
    app.stop().await;
}

/// A run paused at `point` on the due date while the customer revokes; returns the
/// run's answer once released.
async fn race(app: &TestApp, mandate_id: &str, account_id: &str) -> (RunAutopayResponse, Mandate) {
    run_on(app, day(-3)).await;
    app.set_today(day(0));
    let client = app.payment().await;
    let token = app.service_token(&["payment:admin"]);
    let run = tokio::spawn(async move {
        let mut client = client;
        client
            .run_autopay(authorized(
                RunAutopayRequest {
                    as_of: day(0).to_string(),
                },
                &token,
            ))
            .await
            .unwrap()
            .into_inner()
    });
    tokio::time::timeout(POLL_DEADLINE, app.autopay_pause.reached())
        .await
        .expect("the run reaches the pause");
    let revoked = tokio::time::timeout(
        POLL_DEADLINE,
        revoke(app, mandate_id, &app.customer_token(account_id)),
    )
    .await
    .expect("the revocation does not wait for the paused run");
    assert_eq!(revoked.status(), MandateStatus::Revoked);
    app.autopay_pause.release();
    (run.await.unwrap(), revoked)
}

async fn a_revocation_committed_before_the_debit_starts_charges_nothing(
    backend: Backend,
    test: &str,
) {
    let Some(app) = spawn(backend, test, Some("before-claim")).await else {
        return;
    };
    let (account_id, bills) = account_with_plan(&app, "c-race-1").await;
    let created = consent(&app, &account_id, CARD, "500.00").await;
    let (run, _) = race(&app, &created.mandate_id, &account_id).await;
    assert_eq!(run.debits_started, 0, "{run:?}");
    assert!(payments(&app, &account_id).await.is_empty());
    assert_eq!(app.payment_rows("autopay_attempts").await, 0);
    assert_eq!(bill_status(&app, &bills[0].bill_id).await, BillStatus::Due);
    assert_eq!(captured_minor(&app).await, 0);
    app.stop().await;
}

async fn a_debit_started_before_the_revocation_completes_once(backend: Backend, test: &str) {
    let Some(app) = spawn(backend, test, Some("after-claim")).await else {
        return;
    };
    let (account_id, bills) = account_with_plan(&app, "c-race-2").await;
    let created = consent(&app, &account_id, CARD, "500.00").await;
    let (run, _) = race(&app, &created.mandate_id, &account_id).await;
    assert_eq!(
        (run.debits_started, run.debits_succeeded),
        (1, 1),
        "{run:?}"
    );
    assert_eq!(bill_status(&app, &bills[0].bill_id).await, BillStatus::Paid);
    assert_eq!(run_on(&app, day(0)).await.debits_started, 0);
    assert_eq!(run_on(&app, day(1)).await.debits_started, 0);
    let paid = payments(&app, &account_id).await;
    assert_eq!(paid.len(), 1);
    assert_eq!(paid[0].status(), PaymentStatus::Succeeded);
    assert_eq!(captured_minor(&app).await, 10_000);
    assert_eq!(
        mandate(&app, &created.mandate_id).await.status(),
        MandateStatus::Revoked
    );
    let events = payment_events(&app, &account_id, has(PaymentEventKind::AutopayDebited)).await;
    assert!(kinds(&events).contains(&PaymentEventKind::MandateRevoked));
    app.stop().await;
}
