//! A deterministic in-memory network on simulated time, carrying datagrams between one
//! [`MediaCore`] and N client peers that are real str0m `Rtc`s (full ICE, RTP mode).
//!
//! Used by the `tests/media_*.rs` integration tests (and later the load generator).
//! Signaling is instantaneous (offers and answers are exchanged by direct calls, as the
//! engine would after its checks); only media and ICE/DTLS travel the simulated network,
//! with per-destination latency, jitter (which reorders) and loss. The network RNG is a
//! seeded SplitMix64: the seed is printed when a test panics, and `PRISM_SIM_SEED`
//! replays it. (str0m draws its own randomness for ICE credentials, SSRCs and DTLS, so
//! byte contents differ between runs; the network's decisions and timing do not.)
//!
//! Benchmarks (`tools/src/bin/prism-bench-engine.rs`) use three knobs the tests leave
//! alone: [`Sim::video`] shapes the published video (bitrate, packet size),
//! [`Sim::record_media`] turns off the per-packet records that would otherwise grow
//! without bound, and [`Sim::set_probe`] observes every call into the core so the
//! server's own time and allocations can be told apart from the client peers'.
//!
//! Invariants: simulated time only moves forward; [`Sim::drive`] is bounded in
//! iterations and panics (with the seed) instead of spinning.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{
    Direction, KeyframeRequestKind, MediaKind as StrKind, Mid, Rid, Simulcast, SimulcastLayer,
};
use str0m::net::{Protocol, Receive, Transmit};
use str0m::rtp::{ExtensionValues, RtpWrite};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};

use super::{
    MediaConfig, MediaCore, MediaEvent, MediaKind, PublishAnswer, SubscribeAnswer, TrackSource,
};
use crate::ids::{SessionId, TrackId};

/// Opus packet interval.
pub const AUDIO_INTERVAL: Duration = Duration::from_millis(20);
/// Video frame interval (~30 fps).
pub const VIDEO_INTERVAL: Duration = Duration::from_millis(33);
/// A VP8 keyframe every this many frames (besides those requested).
pub const KEYFRAME_EVERY: u64 = 90;

/// The shape of published video when [`Sim::video`] is set: every frame (one per
/// [`VIDEO_INTERVAL`]) earns `bitrate_bps × interval` bytes of credit and is sent in
/// packets of exactly `payload_bytes`, as many as the credit covers (at least one);
/// the remainder carries over to the next frame. Keyframes are no larger than other
/// frames. 1 Mbit/s at 1200 B is ~104 packets/s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoShape {
    /// Target video bitrate (RTP payload bytes only), bits per second.
    pub bitrate_bps: u64,
    /// Size of every video RTP payload, bytes (at least 16).
    pub payload_bytes: usize,
}

/// A call the simulation makes into the core, as reported to a [`CoreProbe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CoreCall {
    /// `publish_offer`, `subscribe_offer`, `track_info`.
    Signaling,
    /// `handle_datagram`.
    Datagram,
    /// `handle_timeout`.
    Timeout,
    /// Draining `poll_transmit` and `poll_event` after an input (one probe span for
    /// the whole drain; the transmits are moved into a reused buffer).
    Poll,
    /// `poll_timeout`.
    PollTimeout,
}

/// Observes every call the simulation makes into [`MediaCore`]: `enter` runs just
/// before the call, `exit` just after it returns (what it returned is used and dropped
/// afterwards, outside the span). Benchmarks time and count the server's work with it.
pub trait CoreProbe {
    /// The core is about to be called.
    fn enter(&mut self, call: CoreCall);
    /// The core call returned.
    fn exit(&mut self, call: CoreCall);
}

/// SplitMix64: tiny, seedable, good enough for network impairments.
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Fills a buffer.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Impairments of the path towards one address.
#[derive(Debug, Clone, Copy)]
pub struct LinkConfig {
    /// One-way delay.
    pub latency: Duration,
    /// Extra random delay in [0, jitter): reorders datagrams.
    pub jitter: Duration,
    /// Probability of dropping a datagram.
    pub loss: f64,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            latency: Duration::from_millis(10),
            jitter: Duration::ZERO,
            loss: 0.0,
        }
    }
}

/// A drop-tail bottleneck in front of one address: datagrams leave at `bandwidth_bps`,
/// wait in a queue of at most `max_queue` (of transmission time) and are dropped when
/// it is full. What a congested access link does to a subscriber's downlink.
#[derive(Debug, Clone, Copy)]
pub struct Bottleneck {
    /// Link rate, bits per second (IP payload; headers are not simulated).
    pub bandwidth_bps: u64,
    /// Queue capacity, as time to drain it.
    pub max_queue: Duration,
    busy_until: Option<Instant>,
}

impl Bottleneck {
    /// A link of `bandwidth_bps` with a 200 ms queue.
    pub fn new(bandwidth_bps: u64) -> Self {
        Self {
            bandwidth_bps,
            max_queue: Duration::from_millis(200),
            busy_until: None,
        }
    }
}

/// One encoding of a simulcast video stream the sim publishes ([`Sim::publish_simulcast`]).
#[derive(Debug, Clone)]
pub struct SimLayer {
    /// Its rid.
    pub rid: String,
    /// Payload bitrate, bits per second (frames of 1000-byte packets).
    pub bitrate_bps: u64,
    next_seq: u64,
    picture_id: u16,
    credit: i64,
    force_keyframe: bool,
}

/// Layer index, picture id and keyframe flag of a sim simulcast payload: the VP8
/// descriptor carries a 15-bit picture id, the byte after the VP8 header the layer.
pub fn simulcast_payload_info(payload: &[u8]) -> Option<(u8, u16, bool)> {
    if payload.len() < 7 || payload[0] & 0x80 == 0 || payload[1] != 0x80 {
        return None;
    }
    let pid = (u16::from(payload[2] & 0x7f) << 8) | u16::from(payload[3]);
    Some((payload[5], pid, str0m::format::detect_vp8_keyframe(payload)))
}

/// What one client peer connection received on one m-line.
#[derive(Debug, Default, Clone)]
pub struct Received {
    /// Extended sequence numbers in arrival order (retransmissions included; only
    /// while [`Sim::record_media`] is on).
    pub seqs: Vec<u64>,
    /// Payload per extended sequence number (first copy kept; only while
    /// [`Sim::record_media`] is on).
    pub payloads: BTreeMap<u64, Vec<u8>>,
    /// When the first VP8 keyframe arrived.
    pub first_keyframe_at: Option<Instant>,
    /// When the first packet arrived.
    pub first_packet_at: Option<Instant>,
    /// Packets received (retransmissions included), counted even when
    /// [`Sim::record_media`] is off.
    pub packets: u64,
    /// Simulcast streams: (arrival, layer index, first packet is a keyframe) each time
    /// the layer of arriving packets changes ([`simulcast_payload_info`]).
    pub layer_changes: Vec<(Instant, u8, bool)>,
    /// Simulcast streams: VP8 picture id per extended sequence number (only while
    /// [`Sim::record_media`] is on).
    pub picture_ids: BTreeMap<u64, u16>,
}

impl Received {
    /// Sequence numbers missing between the lowest and highest received.
    pub fn missing(&self) -> Vec<u64> {
        let (Some(&lo), Some(&hi)) = (
            self.payloads.keys().next(),
            self.payloads.keys().next_back(),
        ) else {
            return Vec::new();
        };
        (lo..=hi)
            .filter(|s| !self.payloads.contains_key(s))
            .collect()
    }

    /// Payloads in sequence-number order.
    pub fn ordered_payloads(&self) -> Vec<&[u8]> {
        self.payloads.values().map(Vec::as_slice).collect()
    }
}

/// One of a client's two peer connections.
pub struct ClientPc {
    /// The str0m peer.
    pub rtc: Rtc,
    /// Its simulated address.
    pub addr: SocketAddr,
    /// When `Event::Connected` fired.
    pub connected_at: Option<Instant>,
    deadline: Option<Instant>,
    pending: Option<SdpPendingOffer>,
    /// Per m-line (mid text) reception record.
    pub received: HashMap<String, Received>,
    /// Keyframe requests the server sent to this peer.
    pub keyframe_requests: Vec<(Instant, KeyframeRequestKind)>,
}

impl ClientPc {
    fn new(now: Instant, addr: SocketAddr, twcc: bool) -> Self {
        let mut config = RtcConfig::new().set_rtp_mode(true).enable_h265(false);
        if !twcc {
            // A client that does not negotiate transport-cc: its feedback is receiver
            // reports only.
            let mut exts = str0m::rtp::ExtensionMap::empty();
            for (id, e) in str0m::rtp::ExtensionMap::standard().iter() {
                if *e != str0m::rtp::Extension::TransportSequenceNumber {
                    exts.set(id, e.clone());
                }
            }
            config = config.set_extension_map(exts);
        }
        let mut rtc = config.build(now);
        let c = Candidate::host(addr, "udp").expect("sim addresses are valid host candidates");
        rtc.add_local_candidate(c);
        Self {
            rtc,
            addr,
            connected_at: None,
            deadline: Some(now),
            pending: None,
            received: HashMap::new(),
            keyframe_requests: Vec::new(),
        }
    }
}

/// A published m-line of a client and what it wrote.
#[derive(Debug, Clone)]
pub struct SentStream {
    /// The m-line.
    pub mid: Mid,
    /// Audio or video.
    pub kind: MediaKind,
    /// The track id the server assigned.
    pub track: Option<TrackId>,
    /// What the client declared it to be.
    pub source: TrackSource,
    /// Simulcast encodings (video), lowest first; empty without simulcast.
    pub layers: Vec<SimLayer>,
    /// RFC 6464 level written on audio packets (0 loudest, -127 silence).
    pub audio_level: i8,
    /// Payloads in send order (only while [`Sim::record_media`] is on).
    pub payloads: Vec<Vec<u8>>,
    /// Packets written, counted even when [`Sim::record_media`] is off.
    pub packets: u64,
    next_seq: u64,
    next_ts: u32,
    next_at: Option<Instant>,
    frames: u64,
    force_keyframe: bool,
    /// Video bytes earned but not yet sent ([`Sim::video`] only).
    credit: i64,
    /// Sending stopped (unpublished).
    pub stopped: bool,
}

/// A participant: two peer connections and its media.
pub struct Client {
    /// Name for messages.
    pub name: String,
    /// The session id the engine would have minted.
    pub id: SessionId,
    /// Publish peer connection (after the first publish).
    pub publish: Option<ClientPc>,
    /// Subscribe peer connection (after the first subscribe).
    pub subscribe: Option<ClientPc>,
    /// What this client publishes.
    pub sent: Vec<SentStream>,
    /// Subscribe m-line → track.
    pub subscriptions: Vec<(Mid, TrackId)>,
    /// The subscribe pc negotiates transport-cc (TWCC feedback); set before the first
    /// subscribe.
    pub twcc: bool,
    base_port: u16,
}

impl Client {
    /// The reception record of the subscribe m-line bound to `track`.
    pub fn received_for(&self, track: &TrackId) -> Option<&Received> {
        let (mid, _) = self.subscriptions.iter().find(|(_, t)| t == track)?;
        self.subscribe.as_ref()?.received.get(&mid.to_string())
    }

    /// The sent record of the track.
    pub fn sent_for(&self, track: &TrackId) -> Option<&SentStream> {
        self.sent.iter().find(|s| s.track.as_ref() == Some(track))
    }
}

struct InFlight {
    from: SocketAddr,
    to: SocketAddr,
    data: Vec<u8>,
}

/// The simulation: one media core, N clients, the network and the clock.
pub struct Sim {
    /// The server under test.
    pub core: MediaCore,
    /// The core's advertised address.
    pub server_addr: SocketAddr,
    /// Participants.
    pub clients: Vec<Client>,
    /// Simulated now.
    pub now: Instant,
    /// Simulated start.
    pub start: Instant,
    /// The network seed (printed on panic).
    pub seed: u64,
    rng: SimRng,
    /// Default impairments.
    pub link: LinkConfig,
    /// Impairments of the path towards specific addresses.
    pub links_to: HashMap<SocketAddr, LinkConfig>,
    /// Rate-limited links in front of specific addresses.
    pub bottlenecks: HashMap<SocketAddr, Bottleneck>,
    /// RTP the server sent, as it left the server (before any loss): per destination,
    /// (time, SSRC, 16-bit sequence number) read from the clear SRTP header (only while
    /// [`Sim::record_media`] is on).
    pub server_rtp: HashMap<SocketAddr, Vec<(Instant, u32, u16)>>,
    in_flight: BTreeMap<(Instant, u64), InFlight>,
    flight_seq: u64,
    /// Events the core emitted, with their time.
    pub events: Vec<(Instant, MediaEvent)>,
    /// Datagrams dropped by the simulated network.
    pub lost: u64,
    /// Shape of published video; `None`: two 900 B packets per frame (four on keyframes).
    pub video: Option<VideoShape>,
    /// Keep every sent and received payload and sequence number (the tests' records).
    /// Off for long runs: the records grow with every packet.
    pub record_media: bool,
    probe: Option<Box<dyn CoreProbe>>,
    /// Reused buffers for draining the core.
    transmit_buf: Vec<Transmit>,
    event_buf: Vec<MediaEvent>,
}

impl Drop for Sim {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "media sim failed with seed {} (replay: PRISM_SIM_SEED={})",
                self.seed, self.seed
            );
        }
    }
}

impl Sim {
    /// A simulation with the seed from `PRISM_SIM_SEED` or `default_seed`.
    pub fn new(default_seed: u64) -> Self {
        let seed = std::env::var("PRISM_SIM_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default_seed);
        let server_addr: SocketAddr = (Ipv4Addr::new(10, 0, 0, 1), 4000).into();
        // Simulated time starts at an arbitrary real instant; only differences matter.
        #[expect(clippy::disallowed_methods, reason = "the simulation's origin of time")]
        let start = Instant::now();
        Self {
            core: MediaCore::new(MediaConfig::new(server_addr)),
            server_addr,
            clients: Vec::new(),
            now: start,
            start,
            seed,
            rng: SimRng::new(seed),
            link: LinkConfig::default(),
            links_to: HashMap::new(),
            bottlenecks: HashMap::new(),
            server_rtp: HashMap::new(),
            in_flight: BTreeMap::new(),
            flight_seq: 0,
            events: Vec::new(),
            lost: 0,
            video: None,
            record_media: true,
            probe: None,
            transmit_buf: Vec::new(),
            event_buf: Vec::new(),
        }
    }

    /// Reports every later call into the core to `probe`.
    pub fn set_probe(&mut self, probe: Box<dyn CoreProbe>) {
        self.probe = Some(probe);
    }

    fn probe_enter(&mut self, call: CoreCall) {
        if let Some(p) = self.probe.as_mut() {
            p.enter(call);
        }
    }

    fn probe_exit(&mut self, call: CoreCall) {
        if let Some(p) = self.probe.as_mut() {
            p.exit(call);
        }
    }

    /// Simulated time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Adds a participant; returns its index.
    pub fn add_client(&mut self, name: &str) -> usize {
        let n = self.clients.len() as u16;
        self.clients.push(Client {
            name: name.to_string(),
            id: SessionId::parse(&format!("s_{name}")).expect("test names are valid ids"),
            publish: None,
            subscribe: None,
            sent: Vec::new(),
            subscriptions: Vec::new(),
            twcc: true,
            base_port: 5000 + 2 * n,
        });
        self.clients.len() - 1
    }

    fn client_addr(&self, c: usize, kind: u16) -> SocketAddr {
        // 250 clients per /24 (10.0.1.1 …), so large fan-outs get distinct hosts.
        let (net, host) = (c / 250, c % 250);
        assert!(net < 250, "the sim addresses at most 62500 clients");
        (
            Ipv4Addr::new(10, 0, 1 + net as u8, 1 + host as u8),
            self.clients[c].base_port + kind,
        )
            .into()
    }

    /// Publishes Opus and/or VP8 (sendonly m-lines) or renegotiates with the current
    /// set of non-stopped streams; returns the core's answer.
    pub fn publish(&mut self, c: usize, audio: bool, video: bool) -> PublishAnswer {
        let addr = self.client_addr(c, 0);
        let now = self.now;
        let client = &mut self.clients[c];
        let pc = client
            .publish
            .get_or_insert_with(|| ClientPc::new(now, addr, true));
        let mut api = pc.rtc.sdp_api();
        for (want, kind) in [(audio, MediaKind::Audio), (video, MediaKind::Video)] {
            if !want {
                continue;
            }
            let sk = if kind == MediaKind::Audio {
                StrKind::Audio
            } else {
                StrKind::Video
            };
            let mid = api.add_media(sk, Direction::SendOnly, None, None, None);
            client.sent.push(SentStream {
                mid,
                kind,
                track: None,
                source: if kind == MediaKind::Audio {
                    TrackSource::Microphone
                } else {
                    TrackSource::Camera
                },
                layers: Vec::new(),
                audio_level: -30,
                payloads: Vec::new(),
                packets: 0,
                next_seq: 1000,
                next_ts: 0,
                next_at: None,
                frames: 0,
                force_keyframe: true,
                credit: 0,
                stopped: false,
            });
        }
        let (offer, pending) = api.apply().expect("the client changed something");
        pc.pending = Some(pending);
        self.finish_publish(c, offer.to_sdp_string())
    }

    /// Publishes one simulcast VP8 m-line with the given encodings (rid, payload
    /// bitrate), lowest first, as `source` (camera or screen); renegotiates the rest.
    pub fn publish_simulcast(
        &mut self,
        c: usize,
        source: TrackSource,
        layers: &[(&str, u64)],
    ) -> PublishAnswer {
        let addr = self.client_addr(c, 0);
        let now = self.now;
        let client = &mut self.clients[c];
        let pc = client
            .publish
            .get_or_insert_with(|| ClientPc::new(now, addr, true));
        let mut simulcast = Simulcast::new();
        for (rid, _) in layers {
            simulcast.add_send_layer(SimulcastLayer::new(rid));
        }
        let mut api = pc.rtc.sdp_api();
        let mid = api.add_media(
            StrKind::Video,
            Direction::SendOnly,
            None,
            None,
            Some(simulcast),
        );
        client.sent.push(SentStream {
            mid,
            kind: MediaKind::Video,
            track: None,
            source,
            layers: layers
                .iter()
                .enumerate()
                .map(|(i, (rid, bps))| SimLayer {
                    rid: rid.to_string(),
                    bitrate_bps: *bps,
                    next_seq: 1000 + 10_000 * i as u64,
                    picture_id: 1000 * i as u16,
                    credit: 0,
                    force_keyframe: true,
                })
                .collect(),
            audio_level: 0,
            payloads: Vec::new(),
            packets: 0,
            next_seq: 0,
            next_ts: 0,
            next_at: None,
            frames: 0,
            force_keyframe: true,
            credit: 0,
            stopped: false,
        });
        let (offer, pending) = api.apply().expect("the client changed something");
        pc.pending = Some(pending);
        self.finish_publish(c, offer.to_sdp_string())
    }

    /// The SSRC client `c` receives `track` on (its subscribe m-line's stream).
    pub fn received_ssrc(&mut self, c: usize, track: &TrackId) -> Option<u32> {
        let client = &mut self.clients[c];
        let (mid, _) = *client.subscriptions.iter().find(|(_, t)| t == track)?;
        let pc = client.subscribe.as_mut()?;
        Some(*pc.rtc.direct_api().stream_rx_by_mid(mid, None)?.ssrc())
    }

    /// The address of client `c`'s subscribe peer connection (where its downlink ends).
    pub fn subscribe_addr(&self, c: usize) -> SocketAddr {
        self.client_addr(c, 1)
    }

    /// Sets the RFC 6464 audio level client `c` writes on its audio packets from now
    /// on, in -dBov (0 loudest, 127 silence; larger values are treated as 127).
    pub fn set_audio_level(&mut self, c: usize, level: u8) {
        let level = -(level.min(127) as i8);
        for s in self.clients[c]
            .sent
            .iter_mut()
            .filter(|s| s.kind == MediaKind::Audio)
        {
            s.audio_level = level;
        }
    }

    /// Stops one published m-line (port 0) and renegotiates.
    pub fn unpublish(&mut self, c: usize, track: &TrackId) -> PublishAnswer {
        let client = &mut self.clients[c];
        let s = client
            .sent
            .iter_mut()
            .find(|s| s.track.as_ref() == Some(track))
            .expect("the client published this track");
        s.stopped = true;
        let mid = s.mid;
        let pc = client.publish.as_mut().expect("published before");
        let mut api = pc.rtc.sdp_api();
        api.stop_media(mid);
        let (offer, pending) = api.apply().expect("stopping is a change");
        pc.pending = Some(pending);
        self.finish_publish(c, offer.to_sdp_string())
    }

    fn finish_publish(&mut self, c: usize, offer: String) -> PublishAnswer {
        let client = &mut self.clients[c];
        let tracks: Vec<(String, TrackSource)> = client
            .sent
            .iter()
            .filter(|s| !s.stopped)
            .map(|s| (s.mid.to_string(), s.source))
            .collect();
        let id = client.id.clone();
        self.probe_enter(CoreCall::Signaling);
        let answer = self.core.publish_offer(self.now, &id, &offer, &tracks);
        self.probe_exit(CoreCall::Signaling);
        let answer = answer.expect("the core accepts the client's publish offer");
        let client = &mut self.clients[c];
        let pc = client.publish.as_mut().expect("created above");
        let pending = pc.pending.take().expect("offer pending");
        let sdp = SdpAnswer::from_sdp_string(&answer.sdp).expect("the core's answer parses");
        pc.rtc
            .sdp_api()
            .accept_answer(pending, sdp)
            .expect("the client accepts the core's answer");
        for info in &answer.tracks {
            if let Some(s) = client
                .sent
                .iter_mut()
                .find(|s| s.mid.to_string() == info.mid)
            {
                s.track = Some(info.track_id.clone());
            }
        }
        self.after_signaling();
        answer
    }

    /// Subscribes (recvonly m-lines) to `tracks` in addition to the current ones.
    pub fn subscribe(&mut self, c: usize, tracks: &[TrackId]) -> SubscribeAnswer {
        let addr = self.client_addr(c, 1);
        let now = self.now;
        let mut infos = Vec::new();
        for t in tracks {
            self.probe_enter(CoreCall::Signaling);
            let info = self.core.track_info(t);
            self.probe_exit(CoreCall::Signaling);
            infos.push((t.clone(), info.map(|i| i.kind).unwrap_or(MediaKind::Video)));
        }
        let client = &mut self.clients[c];
        let twcc = client.twcc;
        let pc = client
            .subscribe
            .get_or_insert_with(|| ClientPc::new(now, addr, twcc));
        let mut api = pc.rtc.sdp_api();
        for (t, kind) in infos {
            let sk = if kind == MediaKind::Audio {
                StrKind::Audio
            } else {
                StrKind::Video
            };
            let mid = api.add_media(sk, Direction::RecvOnly, None, None, None);
            client.subscriptions.push((mid, t));
        }
        let (offer, pending) = api.apply().expect("the client changed something");
        pc.pending = Some(pending);
        let subs: Vec<(String, TrackId, Option<super::Layer>)> = client
            .subscriptions
            .iter()
            .map(|(m, t)| (m.to_string(), t.clone(), None))
            .collect();
        let id = client.id.clone();
        let offer = offer.to_sdp_string();
        self.probe_enter(CoreCall::Signaling);
        let answer = self.core.subscribe_offer(self.now, &id, &offer, &subs);
        self.probe_exit(CoreCall::Signaling);
        let answer = answer.expect("the core accepts the client's subscribe offer");
        let client = &mut self.clients[c];
        let pc = client.subscribe.as_mut().expect("created above");
        let pending = pc.pending.take().expect("offer pending");
        let sdp = SdpAnswer::from_sdp_string(&answer.sdp).expect("the core's answer parses");
        pc.rtc
            .sdp_api()
            .accept_answer(pending, sdp)
            .expect("the client accepts the core's answer");
        self.after_signaling();
        answer
    }

    /// Every client peer connection is connected.
    pub fn all_connected(&self) -> bool {
        self.clients.iter().all(|c| {
            [&c.publish, &c.subscribe]
                .iter()
                .all(|pc| pc.as_ref().is_none_or(|pc| pc.connected_at.is_some()))
        })
    }

    fn after_signaling(&mut self) {
        self.collect_core();
        for c in 0..self.clients.len() {
            for which in 0..2 {
                self.drain_client(c, which);
            }
        }
    }

    /// Sends arbitrary bytes over the network (e.g. garbage) from `from` to `to`.
    pub fn inject(&mut self, from: SocketAddr, to: SocketAddr, data: Vec<u8>) {
        self.send(from, to, data);
    }

    /// A random number from the sim's seeded generator.
    pub fn rng(&mut self) -> &mut SimRng {
        &mut self.rng
    }

    fn send(&mut self, from: SocketAddr, to: SocketAddr, data: Vec<u8>) {
        let link = self.links_to.get(&to).copied().unwrap_or(self.link);
        if link.loss > 0.0 && self.rng.next_f64() < link.loss {
            self.lost += 1;
            return;
        }
        let jitter = if link.jitter.is_zero() {
            Duration::ZERO
        } else {
            link.jitter.mul_f64(self.rng.next_f64())
        };
        let mut depart = self.now;
        if let Some(b) = self.bottlenecks.get_mut(&to) {
            let start = b.busy_until.map_or(self.now, |t| t.max(self.now));
            if start.saturating_duration_since(self.now) > b.max_queue {
                self.lost += 1;
                return;
            }
            let bits = data.len() as u128 * 8;
            let tx = Duration::from_micros(
                (bits * 1_000_000 / u128::from(b.bandwidth_bps.max(1))) as u64,
            );
            b.busy_until = Some(start + tx);
            depart = start + tx;
        }
        let at = depart + link.latency + jitter;
        self.flight_seq += 1;
        self.in_flight
            .insert((at, self.flight_seq), InFlight { from, to, data });
    }

    fn collect_core(&mut self) {
        let mut transmits = std::mem::take(&mut self.transmit_buf);
        let mut events = std::mem::take(&mut self.event_buf);
        self.probe_enter(CoreCall::Poll);
        while let Some(t) = self.core.poll_transmit() {
            transmits.push(t);
        }
        while let Some(e) = self.core.poll_event() {
            events.push(e);
        }
        self.probe_exit(CoreCall::Poll);
        for t in transmits.drain(..) {
            let data: &[u8] = &t.contents;
            // SRTP leaves the RTP header in the clear; RTCP (mux) has types 200–206.
            if self.record_media
                && data.len() >= 12
                && data[0] >> 6 == 2
                && !(200..=206).contains(&data[1])
            {
                let seq = u16::from_be_bytes([data[2], data[3]]);
                let ssrc = u32::from_be_bytes([data[8], data[9], data[10], data[11]]);
                self.server_rtp
                    .entry(t.destination)
                    .or_default()
                    .push((self.now, ssrc, seq));
            }
            self.send(t.source, t.destination, data.to_vec());
        }
        let now = self.now;
        self.events.extend(events.drain(..).map(|e| (now, e)));
        self.transmit_buf = transmits;
        self.event_buf = events;
    }

    fn pc_mut(&mut self, c: usize, which: usize) -> Option<&mut ClientPc> {
        let client = &mut self.clients[c];
        if which == 0 {
            client.publish.as_mut()
        } else {
            client.subscribe.as_mut()
        }
    }

    fn drain_client(&mut self, c: usize, which: usize) {
        let now = self.now;
        let record = self.record_media;
        let mut out = Vec::new();
        let mut keyframe_asked: Vec<(Mid, Option<Rid>)> = Vec::new();
        {
            let Some(pc) = self.pc_mut(c, which) else {
                return;
            };
            loop {
                match pc.rtc.poll_output() {
                    Ok(Output::Timeout(t)) => {
                        pc.deadline = Some(t);
                        break;
                    }
                    Ok(Output::Transmit(t)) => {
                        let data: &[u8] = &t.contents;
                        out.push((t.source, t.destination, data.to_vec()));
                    }
                    Ok(Output::Event(e)) => match e {
                        Event::Connected => pc.connected_at = Some(now),
                        Event::RtpPacket(p) => {
                            let mid = pc
                                .rtc
                                .direct_api()
                                .stream_rx(&p.header.ssrc)
                                .map(|s| s.mid());
                            let video = mid
                                .and_then(|m| pc.rtc.media(m))
                                .is_some_and(|m| m.kind() == StrKind::Video);
                            let mid = mid.map(|m| m.to_string()).unwrap_or_default();
                            let r = pc.received.entry(mid).or_default();
                            let seq = *p.seq_no;
                            r.packets += 1;
                            r.first_packet_at.get_or_insert(now);
                            if video && str0m::format::detect_vp8_keyframe(&p.payload) {
                                r.first_keyframe_at.get_or_insert(now);
                            }
                            if let Some((layer, pid, key)) =
                                video.then(|| simulcast_payload_info(&p.payload)).flatten()
                            {
                                if r.layer_changes.last().is_none_or(|l| l.1 != layer) {
                                    r.layer_changes.push((now, layer, key));
                                }
                                if record {
                                    r.picture_ids.insert(seq, pid);
                                }
                            }
                            if record {
                                r.seqs.push(seq);
                                r.payloads.entry(seq).or_insert_with(|| p.payload.to_vec());
                            }
                        }
                        Event::KeyframeRequest(k) => {
                            pc.keyframe_requests.push((now, k.kind));
                            keyframe_asked.push((k.mid, k.rid));
                        }
                        _ => {}
                    },
                    Err(e) => panic!("client rtc failed: {e}"),
                }
            }
        }
        for (from, to, data) in out {
            self.send(from, to, data);
        }
        if !keyframe_asked.is_empty() {
            // A real encoder answers a PLI with its next frame; do it now. Simulcast:
            // only the encoding asked for.
            for s in self.clients[c].sent.iter_mut() {
                if s.kind == MediaKind::Video && !s.stopped {
                    for (mid, rid) in &keyframe_asked {
                        if s.layers.is_empty() {
                            s.force_keyframe = true;
                        } else if *mid == s.mid
                            && let Some(l) = s
                                .layers
                                .iter_mut()
                                .find(|l| rid.is_some_and(|r| r.as_bytes() == l.rid.as_bytes()))
                        {
                            l.force_keyframe = true;
                        }
                    }
                    s.next_at = Some(now);
                }
            }
        }
    }

    /// Writes the media of client `c` that is due.
    fn send_media(&mut self, c: usize) {
        let now = self.now;
        let (shape, record) = (self.video, self.record_media);
        let client = &mut self.clients[c];
        let Some(pc) = client.publish.as_mut() else {
            return;
        };
        if pc.connected_at.is_none() {
            return;
        }
        let mut wrote = false;
        for s in client.sent.iter_mut() {
            if s.stopped {
                continue;
            }
            let due = *s.next_at.get_or_insert(now);
            if due > now {
                continue;
            }
            if !s.layers.is_empty() {
                Self::send_simulcast_frame(pc, s, now, record);
                s.frames += 1;
                s.next_at = Some(due + VIDEO_INTERVAL);
                s.next_ts = s.next_ts.wrapping_add(2970);
                wrote = true;
                continue;
            }
            let codec = if s.kind == MediaKind::Audio {
                Codec::Opus
            } else {
                Codec::Vp8
            };
            let Some(pt) = pc
                .rtc
                .codec_config()
                .find(|p| p.spec().codec == codec)
                .map(|p| p.pt())
            else {
                continue;
            };
            let mut packets: Vec<(Vec<u8>, bool)> = Vec::new();
            match s.kind {
                MediaKind::Audio => {
                    let mut p = vec![0xfc; 60];
                    p[1..9].copy_from_slice(&s.next_seq.to_be_bytes());
                    packets.push((p, true));
                    s.next_at = Some(due + AUDIO_INTERVAL);
                }
                MediaKind::Video => {
                    let key = s.force_keyframe || s.frames % KEYFRAME_EVERY == 0;
                    s.force_keyframe = false;
                    let (n, size) = match shape {
                        None => (if key { 4 } else { 2 }, 900),
                        Some(shape) => {
                            let size = shape.payload_bytes.max(16);
                            let per_frame =
                                shape.bitrate_bps as u128 * VIDEO_INTERVAL.as_micros() / 8_000_000;
                            s.credit += per_frame as i64;
                            let n = (s.credit / size as i64).max(1);
                            s.credit -= n * size as i64;
                            (n as u64, size)
                        }
                    };
                    for i in 0..n {
                        // VP8 payload descriptor: S=1 on the first packet, PID 0.
                        let mut p = vec![0u8; size];
                        p[0] = if i == 0 { 0x10 } else { 0x00 };
                        // VP8 payload header: P bit (bit 0) clear on keyframes.
                        p[1] = if key { 0x00 } else { 0x01 };
                        p[2..10].copy_from_slice(&s.next_seq.wrapping_add(i).to_be_bytes());
                        packets.push((p, i == n - 1));
                    }
                    s.frames += 1;
                    s.next_at = Some(due + VIDEO_INTERVAL);
                }
            }
            let Some(tx) = pc
                .rtc
                .direct_api()
                .stream_tx_by_mid(s.mid, None)
                .map(|t| t.ssrc())
            else {
                continue;
            };
            for (payload, marker) in packets {
                let mut api = pc.rtc.direct_api();
                let Some(stream) = api.stream_tx(&tx) else {
                    break;
                };
                let ext = ExtensionValues {
                    audio_level: (s.kind == MediaKind::Audio).then_some(s.audio_level),
                    voice_activity: (s.kind == MediaKind::Audio).then_some(true),
                    ..Default::default()
                };
                if record {
                    s.payloads.push(payload.clone());
                }
                stream.write_rtp(
                    RtpWrite::new(pt, s.next_seq.into(), s.next_ts, now, payload)
                        .marker(marker)
                        .ext_vals(ext)
                        .nackable(true),
                );
                s.next_seq += 1;
                s.packets += 1;
            }
            s.next_ts = s.next_ts.wrapping_add(match s.kind {
                MediaKind::Audio => 960,
                MediaKind::Video => 2970,
            });
            wrote = true;
        }
        if wrote {
            let _ = pc.rtc.handle_input(Input::Timeout(now));
            self.drain_client(c, 0);
        }
    }

    /// One frame on every encoding of a simulcast stream.
    fn send_simulcast_frame(pc: &mut ClientPc, s: &mut SentStream, now: Instant, record: bool) {
        let Some(pt) = pc
            .rtc
            .codec_config()
            .find(|p| p.spec().codec == Codec::Vp8)
            .map(|p| p.pt())
        else {
            return;
        };
        const SIZE: usize = 1000;
        for (index, l) in s.layers.iter_mut().enumerate() {
            let key = l.force_keyframe || s.frames.is_multiple_of(KEYFRAME_EVERY);
            l.force_keyframe = false;
            l.credit += (u128::from(l.bitrate_bps) * VIDEO_INTERVAL.as_micros() / 8_000_000) as i64;
            let n = (l.credit / SIZE as i64).max(1);
            l.credit -= n * SIZE as i64;
            let rid: Rid = l.rid.as_str().into();
            let mut api = pc.rtc.direct_api();
            let Some(tx) = api.stream_tx_by_mid(s.mid, Some(rid)) else {
                continue;
            };
            for i in 0..n {
                let mut p = vec![0u8; SIZE];
                // VP8 descriptor: X (and S on the first packet), I, 15-bit picture id.
                p[0] = if i == 0 { 0x90 } else { 0x80 };
                p[1] = 0x80;
                p[2] = 0x80 | (l.picture_id >> 8) as u8;
                p[3] = l.picture_id as u8;
                // VP8 payload header: P bit clear on keyframes; then the layer index.
                p[4] = if key { 0x00 } else { 0x01 };
                p[5] = index as u8;
                p[6..14].copy_from_slice(&l.next_seq.to_be_bytes());
                if record {
                    s.payloads.push(p.clone());
                }
                tx.write_rtp(
                    RtpWrite::new(pt, l.next_seq.into(), s.next_ts, now, p)
                        .marker(i == n - 1)
                        .nackable(true),
                );
                l.next_seq += 1;
                s.packets += 1;
            }
            l.picture_id = (l.picture_id + 1) & 0x7fff;
        }
    }

    fn deliver(&mut self, d: InFlight) {
        if d.to == self.server_addr {
            self.probe_enter(CoreCall::Datagram);
            self.core.handle_datagram(self.now, d.from, d.to, &d.data);
            self.probe_exit(CoreCall::Datagram);
            self.collect_core();
            return;
        }
        let now = self.now;
        for c in 0..self.clients.len() {
            for which in 0..2 {
                let Some(pc) = self.pc_mut(c, which) else {
                    continue;
                };
                if pc.addr != d.to {
                    continue;
                }
                let Ok(contents) = d.data.as_slice().try_into() else {
                    return;
                };
                let input = Input::Receive(
                    now,
                    Receive {
                        proto: Protocol::Udp,
                        source: d.from,
                        destination: d.to,
                        contents,
                    },
                );
                // A client refusing a datagram is not the server's failure.
                let _ = pc.rtc.handle_input(input);
                self.drain_client(c, which);
                return;
            }
        }
    }

    /// The next instant anything happens.
    fn next_event_time(&mut self) -> Option<Instant> {
        self.probe_enter(CoreCall::PollTimeout);
        let mut next = self.core.poll_timeout();
        self.probe_exit(CoreCall::PollTimeout);
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n: Instant| n.min(t)));
            }
        };
        consider(self.in_flight.keys().next().map(|(t, _)| *t));
        for c in &self.clients {
            consider(c.publish.as_ref().and_then(|p| p.deadline));
            consider(c.subscribe.as_ref().and_then(|p| p.deadline));
            if c.publish.as_ref().is_some_and(|p| p.connected_at.is_some()) {
                for s in c.sent.iter().filter(|s| !s.stopped) {
                    consider(Some(s.next_at.unwrap_or(self.now)));
                }
            }
        }
        next
    }

    /// Runs the simulation until `elapsed() == until`.
    pub fn drive(&mut self, until: Duration) {
        let end = self.start + until;
        let mut iterations = 0u64;
        loop {
            iterations += 1;
            assert!(
                iterations < 5_000_000,
                "drive() did not reach {until:?} (stuck at {:?})",
                self.elapsed()
            );
            let Some(next) = self.next_event_time() else {
                self.now = self.now.max(end);
                return;
            };
            if next > end {
                self.now = self.now.max(end);
                return;
            }
            self.now = self.now.max(next);
            let now = self.now;
            while let Some(entry) = self.in_flight.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                let d = entry.remove();
                self.deliver(d);
            }
            for c in 0..self.clients.len() {
                for which in 0..2 {
                    let due = self
                        .pc_mut(c, which)
                        .is_some_and(|pc| pc.deadline.is_some_and(|d| d <= now));
                    if due {
                        if let Some(pc) = self.pc_mut(c, which) {
                            let _ = pc.rtc.handle_input(Input::Timeout(now));
                        }
                        self.drain_client(c, which);
                    }
                }
                self.send_media(c);
            }
            self.probe_enter(CoreCall::PollTimeout);
            let core_due = self.core.poll_timeout().is_some_and(|t| t <= now);
            self.probe_exit(CoreCall::PollTimeout);
            if core_due {
                self.probe_enter(CoreCall::Timeout);
                self.core.handle_timeout(now);
                self.probe_exit(CoreCall::Timeout);
                self.collect_core();
            }
        }
    }

    /// Runs for `d` more.
    pub fn drive_for(&mut self, d: Duration) {
        let until = self.elapsed() + d;
        self.drive(until);
    }
}
