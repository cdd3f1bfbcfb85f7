//! TLS to an `https://` collector: its certificate verified against the system's CAs
//! or `tls_ca_file`, and a client certificate for mutual TLS. The files are read at
//! start-up, to fail early, and again for every connection, so renewed certificates
//! are used from the next reconnection on.

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::config::AgentConfig;

/// A TLS file that cannot be used, naming the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} file {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
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
    #[error("cannot use TLS towards {collector}: {reason}")]
    Setup { collector: String, reason: String },
}

/// Where the agent's TLS settings come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub server_name: Option<String>,
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn certificates(
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

impl ClientTls {
    /// The TLS settings of an `https://` collector; `None` for `http://`.
    pub fn from_config(config: &AgentConfig) -> Option<ClientTls> {
        config.collector.starts_with("https://").then(|| ClientTls {
            ca_file: config.tls_ca_file.clone(),
            cert_file: config.tls_cert_file.clone(),
            key_file: config.tls_key_file.clone(),
            server_name: config.tls_server_name.clone(),
        })
    }

    /// Reads and checks the files.
    pub fn load(&self) -> Result<ClientTlsConfig, TlsError> {
        let mut tls = ClientTlsConfig::new();
        tls = match &self.ca_file {
            Some(path) => {
                let pem = read("CA", path)?;
                certificates("CA", path, &pem)?;
                tls.ca_certificate(Certificate::from_pem(pem))
            }
            None => tls.with_native_roots(),
        };
        if let (Some(cert_path), Some(key_path)) = (&self.cert_file, &self.key_file) {
            let cert = read("TLS certificate", cert_path)?;
            let key = read("TLS key", key_path)?;
            let chain = certificates("TLS certificate", cert_path, &cert)?;
            let der = PrivateKeyDer::from_pem_slice(&key).map_err(|e| TlsError::Pem {
                what: "TLS key",
                path: key_path.to_path_buf(),
                expected: "PRIVATE KEY",
                reason: e.to_string(),
            })?;
            // The same check the handshake would make, with a message that names the files.
            let provider = rustls::crypto::ring::default_provider();
            rustls::sign::CertifiedKey::from_der(chain, der, &provider).map_err(|e| {
                TlsError::Key {
                    cert: cert_path.clone(),
                    key: key_path.clone(),
                    reason: e.to_string(),
                }
            })?;
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        if let Some(name) = &self.server_name {
            tls = tls.domain_name(name.clone());
        }
        Ok(tls)
    }
}

/// The endpoint of `collector`, with TLS when `tls` is given.
pub fn endpoint(collector: &str, tls: Option<&ClientTls>) -> Result<Endpoint, TlsError> {
    let setup = |reason: String| TlsError::Setup {
        collector: collector.to_string(),
        reason,
    };
    let endpoint =
        Endpoint::from_shared(collector.to_string()).map_err(|e| setup(e.to_string()))?;
    match tls {
        None => Ok(endpoint),
        Some(tls) => endpoint
            .tls_config(tls.load()?)
            .map_err(|e| setup(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn bad_files_are_named_with_what_they_should_hold() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["node-1".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let other = rcgen::KeyPair::generate().unwrap();
        let cert_path = write(dir.path(), "agent.crt", &cert.pem());
        let key_path = write(dir.path(), "agent.key", &key.serialize_pem());
        let wrong_key = write(dir.path(), "wrong.key", &other.serialize_pem());
        let garbage = write(dir.path(), "garbage.pem", "garbage\n");
        let missing = dir.path().join("missing.pem");
        let tls = |ca: Option<&PathBuf>, cert: &PathBuf, key: &PathBuf| ClientTls {
            ca_file: ca.cloned(),
            cert_file: Some(cert.clone()),
            key_file: Some(key.clone()),
            server_name: None,
        };
        for (t, needle) in [
            (tls(Some(&missing), &cert_path, &key_path), "CA file"),
            (tls(Some(&garbage), &cert_path, &key_path), "garbage.pem"),
            (tls(Some(&cert_path), &missing, &key_path), "missing.pem"),
            (tls(Some(&cert_path), &cert_path, &garbage), "PRIVATE KEY"),
            (tls(Some(&cert_path), &cert_path, &wrong_key), "wrong.key"),
        ] {
            let err = t.load().unwrap_err().to_string();
            assert!(err.contains(needle), "{needle}: {err}");
        }
        tls(Some(&cert_path), &cert_path, &key_path).load().unwrap();
    }
}
