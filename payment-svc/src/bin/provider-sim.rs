//! provider-sim: plays the bank-card, Alipay and WeChat Pay providers over HTTP
//! (PROVIDER_PROTOCOL.md) until SIGTERM or Ctrl-C.

use clap::Parser as _;
use payment_svc::sim::{ProviderSim, SimConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Listening from the start means a signal during start-up is not lost.
    let shutdown = service_kit::shutdown::signal();
    let config = SimConfig::parse();
    let _telemetry = config.telemetry();
    let sim = ProviderSim::build(&config).await?;
    sim.run_until_stopped(shutdown).await
}
