//! Sealing a mandate's instrument at rest. Autopay must charge the instrument later,
//! so a mandate keeps it — sealed with AES-256-GCM under a key derived from the
//! fingerprint key, which lives in configuration and never in the database: a stolen
//! database gives the last four characters and ciphertext, nothing more. The account
//! id is the associated data, so a sealed instrument moved to another account's row
//! does not open.

use base64::{Engine as _, engine::general_purpose::STANDARD};
use ring::{
    aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey},
    rand::{SecureRandom as _, SystemRandom},
};

use crate::domain::payment::{FingerprintKey, Instrument};

/// The label the sealing key is derived under.
const SEAL_KEY_LABEL: &[u8] = b"billpay mandate instrument seal v1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("no randomness for a nonce")]
    Random,
    #[error("the sealed instrument does not open with this key")]
    Open,
}

/// Seals and opens instruments.
pub struct InstrumentSeal {
    key: LessSafeKey,
    random: SystemRandom,
}

impl std::fmt::Debug for InstrumentSeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InstrumentSeal(<redacted>)")
    }
}

impl InstrumentSeal {
    pub fn new(fingerprint_key: &FingerprintKey) -> Result<Self, SealError> {
        let bytes = fingerprint_key.derive_key(SEAL_KEY_LABEL);
        let key = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| SealError::Open)?;
        Ok(Self {
            key: LessSafeKey::new(key),
            random: SystemRandom::new(),
        })
    }

    /// `instrument` sealed for `account_id`: base64 of nonce ‖ ciphertext ‖ tag.
    pub fn seal(&self, instrument: &Instrument, account_id: &str) -> Result<String, SealError> {
        let mut nonce = [0_u8; NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .map_err(|_| SealError::Random)?;
        let mut sealed = instrument.expose().as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(account_id.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| SealError::Random)?;
        let mut stored = nonce.to_vec();
        stored.extend_from_slice(&sealed);
        Ok(STANDARD.encode(stored))
    }

    /// The instrument `sealed` holds, if it was sealed for `account_id` with this key.
    pub fn open(&self, sealed: &str, account_id: &str) -> Result<Instrument, SealError> {
        let bytes = STANDARD.decode(sealed).map_err(|_| SealError::Open)?;
        if bytes.len() < NONCE_LEN {
            return Err(SealError::Open);
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Open)?;
        let mut in_out = ciphertext.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(account_id.as_bytes()), &mut in_out)
            .map_err(|_| SealError::Open)?;
        let text = std::str::from_utf8(plain).map_err(|_| SealError::Open)?;
        Instrument::parse(text).map_err(|_| SealError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::payment::DEV_FINGERPRINT_KEY;

    #[test]
    fn a_sealed_instrument_opens_only_with_its_key_and_account() {
        let key = FingerprintKey::new(DEV_FINGERPRINT_KEY.as_bytes()).unwrap();
        let seal = InstrumentSeal::new(&key).unwrap();
        let card = Instrument::parse("tok_4111111111111111").unwrap();
        let sealed = seal.seal(&card, "acc_1").unwrap();
        assert!(!sealed.contains("4111111111"));
        assert_ne!(
            sealed,
            seal.seal(&card, "acc_1").unwrap(),
            "a fresh nonce each time"
        );
        assert_eq!(seal.open(&sealed, "acc_1").unwrap(), card);
        assert_eq!(seal.open(&sealed, "acc_2"), Err(SealError::Open));
        let other = InstrumentSeal::new(&FingerprintKey::new(&[7; 32]).unwrap()).unwrap();
        assert_eq!(other.open(&sealed, "acc_1"), Err(SealError::Open));
        assert_eq!(seal.open("not base64!", "acc_1"), Err(SealError::Open));
    }
}
