//! What WatchPaymentEvents streams share, as billing-svc's WatchEvents: one poller of
//! the newest event id, fanned out to every stream through a `watch` channel (a
//! stream that has caught up waits on it and reads only when there is something
//! new), and the per-caller stream count.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::watch;

use crate::storage::Store;

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

    /// The newest event id as the shared poller sees it; the poller starts with the
    /// first stream and stops when the last one is gone.
    pub fn latest(&self, store: &Store) -> watch::Receiver<i64> {
        let Ok(mut latest) = self.latest.lock() else {
            // A poisoned lock: a private poller still works.
            return spawn_poller(store.clone());
        };
        if let Some(receiver) = latest.as_ref()
            && receiver.has_changed().is_ok()
        {
            return receiver.clone();
        }
        let receiver = spawn_poller(store.clone());
        *latest = Some(receiver.clone());
        receiver
    }
}

fn spawn_poller(store: Store) -> watch::Receiver<i64> {
    let (sender, receiver) = watch::channel(0);
    tokio::spawn(async move {
        loop {
            match store.last_payment_event_id().await {
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
