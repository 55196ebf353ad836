//! The contracts of billpay: code generated from `proto/` and the encoded file
//! descriptor set that gRPC reflection serves. No logic lives here; services convert
//! these wire types to their domain types at the edge.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod common {
    pub mod v1 {
        tonic::include_proto!("common.v1");
    }
}

pub mod billing {
    pub mod v1 {
        tonic::include_proto!("billing.v1");
    }
}

pub mod payment {
    pub mod v1 {
        tonic::include_proto!("payment.v1");
    }
}

/// Every message and service of `proto/`, encoded, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/billpay_descriptor.bin"));

impl common::v1::Money {
    /// Wire money from a currency code and an already formatted amount string.
    pub fn new(currency_code: impl Into<String>, amount: impl Into<String>) -> Self {
        Self {
            currency_code: currency_code.into(),
            amount: amount.into(),
        }
    }
}
