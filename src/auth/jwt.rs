//! The JWT plumbing shared by session tokens and join tickets: signature
//! verification through `jsonwebtoken` with all of its own claim checks switched off
//! (it would read the system clock), NumericDate parsing, and the role bounds.
//!
//! Invariant: [`decode`] refuses a token over [`MAX_TOKEN_LEN`] before decoding
//! anything, accepts only the one algorithm it is given (so `alg: none` and
//! algorithm-confusion tokens fail), and deserializes claims only after the
//! signature has been verified. The callers check `exp`/`nbf`/`iat`/`aud`/`iss`
//! themselves against the time they are given.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use super::MAX_TOKEN_LEN;

/// Most roles a token or ticket may carry.
pub(super) const MAX_ROLES: usize = 64;

/// Longest role name, in bytes (roles use the id alphabet).
pub(super) const MAX_ROLE_LEN: usize = 64;

/// Why [`decode`] refused a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DecodeFailure {
    /// Longer than [`MAX_TOKEN_LEN`].
    TooLarge,
    /// Not three base64url parts, a header or payload that is not the expected
    /// JSON, or an unknown `alg` (including `none`).
    Malformed,
    /// The signature does not verify, or the token names another algorithm than
    /// the configured one.
    BadSignature,
}

/// A `Validation` that only checks the signature and the algorithm: the time,
/// audience and issuer checks are ours, made against the time we are given.
pub(super) fn signature_only_validation(alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.required_spec_claims.clear();
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v.leeway = 0;
    v
}

/// Verifies the signature of `token` and deserializes its claims.
pub(super) fn decode<T: DeserializeOwned>(
    token: &str,
    key: &DecodingKey,
    validation: &Validation,
) -> Result<T, DecodeFailure> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(DecodeFailure::TooLarge);
    }
    match jsonwebtoken::decode::<T>(token, key, validation) {
        Ok(data) => Ok(data.claims),
        Err(e) => Err(match e.kind() {
            ErrorKind::InvalidSignature
            | ErrorKind::InvalidAlgorithm
            | ErrorKind::Crypto(_)
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidRsaKey(_) => DecodeFailure::BadSignature,
            _ => DecodeFailure::Malformed,
        }),
    }
}

/// Deserializes an optional NumericDate (RFC 7519 §2): a non-negative number of
/// seconds. A fractional value is truncated to whole seconds; a negative or
/// non-finite one is refused.
pub(super) fn numeric_date<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    if let Some(v) = n.as_u64() {
        return Ok(Some(v));
    }
    match n.as_f64() {
        // `as` saturates at u64::MAX for huge values, which is the right reading
        // of "expires in the far future".
        Some(f) if f.is_finite() && f >= 0.0 => Ok(Some(f as u64)),
        _ => Err(serde::de::Error::custom(
            "a NumericDate must be a non-negative number",
        )),
    }
}

/// Checks a role list: at most [`MAX_ROLES`] entries, each 1..=[`MAX_ROLE_LEN`]
/// bytes of the id alphabet.
pub(super) fn roles_are_valid(roles: &[String]) -> bool {
    roles.len() <= MAX_ROLES
        && roles
            .iter()
            .all(|r| crate::ids::check_id(r, MAX_ROLE_LEN).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Dates {
        #[serde(default, deserialize_with = "numeric_date")]
        exp: Option<u64>,
    }

    fn exp(json: &str) -> Result<Option<u64>, serde_json::Error> {
        serde_json::from_str::<Dates>(json).map(|d| d.exp)
    }

    #[test]
    fn numeric_dates_accept_integers_and_fractions_only_when_non_negative() {
        assert_eq!(exp(r#"{"exp": 1767225600}"#).unwrap(), Some(1767225600));
        assert_eq!(exp(r#"{"exp": 1767225600.9}"#).unwrap(), Some(1767225600));
        assert_eq!(exp(r#"{}"#).unwrap(), None);
        assert_eq!(exp(r#"{"exp": null}"#).unwrap(), None);
        assert!(exp(r#"{"exp": -1}"#).is_err());
        assert!(exp(r#"{"exp": "1767225600"}"#).is_err());
    }

    #[test]
    fn roles_are_bounded_and_use_the_id_alphabet() {
        assert!(roles_are_valid(&["moderator".into(), "a.b:c-d_e".into()]));
        assert!(roles_are_valid(&[]));
        assert!(!roles_are_valid(&["has space".into()]));
        assert!(!roles_are_valid(&["".into()]));
        assert!(!roles_are_valid(&["r".repeat(MAX_ROLE_LEN + 1)]));
        assert!(roles_are_valid(&vec!["r".to_string(); MAX_ROLES]));
        assert!(!roles_are_valid(&vec!["r".to_string(); MAX_ROLES + 1]));
    }

    #[test]
    fn oversized_tokens_are_refused_before_decoding() {
        let key = DecodingKey::from_secret(b"k");
        let token = "a".repeat(MAX_TOKEN_LEN + 1);
        let r =
            decode::<serde_json::Value>(&token, &key, &signature_only_validation(Algorithm::HS256));
        assert_eq!(r.unwrap_err(), DecodeFailure::TooLarge);
    }
}
