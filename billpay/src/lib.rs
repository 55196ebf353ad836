//! `billpay`, the command-line tool: `up` runs the whole stack in one process,
//! `demo` walks a customer's journey against it, `token` mints bearer tokens, `bench`
//! measures SPEC §9's scenarios against the echo ceiling.

pub mod bench;
pub mod demo;
pub mod notifier;
pub mod tls;
pub mod token;
pub mod up;
