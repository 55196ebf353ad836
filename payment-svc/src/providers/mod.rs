//! The only module that talks to payment providers (PROVIDER_PROTOCOL.md). The core
//! sees the [`Provider`] trait and these outcome types, never a provider's wire format.

mod http;
pub mod signature;

use std::{future::Future, time::Duration};

use service_kit::money::Money;

pub use http::{HttpProvider, ProviderSettings};

use crate::domain::payment::{Instrument, PaymentMethod};

/// A charge to make, under our payment id as the provider's idempotency key.
#[derive(Debug)]
pub struct ChargeRequest<'a> {
    pub payment_id: &'a str,
    pub amount: Money,
    pub instrument: &'a Instrument,
    /// Where an asynchronous provider sends its notification.
    pub notify_url: &'a str,
}

/// What a charge attempt told us. Only `Succeeded` and `Declined` are explicit
/// answers; a payment stays PROCESSING on the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeOutcome {
    Succeeded {
        provider_ref: String,
    },
    Declined {
        code: String,
        message: String,
    },
    /// Accepted; the answer arrives by notification.
    Pending {
        provider_ref: String,
    },
    /// No answer (timeout, lost reply, unreadable reply): ask again later.
    Unknown {
        reason: String,
    },
}

/// What the provider knows of a payment id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryOutcome {
    Succeeded {
        provider_ref: String,
    },
    Declined {
        code: String,
        message: String,
    },
    /// The provider charged nothing under this id.
    NotFound,
    Unknown {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundOutcome {
    Refunded,
    /// The provider will not refund (nothing charged, or already refunded in full).
    Refused {
        reason: String,
    },
    Unknown {
        reason: String,
    },
}

impl std::fmt::Display for QueryOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Succeeded { provider_ref } => write!(f, "charged ({provider_ref})"),
            Self::Declined { code, message } => write!(f, "declined {code}: {message}"),
            Self::NotFound => f.write_str("no such charge"),
            Self::Unknown { reason } => write!(f, "no answer: {reason}"),
        }
    }
}

impl std::fmt::Display for RefundOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Refunded => f.write_str("refunded"),
            Self::Refused { reason } => write!(f, "refused: {reason}"),
            Self::Unknown { reason } => write!(f, "no answer: {reason}"),
        }
    }
}

/// A verified notification from an asynchronous provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub payment_id: String,
    pub provider_ref: String,
    pub status: NotifiedStatus,
    pub amount_minor: i64,
    pub sequence: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifiedStatus {
    Succeeded,
    Declined {
        code: String,
    },
    /// Anything else (e.g. a stale PENDING): nothing to do.
    Other(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotificationError {
    #[error("the notification's signature is missing or wrong")]
    BadSignature,
    #[error("the notification is not in the provider's format")]
    Malformed,
}

/// A payment provider: the one seam between payments and the outside world.
pub trait Provider: Send + Sync {
    fn charge(&self, request: &ChargeRequest<'_>) -> impl Future<Output = ChargeOutcome> + Send;
    fn query(&self, payment_id: &str) -> impl Future<Output = QueryOutcome> + Send;
    fn refund(
        &self,
        payment_id: &str,
        refund_id: &str,
        amount: Money,
    ) -> impl Future<Output = RefundOutcome> + Send;
    fn verify_notification(
        &self,
        body: &[u8],
        signature: Option<&str>,
    ) -> Result<Notification, NotificationError>;
}

/// The three providers, one per payment method.
#[derive(Debug, Clone)]
pub struct Providers {
    bank_card: HttpProvider,
    alipay: HttpProvider,
    wechat_pay: HttpProvider,
}

impl Providers {
    /// Clients for the three providers, each with `timeout` per request.
    pub fn new(
        bank_card: &ProviderSettings,
        alipay: &ProviderSettings,
        wechat_pay: &ProviderSettings,
        timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            bank_card: HttpProvider::new(bank_card, timeout)?,
            alipay: HttpProvider::new(alipay, timeout)?,
            wechat_pay: HttpProvider::new(wechat_pay, timeout)?,
        })
    }

    pub fn for_method(&self, method: PaymentMethod) -> &HttpProvider {
        match method {
            PaymentMethod::BankCard => &self.bank_card,
            PaymentMethod::Alipay => &self.alipay,
            PaymentMethod::WechatPay => &self.wechat_pay,
        }
    }
}
