//! Credit limits over gRPC (SPEC §5.1.1): a permanent limit lowered under what is
//! borrowed, a temporary raise that lapses at the close of its until date, the
//! history, the events, who may change a limit, and bad input — every refusal
//! writing nothing.

use billpay_contracts::{
    billing::v1::{
        CreditLimitChangeKind, EventKind, GetPlanRequest, ListCreditLimitChangesRequest,
        PlanStatus, UpdateCreditLimitRequest, UpdateCreditLimitResponse, WatchEventsRequest,
        billing_service_client::BillingServiceClient,
    },
    common::v1::Money,
};
use chrono::{Days, NaiveDate};
use integration_tests::{Backend, TestApp, authorized, connect};
use tonic::{Code, Status};

use crate::{
    on_both_backends,
    support::{
        POLL_DEADLINE, account, amount, close, expect_code, new_plan, open_account, reason,
        spawn_on, summary, violated_fields,
    },
};

on_both_backends!(
    a_lower_limit_blocks_plans_and_a_temporary_raise_lapses_at_its_close,
    only_a_risk_service_may_change_a_limit,
    bad_limit_requests_name_their_fields_and_write_nothing,
);

/// Billing's fixed business date in these tests.
fn today() -> NaiveDate {
    "2030-03-10".parse().unwrap()
}

async fn spawn(backend: Backend, test: &str) -> Option<TestApp> {
    spawn_on(backend, test, today()).await
}

fn cny(amount: &str) -> Option<Money> {
    Some(Money::new("CNY", amount))
}

fn limit_request(
    account_id: &str,
    request_id: &str,
    new_limit: &str,
    until: Option<NaiveDate>,
) -> UpdateCreditLimitRequest {
    UpdateCreditLimitRequest {
        account_id: account_id.into(),
        request_id: request_id.into(),
        new_limit: cny(new_limit),
        reason: "risk review".into(),
        until: until.map(|date| date.to_string()).unwrap_or_default(),
    }
}

async fn update_limit(
    app: &TestApp,
    token: &str,
    request: UpdateCreditLimitRequest,
) -> Result<UpdateCreditLimitResponse, Status> {
    app.billing()
        .await
        .update_credit_limit(authorized(request, token))
        .await
        .map(tonic::Response::into_inner)
}

fn risk_token(app: &TestApp) -> String {
    app.service_token(&["billing:limits"])
}

/// (history rows, CREDIT_LIMIT_CHANGED events): what a refusal must leave unchanged.
async fn written(app: &TestApp) -> (i64, i64) {
    let events: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE kind = 'CREDIT_LIMIT_CHANGED'")
            .fetch_one(app.billing_db.pool())
            .await
            .unwrap();
    (app.billing_rows("credit_limit_changes").await, events)
}

/// The account's CREDIT_LIMIT_CHANGED events as WatchEvents replays them:
/// (kind, previous limit, new limit, until).
async fn limit_events(
    app: &TestApp,
    account_id: &str,
    count: usize,
) -> Vec<(CreditLimitChangeKind, String, String, String)> {
    let request = WatchEventsRequest {
        after_id: 0,
        account_id: account_id.into(),
        ..Default::default()
    };
    let mut stream = BillingServiceClient::new(connect(app.billing_addr).await)
        .watch_events(authorized(request, &app.service_token(&["billing:events"])))
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while seen.len() < count {
        let next = tokio::time::timeout(POLL_DEADLINE, stream.message())
            .await
            .expect("an event in time")
            .unwrap()
            .unwrap()
            .event
            .unwrap();
        if next.kind() != EventKind::CreditLimitChanged {
            continue;
        }
        let detail = next.credit_limit_change.clone().unwrap();
        seen.push((
            detail.kind(),
            amount(&detail.previous_limit).to_owned(),
            amount(&next.amount).to_owned(),
            detail.until,
        ));
    }
    seen
}

async fn a_lower_limit_blocks_plans_and_a_temporary_raise_lapses_at_its_close(
    backend: Backend,
    test: &str,
) {
    let Some(app) = spawn(backend, test).await else {
        return;
    };
    let writer = app.service_token(&["billing:write"]);
    let account_id = open_account(&app, "c-limits", "20000.00").await;
    let phone = app
        .billing()
        .await
        .create_plan(authorized(
            new_plan(&account_id, "phone", "mall-fee", 12, "8000.00"),
            &writer,
        ))
        .await
        .unwrap()
        .into_inner()
        .plan
        .unwrap();

    // A risk review lowers the limit under what is borrowed: nothing is available.
    let lowered = update_limit(
        &app,
        &risk_token(&app),
        limit_request(&account_id, "r-1", "5000.00", None),
    )
    .await
    .unwrap();
    let change = lowered.change.clone().unwrap();
    assert_eq!(change.kind(), CreditLimitChangeKind::Permanent);
    assert_eq!(
        (amount(&change.previous_limit), amount(&change.new_limit)),
        ("20000.00", "5000.00")
    );
    assert!(!lowered.replayed);
    let after = lowered.account.unwrap();
    assert_eq!(amount(&after.credit_limit), "5000.00");
    assert_eq!(amount(&after.available_credit), "0.00");
    let now = summary(&app, &account_id).await;
    assert_eq!(amount(&now.available_credit), "0.00");
    assert_eq!(amount(&now.credit_limit), "5000.00");
    assert_eq!(
        amount(&now.outstanding_total),
        amount(&phone.total_amount),
        "nothing bought changes"
    );
    let refused = expect_code(
        app.billing()
            .await
            .create_plan(authorized(
                new_plan(&account_id, "case", "mall-free", 3, "100.00"),
                &writer,
            ))
            .await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&refused).as_deref(), Some("CREDIT_LIMIT_EXCEEDED"));

    // The same request answers the same; another request with its id is refused.
    let again = update_limit(
        &app,
        &risk_token(&app),
        limit_request(&account_id, "r-1", "5000.00", None),
    )
    .await
    .unwrap();
    assert!(again.replayed);
    assert_eq!(again.change.unwrap().change_id, change.change_id);
    let before = written(&app).await;
    let reused = expect_code(
        update_limit(
            &app,
            &risk_token(&app),
            limit_request(&account_id, "r-1", "6000.00", None),
        )
        .await,
        Code::AlreadyExists,
    );
    assert_eq!(reason(&reused).as_deref(), Some("IDEMPOTENCY_KEY_REUSED"));
    assert_eq!(written(&app).await, before, "a refusal writes nothing");

    // A temporary raise until five days from now lets a purchase through.
    let until = today() + Days::new(5);
    let raised = update_limit(
        &app,
        &risk_token(&app),
        limit_request(&account_id, "r-2", "12000.00", Some(until)),
    )
    .await
    .unwrap();
    let change = raised.change.unwrap();
    assert_eq!(change.kind(), CreditLimitChangeKind::Temporary);
    assert_eq!(change.until, until.to_string());
    let raised = raised.account.unwrap();
    assert_eq!(amount(&raised.credit_limit), "12000.00");
    assert_eq!(amount(&raised.permanent_credit_limit), "5000.00");
    assert_eq!(amount(&raised.temporary_credit_limit), "12000.00");
    assert_eq!(raised.temporary_limit_until, until.to_string());
    assert_eq!(amount(&raised.available_credit), "4000.00");
    let laptop = app
        .billing()
        .await
        .create_plan(authorized(
            new_plan(&account_id, "laptop", "mall-free", 3, "3000.00"),
            &writer,
        ))
        .await
        .unwrap()
        .into_inner()
        .plan
        .unwrap();
    assert_eq!(
        amount(&account(&app, &account_id).await.available_credit),
        "1000.00"
    );

    // The close of the day before until leaves it; the close of until ends it.
    app.set_today(until + Days::new(2));
    close(&app, until - Days::new(1)).await;
    assert_eq!(
        amount(&account(&app, &account_id).await.credit_limit),
        "12000.00"
    );
    close(&app, until).await;
    let lapsed = account(&app, &account_id).await;
    assert_eq!(amount(&lapsed.credit_limit), "5000.00");
    assert_eq!(
        amount(&lapsed.available_credit),
        "0.00",
        "available shrinks"
    );
    assert_eq!(lapsed.temporary_credit_limit, None);
    assert_eq!(lapsed.temporary_limit_until, "");
    assert_eq!(
        amount(&summary(&app, &account_id).await.available_credit),
        "0.00"
    );
    let history_after_lapse = written(&app).await;
    close(&app, until).await;
    close(&app, until + Days::new(1)).await;
    assert_eq!(
        written(&app).await,
        history_after_lapse,
        "a lapse is written once"
    );
    for plan in [&phone, &laptop] {
        let request = GetPlanRequest {
            plan_id: plan.plan_id.clone(),
        };
        let now = app
            .billing()
            .await
            .get_plan(authorized(request, &app.service_token(&["billing:read"])))
            .await
            .unwrap()
            .into_inner()
            .plan
            .unwrap();
        assert_eq!(now.status(), PlanStatus::Active, "nothing bought changes");
        assert_eq!(now.outstanding, plan.outstanding);
    }

    // The history, newest first, readable by the customer and (audited) operators.
    for token in [app.customer_token(&account_id), app.operator_token("op-1")] {
        let request = ListCreditLimitChangesRequest {
            account_id: account_id.clone(),
            ..Default::default()
        };
        let history = app
            .billing()
            .await
            .list_credit_limit_changes(authorized(request, &token))
            .await
            .unwrap()
            .into_inner()
            .changes;
        let rows: Vec<_> = history
            .iter()
            .map(|change| {
                (
                    change.kind(),
                    amount(&change.previous_limit),
                    amount(&change.new_limit),
                    change.request_id.as_str(),
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                (
                    CreditLimitChangeKind::TemporaryLapsed,
                    "12000.00",
                    "5000.00",
                    ""
                ),
                (
                    CreditLimitChangeKind::Temporary,
                    "5000.00",
                    "12000.00",
                    "r-2"
                ),
                (
                    CreditLimitChangeKind::Permanent,
                    "20000.00",
                    "5000.00",
                    "r-1"
                ),
            ]
        );
        assert_eq!(history[0].until, until.to_string());
        assert_eq!(history[0].business_date, until.to_string());
    }
    let events = limit_events(&app, &account_id, 3).await;
    let until = until.to_string();
    assert_eq!(
        events,
        [
            (
                CreditLimitChangeKind::Permanent,
                "20000.00".into(),
                "5000.00".into(),
                String::new()
            ),
            (
                CreditLimitChangeKind::Temporary,
                "5000.00".into(),
                "12000.00".into(),
                until.clone()
            ),
            (
                CreditLimitChangeKind::TemporaryLapsed,
                "12000.00".into(),
                "5000.00".into(),
                until
            ),
        ]
    );
    app.stop().await;
}

async fn only_a_risk_service_may_change_a_limit(backend: Backend, test: &str) {
    let Some(app) = spawn(backend, test).await else {
        return;
    };
    let account_id = open_account(&app, "c-who", "20000.00").await;
    let other_id = open_account(&app, "c-other", "20000.00").await;
    let before = written(&app).await;
    for token in [
        app.operator_token("op-1"),
        app.customer_token(&account_id),
        app.service_token(&["billing:write", "billing:admin", "billing:read"]),
    ] {
        expect_code(
            update_limit(
                &app,
                &token,
                limit_request(&account_id, "r-1", "1.00", None),
            )
            .await,
            Code::PermissionDenied,
        );
    }
    assert_eq!(written(&app).await, before, "a refusal writes nothing");
    assert_eq!(
        amount(&account(&app, &account_id).await.credit_limit),
        "20000.00"
    );

    // Another customer's history is refused; an operator's read is audited.
    let request = ListCreditLimitChangesRequest {
        account_id: account_id.clone(),
        ..Default::default()
    };
    expect_code(
        app.billing()
            .await
            .list_credit_limit_changes(authorized(request.clone(), &app.customer_token(&other_id)))
            .await,
        Code::PermissionDenied,
    );
    let audited_before = app.billing_rows("operator_audit").await;
    app.billing()
        .await
        .list_credit_limit_changes(authorized(request, &app.operator_token("op-1")))
        .await
        .unwrap();
    poll_audit(&app, audited_before + 1).await;
    app.stop().await;
}

/// Waits until the operator audit has `rows` rows (the layer writes it as the call ends).
async fn poll_audit(app: &TestApp, rows: i64) {
    crate::support::poll_until("the operator's call is audited", || async {
        app.billing_rows("operator_audit").await >= rows
    })
    .await;
}

async fn bad_limit_requests_name_their_fields_and_write_nothing(backend: Backend, test: &str) {
    let Some(app) = spawn(backend, test).await else {
        return;
    };
    let account_id = open_account(&app, "c-bad", "20000.00").await;
    let before = written(&app).await;
    let valid = limit_request(&account_id, "r-1", "30000.00", Some(today() + Days::new(3)));
    let cases: Vec<(UpdateCreditLimitRequest, Vec<&str>)> = vec![
        (
            UpdateCreditLimitRequest::default(),
            vec!["account_id", "request_id", "new_limit", "reason"],
        ),
        (
            UpdateCreditLimitRequest {
                new_limit: cny("-100.00"),
                ..valid.clone()
            },
            vec!["new_limit.amount"],
        ),
        (
            UpdateCreditLimitRequest {
                until: today().to_string(),
                ..valid.clone()
            },
            vec!["until"],
        ),
        (
            UpdateCreditLimitRequest {
                until: (today() - Days::new(1)).to_string(),
                ..valid.clone()
            },
            vec!["until"],
        ),
        (
            UpdateCreditLimitRequest {
                until: "2030-3-1".into(),
                ..valid.clone()
            },
            vec!["until"],
        ),
        (
            UpdateCreditLimitRequest {
                new_limit: cny("20000.00"),
                ..valid.clone()
            },
            vec!["new_limit"],
        ),
        (
            UpdateCreditLimitRequest {
                reason: "\u{202e}".into(),
                request_id: "has space".into(),
                ..valid.clone()
            },
            vec!["request_id", "reason"],
        ),
    ];
    for (request, fields) in cases {
        let status = expect_code(
            update_limit(&app, &risk_token(&app), request.clone()).await,
            Code::InvalidArgument,
        );
        let mut violated = violated_fields(&status);
        violated.sort();
        let mut expected: Vec<String> = fields.iter().map(|field| (*field).to_owned()).collect();
        expected.sort();
        assert_eq!(violated, expected, "{request:?}: {status:?}");
    }
    expect_code(
        update_limit(
            &app,
            &risk_token(&app),
            limit_request("acc_unknown", "r-1", "1.00", None),
        )
        .await,
        Code::NotFound,
    );
    assert_eq!(written(&app).await, before, "a refusal writes nothing");
    assert_eq!(
        amount(&account(&app, &account_id).await.credit_limit),
        "20000.00"
    );
    // The valid request then goes through.
    update_limit(&app, &risk_token(&app), valid).await.unwrap();
    assert_eq!(
        amount(&account(&app, &account_id).await.credit_limit),
        "30000.00"
    );
    app.stop().await;
}
