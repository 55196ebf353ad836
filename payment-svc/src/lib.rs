//! payment-svc: repayments through provider adapters. Today the contract is served
//! (authenticated, health, reflection) and every RPC answers UNIMPLEMENTED; the
//! repayment flow is the repayments issue.

pub mod app;
pub mod config;
pub mod grpc;
pub mod providers;
pub mod sim;
pub mod storage;
