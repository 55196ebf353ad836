//! PostgreSQL's hot reads (`service_kit::db::Db::read_rows`) keep their connections
//! between reads without sqlx's ping on release, so they must close a connection whose
//! statement failed or was abandoned instead of handing it to the next read.

use std::time::Duration;

use integration_tests::postgres_server_url;
use service_kit::db::{Db, Param};

/// The PostgreSQL backend serving this read.
async fn backend_pid(db: &Db) -> i64 {
    db.read_row("SELECT pg_backend_pid() AS pid", &[], |row| {
        row.integer("pid")
    })
    .await
    .unwrap()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_reads_reuse_clean_connections_and_close_the_others() {
    let test = "db_reads::postgres_reads_reuse_clean_connections_and_close_the_others";
    let Some(server_url) = postgres_server_url(test) else {
        return;
    };
    // Two connections in all: one read connection, so every read below shares it.
    let db = Db::connect(&server_url, 2).await.unwrap();

    let first = backend_pid(&db).await;
    assert_eq!(
        backend_pid(&db).await,
        first,
        "a read that ended cleanly gives its connection to the next read"
    );

    // A failed statement: its connection is closed, the next read gets a new one.
    let failed = db
        .read_rows("SELECT x FROM no_such_table", &[], |row| row.integer("x"))
        .await;
    assert!(failed.is_err(), "reading a missing table must fail");
    let after_failure = backend_pid(&db).await;
    assert_ne!(
        after_failure, first,
        "a failed read's connection was reused"
    );

    // An abandoned statement (its caller gave up waiting): the next read must not get
    // that connection, still busy with the old statement, nor wait for it.
    let abandoned = tokio::time::timeout(
        Duration::from_millis(200),
        db.read_rows(
            "SELECT 1 AS slept FROM pg_sleep($1)",
            &[Param::Integer(30)],
            |row| row.integer("slept"),
        ),
    )
    .await;
    assert!(
        abandoned.is_err(),
        "the 30 s read should have been abandoned"
    );
    let started = tokio::time::Instant::now();
    let after_abandon = backend_pid(&db).await;
    assert_ne!(
        after_abandon, after_failure,
        "an abandoned read's connection was reused"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the read after an abandoned one waited {:?}",
        started.elapsed()
    );
    assert_eq!(backend_pid(&db).await, after_abandon);
}
