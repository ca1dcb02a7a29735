//! QoS bookkeeping of the media core: per peer connection and per track layer
//! counters, the bitrates derived from them, and the loss and RTT str0m measures.
//!
//! A child module of `core` (it reads the core's private state). On the packet path
//! it costs integer additions into fields that already exist — no allocation, no
//! lookup beyond the one the forwarding does anyway. Bitrates are computed once a
//! second per publish connection, when str0m delivers its `PeerStats` event, from
//! the byte counters' difference; reading them ([`MediaCore::participant_qos`],
//! [`MediaCore::session_qos`]) is for the admin view and the audit record at leave,
//! both on the control path.

use std::time::Instant;

use str0m::Event;
use str0m::media::Mid;

use super::{LAYER_IDLE, MediaCore, Pc};
use crate::audit::SessionQos;
use crate::ids::{SessionId, TrackId};
use crate::media::{CodecName, MediaKind, PcKind, TrackSource};

/// Counters of one peer connection.
#[derive(Debug, Default, Clone)]
pub(super) struct PcQos {
    /// RTP packets received (publish side).
    pub packets_in: u64,
    /// Their payload bytes.
    pub bytes_in: u64,
    /// RTP packets written to this connection (subscribe side).
    pub packets_out: u64,
    /// Their payload bytes.
    pub bytes_out: u64,
    /// Latest round-trip time, ms.
    pub rtt_ms: Option<f64>,
    rtt_sum_ms: f64,
    rtt_samples: u64,
    /// Latest fraction of incoming packets lost (0–1).
    pub ingress_loss: Option<f32>,
    /// Cumulative PLIs and FIRs received per m-line (str0m reports totals).
    keyframe_requests: Vec<(Mid, u64)>,
}

/// Counters of one layer of a published track.
#[derive(Debug, Default, Clone)]
pub(crate) struct LayerQos {
    /// RTP packets received.
    pub packets: u64,
    /// Their payload bytes.
    pub bytes: u64,
    /// `bytes` at the last rate computation, and when.
    mark: Option<(Instant, u64)>,
    /// Payload bitrate over the last rate interval.
    pub bitrate_bps: u64,
    /// Latest fraction lost on the way in (0–1).
    pub loss: Option<f32>,
}

impl LayerQos {
    /// Counts one received packet (the packet path).
    #[inline]
    pub(crate) fn count(&mut self, payload_len: usize) {
        self.packets += 1;
        self.bytes += payload_len as u64;
    }

    fn update_rate(&mut self, now: Instant) {
        if let Some((at, bytes)) = self.mark {
            let dt = now.saturating_duration_since(at).as_secs_f64();
            if dt >= 0.2 {
                let bits = self.bytes.saturating_sub(bytes) as f64 * 8.0;
                self.bitrate_bps = (bits / dt) as u64;
                self.mark = Some((now, self.bytes));
            }
        } else {
            self.mark = Some((now, self.bytes));
        }
    }
}

/// A layer in the admin view.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerQosView {
    /// The rid; `None` for a track without simulcast.
    pub rid: Option<String>,
    /// Packets arrived on it within the last 1.5 s.
    pub active: bool,
    /// Its payload bitrate.
    pub bitrate_bps: u64,
}

/// A published track in the admin view.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackQosView {
    /// The track.
    pub track_id: TrackId,
    /// Audio or video.
    pub kind: MediaKind,
    /// Declared source.
    pub source: TrackSource,
    /// Negotiated codec.
    pub codec: CodecName,
    /// Sum of its layers' bitrates.
    pub bitrate_bps: u64,
    /// Worst incoming loss fraction of its layers (0–1), when measured.
    pub loss: Option<f64>,
    /// Its layers, lowest first.
    pub layers: Vec<LayerQosView>,
}

/// A participant's media in the admin view.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ParticipantQosView {
    /// Latest RTT to it, ms (either peer connection).
    pub rtt_ms: Option<f64>,
    /// Its published tracks.
    pub tracks: Vec<TrackQosView>,
}

impl MediaCore {
    /// Takes the QoS facts out of a str0m event of connection `key` (called for
    /// every event; ignores the others).
    pub(super) fn note_qos_event(&mut self, now: Instant, key: usize, event: &Event) {
        match event {
            Event::PeerStats(st) => {
                let Some(pc) = self.pcs.get_mut(key) else {
                    return;
                };
                if let Some(rtt) = st.rtt {
                    let ms = rtt.as_secs_f64() * 1000.0;
                    pc.qos.rtt_ms = Some(ms);
                    pc.qos.rtt_sum_ms += ms;
                    pc.qos.rtt_samples += 1;
                }
                if st.ingress_loss_fraction.is_some() {
                    pc.qos.ingress_loss = st.ingress_loss_fraction;
                }
                if pc.kind == PcKind::Publish {
                    let who = pc.who.clone();
                    let tracks: Vec<usize> = self
                        .participants
                        .get(&who)
                        .map(|p| p.tracks.clone())
                        .unwrap_or_default();
                    for tk in tracks {
                        if let Some(t) = self.tracks.get_mut(tk) {
                            for l in &mut t.layers {
                                l.qos.update_rate(now);
                            }
                        }
                    }
                }
            }
            Event::MediaIngressStats(st) => {
                let Some(pc) = self.pcs.get(key) else {
                    return;
                };
                let Some(p) = self.participants.get(&pc.who) else {
                    return;
                };
                let found = p
                    .tracks
                    .iter()
                    .copied()
                    .find(|&t| self.tracks.get(t).is_some_and(|t| t.mid == st.mid));
                if let Some(t) = found.and_then(|tk| self.tracks.get_mut(tk)) {
                    let layer = match &st.rid {
                        Some(rid) => t.rids.iter().position(|r| r.as_str() == &**rid),
                        None => Some(0),
                    };
                    if let Some(l) = layer.and_then(|i| t.layers.get_mut(i))
                        && st.loss.is_some()
                    {
                        l.qos.loss = st.loss;
                    }
                }
            }
            Event::MediaEgressStats(st) => {
                let Some(pc) = self.pcs.get_mut(key) else {
                    return;
                };
                let total = st.plis + st.firs;
                match pc
                    .qos
                    .keyframe_requests
                    .iter_mut()
                    .find(|(m, _)| *m == st.mid)
                {
                    Some((_, n)) => *n = total,
                    None => pc.qos.keyframe_requests.push((st.mid, total)),
                }
            }
            _ => {}
        }
    }

    fn pcs_of(&self, who: &SessionId) -> [Option<&Pc>; 2] {
        let p = self.participants.get(who);
        [
            p.and_then(|p| p.publish).and_then(|k| self.pcs.get(k)),
            p.and_then(|p| p.subscribe).and_then(|k| self.pcs.get(k)),
        ]
    }

    /// Aggregate counters of a participant's session so far (the audit record at
    /// leave). Zeros for one the core does not know.
    pub fn session_qos(&self, who: &SessionId) -> SessionQos {
        let [publish, subscribe] = self.pcs_of(who);
        let mut q = SessionQos::default();
        let (mut rtt_sum, mut rtt_n) = (0.0, 0u64);
        for pc in [publish, subscribe].into_iter().flatten() {
            rtt_sum += pc.qos.rtt_sum_ms;
            rtt_n += pc.qos.rtt_samples;
        }
        if let Some(pc) = publish {
            q.packets_in = pc.qos.packets_in;
            q.bytes_in = pc.qos.bytes_in;
            q.loss = pc.qos.ingress_loss.map(f64::from);
        }
        if let Some(pc) = subscribe {
            q.packets_out = pc.qos.packets_out;
            q.bytes_out = pc.qos.bytes_out;
            q.nacks = pc.nacks_seen.iter().map(|(_, n)| n).sum();
            q.plis = pc.qos.keyframe_requests.iter().map(|(_, n)| n).sum();
        }
        q.rtt_ms_mean = (rtt_n > 0).then(|| rtt_sum / rtt_n as f64);
        q
    }

    /// A participant's published tracks with their bitrates, loss and layers, and
    /// its RTT (the admin rooms view).
    pub fn participant_qos(&self, who: &SessionId, now: Instant) -> ParticipantQosView {
        let [publish, subscribe] = self.pcs_of(who);
        let rtt_ms = publish
            .and_then(|pc| pc.qos.rtt_ms)
            .or_else(|| subscribe.and_then(|pc| pc.qos.rtt_ms));
        let tracks = self
            .participants
            .get(who)
            .map(|p| {
                p.tracks
                    .iter()
                    .filter_map(|&tk| self.tracks.get(tk))
                    .map(|t| {
                        let layers: Vec<LayerQosView> = t
                            .layers
                            .iter()
                            .enumerate()
                            .map(|(i, l)| LayerQosView {
                                rid: t.rids.get(i).cloned(),
                                active: l.last_packet.is_some_and(|at| {
                                    now.saturating_duration_since(at) < LAYER_IDLE
                                }),
                                bitrate_bps: l.qos.bitrate_bps,
                            })
                            .collect();
                        let loss = t
                            .layers
                            .iter()
                            .filter_map(|l| l.qos.loss)
                            .map(f64::from)
                            .reduce(f64::max);
                        TrackQosView {
                            track_id: t.id.clone(),
                            kind: t.kind,
                            source: t.source,
                            codec: t.codec,
                            bitrate_bps: layers.iter().map(|l| l.bitrate_bps).sum(),
                            loss,
                            layers,
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        ParticipantQosView { rtt_ms, tracks }
    }
}
