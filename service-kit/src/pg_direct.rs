//! PostgreSQL's hot reads and writes, on connections that go back idle without a ping.
//!
//! sqlx's pool pings every connection it takes back (a Sync message and PostgreSQL's
//! ReadyForQuery), because a statement whose future was dropped half way can leave a
//! connection in the middle of a conversation. That is one more round trip per
//! statement or transaction, and work for PostgreSQL's backend too: a profile of reads
//! on PostgreSQL put the release task at 8 % of our process, and a card repayment made
//! four such pings. Here a connection goes back only after its work ended cleanly; one
//! whose statement failed, or whose future was dropped half way, is closed with its
//! [`Lease`], and a later caller opens a new one.
//!
//! A transaction ([`PgTransaction`]) dropped without commit between two statements
//! goes back with a ROLLBACK queued, which the connection sends before its next
//! statement; PostgreSQL rolls back a transaction whose connection closes.
//!
//! An idle connection can end without our knowing: PostgreSQL restarted, an operator
//! ended its backend, or `idle_session_timeout` did. One that sat idle for
//! [`IDLE_PING_AFTER`] or more is pinged before it is lent, and replaced if it ended;
//! under load none sits that long, so the hot paths pay no round trip for it. One that
//! ended sooner is found out by its next statement: a read, or a transaction's BEGIN,
//! then closes the idle connections and runs again once on a new connection (neither
//! has changed anything). A lone write is not run again, since a connection lost in
//! the middle of it leaves unknown whether it committed; its caller sees the error, as
//! with any failed write.

use std::{
    fmt,
    sync::{Arc, Mutex},
    time::Duration,
};

use sqlx::{
    ConnectOptions, Connection as _, Postgres, TransactionManager,
    postgres::{
        PgArguments, PgConnectOptions, PgConnection, PgQueryResult, PgRow, PgTransactionManager,
    },
    query::Query,
};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};

use crate::db::IDLE_PING_AFTER;

/// Up to `limit` connections, each lent for one statement or one transaction.
pub(crate) struct PgConnections {
    options: PgConnectOptions,
    idle: Mutex<Vec<Idle>>,
    /// One permit per connection that may be open.
    permits: Arc<Semaphore>,
    limit: usize,
    acquire_timeout: Duration,
}

impl fmt::Debug for PgConnections {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("PgConnections")
            .field("available", &self.permits.available_permits())
            .finish_non_exhaustive()
    }
}

impl PgConnections {
    /// Opens one connection at once, so a wrong URL fails at start-up; the others
    /// open when callers need them.
    pub(crate) async fn connect(
        url: &str,
        limit: u32,
        acquire_timeout: Duration,
    ) -> Result<Arc<Self>, sqlx::Error> {
        let options: PgConnectOptions = url.parse()?;
        let first = options.connect().await?;
        let limit = limit.max(1) as usize;
        Ok(Arc::new(Self {
            options,
            idle: Mutex::new(vec![Idle::since_now(first)]),
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            acquire_timeout,
        }))
    }

    /// Connections lent out now, and connections idle.
    pub(crate) fn in_use_and_idle(&self) -> (usize, usize) {
        let in_use = self.limit - self.permits.available_permits();
        (in_use, self.idle_connections().len())
    }

    /// An idle connection or a new one. Waiting for a permit, and opening a
    /// connection, end with `PoolTimedOut` after the acquire timeout, as sqlx's pool
    /// does.
    pub(crate) async fn lease(self: &Arc<Self>) -> Result<Lease, sqlx::Error> {
        self.lease_from(Source::IdleOrNew).await
    }

    async fn lease_from(self: &Arc<Self>, source: Source) -> Result<Lease, sqlx::Error> {
        let deadline = tokio::time::Instant::now() + self.acquire_timeout;
        let permit = tokio::time::timeout_at(deadline, Arc::clone(&self.permits).acquire_owned())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
            .map_err(|_| sqlx::Error::PoolClosed)?;
        if let Source::IdleOrNew = source {
            // Each taken in its own statement: the lock is not held across the ping.
            while let Some(Idle {
                mut connection,
                since,
            }) = self.pop_idle()
            {
                if since.elapsed() >= IDLE_PING_AFTER {
                    match tokio::time::timeout_at(deadline, connection.ping()).await {
                        Ok(Ok(())) => {}
                        // Ended while idle: closed here, and the next one is tried.
                        Ok(Err(_)) => continue,
                        Err(_) => return Err(sqlx::Error::PoolTimedOut),
                    }
                }
                return Ok(Lease {
                    connection,
                    home: Arc::clone(self),
                    _permit: permit,
                    was_idle: true,
                });
            }
        }
        let connection = tokio::time::timeout_at(deadline, self.options.connect())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)??;
        Ok(Lease {
            connection,
            home: Arc::clone(self),
            _permit: permit,
            was_idle: false,
        })
    }

    /// A lease on a new connection in place of `ended`, whose idle connection failed
    /// its statement with `error`, when that says the connection had ended; else the
    /// error. Only for a statement that may run again (a read, a BEGIN). The other
    /// idle connections, opened as long ago, are closed too.
    async fn replace_ended(
        self: &Arc<Self>,
        ended: Lease,
        error: sqlx::Error,
    ) -> Result<Lease, sqlx::Error> {
        if !(ended.was_idle && connection_ended(&error)) {
            return Err(error);
        }
        drop(ended);
        drop(std::mem::take(&mut *self.idle_connections()));
        tracing::warn!(%error, "an idle PostgreSQL connection had ended; running again on a new one");
        self.lease_from(Source::New).await
    }

    /// The rows of the read `query()`, a statement on its own. When its idle
    /// connection turns out to have ended, it runs once more on a new one.
    pub(crate) async fn read_all<'q>(
        self: &Arc<Self>,
        query: impl Fn() -> Query<'q, Postgres, PgArguments>,
    ) -> Result<Vec<PgRow>, sqlx::Error> {
        let mut lease = self.lease().await?;
        let rows = match query().fetch_all(&mut lease.connection).await {
            Ok(rows) => rows,
            Err(error) => {
                lease = self.replace_ended(lease, error).await?;
                query().fetch_all(&mut lease.connection).await?
            }
        };
        lease.give_back();
        Ok(rows)
    }

    /// The rows of `query`, a statement on its own (a write with RETURNING: never run
    /// twice).
    pub(crate) async fn fetch_all(
        self: &Arc<Self>,
        query: Query<'_, Postgres, PgArguments>,
    ) -> Result<Vec<PgRow>, sqlx::Error> {
        let mut lease = self.lease().await?;
        let rows = query.fetch_all(&mut lease.connection).await?;
        lease.give_back();
        Ok(rows)
    }

    /// Runs `query`, a statement on its own (PostgreSQL commits it by itself).
    pub(crate) async fn execute(
        self: &Arc<Self>,
        query: Query<'_, Postgres, PgArguments>,
    ) -> Result<PgQueryResult, sqlx::Error> {
        let mut lease = self.lease().await?;
        let done = query.execute(&mut lease.connection).await?;
        lease.give_back();
        Ok(done)
    }

    fn pop_idle(&self) -> Option<Idle> {
        self.idle_connections().pop()
    }

    fn idle_connections(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        // A panic while holding this lock leaves a plain list of connections.
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// An idle connection, and since when.
struct Idle {
    connection: PgConnection,
    since: Instant,
}

impl Idle {
    fn since_now(connection: PgConnection) -> Self {
        Self {
            connection,
            since: Instant::now(),
        }
    }
}

/// Where [`PgConnections::lease_from`] takes a connection from.
#[derive(Debug, Clone, Copy)]
enum Source {
    IdleOrNew,
    /// A new connection: an idle one was found ended.
    New,
}

/// Whether `error` says the connection has ended: its socket closed (I/O), or its
/// backend's last words were an operator-intervention error (class 57P:
/// `admin_shutdown` when the backend was terminated or the server shut down,
/// `crash_shutdown`, `idle_session_timeout`), which PostgreSQL sends as it ends a
/// session and which is read as the statement's answer. It does not tell whether the
/// statement ran: only a read or a BEGIN may be run again on its strength.
fn connection_ended(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) => true,
        sqlx::Error::Database(database) => {
            database.code().is_some_and(|code| code.starts_with("57P"))
        }
        _ => false,
    }
}

/// A connection lent by [`PgConnections`]. Dropped, it closes the connection (its
/// state is unknown); [`Lease::give_back`] returns it idle.
pub(crate) struct Lease {
    connection: PgConnection,
    home: Arc<PgConnections>,
    _permit: OwnedSemaphorePermit,
    /// It came from the idle list (not opened for this lease).
    was_idle: bool,
}

impl fmt::Debug for Lease {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_struct("Lease").finish_non_exhaustive()
    }
}

impl Lease {
    /// Returns the connection idle: only once its last statement ended cleanly.
    fn give_back(self) {
        let Self {
            connection, home, ..
        } = self;
        home.idle_connections().push(Idle::since_now(connection));
    }
}

/// A transaction on a leased connection. Dropped without [`PgTransaction::commit`],
/// it rolls back: between statements the connection goes back with a ROLLBACK
/// queued; in the middle of one, or after one failed, it is closed.
#[derive(Debug)]
pub(crate) struct PgTransaction {
    lease: Option<Lease>,
    /// No statement is under way or failed: the connection is between statements.
    clean: bool,
}

impl PgTransaction {
    /// Begins on an idle connection, or on a new one when the idle one had ended
    /// (a BEGIN that failed changed nothing).
    pub(crate) async fn begin(connections: &Arc<PgConnections>) -> Result<Self, sqlx::Error> {
        let mut lease = connections.lease().await?;
        if let Err(error) = PgTransactionManager::begin(&mut lease.connection, None).await {
            lease = connections.replace_ended(lease, error).await?;
            PgTransactionManager::begin(&mut lease.connection, None).await?;
        }
        Ok(Self {
            lease: Some(lease),
            clean: true,
        })
    }

    /// The connection for one statement; [`PgTransaction::finished`] after it
    /// succeeded.
    pub(crate) fn statement(&mut self) -> Result<&mut PgConnection, sqlx::Error> {
        self.clean = false;
        self.lease
            .as_mut()
            .map(|lease| &mut lease.connection)
            .ok_or_else(ended)
    }

    /// The statement begun with [`PgTransaction::statement`] ended cleanly.
    pub(crate) fn finished(&mut self) {
        self.clean = true;
    }

    pub(crate) async fn commit(mut self) -> Result<(), sqlx::Error> {
        let mut lease = self.lease.take().ok_or_else(ended)?;
        // Failed or abandoned, the lease closes the connection, which rolls back
        // whatever did not commit.
        PgTransactionManager::commit(&mut lease.connection).await?;
        lease.give_back();
        Ok(())
    }
}

/// A transaction's connection is gone only once it committed or was dropped, after
/// which nothing can reach it: this error cannot happen.
fn ended() -> sqlx::Error {
    sqlx::Error::Protocol("the transaction has already ended".into())
}

impl Drop for PgTransaction {
    fn drop(&mut self) {
        if let Some(mut lease) = self.lease.take()
            && self.clean
        {
            PgTransactionManager::start_rollback(&mut lease.connection);
            lease.give_back();
        }
    }
}
