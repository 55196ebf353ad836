//! Helpers the tests share: requests, and reading error details.

use billpay_contracts::{
    billing::v1::{
        Account, CreateAccountRequest, GetAccountRequest, GetAccountSummaryRequest,
        GetAccountSummaryResponse, RunDayCloseRequest, RunDayCloseResponse,
        billing_service_client::BillingServiceClient,
    },
    common::v1::{BillSelection, Money, RepaymentTarget, repayment_target::Kind},
    payment::v1::{
        CreateRepaymentRequest, Payment, PaymentMethod,
        payment_service_client::PaymentServiceClient,
    },
};
use chrono::NaiveDate;
use integration_tests::{Backend, StackOptions, TestApp, authorized, connect};
use tonic::{Code, Status};
use tonic_types::StatusExt as _;

/// A valid CreateAccount request for `customer_ref`.
pub fn new_account(customer_ref: &str) -> CreateAccountRequest {
    CreateAccountRequest {
        customer_ref: customer_ref.into(),
        display_name: "Li Lei".into(),
        phone: "13812341234".into(),
        credit_limit: Some(Money::new("CNY", "20000.00")),
    }
}

/// The fields a status's BadRequest names.
pub fn violated_fields(status: &Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|bad_request| {
            bad_request
                .field_violations
                .into_iter()
                .map(|violation| violation.field)
                .collect()
        })
        .unwrap_or_default()
}

/// The ErrorInfo reason of a status, if any.
pub fn reason(status: &Status) -> Option<String> {
    status.get_details_error_info().map(|info| info.reason)
}

/// Asserts `result` failed with `code`, and returns the status.
#[track_caller]
pub fn expect_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code) -> Status {
    match result {
        Ok(value) => panic!("expected {code:?}, got OK: {value:?}"),
        Err(status) => {
            assert_eq!(status.code(), code, "{status:?}");
            status
        }
    }
}

/// Opens an account with `credit_limit` and returns its id.
pub async fn open_account(
    app: &integration_tests::TestApp,
    customer_ref: &str,
    credit_limit: &str,
) -> String {
    let mut request = new_account(customer_ref);
    request.credit_limit = Some(Money::new("CNY", credit_limit));
    app.billing()
        .await
        .create_account(integration_tests::authorized(
            request,
            &app.service_token(&["billing:write"]),
        ))
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap()
        .account_id
}

/// A CreatePlan request for `price` on `product_id` over `term_count` months, no
/// down payment, bought today.
pub fn new_plan(
    account_id: &str,
    order_ref: &str,
    product_id: &str,
    term_count: i32,
    price: &str,
) -> billpay_contracts::billing::v1::CreatePlanRequest {
    billpay_contracts::billing::v1::CreatePlanRequest {
        account_id: account_id.into(),
        order_ref: order_ref.into(),
        product_id: product_id.into(),
        term_count,
        price: Some(Money::new("CNY", price)),
        down_payment: None,
        purchase_date: String::new(),
    }
}

/// Today in Shanghai, as billing-svc sees it by default.
pub fn business_today() -> chrono::NaiveDate {
    let shanghai = chrono::FixedOffset::east_opt(8 * 3600).unwrap();
    chrono::Utc::now().with_timezone(&shanghai).date_naive()
}

/// How long a test waits for a state it polls for.
pub const POLL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);

/// Polls `condition` every 20 ms until it holds, failing after the deadline.
pub async fn poll_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + POLL_DEADLINE;
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A target paying `bill_ids` in full.
pub fn bills_target(bill_ids: &[&str]) -> RepaymentTarget {
    RepaymentTarget {
        kind: Some(Kind::Bills(BillSelection {
            bill_ids: bill_ids.iter().map(|id| (*id).to_owned()).collect(),
        })),
    }
}

/// A CreateRepayment request.
pub fn repayment(
    key: &str,
    account_id: &str,
    target: RepaymentTarget,
    amount: &str,
    method: PaymentMethod,
    instrument: &str,
) -> CreateRepaymentRequest {
    CreateRepaymentRequest {
        idempotency_key: key.into(),
        account_id: account_id.into(),
        target: Some(target),
        expected_amount: Some(Money::new("CNY", amount)),
        method: method as i32,
        instrument: instrument.into(),
    }
}

/// CreateRepayment with a payment-svc service token.
pub async fn pay(app: &TestApp, request: CreateRepaymentRequest) -> Result<Payment, Status> {
    let mut payment = PaymentServiceClient::new(connect(app.payment_addr).await);
    let response = payment
        .create_repayment(authorized(request, &app.payment_token()))
        .await?;
    Ok(response.into_inner().payment.unwrap())
}

/// A stack whose billing business date stands on `today`.
pub async fn spawn_on(backend: Backend, test: &str, today: NaiveDate) -> Option<TestApp> {
    let options = StackOptions {
        today: Some(today),
        ..StackOptions::default()
    };
    TestApp::spawn_with(backend, test, options).await
}

/// A money field's amount ("" when absent).
pub fn amount(money: &Option<Money>) -> &str {
    money.as_ref().map_or("", |money| money.amount.as_str())
}

/// GetAccount with a `billing:read` service token.
pub async fn account(app: &TestApp, account_id: &str) -> Account {
    let request = GetAccountRequest {
        account_id: account_id.into(),
    };
    app.billing()
        .await
        .get_account(authorized(request, &app.service_token(&["billing:read"])))
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap()
}

/// GetAccountSummary with a `billing:read` service token.
pub async fn summary(app: &TestApp, account_id: &str) -> GetAccountSummaryResponse {
    let request = GetAccountSummaryRequest {
        account_id: account_id.into(),
    };
    app.billing()
        .await
        .get_account_summary(authorized(request, &app.service_token(&["billing:read"])))
        .await
        .unwrap()
        .into_inner()
}

/// RunDayClose of `as_of` with a `billing:admin` service token, until it finishes.
pub async fn close(app: &TestApp, as_of: NaiveDate) {
    close_until_finished(app, as_of).await.unwrap();
}

/// RunDayClose of `as_of`, then of its run while it answers unfinished (a close
/// waits for claims a killed replica left until they expire), up to a deadline.
pub async fn close_until_finished(
    app: &TestApp,
    as_of: NaiveDate,
) -> Result<RunDayCloseResponse, tonic::Status> {
    let token = app.service_token(&["billing:admin"]);
    follow_close(&mut app.billing().await, &token, as_of).await
}

/// RunDayClose of `as_of` on `billing`, asked again (for its run, or by date while
/// the run's accounts are still being listed) until it answers finished.
pub async fn follow_close(
    billing: &mut BillingServiceClient<tonic::transport::Channel>,
    token: &str,
    as_of: NaiveDate,
) -> Result<RunDayCloseResponse, tonic::Status> {
    follow_run(billing, token, as_of, 0).await
}

/// [`follow_close`] of the run `run_id` (0: the run the first answer names).
pub async fn follow_run(
    billing: &mut BillingServiceClient<tonic::transport::Channel>,
    token: &str,
    as_of: NaiveDate,
    run_id: i64,
) -> Result<RunDayCloseResponse, tonic::Status> {
    let deadline = tokio::time::Instant::now() + POLL_DEADLINE;
    let mut request = RunDayCloseRequest {
        as_of: as_of.to_string(),
        run_id,
    };
    loop {
        let answer = billing
            .run_day_close(authorized(request.clone(), token))
            .await?
            .into_inner();
        if answer.finished {
            return Ok(answer);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the close of {as_of} did not finish in {POLL_DEADLINE:?}: {answer:?}"
        );
        if answer.run_id == 0 {
            // Still listing: ask again in a moment rather than at once.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        request.run_id = answer.run_id;
    }
}
