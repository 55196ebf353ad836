//! The events horizon on PostgreSQL: writers draw ids without waiting on each other,
//! and a reader never passes over an id whose transaction is still open.

use billpay_contracts::billing::v1::{
    WatchEventsRequest, billing_service_client::BillingServiceClient,
};
use integration_tests::{Backend, TestApp, authorized, connect};

use crate::support::{POLL_DEADLINE, new_plan, open_account, poll_until};

/// The key billing-svc's event writers hold shared (storage/events.rs).
const EVENTS_LOCK_KEY: i64 = 0x0000_6576_656e_7473;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_waits_for_an_event_id_still_in_flight() {
    let test = "events::a_reader_waits_for_an_event_id_still_in_flight";
    let Some(app) = TestApp::spawn(Backend::Postgres, test).await else {
        return;
    };
    let account_id = open_account(&app, "c-horizon", "50000.00").await;

    // A writer that has drawn an id (10, say) and not committed yet.
    let mut open = app.billing_db.pool().begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock_shared($1)")
        .bind(EVENTS_LOCK_KEY)
        .execute(&mut *open)
        .await
        .unwrap();
    let in_flight_id: i64 = sqlx::query_scalar(
        "INSERT INTO events (account_id, kind, subject_id, plan_id, created_at_micros) \
         VALUES ($1, 'PLAN_CREATED', 'plan_in_flight', 'plan_in_flight', 0) RETURNING event_id",
    )
    .bind(account_id.as_str())
    .fetch_one(&mut *open)
    .await
    .unwrap();

    // Another writer draws a higher id and commits: it does not wait for the first.
    let created = tokio::time::timeout(
        POLL_DEADLINE,
        app.billing().await.create_plan(authorized(
            new_plan(&account_id, "order-1", "mall-free", 3, "300.00"),
            &app.service_token(&["billing:write"]),
        )),
    )
    .await
    .expect("a writer is not held up by another writer's open transaction")
    .unwrap()
    .into_inner();
    let plan_id = created.plan.unwrap().plan_id;

    // A watcher from the start: it must see the lower id first, once it commits.
    let token = app.service_token(&["billing:events"]);
    let addr = app.billing_addr;
    let watcher = tokio::spawn(async move {
        let mut stream = BillingServiceClient::new(connect(addr).await)
            .watch_events(authorized(
                WatchEventsRequest {
                    after_id: 0,
                    ..Default::default()
                },
                &token,
            ))
            .await
            .unwrap()
            .into_inner();
        let mut seen = Vec::new();
        while seen.len() < 2 {
            let next = tokio::time::timeout(POLL_DEADLINE, stream.message())
                .await
                .expect("an event in time");
            let event = next.unwrap().unwrap().event.unwrap();
            seen.push((event.event_id, event.plan_id));
        }
        seen
    });
    // Commit only once the watcher is seen waiting for the horizon: a reader that
    // did not wait would have read the later id by now and passed this one.
    let waiting = app.billing_db.clone();
    poll_until("the watcher waits for the writer in flight", || {
        let waiting = waiting.clone();
        async move {
            let count: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
            )
            .fetch_one(waiting.pool())
            .await
            .unwrap();
            count > 0
        }
    })
    .await;
    open.commit().await.unwrap();
    let seen = watcher.await.unwrap();
    assert_eq!(
        seen[0].0, in_flight_id,
        "the id in flight is not passed over: {seen:?}"
    );
    assert_eq!(seen[0].1, "plan_in_flight");
    assert_eq!(seen[1].1, plan_id, "then the later one: {seen:?}");
    assert!(seen[0].0 < seen[1].0);
    app.stop().await;
}

/// `stop_at_end`: the replay ends with OK once caught up, so a script's one-shot read
/// (the README's grpcurl line) exits cleanly instead of waiting for a deadline.
async fn a_one_shot_watch_ends_once_caught_up(backend: Backend, test: &str) {
    let Some(app) = TestApp::spawn(backend, test).await else {
        return;
    };
    let account_id = open_account(&app, "c-one-shot", "50000.00").await;
    app.billing()
        .await
        .create_plan(authorized(
            new_plan(&account_id, "order-1", "mall-free", 3, "300.00"),
            &app.service_token(&["billing:write"]),
        ))
        .await
        .unwrap();
    let mut stream = app
        .billing()
        .await
        .watch_events(authorized(
            WatchEventsRequest {
                after_id: 0,
                stop_at_end: true,
                ..Default::default()
            },
            &app.service_token(&["billing:events"]),
        ))
        .await
        .unwrap()
        .into_inner();
    let mut kinds = Vec::new();
    loop {
        let next = tokio::time::timeout(POLL_DEADLINE, stream.message())
            .await
            .expect("the one-shot stream ends by itself");
        match next.expect("it ends with OK, not an error") {
            Some(message) => kinds.push(message.event.unwrap().kind()),
            None => break,
        }
    }
    assert!(
        kinds.contains(&billpay_contracts::billing::v1::EventKind::PlanCreated),
        "{kinds:?}"
    );
    app.stop().await;
}

crate::on_both_backends!(a_one_shot_watch_ends_once_caught_up);
