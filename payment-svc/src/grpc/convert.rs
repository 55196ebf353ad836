//! Payments on the wire.

use billpay_contracts::{common::v1 as common, payment::v1 as wire};
use service_kit::{
    clock::timestamp_from_micros,
    errors::{Checked, FieldViolations},
};

use crate::{
    domain::payment::{PaymentMethod, PaymentStatus},
    flow::decode_target,
    storage::Payment,
};

fn method_from_wire(value: i32) -> Option<PaymentMethod> {
    match wire::PaymentMethod::try_from(value).ok()? {
        wire::PaymentMethod::BankCard => Some(PaymentMethod::BankCard),
        wire::PaymentMethod::Alipay => Some(PaymentMethod::Alipay),
        wire::PaymentMethod::WechatPay => Some(PaymentMethod::WechatPay),
        wire::PaymentMethod::Unspecified => None,
    }
}

/// The `method` field: one of the three, else a violation.
pub fn checked_method(violations: &mut FieldViolations, value: i32) -> Checked<PaymentMethod> {
    method_from_wire(value).ok_or_else(|| {
        violations.add(
            "method",
            "must be PAYMENT_METHOD_BANK_CARD, _ALIPAY or _WECHAT_PAY",
        )
    })
}

pub fn method_to_wire(method: PaymentMethod) -> wire::PaymentMethod {
    match method {
        PaymentMethod::BankCard => wire::PaymentMethod::BankCard,
        PaymentMethod::Alipay => wire::PaymentMethod::Alipay,
        PaymentMethod::WechatPay => wire::PaymentMethod::WechatPay,
    }
}

fn status_to_wire(status: PaymentStatus) -> wire::PaymentStatus {
    match status {
        PaymentStatus::Processing => wire::PaymentStatus::Processing,
        PaymentStatus::Succeeded => wire::PaymentStatus::Succeeded,
        PaymentStatus::Failed => wire::PaymentStatus::Failed,
        PaymentStatus::Refunded => wire::PaymentStatus::Refunded,
    }
}

pub fn payment_to_wire(payment: &Payment) -> wire::Payment {
    wire::Payment {
        payment_id: payment.payment_id.clone(),
        account_id: payment.account_id.clone(),
        status: status_to_wire(payment.status).into(),
        method: method_to_wire(payment.method).into(),
        amount: Some(common::Money::new(
            payment.amount.currency().code(),
            payment.amount.to_string(),
        )),
        target: decode_target(&payment.target),
        instrument_last4: payment.instrument_last4.clone(),
        applied: payment.applied,
        failure_code: payment.failure_code.clone().unwrap_or_default(),
        failure_message: payment.failure_message.clone().unwrap_or_default(),
        created_at: Some(timestamp_from_micros(payment.created_at_micros)),
        updated_at: Some(timestamp_from_micros(payment.updated_at_micros)),
    }
}
