//! billing-svc and payment-svc as real child processes, for the crash tests: each
//! child is this test binary re-run on one ignored test (`crash::service_child`)
//! that does what the service's `main` does — parse the configuration from
//! arguments and serve until a signal — and prints its bound addresses. A child can
//! be started with fail points armed (`BILLPAY_FAILPOINTS`) and killed with SIGKILL.

use service_kit::auth::keys::DevKeys;
use std::{
    net::SocketAddr,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use clap::Parser as _;
use service_kit::failpoint::{FAILPOINTS_VAR, REACHED_PREFIX};
use tokio::{
    io::{AsyncBufReadExt as _, BufReader},
    process::{Child, Command},
    time::timeout,
};

/// Which service a child runs: `billing`, `payment` or `sim` (the provider simulator).
const CHILD_SERVICE_VAR: &str = "BILLPAY_IT_CHILD_SERVICE";
/// The child's command-line arguments, separated by U+001F.
const CHILD_ARGS_VAR: &str = "BILLPAY_IT_CHILD_ARGS";
const ARG_SEPARATOR: char = '\u{1f}';
/// What a child prints once bound: `LISTENING <grpc addr> <notify addr or ->`.
const LISTENING: &str = "LISTENING";
/// How long a child may take to start, or to reach a fail point.
const CHILD_DEADLINE: Duration = Duration::from_secs(60);

/// The body of a child process: runs the service named in the environment, as its
/// binary would. Does nothing when not started as a child.
pub async fn run_child() {
    let (Ok(service), Ok(args)) = (
        std::env::var(CHILD_SERVICE_VAR),
        std::env::var(CHILD_ARGS_VAR),
    ) else {
        return;
    };
    let args: Vec<&str> = args.split(ARG_SEPARATOR).collect();
    // Logging and tracing only when a test asks for spans: other children stay quiet.
    match service.as_str() {
        "billing" => {
            let config = billing_svc::config::Config::parse_from(args);
            let _telemetry = config
                .common
                .otlp_endpoint
                .is_some()
                .then(|| config.common.telemetry("billing-svc"));
            let app = billing_svc::app::Application::build(&config).await.unwrap();
            println!("{LISTENING} {} -", app.local_addr());
            app.run_until_stopped(service_kit::shutdown::signal())
                .await
                .unwrap();
        }
        "payment" => {
            let config = payment_svc::config::Config::parse_from(args);
            let _telemetry = config
                .common
                .otlp_endpoint
                .is_some()
                .then(|| config.common.telemetry("payment-svc"));
            let app = payment_svc::app::Application::build(&config).await.unwrap();
            println!("{LISTENING} {} {}", app.local_addr(), app.notify_addr());
            app.run_until_stopped(service_kit::shutdown::signal())
                .await
                .unwrap();
        }
        "sim" => {
            let config = payment_svc::sim::SimConfig::parse_from(args);
            let _telemetry = config.otlp_endpoint.is_some().then(|| config.telemetry());
            let sim = payment_svc::sim::ProviderSim::build(&config).await.unwrap();
            println!("{LISTENING} {} -", sim.local_addr());
            sim.run_until_stopped(service_kit::shutdown::signal())
                .await
                .unwrap();
        }
        other => panic!("no service {other}"),
    }
}

/// A service running in a child process.
pub struct ServiceProcess {
    child: Child,
    pub grpc_addr: SocketAddr,
    pub notify_addr: Option<SocketAddr>,
    /// Fail points the child said it reached.
    reached: Arc<Mutex<Vec<String>>>,
    /// Everything else it wrote on stderr (its log lines), so far.
    stderr: Arc<Mutex<Vec<String>>>,
}

impl ServiceProcess {
    /// Starts `service` (`billing` or `payment`) with `args` (the binary's flags) and
    /// `failpoints` armed; waits until it is listening.
    pub async fn start(service: &str, args: &[String], failpoints: &str) -> Self {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args([
                "crash::service_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_SERVICE_VAR, service)
            .env(CHILD_ARGS_VAR, args.join(&ARG_SEPARATOR.to_string()))
            .env_remove(FAILPOINTS_VAR)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if !failpoints.is_empty() {
            command.env(FAILPOINTS_VAR, failpoints);
        }
        let mut child = command.spawn().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        let reached = Arc::new(Mutex::new(Vec::new()));
        let lines = Arc::new(Mutex::new(Vec::new()));
        tokio::spawn(collect_stderr(
            stderr,
            Arc::clone(&reached),
            Arc::clone(&lines),
        ));
        let (grpc_addr, notify_addr) = loop {
            let line = timeout(CHILD_DEADLINE, stdout.next_line())
                .await
                .unwrap_or_else(|_| panic!("{service} started in time"))
                .unwrap()
                .unwrap_or_else(|| panic!("{service} exited before listening"));
            // libtest may print "test crash::service_child ... " first on that line.
            if let Some(rest) = line.split_once(LISTENING).map(|(_, rest)| rest) {
                let mut parts = rest.split_whitespace();
                let grpc: SocketAddr = parts.next().unwrap().parse().unwrap();
                let notify = parts.next().and_then(|addr| addr.parse().ok());
                break (grpc, notify);
            }
        };
        // Keep reading stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
        Self {
            child,
            grpc_addr,
            notify_addr,
            reached,
            stderr: lines,
        }
    }

    /// The child's stderr lines so far (its log lines, without fail point reports).
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits (with a deadline) until the child stands at fail point `name`.
    pub async fn wait_for_failpoint(&self, name: &str) {
        let waited = timeout(CHILD_DEADLINE, async {
            while !self.reached.lock().unwrap().iter().any(|n| n == name) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "the child reached fail point {name} in time"
        );
    }

    /// SIGKILL, and waits until the process is gone.
    pub async fn kill9(mut self) {
        // tokio's kill sends SIGKILL on Unix: no drain, no destructors.
        self.child.kill().await.unwrap();
    }
}

/// Runs `service` with `args` and `failpoints` armed until it exits by itself (it is
/// expected to refuse to start); returns its exit status and what it wrote on stderr.
pub async fn run_to_end(
    service: &str,
    args: &[String],
    failpoints: &str,
) -> (std::process::ExitStatus, String) {
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "crash::service_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_SERVICE_VAR, service)
        .env(CHILD_ARGS_VAR, args.join(&ARG_SEPARATOR.to_string()))
        .env(FAILPOINTS_VAR, failpoints)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = timeout(CHILD_DEADLINE, output)
        .await
        .unwrap_or_else(|_| panic!("{service} exited in time"))
        .unwrap();
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

async fn collect_stderr(
    mut stderr: tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
    reached: Arc<Mutex<Vec<String>>>,
    lines: Arc<Mutex<Vec<String>>>,
) {
    while let Ok(Some(line)) = stderr.next_line().await {
        if let Some(name) = line.strip_prefix(REACHED_PREFIX) {
            reached.lock().unwrap().push(name.trim().to_owned());
        } else {
            eprintln!("child: {line}");
            lines.lock().unwrap().push(line);
        }
    }
}

/// billing-svc's flags for a child on `database_url`, listening on `listen_addr`.
pub fn billing_args(keys: &DevKeys, database_url: &str, listen_addr: SocketAddr) -> Vec<String> {
    let mut args: Vec<String> = [
        "billing-svc",
        "--dev",
        "--database-url",
        database_url,
        "--listen-addr",
        &listen_addr.to_string(),
        "--auto-day-close",
        "false",
    ]
    .map(str::to_owned)
    .to_vec();
    args.extend([
        "--jwt-keys-file".to_owned(),
        keys.keys_file.display().to_string(),
    ]);
    args
}

/// payment-svc's flags for a child, with the test timings of
/// [`crate::fast_payment_config`].
pub fn payment_args(
    keys: &DevKeys,
    database_url: &str,
    listen_addr: SocketAddr,
    notify_addr: SocketAddr,
    billing_url: &str,
    sim_addr: SocketAddr,
) -> Vec<String> {
    let sim = format!("http://{sim_addr}");
    let mut args: Vec<String> = [
        "payment-svc",
        "--dev",
        "--database-url",
        database_url,
        "--listen-addr",
        &listen_addr.to_string(),
        "--notify-listen-addr",
        &notify_addr.to_string(),
        "--billing-url",
        billing_url,
        "--bank-card-url",
        &format!("{sim}/bank-card"),
        "--alipay-url",
        &format!("{sim}/alipay"),
        "--wechat-pay-url",
        &format!("{sim}/wechat-pay"),
        "--provider-timeout-ms",
        "500",
        "--reconcile-after-ms",
        "1000",
        "--reconcile-interval-ms",
        "100",
        "--outbox-poll-ms",
        "50",
        "--auto-autopay",
        "false",
    ]
    .map(str::to_owned)
    .to_vec();
    args.extend([
        "--jwt-keys-file".to_owned(),
        keys.keys_file.display().to_string(),
        "--jwt-signing-key-file".to_owned(),
        keys.payment_signing_key.display().to_string(),
    ]);
    args
}

/// provider-sim's flags for a child with `config`'s settings (dev secrets).
pub fn sim_args(config: &payment_svc::sim::SimConfig) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "provider-sim".into(),
        "--listen-addr".into(),
        config.listen_addr.to_string(),
        "--database-url".into(),
        config.database_url.clone(),
        "--notify-delay-ms".into(),
        config.notify_delay_ms.to_string(),
        "--lost-reply-delay-ms".into(),
        config.lost_reply_delay_ms.to_string(),
    ];
    if let Some(endpoint) = &config.otlp_endpoint {
        args.extend(["--otlp-endpoint".into(), endpoint.clone()]);
    }
    args
}
