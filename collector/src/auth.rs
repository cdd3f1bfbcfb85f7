//! Authentication of agents (gRPC) and scrapers (HTTP /metrics): a shared bearer
//! token, per-agent tokens, and client certificates; and which agent ids each admits.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use axum::http::HeaderValue;

use crate::metrics::SelfMetrics;
use crate::validate::RejectKind;

/// A shared secret read from a file. Compared in constant time.
#[derive(Clone)]
pub struct BearerToken(Arc<str>);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(..)")
    }
}

/// Tokens shorter than this are guessable; refuse them.
pub const MIN_TOKEN_BYTES: usize = 16;

impl BearerToken {
    /// Reads the token from a file; surrounding whitespace is ignored.
    pub fn from_file(path: &Path) -> Result<BearerToken, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read token file {}: {e}", path.display()))?;
        let token = text.trim();
        if !valid_token(token) {
            return Err(format!(
                "token file {} must hold one token of at least {MIN_TOKEN_BYTES} printable characters \
                 (e.g. `openssl rand -hex 32`)",
                path.display()
            ));
        }
        Ok(BearerToken(token.into()))
    }

    /// The token's bytes, to key the fleet page's cookie HMAC with.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// Whether an `authorization` header value carries this token.
    pub fn accepts(&self, header: Option<&HeaderValue>) -> bool {
        presented(header).is_some_and(|p| same(p, &self.0))
    }
}

/// The token of an `Authorization: Bearer <token>` header.
fn presented(header: Option<&HeaderValue>) -> Option<&str> {
    header
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
}

/// Compares two tokens in constant time for a given length.
fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    // Length is not secret; the contents are compared without an early exit.
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn valid_token(token: &str) -> bool {
    token.len() >= MIN_TOKEN_BYTES && !token.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Per-agent tokens (`agent_tokens_file`): each admits one agent id only.
#[derive(Clone)]
pub struct AgentTokens(Arc<[(String, Box<str>)]>);

impl std::fmt::Debug for AgentTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AgentTokens({} agents)", self.0.len())
    }
}

impl AgentTokens {
    /// Reads `<agent id> <token>` lines; blank lines and lines starting with `#` are
    /// skipped. An agent id may appear once, and a token once.
    pub fn from_file(path: &Path) -> Result<AgentTokens, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read agent tokens file {}: {e}", path.display()))?;
        let mut entries = Vec::new();
        let mut ids = HashSet::new();
        let mut tokens = HashSet::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = format!("agent tokens file {} line {}", path.display(), i + 1);
            let mut fields = line.split_whitespace();
            let (Some(id), Some(token), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(format!(
                    "{at}: expected `<agent id> <token>`, two fields separated by spaces"
                ));
            };
            if !crate::validate::is_agent_id(id) {
                return Err(format!(
                    "{at}: {id:?} is not an agent id (1 to 128 characters of A-Z a-z 0-9 . _ - :)"
                ));
            }
            if !valid_token(token) {
                return Err(format!(
                    "{at}: the token of {id} must be at least {MIN_TOKEN_BYTES} printable characters \
                     (e.g. `openssl rand -hex 32`)"
                ));
            }
            if !ids.insert(id.to_string()) {
                return Err(format!(
                    "{at}: agent {id} has a token already; give each agent one"
                ));
            }
            if !tokens.insert(token.to_string()) {
                return Err(format!(
                    "{at}: this token is already another agent's; each agent needs its own"
                ));
            }
            entries.push((id.to_string(), token.into()));
        }
        Ok(AgentTokens(entries.into()))
    }

    /// The agent whose token an `authorization` header carries. Every token is compared,
    /// each in constant time, so the time taken does not tell which one nearly matched.
    pub fn agent_for(&self, header: Option<&HeaderValue>) -> Option<&str> {
        let presented = presented(header)?;
        let mut found = None;
        for (id, token) in self.0.iter() {
            if same(presented, token) {
                found = Some(id.as_str());
            }
        }
        found
    }

    /// Whether `shared` is one of these tokens (it would admit any agent id instead).
    pub fn contains(&self, shared: &BearerToken) -> bool {
        self.0.iter().any(|(_, t)| same(t, &shared.0))
    }

    /// Number of agents with a token.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What an agent's stream was authenticated with, and so which agent ids it may claim
/// in its Hello. Carried from the gRPC interceptor to the ingest service as a request
/// extension.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentCredential {
    /// A per-agent token: admits this agent id only.
    pub token_agent: Option<String>,
    /// A verified client certificate: admits its DNS names only.
    pub certificate_names: Option<Vec<String>>,
}

impl AgentCredential {
    /// `Err` with what the credential admits when it does not admit `agent_id`.
    pub fn admits(&self, agent_id: &str) -> Result<(), String> {
        if let Some(token_agent) = &self.token_agent
            && token_agent != agent_id
        {
            return Err(format!(
                "agent id {agent_id:?} is not the one its token was issued to ({token_agent:?}): \
                 set agent_id to {token_agent:?}, or give this agent its own token in agent_tokens_file"
            ));
        }
        if let Some(names) = &self.certificate_names
            && !names.iter().any(|n| n.eq_ignore_ascii_case(agent_id))
        {
            return Err(if names.is_empty() {
                format!(
                    "agent id {agent_id:?}: the client certificate has no DNS name; issue it \
                     with the agent id as a DNS subject alternative name"
                )
            } else {
                format!(
                    "agent id {agent_id:?} is not a DNS name of its client certificate ({}): \
                     set agent_id to one of them, or issue the certificate for {agent_id:?}",
                    names.join(", ")
                )
            });
        }
        Ok(())
    }
}

/// The gRPC interceptor's checks: a bearer token (shared or per-agent) or a client
/// certificate verified during the TLS handshake. A refusal is counted as
/// `unauthenticated`.
#[derive(Debug, Clone)]
pub struct GrpcAuth {
    pub shared: Option<BearerToken>,
    pub agents: Option<AgentTokens>,
    pub metrics: SelfMetrics,
}

impl GrpcAuth {
    /// Admits or refuses a new stream; an admitted one carries its [`AgentCredential`].
    pub fn check(&self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let header = req
            .metadata()
            .get("authorization")
            .and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok());
        let certificate_names = req
            .peer_certs()
            .and_then(|certs| certs.first().map(crate::tls::dns_names));
        let shared = self
            .shared
            .as_ref()
            .is_some_and(|t| t.accepts(header.as_ref()));
        let token_agent = self
            .agents
            .as_ref()
            .and_then(|t| t.agent_for(header.as_ref()))
            .map(str::to_string);
        let tokens_in_use = self.shared.is_some() || self.agents.is_some();
        let token_ok = shared || token_agent.is_some();
        let refusal = if tokens_in_use && header.is_some() && !token_ok {
            Some("wrong bearer token: check auth_token_file in the agent's config")
        } else if tokens_in_use && !token_ok && certificate_names.is_none() {
            Some(
                "missing bearer token: set auth_token_file in the agent's config \
                 (or use a client certificate)",
            )
        } else {
            None
        };
        if let Some(message) = refusal {
            self.metrics.reject(RejectKind::Unauthenticated);
            return Err(tonic::Status::unauthenticated(message));
        }
        req.extensions_mut().insert(AgentCredential {
            token_agent,
            certificate_names,
        });
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_the_exact_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "0123456789abcdef0123\n").unwrap();
        let t = BearerToken::from_file(&path).unwrap();
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        assert!(t.accepts(Some(&h("Bearer 0123456789abcdef0123"))));
        assert!(!t.accepts(Some(&h("Bearer 0123456789abcdef0124"))));
        assert!(!t.accepts(Some(&h("0123456789abcdef0123"))));
        assert!(!t.accepts(None));
    }

    #[test]
    fn an_agent_token_names_its_agent_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(
            &path,
            "# agent token\nnode-a 0123456789abcdef0123\n\n  node-b   fedcba9876543210fedc  \n",
        )
        .unwrap();
        let t = AgentTokens::from_file(&path).unwrap();
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(
            t.agent_for(Some(&h("Bearer 0123456789abcdef0123"))),
            Some("node-a")
        );
        assert_eq!(
            t.agent_for(Some(&h("Bearer fedcba9876543210fedc"))),
            Some("node-b")
        );
        assert_eq!(t.agent_for(Some(&h("Bearer fedcba9876543210fedd"))), None);
        assert_eq!(t.agent_for(None), None);
    }

    #[test]
    fn bad_agent_token_files_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        for (text, needle) in [
            ("node-a\n", "line 1: expected `<agent id> <token>`"),
            ("node-a 0123456789abcdef0123 extra\n", "line 1: expected"),
            ("# c\nnode-a short\n", "line 2: the token of node-a"),
            (
                "bad/id 0123456789abcdef0123\n",
                "\"bad/id\" is not an agent id",
            ),
            (
                "node-a 0123456789abcdef0123\nnode-a 0123456789abcdef0124\n",
                "line 2: agent node-a has a token already",
            ),
            (
                "node-a 0123456789abcdef0123\nnode-b 0123456789abcdef0123\n",
                "line 2: this token is already another agent's",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = AgentTokens::from_file(&path).unwrap_err();
            assert!(err.contains(needle), "{text:?}: {err}");
            assert!(err.contains(&path.display().to_string()), "{err}");
        }
        let err = AgentTokens::from_file(&dir.path().join("missing")).unwrap_err();
        assert!(err.contains("cannot read agent tokens file"), "{err}");
    }

    #[test]
    fn a_credential_admits_only_its_own_agent_ids() {
        assert!(AgentCredential::default().admits("anything").is_ok());
        let token = AgentCredential {
            token_agent: Some("node-a".into()),
            certificate_names: None,
        };
        assert!(token.admits("node-a").is_ok());
        let err = token.admits("node-b").unwrap_err();
        assert!(err.contains("\"node-a\""), "{err}");
        let cert = AgentCredential {
            token_agent: None,
            certificate_names: Some(vec!["Node-A.example".into(), "node-a".into()]),
        };
        assert!(cert.admits("node-a.example").is_ok());
        assert!(cert.admits("node-a").is_ok());
        let err = cert.admits("node-b").unwrap_err();
        assert!(err.contains("Node-A.example, node-a"), "{err}");
        let nameless = AgentCredential {
            token_agent: None,
            certificate_names: Some(vec![]),
        };
        assert!(
            nameless
                .admits("node-a")
                .unwrap_err()
                .contains("no DNS name")
        );
    }

    #[test]
    fn a_short_token_is_refused_with_advice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "secret").unwrap();
        let err = BearerToken::from_file(&path).unwrap_err();
        assert!(err.contains("openssl rand"), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
    }
}
