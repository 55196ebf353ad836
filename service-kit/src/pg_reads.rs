//! PostgreSQL's hot reads, on connections that go back idle without a ping.
//!
//! sqlx's pool pings every connection it takes back (a Sync message and PostgreSQL's
//! ReadyForQuery), because a statement whose future was dropped half way can leave a
//! connection in the middle of a conversation. For a read that is one more round trip
//! than its one statement, and work for PostgreSQL's backend too: a profile of reads on
//! PostgreSQL put the release task at 8 % of our process. Here a connection goes back
//! only after its statement ended cleanly; one whose statement failed, or whose future
//! was dropped, is closed with it (it is a local of the future), and a later read opens
//! a new one. Reads only: nothing here begins a transaction, so a connection that ends
//! a statement cleanly is idle.

use std::{fmt, sync::Mutex, time::Duration};

use sqlx::{
    ConnectOptions, Postgres,
    postgres::{PgArguments, PgConnectOptions, PgConnection, PgRow},
    query::Query,
};
use tokio::sync::Semaphore;

/// Up to `limit` connections for one-statement reads.
pub(crate) struct PgReads {
    options: PgConnectOptions,
    idle: Mutex<Vec<PgConnection>>,
    /// One permit per connection that may be open.
    permits: Semaphore,
    acquire_timeout: Duration,
}

impl fmt::Debug for PgReads {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("PgReads")
            .field("available", &self.permits.available_permits())
            .finish_non_exhaustive()
    }
}

impl PgReads {
    /// Opens one connection at once, so a wrong URL fails at start-up; the others
    /// open when reads need them.
    pub(crate) async fn connect(
        url: &str,
        limit: u32,
        acquire_timeout: Duration,
    ) -> Result<Self, sqlx::Error> {
        let options: PgConnectOptions = url.parse()?;
        let first = options.connect().await?;
        Ok(Self {
            options,
            idle: Mutex::new(vec![first]),
            permits: Semaphore::new(limit.max(1) as usize),
            acquire_timeout,
        })
    }

    /// The rows of `query`, on an idle connection or a new one. Waiting for a
    /// connection, and opening one, end with `PoolTimedOut` after the acquire timeout,
    /// as sqlx's pool does.
    pub(crate) async fn fetch_all(
        &self,
        query: Query<'_, Postgres, PgArguments>,
    ) -> Result<Vec<PgRow>, sqlx::Error> {
        let deadline = tokio::time::Instant::now() + self.acquire_timeout;
        let _permit = tokio::time::timeout_at(deadline, self.permits.acquire())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
            .map_err(|_| sqlx::Error::PoolClosed)?;
        let idle = self.idle_connections().pop();
        let mut connection = match idle {
            Some(connection) => connection,
            None => tokio::time::timeout_at(deadline, self.options.connect())
                .await
                .map_err(|_| sqlx::Error::PoolTimedOut)??,
        };
        let rows = query.fetch_all(&mut connection).await?;
        self.idle_connections().push(connection);
        Ok(rows)
    }

    fn idle_connections(&self) -> std::sync::MutexGuard<'_, Vec<PgConnection>> {
        // A panic while holding this lock leaves a plain list of connections.
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
