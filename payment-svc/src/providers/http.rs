//! The HTTP adapter for providers speaking PROVIDER_PROTOCOL.md: signed JSON
//! requests with a timeout; a retry only where the call is idempotent and safe.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use service_kit::money::Money;

use super::{
    ChargeOutcome, ChargeRequest, Notification, NotificationError, NotifiedStatus, Provider,
    QueryOutcome, RefundOutcome,
    signature::{SIGNATURE_HEADER, sign, verify},
};

/// Where a provider lives and the secret both sides sign with.
#[derive(Debug, Clone)]
pub struct ProviderSettings {
    /// e.g. `http://127.0.0.1:50060/alipay`
    pub base_url: String,
    /// Redacted in `Debug`.
    pub secret: secrecy::SecretString,
}

/// A provider reached over HTTP.
#[derive(Clone)]
pub struct HttpProvider {
    base_url: String,
    /// The base URL's path, which GET signatures cover.
    base_path: String,
    secret: Vec<u8>,
    client: reqwest::Client,
}

impl std::fmt::Debug for HttpProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HttpProvider({})", self.base_url)
    }
}

#[derive(Serialize)]
struct ChargeBody<'a> {
    payment_id: &'a str,
    amount_minor: i64,
    currency: &'a str,
    instrument: &'a str,
    notify_url: &'a str,
}

#[derive(Deserialize)]
struct ChargeReply {
    status: String,
    #[serde(default)]
    provider_ref: Option<String>,
    #[serde(default)]
    decline_code: Option<String>,
}

#[derive(Serialize)]
struct RefundBody<'a> {
    payment_id: &'a str,
    refund_id: &'a str,
    amount_minor: i64,
}

#[derive(Deserialize)]
struct NotificationBody {
    payment_id: String,
    #[serde(default)]
    provider_ref: Option<String>,
    status: String,
    #[serde(default)]
    decline_code: Option<String>,
    amount_minor: i64,
    sequence: i64,
}

impl HttpProvider {
    pub fn new(settings: &ProviderSettings, timeout: Duration) -> Result<Self, reqwest::Error> {
        let base_url = settings.base_url.trim_end_matches('/').to_owned();
        let base_path = base_url
            .split_once("://")
            .and_then(|(_, rest)| rest.find('/').map(|slash| rest[slash..].to_owned()))
            .unwrap_or_default();
        Ok(Self {
            base_url,
            base_path,
            secret: secrecy::ExposeSecret::expose_secret(&settings.secret)
                .as_bytes()
                .to_vec(),
            client: reqwest::Client::builder().timeout(timeout).build()?,
        })
    }

    async fn post(&self, path: &str, body: Vec<u8>) -> Result<reqwest::Response, reqwest::Error> {
        self.client
            .post(format!("{}{path}", self.base_url))
            .header(SIGNATURE_HEADER, sign(&self.secret, &body))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .headers(trace_headers())
            .body(body)
            .send()
            .await
    }

    async fn get(&self, path: &str) -> Result<reqwest::Response, reqwest::Error> {
        let signed_path = format!("{}{path}", self.base_path);
        self.client
            .get(format!("{}{path}", self.base_url))
            .header(SIGNATURE_HEADER, sign(&self.secret, signed_path.as_bytes()))
            .headers(trace_headers())
            .send()
            .await
    }

    async fn query_once(&self, payment_id: &str) -> QueryOutcome {
        let response = match self.get(&format!("/charges/{payment_id}")).await {
            Ok(response) => response,
            Err(error) => {
                return QueryOutcome::Unknown {
                    reason: error.to_string(),
                };
            }
        };
        match response.status() {
            reqwest::StatusCode::NOT_FOUND => QueryOutcome::NotFound,
            status if status.is_success() => match response.json::<ChargeReply>().await {
                Ok(reply) => match charge_outcome(reply) {
                    ChargeOutcome::Succeeded { provider_ref } => {
                        QueryOutcome::Succeeded { provider_ref }
                    }
                    ChargeOutcome::Declined { code, message } => {
                        QueryOutcome::Declined { code, message }
                    }
                    ChargeOutcome::Pending { .. } => QueryOutcome::Unknown {
                        reason: "still pending".into(),
                    },
                    ChargeOutcome::Unknown { reason } => QueryOutcome::Unknown { reason },
                },
                Err(error) => QueryOutcome::Unknown {
                    reason: error.to_string(),
                },
            },
            status => QueryOutcome::Unknown {
                reason: format!("provider answered {status}"),
            },
        }
    }
}

/// The current span's W3C trace context, so the provider's side of a call joins the
/// repayment's trace.
fn trace_headers() -> reqwest::header::HeaderMap {
    service_kit::telemetry::outgoing_trace_headers()
        .into_iter()
        .filter_map(|(name, value)| Some((name.parse().ok()?, value.parse().ok()?)))
        .collect()
}

fn charge_outcome(reply: ChargeReply) -> ChargeOutcome {
    let provider_ref = reply.provider_ref.unwrap_or_default();
    match reply.status.as_str() {
        "SUCCEEDED" => ChargeOutcome::Succeeded { provider_ref },
        "PENDING" => ChargeOutcome::Pending { provider_ref },
        "DECLINED" => {
            let code = reply.decline_code.unwrap_or_else(|| "DECLINED".into());
            ChargeOutcome::Declined {
                message: format!("the provider declined the payment: {code}"),
                code,
            }
        }
        other => ChargeOutcome::Unknown {
            reason: format!("unknown status {other:?}"),
        },
    }
}

impl Provider for HttpProvider {
    async fn charge(&self, request: &ChargeRequest<'_>) -> ChargeOutcome {
        let body = ChargeBody {
            payment_id: request.payment_id,
            amount_minor: request.amount.minor(),
            currency: request.amount.currency().code(),
            instrument: request.instrument.expose(),
            notify_url: request.notify_url,
        };
        let Ok(body) = serde_json::to_vec(&body) else {
            return ChargeOutcome::Unknown {
                reason: "cannot encode the charge".into(),
            };
        };
        // A charge is not retried here: an unanswered one is resolved by asking the
        // provider (query), never by charging again.
        let response = match self.post("/charges", body).await {
            Ok(response) => response,
            Err(error) => {
                return ChargeOutcome::Unknown {
                    reason: error.to_string(),
                };
            }
        };
        let status = response.status();
        if status.is_server_error() {
            // A provider error: whether it charged is an open question, so ask. "Not
            // found" is an explicit answer that nothing was charged.
            return match self.query_once(request.payment_id).await {
                QueryOutcome::NotFound => ChargeOutcome::Declined {
                    code: "PROVIDER_ERROR".into(),
                    message: format!("the provider failed ({status}) and charged nothing"),
                },
                QueryOutcome::Succeeded { provider_ref } => {
                    ChargeOutcome::Succeeded { provider_ref }
                }
                QueryOutcome::Declined { code, message } => {
                    ChargeOutcome::Declined { code, message }
                }
                QueryOutcome::Unknown { reason } => ChargeOutcome::Unknown { reason },
            };
        }
        if !status.is_success() {
            return ChargeOutcome::Unknown {
                reason: format!("provider answered {status}"),
            };
        }
        match response.json::<ChargeReply>().await {
            Ok(reply) => charge_outcome(reply),
            Err(error) => ChargeOutcome::Unknown {
                reason: error.to_string(),
            },
        }
    }

    async fn query(&self, payment_id: &str) -> QueryOutcome {
        // A query is idempotent: one retry rides over a passing fault.
        match self.query_once(payment_id).await {
            QueryOutcome::Unknown { .. } => self.query_once(payment_id).await,
            answer => answer,
        }
    }

    async fn refund(&self, payment_id: &str, refund_id: &str, amount: Money) -> RefundOutcome {
        let body = RefundBody {
            payment_id,
            refund_id,
            amount_minor: amount.minor(),
        };
        let Ok(body) = serde_json::to_vec(&body) else {
            return RefundOutcome::Unknown {
                reason: "cannot encode the refund".into(),
            };
        };
        match self.post("/refunds", body).await {
            Ok(response) if response.status().is_success() => RefundOutcome::Refunded,
            Ok(response) if response.status().is_client_error() => RefundOutcome::Refused {
                reason: format!("provider answered {}", response.status()),
            },
            Ok(response) => RefundOutcome::Unknown {
                reason: format!("provider answered {}", response.status()),
            },
            Err(error) => RefundOutcome::Unknown {
                reason: error.to_string(),
            },
        }
    }

    fn verify_notification(
        &self,
        body: &[u8],
        signature: Option<&str>,
    ) -> Result<Notification, NotificationError> {
        if !signature.is_some_and(|signature| verify(&self.secret, body, signature)) {
            return Err(NotificationError::BadSignature);
        }
        let body: NotificationBody =
            serde_json::from_slice(body).map_err(|_| NotificationError::Malformed)?;
        let status = match body.status.as_str() {
            "SUCCEEDED" => NotifiedStatus::Succeeded,
            "DECLINED" => NotifiedStatus::Declined {
                code: body.decline_code.unwrap_or_else(|| "DECLINED".into()),
            },
            other => NotifiedStatus::Other(other.to_owned()),
        };
        Ok(Notification {
            payment_id: body.payment_id,
            provider_ref: body.provider_ref.unwrap_or_default(),
            status,
            amount_minor: body.amount_minor,
            sequence: body.sequence,
        })
    }
}
