//! Agent configuration: a TOML file, `GPULSE_AGENT_*` environment variables and
//! command-line flags, in rising precedence. Every default is a named constant.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use gpulse_gpu::simulator::SimSpec;

/// Default collector address: one on the same host.
pub const DEFAULT_COLLECTOR: &str = "http://127.0.0.1:7431";
/// Default sampling interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// Shortest interval accepted: NVML's utilisation counters average over about 1/6 s to 1 s.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// Unacknowledged batches kept while the collector is away: one hour at the default interval.
pub const DEFAULT_MAX_BUFFERED_BATCHES: usize = 720;
/// Largest disk spool: about three days of an 8-GPU host's batches at the default
/// interval (docs/delivery.md has the measured batch sizes).
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 256 << 20;
/// First wait before reconnecting.
pub const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_millis(500);
/// Longest wait between reconnection attempts.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How often to try opening NVML again after it failed (the driver may load after the agent).
pub const DEFAULT_NVML_RETRY: Duration = Duration::from_secs(60);
/// Where processes are looked up for workload attribution.
pub const DEFAULT_PROC_ROOT: &str = "/proc";
/// Time allowed to open a connection to the collector.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Default root under which DMI tables are read (`<root>/sys/class/dmi/id`).
pub const DEFAULT_SYSFS_ROOT: &str = "/";

/// Where the host runs, as the operator states it, and how the rest is detected. Stated
/// values always win over detection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderConfig {
    /// e.g. "aws", "gcp", "azure", "coreweave", "lambda", "on-prem". Default: unset (detected).
    pub name: String,
    /// Default: unset (from the metadata service).
    pub region: String,
    /// Default: unset (from the metadata service).
    pub zone: String,
    /// Default: unset (from the metadata service, or DMI on AWS Nitro).
    pub instance_type: String,
    /// Detect what is not stated, from DMI and the instance metadata service. Default true.
    pub detect: bool,
    /// Base URL of the instance metadata service. Default
    /// [`crate::provider::metadata::DEFAULT_METADATA_URL`].
    pub metadata_url: String,
    /// Time allowed for the whole metadata exchange at start-up. Default 2s.
    #[serde(with = "humantime_serde")]
    pub metadata_timeout: Duration,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        ProviderConfig {
            name: String::new(),
            region: String::new(),
            zone: String::new(),
            instance_type: String::new(),
            detect: true,
            metadata_url: crate::provider::metadata::DEFAULT_METADATA_URL.to_string(),
            metadata_timeout: crate::provider::DEFAULT_METADATA_TIMEOUT,
        }
    }
}

/// The agent's configuration file (`--config`, TOML).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Collector gRPC URL. Default [`DEFAULT_COLLECTOR`].
    pub collector: String,
    /// Further collectors to fail over to, in order, when the one in use cannot be
    /// reached or drops the stream (same scheme as `collector`). Default none.
    pub failover_collectors: Vec<String>,
    /// Simulator spec (`gpus=8,model=h100-sxm,scenario=thermal`); unset: real GPUs through NVML.
    pub simulate: Option<String>,
    /// Capture file to play back instead of reading GPUs (see `gpulse-agent capture`).
    pub replay: Option<PathBuf>,
    /// Sampling interval. Default 5s; at least 100ms.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Address for a local /metrics (same names as the collector's). Unset: no local HTTP.
    pub http_listen: Option<SocketAddr>,
    /// Stable identity of this agent. Default: the hostname.
    pub agent_id: Option<String>,
    /// Path of libnvidia-ml.so.1 when it is not on the loader's path.
    pub nvml_library: Option<PathBuf>,
    /// procfs used to attribute GPU processes to pods, containers, jobs and units.
    /// Default "/proc"; in a container, mount the host's /proc and point here.
    pub proc_root: PathBuf,
    /// The kubelet's pod-resources socket, read to learn which pod and container hold
    /// each GPU; used when it exists (on a Kubernetes node, mount its directory).
    /// Empty: never asked. Default [`crate::pod_resources::DEFAULT_SOCKET`].
    pub pod_resources_socket: PathBuf,
    /// How often the kubelet is asked again. Default 10s; at least 100ms.
    #[serde(with = "humantime_serde")]
    pub pod_resources_refresh: Duration,
    /// File with the collector's bearer token (shared, or this agent's own).
    pub auth_token_file: Option<PathBuf>,
    /// PEM CA certificate(s) the collector's certificate must be signed by, for an
    /// `https://` collector. Unset: the system's trusted CAs.
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate presented to an `https://` collector (mutual TLS); its DNS
    /// name must be this agent's id. Set with `tls_key_file`. Unset: none.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`. Unset: none.
    pub tls_key_file: Option<PathBuf>,
    /// Name the collector's certificate is checked against. Unset: the host in `collector`.
    pub tls_server_name: Option<String>,
    /// Unacknowledged batches kept; when full, the oldest is dropped and counted. Default 720.
    pub max_buffered_batches: usize,
    /// Directory of the disk spool: every batch is written there until the collector
    /// acknowledges it, so batches survive a restart of the agent or of the host. With a
    /// spool, `max_buffered_batches` only bounds the newest batches cached in memory.
    /// Unset (default): memory only.
    pub spool_dir: Option<PathBuf>,
    /// Largest size of the spool in bytes; past it the oldest batches are dropped and
    /// counted. Default [`DEFAULT_SPOOL_MAX_BYTES`] (256 MiB); at least 1 MiB.
    pub spool_max_bytes: u64,
    /// First reconnect wait; doubles, with jitter, up to `backoff_max`. Default 500ms.
    #[serde(with = "humantime_serde")]
    pub backoff_initial: Duration,
    /// Longest reconnect wait. Default 30s.
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// Time allowed to open a connection. Default 10s.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How the stream to the collector is compressed: "gzip" or "none". A collector that
    /// does not accept gzip gets the stream uncompressed (logged once). Default
    /// [`crate::uplink::DEFAULT_COMPRESSION`] (gzip).
    pub compression: crate::uplink::Compression,
    /// Retry period for opening NVML after a failure. Default 60s.
    #[serde(with = "humantime_serde")]
    pub nvml_retry: Duration,
    /// Root under which the DMI tables are read (`<root>/sys/class/dmi/id`); tests point it
    /// at a fixture tree. Default [`DEFAULT_SYSFS_ROOT`].
    pub sysfs_root: PathBuf,
    pub provider: ProviderConfig,
    /// Operator labels sent with the Hello (keys: [a-zA-Z_][a-zA-Z0-9_]*).
    pub labels: BTreeMap<String, String>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            collector: DEFAULT_COLLECTOR.to_string(),
            failover_collectors: Vec::new(),
            simulate: None,
            replay: None,
            interval: DEFAULT_INTERVAL,
            http_listen: None,
            agent_id: None,
            nvml_library: None,
            proc_root: PathBuf::from(DEFAULT_PROC_ROOT),
            pod_resources_socket: PathBuf::from(crate::pod_resources::DEFAULT_SOCKET),
            pod_resources_refresh: crate::pod_resources::DEFAULT_REFRESH,
            auth_token_file: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_server_name: None,
            max_buffered_batches: DEFAULT_MAX_BUFFERED_BATCHES,
            spool_dir: None,
            spool_max_bytes: DEFAULT_SPOOL_MAX_BYTES,
            backoff_initial: DEFAULT_BACKOFF_INITIAL,
            backoff_max: DEFAULT_BACKOFF_MAX,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            compression: crate::uplink::DEFAULT_COMPRESSION,
            nvml_retry: DEFAULT_NVML_RETRY,
            sysfs_root: PathBuf::from(DEFAULT_SYSFS_ROOT),
            provider: ProviderConfig::default(),
            labels: BTreeMap::new(),
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
}

impl AgentConfig {
    /// Reads a TOML file; unknown keys are errors that name the key, line and file.
    pub fn from_file(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The simulator spec, parsed, when one is set.
    pub fn sim_spec(&self) -> Result<Option<SimSpec>, ConfigError> {
        self.simulate
            .as_deref()
            .map(|s| {
                s.parse()
                    .map_err(|e: gpulse_gpu::BackendError| ConfigError::Invalid {
                        setting: "simulate",
                        reason: e.to_string(),
                    })
            })
            .transpose()
    }

    /// Checks the settings, without touching the network or disk.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |setting, reason: String| Err(ConfigError::Invalid { setting, reason });
        if self.pod_resources_refresh < Duration::from_millis(100) {
            return invalid(
                "pod_resources_refresh",
                format!(
                    "{} is too short: at least 100ms (the kubelet is asked on its own schedule, default 10s)",
                    humantime::format_duration(self.pod_resources_refresh)
                ),
            );
        }
        let https = self.collector.starts_with("https://");
        if !https && !self.collector.starts_with("http://") {
            return invalid(
                "collector",
                format!(
                    "{:?} must be an http:// or https:// URL such as {DEFAULT_COLLECTOR}",
                    self.collector
                ),
            );
        }
        let tls_set = self.tls_ca_file.is_some()
            || self.tls_cert_file.is_some()
            || self.tls_key_file.is_some()
            || self.tls_server_name.is_some();
        if tls_set && !https {
            return invalid(
                "tls_ca_file/tls_cert_file/tls_key_file/tls_server_name",
                format!(
                    "TLS settings need an https:// collector URL, not {:?}",
                    self.collector
                ),
            );
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return invalid(
                "tls_cert_file/tls_key_file",
                "set both (the client certificate and its private key) or neither".to_string(),
            );
        }
        if self.tls_server_name.as_deref().is_some_and(str::is_empty) {
            return invalid(
                "tls_server_name",
                "must be a DNS name or IP address; unset it to use the collector URL's host"
                    .to_string(),
            );
        }
        if tonic::transport::Endpoint::from_shared(self.collector.clone()).is_err() {
            return invalid(
                "collector",
                format!("{:?} is not a valid URL", self.collector),
            );
        }
        for url in &self.failover_collectors {
            let scheme = if https { "https://" } else { "http://" };
            if !url.starts_with(scheme) {
                return invalid(
                    "failover_collectors",
                    format!(
                        "{url:?} must start with {scheme} like collector {:?}: one TLS setting serves them all",
                        self.collector
                    ),
                );
            }
            if tonic::transport::Endpoint::from_shared(url.clone()).is_err() {
                return invalid("failover_collectors", format!("{url:?} is not a valid URL"));
            }
            if *url == self.collector {
                return invalid(
                    "failover_collectors",
                    format!("{url:?} is the collector itself"),
                );
            }
        }
        if self.interval < MIN_INTERVAL {
            return invalid(
                "interval",
                format!("{:?} is shorter than the minimum of 100ms", self.interval),
            );
        }
        if self.max_buffered_batches == 0 {
            return invalid("max_buffered_batches", "must be at least 1".to_string());
        }
        if self.spool_max_bytes < crate::spool::MIN_SPOOL_BYTES {
            return invalid(
                "spool_max_bytes",
                format!(
                    "{} is below the minimum of {} (1 MiB)",
                    self.spool_max_bytes,
                    crate::spool::MIN_SPOOL_BYTES
                ),
            );
        }
        if self.backoff_initial.is_zero() || self.backoff_initial > self.backoff_max {
            return invalid(
                "backoff_initial",
                "must be more than 0s and no more than backoff_max".to_string(),
            );
        }
        if let Some(id) = &self.agent_id
            && (id.is_empty()
                || id.len() > 128
                || !id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':')))
        {
            return invalid(
                "agent_id",
                format!("{id:?} must be 1 to 128 characters of A-Z a-z 0-9 . _ - :"),
            );
        }
        for key in self.labels.keys() {
            let mut chars = key.chars();
            let ok = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return invalid(
                    "labels",
                    format!("label key {key:?} must match [a-zA-Z_][a-zA-Z0-9_]*"),
                );
            }
        }
        if self.provider.detect {
            let url = &self.provider.metadata_url;
            if !url.starts_with("http://") || url.parse::<hyper::Uri>().is_err() {
                return invalid(
                    "provider.metadata_url",
                    format!(
                        "{url:?} must be an http:// URL such as {}",
                        crate::provider::metadata::DEFAULT_METADATA_URL
                    ),
                );
            }
            if self.provider.metadata_timeout.is_zero()
                || self.provider.metadata_timeout > Duration::from_secs(60)
            {
                return invalid(
                    "provider.metadata_timeout",
                    "must be more than 0s and at most 60s: the agent waits for it at start-up"
                        .to_string(),
                );
            }
        }
        self.sim_spec()?;
        if self.simulate.is_some() && self.replay.is_some() {
            return invalid(
                "simulate/replay",
                "choose one: --simulate plays a scenario, --replay plays a capture".to_string(),
            );
        }
        Ok(())
    }
}

/// The example configuration file, generated from the defaults.
pub fn example_config() -> String {
    let body = toml::to_string_pretty(&AgentConfig::default()).expect("the defaults serialise");
    format!(
        "# gpulse-agent configuration: every setting with its default.\n\
         # Generated from the code's defaults; see README.md for what each one means.\n\
         # Unset by default: simulate, replay, http_listen, agent_id, nvml_library, auth_token_file,\n\
         # spool_dir, tls_ca_file, tls_cert_file, tls_key_file, tls_server_name.\n\n{body}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AgentConfig, String> {
        toml::from_str::<AgentConfig>(text).map_err(|e| e.to_string())
    }

    #[test]
    fn a_full_config_reads() {
        let c = parse(
            "collector = \"http://collector:7431\"\ninterval = \"2s\"\n\
             [provider]\nname = \"coreweave\"\nregion = \"us-east-04\"\n\
             [labels]\nteam = \"ml\"",
        )
        .unwrap();
        assert_eq!(c.interval, Duration::from_secs(2));
        assert_eq!(c.provider.name, "coreweave");
        assert_eq!(c.labels["team"], "ml");
        c.validate().unwrap();
        let plain = parse("compression = \"none\"").unwrap();
        assert_eq!(plain.compression, crate::uplink::Compression::None);
    }

    #[test]
    fn bad_configs_name_the_key_and_line() {
        for (text, needle) in [
            ("colector = \"http://x:1\"", "unknown field `colector`"),
            ("interval = 5", "interval"),
            ("[provider]\nnme = \"aws\"", "unknown field `nme`"),
            ("[provider]\nmetadata_timeout = 2", "metadata_timeout"),
            ("compression = \"zstd\"", "unknown variant `zstd`"),
            ("http_listen = \"nowhere\"", "http_listen"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(needle), "{text}: {err}");
            assert!(err.contains("line"), "{text}: {err}");
        }
    }

    #[test]
    fn bad_settings_say_what_to_do() {
        for (c, needle) in [
            (
                AgentConfig {
                    collector: "collector:7431".into(),
                    ..AgentConfig::default()
                },
                "http:// or https:// URL",
            ),
            (
                AgentConfig {
                    tls_ca_file: Some("/etc/gpulse/ca.crt".into()),
                    ..AgentConfig::default()
                },
                "need an https:// collector URL",
            ),
            (
                AgentConfig {
                    collector: "https://a:7431".into(),
                    failover_collectors: vec!["http://b:7431".into()],
                    ..AgentConfig::default()
                },
                "must start with https:// like collector",
            ),
            (
                AgentConfig {
                    failover_collectors: vec![DEFAULT_COLLECTOR.into()],
                    ..AgentConfig::default()
                },
                "is the collector itself",
            ),
            (
                AgentConfig {
                    collector: "https://collector:7431".into(),
                    tls_cert_file: Some("/etc/gpulse/agent.crt".into()),
                    ..AgentConfig::default()
                },
                "tls_cert_file/tls_key_file",
            ),
            (
                AgentConfig {
                    interval: Duration::from_millis(10),
                    ..AgentConfig::default()
                },
                "minimum of 100ms",
            ),
            (
                AgentConfig {
                    simulate: Some("gpus=99".into()),
                    ..AgentConfig::default()
                },
                "from 1 to 16",
            ),
            (
                AgentConfig {
                    agent_id: Some("a b".into()),
                    ..AgentConfig::default()
                },
                "agent_id",
            ),
            (
                AgentConfig {
                    labels: [("bad-key".to_string(), "x".to_string())].into(),
                    ..AgentConfig::default()
                },
                "bad-key",
            ),
            (
                AgentConfig {
                    provider: ProviderConfig {
                        metadata_url: "169.254.169.254".into(),
                        ..ProviderConfig::default()
                    },
                    ..AgentConfig::default()
                },
                "provider.metadata_url",
            ),
            (
                AgentConfig {
                    provider: ProviderConfig {
                        metadata_timeout: Duration::ZERO,
                        ..ProviderConfig::default()
                    },
                    ..AgentConfig::default()
                },
                "provider.metadata_timeout",
            ),
        ] {
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn the_example_config_matches_the_defaults() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/config/agent.example.toml");
        let generated = example_config();
        if std::env::var_os("GPULSE_BLESS").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(
            committed,
            generated,
            "{} drifted from the defaults: run GPULSE_BLESS=1 cargo test -p gpulse-agent",
            path.display()
        );
        assert_eq!(
            AgentConfig::from_file(&path).unwrap(),
            AgentConfig::default()
        );
    }
}
