//! Server → client messages (protocol-v1 §4 responses, §5 events) and their encoding
//! into the §2 envelope.
//!
//! Invariant: [`encode_server_message`] writes exactly the keys `type`, `request_id`,
//! `channel_id`, `seq`, `payload`, with each payload shaped as the spec's table says.
//! Messages are plain values: the session clones them for broadcasts and keeps them
//! for idempotent replay, and stamps `request_id` / `channel_id` / `seq` per socket at
//! encoding time. The resume token is written out (it is for the client); the
//! [`Secret`] wrapper only keeps it out of `Debug` output.

use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use serde_json::{Map, Value};

use crate::ids::{ChannelId, DeviceId, RequestId, SessionId, TrackId, UserUid};
use crate::secret::Secret;

use super::candidate::IceCandidate;
use super::error::ErrorCode;
use super::objects::{
    KickReason, Layer, LeaveReason, MediaState, Mid, Participant, Track, UnpublishReason,
};

/// Highest `level` of `rtc.speaking` (-dBov, RFC 6464 range).
const MAX_SPEAKING_LEVEL: u8 = 127;

/// The `rtc.joined` payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The new (or resumed) session.
    pub session_id: SessionId,
    /// The joined user.
    pub user_uid: UserUid,
    /// The joined device.
    pub device_id: DeviceId,
    /// Granted permissions (`speak`, `video`, `screenshare`).
    pub permissions: Vec<String>,
    /// Single-use token to resume this session after a disconnect.
    pub resume_token: Secret<String>,
    /// Whether this answers a resume.
    pub resumed: bool,
    /// Everyone else in the channel.
    pub participants: Vec<Participant>,
    /// Current ICE servers (with fresh TURN credentials), as JSON objects.
    pub ice_servers: Vec<Value>,
}

/// A published m-line and the track id minted for it (`rtc.answer.publish`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct PublishedTrackRef {
    /// The m-line's mid.
    pub mid: Mid,
    /// Its track.
    pub track_id: TrackId,
}

/// A subscribe m-line the server could not serve (`rtc.answer.subscribe`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Rejected {
    /// The m-line's mid.
    pub mid: Mid,
    /// Why: `unknown_track`, `codec_unsupported` or `forbidden`.
    pub code: ErrorCode,
}

/// One server message, one variant per server type of §4 and §5.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMessage {
    /// `rtc.joined`.
    Joined(Joined),
    /// `rtc.answer.publish`.
    AnswerPublish {
        /// The SDP answer.
        sdp: String,
        /// All current tracks of the publish peer connection.
        tracks: Vec<PublishedTrackRef>,
    },
    /// `rtc.answer.subscribe`.
    AnswerSubscribe {
        /// The SDP answer.
        sdp: String,
        /// M-lines answered inactive, possibly none.
        rejected: Vec<Rejected>,
    },
    /// `rtc.participant.joined`.
    ParticipantJoined(Participant),
    /// `rtc.participant.left`.
    ParticipantLeft {
        /// The departed session.
        session_id: SessionId,
        /// Its user.
        user_uid: UserUid,
        /// Its device.
        device_id: DeviceId,
        /// Why it went.
        reason: LeaveReason,
    },
    /// `rtc.track.published`.
    TrackPublished(Track),
    /// `rtc.track.unpublished`.
    TrackUnpublished {
        /// The gone track.
        track_id: TrackId,
        /// Its publisher.
        session_id: SessionId,
        /// Why it went.
        reason: UnpublishReason,
    },
    /// `rtc.media.state` (event): someone's full new media state.
    MediaStateChanged {
        /// Whose state.
        session_id: SessionId,
        /// Its user.
        user_uid: UserUid,
        /// The full new state (its fields are flattened into the payload).
        state: MediaState,
    },
    /// `rtc.speaking`.
    Speaking {
        /// Who.
        session_id: SessionId,
        /// Its user.
        user_uid: UserUid,
        /// Started (`true`) or stopped speaking.
        speaking: bool,
        /// Audio level in -dBov, 0 (loudest) to 127; larger values are sent as 127.
        level: u8,
    },
    /// `rtc.layer.changed`.
    LayerChanged {
        /// The subscribed track.
        track_id: TrackId,
        /// The layer now flowing; `None` (`null`) when paused.
        layer: Option<Layer>,
    },
    /// `rtc.ice.candidate` (server trickle).
    IceCandidate(IceCandidate),
    /// `rtc.kicked`, sent just before the server closes the socket.
    Kicked {
        /// Why.
        reason: KickReason,
        /// Human-readable detail.
        message: String,
    },
    /// `rtc.error`.
    Error {
        /// The wire code.
        code: ErrorCode,
        /// Human-readable detail.
        message: String,
        /// When to retry (`rate_limited`); omitted on the wire when `None`.
        retry_after_ms: Option<u64>,
    },
    /// `rtc.ack`, payload `{}`.
    Ack,
    /// `rtc.pong`, echoing the ping's payload.
    Pong(Map<String, Value>),
}

impl ServerMessage {
    /// The wire `type` of this message.
    pub fn type_name(&self) -> &'static str {
        match self {
            ServerMessage::Joined(_) => "rtc.joined",
            ServerMessage::AnswerPublish { .. } => "rtc.answer.publish",
            ServerMessage::AnswerSubscribe { .. } => "rtc.answer.subscribe",
            ServerMessage::ParticipantJoined(_) => "rtc.participant.joined",
            ServerMessage::ParticipantLeft { .. } => "rtc.participant.left",
            ServerMessage::TrackPublished(_) => "rtc.track.published",
            ServerMessage::TrackUnpublished { .. } => "rtc.track.unpublished",
            ServerMessage::MediaStateChanged { .. } => "rtc.media.state",
            ServerMessage::Speaking { .. } => "rtc.speaking",
            ServerMessage::LayerChanged { .. } => "rtc.layer.changed",
            ServerMessage::IceCandidate(_) => "rtc.ice.candidate",
            ServerMessage::Kicked { .. } => "rtc.kicked",
            ServerMessage::Error { .. } => "rtc.error",
            ServerMessage::Ack => "rtc.ack",
            ServerMessage::Pong(_) => "rtc.pong",
        }
    }
}

/// Encodes `msg` as one text frame: `{"type", "request_id", "channel_id", "seq",
/// "payload"}`. `request_id` is `None` for events and `channel_id` is `None` only
/// before a join when the request's own was malformed; both are then `null`.
pub fn encode_server_message(
    msg: &ServerMessage,
    request_id: Option<&RequestId>,
    channel_id: Option<&ChannelId>,
    seq: u64,
) -> String {
    #[derive(Serialize)]
    struct Envelope<'a> {
        #[serde(rename = "type")]
        ty: &'static str,
        request_id: Option<&'a RequestId>,
        channel_id: Option<&'a ChannelId>,
        seq: u64,
        payload: Payload<'a>,
    }
    let env = Envelope {
        ty: msg.type_name(),
        request_id,
        channel_id,
        seq,
        payload: Payload(msg),
    };
    serde_json::to_string(&env)
        .expect("server messages serialize: string keys only and no non-finite floats")
}

/// The `payload` object of a message, written field by field so its shape is visible
/// next to the spec's table.
struct Payload<'a>(&'a ServerMessage);

impl Serialize for Payload<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        match self.0 {
            ServerMessage::Joined(j) => {
                m.serialize_entry("session_id", &j.session_id)?;
                m.serialize_entry("user_uid", &j.user_uid)?;
                m.serialize_entry("device_id", &j.device_id)?;
                m.serialize_entry("permissions", &j.permissions)?;
                m.serialize_entry("resume_token", j.resume_token.expose())?;
                m.serialize_entry("resumed", &j.resumed)?;
                m.serialize_entry("participants", &j.participants)?;
                m.serialize_entry("ice_servers", &j.ice_servers)?;
            }
            ServerMessage::AnswerPublish { sdp, tracks } => {
                m.serialize_entry("sdp", sdp)?;
                m.serialize_entry("tracks", tracks)?;
            }
            ServerMessage::AnswerSubscribe { sdp, rejected } => {
                m.serialize_entry("sdp", sdp)?;
                m.serialize_entry("rejected", rejected)?;
            }
            ServerMessage::ParticipantJoined(p) => m.serialize_entry("participant", p)?,
            ServerMessage::ParticipantLeft {
                session_id,
                user_uid,
                device_id,
                reason,
            } => {
                m.serialize_entry("session_id", session_id)?;
                m.serialize_entry("user_uid", user_uid)?;
                m.serialize_entry("device_id", device_id)?;
                m.serialize_entry("reason", reason)?;
            }
            ServerMessage::TrackPublished(t) => m.serialize_entry("track", t)?,
            ServerMessage::TrackUnpublished {
                track_id,
                session_id,
                reason,
            } => {
                m.serialize_entry("track_id", track_id)?;
                m.serialize_entry("session_id", session_id)?;
                m.serialize_entry("reason", reason)?;
            }
            ServerMessage::MediaStateChanged {
                session_id,
                user_uid,
                state,
            } => {
                m.serialize_entry("session_id", session_id)?;
                m.serialize_entry("user_uid", user_uid)?;
                m.serialize_entry("audio_muted", &state.audio_muted)?;
                m.serialize_entry("video_muted", &state.video_muted)?;
                m.serialize_entry("deafened", &state.deafened)?;
            }
            ServerMessage::Speaking {
                session_id,
                user_uid,
                speaking,
                level,
            } => {
                m.serialize_entry("session_id", session_id)?;
                m.serialize_entry("user_uid", user_uid)?;
                m.serialize_entry("speaking", speaking)?;
                // The spec's range is 0–127; clamp rather than send an out-of-range
                // value if a caller passes a raw byte.
                m.serialize_entry("level", &(*level).min(MAX_SPEAKING_LEVEL))?;
            }
            ServerMessage::LayerChanged { track_id, layer } => {
                m.serialize_entry("track_id", track_id)?;
                m.serialize_entry("layer", layer)?;
            }
            ServerMessage::IceCandidate(c) => {
                m.serialize_entry("pc", &c.pc)?;
                m.serialize_entry("candidate", &c.candidate)?;
                m.serialize_entry("sdp_mid", &c.sdp_mid)?;
                m.serialize_entry("sdp_mline_index", &c.sdp_mline_index)?;
            }
            ServerMessage::Kicked { reason, message } => {
                m.serialize_entry("reason", reason)?;
                m.serialize_entry("message", message)?;
            }
            ServerMessage::Error {
                code,
                message,
                retry_after_ms,
            } => {
                m.serialize_entry("code", code)?;
                m.serialize_entry("message", message)?;
                if let Some(ms) = retry_after_ms {
                    m.serialize_entry("retry_after_ms", ms)?;
                }
            }
            ServerMessage::Ack => {}
            ServerMessage::Pong(payload) => {
                for (k, v) in payload {
                    m.serialize_entry(k, v)?;
                }
            }
        }
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::protocol::{Codec, Kind, PeerKind, Source};

    fn sid() -> SessionId {
        SessionId::parse("s_9f").unwrap()
    }

    fn uid() -> UserUid {
        UserUid::parse("u123").unwrap()
    }

    fn did() -> DeviceId {
        DeviceId::parse("d1").unwrap()
    }

    fn tid() -> TrackId {
        TrackId::parse("t_1").unwrap()
    }

    fn track() -> Track {
        Track {
            track_id: tid(),
            session_id: sid(),
            user_uid: uid(),
            kind: Kind::Audio,
            source: Source::Microphone,
            simulcast: vec![],
            codec: Codec::Opus,
            muted: true,
        }
    }

    fn track_json() -> Value {
        json!({"track_id": "t_1", "session_id": "s_9f", "user_uid": "u123", "kind": "audio",
               "source": "microphone", "simulcast": [], "codec": "opus", "muted": true})
    }

    fn participant() -> Participant {
        Participant {
            session_id: sid(),
            user_uid: uid(),
            device_id: did(),
            media_state: MediaState {
                audio_muted: true,
                ..Default::default()
            },
            tracks: vec![track()],
        }
    }

    fn participant_json() -> Value {
        json!({"session_id": "s_9f", "user_uid": "u123", "device_id": "d1",
               "media_state": {"audio_muted": true, "video_muted": false, "deafened": false},
               "tracks": [track_json()]})
    }

    /// Encodes as an event on channel `ch_42` with seq 7 and returns the parsed frame,
    /// after checking the envelope's exact key set.
    fn event(msg: &ServerMessage) -> Value {
        let ch = ChannelId::parse("ch_42").unwrap();
        let v: Value = serde_json::from_str(&encode_server_message(msg, None, Some(&ch), 7))
            .expect("valid JSON");
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            ["channel_id", "payload", "request_id", "seq", "type"]
        );
        assert_eq!(v["type"], msg.type_name());
        assert_eq!(v["request_id"], Value::Null);
        assert_eq!(v["channel_id"], "ch_42");
        assert_eq!(v["seq"], 7);
        v
    }

    #[test]
    fn envelope_has_the_spec_key_order_and_echoes_ids() {
        let rid = RequestId::parse("req_123").unwrap();
        let ch = ChannelId::parse("ch_42").unwrap();
        assert_eq!(
            encode_server_message(&ServerMessage::Ack, Some(&rid), Some(&ch), 17),
            r#"{"type":"rtc.ack","request_id":"req_123","channel_id":"ch_42","seq":17,"payload":{}}"#
        );
        assert_eq!(
            encode_server_message(&ServerMessage::Ack, Some(&rid), None, 1),
            r#"{"type":"rtc.ack","request_id":"req_123","channel_id":null,"seq":1,"payload":{}}"#
        );
    }

    #[test]
    fn joined_writes_the_resume_token_but_debug_hides_it() {
        let msg = ServerMessage::Joined(Joined {
            session_id: sid(),
            user_uid: uid(),
            device_id: did(),
            permissions: vec!["speak".into(), "video".into()],
            resume_token: Secret::new("rt_secret".into()),
            resumed: false,
            participants: vec![participant()],
            ice_servers: vec![json!({"urls": ["stun:stun.example.org:3478"]})],
        });
        assert_eq!(
            event(&msg)["payload"],
            json!({"session_id": "s_9f", "user_uid": "u123", "device_id": "d1",
                   "permissions": ["speak", "video"], "resume_token": "rt_secret",
                   "resumed": false, "participants": [participant_json()],
                   "ice_servers": [{"urls": ["stun:stun.example.org:3478"]}]})
        );
        assert!(!format!("{msg:?}").contains("rt_secret"));
    }

    #[test]
    fn answers_have_the_spec_shape() {
        let publish = ServerMessage::AnswerPublish {
            sdp: "v=0".into(),
            tracks: vec![PublishedTrackRef {
                mid: Mid::parse("0").unwrap(),
                track_id: tid(),
            }],
        };
        assert_eq!(
            event(&publish)["payload"],
            json!({"sdp": "v=0", "tracks": [{"mid": "0", "track_id": "t_1"}]})
        );
        let subscribe = ServerMessage::AnswerSubscribe {
            sdp: "v=0".into(),
            rejected: vec![Rejected {
                mid: Mid::parse("2").unwrap(),
                code: ErrorCode::UnknownTrack,
            }],
        };
        assert_eq!(
            event(&subscribe)["payload"],
            json!({"sdp": "v=0", "rejected": [{"mid": "2", "code": "unknown_track"}]})
        );
        let none_rejected = ServerMessage::AnswerSubscribe {
            sdp: "v=0".into(),
            rejected: vec![],
        };
        assert_eq!(
            event(&none_rejected)["payload"],
            json!({"sdp": "v=0", "rejected": []})
        );
    }

    #[test]
    fn participant_and_track_events_have_the_spec_shape() {
        assert_eq!(
            event(&ServerMessage::ParticipantJoined(participant()))["payload"],
            json!({"participant": participant_json()})
        );
        let left = ServerMessage::ParticipantLeft {
            session_id: sid(),
            user_uid: uid(),
            device_id: did(),
            reason: LeaveReason::Replaced,
        };
        assert_eq!(
            event(&left)["payload"],
            json!({"session_id": "s_9f", "user_uid": "u123", "device_id": "d1",
                   "reason": "replaced"})
        );
        assert_eq!(
            event(&ServerMessage::TrackPublished(track()))["payload"],
            json!({"track": track_json()})
        );
        let gone = ServerMessage::TrackUnpublished {
            track_id: tid(),
            session_id: sid(),
            reason: UnpublishReason::PublishBlocked,
        };
        assert_eq!(
            event(&gone)["payload"],
            json!({"track_id": "t_1", "session_id": "s_9f", "reason": "publish_blocked"})
        );
    }

    #[test]
    fn media_speaking_and_layer_events_have_the_spec_shape() {
        let state = ServerMessage::MediaStateChanged {
            session_id: sid(),
            user_uid: uid(),
            state: MediaState {
                audio_muted: false,
                video_muted: true,
                deafened: true,
            },
        };
        let v = event(&state);
        assert_eq!(v["type"], "rtc.media.state");
        assert_eq!(
            v["payload"],
            json!({"session_id": "s_9f", "user_uid": "u123", "audio_muted": false,
                   "video_muted": true, "deafened": true})
        );
        let speaking = |level| ServerMessage::Speaking {
            session_id: sid(),
            user_uid: uid(),
            speaking: true,
            level,
        };
        assert_eq!(
            event(&speaking(30))["payload"],
            json!({"session_id": "s_9f", "user_uid": "u123", "speaking": true, "level": 30})
        );
        assert_eq!(event(&speaking(255))["payload"]["level"], 127);
        let layer = |layer| ServerMessage::LayerChanged {
            track_id: tid(),
            layer,
        };
        assert_eq!(
            event(&layer(Some(Layer::H)))["payload"],
            json!({"track_id": "t_1", "layer": "h"})
        );
        assert_eq!(
            event(&layer(None))["payload"],
            json!({"track_id": "t_1", "layer": null})
        );
    }

    #[test]
    fn candidate_kicked_error_ack_and_pong_have_the_spec_shape() {
        let cand = ServerMessage::IceCandidate(IceCandidate {
            pc: PeerKind::Subscribe,
            candidate: Some("candidate:1 1 udp 2130706431 203.0.113.1 40000 typ host".into()),
            sdp_mid: Some(Mid::parse("0").unwrap()),
            sdp_mline_index: Some(0),
        });
        assert_eq!(
            event(&cand)["payload"],
            json!({"pc": "subscribe",
                   "candidate": "candidate:1 1 udp 2130706431 203.0.113.1 40000 typ host",
                   "sdp_mid": "0", "sdp_mline_index": 0})
        );
        let kicked = ServerMessage::Kicked {
            reason: KickReason::TimeoutExpiredSession,
            message: "bye".into(),
        };
        assert_eq!(
            event(&kicked)["payload"],
            json!({"reason": "timeout_expired_session", "message": "bye"})
        );
        let limited = ServerMessage::Error {
            code: ErrorCode::RateLimited,
            message: "slow down".into(),
            retry_after_ms: Some(1500),
        };
        assert_eq!(
            event(&limited)["payload"],
            json!({"code": "rate_limited", "message": "slow down", "retry_after_ms": 1500})
        );
        let plain = ServerMessage::Error {
            code: ErrorCode::BadRequest,
            message: "payload.sdp: required".into(),
            retry_after_ms: None,
        };
        assert_eq!(
            event(&plain)["payload"],
            json!({"code": "bad_request", "message": "payload.sdp: required"})
        );
        assert_eq!(event(&ServerMessage::Ack)["payload"], json!({}));
        let echo = json!({"t": 1712, "n": {"a": [1, null]}});
        let Value::Object(map) = echo.clone() else {
            unreachable!("literal is an object")
        };
        assert_eq!(event(&ServerMessage::Pong(map))["payload"], echo);
    }

    #[test]
    fn every_server_type_name_is_the_spec_one() {
        let all = [
            (
                ServerMessage::Joined(Joined {
                    session_id: sid(),
                    user_uid: uid(),
                    device_id: did(),
                    permissions: vec![],
                    resume_token: Secret::new("rt".into()),
                    resumed: true,
                    participants: vec![],
                    ice_servers: vec![],
                }),
                "rtc.joined",
            ),
            (
                ServerMessage::AnswerPublish {
                    sdp: String::new(),
                    tracks: vec![],
                },
                "rtc.answer.publish",
            ),
            (
                ServerMessage::AnswerSubscribe {
                    sdp: String::new(),
                    rejected: vec![],
                },
                "rtc.answer.subscribe",
            ),
            (
                ServerMessage::ParticipantJoined(participant()),
                "rtc.participant.joined",
            ),
            (
                ServerMessage::ParticipantLeft {
                    session_id: sid(),
                    user_uid: uid(),
                    device_id: did(),
                    reason: LeaveReason::Left,
                },
                "rtc.participant.left",
            ),
            (
                ServerMessage::TrackPublished(track()),
                "rtc.track.published",
            ),
            (
                ServerMessage::TrackUnpublished {
                    track_id: tid(),
                    session_id: sid(),
                    reason: UnpublishReason::Unpublished,
                },
                "rtc.track.unpublished",
            ),
            (
                ServerMessage::MediaStateChanged {
                    session_id: sid(),
                    user_uid: uid(),
                    state: MediaState::default(),
                },
                "rtc.media.state",
            ),
            (
                ServerMessage::Speaking {
                    session_id: sid(),
                    user_uid: uid(),
                    speaking: false,
                    level: 127,
                },
                "rtc.speaking",
            ),
            (
                ServerMessage::LayerChanged {
                    track_id: tid(),
                    layer: None,
                },
                "rtc.layer.changed",
            ),
            (
                ServerMessage::IceCandidate(IceCandidate {
                    pc: PeerKind::Publish,
                    candidate: None,
                    sdp_mid: None,
                    sdp_mline_index: None,
                }),
                "rtc.ice.candidate",
            ),
            (
                ServerMessage::Kicked {
                    reason: KickReason::Kicked,
                    message: String::new(),
                },
                "rtc.kicked",
            ),
            (
                ServerMessage::Error {
                    code: ErrorCode::Internal,
                    message: String::new(),
                    retry_after_ms: None,
                },
                "rtc.error",
            ),
            (ServerMessage::Ack, "rtc.ack"),
            (ServerMessage::Pong(Map::new()), "rtc.pong"),
        ];
        for (msg, name) in &all {
            assert_eq!(msg.type_name(), *name);
            assert_eq!(event(msg)["type"], *name);
        }
    }
}
