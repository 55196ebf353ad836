//! payment-svc's client of billing-svc: quotes before charging, and applies or
//! reverses captured money, authenticated as a service with billing:read and
//! billing:apply.

use billpay_contracts::{
    billing::v1::{
        ApplyRepaymentRequest, ApplyRepaymentResponse, ListBillsRequest, ListBillsResponse,
        QuoteRepaymentRequest, QuoteRepaymentResponse, ReverseRepaymentRequest,
        ReverseRepaymentResponse, billing_service_client::BillingServiceClient,
    },
    common::v1::RepaymentTarget,
};
use service_kit::{
    auth::{APPLY_SCOPE, PAYMENT_SVC_SUBJECT, Role, TokenSigner, mint},
    telemetry::{REQUEST_ID_HEADER, outgoing_trace_headers},
};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tonic::{
    Request, Status,
    metadata::{Ascii, MetadataValue},
    transport::Channel,
};

/// Tokens payment-svc mints for billing live this long.
const TOKEN_TTL_SECONDS: i64 = 300;
/// A minted token is sent with every call for this long, then replaced: it has at least
/// four of its five minutes left for the call and its retries. Signing one per call cost
/// about 6 % of a card repayment's CPU (the key's PKCS#8 is parsed for each signature).
const TOKEN_REUSE_SECONDS: i64 = 60;
const SCOPES: &[&str] = &["billing:read", APPLY_SCOPE];

#[derive(Debug, Clone)]
pub struct BillingClient {
    client: BillingServiceClient<Channel>,
    /// payment-svc's own key: it signs tokens for billing and nothing else.
    signer: TokenSigner,
    /// The `authorization` value calls carry now, shared by the client's clones.
    bearer: Arc<Mutex<Option<Bearer>>>,
}

/// A minted `authorization` value and when it was minted (unix seconds).
#[derive(Debug)]
struct Bearer {
    minted_at: i64,
    value: MetadataValue<Ascii>,
}

impl BillingClient {
    /// A client for billing-svc at `url`. It connects lazily, so payment-svc starts
    /// (and captures money, keeping it in the outbox) while billing is down.
    pub fn new(url: &str, signer: TokenSigner) -> Result<Self, tonic::transport::Error> {
        Self::with_tls(url, signer, None)
    }

    /// Like [`BillingClient::new`], over TLS when `tls` is set (an `https://` URL;
    /// with a client identity for mutual TLS).
    pub fn with_tls(
        url: &str,
        signer: TokenSigner,
        tls: Option<tonic::transport::ClientTlsConfig>,
    ) -> Result<Self, tonic::transport::Error> {
        let mut endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())?;
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls)?;
        }
        let channel = endpoint
            .connect_timeout(std::time::Duration::from_secs(2))
            .timeout(std::time::Duration::from_secs(10))
            .connect_lazy();
        Ok(Self {
            client: BillingServiceClient::new(channel),
            signer,
            bearer: Arc::default(),
        })
    }

    /// The `authorization` value for a call made at `now`: the one minted last, unless
    /// it is [`TOKEN_REUSE_SECONDS`] old (or from the future, if the clock went back).
    fn bearer_at(&self, now: i64) -> Option<MetadataValue<Ascii>> {
        let mut bearer = self.bearer.lock().ok()?;
        if let Some(current) = bearer.as_ref()
            && (0..TOKEN_REUSE_SECONDS).contains(&(now - current.minted_at))
        {
            return Some(current.value.clone());
        }
        let token = mint(
            &self.signer,
            PAYMENT_SVC_SUBJECT,
            Role::Service,
            SCOPES,
            None,
            TOKEN_TTL_SECONDS,
        );
        let value: MetadataValue<Ascii> = format!("Bearer {token}").parse().ok()?;
        *bearer = Some(Bearer {
            minted_at: now,
            value: value.clone(),
        });
        Some(value)
    }

    fn request<T>(&self, message: T, request_id: Option<&str>) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(value) = self.bearer_at(service_kit::clock::now_unix_seconds()) {
            request.metadata_mut().insert("authorization", value);
        }
        if let Some(value) = request_id.and_then(|id| id.parse().ok()) {
            request.metadata_mut().insert(REQUEST_ID_HEADER, value);
        }
        for (name, value) in outgoing_trace_headers() {
            if let (Ok(name), Ok(value)) = (
                tonic::metadata::MetadataKey::from_bytes(name.as_bytes()),
                value.parse(),
            ) {
                request.metadata_mut().insert(name, value);
            }
        }
        request
    }

    pub async fn quote(
        &self,
        account_id: &str,
        target: RepaymentTarget,
        request_id: Option<&str>,
        budget: Duration,
    ) -> Result<QuoteRepaymentResponse, Status> {
        let message = QuoteRepaymentRequest {
            account_id: account_id.to_owned(),
            target: Some(target),
        };
        let mut request = self.request(message, request_id);
        // Sent as grpc-timeout: billing stops when the caller no longer waits.
        request.set_timeout(budget);
        let response = self.client.clone().quote_repayment(request).await?;
        Ok(response.into_inner())
    }

    /// One page of the account's unpaid bills (UPCOMING, DUE, OVERDUE), by due date.
    pub async fn unpaid_bills(
        &self,
        account_id: &str,
        page_token: &str,
    ) -> Result<ListBillsResponse, Status> {
        let message = ListBillsRequest {
            account_id: account_id.to_owned(),
            statuses: Vec::new(),
            page_size: 100,
            page_token: page_token.to_owned(),
        };
        let response = self
            .client
            .clone()
            .list_bills(self.request(message, None))
            .await?;
        Ok(response.into_inner())
    }

    pub async fn apply(
        &self,
        message: ApplyRepaymentRequest,
        request_id: Option<&str>,
    ) -> Result<ApplyRepaymentResponse, Status> {
        let response = self
            .client
            .clone()
            .apply_repayment(self.request(message, request_id))
            .await?;
        Ok(response.into_inner())
    }

    pub async fn reverse(
        &self,
        payment_id: &str,
        request_id: Option<&str>,
    ) -> Result<ReverseRepaymentResponse, Status> {
        let message = ReverseRepaymentRequest {
            payment_id: payment_id.to_owned(),
        };
        let response = self
            .client
            .clone()
            .reverse_repayment(self.request(message, request_id))
            .await?;
        Ok(response.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minted_at(client: &BillingClient) -> Option<i64> {
        let bearer = client.bearer.lock().unwrap();
        bearer.as_ref().map(|bearer| bearer.minted_at)
    }

    #[tokio::test]
    async fn a_token_is_reused_for_a_minute_and_then_minted_afresh() {
        let signer = TokenSigner::hs256(PAYMENT_SVC_SUBJECT, &[7; 32]).unwrap();
        let client = BillingClient::new("http://127.0.0.1:9", signer).unwrap();
        let clone = client.clone();
        let now = service_kit::clock::now_unix_seconds();

        let first = client.bearer_at(now).unwrap();
        assert!(first.to_str().unwrap().starts_with("Bearer ey"));
        assert_eq!(minted_at(&client), Some(now));
        // A clone shares it, up to the last second of the minute.
        assert_eq!(clone.bearer_at(now + TOKEN_REUSE_SECONDS - 1), Some(first));
        assert_eq!(minted_at(&client), Some(now));

        clone.bearer_at(now + TOKEN_REUSE_SECONDS).unwrap();
        assert_eq!(minted_at(&client), Some(now + TOKEN_REUSE_SECONDS));
        // A clock that went back mints again rather than trust a token from its future.
        client.bearer_at(now).unwrap();
        assert_eq!(minted_at(&client), Some(now));
    }
}
