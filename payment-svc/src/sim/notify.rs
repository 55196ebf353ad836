//! Wallet notifications: signed, posted to the charge's `notify_url` after a delay,
//! and retried with backoff (100 ms doubling to 5 s, at most 50 tries) until the
//! receiver answers 200. Deliveries run as tasks owned by one dispatcher, which
//! aborts them all when the simulator stops.

use std::{sync::Arc, time::Duration};

use reqwest::{StatusCode, header::CONTENT_TYPE};
use tokio::{
    sync::mpsc,
    task::{JoinHandle, JoinSet},
};

use super::{Stop, config::ProviderSecrets, provider::Provider, wire};
use crate::providers::signature::{SIGNATURE_HEADER, sign};

/// Tries per notification before giving up on it.
pub const TRIES_MAX: u32 = 50;
/// The wait after the first failed try; it doubles after each one.
const BACKOFF_FIRST_MS: u64 = 100;
/// The longest wait between tries.
const BACKOFF_MAX_MS: u64 = 5_000;
/// How long one try may take, connecting included.
const TRY_TIMEOUT: Duration = Duration::from_secs(5);
/// Deliveries waiting for the dispatcher; a full queue makes charges wait.
const QUEUE_LENGTH_MAX: usize = 1_024;
/// Deliveries in progress at once; past it, the queue fills.
const IN_FLIGHT_MAX: usize = 4_096;

/// The notifications for one charge, sent in order to one URL.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub provider: Provider,
    pub notify_url: reqwest::Url,
    pub notifications: Vec<wire::Notification>,
}

/// Hands deliveries to the dispatcher.
#[derive(Debug, Clone)]
pub struct Notifier {
    queue: mpsc::Sender<Delivery>,
}

impl Notifier {
    /// Queues `delivery`, waiting while the queue is full. Fails only once the
    /// simulator is stopping, when the delivery is dropped.
    pub async fn schedule(&self, delivery: Delivery) -> Result<(), Delivery> {
        self.queue.send(delivery).await.map_err(|error| error.0)
    }
}

/// Sends notifications: the HTTP client, the secrets, and the delay before a first try.
#[derive(Debug)]
struct Courier {
    client: reqwest::Client,
    secrets: ProviderSecrets,
    first_try_delay: Duration,
}

/// The HTTP client notifications go out on. It ignores proxies: receivers are
/// reached directly.
pub fn client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(TRY_TIMEOUT)
        .build()
}

/// Starts the dispatcher; it runs until `stop` says so (or every `Notifier` is
/// gone), then aborts the deliveries in progress and ends.
pub fn start(
    client: reqwest::Client,
    secrets: ProviderSecrets,
    first_try_delay: Duration,
    stop: Stop,
) -> (Notifier, JoinHandle<()>) {
    let (queue, queued) = mpsc::channel(QUEUE_LENGTH_MAX);
    let courier = Arc::new(Courier {
        client,
        secrets,
        first_try_delay,
    });
    let dispatcher = tokio::spawn(dispatch(queued, courier, stop));
    (Notifier { queue }, dispatcher)
}

async fn dispatch(mut queued: mpsc::Receiver<Delivery>, courier: Arc<Courier>, mut stop: Stop) {
    let mut in_flight = JoinSet::new();
    loop {
        tokio::select! {
            () = stop.stopped() => break,
            delivery = queued.recv(), if in_flight.len() < IN_FLIGHT_MAX => match delivery {
                Some(delivery) => {
                    in_flight.spawn(Arc::clone(&courier).deliver(delivery));
                }
                None => break,
            },
            Some(finished) = in_flight.join_next(), if !in_flight.is_empty() => {
                if let Err(error) = finished {
                    tracing::error!(%error, "a notification delivery failed");
                }
            }
        }
    }
    if !in_flight.is_empty() {
        tracing::info!(
            deliveries = in_flight.len(),
            "stopping: abandoning notifications in progress"
        );
    }
    in_flight.shutdown().await;
}

impl Courier {
    async fn deliver(self: Arc<Self>, delivery: Delivery) {
        tokio::time::sleep(self.first_try_delay).await;
        for notification in &delivery.notifications {
            self.deliver_one(&delivery, notification).await;
        }
    }

    /// Posts `notification` until a 200 or `TRIES_MAX` tries. A notification given up
    /// on is only logged: the charge stays readable by `GET …/charges/{id}`.
    #[tracing::instrument(skip_all, fields(
        provider = delivery.provider.ledger_name(),
        payment_id = %notification.payment_id,
        sequence = notification.sequence,
    ))]
    async fn deliver_one(&self, delivery: &Delivery, notification: &wire::Notification) {
        let body = match wire::to_body(notification) {
            Ok(body) => body,
            Err(error) => {
                tracing::error!(%error, "cannot encode a notification");
                return;
            }
        };
        let signature = sign(self.secrets.of(delivery.provider), &body);
        for attempt in 1..=TRIES_MAX {
            let sent = self
                .client
                .post(delivery.notify_url.clone())
                .header(CONTENT_TYPE, "application/json")
                .header(SIGNATURE_HEADER, signature.as_str())
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(response) if response.status() == StatusCode::OK => {
                    tracing::info!(attempt, status = %notification.status, "notification delivered");
                    return;
                }
                Ok(response) => {
                    tracing::debug!(attempt, status = %response.status(), "notification refused");
                }
                Err(error) => tracing::debug!(attempt, %error, "notification not delivered"),
            }
            if attempt < TRIES_MAX {
                tokio::time::sleep(backoff(attempt)).await;
            }
        }
        tracing::warn!(tries = TRIES_MAX, "giving up on a notification");
    }
}

/// The wait after failed try number `attempt` (from 1): 100 ms, doubling, at most 5 s.
pub fn backoff(attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1).min(16);
    Duration::from_millis((BACKOFF_FIRST_MS << doublings).min(BACKOFF_MAX_MS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_100_ms_to_5_s() {
        let waits_ms: Vec<_> = (1..=9)
            .map(|attempt| backoff(attempt).as_millis())
            .collect();
        assert_eq!(
            waits_ms,
            [100, 200, 400, 800, 1_600, 3_200, 5_000, 5_000, 5_000]
        );
        assert_eq!(backoff(TRIES_MAX), Duration::from_millis(5_000));
        assert_eq!(backoff(u32::MAX), Duration::from_millis(5_000));
    }
}
