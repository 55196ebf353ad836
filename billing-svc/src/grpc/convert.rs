//! Wire <-> domain conversions shared by the handlers.

use billpay_contracts::common::v1 as wire;
use service_kit::{errors::FieldViolations, money::Money};

/// Parses a required money field, recording violations against `field.amount` /
/// `field.currency_code` (or `field` when missing).
pub fn money_field(
    violations: &mut FieldViolations,
    field: &str,
    money: Option<&wire::Money>,
) -> Option<Money> {
    let Some(money) = money else {
        violations.add(field, "is required");
        return None;
    };
    let subfield = match service_kit::money::Currency::parse(&money.currency_code) {
        Ok(_) => "amount",
        Err(_) => "currency_code",
    };
    violations.check(
        &format!("{field}.{subfield}"),
        Money::parse(&money.currency_code, &money.amount),
    )
}

pub fn money_to_wire(money: Money) -> wire::Money {
    wire::Money::new(money.currency().code(), money.to_string())
}
