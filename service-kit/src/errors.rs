//! gRPC statuses with `google.rpc` details, built one way everywhere.

use std::{collections::HashMap, fmt::Display};

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

/// The `ErrorInfo.domain` of every business refusal.
pub const ERROR_DOMAIN: &str = "billpay";

/// What a field check gives instead of a value: proof that a violation was recorded
/// (only [`FieldViolations`] makes one). So a handler that has every field's value or
/// a `Refused` never needs a "refused, but no violation" case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused(());

/// A field's value, or the proof that it was refused.
pub type Checked<T> = Result<T, Refused>;

/// Every field's value of a tuple of [`Checked`] fields, or a [`Refused`].
pub trait AllChecked {
    type Values;
    fn all(self) -> Checked<Self::Values>;
}

macro_rules! all_checked {
    ($($name:ident),+) => {
        impl<$($name),+> AllChecked for ($(Checked<$name>,)+) {
            type Values = ($($name,)+);
            #[allow(non_snake_case)]
            fn all(self) -> Checked<Self::Values> {
                let ($($name,)+) = self;
                Ok(($($name?,)+))
            }
        }
    };
}
all_checked!(A, B);
all_checked!(A, B, C);
all_checked!(A, B, C, D);
all_checked!(A, B, C, D, E);
all_checked!(A, B, C, D, E, F);

/// Collects what is wrong with a request, field by field, so the caller learns every
/// problem at once.
#[derive(Debug, Default)]
pub struct FieldViolations {
    violations: Vec<FieldViolation>,
}

impl FieldViolations {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a violation; the proof stands in for the field's value.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) -> Refused {
        self.violations
            .push(FieldViolation::new(field, description));
        Refused(())
    }

    /// Keeps `result`'s value, or records its error against `field`.
    pub fn check<T, E: Display>(&mut self, field: &str, result: Result<T, E>) -> Checked<T> {
        result.map_err(|error| self.add(field, error.to_string()))
    }

    /// The request's values when nothing was refused; else INVALID_ARGUMENT with a
    /// `BadRequest` listing every violation.
    pub fn finish<T>(self, values: Checked<T>) -> Result<T, Status> {
        match values {
            Ok(values) if self.violations.is_empty() => Ok(values),
            _ => Err(self.into_status()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.violations.is_empty()
    }

    /// INVALID_ARGUMENT with a `BadRequest` listing the violations, or `Ok` if none.
    pub fn into_result(self) -> Result<(), Status> {
        if self.violations.is_empty() {
            return Ok(());
        }
        Err(self.into_status())
    }

    fn into_status(self) -> Status {
        let summary = self
            .violations
            .iter()
            .map(|violation| format!("{}: {}", violation.field, violation.description))
            .collect::<Vec<_>>()
            .join("; ");
        Status::with_error_details(
            Code::InvalidArgument,
            format!("invalid request: {summary}"),
            ErrorDetails::with_bad_request(self.violations),
        )
    }
}

/// INVALID_ARGUMENT for one field.
pub fn invalid_field(field: &str, description: impl Into<String>) -> Status {
    let mut violations = FieldViolations::new();
    violations.add(field, description);
    violations.into_status()
}

/// A business refusal: `code` with an `ErrorInfo` whose reason callers can match on.
pub fn refusal(code: Code, reason: &str, message: impl Into<String>) -> Status {
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, HashMap::new()),
    )
}

/// INTERNAL for the caller, the detail for the log: SQL and stack text never leave.
pub fn internal(error: impl Display) -> Status {
    tracing::error!(%error, "internal error");
    Status::internal("internal error; see the service log")
}

/// UNAVAILABLE: a dependency is down; the caller may retry.
pub fn unavailable(error: impl Display) -> Status {
    tracing::warn!(%error, "dependency unavailable");
    Status::unavailable("a dependency is unavailable; retry later")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(text: &str) -> Result<u32, std::num::ParseIntError> {
        text.parse()
    }

    #[test]
    fn every_field_checked_gives_every_value() {
        let mut violations = FieldViolations::new();
        let a = violations.check("a", number("1"));
        let b = violations.check("b", number("2"));
        assert_eq!(violations.finish((a, b).all()).unwrap(), (1, 2));
    }

    #[test]
    fn a_refusal_lists_every_violated_field() {
        let mut violations = FieldViolations::new();
        let a = violations.check("a", number("x"));
        let b = violations.check("b", number("2"));
        let c = violations.check("c", number("-1"));
        let status = violations.finish((a, b, c).all()).unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        let fields: Vec<String> = status
            .get_error_details()
            .bad_request()
            .unwrap()
            .field_violations
            .iter()
            .map(|violation| violation.field.clone())
            .collect();
        assert_eq!(fields, ["a", "c"]);
    }

    #[test]
    fn a_violation_without_a_failed_value_still_refuses() {
        let mut violations = FieldViolations::new();
        let a = violations.check("a", number("0"));
        if a.is_ok_and(|a| a == 0) {
            violations.add("a", "must be greater than zero");
        }
        let status = violations.finish(a).unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("a: must be greater than zero"));
    }
}
