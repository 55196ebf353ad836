use clap::Parser as _;

/// mimalloc instead of glibc's malloc: allocation was a fifth of a read's CPU under
/// load (ARCHITECTURE.md, "Performance").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = payment_svc::config::Config::parse();
    let _telemetry = config.common.telemetry("payment-svc");
    let application = payment_svc::app::Application::build(&config).await?;
    application
        .run_until_stopped(service_kit::shutdown::signal())
        .await?;
    Ok(())
}
