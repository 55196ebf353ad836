//! The one integration test binary: every test runs the real services over gRPC,
//! once on SQLite and once on PostgreSQL (skipped, saying so, without
//! `BILLPAY_TEST_POSTGRES_URL` — failed instead under `CI=true` or
//! `BILLPAY_REQUIRE_POSTGRES=1`).

// Test code: a panic is a failed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod accounts;
mod auth;
mod autopay;
mod bad_input;
mod cancel_plan;
mod chaos;
mod crash;
mod credit_limits;
mod day_close;
mod events;
mod lifecycle;
mod model;
mod payoff;
mod pg_direct;
mod plans;
mod refunds;
mod repayments;
mod security;
mod sim;
mod support;
mod tidy;
mod traces;

/// Declares `$test` once per backend: `$test::sqlite` and `$test::postgres`.
#[macro_export]
macro_rules! on_both_backends {
    ($($test:ident),+ $(,)?) => {$(
        mod $test {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$test(integration_tests::Backend::Sqlite, concat!(module_path!(), "::sqlite")).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$test(integration_tests::Backend::Postgres, concat!(module_path!(), "::postgres")).await;
            }
        }
    )+};
}
