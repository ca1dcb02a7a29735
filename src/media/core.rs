//! [`MediaCore`]: the peer connections of one worker and the forwarding between them.
//!
//! Owns every `Rtc` of the worker (two per participant: publish and subscribe), the
//! demultiplexing maps (learned source address → peer connection, local ICE ufrag → peer
//! connection), the published tracks and the subscriptions (one per subscribe m-line).
//!
//! Invariants:
//! - after every mutation of an `Rtc` its `poll_output` is drained until `Timeout`, and
//!   that deadline is what the timer heap holds for it (str0m's loop contract);
//! - writes to subscriber `Rtc`s are collected while a publisher drains and applied
//!   after, each followed by `Input::Timeout(now)` and a drain;
//! - a datagram is routed by one hash lookup (address, or for STUN the USERNAME's local
//!   ufrag); an address is bound only after str0m verified the STUN integrity;
//! - any packet deliberately not forwarded to a subscriber (muted, deafened, paused,
//!   waiting for a keyframe) rebases its rewriter, so a subscriber never sees a gap it
//!   would NACK in vain;
//! - slot keys (`usize`) of peer connections, tracks and subscriptions are removed from
//!   every map and list that holds them before the slot is freed.
//!
//! Called by the worker's engine (signaling inputs) and driver (datagrams, time).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, trace, warn};
use str0m::bwe::{Bitrate, BweKind};
use str0m::change::SdpOffer;
use str0m::config::{CryptoProvider, DtlsCert};
use str0m::format::{Codec, CodecConfig, PayloadParams};
use str0m::media::{KeyframeRequestKind, MediaKind as StrKind, Mid, Pt};
use str0m::net::{DatagramRecv, Protocol, Receive, Transmit};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite, Ssrc, Vp8Descriptor, Vp8Patch};
use str0m::{Candidate, Event, IceConnectionState, IceCreds, Input, Output, Rtc, RtcConfig};

use super::allocator::{self, Bandwidth, ClimbGate, VideoDemand};
use super::offer::{self, OfferLine};
use super::rewrite::Rewriter;
use super::simulcast::LayerState;
use super::speaking::SpeakingDetector;
use super::timers::TimerHeap;
use super::vp8::Vp8Continuity;
use super::{
    CodecName, Layer, MediaConfig, MediaEvent, MediaKind, MediaStats, NegotiationError, PcKind,
    PublishAnswer, RejectReason, SubscribeAnswer, TrackInfo, TrackSource,
};
use crate::ids::{SessionId, TrackId};

mod bandwidth;
// QoS counters and views live in their own file (merges with the forwarding code).
#[path = "qos.rs"]
pub(crate) mod qos;
pub use qos::{LayerQosView, ParticipantQosView, TrackQosView};

/// A deadline further out than this is str0m's "never" (~100 years): not heaped.
const NEVER: Duration = Duration::from_secs(24 * 3600);
/// A simulcast layer with no packet for this long is not flowing.
const LAYER_IDLE: Duration = Duration::from_millis(1500);
/// The same for screen share, whose encoder sends few frames while the screen is still.
const SCREEN_LAYER_IDLE: Duration = Duration::from_secs(5);
/// The least spacing of keyframe requests to one layer once the last one was answered.
const KEYFRAME_REQUEST_FLOOR: Duration = Duration::from_millis(100);
/// Source addresses remembered per peer connection (ICE restarts, NAT rebinding).
const MAX_ADDRS_PER_PC: usize = 4;

/// A vector of optional slots with a free list; keys are indices.
#[derive(Debug)]
struct Slab<T> {
    slots: Vec<Option<T>>,
    free: Vec<usize>,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T> Slab<T> {
    fn insert(&mut self, v: T) -> usize {
        if let Some(k) = self.free.pop() {
            self.slots[k] = Some(v);
            k
        } else {
            self.slots.push(Some(v));
            self.slots.len() - 1
        }
    }
    fn remove(&mut self, k: usize) -> Option<T> {
        let v = self.slots.get_mut(k)?.take();
        if v.is_some() {
            self.free.push(k);
        }
        v
    }
    fn get(&self, k: usize) -> Option<&T> {
        self.slots.get(k)?.as_ref()
    }
    fn get_mut(&mut self, k: usize) -> Option<&mut T> {
        self.slots.get_mut(k)?.as_mut()
    }
    fn iter(&self) -> impl Iterator<Item = (usize, &T)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)))
    }
    fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }
}

/// One peer connection.
struct Pc {
    /// Distinguishes reuses of the slot in the timer heap.
    generation: u32,
    who: SessionId,
    kind: PcKind,
    rtc: Rtc,
    /// Local ufrags mapped to this pc; the last is current, earlier ones belong to an
    /// ICE restart in progress and are dropped once the current one is used.
    ufrags: Vec<String>,
    /// Source addresses bound to this pc, oldest first.
    addrs: Vec<SocketAddr>,
    connected: bool,
    ice_disconnected: bool,
    /// str0m reported an error from `poll_output`: the `Rtc` is not touched again.
    dead: bool,
    /// The deadline the timer heap holds for this pc.
    deadline: Option<Instant>,
    /// Publish side: incoming SSRC → (track slot, layer index), learned on first packet.
    ssrc_routes: Vec<(Ssrc, usize, usize)>,
    /// Subscribe side: subscription slots by m-line.
    subs_by_mid: Vec<(Mid, usize)>,
    /// Subscribe side: NACKs received per m-line as of the last stats event
    /// (str0m reports cumulative counts).
    nacks_seen: Vec<(Mid, u64)>,
    /// Traffic counters, RTT and loss (`qos.rs`).
    qos: qos::PcQos,
    /// Subscribe side: the downlink estimate, the climb gate and the last
    /// `bwe().set_bitrate` (current, desired) given (`bandwidth.rs`).
    bandwidth: Bandwidth,
    gate: ClimbGate,
    bwe_set: (u64, u64),
    /// Allocation probing (`bandwidth.rs`): next probe, and whether `desired` was
    /// lowered on the previous tick so raising it now makes str0m probe.
    next_probe: Option<Instant>,
    probe_armed: bool,
    /// The estimator was restarted once video flowed (`bandwidth.rs`).
    bwe_primed: bool,
    /// Without transport-cc: the rate str0m's estimator was last reset to, so its
    /// pacer does not hold media back (`bandwidth.rs`).
    pacer_floor: u64,
}

#[derive(Default)]
struct Participant {
    publish: Option<usize>,
    subscribe: Option<usize>,
    deafened: bool,
    /// Track slots published by this participant.
    tracks: Vec<usize>,
}

struct Track {
    id: TrackId,
    owner: SessionId,
    pc: usize,
    mid: Mid,
    kind: MediaKind,
    source: TrackSource,
    codec: CodecName,
    /// The publisher's negotiated payload params on this m-line (primary codecs only).
    params: Vec<PayloadParams>,
    clock_rate: u32,
    rids: Vec<String>,
    /// One per rid (lowest first), or exactly one without simulcast.
    layers: Vec<LayerState>,
    forwarding: bool,
    flowing: bool,
    subscribers: Vec<usize>,
    /// Microphone tracks: who is speaking (`speaking.rs`).
    speaking: Option<SpeakingDetector>,
}

impl Track {
    fn info(&self) -> TrackInfo {
        TrackInfo {
            track_id: self.id.clone(),
            mid: self.mid.to_string(),
            kind: self.kind,
            source: self.source,
            codec: self.codec,
            simulcast_rids: self.rids.clone(),
        }
    }

    /// How long a layer may go without packets and still count as flowing.
    fn layer_idle(&self) -> Duration {
        if self.source == TrackSource::Screen {
            SCREEN_LAYER_IDLE
        } else {
            LAYER_IDLE
        }
    }

    /// The highest layer index a subscription capped at `max` may receive: the top one
    /// named ≤ `max`, else the lowest (a track without simulcast, or without a layer
    /// that low, still has its one lowest layer to give).
    fn cap_index(&self, max: Option<Layer>) -> usize {
        let max = max.unwrap_or(Layer::F);
        (0..self.layers.len())
            .rev()
            .find(|&i| self.layer_name(i) <= max)
            .unwrap_or(0)
    }

    /// The protocol layer of a layer index: by rid name, else by position from the top.
    fn layer_name(&self, index: usize) -> Layer {
        match self.rids.get(index).map(String::as_str) {
            Some("q") => Layer::Q,
            Some("h") => Layer::H,
            Some("f") => Layer::F,
            _ => match self.layers.len().saturating_sub(index + 1) {
                0 => Layer::F,
                1 => Layer::H,
                _ => Layer::Q,
            },
        }
    }
}

struct Sub {
    subscriber: SessionId,
    pc: usize,
    track: usize,
    tx_ssrc: Ssrc,
    /// Publisher PT → subscriber PT.
    pt_map: Vec<(Pt, Pt)>,
    max_layer: Option<Layer>,
    /// `max_layer` was given by the subscriber (a screen share keeps that layer while
    /// the budget allows: `allocator.rs`).
    max_layer_pinned: bool,
    paused: bool,
    deafened: bool,
    /// The layer being forwarded; `None` until the first (key)frame of the selected one.
    current_layer: Option<usize>,
    /// The layer the allocator wants; switched to on its next keyframe.
    target: Option<usize>,
    /// Packets were deliberately skipped since the last forwarded one: rebase first.
    gap: bool,
    /// The layer last reported to the subscriber (`rtc.layer.changed`).
    reported_layer: Option<Layer>,
    rewriter: Rewriter,
    vp8: Vp8Continuity,
}

/// A write to a subscriber stream, collected while the publisher drains.
struct PendingWrite {
    sub: usize,
    pt: Pt,
    seq: u64,
    ts: u32,
    marker: bool,
    payload: Arc<[u8]>,
    audio_level: Option<i8>,
    voice_activity: Option<bool>,
    vp8: Option<Vp8Patch>,
}

/// The media core of one worker. See the module documentation.
pub struct MediaCore {
    cfg: MediaConfig,
    crypto: Arc<CryptoProvider>,
    cert: DtlsCert,
    pcs: Slab<Pc>,
    next_generation: u32,
    by_addr: HashMap<SocketAddr, usize>,
    by_ufrag: HashMap<String, usize>,
    participants: HashMap<SessionId, Participant>,
    tracks: Slab<Track>,
    track_ids: HashMap<TrackId, usize>,
    subs: Slab<Sub>,
    timers: TimerHeap,
    transmits: VecDeque<Transmit>,
    events: VecDeque<MediaEvent>,
    stats: MediaStats,
    // Scratch buffers of the per-packet path, kept to reuse their capacity.
    pending_writes: Vec<PendingWrite>,
    pending_keyframes: Vec<(usize, usize, KeyframeRequestKind)>,
    touched: Vec<usize>,
    due: Vec<(Instant, usize, u32)>,
    /// Latest time passed in by any input (for calls that carry none).
    last_now: Option<Instant>,
    /// Next run of the allocation and speaking tick (`bandwidth.rs`).
    next_tick: Option<Instant>,
    /// Subscribe pcs whose estimate changed: reallocated before the input returns.
    realloc: Vec<usize>,
    // Scratch of the allocation tick.
    demands: Vec<VideoDemand>,
    demand_subs: Vec<usize>,
    allocation: Vec<Option<usize>>,
}

impl std::fmt::Debug for MediaCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaCore")
            .field("host", &self.cfg.host)
            .field("peer_connections", &self.pcs.len())
            .field("tracks", &self.tracks.len())
            .field("subscriptions", &self.subs.len())
            .finish()
    }
}

fn codec_name(codec: Codec) -> Option<CodecName> {
    Some(match codec {
        Codec::Opus => CodecName::Opus,
        Codec::Vp8 => CodecName::Vp8,
        Codec::Vp9 => CodecName::Vp9,
        Codec::H264 => CodecName::H264,
        Codec::Av1 => CodecName::Av1,
        _ => return None,
    })
}

fn is_keyframe(codec: CodecName, payload: &[u8]) -> bool {
    match codec {
        CodecName::Opus => false,
        CodecName::Vp8 => str0m::format::detect_vp8_keyframe(payload),
        CodecName::Vp9 => str0m::format::detect_vp9_keyframe(payload),
        CodecName::H264 => str0m::format::detect_h264_keyframe(payload),
        CodecName::Av1 => str0m::format::detect_av1_keyframe(payload),
    }
}

fn source_fits(source: TrackSource, kind: StrKind) -> bool {
    match source {
        TrackSource::Microphone | TrackSource::ScreenAudio => kind == StrKind::Audio,
        TrackSource::Camera | TrackSource::Screen => kind == StrKind::Video,
    }
}

/// Lowest flowing layer within the cap `max` (see [`Track::cap_index`]); `None` while
/// none of those flows: a layer above the cap is never chosen, not even for the first
/// packets of a subscription that starts before its own layer has arrived.
/// Where a new subscription starts before the allocator has priced the layers.
fn lowest_layer(track: &Track, max: Option<Layer>, now: Instant) -> Option<usize> {
    let idle = track.layer_idle();
    (0..=track.cap_index(max))
        .find(|&i| track.layers.get(i).is_some_and(|l| l.available(now, idle)))
}

impl MediaCore {
    /// Creates the core, its DTLS certificate and the cached DTLS configuration (once:
    /// every `Rtc` created later reuses both).
    pub fn new(cfg: MediaConfig) -> Self {
        let cert = super::dtls::generate_certificate()
            .expect("dimpl with aws-lc-rs and rcgen can always self-sign a certificate");
        Self {
            cfg,
            crypto: super::dtls::crypto_provider(),
            cert,
            pcs: Slab::default(),
            next_generation: 0,
            by_addr: HashMap::new(),
            by_ufrag: HashMap::new(),
            participants: HashMap::new(),
            tracks: Slab::default(),
            track_ids: HashMap::new(),
            subs: Slab::default(),
            timers: TimerHeap::default(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: MediaStats::default(),
            pending_writes: Vec::new(),
            pending_keyframes: Vec::new(),
            touched: Vec::new(),
            due: Vec::new(),
            last_now: None,
            next_tick: None,
            realloc: Vec::new(),
            demands: Vec::new(),
            demand_subs: Vec::new(),
            allocation: Vec::new(),
        }
    }

    // ----- getters -------------------------------------------------------------------

    /// Cumulative counters.
    pub fn stats(&self) -> MediaStats {
        self.stats.clone()
    }

    /// The configuration the core was built with.
    pub fn config(&self) -> &MediaConfig {
        &self.cfg
    }

    /// Live peer connections.
    pub fn peer_connection_count(&self) -> usize {
        self.pcs.len()
    }

    /// Info on a track this core holds.
    pub fn track_info(&self, track: &TrackId) -> Option<TrackInfo> {
        let key = *self.track_ids.get(track)?;
        self.tracks.get(key).map(Track::info)
    }

    /// Builds a fresh ICE-lite, RTP-mode `Rtc` the way the core does, without registering
    /// it. Public so the cost of creation can be measured (`tests/media_rtc_creation*`).
    pub fn build_rtc(&self, now: Instant) -> Rtc {
        self.build_rtc_for(now, PcKind::Publish)
    }

    /// A subscribe `Rtc` also runs str0m's bandwidth estimator (TWCC) for the
    /// allocator; a publish one does not need it.
    fn build_rtc_for(&self, now: Instant, kind: PcKind) -> Rtc {
        let creds = IceCreds {
            ufrag: crate::secret::random_hex(6),
            pass: crate::secret::random_hex(16),
        };
        let config = RtcConfig::new()
            .set_ice_lite(true)
            .set_rtp_mode(true)
            .set_crypto_provider(Arc::clone(&self.crypto))
            .set_dtls_cert(self.cert.clone())
            .set_local_ice_credentials(creds)
            .enable_h265(false)
            .set_send_buffer_video(self.cfg.rtx_cache_video_packets)
            .set_send_buffer_audio(self.cfg.rtx_cache_audio_packets)
            // The NACK counts behind `rtc_nack_total`, and (subscribe side) the loss
            // of each new receiver report for the allocator, 200 ms after it arrives
            // at most.
            .set_stats_interval(Some(std::time::Duration::from_millis(200)));
        let config = if kind == PcKind::Subscribe {
            config.enable_bwe(Some(Bitrate::bps(allocator::INITIAL_ESTIMATE_BPS)))
        } else {
            config
        };
        let mut rtc = config.build(now);
        match Candidate::host(self.cfg.host, "udp") {
            Ok(c) => {
                rtc.add_local_candidate(c);
            }
            Err(e) => warn!("host candidate {} refused by str0m: {e}", self.cfg.host),
        }
        rtc
    }

    // ----- signaling inputs ----------------------------------------------------------

    /// Applies a publish offer (first one creates the publish peer connection).
    pub fn publish_offer(
        &mut self,
        now: Instant,
        who: &SessionId,
        offer_sdp: &str,
        tracks: &[(String, TrackSource)],
    ) -> Result<PublishAnswer, NegotiationError> {
        self.note_time(now);
        let (offer, lines) = offer::analyze(offer_sdp).map_err(NegotiationError::InvalidSdp)?;
        let mut sources = Vec::new();
        for line in &lines {
            if !line.client_sends() {
                continue;
            }
            let source = tracks
                .iter()
                .find(|(mid, _)| Mid::from(mid.as_str()) == line.mid)
                .map(|(_, s)| *s)
                .ok_or_else(|| NegotiationError::MissingSource(line.mid.to_string()))?;
            let kind = line.kind.unwrap_or(StrKind::Audio);
            if !source_fits(source, kind) {
                return Err(NegotiationError::SourceMismatch(line.mid.to_string()));
            }
            sources.push((line.mid, source));
        }

        let pc = self.accept(now, who, PcKind::Publish, offer)?;
        let answer_sdp = pc.1;
        let pc = pc.0;

        // Reconcile tracks with the m-lines.
        let mut added = Vec::new();
        let mut removed = Vec::new();
        let existing: Vec<usize> = self
            .participants
            .get(who)
            .map(|p| p.tracks.clone())
            .unwrap_or_default();
        for &tk in &existing {
            let Some(track) = self.tracks.get(tk) else {
                continue;
            };
            if !sources.iter().any(|(mid, _)| *mid == track.mid) {
                removed.push(track.id.clone());
                self.remove_track_slot(tk);
            }
        }
        for (mid, source) in sources {
            let line = lines
                .iter()
                .find(|l| l.mid == mid)
                .expect("sources were collected from these lines");
            let existing = self.participants.get(who).and_then(|p| {
                p.tracks
                    .iter()
                    .copied()
                    .find(|&t| self.tracks.get(t).is_some_and(|t| t.mid == mid))
            });
            if let Some(tk) = existing {
                if let Some(t) = self.tracks.get_mut(tk) {
                    t.source = source;
                }
                continue;
            }
            let Some(params) = self.negotiated_params(pc, mid) else {
                // No codec in common: str0m answered the m-line without media.
                debug!("publish m-line {mid} of {who} has no supported codec");
                continue;
            };
            let Some(codec) = codec_name(params[0].spec().codec) else {
                continue;
            };
            let id = TrackId::mint();
            let kind = match line.kind {
                Some(StrKind::Video) => MediaKind::Video,
                _ => MediaKind::Audio,
            };
            let layers = vec![LayerState::default(); line.rids.len().max(1)];
            let track = Track {
                id: id.clone(),
                owner: who.clone(),
                pc,
                mid,
                kind,
                source,
                codec,
                clock_rate: params[0].spec().clock_rate.get(),
                params,
                rids: line.rids.clone(),
                layers,
                forwarding: true,
                flowing: false,
                subscribers: Vec::new(),
                speaking: (source == TrackSource::Microphone).then(SpeakingDetector::default),
            };
            let tk = self.tracks.insert(track);
            self.track_ids.insert(id.clone(), tk);
            if let Some(p) = self.participants.get_mut(who) {
                p.tracks.push(tk);
            }
            added.push(id);
        }
        let tracks = self
            .participants
            .get(who)
            .map(|p| {
                p.tracks
                    .iter()
                    .filter_map(|&t| self.tracks.get(t))
                    .map(Track::info)
                    .collect()
            })
            .unwrap_or_default();
        Ok(PublishAnswer {
            sdp: answer_sdp,
            tracks,
            added,
            removed,
        })
    }

    /// Applies a subscribe offer (first one creates the subscribe peer connection).
    pub fn subscribe_offer(
        &mut self,
        now: Instant,
        who: &SessionId,
        offer_sdp: &str,
        subs: &[(String, TrackId, Option<Layer>)],
    ) -> Result<SubscribeAnswer, NegotiationError> {
        self.note_time(now);
        let (offer, lines) = offer::analyze(offer_sdp).map_err(NegotiationError::InvalidSdp)?;
        let mut rejected: Vec<(Mid, RejectReason)> = Vec::new();
        let mut silent_inactive: Vec<Mid> = Vec::new();
        // (mid, track slot, max_layer) of the m-lines to serve.
        let mut serve: Vec<(Mid, usize, Option<Layer>)> = Vec::new();
        for line in &lines {
            let Some(kind) = line.kind else { continue };
            if !line.client_receives() {
                if !line.stopped && line.direction.is_sending() {
                    // The client wants to send on its subscribe pc: nothing to receive.
                    silent_inactive.push(line.mid);
                }
                continue;
            }
            let named = subs
                .iter()
                .find(|(mid, _, _)| Mid::from(mid.as_str()) == line.mid);
            let Some((_, track_id, max_layer)) = named else {
                rejected.push((line.mid, RejectReason::UnknownTrack));
                continue;
            };
            let Some(&tk) = self.track_ids.get(track_id) else {
                rejected.push((line.mid, RejectReason::UnknownTrack));
                continue;
            };
            let track = self
                .tracks
                .get(tk)
                .expect("track_ids only names live tracks");
            if !Self::offer_has_codec(line, kind, track) {
                rejected.push((line.mid, RejectReason::CodecUnsupported));
                continue;
            }
            serve.push((line.mid, tk, *max_layer));
        }

        let offer = if rejected.is_empty() && silent_inactive.is_empty() {
            offer
        } else {
            let mut mids: Vec<Mid> = rejected.iter().map(|(m, _)| *m).collect();
            mids.extend(silent_inactive.iter().copied());
            let edited = offer::make_inactive(offer_sdp, &mids);
            SdpOffer::from_sdp_string(&edited)
                .map_err(|e| NegotiationError::InvalidSdp(format!("after edit: {e}")))?
        };
        let (pc, answer_sdp) = self.accept(now, who, PcKind::Subscribe, offer)?;

        // End subscriptions whose m-line is no longer served.
        let current: Vec<(Mid, usize)> = self
            .pcs
            .get(pc)
            .map(|p| p.subs_by_mid.clone())
            .unwrap_or_default();
        for (mid, sk) in current {
            let keep = serve
                .iter()
                .any(|(m, tk, _)| *m == mid && self.subs.get(sk).is_some_and(|s| s.track == *tk));
            if !keep {
                self.remove_sub(sk);
            }
        }
        let deafened = self.participants.get(who).is_some_and(|p| p.deafened);
        for (mid, tk, max_layer) in serve {
            let existing = self.pcs.get(pc).and_then(|p| {
                p.subs_by_mid
                    .iter()
                    .find(|(m, _)| *m == mid)
                    .map(|(_, s)| *s)
            });
            if let Some(sk) = existing {
                if let (Some(layer), Some(s)) = (max_layer, self.subs.get_mut(sk))
                    && self
                        .tracks
                        .get(tk)
                        .is_some_and(|t| t.kind == MediaKind::Video)
                {
                    s.max_layer = Some(layer);
                    s.max_layer_pinned = true;
                }
                continue;
            }
            let Some((tx_ssrc, pt_map)) = self.bind_stream(pc, mid, tk) else {
                rejected.push((mid, RejectReason::CodecUnsupported));
                continue;
            };
            let track = self.tracks.get(tk).expect("serve only holds live tracks");
            let video = track.kind == MediaKind::Video;
            let sub = Sub {
                subscriber: who.clone(),
                pc,
                track: tk,
                tx_ssrc,
                pt_map,
                max_layer: if video { max_layer } else { None },
                max_layer_pinned: video && max_layer.is_some(),
                paused: false,
                deafened,
                current_layer: None,
                target: None,
                reported_layer: None,
                gap: false,
                rewriter: Rewriter::default(),
                vp8: Vp8Continuity::default(),
            };
            let sk = self.subs.insert(sub);
            if let Some(t) = self.tracks.get_mut(tk) {
                t.subscribers.push(sk);
            }
            if let Some(p) = self.pcs.get_mut(pc) {
                p.subs_by_mid.push((mid, sk));
            }
            if video && self.pcs.get(pc).is_some_and(|p| p.connected) {
                self.want_keyframe_for_sub(sk, now);
            }
        }
        self.flush(now);
        Ok(SubscribeAnswer {
            sdp: answer_sdp,
            rejected: rejected
                .into_iter()
                .map(|(m, r)| (m.to_string(), r))
                .collect(),
        })
    }

    /// Adds a trickled client candidate (optional for ICE-lite: addresses are learned
    /// from STUN). `candidate` is the `candidate:…` attribute value.
    pub fn add_remote_candidate(
        &mut self,
        who: &SessionId,
        pc: PcKind,
        candidate: &str,
    ) -> Result<(), NegotiationError> {
        let c = Candidate::from_sdp_string(candidate.trim_start_matches("a="))
            .map_err(|e| NegotiationError::InvalidCandidate(e.to_string()))?;
        let key = self
            .pc_key(who, pc)
            .ok_or(NegotiationError::NoPeerConnection)?;
        let p = self.pcs.get_mut(key).expect("pc_key names live pcs");
        if !p.dead {
            p.rtc.add_remote_candidate(c);
        }
        // The Rtc was mutated: drain it at the latest time the core was given (the pc
        // exists, so some input with a time has been seen).
        if let Some(now) = self.last_now {
            self.drain(now, key);
        }
        Ok(())
    }

    /// `audio_muted` / `video_muted`: stop or resume forwarding one track.
    pub fn set_track_forwarding(&mut self, track: &TrackId, enabled: bool) {
        if let Some(t) = self
            .track_ids
            .get(track)
            .and_then(|&k| self.tracks.get_mut(k))
        {
            t.forwarding = enabled;
            if !enabled
                && let (Some(det), Some(now)) = (t.speaking.as_mut(), self.last_now)
                && let Some(tr) = det.stop(now)
            {
                self.events.push_back(MediaEvent::Speaking {
                    who: t.owner.clone(),
                    speaking: tr.speaking,
                    level: tr.level,
                });
            }
        }
    }

    /// `deafened`: stop or resume all audio to this participant.
    pub fn set_audio_deafened(&mut self, who: &SessionId, deafened: bool) {
        let Some(p) = self.participants.get_mut(who) else {
            return;
        };
        p.deafened = deafened;
        let Some(pc) = p.subscribe.and_then(|k| self.pcs.get(k)) else {
            return;
        };
        for &(_, sk) in &pc.subs_by_mid {
            if let Some(s) = self.subs.get_mut(sk) {
                s.deafened = deafened;
            }
        }
    }

    /// `rtc.subscription.update`: cap the layer and/or pause one subscription.
    pub fn set_subscription(
        &mut self,
        who: &SessionId,
        track: &TrackId,
        max_layer: Option<Layer>,
        paused: Option<bool>,
    ) {
        let Some(&tk) = self.track_ids.get(track) else {
            return;
        };
        let Some(pc) = self.pc_key(who, PcKind::Subscribe) else {
            return;
        };
        let sks: Vec<usize> = self
            .pcs
            .get(pc)
            .map(|p| p.subs_by_mid.iter().map(|(_, s)| *s).collect())
            .unwrap_or_default();
        for sk in sks {
            let Some(s) = self.subs.get_mut(sk) else {
                continue;
            };
            if s.track != tk {
                continue;
            }
            if max_layer.is_some() {
                s.max_layer = max_layer;
                s.max_layer_pinned = true;
            }
            if let Some(p) = paused {
                s.paused = p;
                // A paused video subscription reports `null` (protocol-v1 §5); the
                // layer it resumes on is reported when it flows again.
                if p && s.reported_layer.is_some() {
                    s.reported_layer = None;
                    self.events.push_back(MediaEvent::LayerChanged {
                        subscriber: s.subscriber.clone(),
                        track: track.clone(),
                        layer: None,
                    });
                }
            }
        }
        // The allocator takes the new cap into account before the next packet.
        if !self.realloc.contains(&pc) {
            self.realloc.push(pc);
        }
    }

    /// Closes both peer connections of a participant and forgets its tracks and
    /// subscriptions. Transmits (DTLS close_notify) are queued.
    pub fn remove_participant(&mut self, now: Instant, who: &SessionId) {
        self.note_time(now);
        let Some(p) = self.participants.remove(who) else {
            return;
        };
        for tk in p.tracks {
            self.remove_track_slot(tk);
        }
        for key in [p.subscribe, p.publish].into_iter().flatten() {
            let subs: Vec<usize> = self
                .pcs
                .get(key)
                .map(|pc| pc.subs_by_mid.iter().map(|(_, s)| *s).collect())
                .unwrap_or_default();
            for sk in subs {
                self.remove_sub(sk);
            }
            if let Some(pc) = self.pcs.get_mut(key)
                && !pc.dead
                && let Err(e) = pc.rtc.close()
            {
                debug!("closing rtc of {who}: {e}");
            }
            self.drain(now, key);
            self.remove_pc(key);
        }
        self.flush(now);
    }

    /// Closes one peer connection of a participant (its ICE stayed disconnected past
    /// the engine's grace). A publish connection takes the participant's tracks with
    /// it, a subscribe connection its subscriptions; the other connection is untouched.
    /// Returns the tracks that stopped (empty for a subscribe connection).
    pub fn close_peer_connection(
        &mut self,
        now: Instant,
        who: &SessionId,
        kind: PcKind,
    ) -> Vec<TrackId> {
        self.note_time(now);
        let Some(p) = self.participants.get_mut(who) else {
            return Vec::new();
        };
        let (key, track_slots) = match kind {
            PcKind::Publish => (p.publish.take(), std::mem::take(&mut p.tracks)),
            PcKind::Subscribe => (p.subscribe.take(), Vec::new()),
        };
        let Some(key) = key else {
            return Vec::new();
        };
        let mut stopped = Vec::new();
        for tk in track_slots {
            if let Some(t) = self.tracks.get(tk) {
                stopped.push(t.id.clone());
            }
            self.remove_track_slot(tk);
        }
        let subs: Vec<usize> = self
            .pcs
            .get(key)
            .map(|pc| pc.subs_by_mid.iter().map(|(_, s)| *s).collect())
            .unwrap_or_default();
        for sk in subs {
            self.remove_sub(sk);
        }
        if let Some(pc) = self.pcs.get_mut(key)
            && !pc.dead
            && let Err(e) = pc.rtc.close()
        {
            debug!("closing {kind:?} rtc of {who}: {e}");
        }
        self.drain(now, key);
        self.remove_pc(key);
        self.flush(now);
        stopped
    }

    /// Moderation unpublish: stop forwarding a track and forget it.
    pub fn remove_track(&mut self, track: &TrackId) {
        if let Some(&tk) = self.track_ids.get(track) {
            self.remove_track_slot(tk);
        }
    }

    // ----- I/O inputs ----------------------------------------------------------------

    /// One received datagram. `destination` is the local socket address it arrived on;
    /// str0m is handed the advertised host address instead (they differ when the socket
    /// is bound to 0.0.0.0 or behind 1:1 NAT).
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        data: &[u8],
    ) {
        self.note_time(now);
        let _ = destination;
        let stun = data.first().is_some_and(|b| *b < 4);
        let (key, via_ufrag) = if stun {
            match self.route_stun(data) {
                Some((k, _)) => (Some(k), true),
                None => (self.by_addr.get(&source).copied(), false),
            }
        } else {
            (self.by_addr.get(&source).copied(), false)
        };
        let Some(key) = key else {
            self.stats.dropped_unroutable += 1;
            trace!("unroutable datagram from {source}");
            return;
        };
        let Ok(contents) = DatagramRecv::try_from(data) else {
            self.stats.dropped_invalid += 1;
            return;
        };
        let input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source,
                destination: self.cfg.host,
                contents,
            },
        );
        let Some(pc) = self.pcs.get_mut(key) else {
            self.stats.dropped_unroutable += 1;
            return;
        };
        if pc.dead {
            self.stats.dropped_unroutable += 1;
            return;
        }
        if via_ufrag && !pc.addrs.contains(&source) {
            // Bind only what passed the STUN integrity check.
            if !pc.rtc.accepts(&input) {
                self.stats.dropped_unroutable += 1;
                return;
            }
            self.bind_addr(key, source);
        }
        let pc = self.pcs.get_mut(key).expect("checked above");
        if via_ufrag && pc.ufrags.len() > 1 {
            self.finish_ice_restart(key, data);
        }
        let pc = self.pcs.get_mut(key).expect("checked above");
        if let Err(e) = pc.rtc.handle_input(input) {
            self.stats.dropped_invalid += 1;
            trace!("rtc refused datagram from {source}: {e}");
        }
        self.drain(now, key);
        self.reallocate_pending(now);
        self.flush(now);
    }

    /// Runs the timers of every peer connection that is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.note_time(now);
        let mut due = std::mem::take(&mut self.due);
        while let Some(entry) = self.timers.pop_due(now) {
            due.push(entry);
        }
        for (at, key, generation) in due.drain(..) {
            let Some(pc) = self.pcs.get_mut(key) else {
                continue;
            };
            if pc.generation != generation || pc.deadline != Some(at) || pc.dead {
                continue;
            }
            pc.deadline = None;
            if let Err(e) = pc.rtc.handle_input(Input::Timeout(now)) {
                debug!("timeout on rtc of {}: {e}", pc.who);
            }
            self.drain(now, key);
        }
        self.due = due;
        if self.next_tick.is_some_and(|t| t <= now) {
            self.tick(now);
        }
        self.reallocate_pending(now);
        self.flush(now);
        if self.timers.len() > 2 * self.pcs.len() + 64 {
            let live = self
                .pcs
                .iter()
                .filter_map(|(k, p)| p.deadline.map(|d| (d, k, p.generation)));
            let live: Vec<_> = live.collect();
            self.timers.rebuild(live.into_iter());
        }
    }

    // ----- outputs -------------------------------------------------------------------

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event for the engine.
    pub fn poll_event(&mut self) -> Option<MediaEvent> {
        self.events.pop_front()
    }

    /// When [`MediaCore::handle_timeout`] should be called next (may be early, never late).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.timers.peek(), self.next_tick) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ----- internals: peer connections -----------------------------------------------

    fn note_time(&mut self, now: Instant) {
        if self.last_now.is_none_or(|t| t < now) {
            self.last_now = Some(now);
        }
    }

    fn pc_key(&self, who: &SessionId, kind: PcKind) -> Option<usize> {
        let p = self.participants.get(who)?;
        match kind {
            PcKind::Publish => p.publish,
            PcKind::Subscribe => p.subscribe,
        }
    }

    /// Accepts an offer on the participant's pc of `kind`, creating it on first use.
    fn accept(
        &mut self,
        now: Instant,
        who: &SessionId,
        kind: PcKind,
        offer: SdpOffer,
    ) -> Result<(usize, String), NegotiationError> {
        let existing = self.pc_key(who, kind);
        let result = match existing {
            Some(key) => {
                let pc = self.pcs.get_mut(key).expect("participant names live pcs");
                if pc.dead {
                    return Err(NegotiationError::Rejected("peer connection failed".into()));
                }
                let r = pc.rtc.sdp_api().accept_offer(offer);
                self.drain(now, key);
                r.map(|a| (key, a))
            }
            None => {
                let mut rtc = self.build_rtc_for(now, kind);
                match rtc.sdp_api().accept_offer(offer) {
                    Ok(answer) => {
                        let key = self.insert_pc(now, who, kind, rtc);
                        self.drain(now, key);
                        Ok((key, answer))
                    }
                    Err(e) => Err(e),
                }
            }
        };
        let (key, answer) = result.map_err(|e| NegotiationError::Rejected(e.to_string()))?;
        self.register_ufrag(key);
        Ok((key, answer.to_sdp_string()))
    }

    fn insert_pc(&mut self, now: Instant, who: &SessionId, kind: PcKind, rtc: Rtc) -> usize {
        self.next_generation = self.next_generation.wrapping_add(1);
        let key = self.pcs.insert(Pc {
            generation: self.next_generation,
            who: who.clone(),
            kind,
            rtc,
            ufrags: Vec::new(),
            addrs: Vec::new(),
            connected: false,
            ice_disconnected: false,
            dead: false,
            deadline: None,
            ssrc_routes: Vec::new(),
            subs_by_mid: Vec::new(),
            nacks_seen: Vec::new(),
            qos: qos::PcQos::default(),
            bandwidth: Bandwidth::default(),
            gate: ClimbGate::default(),
            bwe_set: (0, 0),
            next_probe: None,
            probe_armed: false,
            bwe_primed: false,
            pacer_floor: 0,
        });
        self.next_tick.get_or_insert(now);
        let p = self.participants.entry(who.clone()).or_default();
        match kind {
            PcKind::Publish => p.publish = Some(key),
            PcKind::Subscribe => p.subscribe = Some(key),
        }
        self.stats.peer_connections_created += 1;
        key
    }

    /// Maps the pc's current local ufrag (new after an ICE restart; the old one stays
    /// mapped until the new one is used).
    fn register_ufrag(&mut self, key: usize) {
        let Some(pc) = self.pcs.get_mut(key) else {
            return;
        };
        let ufrag = pc.rtc.direct_api().local_ice_credentials().ufrag;
        if pc.ufrags.last() != Some(&ufrag) {
            pc.ufrags.push(ufrag.clone());
            self.by_ufrag.insert(ufrag, key);
        }
    }

    /// A STUN request used the pc's current ufrag: the ICE restart is complete.
    fn finish_ice_restart(&mut self, key: usize, data: &[u8]) {
        let Some(local) = str0m::ice::StunMessage::parse(data)
            .ok()
            .and_then(|m| m.split_username().map(|(l, _)| l.to_string()))
        else {
            return;
        };
        let Some(pc) = self.pcs.get_mut(key) else {
            return;
        };
        if pc.ufrags.last() == Some(&local) {
            let current = pc.ufrags.pop().expect("last() is Some");
            for old in pc.ufrags.drain(..) {
                self.by_ufrag.remove(&old);
            }
            pc.ufrags.push(current);
        }
    }

    fn route_stun(&self, data: &[u8]) -> Option<(usize, ())> {
        let msg = str0m::ice::StunMessage::parse(data).ok()?;
        let (local, _) = msg.split_username()?;
        self.by_ufrag.get(local).map(|&k| (k, ()))
    }

    fn bind_addr(&mut self, key: usize, addr: SocketAddr) {
        if let Some(prev) = self.by_addr.insert(addr, key)
            && prev != key
            && let Some(p) = self.pcs.get_mut(prev)
        {
            p.addrs.retain(|a| *a != addr);
        }
        let Some(pc) = self.pcs.get_mut(key) else {
            return;
        };
        pc.addrs.retain(|a| *a != addr);
        pc.addrs.push(addr);
        if pc.addrs.len() > MAX_ADDRS_PER_PC {
            let old = pc.addrs.remove(0);
            if self.by_addr.get(&old) == Some(&key) {
                self.by_addr.remove(&old);
            }
        }
    }

    fn remove_pc(&mut self, key: usize) {
        let Some(pc) = self.pcs.remove(key) else {
            return;
        };
        for a in pc.addrs {
            if self.by_addr.get(&a) == Some(&key) {
                self.by_addr.remove(&a);
            }
        }
        for u in pc.ufrags {
            if self.by_ufrag.get(&u) == Some(&key) {
                self.by_ufrag.remove(&u);
            }
        }
    }

    /// Drains one `Rtc` until `Timeout`, queueing transmits and handling events.
    fn drain(&mut self, now: Instant, key: usize) {
        loop {
            let Some(pc) = self.pcs.get_mut(key) else {
                return;
            };
            if pc.dead {
                return;
            }
            match pc.rtc.poll_output() {
                Ok(Output::Timeout(at)) => {
                    let at = (at.saturating_duration_since(now) < NEVER).then_some(at);
                    if at != pc.deadline {
                        pc.deadline = at;
                        if let Some(at) = at {
                            self.timers.push(at, key, pc.generation);
                        }
                    }
                    return;
                }
                Ok(Output::Transmit(t)) => self.transmits.push_back(t),
                Ok(Output::Event(e)) => self.on_event(now, key, e),
                Err(e) => {
                    warn!("rtc of {} failed: {e}", pc.who);
                    pc.dead = true;
                    pc.deadline = None;
                    let ev = MediaEvent::PeerDisconnected {
                        who: pc.who.clone(),
                        pc: pc.kind,
                    };
                    self.events.push_back(ev);
                    return;
                }
            }
        }
    }

    fn on_event(&mut self, now: Instant, key: usize, event: Event) {
        self.note_qos_event(now, key, &event);
        let Some(pc) = self.pcs.get_mut(key) else {
            return;
        };
        match event {
            Event::RtpPacket(pkt) => {
                if pc.kind == PcKind::Publish {
                    pc.qos.packets_in += 1;
                    pc.qos.bytes_in += pkt.payload.len() as u64;
                    self.route_rtp(now, key, &pkt);
                } else {
                    self.stats.dropped_unknown_stream += 1;
                }
            }
            Event::Connected => {
                pc.connected = true;
                let (who, kind) = (pc.who.clone(), pc.kind);
                debug!("{who} {kind:?} connected");
                self.events
                    .push_back(MediaEvent::PeerConnected { who, pc: kind });
                if kind == PcKind::Subscribe {
                    let subs: Vec<usize> = pc.subs_by_mid.iter().map(|(_, s)| *s).collect();
                    for sk in subs {
                        self.want_keyframe_for_sub(sk, now);
                    }
                }
            }
            Event::IceConnectionStateChange(state) => match state {
                IceConnectionState::Disconnected => {
                    pc.ice_disconnected = true;
                    let ev = MediaEvent::PeerDisconnected {
                        who: pc.who.clone(),
                        pc: pc.kind,
                    };
                    self.events.push_back(ev);
                }
                IceConnectionState::Connected | IceConnectionState::Completed
                    if pc.ice_disconnected && pc.connected =>
                {
                    pc.ice_disconnected = false;
                    let ev = MediaEvent::PeerConnected {
                        who: pc.who.clone(),
                        pc: pc.kind,
                    };
                    self.events.push_back(ev);
                }
                _ => {}
            },
            Event::Closed => {
                let ev = MediaEvent::PeerDisconnected {
                    who: pc.who.clone(),
                    pc: pc.kind,
                };
                self.events.push_back(ev);
            }
            Event::KeyframeRequest(req) => {
                if pc.kind != PcKind::Subscribe {
                    return;
                }
                self.stats.keyframe_requests_in += 1;
                let sk = pc
                    .subs_by_mid
                    .iter()
                    .find(|(m, _)| *m == req.mid)
                    .map(|(_, s)| *s);
                if let Some(sub) = sk.and_then(|sk| self.subs.get(sk)) {
                    let track = sub.track;
                    let layer = sub.current_layer.or(sub.target).or_else(|| {
                        self.tracks
                            .get(track)
                            .and_then(|t| lowest_layer(t, sub.max_layer, now))
                    });
                    if let Some(layer) = layer {
                        self.pending_keyframes.push((track, layer, req.kind));
                    }
                }
            }
            Event::MediaEgressStats(st) => {
                let prev = match pc.nacks_seen.iter_mut().find(|(m, _)| *m == st.mid) {
                    Some((_, n)) => std::mem::replace(n, st.nacks),
                    None => {
                        pc.nacks_seen.push((st.mid, st.nacks));
                        0
                    }
                };
                self.stats.nacks_in += st.nacks.saturating_sub(prev);
                if let Some(loss) = st.loss {
                    pc.bandwidth.on_loss(loss);
                    if !self.realloc.contains(&key) {
                        self.realloc.push(key);
                    }
                }
            }
            Event::EgressBitrateEstimate(kind) => {
                match kind {
                    BweKind::Twcc {
                        estimate,
                        can_probe,
                    } => pc.bandwidth.on_twcc(estimate.as_u64(), can_probe),
                    BweKind::Remb { estimate, .. } => pc.bandwidth.on_remb(estimate.as_u64()),
                    _ => return,
                }
                if !self.realloc.contains(&key) {
                    self.realloc.push(key);
                }
            }
            Event::StreamPaused(p) => {
                if pc.kind != PcKind::Publish {
                    return;
                }
                if let Some((tk, layer)) = self.ssrc_route(key, p.ssrc)
                    && let Some(l) = self
                        .tracks
                        .get_mut(tk)
                        .and_then(|t| t.layers.get_mut(layer))
                {
                    l.paused = p.paused;
                }
            }
            _ => {}
        }
    }

    // ----- internals: forwarding -----------------------------------------------------

    /// Fan-out of one publisher packet. Collects writes; [`Self::flush`] applies them.
    fn route_rtp(&mut self, now: Instant, pc_key: usize, pkt: &RtpPacket) {
        let ssrc = pkt.header.ssrc;
        let Some((tk, layer)) = self.ssrc_route(pc_key, ssrc) else {
            self.stats.dropped_unknown_stream += 1;
            return;
        };
        let Some(track) = self.tracks.get_mut(tk) else {
            self.stats.dropped_unknown_stream += 1;
            return;
        };
        let keyframe = track.kind == MediaKind::Video && is_keyframe(track.codec, &pkt.payload);
        if let Some(l) = track.layers.get_mut(layer) {
            l.on_packet(now, ssrc, pkt.payload.len());
            l.qos.count(pkt.payload.len());
            if keyframe {
                l.last_keyframe = Some(now);
            }
        }
        if !track.flowing {
            track.flowing = true;
            self.events.push_back(MediaEvent::TrackFlowing {
                track: track.id.clone(),
            });
        }
        if track.forwarding
            && let (Some(det), Some(level)) =
                (track.speaking.as_mut(), pkt.header.ext_vals.audio_level)
            && let Some(tr) = det.on_level(now, level.unsigned_abs())
        {
            self.events.push_back(MediaEvent::Speaking {
                who: track.owner.clone(),
                speaking: tr.speaking,
                level: tr.level,
            });
        }
        let track = self.tracks.get(tk).expect("looked up above");
        let video = track.kind == MediaKind::Video;
        let vp8 = if track.codec == CodecName::Vp8 {
            Vp8Descriptor::parse(&pkt.payload).ok()
        } else {
            None
        };
        let idle = track.layer_idle();
        for &sk in &track.subscribers {
            let Some(sub) = self.subs.get_mut(sk) else {
                continue;
            };
            let connected = self.pcs.get(sub.pc).is_some_and(|p| p.connected && !p.dead);
            if !connected {
                self.stats.dropped_waiting += 1;
                continue;
            }
            if !track.forwarding || sub.paused || (sub.deafened && !video) {
                self.stats.dropped_muted += 1;
                sub.gap = true;
                if video {
                    // Resume on a keyframe (requested when the selector sees none).
                    sub.current_layer = None;
                }
                continue;
            }
            // The allocator's target while it flows; before the first allocation (or
            // when the target stopped) the lowest flowing layer within the cap.
            let desired = sub
                .target
                .filter(|&t| track.layers.get(t).is_some_and(|l| l.available(now, idle)))
                .or_else(|| lowest_layer(track, sub.max_layer, now));
            if desired != sub.current_layer {
                if desired == Some(layer) && (keyframe || !video) {
                    if sub.current_layer.is_some() {
                        self.stats.layer_switches += 1;
                    }
                    sub.current_layer = desired;
                    sub.rewriter.switch_source();
                    sub.vp8.switch_source();
                    sub.gap = false;
                    // protocol-v1 §5: when a video subscription first flows and
                    // whenever its layer changes; a track without simulcast is `f`.
                    let name = if track.layers.len() > 1 {
                        track.layer_name(layer)
                    } else {
                        Layer::F
                    };
                    if video && sub.reported_layer != Some(name) {
                        sub.reported_layer = Some(name);
                        self.events.push_back(MediaEvent::LayerChanged {
                            subscriber: sub.subscriber.clone(),
                            track: track.id.clone(),
                            layer: Some(name),
                        });
                    }
                } else if let Some(d) = desired {
                    // Ask for a keyframe on the layer we want to switch to (throttled
                    // per layer in `request_keyframe`).
                    self.pending_keyframes
                        .push((tk, d, KeyframeRequestKind::Pli));
                }
            }
            if sub.current_layer != Some(layer) {
                self.stats.dropped_waiting += 1;
                continue;
            }
            let Some(&(_, out_pt)) = sub
                .pt_map
                .iter()
                .find(|(p, _)| *p == pkt.header.payload_type)
            else {
                self.stats.dropped_no_codec += 1;
                continue;
            };
            if sub.gap {
                sub.rewriter.switch_source();
                sub.vp8.switch_source();
                sub.gap = false;
            }
            let Some((seq, ts)) = sub.rewriter.rewrite(
                *ssrc,
                *pkt.seq_no,
                pkt.header.timestamp,
                now,
                track.clock_rate,
            ) else {
                continue;
            };
            let vp8_patch = vp8.as_ref().and_then(|d| sub.vp8.map(&pkt.payload, d));
            self.pending_writes.push(PendingWrite {
                sub: sk,
                pt: out_pt,
                seq,
                ts,
                marker: pkt.header.marker,
                payload: Arc::clone(&pkt.payload),
                audio_level: pkt.header.ext_vals.audio_level,
                voice_activity: pkt.header.ext_vals.voice_activity,
                vp8: vp8_patch,
            });
        }
    }

    /// Which track and layer an incoming SSRC belongs to; learned once per SSRC from
    /// str0m's receive stream (mid, rid), because senders stop sending mid/rid.
    fn ssrc_route(&mut self, pc_key: usize, ssrc: Ssrc) -> Option<(usize, usize)> {
        let pc = self.pcs.get_mut(pc_key)?;
        if let Some(&(_, tk, layer)) = pc.ssrc_routes.iter().find(|(s, _, _)| *s == ssrc) {
            return Some((tk, layer));
        }
        let (mid, rid) = {
            let mut api = pc.rtc.direct_api();
            let rx = api.stream_rx(&ssrc)?;
            (rx.mid(), rx.rid())
        };
        let p = self.participants.get(&pc.who)?;
        let tk = p
            .tracks
            .iter()
            .copied()
            .find(|&t| self.tracks.get(t).is_some_and(|t| t.mid == mid))?;
        let track = self.tracks.get(tk)?;
        let layer = match rid {
            Some(rid) => track.rids.iter().position(|r| r.as_str() == &*rid)?,
            None => 0,
        };
        // Bounded by the streams str0m accepted on this pc.
        pc.ssrc_routes.push((ssrc, tk, layer));
        Some((tk, layer))
    }

    /// Applies collected writes and keyframe requests until none are left.
    fn flush(&mut self, now: Instant) {
        // Bounded: each round only produces work from events of the previous one, and
        // subscriber drains never produce writes.
        for _ in 0..8 {
            if self.pending_writes.is_empty() && self.pending_keyframes.is_empty() {
                return;
            }
            let mut writes = std::mem::take(&mut self.pending_writes);
            let mut touched = std::mem::take(&mut self.touched);
            for w in writes.drain(..) {
                let Some(sub) = self.subs.get(w.sub) else {
                    continue;
                };
                let Some(pc) = self.pcs.get_mut(sub.pc) else {
                    continue;
                };
                let mut api = pc.rtc.direct_api();
                let Some(tx) = api.stream_tx(&sub.tx_ssrc) else {
                    continue;
                };
                let ext = ExtensionValues {
                    audio_level: w.audio_level,
                    voice_activity: w.voice_activity,
                    ..Default::default()
                };
                self.stats.forwarded_packets += 1;
                self.stats.forwarded_bytes += w.payload.len() as u64;
                pc.qos.packets_out += 1;
                pc.qos.bytes_out += w.payload.len() as u64;
                let mut write = RtpWrite::new(w.pt, w.seq.into(), w.ts, now, w.payload)
                    .marker(w.marker)
                    .ext_vals(ext)
                    .nackable(true);
                if let Some(patch) = w.vp8 {
                    write = write.vp8_patch(patch);
                }
                tx.write_rtp(write);
                if !touched.contains(&sub.pc) {
                    touched.push(sub.pc);
                }
            }
            self.pending_writes = writes;
            for key in touched.drain(..) {
                self.kick(now, key);
            }
            self.touched = touched;

            let mut kfs = std::mem::take(&mut self.pending_keyframes);
            for (tk, layer, kind) in kfs.drain(..) {
                self.request_keyframe(now, tk, layer, kind);
            }
            self.pending_keyframes = kfs;
        }
    }

    /// `Input::Timeout(now)` and a drain: makes an `Rtc` send what was written to it.
    fn kick(&mut self, now: Instant, key: usize) {
        if let Some(pc) = self.pcs.get_mut(key) {
            if pc.dead {
                return;
            }
            if let Err(e) = pc.rtc.handle_input(Input::Timeout(now)) {
                debug!("timeout on rtc of {}: {e}", pc.who);
            }
            self.drain(now, key);
        }
    }

    /// Throttled keyframe request to one publisher layer.
    fn request_keyframe(
        &mut self,
        now: Instant,
        tk: usize,
        layer: usize,
        kind: KeyframeRequestKind,
    ) {
        let interval = self.cfg.keyframe_request_interval;
        let Some(track) = self.tracks.get_mut(tk) else {
            return;
        };
        if track.kind != MediaKind::Video {
            return;
        }
        let pc = track.pc;
        let Some(l) = track.layers.get_mut(layer) else {
            return;
        };
        let Some(ssrc) = l.ssrc else { return };
        // While a request is outstanding (no keyframe since), repeat it only after
        // `interval`; once the publisher answered, a new subscriber may ask again after
        // the short floor, so a late joiner does not wait out the full interval for a
        // keyframe that went to someone else.
        let answered = match (l.last_keyframe, l.last_keyframe_request) {
            (Some(k), Some(r)) => k >= r,
            _ => false,
        };
        let spacing = if answered {
            interval.min(KEYFRAME_REQUEST_FLOOR)
        } else {
            interval
        };
        if l.last_keyframe_request
            .is_some_and(|t| now.saturating_duration_since(t) < spacing)
        {
            return;
        }
        l.last_keyframe_request = Some(now);
        let Some(p) = self.pcs.get_mut(pc) else {
            return;
        };
        if p.dead {
            return;
        }
        if let Some(rx) = p.rtc.direct_api().stream_rx(&ssrc) {
            rx.request_keyframe(kind);
            self.stats.keyframe_requests_out += 1;
            self.kick(now, pc);
        }
    }

    /// A video subscription (re)starts: ask its publisher for a keyframe.
    fn want_keyframe_for_sub(&mut self, sk: usize, now: Instant) {
        let Some(sub) = self.subs.get(sk) else { return };
        let Some(track) = self.tracks.get(sub.track) else {
            return;
        };
        if track.kind != MediaKind::Video {
            return;
        }
        if let Some(layer) = sub
            .target
            .or_else(|| lowest_layer(track, sub.max_layer, now))
        {
            self.pending_keyframes
                .push((sub.track, layer, KeyframeRequestKind::Pli));
        }
    }

    // ----- internals: negotiation helpers ---------------------------------------------

    /// The publisher's negotiated primary payload params of one m-line, offer order.
    fn negotiated_params(&self, pc: usize, mid: Mid) -> Option<Vec<PayloadParams>> {
        let pc = self.pcs.get(pc)?;
        let media = pc.rtc.media(mid)?;
        let config = pc.rtc.codec_config();
        let params: Vec<PayloadParams> = media
            .remote_pts()
            .iter()
            .filter_map(|pt| config.find(|p| p.pt() == *pt).copied())
            .filter(|p| codec_name(p.spec().codec).is_some())
            .collect();
        (!params.is_empty()).then_some(params)
    }

    /// Whether a subscribe m-line offers the track's codec (H264: same profile and
    /// packetization mode, which `match_params` scores).
    fn offer_has_codec(line: &OfferLine, kind: StrKind, track: &Track) -> bool {
        let want = match track.kind {
            MediaKind::Audio => StrKind::Audio,
            MediaKind::Video => StrKind::Video,
        };
        if kind != want {
            return false;
        }
        let offered = CodecConfig::new_from_payload_params(line.params.clone());
        track.params.iter().any(|p| {
            offered
                .match_params(*p)
                .is_some_and(|o| o.spec().codec == p.spec().codec)
        })
    }

    /// The subscriber stream of a served m-line and the PT map from the publisher.
    fn bind_stream(&mut self, pc: usize, mid: Mid, tk: usize) -> Option<(Ssrc, Vec<(Pt, Pt)>)> {
        let track = self.tracks.get(tk)?;
        let p = self.pcs.get_mut(pc)?;
        let remote_pts: Vec<Pt> = p.rtc.media(mid)?.remote_pts().to_vec();
        let config = p.rtc.codec_config();
        let pt_map: Vec<(Pt, Pt)> = track
            .params
            .iter()
            .filter_map(|pp| {
                let local = config.match_params(*pp)?;
                (local.spec().codec == pp.spec().codec && remote_pts.contains(&local.pt()))
                    .then_some((pp.pt(), local.pt()))
            })
            .collect();
        if pt_map.is_empty() {
            return None;
        }
        let ssrc = p.rtc.direct_api().stream_tx_by_mid(mid, None)?.ssrc();
        Some((ssrc, pt_map))
    }

    fn remove_sub(&mut self, sk: usize) {
        let Some(sub) = self.subs.remove(sk) else {
            return;
        };
        if let Some(t) = self.tracks.get_mut(sub.track) {
            t.subscribers.retain(|&s| s != sk);
        }
        if let Some(p) = self.pcs.get_mut(sub.pc) {
            p.subs_by_mid.retain(|&(_, s)| s != sk);
        }
    }

    fn remove_track_slot(&mut self, tk: usize) {
        let Some(mut track) = self.tracks.remove(tk) else {
            return;
        };
        if let (Some(det), Some(now)) = (track.speaking.as_mut(), self.last_now)
            && let Some(tr) = det.stop(now)
        {
            self.events.push_back(MediaEvent::Speaking {
                who: track.owner.clone(),
                speaking: tr.speaking,
                level: tr.level,
            });
        }
        self.track_ids.remove(&track.id);
        for sk in track.subscribers {
            if let Some(sub) = self.subs.remove(sk)
                && let Some(p) = self.pcs.get_mut(sub.pc)
            {
                p.subs_by_mid.retain(|&(_, s)| s != sk);
            }
        }
        if let Some(p) = self.pcs.get_mut(track.pc) {
            p.ssrc_routes.retain(|&(_, t, _)| t != tk);
        }
        if let Some(p) = self.participants.get_mut(&track.owner) {
            p.tracks.retain(|&t| t != tk);
        }
    }
}
