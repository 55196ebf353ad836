//! billing-svc: accounts, credit limits, installment plans, bills and every number
//! on them. `domain` is pure, `grpc` is the wire edge, `storage` holds all SQL.

pub mod app;
pub mod clock;
pub mod config;
pub mod domain;
pub mod grpc;
pub mod jobs;
pub mod storage;
