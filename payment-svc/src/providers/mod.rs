//! The only module that talks to payment providers (PROVIDER_PROTOCOL.md).

pub mod signature;
