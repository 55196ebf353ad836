//! gRPC statuses with `google.rpc` details, built one way everywhere.

use std::{collections::HashMap, fmt::Display};

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

/// The `ErrorInfo.domain` of every business refusal.
pub const ERROR_DOMAIN: &str = "billpay";

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

    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.violations
            .push(FieldViolation::new(field, description));
    }

    /// Keeps `result`'s value, or records its error against `field`.
    pub fn check<T, E: Display>(&mut self, field: &str, result: Result<T, E>) -> Option<T> {
        result
            .map_err(|error| self.add(field, error.to_string()))
            .ok()
    }

    pub fn is_empty(&self) -> bool {
        self.violations.is_empty()
    }

    /// INVALID_ARGUMENT with a `BadRequest` listing the violations, or `Ok` if none.
    pub fn into_result(self) -> Result<(), Status> {
        if self.violations.is_empty() {
            return Ok(());
        }
        let summary = self
            .violations
            .iter()
            .map(|violation| format!("{}: {}", violation.field, violation.description))
            .collect::<Vec<_>>()
            .join("; ");
        Err(Status::with_error_details(
            Code::InvalidArgument,
            format!("invalid request: {summary}"),
            ErrorDetails::with_bad_request(self.violations),
        ))
    }
}

/// INVALID_ARGUMENT for one field.
pub fn invalid_field(field: &str, description: impl Into<String>) -> Status {
    let mut violations = FieldViolations::new();
    violations.add(field, description);
    violations
        .into_result()
        .err()
        .unwrap_or_else(|| Status::invalid_argument(field.to_owned()))
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
