//! SQLite writes on the calling thread, the write side of [`crate::sqlite_reads`].
//!
//! sqlx's SQLite driver runs each statement on its connection's worker thread: a
//! write transaction of n statements is about 2n thread wake-ups, and on a busy
//! machine each wake-up waits for a free core while the transaction holds SQLite's
//! one write lock. Every other writer queues behind that waiting (ARCHITECTURE.md,
//! "Performance"). A [`crate::db::DirectWrite`] on a SQLite file runs its statements
//! where it is called, through one read-write rusqlite connection per file, so the
//! lock is held for SQLite's own work: microseconds per statement in WAL mode with
//! `synchronous = NORMAL` (no sync per commit).
//!
//! Two connections write the file then: this one and sqlx's writer connection,
//! which the rest of the writes still use. They take turns through one fair
//! (first come, first served) async mutex, the *turn to write*, that every write of
//! the process waits for ([`crate::db::Db::begin_write`],
//! [`crate::db::Db::write_connection`], [`crate::db::Db::begin_direct`]); the mutex
//! holds this connection. The turn only orders writers, as the one writer
//! connection did before: every rule about money is still the database's
//! (constraints, conditional updates, transactions). Another process writing the
//! same file is still met by SQLite's busy timeout, which then blocks this thread.

use std::{path::Path, sync::Arc, time::Duration};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::{Mutex, OwnedMappedMutexGuard, OwnedMutexGuard};

use crate::{
    db::{DbError, Param, SQLITE_BUSY_TIMEOUT_MS, StorageError, StoredRow},
    sqlite_reads,
};

/// Prepared statements kept by the direct writer connection.
const STATEMENT_CACHE: usize = 64;

/// The turn to write: a fair async mutex holding the direct writer connection of a
/// SQLite file (None for an in-memory database, whose writes all go through sqlx).
pub(crate) type WriteTurn = Arc<Mutex<Option<Connection>>>;

/// The turn to write for the file at `file` (which the pool has created, in WAL
/// mode), with its direct writer connection.
pub(crate) fn turn(file: Option<&Path>) -> Result<WriteTurn, DbError> {
    let connection = file
        .map(|path| {
            open(path).map_err(|source| DbError::Locate {
                path: path.display().to_string(),
                source: std::io::Error::other(source),
            })
        })
        .transpose()?;
    Ok(Arc::new(Mutex::new(connection)))
}

fn open(path: &Path) -> Result<Connection, rusqlite::Error> {
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    connection.busy_timeout(Duration::from_millis(SQLITE_BUSY_TIMEOUT_MS))?;
    // The same settings as sqlx's connections (db.rs, `pool_options`).
    connection.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
    )?;
    connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(connection)
}

/// An open write transaction on the direct writer connection, holding the turn.
#[derive(Debug)]
pub(crate) struct DirectSqlite {
    connection: OwnedMappedMutexGuard<Option<Connection>, Connection>,
    /// Begun and neither committed nor rolled back.
    open: bool,
}

impl DirectSqlite {
    /// Begins a transaction (`BEGIN IMMEDIATE`: the write lock at once) on the turn's
    /// connection; gives the turn back when it has none.
    #[allow(clippy::type_complexity)]
    pub(crate) fn begin(
        turn: OwnedMutexGuard<Option<Connection>>,
    ) -> Result<Result<Self, StorageError>, OwnedMutexGuard<Option<Connection>>> {
        let connection = OwnedMutexGuard::try_map(turn, Option::as_mut)?;
        let mut direct = Self {
            connection,
            open: false,
        };
        Ok(match direct.connection.execute_batch("BEGIN IMMEDIATE") {
            Ok(()) => {
                direct.open = true;
                Ok(direct)
            }
            Err(error) => Err(error.into()),
        })
    }

    pub(crate) fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, StorageError> {
        let mut statement = self.connection.prepare_cached(sql)?;
        sqlite_reads::bind(&mut statement, params)?;
        Ok(statement.raw_execute()? as u64)
    }

    pub(crate) fn rows<T>(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
        decode: impl Fn(&dyn StoredRow) -> Result<T, StorageError>,
    ) -> Result<Vec<T>, StorageError> {
        sqlite_reads::rows(&self.connection, sql, params, decode)
    }

    pub(crate) fn commit(mut self) -> Result<(), StorageError> {
        self.connection.execute_batch("COMMIT")?;
        self.open = false;
        Ok(())
    }
}

impl Drop for DirectSqlite {
    /// Not committed (an error, a panic, a cancelled task): nothing it wrote stays.
    fn drop(&mut self) {
        if self.open
            && !self.connection.is_autocommit()
            && let Err(error) = self.connection.execute_batch("ROLLBACK")
        {
            tracing::error!(%error, "rolling back a direct SQLite write failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::db::{Db, Param, Statements as _};

    async fn db_with_a_table(dir: &tempfile::TempDir) -> Db {
        let url = format!("sqlite://{}/writes.db", dir.path().display());
        let db = Db::connect(&url, 2).await.unwrap();
        db.write(
            "CREATE TABLE t (id BIGINT PRIMARY KEY, name TEXT NOT NULL, note TEXT)",
            &[],
        )
        .await
        .unwrap();
        db
    }

    async fn names(db: &Db) -> Vec<String> {
        db.read_rows("SELECT name FROM t ORDER BY id", &[], |row| {
            row.text("name")
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn a_committed_write_is_read_and_a_dropped_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let db = db_with_a_table(&dir).await;
        let mut write = db.begin_direct().await.unwrap();
        let inserted = write
            .rows(
                "INSERT INTO t (id, name, note) VALUES ($1, $2, $3) RETURNING id, note",
                &[
                    Param::Integer(1),
                    Param::Text("one"),
                    Param::OptionalText(None),
                ],
                |row| Ok((row.integer("id")?, row.optional_text("note")?)),
            )
            .await
            .unwrap();
        assert_eq!(inserted, vec![(1, None)]);
        write.commit().await.unwrap();

        let mut write = db.begin_direct().await.unwrap();
        write
            .execute(
                "INSERT INTO t (id, name) VALUES ($1, $2)",
                &[Param::Integer(2), Param::Text("two")],
            )
            .await
            .unwrap();
        drop(write);
        assert_eq!(names(&db).await, vec!["one"]);
        // The connection is usable again, outside any transaction.
        assert_eq!(
            db.write("UPDATE t SET note = $1", &[Param::OptionalText(Some("x"))])
                .await
                .unwrap(),
            1
        );
    }

    #[tokio::test]
    async fn a_failed_statement_leaves_nothing_of_its_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let db = db_with_a_table(&dir).await;
        let failed = async {
            let mut write = db.begin_direct().await?;
            write
                .execute(
                    "INSERT INTO t (id, name) VALUES ($1, $2)",
                    &[Param::Integer(1), Param::Text("one")],
                )
                .await?;
            // NOT NULL refuses this one; the first must not stay either.
            write
                .execute(
                    "INSERT INTO t (id, name) VALUES ($1, $2)",
                    &[Param::Integer(2), Param::OptionalText(None)],
                )
                .await?;
            write.commit().await
        }
        .await;
        assert!(failed.is_err());
        assert!(names(&db).await.is_empty());
    }

    #[tokio::test]
    async fn direct_and_sqlx_writers_take_turns() {
        let dir = tempfile::tempdir().unwrap();
        let db = db_with_a_table(&dir).await;
        // A sqlx transaction holds the turn: a direct write waits for it, then runs.
        let mut transaction = db.begin_write().await.unwrap();
        sqlx::query("INSERT INTO t (id, name) VALUES (1, 'sqlx')")
            .execute(&mut *transaction)
            .await
            .unwrap();
        let direct = tokio::spawn({
            let db = db.clone();
            async move {
                db.write(
                    "INSERT INTO t (id, name) VALUES ($1, $2)",
                    &[Param::Integer(2), Param::Text("direct")],
                )
                .await
            }
        });
        tokio::task::yield_now().await;
        assert!(
            !direct.is_finished(),
            "the direct write ran during another's turn"
        );
        transaction.commit().await.unwrap();
        assert_eq!(direct.await.unwrap().unwrap(), 1);
        assert_eq!(names(&db).await, vec!["sqlx", "direct"]);
    }

    #[tokio::test]
    async fn an_in_memory_database_writes_through_sqlx() {
        let db = Db::connect("sqlite://?mode=memory", 1).await.unwrap();
        db.write("CREATE TABLE t (id BIGINT PRIMARY KEY)", &[])
            .await
            .unwrap();
        assert_eq!(
            db.write("INSERT INTO t (id) VALUES ($1)", &[Param::Integer(7)])
                .await
                .unwrap(),
            1
        );
    }
}
