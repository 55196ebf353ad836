//! The rules of payments, with no IO: methods, states and their transitions, and the
//! request fields, parsed.

pub mod payment;
