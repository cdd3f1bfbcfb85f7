//! The HTTP side of remote write: one POST per batch, and what its answer means.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::ClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::config::{RemoteWriteConfig, RemoteWriteTls};
use crate::tls::{TlsError, certificates, private_key};

/// The remote-write protocol version sent in `X-Prometheus-Remote-Write-Version`
/// (remote write 1.0 specification, "Protocol").
pub const PROTOCOL_VERSION: &str = "0.1.0";
/// Shortest wait before a retry.
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between retries without a Retry-After (Prometheus's max_backoff).
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Longest Retry-After honoured: a receiver asking for more is asked again sooner.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Bytes of an error answer kept for the log.
const ERROR_BODY_BYTES: usize = 512;

/// What the answer to a request means for its samples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stored (2xx).
    Sent,
    /// Try the same samples again later (5xx, 429, no answer); `after` is the
    /// receiver's Retry-After, when it gave one.
    Retry {
        after: Option<Duration>,
        why: String,
    },
    /// The receiver refused them for good (any other status): sending them again
    /// would be refused again.
    Rejected { status: u16, why: String },
}

/// Sorts a status into sent, retry or rejected (remote write 1.0, "Retries &
/// Backoff": 5xx and 429 are retried, other 4xx never).
pub fn classify(status: StatusCode) -> Outcome {
    if status.is_success() {
        Outcome::Sent
    } else if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        Outcome::Retry {
            after: None,
            why: status.to_string(),
        }
    } else {
        Outcome::Rejected {
            status: status.as_u16(),
            why: status.to_string(),
        }
    }
}

/// A Retry-After header: seconds, or an HTTP date; at most [`MAX_RETRY_AFTER`].
pub fn retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = match value.parse::<u64>() {
        Ok(s) => Duration::from_secs(s),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(now)
            .unwrap_or_default(),
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// The wait before retry number `attempt` (0 for the first): exponential from
/// [`MIN_BACKOFF`] to [`MAX_BACKOFF`], with jitter between half and all of it so that
/// collectors that failed together do not retry together. `unit` is a random number in
/// 0..1.
pub fn backoff(attempt: u32, unit: f64) -> Duration {
    let full = MIN_BACKOFF
        .saturating_mul(1u32 << attempt.min(16))
        .min(MAX_BACKOFF);
    full.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
}

/// Why an endpoint's client could not be built, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{what} in {path} cannot be sent as an HTTP header: remove control characters")]
    Header {
        what: &'static str,
        path: std::path::PathBuf,
    },
    #[error("TLS settings rejected: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("invalid url: {0}")]
    Url(String),
}

/// Sends remote-write bodies to one endpoint.
#[derive(Debug, Clone)]
pub struct Client {
    http: HyperClient<HttpsConnector<HttpConnector>, Full<Bytes>>,
    uri: Uri,
    authorization: Option<HeaderValue>,
    timeout: Duration,
}

fn read_secret(what: &'static str, path: &Path) -> Result<String, ClientError> {
    let text = std::fs::read_to_string(path).map_err(|source| ClientError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    Ok(text.trim_end_matches(['\r', '\n']).to_string())
}

impl Client {
    /// Reads the endpoint's credentials and TLS files; does not connect.
    pub fn new(config: &RemoteWriteConfig) -> Result<Client, ClientError> {
        let uri = config.uri().map_err(ClientError::Url)?;
        let header = |what, path: &Path, value: String| {
            let mut v = HeaderValue::from_str(&value).map_err(|_| ClientError::Header {
                what,
                path: path.to_path_buf(),
            })?;
            v.set_sensitive(true);
            Ok::<_, ClientError>(v)
        };
        let authorization = match (&config.bearer_token_file, &config.basic_auth) {
            (Some(path), _) => {
                let token = read_secret("bearer_token_file", path)?;
                Some(header("the bearer token", path, format!("Bearer {token}"))?)
            }
            (None, Some(basic)) => {
                use base64::Engine as _;
                let password = read_secret("basic_auth.password_file", &basic.password_file)?;
                let pair = base64::engine::general_purpose::STANDARD
                    .encode(format!("{}:{password}", basic.username));
                Some(header(
                    "the password",
                    &basic.password_file,
                    format!("Basic {pair}"),
                )?)
            }
            (None, None) => None,
        };
        let tls = tls_config(&config.tls)?;
        let mut connector = HttpConnector::new();
        connector.enforce_http(false);
        connector.set_connect_timeout(Some(config.timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let http = HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(https);
        Ok(Client {
            http,
            uri,
            authorization,
            timeout: config.timeout,
        })
    }

    /// POSTs one encoded body and says what became of it.
    pub async fn send(&self, body: Bytes) -> Outcome {
        let mut req = Request::post(self.uri.clone())
            .header(header::CONTENT_ENCODING, "snappy")
            .header(header::CONTENT_TYPE, "application/x-protobuf")
            .header("X-Prometheus-Remote-Write-Version", PROTOCOL_VERSION)
            .header(
                header::USER_AGENT,
                concat!("gpulse-collector/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(body))
            .expect("a request from a parsed URI and fixed headers is valid");
        if let Some(a) = &self.authorization {
            req.headers_mut().insert(header::AUTHORIZATION, a.clone());
        }
        let answer = match tokio::time::timeout(self.timeout, self.http.request(req)).await {
            Err(_) => {
                return Outcome::Retry {
                    after: None,
                    why: format!("no answer within {:?}", self.timeout),
                };
            }
            Ok(Err(e)) => {
                return Outcome::Retry {
                    after: None,
                    why: error_chain(&e),
                };
            }
            Ok(Ok(answer)) => answer,
        };
        let status = answer.status();
        let after = answer
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry_after(v, std::time::SystemTime::now()));
        // Read (a bounded part of) the body so the connection can be reused, and so an
        // error says what the receiver objected to.
        let body = tokio::time::timeout(
            self.timeout,
            Limited::new(answer.into_body(), 64 * 1024).collect(),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .map(|b| b.to_bytes())
        .unwrap_or_default();
        let text = || {
            let n = body.len().min(ERROR_BODY_BYTES);
            format!("{status}: {}", String::from_utf8_lossy(&body[..n]).trim())
        };
        match classify(status) {
            Outcome::Sent => Outcome::Sent,
            Outcome::Retry { .. } => Outcome::Retry { after, why: text() },
            Outcome::Rejected { status, .. } => Outcome::Rejected {
                status,
                why: text(),
            },
        }
    }
}

/// An error with its causes, which hyper keeps apart ("client error (Connect)" alone
/// says little).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_config(t: &RemoteWriteTls) -> Result<ClientConfig, ClientError> {
    let builder =
        ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = if t.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
    } else {
        let mut roots = rustls::RootCertStore::empty();
        match &t.ca_file {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|source| ClientError::Read {
                    what: "tls.ca_file",
                    path: path.clone(),
                    source,
                })?;
                for c in certificates("remote write CA", path, &pem)? {
                    roots.add(c)?;
                }
            }
            None => {
                // Certificates the system store holds but rustls cannot parse are
                // skipped, as a browser would.
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
            }
        }
        builder.with_root_certificates(roots)
    };
    Ok(match (&t.cert_file, &t.key_file) {
        (Some(cert), Some(key)) => {
            let read = |what, path: &Path| {
                std::fs::read(path).map_err(|source| ClientError::Read {
                    what,
                    path: path.to_path_buf(),
                    source,
                })
            };
            let chain = certificates(
                "remote write client certificate",
                cert,
                &read("tls.cert_file", cert)?,
            )?;
            let key_der = private_key(key, &read("tls.key_file", key)?)?;
            builder.with_client_auth_cert(chain, key_der)?
        }
        _ => builder.with_no_client_auth(),
    })
}

/// Accepts any server certificate (`insecure_skip_verify`); signatures are still
/// checked so the handshake itself is sound.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_and_429_are_retried_other_4xx_never() {
        for code in [500, 502, 503, 504, 599, 429] {
            let s = StatusCode::from_u16(code).unwrap();
            assert!(matches!(classify(s), Outcome::Retry { .. }), "{code}");
        }
        for code in [400, 401, 403, 404, 409, 413, 415, 422, 499] {
            let s = StatusCode::from_u16(code).unwrap();
            assert!(
                matches!(classify(s), Outcome::Rejected { status, .. } if status == code),
                "{code}"
            );
        }
        for code in [200, 204] {
            assert_eq!(classify(StatusCode::from_u16(code).unwrap()), Outcome::Sent);
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_dates_within_bounds() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_790_000_000);
        assert_eq!(retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(retry_after("86400", now), Some(MAX_RETRY_AFTER));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(12));
        assert_eq!(retry_after(&date, now), Some(Duration::from_secs(12)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(12));
        assert_eq!(retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(retry_after("soon", now), None);
    }

    #[test]
    fn backoff_grows_to_its_ceiling_with_jitter() {
        assert_eq!(backoff(0, 1.0), MIN_BACKOFF);
        assert_eq!(backoff(0, 0.0), MIN_BACKOFF / 2);
        assert_eq!(backoff(1, 1.0), MIN_BACKOFF * 2);
        assert_eq!(backoff(30, 1.0), MAX_BACKOFF);
        assert_eq!(backoff(30, 0.0), MAX_BACKOFF / 2);
        let mut last = Duration::ZERO;
        for attempt in 0..10 {
            let d = backoff(attempt, 1.0);
            assert!(d >= last && d <= MAX_BACKOFF);
            last = d;
        }
    }
}
