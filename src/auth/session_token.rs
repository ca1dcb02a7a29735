//! Session tokens: JWTs minted by the operator's identity service (HS256, ES256,
//! EdDSA or RS256), verified here into [`SessionClaims`]; plus the HS256 minting
//! used by dev mode.
//!
//! Invariants: the verifier accepts exactly the configured algorithm; `exp` is
//! required, and `exp`, `nbf` and `iat` are checked against the caller's time with
//! [`CLOCK_SKEW_S`]; `aud`/`iss` are checked when configured (a token's `aud` is
//! ignored when no audience is configured). Claims are bounded: the token is at most
//! [`MAX_TOKEN_LEN`] bytes, at most [`MAX_CHANNEL_ENTRIES`] channel entries and 64
//! roles (id alphabet, ≤ 64 chars). Unknown permission names are ignored so an
//! identity service may grant permissions a newer server understands.
//!
//! Called by the HTTP layer on every session-authenticated endpoint, and by the
//! dev-token endpoint and CLI.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::jwt::{self, DecodeFailure};
use super::{CLOCK_SKEW_S, MAX_TOKEN_LEN, MIN_HS256_KEY_LEN, Permission, Permissions};
use crate::ids::{ChannelId, UserUid};
use crate::secret::Secret;

/// Most entries accepted in a token's `rtc.channels`. (Today the token length
/// bound already keeps it under ~870; this bound holds whatever that one becomes.)
pub const MAX_CHANNEL_ENTRIES: usize = 1024;

/// The signature algorithm session tokens are verified with (one per server).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenAlgorithm {
    /// HMAC-SHA256 with a shared secret.
    #[serde(rename = "HS256")]
    Hs256,
    /// ECDSA P-256 with SHA-256.
    #[serde(rename = "ES256")]
    Es256,
    /// Ed25519.
    #[serde(rename = "EdDSA")]
    EdDsa,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    #[serde(rename = "RS256")]
    Rs256,
}

impl TokenAlgorithm {
    /// The JOSE name (`HS256`, `ES256`, `EdDSA`, `RS256`).
    pub fn as_str(self) -> &'static str {
        match self {
            TokenAlgorithm::Hs256 => "HS256",
            TokenAlgorithm::Es256 => "ES256",
            TokenAlgorithm::EdDsa => "EdDSA",
            TokenAlgorithm::Rs256 => "RS256",
        }
    }

    fn jwt(self) -> Algorithm {
        match self {
            TokenAlgorithm::Hs256 => Algorithm::HS256,
            TokenAlgorithm::Es256 => Algorithm::ES256,
            TokenAlgorithm::EdDsa => Algorithm::EdDSA,
            TokenAlgorithm::Rs256 => Algorithm::RS256,
        }
    }
}

impl fmt::Display for TokenAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How session tokens are verified (from the config).
#[derive(Clone, Debug)]
pub struct SessionTokenSettings {
    /// The one accepted algorithm.
    pub algorithm: TokenAlgorithm,
    /// The shared secret, for HS256 only (at least [`MIN_HS256_KEY_LEN`] bytes).
    pub hs256_secret: Option<Secret<Vec<u8>>>,
    /// The identity service's public key (`-----BEGIN PUBLIC KEY-----`, or
    /// `RSA PUBLIC KEY` for RS256), for ES256, EdDSA and RS256 only.
    pub public_key_pem: Option<String>,
    /// When set, a token's `aud` must be or contain this value.
    pub audience: Option<String>,
    /// When set, a token's `iss` must equal this value.
    pub issuer: Option<String>,
}

/// Why the session token settings cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthConfigError {
    /// HS256 is configured but no secret is.
    MissingSecret,
    /// The HS256 secret is shorter than [`MIN_HS256_KEY_LEN`] bytes (its length).
    SecretTooShort(usize),
    /// An asymmetric algorithm is configured without a public key.
    MissingPublicKey(TokenAlgorithm),
    /// A key of the wrong kind is also configured (a secret with an asymmetric
    /// algorithm, or a public key with HS256): refused so the operator learns which
    /// one is in force.
    UnusedKey(TokenAlgorithm),
    /// The public key PEM cannot be used with the algorithm (why).
    BadPublicKey(TokenAlgorithm, &'static str),
}

impl fmt::Display for AuthConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthConfigError::MissingSecret => {
                write!(
                    f,
                    "session tokens use HS256 but no HS256 secret is configured"
                )
            }
            AuthConfigError::SecretTooShort(len) => write!(
                f,
                "the HS256 session token secret is {len} bytes; at least {MIN_HS256_KEY_LEN} are required"
            ),
            AuthConfigError::MissingPublicKey(alg) => {
                write!(
                    f,
                    "session tokens use {alg} but no public key PEM is configured"
                )
            }
            AuthConfigError::UnusedKey(TokenAlgorithm::Hs256) => write!(
                f,
                "session tokens use HS256 but a public key is also configured; remove one"
            ),
            AuthConfigError::UnusedKey(alg) => write!(
                f,
                "session tokens use {alg} but an HS256 secret is also configured; remove one"
            ),
            AuthConfigError::BadPublicKey(alg, why) => {
                write!(
                    f,
                    "the session token public key is unusable for {alg}: {why}"
                )
            }
        }
    }
}

impl std::error::Error for AuthConfigError {}

/// Why a session token was refused. `Display` never includes the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// Not a well-formed JWT with the expected claim types, an unknown `alg`
    /// (including `none`), an invalid `sub` or role, or too many channel entries
    /// or roles.
    Malformed,
    /// The signature does not verify with the configured key, or the token names
    /// another algorithm than the configured one.
    BadSignature,
    /// `exp` is more than the allowed skew in the past.
    Expired,
    /// `nbf` or `iat` is more than the allowed skew in the future.
    NotYetValid,
    /// An audience is configured and the token's `aud` does not hold it.
    WrongAudience,
    /// An issuer is configured and the token's `iss` is not it.
    WrongIssuer,
    /// A required claim (its name) is absent.
    MissingClaim(&'static str),
    /// The token is longer than [`MAX_TOKEN_LEN`] bytes.
    TooLarge,
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::Malformed => write!(f, "the session token is malformed"),
            AuthError::BadSignature => write!(f, "the session token signature is invalid"),
            AuthError::Expired => write!(f, "the session token has expired"),
            AuthError::NotYetValid => write!(f, "the session token is not valid yet"),
            AuthError::WrongAudience => write!(f, "the session token is for another audience"),
            AuthError::WrongIssuer => write!(f, "the session token is from another issuer"),
            AuthError::MissingClaim(name) => {
                write!(f, "the session token lacks the `{name}` claim")
            }
            AuthError::TooLarge => {
                write!(f, "the session token is longer than {MAX_TOKEN_LEN} bytes")
            }
        }
    }
}

impl std::error::Error for AuthError {}

impl From<DecodeFailure> for AuthError {
    fn from(f: DecodeFailure) -> Self {
        match f {
            DecodeFailure::TooLarge => AuthError::TooLarge,
            DecodeFailure::Malformed => AuthError::Malformed,
            DecodeFailure::BadSignature => AuthError::BadSignature,
        }
    }
}

/// Which channels a `rtc.channels` entry applies to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ChannelPattern {
    /// One channel.
    Exact(ChannelId),
    /// Every channel (`"*"` on the wire).
    Any,
}

/// What a verified session token says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionClaims {
    /// `sub`.
    pub user_uid: UserUid,
    /// `exp`, Unix seconds.
    pub exp: u64,
    /// `iat`, Unix seconds, when present.
    pub iat: Option<u64>,
    /// `rtc.channels`: empty when the token has no `rtc` claim.
    pub channels: Vec<(ChannelPattern, Permissions)>,
    /// `rtc.roles`.
    pub roles: Vec<String>,
}

impl SessionClaims {
    /// The permissions granted in `ch`. An exact entry for `ch` wins over `"*"`
    /// entirely (they are not merged), so an identity service can grant broad
    /// access with `"*"` and narrow it for one channel. No entry: empty.
    pub fn permissions_in(&self, ch: &ChannelId) -> Permissions {
        let exact = self
            .channels
            .iter()
            .find(|(p, _)| matches!(p, ChannelPattern::Exact(c) if c == ch));
        let any = || {
            self.channels
                .iter()
                .find(|(p, _)| *p == ChannelPattern::Any)
        };
        exact
            .or_else(any)
            .map(|(_, perms)| *perms)
            .unwrap_or_default()
    }

    /// Membership: whether the token grants `connect` in `ch`.
    pub fn can_connect(&self, ch: &ChannelId) -> bool {
        self.permissions_in(ch).contains(Permission::Connect)
    }
}

/// Verifies session tokens with the configured algorithm and key.
pub struct SessionTokenVerifier {
    algorithm: TokenAlgorithm,
    key: DecodingKey,
    validation: Validation,
    audience: Option<String>,
    issuer: Option<String>,
}

impl fmt::Debug for SessionTokenVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key is left out: for HS256 it is the shared secret.
        f.debug_struct("SessionTokenVerifier")
            .field("algorithm", &self.algorithm)
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

/// `aud` is a string or an array of strings (RFC 7519 §4.1.3).
#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct RawRtc {
    #[serde(default)]
    channels: Option<BTreeMap<String, Vec<String>>>,
    #[serde(default)]
    roles: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct RawClaims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default, deserialize_with = "jwt::numeric_date")]
    exp: Option<u64>,
    #[serde(default, deserialize_with = "jwt::numeric_date")]
    iat: Option<u64>,
    #[serde(default, deserialize_with = "jwt::numeric_date")]
    nbf: Option<u64>,
    #[serde(default)]
    aud: Option<Audience>,
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    rtc: Option<RawRtc>,
}

impl SessionTokenVerifier {
    /// Builds a verifier; refuses a missing, short or unparsable key.
    pub fn new(cfg: &SessionTokenSettings) -> Result<Self, AuthConfigError> {
        let alg = cfg.algorithm;
        let key = match alg {
            TokenAlgorithm::Hs256 => {
                if cfg.public_key_pem.is_some() {
                    return Err(AuthConfigError::UnusedKey(alg));
                }
                let secret = cfg
                    .hs256_secret
                    .as_ref()
                    .ok_or(AuthConfigError::MissingSecret)?;
                if secret.expose().len() < MIN_HS256_KEY_LEN {
                    return Err(AuthConfigError::SecretTooShort(secret.expose().len()));
                }
                DecodingKey::from_secret(secret.expose())
            }
            TokenAlgorithm::Es256 | TokenAlgorithm::EdDsa | TokenAlgorithm::Rs256 => {
                if cfg.hs256_secret.is_some() {
                    return Err(AuthConfigError::UnusedKey(alg));
                }
                let pem = cfg
                    .public_key_pem
                    .as_deref()
                    .ok_or(AuthConfigError::MissingPublicKey(alg))?;
                public_key(alg, pem).map_err(|why| AuthConfigError::BadPublicKey(alg, why))?
            }
        };
        Ok(Self {
            algorithm: alg,
            key,
            validation: jwt::signature_only_validation(alg.jwt()),
            audience: cfg.audience.clone(),
            issuer: cfg.issuer.clone(),
        })
    }

    /// Verifies `token` at time `now_unix` and returns its claims.
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<SessionClaims, AuthError> {
        let raw: RawClaims = jwt::decode(token, &self.key, &self.validation)?;

        let sub = raw.sub.ok_or(AuthError::MissingClaim("sub"))?;
        let user_uid = UserUid::parse(&sub).map_err(|_| AuthError::Malformed)?;
        let exp = raw.exp.ok_or(AuthError::MissingClaim("exp"))?;
        if now_unix >= exp.saturating_add(CLOCK_SKEW_S) {
            return Err(AuthError::Expired);
        }
        let too_new = |t: Option<u64>| t.is_some_and(|t| t > now_unix.saturating_add(CLOCK_SKEW_S));
        if too_new(raw.nbf) || too_new(raw.iat) {
            return Err(AuthError::NotYetValid);
        }
        if let Some(want) = &self.audience {
            let ok = match &raw.aud {
                Some(Audience::One(a)) => a == want,
                Some(Audience::Many(all)) => all.iter().any(|a| a == want),
                None => false,
            };
            if !ok {
                return Err(AuthError::WrongAudience);
            }
        }
        if let Some(want) = &self.issuer
            && raw.iss.as_deref() != Some(want.as_str())
        {
            return Err(AuthError::WrongIssuer);
        }

        let (channels, roles) = match raw.rtc {
            None => (Vec::new(), Vec::new()),
            Some(rtc) => (
                parse_channels(rtc.channels.unwrap_or_default())?,
                rtc.roles.unwrap_or_default(),
            ),
        };
        if !jwt::roles_are_valid(&roles) {
            return Err(AuthError::Malformed);
        }
        Ok(SessionClaims {
            user_uid,
            exp,
            iat: raw.iat,
            channels,
            roles,
        })
    }
}

fn parse_channels(
    raw: BTreeMap<String, Vec<String>>,
) -> Result<Vec<(ChannelPattern, Permissions)>, AuthError> {
    if raw.len() > MAX_CHANNEL_ENTRIES {
        return Err(AuthError::Malformed);
    }
    raw.into_iter()
        .map(|(key, names)| {
            let pattern = if key == "*" {
                ChannelPattern::Any
            } else {
                ChannelPattern::Exact(ChannelId::parse(&key).map_err(|_| AuthError::Malformed)?)
            };
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            Ok((pattern, Permissions::from_names(&names)))
        })
        .collect()
}

/// The first PEM block of `pem`: its label and DER contents.
fn pem_block(pem: &str) -> Option<(&str, Vec<u8>)> {
    const BEGIN: &str = "-----BEGIN ";
    let rest = &pem[pem.find(BEGIN)? + BEGIN.len()..];
    let label_end = rest.find("-----")?;
    let label = &rest[..label_end];
    let body = &rest[label_end + 5..];
    let body = &body[..body.find(&format!("-----END {label}-----"))?];
    let b64: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let der = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    Some((label, der))
}

/// The DER encoding of the P-256 curve OID (1.2.840.10045.3.1.7).
const P256_OID_DER: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// Parses a public key PEM for `alg`, refusing private keys and keys of another
/// type or curve (which would otherwise fail every verification silently).
fn public_key(alg: TokenAlgorithm, pem: &str) -> Result<DecodingKey, &'static str> {
    let (label, der) =
        pem_block(pem).ok_or("not a PEM block (expected -----BEGIN PUBLIC KEY-----)")?;
    if label.contains("PRIVATE") {
        return Err("it is a private key; configure the identity service's public key only");
    }
    let bytes = pem.as_bytes();
    match alg {
        TokenAlgorithm::Es256 => {
            if label != "PUBLIC KEY" || !der.windows(P256_OID_DER.len()).any(|w| w == P256_OID_DER)
            {
                return Err("not an EC P-256 public key (PUBLIC KEY with the prime256v1 curve)");
            }
            DecodingKey::from_ec_pem(bytes).map_err(|_| "not an EC P-256 public key")
        }
        TokenAlgorithm::EdDsa => {
            if label != "PUBLIC KEY" {
                return Err("not an Ed25519 public key (PUBLIC KEY)");
            }
            DecodingKey::from_ed_pem(bytes).map_err(|_| "not an Ed25519 public key")
        }
        TokenAlgorithm::Rs256 => {
            if label != "PUBLIC KEY" && label != "RSA PUBLIC KEY" {
                return Err("not an RSA public key (PUBLIC KEY or RSA PUBLIC KEY)");
            }
            DecodingKey::from_rsa_pem(bytes).map_err(|_| "not an RSA public key")
        }
        TokenAlgorithm::Hs256 => Err("HS256 uses a shared secret, not a public key"),
    }
}

/// Mints an HS256 session token for dev mode; [`SessionTokenVerifier`] built for
/// HS256 with the same key accepts it. Every listed channel also gets `connect`.
pub fn mint_dev_session_token(
    key: &Secret<Vec<u8>>,
    user: &UserUid,
    channels: &[(ChannelPattern, Permissions)],
    roles: &[String],
    now_unix: u64,
    ttl_s: u64,
) -> String {
    let channels: serde_json::Map<String, serde_json::Value> = channels
        .iter()
        .map(|(pattern, perms)| {
            let key = match pattern {
                ChannelPattern::Exact(c) => c.as_str().to_owned(),
                ChannelPattern::Any => "*".to_owned(),
            };
            let mut names = vec![Permission::Connect.name()];
            names.extend(perms.names());
            (key, serde_json::json!(names))
        })
        .collect();
    let claims = serde_json::json!({
        "sub": user.as_str(),
        "iat": now_unix,
        "exp": now_unix.saturating_add(ttl_s),
        "rtc": {"channels": channels, "roles": roles},
    });
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(key.expose()),
    )
    .expect("HS256 signing of a JSON value with an in-memory key cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair};

    const NOW: u64 = 1_767_225_600;
    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const RS256_PRIVATE: &str = include_str!("testdata/rs256_private.pem");
    const RS256_PUBLIC: &str = include_str!("testdata/rs256_public.pem");

    fn settings(algorithm: TokenAlgorithm) -> SessionTokenSettings {
        SessionTokenSettings {
            algorithm,
            hs256_secret: None,
            public_key_pem: None,
            audience: None,
            issuer: None,
        }
    }

    fn hs256() -> SessionTokenSettings {
        SessionTokenSettings {
            hs256_secret: Some(Secret::new(SECRET.to_vec())),
            ..settings(TokenAlgorithm::Hs256)
        }
    }

    fn sign(alg: Algorithm, key: &EncodingKey, claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
    }

    fn hs(claims: &serde_json::Value) -> String {
        sign(Algorithm::HS256, &EncodingKey::from_secret(SECRET), claims)
    }

    fn basic_claims() -> serde_json::Value {
        serde_json::json!({
            "sub": "u123", "exp": NOW + 3600, "iat": NOW,
            "rtc": {"channels": {"ch_42": ["connect", "speak", "video", "screenshare"],
                                 "*": ["connect"]},
                    "roles": ["moderator"]}
        })
    }

    fn pem(label: &str, der: &[u8]) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
    }

    /// SubjectPublicKeyInfo prefix for an uncompressed P-256 point.
    const P256_SPKI_PREFIX: &str = "3059301306072a8648ce3d020106082a8648ce3d030107034200";
    /// SubjectPublicKeyInfo prefix for an Ed25519 key.
    const ED25519_SPKI_PREFIX: &str = "302a300506032b6570032100";

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn es256_keys() -> (EncodingKey, String) {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let mut spki = hex(P256_SPKI_PREFIX);
        spki.extend_from_slice(pair.public_key().as_ref());
        (
            EncodingKey::from_ec_der(pkcs8.as_ref()),
            pem("PUBLIC KEY", &spki),
        )
    }

    fn ed25519_keys() -> (EncodingKey, String) {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let mut spki = hex(ED25519_SPKI_PREFIX);
        spki.extend_from_slice(pair.public_key().as_ref());
        (
            EncodingKey::from_ed_der(pkcs8.as_ref()),
            pem("PUBLIC KEY", &spki),
        )
    }

    fn ch(s: &str) -> ChannelId {
        ChannelId::parse(s).unwrap()
    }

    #[test]
    fn hs256_token_verifies_into_claims() {
        let v = SessionTokenVerifier::new(&hs256()).unwrap();
        let c = v.verify(&hs(&basic_claims()), NOW).unwrap();
        assert_eq!(c.user_uid.as_str(), "u123");
        assert_eq!(c.exp, NOW + 3600);
        assert_eq!(c.iat, Some(NOW));
        assert_eq!(c.roles, vec!["moderator".to_string()]);
        assert_eq!(c.channels.len(), 2);
        assert_eq!(
            c.permissions_in(&ch("ch_42")).names(),
            vec!["speak", "video", "screenshare"]
        );
    }

    #[test]
    fn es256_token_verifies_and_a_foreign_key_does_not() {
        let (sk, pk) = es256_keys();
        let v = SessionTokenVerifier::new(&SessionTokenSettings {
            public_key_pem: Some(pk),
            ..settings(TokenAlgorithm::Es256)
        })
        .unwrap();
        let c = v
            .verify(&sign(Algorithm::ES256, &sk, &basic_claims()), NOW)
            .unwrap();
        assert_eq!(c.user_uid.as_str(), "u123");
        let (other, _) = es256_keys();
        assert_eq!(
            v.verify(&sign(Algorithm::ES256, &other, &basic_claims()), NOW),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn eddsa_token_verifies_and_a_foreign_key_does_not() {
        let (sk, pk) = ed25519_keys();
        let v = SessionTokenVerifier::new(&SessionTokenSettings {
            public_key_pem: Some(pk),
            ..settings(TokenAlgorithm::EdDsa)
        })
        .unwrap();
        assert!(
            v.verify(&sign(Algorithm::EdDSA, &sk, &basic_claims()), NOW)
                .is_ok()
        );
        let (other, _) = ed25519_keys();
        assert_eq!(
            v.verify(&sign(Algorithm::EdDSA, &other, &basic_claims()), NOW),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn rs256_token_verifies_with_the_committed_test_key() {
        let v = SessionTokenVerifier::new(&SessionTokenSettings {
            public_key_pem: Some(RS256_PUBLIC.to_owned()),
            ..settings(TokenAlgorithm::Rs256)
        })
        .unwrap();
        let sk = EncodingKey::from_rsa_pem(RS256_PRIVATE.as_bytes()).unwrap();
        let token = sign(Algorithm::RS256, &sk, &basic_claims());
        assert!(v.verify(&token, NOW).is_ok());
    }

    #[test]
    fn rs256_verifier_refuses_hs256_signed_with_the_public_key() {
        // The classic algorithm-confusion attack: HMAC keyed with the public key.
        let v = SessionTokenVerifier::new(&SessionTokenSettings {
            public_key_pem: Some(RS256_PUBLIC.to_owned()),
            ..settings(TokenAlgorithm::Rs256)
        })
        .unwrap();
        let forged = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(RS256_PUBLIC.as_bytes()),
            &basic_claims(),
        );
        assert_eq!(v.verify(&forged, NOW), Err(AuthError::BadSignature));
    }

    #[test]
    fn expiry_allows_the_skew_and_no_more() {
        let v = SessionTokenVerifier::new(&hs256()).unwrap();
        let token = hs(&serde_json::json!({"sub": "u1", "exp": NOW}));
        assert!(v.verify(&token, NOW - 1).is_ok());
        assert!(
            v.verify(&token, NOW + CLOCK_SKEW_S - 1).is_ok(),
            "within skew"
        );
        assert_eq!(
            v.verify(&token, NOW + CLOCK_SKEW_S),
            Err(AuthError::Expired)
        );
        assert_eq!(v.verify(&token, NOW + 3600), Err(AuthError::Expired));
    }

    #[test]
    fn future_nbf_and_iat_beyond_skew_are_not_yet_valid() {
        let v = SessionTokenVerifier::new(&hs256()).unwrap();
        let exp = NOW + 3600;
        let nbf = hs(&serde_json::json!({"sub": "u1", "exp": exp, "nbf": NOW + 100}));
        assert_eq!(v.verify(&nbf, NOW), Err(AuthError::NotYetValid));
        assert!(v.verify(&nbf, NOW + 100 - CLOCK_SKEW_S).is_ok());
        let iat = hs(&serde_json::json!({"sub": "u1", "exp": exp, "iat": NOW + CLOCK_SKEW_S + 1}));
        assert_eq!(v.verify(&iat, NOW), Err(AuthError::NotYetValid));
        let iat_ok = hs(&serde_json::json!({"sub": "u1", "exp": exp, "iat": NOW + CLOCK_SKEW_S}));
        assert!(v.verify(&iat_ok, NOW).is_ok());
    }

    #[test]
    fn audience_and_issuer_are_checked_when_configured() {
        let v = SessionTokenVerifier::new(&SessionTokenSettings {
            audience: Some("prism".into()),
            issuer: Some("https://id.example.org".into()),
            ..hs256()
        })
        .unwrap();
        let exp = NOW + 60;
        let iss = "https://id.example.org";
        let ok1 = hs(&serde_json::json!({"sub": "u", "exp": exp, "aud": "prism", "iss": iss}));
        let ok2 =
            hs(&serde_json::json!({"sub": "u", "exp": exp, "aud": ["x", "prism"], "iss": iss}));
        assert!(v.verify(&ok1, NOW).is_ok());
        assert!(v.verify(&ok2, NOW).is_ok());
        let bad_aud = hs(&serde_json::json!({"sub": "u", "exp": exp, "aud": "other", "iss": iss}));
        let no_aud = hs(&serde_json::json!({"sub": "u", "exp": exp, "iss": iss}));
        let bad_iss =
            hs(&serde_json::json!({"sub": "u", "exp": exp, "aud": "prism", "iss": "evil"}));
        let no_iss = hs(&serde_json::json!({"sub": "u", "exp": exp, "aud": "prism"}));
        assert_eq!(v.verify(&bad_aud, NOW), Err(AuthError::WrongAudience));
        assert_eq!(v.verify(&no_aud, NOW), Err(AuthError::WrongAudience));
        assert_eq!(v.verify(&bad_iss, NOW), Err(AuthError::WrongIssuer));
        assert_eq!(v.verify(&no_iss, NOW), Err(AuthError::WrongIssuer));

        // Not configured: a token's aud and iss are not held against it.
        let open = SessionTokenVerifier::new(&hs256()).unwrap();
        assert!(open.verify(&bad_aud, NOW).is_ok());
    }

    #[test]
    fn forged_signature_is_refused() {
        let v = SessionTokenVerifier::new(&hs256()).unwrap();
        let other = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(b"another-secret-another-secret-!!"),
            &basic_claims(),
        );
        assert_eq!(v.verify(&other, NOW), Err(AuthError::BadSignature));

        // A valid token whose payload is swapped for a more generous one.
        let good = hs(&basic_claims());
        let mut parts: Vec<&str> = good.split('.').collect();
        let evil = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::json!({"sub": "admin", "exp": NOW + 3600}).to_string());
        parts[1] = &evil;
        assert_eq!(
            v.verify(&parts.join("."), NOW),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn alg_none_is_refused() {
        let v = SessionTokenVerifier::new(&hs256()).unwrap();
        let b64 = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let header = b64(serde_json::json!({"alg": "none", "typ": "JWT"}));
        let payload = b64(basic_claims());
        assert_eq!(
            v.verify(&format!("{header}.{payload}."), NOW),
            Err(AuthError::Malformed)
        );
    }

    #[test]
    fn malformed_and_oversized_tokens_are_refused() {
        let v = SessionTokenVerifier::new(&hs256()).unwrap();
        assert_eq!(v.verify("", NOW), Err(AuthError::Malformed));
        assert_eq!(v.verify("a.b.c", NOW), Err(AuthError::Malformed));
        assert_eq!(v.verify("not a jwt", NOW), Err(AuthError::Malformed));
        assert_eq!(
            v.verify(&"x".repeat(MAX_TOKEN_LEN + 1), NOW),
            Err(AuthError::TooLarge)
        );
        let bad_sub = hs(&serde_json::json!({"sub": "has space", "exp": NOW + 60}));
        assert_eq!(v.verify(&bad_sub, NOW), Err(AuthError::Malformed));
        let bad_chan = hs(&serde_json::json!({"sub": "u", "exp": NOW + 60,
            "rtc": {"channels": {"bad channel": ["connect"]}}}));
        assert_eq!(v.verify(&bad_chan, NOW), Err(AuthError::Malformed));
        let bad_role = hs(&serde_json::json!({"sub": "u", "exp": NOW + 60,
            "rtc": {"roles": ["x".repeat(65)]}}));
        assert_eq!(v.verify(&bad_role, NOW), Err(AuthError::Malformed));
        let many_roles: Vec<String> = (0..65).map(|i| format!("r{i}")).collect();
        let too_many = hs(&serde_json::json!({"sub": "u", "exp": NOW + 60,
            "rtc": {"roles": many_roles}}));
        assert_eq!(v.verify(&too_many, NOW), Err(AuthError::Malformed));
        let perm_not_string = hs(&serde_json::json!({"sub": "u", "exp": NOW + 60,
            "rtc": {"channels": {"c": [1]}}}));
        assert_eq!(v.verify(&perm_not_string, NOW), Err(AuthError::Malformed));
    }

    #[test]
    fn channel_entries_are_bounded() {
        // Under the 8 KiB token bound at most ~870 entries fit, so the entry bound
        // is checked on the parser directly: it must hold even if the token bound
        // is raised one day.
        let channels = |n: usize| -> BTreeMap<String, Vec<String>> {
            (0..n)
                .map(|i| (format!("c{i}"), vec!["connect".to_string()]))
                .collect()
        };
        let at_limit = parse_channels(channels(MAX_CHANNEL_ENTRIES)).unwrap();
        assert_eq!(at_limit.len(), MAX_CHANNEL_ENTRIES);
        assert_eq!(
            parse_channels(channels(MAX_CHANNEL_ENTRIES + 1)),
            Err(AuthError::Malformed)
        );
    }

    #[test]
    fn required_claims_are_named_when_missing() {
        let v = SessionTokenVerifier::new(&hs256()).unwrap();
        let no_sub = hs(&serde_json::json!({"exp": NOW + 60}));
        assert_eq!(v.verify(&no_sub, NOW), Err(AuthError::MissingClaim("sub")));
        let no_exp = hs(&serde_json::json!({"sub": "u"}));
        assert_eq!(v.verify(&no_exp, NOW), Err(AuthError::MissingClaim("exp")));
    }

    #[test]
    fn exact_channel_entry_wins_over_wildcard() {
        let v = SessionTokenVerifier::new(&hs256()).unwrap();
        let token = hs(&serde_json::json!({"sub": "u", "exp": NOW + 60,
            "rtc": {"channels": {"*": ["connect", "speak"], "quiet": ["connect"],
                                 "banned": [], "future": ["connect", "hologram"]}}}));
        let c = v.verify(&token, NOW).unwrap();
        // Wildcard applies where there is no exact entry.
        assert!(c.can_connect(&ch("elsewhere")));
        assert!(
            c.permissions_in(&ch("elsewhere"))
                .contains(Permission::Speak)
        );
        // The exact entry replaces the wildcard, it does not add to it.
        assert!(c.can_connect(&ch("quiet")));
        assert!(!c.permissions_in(&ch("quiet")).contains(Permission::Speak));
        assert!(!c.can_connect(&ch("banned")));
        // Unknown names are ignored, known ones kept.
        assert_eq!(
            c.permissions_in(&ch("future")),
            Permissions::default().with(Permission::Connect)
        );
    }

    #[test]
    fn without_wildcard_or_rtc_there_is_no_membership() {
        let v = SessionTokenVerifier::new(&hs256()).unwrap();
        let only = hs(&serde_json::json!({"sub": "u", "exp": NOW + 60,
            "rtc": {"channels": {"a": ["connect", "video"], "b": ["speak"]}}}));
        let c = v.verify(&only, NOW).unwrap();
        assert!(c.can_connect(&ch("a")));
        assert!(
            !c.can_connect(&ch("b")),
            "an entry without connect is no membership"
        );
        assert!(!c.can_connect(&ch("c")));
        assert!(c.permissions_in(&ch("c")).is_empty());

        let none = hs(&serde_json::json!({"sub": "u", "exp": NOW + 60}));
        let c = v.verify(&none, NOW).unwrap();
        assert!(c.channels.is_empty() && c.roles.is_empty());
        assert!(!c.can_connect(&ch("a")));
    }

    #[test]
    fn dev_tokens_round_trip_through_the_hs256_verifier() {
        let key = Secret::new(SECRET.to_vec());
        let user = UserUid::parse("dev_user").unwrap();
        let video = Permissions::default().with(Permission::Video);
        let token = mint_dev_session_token(
            &key,
            &user,
            &[
                (ChannelPattern::Exact(ch("c1")), video),
                (ChannelPattern::Any, Permissions::default()),
            ],
            &["moderator".to_string()],
            NOW,
            600,
        );
        let c = SessionTokenVerifier::new(&hs256())
            .unwrap()
            .verify(&token, NOW)
            .unwrap();
        assert_eq!(c.user_uid, user);
        assert_eq!(c.exp, NOW + 600);
        assert_eq!(c.iat, Some(NOW));
        assert_eq!(c.roles, vec!["moderator".to_string()]);
        assert_eq!(c.permissions_in(&ch("c1")), video.with(Permission::Connect));
        assert!(c.can_connect(&ch("anything")));
        assert!(c.permissions_in(&ch("anything")).names().is_empty());
    }

    #[test]
    fn bad_settings_are_clear_errors() {
        assert_eq!(
            SessionTokenVerifier::new(&settings(TokenAlgorithm::Hs256)).unwrap_err(),
            AuthConfigError::MissingSecret
        );
        let short = SessionTokenSettings {
            hs256_secret: Some(Secret::new(b"short".to_vec())),
            ..settings(TokenAlgorithm::Hs256)
        };
        assert_eq!(
            SessionTokenVerifier::new(&short).unwrap_err(),
            AuthConfigError::SecretTooShort(5)
        );
        assert_eq!(
            SessionTokenVerifier::new(&settings(TokenAlgorithm::Es256)).unwrap_err(),
            AuthConfigError::MissingPublicKey(TokenAlgorithm::Es256)
        );
        let both = SessionTokenSettings {
            public_key_pem: Some(RS256_PUBLIC.into()),
            ..hs256()
        };
        assert_eq!(
            SessionTokenVerifier::new(&both).unwrap_err(),
            AuthConfigError::UnusedKey(TokenAlgorithm::Hs256)
        );
        let with_pem = |alg, pem: &str| SessionTokenSettings {
            public_key_pem: Some(pem.to_owned()),
            ..settings(alg)
        };
        let garbage = SessionTokenVerifier::new(&with_pem(TokenAlgorithm::Rs256, "garbage"));
        assert!(matches!(
            garbage,
            Err(AuthConfigError::BadPublicKey(TokenAlgorithm::Rs256, _))
        ));
        let private = SessionTokenVerifier::new(&with_pem(TokenAlgorithm::Rs256, RS256_PRIVATE));
        assert!(
            matches!(private, Err(AuthConfigError::BadPublicKey(_, m)) if m.contains("private"))
        );
        // An RSA key where an EC or Ed25519 key is expected, and vice versa.
        for alg in [TokenAlgorithm::Es256, TokenAlgorithm::EdDsa] {
            let r = SessionTokenVerifier::new(&with_pem(alg, RS256_PUBLIC));
            assert!(matches!(r, Err(AuthConfigError::BadPublicKey(a, _)) if a == alg));
        }
        let (_, ed_pub) = ed25519_keys();
        let r = SessionTokenVerifier::new(&with_pem(TokenAlgorithm::Es256, &ed_pub));
        assert!(matches!(r, Err(AuthConfigError::BadPublicKey(..))));
        let (_, ec_pub) = es256_keys();
        let r = SessionTokenVerifier::new(&with_pem(TokenAlgorithm::Rs256, &ec_pub));
        assert!(matches!(r, Err(AuthConfigError::BadPublicKey(..))));
        // Messages name the problem, not the key.
        let msg = AuthConfigError::SecretTooShort(5).to_string();
        assert!(msg.contains("at least 32"), "{msg}");
    }

    #[test]
    fn errors_do_not_print_the_token() {
        let v = SessionTokenVerifier::new(&hs256()).unwrap();
        let token = hs(&serde_json::json!({"sub": "u", "exp": 1}));
        let e = v.verify(&token, NOW).unwrap_err();
        assert_eq!(e, AuthError::Expired);
        assert!(!e.to_string().contains(&token));
        assert!(!format!("{v:?}").contains("0123456789abcdef"));
    }
}
