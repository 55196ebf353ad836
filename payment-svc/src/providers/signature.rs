//! HMAC-SHA256 signatures of provider requests and notifications
//! (PROVIDER_PROTOCOL.md): lowercase hex in `X-Billpay-Signature`.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header that carries a signature.
pub const SIGNATURE_HEADER: &str = "x-billpay-signature";

type HmacSha256 = Hmac<Sha256>;

/// The signature of `payload` under `secret`, as lowercase hex.
pub fn sign(secret: &[u8], payload: &[u8]) -> String {
    let Ok(mut mac) = HmacSha256::new_from_slice(secret) else {
        // HMAC takes keys of any length; this arm is never taken.
        return String::new();
    };
    mac.update(payload);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Whether `signature` (hex) is `payload`'s signature under `secret`, compared in
/// constant time.
pub fn verify(secret: &[u8], payload: &[u8], signature: &str) -> bool {
    let Some(expected) = decode_hex(signature) else {
        return false;
    };
    let Ok(mut mac) = HmacSha256::new_from_slice(secret) else {
        return false;
    };
    mac.update(payload);
    mac.verify_slice(&expected).is_ok()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_tampering_does_not() {
        let signature = sign(b"secret", b"{\"amount_minor\":100}");
        assert_eq!(signature.len(), 64);
        assert!(verify(b"secret", b"{\"amount_minor\":100}", &signature));
        assert!(!verify(b"secret", b"{\"amount_minor\":101}", &signature));
        assert!(!verify(b"other", b"{\"amount_minor\":100}", &signature));
        assert!(!verify(b"secret", b"{\"amount_minor\":100}", "zz"));
        assert!(!verify(b"secret", b"{\"amount_minor\":100}", ""));
    }
}
