//! `gpulse-agent`: reads this host's GPUs and streams them to a gpulse collector.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use gpulse_agent::config::AgentConfig;
use gpulse_agent::identity::{SystemPaths, host_identity};

/// Reads this host's GPUs (NVML, or a simulator) and streams them to a gpulse collector.
///
/// Settings come from the config file, then GPULSE_AGENT_* environment variables, then
/// flags; each overrides the one before.
#[derive(Debug, Parser)]
#[command(name = "gpulse-agent", version = gpulse_exposition::build_info::LONG_VERSION)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Collector gRPC URL [default: http://127.0.0.1:7431].
    #[arg(long, env = "GPULSE_AGENT_COLLECTOR")]
    collector: Option<String>,
    /// A collector to fail over to when the one in use is unreachable; repeat for more,
    /// tried in order (environment: comma-separated).
    #[arg(
        long = "failover-collector",
        env = "GPULSE_AGENT_FAILOVER_COLLECTORS",
        value_delimiter = ','
    )]
    failover_collectors: Vec<String>,
    // The help comes from the parser's own lists, so it cannot fall behind them.
    #[arg(long, env = "GPULSE_AGENT_SIMULATE", global = true, help = gpulse_gpu::simulator::SimSpec::help())]
    simulate: Option<String>,
    /// Play back a capture file (from `gpulse-agent capture`) instead of reading GPUs.
    #[arg(long, env = "GPULSE_AGENT_REPLAY", global = true)]
    replay: Option<PathBuf>,
    /// Sampling interval, e.g. "5s" [default: 5s].
    #[arg(long, env = "GPULSE_AGENT_INTERVAL", value_parser = humantime::parse_duration)]
    interval: Option<Duration>,
    /// Serve this host's metrics on a local /metrics at this address.
    #[arg(long, env = "GPULSE_AGENT_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
    /// TOML configuration file.
    #[arg(long, env = "GPULSE_AGENT_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Path of libnvidia-ml.so.1 when it is not on the loader's path.
    #[arg(long, env = "GPULSE_AGENT_NVML_LIBRARY", global = true)]
    nvml_library: Option<PathBuf>,
    /// Stable identity of this agent [default: the hostname].
    #[arg(long, env = "GPULSE_AGENT_ID")]
    agent_id: Option<String>,
    /// Keep unacknowledged batches in this directory so they survive a restart
    /// [default: memory only].
    #[arg(long, env = "GPULSE_AGENT_SPOOL_DIR")]
    spool_dir: Option<PathBuf>,
    /// Provider this host runs on (aws, gcp, azure, coreweave, lambda, on-prem, ...).
    #[arg(long, env = "GPULSE_AGENT_PROVIDER")]
    provider: Option<String>,
    /// File with the bearer token the collector asks for (shared, or this agent's own).
    #[arg(long, env = "GPULSE_AGENT_AUTH_TOKEN_FILE")]
    auth_token_file: Option<PathBuf>,
    /// The kubelet's pod-resources socket, used when it exists ("" never asks)
    /// [default: /var/lib/kubelet/pod-resources/kubelet.sock].
    #[arg(long, env = "GPULSE_AGENT_POD_RESOURCES_SOCKET", global = true)]
    pod_resources_socket: Option<PathBuf>,
    /// PEM CA the collector's certificate must be signed by [default: the system's CAs].
    #[arg(long, env = "GPULSE_AGENT_TLS_CA_FILE")]
    tls_ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS (with --tls-key-file); its DNS name is the agent id.
    #[arg(long, env = "GPULSE_AGENT_TLS_CERT_FILE")]
    tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file.
    #[arg(long, env = "GPULSE_AGENT_TLS_KEY_FILE")]
    tls_key_file: Option<PathBuf>,
    /// Name to check the collector's certificate against [default: the collector URL's host].
    #[arg(long, env = "GPULSE_AGENT_TLS_SERVER_NAME")]
    tls_server_name: Option<String>,
    /// Compress the stream to the collector [default: gzip]; a collector that does not
    /// accept gzip gets it uncompressed.
    #[arg(long, env = "GPULSE_AGENT_COMPRESSION", value_enum)]
    compression: Option<gpulse_agent::uplink::Compression>,
    /// Print an example configuration file with every default, then exit.
    #[arg(long)]
    print_example_config: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Sample this host's GPUs at a high rate for a short window and explain what slows
    /// them down: findings with evidence, severity and what to do. No collector needed.
    /// Exit status: 0 no critical finding, 2 a critical finding, 1 an error.
    Diagnose(DiagnoseArgs),
    /// Record this host's GPUs to a capture file (the agent's own protobuf messages),
    /// to replay later with --replay or to keep as a test fixture.
    Capture(CaptureArgs),
    /// This host's GPUs live in the terminal, with their processes and findings
    /// (docs/top.md). Needs a terminal; --once prints one plain-text frame instead.
    Top(TopArgs),
}

#[derive(Debug, Args)]
struct TopArgs {
    /// Time between readings and redraws, e.g. "500ms"; at least 100ms.
    #[arg(long, visible_alias = "interval", default_value = "1s", value_parser = humantime::parse_duration)]
    rate: Duration,
    /// Readings per GPU the findings are judged over, 1 to 64.
    #[arg(long, default_value_t = gpulse_agent::top::DEFAULT_WINDOW)]
    window: usize,
    /// Print one frame as plain text (two readings one --rate apart) and exit: for
    /// scripts and pipes.
    #[arg(long)]
    once: bool,
}

#[derive(Debug, Args)]
struct CaptureArgs {
    /// How long to record, e.g. "10s".
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Time between readings, e.g. "500ms".
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    rate: Duration,
    /// Where to write the capture.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, Args)]
struct DiagnoseArgs {
    /// How long to sample, e.g. "30s".
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Time between readings, e.g. "250ms".
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
    rate: Duration,
    /// Print the report as JSON (stable; see docs/diagnose.md) instead of a table.
    #[arg(long)]
    json: bool,
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
        if !self.failover_collectors.is_empty() {
            c.failover_collectors = self.failover_collectors;
        }
        if let Some(v) = self.simulate {
            c.simulate = Some(v);
        }
        if let Some(v) = self.replay {
            c.replay = Some(v);
        }
        if let Some(v) = self.nvml_library {
            c.nvml_library = Some(v);
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
        if let Some(v) = self.spool_dir {
            c.spool_dir = Some(v);
        }
        if let Some(v) = self.provider {
            c.provider.name = v;
        }
        if let Some(v) = self.auth_token_file {
            c.auth_token_file = Some(v);
        }
        if let Some(v) = self.pod_resources_socket {
            c.pod_resources_socket = v;
        }
        if let Some(v) = self.tls_ca_file {
            c.tls_ca_file = Some(v);
        }
        if let Some(v) = self.tls_cert_file {
            c.tls_cert_file = Some(v);
        }
        if let Some(v) = self.tls_key_file {
            c.tls_key_file = Some(v);
        }
        if let Some(v) = self.tls_server_name {
            c.tls_server_name = Some(v);
        }
        if let Some(v) = self.compression {
            c.compression = v;
        }
        c.validate()?;
        Ok(c)
    }
}

fn capture(config: AgentConfig, args: &CaptureArgs) -> anyhow::Result<()> {
    let identity = host_identity(&config, &SystemPaths::default());
    let opener = gpulse_agent::backend_opener(&config)?;
    let mut backend = opener().context("cannot read this host's GPUs")?;
    let file = std::fs::File::create(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let mut out = std::io::BufWriter::new(file);
    let n = gpulse_agent::capture::capture(
        backend.as_mut(),
        &identity,
        args.duration,
        args.rate,
        &mut out,
    )?;
    eprintln!(
        "captured {n} readings of {} GPU(s) to {}",
        backend.inventory().len(),
        args.out.display()
    );
    Ok(())
}

fn diagnose(config: AgentConfig, args: &DiagnoseArgs) -> anyhow::Result<i32> {
    use gpulse_agent::diagnose;
    if args.duration.is_zero() {
        anyhow::bail!("--duration 0s: give how long to sample, e.g. 30s");
    }
    if args.rate < Duration::from_millis(10) {
        anyhow::bail!(
            "--rate {}: must be at least 10ms",
            humantime::format_duration(args.rate)
        );
    }
    if args.duration < args.rate {
        anyhow::bail!(
            "--duration {} is shorter than --rate {}: sample for at least one reading",
            humantime::format_duration(args.duration),
            humantime::format_duration(args.rate)
        );
    }
    let identity = host_identity(&config, &SystemPaths::default());
    let opener = gpulse_agent::backend_opener(&config)?;
    let mut backend = opener().context("cannot read this host's GPUs")?;
    let report = diagnose::run(
        backend.as_mut(),
        &identity.hostname,
        args.duration,
        args.rate,
        diagnose::terminal_progress(),
    );
    if args.json {
        gpulse_cli::write_stdout(&(serde_json::to_string_pretty(&report)? + "\n"))?;
    } else {
        gpulse_cli::write_stdout(&diagnose::render_text(&report, &diagnose::Style::detect()))?;
    }
    Ok(if report.critical {
        diagnose::EXIT_CRITICAL
    } else {
        0
    })
}

fn top(config: AgentConfig, args: &TopArgs) -> anyhow::Result<()> {
    use gpulse_agent::top;
    let options = top::TopOptions::try_new(args.rate, args.window)?;
    if !args.once {
        top::require_terminal()?;
    }
    let identity = host_identity(&config, &SystemPaths::default());
    let opener = gpulse_agent::backend_opener(&config)?;
    let mut backend = opener().context("cannot read this host's GPUs")?;
    if args.once {
        let style = gpulse_agent::diagnose::Style::detect();
        let frame = top::once(backend.as_mut(), &identity.hostname, options, &style);
        gpulse_cli::write_stdout(&frame)?;
        return Ok(());
    }
    top::run(backend, &identity.hostname, options)?;
    Ok(())
}

/// A user error is one message, whatever RUST_BACKTRACE says: the causes on one line,
/// each once, and exit status 1.
fn main() -> std::process::ExitCode {
    gpulse_cli::main(run())
}

async fn run() -> anyhow::Result<()> {
    gpulse_cli::init_logging();
    let mut cli = Cli::parse();
    gpulse_cli::warn_unknown_env(&<Cli as clap::CommandFactory>::command(), "GPULSE_AGENT_");
    if cli.print_example_config {
        gpulse_cli::write_stdout(&gpulse_agent::config::example_config())?;
        return Ok(());
    }
    match cli.command.take() {
        Some(Command::Diagnose(args)) => {
            let code = diagnose(cli.into_config()?, &args)?;
            std::process::exit(code);
        }
        Some(Command::Capture(args)) => return capture(cli.into_config()?, &args),
        Some(Command::Top(args)) => return top(cli.into_config()?, &args),
        None => {}
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
