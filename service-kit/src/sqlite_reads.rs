//! SQLite reads on the calling thread: the hot read paths' way around sqlx's SQLite
//! driver, which sends every statement to a connection's worker thread and every row
//! back, a thread wake-up each (ARCHITECTURE.md, "Performance").
//!
//! Each thread that reads keeps one read-only connection per database file, opened
//! on first use and closed with the thread. A read is a few indexed lookups in a
//! WAL-mode file, so it runs where it is called, as a short critical section would:
//! WAL readers do not wait for the writer, and the busy timeout covers the rare
//! moments (a checkpoint's restart) when SQLite makes a reader wait.
//!
//! Reads only: writes take the turn to write ([`crate::sqlite_writes`]), and nothing
//! here is cached between calls except
//! the connection and its prepared statements.

use std::{
    cell::{Cell, RefCell},
    collections::HashMap,
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use rusqlite::{Connection, OpenFlags};

use crate::db::{Param, StorageError, StoredRow};

/// How long a read waits when SQLite reports the file busy.
const READ_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Prepared statements kept per connection.
const STATEMENT_CACHE: usize = 32;

thread_local! {
    /// This thread's read connections, by canonical file path.
    static CONNECTIONS: RefCell<HashMap<Arc<PathBuf>, Connection>> = RefCell::new(HashMap::new());
}

/// Reads of one SQLite file on the calling thread.
#[derive(Debug, Clone)]
pub struct SqliteReads {
    path: Arc<PathBuf>,
}

impl SqliteReads {
    /// Reads of the file at `path`, which must exist (the pool created it).
    pub fn new(path: &std::path::Path) -> std::io::Result<Self> {
        Ok(Self {
            path: Arc::new(path.canonicalize()?),
        })
    }

    /// Runs the one statement `sql` with `params` for its placeholders `$1`…`$n` (the
    /// form the sqlx queries use) on this thread's connection to the file, and turns
    /// each row into a `T`. One statement is its own read transaction in SQLite's
    /// autocommit mode: it sees one snapshot, and the snapshot is released when the
    /// statement is reset, which happens when its rows are done or dropped (a decoder
    /// that fails or panics half way included).
    pub(crate) fn rows<T>(
        &self,
        sql: &str,
        params: &[Param<'_>],
        decode: impl Fn(&dyn StoredRow) -> Result<T, StorageError>,
    ) -> Result<Vec<T>, StorageError> {
        CONNECTIONS.with(|connections| {
            let mut connections = connections.borrow_mut();
            if !connections.contains_key(&self.path) {
                let connection = open(&self.path)?;
                connections.insert(Arc::clone(&self.path), connection);
            }
            rows(&connections[&self.path], sql, params, decode)
        })
    }
}

fn open(path: &std::path::Path) -> Result<Connection, rusqlite::Error> {
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    connection.busy_timeout(READ_BUSY_TIMEOUT)?;
    connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(connection)
}

/// Binds `params` to the statement's placeholders `$1`…`$n`.
pub(crate) fn bind(
    statement: &mut rusqlite::Statement<'_>,
    params: &[Param<'_>],
) -> Result<(), rusqlite::Error> {
    for (position, param) in params.iter().enumerate() {
        let name = format!("${}", position + 1);
        let index = statement
            .parameter_index(&name)?
            .ok_or(rusqlite::Error::InvalidParameterName(name))?;
        match *param {
            Param::Text(text) => statement.raw_bind_parameter(index, text)?,
            Param::Integer(integer) => statement.raw_bind_parameter(index, integer)?,
            Param::OptionalText(text) => statement.raw_bind_parameter(index, text)?,
            Param::OptionalInteger(integer) => statement.raw_bind_parameter(index, integer)?,
        }
    }
    Ok(())
}

/// Runs `sql` on `connection` and decodes its rows (reads, and writes with RETURNING).
pub(crate) fn rows<T>(
    connection: &Connection,
    sql: &str,
    params: &[Param<'_>],
    decode: impl Fn(&dyn StoredRow) -> Result<T, StorageError>,
) -> Result<Vec<T>, StorageError> {
    let mut statement = connection.prepare_cached(sql)?;
    bind(&mut statement, params)?;
    // Looking a column up by name through SQLite costs a C string comparison per
    // column tried, for every value of every row; the names are read once instead.
    let columns: Vec<String> = statement
        .column_names()
        .into_iter()
        .map(str::to_owned)
        .collect();
    let mut rows = statement.raw_query();
    let mut found = Vec::new();
    while let Some(row) = rows.next()? {
        found.push(decode(&SqliteRow {
            row,
            columns: &columns,
            next: Cell::new(0),
        })?);
    }
    Ok(found)
}

/// A row read by [`rows`], with its statement's column names.
struct SqliteRow<'row, 'statement> {
    row: &'row rusqlite::Row<'statement>,
    columns: &'row [String],
    /// Where the next column asked for probably is: decoders ask for the columns in
    /// the order they are selected in.
    next: Cell<usize>,
}

impl SqliteRow<'_, '_> {
    fn get<T: rusqlite::types::FromSql>(&self, column: &str) -> Result<T, rusqlite::Error> {
        let guess = self.next.get();
        let named = |index: usize| self.columns.get(index).is_some_and(|name| name == column);
        let index = if named(guess) {
            guess
        } else if guess > 0 && named(guess - 1) {
            // The column just read, asked for again (a presence check, then the value).
            guess - 1
        } else {
            self.columns
                .iter()
                .position(|name| name == column)
                .ok_or_else(|| rusqlite::Error::InvalidColumnName(column.to_owned()))?
        };
        self.next.set(index + 1);
        self.row.get(index)
    }
}

impl StoredRow for SqliteRow<'_, '_> {
    fn text(&self, column: &str) -> Result<String, StorageError> {
        Ok(self.get(column)?)
    }
    fn integer(&self, column: &str) -> Result<i64, StorageError> {
        Ok(self.get(column)?)
    }
    fn optional_text(&self, column: &str) -> Result<Option<String>, StorageError> {
        Ok(self.get(column)?)
    }
    fn optional_integer(&self, column: &str) -> Result<Option<i64>, StorageError> {
        Ok(self.get(column)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;

    async fn db_with_a_row(dir: &tempfile::TempDir) -> Db {
        let url = format!("sqlite://{}/reads.db", dir.path().display());
        let db = Db::connect(&url, 2).await.unwrap();
        sqlx::query("CREATE TABLE t (id BIGINT PRIMARY KEY, name TEXT, note TEXT)")
            .execute(&mut *db.write_connection().await.unwrap())
            .await
            .unwrap();
        sqlx::query("INSERT INTO t (id, name, note) VALUES (1, 'one', NULL)")
            .execute(&mut *db.write_connection().await.unwrap())
            .await
            .unwrap();
        db
    }

    fn names(db: &Db) -> Result<Vec<(String, Option<String>)>, StorageError> {
        let reads = db
            .sqlite_reads
            .as_ref()
            .expect("a SQLite file has thread reads");
        reads.rows(
            "SELECT name, note FROM t WHERE id >= $1 ORDER BY id",
            &[Param::Integer(1)],
            |row| Ok((row.text("name")?, row.optional_text("note")?)),
        )
    }

    #[tokio::test]
    async fn reads_see_what_the_writer_committed() {
        let dir = tempfile::tempdir().unwrap();
        let db = db_with_a_row(&dir).await;
        assert_eq!(names(&db).unwrap(), vec![("one".to_owned(), None)]);
        sqlx::query("INSERT INTO t (id, name, note) VALUES (2, 'two', 'x')")
            .execute(&mut *db.write_connection().await.unwrap())
            .await
            .unwrap();
        assert_eq!(
            names(&db).unwrap(),
            vec![
                ("one".to_owned(), None),
                ("two".to_owned(), Some("x".to_owned()))
            ]
        );
    }

    #[tokio::test]
    async fn a_read_that_panicked_keeps_no_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let db = db_with_a_row(&dir).await;
        let reads = db.sqlite_reads.clone().unwrap();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            reads.rows("SELECT name FROM t", &[], |_| -> Result<(), StorageError> {
                panic!("half way")
            })
        }));
        assert!(panicked.is_err());
        // Had the panic left the read transaction open, this thread would go on
        // reading the old snapshot and miss the second row.
        sqlx::query("INSERT INTO t (id, name, note) VALUES (2, 'two', NULL)")
            .execute(&mut *db.write_connection().await.unwrap())
            .await
            .unwrap();
        assert_eq!(names(&db).unwrap().len(), 2);
    }

    #[tokio::test]
    async fn values_of_another_type_than_asked_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let db = db_with_a_row(&dir).await;
        let reads = db.sqlite_reads.clone().unwrap();
        let read = |decode: fn(&dyn StoredRow) -> Result<String, StorageError>| {
            reads.rows("SELECT id, name, note FROM t", &[], decode)
        };
        assert_eq!(
            read(|row| Ok(format!(
                "{} {} {:?} {:?}",
                row.integer("id")?,
                row.text("name")?,
                row.optional_text("note")?,
                row.optional_integer("id")?
            )))
            .unwrap(),
            vec!["1 one None Some(1)".to_owned()]
        );
        for (decode, wrong) in [
            (
                (|row: &dyn StoredRow| row.integer("name").map(|i| i.to_string()))
                    as fn(&dyn StoredRow) -> Result<String, StorageError>,
                "text read as an integer",
            ),
            (|row| row.text("id"), "an integer read as text"),
            (|row| row.text("note"), "NULL read as text"),
            (
                |row| row.optional_integer("name").map(|i| format!("{i:?}")),
                "text read as an optional integer",
            ),
            (|row| row.text("nothing"), "no such column"),
        ] {
            let error = read(decode).expect_err(wrong);
            assert!(
                matches!(error, StorageError::SqliteRead(_)),
                "{wrong}: {error:?}"
            );
        }
    }

    /// `.cargo/config.toml` compiles the bundled SQLite so that connections do not
    /// share one page cache behind one mutex; a build that missed it (run from
    /// outside the workspace, say) fails here rather than reading slower unnoticed.
    #[tokio::test]
    async fn the_linked_sqlite_gives_each_connection_its_own_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let db = db_with_a_row(&dir).await;
        let reads = db.sqlite_reads.clone().unwrap();
        let used = |option: &str| {
            reads
                .rows(
                    "SELECT sqlite_compileoption_used($1) AS used",
                    &[Param::Text(option)],
                    |row| row.integer("used"),
                )
                .unwrap()
        };
        assert_eq!(used("ENABLE_MEMORY_MANAGEMENT"), vec![0]);
        assert_eq!(used("DEFAULT_MEMSTATUS=0"), vec![1]);
        assert_eq!(used("THREADSAFE=1"), vec![1]);
    }

    #[tokio::test]
    async fn a_read_connection_cannot_write() {
        let dir = tempfile::tempdir().unwrap();
        let db = db_with_a_row(&dir).await;
        let written = db
            .sqlite_reads
            .as_ref()
            .unwrap()
            .rows("DELETE FROM t", &[], |_| Ok(()));
        assert!(written.is_err(), "{written:?}");
        assert_eq!(names(&db).unwrap().len(), 1);
    }
}
