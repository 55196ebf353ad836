//! The wire edge of billing-svc: the only module that knows prost types. It parses
//! requests into domain values, calls storage, and maps every outcome to a status.

mod accounts;
mod convert;

use billpay_contracts::billing::v1::{
    CreateAccountRequest, CreateAccountResponse, GetAccountRequest, GetAccountResponse,
    billing_service_server::BillingService,
};
use service_kit::auth::{Access, RpcRule};
use tonic::{Request, Response, Status};

use crate::storage::{StorageError, Store};

/// Who may call each RPC (see SPEC §7). A method missing here is refused.
pub const RPC_RULES: &[RpcRule] = &[
    RpcRule {
        path: "/billing.v1.BillingService/CreateAccount",
        scope: "billing:write",
        access: Access::ServiceOnly,
    },
    RpcRule {
        path: "/billing.v1.BillingService/GetAccount",
        scope: "billing:read",
        access: Access::Read,
    },
];

/// The BillingService implementation.
#[derive(Debug, Clone)]
pub struct BillingApi {
    store: Store,
}

impl BillingApi {
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

impl From<StorageError> for Status {
    fn from(error: StorageError) -> Self {
        service_kit::errors::internal(error)
    }
}

#[tonic::async_trait]
impl BillingService for BillingApi {
    async fn create_account(
        &self,
        request: Request<CreateAccountRequest>,
    ) -> Result<Response<CreateAccountResponse>, Status> {
        self.handle_create_account(request).await.map(Response::new)
    }

    async fn get_account(
        &self,
        request: Request<GetAccountRequest>,
    ) -> Result<Response<GetAccountResponse>, Status> {
        self.handle_get_account(request).await.map(Response::new)
    }
}
