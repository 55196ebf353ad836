//! The provider simulator over real HTTP: the behaviour table, idempotency under
//! concurrency, signatures, refunds, wallet notifications, shutdown and restarts. Each
//! test runs its own simulator in-process on a free port with a fresh ledger file.

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use payment_svc::{
    providers::signature::{SIGNATURE_HEADER, sign, verify},
    sim::{
        DEV_ALIPAY_SECRET, DEV_BANK_CARD_SECRET, DEV_WECHAT_PAY_SECRET, ProviderSim, SimConfig,
        wire::{
            ChargeReply, ChargeRequest, LedgerEntry, LedgerReply, Notification, RefundReply,
            RefundRequest, StatusReply, from_body, to_body,
        },
    },
};
use reqwest::RequestBuilder;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::oneshot,
    task::{JoinHandle, JoinSet},
    time::{Instant, timeout},
};

/// How long a test waits for a state it polls for, or for the simulator to stop.
const DEADLINE: Duration = Duration::from_secs(15);
/// How long after a charge a wallet first notifies, in these tests.
const NOTIFY_DELAY_MS: u64 = 20;
/// What every charge here is for, unless it says otherwise.
const AMOUNT_MINOR: i64 = 53_591;
/// Where bank-card charges say to notify; bank card never does.
const NO_RECEIVER: &str = "http://127.0.0.1:9/unused";

/// A running simulator and an HTTP client for it.
struct Sim {
    base: String,
    http: reqwest::Client,
    /// Taken by `stop`.
    running: Mutex<Option<Running>>,
}

/// What stops a simulator, and its serving task.
type Running = (oneshot::Sender<()>, JoinHandle<anyhow::Result<()>>);

/// A fresh ledger file's URL, in a directory that lives as long as the guard.
fn ledger_file() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("provider-sim.db").display());
    (dir, url)
}

async fn spawn_sim(database_url: &str) -> Arc<Sim> {
    let mut config = SimConfig::dev("127.0.0.1:0".parse().unwrap(), database_url.to_owned());
    config.notify_delay_ms = NOTIFY_DELAY_MS;
    let sim = ProviderSim::build(&config).await.unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let base = format!("http://{}", sim.local_addr());
    let task = tokio::spawn(sim.run_until_stopped(async {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let running = Mutex::new(Some((stop, task)));
    Arc::new(Sim {
        base,
        http,
        running,
    })
}

fn secret(provider: &str) -> &'static [u8] {
    match provider {
        "bank-card" => DEV_BANK_CARD_SECRET.as_bytes(),
        "alipay" => DEV_ALIPAY_SECRET.as_bytes(),
        "wechat-pay" => DEV_WECHAT_PAY_SECRET.as_bytes(),
        other => panic!("no provider {other}"),
    }
}

fn charge_request(payment_id: &str, instrument: &str, notify_url: &str) -> ChargeRequest {
    ChargeRequest {
        payment_id: payment_id.to_owned(),
        amount_minor: AMOUNT_MINOR,
        currency: "CNY".to_owned(),
        instrument: instrument.to_owned(),
        notify_url: Some(notify_url.to_owned()),
    }
}

fn entry(provider: &str, payment_id: &str, kind: &str, amount_minor: i64) -> LedgerEntry {
    LedgerEntry {
        provider: provider.to_owned(),
        payment_id: payment_id.to_owned(),
        kind: kind.to_owned(),
        amount_minor,
    }
}

impl Sim {
    /// Sends `request` with `signature` (none when `None`): the answer's code and body.
    async fn send(&self, request: RequestBuilder, signature: Option<&str>) -> (u16, Vec<u8>) {
        let request = match signature {
            Some(signature) => request.header(SIGNATURE_HEADER, signature),
            None => request,
        };
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.bytes().await.unwrap().to_vec())
    }

    async fn post(&self, path: &str, body: Vec<u8>, signature: Option<&str>) -> (u16, Vec<u8>) {
        let request = self.http.post(format!("{}{path}", self.base)).body(body);
        self.send(request, signature).await
    }

    async fn get(&self, path: &str, signature: Option<&str>) -> (u16, Vec<u8>) {
        self.send(self.http.get(format!("{}{path}", self.base)), signature)
            .await
    }

    /// Posts `request` to `/{provider}/charges`, signed with the provider's secret.
    async fn charge_with(&self, provider: &str, request: &ChargeRequest) -> (u16, Vec<u8>) {
        let body = to_body(request).unwrap();
        let signature = sign(secret(provider), &body);
        let path = format!("/{provider}/charges");
        self.post(&path, body, Some(&signature)).await
    }

    /// A charge of `AMOUNT_MINOR` that must be answered 200.
    async fn charge(&self, provider: &str, id: &str, instrument: &str, url: &str) -> ChargeReply {
        let request = charge_request(id, instrument, url);
        let (status, body) = self.charge_with(provider, &request).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        from_body(&body).unwrap()
    }

    /// `GET /{provider}/charges/{payment_id}`, signed over its path.
    async fn get_charge(&self, provider: &str, payment_id: &str) -> (u16, Vec<u8>) {
        let path = format!("/{provider}/charges/{payment_id}");
        let signature = sign(secret(provider), path.as_bytes());
        self.get(&path, Some(&signature)).await
    }

    /// A refund, signed; checks the body of a 200.
    async fn refund(&self, provider: &str, payment_id: &str, refund_id: &str, amount: i64) -> u16 {
        let request = RefundRequest {
            payment_id: payment_id.to_owned(),
            refund_id: refund_id.to_owned(),
            amount_minor: amount,
        };
        let body = to_body(&request).unwrap();
        let signature = sign(secret(provider), &body);
        let path = format!("/{provider}/refunds");
        let (status, body) = self.post(&path, body, Some(&signature)).await;
        if status == 200 {
            let reply: RefundReply = from_body(&body).unwrap();
            assert_eq!(
                (reply.refund_id.as_str(), reply.status.as_str()),
                (refund_id, "REFUNDED")
            );
        }
        status
    }

    async fn ledger(&self) -> LedgerReply {
        let (status, body) = self.get("/ledger", None).await;
        assert_eq!(status, 200);
        from_body(&body).unwrap()
    }

    /// Stops the simulator and checks it stopped cleanly, within the deadline.
    async fn stop(&self) {
        let (stop, task) = self.running.lock().unwrap().take().expect("stopped twice");
        stop.send(()).unwrap();
        let stopped = timeout(DEADLINE, task)
            .await
            .expect("the simulator did not stop");
        stopped.unwrap().unwrap();
    }
}

/// Polls `probe` every 20 ms until it yields a value, failing after the deadline.
async fn poll_for<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A notification as a receiver got it.
#[derive(Debug, Clone)]
struct Received {
    body: Vec<u8>,
    signature: String,
}

impl Received {
    fn notification(&self) -> Notification {
        from_body(&self.body).unwrap()
    }

    fn signed_with(&self, secret: &str) -> bool {
        verify(secret.as_bytes(), &self.body, &self.signature)
    }
}

/// A `notify_url` that keeps what it is posted, answering 503 to the first
/// `refusals` posts and 200 after. Plain HTTP/1.1 over TCP, one request per
/// connection: the test binary has no server framework.
struct Receiver {
    url: String,
    posts: Arc<Mutex<usize>>,
    accepted: Arc<Mutex<Vec<Received>>>,
    task: JoinHandle<()>,
}

impl Receiver {
    async fn spawn(refusals: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/notify", listener.local_addr().unwrap());
        let posts = Arc::new(Mutex::new(0));
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let (posts_seen, kept) = (Arc::clone(&posts), Arc::clone(&accepted));
        let task = tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let Some(received) = read_request(&mut stream).await else {
                    continue;
                };
                let refuse = {
                    let mut posts = posts_seen.lock().unwrap();
                    *posts += 1;
                    *posts <= refusals
                };
                let status_line = if refuse {
                    "503 Service Unavailable"
                } else {
                    kept.lock().unwrap().push(received);
                    "200 OK"
                };
                let reply = format!(
                    "HTTP/1.1 {status_line}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = stream.write_all(reply.as_bytes()).await;
                let _ = stream.shutdown().await;
            }
        });
        Self {
            url,
            posts,
            accepted,
            task,
        }
    }

    fn posts(&self) -> usize {
        *self.posts.lock().unwrap()
    }

    /// Waits until `count` notifications were accepted, and returns them.
    async fn wait_for(&self, count: usize) -> Vec<Received> {
        poll_for(&format!("{count} notifications"), || async {
            let accepted = self.accepted.lock().unwrap().clone();
            (accepted.len() >= count).then_some(accepted)
        })
        .await
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one request's signature header and body; `None` if the peer went away.
async fn read_request(stream: &mut TcpStream) -> Option<Received> {
    let mut buffer = Vec::new();
    let mut chunk = [0_u8; 4096];
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            break at + 4;
        }
        let read = stream
            .read(&mut chunk)
            .await
            .ok()
            .filter(|read| *read > 0)?;
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8(buffer[..head_end].to_vec()).ok()?;
    let header = |name: &str| {
        head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            let found = key.trim().eq_ignore_ascii_case(name);
            found.then(|| value.trim().to_owned())
        })
    };
    let length: usize = header("content-length")?.parse().ok()?;
    let signature = header(SIGNATURE_HEADER).unwrap_or_default();
    while buffer.len() < head_end + length {
        let read = stream
            .read(&mut chunk)
            .await
            .ok()
            .filter(|read| *read > 0)?;
        buffer.extend_from_slice(&chunk[..read]);
    }
    let body = buffer[head_end..head_end + length].to_vec();
    Some(Received { body, signature })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_provider_charges_and_the_ledger_records_captures() {
    let (_dir, url) = ledger_file();
    let sim = spawn_sim(&url).await;
    let receiver = Receiver::spawn(0).await;
    assert_eq!(sim.get("/health", None).await.0, 200);

    // (provider, payment id, first answer, reference prefix)
    let table = [
        ("bank-card", "pay_bc", "SUCCEEDED", "bc_"),
        ("alipay", "pay_ali", "PENDING", "ali_"),
        ("wechat-pay", "pay_wx", "PENDING", "wx_"),
    ];
    for (provider, payment_id, answered, prefix) in table {
        let reply = sim
            .charge(provider, payment_id, "tok_4242", &receiver.url)
            .await;
        assert_eq!(
            (reply.payment_id.as_str(), reply.status.as_str()),
            (payment_id, answered)
        );
        assert_eq!(reply.decline_code, None);
        assert!(
            reply.provider_ref.starts_with(prefix),
            "{}",
            reply.provider_ref
        );

        // Wallets capture at the charge: GET says SUCCEEDED at once.
        let (status, body) = sim.get_charge(provider, payment_id).await;
        assert_eq!(status, 200);
        let succeeded = ChargeReply {
            status: "SUCCEEDED".into(),
            ..reply
        };
        assert_eq!(from_body::<ChargeReply>(&body).unwrap(), succeeded);
    }
    let ledger = sim.ledger().await;
    let expected = [
        entry("bank_card", "pay_bc", "CHARGE", AMOUNT_MINOR),
        entry("alipay", "pay_ali", "CHARGE", AMOUNT_MINOR),
        entry("wechat_pay", "pay_wx", "CHARGE", AMOUNT_MINOR),
    ];
    assert_eq!(ledger.entries, expected);
    assert_eq!(
        (ledger.captured_minor, ledger.refunded_minor),
        (3 * AMOUNT_MINOR, 0)
    );
    receiver.wait_for(2).await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declines_capture_nothing_and_repeat_the_same_answer() {
    let (_dir, url) = ledger_file();
    let sim = spawn_sim(&url).await;
    let receiver = Receiver::spawn(0).await;

    // (provider, instrument, decline code); wallets answer PENDING and notify.
    let table = [
        ("bank-card", "tok_0002", "INSUFFICIENT_FUNDS"),
        ("bank-card", "tok_0069", "EXPIRED_INSTRUMENT"),
        ("alipay", "tok_0002", "INSUFFICIENT_FUNDS"),
        ("wechat-pay", "tok_0069", "EXPIRED_INSTRUMENT"),
    ];
    for (row, (provider, instrument, code)) in table.into_iter().enumerate() {
        let payment_id = format!("pay_{row}");
        let reply = sim
            .charge(provider, &payment_id, instrument, &receiver.url)
            .await;
        let declined = ChargeReply {
            status: "DECLINED".into(),
            decline_code: Some(code.into()),
            ..reply.clone()
        };
        if provider == "bank-card" {
            assert_eq!(reply, declined);
        } else {
            assert_eq!(
                (reply.status.as_str(), reply.decline_code),
                ("PENDING", None)
            );
        }
        let (status, body) = sim.get_charge(provider, &payment_id).await;
        assert_eq!(status, 200);
        assert_eq!(from_body::<ChargeReply>(&body).unwrap(), declined);
        let repeat = sim
            .charge(provider, &payment_id, instrument, &receiver.url)
            .await;
        assert_eq!(repeat, declined, "the repeat");
    }
    let mut notified: Vec<_> = receiver
        .wait_for(2)
        .await
        .iter()
        .map(Received::notification)
        .collect();
    notified.sort_by(|a, b| a.payment_id.cmp(&b.payment_id));
    let summary: Vec<_> = notified
        .iter()
        .map(|n| {
            (
                n.payment_id.as_str(),
                n.status.as_str(),
                n.decline_code.as_deref(),
                n.sequence,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("pay_2", "DECLINED", Some("INSUFFICIENT_FUNDS"), 2),
            ("pay_3", "DECLINED", Some("EXPIRED_INSTRUMENT"), 2),
        ]
    );
    let ledger = sim.ledger().await;
    assert_eq!(ledger.entries, []);
    assert_eq!((ledger.captured_minor, ledger.refunded_minor), (0, 0));
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_failure_records_nothing_every_time() {
    let (_dir, url) = ledger_file();
    let sim = spawn_sim(&url).await;
    let request = charge_request("pay_0341", "tok_0341", "http://127.0.0.1:9/n");
    for provider in ["bank-card", "alipay"] {
        for _ in 0..2 {
            assert_eq!(sim.charge_with(provider, &request).await.0, 500);
        }
        let (status, body) = sim.get_charge(provider, "pay_0341").await;
        assert_eq!(status, 404);
        assert_eq!(from_body::<StatusReply>(&body).unwrap().status, "NOT_FOUND");
    }
    assert_eq!(sim.ledger().await.entries, []);
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_id_is_charged_once_even_when_repeated_concurrently() {
    let (_dir, url) = ledger_file();
    let sim = spawn_sim(&url).await;
    let receiver = Receiver::spawn(0).await;

    let first = sim
        .charge("bank-card", "pay_seq", "tok_4242", NO_RECEIVER)
        .await;
    let repeat = sim
        .charge("bank-card", "pay_seq", "tok_4242", NO_RECEIVER)
        .await;
    assert_eq!(repeat, first);

    // R2: 50 identical wallet charges at once. Exactly one is new (answered PENDING;
    // the rest answer the recorded SUCCEEDED), and all name the same reference.
    let mut charges = JoinSet::new();
    for _ in 0..50 {
        let (sim, url) = (Arc::clone(&sim), receiver.url.clone());
        charges.spawn(async move { sim.charge("alipay", "pay_many", "tok_4242", &url).await });
    }
    let replies = charges.join_all().await;
    let pending = replies
        .iter()
        .filter(|reply| reply.status == "PENDING")
        .count();
    assert_eq!(pending, 1, "{replies:?}");
    let provider_ref = &replies[0].provider_ref;
    assert!(
        replies
            .iter()
            .all(|reply| &reply.provider_ref == provider_ref)
    );

    let ledger = sim.ledger().await;
    let charged: Vec<_> = ledger
        .entries
        .iter()
        .map(|e| e.payment_id.as_str())
        .collect();
    assert_eq!(charged, ["pay_seq", "pay_many"]);
    assert_eq!(ledger.captured_minor, 2 * AMOUNT_MINOR);
    let notified = receiver.wait_for(1).await;
    assert_eq!(&notified[0].notification().provider_ref, provider_ref);
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signatures_are_refused_and_record_nothing() {
    let (_dir, url) = ledger_file();
    let sim = spawn_sim(&url).await;
    let body = to_body(&charge_request("pay_1", "tok_4242", NO_RECEIVER)).unwrap();
    let tampered = [body.as_slice(), b" "].concat();
    let signed = sign(DEV_BANK_CARD_SECRET.as_bytes(), &body);
    let alipay_signed = sign(DEV_ALIPAY_SECRET.as_bytes(), &body);
    let refund = RefundRequest {
        payment_id: "pay_1".into(),
        refund_id: "ref_1".into(),
        amount_minor: 1,
    };
    let refund = to_body(&refund).unwrap();
    let other_path = sign(DEV_BANK_CARD_SECRET.as_bytes(), b"/bank-card/charges/pay_2");

    // (what, path, body (None: a GET), signature)
    let cases = [
        ("no signature", "/bank-card/charges", Some(&body), None),
        (
            "another provider's secret",
            "/bank-card/charges",
            Some(&body),
            Some(&alipay_signed),
        ),
        (
            "a tampered body",
            "/bank-card/charges",
            Some(&tampered),
            Some(&signed),
        ),
        (
            "not hex",
            "/bank-card/charges",
            Some(&body),
            Some(&"zz".to_owned()),
        ),
        (
            "an unsigned refund",
            "/bank-card/refunds",
            Some(&refund),
            None,
        ),
        (
            "another path's signature",
            "/bank-card/charges/pay_1",
            None,
            Some(&other_path),
        ),
        ("an unsigned GET", "/bank-card/charges/pay_1", None, None),
    ];
    for (what, path, body, signature) in cases {
        let signature = signature.map(String::as_str);
        let (status, reply) = match body {
            Some(body) => sim.post(path, body.clone(), signature).await,
            None => sim.get(path, signature).await,
        };
        assert_eq!(status, 401, "{what}");
        assert_eq!(
            from_body::<StatusReply>(&reply).unwrap().status,
            "UNAUTHORIZED"
        );
    }
    // No provider lives at an unknown base path.
    assert_eq!(
        sim.post("/paypal/charges", body.clone(), Some(&signed))
            .await
            .0,
        404
    );

    assert_eq!(sim.get_charge("bank-card", "pay_1").await.0, 404);
    assert_eq!(sim.ledger().await.entries, []);
    // The same body, rightly signed, is charged.
    assert_eq!(
        sim.post("/bank-card/charges", body, Some(&signed)).await.0,
        200
    );
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refunds_are_idempotent_and_never_exceed_the_charge() {
    let (_dir, url) = ledger_file();
    let sim = spawn_sim(&url).await;
    let mut request = charge_request("pay_r", "tok_4242", NO_RECEIVER);
    request.amount_minor = 10_000;
    assert_eq!(sim.charge_with("bank-card", &request).await.0, 200);
    sim.charge("bank-card", "pay_declined", "tok_0002", NO_RECEIVER)
        .await;

    // (payment id, refund id, amount, expected status), all at bank card.
    let table = [
        ("pay_r", "ref_1", 6_000, 200),
        ("pay_r", "ref_1", 6_000, 200),
        ("pay_r", "ref_2", 5_000, 409),
        ("pay_r", "ref_2", 4_000, 200),
        ("pay_r", "ref_3", 1, 409),
        ("pay_unknown", "ref_4", 1, 404),
        ("pay_declined", "ref_5", 1, 404),
    ];
    for (payment_id, refund_id, amount, expected) in table {
        let status = sim.refund("bank-card", payment_id, refund_id, amount).await;
        assert_eq!(status, expected, "{payment_id} {refund_id} {amount}");
    }
    // Another provider holds no such charge.
    assert_eq!(sim.refund("alipay", "pay_r", "ref_6", 1).await, 404);

    // 20 identical refunds at once refund once.
    sim.charge("bank-card", "pay_c", "tok_4242", NO_RECEIVER)
        .await;
    let mut refunds = JoinSet::new();
    for _ in 0..20 {
        let sim = Arc::clone(&sim);
        refunds.spawn(async move { sim.refund("bank-card", "pay_c", "ref_c", 100).await });
    }
    assert!(refunds.join_all().await.iter().all(|status| *status == 200));

    let ledger = sim.ledger().await;
    let expected = [
        entry("bank_card", "pay_r", "CHARGE", 10_000),
        entry("bank_card", "pay_r", "REFUND", 6_000),
        entry("bank_card", "pay_r", "REFUND", 4_000),
        entry("bank_card", "pay_c", "CHARGE", AMOUNT_MINOR),
        entry("bank_card", "pay_c", "REFUND", 100),
    ];
    assert_eq!(ledger.entries, expected);
    assert_eq!(
        (ledger.captured_minor, ledger.refunded_minor),
        (10_000 + AMOUNT_MINOR, 10_100)
    );
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wallet_notification_is_signed_and_retried_until_200() {
    let (_dir, url) = ledger_file();
    let sim = spawn_sim(&url).await;
    let receiver = Receiver::spawn(2).await;
    let reply = sim
        .charge("alipay", "pay_n", "tok_4242", &receiver.url)
        .await;
    assert_eq!(reply.status, "PENDING");

    let received = receiver.wait_for(1).await;
    assert_eq!(receiver.posts(), 3, "two refusals, then the 200");
    let expected = Notification {
        payment_id: "pay_n".into(),
        provider_ref: reply.provider_ref,
        status: "SUCCEEDED".into(),
        decline_code: None,
        amount_minor: AMOUNT_MINOR,
        sequence: 2,
    };
    assert_eq!(received[0].notification(), expected);
    assert!(received[0].signed_with(DEV_ALIPAY_SECRET));
    assert!(!received[0].signed_with(DEV_WECHAT_PAY_SECRET));
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instrument_0777_notifies_twice_then_a_stale_pending() {
    let (_dir, url) = ledger_file();
    let sim = spawn_sim(&url).await;
    let receiver = Receiver::spawn(0).await;
    let reply = sim
        .charge("wechat-pay", "pay_dup", "tok_0777", &receiver.url)
        .await;
    assert_eq!(reply.status, "PENDING");

    let received = receiver.wait_for(3).await;
    assert!(
        received
            .iter()
            .all(|r| r.signed_with(DEV_WECHAT_PAY_SECRET))
    );
    let notifications: Vec<_> = received.iter().map(Received::notification).collect();
    assert!(
        notifications
            .iter()
            .all(|n| n.provider_ref == reply.provider_ref)
    );
    let sent: Vec<_> = notifications
        .iter()
        .map(|n| (n.status.as_str(), n.sequence))
        .collect();
    assert_eq!(sent, [("SUCCEEDED", 2), ("SUCCEEDED", 2), ("PENDING", 1)]);
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_is_captured_and_shutdown_does_not_wait_for_it() {
    let (_dir, url) = ledger_file();
    let sim = spawn_sim(&url).await;

    // The answer is held back (10 s by default): the client gives up first...
    let body = to_body(&charge_request("pay_lost", "tok_0119", NO_RECEIVER)).unwrap();
    let signature = sign(DEV_BANK_CARD_SECRET.as_bytes(), &body);
    let lost = sim
        .http
        .post(format!("{}/bank-card/charges", sim.base))
        .header(SIGNATURE_HEADER, signature)
        .body(body)
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(lost.is_err_and(|error| error.is_timeout()));
    // ...but the charge was captured, and a repeat answers at once.
    let stored: ChargeReply = poll_for("the lost charge to be readable", || async {
        let (status, body) = sim.get_charge("bank-card", "pay_lost").await;
        (status == 200).then(|| from_body(&body).unwrap())
    })
    .await;
    assert_eq!(stored.status, "SUCCEEDED");
    let repeat = sim.charge("bank-card", "pay_lost", "tok_0119", NO_RECEIVER);
    let repeat = timeout(Duration::from_secs(5), repeat).await;
    assert_eq!(repeat.expect("the repeat was held back too"), stored);
    let lost_entry = entry("bank_card", "pay_lost", "CHARGE", AMOUNT_MINOR);
    assert_eq!(sim.ledger().await.entries, [lost_entry]);

    // A reply still held back when the simulator stops is cut short: stopping does
    // not wait out the hold.
    let held = {
        let sim = Arc::clone(&sim);
        let request = charge_request("pay_held", "tok_0119", NO_RECEIVER);
        tokio::spawn(async move { sim.charge_with("bank-card", &request).await.0 })
    };
    poll_for("the held charge to be recorded", || async {
        (sim.get_charge("bank-card", "pay_held").await.0 == 200).then_some(())
    })
    .await;
    let stopping = Instant::now();
    sim.stop().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "stopping waited for the hold"
    );
    assert_eq!(held.await.unwrap(), 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_survives_a_restart() {
    let (_dir, url) = ledger_file();
    let receiver = Receiver::spawn(0).await;
    let first_run = spawn_sim(&url).await;
    let bank_card = first_run
        .charge("bank-card", "pay_1", "tok_4242", NO_RECEIVER)
        .await;
    first_run
        .charge("alipay", "pay_2", "tok_4242", &receiver.url)
        .await;
    first_run
        .charge("bank-card", "pay_3", "tok_0002", NO_RECEIVER)
        .await;
    assert_eq!(
        first_run.refund("bank-card", "pay_1", "ref_1", 1_000).await,
        200
    );
    let before = first_run.ledger().await;
    assert_eq!(before.entries.len(), 3);
    first_run.stop().await;

    let second_run = spawn_sim(&url).await;
    assert_eq!(second_run.ledger().await, before);
    // What was decided before the restart is answered the same, and not redone.
    let repeat = second_run
        .charge("bank-card", "pay_1", "tok_4242", NO_RECEIVER)
        .await;
    assert_eq!(repeat, bank_card);
    let declined = second_run
        .charge("bank-card", "pay_3", "tok_4242", NO_RECEIVER)
        .await;
    assert_eq!(declined.decline_code.as_deref(), Some("INSUFFICIENT_FUNDS"));
    assert_eq!(
        second_run
            .refund("bank-card", "pay_1", "ref_1", 1_000)
            .await,
        200
    );
    assert_eq!(second_run.ledger().await, before);
    second_run.stop().await;
}
