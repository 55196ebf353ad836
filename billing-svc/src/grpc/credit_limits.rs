//! UpdateCreditLimit and ListCreditLimitChanges.

use billpay_contracts::billing::v1 as wire;
use chrono::NaiveDate;
use service_kit::{
    audit::admit_account,
    auth::Caller,
    clock::timestamp_from_micros,
    errors::{AllChecked as _, FieldViolations, invalid_field, refusal},
};
use tonic::{Code, Request, Status};

use super::{
    BillingApi,
    accounts::{PhoneView, account_to_wire, parse_account_id, unknown_account},
    convert::{decode_page_token, encode_page_token, money_field, money_to_wire, page_size},
};
use crate::{
    domain::{
        account::{AccountId, CustomerRef},
        calendar::parse_date,
        credit_limit::{ChangeKind, LimitRefusal, LimitRequest, Reason},
    },
    storage::{LimitChangeRecord, LimitOutcome},
};

impl BillingApi {
    pub(super) async fn handle_update_credit_limit(
        &self,
        request: Request<wire::UpdateCreditLimitRequest>,
    ) -> Result<wire::UpdateCreditLimitResponse, Status> {
        let today = self.today();
        let (account_id, request_id, limit_request) =
            parse_update_request(request.get_ref(), today)?;
        tracing::Span::current().record("account_id", account_id.as_str());
        let outcome = self
            .store
            .update_credit_limit(&account_id, request_id.as_str(), &limit_request, today)
            .await?;
        let (change, account, replayed) = match outcome {
            LimitOutcome::Changed(change, account) => (change, account, false),
            LimitOutcome::Replayed(change, account) => (change, account, true),
            LimitOutcome::RequestIdReused => {
                return Err(refusal(
                    Code::AlreadyExists,
                    "IDEMPOTENCY_KEY_REUSED",
                    "this request_id already changed the limit with different details",
                ));
            }
            LimitOutcome::UnknownAccount => return Err(unknown_account(&account_id)),
            LimitOutcome::Refused(refused @ LimitRefusal::TemporaryNotAbovePermanent { .. }) => {
                return Err(invalid_field("new_limit", refused.to_string()));
            }
            LimitOutcome::Refused(refused @ LimitRefusal::OtherCurrency) => {
                return Err(invalid_field(
                    "new_limit.currency_code",
                    refused.to_string(),
                ));
            }
        };
        Ok(wire::UpdateCreditLimitResponse {
            change: Some(change_to_wire(&change)),
            account: Some(account_to_wire(&account, PhoneView::Full)),
            replayed,
        })
    }

    pub(super) async fn handle_list_credit_limit_changes(
        &self,
        request: Request<wire::ListCreditLimitChangesRequest>,
    ) -> Result<wire::ListCreditLimitChangesResponse, Status> {
        const TOKEN_KIND: &str = "credit-limit-changes";
        let caller = Caller::of(&request)?;
        let message = request.get_ref();
        let account_id = parse_account_id(&message.account_id)?;
        let limit = page_size(message.page_size)?;
        let after = decode_page_token(TOKEN_KIND, &message.page_token)?;
        admit_account(
            self.store.db(),
            caller,
            "ListCreditLimitChanges",
            account_id.as_str(),
        )
        .await?;
        self.existing_account(&account_id).await?;
        let changes = self
            .store
            .credit_limit_changes(&account_id, after.as_deref(), limit)
            .await?;
        let next_page_token = match changes.last() {
            Some(last) if changes.len() == limit as usize => {
                encode_page_token(TOKEN_KIND, &last.change_id)
            }
            _ => String::new(),
        };
        Ok(wire::ListCreditLimitChangesResponse {
            changes: changes.iter().map(change_to_wire).collect(),
            next_page_token,
        })
    }
}

/// Parses every field, refusing them all at once with field violations.
fn parse_update_request(
    message: &wire::UpdateCreditLimitRequest,
    today: NaiveDate,
) -> Result<(AccountId, CustomerRef, LimitRequest), Status> {
    let mut violations = FieldViolations::new();
    let account_id = violations.check("account_id", AccountId::parse(&message.account_id));
    // A request id follows the same rules as a customer reference.
    let request_id = violations.check("request_id", CustomerRef::parse(&message.request_id));
    let new_limit = money_field(&mut violations, "new_limit", message.new_limit.as_ref());
    let reason = violations.check("reason", Reason::parse(&message.reason));
    let until = if message.until.is_empty() {
        Ok(None)
    } else {
        match parse_date(&message.until) {
            Ok(until) if until > today => Ok(Some(until)),
            Ok(_) => Err(violations.add(
                "until",
                format!("must be after today ({today}); omit it for a permanent limit"),
            )),
            Err(_) => Err(violations.add("until", "must be a date YYYY-MM-DD")),
        }
    };
    let (account_id, request_id, new_limit, reason, until) =
        violations.finish((account_id, request_id, new_limit, reason, until).all())?;
    Ok((
        account_id,
        request_id,
        LimitRequest {
            new_limit,
            until,
            reason,
        },
    ))
}

pub(super) fn change_kind_to_wire(kind: ChangeKind) -> wire::CreditLimitChangeKind {
    match kind {
        ChangeKind::Permanent => wire::CreditLimitChangeKind::Permanent,
        ChangeKind::Temporary => wire::CreditLimitChangeKind::Temporary,
        ChangeKind::TemporaryLapsed => wire::CreditLimitChangeKind::TemporaryLapsed,
    }
}

fn change_to_wire(change: &LimitChangeRecord) -> wire::CreditLimitChange {
    wire::CreditLimitChange {
        change_id: change.change_id.clone(),
        account_id: change.account_id.clone(),
        kind: change_kind_to_wire(change.kind).into(),
        previous_limit: Some(money_to_wire(change.previous_limit)),
        new_limit: Some(money_to_wire(change.new_limit)),
        permanent_limit: Some(money_to_wire(change.permanent_limit)),
        until: change
            .until
            .map(|date| date.to_string())
            .unwrap_or_default(),
        reason: change.reason.clone(),
        request_id: change.request_id.clone().unwrap_or_default(),
        business_date: change.business_date.to_string(),
        changed_at: Some(timestamp_from_micros(change.changed_at_micros)),
    }
}
