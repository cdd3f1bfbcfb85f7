//! `[[remote_write]]` settings: where and how the collector pushes its series.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How often a snapshot of every series is pushed: a common Prometheus scrape
/// interval, so pushed series are as fine-grained as scraped ones would be.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(15);
/// Samples one endpoint's queue holds at most: 20 pushes of a 100-host x 8-GPU fleet
/// (about 60 k series each, 5 minutes at the default interval). Each queued sample
/// costs about 24 bytes; its series' labels are kept once, shared by all endpoints.
pub const DEFAULT_QUEUE_CAPACITY: usize = 1_200_000;
/// Samples in one request at most (Prometheus's own default, queue_config
/// max_samples_per_send).
pub const DEFAULT_MAX_SAMPLES_PER_SEND: usize = 2_000;
/// Requests of one push in flight together at most. One request at a time cannot keep
/// up with a large fleet (each waits a round trip and the receiver's work); several,
/// each of different series of the same push, can, without any series out of order.
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 8;
/// Most requests in flight allowed.
pub const MAX_CONCURRENT_REQUESTS: usize = 64;
/// A request with no answer this soon is retried (Prometheus's remote_timeout default).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Shortest interval accepted: pushing more often than the agents sample sends the
/// same values again.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Longest endpoint name: it is a label value.
pub const MAX_NAME_BYTES: usize = 64;

/// Longest external label value.
pub const MAX_EXTERNAL_LABEL_BYTES: usize = 256;

/// Whether `name = value` may be an external label: a Prometheus label name that is
/// not reserved (`__` prefix), and a non-empty value without control characters.
pub fn check_external_label(name: &str, value: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let name_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__");
    if !name_ok {
        return Err(
            "not a label name: use letters, digits and '_', not starting with a digit or '__'"
                .into(),
        );
    }
    if value.is_empty()
        || value.len() > MAX_EXTERNAL_LABEL_BYTES
        || value.chars().any(char::is_control)
    {
        return Err(format!(
            "the value must be 1 to {MAX_EXTERNAL_LABEL_BYTES} bytes without control characters"
        ));
    }
    Ok(())
}

/// One remote-write receiver (Prometheus, Mimir, Thanos Receive, Cortex,
/// VictoriaMetrics). docs/remote-write.md has examples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteWriteConfig {
    /// The receiver's write URL, http or https, e.g.
    /// `https://mimir.example.com/api/v1/push`. Required.
    pub url: String,
    /// Names the endpoint in logs and in the `endpoint` label of the self-metrics:
    /// letters, digits, `_`, `-`, `.`, at most 64 bytes. Default: its position in the
    /// list ("0", "1", ...); never the URL, which may carry credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// File holding a bearer token sent as `Authorization: Bearer <token>`; read at
    /// start-up. Unset: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token_file: Option<PathBuf>,
    /// HTTP basic authentication. Unset: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<BasicAuth>,
    /// TLS towards an https URL. Default: the system's CAs, no client certificate.
    #[serde(default)]
    pub tls: RemoteWriteTls,
    /// How often a snapshot of every series is queued. Default 15s ([`DEFAULT_INTERVAL`]).
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Samples the queue holds; when a push does not fit, the oldest are dropped and
    /// counted (`reason="queue_full"`). Default [`DEFAULT_QUEUE_CAPACITY`].
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// Samples in one request at most. Default [`DEFAULT_MAX_SAMPLES_PER_SEND`].
    #[serde(default = "default_max_samples_per_send")]
    pub max_samples_per_send: usize,
    /// Requests in flight at once, each with different series of the same push (1 to
    /// 64). Default [`DEFAULT_MAX_CONCURRENT_REQUESTS`].
    #[serde(default = "default_max_concurrent_requests")]
    pub max_concurrent_requests: usize,
    /// A request with no answer this soon is retried. Default 30s ([`DEFAULT_TIMEOUT`]).
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_interval() -> Duration {
    DEFAULT_INTERVAL
}
fn default_queue_capacity() -> usize {
    DEFAULT_QUEUE_CAPACITY
}
fn default_max_samples_per_send() -> usize {
    DEFAULT_MAX_SAMPLES_PER_SEND
}
fn default_max_concurrent_requests() -> usize {
    DEFAULT_MAX_CONCURRENT_REQUESTS
}
fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}

impl RemoteWriteConfig {
    /// An endpoint at `url` with every other setting at its default.
    pub fn new(url: impl Into<String>) -> Self {
        RemoteWriteConfig {
            url: url.into(),
            name: None,
            bearer_token_file: None,
            basic_auth: None,
            tls: RemoteWriteTls::default(),
            interval: DEFAULT_INTERVAL,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            max_samples_per_send: DEFAULT_MAX_SAMPLES_PER_SEND,
            max_concurrent_requests: DEFAULT_MAX_CONCURRENT_REQUESTS,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The `endpoint` label of the endpoint at `index` in the list.
    pub fn label(&self, index: usize) -> String {
        self.name.clone().unwrap_or_else(|| index.to_string())
    }

    /// The URL, parsed; it must be http or https with a host.
    pub fn uri(&self) -> Result<http::Uri, String> {
        let uri: http::Uri = self.url.parse().map_err(|e| {
            format!(
                "{e}: give the receiver's full write URL, e.g. \"http://victoria:8428/api/v1/write\""
            )
        })?;
        match uri.scheme_str() {
            Some("http" | "https") => {}
            _ => {
                return Err(
                    "must start with http:// or https://, e.g. \"https://mimir.example.com/api/v1/push\""
                        .into(),
                );
            }
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err("has no host: give the receiver's full write URL".into());
        }
        Ok(uri)
    }

    /// Checks one endpoint's settings without touching the network or disk; the error
    /// names the key at fault and what to do.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        self.uri().map_err(|e| ("url", e))?;
        if let Some(name) = &self.name {
            let ok = !name.is_empty()
                && name.len() <= MAX_NAME_BYTES
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
            if !ok {
                return Err((
                    "name",
                    format!("{name:?}: use 1 to {MAX_NAME_BYTES} letters, digits, '_', '-' or '.'"),
                ));
            }
        }
        if self.bearer_token_file.is_some() && self.basic_auth.is_some() {
            return Err((
                "bearer_token_file",
                "set bearer_token_file or basic_auth, not both: a request carries one Authorization header".into(),
            ));
        }
        if self.interval < MIN_INTERVAL {
            return Err(("interval", "must be at least 1s".into()));
        }
        if self.queue_capacity == 0 {
            return Err(("queue_capacity", "must be at least 1 sample".into()));
        }
        if self.max_samples_per_send == 0 {
            return Err(("max_samples_per_send", "must be at least 1".into()));
        }
        if !(1..=MAX_CONCURRENT_REQUESTS).contains(&self.max_concurrent_requests) {
            return Err((
                "max_concurrent_requests",
                format!("must be 1 to {MAX_CONCURRENT_REQUESTS}"),
            ));
        }
        if self.timeout.is_zero() {
            return Err(("timeout", "must be more than 0s, e.g. \"30s\"".into()));
        }
        let t = &self.tls;
        if t.cert_file.is_some() != t.key_file.is_some() {
            return Err((
                "tls.cert_file",
                "set tls.cert_file and tls.key_file together (client certificate and its key) or neither".into(),
            ));
        }
        Ok(())
    }
}

/// HTTP basic authentication.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    pub username: String,
    /// File holding the password (a trailing newline is ignored); read at start-up.
    pub password_file: PathBuf,
}

/// TLS towards the receiver.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RemoteWriteTls {
    /// PEM CA certificate(s) the receiver's certificate must be signed by. Unset: the
    /// system's CAs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain for mutual TLS (with `key_file`). Unset: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`. Unset: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Accept any server certificate. Default false; for tests only: anyone on the path
    /// can read and change what is sent.
    pub insecure_skip_verify: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_endpoints_name_the_key_and_what_to_do() {
        let base = RemoteWriteConfig::new("http://127.0.0.1:8428/api/v1/write");
        base.check().unwrap();
        for (c, key, needle) in [
            (RemoteWriteConfig::new("victoria:8428"), "url", "http://"),
            (RemoteWriteConfig::new("ftp://x/y"), "url", "http://"),
            (RemoteWriteConfig::new("http://"), "url", "write URL"),
            (
                RemoteWriteConfig {
                    name: Some("has space".into()),
                    ..base.clone()
                },
                "name",
                "letters",
            ),
            (
                RemoteWriteConfig {
                    interval: Duration::from_millis(10),
                    ..base.clone()
                },
                "interval",
                "1s",
            ),
            (
                RemoteWriteConfig {
                    queue_capacity: 0,
                    ..base.clone()
                },
                "queue_capacity",
                "at least",
            ),
            (
                RemoteWriteConfig {
                    tls: RemoteWriteTls {
                        cert_file: Some("/c".into()),
                        ..RemoteWriteTls::default()
                    },
                    ..base.clone()
                },
                "tls.cert_file",
                "key_file",
            ),
        ] {
            let (k, reason) = c.check().unwrap_err();
            assert_eq!(k, key, "{c:?}");
            assert!(reason.contains(needle), "{key}: {reason}");
        }
    }

    #[test]
    fn the_label_is_the_name_or_the_position_never_the_url() {
        let c = RemoteWriteConfig::new("https://user:secret@mimir/api/v1/push");
        assert_eq!(c.label(2), "2");
        let named = RemoteWriteConfig {
            name: Some("mimir".into()),
            ..c
        };
        assert_eq!(named.label(2), "mimir");
    }
}
