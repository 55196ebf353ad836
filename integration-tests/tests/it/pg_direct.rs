//! PostgreSQL's hot reads and writes (`service_kit::db::Db::read_rows`, `write`,
//! `write_rows`, `begin_direct`) keep their connections between statements without
//! sqlx's ping on release, so they must close a connection whose statement failed or
//! was abandoned instead of handing it on, and a transaction dropped without commit
//! must roll back before its connection serves anyone else.

use std::time::Duration;

use integration_tests::postgres_server_url;
use service_kit::db::{Db, DirectWrite, Param, Statements as _};

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
    let test = "pg_direct::postgres_reads_reuse_clean_connections_and_close_the_others";
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

/// The PostgreSQL backend serving this write.
async fn writer_pid(db: &Db) -> i64 {
    db.write_rows("SELECT pg_backend_pid() AS pid", &[], |row| {
        row.integer("pid")
    })
    .await
    .unwrap()
    .pop()
    .unwrap()
}

/// The rows of the test's table, in order.
async fn notes(db: &Db, table: &str) -> Vec<String> {
    db.read_rows(
        &format!("SELECT note FROM {table} ORDER BY note"),
        &[],
        |row| row.text("note"),
    )
    .await
    .unwrap()
}

/// A write transaction that has inserted `note` into the test's table.
async fn inserting(db: &Db, insert: &str, note: &str) -> DirectWrite {
    let mut write = db.begin_direct().await.unwrap();
    write.execute(insert, &[Param::Text(note)]).await.unwrap();
    write
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_writes_reuse_clean_connections_and_roll_back_dropped_transactions() {
    let test =
        "pg_direct::postgres_writes_reuse_clean_connections_and_roll_back_dropped_transactions";
    let Some(server_url) = postgres_server_url(test) else {
        return;
    };
    // Two connections in all: one write connection, so every write below shares it.
    let db = Db::connect(&server_url, 2).await.unwrap();
    let table = format!("pg_direct_{}", std::process::id());
    db.write(&format!("DROP TABLE IF EXISTS {table}"), &[])
        .await
        .unwrap();
    db.write(
        &format!("CREATE TABLE {table} (note TEXT PRIMARY KEY)"),
        &[],
    )
    .await
    .unwrap();
    let insert = format!("INSERT INTO {table} (note) VALUES ($1)");

    let first = writer_pid(&db).await;
    assert_eq!(
        writer_pid(&db).await,
        first,
        "a write that ended cleanly gives its connection to the next write"
    );

    // A committed transaction: its rows stay, and its connection serves the next write.
    let write = inserting(&db, &insert, "committed").await;
    write.commit().await.unwrap();
    assert_eq!(notes(&db, &table).await, ["committed"]);
    assert_eq!(
        writer_pid(&db).await,
        first,
        "a commit's connection was not reused"
    );

    // Dropped between statements: it rolls back, and its connection goes back with
    // the ROLLBACK queued, so the next transaction starts afresh on the same backend.
    let write = inserting(&db, &insert, "dropped").await;
    drop(write);
    let write = inserting(&db, &insert, "after drop").await;
    write.commit().await.unwrap();
    assert_eq!(
        notes(&db, &table).await,
        ["after drop", "committed"],
        "a transaction dropped without commit must leave nothing behind"
    );
    assert_eq!(
        writer_pid(&db).await,
        first,
        "a transaction dropped between statements can give its connection back"
    );

    // A failed statement: nothing of its transaction stays, and its connection is
    // closed (the next write gets a new backend).
    let mut write = inserting(&db, &insert, "before failure").await;
    let duplicate = write.execute(&insert, &[Param::Text("committed")]).await;
    assert!(duplicate.is_err(), "a duplicate key must fail");
    drop(write);
    let after_failure = writer_pid(&db).await;
    assert_ne!(
        after_failure, first,
        "a failed transaction's connection was reused"
    );
    let failed_alone = db.write(&insert, &[Param::Text("committed")]).await;
    assert!(failed_alone.is_err(), "a duplicate key must fail");
    let after_failed_write = writer_pid(&db).await;
    assert_ne!(
        after_failed_write, after_failure,
        "a failed statement's connection was reused"
    );
    assert_eq!(notes(&db, &table).await, ["after drop", "committed"]);

    // Abandoned in the middle of a statement: its transaction does not commit, and the
    // next write neither gets that connection nor waits for it. (The abandoned backend
    // sleeps on, holding its insert, until its 8 s are up: the DROP at the end waits
    // for that.)
    let abandoned = tokio::time::timeout(Duration::from_millis(200), async {
        let mut write = inserting(&db, &insert, "abandoned").await;
        write
            .execute("SELECT pg_sleep($1)", &[Param::Integer(8)])
            .await
            .unwrap();
        write.commit().await.unwrap();
    })
    .await;
    assert!(
        abandoned.is_err(),
        "the 8 s transaction should have been abandoned"
    );
    let started = tokio::time::Instant::now();
    assert_ne!(
        writer_pid(&db).await,
        after_failed_write,
        "an abandoned transaction's connection was reused"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the write after an abandoned one waited {:?}",
        started.elapsed()
    );
    assert_eq!(notes(&db, &table).await, ["after drop", "committed"]);

    db.write(&format!("DROP TABLE {table}"), &[]).await.unwrap();
}

/// Ends PostgreSQL's backend `pid` from another session, as an operator's
/// `pg_terminate_backend` or a restart would, and waits until it is gone.
async fn terminate(db: &Db, pid: i64) {
    let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend(CAST($1 AS INTEGER))")
        .bind(pid)
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert!(ended, "backend {pid} was not there to end");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pg_stat_activity WHERE pid = $1")
            .bind(pid)
            .fetch_one(db.pool())
            .await
            .unwrap();
        if left == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "backend {pid} still there 10 s after it was ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The PostgreSQL backend serving a write transaction, which it commits.
async fn transaction_pid(db: &Db) -> Result<i64, service_kit::db::StorageError> {
    let mut write = db.begin_direct().await?;
    let pid = write
        .rows("SELECT pg_backend_pid() AS pid", &[], |row| {
            row.integer("pid")
        })
        .await?
        .pop()
        .unwrap();
    write.commit().await?;
    Ok(pid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_reads_and_transactions_go_on_when_an_idle_connection_has_ended() {
    let test = "pg_direct::postgres_reads_and_transactions_go_on_when_an_idle_connection_has_ended";
    let Some(server_url) = postgres_server_url(test) else {
        return;
    };
    // One read and one write connection, each idle between the calls below.
    let db = Db::connect(&server_url, 2).await.unwrap();

    // A read whose idle connection was ended runs on a new one.
    let reader = backend_pid(&db).await;
    terminate(&db, reader).await;
    let read = db
        .read_row("SELECT pg_backend_pid() AS pid", &[], |row| {
            row.integer("pid")
        })
        .await;
    let new_reader = read
        .expect("a read on an ended idle connection must run again on a new one")
        .unwrap();
    assert_ne!(new_reader, reader);
    assert_eq!(
        backend_pid(&db).await,
        new_reader,
        "the new connection is kept"
    );

    // So does a transaction's BEGIN: nothing was done yet.
    let writer = transaction_pid(&db).await.unwrap();
    assert_eq!(transaction_pid(&db).await.unwrap(), writer);
    terminate(&db, writer).await;
    let new_writer = transaction_pid(&db)
        .await
        .expect("a transaction on an ended idle connection must begin on a new one");
    assert_ne!(new_writer, writer);

    // A lone write is not run twice: whether a statement cut off mid-way committed is
    // unknown, so its caller sees the error, and the next write gets a new connection.
    // (Unless the connection sat idle long enough to be pinged first: then it was
    // replaced before the write, which ran once.)
    let idle_since = std::time::Instant::now();
    terminate(&db, new_writer).await;
    let lone = db
        .write_rows("SELECT pg_backend_pid() AS pid", &[], |row| {
            row.integer("pid")
        })
        .await;
    assert!(
        lone.is_err() || idle_since.elapsed() >= service_kit::db::IDLE_PING_AFTER,
        "a lone write on an ended connection was run again"
    );
    let after = writer_pid(&db).await;
    assert!(after != new_writer && after != writer);

    // A connection that sat idle a second or more is pinged before it is lent, so
    // a lone write after a quiet spell does not meet the ended connection at all.
    terminate(&db, after).await;
    // The ping is for connections idle at least IDLE_PING_AFTER: let that time pass
    // (a duration the behaviour is defined by, not a wait for some state).
    tokio::time::sleep(service_kit::db::IDLE_PING_AFTER + Duration::from_millis(100)).await;
    let quiet = db
        .write_rows("SELECT pg_backend_pid() AS pid", &[], |row| {
            row.integer("pid")
        })
        .await
        .expect("a lone write after a quiet second met an ended connection");
    assert_ne!(quiet, [after]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pools_idle_postgres_connection_that_has_ended_is_replaced_before_use() {
    let test =
        "pg_direct::the_pools_idle_postgres_connection_that_has_ended_is_replaced_before_use";
    let Some(server_url) = postgres_server_url(test) else {
        return;
    };
    // A pool of one connection, so every statement below is on the same one.
    let db = Db::connect(&server_url, 1).await.unwrap();
    let pool_pid = || async {
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(db.pool())
            .await?;
        Ok::<_, sqlx::Error>(pid)
    };
    let first = pool_pid().await.unwrap();
    assert_eq!(
        pool_pid().await.unwrap(),
        first,
        "the idle connection is reused"
    );

    // Ended from a connection outside the pool, so the pool's own is not the one
    // asking.
    let mut outside = <sqlx::PgConnection as sqlx::Connection>::connect(&server_url)
        .await
        .unwrap();
    let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(first)
        .fetch_one(&mut outside)
        .await
        .unwrap();
    assert!(ended);
    // The ping is for connections idle at least IDLE_PING_AFTER: let that time pass
    // (a duration the behaviour is defined by, not a wait for some state).
    tokio::time::sleep(service_kit::db::IDLE_PING_AFTER + Duration::from_millis(100)).await;

    let after = pool_pid()
        .await
        .expect("the pool handed out a connection that had ended");
    assert_ne!(after, first);
}
