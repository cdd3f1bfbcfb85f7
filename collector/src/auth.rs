//! Bearer-token authentication for agents (gRPC) and scrapers (HTTP /metrics).

use std::path::Path;
use std::sync::Arc;

use axum::http::HeaderValue;

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
        if token.len() < MIN_TOKEN_BYTES
            || token.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(format!(
                "token file {} must hold one token of at least {MIN_TOKEN_BYTES} printable characters \
                 (e.g. `openssl rand -hex 32`)",
                path.display()
            ));
        }
        Ok(BearerToken(token.into()))
    }

    /// Whether an `authorization` header value carries this token.
    pub fn accepts(&self, header: Option<&HeaderValue>) -> bool {
        let Some(presented) = header
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
        else {
            return false;
        };
        let (a, b) = (presented.as_bytes(), self.0.as_bytes());
        // Length is not secret; the contents are compared without an early exit.
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
    fn a_short_token_is_refused_with_advice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "secret").unwrap();
        let err = BearerToken::from_file(&path).unwrap_err();
        assert!(err.contains("openssl rand"), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
    }
}
