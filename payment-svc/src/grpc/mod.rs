//! The wire edge of payment-svc. The repayment flow (SPEC §6) is not built yet:
//! every RPC is declared, authenticated and answers UNIMPLEMENTED.

use billpay_contracts::payment::v1::{
    CreateRepaymentRequest, CreateRepaymentResponse, GetPaymentRequest, GetPaymentResponse,
    ListPaymentsRequest, ListPaymentsResponse, RefundPaymentRequest, RefundPaymentResponse,
    payment_service_server::PaymentService,
};
use service_kit::auth::{Access, RpcRule};
use tonic::{Request, Response, Status};

/// Who may call each RPC (see SPEC §7). A method missing here is refused.
pub const RPC_RULES: &[RpcRule] = &[
    RpcRule {
        path: "/payment.v1.PaymentService/CreateRepayment",
        scope: "payment:write",
        access: Access::CustomerWrite,
    },
    RpcRule {
        path: "/payment.v1.PaymentService/GetPayment",
        scope: "payment:read",
        access: Access::Read,
    },
    RpcRule {
        path: "/payment.v1.PaymentService/ListPayments",
        scope: "payment:read",
        access: Access::Read,
    },
    RpcRule {
        path: "/payment.v1.PaymentService/RefundPayment",
        scope: "payment:refund",
        access: Access::ServiceOnly,
    },
];

/// The PaymentService implementation.
#[derive(Debug, Clone, Default)]
pub struct PaymentApi;

fn not_built_yet(rpc: &str) -> Status {
    Status::unimplemented(format!(
        "{rpc} is declared but not implemented yet: repayments arrive with the repayments issue"
    ))
}

#[tonic::async_trait]
impl PaymentService for PaymentApi {
    async fn create_repayment(
        &self,
        _request: Request<CreateRepaymentRequest>,
    ) -> Result<Response<CreateRepaymentResponse>, Status> {
        Err(not_built_yet("CreateRepayment"))
    }

    async fn get_payment(
        &self,
        _request: Request<GetPaymentRequest>,
    ) -> Result<Response<GetPaymentResponse>, Status> {
        Err(not_built_yet("GetPayment"))
    }

    async fn list_payments(
        &self,
        _request: Request<ListPaymentsRequest>,
    ) -> Result<Response<ListPaymentsResponse>, Status> {
        Err(not_built_yet("ListPayments"))
    }

    async fn refund_payment(
        &self,
        _request: Request<RefundPaymentRequest>,
    ) -> Result<Response<RefundPaymentResponse>, Status> {
        Err(not_built_yet("RefundPayment"))
    }
}
