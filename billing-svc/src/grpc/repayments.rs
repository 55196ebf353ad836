//! QuoteRepayment, ApplyRepayment and ReverseRepayment.

use billpay_contracts::{billing::v1 as wire, common::v1::repayment_target::Kind};
use service_kit::{
    audit::admit_account,
    auth::Caller,
    clock::{now_micros, timestamp_from_micros},
    errors::{AllChecked as _, Checked, FieldViolations, invalid_field, refusal},
};
use tonic::{Code, Request, Status};

use super::{
    BillingApi,
    accounts::unknown_account,
    convert::{check_id, money_field, money_to_wire, sum_error},
    plans::parse_id,
};
use crate::{
    domain::{
        account::AccountId,
        allocation::{BillAllocation, Target, TargetError, allocate, covered, owed},
        bill::Bill,
        payoff::{PayoffTerms, payoff_allocations, payoff_lines, settles_early},
    },
    storage::{ApplyDecision, ApplyOutcome, ReverseOutcome},
};
use service_kit::money::{Money, MoneyError};

impl BillingApi {
    pub(super) async fn handle_quote_repayment(
        &self,
        request: Request<wire::QuoteRepaymentRequest>,
    ) -> Result<wire::QuoteRepaymentResponse, Status> {
        let caller = Caller::of(&request)?;
        let message = request.get_ref();
        let mut violations = FieldViolations::new();
        let account_id = violations.check("account_id", AccountId::parse(&message.account_id));
        let target = parse_target(&mut violations, message.target.as_ref());
        let (account_id, target) = violations.finish((account_id, target).all())?;
        admit_account(
            self.store.db(),
            caller,
            "QuoteRepayment",
            account_id.as_str(),
        )
        .await?;
        let today = self.today();
        let (allocations, amount) = if let Target::PlanPayoff(plan_id) = &target {
            self.existing_account(&account_id).await?;
            let (terms, bills) = self.payoff_terms(&account_id, plan_id).await?;
            let lines = payoff_lines(terms, &bills, today).map_err(sum_error)?;
            let (allocations, total) = payoff_allocations(&lines, &bills).map_err(sum_error)?;
            if total.is_zero() {
                return Err(target_error(TargetError::NothingToPay));
            }
            (allocations, total)
        } else {
            // The account and its bills in one read (one round trip on PostgreSQL).
            let (_, bills) = self
                .store
                .account_with_bills(&account_id)
                .await?
                .ok_or_else(|| unknown_account(&account_id))?;
            let (owed, amount) = owed(&target, &bills, today).map_err(target_error)?;
            (allocate(amount, &owed).map_err(sum_error)?.0, amount)
        };
        Ok(wire::QuoteRepaymentResponse {
            amount: Some(money_to_wire(amount)),
            allocations: allocations_to_wire(&allocations).map_err(sum_error)?,
            quoted_at: Some(timestamp_from_micros(now_micros())),
        })
    }

    pub(super) async fn handle_apply_repayment(
        &self,
        request: Request<wire::ApplyRepaymentRequest>,
    ) -> Result<wire::ApplyRepaymentResponse, Status> {
        let message = request.get_ref();
        let mut violations = FieldViolations::new();
        let payment_id = violations.check("payment_id", check_id(&message.payment_id));
        let account_id = violations.check("account_id", AccountId::parse(&message.account_id));
        let amount = money_field(&mut violations, "amount", message.amount.as_ref());
        if amount.is_ok_and(|amount| amount.is_zero()) {
            violations.add("amount", "must be greater than zero");
        }
        let target = parse_target(&mut violations, message.target.as_ref());
        let (payment_id, account_id, amount, target) =
            violations.finish((payment_id, account_id, amount, target).all())?;
        let span = tracing::Span::current();
        span.record("account_id", account_id.as_str());
        span.record("payment_id", payment_id);
        let today = self.today();
        let payoff = match &target {
            Target::PlanPayoff(plan_id) => match self.payoff_terms(&account_id, plan_id).await {
                Ok((terms, _)) => Some((plan_id.clone(), terms)),
                // Captured money is never refused: without a plan to settle, it is
                // kept as credit balance.
                Err(_) => None,
            },
            _ => None,
        };
        let outcome = self
            .store
            .apply_repayment(payment_id, &account_id, amount, today, |bills| {
                decide(amount, &target, payoff.as_ref(), bills, today)
            })
            .await?;
        let (applied, replayed) = match outcome {
            ApplyOutcome::Applied(applied) => {
                service_kit::failpoint::failpoint("billing-apply-after-commit");
                (applied, false)
            }
            ApplyOutcome::Replayed(applied) => (applied, true),
            ApplyOutcome::PaymentIdReused => {
                return Err(refusal(
                    Code::AlreadyExists,
                    "IDEMPOTENCY_KEY_REUSED",
                    "this payment_id was applied with another account or amount",
                ));
            }
            ApplyOutcome::UnknownAccount => return Err(unknown_account(&account_id)),
        };
        if replayed {
            tracing::debug!("repayment already applied; answering the first result");
        } else {
            tracing::info!(
                to_bills = %applied.applied_to_bills,
                to_credit_balance = %applied.added_to_credit_balance,
                "repayment applied"
            );
        }
        Ok(wire::ApplyRepaymentResponse {
            payment_id: applied.payment_id,
            applied_to_bills: Some(money_to_wire(applied.applied_to_bills)),
            added_to_credit_balance: Some(money_to_wire(applied.added_to_credit_balance)),
            allocations: allocations_to_wire(&applied.allocations).map_err(sum_error)?,
            replayed,
        })
    }

    pub(super) async fn handle_reverse_repayment(
        &self,
        request: Request<wire::ReverseRepaymentRequest>,
    ) -> Result<wire::ReverseRepaymentResponse, Status> {
        let payment_id = parse_id("payment_id", &request.get_ref().payment_id)?;
        tracing::Span::current().record("payment_id", payment_id);
        let (reversed, replayed) = match self
            .store
            .reverse_repayment(payment_id, self.today())
            .await?
        {
            ReverseOutcome::Reversed(reversed) => (reversed, false),
            ReverseOutcome::Replayed(reversed) => (reversed, true),
            ReverseOutcome::UnknownPayment => {
                return Err(Status::not_found(format!(
                    "no repayment {payment_id} was applied"
                )));
            }
            ReverseOutcome::NotReversible(why) => {
                tracing::warn!(why, "a refunded payment cannot be reversed automatically");
                return Err(refusal(
                    Code::FailedPrecondition,
                    "NOT_REVERSIBLE",
                    format!("repayment {payment_id} cannot be reversed automatically: {why}"),
                ));
            }
        };
        Ok(wire::ReverseRepaymentResponse {
            payment_id: reversed.payment_id,
            reversed_from_bills: Some(money_to_wire(reversed.from_bills)),
            reversed_from_credit_balance: Some(money_to_wire(reversed.from_credit_balance)),
            replayed,
        })
    }
}

impl BillingApi {
    /// The payoff terms and bills of `plan_id`, which must be `account_id`'s.
    async fn payoff_terms(
        &self,
        account_id: &AccountId,
        plan_id: &str,
    ) -> Result<(PayoffTerms, Vec<Bill>), Status> {
        let not_found = || Status::not_found(format!("no plan {plan_id} on this account"));
        let (plan, bills) = self.store.plan(plan_id).await?.ok_or_else(not_found)?;
        if plan.account_id != account_id.as_str() {
            return Err(not_found());
        }
        let product = self
            .catalog
            .product(&plan.product_id)
            .ok_or_else(|| Status::internal(format!("plan {plan_id} has an unknown product")))?;
        let terms = PayoffTerms {
            method: plan.method,
            prepay_fee: product.prepay_fee,
            purchase_date: plan.purchase_date,
        };
        Ok((terms, bills))
    }
}

/// Where captured money goes: a payoff that covers its plan settles it early;
/// anything else is allocated oldest first, the rest kept as credit balance.
fn decide(
    amount: Money,
    target: &Target,
    payoff: Option<&(String, PayoffTerms)>,
    bills: &[Bill],
    today: chrono::NaiveDate,
) -> Result<ApplyDecision, MoneyError> {
    if let Some((plan_id, terms)) = payoff {
        let plan_bills: Vec<Bill> = bills
            .iter()
            .filter(|bill| &bill.plan_id == plan_id)
            .cloned()
            .collect();
        let lines = payoff_lines(*terms, &plan_bills, today)?;
        let (allocations, total) = payoff_allocations(&lines, &plan_bills)?;
        if !total.is_zero() && amount.amount() >= total.amount() {
            // With no bill left upcoming the payoff only pays due bills, and the plan
            // is simply SETTLED once they are paid (SPEC §5.9).
            let settles_plan_early = settles_early(&lines).then(|| plan_id.clone());
            return Ok(ApplyDecision {
                allocations,
                surplus: amount.checked_sub(total)?,
                settled_charges: lines
                    .into_iter()
                    .filter_map(|line| line.settled_charge.map(|charge| (line.bill_id, charge)))
                    .collect(),
                settles_plan_early,
            });
        }
    }
    Ok(ApplyDecision::allocation(allocate(
        amount,
        &covered(target, bills, today)?,
    )?))
}

/// Parses a required repayment target.
fn parse_target(
    violations: &mut FieldViolations,
    target: Option<&billpay_contracts::common::v1::RepaymentTarget>,
) -> Checked<Target> {
    match target.and_then(|target| target.kind.as_ref()) {
        None => Err(violations.add(
            "target",
            "is required: one of bills, all_due, plan_payoff, amount",
        )),
        Some(Kind::Bills(selection)) => {
            let ids = &selection.bill_ids;
            if ids.is_empty() {
                return Err(violations.add("target.bills.bill_ids", "must name at least one bill"));
            }
            if ids.len() > 100 || ids.iter().any(|id| id.is_empty() || id.len() > 64) {
                return Err(violations.add(
                    "target.bills.bill_ids",
                    "at most 100 ids of 1 to 64 characters",
                ));
            }
            Ok(Target::Bills(ids.clone()))
        }
        Some(Kind::AllDue(_)) => Ok(Target::AllDue),
        Some(Kind::PlanPayoff(payoff)) => {
            if payoff.plan_id.is_empty() || payoff.plan_id.len() > 64 {
                return Err(
                    violations.add("target.plan_payoff.plan_id", "must be 1 to 64 characters")
                );
            }
            Ok(Target::PlanPayoff(payoff.plan_id.clone()))
        }
        Some(Kind::Amount(money)) => {
            let amount = money_field(violations, "target.amount", Some(money))?;
            if amount.is_zero() {
                return Err(violations.add("target.amount", "must be greater than zero"));
            }
            Ok(Target::Amount(amount))
        }
    }
}

fn target_error(error: TargetError) -> Status {
    let message = error.to_string();
    match error {
        TargetError::UnknownBill(_) => Status::not_found(message),
        TargetError::NothingToPay => refusal(Code::FailedPrecondition, "NOTHING_TO_PAY", message),
        TargetError::AmountAboveOwed { .. } => invalid_field("target.amount", message),
        TargetError::PlanPayoffNeedsTerms => Status::internal(message),
        TargetError::Money(error) => sum_error(error),
    }
}

fn allocations_to_wire(
    allocations: &[BillAllocation],
) -> Result<Vec<wire::Allocation>, service_kit::money::MoneyError> {
    allocations
        .iter()
        .map(|allocation| {
            Ok(wire::Allocation {
                bill_id: allocation.bill_id.clone(),
                plan_id: allocation.plan_id.clone(),
                seq: i32::try_from(allocation.seq).unwrap_or(i32::MAX),
                due_date: allocation.due_date.to_string(),
                principal: Some(money_to_wire(allocation.parts.principal)),
                interest: Some(money_to_wire(allocation.parts.interest)),
                fee: Some(money_to_wire(allocation.parts.fee)),
                penalty: Some(money_to_wire(allocation.parts.penalty)),
                amount: Some(money_to_wire(allocation.parts.total()?)),
            })
        })
        .collect()
}
