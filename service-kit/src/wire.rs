//! Conversions between the wire (`common.v1`) and service-kit's types that every
//! service's gRPC edge shares: money fields, page sizes and page tokens.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use billpay_contracts::common::v1 as wire;
use rust_decimal::Decimal;
use tonic::Status;

use crate::{
    errors::{Checked, FieldViolations, invalid_field},
    money::{Currency, Money},
};

/// Page size when the caller gives none, and the most a page may hold.
pub const PAGE_SIZE_DEFAULT: u32 = 20;
pub const PAGE_SIZE_MAX: u32 = 100;

/// Parses a required money field, recording violations against `field.amount` /
/// `field.currency_code` (or `field` when missing).
pub fn money_field(
    violations: &mut FieldViolations,
    field: &str,
    money: Option<&wire::Money>,
) -> Checked<Money> {
    let Some(money) = money else {
        return Err(violations.add(field, "is required"));
    };
    let subfield = match Currency::parse(&money.currency_code) {
        Ok(_) => "amount",
        Err(_) => "currency_code",
    };
    violations.check(
        &format!("{field}.{subfield}"),
        Money::parse(&money.currency_code, &money.amount),
    )
}

/// A decimal (a rate, a percent) as its `Display` text, `0.0125` or `13.03`, with as
/// many decimals as its scale: digit by digit for the non-negative values replies
/// carry, since `Decimal`'s `Display` cost thousands of instructions a value.
pub fn decimal_text(value: Decimal) -> String {
    if value.is_sign_negative() {
        return value.to_string();
    }
    let scale = value.scale() as usize;
    let mut digits = Vec::with_capacity(32);
    let mut rest = value.mantissa().unsigned_abs();
    // At least one digit before the point, and every one of the scale after it.
    while rest > 0 || digits.len() <= scale {
        if digits.len() == scale && scale > 0 {
            digits.push(b'.');
        }
        digits.push(b'0' + (rest % 10) as u8);
        rest /= 10;
    }
    digits.reverse();
    // Digits and a point are ASCII, so the text is never empty.
    String::from_utf8(digits).unwrap_or_default()
}

pub fn money_to_wire(money: Money) -> wire::Money {
    wire::Money::new(money.currency().code(), money.amount_text())
}

/// `page_size`: 0 means the default; above the maximum is capped; negative is refused.
pub fn page_size(requested: i32) -> Result<u32, Status> {
    match u32::try_from(requested) {
        Ok(0) => Ok(PAGE_SIZE_DEFAULT),
        Ok(size) => Ok(size.min(PAGE_SIZE_MAX)),
        Err(_) => Err(invalid_field("page_size", "must not be negative")),
    }
}

/// An opaque page token: the kind of list and its position, base64url.
pub fn encode_page_token(kind: &str, position: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{kind}|{position}"))
}

/// The position inside a token of `kind`, or INVALID_ARGUMENT.
pub fn decode_page_token(kind: &str, token: &str) -> Result<Option<String>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let refuse = || invalid_field("page_token", "is not a token this list returned");
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| refuse())?;
    let text = String::from_utf8(bytes).map_err(|_| refuse())?;
    let position = text
        .strip_prefix(kind)
        .and_then(|rest| rest.strip_prefix('|'))
        .ok_or_else(refuse)?;
    Ok(Some(position.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_read_as_decimal_shows_them() {
        let mut values: Vec<Decimal> = [
            "0",
            "0.0",
            "0.00",
            "1",
            "7.00",
            "0.0125",
            "13.03",
            "100",
            "0.5",
            "12.345678",
            "0.000001",
            "-0.5",
            "-13.03",
            "79228162514264337593543950335",
            "7.9228162514264337593543950335",
        ]
        .iter()
        .map(|text| text.parse().unwrap())
        .collect();
        values.extend((0..2_000_i64).map(|n| Decimal::new(n * 7919 % 100_003, (n % 9) as u32)));
        for value in values {
            assert_eq!(decimal_text(value), value.to_string(), "{value:?}");
        }
    }
}
