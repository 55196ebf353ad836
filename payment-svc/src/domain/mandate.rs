//! A mandate: the customer's standing consent to autopay (代扣) from one instrument,
//! capped per debit, and the states it passes through.

use service_kit::money::Money;

use super::payment::{FieldError, FingerprintKey, Instrument, PaymentMethod};

/// The longest consent text version accepted, in bytes.
pub const CONSENT_VERSION_BYTES_MAX: usize = 64;
/// The longest revocation reason accepted, in bytes.
pub const REVOKE_REASON_BYTES_MAX: usize = 500;

/// ACTIVE → REVOKED | REPLACED | SUSPENDED; only an ACTIVE mandate is ever debited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MandateStatus {
    Active,
    Revoked,
    Replaced,
    /// The instrument expired: no debit until the customer consents again.
    Suspended,
}

impl MandateStatus {
    pub const ALL: [Self; 4] = [Self::Active, Self::Revoked, Self::Replaced, Self::Suspended];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "ACTIVE",
            Self::Revoked => "REVOKED",
            Self::Replaced => "REPLACED",
            Self::Suspended => "SUSPENDED",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == text)
    }
}

/// A consent text version: 1 to 64 bytes, no control characters.
pub fn parse_consent_version(text: &str) -> Result<&str, FieldError> {
    if text.is_empty() {
        Err(FieldError::Empty)
    } else if text.len() > CONSENT_VERSION_BYTES_MAX {
        Err(FieldError::TooLong(CONSENT_VERSION_BYTES_MAX))
    } else if text.chars().any(char::is_control) {
        Err(FieldError::ControlCharacters)
    } else {
        Ok(text)
    }
}

/// A revocation reason: at most 500 bytes, no control characters (empty is allowed).
pub fn parse_revoke_reason(text: &str) -> Result<&str, FieldError> {
    if text.len() > REVOKE_REASON_BYTES_MAX {
        Err(FieldError::TooLong(REVOKE_REASON_BYTES_MAX))
    } else if text.chars().any(char::is_control) {
        Err(FieldError::ControlCharacters)
    } else {
        Ok(text)
    }
}

/// The terms a customer consented to: what makes two CreateMandate requests the
/// same request.
#[derive(Debug, Clone)]
pub struct MandateTerms<'a> {
    pub account_id: &'a str,
    pub method: PaymentMethod,
    pub instrument: &'a Instrument,
    pub max_amount_per_debit: Money,
    pub consent_text_version: &'a str,
    pub consent_accepted_at_micros: i64,
}

/// The keyed digest of `terms` (the instrument compared without being stored).
pub fn mandate_fingerprint(key: &FingerprintKey, terms: &MandateTerms<'_>) -> String {
    key.digest(&[
        b"mandate",
        terms.account_id.as_bytes(),
        terms.method.as_str().as_bytes(),
        terms.instrument.expose().as_bytes(),
        terms.max_amount_per_debit.to_string().as_bytes(),
        terms.consent_text_version.as_bytes(),
        &terms.consent_accepted_at_micros.to_be_bytes(),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::payment::DEV_FINGERPRINT_KEY;

    #[test]
    fn statuses_round_trip() {
        for status in MandateStatus::ALL {
            assert_eq!(MandateStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(MandateStatus::parse("active"), None);
    }

    #[test]
    fn consent_versions_and_reasons_are_checked() {
        assert_eq!(parse_consent_version(""), Err(FieldError::Empty));
        assert_eq!(
            parse_consent_version(&"v".repeat(65)),
            Err(FieldError::TooLong(64))
        );
        assert_eq!(parse_consent_version("autopay-v1"), Ok("autopay-v1"));
        assert_eq!(parse_revoke_reason(""), Ok(""));
        assert_eq!(
            parse_revoke_reason("stop\u{0}"),
            Err(FieldError::ControlCharacters)
        );
        assert_eq!(
            parse_revoke_reason(&"r".repeat(501)),
            Err(FieldError::TooLong(500))
        );
    }

    #[test]
    fn fingerprints_tell_consents_apart() {
        let key = FingerprintKey::new(DEV_FINGERPRINT_KEY.as_bytes()).unwrap();
        let card = Instrument::parse("tok_4242").unwrap();
        let other_card = Instrument::parse("tok_4243").unwrap();
        let terms = |instrument, cap| MandateTerms {
            account_id: "acc_1",
            method: PaymentMethod::BankCard,
            instrument,
            max_amount_per_debit: Money::parse("CNY", cap).unwrap(),
            consent_text_version: "v1",
            consent_accepted_at_micros: 7,
        };
        let a = mandate_fingerprint(&key, &terms(&card, "500"));
        assert_eq!(a, mandate_fingerprint(&key, &terms(&card, "500.00")));
        assert_ne!(a, mandate_fingerprint(&key, &terms(&card, "500.01")));
        assert_ne!(a, mandate_fingerprint(&key, &terms(&other_card, "500")));
    }
}
