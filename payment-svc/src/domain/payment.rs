//! A payment: how it is paid, the states it passes through, and what a request to
//! make one must hold.

use hmac::{Hmac, Mac};
use service_kit::money::Money;
use sha2::Sha256;

/// The longest idempotency key accepted, in bytes.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 255;
const INSTRUMENT_CHARS_MAX: usize = 128;

/// How the customer pays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PaymentMethod {
    BankCard,
    Alipay,
    WechatPay,
}

impl PaymentMethod {
    pub const ALL: [Self; 3] = [Self::BankCard, Self::Alipay, Self::WechatPay];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::BankCard => "BANK_CARD",
            Self::Alipay => "ALIPAY",
            Self::WechatPay => "WECHAT_PAY",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|method| method.as_str() == text)
    }

    /// The provider's name in URLs (`/notify/alipay`).
    pub fn provider_name(self) -> &'static str {
        match self {
            Self::BankCard => "bank-card",
            Self::Alipay => "alipay",
            Self::WechatPay => "wechat-pay",
        }
    }
}

/// PROCESSING → SUCCEEDED | FAILED; SUCCEEDED → REFUNDED. Only an explicit provider
/// answer moves a payment out of PROCESSING.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentStatus {
    Processing,
    Succeeded,
    Failed,
    Refunded,
}

impl PaymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Processing => "PROCESSING",
            Self::Succeeded => "SUCCEEDED",
            Self::Failed => "FAILED",
            Self::Refunded => "REFUNDED",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Processing,
            Self::Succeeded,
            Self::Failed,
            Self::Refunded,
        ]
        .into_iter()
        .find(|status| status.as_str() == text)
    }

    /// Whether the state machine allows `self` → `next`.
    pub fn may_become(self, next: Self) -> bool {
        matches!(
            (self, next),
            (Self::Processing, Self::Succeeded | Self::Failed) | (Self::Succeeded, Self::Refunded)
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {0} bytes")]
    TooLong(usize),
    #[error("must not contain control characters")]
    ControlCharacters,
}

/// A caller's idempotency key: 1 to 255 bytes, no control characters.
pub fn parse_idempotency_key(text: &str) -> Result<&str, FieldError> {
    check_text(text, IDEMPOTENCY_KEY_BYTES_MAX)
}

/// An opaque instrument (card token, wallet payer id). Only its last four characters
/// are ever kept.
#[derive(Clone, PartialEq, Eq)]
pub struct Instrument(String);

impl std::fmt::Debug for Instrument {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Instrument(…{})", self.last4())
    }
}

impl Instrument {
    pub fn parse(text: &str) -> Result<Self, FieldError> {
        check_text(text, INSTRUMENT_CHARS_MAX).map(|text| Self(text.to_owned()))
    }

    /// The whole instrument, for the provider only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The last four characters: what is stored, logged and shown.
    pub fn last4(&self) -> String {
        let count = self.0.chars().count();
        self.0.chars().skip(count.saturating_sub(4)).collect()
    }
}

fn check_text(text: &str, bytes_max: usize) -> Result<&str, FieldError> {
    if text.is_empty() {
        Err(FieldError::Empty)
    } else if text.len() > bytes_max {
        Err(FieldError::TooLong(bytes_max))
    } else if text.chars().any(char::is_control) {
        Err(FieldError::ControlCharacters)
    } else {
        Ok(text)
    }
}

/// The fingerprint key dev mode uses when none is configured. Public on purpose:
/// outside dev mode payment-svc refuses to start without its own.
pub const DEV_FINGERPRINT_KEY: &str = "billpay-dev-fingerprint-key-not-for-production";

/// The shortest fingerprint key accepted: an HMAC-SHA256 key shorter than the hash
/// adds no strength.
pub const FINGERPRINT_KEY_BYTES_MIN: usize = 32;

/// The secret request fingerprints are keyed with. It lives in configuration, never
/// in the database, so a stolen database cannot be brute-forced back to the
/// instrument (a card token's unknown middle digits, an Alipay id).
#[derive(Clone)]
pub struct FingerprintKey(Hmac<Sha256>);

impl std::fmt::Debug for FingerprintKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FingerprintKey(<redacted>)")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the fingerprint key must be at least {FINGERPRINT_KEY_BYTES_MIN} bytes")]
pub struct FingerprintKeyTooShort;

impl FingerprintKey {
    pub fn new(secret: &[u8]) -> Result<Self, FingerprintKeyTooShort> {
        if secret.len() < FINGERPRINT_KEY_BYTES_MIN {
            return Err(FingerprintKeyTooShort);
        }
        Hmac::new_from_slice(secret)
            .map(Self)
            .map_err(|_| FingerprintKeyTooShort)
    }
}

impl FingerprintKey {
    /// A 32-byte key for another purpose (`label`), derived from this one by HMAC, so
    /// one configured secret serves both and neither reveals the other.
    pub fn derive_key(&self, label: &[u8]) -> [u8; 32] {
        let mut mac = self.0.clone();
        mac.update(label);
        mac.finalize().into_bytes().into()
    }

    /// The keyed digest of length-prefixed `parts`, in hex.
    pub fn digest(&self, parts: &[&[u8]]) -> String {
        let mut mac = self.0.clone();
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }
}

/// What makes two CreateRepayment requests "the same request": an HMAC-SHA256 under
/// `key`, so the instrument is compared without being stored, and the stored digest
/// reveals nothing of it to whoever lacks the key.
pub fn request_fingerprint(
    key: &FingerprintKey,
    account_id: &str,
    target_bytes: &[u8],
    expected_amount: Money,
    method: PaymentMethod,
    instrument: &Instrument,
) -> String {
    let mut mac = key.0.clone();
    for part in [
        account_id.as_bytes(),
        target_bytes,
        expected_amount.to_string().as_bytes(),
        method.as_str().as_bytes(),
        instrument.expose().as_bytes(),
    ] {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_allowed_transitions() {
        use PaymentStatus::*;
        let all = [Processing, Succeeded, Failed, Refunded];
        let allowed: Vec<_> = all
            .iter()
            .flat_map(|from| all.iter().map(move |to| (*from, *to)))
            .filter(|(from, to)| from.may_become(*to))
            .collect();
        assert_eq!(
            allowed,
            [
                (Processing, Succeeded),
                (Processing, Failed),
                (Succeeded, Refunded)
            ]
        );
    }

    #[test]
    fn instruments_show_only_their_last_four() {
        let card = Instrument::parse("tok_4111111111111111").unwrap();
        assert_eq!(card.last4(), "1111");
        assert!(!format!("{card:?}").contains("4111111111"));
        assert_eq!(Instrument::parse("12").unwrap().last4(), "12");
    }

    #[test]
    fn keys_and_instruments_are_checked() {
        assert_eq!(parse_idempotency_key(""), Err(FieldError::Empty));
        assert_eq!(
            parse_idempotency_key(&"k".repeat(256)),
            Err(FieldError::TooLong(255))
        );
        assert!(parse_idempotency_key(&"k".repeat(255)).is_ok());
        assert_eq!(
            Instrument::parse("a\nb"),
            Err(FieldError::ControlCharacters)
        );
    }

    #[test]
    fn fingerprints_tell_requests_apart() {
        let money = |a| Money::parse("CNY", a).unwrap();
        let card = Instrument::parse("tok_4242").unwrap();
        let key = FingerprintKey::new(DEV_FINGERPRINT_KEY.as_bytes()).unwrap();
        let fp =
            |amount, method| request_fingerprint(&key, "acc_1", b"t", money(amount), method, &card);
        let a = fp("1.00", PaymentMethod::BankCard);
        assert_eq!(a, fp("1", PaymentMethod::BankCard));
        assert_ne!(a, fp("1.01", PaymentMethod::BankCard));
        assert_ne!(a, fp("1.00", PaymentMethod::Alipay));
        let other = FingerprintKey::new(&[7; 32]).unwrap();
        assert_ne!(
            a,
            request_fingerprint(
                &other,
                "acc_1",
                b"t",
                money("1.00"),
                PaymentMethod::BankCard,
                &card
            ),
            "the key changes the digest"
        );
        assert!(FingerprintKey::new(b"short").is_err());
        assert!(!format!("{key:?}").contains("billpay"));
    }
}
