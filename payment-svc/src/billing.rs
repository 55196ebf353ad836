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
use std::time::Duration;

use tonic::{Request, Status, transport::Channel};

/// Tokens minted per call live this long: long enough for one call and its retries.
const TOKEN_TTL_SECONDS: i64 = 300;
const SCOPES: &[&str] = &["billing:read", APPLY_SCOPE];

#[derive(Debug, Clone)]
pub struct BillingClient {
    client: BillingServiceClient<Channel>,
    /// payment-svc's own key: it signs tokens for billing and nothing else.
    signer: TokenSigner,
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
        })
    }

    fn request<T>(&self, message: T, request_id: Option<&str>) -> Request<T> {
        let mut request = Request::new(message);
        let token = mint(
            &self.signer,
            PAYMENT_SVC_SUBJECT,
            Role::Service,
            SCOPES,
            None,
            TOKEN_TTL_SECONDS,
        );
        if let Ok(value) = format!("Bearer {token}").parse() {
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
