//! Wire <-> domain conversions shared by the handlers.

use billpay_contracts::billing::v1 as billing;
use chrono::NaiveDate;
pub use service_kit::wire::{
    decimal_text, decode_page_token, encode_page_token, money_field, money_to_wire, page_size,
};
use service_kit::{
    clock::timestamp_from_micros,
    errors::invalid_field,
    money::{Money, MoneyError},
};
use tonic::Status;

use crate::domain::{
    bill::{Bill, BillStatus, Components},
    calendar::date_text,
    plan::{Plan, PlanStatus},
    product::InstallmentMethod,
};

/// A money conversion that cannot fail for stored values but is checked anyway.
pub fn sum_error(error: MoneyError) -> Status {
    service_kit::errors::internal(format!("a stored amount does not add up: {error}"))
}

/// A required id of another entity (plan, bill, payment): 1 to 64 characters.
pub fn check_id(id: &str) -> Result<&str, &'static str> {
    if id.is_empty() || id.len() > 64 {
        Err("must be 1 to 64 characters")
    } else {
        Ok(id)
    }
}

pub fn method_to_wire(method: InstallmentMethod) -> billing::InstallmentMethod {
    match method {
        InstallmentMethod::EqualInstallment => billing::InstallmentMethod::EqualInstallment,
        InstallmentMethod::EqualPrincipal => billing::InstallmentMethod::EqualPrincipal,
        InstallmentMethod::FlatFee => billing::InstallmentMethod::FlatFee,
        InstallmentMethod::InterestFree => billing::InstallmentMethod::InterestFree,
    }
}

pub fn bill_status_to_wire(status: BillStatus) -> billing::BillStatus {
    match status {
        BillStatus::Upcoming => billing::BillStatus::Upcoming,
        BillStatus::Due => billing::BillStatus::Due,
        BillStatus::Overdue => billing::BillStatus::Overdue,
        BillStatus::Paid => billing::BillStatus::Paid,
        BillStatus::SettledEarly => billing::BillStatus::SettledEarly,
        BillStatus::Cancelled => billing::BillStatus::Cancelled,
    }
}

/// The statuses of a ListBills filter; none means every unpaid status.
pub fn bill_statuses(statuses: &[i32]) -> Result<Vec<BillStatus>, Status> {
    if statuses.is_empty() {
        return Ok(BillStatus::UNPAID.to_vec());
    }
    let mut parsed = Vec::new();
    for &value in statuses {
        let status = BillStatus::ALL
            .into_iter()
            .find(|status| bill_status_to_wire(*status) as i32 == value)
            .ok_or_else(|| invalid_field("statuses", format!("{value} is not a bill status")))?;
        if !parsed.contains(&status) {
            parsed.push(status);
        }
    }
    Ok(parsed)
}

fn components_to_wire(components: &Components) -> billing::ComponentAmounts {
    billing::ComponentAmounts {
        principal: Some(money_to_wire(components.principal)),
        interest: Some(money_to_wire(components.interest)),
        fee: Some(money_to_wire(components.fee)),
        penalty: Some(money_to_wire(components.penalty)),
    }
}

pub fn bill_to_wire(bill: &Bill, today: NaiveDate) -> Result<billing::Bill, MoneyError> {
    Ok(billing::Bill {
        bill_id: bill.bill_id.clone(),
        plan_id: bill.plan_id.clone(),
        account_id: bill.account_id.clone(),
        seq: i32::try_from(bill.seq).unwrap_or(i32::MAX),
        due_date: date_text(bill.due_date),
        principal: Some(money_to_wire(bill.charged.principal)),
        interest: Some(money_to_wire(bill.charged.interest)),
        fee: Some(money_to_wire(bill.charged.fee)),
        penalty: Some(money_to_wire(bill.charged.penalty)),
        amount_due: Some(money_to_wire(bill.amount_due()?)),
        amount_paid: Some(money_to_wire(bill.amount_paid()?)),
        outstanding: Some(money_to_wire(bill.outstanding()?.total()?)),
        status: bill_status_to_wire(bill.status(today)).into(),
        paid_at: bill.paid_at_micros.map(timestamp_from_micros),
        days_late: bill
            .days_late()
            .map_or(0, |days| i32::try_from(days).unwrap_or(i32::MAX)),
        paid: Some(components_to_wire(&bill.paid)),
    })
}

/// A plan on the wire; totals are summed from `bills`, which are included when
/// `with_bills` is set.
pub fn plan_to_wire(
    plan: &Plan,
    bills: &[Bill],
    with_bills: bool,
    today: NaiveDate,
) -> Result<billing::Plan, MoneyError> {
    let zero = Money::zero(plan.principal.currency());
    let (mut interest, mut fee, mut amount, mut outstanding) = (zero, zero, zero, zero);
    for bill in bills {
        interest = interest.checked_add(bill.charged.interest)?;
        fee = fee.checked_add(bill.charged.fee)?;
        amount = amount
            .checked_add(bill.charged.principal)?
            .checked_add(bill.charged.interest)?
            .checked_add(bill.charged.fee)?;
        outstanding = outstanding.checked_add(bill.outstanding()?.total()?)?;
    }
    let status = match plan.status {
        PlanStatus::Active => billing::PlanStatus::Active,
        PlanStatus::Settled => billing::PlanStatus::Settled,
        PlanStatus::SettledEarly => billing::PlanStatus::SettledEarly,
        PlanStatus::Cancelled => billing::PlanStatus::Cancelled,
    };
    Ok(billing::Plan {
        plan_id: plan.plan_id.clone(),
        account_id: plan.account_id.clone(),
        order_ref: plan.order_ref.clone(),
        product_id: plan.product_id.clone(),
        method: method_to_wire(plan.method).into(),
        term_count: i32::try_from(plan.term_count).unwrap_or(i32::MAX),
        rate: decimal_text(plan.rate),
        price: Some(money_to_wire(plan.price)),
        down_payment: Some(money_to_wire(plan.down_payment)),
        principal: Some(money_to_wire(plan.principal)),
        purchase_date: date_text(plan.purchase_date),
        total_interest: Some(money_to_wire(interest)),
        total_fee: Some(money_to_wire(fee)),
        total_amount: Some(money_to_wire(amount)),
        apr: decimal_text(plan.apr),
        effective_rate: decimal_text(plan.effective_rate),
        status: status.into(),
        outstanding: Some(money_to_wire(outstanding)),
        bills: if with_bills {
            bills
                .iter()
                .map(|bill| bill_to_wire(bill, today))
                .collect::<Result<_, _>>()?
        } else {
            Vec::new()
        },
        created_at: Some(timestamp_from_micros(plan.created_at_micros)),
    })
}
