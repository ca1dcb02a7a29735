//! The admin key check for `/v1/admin/*`: `Authorization: Bearer <admin key>`.
//!
//! Invariant: the comparison takes the same time whatever the presented key is —
//! both sides are hashed with SHA-256 and the digests compared in constant time,
//! so neither the content nor the length of the configured key leaks. An empty
//! configured key matches nothing. Called by the HTTP layer on every admin request.

use ring::digest;

use crate::secret::{Secret, constant_time_eq};

/// Whether `authorization_header` (the raw header value, if any) is
/// `Bearer <expected>`; the scheme is case-insensitive.
pub fn admin_key_matches(expected: &Secret<String>, authorization_header: Option<&str>) -> bool {
    let Some(header) = authorization_header else {
        return false;
    };
    let Some((scheme, presented)) = header.trim().split_once(' ') else {
        return false;
    };
    let presented = presented.trim_start();
    if !scheme.eq_ignore_ascii_case("bearer") || presented.is_empty() {
        return false;
    }
    let expected = expected.expose();
    let want = digest::digest(&digest::SHA256, expected.as_bytes());
    let got = digest::digest(&digest::SHA256, presented.as_bytes());
    // Evaluate the comparison even for an empty configured key, so timing is the same.
    let equal = constant_time_eq(want.as_ref(), got.as_ref());
    equal && !expected.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Secret<String> {
        Secret::new("s3cr3t-admin-key".to_owned())
    }

    #[test]
    fn accepts_the_bearer_key_with_any_scheme_case() {
        assert!(admin_key_matches(&key(), Some("Bearer s3cr3t-admin-key")));
        assert!(admin_key_matches(&key(), Some("bearer s3cr3t-admin-key")));
        assert!(admin_key_matches(&key(), Some("BEARER  s3cr3t-admin-key ")));
    }

    #[test]
    fn refuses_everything_else() {
        assert!(!admin_key_matches(&key(), None));
        assert!(!admin_key_matches(&key(), Some("")));
        assert!(!admin_key_matches(&key(), Some("s3cr3t-admin-key")));
        assert!(!admin_key_matches(&key(), Some("Basic s3cr3t-admin-key")));
        assert!(!admin_key_matches(&key(), Some("Bearer s3cr3t-admin-ke")));
        assert!(!admin_key_matches(&key(), Some("Bearer s3cr3t-admin-key2")));
        assert!(!admin_key_matches(&key(), Some("Bearer ")));
        assert!(!admin_key_matches(&key(), Some("Bearers3cr3t-admin-key")));
    }

    #[test]
    fn an_empty_configured_key_matches_nothing() {
        let empty = Secret::new(String::new());
        assert!(!admin_key_matches(&empty, Some("Bearer ")));
        assert!(!admin_key_matches(&empty, Some("Bearer x")));
    }
}
