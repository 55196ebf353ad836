//! ListBills, GetBill, GetAccountSummary and GetCreditRecord.

use billpay_contracts::billing::v1 as wire;
use service_kit::{audit::admit_account, auth::Caller, errors::invalid_field};
use tonic::{Request, Status};

use super::{
    BillingApi,
    accounts::parse_account_id,
    convert::{
        bill_statuses, bill_to_wire, decode_page_token, encode_page_token, money_to_wire,
        page_size, sum_error,
    },
    plans::parse_id,
};
use crate::{
    domain::{
        calendar::{date_text, parse_date},
        statement::{Bucket, Standing, credit_record, summarize},
    },
    storage::BillPageKey,
};

const BILLS_TOKEN_KIND: &str = "bills";

impl BillingApi {
    pub(super) async fn handle_list_bills(
        &self,
        request: Request<wire::ListBillsRequest>,
    ) -> Result<wire::ListBillsResponse, Status> {
        let caller = Caller::of(&request)?;
        let message = request.get_ref();
        let account_id = parse_account_id(&message.account_id)?;
        let statuses = bill_statuses(&message.statuses)?;
        let limit = page_size(message.page_size)?;
        let after = decode_page_token(BILLS_TOKEN_KIND, &message.page_token)?
            .map(|position| parse_bill_key(&position))
            .transpose()?;
        admit_account(self.store.db(), caller, "ListBills", account_id.as_str()).await?;
        let today = self.today();
        let bills = self
            .store
            .bills_page(&account_id, &statuses, today, after.as_ref(), limit)
            .await?;
        let next_page_token = match bills.last() {
            Some(last) if bills.len() == limit as usize => {
                let key = BillPageKey::of(last);
                encode_page_token(
                    BILLS_TOKEN_KIND,
                    &format!("{}|{}|{}", key.due_date, key.plan_id, key.seq),
                )
            }
            _ => String::new(),
        };
        Ok(wire::ListBillsResponse {
            bills: bills
                .iter()
                .map(|bill| bill_to_wire(bill, today))
                .collect::<Result<_, _>>()
                .map_err(sum_error)?,
            next_page_token,
        })
    }

    pub(super) async fn handle_get_bill(
        &self,
        request: Request<wire::GetBillRequest>,
    ) -> Result<wire::GetBillResponse, Status> {
        let caller = Caller::of(&request)?;
        let bill_id = parse_id("bill_id", &request.get_ref().bill_id)?;
        let bill = self
            .store
            .bill(bill_id)
            .await?
            .ok_or_else(|| Status::not_found(format!("no bill {bill_id}")))?;
        admit_account(self.store.db(), caller, "GetBill", &bill.account_id).await?;
        Ok(wire::GetBillResponse {
            bill: Some(bill_to_wire(&bill, self.today()).map_err(sum_error)?),
        })
    }

    pub(super) async fn handle_get_account_summary(
        &self,
        request: Request<wire::GetAccountSummaryRequest>,
    ) -> Result<wire::GetAccountSummaryResponse, Status> {
        let caller = Caller::of(&request)?;
        let account_id = parse_account_id(&request.get_ref().account_id)?;
        admit_account(
            self.store.db(),
            caller,
            "GetAccountSummary",
            account_id.as_str(),
        )
        .await?;
        let (account, bills) = self
            .store
            .account_with_unpaid_bills(&account_id)
            .await?
            .ok_or_else(|| super::accounts::unknown_account(&account_id))?;
        let today = self.today();
        let currency = account.credit_limit.currency();
        let summary = summarize(currency, &bills, today).map_err(sum_error)?;
        let (next_due_date, next_due_amount) = match summary.next_due {
            Some((date, amount)) => (date_text(date), amount),
            None => (String::new(), service_kit::money::Money::zero(currency)),
        };
        Ok(wire::GetAccountSummaryResponse {
            account_id: account_id.as_str().to_owned(),
            outstanding_total: Some(money_to_wire(summary.outstanding_total)),
            due_now: Some(money_to_wire(summary.due_now)),
            overdue_amount: Some(money_to_wire(summary.overdue_amount)),
            overdue_bill_count: i32::try_from(summary.overdue_bill_count).unwrap_or(i32::MAX),
            next_due_date,
            next_due_amount: Some(money_to_wire(next_due_amount)),
            credit_limit: Some(money_to_wire(account.effective_limit())),
            available_credit: Some(money_to_wire(account.available_credit())),
            credit_balance: Some(money_to_wire(account.credit_balance)),
            business_date: date_text(today),
            permanent_credit_limit: Some(money_to_wire(account.credit_limit)),
            temporary_limit_until: account
                .temporary_limit
                .map(|temporary| temporary.until.to_string())
                .unwrap_or_default(),
        })
    }

    pub(super) async fn handle_get_credit_record(
        &self,
        request: Request<wire::GetCreditRecordRequest>,
    ) -> Result<wire::GetCreditRecordResponse, Status> {
        let caller = Caller::of(&request)?;
        let account_id = parse_account_id(&request.get_ref().account_id)?;
        admit_account(
            self.store.db(),
            caller,
            "GetCreditRecord",
            account_id.as_str(),
        )
        .await?;
        let (_, bills) = self
            .store
            .account_with_bills(&account_id)
            .await?
            .ok_or_else(|| super::accounts::unknown_account(&account_id))?;
        let products = self.store.plan_products(&account_id).await?;
        let grace_days = |bill: &crate::domain::bill::Bill| {
            products
                .get(&bill.plan_id)
                .and_then(|product_id| self.catalog.product(product_id))
                .map_or(0, |product| product.grace_days)
        };
        let (entries, worst) = credit_record(&bills, self.today(), grace_days);
        let count = |standing: Standing| {
            let n = entries
                .iter()
                .filter(|entry| entry.standing == standing)
                .count();
            i32::try_from(n).unwrap_or(i32::MAX)
        };
        let response = wire::GetCreditRecordResponse {
            account_id: account_id.as_str().to_owned(),
            on_time_count: count(Standing::OnTime),
            late_count: count(Standing::Late),
            overdue_count: count(Standing::Overdue),
            worst_bucket: bucket_to_wire(worst).into(),
            entries: entries
                .iter()
                .map(|entry| {
                    Ok(wire::CreditRecordEntry {
                        bill_id: entry.bill.bill_id.clone(),
                        plan_id: entry.bill.plan_id.clone(),
                        seq: i32::try_from(entry.bill.seq).unwrap_or(i32::MAX),
                        due_date: date_text(entry.bill.due_date),
                        amount_due: Some(money_to_wire(entry.bill.amount_due()?)),
                        standing: standing_to_wire(entry.standing).into(),
                        days_past_due: i32::try_from(entry.days_past_due).unwrap_or(i32::MAX),
                    })
                })
                .collect::<Result<_, service_kit::money::MoneyError>>()
                .map_err(sum_error)?,
        };
        Ok(response)
    }
}

fn parse_bill_key(position: &str) -> Result<BillPageKey, Status> {
    let refuse = || invalid_field("page_token", "is not a token this list returned");
    let mut parts = position.splitn(3, '|');
    let (Some(due_date), Some(plan_id), Some(seq)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(refuse());
    };
    Ok(BillPageKey {
        due_date: parse_date(due_date).map_err(|_| refuse())?,
        plan_id: plan_id.to_owned(),
        seq: seq.parse().map_err(|_| refuse())?,
    })
}

fn standing_to_wire(standing: Standing) -> wire::RepaymentStanding {
    match standing {
        Standing::OnTime => wire::RepaymentStanding::OnTime,
        Standing::Late => wire::RepaymentStanding::Late,
        Standing::Due => wire::RepaymentStanding::Due,
        Standing::Overdue => wire::RepaymentStanding::Overdue,
        Standing::Cancelled => wire::RepaymentStanding::Cancelled,
    }
}

fn bucket_to_wire(bucket: Bucket) -> wire::DelinquencyBucket {
    match bucket {
        Bucket::N => wire::DelinquencyBucket::N,
        Bucket::M1 => wire::DelinquencyBucket::M1,
        Bucket::M2 => wire::DelinquencyBucket::M2,
        Bucket::M3 => wire::DelinquencyBucket::M3,
        Bucket::M3Plus => wire::DelinquencyBucket::M3Plus,
    }
}
