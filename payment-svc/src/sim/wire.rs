//! The provider protocol's JSON bodies (PROVIDER_PROTOCOL.md), as the simulator reads
//! and writes them. Public so tests and tools can speak to the simulator; statuses
//! and codes are the protocol's strings, so a test reads like the protocol.

use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// `POST {base}/charges`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChargeRequest {
    pub payment_id: String,
    pub amount_minor: i64,
    pub currency: String,
    pub instrument: String,
    /// Where a wallet sends its notifications; bank card ignores it.
    #[serde(default)]
    pub notify_url: Option<String>,
}

/// The answer to a charge, and to `GET {base}/charges/{payment_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChargeReply {
    pub payment_id: String,
    /// `SUCCEEDED`, `DECLINED` or `PENDING`.
    pub status: String,
    pub provider_ref: String,
    /// `INSUFFICIENT_FUNDS` or `EXPIRED_INSTRUMENT` when declined, else null.
    pub decline_code: Option<String>,
}

/// `POST {base}/refunds`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundRequest {
    pub payment_id: String,
    pub refund_id: String,
    pub amount_minor: i64,
}

/// The answer to a refund: `status` is `REFUNDED`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundReply {
    pub refund_id: String,
    pub status: String,
}

/// The body of every answer that is not a success: `NOT_FOUND`, `UNAUTHORIZED`,
/// `BAD_REQUEST`, `EXCEEDS_REFUNDABLE`, `PROVIDER_ERROR`, `UNAVAILABLE`, `INTERNAL`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReply {
    pub status: String,
}

/// What a wallet posts to a charge's `notify_url`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    pub payment_id: String,
    pub provider_ref: String,
    /// `SUCCEEDED` or `DECLINED`; `PENDING` only in a stale notification.
    pub status: String,
    pub decline_code: Option<String>,
    pub amount_minor: i64,
    /// Grows with each state reported for the payment.
    pub sequence: u32,
}

/// `GET /ledger`: every movement of money, and the totals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerReply {
    pub entries: Vec<LedgerEntry>,
    pub captured_minor: i64,
    pub refunded_minor: i64,
}

/// One movement of money.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// `bank_card`, `alipay` or `wechat_pay`.
    pub provider: String,
    pub payment_id: String,
    /// `CHARGE` or `REFUND`.
    pub kind: String,
    pub amount_minor: i64,
}

/// `value` as the JSON bytes to send (and to sign).
pub fn to_body<T: Serialize>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(value)
}

/// The JSON body `bytes` as a `T`.
pub fn from_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, serde_json::Error> {
    serde_json::from_slice(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_use_the_protocol_names() {
        let reply = ChargeReply {
            payment_id: "pay_1".into(),
            status: "SUCCEEDED".into(),
            provider_ref: "bc_1".into(),
            decline_code: None,
        };
        let text = String::from_utf8(to_body(&reply).unwrap()).unwrap();
        assert_eq!(
            text,
            r#"{"payment_id":"pay_1","status":"SUCCEEDED","provider_ref":"bc_1","decline_code":null}"#
        );
    }

    #[test]
    fn a_charge_without_notify_url_parses() {
        let request: ChargeRequest = from_body(
            br#"{"payment_id":"pay_1","amount_minor":5,"currency":"CNY","instrument":"tok_4242"}"#,
        )
        .unwrap();
        assert_eq!(request.notify_url, None);
    }
}
