//! `billpay demo`: the customer's journey against a running stack, printed as it
//! goes — open an account, buy a phone on installments, see what is due, confirm the
//! amount, pay one bill with each method, and watch the bills turn PAID; then autopay
//! (`demo/autopay.rs`): consent, notice, the debit on the due date, revocation.

mod autopay;

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context as _, bail};
use billpay_contracts::{
    billing::v1::{
        Bill, BillStatus, CreateAccountRequest, CreatePlanRequest, GetAccountSummaryRequest,
        ListBillsRequest, QuoteRepaymentRequest, billing_service_client::BillingServiceClient,
    },
    common::v1::{BillSelection, Money, RepaymentTarget, repayment_target::Kind},
    payment::v1::{
        CreateRepaymentRequest, GetPaymentRequest, Payment, PaymentMethod, PaymentStatus,
        payment_service_client::PaymentServiceClient,
    },
};
use service_kit::auth::{DEFAULT_SERVICE_SCOPES, Role, mint};
use tonic::transport::Channel;

/// How long the demo waits for an asynchronous wallet to confirm.
const CONFIRMATION_DEADLINE: Duration = Duration::from_secs(30);

/// Arguments of `billpay demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub billing_addr: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:50052")]
    pub payment_addr: SocketAddr,
    /// Where `billpay up` keeps its data: the demo signs with its dev issuer key.
    #[arg(long, env = "BILLPAY_DATA_DIR", default_value = "./data")]
    pub data_dir: std::path::PathBuf,
    /// A signing key file to use instead of the dev key.
    #[arg(long, env = "BILLPAY_SIGNING_KEY_FILE")]
    pub signing_key_file: Option<std::path::PathBuf>,
}

struct Clients {
    billing: BillingServiceClient<Channel>,
    payment: PaymentServiceClient<Channel>,
    token: String,
}

impl Clients {
    fn request<T>(&self, message: T) -> anyhow::Result<tonic::Request<T>> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {}", self.token).parse()?);
        Ok(request)
    }
}

/// Walks the journey and prints it.
pub async fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let key = crate::token::signer(args.signing_key_file.as_deref(), &args.data_dir, None)?;
    let connect = |addr: SocketAddr| async move {
        Channel::from_shared(format!("http://{addr}"))?
            .connect()
            .await
            .with_context(|| {
                format!("nothing answers on {addr}: start the stack with `billpay up`")
            })
    };
    let mut clients = Clients {
        billing: BillingServiceClient::new(connect(args.billing_addr).await?),
        payment: PaymentServiceClient::new(connect(args.payment_addr).await?),
        token: mint(
            &key,
            "billpay-demo",
            Role::Service,
            DEFAULT_SERVICE_SCOPES,
            None,
            600,
        ),
    };

    let suffix = uuid::Uuid::now_v7().simple().to_string();
    let account = clients
        .billing
        .create_account(clients.request(CreateAccountRequest {
            customer_ref: format!("demo-{}", &suffix[20..]),
            display_name: "Han Meimei".into(),
            phone: "13912345678".into(),
            credit_limit: Some(Money::new("CNY", "20000.00")),
        })?)
        .await?
        .into_inner()
        .account
        .context("no account in the answer")?;
    let account_id = account.account_id;
    println!("1. Opened account {account_id} with a credit limit of 20000.00 CNY.");

    // Bought three months ago, so that three bills are due today.
    let purchase_date = chrono::Utc::now().date_naive() - chrono::Months::new(3);
    let plan = clients
        .billing
        .create_plan(clients.request(CreatePlanRequest {
            account_id: account_id.clone(),
            order_ref: format!("phone-{suffix}"),
            product_id: "mall-fee".into(),
            term_count: 12,
            price: Some(Money::new("CNY", "5999.00")),
            down_payment: None,
            purchase_date: purchase_date.to_string(),
        })?)
        .await?
        .into_inner()
        .plan
        .context("no plan in the answer")?;
    println!(
        "2. Bought a 5999.00 phone on mall-fee, 12 terms, on {purchase_date}: plan {}, APR {} %, fees {}.",
        plan.plan_id,
        plan.apr,
        amount(plan.total_fee.as_ref())
    );

    let due = list_bills(&mut clients, &account_id, BillStatus::Due).await?;
    println!("3. What is due (待还款):");
    print_bills(&due);

    println!("4. Paying one bill with each method:");
    let methods = [
        (PaymentMethod::BankCard, "tok_6222020000004242"),
        (PaymentMethod::Alipay, "alipay-user-8888"),
        (PaymentMethod::WechatPay, "wx-openid-6666"),
    ];
    for (bill, (method, instrument)) in due.iter().zip(methods) {
        pay_bill(&mut clients, &account_id, bill, method, instrument).await?;
    }

    let paid = list_bills(&mut clients, &account_id, BillStatus::Paid).await?;
    println!("5. The bills now:");
    print_bills(&paid);
    let summary = clients
        .billing
        .get_account_summary(clients.request(GetAccountSummaryRequest {
            account_id: account_id.clone(),
        })?)
        .await?
        .into_inner();
    println!(
        "   Due now {}, next due {} on {}, available credit {}.",
        amount(summary.due_now.as_ref()),
        amount(summary.next_due_amount.as_ref()),
        summary.next_due_date,
        amount(summary.available_credit.as_ref()),
    );
    if paid.len() < methods.len() {
        bail!(
            "expected {} bills PAID, found {}",
            methods.len(),
            paid.len()
        );
    }
    autopay::chapter(&mut clients, &key).await
}

async fn pay_bill(
    clients: &mut Clients,
    account_id: &str,
    bill: &Bill,
    method: PaymentMethod,
    instrument: &str,
) -> anyhow::Result<()> {
    let target = RepaymentTarget {
        kind: Some(Kind::Bills(BillSelection {
            bill_ids: vec![bill.bill_id.clone()],
        })),
    };
    let quote = clients
        .billing
        .quote_repayment(clients.request(QuoteRepaymentRequest {
            account_id: account_id.to_owned(),
            target: Some(target.clone()),
        })?)
        .await?
        .into_inner();
    let quoted = quote.amount.context("no amount in the quote")?;
    let payment = clients
        .payment
        .create_repayment(clients.request(CreateRepaymentRequest {
            idempotency_key: format!("demo-{}", bill.bill_id),
            account_id: account_id.to_owned(),
            target: Some(target),
            expected_amount: Some(quoted.clone()),
            method: method as i32,
            instrument: instrument.to_owned(),
        })?)
        .await?
        .into_inner()
        .payment
        .context("no payment in the answer")?;
    println!(
        "   bill {} ({}): quoted {}, {:?} → payment {} {:?}{}",
        bill.seq,
        bill.due_date,
        quoted.amount,
        method,
        payment.payment_id,
        payment.status(),
        if payment.applied {
            ", applied"
        } else {
            ", waiting for the provider"
        }
    );
    let confirmed = wait_until_applied(clients, payment).await?;
    if confirmed.status() != PaymentStatus::Succeeded {
        bail!(
            "payment {} ended {:?}: {}",
            confirmed.payment_id,
            confirmed.status(),
            confirmed.failure_message
        );
    }
    Ok(())
}

async fn wait_until_applied(
    clients: &mut Clients,
    mut payment: Payment,
) -> anyhow::Result<Payment> {
    let deadline = tokio::time::Instant::now() + CONFIRMATION_DEADLINE;
    while payment.status() == PaymentStatus::Processing
        || (payment.status() == PaymentStatus::Succeeded && !payment.applied)
    {
        if tokio::time::Instant::now() > deadline {
            bail!(
                "payment {} still {:?} after {CONFIRMATION_DEADLINE:?}",
                payment.payment_id,
                payment.status()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        payment = clients
            .payment
            .get_payment(clients.request(GetPaymentRequest {
                payment_id: payment.payment_id.clone(),
            })?)
            .await?
            .into_inner()
            .payment
            .context("no payment in the answer")?;
        if payment.status() == PaymentStatus::Succeeded && payment.applied {
            println!(
                "     … {} confirmed by the provider and applied",
                payment.payment_id
            );
        }
    }
    Ok(payment)
}

async fn list_bills(
    clients: &mut Clients,
    account_id: &str,
    status: BillStatus,
) -> anyhow::Result<Vec<Bill>> {
    let bills = clients
        .billing
        .list_bills(clients.request(ListBillsRequest {
            account_id: account_id.to_owned(),
            statuses: vec![status as i32],
            page_size: 100,
            page_token: String::new(),
        })?)
        .await?
        .into_inner()
        .bills;
    Ok(bills)
}

fn print_bills(bills: &[Bill]) {
    println!("   seq  due date     principal      fee   amount due  outstanding  status");
    for bill in bills {
        println!(
            "   {:>3}  {}  {:>9}  {:>7}  {:>11}  {:>11}  {:?}",
            bill.seq,
            bill.due_date,
            amount(bill.principal.as_ref()),
            amount(bill.fee.as_ref()),
            amount(bill.amount_due.as_ref()),
            amount(bill.outstanding.as_ref()),
            bill.status(),
        );
    }
}

fn amount(money: Option<&Money>) -> &str {
    money.map_or("-", |money| money.amount.as_str())
}
