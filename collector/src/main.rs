//! `gpulse-collector`: receives GPU telemetry from agents and serves it to Prometheus.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use gpulse_collector::config::{CollectorConfig, HttpClientAuth};
use gpulse_collector::cost::report::{self, Dim, Window};
use gpulse_collector::cost::{sqlite, store};
use gpulse_collector::remote_write::RemoteWriteConfig;
use gpulse_exposition::dcgm::DcgmCompat;

/// Receives GPU telemetry from gpulse agents over gRPC and serves it to Prometheus.
///
/// Settings come from the config file, then GPULSE_COLLECTOR_* environment variables,
/// then flags; each overrides the one before.
#[derive(Debug, Parser)]
#[command(name = "gpulse-collector", version = gpulse_exposition::build_info::LONG_VERSION)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, env = "GPULSE_COLLECTOR_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// gRPC address agents connect to [default: 127.0.0.1:7431].
    #[arg(long, env = "GPULSE_COLLECTOR_GRPC_LISTEN")]
    grpc_listen: Option<SocketAddr>,
    /// HTTP address for /metrics, /healthz, /readyz [default: 127.0.0.1:7432].
    #[arg(long, env = "GPULSE_COLLECTOR_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
    /// Directory for durable state [default: gpulse-data].
    #[arg(long, env = "GPULSE_COLLECTOR_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// PostgreSQL ledger shared by several collectors, postgres://user:password@host:port/db
    /// [default: the SQLite file under --data-dir].
    #[arg(
        long,
        env = "GPULSE_COLLECTOR_LEDGER_URL",
        global = true,
        hide_env_values = true
    )]
    ledger_url: Option<String>,
    /// Series of an agent gone this long disappear, e.g. "5m" [default: 5m].
    #[arg(long, env = "GPULSE_COLLECTOR_AGENT_EXPIRY", value_parser = humantime::parse_duration)]
    agent_expiry: Option<Duration>,
    /// File with the bearer token agents and scrapers must present.
    #[arg(long, env = "GPULSE_COLLECTOR_AUTH_TOKEN_FILE")]
    auth_token_file: Option<PathBuf>,
    /// File of per-agent tokens, `<agent id> <token>` per line: each admits its own agent id only.
    #[arg(long, env = "GPULSE_COLLECTOR_AGENT_TOKENS_FILE")]
    agent_tokens_file: Option<PathBuf>,
    /// PEM certificate chain served over TLS on both listeners (with --tls-key-file).
    #[arg(long, env = "GPULSE_COLLECTOR_TLS_CERT_FILE")]
    tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file.
    #[arg(long, env = "GPULSE_COLLECTOR_TLS_KEY_FILE")]
    tls_key_file: Option<PathBuf>,
    /// PEM CA that client certificates must be signed by (mutual TLS).
    #[arg(long, env = "GPULSE_COLLECTOR_TLS_CLIENT_CA_FILE")]
    tls_client_ca_file: Option<PathBuf>,
    /// With a client CA, whether HTTP clients need a certificate too: require, none [default: require].
    #[arg(long, env = "GPULSE_COLLECTOR_HTTP_CLIENT_AUTH")]
    http_client_auth: Option<HttpClientAuth>,
    /// Allow listening beyond loopback with no authentication (trusted networks only).
    #[arg(long, env = "GPULSE_COLLECTOR_ALLOW_UNAUTHENTICATED")]
    allow_unauthenticated: bool,
    /// Also or instead expose GPUs under dcgm-exporter's names: off, also, only [default: off].
    #[arg(long, env = "GPULSE_COLLECTOR_DCGM_COMPAT")]
    dcgm_compat: Option<DcgmCompat>,
    /// Push every series to this Prometheus remote-write URL too, with default settings
    /// (repeatable; the environment variable takes a comma-separated list). Added to
    /// the config file's [[remote_write]] tables.
    #[arg(
        long = "remote-write-url",
        env = "GPULSE_COLLECTOR_REMOTE_WRITE_URL",
        value_delimiter = ','
    )]
    remote_write_url: Vec<String>,
    /// Print an example configuration file with every default, then exit.
    #[arg(long)]
    print_example_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a cost and efficiency report from the ledger: the one in the data directory,
    /// or the PostgreSQL one of --ledger-url, the whole fleet's (works while collectors
    /// run). Figures are estimates, not an invoice.
    Report {
        /// Start of the window: a duration before now (7d, 12h), an RFC 3339 time in UTC,
        /// or a date.
        #[arg(long, default_value = "7d")]
        since: String,
        /// End of the window, in the same forms [default: now].
        #[arg(long)]
        until: Option<String>,
        /// Group by: provider, region, zone, instance_type, model, host, gpu, namespace, pod,
        /// container, label:KEY
        /// (comma-separated).
        #[arg(long, default_value = "provider")]
        group_by: String,
        /// table, json or csv (FOCUS 1.2 columns).
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Copy the SQLite ledger under --data-dir to a new file, while a collector keeps
    /// writing it (SQLite's online backup API). The copy is one file that passed SQLite's
    /// quick check; docs/ledger.md says how to restore it. A PostgreSQL ledger is backed
    /// up with PostgreSQL's own tools (pg_dump, or base backups with WAL archiving).
    Backup {
        /// The file to write; it must not exist yet.
        #[arg(long)]
        to: PathBuf,
    },
}

impl Cli {
    fn into_config(self) -> anyhow::Result<CollectorConfig> {
        let mut c = match &self.config {
            Some(path) => CollectorConfig::from_file(path)?,
            None => CollectorConfig::default(),
        };
        if let Some(v) = self.grpc_listen {
            c.grpc_listen = v;
        }
        if let Some(v) = self.http_listen {
            c.http_listen = v;
        }
        if let Some(v) = self.data_dir {
            c.data_dir = v;
        }
        if let Some(v) = self.ledger_url {
            c.ledger.url = Some(v);
        }
        if let Some(v) = self.agent_expiry {
            c.agent_expiry = v;
        }
        if let Some(v) = self.auth_token_file {
            c.auth_token_file = Some(v);
        }
        if let Some(v) = self.agent_tokens_file {
            c.agent_tokens_file = Some(v);
        }
        if let Some(v) = self.tls_cert_file {
            c.tls_cert_file = Some(v);
        }
        if let Some(v) = self.tls_key_file {
            c.tls_key_file = Some(v);
        }
        if let Some(v) = self.tls_client_ca_file {
            c.tls_client_ca_file = Some(v);
        }
        if let Some(v) = self.http_client_auth {
            c.http_client_auth = v;
        }
        c.allow_unauthenticated |= self.allow_unauthenticated;
        if let Some(v) = self.dcgm_compat {
            c.dcgm_compat = v;
        }
        c.remote_write.extend(
            self.remote_write_url
                .into_iter()
                .filter(|u| !u.trim().is_empty())
                .map(|u| RemoteWriteConfig::new(u.trim())),
        );
        Ok(c)
    }
}

/// A user error is one message, whatever RUST_BACKTRACE says: the causes on one line,
/// each once, and exit status 1.
fn main() -> std::process::ExitCode {
    gpulse_cli::main(run())
}

async fn run() -> anyhow::Result<()> {
    gpulse_cli::init_logging();
    let mut cli = Cli::parse();
    gpulse_cli::warn_unknown_env(
        &<Cli as clap::CommandFactory>::command(),
        "GPULSE_COLLECTOR_",
    );
    if cli.print_example_config {
        gpulse_cli::write_stdout(&gpulse_collector::example_config())?;
        return Ok(());
    }
    match cli.command.take() {
        Some(Command::Report {
            since,
            until,
            group_by,
            format,
        }) => {
            let config = cli.into_config()?;
            // Off the async workers: the PostgreSQL client blocks on a runtime of its own.
            return tokio::task::spawn_blocking(move || {
                print_report(&config, &since, until.as_deref(), &group_by, &format)
            })
            .await
            .context("the report stopped")?;
        }
        Some(Command::Backup { to }) => {
            let config = cli.into_config()?;
            return tokio::task::spawn_blocking(move || backup(&config, &to))
                .await
                .context("the backup stopped")?;
        }
        None => {}
    }
    let config = cli.into_config()?;
    let running = gpulse_collector::start(config)
        .await
        .context("the collector could not start")?;
    let scheme = if running.tls.is_some() {
        "https"
    } else {
        "http"
    };
    println!(
        "gpulse-collector: agents -> {}  metrics -> {scheme}://{}/metrics",
        running.grpc_addr, running.http_addr
    );
    tokio::signal::ctrl_c()
        .await
        .context("cannot listen for Ctrl-C")?;
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(())
}

fn backup(config: &CollectorConfig, to: &std::path::Path) -> anyhow::Result<()> {
    if config.ledger.url.is_some() {
        anyhow::bail!(
            "the ledger is in PostgreSQL (--ledger-url): back it up with pg_dump or \
             PostgreSQL's base backups (docs/ledger.md); this command copies the SQLite ledger"
        );
    }
    let ledger = config.data_dir.join(store::LEDGER_FILE);
    let bytes = sqlite::backup(&ledger, to)?;
    gpulse_cli::write_stdout(&format!(
        "backed up {} to {} ({bytes} bytes)\n",
        ledger.display(),
        to.display()
    ))?;
    Ok(())
}

fn print_report(
    config: &CollectorConfig,
    since: &str,
    until: Option<&str>,
    group_by: &str,
    format: &str,
) -> anyhow::Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the system clock is before 1970")?
        .as_millis() as i64;
    let window = Window::parse(Some(since), until, now).map_err(|e| {
        anyhow::anyhow!(
            "{}",
            e.to_string()
                .replace("`from`", "--since")
                .replace("`to`", "--until")
        )
    })?;
    let group_by = Dim::parse_list(Some(group_by), &[Dim::Provider])
        .map_err(|e| anyhow::anyhow!("--group-by: {}", e.reason))?;
    let target = store::LedgerTarget::new(config.ledger.url.as_deref(), &config.data_dir)?;
    let mut reader = store::LedgerReader::open(&target)?;
    let rows = report::load(&mut reader, window, format == "csv")?;
    let out = match format {
        "table" => report::table(&rows, window, &group_by),
        "json" => serde_json::to_string_pretty(&report::json(&rows, window, &group_by))? + "\n",
        "csv" => report::csv(&rows, window, &group_by)?,
        other => anyhow::bail!("--format {other:?}: use table, json or csv"),
    };
    gpulse_cli::write_stdout(&out)?;
    Ok(())
}
