//! The rules of payments, with no IO: methods, states and their transitions, and the
//! request fields, parsed; mandates and the autopay calendar.

pub mod autopay;
pub mod mandate;
pub mod payment;
