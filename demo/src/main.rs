//! `gpulse-demo`: a collector and a simulated multi-provider GPU fleet on loopback,
//! talking real gRPC. On a machine with NVIDIA GPUs, the local GPUs join the fleet
//! through NVML beside the simulated hosts.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use gpulse_agent::config::AgentConfig;
use gpulse_agent::identity::{SystemPaths, host_identity};
use gpulse_collector::config::{BareMetalConfig, CollectorConfig};
use gpulse_gpu::{HostFacts, HostIdentity, Learned, ProviderIdentity};

mod fleet;

/// Runs a gpulse collector with a simulated fleet of GPU hosts across providers.
#[derive(Debug, Parser)]
#[command(name = "gpulse-demo", version)]
struct Cli {
    /// gRPC address of the collector.
    #[arg(long, default_value = "127.0.0.1:7431")]
    grpc_listen: SocketAddr,
    /// HTTP address of the collector (/metrics).
    #[arg(long, default_value = "127.0.0.1:7432")]
    http_listen: SocketAddr,
    /// Sampling interval of every agent.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Leave out the local GPUs even when NVML is present.
    #[arg(long)]
    no_local_gpus: bool,
    /// Keep the collector's data (its cost ledger) in this directory, created if missing,
    /// and keep it after exit [default: a temporary directory, removed at exit].
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
}

/// The demo's bare-metal figures for its on-prem A100 hosts, so their cost is shown.
/// Capex: NVIDIA's DGX A100 launch price, US$199,000 for 8 GPUs (May 2020), per GPU.
/// Operations: an illustrative US$0.40 per GPU-hour for staff, space and support.
fn demo_bare_metal() -> BareMetalConfig {
    BareMetalConfig {
        capex_usd_per_gpu: [("a100-80gb".to_string(), 199_000.0 / 8.0)].into(),
        ops_usd_per_gpu_hour: 0.40,
        ..BareMetalConfig::default()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        // Logs go to stderr: stdout carries what a command prints (JSON, CSV, tables).
        .with_writer(std::io::stderr)
        // Colours only on a terminal: journald and log files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,gpulse_demo=info".into()),
        )
        .init();
    let cli = Cli::parse();
    // Without --data-dir, a fresh ledger per run, removed at exit. With it, the ledger
    // is kept: each run's simulated hosts announce a new boot id, so their counters
    // starting afresh read as a reboot, not as a counter going backwards.
    let (_temporary, data_dir) = match &cli.data_dir {
        Some(dir) => (None, dir.clone()),
        None => {
            let data = tempfile::Builder::new()
                .prefix("gpulse-demo-")
                .tempdir()
                .context("cannot create a temporary data directory")?;
            let dir = data.path().to_path_buf();
            (Some(data), dir)
        }
    };
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let collector = gpulse_collector::start(CollectorConfig {
        grpc_listen: cli.grpc_listen,
        http_listen: cli.http_listen,
        data_dir: data_dir.clone(),
        bare_metal: demo_bare_metal(),
        ..CollectorConfig::default()
    })
    .await
    .context(
        "the demo collector could not start (use --grpc-listen/--http-listen for other ports)",
    )?;
    let collector_url = format!("http://{}", collector.grpc_addr);

    let mut agents = Vec::new();
    let hosts = fleet::hosts();
    for host in &hosts {
        let config = AgentConfig {
            collector: collector_url.clone(),
            interval: cli.interval,
            simulate: Some(host.spec.to_string()),
            agent_id: Some(host.name.to_string()),
            ..AgentConfig::default()
        };
        let identity = HostIdentity {
            agent_id: host.name.to_string(),
            boot_id: format!("boot-{}-{run}", host.spec.seed),
            hostname: host.name.to_string(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            provider: ProviderIdentity {
                provider: Learned::from_config(host.provider),
                region: Learned::from_config(host.region),
                zone: Learned::from_config(host.zone),
                instance_type: Learned::from_config(host.instance_type),
            },
            facts: HostFacts {
                machine_id: format!("{:032x}", host.spec.seed),
                os: "Ubuntu 22.04.5 LTS".into(),
                kernel: "5.15.0-126-generic".into(),
                cpu_model: "simulated".into(),
                cpu_count: 96,
                memory_total_bytes: 2 * 1024 * 1024 * 1024 * 1024,
            },
            labels: [("team".to_string(), host.team.to_string())].into(),
            gpu_backend_error: String::new(),
        };
        let opener = gpulse_agent::backend_opener(&config)?;
        agents.push(gpulse_agent::start(config, identity, opener).await?);
    }

    let mut local = "no NVIDIA GPU here: simulated fleet only".to_string();
    if !cli.no_local_gpus {
        match gpulse_agent::nvml_available() {
            Ok(n) if n > 0 => {
                let config = AgentConfig {
                    collector: collector_url.clone(),
                    interval: cli.interval,
                    ..AgentConfig::default()
                };
                let identity = host_identity(&config, &SystemPaths::default());
                local = format!(
                    "{n} local GPU(s) through NVML as host {:?}",
                    identity.agent_id
                );
                let opener = gpulse_agent::backend_opener(&config)?;
                agents.push(gpulse_agent::start(config, identity, opener).await?);
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(reason = e.kind(), "no local GPUs: {e}"),
        }
    }

    let gpus: u32 = hosts.iter().map(|h| h.spec.gpus).sum();
    let providers: std::collections::BTreeSet<_> = hosts.iter().map(|h| h.provider).collect();
    println!(
        "gpulse demo: a collector and {} simulated hosts ({gpus} GPUs) on {} providers ({})",
        hosts.len(),
        providers.len(),
        providers.into_iter().collect::<Vec<_>>().join(", ")
    );
    println!("  {local}");
    println!(
        "  fleet:    http://{}/fleet (every GPU at a glance, live)",
        collector.http_addr
    );
    println!("  metrics:  http://{}/metrics", collector.http_addr);
    println!(
        "  report:   http://{}/report (GPU cost and efficiency)",
        collector.http_addr
    );
    println!(
        "  findings: http://{}/api/v1/findings (what slows each GPU down, in words)",
        collector.http_addr
    );
    println!(
        "  health:   http://{}/healthz  http://{}/readyz",
        collector.http_addr, collector.http_addr
    );
    println!(
        "  agents:   {collector_url} (gRPC), sampling every {:?}",
        cli.interval
    );
    let kept = if cli.data_dir.is_some() {
        "kept after exit"
    } else {
        "removed at exit; keep it with --data-dir DIR"
    };
    println!("  data:     {} ({kept})", data_dir.display());
    println!(
        "  cli:      gpulse-collector report --since 1h --data-dir {} (or cargo run -p gpulse-collector -- report ...)",
        data_dir.display()
    );
    println!(
        "  try:      curl -s http://{}/metrics | grep gpulse_gpu_throttle_active | grep ' 1$'",
        collector.http_addr
    );
    println!("Ctrl-C stops it.");
    tokio::signal::ctrl_c()
        .await
        .context("cannot listen for Ctrl-C")?;
    println!("stopping");
    for a in agents {
        a.shutdown().await;
    }
    collector.shutdown().await;
    Ok(())
}
