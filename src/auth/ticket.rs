//! Join tickets: short-lived HS256 JWTs minted by this server (or by the operator
//! with the same key) that admit one device of one user into one channel, with
//! the permissions it may use there.
//!
//! Invariants: only HS256 with the ticket key verifies (`alg: none` and any other
//! algorithm are `Invalid`); a ticket for another `server_id` is `Invalid`; `exp` is
//! checked against the caller's time with [`CLOCK_SKEW_S`]. A verified ticket's
//! `permissions` always contain [`Permission::Connect`]: the ticket is itself the
//! proof of membership. Single use is not checked here but by
//! [`super::UsedTickets`], with the `jti` and `exp` this returns.
//!
//! Minted by the join-ticket endpoint; verified by the signaling session on
//! `rtc.join`.

use std::fmt;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::jwt;
use super::{CLOCK_SKEW_S, Permission, Permissions};
use crate::ids::{ChannelId, DeviceId, UserUid};
use crate::secret::Secret;

/// Longest `jti` accepted, in bytes (ours are 32 hex chars; an operator's may be
/// any id-alphabet string up to this).
const MAX_JTI_LEN: usize = 128;

/// Longest `server_id` accepted, in bytes.
const MAX_SERVER_ID_LEN: usize = 128;

/// Most permission names accepted in a ticket (bounds work on unknown names).
const MAX_PERMISSION_NAMES: usize = 16;

/// Why a join ticket was refused. `Display` never includes the ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketError {
    /// Bad signature, not a well-formed ticket, another algorithm than HS256,
    /// a ticket for another server, or `iat` beyond the skew in the future.
    Invalid,
    /// `exp` is more than the allowed skew in the past.
    Expired,
}

impl fmt::Display for TicketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TicketError::Invalid => write!(f, "the join ticket is invalid"),
            TicketError::Expired => write!(f, "the join ticket has expired"),
        }
    }
}

impl std::error::Error for TicketError {}

/// The claims of a join ticket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TicketClaims {
    /// The server the ticket is for.
    pub server_id: String,
    /// The channel it admits to.
    pub channel_id: ChannelId,
    /// The user (`sub` on the wire).
    pub user_uid: UserUid,
    /// The device.
    pub device_id: DeviceId,
    /// What the session may do; always contains `connect` once verified.
    pub permissions: Permissions,
    /// The user's roles (id alphabet, at most 64 of at most 64 chars).
    pub roles: Vec<String>,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Expires at, Unix seconds.
    pub exp: u64,
    /// Unique ticket id, for single use.
    pub jti: String,
}

/// The wire form of [`TicketClaims`].
#[derive(Serialize, Deserialize)]
struct WireClaims {
    server_id: String,
    channel_id: ChannelId,
    sub: UserUid,
    device_id: DeviceId,
    permissions: Vec<String>,
    roles: Vec<String>,
    #[serde(deserialize_with = "required_date")]
    iat: u64,
    #[serde(deserialize_with = "required_date")]
    exp: u64,
    jti: String,
}

fn required_date<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    jwt::numeric_date(d)?.ok_or_else(|| serde::de::Error::custom("a date is required"))
}

impl TicketClaims {
    /// Claims for a fresh ticket valid for `ttl_s` seconds from `now_unix`, with a
    /// random 128-bit `jti`. `connect` is added to `permissions`.
    #[expect(
        clippy::too_many_arguments,
        reason = "one argument per claim; a builder would add nothing"
    )]
    pub fn new(
        server_id: &str,
        channel: ChannelId,
        user: UserUid,
        device: DeviceId,
        permissions: Permissions,
        roles: Vec<String>,
        now_unix: u64,
        ttl_s: u64,
    ) -> TicketClaims {
        TicketClaims {
            server_id: server_id.to_owned(),
            channel_id: channel,
            user_uid: user,
            device_id: device,
            permissions: permissions.with(Permission::Connect),
            roles,
            iat: now_unix,
            exp: now_unix.saturating_add(ttl_s),
            jti: crate::secret::random_hex(16),
        }
    }
}

/// The HS256 key join tickets are signed and verified with.
#[derive(Clone)]
pub struct TicketKey {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TicketKey([redacted])")
    }
}

impl TicketKey {
    /// A ticket key. The config layer is expected to refuse keys shorter than
    /// [`super::MIN_HS256_KEY_LEN`] bytes (or to generate a random one).
    pub fn new(key: Secret<Vec<u8>>) -> Self {
        Self {
            encoding: EncodingKey::from_secret(key.expose()),
            decoding: DecodingKey::from_secret(key.expose()),
            validation: jwt::signature_only_validation(Algorithm::HS256),
        }
    }

    /// Signs `claims` into a ticket.
    pub fn mint(&self, claims: &TicketClaims) -> String {
        let wire = WireClaims {
            server_id: claims.server_id.clone(),
            channel_id: claims.channel_id.clone(),
            sub: claims.user_uid.clone(),
            device_id: claims.device_id.clone(),
            permissions: claims
                .permissions
                .names()
                .into_iter()
                .map(str::to_owned)
                .collect(),
            roles: claims.roles.clone(),
            iat: claims.iat,
            exp: claims.exp,
            jti: claims.jti.clone(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &wire, &self.encoding)
            .expect("HS256 signing of plain string and integer claims cannot fail")
    }

    /// Verifies `token` for this server at time `now_unix`.
    pub fn verify(
        &self,
        token: &str,
        now_unix: u64,
        server_id: &str,
    ) -> Result<TicketClaims, TicketError> {
        let wire: WireClaims = jwt::decode(token, &self.decoding, &self.validation)
            .map_err(|_| TicketError::Invalid)?;
        if wire.server_id.len() > MAX_SERVER_ID_LEN
            || wire.server_id != server_id
            || crate::ids::check_id(&wire.jti, MAX_JTI_LEN).is_err()
            || wire.permissions.len() > MAX_PERMISSION_NAMES
            || !jwt::roles_are_valid(&wire.roles)
            || wire.iat > now_unix.saturating_add(CLOCK_SKEW_S)
        {
            return Err(TicketError::Invalid);
        }
        if now_unix >= wire.exp.saturating_add(CLOCK_SKEW_S) {
            return Err(TicketError::Expired);
        }
        let names: Vec<&str> = wire.permissions.iter().map(String::as_str).collect();
        Ok(TicketClaims {
            server_id: wire.server_id,
            channel_id: wire.channel_id,
            user_uid: wire.sub,
            device_id: wire.device_id,
            permissions: Permissions::from_names(&names).with(Permission::Connect),
            roles: wire.roles,
            iat: wire.iat,
            exp: wire.exp,
            jti: wire.jti,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    const NOW: u64 = 1_767_225_600;
    const SERVER: &str = "node-1";

    fn key() -> TicketKey {
        TicketKey::new(Secret::new(b"ticket-key-ticket-key-ticket-key".to_vec()))
    }

    fn claims() -> TicketClaims {
        TicketClaims::new(
            SERVER,
            ChannelId::parse("ch_42").unwrap(),
            UserUid::parse("u123").unwrap(),
            DeviceId::parse("dev-1").unwrap(),
            Permissions::default()
                .with(Permission::Speak)
                .with(Permission::Screenshare),
            vec!["moderator".into()],
            NOW,
            60,
        )
    }

    fn b64(v: &serde_json::Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    }

    fn payload_of(token: &str) -> serde_json::Value {
        let part = token.split('.').nth(1).unwrap();
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn new_claims_have_a_random_jti_and_connect() {
        let a = claims();
        let b = claims();
        assert_eq!(a.jti.len(), 32);
        assert!(a.jti.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a.jti, b.jti);
        assert!(a.permissions.contains(Permission::Connect));
        assert_eq!((a.iat, a.exp), (NOW, NOW + 60));
    }

    #[test]
    fn round_trip() {
        let c = claims();
        let token = key().mint(&c);
        assert_eq!(key().verify(&token, NOW + 10, SERVER), Ok(c));
    }

    #[test]
    fn wire_claims_follow_the_spec() {
        let token = key().mint(&claims());
        let p = payload_of(&token);
        assert_eq!(p["sub"], "u123");
        assert_eq!(p["server_id"], SERVER);
        assert_eq!(p["channel_id"], "ch_42");
        assert_eq!(p["device_id"], "dev-1");
        assert_eq!(
            p["permissions"],
            serde_json::json!(["speak", "screenshare"])
        );
        assert_eq!(p["roles"], serde_json::json!(["moderator"]));
        assert_eq!(p["exp"], NOW + 60);
        assert!(p.get("user_uid").is_none());
    }

    #[test]
    fn expiry_allows_the_skew_and_no_more() {
        let c = claims();
        let token = key().mint(&c);
        assert!(
            key()
                .verify(&token, c.exp + CLOCK_SKEW_S - 1, SERVER)
                .is_ok()
        );
        assert_eq!(
            key().verify(&token, c.exp + CLOCK_SKEW_S, SERVER),
            Err(TicketError::Expired)
        );
    }

    #[test]
    fn another_server_or_key_is_invalid() {
        let token = key().mint(&claims());
        assert_eq!(
            key().verify(&token, NOW, "node-2"),
            Err(TicketError::Invalid)
        );
        let other = TicketKey::new(Secret::new(b"other-key-other-key-other-key-!!".to_vec()));
        assert_eq!(other.verify(&token, NOW, SERVER), Err(TicketError::Invalid));
    }

    #[test]
    fn tampered_payload_is_invalid() {
        let token = key().mint(&claims());
        let mut p = payload_of(&token);
        p["channel_id"] = "ch_other".into();
        let parts: Vec<&str> = token.split('.').collect();
        let forged = format!("{}.{}.{}", parts[0], b64(&p), parts[2]);
        assert_eq!(
            key().verify(&forged, NOW, SERVER),
            Err(TicketError::Invalid)
        );
    }

    #[test]
    fn alg_none_and_other_algorithms_are_invalid() {
        let token = key().mint(&claims());
        let parts: Vec<&str> = token.split('.').collect();
        let none = b64(&serde_json::json!({"alg": "none", "typ": "JWT"}));
        assert_eq!(
            key().verify(&format!("{none}.{}.", parts[1]), NOW, SERVER),
            Err(TicketError::Invalid)
        );
        // Same payload and signature under an RS256 header.
        let rs = b64(&serde_json::json!({"alg": "RS256", "typ": "JWT"}));
        assert_eq!(
            key().verify(&format!("{rs}.{}.{}", parts[1], parts[2]), NOW, SERVER),
            Err(TicketError::Invalid)
        );
    }

    #[test]
    fn malformed_claims_are_invalid() {
        let k = key();
        let sign = |v: serde_json::Value| {
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &v, &k.encoding).unwrap()
        };
        let base = payload_of(&k.mint(&claims()));
        assert!(k.verify(&sign(base.clone()), NOW, SERVER).is_ok());
        for (field, value) in [
            ("jti", serde_json::json!("bad jti")),
            ("jti", serde_json::json!("")),
            ("sub", serde_json::json!("bad user")),
            ("device_id", serde_json::json!("d".repeat(65))),
            ("roles", serde_json::json!(["bad role"])),
            ("iat", serde_json::json!(NOW + CLOCK_SKEW_S + 1)),
            ("permissions", serde_json::json!(vec!["speak"; 17])),
            ("exp", serde_json::Value::Null),
        ] {
            let mut p = base.clone();
            p[field] = value;
            assert_eq!(
                k.verify(&sign(p), NOW, SERVER),
                Err(TicketError::Invalid),
                "{field}"
            );
        }
        let mut missing = base.clone();
        missing.as_object_mut().unwrap().remove("jti");
        assert_eq!(
            k.verify(&sign(missing), NOW, SERVER),
            Err(TicketError::Invalid)
        );
        assert_eq!(k.verify("garbage", NOW, SERVER), Err(TicketError::Invalid));
        // Unknown permission names are ignored, as in session tokens.
        let mut future = base;
        future["permissions"] = serde_json::json!(["video", "hologram"]);
        let c = k.verify(&sign(future), NOW, SERVER).unwrap();
        assert_eq!(c.permissions.names(), vec!["video"]);
    }
}
