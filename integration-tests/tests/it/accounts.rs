//! The account slice: create, read, idempotency, masking, health.

use billpay_contracts::billing::v1::{AccountStatus, GetAccountRequest};
use integration_tests::{Backend, TestApp, authorized, connect};
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    on_both_backends,
    support::{expect_code, new_account, reason},
};

on_both_backends!(
    create_then_get_round_trips,
    create_is_idempotent_on_customer_ref,
    concurrent_creates_open_one_account,
    unknown_account_is_not_found,
    both_services_report_serving,
);

async fn create_then_get_round_trips(backend: Backend, test: &str) {
    let Some(app) = TestApp::spawn(backend, test).await else {
        return;
    };
    let token = app.service_token(&["billing:read", "billing:write"]);
    let mut billing = app.billing().await;

    let created = billing
        .create_account(authorized(new_account("c-1"), &token))
        .await
        .unwrap()
        .into_inner();
    assert!(created.created);
    let created = created.account.unwrap();
    assert!(
        created.account_id.starts_with("acc_"),
        "{}",
        created.account_id
    );

    let read = billing
        .get_account(authorized(
            GetAccountRequest {
                account_id: created.account_id.clone(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap();
    assert_eq!(read, created);
    assert_eq!(read.customer_ref, "c-1");
    assert_eq!(read.phone, "13812341234", "services see the phone in full");
    assert_eq!(read.status(), AccountStatus::Active);
    assert_eq!(read.credit_limit.unwrap().amount, "20000.00");
    assert_eq!(read.available_credit.unwrap().amount, "20000.00");
    assert_eq!(read.credit_balance.unwrap().amount, "0.00");

    let as_operator = billing
        .get_account(authorized(
            GetAccountRequest {
                account_id: created.account_id.clone(),
            },
            &app.operator_token("op-1"),
        ))
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap();
    assert_eq!(as_operator.phone, "138****1234");

    let as_customer = billing
        .get_account(authorized(
            GetAccountRequest {
                account_id: created.account_id.clone(),
            },
            &app.customer_token(&created.account_id),
        ))
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap();
    assert_eq!(
        as_customer.phone, "13812341234",
        "the customer sees their own phone"
    );
    app.stop().await;
}

async fn create_is_idempotent_on_customer_ref(backend: Backend, test: &str) {
    let Some(app) = TestApp::spawn(backend, test).await else {
        return;
    };
    let token = app.service_token(&["billing:write"]);
    let mut billing = app.billing().await;

    let first = billing
        .create_account(authorized(new_account("c-2"), &token))
        .await
        .unwrap()
        .into_inner();
    let again = billing
        .create_account(authorized(new_account("c-2"), &token))
        .await
        .unwrap()
        .into_inner();
    assert!(first.created);
    assert!(!again.created);
    assert_eq!(first.account, again.account);

    let mut different = new_account("c-2");
    different.phone = "13999999999".into();
    let status = expect_code(
        billing.create_account(authorized(different, &token)).await,
        Code::AlreadyExists,
    );
    assert_eq!(reason(&status).as_deref(), Some("IDEMPOTENCY_KEY_REUSED"));
    assert_eq!(app.billing_rows("accounts").await, 1);
    app.stop().await;
}

async fn concurrent_creates_open_one_account(backend: Backend, test: &str) {
    let Some(app) = TestApp::spawn(backend, test).await else {
        return;
    };
    let token = app.service_token(&["billing:write"]);
    let calls = (0..20).map(|_| {
        let (token, addr) = (token.clone(), app.billing_addr);
        tokio::spawn(async move {
            let mut billing =
                billpay_contracts::billing::v1::billing_service_client::BillingServiceClient::new(
                    connect(addr).await,
                );
            billing
                .create_account(authorized(new_account("c-race"), &token))
                .await
        })
    });
    let mut ids = Vec::new();
    let mut created = 0;
    for call in calls.collect::<Vec<_>>() {
        let response = call.await.unwrap().unwrap().into_inner();
        created += usize::from(response.created);
        ids.push(response.account.unwrap().account_id);
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "every caller gets the same account: {ids:?}");
    assert_eq!(created, 1, "exactly one caller created it");
    assert_eq!(app.billing_rows("accounts").await, 1);
    app.stop().await;
}

async fn unknown_account_is_not_found(backend: Backend, test: &str) {
    let Some(app) = TestApp::spawn(backend, test).await else {
        return;
    };
    let token = app.service_token(&["billing:read"]);
    let result = app
        .billing()
        .await
        .get_account(authorized(
            GetAccountRequest {
                account_id: "acc_missing".into(),
            },
            &token,
        ))
        .await;
    expect_code(result, Code::NotFound);
    app.stop().await;
}

async fn both_services_report_serving(backend: Backend, test: &str) {
    let Some(app) = TestApp::spawn(backend, test).await else {
        return;
    };
    for (addr, service) in [
        (app.billing_addr, "billing.v1.BillingService"),
        (app.payment_addr, "payment.v1.PaymentService"),
    ] {
        let mut health = HealthClient::new(connect(addr).await);
        for name in ["", service] {
            let status = health
                .check(HealthCheckRequest {
                    service: name.into(),
                })
                .await
                .unwrap()
                .into_inner()
                .status();
            assert_eq!(status, ServingStatus::Serving, "{addr} {name:?}");
        }
    }
    app.stop().await;
}
