//! Authentication and authorisation, each case able to fail.

use billpay_contracts::{
    billing::v1::GetAccountRequest,
    payment::v1::{GetPaymentRequest, ListPaymentsRequest, RefundPaymentRequest},
};
use integration_tests::{Backend, TestApp, authorized};
use service_kit::auth::{Role, TokenSigner, keys::generate_ed25519, mint};
use tonic::Code;

use crate::{
    on_both_backends,
    support::{expect_code, new_account},
};

on_both_backends!(
    bad_or_missing_tokens_are_unauthenticated,
    roles_and_scopes_are_enforced,
    customers_see_only_their_own_account,
    operator_reads_are_audited,
    payment_rpcs_need_a_token_and_the_right_scope,
);

async fn bad_or_missing_tokens_are_unauthenticated(backend: Backend, test: &str) {
    let Some(app) = TestApp::spawn(backend, test).await else {
        return;
    };
    let mut billing = app.billing().await;
    let scopes = &["billing:read", "billing:write"];
    // Mallory's own key, under the dev issuer's name and kid.
    let dev_key = app.dev_signer();
    let mallory_key = TokenSigner::ed25519(
        dev_key.issuer(),
        dev_key.kid().unwrap(),
        &generate_ed25519().unwrap().0,
    )
    .unwrap();
    let forged = mint(&mallory_key, "mallory", Role::Service, scopes, None, 600);
    let expired = mint(dev_key, "svc", Role::Service, scopes, None, -60);
    let valid = mint(dev_key, "svc", Role::Service, scopes, None, 600);
    let tampered = {
        let (head, rest) = valid.split_once('.').unwrap();
        let (_claims, signature) = rest.split_once('.').unwrap();
        let other_claims = forged.split('.').nth(1).unwrap();
        format!("{head}.{other_claims}.{signature}")
    };

    let no_token = billing
        .create_account(tonic::Request::new(new_account("c-a")))
        .await;
    expect_code(no_token, Code::Unauthenticated);
    for token in [
        forged.as_str(),
        expired.as_str(),
        tampered.as_str(),
        "not-a-jwt",
    ] {
        let result = billing
            .create_account(authorized(new_account("c-a"), token))
            .await;
        expect_code(result, Code::Unauthenticated);
    }
    assert_eq!(app.billing_rows("accounts").await, 0, "nothing written");
    billing
        .create_account(authorized(new_account("c-a"), &valid))
        .await
        .expect("the valid token passes");
    app.stop().await;
}

async fn roles_and_scopes_are_enforced(backend: Backend, test: &str) {
    let Some(app) = TestApp::spawn(backend, test).await else {
        return;
    };
    let mut billing = app.billing().await;

    let operator = billing
        .create_account(authorized(new_account("c-b"), &app.operator_token("op")))
        .await;
    expect_code(operator, Code::PermissionDenied);
    let read_only_service = billing
        .create_account(authorized(
            new_account("c-b"),
            &app.service_token(&["billing:read"]),
        ))
        .await;
    expect_code(read_only_service, Code::PermissionDenied);
    let customer = billing
        .create_account(authorized(new_account("c-b"), &app.customer_token("acc_x")))
        .await;
    expect_code(customer, Code::PermissionDenied);
    assert_eq!(app.billing_rows("accounts").await, 0, "nothing written");
    app.stop().await;
}

async fn customers_see_only_their_own_account(backend: Backend, test: &str) {
    let Some(app) = TestApp::spawn(backend, test).await else {
        return;
    };
    let mut billing = app.billing().await;
    let service = app.service_token(&["billing:write"]);
    let mine = billing
        .create_account(authorized(new_account("c-mine"), &service))
        .await
        .unwrap();
    let theirs = billing
        .create_account(authorized(new_account("c-theirs"), &service))
        .await
        .unwrap();
    let mine = mine.into_inner().account.unwrap().account_id;
    let theirs = theirs.into_inner().account.unwrap().account_id;

    let token = app.customer_token(&mine);
    let own = billing
        .get_account(authorized(
            GetAccountRequest {
                account_id: mine.clone(),
            },
            &token,
        ))
        .await
        .unwrap();
    assert_eq!(own.into_inner().account.unwrap().account_id, mine);
    let other = billing
        .get_account(authorized(GetAccountRequest { account_id: theirs }, &token))
        .await;
    let status = expect_code(other, Code::PermissionDenied);
    assert!(
        !status.message().contains("c-theirs"),
        "no data leaks: {status:?}"
    );
    app.stop().await;
}

async fn operator_reads_are_audited(backend: Backend, test: &str) {
    let Some(app) = TestApp::spawn(backend, test).await else {
        return;
    };
    let mut billing = app.billing().await;
    let created = billing
        .create_account(authorized(
            new_account("c-audit"),
            &app.service_token(&["billing:write"]),
        ))
        .await
        .unwrap();
    let account_id = created.into_inner().account.unwrap().account_id;
    assert_eq!(
        app.billing_rows("operator_audit").await,
        0,
        "service calls are not audited"
    );

    billing
        .get_account(authorized(
            GetAccountRequest {
                account_id: account_id.clone(),
            },
            &app.operator_token("op-zhang"),
        ))
        .await
        .unwrap();
    let rows: Vec<(String, String, Option<String>, i64)> =
        sqlx::query_as("SELECT subject, rpc, account_id, at_micros FROM operator_audit")
            .fetch_all(app.billing_db.pool())
            .await
            .unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    let (subject, rpc, audited_account, at_micros) = &rows[0];
    assert_eq!((subject.as_str(), rpc.as_str()), ("op-zhang", "GetAccount"));
    assert_eq!(audited_account.as_deref(), Some(account_id.as_str()));
    assert!(*at_micros > 0);
    app.stop().await;
}

async fn payment_rpcs_need_a_token_and_the_right_scope(backend: Backend, test: &str) {
    let Some(app) = TestApp::spawn(backend, test).await else {
        return;
    };
    let mut payment = app.payment().await;
    let get = |token: &str| {
        authorized(
            GetPaymentRequest {
                payment_id: "pay_1".into(),
            },
            token,
        )
    };
    expect_code(
        payment
            .get_payment(get(&app.service_token(&["payment:read"])))
            .await,
        Code::NotFound,
    );
    expect_code(
        payment
            .get_payment(get(&app.service_token(&["billing:read"])))
            .await,
        Code::PermissionDenied,
    );
    let list = payment
        .list_payments(tonic::Request::new(ListPaymentsRequest::default()))
        .await;
    expect_code(list, Code::Unauthenticated);
    let refund = RefundPaymentRequest {
        payment_id: "pay_1".into(),
        idempotency_key: "r".into(),
        reason: String::new(),
    };
    let by_operator = payment
        .refund_payment(authorized(refund, &app.operator_token("op")))
        .await;
    expect_code(by_operator, Code::PermissionDenied);
    app.stop().await;
}
