//! ListProducts, QuotePlan, CreatePlan, GetPlan and ListPlans.

use billpay_contracts::billing::v1 as wire;
use service_kit::{
    audit::{admit_account, record},
    auth::Caller,
    errors::{AllChecked as _, Checked, FieldViolations, invalid_field, refusal},
    money::Money,
};
use tonic::{Code, Request, Status};

use super::{
    BillingApi,
    accounts::{parse_account_id, unknown_account},
    convert::{
        check_id, decimal_text, decode_page_token, encode_page_token, method_to_wire, money_field,
        money_to_wire, page_size, plan_to_wire, sum_error,
    },
};
use crate::{
    domain::{
        account::{AccountId, AccountStatus, CustomerRef},
        calendar::date_text,
        plan::{PlanError, PlanRequest, PricedPlan, price_plan},
        product::Product,
    },
    storage::{CreatePlanOutcome, NewPlan},
};

impl BillingApi {
    pub(super) async fn handle_list_products(
        &self,
        request: Request<wire::ListProductsRequest>,
    ) -> Result<wire::ListProductsResponse, Status> {
        let caller = Caller::of(&request)?;
        if caller.is_operator() {
            record(self.store.db(), &caller.subject, "ListProducts", None).await?;
        }
        Ok(wire::ListProductsResponse {
            products: self
                .catalog
                .products()
                .iter()
                .map(product_to_wire)
                .collect(),
        })
    }

    pub(super) async fn handle_quote_plan(
        &self,
        request: Request<wire::QuotePlanRequest>,
    ) -> Result<wire::QuotePlanResponse, Status> {
        let caller = Caller::of(&request)?;
        let message = request.get_ref();
        let mut violations = FieldViolations::new();
        // Optional: a quote for an account checks that account (and audits an
        // operator's look at it).
        let account_id = if message.account_id.is_empty() {
            Ok(None)
        } else {
            violations
                .check("account_id", AccountId::parse(&message.account_id))
                .map(Some)
        };
        let plan_request = parse_plan_request(
            &mut violations,
            &message.product_id,
            message.term_count,
            message.price.as_ref(),
            message.down_payment.as_ref(),
            &message.purchase_date,
        );
        let (account_id, plan_request) = violations.finish((account_id, plan_request).all())?;
        if let Some(account_id) = &account_id {
            admit_account(self.store.db(), caller, "QuotePlan", account_id.as_str()).await?;
            self.existing_account(account_id).await?;
        } else if caller.is_operator() {
            record(self.store.db(), &caller.subject, "QuotePlan", None).await?;
        }
        let priced = price_plan(&self.catalog, &plan_request, self.today()).map_err(plan_error)?;
        quote_to_wire(&priced).map_err(sum_error)
    }

    pub(super) async fn handle_create_plan(
        &self,
        request: Request<wire::CreatePlanRequest>,
    ) -> Result<wire::CreatePlanResponse, Status> {
        let message = request.get_ref();
        let mut violations = FieldViolations::new();
        let account_id = violations.check("account_id", AccountId::parse(&message.account_id));
        // An order reference follows the same rules as a customer reference.
        let order_ref = violations.check("order_ref", CustomerRef::parse(&message.order_ref));
        let plan_request = parse_plan_request(
            &mut violations,
            &message.product_id,
            message.term_count,
            message.price.as_ref(),
            message.down_payment.as_ref(),
            &message.purchase_date,
        );
        let (account_id, order_ref, plan_request) =
            violations.finish((account_id, order_ref, plan_request).all())?;
        tracing::Span::current().record("account_id", account_id.as_str());
        let today = self.today();
        let priced = price_plan(&self.catalog, &plan_request, today).map_err(plan_error)?;
        let new_plan = NewPlan {
            account_id: &account_id,
            order_ref: order_ref.as_str(),
            fingerprint: plan_request.fingerprint(),
            priced: &priced,
        };
        let (plan, bills, created) = match self.store.create_plan(&new_plan).await? {
            CreatePlanOutcome::Created(plan, bills) => (plan, bills, true),
            CreatePlanOutcome::Existing(plan, bills) => (plan, bills, false),
            CreatePlanOutcome::OrderRefReused => {
                return Err(refusal(
                    Code::AlreadyExists,
                    "IDEMPOTENCY_KEY_REUSED",
                    "this order_ref already opened a plan with different terms",
                ));
            }
            CreatePlanOutcome::UnknownAccount => return Err(unknown_account(&account_id)),
            CreatePlanOutcome::AccountNotActive(status) => return Err(account_not_active(status)),
            CreatePlanOutcome::CreditLimitExceeded { available } => {
                return Err(refusal(
                    Code::FailedPrecondition,
                    "CREDIT_LIMIT_EXCEEDED",
                    format!(
                        "principal {} exceeds the available credit {available}",
                        priced.principal
                    ),
                ));
            }
        };
        Ok(wire::CreatePlanResponse {
            plan: Some(plan_to_wire(&plan, &bills, true, today).map_err(sum_error)?),
            created,
        })
    }

    pub(super) async fn handle_get_plan(
        &self,
        request: Request<wire::GetPlanRequest>,
    ) -> Result<wire::GetPlanResponse, Status> {
        let caller = Caller::of(&request)?;
        let plan_id = parse_id("plan_id", &request.get_ref().plan_id)?;
        let (plan, bills) = self
            .store
            .plan(plan_id)
            .await?
            .ok_or_else(|| Status::not_found(format!("no plan {plan_id}")))?;
        admit_account(self.store.db(), caller, "GetPlan", &plan.account_id).await?;
        Ok(wire::GetPlanResponse {
            plan: Some(plan_to_wire(&plan, &bills, true, self.today()).map_err(sum_error)?),
        })
    }

    pub(super) async fn handle_list_plans(
        &self,
        request: Request<wire::ListPlansRequest>,
    ) -> Result<wire::ListPlansResponse, Status> {
        const TOKEN_KIND: &str = "plans";
        let caller = Caller::of(&request)?;
        let message = request.get_ref();
        let account_id = parse_account_id(&message.account_id)?;
        let limit = page_size(message.page_size)?;
        let after = decode_page_token(TOKEN_KIND, &message.page_token)?;
        admit_account(self.store.db(), caller, "ListPlans", account_id.as_str()).await?;
        let plans = self
            .store
            .plans_page(&account_id, after.as_deref(), limit)
            .await?;
        let plan_ids: Vec<&str> = plans.iter().map(|plan| plan.plan_id.as_str()).collect();
        let bills = self.store.bills_of_plans(&plan_ids).await?;
        let today = self.today();
        let next_page_token = match plans.last() {
            Some(last) if plans.len() == limit as usize => {
                encode_page_token(TOKEN_KIND, &last.plan_id)
            }
            _ => String::new(),
        };
        let plans = plans
            .iter()
            .map(|plan| {
                let own: Vec<_> = bills
                    .iter()
                    .filter(|bill| bill.plan_id == plan.plan_id)
                    .cloned()
                    .collect();
                plan_to_wire(plan, &own, false, today)
            })
            .collect::<Result<_, _>>()
            .map_err(sum_error)?;
        Ok(wire::ListPlansResponse {
            plans,
            next_page_token,
        })
    }
}

/// The longest product id accepted (the catalog's are short words).
const PRODUCT_ID_BYTES_MAX: usize = 64;

/// Parses the purchase fields QuotePlan and CreatePlan share. A missing down
/// payment is zero (零首付).
fn parse_plan_request(
    violations: &mut FieldViolations,
    product_id: &str,
    term_count: i32,
    price: Option<&billpay_contracts::common::v1::Money>,
    down_payment: Option<&billpay_contracts::common::v1::Money>,
    purchase_date: &str,
) -> Checked<PlanRequest> {
    if product_id.is_empty() {
        violations.add("product_id", "must not be empty");
    } else if product_id.len() > PRODUCT_ID_BYTES_MAX {
        violations.add(
            "product_id",
            format!("must be at most {PRODUCT_ID_BYTES_MAX} bytes"),
        );
    }
    let term_count = u32::try_from(term_count)
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| violations.add("term_count", "must be a positive number of terms"));
    let price = money_field(violations, "price", price);
    if price.is_ok_and(|price| price.is_zero()) {
        violations.add("price", "must be greater than zero");
    }
    let down_payment = match (down_payment, price) {
        (None, price) => price.map(|price| Money::zero(price.currency())),
        (Some(money), _) => money_field(violations, "down_payment", Some(money)),
    };
    Ok(PlanRequest {
        product_id: product_id.to_owned(),
        term_count: term_count?,
        price: price?,
        down_payment: down_payment?,
        purchase_date: purchase_date.to_owned(),
    })
}

/// A required id field: non-empty, at most 64 characters.
pub(super) fn parse_id<'a>(field: &str, id: &'a str) -> Result<&'a str, Status> {
    check_id(id).map_err(|problem| invalid_field(field, problem))
}

fn plan_error(error: PlanError) -> Status {
    let message = error.to_string();
    match error {
        PlanError::UnknownProduct(_) => Status::not_found(message),
        PlanError::TermNotOffered { .. } => {
            refusal(Code::FailedPrecondition, "TERM_NOT_OFFERED", message)
        }
        PlanError::AprAboveCap { .. } => {
            refusal(Code::FailedPrecondition, "APR_ABOVE_CAP", message)
        }
        PlanError::DownPaymentAbovePrice { .. } => invalid_field("down_payment", message),
        PlanError::PrincipalOutOfRange { .. } | PlanError::Money(_) => {
            invalid_field("price", message)
        }
        PlanError::PurchaseDate(error) => invalid_field("purchase_date", error.to_string()),
        PlanError::Schedule(_) => invalid_field("term_count", message),
    }
}

fn account_not_active(status: AccountStatus) -> Status {
    match status {
        AccountStatus::Delinquent => refusal(
            Code::FailedPrecondition,
            "ACCOUNT_DELINQUENT",
            "the account has an overdue bill and cannot open plans",
        ),
        AccountStatus::Closed | AccountStatus::Active => refusal(
            Code::FailedPrecondition,
            "ACCOUNT_CLOSED",
            "the account is closed",
        ),
    }
}

fn product_to_wire(product: &Product) -> wire::Product {
    wire::Product {
        product_id: product.product_id.clone(),
        name: product.name.clone(),
        method: method_to_wire(product.method).into(),
        terms: product
            .terms
            .iter()
            .map(|(term_count, rate)| wire::TermOffer {
                term_count: i32::try_from(*term_count).unwrap_or(i32::MAX),
                rate: rate.to_string(),
            })
            .collect(),
        grace_days: i32::try_from(product.grace_days).unwrap_or(i32::MAX),
        penalty_daily_rate: product.penalty_daily_rate.to_string(),
        min_principal: Some(money_to_wire(product.min_principal)),
        max_principal: Some(money_to_wire(product.max_principal)),
    }
}

fn quote_to_wire(
    priced: &PricedPlan,
) -> Result<wire::QuotePlanResponse, service_kit::money::MoneyError> {
    let lines = priced
        .schedule
        .lines()
        .iter()
        .map(|line| {
            Ok(wire::ScheduleLine {
                seq: i32::try_from(line.seq).unwrap_or(i32::MAX),
                due_date: date_text(line.due_date),
                principal: Some(money_to_wire(line.principal)),
                interest: Some(money_to_wire(line.interest)),
                fee: Some(money_to_wire(line.fee)),
                amount_due: Some(money_to_wire(line.amount_due()?)),
            })
        })
        .collect::<Result<_, service_kit::money::MoneyError>>()?;
    Ok(wire::QuotePlanResponse {
        product_id: priced.product_id.clone(),
        method: method_to_wire(priced.method).into(),
        term_count: i32::try_from(priced.term_count).unwrap_or(i32::MAX),
        rate: decimal_text(priced.rate),
        principal: Some(money_to_wire(priced.principal)),
        purchase_date: date_text(priced.purchase_date),
        lines,
        total_interest: Some(money_to_wire(priced.totals.interest)),
        total_fee: Some(money_to_wire(priced.totals.fee)),
        total_amount: Some(money_to_wire(priced.totals.amount_due)),
        apr: decimal_text(priced.apr.annual_percent),
        effective_rate: decimal_text(priced.apr.effective_percent),
    })
}
