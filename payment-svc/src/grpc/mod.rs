//! The wire edge of payment-svc: the only module that knows prost types (besides the
//! billing client and the target it forwards).

mod autopay;
mod convert;
mod dead_letters;
mod mandates;
mod repayments;

use std::sync::Arc;

use billpay_contracts::payment::v1::{self as wire, payment_service_server::PaymentService};
use service_kit::auth::{Access, RpcRule};
use service_kit::event_watch::EventWatch;
use tonic::{Request, Response, Status};

use crate::{autopay::Autopay, domain::payment::FingerprintKey, flow::PaymentFlow};

const fn rule(method: &'static str, scope: &'static str, access: Access) -> RpcRule {
    RpcRule {
        path: method,
        scope,
        access,
    }
}

/// Who may call each RPC (see SPEC §7). A method missing here is refused.
pub const RPC_RULES: &[RpcRule] = &[
    rule(
        "/payment.v1.PaymentService/CreateRepayment",
        "payment:write",
        Access::CustomerWrite,
    ),
    rule(
        "/payment.v1.PaymentService/GetPayment",
        "payment:read",
        Access::Read,
    ),
    rule(
        "/payment.v1.PaymentService/ListPayments",
        "payment:read",
        Access::Read,
    ),
    rule(
        "/payment.v1.PaymentService/RefundPayment",
        "payment:refund",
        Access::ServiceOnly,
    ),
    // Read for operators and services; the handler refuses customers.
    rule(
        "/payment.v1.PaymentService/ListDeadLetters",
        "payment:read",
        Access::Read,
    ),
    rule(
        "/payment.v1.PaymentService/RetryDeadLetter",
        "payment:admin",
        Access::ServiceOnly,
    ),
    // Consent is the customer's own act: no service or operator may give it.
    rule(
        "/payment.v1.PaymentService/CreateMandate",
        "payment:write",
        Access::CustomerOnly,
    ),
    // The one write operators may do (audited), on the customer's call.
    rule(
        "/payment.v1.PaymentService/RevokeMandate",
        "payment:write",
        Access::OperatorWrite,
    ),
    rule(
        "/payment.v1.PaymentService/GetMandate",
        "payment:read",
        Access::Read,
    ),
    rule(
        "/payment.v1.PaymentService/ListMandates",
        "payment:read",
        Access::Read,
    ),
    rule(
        "/payment.v1.PaymentService/RunAutopay",
        "payment:admin",
        Access::ServiceOnly,
    ),
    // Customers see their own account's events only.
    rule(
        "/payment.v1.PaymentService/WatchPaymentEvents",
        "payment:read",
        Access::Read,
    ),
];

/// The PaymentService implementation.
#[derive(Debug, Clone)]
pub struct PaymentApi {
    flow: Arc<PaymentFlow>,
    fingerprint_key: FingerprintKey,
    autopay: Arc<Autopay>,
    watch: Arc<EventWatch>,
}

impl PaymentApi {
    pub fn new(
        flow: Arc<PaymentFlow>,
        fingerprint_key: FingerprintKey,
        autopay: Arc<Autopay>,
    ) -> Self {
        Self {
            flow,
            fingerprint_key,
            autopay,
            watch: Arc::new(EventWatch::default()),
        }
    }
}

#[tonic::async_trait]
impl PaymentService for PaymentApi {
    async fn create_repayment(
        &self,
        request: Request<wire::CreateRepaymentRequest>,
    ) -> Result<Response<wire::CreateRepaymentResponse>, Status> {
        self.handle_create_repayment(request)
            .await
            .map(Response::new)
    }

    async fn get_payment(
        &self,
        request: Request<wire::GetPaymentRequest>,
    ) -> Result<Response<wire::GetPaymentResponse>, Status> {
        self.handle_get_payment(request).await.map(Response::new)
    }

    async fn list_payments(
        &self,
        request: Request<wire::ListPaymentsRequest>,
    ) -> Result<Response<wire::ListPaymentsResponse>, Status> {
        self.handle_list_payments(request).await.map(Response::new)
    }

    async fn refund_payment(
        &self,
        request: Request<wire::RefundPaymentRequest>,
    ) -> Result<Response<wire::RefundPaymentResponse>, Status> {
        self.handle_refund_payment(request).await.map(Response::new)
    }

    async fn list_dead_letters(
        &self,
        request: Request<wire::ListDeadLettersRequest>,
    ) -> Result<Response<wire::ListDeadLettersResponse>, Status> {
        self.handle_list_dead_letters(request)
            .await
            .map(Response::new)
    }

    async fn retry_dead_letter(
        &self,
        request: Request<wire::RetryDeadLetterRequest>,
    ) -> Result<Response<wire::RetryDeadLetterResponse>, Status> {
        self.handle_retry_dead_letter(request)
            .await
            .map(Response::new)
    }

    async fn create_mandate(
        &self,
        request: Request<wire::CreateMandateRequest>,
    ) -> Result<Response<wire::CreateMandateResponse>, Status> {
        self.handle_create_mandate(request).await.map(Response::new)
    }

    async fn revoke_mandate(
        &self,
        request: Request<wire::RevokeMandateRequest>,
    ) -> Result<Response<wire::RevokeMandateResponse>, Status> {
        self.handle_revoke_mandate(request).await.map(Response::new)
    }

    async fn get_mandate(
        &self,
        request: Request<wire::GetMandateRequest>,
    ) -> Result<Response<wire::GetMandateResponse>, Status> {
        self.handle_get_mandate(request).await.map(Response::new)
    }

    async fn list_mandates(
        &self,
        request: Request<wire::ListMandatesRequest>,
    ) -> Result<Response<wire::ListMandatesResponse>, Status> {
        self.handle_list_mandates(request).await.map(Response::new)
    }

    async fn run_autopay(
        &self,
        request: Request<wire::RunAutopayRequest>,
    ) -> Result<Response<wire::RunAutopayResponse>, Status> {
        self.handle_run_autopay(request).await.map(Response::new)
    }

    type WatchPaymentEventsStream = autopay::PaymentEventStream;

    async fn watch_payment_events(
        &self,
        request: Request<wire::WatchPaymentEventsRequest>,
    ) -> Result<Response<Self::WatchPaymentEventsStream>, Status> {
        self.handle_watch_payment_events(request)
            .await
            .map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    const SERVICE: &str = "payment.v1.PaymentService";

    #[test]
    fn every_rpc_of_the_contract_has_an_access_rule() {
        let missing = service_kit::auth::methods_without_rules(SERVICE, super::RPC_RULES);
        assert!(missing.is_empty(), "no access rule for {missing:?}");
        let all = service_kit::auth::methods_without_rules(SERVICE, &[]);
        assert_eq!(
            all.len(),
            super::RPC_RULES.len(),
            "one rule per method: {all:?}"
        );
    }
}
