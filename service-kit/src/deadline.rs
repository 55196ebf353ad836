//! The per-RPC deadline: the caller's `grpc-timeout`, capped by the server's own
//! limit. The layer answers DEADLINE_EXCEEDED when it passes (tonic's built-in
//! timeout answers CANCELLED, which callers read as "nothing happened") and leaves
//! the [`Deadline`] in the request's extensions, so a handler can give each of its
//! sub-calls a share and answer in time.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::time::Instant;
use tonic::{Status, body::Body};
use tower::{Layer, Service};

/// When the current call must have answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline(pub Instant);

impl Deadline {
    /// What is left of it (zero once passed).
    pub fn remaining(self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }
}

/// Parses a `grpc-timeout` value: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let unit_at = value.len().checked_sub(1)?;
    let (digits, unit) = value.split_at(unit_at);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Bounds every call by the caller's deadline and `limit`, whichever comes first.
#[derive(Debug, Clone, Copy)]
pub struct DeadlineLayer {
    limit: Duration,
}

impl DeadlineLayer {
    pub fn new(limit: Duration) -> Self {
        Self { limit }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DeadlineService {
            inner,
            limit: self.limit,
        }
    }
}

#[derive(Debug, Clone)]
pub struct DeadlineService<S> {
    inner: S,
    limit: Duration,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'static>>;

impl<S, RequestBody> Service<http::Request<RequestBody>> for DeadlineService<S>
where
    S: Service<http::Request<RequestBody>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, mut request: http::Request<RequestBody>) -> Self::Future {
        let asked = request
            .headers()
            .get("grpc-timeout")
            .and_then(|value| value.to_str().ok())
            .and_then(parse_grpc_timeout);
        let budget = asked.map_or(self.limit, |asked| asked.min(self.limit));
        let deadline = Instant::now() + budget;
        request.extensions_mut().insert(Deadline(deadline));
        let call = self.inner.call(request);
        Box::pin(async move {
            match tokio::time::timeout_at(deadline, call).await {
                Ok(answer) => answer,
                Err(_) => Ok(Status::deadline_exceeded(format!(
                    "the call's deadline ({} ms) passed",
                    budget.as_millis()
                ))
                .into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_by_unit() {
        let cases = [
            ("1S", Some(Duration::from_secs(1))),
            ("250m", Some(Duration::from_millis(250))),
            ("2H", Some(Duration::from_secs(7200))),
            ("5u", Some(Duration::from_micros(5))),
            ("123456789m", None),
            ("S", None),
            ("10x", None),
            ("", None),
            ("-1S", None),
        ];
        for (value, expected) in cases {
            assert_eq!(parse_grpc_timeout(value), expected, "{value}");
        }
    }

    #[tokio::test]
    async fn a_call_past_its_limit_answers_deadline_exceeded() {
        let slow = tower::service_fn(|_request: http::Request<()>| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, std::convert::Infallible>(http::Response::new(Body::empty()))
        });
        let mut service = DeadlineLayer::new(Duration::from_millis(50)).layer(slow);
        let response = service.call(http::Request::new(())).await.unwrap();
        let status = Status::from_header_map(response.headers()).unwrap();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
    }

    #[tokio::test]
    async fn the_callers_shorter_deadline_is_handed_to_the_handler() {
        let echo = tower::service_fn(|request: http::Request<()>| async move {
            let deadline = request.extensions().get::<Deadline>().copied().unwrap();
            assert!(deadline.remaining() <= Duration::from_millis(300));
            Ok::<_, std::convert::Infallible>(http::Response::new(Body::empty()))
        });
        let mut service = DeadlineLayer::new(Duration::from_secs(10)).layer(echo);
        let request = http::Request::builder()
            .header("grpc-timeout", "300m")
            .body(())
            .unwrap();
        let response = service.call(request).await.unwrap();
        assert!(Status::from_header_map(response.headers()).is_none());
    }
}
