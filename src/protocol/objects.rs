//! The shared wire objects of protocol-v1 §3–§5: `participant`, `track`, media state,
//! the closed string vocabularies (kind, source, layer, codec, reasons) and the `Mid`
//! newtype.
//!
//! Invariants: every enum serializes as its exact snake_case wire string and
//! [`wire_enum`]'s `from_wire` accepts exactly those strings; a [`Mid`] is 1–32 bytes of
//! `[A-Za-z0-9_.:-]`. Built by the engine and session (for events and snapshots) and
//! by the client-message parser (for the vocabularies a client may send).

use std::fmt;

use serde::Serialize;

use crate::ids::{DeviceId, IdError, SessionId, TrackId, UserUid, check_id};

/// Declares a closed wire vocabulary: the enum, `as_str`, `from_wire`, Display and
/// Serialize, from one table so the three can never disagree.
macro_rules! wire_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $wire:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl $name {
            /// The wire string.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $wire,)+
                }
            }

            /// Parses the wire string; `None` for anything else. Public so test
            /// clients and tools can read server messages with the same vocabulary.
            pub fn from_wire(s: &str) -> Option<Self> {
                match s {
                    $($wire => Some($name::$variant),)+
                    _ => None,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    };
}

wire_enum!(
    /// Media kind of a track.
    Kind {
        /// An audio track.
        Audio = "audio",
        /// A video track.
        Video = "video",
    }
);

wire_enum!(
    /// What a published track carries; decides the permission it needs (§4).
    Source {
        /// A microphone; needs `speak`.
        Microphone = "microphone",
        /// A camera; needs `video`.
        Camera = "camera",
        /// A shared screen or window; needs `screenshare`.
        Screen = "screen",
        /// The audio of a shared screen; needs `speak`.
        ScreenAudio = "screen_audio",
    }
);

impl Source {
    /// The media kind this source produces.
    pub fn kind(self) -> Kind {
        match self {
            Source::Microphone | Source::ScreenAudio => Kind::Audio,
            Source::Camera | Source::Screen => Kind::Video,
        }
    }
}

wire_enum!(
    /// A simulcast layer (rid), ordered lowest first: `Q < H < F`.
    Layer {
        /// Quarter resolution.
        Q = "q",
        /// Half resolution.
        H = "h",
        /// Full resolution.
        F = "f",
    }
);

// Quality order is part of the contract (`max_layer` caps, layer selection), so it is
// spelled out here rather than left to the declaration order.
impl PartialOrd for Layer {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Layer {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        fn rank(l: Layer) -> u8 {
            match l {
                Layer::Q => 0,
                Layer::H => 1,
                Layer::F => 2,
            }
        }
        rank(*self).cmp(&rank(*other))
    }
}

wire_enum!(
    /// A negotiated codec (§9).
    Codec {
        /// Opus audio.
        Opus = "opus",
        /// VP8 video.
        Vp8 = "vp8",
        /// VP9 video.
        Vp9 = "vp9",
        /// H.264 video, packetization-mode 1.
        H264 = "h264",
        /// AV1 video.
        Av1 = "av1",
    }
);

wire_enum!(
    /// Why a participant is gone (`rtc.participant.left`).
    LeaveReason {
        /// It sent `rtc.leave`.
        Left = "left",
        /// Its socket dropped and the grace window passed.
        Disconnected = "disconnected",
        /// A moderator kicked it.
        Kicked = "kicked",
        /// It was banned.
        Banned = "banned",
        /// The same user and device joined again.
        Replaced = "replaced",
    }
);

wire_enum!(
    /// Why a track is gone (`rtc.track.unpublished`).
    UnpublishReason {
        /// Removed by renegotiation.
        Unpublished = "unpublished",
        /// Removed by a moderation timeout.
        PublishBlocked = "publish_blocked",
        /// Its publisher left.
        Left = "left",
        /// Its publisher disconnected.
        Disconnected = "disconnected",
        /// Its publisher was kicked.
        Kicked = "kicked",
        /// Its publisher was banned.
        Banned = "banned",
        /// Its publisher was replaced by a new session of the same device.
        Replaced = "replaced",
    }
);

impl From<LeaveReason> for UnpublishReason {
    /// A departing participant's tracks go with the same reason (§5).
    fn from(r: LeaveReason) -> Self {
        match r {
            LeaveReason::Left => UnpublishReason::Left,
            LeaveReason::Disconnected => UnpublishReason::Disconnected,
            LeaveReason::Kicked => UnpublishReason::Kicked,
            LeaveReason::Banned => UnpublishReason::Banned,
            LeaveReason::Replaced => UnpublishReason::Replaced,
        }
    }
}

wire_enum!(
    /// Why the server is about to close the socket (`rtc.kicked`).
    KickReason {
        /// A moderator kicked the session.
        Kicked = "kicked",
        /// The user was banned.
        Banned = "banned",
        /// The same user and device joined again.
        Replaced = "replaced",
        /// The session had expired when the socket came back.
        TimeoutExpiredSession = "timeout_expired_session",
    }
);

wire_enum!(
    /// Which of a participant's two peer connections (§4, dual-peer model).
    PeerKind {
        /// Client → server media.
        Publish = "publish",
        /// Server → client media.
        Subscribe = "subscribe",
    }
);

/// A participant's media state (§4 `rtc.media.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
pub struct MediaState {
    /// Its own audio tracks are not forwarded.
    pub audio_muted: bool,
    /// Its own video tracks are not forwarded.
    pub video_muted: bool,
    /// No audio is forwarded to it.
    pub deafened: bool,
}

/// The subset of [`MediaState`] a client sent; `None` keeps the current value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MediaStatePatch {
    /// New `audio_muted`, if given.
    pub audio_muted: Option<bool>,
    /// New `video_muted`, if given.
    pub video_muted: Option<bool>,
    /// New `deafened`, if given.
    pub deafened: Option<bool>,
}

impl MediaState {
    /// Applies `patch`; returns whether anything changed (only then is the new state
    /// broadcast, §4).
    pub fn apply(&mut self, patch: &MediaStatePatch) -> bool {
        let before = *self;
        if let Some(v) = patch.audio_muted {
            self.audio_muted = v;
        }
        if let Some(v) = patch.video_muted {
            self.video_muted = v;
        }
        if let Some(v) = patch.deafened {
            self.deafened = v;
        }
        *self != before
    }
}

/// A published track as others see it (§3 `track`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Track {
    /// Server-minted id.
    pub track_id: TrackId,
    /// The publishing session.
    pub session_id: SessionId,
    /// The publishing user.
    pub user_uid: UserUid,
    /// Audio or video.
    pub kind: Kind,
    /// What it carries.
    pub source: Source,
    /// Rids offered by the publisher, lowest first; empty without simulcast.
    pub simulcast: Vec<String>,
    /// The publisher's codec, forwarded unchanged.
    pub codec: Codec,
    /// Whether the publisher muted this track's kind.
    pub muted: bool,
}

/// A participant as others see it (§3 `participant`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Participant {
    /// Its session.
    pub session_id: SessionId,
    /// Its user.
    pub user_uid: UserUid,
    /// Its device.
    pub device_id: DeviceId,
    /// Its current media state.
    pub media_state: MediaState,
    /// Its published tracks.
    pub tracks: Vec<Track>,
}

/// A media section id (`a=mid`), 1–32 bytes of `[A-Za-z0-9_.:-]`.
///
/// Stored inline so it is `Copy`: mids are short and passed around per m-line.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mid {
    len: u8,
    bytes: [u8; Mid::MAX_LEN],
}

impl Mid {
    /// Longest accepted mid, in bytes.
    pub const MAX_LEN: usize = 32;

    /// Parses and validates a mid received from outside.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        check_id(s, Self::MAX_LEN)?;
        let mut bytes = [0u8; Self::MAX_LEN];
        bytes[..s.len()].copy_from_slice(s.as_bytes());
        Ok(Mid {
            // check_id bounded the length to MAX_LEN (32), which fits a u8.
            len: s.len() as u8,
            bytes,
        })
    }

    /// The mid as text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)])
            .expect("a Mid holds ASCII by construction (checked by parse)")
    }
}

// Ordered as text, not by the (length, bytes) layout.
impl PartialOrd for Mid {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Mid {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl fmt::Display for Mid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Mid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mid({})", self.as_str())
    }
}

impl Serialize for Mid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_round_trip_their_wire_strings() {
        for s in ["microphone", "camera", "screen", "screen_audio"] {
            let v = Source::from_wire(s).unwrap();
            assert_eq!(v.as_str(), s);
            assert_eq!(serde_json::to_string(&v).unwrap(), format!("\"{s}\""));
        }
        for s in ["q", "h", "f"] {
            assert_eq!(Layer::from_wire(s).unwrap().as_str(), s);
        }
        for s in ["opus", "vp8", "vp9", "h264", "av1"] {
            assert_eq!(Codec::from_wire(s).unwrap().to_string(), s);
        }
        assert_eq!(
            serde_json::to_string(&KickReason::TimeoutExpiredSession).unwrap(),
            "\"timeout_expired_session\""
        );
        assert_eq!(
            serde_json::to_string(&UnpublishReason::PublishBlocked).unwrap(),
            "\"publish_blocked\""
        );
        assert_eq!(Source::from_wire("Microphone"), None);
        assert_eq!(Layer::from_wire(""), None);
    }

    #[test]
    fn sources_have_their_kind() {
        assert_eq!(Source::Microphone.kind(), Kind::Audio);
        assert_eq!(Source::ScreenAudio.kind(), Kind::Audio);
        assert_eq!(Source::Camera.kind(), Kind::Video);
        assert_eq!(Source::Screen.kind(), Kind::Video);
    }

    #[test]
    fn layers_are_ordered_lowest_first() {
        assert!(Layer::Q < Layer::H && Layer::H < Layer::F);
        assert_eq!([Layer::F, Layer::Q, Layer::H].iter().max(), Some(&Layer::F));
    }

    #[test]
    fn leave_reasons_map_to_the_same_unpublish_reason() {
        for r in [
            LeaveReason::Left,
            LeaveReason::Disconnected,
            LeaveReason::Kicked,
            LeaveReason::Banned,
            LeaveReason::Replaced,
        ] {
            assert_eq!(UnpublishReason::from(r).as_str(), r.as_str());
        }
    }

    #[test]
    fn media_state_apply_reports_changes_only() {
        let mut s = MediaState::default();
        assert!(!s.apply(&MediaStatePatch::default()));
        let p = MediaStatePatch {
            audio_muted: Some(true),
            ..Default::default()
        };
        assert!(s.apply(&p));
        assert!(s.audio_muted && !s.video_muted && !s.deafened);
        assert!(!s.apply(&p), "same value again is no change");
        let q = MediaStatePatch {
            audio_muted: Some(true),
            video_muted: None,
            deafened: Some(true),
        };
        assert!(s.apply(&q));
        assert_eq!(
            s,
            MediaState {
                audio_muted: true,
                video_muted: false,
                deafened: true
            }
        );
    }

    #[test]
    fn mid_validates_and_is_inline() {
        let m = Mid::parse("0").unwrap();
        assert_eq!(m.as_str(), "0");
        assert_eq!(format!("{m:?}"), "Mid(0)");
        assert_eq!(serde_json::to_string(&m).unwrap(), "\"0\"");
        let long = "a".repeat(32);
        assert_eq!(Mid::parse(&long).unwrap().as_str(), long);
        assert_eq!(Mid::parse(&"a".repeat(33)), Err(IdError::TooLong(32)));
        assert_eq!(Mid::parse(""), Err(IdError::Empty));
        assert_eq!(Mid::parse("a b"), Err(IdError::BadChar));
        assert_ne!(Mid::parse("1").unwrap(), Mid::parse("10").unwrap());
        assert!(
            Mid::parse("10").unwrap() < Mid::parse("9").unwrap(),
            "text order"
        );
    }

    #[test]
    fn participant_serializes_with_spec_field_names() {
        let p = Participant {
            session_id: SessionId::parse("s_1").unwrap(),
            user_uid: UserUid::parse("u123").unwrap(),
            device_id: DeviceId::parse("d1").unwrap(),
            media_state: MediaState::default(),
            tracks: vec![Track {
                track_id: TrackId::parse("t_1").unwrap(),
                session_id: SessionId::parse("s_1").unwrap(),
                user_uid: UserUid::parse("u123").unwrap(),
                kind: Kind::Video,
                source: Source::Camera,
                simulcast: vec!["q".into(), "h".into(), "f".into()],
                codec: Codec::Vp8,
                muted: false,
            }],
        };
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "session_id": "s_1", "user_uid": "u123", "device_id": "d1",
                "media_state": {"audio_muted": false, "video_muted": false, "deafened": false},
                "tracks": [{"track_id": "t_1", "session_id": "s_1", "user_uid": "u123",
                            "kind": "video", "source": "camera", "simulcast": ["q", "h", "f"],
                            "codec": "vp8", "muted": false}]
            })
        );
    }
}
