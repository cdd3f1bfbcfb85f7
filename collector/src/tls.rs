//! TLS on both listeners (rustls with the ring provider): the server certificate,
//! reloaded when its files change; client certificates (mutual TLS) checked against a
//! CA of the operator's; and the agent ids a client certificate vouches for.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::{debug, warn};

use crate::listener::Guarded;

/// A TLS handshake must finish this soon after the TCP connection opens, so a client
/// that connects and says nothing does not hold a slot.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once per listener; past it, new connections wait in the
/// kernel's accept queue.
pub const MAX_PENDING_HANDSHAKES: usize = 1024;
/// How often the certificate and key files are read again; a change is served to new
/// connections from then on (open connections keep theirs).
pub const RELOAD_CHECK: Duration = Duration::from_secs(60);
/// Finished handshakes waiting for the server to take them.
const ACCEPTED_QUEUE: usize = 64;

/// A TLS file that cannot be used, naming the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} file {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "{what} file {path} holds no usable {expected}: {reason}; it must be PEM \
         (-----BEGIN {expected}-----)"
    )]
    Pem {
        what: &'static str,
        path: PathBuf,
        expected: &'static str,
        reason: String,
    },
    #[error(
        "the private key in {key} cannot be used with the certificate in {cert}: {reason}; \
         the key file must hold the key the certificate was issued for"
    )]
    Key {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("client CA file {path}: {reason}")]
    ClientCa { path: PathBuf, reason: String },
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Every certificate in a PEM file; at least one.
pub fn certificates(
    what: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |reason: String| TlsError::Pem {
        what,
        path: path.to_path_buf(),
        expected: "CERTIFICATE",
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no certificate found".into()));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn private_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::Pem {
        what: "TLS key",
        path: path.to_path_buf(),
        expected: "PRIVATE KEY",
        reason: e.to_string(),
    })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server's certificate and key as last read, with the bytes they came from.
#[derive(Debug)]
struct Loaded {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    key: Arc<CertifiedKey>,
}

/// The server certificate, read again from its files by [`ServerTls::reload_if_changed`].
#[derive(Debug)]
struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<Loaded>>,
}

fn load(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
) -> Result<Loaded, TlsError> {
    let chain = certificates("TLS certificate", cert_path, &cert_pem)?;
    let key = private_key(key_path, &key_pem)?;
    let key = CertifiedKey::from_der(chain, key, provider).map_err(|e| TlsError::Key {
        cert: cert_path.to_path_buf(),
        key: key_path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(Loaded {
        cert_pem,
        key_pem,
        key: Arc::new(key),
    })
}

impl ReloadingCert {
    fn current(&self) -> Arc<Loaded> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current().key.clone())
    }
}

/// The collector's TLS settings, read from their files.
#[derive(Debug, Clone)]
pub struct ServerTls {
    cert: Arc<ReloadingCert>,
    /// The client CA file and the certificates read from it.
    client_roots: Option<(PathBuf, Arc<RootCertStore>)>,
}

impl ServerTls {
    /// Reads and checks the certificate chain, its key and, for mutual TLS, the CA that
    /// client certificates must be signed by.
    pub fn from_files(
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
    ) -> Result<ServerTls, TlsError> {
        let provider = provider();
        let loaded = load(
            cert,
            key,
            &provider,
            read("TLS certificate", cert)?,
            read("TLS key", key)?,
        )?;
        let reloading = ReloadingCert {
            cert_path: cert.to_path_buf(),
            key_path: key.to_path_buf(),
            provider,
            current: RwLock::new(Arc::new(loaded)),
        };
        let client_roots = client_ca
            .map(|path| {
                let pem = read("client CA", path)?;
                let mut roots = RootCertStore::empty();
                for c in certificates("client CA", path, &pem)? {
                    roots.add(c).map_err(|e| TlsError::ClientCa {
                        path: path.to_path_buf(),
                        reason: format!("{e}; it must hold the CA certificate(s) client certificates are signed by"),
                    })?;
                }
                Ok::<_, TlsError>((path.to_path_buf(), Arc::new(roots)))
            })
            .transpose()?;
        Ok(ServerTls {
            cert: Arc::new(reloading),
            client_roots,
        })
    }

    /// Whether client certificates are checked (mutual TLS).
    pub fn mutual(&self) -> bool {
        self.client_roots.is_some()
    }

    /// A rustls server configuration offering `alpn`; with `client_auth`, a client must
    /// present a certificate signed by the client CA.
    pub fn server_config(
        &self,
        client_auth: bool,
        alpn: &[&[u8]],
    ) -> Result<Arc<ServerConfig>, TlsError> {
        let provider = self.cert.provider.clone();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports TLS 1.2 and 1.3");
        let builder = match (&self.client_roots, client_auth) {
            (Some((path, roots)), true) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider)
                    .build()
                    .map_err(|e| TlsError::ClientCa {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                builder.with_client_cert_verifier(verifier)
            }
            _ => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(self.cert.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }

    /// Reads the certificate and key files again and, when they changed and are valid
    /// together, serves them to new connections. `Ok(true)` when a new certificate was
    /// installed; an error leaves the current one in place.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let cert_pem = read("TLS certificate", &self.cert.cert_path)?;
        let key_pem = read("TLS key", &self.cert.key_path)?;
        let current = self.cert.current();
        if cert_pem == current.cert_pem && key_pem == current.key_pem {
            return Ok(false);
        }
        let loaded = load(
            &self.cert.cert_path,
            &self.cert.key_path,
            &self.cert.provider,
            cert_pem,
            key_pem,
        )?;
        *self.cert.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(loaded);
        Ok(true)
    }

    /// The end-entity certificate now served (DER).
    pub fn served_certificate(&self) -> Option<CertificateDer<'static>> {
        self.cert.current().key.cert.first().cloned()
    }
}

/// The DNS names (subject alternative names) of a client certificate: the agent ids it
/// vouches for. Wildcard names vouch for none. Empty when the certificate has none or
/// cannot be parsed (rustls already verified it, so that does not happen in practice).
pub fn dns_names(cert: &CertificateDer<'_>) -> Vec<String> {
    match webpki::EndEntityCert::try_from(cert) {
        Ok(ee) => ee
            .valid_dns_names()
            .filter(|n| !n.starts_with('*'))
            .map(str::to_string)
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Whether a failed handshake was the client's certificate being missing or refused.
fn is_certificate_refusal(e: &io::Error) -> bool {
    matches!(
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented)
    )
}

/// A TLS connection over an accepted, guarded TCP connection.
pub type TlsConnection = TlsStream<Guarded<TcpStream>>;

/// Runs the TLS handshakes of the connections `listener::accept` gives concurrently (at
/// most [`MAX_PENDING_HANDSHAKES`], each within [`HANDSHAKE_TIMEOUT`]); finished ones
/// come out of the returned queue. `on_refused` is called for each client whose
/// certificate was missing or refused. Stops when `stop` turns true or the connections
/// end.
pub fn accept(
    what: &'static str,
    mut connections: mpsc::Receiver<(Guarded<TcpStream>, SocketAddr)>,
    config: Arc<ServerConfig>,
    on_refused: impl Fn() + Send + Sync + 'static,
    mut stop: watch::Receiver<bool>,
) -> (JoinHandle<()>, mpsc::Receiver<(TlsConnection, SocketAddr)>) {
    let (tx, rx) = mpsc::channel(ACCEPTED_QUEUE);
    let acceptor = TlsAcceptor::from(config);
    let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    let on_refused = Arc::new(on_refused);
    let task = tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                p = pending.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
                _ = async { stop.wait_for(|s| *s).await.is_ok() } => return,
            };
            let (tcp, peer) = tokio::select! {
                accepted = connections.recv() => match accepted {
                    Some(a) => a,
                    None => return,
                },
                _ = async { stop.wait_for(|s| *s).await.is_ok() } => return,
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let on_refused = on_refused.clone();
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send((tls, peer)).await;
                    }
                    Ok(Err(e)) if is_certificate_refusal(&e) => {
                        on_refused();
                        warn!(listener = what, %peer, error = %e, "refused a client certificate; the client must present one signed by tls_client_ca_file");
                    }
                    Ok(Err(e)) => {
                        debug!(listener = what, %peer, error = %e, "TLS handshake failed");
                    }
                    Err(_) => {
                        debug!(listener = what, %peer, "TLS handshake timed out");
                    }
                }
            });
        }
    });
    (task, rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn self_signed(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn bad_files_are_named_with_what_they_should_hold() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed("collector.example");
        let (_, other_key) = self_signed("other.example");
        let cert_path = write(dir.path(), "cert.pem", &cert);
        let key_path = write(dir.path(), "key.pem", &key);
        let garbage = write(dir.path(), "garbage.pem", "not pem at all\n");
        let wrong_key = write(dir.path(), "wrong-key.pem", &other_key);
        let missing = dir.path().join("missing.pem");
        for (cert, key, ca, needle) in [
            (&missing, &key_path, None, "missing.pem"),
            (&garbage, &key_path, None, "garbage.pem"),
            (&cert_path, &garbage, None, "garbage.pem"),
            (&cert_path, &cert_path, None, "PRIVATE KEY"),
            (&cert_path, &wrong_key, None, "wrong-key.pem"),
            (&cert_path, &key_path, Some(&garbage), "garbage.pem"),
            (&cert_path, &key_path, Some(&missing), "client CA"),
        ] {
            let err = ServerTls::from_files(cert, key, ca.map(|p| p.as_path()))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{needle}: {err}");
        }
        ServerTls::from_files(&cert_path, &key_path, Some(&cert_path)).unwrap();
    }

    #[test]
    fn a_changed_certificate_is_served_once_valid() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed("first.example");
        let cert_path = write(dir.path(), "cert.pem", &cert);
        let key_path = write(dir.path(), "key.pem", &key);
        let tls = ServerTls::from_files(&cert_path, &key_path, None).unwrap();
        let first = tls.served_certificate().unwrap();
        assert!(!tls.reload_if_changed().unwrap(), "nothing changed yet");

        // Half-way through a rotation the new certificate is there but not its key.
        let (cert2, key2) = self_signed("second.example");
        write(dir.path(), "cert.pem", &cert2);
        assert!(tls.reload_if_changed().is_err());
        assert_eq!(tls.served_certificate().unwrap(), first);

        write(dir.path(), "key.pem", &key2);
        assert!(tls.reload_if_changed().unwrap());
        let second = tls.served_certificate().unwrap();
        assert_ne!(second, first);
        assert_eq!(dns_names(&second), ["second.example"]);
    }

    #[test]
    fn wildcard_names_vouch_for_no_agent() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![
            "*.gpu.example".to_string(),
            "node-1.gpu.example".to_string(),
        ])
        .unwrap()
        .self_signed(&key)
        .unwrap();
        assert_eq!(dns_names(cert.der()), ["node-1.gpu.example"]);
    }
}
