//! The wire edge of billing-svc: the only module that knows prost types. It parses
//! requests into domain values, calls storage, and maps every outcome to a status.

mod accounts;
mod audit;
mod bills;
mod cancellations;
mod convert;
mod credit_limits;
mod day_close;
mod plans;
mod repayments;

use std::sync::Arc;

use billpay_contracts::billing::v1::{self as wire, billing_service_server::BillingService};
use chrono::{FixedOffset, NaiveDate};
use service_kit::auth::{Access, RpcRule};
use service_kit::event_watch::EventWatch;
use tonic::{Request, Response, Status};

use crate::{clock::BusinessClock, domain::product::Catalog, jobs::DayCloser, storage::Store};

const fn rule(method: &'static str, scope: &'static str, access: Access) -> RpcRule {
    RpcRule {
        path: method,
        scope,
        access,
    }
}

/// Who may call each RPC (see SPEC §7). A method missing here is refused; a test
/// checks that every method of the contract is here.
#[rustfmt::skip]
pub const RPC_RULES: &[RpcRule] = &[
    rule("/billing.v1.BillingService/CreateAccount", "billing:write", Access::ServiceOnly),
    rule("/billing.v1.BillingService/GetAccount", "billing:read", Access::Read),
    rule("/billing.v1.BillingService/UpdateCreditLimit", "billing:limits", Access::ServiceOnly),
    rule("/billing.v1.BillingService/ListCreditLimitChanges", "billing:read", Access::Read),
    rule("/billing.v1.BillingService/GetAccountSummary", "billing:read", Access::Read),
    rule("/billing.v1.BillingService/GetCreditRecord", "billing:read", Access::Read),
    rule("/billing.v1.BillingService/ListProducts", "billing:read", Access::Read),
    rule("/billing.v1.BillingService/QuotePlan", "billing:read", Access::Read),
    rule("/billing.v1.BillingService/CreatePlan", "billing:write", Access::ServiceOnly),
    rule("/billing.v1.BillingService/CancelPlan", "billing:write", Access::ServiceOnly),
    rule("/billing.v1.BillingService/GetPlan", "billing:read", Access::Read),
    rule("/billing.v1.BillingService/ListPlans", "billing:read", Access::Read),
    rule("/billing.v1.BillingService/ListBills", "billing:read", Access::Read),
    rule("/billing.v1.BillingService/GetBill", "billing:read", Access::Read),
    rule("/billing.v1.BillingService/QuoteRepayment", "billing:read", Access::Read),
    rule("/billing.v1.BillingService/ApplyRepayment", "billing:apply", Access::ServiceOnly),
    rule("/billing.v1.BillingService/ReverseRepayment", "billing:apply", Access::ServiceOnly),
    rule("/billing.v1.BillingService/RunDayClose", "billing:admin", Access::ServiceOnly),
    rule("/billing.v1.BillingService/WatchEvents", "billing:events", Access::ServiceOnly),
    rule("/billing.v1.BillingService/ListOperatorAudit", "billing:admin", Access::ServiceOnly),
];

/// The BillingService implementation.
#[derive(Debug, Clone)]
pub struct BillingApi {
    store: Store,
    catalog: Arc<Catalog>,
    business_offset: FixedOffset,
    clock: BusinessClock,
    watch: Arc<EventWatch>,
    closer: DayCloser,
}

impl BillingApi {
    pub fn new(
        store: Store,
        catalog: Arc<Catalog>,
        business_offset: FixedOffset,
        clock: BusinessClock,
        closer: DayCloser,
    ) -> Self {
        Self {
            store,
            catalog,
            business_offset,
            clock,
            watch: Arc::new(EventWatch::default()),
            closer,
        }
    }

    /// At most `streams` WatchEvents streams per caller at once.
    pub fn with_streams_per_caller(mut self, streams: usize) -> Self {
        self.watch = Arc::new(EventWatch::new(streams));
        self
    }

    /// Today in the business time zone.
    fn today(&self) -> NaiveDate {
        self.clock.today(self.business_offset)
    }
}

/// Each RPC delegates to its `handle_*` method, which returns the bare response.
macro_rules! delegate {
    ($($rpc:ident => $handler:ident($request:ty) -> $response:ty;)+) => {
        #[tonic::async_trait]
        impl BillingService for BillingApi {
            $(
                async fn $rpc(&self, request: Request<$request>) -> Result<Response<$response>, Status> {
                    self.$handler(request).await.map(Response::new)
                }
            )+

            type WatchEventsStream = day_close::EventStream;

            async fn watch_events(
                &self,
                request: Request<wire::WatchEventsRequest>,
            ) -> Result<Response<Self::WatchEventsStream>, Status> {
                self.handle_watch_events(request).await.map(Response::new)
            }
        }
    };
}

delegate! {
    create_account => handle_create_account(wire::CreateAccountRequest) -> wire::CreateAccountResponse;
    get_account => handle_get_account(wire::GetAccountRequest) -> wire::GetAccountResponse;
    update_credit_limit => handle_update_credit_limit(wire::UpdateCreditLimitRequest) -> wire::UpdateCreditLimitResponse;
    list_credit_limit_changes => handle_list_credit_limit_changes(wire::ListCreditLimitChangesRequest) -> wire::ListCreditLimitChangesResponse;
    get_account_summary => handle_get_account_summary(wire::GetAccountSummaryRequest) -> wire::GetAccountSummaryResponse;
    get_credit_record => handle_get_credit_record(wire::GetCreditRecordRequest) -> wire::GetCreditRecordResponse;
    list_products => handle_list_products(wire::ListProductsRequest) -> wire::ListProductsResponse;
    quote_plan => handle_quote_plan(wire::QuotePlanRequest) -> wire::QuotePlanResponse;
    create_plan => handle_create_plan(wire::CreatePlanRequest) -> wire::CreatePlanResponse;
    cancel_plan => handle_cancel_plan(wire::CancelPlanRequest) -> wire::CancelPlanResponse;
    get_plan => handle_get_plan(wire::GetPlanRequest) -> wire::GetPlanResponse;
    list_plans => handle_list_plans(wire::ListPlansRequest) -> wire::ListPlansResponse;
    list_bills => handle_list_bills(wire::ListBillsRequest) -> wire::ListBillsResponse;
    get_bill => handle_get_bill(wire::GetBillRequest) -> wire::GetBillResponse;
    quote_repayment => handle_quote_repayment(wire::QuoteRepaymentRequest) -> wire::QuoteRepaymentResponse;
    apply_repayment => handle_apply_repayment(wire::ApplyRepaymentRequest) -> wire::ApplyRepaymentResponse;
    reverse_repayment => handle_reverse_repayment(wire::ReverseRepaymentRequest) -> wire::ReverseRepaymentResponse;
    run_day_close => handle_run_day_close(wire::RunDayCloseRequest) -> wire::RunDayCloseResponse;
    list_operator_audit => handle_list_operator_audit(wire::ListOperatorAuditRequest) -> wire::ListOperatorAuditResponse;
}

#[cfg(test)]
mod tests {
    const SERVICE: &str = "billing.v1.BillingService";

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
