//! `billpay bench`: SPEC §9's measurements in one run, each reported as a ratio to the
//! echo ceiling (a no-op call on the same tonic/tower stack) of the same run, so a
//! busy machine shifts both and the ratio stays telling.

mod load;
mod scenarios;
mod stack;

use std::time::{Duration, Instant};

use anyhow::Context as _;
use billpay_contracts::billing::v1::{
    RunDayCloseRequest, RunDayCloseResponse, billing_service_client::BillingServiceClient,
};

pub use load::Measured;
use scenarios::Clients;
use stack::{Backend, Stack};

/// How long one RunDayClose call of the bench waits before it answers the progress.
const DAY_CLOSE_CALL: Duration = Duration::from_secs(5);

/// RunDayClose calls lost in a row (connection closed, not answered) before the bench
/// gives up following a run.
const LOST_CALLS_MAX: u32 = 5;

/// Whether a call may have failed in transport rather than being answered (tonic
/// reports a broken connection as UNKNOWN or UNAVAILABLE).
fn is_transport(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
    )
}

/// How often the bench asks again while a run's accounts are still being listed.
const LISTING_POLL: Duration = Duration::from_millis(250);

/// Arguments of `billpay bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Also measure on PostgreSQL: fresh databases on this server, dropped afterwards
    /// (the URL names a database to connect to, e.g. `/postgres`).
    #[arg(long, env = "BILLPAY_BENCH_POSTGRES_URL")]
    pub postgres: Option<String>,
    /// Measure PostgreSQL only (needs `--postgres`).
    #[arg(long, requires = "postgres")]
    pub skip_sqlite: bool,
    /// Run pgbench's TPC-B (16 clients) on the PostgreSQL server in the same run and
    /// report repayments as a ratio to its tps (needs `--postgres` and `pgbench`).
    #[arg(long, requires = "postgres")]
    pub pgbench: bool,
    /// Calls in flight, one measurement per value.
    #[arg(long, value_delimiter = ',', default_value = "16,64")]
    pub conc: Vec<usize>,
    /// Seconds each measurement runs.
    #[arg(long, default_value_t = 10.0)]
    pub duration_secs: f64,
    /// Which scenarios to run (default: all), from: echo, reads, quote_plan,
    /// create_plan, repay_card, repay_alipay, repay_wechat, day_close.
    #[arg(long, value_delimiter = ',')]
    pub scenarios: Vec<String>,
    /// Accounts to open (each with a 12-bill plan) before measuring. Up to
    /// `--rpc-accounts` are opened through CreateAccount and CreatePlan; the rest are
    /// bulk copies of the first, written straight into billing-svc's database.
    #[arg(long, default_value_t = 1000)]
    pub accounts: usize,
    /// At most this many accounts are seeded through the RPCs.
    #[arg(long, default_value_t = 2000)]
    pub rpc_accounts: usize,
    /// billing replicas (on the one database) asked to close the day together: 1 or 2.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub day_close_replicas: u8,
    /// Print the results as one JSON document at the end as well.
    #[arg(long)]
    pub json: bool,
}

/// One result line.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Line {
    pub scenario: String,
    pub backend: &'static str,
    pub conc: usize,
    #[serde(flatten)]
    pub measured: Measured,
    pub vs_echo: Option<f64>,
    pub vs_pgbench: Option<f64>,
}

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ratio = |ratio: Option<f64>| ratio.map_or("-".to_owned(), |r| format!("{r:.3}"));
        write!(
            f,
            "bench: scenario={} backend={} conc={} rps={:.0} p50_ms={:.2} p99_ms={:.2} vs_echo={} errors={} cpu_us_per_call={:.0}",
            self.scenario,
            self.backend,
            self.conc,
            self.measured.rps,
            self.measured.p50_ms,
            self.measured.p99_ms,
            ratio(self.vs_echo),
            self.measured.errors,
            self.measured.cpu_us_per_call,
        )?;
        if let Some(vs_pgbench) = self.vs_pgbench {
            write!(f, " vs_pgbench={vs_pgbench:.3}")?;
        }
        Ok(())
    }
}

/// Runs every measurement and prints one line each, then a summary.
pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let scenarios = chosen_scenarios(args)?;
    let duration = Duration::from_secs_f64(args.duration_secs.max(0.1));
    let mut backends = Vec::new();
    if !args.skip_sqlite {
        backends.push(Backend::Sqlite);
    }
    if let Some(url) = &args.postgres {
        backends.push(Backend::Postgres(url.clone()));
    }
    let mut lines = Vec::new();
    for backend in &backends {
        let pgbench_tps = match (backend, args.pgbench) {
            (Backend::Postgres(url), true) => Some(pgbench(url, duration, &mut lines).await?),
            _ => None,
        };
        measure_backend(backend, args, &scenarios, duration, pgbench_tps, &mut lines).await?;
    }
    print_summary(&lines);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&lines)?);
    }
    Ok(())
}

fn chosen_scenarios(args: &BenchArgs) -> anyhow::Result<Vec<String>> {
    if args.scenarios.is_empty() {
        let mut all: Vec<String> = scenarios::ALL.iter().map(|s| (*s).to_owned()).collect();
        all.push("day_close".to_owned());
        return Ok(all);
    }
    for scenario in &args.scenarios {
        if !scenarios::ALL.contains(&scenario.as_str()) && scenario != "day_close" {
            anyhow::bail!(
                "unknown scenario {scenario:?}; choose from {} and day_close",
                scenarios::ALL.join(", ")
            );
        }
    }
    let mut chosen = args.scenarios.clone();
    // Every ratio needs the ceiling of the same run.
    if !chosen.iter().any(|s| s == "echo") {
        chosen.insert(0, "echo".to_owned());
    }
    Ok(chosen)
}

/// How far the echo rate may move between the start and the end of a concurrency's
/// measurements before the bench warns that their ratios are not comparable.
const ECHO_DRIFT_WARNING: f64 = 0.15;

/// One closed-loop measurement of `scenario` at `conc` calls in flight.
async fn measure(
    clients: &Clients,
    scenario: &str,
    conc: usize,
    duration: Duration,
) -> load::Measured {
    let clients = clients.for_new_measurement();
    let scenario_name = scenario.to_owned();
    load::closed_loop(scenario, conc, duration, move |worker, sequence| {
        let clients = clients.clone();
        let scenario = scenario_name.clone();
        async move { clients.call(&scenario, worker, sequence).await }
    })
    .await
}

/// Measures echo again after a concurrency's scenarios and says how far it moved: on a
/// shared machine the ceiling itself can shift by half between minutes (a neighbour's
/// load), and a ratio is only as good as the ceiling it divides by.
async fn echo_recheck(
    clients: &Clients,
    backend: &Backend,
    conc: usize,
    duration: Duration,
    before: f64,
) {
    let after = measure(clients, "echo", conc, duration).await.rps;
    let drift = if before > 0.0 {
        after / before - 1.0
    } else {
        0.0
    };
    println!(
        "bench: echo_recheck backend={} conc={conc} rps_before={before:.0} rps_after={after:.0} drift={drift:+.3}",
        backend.name()
    );
    if drift.abs() > ECHO_DRIFT_WARNING {
        println!(
            "bench: warning: the echo ceiling moved {:+.0} % during backend={} conc={conc}: the machine's speed changed, so these ratios are not comparable; measure again",
            drift * 100.0,
            backend.name()
        );
    }
}

async fn measure_backend(
    backend: &Backend,
    args: &BenchArgs,
    scenarios: &[String],
    duration: Duration,
    pgbench_tps: Option<f64>,
    lines: &mut Vec<Line>,
) -> anyhow::Result<()> {
    eprintln!("bench: starting the stack on {}", backend.name());
    let stack = Stack::start(backend).await?;
    let mut clients = Clients::connect(
        stack.billing_addr,
        stack.payment_addr,
        stack.echo_addr,
        &stack.signer,
    )
    .await?;
    let seeding = Instant::now();
    let through_rpc = args.accounts.min(args.rpc_accounts).max(1);
    clients.seed(through_rpc, 32).await?;
    eprintln!(
        "bench: seeded {through_rpc} accounts with a 12-bill plan each through CreateAccount + CreatePlan in {:.1} s",
        seeding.elapsed().as_secs_f64()
    );
    if args.accounts > through_rpc {
        let bulk = Instant::now();
        let copies = (args.accounts - through_rpc) as u64;
        clients.seed_in_bulk(&stack.billing_url, copies).await?;
        println!(
            "bench: seeded backend={} bulk_accounts={copies} bulk_bills={} seconds={:.1} (copies of one account and its plan, written straight into billing's database)",
            backend.name(),
            copies * 12,
            bulk.elapsed().as_secs_f64()
        );
    }
    for &conc in &args.conc {
        let mut echo_rps = None;
        for scenario in scenarios.iter().filter(|s| *s != "day_close") {
            let measured = measure(&clients, scenario, conc, duration).await;
            if scenario == "echo" {
                echo_rps = Some(measured.rps);
            }
            let is_repayment = scenario.starts_with("repay_");
            let line = Line {
                scenario: scenario.clone(),
                backend: backend.name(),
                conc,
                measured,
                vs_echo: echo_rps
                    .filter(|rps| *rps > 0.0)
                    .map(|rps| measured.rps / rps),
                vs_pgbench: pgbench_tps
                    .filter(|tps| is_repayment && *tps > 0.0)
                    .map(|tps| measured.rps / tps),
            };
            println!("{line}");
            if is_repayment {
                println!(
                    "bench: memory backend={} after={scenario} conc={conc} rss_mb={:.0} peak_rss_mb={:.0}",
                    backend.name(),
                    memory_mb("VmRSS:"),
                    memory_mb("VmHWM:")
                );
            }
            lines.push(line);
        }
        if let Some(before) = echo_rps
            && scenarios.iter().any(|s| s != "echo" && s != "day_close")
        {
            echo_recheck(&clients, backend, conc, duration, before).await;
        }
    }
    if scenarios.iter().any(|s| s == "day_close") {
        lines.push(day_close(&clients, &stack, backend, args).await?);
    }
    stack.stop().await
}

/// The day close of yesterday over every seeded account, asked of both billing
/// replicas at once (they share the run; or of one, with `--day-close-replicas 1`),
/// followed until it finishes; timed, with each replica's share.
async fn day_close(
    clients: &Clients,
    stack: &Stack,
    backend: &Backend,
    args: &BenchArgs,
) -> anyhow::Result<Line> {
    let accounts = args.accounts;
    let replica = BillingServiceClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{}", stack.billing_replica_addr))?
            .connect()
            .await
            .context("bench: cannot reach the second billing replica")?,
    );
    let started = Instant::now();
    let first = follow_day_close(clients, clients.billing(0));
    let (first, second) = if args.day_close_replicas == 2 {
        tokio::try_join!(first, follow_day_close(clients, replica))?
    } else {
        let first = first.await?;
        (first.clone(), first)
    };
    let seconds = started.elapsed().as_secs_f64();
    if first.run_id != second.run_id {
        // One replica finished the run before the other asked: the second ask was a
        // run of its own over the same date (it changes nothing). The first is timed.
        eprintln!(
            "bench: day_close the second replica asked after run {} finished: run {} closed the date again",
            first.run_id, second.run_id
        );
    }
    let accounts_per_second = f64::from(first.accounts_closed) / seconds.max(1e-9);
    let db = service_kit::db::Db::connect(&stack.billing_url, 1).await?;
    let shares: Vec<(Option<String>, i64)> = sqlx::query_as(
        "SELECT closed_by, COUNT(*) FROM day_close_work WHERE run_id = $1 GROUP BY closed_by ORDER BY closed_by",
    )
    .bind(first.run_id)
    .fetch_all(db.pool())
    .await?;
    db.pool().close().await;
    let shares: Vec<String> = shares
        .iter()
        .map(|(replica, closed)| format!("{}:{closed}", replica.as_deref().unwrap_or("none")))
        .collect();
    println!(
        "bench: day_close backend={} accounts={accounts} accounts_closed={} seconds={seconds:.2} accounts_per_s={accounts_per_second:.0} peak_rss_mb={:.0} replicas={}",
        backend.name(),
        first.accounts_closed,
        memory_mb("VmHWM:"),
        shares.join(","),
    );
    // In the table, the day close's rate is accounts closed per second.
    let mut measured = load::summarise(vec![load::elapsed_us(started)], 0, seconds);
    measured.calls = u64::try_from(first.accounts_closed).unwrap_or(0);
    measured.rps = accounts_per_second;
    Ok(Line {
        scenario: "day_close".to_owned(),
        backend: backend.name(),
        conc: 2,
        measured,
        vs_echo: None,
        vs_pgbench: None,
    })
}

/// RunDayClose of yesterday, asked again for its run while it answers unfinished,
/// with a progress line each time.
async fn follow_day_close(
    clients: &Clients,
    mut billing: BillingServiceClient<tonic::transport::Channel>,
) -> anyhow::Result<RunDayCloseResponse> {
    let mut asked = RunDayCloseRequest {
        as_of: String::new(),
        run_id: 0,
    };
    let mut lost = 0;
    loop {
        let mut request = clients.authorized(asked.clone());
        request.set_timeout(DAY_CLOSE_CALL);
        let reply = match billing.run_day_close(request).await {
            Ok(reply) => reply.into_inner(),
            // The close goes on without its caller: a call lost with its connection
            // (the server closes connections at their maximum age, 30 min by
            // default) is asked again.
            Err(status) if lost < LOST_CALLS_MAX && is_transport(&status) => {
                lost += 1;
                eprintln!("bench: day_close call lost ({status}); asking again");
                continue;
            }
            Err(status) => return Err(status).context("bench: RunDayClose failed"),
        };
        lost = 0;
        if reply.finished {
            return Ok(reply);
        }
        if reply.run_id == 0 {
            // The run's accounts are still being listed: the answer came at once, so
            // wait a little before asking again.
            tokio::time::sleep(LISTING_POLL).await;
        } else {
            eprintln!(
                "bench: day_close run={} accounts_closed={}/{}",
                reply.run_id, reply.accounts_closed, reply.accounts_to_close
            );
        }
        asked.run_id = reply.run_id;
    }
}

/// pgbench's TPC-B with 16 clients for `duration` on a fresh database; its tps.
async fn pgbench(
    server_url: &str,
    duration: Duration,
    lines: &mut Vec<Line>,
) -> anyhow::Result<f64> {
    let name = format!("billpay_bench_pgbench_{}", uuid::Uuid::now_v7().simple());
    let url = stack::create_database(server_url, &name).await?;
    let run = |args: Vec<String>| {
        let url = url.clone();
        async move {
            let output = tokio::process::Command::new("pgbench")
                .args(&args)
                .arg(&url)
                .output()
                .await
                .context("bench: cannot run pgbench (install PostgreSQL's client tools)")?;
            anyhow::ensure!(
                output.status.success(),
                "bench: pgbench {args:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            Ok::<_, anyhow::Error>(String::from_utf8_lossy(&output.stdout).into_owned())
        }
    };
    eprintln!("bench: pgbench -i -s 16");
    run(vec!["-i".into(), "-q".into(), "-s".into(), "16".into()]).await?;
    let seconds = duration.as_secs().max(1);
    eprintln!("bench: pgbench TPC-B, 16 clients, {seconds} s");
    let report = run(vec![
        "-c".into(),
        "16".into(),
        "-j".into(),
        "2".into(),
        "-T".into(),
        seconds.to_string(),
    ])
    .await?;
    let tps = report
        .lines()
        .find_map(|line| line.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|tps| tps.parse::<f64>().ok())
        .context("bench: pgbench printed no tps line")?;
    let admin = service_kit::db::Db::connect(server_url, 1).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(admin.pool())
        .await?;
    admin.pool().close().await;
    let line = Line {
        scenario: "pgbench_tpcb".to_owned(),
        backend: "postgres",
        conc: 16,
        measured: Measured {
            calls: 0,
            errors: 0,
            seconds: seconds as f64,
            rps: tps,
            p50_ms: 0.0,
            p99_ms: 0.0,
            max_ms: 0.0,
            cpu_us_per_call: 0.0,
        },
        vs_echo: None,
        vs_pgbench: None,
    };
    println!("{line}");
    lines.push(line);
    Ok(tps)
}

/// A `/proc/self/status` figure (VmRSS, VmHWM) in MiB; 0 where there is none.
fn memory_mb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(field))
                .and_then(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn print_summary(lines: &[Line]) {
    println!();
    println!(
        "{:<14} {:<9} {:>5} {:>9} {:>9} {:>9} {:>8} {:>7} {:>8}",
        "scenario", "backend", "conc", "rps", "p50 ms", "p99 ms", "vs echo", "errors", "cpu µs"
    );
    for line in lines {
        println!(
            "{:<14} {:<9} {:>5} {:>9.0} {:>9.2} {:>9.2} {:>8} {:>7} {:>8.0}",
            line.scenario,
            line.backend,
            line.conc,
            line.measured.rps,
            line.measured.p50_ms,
            line.measured.p99_ms,
            line.vs_echo.map_or("-".to_owned(), |r| format!("{r:.3}")),
            line.measured.errors,
            line.measured.cpu_us_per_call
        );
    }
}
