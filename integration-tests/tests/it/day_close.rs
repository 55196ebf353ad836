//! Day close over gRPC (SPEC §5.7–5.8): overdue after grace, penalties, delinquency,
//! credit balance, reminders and the event stream, idempotence and catch-up.

use billpay_contracts::{
    billing::v1::{
        Bill, BillStatus, CreatePlanRequest, DelinquencyBucket, EventKind, GetAccountRequest,
        GetCreditRecordRequest, GetPlanRequest, RepaymentStanding, RunDayCloseRequest,
        WatchEventsRequest, billing_service_client::BillingServiceClient,
    },
    common::v1::Money,
    payment::v1::PaymentMethod,
};
use chrono::{Days, Months, NaiveDate};
use integration_tests::{Backend, TestApp, authorized, connect};
use tonic::Code;

use crate::{
    on_both_backends,
    support::{
        bills_target, business_today, close, expect_code, follow_run, new_plan, open_account, pay,
        poll_until, reason, repayment, violated_fields,
    },
};

on_both_backends!(
    the_spec_example_goes_overdue_with_penalty_after_grace,
    closing_twice_or_catching_up_equals_daily_closes,
    paying_within_grace_is_on_time_and_paying_late_pays_the_penalty_first,
    a_delinquent_account_cannot_open_a_plan,
    credit_balance_pays_the_next_due_bill_at_day_close,
    watch_events_replays_then_resumes_without_gaps_or_repeats,
    day_close_refuses_bad_dates_and_other_scopes,
    the_automatic_close_catches_up_finished_days,
    two_replicas_share_a_close_and_close_each_account_once,
);

const ALL: &[&str] = &[
    "billing:read",
    "billing:write",
    "billing:admin",
    "billing:events",
];

/// Opens `customer_ref` and a plan whose first bill falls due `first_due_days_ago` days
/// before today (negative: in the future). Returns the account and the plan's bills.
async fn plan_due(
    app: &TestApp,
    customer_ref: &str,
    product: &str,
    price: &str,
    first_due_days_ago: i64,
) -> (String, Vec<Bill>) {
    let account_id = open_account(app, customer_ref, "50000.00").await;
    let today = last_closable_day();
    let first_due = if first_due_days_ago >= 0 {
        today - Days::new(first_due_days_ago as u64)
    } else {
        today + Days::new(first_due_days_ago.unsigned_abs())
    };
    let mut request: CreatePlanRequest = new_plan(
        &account_id,
        &format!("o-{customer_ref}"),
        product,
        12,
        price,
    );
    request.purchase_date = (first_due - Months::new(1)).to_string();
    let plan = app
        .billing()
        .await
        .create_plan(authorized(request, &app.service_token(ALL)))
        .await
        .unwrap();
    (account_id, plan.into_inner().plan.unwrap().bills)
}

/// The latest day a close accepts: yesterday (today is closed once it has ended).
fn last_closable_day() -> NaiveDate {
    business_today() - Days::new(1)
}

async fn bills_of(app: &TestApp, plan_id: &str) -> Vec<Bill> {
    let request = GetPlanRequest {
        plan_id: plan_id.into(),
    };
    let plan = app
        .billing()
        .await
        .get_plan(authorized(request, &app.service_token(ALL)))
        .await
        .unwrap();
    plan.into_inner().plan.unwrap().bills
}

fn due(bill: &Bill) -> NaiveDate {
    bill.due_date.parse().unwrap()
}

fn amount(money: &Option<Money>) -> String {
    money.as_ref().unwrap().amount.clone()
}

async fn account_status(app: &TestApp, account_id: &str) -> i32 {
    let request = GetAccountRequest {
        account_id: account_id.into(),
    };
    let account = app
        .billing()
        .await
        .get_account(authorized(request, &app.service_token(ALL)))
        .await
        .unwrap();
    account.into_inner().account.unwrap().status
}

async fn pay_bill(app: &TestApp, account_id: &str, bill: &Bill, key: &str, amount_due: &str) {
    let request = repayment(
        key,
        account_id,
        bills_target(&[&bill.bill_id]),
        amount_due,
        PaymentMethod::BankCard,
        "tok_4242",
    );
    assert!(pay(app, request).await.unwrap().applied);
}

async fn the_spec_example_goes_overdue_with_penalty_after_grace(backend: Backend, test: &str) {
    let Some(app) = TestApp::spawn(backend, test).await else {
        return;
    };
    // cash-loan 12000.00 at 1 %: bill 1 is 946.19 principal + 120.00 interest.
    let (account_id, bills) = plan_due(&app, "c-spec", "cash-loan", "12000.00", 10).await;
    let first = &bills[0];
    assert_eq!(amount(&first.principal), "946.19");
    close(&app, due(first) + Days::new(3)).await;
    let after_grace_day = bills_of(&app, &first.plan_id).await;
    assert_eq!(
        after_grace_day[0].status(),
        BillStatus::Due,
        "still DUE at the close of due + 3"
    );
    assert_eq!(amount(&after_grace_day[0].penalty), "0.00");

    close(&app, due(first) + Days::new(4)).await;
    let overdue = bills_of(&app, &first.plan_id).await;
    assert_eq!(overdue[0].status(), BillStatus::Overdue);
    assert_eq!(amount(&overdue[0].penalty), "1.88", "4 × 0.47");
    assert_eq!(amount(&overdue[0].amount_due), "1068.07");
    assert_eq!(account_status(&app, &account_id).await, 2, "DELINQUENT");
    app.stop().await;
}

/// (seq, status, penalty, outstanding) of each bill: what a close may change.
fn snapshot(bills: &[Bill]) -> Vec<(i32, i32, String, String)> {
    bills
        .iter()
        .map(|b| (b.seq, b.status, amount(&b.penalty), amount(&b.outstanding)))
        .collect()
}

async fn closing_twice_or_catching_up_equals_daily_closes(backend: Backend, test: &str) {
    let Some(daily) = TestApp::spawn(backend, &format!("{test}::daily")).await else {
        return;
    };
    let Some(once) = TestApp::spawn(backend, &format!("{test}::once")).await else {
        return;
    };
    // Bill 1 fell due 40 days ago and bill 2 ten days ago: both overdue by today.
    let (_, daily_bills) = plan_due(&daily, "c-daily", "cash-loan", "12000.00", 40).await;
    let (_, once_bills) = plan_due(&once, "c-once", "cash-loan", "12000.00", 40).await;
    let today = last_closable_day();
    let mut day = due(&daily_bills[0]);
    while day <= today {
        close(&daily, day).await;
        day = day + Days::new(1);
    }
    close(&once, today).await;
    let daily_after = bills_of(&daily, &daily_bills[0].plan_id).await;
    let once_after = bills_of(&once, &once_bills[0].plan_id).await;
    assert_eq!(
        snapshot(&daily_after),
        snapshot(&once_after),
        "a back-dated plan closed once = closed daily"
    );
    assert_ne!(amount(&once_after[0].penalty), "0.00");

    close(&once, today).await;
    assert_eq!(
        snapshot(&bills_of(&once, &once_bills[0].plan_id).await),
        snapshot(&once_after),
        "a date twice changes nothing"
    );
    close(&once, today - Days::new(5)).await;
    assert_eq!(
        snapshot(&bills_of(&once, &once_bills[0].plan_id).await),
        snapshot(&once_after),
        "an earlier date changes nothing"
    );
    daily.stop().await;
    once.stop().await;
}

async fn paying_within_grace_is_on_time_and_paying_late_pays_the_penalty_first(
    backend: Backend,
    test: &str,
) {
    let Some(app) = TestApp::spawn(backend, test).await else {
        return;
    };
    let (on_time_account, on_time_bills) =
        plan_due(&app, "c-ontime", "mall-fee", "5999.00", 0).await;
    pay_bill(
        &app,
        &on_time_account,
        &on_time_bills[0],
        "k-on-time",
        "535.91",
    )
    .await;
    let (late_account, late_bills) = plan_due(&app, "c-late", "mall-fee", "5999.00", 10).await;
    close(&app, last_closable_day()).await;

    let settled = bills_of(&app, &on_time_bills[0].plan_id).await;
    assert_eq!(
        amount(&settled[0].penalty),
        "0.00",
        "paid within grace: no penalty"
    );
    let record = |account_id: &str| {
        let request = GetCreditRecordRequest {
            account_id: account_id.into(),
        };
        let token = app.service_token(ALL);
        let addr = app.billing_addr;
        async move {
            BillingServiceClient::new(connect(addr).await)
                .get_credit_record(authorized(request, &token))
                .await
                .unwrap()
                .into_inner()
        }
    };
    let on_time = record(&on_time_account).await;
    assert_eq!(on_time.entries[0].standing(), RepaymentStanding::OnTime);
    assert_eq!(on_time.worst_bucket(), DelinquencyBucket::N);

    let overdue = bills_of(&app, &late_bills[0].plan_id).await;
    assert_eq!(overdue[0].status(), BillStatus::Overdue);
    // Ten days, or fewer when a short month clamped the due date.
    let days = (last_closable_day() - due(&overdue[0])).num_days();
    let penalty = amount(&overdue[0].penalty);
    assert_eq!(
        penalty,
        format!("{}.{:02}", days * 25 / 100, days * 25 % 100),
        "{days} days × round(499.92 × 0.0005) = 0.25"
    );
    assert_eq!(account_status(&app, &late_account).await, 2, "DELINQUENT");
    pay_bill(
        &app,
        &late_account,
        &overdue[0],
        "k-late",
        &amount(&overdue[0].amount_due),
    )
    .await;
    let paid = bills_of(&app, &late_bills[0].plan_id).await;
    assert_eq!(paid[0].status(), BillStatus::Paid);
    assert_eq!(
        amount(&paid[0].paid.as_ref().unwrap().penalty),
        penalty,
        "the penalty was paid"
    );
    assert_eq!(
        account_status(&app, &late_account).await,
        1,
        "ACTIVE again: nothing is OVERDUE"
    );
    let late = record(&late_account).await;
    assert_eq!(late.entries[0].standing(), RepaymentStanding::Late);
    // Penalty days ran through yesterday's close; it was paid today, a day later.
    assert_eq!(i64::from(late.entries[0].days_past_due), days + 1);
    assert_eq!(late.worst_bucket(), DelinquencyBucket::M1);
    app.stop().await;
}

async fn a_delinquent_account_cannot_open_a_plan(backend: Backend, test: &str) {
    let Some(app) = TestApp::spawn(backend, test).await else {
        return;
    };
    let (account_id, _) = plan_due(&app, "c-delinquent", "mall-fee", "5999.00", 10).await;
    close(&app, last_closable_day()).await;
    let request = new_plan(&account_id, "o-more", "mall-free", 3, "300.00");
    let status = expect_code(
        app.billing()
            .await
            .create_plan(authorized(request, &app.service_token(ALL)))
            .await,
        Code::FailedPrecondition,
    );
    assert_eq!(reason(&status).as_deref(), Some("ACCOUNT_DELINQUENT"));
    app.stop().await;
}

async fn credit_balance_pays_the_next_due_bill_at_day_close(backend: Backend, test: &str) {
    let Some(app) = TestApp::spawn(backend, test).await else {
        return;
    };
    // Bills 1 and 2 are due (31 and about 0 days ago); bill 1 is paid, then captured again.
    let (account_id, bills) = plan_due(&app, "c-credit", "mall-fee", "5999.00", 31).await;
    let bills_now = bills_of(&app, &bills[0].plan_id).await;
    assert_eq!(
        bills_now[1].status(),
        BillStatus::Due,
        "bill 2 is due: {:?}",
        bills_now[1].due_date
    );
    pay_bill(&app, &account_id, &bills[0], "k-a", "535.91").await;
    pay_bill_again(&app, &account_id, &bills[0]).await;
    let credit = |app: &TestApp| {
        let request = GetAccountRequest {
            account_id: account_id.clone(),
        };
        let (addr, token) = (app.billing_addr, app.service_token(ALL));
        async move {
            let account = BillingServiceClient::new(connect(addr).await)
                .get_account(authorized(request, &token))
                .await;
            account
                .unwrap()
                .into_inner()
                .account
                .unwrap()
                .credit_balance
                .unwrap()
                .amount
        }
    };
    assert_eq!(credit(&app).await, "535.91");
    close(&app, last_closable_day()).await;
    let after = bills_of(&app, &bills[0].plan_id).await;
    assert_eq!(
        after[1].status(),
        BillStatus::Paid,
        "the credit balance paid bill 2"
    );
    assert_eq!(credit(&app).await, "0.00");
    app.stop().await;
}

/// A second capture for a bill already paid, delivered as payment-svc delivers one
/// (two keys paying one bill end this way): billing keeps it as credit balance.
async fn pay_bill_again(app: &TestApp, account_id: &str, bill: &Bill) {
    let request = billpay_contracts::billing::v1::ApplyRepaymentRequest {
        payment_id: "pay_second_capture".into(),
        account_id: account_id.into(),
        amount: Some(Money::new("CNY", "535.91")),
        target: Some(bills_target(&[&bill.bill_id])),
    };
    let applied = app
        .billing()
        .await
        .apply_repayment(authorized(request, &app.service_token(&["billing:apply"])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(amount(&applied.added_to_credit_balance), "535.91");
}

async fn watch_events_replays_then_resumes_without_gaps_or_repeats(backend: Backend, test: &str) {
    let Some(app) = TestApp::spawn(backend, test).await else {
        return;
    };
    // A bill due in one to three days; pick a day that month-end clamping keeps.
    let days_ahead = (1..=3)
        .find(|k| {
            let first_due = last_closable_day() + Days::new(*k);
            (first_due - Months::new(1)) + Months::new(1) == first_due
        })
        .unwrap_or(1);
    let (soon_account, _) =
        plan_due(&app, "c-soon", "mall-fee", "5999.00", -(days_ahead as i64)).await;
    let (late_account, late_bills) = plan_due(&app, "c-overdue", "mall-fee", "5999.00", 10).await;
    close(&app, last_closable_day()).await;
    let overdue = bills_of(&app, &late_bills[0].plan_id).await;
    pay_bill(
        &app,
        &late_account,
        &overdue[0],
        "k-1",
        &amount(&overdue[0].amount_due),
    )
    .await;

    let token = app.service_token(&["billing:events"]);
    let read = |after_id: i64, count: usize| {
        let (addr, token) = (app.billing_addr, token.clone());
        async move {
            let mut stream = BillingServiceClient::new(connect(addr).await)
                .watch_events(authorized(
                    WatchEventsRequest {
                        after_id,
                        ..Default::default()
                    },
                    &token,
                ))
                .await
                .unwrap()
                .into_inner();
            let mut events = Vec::new();
            while events.len() < count {
                let next =
                    tokio::time::timeout(crate::support::POLL_DEADLINE, stream.message()).await;
                events.push(
                    next.expect("an event in time")
                        .unwrap()
                        .unwrap()
                        .event
                        .unwrap(),
                );
            }
            events
        }
    };
    // Wait until the stream has what the scenario wrote, then read it in two sittings.
    let total = app.billing_rows("events").await;
    let total = usize::try_from(total).unwrap();
    let first = read(0, 3).await;
    let rest = read(first.last().unwrap().event_id, total - 3).await;
    let all: Vec<_> = first.iter().chain(&rest).collect();
    let ids: Vec<i64> = all.iter().map(|e| e.event_id).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(ids, sorted, "in order, nothing repeated");
    assert_eq!(ids.len(), total, "nothing missed");
    let kinds: Vec<EventKind> = all.iter().map(|e| e.kind()).collect();
    for kind in [
        EventKind::PlanCreated,
        EventKind::BillDueSoon,
        EventKind::BillOverdue,
        EventKind::RepaymentApplied,
    ] {
        assert!(kinds.contains(&kind), "{kind:?} in {kinds:?}");
    }
    let soon = all
        .iter()
        .find(|e| e.kind() == EventKind::BillDueSoon)
        .unwrap();
    assert_eq!(soon.account_id, soon_account);

    // A watcher that is caught up receives what happens next.
    let tail = tokio::spawn(read(*ids.last().unwrap(), 1));
    let (_, more) = plan_due(&app, "c-later", "mall-free", "300.00", -20).await;
    let next = tail.await.unwrap();
    assert_eq!(next[0].kind(), EventKind::PlanCreated);
    assert_eq!(next[0].plan_id, more[0].plan_id);
    app.stop().await;
}

async fn day_close_refuses_bad_dates_and_other_scopes(backend: Backend, test: &str) {
    let Some(app) = TestApp::spawn(backend, test).await else {
        return;
    };
    let mut billing = app.billing().await;
    let tomorrow = (business_today() + Days::new(1)).to_string();
    let today = business_today().to_string();
    let before_the_floor = (business_today() - Months::new(60) - Days::new(1)).to_string();
    for bad in [
        tomorrow.as_str(),
        today.as_str(),
        before_the_floor.as_str(),
        "0000-01-01",
        "2026-02-30",
        "yesterday",
    ] {
        let request = RunDayCloseRequest {
            as_of: bad.into(),
            run_id: 0,
        };
        let status = expect_code(
            billing
                .run_day_close(authorized(request, &app.service_token(ALL)))
                .await,
            Code::InvalidArgument,
        );
        assert_eq!(violated_fields(&status), ["as_of"], "{bad}");
    }
    let today = RunDayCloseRequest {
        as_of: business_today().to_string(),
        run_id: 0,
    };
    for token in [
        app.service_token(&["billing:read", "billing:write"]),
        app.operator_token("op"),
        app.customer_token("acc_1"),
    ] {
        expect_code(
            billing
                .run_day_close(authorized(today.clone(), &token))
                .await,
            Code::PermissionDenied,
        );
    }
    let closes = app.billing_rows("day_closes").await;
    assert_eq!(closes, 0, "nothing closed");
    app.stop().await;
}

async fn the_automatic_close_catches_up_finished_days(backend: Backend, test: &str) {
    let Some(mut app) = TestApp::spawn(backend, test).await else {
        return;
    };
    let (account_id, bills) = plan_due(&app, "c-auto", "cash-loan", "12000.00", 9).await;
    // A billing-svc with the automatic close starts, finds no day closed, and closes
    // yesterday: bill 1, due ten days ago, is past grace by then.
    app.spawn_billing_with_auto_close().await;
    let yesterday = (business_today() - Days::new(1)).to_string();
    poll_until("the automatic close has run", || async {
        let closed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM day_closes WHERE as_of = $1")
            .bind(yesterday.as_str())
            .fetch_one(app.billing_db.pool())
            .await
            .unwrap();
        closed == 1
    })
    .await;
    let after = bills_of(&app, &bills[0].plan_id).await;
    assert_eq!(after[0].status(), BillStatus::Overdue);
    assert_eq!(
        amount(&after[0].penalty),
        "4.23",
        "9 days (through yesterday) × 0.47"
    );
    assert_eq!(account_status(&app, &account_id).await, 2, "DELINQUENT");
    app.stop().await;
}

/// A close asked of two replicas at once is one run: they split its accounts between
/// them, each account is closed by exactly one of them, and the outcome is what one
/// close gives. The first call answers at once (its deadline leaves no time to wait)
/// and the close goes on in the background.
async fn two_replicas_share_a_close_and_close_each_account_once(backend: Backend, test: &str) {
    const ACCOUNTS: usize = 240;
    let Some(mut app) = TestApp::spawn(backend, test).await else {
        return;
    };
    for n in 0..ACCOUNTS {
        // Bill 1 fell due 40 days ago: every account is overdue with a penalty.
        plan_due(
            &app,
            &format!("c-replicas-{n}"),
            "cash-loan",
            "12000.00",
            40,
        )
        .await;
    }
    let replica = app.spawn_billing_replica().await;
    let as_of = last_closable_day();
    let admin = app.service_token(&["billing:admin"]);
    // Connected before the close starts: the first replica closes from its first
    // call on, so the second must be ready to join the moment the run has an id.
    let mut first = app.billing().await;
    let mut second = BillingServiceClient::new(connect(replica).await);

    let mut hurried = authorized(
        RunDayCloseRequest {
            as_of: as_of.to_string(),
            run_id: 0,
        },
        &admin,
    );
    // The deadline is inside the answer margin: the call starts the run and answers
    // at once, unfinished; the close goes on.
    hurried.set_timeout(std::time::Duration::from_millis(450));
    let started = first.run_day_close(hurried).await.unwrap().into_inner();
    assert!(!started.finished, "{started:?}");

    // Both follow the run the hurried call started: asked for "the run of as_of", a
    // replica whose first call came after the other had finished it would start a
    // second run. An answer given while the accounts were still being listed has
    // no run id yet; the run's row, written with its list, has it.
    let mut run_id = started.run_id;
    if run_id == 0 {
        let db = app.billing_db.clone();
        let date = as_of.to_string();
        poll_until("the run's accounts are listed", || {
            let (db, date) = (db.clone(), date.clone());
            async move {
                let found: Option<i64> =
                    sqlx::query_scalar("SELECT MIN(run_id) FROM day_close_runs WHERE as_of = $1")
                        .bind(date)
                        .fetch_one(db.pool())
                        .await
                        .unwrap();
                found.is_some()
            }
        })
        .await;
        run_id = sqlx::query_scalar("SELECT MIN(run_id) FROM day_close_runs WHERE as_of = $1")
            .bind(as_of.to_string())
            .fetch_one(app.billing_db.pool())
            .await
            .unwrap();
    }
    let (first, second) = tokio::join!(
        follow_run(&mut first, &admin, as_of, run_id),
        follow_run(&mut second, &admin, as_of, run_id),
    );
    let (first, second) = (first.unwrap(), second.unwrap());
    assert!(first.finished && second.finished, "{first:?} {second:?}");
    assert_eq!(first, second, "both replicas answer the one run's summary");
    assert_eq!(first.accounts_to_close, ACCOUNTS as i32);
    assert_eq!(first.accounts_closed, ACCOUNTS as i32);

    let shares: Vec<(Option<String>, i64)> = sqlx::query_as(
        "SELECT closed_by, COUNT(*) FROM day_close_work WHERE run_id = $1 GROUP BY closed_by ORDER BY closed_by",
    )
    .bind(first.run_id)
    .fetch_all(app.billing_db.pool())
    .await
    .unwrap();
    assert_eq!(shares.len(), 2, "two replicas closed accounts: {shares:?}");
    assert!(
        shares
            .iter()
            .all(|(by, closed)| by.is_some() && *closed > 0),
        "{shares:?}"
    );
    assert_eq!(
        shares.iter().map(|(_, closed)| closed).sum::<i64>(),
        ACCOUNTS as i64
    );

    // Each account closed once: the same penalty on every account, the summary's
    // total, and one BILL_OVERDUE event per overdue bill.
    let penalties: Vec<i64> = sqlx::query_scalar(
        "SELECT CAST(SUM(penalty_minor) AS BIGINT) FROM bills GROUP BY account_id",
    )
    .fetch_all(app.billing_db.pool())
    .await
    .unwrap();
    assert_eq!(penalties.len(), ACCOUNTS);
    assert!(
        penalties[0] > 0 && penalties.iter().all(|p| *p == penalties[0]),
        "{penalties:?}"
    );
    assert_eq!(amount(&first.penalties_posted), {
        let total: i64 = penalties.iter().sum();
        format!("{}.{:02}", total / 100, total % 100)
    },);
    let overdue = app.billing_rows("bills WHERE state = 'OVERDUE'").await;
    let overdue_events = app.billing_rows("events WHERE kind = 'BILL_OVERDUE'").await;
    assert_eq!(overdue_events, overdue);
    assert_eq!(i64::from(first.bills_overdue), overdue);

    // Closing the date again is a new run that changes nothing.
    close(&app, as_of).await;
    let again: Vec<i64> = sqlx::query_scalar(
        "SELECT CAST(SUM(penalty_minor) AS BIGINT) FROM bills GROUP BY account_id",
    )
    .fetch_all(app.billing_db.pool())
    .await
    .unwrap();
    assert_eq!(again, penalties);
    app.stop().await;
}
