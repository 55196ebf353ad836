//! payment-svc: repayments through provider adapters. `domain` is pure, `grpc` is
//! the wire edge, `storage` holds all SQL, `providers` is the only way out to a
//! provider, `flow` ties them together, `jobs` keeps the outbox and PROCESSING
//! payments moving, `notify` hears asynchronous providers. `sim` plays the providers.
//! `autopay` runs mandates' notices and debits; `seal` keeps their instruments sealed.

pub mod app;
pub mod autopay;
pub mod billing;
pub mod config;
pub mod domain;
pub mod flow;
pub mod grpc;
pub mod jobs;
pub mod notify;
pub mod providers;
pub mod seal;
pub mod sim;
pub mod storage;
