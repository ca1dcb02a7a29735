//! TURN credentials in the coturn REST scheme (`use-auth-secret`): a username
//! `<expiry-unix>:<user_uid>` and a password `base64(HMAC-SHA1(secret, username))`
//! that a coturn configured with the same `static-auth-secret` accepts until the
//! expiry.
//!
//! Invariant: the credential is born inside a [`Secret`], so it never reaches a
//! log line. Called by the HTTP layer when it builds `ice_servers`.

use base64::Engine as _;
use ring::hmac;

use super::rfc3339_utc;
use crate::ids::UserUid;
use crate::secret::Secret;

/// Ephemeral TURN credentials for one user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TurnCredential {
    /// `<expiry-unix>:<user_uid>`.
    pub username: String,
    /// `base64(HMAC-SHA1(turn_secret, username))`.
    pub credential: Secret<String>,
    /// The expiry as RFC 3339 UTC.
    pub expires_at: String,
}

/// Credentials for `user`, valid for `ttl_s` seconds from `now_unix`.
pub fn turn_credentials(
    secret: &Secret<Vec<u8>>,
    user: &UserUid,
    now_unix: u64,
    ttl_s: u64,
) -> TurnCredential {
    let expiry = now_unix.saturating_add(ttl_s);
    let username = format!("{expiry}:{}", user.as_str());
    // SHA-1 is what the coturn REST scheme specifies; HMAC-SHA1 is still sound.
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.expose());
    let tag = hmac::sign(&key, username.as_bytes());
    TurnCredential {
        credential: Secret::new(base64::engine::general_purpose::STANDARD.encode(tag.as_ref())),
        expires_at: rfc3339_utc(expiry),
        username,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_an_independently_computed_vector() {
        let c = turn_credentials(
            &Secret::new(b"secret".to_vec()),
            &UserUid::parse("u123").unwrap(),
            1_767_225_000,
            600,
        );
        assert_eq!(c.username, "1767225600:u123");
        // python3 -c 'import hmac,hashlib,base64;print(base64.b64encode(hmac.new(b"secret", b"1767225600:u123", hashlib.sha1).digest()).decode())'
        assert_eq!(c.credential.expose(), "TjzLAQ+9vfzHi07uCTNcsEb9Cyk=");
        assert_eq!(c.expires_at, "2026-01-01T00:00:00Z");
    }

    #[test]
    fn credential_is_redacted_in_debug() {
        let c = turn_credentials(
            &Secret::new(b"secret".to_vec()),
            &UserUid::parse("u123").unwrap(),
            0,
            60,
        );
        let dbg = format!("{c:?}");
        assert!(dbg.contains("[redacted]"));
        assert!(!dbg.contains(c.credential.expose().as_str()));
    }
}
