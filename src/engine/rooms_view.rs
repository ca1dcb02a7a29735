//! The admin rooms view (`GET /v1/admin/rooms`) as one worker sees it: its rooms,
//! their participants (state, RTT) and each participant's published tracks with
//! bitrate, loss and layers. Built on request
//! ([`Command::RoomsView`](super::command::Command::RoomsView)) from counters the
//! media core keeps anyway (`media/qos.rs`); never on the packet path.

use std::time::Instant;

use serde::Serialize;

use super::{Engine, media_map};
use crate::ids::{ChannelId, SessionId, TrackId, UserUid};

/// One room.
#[derive(Debug, Clone, Serialize)]
pub struct RoomView {
    /// The channel.
    pub channel_id: ChannelId,
    /// The worker that owns it.
    pub worker: usize,
    /// How many participants.
    pub participant_count: usize,
    /// Its participants, in join order.
    pub participants: Vec<ParticipantView>,
}

/// One participant.
#[derive(Debug, Clone, Serialize)]
pub struct ParticipantView {
    /// Its session id.
    pub participant_id: SessionId,
    /// Who.
    pub user_uid: UserUid,
    /// `joined`, or `stale` while its socket is gone (reconnect grace).
    pub state: &'static str,
    /// Latest RTT to it, ms, once measured.
    pub rtt_ms: Option<f64>,
    /// Its published tracks.
    pub tracks: Vec<TrackView>,
}

/// One published track.
#[derive(Debug, Clone, Serialize)]
pub struct TrackView {
    /// The track.
    pub track_id: TrackId,
    /// `audio` or `video`.
    pub kind: &'static str,
    /// `microphone`, `camera`, `screen`, `screen_audio`.
    pub source: &'static str,
    /// Negotiated codec.
    pub codec: &'static str,
    /// Incoming payload bitrate, all layers.
    pub bitrate_bps: u64,
    /// Worst incoming loss fraction of its layers (0–1), once measured.
    pub loss: Option<f64>,
    /// Its layers, lowest first (one, with `rid` null, without simulcast).
    pub layers: Vec<LayerView>,
}

/// One layer of a track.
#[derive(Debug, Clone, Serialize)]
pub struct LayerView {
    /// `q`, `h`, `f` (or the publisher's rid); null without simulcast.
    pub rid: Option<String>,
    /// Packets arrived on it in the last 1.5 s.
    pub active: bool,
    /// Its incoming payload bitrate.
    pub bitrate_bps: u64,
}

impl Engine {
    /// This worker's rooms as the admin view shows them.
    pub(super) fn rooms_view(&self, now: Instant) -> Vec<RoomView> {
        self.rooms
            .iter()
            .map(|(channel, room)| RoomView {
                channel_id: channel.clone(),
                worker: self.cfg.worker_id,
                participant_count: room.members.len(),
                participants: room
                    .members
                    .iter()
                    .map(|m| {
                        let q = self.media.participant_qos(&m.session_id, now);
                        ParticipantView {
                            participant_id: m.session_id.clone(),
                            user_uid: m.user.clone(),
                            state: if m.stale_since.is_some() {
                                "stale"
                            } else {
                                "joined"
                            },
                            rtt_ms: q.rtt_ms,
                            tracks: q
                                .tracks
                                .into_iter()
                                .map(|t| TrackView {
                                    track_id: t.track_id,
                                    kind: media_map::kind_to_wire(t.kind).as_str(),
                                    source: media_map::source_to_wire(t.source).as_str(),
                                    codec: media_map::codec_to_wire(t.codec).as_str(),
                                    bitrate_bps: t.bitrate_bps,
                                    loss: t.loss,
                                    layers: t
                                        .layers
                                        .into_iter()
                                        .map(|l| LayerView {
                                            rid: l.rid,
                                            active: l.active,
                                            bitrate_bps: l.bitrate_bps,
                                        })
                                        .collect(),
                                })
                                .collect(),
                        }
                    })
                    .collect(),
            })
            .collect()
    }
}
