//! CancelPlan.

use billpay_contracts::billing::v1 as wire;
use service_kit::errors::{AllChecked as _, FieldViolations, refusal};
use tonic::{Code, Request, Status};

use super::{
    BillingApi,
    convert::{check_id, money_to_wire, plan_to_wire, sum_error},
};
use crate::{
    domain::{account::CustomerRef, cancellation::CancelRefusal, credit_limit::Reason},
    storage::{CancelOutcome, Cancelled},
};

impl BillingApi {
    pub(super) async fn handle_cancel_plan(
        &self,
        request: Request<wire::CancelPlanRequest>,
    ) -> Result<wire::CancelPlanResponse, Status> {
        let message = request.get_ref();
        let mut violations = FieldViolations::new();
        let plan_id = violations.check("plan_id", check_id(&message.plan_id));
        // A request id follows the same rules as a customer reference.
        let request_id = violations.check("request_id", CustomerRef::parse(&message.request_id));
        let reason = violations.check("reason", Reason::parse(&message.reason));
        let (plan_id, request_id, reason) =
            violations.finish((plan_id, request_id, reason).all())?;
        let today = self.today();
        let outcome = self
            .store
            .cancel_plan(plan_id, request_id.as_str(), &reason, today)
            .await?;
        let (cancelled, replayed) = match outcome {
            CancelOutcome::Cancelled(cancelled) => (cancelled, false),
            CancelOutcome::Replayed(cancelled) => (cancelled, true),
            CancelOutcome::RequestIdReused => {
                return Err(refusal(
                    Code::AlreadyExists,
                    "IDEMPOTENCY_KEY_REUSED",
                    "this request_id already cancelled the plan with another reason",
                ));
            }
            CancelOutcome::NotCancellable(CancelRefusal::Money(error)) => {
                return Err(sum_error(error));
            }
            CancelOutcome::NotCancellable(refused) => {
                return Err(refusal(
                    Code::FailedPrecondition,
                    "PLAN_NOT_CANCELLABLE",
                    refused.to_string(),
                ));
            }
            CancelOutcome::UnknownPlan => {
                return Err(Status::not_found(format!("no plan {plan_id}")));
            }
        };
        tracing::Span::current().record("account_id", cancelled.plan.account_id.as_str());
        cancelled_to_wire(&cancelled, replayed, today)
    }
}

fn cancelled_to_wire(
    cancelled: &Cancelled,
    replayed: bool,
    today: chrono::NaiveDate,
) -> Result<wire::CancelPlanResponse, Status> {
    Ok(wire::CancelPlanResponse {
        plan: Some(
            plan_to_wire(&cancelled.plan, &cancelled.bills, true, today).map_err(sum_error)?,
        ),
        released_principal: Some(money_to_wire(cancelled.released_principal)),
        refunded_to_credit_balance: Some(money_to_wire(cancelled.refunded)),
        replayed,
    })
}
