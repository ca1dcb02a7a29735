//! The numeric limits and timers of protocol-v1 §6 and §8 and of the HTTP front, each
//! declared once (name, type, default, valid range, meaning) so the file format, the
//! `PRISM_LIMITS__*` variables, validation and the summary cannot drift apart.
//!
//! Invariant: every field of [`Limits`] lies within its declared range; cross-field
//! rules (ping interval below the idle timeout, per-IP cap below the total) are
//! checked by [`Limits::from_raw`]. Called by `config::build`.

use serde::Deserialize;

use super::{ConfigError, Sources};

macro_rules! limits {
    ($( $(#[doc = $doc:literal])* $name:ident : $ty:ty = $default:expr, $min:literal ..= $max:literal; )*) => {
        /// `[limits]` as written: every key optional.
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub(super) struct RawLimits {
            $( pub $name: Option<i64>, )*
        }

        /// Protocol and transport limits (`[limits]`), validated.
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub struct Limits {
            $( $(#[doc = $doc])* pub $name: $ty, )*
        }

        impl Default for Limits {
            fn default() -> Self {
                Self { $( $name: $default, )* }
            }
        }

        impl Limits {
            /// Every key of `[limits]` with its default and inclusive range.
            pub(super) const TABLE: &'static [(&'static str, i64, i64, i64)] =
                &[$( (stringify!($name), $default as i64, $min, $max), )*];

            /// Applies defaults, range checks and cross-field rules.
            pub(super) fn from_raw(raw: &RawLimits, sources: &Sources) -> Result<Self, ConfigError> {
                let limits = Self {
                    $( $name: {
                        let key = concat!("limits.", stringify!($name));
                        let v = sources.int_in(key, raw.$name, $default as i64, $min, $max)?;
                        <$ty>::try_from(v).map_err(|_| sources.invalid(key, format!("{v} does not fit")))?
                    }, )*
                };
                limits.check_relations(sources)?;
                Ok(limits)
            }

            /// `key = value` lines for the summary, in declaration order.
            pub(super) fn summary_lines(&self) -> Vec<String> {
                vec![$( format!("{} = {}", stringify!($name), self.$name), )*]
            }
        }
    };
}

limits! {
    /// Largest WebSocket frame accepted, bytes (larger: close 1009).
    max_frame_bytes: usize = 262_144, 1024..=16_777_216;
    /// Time allowed between the socket opening and `rtc.join` (then close 4408).
    join_timeout_ms: u64 = 12_000, 1000..=600_000;
    /// Silence (no frame, no pong) after which the socket is closed 1001.
    idle_timeout_ms: u64 = 30_000, 1000..=600_000;
    /// How often the server pings an idle socket; below `idle_timeout_ms`.
    ws_ping_interval_ms: u64 = 10_000, 500..=600_000;
    /// How long a dropped participant stays stale and resumable.
    reconnect_grace_ms: u64 = 20_000, 0..=600_000;
    /// How long a peer connection's ICE may stay disconnected before it is closed.
    ice_disconnect_grace_ms: u64 = 10_000, 1000..=600_000;
    /// Time a client gets to answer, advertised in `connection_policy`.
    answer_timeout_ms: u64 = 10_000, 1000..=600_000;
    /// Sustained messages per second per socket.
    messages_per_s: u32 = 50, 1..=10_000;
    /// Burst of messages per socket above the sustained rate.
    message_burst: u32 = 100, 1..=100_000;
    /// Sustained rate limiting for this long closes the socket 4429.
    rate_limit_close_after_ms: u64 = 5000, 100..=600_000;
    /// Participants per channel (then `room_full`).
    participants_per_channel: usize = 50, 1..=10_000;
    /// Published tracks per participant (then `track_limit`).
    tracks_per_participant: usize = 4, 1..=64;
    /// Open TCP connections on the listener.
    max_connections: usize = 20_000, 1..=1_000_000;
    /// Open TCP connections from one IP address.
    max_connections_per_ip: usize = 200, 1..=1_000_000;
    /// Join tickets one user may obtain per minute.
    ticket_rate_per_user_per_min: u32 = 30, 1..=100_000;
    /// Join tickets one IP address may obtain per minute.
    ticket_rate_per_ip_per_min: u32 = 120, 1..=100_000;
    /// Largest HTTP request body, bytes (larger: 413).
    http_body_max: usize = 65_536, 1024..=16_777_216;
    /// Largest HTTP request head (request line and headers), bytes.
    http_header_max: usize = 16_384, 1024..=1_048_576;
    /// Time allowed to receive a request head.
    http_header_timeout_ms: u64 = 10_000, 100..=600_000;
    /// Idle time before a keep-alive HTTP connection is closed.
    http_keepalive_timeout_ms: u64 = 60_000, 1000..=3_600_000;
    /// Capacity of each bounded queue into a media worker.
    worker_queue: usize = 4096, 16..=1_048_576;
    /// A media worker busy this share of the time (%) takes no new joins.
    worker_busy_ratio_pct: u32 = 90, 1..=100;
    /// A media worker with this many commands waiting takes no new joins.
    worker_queue_high: usize = 1024, 1..=1_048_576;
    /// Bytes queued for one WebSocket before it counts as too slow and is closed.
    ws_max_write_buffer: usize = 1_048_576, 65_536..=268_435_456;
}

impl Limits {
    fn check_relations(&self, sources: &Sources) -> Result<(), ConfigError> {
        if self.ws_ping_interval_ms >= self.idle_timeout_ms {
            return Err(sources.invalid(
                "limits.ws_ping_interval_ms",
                format!(
                    "must be below limits.idle_timeout_ms ({}), or a healthy idle socket would time out (got {})",
                    self.idle_timeout_ms, self.ws_ping_interval_ms
                ),
            ));
        }
        if self.max_connections_per_ip > self.max_connections {
            return Err(sources.invalid(
                "limits.max_connections_per_ip",
                format!(
                    "must not exceed limits.max_connections ({}) (got {})",
                    self.max_connections, self.max_connections_per_ip
                ),
            ));
        }
        Ok(())
    }
}
