//! Plans and bills over gRPC: quotes, credit limits, idempotency, races, back-dating,
//! paging, and bad input refused with nothing written.

use billpay_contracts::{
    billing::v1::{
        BillStatus, CreatePlanRequest, DelinquencyBucket, GetAccountRequest,
        GetAccountSummaryRequest, GetBillRequest, GetCreditRecordRequest, GetPlanRequest,
        ListBillsRequest, ListPlansRequest, QuotePlanRequest, RepaymentStanding,
        billing_service_client::BillingServiceClient,
    },
    common::v1::Money,
};
use chrono::Months;
use integration_tests::{Backend, TestApp, authorized, connect};
use tonic::Code;

use crate::{
    on_both_backends,
    support::{business_today, expect_code, new_plan, open_account, reason, violated_fields},
};

on_both_backends!(
    quote_prices_the_mall_fee_example_and_writes_nothing,
    a_plan_uses_credit_and_shows_its_schedule,
    a_plan_above_available_credit_is_refused,
    concurrent_plans_over_the_limit_admit_exactly_one,
    concurrent_identical_creates_open_one_plan,
    an_order_ref_with_another_request_is_refused,
    a_back_dated_plan_has_bills_due,
    list_bills_pages_without_gaps_or_repeats,
    malformed_plans_are_refused_and_write_nothing,
    replicas_on_one_database_stay_correct,
    the_credit_record_lists_bills_due_so_far,
);

const READ_WRITE: &[&str] = &["billing:read", "billing:write"];

async fn available_credit(app: &TestApp, account_id: &str) -> String {
    let request = GetAccountRequest {
        account_id: account_id.into(),
    };
    let account = app
        .billing()
        .await
        .get_account(authorized(request, &app.service_token(READ_WRITE)))
        .await;
    account
        .unwrap()
        .into_inner()
        .account
        .unwrap()
        .available_credit
        .unwrap()
        .amount
}

async fn quote_prices_the_mall_fee_example_and_writes_nothing(backend: Backend, test: &str) {
    let Some(app) = TestApp::spawn(backend, test).await else {
        return;
    };
    let request = QuotePlanRequest {
        product_id: "mall-fee".into(),
        term_count: 12,
        price: Some(Money::new("CNY", "5999.00")),
        ..Default::default()
    };
    let quote = app
        .billing()
        .await
        .quote_plan(authorized(request, &app.service_token(READ_WRITE)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (quote.apr.as_str(), quote.effective_rate.as_str()),
        ("13.03", "13.84")
    );
    assert_eq!(quote.lines.len(), 12);
    let amounts: Vec<_> = quote
        .lines
        .iter()
        .map(|l| l.amount_due.clone().unwrap().amount)
        .collect();
    assert_eq!(
        (amounts[0].as_str(), amounts[11].as_str()),
        ("535.91", "535.87")
    );
    assert_eq!(quote.total_fee.unwrap().amount, "431.88");
    assert_eq!(quote.principal.unwrap().amount, "5999.00");
    assert_eq!(
        app.billing_rows("plans").await + app.billing_rows("bills").await,
        0
    );
    app.stop().await;
}

async fn a_plan_uses_credit_and_shows_its_schedule(backend: Backend, test: &str) {
    let Some(app) = TestApp::spawn(backend, test).await else {
        return;
    };
    let account_id = open_account(&app, "c-plan", "20000.00").await;
    let token = app.service_token(READ_WRITE);
    let mut billing = app.billing().await;
    let created = billing
        .create_plan(authorized(
            new_plan(&account_id, "order-1", "mall-fee", 12, "5999.00"),
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(created.created);
    let plan = created.plan.unwrap();
    assert_eq!(plan.apr, "13.03");
    assert_eq!(plan.bills.len(), 12);
    assert_eq!(plan.total_fee.clone().unwrap().amount, "431.88");
    assert_eq!(plan.total_amount.clone().unwrap().amount, "6430.88");
    assert_eq!(plan.outstanding.clone().unwrap().amount, "6430.88");
    assert!(
        plan.bills
            .iter()
            .all(|bill| bill.status() == BillStatus::Upcoming)
    );
    assert_eq!(
        available_credit(&app, &account_id).await,
        "14001.00",
        "20000.00 - 5999.00"
    );

    let fetched = billing
        .get_plan(authorized(
            GetPlanRequest {
                plan_id: plan.plan_id.clone(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .plan
        .unwrap();
    assert_eq!(fetched, plan);
    let bill = billing
        .get_bill(authorized(
            GetBillRequest {
                bill_id: plan.bills[0].bill_id.clone(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .bill
        .unwrap();
    assert_eq!(bill, plan.bills[0]);
    let listed = billing
        .list_plans(authorized(
            ListPlansRequest {
                account_id: account_id.clone(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.plans.len(), 1);
    assert_eq!(
        listed.plans[0].total_amount, plan.total_amount,
        "totals without the bills"
    );
    assert!(listed.plans[0].bills.is_empty());

    let other = open_account(&app, "c-other", "100.00").await;
    let as_other = billing
        .get_plan(authorized(
            GetPlanRequest {
                plan_id: plan.plan_id.clone(),
            },
            &app.customer_token(&other),
        ))
        .await;
    expect_code(as_other, Code::PermissionDenied);
    app.stop().await;
}

async fn a_plan_above_available_credit_is_refused(backend: Backend, test: &str) {
    let Some(app) = TestApp::spawn(backend, test).await else {
        return;
    };
    let account_id = open_account(&app, "c-limit", "10000.00").await;
    let token = app.service_token(READ_WRITE);
    let mut billing = app.billing().await;
    billing
        .create_plan(authorized(
            new_plan(&account_id, "o-1", "mall-free", 6, "6000.00"),
            &token,
        ))
        .await
        .unwrap();
    let over = billing
        .create_plan(authorized(
            new_plan(&account_id, "o-2", "mall-free", 6, "4000.01"),
            &token,
        ))
        .await;
    let status = expect_code(over, Code::FailedPrecondition);
    assert_eq!(reason(&status).as_deref(), Some("CREDIT_LIMIT_EXCEEDED"));
    assert_eq!(
        (
            app.billing_rows("plans").await,
            app.billing_rows("bills").await
        ),
        (1, 6),
        "nothing written"
    );
    assert_eq!(available_credit(&app, &account_id).await, "4000.00");
    billing
        .create_plan(authorized(
            new_plan(&account_id, "o-3", "mall-free", 6, "4000.00"),
            &token,
        ))
        .await
        .expect("exactly the available credit fits");
    assert_eq!(available_credit(&app, &account_id).await, "0.00");
    app.stop().await;
}

async fn concurrent_plans_over_the_limit_admit_exactly_one(backend: Backend, test: &str) {
    let Some(app) = TestApp::spawn(backend, test).await else {
        return;
    };
    let account_id = open_account(&app, "c-race", "10000.00").await;
    let token = app.service_token(READ_WRITE);
    let calls: Vec<_> = (0..2)
        .map(|i| {
            let request = authorized(
                new_plan(&account_id, &format!("race-{i}"), "mall-free", 6, "6000.00"),
                &token,
            );
            let addr = app.billing_addr;
            tokio::spawn(async move {
                BillingServiceClient::new(connect(addr).await)
                    .create_plan(request)
                    .await
            })
        })
        .collect();
    let mut refused = Vec::new();
    let mut admitted = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => admitted += 1,
            Err(status) => refused.push(reason(&status)),
        }
    }
    assert_eq!(admitted, 1);
    assert_eq!(refused, [Some("CREDIT_LIMIT_EXCEEDED".to_owned())]);
    assert_eq!(app.billing_rows("plans").await, 1);
    assert_eq!(available_credit(&app, &account_id).await, "4000.00");
    app.stop().await;
}

async fn concurrent_identical_creates_open_one_plan(backend: Backend, test: &str) {
    let Some(app) = TestApp::spawn(backend, test).await else {
        return;
    };
    let account_id = open_account(&app, "c-idem", "50000.00").await;
    let token = app.service_token(READ_WRITE);
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let request = authorized(
                new_plan(&account_id, "same-order", "mall-fee", 12, "5999.00"),
                &token,
            );
            let addr = app.billing_addr;
            tokio::spawn(async move {
                BillingServiceClient::new(connect(addr).await)
                    .create_plan(request)
                    .await
            })
        })
        .collect();
    let mut plan_ids = Vec::new();
    let mut created = 0;
    for call in calls {
        let response = call
            .await
            .unwrap()
            .expect("every caller gets the plan")
            .into_inner();
        created += usize::from(response.created);
        plan_ids.push(response.plan.unwrap().plan_id);
    }
    plan_ids.dedup();
    assert_eq!(plan_ids.len(), 1, "{plan_ids:?}");
    assert_eq!(created, 1);
    assert_eq!(
        (
            app.billing_rows("plans").await,
            app.billing_rows("bills").await
        ),
        (1, 12)
    );
    assert_eq!(
        available_credit(&app, &account_id).await,
        "44001.00",
        "credit taken once"
    );
    app.stop().await;
}

async fn an_order_ref_with_another_request_is_refused(backend: Backend, test: &str) {
    let Some(app) = TestApp::spawn(backend, test).await else {
        return;
    };
    let account_id = open_account(&app, "c-reuse", "50000.00").await;
    let token = app.service_token(READ_WRITE);
    let mut billing = app.billing().await;
    billing
        .create_plan(authorized(
            new_plan(&account_id, "o-1", "mall-fee", 12, "5999.00"),
            &token,
        ))
        .await
        .unwrap();
    let different = billing
        .create_plan(authorized(
            new_plan(&account_id, "o-1", "mall-fee", 6, "5999.00"),
            &token,
        ))
        .await;
    let status = expect_code(different, Code::AlreadyExists);
    assert_eq!(reason(&status).as_deref(), Some("IDEMPOTENCY_KEY_REUSED"));
    assert_eq!(app.billing_rows("plans").await, 1);
    app.stop().await;
}

async fn a_back_dated_plan_has_bills_due(backend: Backend, test: &str) {
    let Some(app) = TestApp::spawn(backend, test).await else {
        return;
    };
    let account_id = open_account(&app, "c-back", "50000.00").await;
    let token = app.service_token(READ_WRITE);
    let mut billing = app.billing().await;
    let mut request = new_plan(&account_id, "o-back", "cash-loan", 12, "12000.00");
    request.purchase_date = (business_today() - Months::new(4)).to_string();
    billing
        .create_plan(authorized(request, &token))
        .await
        .unwrap();

    let list = |statuses: Vec<BillStatus>| {
        let request = ListBillsRequest {
            account_id: account_id.clone(),
            statuses: statuses.into_iter().map(|s| s as i32).collect(),
            page_size: 100,
            page_token: String::new(),
        };
        let mut billing = billing.clone();
        let token = token.clone();
        async move {
            billing
                .list_bills(authorized(request, &token))
                .await
                .unwrap()
                .into_inner()
                .bills
        }
    };
    let due = list(vec![BillStatus::Due]).await;
    let upcoming = list(vec![BillStatus::Upcoming]).await;
    assert_eq!((due.len(), upcoming.len()), (4, 8));
    assert_eq!(due.iter().map(|b| b.seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert_eq!(list(vec![]).await.len(), 12, "no filter: every unpaid bill");
    assert!(list(vec![BillStatus::Paid]).await.is_empty());

    let summary = billing
        .get_account_summary(authorized(
            GetAccountSummaryRequest {
                account_id: account_id.clone(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner();
    let cents = |amount: &str| -> i64 { amount.replace('.', "").parse().unwrap() };
    let due_sum: i64 = due
        .iter()
        .map(|b| cents(&b.outstanding.clone().unwrap().amount))
        .sum();
    assert_eq!(cents(&summary.due_now.unwrap().amount), due_sum);
    assert_eq!(due_sum, 4 * 106_619, "four installments of 1066.19");
    assert_eq!(summary.next_due_date, upcoming[0].due_date);
    assert_eq!(summary.business_date, business_today().to_string());
    app.stop().await;
}

async fn list_bills_pages_without_gaps_or_repeats(backend: Backend, test: &str) {
    let Some(app) = TestApp::spawn(backend, test).await else {
        return;
    };
    let account_id = open_account(&app, "c-pages", "50000.00").await;
    let token = app.service_token(READ_WRITE);
    let mut billing = app.billing().await;
    for i in 0..3 {
        let request = new_plan(&account_id, &format!("o-{i}"), "cash-loan", 24, "1000.00");
        billing
            .create_plan(authorized(request, &token))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut page_token = String::new();
    for _ in 0..20 {
        let request = ListBillsRequest {
            account_id: account_id.clone(),
            statuses: Vec::new(),
            page_size: 7,
            page_token: page_token.clone(),
        };
        let page = billing
            .list_bills(authorized(request, &token))
            .await
            .unwrap()
            .into_inner();
        assert!(page.bills.len() <= 7);
        seen.extend(
            page.bills
                .into_iter()
                .map(|b| (b.due_date, b.plan_id, b.seq, b.bill_id)),
        );
        page_token = page.next_page_token;
        if page_token.is_empty() {
            break;
        }
    }
    assert_eq!(seen.len(), 72, "3 plans x 24 bills");
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "sorted by due date, then plan, then seq");
    sorted.dedup_by(|a, b| a.3 == b.3);
    assert_eq!(sorted.len(), 72, "no bill repeats");

    let bad_token = ListBillsRequest {
        account_id: account_id.clone(),
        page_token: "not-a-token".into(),
        ..Default::default()
    };
    let status = expect_code(
        billing.list_bills(authorized(bad_token, &token)).await,
        Code::InvalidArgument,
    );
    assert_eq!(violated_fields(&status), ["page_token"]);
    app.stop().await;
}

async fn malformed_plans_are_refused_and_write_nothing(backend: Backend, test: &str) {
    let Some(app) = TestApp::spawn(backend, test).await else {
        return;
    };
    let account_id = open_account(&app, "c-bad", "50000.00").await;
    let token = app.service_token(READ_WRITE);
    let mut billing = app.billing().await;
    let tomorrow = (business_today() + chrono::Days::new(1)).to_string();
    let six_years_ago = (business_today() - Months::new(72)).to_string();
    // (what is wrong, how to break a valid request, the code, the field or reason it names)
    type Breaker = Box<dyn Fn(&mut CreatePlanRequest)>;
    let cases: Vec<(&str, Breaker, Code, &str)> = vec![
        (
            "term not offered",
            Box::new(|r| r.term_count = 24),
            Code::FailedPrecondition,
            "TERM_NOT_OFFERED",
        ),
        (
            "zero terms",
            Box::new(|r| r.term_count = 0),
            Code::InvalidArgument,
            "term_count",
        ),
        (
            "down payment above price",
            Box::new(|r| r.down_payment = Some(Money::new("CNY", "6000.00"))),
            Code::InvalidArgument,
            "down_payment",
        ),
        (
            "principal below min",
            Box::new(|r| r.price = Some(Money::new("CNY", "99.99"))),
            Code::InvalidArgument,
            "price",
        ),
        (
            "principal above max",
            Box::new(|r| r.price = Some(Money::new("CNY", "50000.01"))),
            Code::InvalidArgument,
            "price",
        ),
        (
            "unknown product",
            Box::new(|r| r.product_id = "no-such-product".into()),
            Code::NotFound,
            "",
        ),
        (
            "empty product",
            Box::new(|r| r.product_id.clear()),
            Code::InvalidArgument,
            "product_id",
        ),
        (
            "unknown account",
            Box::new(|r| r.account_id = "acc_unknown".into()),
            Code::NotFound,
            "",
        ),
        (
            "future purchase date",
            Box::new(move |r| r.purchase_date = tomorrow.clone()),
            Code::InvalidArgument,
            "purchase_date",
        ),
        (
            "purchase six years ago",
            Box::new(move |r| r.purchase_date = six_years_ago.clone()),
            Code::InvalidArgument,
            "purchase_date",
        ),
        (
            "malformed date",
            Box::new(|r| r.purchase_date = "2026-02-30".into()),
            Code::InvalidArgument,
            "purchase_date",
        ),
        (
            "zero price",
            Box::new(|r| r.price = Some(Money::new("CNY", "0.00"))),
            Code::InvalidArgument,
            "price",
        ),
        (
            "negative price",
            Box::new(|r| r.price = Some(Money::new("CNY", "-5999.00"))),
            Code::InvalidArgument,
            "price.amount",
        ),
        (
            "missing price",
            Box::new(|r| r.price = None),
            Code::InvalidArgument,
            "price",
        ),
        (
            "empty order_ref",
            Box::new(|r| r.order_ref.clear()),
            Code::InvalidArgument,
            "order_ref",
        ),
    ];
    for (what, break_it, code, detail) in cases {
        let mut request = new_plan(&account_id, "o-bad", "mall-fee", 12, "5999.00");
        break_it(&mut request);
        let status = expect_code(billing.create_plan(authorized(request, &token)).await, code);
        match code {
            Code::InvalidArgument => {
                assert_eq!(violated_fields(&status), [detail], "{what}: {status:?}")
            }
            Code::FailedPrecondition => {
                assert_eq!(reason(&status).as_deref(), Some(detail), "{what}")
            }
            _ => {}
        }
    }
    assert_eq!(
        (
            app.billing_rows("plans").await,
            app.billing_rows("bills").await
        ),
        (0, 0)
    );
    assert_eq!(available_credit(&app, &account_id).await, "50000.00");
    app.stop().await;
}

/// Two billing-svc replicas on one database: plans racing through different replicas
/// still respect the limit and the order_ref, since the database decides.
async fn replicas_on_one_database_stay_correct(backend: Backend, test: &str) {
    let Some(mut app) = TestApp::spawn(backend, test).await else {
        return;
    };
    let replica = app.spawn_billing_replica().await;
    let account_id = open_account(&app, "c-replicas", "10000.00").await;
    let token = app.service_token(READ_WRITE);
    let race = |requests: Vec<CreatePlanRequest>| {
        let calls: Vec<_> = requests
            .into_iter()
            .zip([app.billing_addr, replica].into_iter().cycle())
            .map(|(request, addr)| {
                let request = authorized(request, &token);
                tokio::spawn(async move {
                    BillingServiceClient::new(connect(addr).await)
                        .create_plan(request)
                        .await
                })
            })
            .collect();
        async move {
            let mut results = Vec::new();
            for call in calls {
                results.push(call.await.unwrap().map(|response| response.into_inner()));
            }
            results
        }
    };

    let over_limit = race(vec![
        new_plan(&account_id, "r-a", "mall-free", 6, "6000.00"),
        new_plan(&account_id, "r-b", "mall-free", 6, "6000.00"),
    ])
    .await;
    assert_eq!(
        over_limit.iter().filter(|result| result.is_ok()).count(),
        1,
        "{over_limit:?}"
    );
    assert_eq!(available_credit(&app, &account_id).await, "4000.00");

    let same_order = race(
        (0..10)
            .map(|_| new_plan(&account_id, "r-same", "mall-free", 3, "300.00"))
            .collect(),
    )
    .await;
    let mut plan_ids: Vec<_> = same_order
        .into_iter()
        .map(|result| {
            result
                .expect("every caller gets the plan")
                .plan
                .unwrap()
                .plan_id
        })
        .collect();
    plan_ids.dedup();
    assert_eq!(plan_ids.len(), 1);
    assert_eq!(app.billing_rows("plans").await, 2);
    assert_eq!(available_credit(&app, &account_id).await, "3700.00");
    app.stop().await;
}

async fn the_credit_record_lists_bills_due_so_far(backend: Backend, test: &str) {
    let Some(app) = TestApp::spawn(backend, test).await else {
        return;
    };
    let account_id = open_account(&app, "c-record", "50000.00").await;
    let token = app.service_token(READ_WRITE);
    let mut billing = app.billing().await;
    let mut request = new_plan(&account_id, "o-record", "mall-free", 6, "600.00");
    request.purchase_date = (business_today() - Months::new(2)).to_string();
    billing
        .create_plan(authorized(request, &token))
        .await
        .unwrap();
    let request = GetCreditRecordRequest {
        account_id: account_id.clone(),
    };
    let record = billing
        .get_credit_record(authorized(request, &token))
        .await
        .unwrap()
        .into_inner();
    let standings: Vec<_> = record
        .entries
        .iter()
        .map(|entry| (entry.seq, entry.standing()))
        .collect();
    assert_eq!(
        standings,
        [(1, RepaymentStanding::Due), (2, RepaymentStanding::Due)]
    );
    assert_eq!(
        record.entries[1].days_past_due, 0,
        "the second bill is due today"
    );
    assert_eq!(
        (
            record.on_time_count,
            record.late_count,
            record.overdue_count
        ),
        (0, 0, 0)
    );
    assert_eq!(
        record.worst_bucket(),
        DelinquencyBucket::N,
        "nothing is overdue before day close marks it"
    );
    app.stop().await;
}
