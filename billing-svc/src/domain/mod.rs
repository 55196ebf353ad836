//! The rules of billing, with no IO: no prost, no sqlx, no clock reads. Values here
//! are parsed, not validated: holding one means it is well-formed.

pub mod account;
pub mod allocation;
pub mod apr;
pub mod bill;
pub mod calendar;
pub mod cancellation;
pub mod credit_limit;
pub mod day_close;
pub mod method;
pub mod payoff;
pub mod plan;
pub mod product;
pub mod schedule;
#[cfg(test)]
mod schedule_properties;
pub mod statement;
