//! The rules of billing, with no IO: no prost, no sqlx, no clock reads. Values here
//! are parsed, not validated: holding one means it is well-formed.

pub mod account;
