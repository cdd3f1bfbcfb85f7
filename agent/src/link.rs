//! Why the agent is not connected to a collector, as a bounded kind: the log line says
//! which it is and what to check, and `gpulse_agent_connection_error{reason}` says the
//! same to Prometheus.

use std::error::Error as StdError;

/// Why an attempt to reach the collector failed, or why an open stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkError {
    /// The collector's host name does not resolve.
    Dns,
    /// Nothing listens at the address (TCP connection refused or reset at once).
    Refused,
    /// No answer within `connect_timeout`.
    Timeout,
    /// An `https://` URL, but the peer does not speak TLS.
    TlsToPlaintext,
    /// An `http://` URL, but the peer serves TLS.
    PlaintextToTls,
    /// The collector's certificate was refused (unknown CA, expired, wrong name).
    Certificate,
    /// The peer answers HTTP but is not a gRPC collector (the collector's HTTP port).
    NotGrpc,
    /// The collector wants a token or a client certificate this agent did not give.
    Unauthenticated,
    /// The collector refused this agent's Hello (bad id, credential for another id).
    Rejected,
    /// An acknowledged stream ended (collector restarted, network dropped).
    StreamLost,
    /// Anything else; the log line carries the error.
    Other,
}

impl LinkError {
    /// Every kind, for pre-registering the label values.
    pub const ALL: [LinkError; 11] = [
        LinkError::Dns,
        LinkError::Refused,
        LinkError::Timeout,
        LinkError::TlsToPlaintext,
        LinkError::PlaintextToTls,
        LinkError::Certificate,
        LinkError::NotGrpc,
        LinkError::Unauthenticated,
        LinkError::Rejected,
        LinkError::StreamLost,
        LinkError::Other,
    ];

    /// The `reason` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkError::Dns => "dns",
            LinkError::Refused => "connection_refused",
            LinkError::Timeout => "timeout",
            LinkError::TlsToPlaintext => "tls_to_plaintext",
            LinkError::PlaintextToTls => "plaintext_to_tls",
            LinkError::Certificate => "certificate",
            LinkError::NotGrpc => "not_grpc",
            LinkError::Unauthenticated => "unauthenticated",
            LinkError::Rejected => "rejected",
            LinkError::StreamLost => "stream_lost",
            LinkError::Other => "other",
        }
    }

    /// What it means and what to check, for the log line.
    pub fn advice(self) -> &'static str {
        match self {
            LinkError::Dns => {
                "the collector's host name does not resolve: check the host in the collector URL and this host's DNS"
            }
            LinkError::Refused => {
                "connection refused, nothing listens there: check that the collector runs, the port (agents use the gRPC port, 7431 by default) and firewalls"
            }
            LinkError::Timeout => {
                "no answer within connect_timeout: check the address, routes and firewalls between this host and the collector"
            }
            LinkError::TlsToPlaintext => {
                "the URL is https:// but the collector does not speak TLS there: use http://, or give the collector a certificate (tls_cert_file)"
            }
            LinkError::PlaintextToTls => {
                "the collector serves TLS there: use an https:// collector URL (and tls_ca_file for a private CA)"
            }
            LinkError::Certificate => {
                "the collector's certificate was refused: check tls_ca_file, tls_server_name and the certificate's names and dates"
            }
            LinkError::NotGrpc => {
                "the peer answers HTTP but not gRPC: this looks like the collector's HTTP port; agents use the gRPC port (7431 by default)"
            }
            LinkError::Unauthenticated => {
                "the collector wants a token or a client certificate: check auth_token_file (--auth-token-file) or tls_cert_file, and that they match the collector's"
            }
            LinkError::Rejected => {
                "the collector refused this agent: check the agent id and that its credential admits it"
            }
            LinkError::StreamLost => "the stream to the collector ended",
            LinkError::Other => "see the error",
        }
    }

    /// Classifies a failed connection by walking the error's causes.
    pub fn of_transport(error: &(dyn StdError + 'static), https: bool) -> LinkError {
        let mut cause: Option<&(dyn StdError + 'static)> = Some(error);
        let mut text = String::new();
        while let Some(e) = cause {
            if let Some(kind) = of_rustls(e) {
                return kind;
            }
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                if let Some(kind) = io.get_ref().and_then(|inner| of_rustls(inner)) {
                    return kind;
                }
                match io.kind() {
                    std::io::ErrorKind::ConnectionRefused => return LinkError::Refused,
                    std::io::ErrorKind::TimedOut => return LinkError::Timeout,
                    _ => {}
                }
            }
            text.push_str(&e.to_string().to_ascii_lowercase());
            text.push('\n');
            cause = e.source();
        }
        if text.contains("dns error") || text.contains("failed to lookup address") {
            LinkError::Dns
        } else if text.contains("timed out") {
            LinkError::Timeout
        } else if text.contains("connection refused") {
            LinkError::Refused
        } else if !https
            && (text.contains("connection reset")
                || text.contains("frame with invalid size")
                || text.contains("connection closed")
                || text.contains("protocol error")
                || text.contains("broken pipe"))
        {
            // A TLS listener answers the HTTP/2 preface with a TLS alert or closes.
            LinkError::PlaintextToTls
        } else {
            LinkError::Other
        }
    }

    /// Classifies a gRPC status that refused or ended a stream.
    pub fn of_status(status: &tonic::Status, https: bool, acknowledged: bool) -> LinkError {
        match status.code() {
            tonic::Code::Unauthenticated => return LinkError::Unauthenticated,
            tonic::Code::PermissionDenied
            | tonic::Code::InvalidArgument
            | tonic::Code::AlreadyExists => return LinkError::Rejected,
            _ => {}
        }
        // tonic maps a plain HTTP answer (no grpc-status) to a code and says so.
        if status.message().contains("grpc-status header missing") {
            return LinkError::NotGrpc;
        }
        if let Some(source) = status.source() {
            let kind = LinkError::of_transport(source, https);
            if kind != LinkError::Other {
                return kind;
            }
        }
        if acknowledged {
            LinkError::StreamLost
        } else {
            LinkError::Other
        }
    }
}

fn of_rustls(e: &(dyn StdError + 'static)) -> Option<LinkError> {
    let tls = e.downcast_ref::<rustls::Error>()?;
    Some(match tls {
        rustls::Error::InvalidCertificate(_)
        | rustls::Error::NoCertificatesPresented
        | rustls::Error::UnsupportedNameType => LinkError::Certificate,
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            LinkError::TlsToPlaintext
        }
        rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired)
        | rustls::Error::AlertReceived(rustls::AlertDescription::BadCertificate)
        | rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA) => {
            LinkError::Unauthenticated
        }
        _ => LinkError::Other,
    })
}

/// The causes of an error, joined, so a log line shows more than "transport error".
pub fn chain(error: &(dyn StdError + 'static)) -> String {
    let mut out = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = e.source();
    }
    out
}
