//! The client side: signaling sockets, str0m peer connections, and the mio loops that
//! drive them.
//!
//! A [`Signal`] is one joined WebSocket (protocol-v1), used blocking by the main thread
//! while the scenario is set up and pumped non-blocking afterwards (so the server's
//! pings are answered). A [`ClientPc`] is one str0m peer connection — full ICE, RTP
//! mode, Opus + VP8 — on its own UDP socket on loopback. The main thread builds it,
//! negotiates it over the signaling socket, then hands it to one of a few [`Loops`]:
//! threads, each a mio `Poll` over its sockets, that run ICE, DTLS, SRTP and the media
//! schedule. Subscribers count packets at the UDP level (see `media.rs`) and decrypt a
//! sample.
//!
//! Invariants: every cross-thread queue is bounded; the per-packet path of a loop
//! allocates nothing once a stream is known and takes no lock; every blocking wait of
//! the main thread has a deadline.
#![allow(clippy::disallowed_methods)] // a tool owns its clock

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use prism::udp::RecvBatch;
use serde_json::{Value, json};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Simulcast, SimulcastLayer};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{Extension, ExtensionMap, ExtensionValues, RtpPacket, RtpWrite};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};
use tungstenite::{Message, WebSocket};

use crate::media::{self, Counters, SeqState, Shape, Source};

/// How long a signaling response may take.
const RESPONSE_WAIT: Duration = Duration::from_secs(20);
/// `rtc.join` answered `server_busy` is retried this many times.
const JOIN_BUSY_RETRIES: u32 = 20;
/// `poll_output` calls after one input before it must reach `Output::Timeout`.
const MAX_OUTPUTS: usize = 100_000;

// ----- signaling ---------------------------------------------------------------------------

/// One joined signaling WebSocket.
pub struct Signal {
    ws: WebSocket<TcpStream>,
    channel: String,
    next_id: u64,
    /// When the socket opened (start of the join time).
    pub opened_at: Instant,
    /// `rtc.joined` payload.
    pub joined: Value,
    closed: bool,
}

impl Signal {
    /// Opens the signaling socket at `addr` and joins `channel` with `ticket`.
    pub fn join(addr: SocketAddr, channel: &str, ticket: &str) -> Result<Self, String> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .map_err(|e| e.to_string())?;
        let url = format!("ws://{addr}/v1/rtc/signaling");
        let (ws, _) = tungstenite::client(url.as_str(), stream)
            .map_err(|e| format!("signaling upgrade: {e}"))?;
        let mut s = Self {
            ws,
            channel: channel.to_string(),
            next_id: 0,
            opened_at: Instant::now(),
            joined: Value::Null,
            closed: false,
        };
        // A saturated worker sheds joins with `server_busy` before the ticket is spent
        // (protocol-v1): wait `retry_after_ms` and retry with the same ticket, as a
        // client should, for up to JOIN_BUSY_RETRIES attempts.
        let mut attempt = 0;
        loop {
            match s.request_raw("rtc.join", json!({"ticket": ticket}))? {
                Ok(r) => {
                    s.joined = r["payload"].clone();
                    return Ok(s);
                }
                Err(e) if e["code"] == "server_busy" && attempt < JOIN_BUSY_RETRIES => {
                    attempt += 1;
                    let wait = e["retry_after_ms"].as_u64().unwrap_or(1000).min(5000);
                    std::thread::sleep(Duration::from_millis(wait));
                }
                Err(e) => return Err(format!("rtc.join refused: {e}")),
            }
        }
    }

    /// Sends a request and waits for its response; an `rtc.error` is an `Err`.
    pub fn request(&mut self, kind: &str, payload: Value) -> Result<Value, String> {
        self.request_raw(kind, payload)?
            .map_err(|e| format!("{kind} refused: {e}"))
    }

    /// Sends a request and waits for its response: `Ok(Err(payload))` for an
    /// `rtc.error`, `Err` when the socket fails or nothing answers.
    fn request_raw(&mut self, kind: &str, payload: Value) -> Result<Result<Value, Value>, String> {
        self.next_id += 1;
        let id = format!("r{}", self.next_id);
        let msg = json!({"type": kind, "request_id": id, "channel_id": self.channel,
                         "payload": payload});
        self.ws
            .send(Message::text(msg.to_string()))
            .map_err(|e| format!("{kind}: send: {e}"))?;
        let deadline = Instant::now() + RESPONSE_WAIT;
        while Instant::now() < deadline {
            match self.ws.read() {
                Ok(Message::Text(t)) => {
                    let v: Value = serde_json::from_str(t.as_str())
                        .map_err(|e| format!("{kind}: a frame is not JSON: {e}"))?;
                    if v["request_id"] != id.as_str() {
                        continue; // an event: the tool needs none of them
                    }
                    if v["type"] == "rtc.error" {
                        return Ok(Err(v["payload"].clone()));
                    }
                    return Ok(Ok(v));
                }
                Ok(Message::Close(f)) => return Err(format!("{kind}: socket closed: {f:?}")),
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => return Err(format!("{kind}: read: {e}")),
            }
        }
        Err(format!("{kind}: no response in {RESPONSE_WAIT:?}"))
    }

    /// Reads what is waiting without blocking (answering pings); false once closed.
    pub fn pump(&mut self) -> bool {
        if self.closed {
            return false;
        }
        let _ = self.ws.get_mut().set_nonblocking(true);
        loop {
            match self.ws.read() {
                Ok(Message::Close(_)) => {
                    self.closed = true;
                    break;
                }
                Ok(_) => {}
                Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.closed = true;
                    break;
                }
            }
        }
        let _ = self.ws.flush();
        let _ = self.ws.get_mut().set_nonblocking(false);
        !self.closed
    }

    /// Sends `rtc.leave` and closes (best effort: the run is over).
    pub fn leave(&mut self) {
        if !self.closed {
            let _ = self.request("rtc.leave", json!({}));
            let _ = self.ws.close(None);
            let _ = self.ws.flush();
            self.closed = true;
        }
    }
}

// ----- peer connections --------------------------------------------------------------------

/// What one subscribed m-line expects (for the join time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Sends media.
    Publish,
    /// Receives media.
    Subscribe,
}

/// One str0m peer connection on its own UDP socket.
pub struct ClientPc {
    role: Role,
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    deadline: Instant,
    connected: bool,
    /// Start of the join time (WebSocket open, or the subscribe offer).
    join_from: Instant,
    first_frame: bool,
    /// Whether the subscriber waits for a video keyframe (else any packet) as its first frame.
    wants_video: bool,
    sources: Vec<Source>,
    pts: HashMap<Mid, str0m::media::Pt>,
    seqs: HashMap<u32, SeqState>,
    rtx_pts: [bool; 128],
    sample_every: u64,
    sample_count: u64,
    suppressed: Vec<u32>,
    /// Join time, once the first frame arrived.
    pub join_time: Option<Duration>,
}

/// The RTP header extensions the clients offer. Transport-wide congestion control is
/// left out when subscribers decrypt only a sample: str0m would report the packets it
/// never saw as lost and the server's bandwidth estimate would collapse.
fn extensions(twcc: bool) -> ExtensionMap {
    let mut e = ExtensionMap::empty();
    e.set(1, Extension::AudioLevel);
    e.set(2, Extension::AbsoluteSendTime);
    if twcc {
        e.set(3, Extension::TransportSequenceNumber);
    }
    e.set(4, Extension::RtpMid);
    e.set(10, Extension::RtpStreamId);
    e.set(11, Extension::RepairedRtpStreamId);
    e
}

impl ClientPc {
    /// A peer connection bound to `ip` (loopback for Prism). `sample_every`: a subscriber decrypts one
    /// RTP packet in this many once its first frame arrived (1 = all).
    pub fn new(
        role: Role,
        join_from: Instant,
        sample_every: u64,
        ip: IpAddr,
    ) -> Result<Self, String> {
        let std_socket =
            std::net::UdpSocket::bind((ip, 0)).map_err(|e| format!("bind a UDP socket: {e}"))?;
        std_socket
            .set_nonblocking(true)
            .map_err(|e| e.to_string())?;
        let local = std_socket.local_addr().map_err(|e| e.to_string())?;
        let now = Instant::now();
        let mut rtc = RtcConfig::new()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .set_extension_map(extensions(sample_every <= 1))
            .build(now);
        let host = Candidate::host(local, "udp").map_err(|e| format!("host candidate: {e}"))?;
        rtc.add_local_candidate(host);
        Ok(Self {
            role,
            rtc,
            socket: UdpSocket::from_std(std_socket),
            local,
            deadline: now,
            connected: false,
            join_from,
            first_frame: false,
            wants_video: false,
            sources: Vec::new(),
            pts: HashMap::new(),
            seqs: HashMap::new(),
            rtx_pts: [false; 128],
            sample_every: sample_every.max(1),
            sample_count: 0,
            suppressed: Vec::new(),
            join_time: None,
        })
    }

    /// Creates the offer: one `sendonly` m-line per kind (publish, with its media
    /// source; video as three simulcast layers when `shape` says so) or one `recvonly`
    /// m-line per kind (subscribe). Returns the SDP, the pending offer and the mids.
    pub fn offer(
        &mut self,
        kinds: &[MediaKind],
        shape: &Shape,
    ) -> Result<(String, SdpPendingOffer, Vec<Mid>), String> {
        let mut api = self.rtc.sdp_api();
        let mut mids = Vec::new();
        for &kind in kinds {
            let mid = match self.role {
                Role::Publish => {
                    let simulcast = (kind == MediaKind::Video && shape.simulcast).then(|| {
                        let mut s = Simulcast::new();
                        for (rid, _) in media::LAYERS {
                            s.add_send_layer(SimulcastLayer::new(rid));
                        }
                        s
                    });
                    api.add_media(kind, Direction::SendOnly, None, None, simulcast)
                }
                Role::Subscribe => api.add_media(kind, Direction::RecvOnly, None, None, None),
            };
            mids.push(mid);
        }
        let (offer, pending) = api.apply().ok_or("the offer has no change")?;
        if self.role == Role::Publish {
            for (&mid, &kind) in mids.iter().zip(kinds) {
                self.sources.push(Source::new(mid, kind, shape));
            }
        } else {
            self.wants_video = kinds.contains(&MediaKind::Video);
        }
        Ok((offer.to_sdp_string(), pending, mids))
    }

    /// Applies the server's answer and sends what str0m has to send.
    pub fn accept(&mut self, pending: SdpPendingOffer, sdp: &str) -> Result<(), String> {
        let answer = SdpAnswer::from_sdp_string(sdp).map_err(|e| format!("answer: {e}"))?;
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| format!("accept answer: {e}"))?;
        self.negotiated();
        Ok(())
    }

    /// Answers the server's offer (a subscriber of a server that offers, as Janus does).
    pub fn answer(&mut self, sdp: &str) -> Result<String, String> {
        let offer = SdpOffer::from_sdp_string(sdp).map_err(|e| format!("offer: {e}"))?;
        let answer = self
            .rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| format!("accept offer: {e}"))?;
        self.wants_video = sdp
            .lines()
            .any(|l| l.starts_with("m=video") && !l.starts_with("m=video 0 "));
        self.negotiated();
        Ok(answer.to_sdp_string())
    }

    /// Learns payload types once negotiation is done and sends what str0m has to send.
    fn negotiated(&mut self) {
        for p in self.rtc.codec_config().params() {
            if let Some(rtx) = p.resend() {
                self.rtx_pts[usize::from(*rtx) & 0x7f] = true;
            }
        }
        let codecs: Vec<(Codec, str0m::media::Pt)> = self
            .rtc
            .codec_config()
            .params()
            .iter()
            .map(|p| (p.spec().codec, p.pt()))
            .collect();
        for s in &self.sources {
            let want = match s.kind {
                MediaKind::Audio => Codec::Opus,
                MediaKind::Video => Codec::Vp8,
            };
            if let Some((_, pt)) = codecs.iter().find(|(c, _)| *c == want) {
                self.pts.insert(s.mid, *pt);
            }
        }
        let counters = Counters::default();
        self.drain(Instant::now(), &counters);
    }

    fn register(&mut self, poll: &Poll, token: Token) -> std::io::Result<()> {
        poll.registry()
            .register(&mut self.socket, token, Interest::READABLE)
    }

    /// Reads every waiting datagram.
    fn read(&mut self, batch: &mut RecvBatch, c: &Counters) {
        loop {
            let n = match batch.recv(&self.socket) {
                Ok(0) => return,
                Ok(n) => n,
                // An ICMP error of an unconnected socket: not fatal.
                Err(_) => continue,
            };
            let now = Instant::now();
            for i in 0..n {
                let Some((source, d)) = batch.datagram(i) else {
                    continue;
                };
                if self.role == Role::Subscribe
                    && self.connected
                    && let Some((pt, seq, ssrc)) = media::rtp_header(d)
                {
                    if self.rtx_pts[usize::from(pt)] {
                        c.rtx_packets.fetch_add(1, Relaxed);
                    } else {
                        let state = self.seqs.entry(ssrc).or_default();
                        let (added, gap) = state.observe(seq);
                        c.rx_packets.fetch_add(1, Relaxed);
                        c.rx_bytes.fetch_add(d.len() as u64, Relaxed);
                        c.expected.fetch_add(added, Relaxed);
                        if gap {
                            c.gaps.fetch_add(1, Relaxed);
                        }
                    }
                    self.sample_count += 1;
                    let decrypt =
                        !self.first_frame || self.sample_count.is_multiple_of(self.sample_every);
                    if !decrypt {
                        continue;
                    }
                }
                let Ok(contents) = d.try_into() else {
                    continue; // not STUN, DTLS, RTP or RTCP
                };
                let input = Input::Receive(
                    now,
                    Receive {
                        proto: Protocol::Udp,
                        source,
                        destination: self.local,
                        contents,
                    },
                );
                // A datagram str0m refuses is the server's problem, not the client's.
                let _ = self.rtc.handle_input(input);
                self.drain(now, c);
            }
        }
    }

    fn on_timeout(&mut self, now: Instant, c: &Counters) {
        if self.deadline <= now {
            if self.rtc.handle_input(Input::Timeout(now)).is_ok() {
                self.drain(now, c);
            } else {
                self.deadline = now + Duration::from_millis(100);
            }
        }
    }

    /// Writes the media that is due (publishers, once connected).
    fn write_media(&mut self, now: Instant, c: &Counters) {
        if !self.connected || self.sources.is_empty() {
            return;
        }
        let mut wrote = 0;
        for s in &mut self.sources {
            let Some(&pt) = self.pts.get(&s.mid) else {
                continue;
            };
            if s.next_at().is_some_and(|t| t > now) {
                continue;
            }
            let mid = s.mid;
            let audio = s.kind == MediaKind::Audio;
            let rtc = &mut self.rtc;
            wrote += s.write_due(now, |rid, seq, time, marker, payload| {
                let mut api = rtc.direct_api();
                let Some(tx) = api.stream_tx_by_mid(mid, rid) else {
                    return;
                };
                let ext = ExtensionValues {
                    audio_level: audio.then_some(-30),
                    voice_activity: audio.then_some(true),
                    ..Default::default()
                };
                // str0m takes the payload by value: one copy per packet, as a browser's
                // packetizer makes.
                tx.write_rtp(
                    RtpWrite::new(pt, seq.into(), time, now, payload.to_vec())
                        .marker(marker)
                        .ext_vals(ext)
                        .nackable(true),
                );
            });
        }
        if wrote > 0 {
            c.tx_packets.fetch_add(wrote as u64, Relaxed);
            // `write_rtp` only queues: a timeout input makes str0m send.
            if self.rtc.handle_input(Input::Timeout(now)).is_ok() {
                self.drain(now, c);
            }
        }
    }

    /// When this pc next needs a turn.
    fn next_due(&self) -> Instant {
        let media = if self.connected {
            self.sources.iter().filter_map(Source::next_at).min()
        } else {
            None
        };
        match media {
            Some(m) => m.min(self.deadline),
            None if self.connected && !self.sources.is_empty() => Instant::now(),
            None => self.deadline,
        }
    }

    /// Drains `poll_output` up to the next timeout.
    fn drain(&mut self, now: Instant, c: &Counters) {
        for _ in 0..MAX_OUTPUTS {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    self.deadline = t;
                    return;
                }
                Ok(Output::Transmit(t)) => {
                    if self.socket.send_to(&t.contents, t.destination).is_err() {
                        c.send_errors.fetch_add(1, Relaxed);
                    }
                }
                Ok(Output::Event(e)) => self.on_event(now, e, c),
                Err(_) => {
                    // str0m gave up on this connection: idle it; the counters show it.
                    self.deadline = now + Duration::from_secs(3600);
                    return;
                }
            }
        }
        self.deadline = now;
    }

    fn on_event(&mut self, now: Instant, e: Event, c: &Counters) {
        match e {
            Event::Connected if !self.connected => {
                self.connected = true;
                c.connected.fetch_add(1, Relaxed);
            }
            Event::RtpPacket(p) => self.on_rtp(now, &p, c),
            Event::KeyframeRequest(k) => {
                if let Some(s) = self.sources.iter_mut().find(|s| s.mid == k.mid) {
                    s.request_keyframe();
                }
            }
            _ => {}
        }
    }

    fn on_rtp(&mut self, now: Instant, p: &RtpPacket, c: &Counters) {
        c.decrypted.fetch_add(1, Relaxed);
        if let Some(sent) = media::sent_micros(&p.payload) {
            c.latency(media::micros(now).saturating_sub(sent));
        }
        let ssrc = *p.header.ssrc;
        if self.sample_every > 1 && !self.suppressed.contains(&ssrc) {
            // Decrypting a sample leaves holes str0m would NACK: the packets did arrive.
            if let Some(rx) = self.rtc.direct_api().stream_rx(&p.header.ssrc) {
                rx.suppress_nack(true);
                self.suppressed.push(ssrc);
            }
        }
        if !self.first_frame {
            let video = p.payload.first().is_some_and(|&b| b & 0x80 != 0)
                && str0m::format::detect_vp8_keyframe(&p.payload);
            if video || !self.wants_video {
                self.first_frame = true;
                self.join_time = Some(now.saturating_duration_since(self.join_from));
                c.first_frames.fetch_add(1, Relaxed);
            }
        }
    }
}

// ----- the loops ---------------------------------------------------------------------------

/// What the main thread tells a loop.
enum ToLoop {
    Add(Box<ClientPc>),
}

/// One loop thread's handle.
struct LoopHandle {
    tx: Sender<ToLoop>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<Vec<Duration>>>,
}

/// A few threads that drive the peer connections, round-robin.
pub struct Loops {
    loops: Vec<LoopHandle>,
    next: usize,
    stop: Arc<AtomicBool>,
    /// Shared counters.
    pub counters: Arc<Counters>,
}

const WAKE: Token = Token(usize::MAX);

impl Loops {
    /// Starts `n` loop threads.
    pub fn start(n: usize) -> Result<Self, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let mut loops = Vec::new();
        for i in 0..n.max(1) {
            let poll = Poll::new().map_err(|e| format!("mio poll: {e}"))?;
            let waker =
                Arc::new(Waker::new(poll.registry(), WAKE).map_err(|e| format!("waker: {e}"))?);
            let (tx, rx) = crossbeam_channel::bounded(256);
            let (stop2, counters2) = (stop.clone(), counters.clone());
            let thread = std::thread::Builder::new()
                .name(format!("load-loop-{i}"))
                .spawn(move || run_loop(poll, rx, &stop2, &counters2))
                .map_err(|e| format!("spawn a loop: {e}"))?;
            loops.push(LoopHandle {
                tx,
                waker,
                thread: Some(thread),
            });
        }
        Ok(Self {
            loops,
            next: 0,
            stop,
            counters,
        })
    }

    /// Hands a negotiated pc to the next loop.
    pub fn add(&mut self, pc: ClientPc) -> Result<(), String> {
        let l = &self.loops[self.next % self.loops.len()];
        self.next += 1;
        let mut msg = ToLoop::Add(Box::new(pc));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match l.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                    msg = m;
                    let _ = l.waker.wake();
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => return Err("a client loop stopped".into()),
            }
        }
        l.waker.wake().map_err(|e| format!("wake a loop: {e}"))
    }

    /// Stops every loop; returns the subscribers' join times.
    pub fn stop(&mut self) -> Vec<Duration> {
        self.stop.store(true, Relaxed);
        let mut joins = Vec::new();
        for l in &mut self.loops {
            let _ = l.waker.wake();
            if let Some(t) = l.thread.take()
                && let Ok(j) = t.join()
            {
                joins.extend(j);
            }
        }
        joins
    }
}

impl Drop for Loops {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One loop: reads sockets, runs timers and the media schedule until told to stop.
/// Returns the join times of its subscribers.
fn run_loop(
    mut poll: Poll,
    rx: Receiver<ToLoop>,
    stop: &AtomicBool,
    c: &Counters,
) -> Vec<Duration> {
    let mut pcs: Vec<ClientPc> = Vec::new();
    let mut events = Events::with_capacity(1024);
    let mut batch = RecvBatch::new();
    let mut next_scan = Instant::now();
    let mut joins = Vec::new();
    while !stop.load(Relaxed) {
        let timeout = next_scan
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(50));
        if let Err(e) = poll.poll(&mut events, Some(timeout))
            && e.kind() != ErrorKind::Interrupted
        {
            break;
        }
        while let Ok(ToLoop::Add(mut pc)) = rx.try_recv() {
            if pc.register(&poll, Token(pcs.len())).is_ok() {
                next_scan = Instant::now();
                pcs.push(*pc);
            }
        }
        for ev in &events {
            if ev.token() == WAKE {
                continue;
            }
            if let Some(pc) = pcs.get_mut(ev.token().0) {
                pc.read(&mut batch, c);
                next_scan = next_scan.min(pc.next_due());
            }
        }
        let now = Instant::now();
        if now >= next_scan {
            let mut next = now + Duration::from_millis(50);
            for pc in &mut pcs {
                pc.on_timeout(now, c);
                pc.write_media(now, c);
                next = next.min(pc.next_due());
            }
            next_scan = next;
        }
    }
    for pc in &pcs {
        if let Some(j) = pc.join_time {
            joins.push(j);
        }
    }
    joins
}
