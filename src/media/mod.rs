//! The sans-IO media core of one worker: str0m `Rtc`s (ICE-lite, RTP mode), the
//! demultiplexer that routes each datagram to its `Rtc`, the forwarding table that fans
//! publisher RTP out to subscribers, and the timer heap that wakes only due `Rtc`s.
//!
//! Everything here is driven from outside: the engine calls the signaling inputs
//! ([`MediaCore::publish_offer`], [`MediaCore::subscribe_offer`], …) after it has checked
//! permissions and room membership; the worker's driver feeds datagrams and time in and
//! drains transmits, events and the next deadline out. The core never reads the clock
//! and never does I/O, so [`sim`] runs it on simulated time with real str0m clients.
//!
//! Invariants: network input never panics and never disturbs another peer; the
//! per-packet path takes no lock and logs at `trace` at most.

mod allocator;
mod core;
mod dtls;
mod offer;
mod rewrite;
pub mod sim;
mod simulcast;
mod speaking;
mod timers;
mod vp8;

use std::fmt;
use std::net::SocketAddr;

pub use self::allocator::EstimateSource;
pub use self::core::{LayerQosView, MediaCore, ParticipantQosView, TrackQosView};
use crate::ids::TrackId;

/// Configuration of one media core (one per worker thread).
#[derive(Debug, Clone)]
pub struct MediaConfig {
    /// The advertised ICE host candidate: the worker's UDP address as clients reach it.
    /// Every datagram is handed to str0m with this as its destination.
    pub host: SocketAddr,
    /// RTX cache of each outgoing video stream, in packets. Bounds subscriber memory:
    /// 1 Mbit/s video is ~100 packets/s of ~1.2 KB.
    pub rtx_cache_video_packets: usize,
    /// RTX cache of each outgoing audio stream, in packets.
    pub rtx_cache_audio_packets: usize,
    /// Minimum spacing of keyframe requests sent to one publisher stream.
    pub keyframe_request_interval: std::time::Duration,
}

impl MediaConfig {
    /// Defaults for `host`: caches sized to keep a subscriber `Rtc` well under 300 KB.
    pub fn new(host: SocketAddr) -> Self {
        Self {
            host,
            rtx_cache_video_packets: 150,
            rtx_cache_audio_packets: 50,
            keyframe_request_interval: std::time::Duration::from_millis(500),
        }
    }
}

/// Which of a participant's two peer connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PcKind {
    /// Client → server media (the client offers sendonly m-lines).
    Publish,
    /// Server → client media (the client offers recvonly m-lines).
    Subscribe,
}

/// Audio or video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaKind {
    /// Audio.
    Audio,
    /// Video.
    Video,
}

/// What a published track carries (protocol-v1 `tracks[].source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrackSource {
    /// Microphone audio.
    Microphone,
    /// Camera video.
    Camera,
    /// Screen share video.
    Screen,
    /// Screen share audio.
    ScreenAudio,
}

/// The codec a track is published with (subscribers get it unchanged).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CodecName {
    /// Opus audio.
    Opus,
    /// VP8 video.
    Vp8,
    /// VP9 video.
    Vp9,
    /// H.264 video (packetization-mode 1).
    H264,
    /// AV1 video.
    Av1,
}

/// A simulcast layer (rid `q`, `h`, `f`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Layer {
    /// Quarter resolution (lowest).
    Q,
    /// Half resolution.
    H,
    /// Full resolution (highest).
    F,
}

impl Layer {
    /// The conventional rid of this layer.
    pub fn rid(self) -> &'static str {
        match self {
            Layer::Q => "q",
            Layer::H => "h",
            Layer::F => "f",
        }
    }
}

/// One published track as the answer reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackInfo {
    /// Server-minted id, stable for the mid across renegotiations.
    pub track_id: TrackId,
    /// The publish m-line carrying it.
    pub mid: String,
    /// Audio or video.
    pub kind: MediaKind,
    /// Declared by the client.
    pub source: TrackSource,
    /// Negotiated codec.
    pub codec: CodecName,
    /// Simulcast rids, lowest first; empty without simulcast.
    pub simulcast_rids: Vec<String>,
}

/// Answer to a publish offer.
#[derive(Debug, Clone)]
pub struct PublishAnswer {
    /// The SDP answer for the client.
    pub sdp: String,
    /// All current tracks of the participant.
    pub tracks: Vec<TrackInfo>,
    /// Tracks that appeared with this offer.
    pub added: Vec<TrackId>,
    /// Tracks this offer unpublished.
    pub removed: Vec<TrackId>,
}

/// Why a subscribe m-line was not served (wire codes of protocol-v1 §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// No such track on this core, or the m-line was not named in the subscriptions.
    UnknownTrack,
    /// The offer lacks the publisher's codec.
    CodecUnsupported,
}

impl RejectReason {
    /// The wire code.
    pub fn code(self) -> &'static str {
        match self {
            RejectReason::UnknownTrack => "unknown_track",
            RejectReason::CodecUnsupported => "codec_unsupported",
        }
    }
}

/// Answer to a subscribe offer.
#[derive(Debug, Clone)]
pub struct SubscribeAnswer {
    /// The SDP answer for the client.
    pub sdp: String,
    /// M-lines answered inactive, with the reason.
    pub rejected: Vec<(String, RejectReason)>,
}

/// Why an offer or candidate was refused. The `String`s are reasons for humans (logs and
/// the error message to the client); they never contain secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NegotiationError {
    /// The SDP could not be parsed or is inconsistent.
    InvalidSdp(String),
    /// A sending m-line of a publish offer has no `source` in `tracks`.
    MissingSource(String),
    /// A publish offer's m-line kind does not fit its declared source (audio vs video).
    SourceMismatch(String),
    /// str0m refused the offer (e.g. no fingerprint, no common codec, both ICE-lite).
    Rejected(String),
    /// A candidate for a peer connection that has not been offered yet, or unparseable.
    InvalidCandidate(String),
    /// The participant has no such peer connection.
    NoPeerConnection,
}

impl fmt::Display for NegotiationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NegotiationError::InvalidSdp(r) => write!(f, "invalid SDP: {r}"),
            NegotiationError::MissingSource(mid) => {
                write!(f, "sending m-line {mid} has no source in tracks")
            }
            NegotiationError::SourceMismatch(mid) => {
                write!(f, "m-line {mid}: media kind does not match its source")
            }
            NegotiationError::Rejected(r) => write!(f, "offer rejected: {r}"),
            NegotiationError::InvalidCandidate(r) => write!(f, "invalid candidate: {r}"),
            NegotiationError::NoPeerConnection => write!(f, "no such peer connection"),
        }
    }
}

impl std::error::Error for NegotiationError {}

/// Something the engine should know about, drained with [`MediaCore::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaEvent {
    /// ICE and DTLS are up on this peer connection.
    PeerConnected {
        /// The participant.
        who: crate::ids::SessionId,
        /// Which of its peer connections.
        pc: PcKind,
    },
    /// ICE went `Disconnected` (no binding request for 15 s) or DTLS closed. The engine
    /// applies its own grace period before removing the participant.
    PeerDisconnected {
        /// The participant.
        who: crate::ids::SessionId,
        /// Which of its peer connections.
        pc: PcKind,
    },
    /// The first RTP packet of a track arrived.
    TrackFlowing {
        /// The track.
        track: TrackId,
    },
    /// A participant started or stopped speaking (its microphone's audio levels).
    Speaking {
        /// The participant.
        who: crate::ids::SessionId,
        /// Speaking now.
        speaking: bool,
        /// Smoothed level, -dBov (0 loudest, 127 silence).
        level: u8,
    },
    /// The layer forwarded to a subscriber changed (`None`: nothing forwarded).
    LayerChanged {
        /// The subscriber.
        subscriber: crate::ids::SessionId,
        /// The track.
        track: TrackId,
        /// The new layer; `None` when nothing is forwarded.
        layer: Option<Layer>,
    },
}

/// Cumulative counters, exported by the driver as metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MediaStats {
    /// RTP packets handed to subscriber streams.
    pub forwarded_packets: u64,
    /// Payload bytes of those packets.
    pub forwarded_bytes: u64,
    /// Datagrams no peer connection accepted (unknown address, bad STUN, …).
    pub dropped_unroutable: u64,
    /// Datagrams an `Rtc` refused (malformed, failed authentication, …).
    pub dropped_invalid: u64,
    /// Incoming RTP of no known track.
    pub dropped_unknown_stream: u64,
    /// Packets not forwarded to a subscriber because it was muted, deafened or paused.
    pub dropped_muted: u64,
    /// Packets held back while a subscriber waited for a keyframe or its connection.
    pub dropped_waiting: u64,
    /// Packets whose payload type has no counterpart at the subscriber.
    pub dropped_no_codec: u64,
    /// Keyframe requests (PLI/FIR) received from subscribers.
    pub keyframe_requests_in: u64,
    /// Keyframe requests sent to publishers (after throttling).
    pub keyframe_requests_out: u64,
    /// NACKs received from subscribers (reported every 200 ms per m-line).
    pub nacks_in: u64,
    /// Peer connections created.
    pub peer_connections_created: u64,
    /// Simulcast layer switches of subscriptions (the first layer is not a switch).
    pub layer_switches: u64,
}
