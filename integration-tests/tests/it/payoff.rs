//! Early payoff (提前还款) end to end, for each method: the quote owes what is due,
//! the remaining principal and only the current period's interest pro rata by days
//! (or its fee); paying it settles the plan early and frees the whole credit limit.

use billpay_contracts::{
    billing::v1::{
        Bill, BillStatus, CreatePlanRequest, GetAccountRequest, GetPlanRequest, PlanStatus,
        QuoteRepaymentRequest, ReverseRepaymentRequest,
    },
    common::v1::{Money, PlanPayoff, RepaymentTarget, repayment_target::Kind},
    payment::v1::{PaymentMethod, PaymentStatus},
};
use chrono::{Days, Months, NaiveDate};
use integration_tests::{Backend, TestApp, authorized};
use tonic::Code;

use crate::{
    on_both_backends,
    support::{business_today, expect_code, new_plan, open_account, pay, reason, repayment},
};

on_both_backends!(
    equal_installment_pays_off_early,
    equal_principal_pays_off_early,
    flat_fee_pays_off_early,
    interest_free_pays_off_early,
);

const ALL: &[&str] = &["billing:read", "billing:write"];

fn cents(money: &Option<Money>) -> i64 {
    money
        .as_ref()
        .unwrap()
        .amount
        .replace('.', "")
        .parse()
        .unwrap()
}

fn date(text: &str) -> NaiveDate {
    text.parse().unwrap()
}

/// What the payoff must owe, worked out from the bills as shown: bill 1 (due) in full,
/// every later bill's principal, and the current bill's interest × days elapsed /
/// days in its period, half-up (EQUAL_*), or its fee (FLAT_FEE).
fn expected_payoff(bills: &[Bill], today: NaiveDate, product: &str) -> i64 {
    let current = &bills[1];
    let start = date(&bills[0].due_date);
    let period = (date(&current.due_date) - start).num_days();
    let elapsed = (today - start).num_days().clamp(0, period);
    let interest = cents(&current.interest);
    let pro_rata = (2 * interest * elapsed + period) / (2 * period);
    let current_extra = match product {
        "cash-loan" | "cash-loan-ep" => pro_rata,
        "mall-fee" => cents(&current.fee),
        _ => 0,
    };
    cents(&bills[0].amount_due)
        + bills[1..]
            .iter()
            .map(|bill| cents(&bill.principal))
            .sum::<i64>()
        + current_extra
}

async fn pays_off_early(backend: Backend, test: &str, product: &str, price: &str) {
    let Some(app) = TestApp::spawn(backend, test).await else {
        return;
    };
    let account_id = open_account(&app, "c-payoff", "50000.00").await;
    let today = business_today();
    let mut request: CreatePlanRequest = new_plan(&account_id, "o-payoff", product, 12, price);
    // Bill 1 fell due ten days ago; bill 2's period is under way.
    request.purchase_date = (today - Days::new(10) - Months::new(1)).to_string();
    let token = app.service_token(ALL);
    let plan = app
        .billing()
        .await
        .create_plan(authorized(request, &token))
        .await
        .unwrap();
    let plan = plan.into_inner().plan.unwrap();
    assert_eq!(plan.bills[0].status(), BillStatus::Due);

    let target = RepaymentTarget {
        kind: Some(Kind::PlanPayoff(PlanPayoff {
            plan_id: plan.plan_id.clone(),
        })),
    };
    let quote_request = QuoteRepaymentRequest {
        account_id: account_id.clone(),
        target: Some(target.clone()),
    };
    let quote = app
        .billing()
        .await
        .quote_repayment(authorized(quote_request, &token))
        .await
        .unwrap()
        .into_inner();
    let owed = cents(&quote.amount);
    assert_eq!(
        owed,
        expected_payoff(&plan.bills, today, product),
        "{product}"
    );
    assert!(
        owed < cents(&plan.outstanding) || product == "mall-free",
        "less than the whole schedule"
    );

    let quoted = quote.amount.clone().unwrap().amount;
    let request = repayment(
        "payoff-1",
        &account_id,
        target,
        &quoted,
        PaymentMethod::BankCard,
        "tok_4242",
    );
    let paid = pay(&app, request).await.unwrap();
    assert_eq!(paid.status(), PaymentStatus::Succeeded);
    assert!(paid.applied);

    let after = app
        .billing()
        .await
        .get_plan(authorized(
            GetPlanRequest {
                plan_id: plan.plan_id.clone(),
            },
            &token,
        ))
        .await;
    let after = after.unwrap().into_inner().plan.unwrap();
    assert_eq!(after.status(), PlanStatus::SettledEarly, "{product}");
    assert_eq!(after.bills[0].status(), BillStatus::Paid);
    assert!(
        after.bills[1..]
            .iter()
            .all(|bill| bill.status() == BillStatus::SettledEarly)
    );
    assert_eq!(cents(&after.outstanding), 0);
    let account = app
        .billing()
        .await
        .get_account(authorized(GetAccountRequest { account_id }, &token))
        .await;
    let account = account.unwrap().into_inner().account.unwrap();
    assert_eq!(
        account.available_credit.unwrap().amount,
        "50000.00",
        "the whole limit is available again"
    );
    assert_eq!(account.credit_balance.unwrap().amount, "0.00");

    // A payoff cannot be undone automatically: the cut charges cannot be restored.
    let reverse = ReverseRepaymentRequest {
        payment_id: paid.payment_id.clone(),
    };
    let refused = app
        .billing()
        .await
        .reverse_repayment(authorized(reverse, &app.service_token(&["billing:apply"])))
        .await;
    let status = expect_code(refused, Code::FailedPrecondition);
    assert_eq!(reason(&status).as_deref(), Some("NOT_REVERSIBLE"));
    let unchanged = app
        .billing()
        .await
        .get_plan(authorized(
            GetPlanRequest {
                plan_id: plan.plan_id.clone(),
            },
            &token,
        ))
        .await;
    assert_eq!(
        unchanged.unwrap().into_inner().plan.unwrap(),
        after,
        "nothing written"
    );
    app.stop().await;
}

async fn equal_installment_pays_off_early(backend: Backend, test: &str) {
    pays_off_early(backend, test, "cash-loan", "12000.00").await;
}

async fn equal_principal_pays_off_early(backend: Backend, test: &str) {
    pays_off_early(backend, test, "cash-loan-ep", "12000.00").await;
}

async fn flat_fee_pays_off_early(backend: Backend, test: &str) {
    pays_off_early(backend, test, "mall-fee", "5999.00").await;
}

async fn interest_free_pays_off_early(backend: Backend, test: &str) {
    pays_off_early(backend, test, "mall-free", "5999.00").await;
}
