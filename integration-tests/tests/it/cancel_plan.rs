//! CancelPlan over gRPC (SPEC §5.4): a returned phone's plan is cancelled after two
//! paid bills — its bills CANCELLED, its principal released, everything paid on it
//! credit balance that pays the next bill at the close, R1 against the provider's
//! ledger — and the refusals, each writing nothing.

use billpay_contracts::{
    billing::v1::{
        Bill, BillStatus, CancelPlanRequest, CancelPlanResponse, GetCreditRecordRequest,
        GetPlanRequest, Plan, PlanStatus, QuoteRepaymentRequest, RepaymentStanding,
    },
    common::v1::{AllDue, PlanPayoff, RepaymentTarget, repayment_target::Kind},
    payment::v1::{
        PaymentMethod, RefundPaymentRequest, payment_service_client::PaymentServiceClient,
    },
};
use chrono::{Days, Months, NaiveDate};
use integration_tests::{Backend, TestApp, authorized, connect};
use tonic::{Code, Status};

use crate::{
    on_both_backends,
    repayments::assert_conservation,
    support::{
        account, amount, bills_target, close, expect_code, new_plan, open_account, pay, poll_until,
        reason, repayment, spawn_on, summary, violated_fields,
    },
};

on_both_backends!(
    cancelling_a_returned_phone_refunds_what_was_paid_to_the_next_bill,
    a_refund_after_a_cancel_comes_out_of_the_credit_balance,
    cancel_refusals_write_nothing_and_a_settled_plan_may_be_cancelled,
);

/// Billing's fixed business date in these tests.
fn today() -> NaiveDate {
    "2030-03-10".parse().unwrap()
}

async fn spawn(backend: Backend, test: &str) -> Option<TestApp> {
    spawn_on(backend, test, today()).await
}

/// Opens a plan bought on `purchase_date`.
async fn plan_bought(
    app: &TestApp,
    account_id: &str,
    order_ref: &str,
    (product, term_count, price): (&str, i32, &str),
    purchase_date: NaiveDate,
) -> Plan {
    let mut request = new_plan(account_id, order_ref, product, term_count, price);
    request.purchase_date = purchase_date.to_string();
    app.billing()
        .await
        .create_plan(authorized(request, &app.service_token(&["billing:write"])))
        .await
        .unwrap()
        .into_inner()
        .plan
        .unwrap()
}

/// A 12-term mall-fee phone at 5999.00 bought two months ago, its two due bills paid
/// by card (two payments of 535.91: bill 1, then bill 2). Returns the account, the
/// plan and the two payment ids.
async fn phone_with_two_paid_bills(
    app: &TestApp,
    customer_ref: &str,
) -> (String, Plan, [String; 2]) {
    let account_id = open_account(app, customer_ref, "50000.00").await;
    let phone = plan_bought(
        app,
        &account_id,
        "phone",
        ("mall-fee", 12, "5999.00"),
        today() - Months::new(2),
    )
    .await;
    assert_eq!(phone.bills[1].status(), BillStatus::Due);
    let mut payments = Vec::new();
    for (key, bill) in ["k-1", "k-2"].iter().zip(&phone.bills[..2]) {
        let request = repayment(
            key,
            &account_id,
            bills_target(&[&bill.bill_id]),
            "535.91",
            PaymentMethod::BankCard,
            "tok_4242",
        );
        let payment = pay(app, request).await.unwrap();
        assert!(payment.applied, "{payment:?}");
        payments.push(payment.payment_id);
    }
    let [first, second]: [String; 2] = payments.try_into().unwrap();
    (account_id, phone, [first, second])
}

fn cancel_request(plan_id: &str, request_id: &str) -> CancelPlanRequest {
    CancelPlanRequest {
        plan_id: plan_id.into(),
        request_id: request_id.into(),
        reason: "goods returned".into(),
    }
}

async fn cancel(
    app: &TestApp,
    token: &str,
    request: CancelPlanRequest,
) -> Result<CancelPlanResponse, Status> {
    app.billing()
        .await
        .cancel_plan(authorized(request, token))
        .await
        .map(tonic::Response::into_inner)
}

fn writer(app: &TestApp) -> String {
    app.service_token(&["billing:write"])
}

async fn plan(app: &TestApp, plan_id: &str) -> Plan {
    let request = GetPlanRequest {
        plan_id: plan_id.into(),
    };
    app.billing()
        .await
        .get_plan(authorized(request, &app.service_token(&["billing:read"])))
        .await
        .unwrap()
        .into_inner()
        .plan
        .unwrap()
}

async fn credit_balance(app: &TestApp, account_id: &str) -> String {
    amount(&account(app, account_id).await.credit_balance).to_owned()
}

/// (cancellation rows, PLAN_CANCELLED events).
async fn written(app: &TestApp) -> (i64, i64) {
    let events: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE kind = 'PLAN_CANCELLED'")
            .fetch_one(app.billing_db.pool())
            .await
            .unwrap();
    (app.billing_rows("plan_cancellations").await, events)
}

/// Billing's own side of R1: every applied repayment's money sits on the bills of
/// plans not cancelled or in the credit balance — nowhere else, nothing twice.
async fn assert_money_accounted_for(app: &TestApp) {
    let query = |sql: &'static str| async move {
        sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(app.billing_db.pool())
            .await
            .unwrap()
    };
    let applied = query(
        "SELECT CAST(COALESCE(SUM(amount_minor), 0) AS BIGINT) FROM repayments WHERE state = 'APPLIED'",
    )
    .await;
    let on_bills = query(
        "SELECT CAST(COALESCE(SUM(paid_principal_minor + paid_interest_minor + paid_fee_minor + paid_penalty_minor), 0) \
         AS BIGINT) FROM bills WHERE state <> 'CANCELLED'",
    )
    .await;
    let balances =
        query("SELECT CAST(COALESCE(SUM(credit_balance_minor), 0) AS BIGINT) FROM accounts").await;
    assert_eq!(
        applied,
        on_bills + balances,
        "applied = on live bills + credit balance"
    );
}

fn statuses(bills: &[Bill]) -> Vec<BillStatus> {
    bills.iter().map(Bill::status).collect()
}

async fn cancelling_a_returned_phone_refunds_what_was_paid_to_the_next_bill(
    backend: Backend,
    test: &str,
) {
    let Some(app) = spawn(backend, test).await else {
        return;
    };
    let (account_id, phone, _) = phone_with_two_paid_bills(&app, "c-return").await;
    // A second plan whose first bill (1000.00) falls due tomorrow.
    let tv = plan_bought(
        &app,
        &account_id,
        "tv",
        ("mall-free", 3, "3000.00"),
        today() + Days::new(1) - Months::new(1),
    )
    .await;
    assert_eq!(
        amount(&summary(&app, &account_id).await.available_credit),
        "42000.84"
    );

    let cancelled = cancel(
        &app,
        &writer(&app),
        cancel_request(&phone.plan_id, "return-1"),
    )
    .await
    .unwrap();
    assert!(!cancelled.replayed);
    // Principal 5999.00 less the 2 × 499.92 repaid; paid 2 × 535.91, fees included.
    assert_eq!(amount(&cancelled.released_principal), "4999.16");
    assert_eq!(amount(&cancelled.refunded_to_credit_balance), "1071.82");
    let cancelled_plan = cancelled.plan.clone().unwrap();
    assert_eq!(cancelled_plan.status(), PlanStatus::Cancelled);
    assert_eq!(
        statuses(&cancelled_plan.bills),
        vec![BillStatus::Cancelled; 12]
    );
    assert_eq!(amount(&cancelled_plan.outstanding), "0.00");
    assert_eq!(plan(&app, &phone.plan_id).await, cancelled_plan);
    let now = summary(&app, &account_id).await;
    assert_eq!(
        amount(&now.available_credit),
        "47000.00",
        "the principal is released"
    );
    assert_eq!(
        amount(&now.credit_balance),
        "1071.82",
        "exactly what was paid"
    );
    assert_eq!(
        amount(&now.outstanding_total),
        "3000.00",
        "only the tv is owed"
    );
    assert_eq!(
        (now.next_due_date.as_str(), amount(&now.next_due_amount)),
        ((today() + Days::new(1)).to_string().as_str(), "1000.00")
    );
    assert_conservation(&app).await;
    assert_money_accounted_for(&app).await;

    // The same request answers the same; another cancel of the plan is refused.
    let written_once = written(&app).await;
    assert_eq!(written_once, (1, 1));
    let again = cancel(
        &app,
        &writer(&app),
        cancel_request(&phone.plan_id, "return-1"),
    )
    .await
    .unwrap();
    assert!(again.replayed);
    assert_eq!(
        (
            again.plan,
            again.released_principal,
            again.refunded_to_credit_balance
        ),
        (
            cancelled.plan,
            cancelled.released_principal,
            cancelled.refunded_to_credit_balance
        )
    );
    let second = expect_code(
        cancel(
            &app,
            &writer(&app),
            cancel_request(&phone.plan_id, "return-2"),
        )
        .await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&second).as_deref(), Some("PLAN_NOT_CANCELLABLE"));
    let mut other_reason = cancel_request(&phone.plan_id, "return-1");
    other_reason.reason = "changed my mind".into();
    let reused = expect_code(
        cancel(&app, &writer(&app), other_reason).await,
        Code::AlreadyExists,
    );
    assert_eq!(reason(&reused).as_deref(), Some("IDEMPOTENCY_KEY_REUSED"));
    assert_eq!(written(&app).await, written_once, "refusals write nothing");
    assert_eq!(credit_balance(&app, &account_id).await, "1071.82");

    // The close of the tv's due date pays its bill from the credit balance.
    app.set_today(today() + Days::new(2));
    close(&app, today()).await;
    close(&app, today() + Days::new(1)).await;
    let tv_now = plan(&app, &tv.plan_id).await;
    assert_eq!(tv_now.bills[0].status(), BillStatus::Paid);
    assert_eq!(credit_balance(&app, &account_id).await, "71.82");
    assert_conservation(&app).await;
    assert_money_accounted_for(&app).await;

    // Months later the cancelled bills are still cancelled: never overdue, no penalty,
    // never due, and the credit record shows them cancelled.
    let later = today() + Months::new(3);
    app.set_today(later + Days::new(1));
    close(&app, later).await;
    let phone_now = plan(&app, &phone.plan_id).await;
    assert_eq!(statuses(&phone_now.bills), vec![BillStatus::Cancelled; 12]);
    assert!(
        phone_now
            .bills
            .iter()
            .all(|bill| amount(&bill.penalty) == "0.00")
    );
    let quote = app
        .billing()
        .await
        .quote_repayment(authorized(
            QuoteRepaymentRequest {
                account_id: account_id.clone(),
                target: Some(RepaymentTarget {
                    kind: Some(Kind::AllDue(AllDue {})),
                }),
            },
            &app.service_token(&["billing:read"]),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        quote
            .allocations
            .iter()
            .all(|allocation| allocation.plan_id == tv.plan_id),
        "only the tv is due: {quote:?}"
    );
    let record = app
        .billing()
        .await
        .get_credit_record(authorized(
            GetCreditRecordRequest {
                account_id: account_id.clone(),
            },
            &app.service_token(&["billing:read"]),
        ))
        .await
        .unwrap()
        .into_inner();
    let phone_entries: Vec<_> = record
        .entries
        .iter()
        .filter(|entry| entry.plan_id == phone.plan_id)
        .collect();
    assert!(!phone_entries.is_empty());
    assert!(
        phone_entries
            .iter()
            .all(|entry| entry.standing() == RepaymentStanding::Cancelled
                && entry.days_past_due == 0),
        "{phone_entries:?}"
    );
    assert_money_accounted_for(&app).await;
    app.stop().await;
}

async fn refund(app: &TestApp, payment_id: &str, key: &str) -> Result<(), Status> {
    let request = RefundPaymentRequest {
        payment_id: payment_id.into(),
        idempotency_key: key.into(),
        reason: "card dispute".into(),
    };
    PaymentServiceClient::new(connect(app.payment_addr).await)
        .refund_payment(authorized(request, &app.payment_token()))
        .await
        .map(|_| ())
}

async fn a_refund_after_a_cancel_comes_out_of_the_credit_balance(backend: Backend, test: &str) {
    let Some(app) = spawn(backend, test).await else {
        return;
    };
    let (account_id, phone, [first, second]) = phone_with_two_paid_bills(&app, "c-refund").await;
    cancel(
        &app,
        &writer(&app),
        cancel_request(&phone.plan_id, "return-1"),
    )
    .await
    .unwrap();
    assert_eq!(credit_balance(&app, &account_id).await, "1071.82");

    // The payment of bill 2 is refunded: billing takes it back from the balance the
    // cancellation left, and the bill stays cancelled.
    refund(&app, &second, "r-2").await.unwrap();
    poll_until("billing reversed the payment", || async {
        credit_balance(&app, &account_id).await == "535.91"
    })
    .await;
    let phone_now = plan(&app, &phone.plan_id).await;
    assert_eq!(statuses(&phone_now.bills), vec![BillStatus::Cancelled; 12]);
    assert_eq!(amount(&phone_now.bills[1].amount_paid), "0.00");
    assert_eq!(
        amount(&summary(&app, &account_id).await.available_credit),
        "50000.00"
    );
    let (captured, refunded, _) = app.ledger().await;
    assert_eq!((captured, refunded), (107_182, 53_591));
    assert_conservation(&app).await;
    assert_money_accounted_for(&app).await;

    // Once the balance has paid another bill, the other payment cannot be taken back.
    let tv = plan_bought(
        &app,
        &account_id,
        "tv",
        ("mall-free", 3, "3000.00"),
        today() - Months::new(1),
    )
    .await;
    app.set_today(today() + Days::new(1));
    close(&app, today()).await;
    assert_eq!(credit_balance(&app, &account_id).await, "0.00");
    assert_eq!(
        amount(&plan(&app, &tv.plan_id).await.bills[0].amount_paid),
        "535.91"
    );
    let status = expect_code(refund(&app, &first, "r-1").await, Code::FailedPrecondition);
    assert_eq!(
        reason(&status).as_deref(),
        Some("NOT_REVERSIBLE"),
        "{status:?}"
    );
    let (_, refunded, _) = app.ledger().await;
    assert_eq!(refunded, 53_591, "no more money left at the provider");
    assert_conservation(&app).await;
    assert_money_accounted_for(&app).await;
    app.stop().await;
}

async fn cancel_refusals_write_nothing_and_a_settled_plan_may_be_cancelled(
    backend: Backend,
    test: &str,
) {
    let Some(app) = spawn(backend, test).await else {
        return;
    };
    let account_id = open_account(&app, "c-refuse", "50000.00").await;
    let phone = plan_bought(
        &app,
        &account_id,
        "phone",
        ("mall-fee", 12, "5999.00"),
        today(),
    )
    .await;
    let nothing = written(&app).await;

    // Bad input names every field.
    let status = expect_code(
        cancel(&app, &writer(&app), CancelPlanRequest::default()).await,
        Code::InvalidArgument,
    );
    let mut fields = violated_fields(&status);
    fields.sort();
    assert_eq!(fields, ["plan_id", "reason", "request_id"]);
    let mut bad_reason = cancel_request(&phone.plan_id, "r 1");
    bad_reason.reason = " ".into();
    let status = expect_code(
        cancel(&app, &writer(&app), bad_reason).await,
        Code::InvalidArgument,
    );
    let mut fields = violated_fields(&status);
    fields.sort();
    assert_eq!(fields, ["reason", "request_id"]);
    expect_code(
        cancel(&app, &writer(&app), cancel_request("plan_unknown", "r-1")).await,
        Code::NotFound,
    );
    // Only the mall's order service: not operators, customers or other scopes.
    for token in [
        app.operator_token("op-1"),
        app.customer_token(&account_id),
        app.service_token(&["billing:read", "billing:limits", "billing:admin"]),
    ] {
        expect_code(
            cancel(&app, &token, cancel_request(&phone.plan_id, "r-1")).await,
            Code::PermissionDenied,
        );
    }
    assert_eq!(written(&app).await, nothing);
    assert_eq!(
        plan(&app, &phone.plan_id).await.status(),
        PlanStatus::Active
    );

    // A plan settled early cannot be cancelled.
    let payoff = RepaymentTarget {
        kind: Some(Kind::PlanPayoff(PlanPayoff {
            plan_id: phone.plan_id.clone(),
        })),
    };
    let quote = app
        .billing()
        .await
        .quote_repayment(authorized(
            QuoteRepaymentRequest {
                account_id: account_id.clone(),
                target: Some(payoff.clone()),
            },
            &app.service_token(&["billing:read"]),
        ))
        .await
        .unwrap()
        .into_inner();
    let quoted = amount(&quote.amount).to_owned();
    let request = repayment(
        "payoff",
        &account_id,
        payoff,
        &quoted,
        PaymentMethod::BankCard,
        "tok_4242",
    );
    assert!(pay(&app, request).await.unwrap().applied);
    assert_eq!(
        plan(&app, &phone.plan_id).await.status(),
        PlanStatus::SettledEarly
    );
    let status = expect_code(
        cancel(&app, &writer(&app), cancel_request(&phone.plan_id, "r-1")).await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&status).as_deref(), Some("PLAN_NOT_CANCELLABLE"));
    assert_eq!(written(&app).await, nothing);
    assert_eq!(credit_balance(&app, &account_id).await, "0.00");

    // A plan paid in full (SETTLED) may be: a return after the last payment still
    // gives the customer their money back.
    let case = plan_bought(
        &app,
        &account_id,
        "case",
        ("mall-free", 3, "300.00"),
        today(),
    )
    .await;
    let ids: Vec<&str> = case
        .bills
        .iter()
        .map(|bill| bill.bill_id.as_str())
        .collect();
    let request = repayment(
        "case-all",
        &account_id,
        bills_target(&ids),
        "300.00",
        PaymentMethod::BankCard,
        "tok_4242",
    );
    assert!(pay(&app, request).await.unwrap().applied);
    assert_eq!(
        plan(&app, &case.plan_id).await.status(),
        PlanStatus::Settled
    );
    let cancelled = cancel(
        &app,
        &writer(&app),
        cancel_request(&case.plan_id, "case-return"),
    )
    .await
    .unwrap();
    assert_eq!(amount(&cancelled.released_principal), "0.00");
    assert_eq!(amount(&cancelled.refunded_to_credit_balance), "300.00");
    assert_eq!(cancelled.plan.unwrap().status(), PlanStatus::Cancelled);
    assert_eq!(credit_balance(&app, &account_id).await, "300.00");
    assert_conservation(&app).await;
    assert_money_accounted_for(&app).await;
    app.stop().await;
}
