use clap::{Parser, Subcommand};

/// billpay: installment credit billing and repayments.
#[derive(Debug, Parser)]
#[command(name = "billpay", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run billing-svc and payment-svc in one process on SQLite.
    Up(billpay::up::UpArgs),
    /// Walk a customer's journey against a running stack and print it.
    Demo(billpay::demo::DemoArgs),
    /// Print a bearer token.
    Token(billpay::token::TokenArgs),
    /// Measure SPEC §9's scenarios against the echo ceiling, in one run.
    Bench(billpay::bench::BenchArgs),
}

/// mimalloc instead of glibc's malloc: allocation was a fifth of a read's CPU under
/// load (ARCHITECTURE.md, "Performance").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // One line, causes joined by ": ", never a backtrace: a CLI error is for
            // the person at the terminal.
            eprintln!("billpay: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Up(args) => {
            let endpoint = args.otlp_endpoint.as_deref().filter(|url| !url.is_empty());
            let _telemetry = service_kit::telemetry::init(args.json_logs, "billpay", endpoint);
            billpay::up::run(&args, service_kit::shutdown::signal()).await
        }
        Command::Demo(args) => billpay::demo::run(&args).await,
        Command::Bench(args) => {
            // The same logging as `up`, so its cost is part of what is measured.
            let _telemetry = service_kit::telemetry::init(false, "billpay", None);
            billpay::bench::run(&args).await
        }
        Command::Token(args) => {
            println!("{}", billpay::token::run(&args)?);
            Ok(())
        }
    }
}
