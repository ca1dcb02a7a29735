//! Authentication and authorization material: session tokens (minted by the
//! operator's identity service, verified here), join tickets (minted and verified
//! here, single use), TURN REST credentials, and the admin key check.
//!
//! Invariants: nothing here reads the clock — every check takes `now_unix` (seconds
//! since the Unix epoch) so tests can use any time; every token is length-bounded
//! before it is parsed; no `Display` or `Debug` of an error or claim set prints a
//! token, key or credential. Time claims allow [`CLOCK_SKEW_S`] of clock skew in
//! both directions.
//!
//! Callers: the HTTP layer (session tokens on REST endpoints, ticket minting, TURN
//! credentials in `ice_servers`, the admin key), the signaling session (ticket
//! verification and consumption on `rtc.join`), the dev-token CLI, and start-up
//! (loading used tickets from the store).

mod admin;
mod jwt;
mod permissions;
mod rfc3339;
mod session_token;
mod ticket;
mod turn;
mod used_tickets;

pub use admin::admin_key_matches;
pub use permissions::{Permission, Permissions};
pub use rfc3339::{parse_rfc3339_ms, rfc3339_utc, rfc3339_utc_ms};
pub use session_token::{
    AuthConfigError, AuthError, ChannelPattern, SessionClaims, SessionTokenSettings,
    SessionTokenVerifier, TokenAlgorithm, mint_dev_session_token,
};
pub use ticket::{TicketClaims, TicketError, TicketKey};
pub use turn::{TurnCredential, turn_credentials};
pub use used_tickets::{ConsumeError, UsedTickets};

/// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds (http-api: 30 s).
pub const CLOCK_SKEW_S: u64 = 30;

/// Longest session token or join ticket accepted, in bytes. Checked before any
/// decoding, so a hostile client cannot make us base64-decode or parse megabytes.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Shortest HMAC key accepted for HS256 (RFC 7518 §3.2: at least the hash size).
pub const MIN_HS256_KEY_LEN: usize = 32;
