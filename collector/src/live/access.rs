//! Who may see the fleet page. The same as /report: the HTTP bearer token, or the
//! client certificate that mutual TLS already checked. A browser cannot send the
//! token with a page load or with `EventSource`, so a page signs in once (a form
//! posting the token) and gets a cookie; the cookie holds an HMAC of the token, never
//! the token itself, and nothing puts the token in a URL.

use axum::http::{HeaderMap, HeaderValue, header};
use ring::hmac;

/// The cookie's name.
pub const COOKIE: &str = "gpulse_fleet";
/// What the cookie's HMAC signs: changing it signs every page out.
const COOKIE_CONTEXT: &[u8] = b"gpulse fleet page cookie v1";
/// A signed-in page stays signed in this long (browser side); a new token signs it out
/// at once, as the cookie no longer verifies.
pub const COOKIE_MAX_AGE_SECONDS: u64 = 12 * 3600;

/// The fleet page's check.
#[derive(Clone)]
pub struct Access {
    /// `None`: no token is asked for (loopback, or mutual TLS checked a certificate).
    key: Option<(crate::auth::BearerToken, hmac::Key)>,
    /// The listener serves TLS: the cookie is sent over TLS only.
    secure: bool,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("token", &self.key.is_some())
            .field("secure", &self.secure)
            .finish()
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    NoCredential,
    WrongToken,
}

impl Access {
    pub fn new(token: Option<crate::auth::BearerToken>, secure: bool) -> Access {
        Access {
            key: token.map(|t| {
                let key = hmac::Key::new(hmac::HMAC_SHA256, t.as_bytes());
                (t, key)
            }),
            secure,
        }
    }

    /// Whether a token is asked for at all.
    pub fn required(&self) -> bool {
        self.key.is_some()
    }

    fn cookie_value(key: &hmac::Key) -> String {
        let tag = hmac::sign(key, COOKIE_CONTEXT);
        tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Whether a token typed into the sign-in form is the one configured.
    pub fn token_is(&self, typed: &str) -> bool {
        match &self.key {
            None => true,
            Some((token, _)) => {
                let value = format!("Bearer {typed}");
                HeaderValue::from_str(&value).is_ok_and(|h| token.accepts(Some(&h)))
            }
        }
    }

    /// Checks a request: the bearer header, else the cookie.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), Refused> {
        let Some((token, key)) = &self.key else {
            return Ok(());
        };
        if token.accepts(headers.get(header::AUTHORIZATION)) {
            return Ok(());
        }
        let cookie = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|h| h.to_str().ok())
            .flat_map(|h| h.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .find(|(name, _)| *name == COOKIE)
            .map(|(_, value)| value);
        match cookie {
            None if headers.contains_key(header::AUTHORIZATION) => Err(Refused::WrongToken),
            None => Err(Refused::NoCredential),
            Some(value) => {
                let tag = decode_hex(value).ok_or(Refused::WrongToken)?;
                hmac::verify(key, COOKIE_CONTEXT, &tag).map_err(|_| Refused::WrongToken)
            }
        }
    }

    /// The `Set-Cookie` value that signs a page in; `None` when no token is asked for.
    pub fn set_cookie(&self) -> Option<HeaderValue> {
        let (_, key) = self.key.as_ref()?;
        let secure = if self.secure { "; Secure" } else { "" };
        HeaderValue::from_str(&format!(
            "{COOKIE}={}; Path=/; Max-Age={COOKIE_MAX_AGE_SECONDS}; HttpOnly; SameSite=Strict{secure}",
            Self::cookie_value(key)
        ))
        .ok()
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(text: &str) -> crate::auth::BearerToken {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("token");
        std::fs::write(&path, text).expect("written");
        crate::auth::BearerToken::from_file(&path).expect("a valid token")
    }

    fn with(name: header::HeaderName, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).expect("a header value"));
        h
    }

    #[test]
    fn the_cookie_admits_and_does_not_carry_the_token() {
        let secret = "0123456789abcdef-secret";
        let access = Access::new(Some(token(secret)), true);
        let set = access.set_cookie().expect("a cookie");
        let set = set.to_str().expect("ascii");
        assert!(!set.contains(secret), "{set}");
        assert!(
            set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Secure")
        );
        let pair = set.split(';').next().expect("name=value");
        assert_eq!(
            access.check(&with(header::COOKIE, &format!("a=b; {pair}"))),
            Ok(())
        );
        assert_eq!(
            access.check(&with(header::AUTHORIZATION, &format!("Bearer {secret}"))),
            Ok(())
        );
        assert_eq!(access.check(&HeaderMap::new()), Err(Refused::NoCredential));
        assert_eq!(
            access.check(&with(header::AUTHORIZATION, "Bearer not-the-token-at-all")),
            Err(Refused::WrongToken)
        );
        assert!(access.token_is(secret) && !access.token_is("0123456789abcdef-secreT"));
    }

    #[test]
    fn a_cookie_from_another_token_or_a_forged_one_is_refused() {
        let ours = Access::new(Some(token("0123456789abcdef-ours")), false);
        let theirs = Access::new(Some(token("0123456789abcdef-theirs")), false);
        let cookie = theirs.set_cookie().expect("a cookie");
        let pair = cookie
            .to_str()
            .expect("ascii")
            .split(';')
            .next()
            .expect("pair")
            .to_string();
        assert!(!pair.is_empty() && !cookie.to_str().expect("ascii").contains("Secure"));
        for forged in [
            pair,
            format!("{COOKIE}=zz"),
            format!("{COOKIE}="),
            format!("{COOKIE}=abc"),
        ] {
            assert_eq!(
                ours.check(&with(header::COOKIE, &forged)),
                Err(Refused::WrongToken),
                "{forged}"
            );
        }
    }

    #[test]
    fn without_a_token_everything_is_let_in_and_no_cookie_is_set() {
        let open = Access::new(None, false);
        assert!(!open.required());
        assert_eq!(open.check(&HeaderMap::new()), Ok(()));
        assert!(open.set_cookie().is_none());
    }
}
