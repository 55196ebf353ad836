//! CreateAccount and GetAccount.

use billpay_contracts::billing::v1 as wire;
use service_kit::{
    audit::admit_account,
    auth::Caller,
    clock::timestamp_from_micros,
    errors::{AllChecked as _, FieldViolations, refusal},
};
use tonic::{Code, Request, Status};

use super::{
    BillingApi,
    convert::{money_field, money_to_wire},
};
use crate::{
    domain::account::{
        Account, AccountId, AccountStatus, CustomerRef, DisplayName, NewAccount, Phone,
    },
    storage::CreateOutcome,
};

impl BillingApi {
    pub(super) async fn handle_create_account(
        &self,
        request: Request<wire::CreateAccountRequest>,
    ) -> Result<wire::CreateAccountResponse, Status> {
        let new_account = parse_new_account(request.get_ref())?;
        let (account, created) = match self.store.create_account(&new_account).await? {
            CreateOutcome::Created(account) => (account, true),
            CreateOutcome::Existing(account) if account.was_created_by(&new_account) => {
                (account, false)
            }
            CreateOutcome::Existing(_) => {
                return Err(refusal(
                    Code::AlreadyExists,
                    "IDEMPOTENCY_KEY_REUSED",
                    "an account with this customer_ref exists with different details",
                ));
            }
        };
        tracing::Span::current().record("account_id", account.account_id.as_str());
        Ok(wire::CreateAccountResponse {
            account: Some(account_to_wire(&account, PhoneView::Full)),
            created,
        })
    }

    pub(super) async fn handle_get_account(
        &self,
        request: Request<wire::GetAccountRequest>,
    ) -> Result<wire::GetAccountResponse, Status> {
        let caller = Caller::of(&request)?;
        let account_id = parse_account_id(&request.get_ref().account_id)?;
        admit_account(self.store.db(), caller, "GetAccount", account_id.as_str()).await?;
        let account = self.existing_account(&account_id).await?;
        let view = if caller.is_operator() {
            PhoneView::Masked
        } else {
            PhoneView::Full
        };
        Ok(wire::GetAccountResponse {
            account: Some(account_to_wire(&account, view)),
        })
    }
}

/// NOT_FOUND for an account id no account has.
pub(super) fn unknown_account(account_id: &AccountId) -> Status {
    Status::not_found(format!("no account {}", account_id.as_str()))
}

impl BillingApi {
    /// The account, or NOT_FOUND.
    pub(super) async fn existing_account(&self, account_id: &AccountId) -> Result<Account, Status> {
        self.store
            .account(account_id)
            .await?
            .ok_or_else(|| unknown_account(account_id))
    }
}

/// Parses a required `account_id` field.
pub(super) fn parse_account_id(text: &str) -> Result<AccountId, Status> {
    let mut violations = FieldViolations::new();
    let account_id = violations.check("account_id", AccountId::parse(text));
    violations.finish(account_id)
}

fn parse_new_account(request: &wire::CreateAccountRequest) -> Result<NewAccount, Status> {
    let mut violations = FieldViolations::new();
    let customer_ref = violations.check("customer_ref", CustomerRef::parse(&request.customer_ref));
    let display_name = violations.check("display_name", DisplayName::parse(&request.display_name));
    let phone = violations.check("phone", Phone::parse(&request.phone));
    let credit_limit = money_field(
        &mut violations,
        "credit_limit",
        request.credit_limit.as_ref(),
    );
    let (customer_ref, display_name, phone, credit_limit) =
        violations.finish((customer_ref, display_name, phone, credit_limit).all())?;
    Ok(NewAccount {
        customer_ref,
        display_name,
        phone,
        credit_limit,
    })
}

/// Whether the caller may see the phone in full.
#[derive(Debug, Clone, Copy)]
pub(super) enum PhoneView {
    Full,
    Masked,
}

pub(super) fn account_to_wire(account: &Account, phone: PhoneView) -> wire::Account {
    let status = match account.status {
        AccountStatus::Active => wire::AccountStatus::Active,
        AccountStatus::Delinquent => wire::AccountStatus::Delinquent,
        AccountStatus::Closed => wire::AccountStatus::Closed,
    };
    wire::Account {
        account_id: account.account_id.as_str().to_owned(),
        customer_ref: account.customer_ref.as_str().to_owned(),
        display_name: account.display_name.as_str().to_owned(),
        phone: match phone {
            PhoneView::Full => account.phone.as_str().to_owned(),
            PhoneView::Masked => account.phone.masked(),
        },
        status: status.into(),
        credit_limit: Some(money_to_wire(account.effective_limit())),
        available_credit: Some(money_to_wire(account.available_credit())),
        credit_balance: Some(money_to_wire(account.credit_balance)),
        created_at: Some(timestamp_from_micros(account.created_at_micros)),
        permanent_credit_limit: Some(money_to_wire(account.credit_limit)),
        temporary_credit_limit: account
            .temporary_limit
            .map(|temporary| money_to_wire(temporary.limit)),
        temporary_limit_until: account
            .temporary_limit
            .map(|temporary| temporary.until.to_string())
            .unwrap_or_default(),
    }
}
