use clap::Parser as _;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = billing_svc::config::Config::parse();
    service_kit::telemetry::init(config.common.json_logs);
    let application = billing_svc::app::Application::build(&config).await?;
    application
        .run_until_stopped(service_kit::shutdown::signal())
        .await?;
    Ok(())
}
