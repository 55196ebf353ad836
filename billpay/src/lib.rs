//! `billpay`, the command-line tool: `up` runs the whole stack in one process,
//! `token` mints bearer tokens.

pub mod token;
pub mod up;
