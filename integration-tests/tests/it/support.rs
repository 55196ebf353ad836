//! Helpers the tests share: requests, and reading error details.

use billpay_contracts::{billing::v1::CreateAccountRequest, common::v1::Money};
use tonic::{Code, Status};
use tonic_types::StatusExt as _;

/// A valid CreateAccount request for `customer_ref`.
pub fn new_account(customer_ref: &str) -> CreateAccountRequest {
    CreateAccountRequest {
        customer_ref: customer_ref.into(),
        display_name: "Li Lei".into(),
        phone: "13812341234".into(),
        credit_limit: Some(Money::new("CNY", "20000.00")),
    }
}

/// The fields a status's BadRequest names.
pub fn violated_fields(status: &Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|bad_request| {
            bad_request
                .field_violations
                .into_iter()
                .map(|violation| violation.field)
                .collect()
        })
        .unwrap_or_default()
}

/// The ErrorInfo reason of a status, if any.
pub fn reason(status: &Status) -> Option<String> {
    status.get_details_error_info().map(|info| info.reason)
}

/// Asserts `result` failed with `code`, and returns the status.
#[track_caller]
pub fn expect_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code) -> Status {
    match result {
        Ok(value) => panic!("expected {code:?}, got OK: {value:?}"),
        Err(status) => {
            assert_eq!(status.code(), code, "{status:?}");
            status
        }
    }
}
