//! The demo's autopay chapter: consent with a cap, the notice three days before the
//! due date, the debit on it (once, however often the run repeats), revocation, and
//! the next due date passing with no debit. Runs are asked for with RunAutopay and a
//! business date (`as_of`), as the automatic daily run would make them.

use anyhow::{Context as _, bail};
use billpay_contracts::{
    billing::v1::{BillStatus, CreateAccountRequest, CreatePlanRequest, GetBillRequest},
    common::v1::Money,
    payment::v1::{
        Consent, CreateMandateRequest, PaymentEvent, PaymentEventKind, PaymentMethod,
        RevokeMandateRequest, RunAutopayRequest, RunAutopayResponse, WatchPaymentEventsRequest,
    },
};
use chrono::{Days, Months, NaiveDate};
use service_kit::{
    auth::{Role, TokenSigner, mint},
    clock::{now_micros, timestamp_from_micros},
};

use super::{CONFIRMATION_DEADLINE, Clients, amount};

/// Walks the autopay chapter for a new account.
pub(super) async fn chapter(clients: &mut Clients, key: &TokenSigner) -> anyhow::Result<()> {
    println!();
    println!("Autopay (自动还款): consent first, a notice before every debit, revocation at once.");
    let suffix = uuid::Uuid::now_v7().simple().to_string();
    let account_id = clients
        .billing
        .create_account(clients.request(CreateAccountRequest {
            customer_ref: format!("demo-autopay-{}", &suffix[20..]),
            display_name: "Li Lei".into(),
            phone: "13812345678".into(),
            credit_limit: Some(Money::new("CNY", "20000.00")),
        })?)
        .await?
        .into_inner()
        .account
        .context("no account in the answer")?
        .account_id;
    let today = chrono::Utc::now()
        .with_timezone(&payment_svc::config::shanghai())
        .date_naive();
    let purchase_date = today - Months::new(1);
    let plan = clients
        .billing
        .create_plan(clients.request(CreatePlanRequest {
            account_id: account_id.clone(),
            order_ref: format!("earbuds-{suffix}"),
            product_id: "mall-free".into(),
            term_count: 3,
            price: Some(Money::new("CNY", "300.00")),
            down_payment: None,
            purchase_date: purchase_date.to_string(),
        })?)
        .await?
        .into_inner()
        .plan
        .context("no plan in the answer")?;
    let [first, second, ..] = plan.bills.as_slice() else {
        bail!("a 3-term plan without bills");
    };
    let first_due: NaiveDate = first.due_date.parse()?;
    let second_due: NaiveDate = second.due_date.parse()?;
    println!(
        "6. Account {account_id} bought 300.00 earbuds, interest-free in 3 terms, on {purchase_date}: bills of {} due {first_due}, {second_due}, …",
        amount(first.amount_due.as_ref()),
    );

    let customer = mint(
        key,
        "demo-customer",
        Role::Customer,
        &[],
        Some(&account_id),
        600,
    );
    let mandate = clients
        .payment
        .create_mandate(as_bearer(
            CreateMandateRequest {
                account_id: account_id.clone(),
                idempotency_key: format!("consent-{suffix}"),
                method: PaymentMethod::BankCard as i32,
                instrument: "tok_6222020000004242".into(),
                max_amount_per_debit: Some(Money::new("CNY", "500.00")),
                consent: Some(Consent {
                    text_version: "autopay-consent-v1".into(),
                    accepted_at: Some(timestamp_from_micros(now_micros())),
                }),
            },
            &customer,
        )?)
        .await?
        .into_inner()
        .mandate
        .context("no mandate in the answer")?;
    println!(
        "7. The customer consents (text autopay-consent-v1) to autopay from the card ending {}, at most {} per debit: mandate {} {:?}.",
        mandate.instrument_last4,
        amount(mandate.max_amount_per_debit.as_ref()),
        mandate.mandate_id,
        mandate.status(),
    );

    let notice_day = first_due - Days::new(3);
    let run = run_autopay(clients, notice_day).await?;
    let notice = next_event(clients, &account_id, PaymentEventKind::AutopayNotice).await?;
    println!(
        "8. The run of {notice_day} (three days before): {} notice(s). The customer reads:",
        run.notices_sent
    );
    print_sms(&notice);

    let run = run_autopay(clients, first_due).await?;
    let debited = next_event(clients, &account_id, PaymentEventKind::AutopayDebited).await?;
    let status = bill_status(clients, &first.bill_id).await?;
    println!(
        "9. The run of the due date {first_due}: {} debit(s) started, {} succeeded; bill 1 is {status:?}. The customer reads:",
        run.debits_started, run.debits_succeeded
    );
    print_sms(&debited);
    let rerun = run_autopay(clients, first_due).await?;
    println!(
        "   The same day's run again (a retry, or another replica): {} debit(s) started — nothing is charged twice.",
        rerun.debits_started
    );
    if status != BillStatus::Paid || rerun.debits_started != 0 {
        bail!("the autopay debit did not pay bill 1 exactly once");
    }

    let revoked = clients
        .payment
        .revoke_mandate(as_bearer(
            RevokeMandateRequest {
                mandate_id: mandate.mandate_id.clone(),
                reason: "the customer turned autopay off in the app".into(),
            },
            &customer,
        )?)
        .await?
        .into_inner()
        .mandate
        .context("no mandate in the answer")?;
    let revocation = next_event(clients, &account_id, PaymentEventKind::MandateRevoked).await?;
    println!(
        "10. The customer revokes: mandate {} is {:?} the moment the call returns. The customer reads:",
        revoked.mandate_id,
        revoked.status()
    );
    print_sms(&revocation);

    run_autopay(clients, second_due - Days::new(3)).await?;
    run_autopay(clients, second_due).await?;
    let status = bill_status(clients, &second.bill_id).await?;
    // This account's own events since the revocation (the runs cover every account).
    let since = events_after(clients, &account_id, revocation.event_id).await?;
    let count = |kind: PaymentEventKind| since.iter().filter(|event| event.kind() == kind).count();
    let (notices, debits) = (
        count(PaymentEventKind::AutopayNotice),
        count(PaymentEventKind::AutopayDebited),
    );
    println!(
        "11. The next due date {second_due} passes: {notices} notice(s), {debits} debit(s) for this account; bill 2 stays {status:?} — billing's own reminders (BILL_DUE_SOON, BILL_DUE) ask the customer to pay it by hand."
    );
    if notices + debits != 0 || status == BillStatus::Paid {
        bail!("a revoked mandate was noticed or debited");
    }
    Ok(())
}

fn as_bearer<T>(message: T, token: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(request)
}

async fn run_autopay(
    clients: &mut Clients,
    as_of: NaiveDate,
) -> anyhow::Result<RunAutopayResponse> {
    let request = clients.request(RunAutopayRequest {
        as_of: as_of.to_string(),
    })?;
    Ok(clients.payment.run_autopay(request).await?.into_inner())
}

async fn bill_status(clients: &mut Clients, bill_id: &str) -> anyhow::Result<BillStatus> {
    let request = clients.request(GetBillRequest {
        bill_id: bill_id.to_owned(),
    })?;
    let bill = clients.billing.get_bill(request).await?.into_inner().bill;
    Ok(bill.context("no bill in the answer")?.status())
}

/// The account's payment events after `after_id`, as committed now.
async fn events_after(
    clients: &mut Clients,
    account_id: &str,
    after_id: i64,
) -> anyhow::Result<Vec<PaymentEvent>> {
    let request = clients.request(WatchPaymentEventsRequest {
        after_id,
        account_id: account_id.to_owned(),
        stop_at_end: true,
    })?;
    let mut stream = clients
        .payment
        .watch_payment_events(request)
        .await?
        .into_inner();
    let mut events = Vec::new();
    while let Some(message) = tokio::time::timeout(CONFIRMATION_DEADLINE, stream.message())
        .await
        .context("the one-shot event stream did not end")??
    {
        events.extend(message.event);
    }
    Ok(events)
}

/// The account's first payment event of `kind`, from the start of its stream.
async fn next_event(
    clients: &mut Clients,
    account_id: &str,
    kind: PaymentEventKind,
) -> anyhow::Result<PaymentEvent> {
    let request = clients.request(WatchPaymentEventsRequest {
        after_id: 0,
        account_id: account_id.to_owned(),
        ..Default::default()
    })?;
    let mut stream = clients
        .payment
        .watch_payment_events(request)
        .await?
        .into_inner();
    let deadline = tokio::time::Instant::now() + CONFIRMATION_DEADLINE;
    loop {
        let message = tokio::time::timeout_at(deadline, stream.message())
            .await
            .with_context(|| format!("no {kind:?} event within {CONFIRMATION_DEADLINE:?}"))??
            .context("the event stream ended")?;
        if let Some(event) = message.event
            && event.kind() == kind
        {
            return Ok(event);
        }
    }
}

fn print_sms(event: &PaymentEvent) {
    if let Some(text) = crate::notifier::payments::message(event) {
        println!("    SMS: {text}");
    }
}
