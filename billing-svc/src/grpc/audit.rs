//! ListOperatorAudit: the operator audit trail, for billing:admin holders.

use billpay_contracts::billing::v1 as wire;
use service_kit::{
    audit::{AuditFilter, list},
    clock::timestamp_from_micros,
    errors::invalid_field,
    wire::{decode_page_token, encode_page_token, page_size},
};
use tonic::{Request, Status};

use super::BillingApi;

const PAGE_KIND: &str = "audit";
/// The longest subject or account id a filter may name.
const FILTER_BYTES_MAX: usize = 128;

/// A timestamp's (seconds, nanos) as unix microseconds.
fn micros(field: &str, at: Option<(i64, i32)>) -> Result<Option<i64>, Status> {
    at.map(|(seconds, nanos)| {
        seconds
            .checked_mul(1_000_000)
            .and_then(|micros| micros.checked_add(i64::from(nanos / 1_000)))
            .filter(|_| (0..1_000_000_000).contains(&nanos))
            .ok_or_else(|| invalid_field(field, "is not a valid timestamp"))
    })
    .transpose()
}

fn filter_text(field: &str, text: String) -> Result<Option<String>, Status> {
    if text.len() > FILTER_BYTES_MAX {
        return Err(invalid_field(
            field,
            format!("must be at most {FILTER_BYTES_MAX} bytes"),
        ));
    }
    Ok(Some(text).filter(|text| !text.is_empty()))
}

impl BillingApi {
    pub(super) async fn handle_list_operator_audit(
        &self,
        request: Request<wire::ListOperatorAuditRequest>,
    ) -> Result<wire::ListOperatorAuditResponse, Status> {
        let message = request.into_inner();
        let limit = page_size(message.page_size)?;
        let before_audit_id = decode_page_token(PAGE_KIND, &message.page_token)?
            .map(|position| {
                position
                    .parse::<i64>()
                    .map_err(|_| invalid_field("page_token", "is not a token this list returned"))
            })
            .transpose()?;
        let filter = AuditFilter {
            subject: filter_text("subject", message.subject)?,
            account_id: filter_text("account_id", message.account_id)?,
            since_micros: micros("since", message.since.map(|at| (at.seconds, at.nanos)))?,
            until_micros: micros("until", message.until.map(|at| (at.seconds, at.nanos)))?,
            before_audit_id,
            limit: limit + 1,
        };
        let mut rows = list(self.store.db(), &filter).await?;
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next_page_token = match rows.last() {
            Some(last) if more => encode_page_token(PAGE_KIND, &last.audit_id.to_string()),
            _ => String::new(),
        };
        Ok(wire::ListOperatorAuditResponse {
            entries: rows
                .into_iter()
                .map(|row| wire::OperatorAuditEntry {
                    audit_id: row.audit_id,
                    subject: row.subject,
                    rpc: row.rpc,
                    account_id: row.account_id.unwrap_or_default(),
                    outcome: row.outcome,
                    code: row.code,
                    at: Some(timestamp_from_micros(row.at_micros)),
                })
                .collect(),
            next_page_token,
        })
    }
}
