//! Collector configuration: a TOML file, `GPULSE_COLLECTOR_*` environment variables
//! and command-line flags, in rising precedence. Every default is a named constant.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use gpulse_exposition::dcgm::DcgmCompat;

use crate::remote_write::config::RemoteWriteConfig;

/// Default gRPC address agents connect to. Loopback: listening wider is a decision.
pub const DEFAULT_GRPC_LISTEN: &str = "127.0.0.1:7431";
/// Default HTTP address for /metrics, /healthz, /readyz.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:7432";
/// Default directory for the collector's durable state.
pub const DEFAULT_DATA_DIR: &str = "gpulse-data";
/// An agent gone this long has its series removed.
pub const DEFAULT_AGENT_EXPIRY: Duration = Duration::from_secs(5 * 60);
/// The longest a /metrics body is reused: the agent's default sampling interval, within
/// which a new render would say nearly nothing new.
pub const DEFAULT_METRICS_CACHE: Duration = Duration::from_secs(5);
/// A Hello must arrive this soon after a stream opens.
pub const DEFAULT_HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Agents connected at once; past it, new agents are refused (RESOURCE_EXHAUSTED).
/// Departed agents never count: as many are remembered, the longest gone forgotten first.
pub const DEFAULT_MAX_AGENTS: usize = 10_000;
/// GPUs one host may declare; the largest servers have 16.
pub const DEFAULT_MAX_GPUS_PER_HOST: usize = 64;
/// Snapshots in one batch; agents send one per interval, more only when catching up.
pub const DEFAULT_MAX_SNAPSHOTS_PER_BATCH: usize = 1024;
/// Largest gRPC message accepted, in bytes (tonic's own default is 4 MiB).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Operator labels one host may carry.
pub const DEFAULT_MAX_LABELS: usize = 16;
/// Length of any identity string or label value, in bytes.
pub const DEFAULT_MAX_STRING_BYTES: usize = 256;
/// How far in the future a snapshot may claim to be (clock skew between hosts).
pub const DEFAULT_MAX_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);
/// How old a snapshot may be and still be accepted (agents replay after outages).
pub const DEFAULT_MAX_SAMPLE_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// gpulse's metric names only; dcgm-exporter's are opt-in (docs/dcgm-compat.md).
pub const DEFAULT_DCGM_COMPAT: DcgmCompat = DcgmCompat::Off;
/// Readings per GPU the diagnosis rules look at: 30 s at the agent's default 5 s.
pub const DEFAULT_FINDINGS_READINGS: usize = gpulse_exposition::DEFAULT_FINDINGS_READINGS;
/// With a client CA set, HTTP clients need a certificate too: mutual TLS everywhere
/// unless the operator opts HTTP out.
pub const DEFAULT_HTTP_CLIENT_AUTH: HttpClientAuth = HttpClientAuth::Require;

/// Whether HTTP clients (scrapers, browsers, probes) must present a client certificate
/// when `tls_client_ca_file` is set. Agents on gRPC always must.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpClientAuth {
    /// No client certificate is asked for on HTTP; the bearer token, when set, guards
    /// /metrics and the reports.
    None,
    /// Every HTTP connection presents a certificate signed by the client CA, which
    /// authenticates it: no bearer token is asked for.
    Require,
}

impl HttpClientAuth {
    pub fn name(self) -> &'static str {
        match self {
            HttpClientAuth::None => "none",
            HttpClientAuth::Require => "require",
        }
    }
}

impl std::str::FromStr for HttpClientAuth {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(HttpClientAuth::None),
            "require" => Ok(HttpClientAuth::Require),
            other => Err(format!(
                "{other:?}: use require (HTTP clients present a certificate signed by \
                 tls_client_ca_file) or none"
            )),
        }
    }
}

/// Longest gap between two snapshots of a GPU credited as observed time, whatever the
/// agent's interval. The ledger credits at most 3 intervals (from the Hello) per gap.
pub const DEFAULT_MAX_CREDITED_GAP: Duration = Duration::from_secs(5 * 60);
/// Seconds in a year and a month as humantime counts them (365.25 and 30.44 days), so
/// defaults print as "1year 1month" rather than a string of odd units.
const HUMANTIME_YEAR_S: u64 = 31_557_600;
const HUMANTIME_MONTH_S: u64 = 2_630_016;
/// Ledger rows older than this are deleted: "1year 1month" (396 days), enough for
/// year-on-year reports.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(HUMANTIME_YEAR_S + HUMANTIME_MONTH_S);
/// Ledger writes wait this long to share one transaction (group commit); acks wait for it.
pub const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_millis(20);
/// Batches in one group commit at most.
pub const DEFAULT_COMMIT_MAX_BATCHES: usize = 512;
/// Batches waiting for the ledger's writer; past it, ingest waits (back-pressure to agents).
pub const DEFAULT_LEDGER_QUEUE: usize = 4096;
/// Providers costed as bare metal when no catalogue entry matches.
pub const DEFAULT_BARE_METAL_PROVIDERS: [&str; 2] = ["on-prem", "bare-metal"];
/// Amortisation period of bare-metal capex: 4 years, a common depreciation schedule.
pub const DEFAULT_AMORTIZATION: Duration = Duration::from_secs(4 * HUMANTIME_YEAR_S);
/// Power usage effectiveness of the data centre (facility power / IT power).
pub const DEFAULT_PUE: f64 = 1.3;
/// Electricity tariff in US dollars per kWh (a US industrial rate).
pub const DEFAULT_USD_PER_KWH: f64 = 0.08;

/// How bare-metal and on-prem GPUs are costed: capex over an amortisation period, plus
/// measured energy x PUE x tariff, plus operations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BareMetalConfig {
    /// Providers (as agents report them) costed this way when no catalogue entry matches.
    /// Default [`DEFAULT_BARE_METAL_PROVIDERS`].
    pub providers: Vec<String>,
    /// Period over which capex is spread. Default 4 years ([`DEFAULT_AMORTIZATION`]).
    #[serde(with = "humantime_serde")]
    pub amortization: Duration,
    /// Purchase price per GPU in US dollars (its share of the server), by GPU model key
    /// (`h100`, `a100-80gb`, ...). A model not listed is unpriced. Default: none.
    pub capex_usd_per_gpu: BTreeMap<String, f64>,
    /// Power usage effectiveness, at least 1. Default [`DEFAULT_PUE`].
    pub pue: f64,
    /// Electricity tariff in US dollars per kWh. Default [`DEFAULT_USD_PER_KWH`].
    pub usd_per_kwh: f64,
    /// Operations (staff, space, support) in US dollars per GPU-hour. Default 0.
    pub ops_usd_per_gpu_hour: f64,
}

impl Default for BareMetalConfig {
    fn default() -> Self {
        BareMetalConfig {
            providers: DEFAULT_BARE_METAL_PROVIDERS.map(String::from).to_vec(),
            amortization: DEFAULT_AMORTIZATION,
            capex_usd_per_gpu: BTreeMap::new(),
            pue: DEFAULT_PUE,
            usd_per_kwh: DEFAULT_USD_PER_KWH,
            ops_usd_per_gpu_hour: 0.0,
        }
    }
}

impl BareMetalConfig {
    /// Checks the figures: finite, not negative, PUE at least 1, a non-zero period.
    pub fn check(&self) -> Result<(), crate::cost::pricing::PricingError> {
        let bad = |field: &str, reason: String| {
            Err(crate::cost::pricing::PricingError::BareMetal {
                field: field.to_string(),
                reason,
            })
        };
        if self.amortization < Duration::from_secs(24 * 3600) {
            return bad(
                "amortization",
                "must be at least 1 day, e.g. \"4years\"".into(),
            );
        }
        if !self.pue.is_finite() || self.pue < 1.0 {
            return bad(
                "pue",
                format!("{} must be a number of at least 1.0", self.pue),
            );
        }
        for (field, v) in [
            ("usd_per_kwh", self.usd_per_kwh),
            ("ops_usd_per_gpu_hour", self.ops_usd_per_gpu_hour),
        ] {
            if !v.is_finite() || v < 0.0 {
                return bad(field, format!("{v} must be a finite number, 0 or more"));
            }
        }
        for (model, v) in &self.capex_usd_per_gpu {
            if !v.is_finite() || *v < 0.0 {
                return bad(
                    &format!("capex_usd_per_gpu.{model}"),
                    format!("{v} must be a finite number of dollars, 0 or more"),
                );
            }
        }
        Ok(())
    }
}

/// The cost ledger: how observed time is credited and how it is stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerConfig {
    /// A PostgreSQL database to keep the ledger in, shared by every collector given the
    /// same URL: `postgres://user:password@host:5432/db?sslmode=require`. Unset (the
    /// default): a SQLite file, `ledger.sqlite`, under `data_dir`, for this collector only.
    pub url: Option<String>,
    /// Longest gap between two snapshots of a GPU credited as observed time; the ledger
    /// credits at most 3 agent intervals per gap, and never more than this. Default 5m.
    #[serde(with = "humantime_serde")]
    pub max_credited_gap: Duration,
    /// Hourly ledger rows older than this are deleted. Default "1year 1month".
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Writes wait this long to share one transaction; an ack waits for its commit. Default 20ms.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Batches in one commit at most. Default [`DEFAULT_COMMIT_MAX_BATCHES`].
    pub commit_max_batches: usize,
    /// Batches queued for the writer; when full, ingest waits for room (agents keep
    /// theirs unacknowledged meanwhile). Default [`DEFAULT_LEDGER_QUEUE`].
    pub queue: usize,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            url: None,
            max_credited_gap: DEFAULT_MAX_CREDITED_GAP,
            retention: DEFAULT_RETENTION,
            commit_interval: DEFAULT_COMMIT_INTERVAL,
            commit_max_batches: DEFAULT_COMMIT_MAX_BATCHES,
            queue: DEFAULT_LEDGER_QUEUE,
        }
    }
}

/// Limits on what agents may send. Each one refused is counted in
/// `gpulse_collector_rejected_messages_total{reason}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Agents connected at once; a Hello from one more is refused. Agents that went away
    /// do not count: up to this many of them are remembered until `agent_expiry`, the
    /// one gone longest forgotten first. Default [`DEFAULT_MAX_AGENTS`].
    pub max_agents: usize,
    /// GPUs per host. Default [`DEFAULT_MAX_GPUS_PER_HOST`].
    pub max_gpus_per_host: usize,
    /// Snapshots per batch. Default [`DEFAULT_MAX_SNAPSHOTS_PER_BATCH`].
    pub max_snapshots_per_batch: usize,
    /// Largest message in bytes. Default [`DEFAULT_MAX_MESSAGE_BYTES`].
    pub max_message_bytes: usize,
    /// Operator labels per host. Default [`DEFAULT_MAX_LABELS`].
    pub max_labels: usize,
    /// Bytes in an identity string or label value. Default [`DEFAULT_MAX_STRING_BYTES`].
    pub max_string_bytes: usize,
    /// Future timestamps beyond this are refused. Default 5m.
    #[serde(with = "humantime_serde")]
    pub max_clock_skew: Duration,
    /// Snapshots older than this are refused. Default 7d.
    #[serde(with = "humantime_serde")]
    pub max_sample_age: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_agents: DEFAULT_MAX_AGENTS,
            max_gpus_per_host: DEFAULT_MAX_GPUS_PER_HOST,
            max_snapshots_per_batch: DEFAULT_MAX_SNAPSHOTS_PER_BATCH,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_labels: DEFAULT_MAX_LABELS,
            max_string_bytes: DEFAULT_MAX_STRING_BYTES,
            max_clock_skew: DEFAULT_MAX_CLOCK_SKEW,
            max_sample_age: DEFAULT_MAX_SAMPLE_AGE,
        }
    }
}

/// Connections each listener (gRPC and HTTP, counted apart) holds open at once; past
/// it, a new connection is closed on arrival. Above `limits.max_agents` so that every
/// agent fits with room for scrapers and reconnects.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;
/// A connection on which nothing is sent or received this long is closed. gRPC pings
/// every third of it, so a healthy agent between batches is never idle that long.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// An HTTP request's head must arrive in full this soon after the connection opens or
/// the previous answer went; hyper's own default.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Bounds on the connections of both listeners (docs/security.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerLimits {
    /// Connections open at once on each listener; past it, new ones are closed on
    /// arrival and counted in `gpulse_collector_connections_refused_total`. Keep the
    /// process's file descriptor limit (LimitNOFILE) above twice this. Default
    /// [`DEFAULT_MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// A connection that sends and receives nothing for this long is closed, counted in
    /// `gpulse_collector_idle_connections_closed_total`; gRPC keepalive pings go every
    /// third of it and must be answered within another third. At least 3s. Default 60s.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// An HTTP request's head (request line and headers) must arrive in full this soon
    /// after the connection opens or the previous answer went, else the connection is
    /// closed: a client trickling its headers, or idle between requests, lets go of its
    /// slot. At least 1s. Default 30s.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        ListenerLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
        }
    }
}

impl ListenerLimits {
    fn check(&self) -> Result<(), ConfigError> {
        let invalid = |setting, reason: &str| ConfigError::Invalid {
            setting,
            reason: reason.to_string(),
        };
        if self.max_connections == 0 {
            return Err(invalid("listeners.max_connections", "must be at least 1"));
        }
        if self.idle_timeout < Duration::from_secs(3) {
            return Err(invalid(
                "listeners.idle_timeout",
                "must be at least 3s: gRPC keepalive pings go every third of it",
            ));
        }
        if self.header_read_timeout < Duration::from_secs(1) {
            return Err(invalid(
                "listeners.header_read_timeout",
                "must be at least 1s",
            ));
        }
        Ok(())
    }

    /// How often HTTP/2 connections (all of gRPC's) are pinged, and how long an answer
    /// may take.
    pub fn keepalive(&self) -> Duration {
        self.idle_timeout / 3
    }
}

/// The collector's configuration file (`--config`, TOML).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorConfig {
    /// gRPC address agents stream to. Default [`DEFAULT_GRPC_LISTEN`].
    pub grpc_listen: SocketAddr,
    /// HTTP address for /metrics, /healthz and /readyz. Default [`DEFAULT_HTTP_LISTEN`].
    pub http_listen: SocketAddr,
    /// Directory for durable state. Default [`DEFAULT_DATA_DIR`] (relative to the working directory).
    pub data_dir: PathBuf,
    /// Series of an agent gone this long disappear. Default 5m.
    #[serde(with = "humantime_serde")]
    pub agent_expiry: Duration,
    /// A stream must open with a Hello this soon. Default 10s.
    #[serde(with = "humantime_serde")]
    pub hello_timeout: Duration,
    /// File holding the bearer token agents and scrapers must present; it admits any
    /// agent id. Unset: no shared token.
    pub auth_token_file: Option<PathBuf>,
    /// File of per-agent tokens, one `<agent id> <token>` line each (`#` starts a
    /// comment): each token admits its own agent id only. Scrapers keep using
    /// `auth_token_file`. Unset: no per-agent tokens.
    pub agent_tokens_file: Option<PathBuf>,
    /// PEM certificate chain (server certificate first) served on both listeners; set
    /// with `tls_key_file`. Both files are read again every minute and a valid change is
    /// served to new connections. Unset: plain TCP.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file` (PKCS#8, PKCS#1 or SEC1). Unset: plain TCP.
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA certificate(s) that client certificates must be signed by (mutual TLS).
    /// Agents must present one, whose DNS names (subject alternative names) are the
    /// agent ids it may use; HTTP clients too, unless `http_client_auth` is `none`.
    /// Read at start-up only. Unset: no client certificates.
    pub tls_client_ca_file: Option<PathBuf>,
    /// With `tls_client_ca_file`: `require` a client certificate on HTTP as well, or
    /// `none` (scrapers then use the bearer token). Default [`DEFAULT_HTTP_CLIENT_AUTH`].
    pub http_client_auth: HttpClientAuth,
    /// Allow listening beyond loopback with no authentication. Default false.
    pub allow_unauthenticated: bool,
    /// Also expose each NVLink link on its own (up to 18 x 7 series per GPU). Default
    /// false: per-GPU NVLink totals and a count of links down are always exposed.
    pub nvlink_per_link: bool,
    /// Also expose each compute process on its own (`gpulse_gpu_process_*`, labels
    /// `pid`, `workload_kind`, `workload`): two series per process, new ones with each
    /// process. Default false; `gpulse_gpu_processes` (the count) is always exposed.
    pub process_series: bool,
    /// Price catalogue of your own (TOML, same format as collector/pricing/default.toml);
    /// its entries win over the shipped ones. Unset: the shipped catalogue only.
    pub pricing_file: Option<PathBuf>,
    /// Also (`also`) or instead (`only`) expose GPUs under dcgm-exporter's metric and
    /// label names; `off` for gpulse's names only. Default [`DEFAULT_DCGM_COMPAT`].
    #[serde(
        serialize_with = "serialize_dcgm_compat",
        deserialize_with = "deserialize_dcgm_compat"
    )]
    pub dcgm_compat: DcgmCompat,
    /// Newest readings kept per GPU for fleet-wide findings (/api/v1/findings,
    /// `gpulse_gpu_finding`); about 2.7 KB each with full telemetry (128 MB for 1,000 hosts x 8 GPUs at the default). 0 turns findings
    /// off; at most 64. Default [`DEFAULT_FINDINGS_READINGS`].
    pub findings_readings: usize,
    /// The longest a /metrics body is reused for later scrapes; a body is also reused
    /// only while younger than ten times its render took, so a small fleet is rendered
    /// for every scrape. `0s` renders every scrape. Default [`DEFAULT_METRICS_CACHE`].
    #[serde(with = "humantime_serde")]
    pub metrics_cache: Duration,
    pub limits: Limits,
    pub listeners: ListenerLimits,
    pub ledger: LedgerConfig,
    pub bare_metal: BareMetalConfig,
    /// Receivers the collector pushes its series to with Prometheus remote write 1.0,
    /// one `[[remote_write]]` table each (docs/remote-write.md). Default: none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remote_write: Vec<RemoteWriteConfig>,
    /// Labels added to every series this collector pushes by remote write (not to
    /// /metrics, where Prometheus adds `job` and `instance`), unless the series has a
    /// label of that name already. They keep several collectors' series apart in one
    /// receiver: without them two collectors' self-metrics would be one series. Default:
    /// `collector = "<this host's name>"`; `{}` for none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_labels: Option<BTreeMap<String, String>>,
}

fn serialize_dcgm_compat<S: Serializer>(v: &DcgmCompat, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v.name())
}

fn deserialize_dcgm_compat<'de, D: Deserializer<'de>>(d: D) -> Result<DcgmCompat, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map_err(serde::de::Error::custom)
}

impl Default for CollectorConfig {
    fn default() -> Self {
        CollectorConfig {
            grpc_listen: DEFAULT_GRPC_LISTEN.parse().expect("valid default address"),
            http_listen: DEFAULT_HTTP_LISTEN.parse().expect("valid default address"),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            agent_expiry: DEFAULT_AGENT_EXPIRY,
            hello_timeout: DEFAULT_HELLO_TIMEOUT,
            auth_token_file: None,
            agent_tokens_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
            http_client_auth: DEFAULT_HTTP_CLIENT_AUTH,
            allow_unauthenticated: false,
            nvlink_per_link: false,
            process_series: false,
            pricing_file: None,
            dcgm_compat: DEFAULT_DCGM_COMPAT,
            findings_readings: DEFAULT_FINDINGS_READINGS,
            metrics_cache: DEFAULT_METRICS_CACHE,
            limits: Limits::default(),
            listeners: ListenerLimits::default(),
            ledger: LedgerConfig::default(),
            bare_metal: BareMetalConfig::default(),
            remote_write: Vec::new(),
            external_labels: None,
        }
    }
}

/// A configuration that cannot work, with the file or setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid setting {setting}: {reason}")]
    Invalid {
        setting: &'static str,
        reason: String,
    },
    #[error("invalid setting remote_write[{index}].{key}: {reason}")]
    RemoteWrite {
        index: usize,
        key: &'static str,
        reason: String,
    },
}

impl CollectorConfig {
    /// Whether agents must authenticate: a token (shared or per-agent) or a client
    /// certificate.
    pub fn grpc_authenticated(&self) -> bool {
        self.auth_token_file.is_some() || self.agent_tokens_file.is_some() || self.mutual_tls()
    }

    /// Whether scrapers must authenticate: the shared token or a client certificate.
    pub fn http_authenticated(&self) -> bool {
        self.auth_token_file.is_some() || self.http_mutual_tls()
    }

    /// Whether agents must present a client certificate.
    pub fn mutual_tls(&self) -> bool {
        self.tls_cert_file.is_some() && self.tls_client_ca_file.is_some()
    }

    /// Whether HTTP clients must present a client certificate.
    pub fn http_mutual_tls(&self) -> bool {
        self.mutual_tls() && self.http_client_auth == HttpClientAuth::Require
    }

    /// Reads a TOML file; unknown keys are errors that name the key, line and file.
    pub fn from_file(path: &Path) -> Result<CollectorConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The labels remote write adds to every series: `external_labels`, or by default
    /// `collector` = this host's name.
    pub fn external_labels(&self) -> Vec<(String, String)> {
        match &self.external_labels {
            Some(labels) => labels.clone().into_iter().collect(),
            None => {
                let host = sysinfo::System::host_name().unwrap_or_else(|| "unknown".into());
                vec![("collector".to_string(), host)]
            }
        }
    }

    /// Checks the settings against each other, without touching the network or disk.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |setting, reason: &str| {
            Err(ConfigError::Invalid {
                setting,
                reason: reason.to_string(),
            })
        };
        if self.agent_expiry < Duration::from_secs(1) {
            return invalid("agent_expiry", "must be at least 1s");
        }
        if self.hello_timeout.is_zero() {
            return invalid("hello_timeout", "must be more than 0s");
        }
        if self.findings_readings > gpulse_exposition::MAX_FINDINGS_READINGS {
            return invalid(
                "findings_readings",
                "must be at most 64 (0 turns findings off)",
            );
        }
        let l = &self.limits;
        for (setting, value) in [
            ("limits.max_agents", l.max_agents),
            ("limits.max_gpus_per_host", l.max_gpus_per_host),
            ("limits.max_snapshots_per_batch", l.max_snapshots_per_batch),
            ("limits.max_string_bytes", l.max_string_bytes),
        ] {
            if value == 0 {
                return invalid(setting, "must be at least 1");
            }
        }
        if l.max_message_bytes < 64 * 1024 {
            return invalid(
                "limits.max_message_bytes",
                "must be at least 65536 (64 KiB)",
            );
        }
        self.listeners.check()?;
        let g = &self.ledger;
        if let Some(url) = &g.url
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            // Only the scheme here: the whole URL is read when the ledger opens, and
            // what it says (a host, a password) is not echoed.
            return invalid(
                "ledger.url",
                "must be a PostgreSQL URL, postgres://user@host:5432/db; leave it unset for the SQLite file under data_dir",
            );
        }
        if g.max_credited_gap < Duration::from_secs(1) {
            return invalid("ledger.max_credited_gap", "must be at least 1s");
        }
        if g.retention < Duration::from_secs(24 * 3600) {
            return invalid("ledger.retention", "must be at least 1 day");
        }
        if g.commit_interval > Duration::from_secs(1) {
            return invalid(
                "ledger.commit_interval",
                "must be at most 1s: every acknowledgement waits for it",
            );
        }
        if g.commit_max_batches == 0 || g.queue == 0 {
            return invalid(
                "ledger.commit_max_batches/ledger.queue",
                "must be at least 1",
            );
        }
        let mut labels = std::collections::BTreeSet::new();
        for (index, rw) in self.remote_write.iter().enumerate() {
            rw.check()
                .map_err(|(key, reason)| ConfigError::RemoteWrite { index, key, reason })?;
            if !labels.insert(rw.label(index)) {
                return Err(ConfigError::RemoteWrite {
                    index,
                    key: "name",
                    reason: format!(
                        "{:?} names another endpoint too: give each its own name",
                        rw.label(index)
                    ),
                });
            }
        }
        for (name, value) in self.external_labels.iter().flatten() {
            crate::remote_write::config::check_external_label(name, value).map_err(|reason| {
                ConfigError::Invalid {
                    setting: "external_labels",
                    reason: format!("{name:?}: {reason}"),
                }
            })?;
        }
        if let Err(e) = self.bare_metal.check() {
            return invalid("bare_metal", &e.to_string());
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return invalid(
                "tls_cert_file/tls_key_file",
                "set both (the certificate chain and its private key) or neither",
            );
        }
        if self.tls_client_ca_file.is_some() && self.tls_cert_file.is_none() {
            return invalid(
                "tls_client_ca_file",
                "mutual TLS needs the server's own certificate too: set tls_cert_file and tls_key_file",
            );
        }
        let wide = |a: &SocketAddr| !a.ip().is_loopback();
        if !self.allow_unauthenticated {
            for (setting, addr, authenticated, how) in [
                (
                    "grpc_listen",
                    self.grpc_listen,
                    self.grpc_authenticated(),
                    "set auth_token_file (--auth-token-file), agent_tokens_file or tls_client_ca_file",
                ),
                (
                    "http_listen",
                    self.http_listen,
                    self.http_authenticated(),
                    "set auth_token_file (--auth-token-file), or tls_client_ca_file with http_client_auth = \"require\"",
                ),
            ] {
                if wide(&addr) && !authenticated {
                    return invalid(
                        setting,
                        &format!(
                            "refusing to listen on {addr} beyond loopback with no authentication \
                             (TLS alone does not say who the client is): {how}, or pass \
                             --allow-unauthenticated if the network is trusted"
                        ),
                    );
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<CollectorConfig, String> {
        toml::from_str::<CollectorConfig>(text).map_err(|e| e.to_string())
    }

    #[test]
    fn durations_read_like_durations() {
        let c = parse("agent_expiry = \"90s\"\n[limits]\nmax_clock_skew = \"1m\"").unwrap();
        assert_eq!(c.agent_expiry, Duration::from_secs(90));
        assert_eq!(c.limits.max_clock_skew, Duration::from_secs(60));
    }

    #[test]
    fn bad_configs_name_the_key() {
        for (text, needle) in [
            ("grpc_lsten = \"127.0.0.1:1\"", "unknown field `grpc_lsten`"),
            ("agent_expiry = 300", "agent_expiry"),
            ("agent_expiry = \"5 parsecs\"", "agent_expiry"),
            ("grpc_listen = \"localhost\"", "grpc_listen"),
            ("[limits]\nmax_agnts = 3", "unknown field `max_agnts`"),
            (
                "[listeners]\nidle_timout = \"1m\"",
                "unknown field `idle_timout`",
            ),
            ("[listeners]\nidle_timeout = 60", "idle_timeout"),
            ("dcgm_compat = \"al\"", "use off (gpulse names only), also"),
            ("dcgm_compat = true", "dcgm_compat"),
            ("[ledger]\nurl = 5", "url"),
            (
                "[ledger]\nurl_ = \"postgres://db/g\"",
                "unknown field `url_`",
            ),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(needle), "{text}: {err}");
            assert!(
                err.contains("line"),
                "{text}: the error should give the line: {err}"
            );
        }
    }

    #[test]
    fn a_ledger_url_must_be_postgresql() {
        let c = parse("[ledger]\nurl = \"mysql://u:pw@db/gpulse\"").unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("ledger.url") && err.contains("postgres://"),
            "{err}"
        );
        assert!(!err.contains("pw@"), "the URL is not echoed: {err}");
        let c = parse("[ledger]\nurl = \"postgres://gpulse@db:5432/gpulse\"").unwrap();
        c.validate().unwrap();
        assert_eq!(
            c.ledger.url.as_deref(),
            Some("postgres://gpulse@db:5432/gpulse")
        );
    }

    #[test]
    fn dcgm_compat_reads_its_three_values() {
        for (text, want) in [
            ("dcgm_compat = \"off\"", DcgmCompat::Off),
            ("dcgm_compat = \"also\"", DcgmCompat::Also),
            ("dcgm_compat = \"only\"", DcgmCompat::Only),
        ] {
            assert_eq!(parse(text).unwrap().dcgm_compat, want, "{text}");
        }
        assert_eq!(parse("").unwrap().dcgm_compat, DcgmCompat::Off);
    }

    #[test]
    fn wide_listening_needs_auth_or_an_explicit_opt_in() {
        let mut c = CollectorConfig {
            grpc_listen: "0.0.0.0:7431".parse().unwrap(),
            ..CollectorConfig::default()
        };
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("--allow-unauthenticated"), "{err}");
        assert!(err.contains("grpc_listen"), "{err}");
        c.allow_unauthenticated = true;
        c.validate().unwrap();
        c.allow_unauthenticated = false;
        c.auth_token_file = Some("/etc/gpulse/token".into());
        c.validate().unwrap();
    }

    #[test]
    fn each_wide_listener_needs_its_own_authentication() {
        let wide = |grpc: bool, http: bool| CollectorConfig {
            grpc_listen: if grpc {
                "0.0.0.0:7431"
            } else {
                "127.0.0.1:7431"
            }
            .parse()
            .unwrap(),
            http_listen: if http {
                "0.0.0.0:7432"
            } else {
                "127.0.0.1:7432"
            }
            .parse()
            .unwrap(),
            ..CollectorConfig::default()
        };
        let tls = |c: CollectorConfig| CollectorConfig {
            tls_cert_file: Some("/etc/gpulse/tls.crt".into()),
            tls_key_file: Some("/etc/gpulse/tls.key".into()),
            ..c
        };
        let err = |c: CollectorConfig| c.validate().unwrap_err().to_string();

        // TLS alone says nothing about who the client is.
        assert!(err(tls(wide(true, false))).contains("grpc_listen"));
        // Per-agent tokens guard gRPC, not HTTP.
        let agent_tokens = CollectorConfig {
            agent_tokens_file: Some("/etc/gpulse/agent-tokens".into()),
            ..wide(true, false)
        };
        agent_tokens.validate().unwrap();
        let e = err(CollectorConfig {
            http_listen: "0.0.0.0:7432".parse().unwrap(),
            ..agent_tokens
        });
        assert!(
            e.contains("http_listen") && e.contains("auth_token_file"),
            "{e}"
        );
        // Mutual TLS authenticates both, unless HTTP opts out of client certificates.
        let mtls = CollectorConfig {
            tls_client_ca_file: Some("/etc/gpulse/ca.crt".into()),
            ..tls(wide(true, true))
        };
        mtls.validate().unwrap();
        let e = err(CollectorConfig {
            http_client_auth: HttpClientAuth::None,
            ..mtls.clone()
        });
        assert!(e.contains("http_listen"), "{e}");
        CollectorConfig {
            http_client_auth: HttpClientAuth::None,
            auth_token_file: Some("/etc/gpulse/token".into()),
            ..mtls
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn tls_files_come_in_pairs() {
        let e = CollectorConfig {
            tls_cert_file: Some("/etc/gpulse/tls.crt".into()),
            ..CollectorConfig::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("tls_cert_file/tls_key_file"), "{e}");
        let e = CollectorConfig {
            tls_client_ca_file: Some("/etc/gpulse/ca.crt".into()),
            ..CollectorConfig::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("tls_client_ca_file"), "{e}");
    }

    #[test]
    fn http_client_auth_reads_its_two_values() {
        assert_eq!(parse("").unwrap().http_client_auth, HttpClientAuth::Require);
        assert_eq!(
            parse("http_client_auth = \"none\"")
                .unwrap()
                .http_client_auth,
            HttpClientAuth::None
        );
        let err = parse("http_client_auth = \"optional\"").unwrap_err();
        assert!(err.contains("http_client_auth"), "{err}");
        assert!(
            "optional"
                .parse::<HttpClientAuth>()
                .unwrap_err()
                .contains("require")
        );
    }

    #[test]
    fn external_labels_default_to_the_host_and_bad_ones_name_the_key() {
        let c = CollectorConfig::default();
        let labels = c.external_labels();
        assert_eq!(labels.len(), 1);
        assert_eq!(labels[0].0, "collector");
        assert!(!labels[0].1.is_empty());
        let none: CollectorConfig = toml::from_str("external_labels = {}").unwrap();
        assert!(none.external_labels().is_empty());
        for (text, needle) in [
            ("external_labels = { __name__ = \"x\" }", "\"__name__\""),
            ("external_labels = { 1a = \"x\" }", "not a label name"),
            ("external_labels = { region = \"\" }", "the value must be"),
        ] {
            let c: CollectorConfig = toml::from_str(text).unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(
                e.contains("external_labels") && e.contains(needle),
                "{text}: {e}"
            );
        }
    }

    #[test]
    fn remote_write_tables_read_and_bad_ones_name_the_key() {
        let c = parse(
            "[[remote_write]]\nurl = \"http://127.0.0.1:8428/api/v1/write\"\n\
             [[remote_write]]\nurl = \"https://mimir/api/v1/push\"\nname = \"mimir\"\n\
             interval = \"30s\"\n[remote_write.tls]\nca_file = \"/etc/ca.pem\"\n\
             [remote_write.basic_auth]\nusername = \"u\"\npassword_file = \"/p\"",
        )
        .unwrap();
        assert_eq!(c.remote_write.len(), 2);
        assert_eq!(
            c.remote_write[0].interval,
            crate::remote_write::config::DEFAULT_INTERVAL
        );
        assert_eq!(c.remote_write[1].interval, Duration::from_secs(30));
        c.validate().unwrap();
        for (text, needle) in [
            (
                "[[remote_write]]\nurl = \"x\"\nqueue = 3",
                "unknown field `queue`",
            ),
            ("[[remote_write]]\nname = \"a\"", "missing field `url`"),
            (
                "[[remote_write]]\nurl = \"http://a/w\"\n[remote_write.tls]\nverify = false",
                "unknown field `verify`",
            ),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(needle), "{text}: {err}");
        }
        for (text, needle) in [
            (
                "[[remote_write]]\nurl = \"victoria:8428/api/v1/write\"",
                "remote_write[0].url: invalid format: give the receiver's full write URL",
            ),
            (
                "[[remote_write]]\nurl = \"http://a/w\"\n[[remote_write]]\nurl = \"http://b/w\"\nname = \"0\"",
                "remote_write[1].name",
            ),
            (
                "[[remote_write]]\nurl = \"http://a/w\"\nmax_samples_per_send = 0",
                "remote_write[0].max_samples_per_send",
            ),
        ] {
            let err = parse(text).unwrap().validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn listener_limits_that_cannot_work_are_named() {
        for (text, needle) in [
            (
                "[listeners]\nmax_connections = 0",
                "listeners.max_connections: must be at least 1",
            ),
            (
                "[listeners]\nidle_timeout = \"1s\"",
                "listeners.idle_timeout: must be at least 3s",
            ),
            (
                "[listeners]\nheader_read_timeout = \"0s\"",
                "listeners.header_read_timeout: must be at least 1s",
            ),
        ] {
            let err = parse(text).unwrap().validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
        let c = parse("[listeners]\nidle_timeout = \"30s\"").unwrap();
        c.validate().unwrap();
        assert_eq!(c.listeners.keepalive(), Duration::from_secs(10));
    }

    #[test]
    fn the_defaults_are_valid() {
        CollectorConfig::default().validate().unwrap();
    }

    #[test]
    fn the_example_config_matches_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../packaging/config/collector.example.toml");
        let generated = crate::example_config();
        if std::env::var_os("GPULSE_BLESS").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(
            committed,
            generated,
            "{} drifted from the defaults: run GPULSE_BLESS=1 cargo test -p gpulse-collector",
            path.display()
        );
        let parsed = CollectorConfig::from_file(&path).unwrap();
        assert_eq!(parsed, CollectorConfig::default());
    }
}
