//! `gpulse-agent`: reads this host's GPUs and streams them to a gpulse collector.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use gpulse_agent::config::AgentConfig;
use gpulse_agent::identity::{SystemPaths, host_identity};

/// Reads this host's GPUs (NVML, or a simulator) and streams them to a gpulse collector.
///
/// Settings come from the config file, then GPULSE_AGENT_* environment variables, then
/// flags; each overrides the one before.
#[derive(Debug, Parser)]
#[command(name = "gpulse-agent", version)]
struct Cli {
    /// Collector gRPC URL [default: http://127.0.0.1:7431].
    #[arg(long, env = "GPULSE_AGENT_COLLECTOR")]
    collector: Option<String>,
    /// Simulate GPUs instead of reading NVML, e.g. "gpus=8,model=h100-sxm,scenario=thermal".
    /// Models: h100-sxm, h200, a100, l4. Scenarios: idle, training, thermal, power-cap,
    /// pcie-degraded, lost. Also seed=N and hide=field+field.
    #[arg(long, env = "GPULSE_AGENT_SIMULATE")]
    simulate: Option<String>,
    /// Sampling interval, e.g. "5s" [default: 5s].
    #[arg(long, env = "GPULSE_AGENT_INTERVAL", value_parser = humantime::parse_duration)]
    interval: Option<Duration>,
    /// Serve this host's metrics on a local /metrics at this address.
    #[arg(long, env = "GPULSE_AGENT_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
    /// TOML configuration file.
    #[arg(long, env = "GPULSE_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// Stable identity of this agent [default: the hostname].
    #[arg(long, env = "GPULSE_AGENT_ID")]
    agent_id: Option<String>,
    /// Provider this host runs on (aws, gcp, azure, coreweave, lambda, on-prem, ...).
    #[arg(long, env = "GPULSE_AGENT_PROVIDER")]
    provider: Option<String>,
    /// Print an example configuration file with every default, then exit.
    #[arg(long)]
    print_example_config: bool,
}

impl Cli {
    fn into_config(self) -> anyhow::Result<AgentConfig> {
        let mut c = match &self.config {
            Some(path) => AgentConfig::from_file(path)?,
            None => AgentConfig::default(),
        };
        if let Some(v) = self.collector {
            c.collector = v;
        }
        if let Some(v) = self.simulate {
            c.simulate = Some(v);
        }
        if let Some(v) = self.interval {
            c.interval = v;
        }
        if let Some(v) = self.http_listen {
            c.http_listen = Some(v);
        }
        if let Some(v) = self.agent_id {
            c.agent_id = Some(v);
        }
        if let Some(v) = self.provider {
            c.provider.name = v;
        }
        c.validate()?;
        Ok(c)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    if cli.print_example_config {
        print!("{}", gpulse_agent::config::example_config());
        return Ok(());
    }
    let config = cli.into_config()?;
    let mut identity = host_identity(&config, &SystemPaths::default());
    identity.provider = gpulse_agent::provider::detect(&config).await;
    let opener = gpulse_agent::backend_opener(&config)?;
    let running = gpulse_agent::start(config, identity, opener)
        .await
        .context("the agent could not start")?;
    tokio::signal::ctrl_c()
        .await
        .context("cannot listen for Ctrl-C")?;
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(())
}
