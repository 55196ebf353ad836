//! Conversions between the wire (`common.v1`) and service-kit's types that every
//! service's gRPC edge shares: money fields, page sizes and page tokens.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use billpay_contracts::common::v1 as wire;
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
