//! One SQL layer for SQLite and PostgreSQL: an `AnyPool`, the dialect it speaks, and
//! embedded migrations (one template per change, rendered per dialect) run at start-up.
//!
//! SQL shared by both dialects uses `$1` placeholders, `RETURNING` and `ON CONFLICT`,
//! which both accept. Only schema files differ per dialect.

use std::{
    ops::{Deref, DerefMut},
    path::Path,
    str::FromStr,
    sync::Arc,
    time::Duration,
};

use crate::{
    pg_direct::{PgConnections, PgTransaction},
    sqlite_reads::SqliteReads,
    sqlite_writes::{self, DirectSqlite, WriteTurn},
};
use sqlx::{
    Any, AnyConnection, AnyPool, Connection, Executor, Transaction,
    any::{AnyConnectOptions, AnyPoolOptions},
    pool::PoolConnection,
};

/// How long a SQLite writer waits for the lock before giving up.
pub(crate) const SQLITE_BUSY_TIMEOUT_MS: u64 = 5_000;
/// How long to wait for a pooled connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// A PostgreSQL connection of the `Any` pool idle this long is pinged before it is
/// handed out (see [`pool_options`]).
pub const IDLE_PING_AFTER: Duration = Duration::from_secs(1);
/// Serialises concurrent migrations of replicas starting together on PostgreSQL.
const POSTGRES_MIGRATION_LOCK_KEY: i64 = 0x0062_696c_6c70_6179; // "billpay" in ASCII

/// The database behind a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database URL must start with sqlite:// or postgres://, got {0:?}")]
    UnsupportedUrl(String),
    #[error("cannot create the directory for the SQLite file {path}: {source}")]
    CreateDirectory {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot make the SQLite file {path} owner-only: {source}")]
    Permissions {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot find the SQLite file {path} to read it: {source}")]
    Locate {
        path: String,
        source: std::io::Error,
    },
    #[error("migration {version} ({name}) failed: {source}")]
    Migration {
        version: i64,
        name: &'static str,
        source: sqlx::Error,
    },
    #[error(
        "the database has migration {0} applied, which this build does not know: refusing to run an older build against a newer schema"
    )]
    UnknownMigration(i64),
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
}

/// A service's storage failed: the database, or a stored row that does not parse
/// (which means a bug or a hand edit, never bad input).
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
    #[error(transparent)]
    SqliteRead(#[from] rusqlite::Error),
    #[error("stored row is not valid: {0}")]
    Corrupt(String),
}

/// A value for a placeholder of [`Db::read_rows`] or a [`DirectWrite`] statement.
#[derive(Debug, Clone, Copy)]
pub enum Param<'a> {
    Text(&'a str),
    Integer(i64),
    /// Text or NULL.
    OptionalText(Option<&'a str>),
    /// An integer or NULL.
    OptionalInteger(Option<i64>),
}

/// A stored row's columns by name, whichever driver read it: sqlx (`AnyRow`) or, on
/// SQLite's hot read paths, rusqlite ([`crate::sqlite_reads`]).
pub trait StoredRow {
    fn text(&self, column: &str) -> Result<String, StorageError>;
    fn integer(&self, column: &str) -> Result<i64, StorageError>;
    fn optional_text(&self, column: &str) -> Result<Option<String>, StorageError>;
    fn optional_integer(&self, column: &str) -> Result<Option<i64>, StorageError>;
}

impl StoredRow for sqlx::any::AnyRow {
    fn text(&self, column: &str) -> Result<String, StorageError> {
        Ok(sqlx::Row::try_get(self, column)?)
    }
    fn integer(&self, column: &str) -> Result<i64, StorageError> {
        Ok(sqlx::Row::try_get(self, column)?)
    }
    fn optional_text(&self, column: &str) -> Result<Option<String>, StorageError> {
        Ok(sqlx::Row::try_get(self, column)?)
    }
    fn optional_integer(&self, column: &str) -> Result<Option<i64>, StorageError> {
        Ok(sqlx::Row::try_get(self, column)?)
    }
}

impl StoredRow for sqlx::postgres::PgRow {
    fn text(&self, column: &str) -> Result<String, StorageError> {
        Ok(sqlx::Row::try_get(self, column)?)
    }
    fn integer(&self, column: &str) -> Result<i64, StorageError> {
        pg_integer(self, column)?.ok_or_else(|| {
            sqlx::Error::ColumnDecode {
                index: column.to_owned(),
                source: "unexpected NULL".into(),
            }
            .into()
        })
    }
    fn optional_text(&self, column: &str) -> Result<Option<String>, StorageError> {
        Ok(sqlx::Row::try_get(self, column)?)
    }
    fn optional_integer(&self, column: &str) -> Result<Option<i64>, StorageError> {
        pg_integer(self, column)
    }
}

/// An integer column of a typed PostgreSQL row, widened to `i64` whatever its width
/// (`Any` widened them; our columns are BIGINT, but an expression may be INT4).
fn pg_integer(row: &sqlx::postgres::PgRow, column: &str) -> Result<Option<i64>, StorageError> {
    use sqlx::{Column as _, Row as _, TypeInfo as _};
    let index = row
        .columns()
        .iter()
        .position(|candidate| candidate.name() == column)
        .ok_or_else(|| sqlx::Error::ColumnNotFound(column.to_owned()))?;
    Ok(match row.columns()[index].type_info().name() {
        "INT2" => row.try_get::<Option<i16>, _>(index)?.map(i64::from),
        "INT4" => row.try_get::<Option<i32>, _>(index)?.map(i64::from),
        _ => row.try_get::<Option<i64>, _>(index)?,
    })
}

/// The turn to write on SQLite, held while writing.
type Turn = tokio::sync::OwnedMutexGuard<Option<rusqlite::Connection>>;

/// A sqlx write transaction ([`Db::begin_write`]); on SQLite it holds the turn to
/// write until it commits or is dropped. Statements take `&mut *transaction`.
#[derive(Debug)]
pub struct WriteTransaction {
    transaction: Transaction<'static, Any>,
    dialect: Dialect,
    // Dropped after the transaction, so the next writer finds the connection free.
    _turn: Option<Turn>,
}

impl WriteTransaction {
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        let Self {
            transaction, _turn, ..
        } = self;
        transaction.commit().await
    }

    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        let Self {
            transaction, _turn, ..
        } = self;
        transaction.rollback().await
    }
}

impl Deref for WriteTransaction {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        &self.transaction
    }
}

impl DerefMut for WriteTransaction {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        &mut self.transaction
    }
}

/// A pooled connection for one writing statement ([`Db::write_connection`]).
#[derive(Debug)]
pub struct WriteConnection {
    connection: PoolConnection<Any>,
    _turn: Option<Turn>,
}

impl Deref for WriteConnection {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        &self.connection
    }
}

impl DerefMut for WriteConnection {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        &mut self.connection
    }
}

/// A write transaction of SQL text and [`Param`]s ([`Db::begin_direct`]). Dropped
/// without [`DirectWrite::commit`], it rolls back.
#[derive(Debug)]
pub struct DirectWrite(Direct);

#[derive(Debug)]
enum Direct {
    Sqlite(DirectSqlite),
    Postgres(PgTransaction),
    Sqlx(WriteTransaction),
}

/// Statements of a write transaction given as SQL text (`$1`…`$n` placeholders) and
/// [`Param`]s, so that one piece of storage code serves a [`WriteTransaction`] and a
/// [`DirectWrite`] alike.
pub trait Statements: Send {
    /// The database the statements run on, for SQL that differs per dialect.
    fn dialect(&self) -> Dialect;

    /// Runs one statement; returns how many rows it changed.
    fn execute(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
    ) -> impl Future<Output = Result<u64, StorageError>> + Send;

    /// Runs one statement and decodes each row it returns (a SELECT, or a write
    /// with RETURNING).
    fn rows<T: Send>(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
        decode: impl Fn(&dyn StoredRow) -> Result<T, StorageError> + Send,
    ) -> impl Future<Output = Result<Vec<T>, StorageError>> + Send;
}

impl Statements for WriteTransaction {
    fn dialect(&self) -> Dialect {
        self.dialect
    }

    async fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, StorageError> {
        Ok(bound(sql, params)
            .execute(&mut **self)
            .await?
            .rows_affected())
    }

    async fn rows<T: Send>(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
        decode: impl Fn(&dyn StoredRow) -> Result<T, StorageError> + Send,
    ) -> Result<Vec<T>, StorageError> {
        let rows = bound(sql, params).fetch_all(&mut **self).await?;
        rows.iter().map(|row| decode(row)).collect()
    }
}

impl Statements for DirectWrite {
    fn dialect(&self) -> Dialect {
        match &self.0 {
            Direct::Sqlite(_) => Dialect::Sqlite,
            Direct::Postgres(_) => Dialect::Postgres,
            Direct::Sqlx(transaction) => transaction.dialect,
        }
    }

    async fn execute(&mut self, sql: &str, params: &[Param<'_>]) -> Result<u64, StorageError> {
        match &mut self.0 {
            Direct::Sqlite(direct) => direct.execute(sql, params),
            Direct::Postgres(transaction) => {
                let done = bound(sql, params).execute(transaction.statement()?).await?;
                transaction.finished();
                Ok(done.rows_affected())
            }
            Direct::Sqlx(transaction) => transaction.execute(sql, params).await,
        }
    }

    async fn rows<T: Send>(
        &mut self,
        sql: &str,
        params: &[Param<'_>],
        decode: impl Fn(&dyn StoredRow) -> Result<T, StorageError> + Send,
    ) -> Result<Vec<T>, StorageError> {
        match &mut self.0 {
            Direct::Sqlite(direct) => direct.rows(sql, params, decode),
            Direct::Postgres(transaction) => {
                let rows = bound(sql, params)
                    .fetch_all(transaction.statement()?)
                    .await?;
                transaction.finished();
                rows.iter().map(|row| decode(row)).collect()
            }
            Direct::Sqlx(transaction) => transaction.rows(sql, params, decode).await,
        }
    }
}

impl DirectWrite {
    pub async fn commit(self) -> Result<(), StorageError> {
        match self.0 {
            Direct::Sqlite(direct) => direct.commit(),
            Direct::Postgres(transaction) => Ok(transaction.commit().await?),
            Direct::Sqlx(transaction) => Ok(transaction.commit().await?),
        }
    }
}

impl From<StorageError> for tonic::Status {
    /// INTERNAL for the caller; the detail goes to the log.
    fn from(error: StorageError) -> Self {
        crate::errors::internal(error)
    }
}

/// `sql` with `params` bound, for either driver.
fn bound<'q, DB>(
    sql: &'q str,
    params: &[Param<'q>],
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>
where
    DB: sqlx::Database,
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<&'q str>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<i64>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    params
        .iter()
        .fold(sqlx::query(sql), |query, param| match *param {
            Param::Text(text) => query.bind(text),
            Param::Integer(integer) => query.bind(integer),
            Param::OptionalText(text) => query.bind(text),
            Param::OptionalInteger(integer) => query.bind(integer),
        })
}

/// One schema change, embedded in the binary.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: MigrationSql,
}

/// A migration's SQL: one template for both dialects (where they differ, the file says
/// `{{postgres: … | sqlite: …}}`), or a file per dialect when the change itself differs
/// (SQLite rebuilding a table where PostgreSQL alters it).
#[derive(Debug, Clone, Copy)]
pub enum MigrationSql {
    Template(&'static str),
    PerDialect {
        sqlite: &'static str,
        postgres: &'static str,
    },
}

impl MigrationSql {
    /// The SQL `dialect` runs.
    pub fn render(self, dialect: Dialect) -> Result<String, String> {
        match self {
            Self::Template(template) => render_template(template, dialect),
            Self::PerDialect { sqlite, postgres } => Ok(match dialect {
                Dialect::Sqlite => sqlite,
                Dialect::Postgres => postgres,
            }
            .to_owned()),
        }
    }
}

/// Replaces each `{{postgres: A | sqlite: B}}` with `dialect`'s side.
fn render_template(template: &str, dialect: Dialect) -> Result<String, String> {
    let wanted = match dialect {
        Dialect::Sqlite => "sqlite",
        Dialect::Postgres => "postgres",
    };
    let mut rendered = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        rendered.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| "a {{ without its }}".to_owned())?;
        let choice = after[..end]
            .split('|')
            .filter_map(|side| side.split_once(':'))
            .find(|(name, _)| name.trim() == wanted)
            .ok_or_else(|| format!("{{{{{}}}}} has no {wanted} side", &after[..end]))?;
        rendered.push_str(choice.1.trim());
        rest = &after[end + 2..];
    }
    rendered.push_str(rest);
    Ok(rendered)
}

/// A table of events that streams read by id (billing's `events`, payment-svc's
/// `payment_events`), and the PostgreSQL advisory lock that keeps its readers from
/// passing an id still in flight.
///
/// On PostgreSQL an event id is drawn from a sequence before its transaction commits,
/// so ids can become visible out of order: a reader that saw id 11 while 10 was still in
/// flight would pass 10 for good. Writers hold the lock *shared* from just before they
/// draw an id until they commit ([`EventTable::before_insert`]), so they never wait on
/// each other; a reader takes it *exclusively* for a moment to learn the horizon — the
/// highest id whose writer has finished ([`EventTable::horizon`]) — and reads only up to
/// it. "After n" then misses nothing, and writers stall only while a reader waits for
/// the transactions already in flight. On SQLite writers run one at a time, so the
/// horizon is simply the highest id.
#[derive(Debug, Clone, Copy)]
pub struct EventTable {
    pub table: &'static str,
    pub lock_key: i64,
}

impl EventTable {
    /// Call in the writing transaction before inserting an event.
    pub async fn before_insert(
        &self,
        transaction: &mut impl Statements,
        dialect: Dialect,
    ) -> Result<(), StorageError> {
        if dialect == Dialect::Postgres {
            // `execute`, not `rows`: the lock function returns `void`, which the
            // `Any` driver cannot decode into a row.
            transaction
                .execute(
                    "SELECT pg_advisory_xact_lock_shared($1)",
                    &[Param::Integer(self.lock_key)],
                )
                .await?;
        }
        Ok(())
    }

    /// The highest event id whose transaction has finished, with every lower id's
    /// finished too (0 when none).
    pub async fn horizon(&self, db: &Db) -> Result<i64, sqlx::Error> {
        let highest = format!("SELECT MAX(event_id) FROM {}", self.table);
        let id: Option<i64> = match db.dialect() {
            Dialect::Sqlite => sqlx::query_scalar(&highest).fetch_one(db.pool()).await?,
            Dialect::Postgres => {
                // A transaction lock: should this task be cancelled half way, the
                // rollback on the connection's return releases it.
                let mut transaction = db.pool().begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(self.lock_key)
                    .execute(&mut *transaction)
                    .await?;
                let id = sqlx::query_scalar(&highest)
                    .fetch_one(&mut *transaction)
                    .await?;
                transaction.commit().await?;
                id
            }
        };
        Ok(id.unwrap_or(0))
    }
}

/// A service's schema history in version order.
#[derive(Debug, Clone, Copy)]
pub struct Migrations(pub &'static [Migration]);

/// A connection pool and the dialect it speaks.
#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    writer: AnyPool,
    dialect: Dialect,
    /// A SQLite file's reads on the calling thread (none for PostgreSQL).
    pub(crate) sqlite_reads: Option<SqliteReads>,
    /// PostgreSQL's hot reads through the typed driver (none for SQLite).
    pg_reads: Option<Arc<PgConnections>>,
    /// PostgreSQL's hot writes ([`Db::write`], [`Db::write_rows`],
    /// [`Db::begin_direct`]) the same way, apart from the reads so that a writer
    /// never waits for a reader's connection or the other way round.
    pg_writes: Option<Arc<PgConnections>>,
    /// SQLite: the turn to write, which every write waits for in order, holding the
    /// direct writer connection of a file (none for PostgreSQL).
    write_turn: Option<WriteTurn>,
}

/// Pool settings; every SQLite connection runs in WAL mode with a busy timeout and
/// foreign keys on.
fn pool_options(dialect: Dialect, max_connections: u32) -> AnyPoolOptions {
    AnyPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        // sqlx pings every connection it hands out by default: one more round trip
        // (to the SQLite worker thread, or to PostgreSQL) before every statement. A
        // connection that broke fails its statement instead, as it could right after
        // a ping anyway, and the pool replaces it.
        .test_before_acquire(false)
        // Except a PostgreSQL connection that sat idle for a while: PostgreSQL may have
        // ended it meanwhile (a restart, `pg_terminate_backend`, `idle_session_timeout`),
        // and its first statement would fail where a ping lets the pool open another.
        // Under load connections go back and out far more often than this, so the
        // ping is paid by the quiet paths only. (The hot reads and writes, on
        // `pg_direct`, run a read or a BEGIN once more instead.)
        .before_acquire(move |connection, metadata| {
            Box::pin(async move {
                if dialect == Dialect::Postgres && metadata.idle_for >= IDLE_PING_AFTER {
                    connection.ping().await?;
                }
                Ok(true)
            })
        })
        .after_connect(move |connection, _| {
            Box::pin(async move {
                if dialect == Dialect::Sqlite {
                    connection
                        .execute(&*format!(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                             PRAGMA foreign_keys = ON; PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS};"
                        ))
                        .await?;
                }
                Ok(())
            })
        })
}

impl Db {
    /// Connects to `url` (`sqlite://path` or `postgres://…`). A SQLite file and its
    /// directory are created when missing; every SQLite connection runs in WAL mode
    /// with a busy timeout and foreign keys on.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, DbError> {
        sqlx::any::install_default_drivers();
        let (dialect, url) = normalise_url(url)?;
        if dialect == Dialect::Sqlite {
            owner_only_sqlite_file(&url)?;
        }
        let options = AnyConnectOptions::from_str(&url)?;
        let pool = pool_options(dialect, max_connections)
            .connect_with(options.clone())
            .await?;
        // SQLite lets one writer in at a time and makes the others wait in its busy
        // handler, which sleeps in growing steps (up to 100 ms) and is unfair: under
        // load writes waited seconds. Writes take turns instead, first come first
        // served (the turn to write, `sqlite_writes`), on one sqlx writer connection
        // or on the direct writer connection the turn holds. It only orders writes:
        // every rule about money is still the database's (constraints, conditional
        // updates), and a second process on the same file still waits on the busy
        // timeout.
        let writer = match dialect {
            Dialect::Sqlite => pool_options(dialect, 1).connect_with(options).await?,
            Dialect::Postgres => pool.clone(),
        };
        let write_turn = match dialect {
            Dialect::Sqlite => Some(sqlite_writes::turn(sqlite_file(&url).map(Path::new))?),
            Dialect::Postgres => None,
        };
        let sqlite_reads = match dialect {
            Dialect::Sqlite => sqlite_file(&url)
                .map(|path| {
                    SqliteReads::new(Path::new(path)).map_err(|source| DbError::Locate {
                        path: path.to_owned(),
                        source,
                    })
                })
                .transpose()?,
            Dialect::Postgres => None,
        };
        // `Any` converts every PostgreSQL row value by value into its own row type
        // (5 % of a read's profile), and sqlx's pool pings each connection it takes
        // back (one more round trip per statement or transaction). The hot reads and
        // writes skip both with typed connections that go back idle without a ping
        // (`pg_direct`): half as many again for reads (a read holds one only for its
        // statement) and half as many again for writes. All open on demand; the
        // `Any` pool keeps the colder statements.
        let (pg_reads, pg_writes) = match dialect {
            Dialect::Postgres => {
                let limit = max_connections.div_ceil(2);
                (
                    Some(PgConnections::connect(&url, limit, ACQUIRE_TIMEOUT).await?),
                    Some(PgConnections::connect(&url, limit, ACQUIRE_TIMEOUT).await?),
                )
            }
            Dialect::Sqlite => (None, None),
        };
        Ok(Self {
            pool,
            writer,
            dialect,
            sqlite_reads,
            pg_reads,
            pg_writes,
            write_turn,
        })
    }

    /// The rows of the read `sql` with `params` for its placeholders `$1`…`$n`, each
    /// decoded by `decode`. On a SQLite file it runs on the calling thread
    /// ([`crate::sqlite_reads`]), on PostgreSQL through the pool. Reads only: a read
    /// inside a write transaction uses that transaction.
    pub async fn read_rows<T>(
        &self,
        sql: &str,
        params: &[Param<'_>],
        decode: impl Fn(&dyn StoredRow) -> Result<T, StorageError>,
    ) -> Result<Vec<T>, StorageError> {
        if let Some(reads) = &self.sqlite_reads {
            return reads.rows(sql, params, decode);
        }
        if let Some(pg_reads) = &self.pg_reads {
            let rows = pg_reads.read_all(|| bound(sql, params)).await?;
            return rows.iter().map(|row| decode(row)).collect();
        }
        let rows = bound(sql, params).fetch_all(&self.pool).await?;
        rows.iter().map(|row| decode(row)).collect()
    }

    /// The first row of [`Db::read_rows`], if any.
    pub async fn read_row<T>(
        &self,
        sql: &str,
        params: &[Param<'_>],
        decode: impl Fn(&dyn StoredRow) -> Result<T, StorageError>,
    ) -> Result<Option<T>, StorageError> {
        Ok(self
            .read_rows(sql, params, decode)
            .await?
            .into_iter()
            .next())
    }

    /// The `Any` pool: on PostgreSQL it serves every statement but the hot reads and
    /// writes ([`Db::read_rows`], [`Db::write`], [`Db::write_rows`], [`Db::begin_direct`]).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// A connection for statements that write outside a transaction. On SQLite it
    /// waits for the turn to write, so writers go one at a time in the order they
    /// came; on PostgreSQL it is any pooled connection. Hold it only for the
    /// statement: no other write of this process proceeds meanwhile.
    pub async fn write_connection(&self) -> Result<WriteConnection, sqlx::Error> {
        let turn = self.take_turn().await;
        Ok(WriteConnection {
            connection: self.writer.acquire().await?,
            _turn: turn,
        })
    }

    /// Connections of every pool, for the gauges: (pool, in use, idle). `read` is
    /// the `Any` pool, `write` the one writes use (on PostgreSQL the same pool),
    /// and on PostgreSQL `hot_read` and `hot_write` are the typed connections of
    /// the hot reads and writes.
    pub fn pool_gauges(&self) -> Vec<(&'static str, usize, usize)> {
        let mut gauges = Vec::with_capacity(4);
        for (name, pool) in [("read", &self.pool), ("write", &self.writer)] {
            let idle = pool.num_idle();
            gauges.push((name, (pool.size() as usize).saturating_sub(idle), idle));
        }
        for (name, connections) in [("hot_read", &self.pg_reads), ("hot_write", &self.pg_writes)] {
            if let Some(connections) = connections {
                let (in_use, idle) = connections.in_use_and_idle();
                gauges.push((name, in_use, idle));
            }
        }
        gauges
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Begins a transaction that will write. On SQLite it waits for the turn to
    /// write, runs on sqlx's one writer connection and takes the write lock at once
    /// (`BEGIN IMMEDIATE`), so a read-then-write never fails half way with
    /// SQLITE_BUSY; PostgreSQL uses its default READ COMMITTED. A task holding one
    /// must not ask for another write (this, [`Db::write_connection`] or
    /// [`Db::begin_direct`]): on SQLite it would wait for itself.
    pub async fn begin_write(&self) -> Result<WriteTransaction, sqlx::Error> {
        let turn = self.take_turn().await;
        self.begin_write_in(turn).await
    }

    async fn begin_write_in(&self, turn: Option<Turn>) -> Result<WriteTransaction, sqlx::Error> {
        let transaction = match self.dialect {
            Dialect::Sqlite => self.writer.begin_with("BEGIN IMMEDIATE").await?,
            Dialect::Postgres => self.pool.begin().await?,
        };
        Ok(WriteTransaction {
            transaction,
            dialect: self.dialect,
            _turn: turn,
        })
    }

    /// Begins a write transaction whose statements are given as SQL text and
    /// [`Param`]s ([`DirectWrite`]): on a SQLite file they run on the calling thread
    /// through the direct writer connection ([`crate::sqlite_writes`]), with no hop to
    /// another thread, so the turn to write is held for SQLite's own work only. On
    /// PostgreSQL it runs on a hot-write connection that goes back idle without
    /// sqlx's ping ([`crate::pg_direct`]). Elsewhere (SQLite in memory) it is a
    /// [`Db::begin_write`] transaction. The same rule holds: no other write while
    /// holding it.
    pub async fn begin_direct(&self) -> Result<DirectWrite, StorageError> {
        if let Some(writes) = &self.pg_writes {
            return Ok(DirectWrite(Direct::Postgres(
                PgTransaction::begin(writes).await?,
            )));
        }
        let turn = self.take_turn().await;
        let turn = match turn.map(DirectSqlite::begin) {
            Some(Ok(direct)) => return Ok(DirectWrite(Direct::Sqlite(direct?))),
            Some(Err(turn)) => Some(turn),
            None => None,
        };
        Ok(DirectWrite(Direct::Sqlx(self.begin_write_in(turn).await?)))
    }

    /// One writing statement on its own; returns how many rows it changed. A
    /// statement is atomic by itself, so on PostgreSQL it runs without BEGIN and
    /// COMMIT, on a hot-write connection: one round trip, where a transaction on
    /// sqlx's pool made four (BEGIN, COMMIT and the pool's ping).
    pub async fn write(&self, sql: &str, params: &[Param<'_>]) -> Result<u64, StorageError> {
        if self.has_direct_writer() {
            let mut write = self.begin_direct().await?;
            let changed = write.execute(sql, params).await?;
            write.commit().await?;
            return Ok(changed);
        }
        if let Some(writes) = &self.pg_writes {
            return Ok(writes.execute(bound(sql, params)).await?.rows_affected());
        }
        Ok(bound(sql, params)
            .execute(&mut *self.write_connection().await?)
            .await?
            .rows_affected())
    }

    /// [`Db::write`] for a statement that returns rows (RETURNING).
    pub async fn write_rows<T: Send>(
        &self,
        sql: &str,
        params: &[Param<'_>],
        decode: impl Fn(&dyn StoredRow) -> Result<T, StorageError> + Send,
    ) -> Result<Vec<T>, StorageError> {
        if self.has_direct_writer() {
            let mut write = self.begin_direct().await?;
            let rows = write.rows(sql, params, decode).await?;
            write.commit().await?;
            return Ok(rows);
        }
        if let Some(writes) = &self.pg_writes {
            let rows = writes.fetch_all(bound(sql, params)).await?;
            return rows.iter().map(|row| decode(row)).collect();
        }
        let rows = bound(sql, params)
            .fetch_all(&mut *self.write_connection().await?)
            .await?;
        rows.iter().map(|row| decode(row)).collect()
    }

    /// Whether writes can run on the calling thread (a SQLite file).
    fn has_direct_writer(&self) -> bool {
        self.dialect == Dialect::Sqlite && self.sqlite_reads.is_some()
    }

    /// Waits for the turn to write (SQLite only).
    async fn take_turn(&self) -> Option<Turn> {
        match &self.write_turn {
            Some(turn) => Some(Arc::clone(turn).lock_owned().await),
            None => None,
        }
    }

    /// Applies the migrations of this dialect that are not applied yet, each in its
    /// own transaction, in version order. Safe when replicas start together.
    pub async fn migrate(&self, migrations: &Migrations) -> Result<(), DbError> {
        let list = migrations.0;
        let mut connection = self.pool.acquire().await?;
        if self.dialect == Dialect::Postgres {
            sqlx::query("SELECT pg_advisory_lock($1)")
                .bind(POSTGRES_MIGRATION_LOCK_KEY)
                .execute(&mut *connection)
                .await?;
        }
        let result = apply_pending(&mut connection, self.dialect, list).await;
        if self.dialect == Dialect::Postgres {
            sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(POSTGRES_MIGRATION_LOCK_KEY)
                .execute(&mut *connection)
                .await?;
        }
        result
    }
}

/// The first line of a SQLite schema file that must run with foreign keys off: one that
/// rebuilds a table other tables reference (SQLite cannot alter a CHECK constraint, and
/// a referenced table cannot be dropped with foreign keys on). The runner turns them
/// off around that migration's transaction and refuses to commit it if any reference
/// is left dangling (`PRAGMA foreign_key_check`), as SQLite's documented procedure says.
pub const SQLITE_FOREIGN_KEYS_OFF: &str = "-- billpay: foreign_keys off";

async fn apply_pending(
    connection: &mut sqlx::AnyConnection,
    dialect: Dialect,
    list: &[Migration],
) -> Result<(), DbError> {
    connection
        .execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (\
               version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at_micros BIGINT NOT NULL)",
        )
        .await?;
    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM schema_migrations ORDER BY version")
            .fetch_all(&mut *connection)
            .await?;
    if let Some(unknown) = applied
        .iter()
        .find(|version| !list.iter().any(|migration| migration.version == **version))
    {
        return Err(DbError::UnknownMigration(*unknown));
    }
    for migration in list.iter().filter(|m| !applied.contains(&m.version)) {
        let failed = |source| DbError::Migration {
            version: migration.version,
            name: migration.name,
            source,
        };
        let sql = migration
            .sql
            .render(dialect)
            .map_err(|problem| failed(sqlx::Error::Protocol(problem)))?;
        let foreign_keys_off =
            dialect == Dialect::Sqlite && sql.starts_with(SQLITE_FOREIGN_KEYS_OFF);
        if foreign_keys_off {
            // Outside a transaction: inside one, SQLite ignores this pragma.
            connection
                .execute("PRAGMA foreign_keys = OFF")
                .await
                .map_err(failed)?;
        }
        let applied = apply_one(connection, migration, &sql, foreign_keys_off).await;
        if foreign_keys_off {
            connection
                .execute("PRAGMA foreign_keys = ON")
                .await
                .map_err(failed)?;
        }
        applied.map_err(failed)?;
    }
    Ok(())
}

/// Runs one migration and records it, in one transaction.
async fn apply_one(
    connection: &mut sqlx::AnyConnection,
    migration: &Migration,
    sql: &str,
    check_foreign_keys: bool,
) -> Result<(), sqlx::Error> {
    let mut transaction = connection.begin().await?;
    for statement in statements(sql) {
        transaction.execute(statement).await?;
    }
    if check_foreign_keys {
        let dangling = sqlx::query("PRAGMA foreign_key_check")
            .fetch_all(&mut *transaction)
            .await?;
        if !dangling.is_empty() {
            return Err(sqlx::Error::Protocol(format!(
                "{} rows reference missing rows after the rebuild",
                dangling.len()
            )));
        }
    }
    sqlx::query(
        "INSERT INTO schema_migrations (version, name, applied_at_micros) VALUES ($1, $2, $3)",
    )
    .bind(migration.version)
    .bind(migration.name)
    .bind(crate::clock::now_micros())
    .execute(&mut *transaction)
    .await?;
    transaction.commit().await
}

/// Splits a schema file into statements at semicolons that end a line. Schema files
/// are ours, so they keep to that form.
fn statements(sql: &str) -> impl Iterator<Item = &str> {
    sql.split(";\n").map(str::trim).filter(|statement| {
        statement
            .lines()
            .any(|line| !line.trim().is_empty() && !line.trim_start().starts_with("--"))
    })
}

/// Creates the SQLite file of `url` owner-only (0600), or makes an existing one so:
/// it holds payment data. SQLite gives its `-wal` and `-shm` files the main file's
/// mode, so they follow.
fn owner_only_sqlite_file(url: &str) -> Result<(), DbError> {
    let Some(path) = sqlite_file(url) else {
        return Ok(());
    };
    let failed = |source| DbError::Permissions {
        path: path.to_owned(),
        source,
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(failed)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(failed)?;
    }
    #[cfg(not(unix))]
    let _ = failed;
    Ok(())
}

/// The file path of a `sqlite://` URL; `None` for an in-memory database.
fn sqlite_file(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("sqlite://").unwrap_or(url);
    let path = rest.split('?').next().unwrap_or(rest);
    (!(path.is_empty() || path.starts_with(':') || rest.contains("mode=memory"))).then_some(path)
}

fn normalise_url(url: &str) -> Result<(Dialect, String), DbError> {
    if let Some(rest) = url.strip_prefix("sqlite://") {
        let path = rest.split('?').next().unwrap_or(rest);
        if let Some(parent) = Path::new(path)
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
        {
            std::fs::create_dir_all(parent).map_err(|source| DbError::CreateDirectory {
                path: path.to_owned(),
                source,
            })?;
        }
        let url = if rest.contains("mode=") {
            url.to_owned()
        } else if rest.contains('?') {
            format!("{url}&mode=rwc")
        } else {
            format!("{url}?mode=rwc")
        };
        Ok((Dialect::Sqlite, url))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok((Dialect::Postgres, url.to_owned()))
    } else {
        Err(DbError::UnsupportedUrl(url.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_schema_files_into_statements() {
        let sql =
            "-- a comment\nCREATE TABLE a (x BIGINT);\n\nCREATE INDEX i ON a (x);\n-- trailing\n";
        let found: Vec<_> = statements(sql).collect();
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[1].ends_with("CREATE INDEX i ON a (x)"));
    }

    #[test]
    fn a_template_renders_each_dialects_side() {
        let template = "CREATE TABLE e (\n    id {{postgres: BIGSERIAL PRIMARY KEY | sqlite: INTEGER PRIMARY KEY AUTOINCREMENT}},\n    x TEXT\n);\n";
        assert_eq!(
            render_template(template, Dialect::Postgres).unwrap(),
            "CREATE TABLE e (\n    id BIGSERIAL PRIMARY KEY,\n    x TEXT\n);\n"
        );
        assert_eq!(
            render_template(template, Dialect::Sqlite).unwrap(),
            "CREATE TABLE e (\n    id INTEGER PRIMARY KEY AUTOINCREMENT,\n    x TEXT\n);\n"
        );
        assert!(render_template("a {{postgres: x}} b", Dialect::Sqlite).is_err());
        assert!(render_template("a {{postgres: x", Dialect::Postgres).is_err());
    }

    #[test]
    fn recognises_dialects_by_url() {
        assert_eq!(
            normalise_url("postgres://h/db").unwrap().0,
            Dialect::Postgres
        );
        let (dialect, url) = normalise_url("sqlite://").unwrap();
        assert_eq!(
            (dialect, url.as_str()),
            (Dialect::Sqlite, "sqlite://?mode=rwc")
        );
        assert!(matches!(
            normalise_url("mysql://h/db"),
            Err(DbError::UnsupportedUrl(_))
        ));
    }
}
