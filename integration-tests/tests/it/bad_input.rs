//! Malformed requests: INVALID_ARGUMENT naming the field, and nothing written.

use billpay_contracts::{
    billing::v1::{CreateAccountRequest, GetAccountRequest},
    common::v1::Money,
};
use integration_tests::{Backend, TestApp, authorized};
use tonic::Code;

use crate::{
    on_both_backends,
    support::{expect_code, new_account, violated_fields},
};

on_both_backends!(malformed_requests_are_refused_and_write_nothing);

type Mutation = fn(&mut CreateAccountRequest);

/// (what is wrong, how to break a valid request, the field the error must name)
fn create_account_cases() -> Vec<(&'static str, Mutation, &'static str)> {
    fn limit(request: &mut CreateAccountRequest, amount: &str) {
        request.credit_limit = Some(Money::new("CNY", amount));
    }
    vec![
        ("negative amount", |r| limit(r, "-1"), "credit_limit.amount"),
        ("exponent", |r| limit(r, "1e3"), "credit_limit.amount"),
        (
            "three decimals",
            |r| limit(r, "1.001"),
            "credit_limit.amount",
        ),
        ("empty amount", |r| limit(r, ""), "credit_limit.amount"),
        ("letters", |r| limit(r, "abc"), "credit_limit.amount"),
        (
            "leading space",
            |r| limit(r, " 1.00"),
            "credit_limit.amount",
        ),
        (
            "20 digits",
            |r| limit(r, "12345678901234567890"),
            "credit_limit.amount",
        ),
        ("trailing dot", |r| limit(r, "1."), "credit_limit.amount"),
        (
            "thousands separator",
            |r| limit(r, "1,000.00"),
            "credit_limit.amount",
        ),
        ("plus sign", |r| limit(r, "+5"), "credit_limit.amount"),
        (
            "unknown currency",
            |r| r.credit_limit = Some(Money::new("USD", "100.00")),
            "credit_limit.currency_code",
        ),
        (
            "empty currency",
            |r| r.credit_limit = Some(Money::new("", "100.00")),
            "credit_limit.currency_code",
        ),
        (
            "missing credit limit",
            |r| r.credit_limit = None,
            "credit_limit",
        ),
        (
            "empty customer_ref",
            |r| r.customer_ref.clear(),
            "customer_ref",
        ),
        (
            "10 KB customer_ref",
            |r| r.customer_ref = "x".repeat(10 * 1024),
            "customer_ref",
        ),
        (
            "customer_ref with spaces",
            |r| r.customer_ref = "c 1".into(),
            "customer_ref",
        ),
        ("short phone", |r| r.phone = "1381234123".into(), "phone"),
        (
            "phone with letters",
            |r| r.phone = "1381234abcd".into(),
            "phone",
        ),
        ("landline", |r| r.phone = "02112345678".into(), "phone"),
        (
            "empty display_name",
            |r| r.display_name.clear(),
            "display_name",
        ),
        (
            "blank display_name",
            |r| r.display_name = "   ".into(),
            "display_name",
        ),
        (
            "control character in name",
            |r| r.display_name = "Li\u{0}Lei".into(),
            "display_name",
        ),
        (
            "display_name too long",
            |r| r.display_name = "名".repeat(101),
            "display_name",
        ),
    ]
}

async fn malformed_requests_are_refused_and_write_nothing(backend: Backend, test: &str) {
    let Some(app) = TestApp::spawn(backend, test).await else {
        return;
    };
    let token = app.service_token(&["billing:read", "billing:write"]);
    let mut billing = app.billing().await;

    let cases = create_account_cases();
    assert!(cases.len() >= 15);
    for (what, break_it, field) in cases {
        let mut request = new_account("c-bad");
        break_it(&mut request);
        let status = expect_code(
            billing.create_account(authorized(request, &token)).await,
            Code::InvalidArgument,
        );
        assert_eq!(
            violated_fields(&status),
            vec![field.to_owned()],
            "{what}: {status:?}"
        );
    }

    let mut everything_wrong = new_account("");
    everything_wrong.phone.clear();
    everything_wrong.credit_limit = Some(Money::new("CNY", "-1"));
    let status = expect_code(
        billing
            .create_account(authorized(everything_wrong, &token))
            .await,
        Code::InvalidArgument,
    );
    assert_eq!(
        violated_fields(&status),
        ["customer_ref", "phone", "credit_limit.amount"],
        "every problem is reported at once"
    );

    for account_id in ["", "acc-with-dash", &"a".repeat(100)] {
        let request = GetAccountRequest {
            account_id: account_id.into(),
        };
        let status = expect_code(
            billing.get_account(authorized(request, &token)).await,
            Code::InvalidArgument,
        );
        assert_eq!(violated_fields(&status), ["account_id"], "{account_id:?}");
    }

    assert_eq!(
        app.billing_rows("accounts").await,
        0,
        "a refused request writes nothing"
    );
    assert_eq!(app.billing_rows("operator_audit").await, 0);
    app.stop().await;
}
