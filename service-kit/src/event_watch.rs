//! What event streams (billing's WatchEvents, payment-svc's WatchPaymentEvents) share:
//! one poller of the newest event id, fanned out to every stream through a `watch`
//! channel (a stream that has caught up waits on it and reads only when there is
//! something new), and the per-caller stream count.

use std::{
    collections::HashMap,
    fmt::Display,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::watch;

/// How often the shared poller looks for new events.
const EVENT_POLL: Duration = Duration::from_millis(100);

/// Streams one caller may hold open at once, unless configured.
pub const STREAMS_PER_CALLER_DEFAULT: usize = 16;

#[derive(Debug)]
pub struct EventWatch {
    streams_per_caller: usize,
    open: Mutex<HashMap<String, usize>>,
    latest: Mutex<Option<watch::Receiver<i64>>>,
}

impl Default for EventWatch {
    fn default() -> Self {
        Self::new(STREAMS_PER_CALLER_DEFAULT)
    }
}

/// One open stream of a caller; dropping it frees the caller's slot.
#[derive(Debug)]
pub struct StreamSlot {
    watch: Arc<EventWatch>,
    caller: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.watch.open.lock()
            && let Some(count) = open.get_mut(&self.caller)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.caller);
            }
        }
    }
}

impl EventWatch {
    pub fn new(streams_per_caller: usize) -> Self {
        Self {
            streams_per_caller,
            open: Mutex::new(HashMap::new()),
            latest: Mutex::new(None),
        }
    }

    /// A slot for one more stream of `caller`, or `None` at the cap.
    pub fn open_stream(self: &Arc<Self>, caller: &str) -> Option<StreamSlot> {
        let mut open = self.open.lock().ok()?;
        let count = open.entry(caller.to_owned()).or_insert(0);
        if *count >= self.streams_per_caller {
            return None;
        }
        *count += 1;
        Some(StreamSlot {
            watch: Arc::clone(self),
            caller: caller.to_owned(),
        })
    }

    pub fn streams_per_caller(&self) -> usize {
        self.streams_per_caller
    }

    /// The newest event id as the shared poller sees it (`newest` reads it from the
    /// database); the poller starts with the first stream and stops when the last one
    /// is gone.
    pub fn latest<F, Fut, E>(&self, newest: F) -> watch::Receiver<i64>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<i64, E>> + Send,
        E: Display,
    {
        let Ok(mut latest) = self.latest.lock() else {
            // A poisoned lock: a private poller still works.
            return spawn_poller(newest);
        };
        if let Some(receiver) = latest.as_ref()
            && receiver.has_changed().is_ok()
        {
            return receiver.clone();
        }
        let receiver = spawn_poller(newest);
        *latest = Some(receiver.clone());
        receiver
    }
}

fn spawn_poller<F, Fut, E>(newest: F) -> watch::Receiver<i64>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = Result<i64, E>> + Send,
    E: Display,
{
    let (sender, receiver) = watch::channel(0);
    tokio::spawn(async move {
        loop {
            match newest().await {
                Ok(id) => {
                    sender.send_if_modified(|latest| {
                        let newer = id > *latest;
                        if newer {
                            *latest = id;
                        }
                        newer
                    });
                }
                Err(error) => tracing::warn!(%error, "event poller cannot read"),
            }
            tokio::select! {
                () = sender.closed() => return,
                () = tokio::time::sleep(EVENT_POLL) => {}
            }
        }
    });
    receiver
}

/// Events read per query while a stream catches up.
pub const EVENT_BATCH_MAX: u32 = 100;
/// Messages buffered ahead of a slow client.
const EVENT_BUFFER: usize = 64;

/// What a stream needs to know of a stored event.
pub trait Streamed {
    fn event_id(&self) -> i64;
    fn account_id(&self) -> &str;
}

/// One stream's settings: where it starts, whose events, until when.
#[derive(Debug)]
pub struct Tail {
    pub after_id: i64,
    /// Only this account's events (the cursor still moves past the others).
    pub account: Option<String>,
    /// End once caught up instead of tailing.
    pub stop_at_end: bool,
    /// The caller's token expiry (Unix seconds): the stream ends with UNAUTHENTICATED.
    pub expires_at: i64,
    pub slot: StreamSlot,
    /// From [`EventWatch::latest`].
    pub latest: watch::Receiver<i64>,
}

/// What a stream request (WatchEvents, WatchPaymentEvents) asks for.
#[derive(Debug)]
pub struct StreamRequest<'a> {
    /// The RPC's name, for the refusal at the cap.
    pub rpc: &'a str,
    pub caller: &'a str,
    pub after_id: i64,
    pub account: Option<String>,
    pub stop_at_end: bool,
    /// The caller's token expiry (Unix seconds).
    pub expires_at: i64,
}

impl EventWatch {
    /// Checks `request` and opens one more stream for its caller: INVALID_ARGUMENT for
    /// a negative cursor or an over-long account id, RESOURCE_EXHAUSTED at the
    /// caller's cap. `newest` reads the newest event id (see [`EventWatch::latest`]).
    pub fn open_tail<F, Fut, E>(
        self: &Arc<Self>,
        request: StreamRequest<'_>,
        newest: F,
    ) -> Result<Tail, tonic::Status>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<i64, E>> + Send,
        E: Display,
    {
        if request.after_id < 0 {
            return Err(crate::errors::invalid_field(
                "after_id",
                "must not be negative",
            ));
        }
        if request.account.as_ref().is_some_and(|id| id.len() > 64) {
            return Err(crate::errors::invalid_field(
                "account_id",
                "must be at most 64 characters",
            ));
        }
        let slot = self.open_stream(request.caller).ok_or_else(|| {
            tonic::Status::resource_exhausted(format!(
                "{} already has {} {} streams open; close one first",
                request.caller, self.streams_per_caller, request.rpc
            ))
        })?;
        Ok(Tail {
            after_id: request.after_id,
            account: request.account,
            stop_at_end: request.stop_at_end,
            expires_at: request.expires_at,
            slot,
            latest: self.latest(newest),
        })
    }
}

/// Replays the events after `tail.after_id` (`read(cursor)` gives the next batch),
/// then tails new ones as the shared poller sees them, until the client leaves, its
/// token expires, or (with `stop_at_end`) the stream has caught up. Each event goes
/// out as `to_message(event)`.
pub fn stream_events<E, M, R, Fut, Error>(
    tail: Tail,
    read: R,
    to_message: fn(E) -> M,
) -> tokio_stream::wrappers::ReceiverStream<Result<M, tonic::Status>>
where
    E: Streamed + Send + 'static,
    M: Send + 'static,
    R: Fn(i64) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Vec<E>, Error>> + Send,
    Error: Into<tonic::Status> + Send,
{
    let (sender, receiver) = tokio::sync::mpsc::channel(EVENT_BUFFER);
    let remaining = u64::try_from(tail.expires_at - crate::clock::now_unix_seconds()).unwrap_or(0);
    let expiry = tokio::time::Instant::now() + Duration::from_secs(remaining);
    let Tail {
        after_id,
        account,
        stop_at_end,
        slot,
        mut latest,
        ..
    } = tail;
    tokio::spawn(async move {
        let _slot = slot;
        let mut cursor = after_id;
        loop {
            let events = match read(cursor).await {
                Ok(events) => events,
                Err(error) => {
                    let _ = sender.send(Err(error.into())).await;
                    return;
                }
            };
            if events.is_empty() && stop_at_end {
                return;
            }
            if events.is_empty() {
                // Caught up: wait for the shared poller to see something newer.
                tokio::select! {
                    () = sender.closed() => return,
                    () = tokio::time::sleep_until(expiry) => {
                        let _ = sender.send(Err(token_expired())).await;
                        return;
                    }
                    // (The borrow wait_for gives is dropped here: it is not Send.)
                    changed = async { latest.wait_for(|newest| *newest > cursor).await.map(|_| ()) } => {
                        if changed.is_err() {
                            // The poller is gone: the service is stopping.
                            return;
                        }
                        continue;
                    }
                }
            }
            if tokio::time::Instant::now() >= expiry {
                let _ = sender.send(Err(token_expired())).await;
                return;
            }
            for event in events {
                cursor = event.event_id();
                if account
                    .as_deref()
                    .is_some_and(|account| account != event.account_id())
                {
                    continue;
                }
                if sender.send(Ok(to_message(event))).await.is_err() {
                    return;
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(receiver)
}

fn token_expired() -> tonic::Status {
    tonic::Status::unauthenticated(
        "the token has expired; reconnect with a fresh one and resume from the last event_id",
    )
}
