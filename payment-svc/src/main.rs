use clap::Parser as _;

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
