//! A WebRTC client on real sockets ([`RealPeer`]) and the `prism` binary as a child
//! process to point it at ([`PrismProcess`]), for end-to-end tests.
//!
//! A [`RealPeer`] is one participant the way a browser is one: a joined signaling
//! WebSocket plus two str0m peer connections (protocol-v1 §4, dual-peer model), each a
//! full-ICE (not lite) `Rtc` in RTP mode with its host candidate on its own
//! `std::net::UdpSocket` bound to 127.0.0.1:0:
//!
//! - the publish pc offers `sendonly` m-lines (Opus audio, VP8 video) and sends synthetic
//!   but well-formed media: an Opus packet every 20 ms, VP8 frames at 30 fps with a
//!   correct payload descriptor, a keyframe every 2 s and on every PLI/FIR;
//! - the subscribe pc offers one `recvonly` m-line per subscribed track and records what
//!   arrives per m-line (extended sequence numbers, payload bytes, keyframes).
//!
//! Every payload carries a per-track counter and everything sent is kept, so a test can
//! compare what one peer received with what another sent, byte for byte
//! ([`assert_intact`]). Signaling events that arrive while a peer is driven are kept in
//! [`RealPeer::events`], and the tracks they announce in [`RealPeer::known_tracks`].
//!
//! The driver ([`RealPeer::drive`]) is the sans-IO loop of str0m's docs: read datagrams
//! into `handle_input(Receive)` and drain `poll_output` after each one (transmits go out
//! with `send_to`, the `Timeout` is kept), feed `Input::Timeout` once it passes, write due
//! media, read the WebSocket. One peer is driven by one thread; peers are independent, so
//! a test drives several at once on scoped threads. Every loop is bounded by a deadline
//! and every wait panics, naming what it waited for, after [`PATIENCE`].
#![allow(clippy::disallowed_methods)] // a driver on the real clock: it owns `Instant::now`

use std::collections::{BTreeMap, HashMap};
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};
use tungstenite::Message;

use super::{Http, Stream, TempDir, Ws, connect};

/// How long any wait (a response, a connection, an event) may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(20);
/// Opus packet interval.
pub const AUDIO_INTERVAL: Duration = Duration::from_millis(20);
/// Video frames per second.
pub const VIDEO_FPS: u32 = 30;
/// A VP8 keyframe every this many frames (2 s), besides those asked for by PLI/FIR.
pub const KEYFRAME_EVERY: u64 = 2 * VIDEO_FPS as u64;

/// First RTP sequence number of each published stream: just below the 16-bit wrap, so
/// every run of more than a second crosses it (browsers start at a random value, and a
/// server that mishandles the rollover must fail here, not in production).
const FIRST_SEQ: u64 = 65_500;
/// Longest a signaling read blocks when nothing arrives: the driver's idle wait.
const IDLE_WAIT: Duration = Duration::from_millis(1);
/// Datagrams read from one socket per driver turn (the rest wait for the next turn, so
/// timers and signaling are never starved).
const MAX_DATAGRAMS_PER_TURN: usize = 256;
/// `poll_output` calls after one input before it must have reached `Output::Timeout`.
const MAX_OUTPUTS_PER_DRAIN: usize = 100_000;
/// Media frames one stream may catch up in one turn after a stall.
const MAX_FRAMES_PER_TURN: usize = 5;
/// A recognisable marker in every payload, right after the codec header.
const PAYLOAD_TAG: &[u8; 4] = b"PRSM";

// ----- the server process ----------------------------------------------------------------

/// The `prism` binary running as a child process in dev mode on 127.0.0.1, with a fresh
/// data directory and one media worker. Killed (and reaped) on drop; if the test is
/// panicking (or `E2E_SERVER_LOG` is set), the tail of its log is printed first.
pub struct PrismProcess {
    child: Child,
    /// The HTTP / signaling listener.
    pub addr: SocketAddr,
    log_path: PathBuf,
    /// The data directory and the log; removed on drop (after the child is gone).
    dir: TempDir,
    /// The extra settings it was started with (a restart reuses them).
    extra: Vec<(String, String)>,
}

impl PrismProcess {
    /// Starts `prism` and waits until `/readyz` answers 200.
    pub fn start() -> Self {
        Self::start_with_env(&[])
    }

    /// [`PrismProcess::start`] with extra `PRISM_*` settings (e.g. shorter timers).
    pub fn start_with_env(extra: &[(&str, &str)]) -> Self {
        let dir = TempDir::new("e2e");
        let port = free_tcp_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let log_path = dir.0.join("prism.log");
        let extra: Vec<(String, String)> = extra
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let child = Self::spawn(&dir, addr, &log_path, &extra);
        let mut server = Self {
            child,
            addr,
            log_path,
            dir,
            extra,
        };
        server.wait_ready();
        server
    }

    /// `kill -9`, then a new process on the same data directory and port; returns
    /// once it is ready.
    pub fn kill9_and_restart(&mut self) {
        // It may have exited already (a test that stopped it first).
        let _ = self.child.kill();
        self.child.wait().expect("reap the server");
        self.child = Self::spawn(&self.dir, self.addr, &self.log_path, &self.extra);
        self.wait_ready();
    }

    /// Sends SIGTERM and waits up to `limit` for the process to exit; its status.
    pub fn sigterm_and_wait(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("query the child") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    fn spawn(
        dir: &TempDir,
        addr: SocketAddr,
        log_path: &std::path::Path,
        extra: &[(String, String)],
    ) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .expect("open the server log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_prism"));
        // A stray PRISM_* variable of the developer's shell (an unknown key is refused at
        // start) must not decide whether this test can run.
        for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("PRISM_")) {
            cmd.env_remove(name);
        }
        cmd.env("PRISM_DATA_DIR", dir.0.join("data"))
            .env("PRISM_LISTEN", addr.to_string())
            .env("PRISM_MEDIA__WORKERS", "1")
            .env("PRISM_FRONT_THREADS", "1")
            .env("PRISM_LOG", "info,str0m=warn")
            .envs(extra.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log);
        cmd.spawn().expect("spawn the prism binary")
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("query the child") {
                panic!(
                    "prism exited during start-up ({status}); log:\n{}",
                    self.log()
                );
            }
            // `Http` panics when it cannot connect: probe the port first.
            if TcpStream::connect(self.addr).is_ok() && self.http().get("/readyz", None).0 == 200 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "prism not ready within {PATIENCE:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// An HTTP client for this server.
    pub fn http(&self) -> Http {
        Http {
            addr: self.addr,
            tls: None,
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("query the child").is_none()
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// A joined signaling socket for `user` / `device` in `channel` (all permissions),
    /// with its `rtc.joined` message.
    pub fn join(&self, user: &str, device: &str, channel: &str) -> (Ws, Value) {
        let (status, body) = self.http().post(
            "/v1/dev/session-token",
            None,
            &json!({"user_uid": user, "channels": {channel: ["speak", "video", "screenshare"]}}),
        );
        assert_eq!(status, 200, "dev session token: {body}");
        let token = body["token"].as_str().expect("a token").to_string();
        let (status, body) = self.http().post(
            &format!("/v1/rtc/channels/{channel}/join-ticket"),
            Some(&token),
            &json!({"device_id": device}),
        );
        assert_eq!(status, 201, "join ticket: {body}");
        let ticket = body["ticket"].as_str().expect("a ticket").to_string();
        let request = tungstenite::client::IntoClientRequest::into_client_request(format!(
            "ws://{}/v1/rtc/signaling",
            self.addr
        ))
        .expect("a valid signaling URL");
        let (ws, _) = tungstenite::client::client(request, connect(self.addr, None))
            .unwrap_or_else(|e| panic!("signaling upgrade failed: {e}"));
        let mut ws = Ws { ws, next_id: 0 };
        let joined = ws.request("rtc.join", channel, json!({"ticket": ticket}));
        assert_eq!(joined["type"], "rtc.joined", "{joined}");
        (ws, joined)
    }

    /// A joined [`RealPeer`] named `user` (device `d1`).
    pub fn peer(&self, user: &str, channel: &str) -> RealPeer {
        let (ws, joined) = self.join(user, "d1", channel);
        RealPeer::new(user, channel, ws, joined)
    }
}

impl Drop for PrismProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() || std::env::var_os("E2E_SERVER_LOG").is_some() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(200).collect();
            eprintln!(
                "--- last lines of the prism log (of {}) ---",
                log.lines().count()
            );
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// A TCP port that was free a moment ago (bound to :0, then released).
fn free_tcp_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("bound").port()
}

// ----- what was sent and received ---------------------------------------------------------

/// One published m-line and every payload written on it, in send order.
#[derive(Debug, Clone)]
pub struct SentTrack {
    /// The m-line of the publish pc.
    pub mid: Mid,
    /// Audio or video.
    pub kind: MediaKind,
    /// The id the server assigned (from `rtc.answer.publish`).
    pub track_id: Option<String>,
    /// Payloads in send order (RTP sequence numbers are consecutive from [`FIRST_SEQ`]).
    pub payloads: Vec<Vec<u8>>,
    /// Keyframes written (video).
    pub keyframes: u32,
    /// Keyframes written because the server asked (PLI/FIR).
    pub keyframes_on_request: u32,
    next_seq: u64,
    frames: u64,
    next_at: Option<Instant>,
    force_keyframe: bool,
}

impl SentTrack {
    fn new(mid: Mid, kind: MediaKind) -> Self {
        Self {
            mid,
            kind,
            track_id: None,
            payloads: Vec::new(),
            keyframes: 0,
            keyframes_on_request: 0,
            next_seq: FIRST_SEQ,
            frames: 0,
            next_at: None,
            force_keyframe: false,
        }
    }

    fn interval(&self) -> Duration {
        match self.kind {
            MediaKind::Audio => AUDIO_INTERVAL,
            MediaKind::Video => Duration::from_secs(1) / VIDEO_FPS,
        }
    }

    /// The most packets this track sends in one second (video: four per keyframe).
    pub fn max_packets_per_second(&self) -> usize {
        match self.kind {
            MediaKind::Audio => {
                (Duration::from_secs(1).as_millis() / AUDIO_INTERVAL.as_millis()) as usize
            }
            MediaKind::Video => 4 * VIDEO_FPS as usize,
        }
    }

    /// The RTP timestamp of the current frame (48 kHz audio, 90 kHz video).
    fn rtp_time(&self) -> u32 {
        let per_frame = match self.kind {
            MediaKind::Audio => 960,
            MediaKind::Video => 90_000 / u64::from(VIDEO_FPS),
        };
        // RTP time starts at an arbitrary offset and wraps, as it does in browsers.
        (0x1234_5678 + self.frames * per_frame) as u32
    }

    /// The packets of the next frame: (payload, RTP marker bit). Advances the counters.
    fn next_frame(&mut self) -> Vec<(Vec<u8>, bool)> {
        let packets = match self.kind {
            MediaKind::Audio => vec![(opus_payload(self.payloads.len() as u64), true)],
            MediaKind::Video => {
                let key = self.force_keyframe || self.frames.is_multiple_of(KEYFRAME_EVERY);
                if key {
                    self.keyframes += 1;
                    if self.force_keyframe {
                        self.keyframes_on_request += 1;
                    }
                }
                self.force_keyframe = false;
                let picture_id = (self.frames & 0x7fff) as u16;
                let count = if key { 4 } else { 2 };
                (0..count)
                    .map(|i| {
                        let counter = self.payloads.len() as u64 + i as u64;
                        let p = vp8_payload(counter, picture_id, key, i == 0);
                        (p, i == count - 1)
                    })
                    .collect()
            }
        };
        self.frames += 1;
        packets
    }
}

/// An Opus-shaped packet: TOC byte (config 15: hybrid full-band 20 ms, mono, one frame),
/// then the tag, the counter and filler derived from it.
fn opus_payload(counter: u64) -> Vec<u8> {
    let mut p = vec![0x78];
    p.extend_from_slice(PAYLOAD_TAG);
    p.extend_from_slice(&counter.to_be_bytes());
    p.extend((0..60u8).map(|i| (counter as u8).wrapping_mul(31).wrapping_add(i)));
    p
}

/// A VP8 RTP payload (RFC 7741): the payload descriptor with a 15-bit PictureID, then on
/// a frame's first packet the VP8 payload header (a keyframe's with start code and size),
/// then the tag, the counter and filler derived from it.
fn vp8_payload(counter: u64, picture_id: u16, keyframe: bool, first_packet: bool) -> Vec<u8> {
    let body_len = if keyframe { 1000 } else { 600 };
    let mut p = Vec::with_capacity(body_len + 16);
    // X=1 (extensions follow), S=1 on a frame's first packet, PID=0.
    p.push(0x80 | if first_packet { 0x10 } else { 0x00 });
    // I=1: PictureID present; M=1: 15 bits.
    p.push(0x80);
    p.extend_from_slice(&(0x8000 | picture_id).to_be_bytes());
    if first_packet {
        // Frame tag: P (0 = keyframe), version 0, show_frame 1, first partition size.
        let size = body_len as u32;
        p.push(u8::from(!keyframe) | 0x10 | ((size & 0x07) << 5) as u8);
        p.push((size >> 3) as u8);
        p.push((size >> 11) as u8);
        if keyframe {
            // Start code, then 640 x 360 (14-bit sizes, scale 0), little-endian.
            p.extend_from_slice(&[0x9d, 0x01, 0x2a]);
            p.extend_from_slice(&640u16.to_le_bytes());
            p.extend_from_slice(&360u16.to_le_bytes());
        }
    }
    p.extend_from_slice(PAYLOAD_TAG);
    p.extend_from_slice(&counter.to_be_bytes());
    let filler = body_len.saturating_sub(PAYLOAD_TAG.len() + 8);
    p.extend((0..filler).map(|i| (counter as u8).wrapping_mul(17).wrapping_add(i as u8)));
    p
}

/// What arrived on one m-line of the subscribe pc.
#[derive(Debug, Clone, Default)]
pub struct Received {
    /// Extended sequence numbers in arrival order (retransmissions included).
    pub seqs: Vec<u64>,
    /// Payload per extended sequence number (first copy kept).
    pub payloads: BTreeMap<u64, Vec<u8>>,
    /// Packets that start a VP8 keyframe.
    pub keyframes: u32,
    /// When the first packet arrived.
    pub first_packet_at: Option<Instant>,
    /// When the last packet arrived.
    pub last_packet_at: Option<Instant>,
}

impl Received {
    /// Sequence numbers missing between the lowest and the highest received.
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

    /// Distinct packets received.
    pub fn len(&self) -> usize {
        self.payloads.len()
    }

    /// Nothing received.
    pub fn is_empty(&self) -> bool {
        self.payloads.is_empty()
    }
}

/// Asserts that what arrived is exactly the sent stream from some packet on, up to its
/// end: no gap in the received sequence numbers, every payload byte-for-byte equal to
/// the one sent at that position, the last one sent included. Loss is allowed only
/// before the first received packet, and at most `max_head_loss` packets of it. Returns
/// how many sent packets were not received at the start.
pub fn assert_intact(what: &str, sent: &SentTrack, got: &Received, max_head_loss: usize) -> usize {
    assert!(!got.is_empty(), "{what}: nothing received");
    let missing = got.missing();
    assert!(
        missing.is_empty(),
        "{what}: {} sequence numbers missing after the first packet: {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    let received = got.ordered_payloads();
    let start = sent
        .payloads
        .iter()
        .position(|p| p.as_slice() == received[0])
        .unwrap_or_else(|| {
            panic!(
                "{what}: the first received payload ({} bytes) was never sent",
                received[0].len()
            )
        });
    for (i, p) in received.iter().enumerate() {
        let expected = sent.payloads.get(start + i).map(Vec::as_slice);
        assert!(
            expected == Some(*p),
            "{what}: received packet {i} (sent packet {}) differs from what was sent \
             ({} bytes received, {:?} bytes sent)",
            start + i,
            p.len(),
            expected.map(<[u8]>::len)
        );
    }
    assert_eq!(
        start + received.len(),
        sent.payloads.len(),
        "{what}: the last {} sent packets never arrived",
        sent.payloads.len() - (start + received.len())
    );
    assert!(
        start <= max_head_loss,
        "{what}: the first {start} sent packets never arrived (at most {max_head_loss} may be \
         lost before the subscription is connected)"
    );
    start
}

// ----- one peer connection ---------------------------------------------------------------

/// Which of a participant's two peer connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pc {
    /// Client → server media; the client offers `sendonly` m-lines.
    Publish,
    /// Server → client media; the client offers `recvonly` m-lines.
    Subscribe,
}

/// One str0m peer connection on its own UDP socket.
pub struct ClientPc {
    /// Which one it is.
    pub which: Pc,
    /// The str0m peer: full ICE (controlling, as the offerer), RTP mode, Opus + VP8.
    pub rtc: Rtc,
    socket: UdpSocket,
    /// The socket's address, which is also the host candidate.
    pub local_addr: SocketAddr,
    deadline: Instant,
    /// When `Event::Connected` fired (ICE and DTLS up).
    pub connected_at: Option<Instant>,
    /// ICE state changes in order.
    pub ice_states: Vec<IceConnectionState>,
    /// The last offer sent and the answer applied (SDP text).
    pub last_offer: Option<String>,
    /// See `last_offer`.
    pub last_answer: Option<String>,
    /// What arrived, per m-line (mid text).
    pub received: HashMap<String, Received>,
    /// Keyframe requests (PLI/FIR) received, per m-line, not yet served.
    keyframe_requests: Vec<Mid>,
    /// Datagrams in / out, and `send_to` failures.
    pub datagrams_in: u64,
    /// See `datagrams_in`.
    pub datagrams_out: u64,
    /// See `datagrams_in`.
    pub send_errors: u64,
}

impl ClientPc {
    pub fn new(which: Pc, now: Instant) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP socket on loopback");
        socket
            .set_nonblocking(true)
            .expect("a UDP socket can be non-blocking");
        let local_addr = socket.local_addr().expect("bound");
        let mut rtc = RtcConfig::new()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .enable_vp8(true)
            .build(now);
        let host = Candidate::host(local_addr, "udp").expect("a loopback host candidate");
        rtc.add_local_candidate(host);
        Self {
            which,
            rtc,
            socket,
            local_addr,
            deadline: now,
            connected_at: None,
            ice_states: Vec::new(),
            last_offer: None,
            last_answer: None,
            received: HashMap::new(),
            keyframe_requests: Vec::new(),
            datagrams_in: 0,
            datagrams_out: 0,
            send_errors: 0,
        }
    }

    /// ICE and DTLS are up.
    pub fn is_connected(&self) -> bool {
        self.connected_at.is_some()
    }

    /// The server's host candidates, from the last answer.
    pub fn server_candidates(&self) -> Vec<SocketAddr> {
        let Some(sdp) = &self.last_answer else {
            return Vec::new();
        };
        sdp.lines()
            .filter_map(|l| l.trim().strip_prefix("a=candidate:"))
            .filter_map(|c| {
                // foundation component transport priority address port typ type …
                let f: Vec<&str> = c.split_whitespace().collect();
                let ip = f.get(4)?.parse().ok()?;
                let port = f.get(5)?.parse().ok()?;
                f.get(2)?
                    .eq_ignore_ascii_case("udp")
                    .then_some(SocketAddr::new(ip, port))
            })
            .collect()
    }

    /// The server's ICE username fragment, from the last answer.
    pub fn server_ufrag(&self) -> Option<String> {
        let sdp = self.last_answer.as_ref()?;
        sdp.lines()
            .find_map(|l| l.trim().strip_prefix("a=ice-ufrag:"))
            .map(str::to_string)
    }

    /// A second handle on this pc's socket: datagrams sent through it come from the
    /// pc's address (what it reads is never looked at, so use it for sending only).
    pub fn socket_clone(&self) -> UdpSocket {
        self.socket.try_clone().expect("clone a UDP socket")
    }

    /// Reads the datagrams that are waiting, feeding each one to str0m and draining.
    fn read_datagrams(&mut self, buf: &mut [u8]) {
        for _ in 0..MAX_DATAGRAMS_PER_TURN {
            let (n, source) = match self.socket.recv_from(buf) {
                Ok(r) => r,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => panic!("{:?} pc: UDP receive failed: {e}", self.which),
            };
            self.datagrams_in += 1;
            let now = Instant::now();
            let Ok(contents) = buf[..n].try_into() else {
                continue; // Not STUN, DTLS or RTP: nothing str0m would take.
            };
            let input = Input::Receive(
                now,
                Receive {
                    proto: Protocol::Udp,
                    source,
                    destination: self.local_addr,
                    contents,
                },
            );
            // A datagram str0m refuses is the sender's problem, not this client's.
            let _ = self.rtc.handle_input(input);
            self.drain(now);
        }
    }

    /// Feeds the timeout once it has passed.
    fn handle_timeout(&mut self, now: Instant) {
        if self.deadline <= now {
            self.rtc
                .handle_input(Input::Timeout(now))
                .unwrap_or_else(|e| panic!("{:?} pc: timeout input failed: {e}", self.which));
            self.drain(now);
        }
    }

    /// Drains `poll_output` up to the next timeout (the str0m loop contract: after every
    /// mutation of the `Rtc`).
    fn drain(&mut self, now: Instant) {
        for _ in 0..MAX_OUTPUTS_PER_DRAIN {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    self.deadline = t;
                    return;
                }
                Ok(Output::Transmit(t)) => match self.socket.send_to(&t.contents, t.destination) {
                    Ok(_) => self.datagrams_out += 1,
                    // UDP may drop; str0m retransmits what matters.
                    Err(_) => self.send_errors += 1,
                },
                Ok(Output::Event(e)) => self.on_event(now, e),
                Err(e) => panic!("{:?} pc: str0m failed: {e}", self.which),
            }
        }
        panic!(
            "{:?} pc: poll_output did not reach a timeout in {MAX_OUTPUTS_PER_DRAIN} outputs",
            self.which
        );
    }

    fn on_event(&mut self, now: Instant, event: Event) {
        match event {
            Event::Connected => {
                self.connected_at.get_or_insert(now);
            }
            Event::IceConnectionStateChange(s) => self.ice_states.push(s),
            Event::RtpPacket(p) => self.on_rtp(now, &p),
            Event::KeyframeRequest(k) => self.keyframe_requests.push(k.mid),
            _ => {}
        }
    }

    fn on_rtp(&mut self, now: Instant, p: &RtpPacket) {
        let mid = self
            .rtc
            .direct_api()
            .stream_rx(&p.header.ssrc)
            .map(|s| s.mid());
        let video = mid
            .and_then(|m| self.rtc.media(m))
            .is_some_and(|m| m.kind() == MediaKind::Video);
        let key = mid.map_or_else(|| "?".to_string(), |m| m.to_string());
        let r = self.received.entry(key).or_default();
        let seq = *p.seq_no;
        r.seqs.push(seq);
        r.first_packet_at.get_or_insert(now);
        r.last_packet_at = Some(now);
        if r.payloads.contains_key(&seq) {
            return; // A retransmission of what already arrived.
        }
        if video && str0m::format::detect_vp8_keyframe(&p.payload) {
            r.keyframes += 1;
        }
        r.payloads.insert(seq, p.payload.to_vec());
    }
}

// ----- the participant -------------------------------------------------------------------

/// One subscribe m-line and the track it asked for.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// The m-line of the subscribe pc.
    pub mid: Mid,
    /// The track named in `subscriptions`.
    pub track_id: String,
}

/// One participant on real sockets: see the module docs.
pub struct RealPeer {
    /// For messages.
    pub name: String,
    /// The joined channel.
    pub channel: String,
    /// Own session id (from `rtc.joined`).
    pub session_id: String,
    /// The signaling socket. Its reads time out after [`IDLE_WAIT`] (the driver's idle
    /// wait), so talk through [`RealPeer::request`], not `Ws::request`.
    pub ws: Ws,
    /// The `rtc.joined` message.
    pub joined: Value,
    /// Every server event (`request_id: null`) that arrived after the join, in order.
    pub events: Vec<Value>,
    /// Tracks of others that can be subscribed, by id: from `rtc.joined`, then kept up to
    /// date by `rtc.track.published` / `rtc.track.unpublished`.
    pub known_tracks: BTreeMap<String, Value>,
    /// Set when the server closed the signaling socket (close code, reason).
    pub ws_closed: Option<(u16, String)>,
    /// Client → server media.
    pub publish_pc: ClientPc,
    /// Server → client media.
    pub subscribe_pc: ClientPc,
    /// What this participant publishes.
    pub sent: Vec<SentTrack>,
    /// What this participant subscribed to, in m-line order.
    pub subscriptions: Vec<Subscription>,
    sending_media: bool,
    buf: Vec<u8>,
}

impl RealPeer {
    /// A participant around a joined signaling socket (see [`PrismProcess::peer`]).
    pub fn new(name: &str, channel: &str, mut ws: Ws, joined: Value) -> Self {
        assert_eq!(joined["type"], "rtc.joined", "{joined}");
        // The idle wait of the driver: a read with nothing to read returns after this.
        let timeout = Some(IDLE_WAIT);
        match ws.ws.get_mut() {
            Stream::Plain(s) => s.set_read_timeout(timeout),
            Stream::Tls(s) => s.sock.set_read_timeout(timeout),
        }
        .expect("set the signaling read timeout");
        let mut known_tracks = BTreeMap::new();
        for p in joined["payload"]["participants"]
            .as_array()
            .into_iter()
            .flatten()
        {
            for t in p["tracks"].as_array().into_iter().flatten() {
                if let Some(id) = t["track_id"].as_str() {
                    known_tracks.insert(id.to_string(), t.clone());
                }
            }
        }
        let now = Instant::now();
        Self {
            name: name.to_string(),
            channel: channel.to_string(),
            session_id: joined["payload"]["session_id"]
                .as_str()
                .expect("rtc.joined has a session_id")
                .to_string(),
            ws,
            joined,
            events: Vec::new(),
            known_tracks,
            ws_closed: None,
            publish_pc: ClientPc::new(Pc::Publish, now),
            subscribe_pc: ClientPc::new(Pc::Subscribe, now),
            sent: Vec::new(),
            subscriptions: Vec::new(),
            sending_media: false,
            buf: vec![0; 2048],
        }
    }

    // ----- getters

    /// One of the two peer connections.
    pub fn pc(&self, which: Pc) -> &ClientPc {
        match which {
            Pc::Publish => &self.publish_pc,
            Pc::Subscribe => &self.subscribe_pc,
        }
    }

    /// The ids of the known tracks published by `session_id`.
    pub fn tracks_of(&self, session_id: &str) -> Vec<String> {
        self.known_tracks
            .iter()
            .filter(|(_, t)| t["session_id"] == session_id)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// What this participant sent on the track `track_id`.
    pub fn sent_for(&self, track_id: &str) -> Option<&SentTrack> {
        self.sent
            .iter()
            .find(|s| s.track_id.as_deref() == Some(track_id))
    }

    /// What arrived on the subscribe m-line bound to `track_id`.
    pub fn received_for(&self, track_id: &str) -> Option<&Received> {
        let sub = self.subscriptions.iter().find(|s| s.track_id == track_id)?;
        self.subscribe_pc.received.get(&sub.mid.to_string())
    }

    /// Events of type `ty` received so far.
    pub fn events_of(&self, ty: &str) -> Vec<&Value> {
        self.events.iter().filter(|e| e["type"] == ty).collect()
    }

    // ----- signaling

    /// Sends a request and drives until its response arrives (events meanwhile are
    /// kept); panics after [`PATIENCE`].
    pub fn request(&mut self, ty: &str, payload: Value) -> Value {
        assert!(
            self.ws_closed.is_none(),
            "{}: signaling closed {:?}",
            self.name,
            self.ws_closed
        );
        let id = self.ws.send_request(ty, &self.channel, payload);
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(response) = self.turn(Some(&id)) {
                return response;
            }
            assert!(
                self.ws_closed.is_none(),
                "{}: signaling closed while waiting for the response to {ty}: {:?}",
                self.name,
                self.ws_closed
            );
            assert!(
                Instant::now() < deadline,
                "{}: no response to {ty} within {PATIENCE:?}",
                self.name
            );
        }
    }

    /// Adds sendonly m-lines (Opus audio and/or VP8 video: `microphone`, `camera`), sends
    /// `rtc.offer.publish` listing every current track, applies `rtc.answer.publish` and
    /// drives until the publish pc is connected. Returns `(mid, track_id)` of every
    /// current track, as the answer lists them.
    pub fn publish(&mut self, audio: bool, video: bool) -> Vec<(String, String)> {
        let mut api = self.publish_pc.rtc.sdp_api();
        for (wanted, kind) in [(audio, MediaKind::Audio), (video, MediaKind::Video)] {
            if wanted {
                let mid = api.add_media(kind, Direction::SendOnly, None, None, None);
                self.sent.push(SentTrack::new(mid, kind));
            }
        }
        let (offer, pending) = api.apply().expect("publish() adds at least one m-line");
        let sdp = offer.to_sdp_string();
        let tracks: Vec<Value> = self
            .sent
            .iter()
            .map(|s| {
                let source = match s.kind {
                    MediaKind::Audio => "microphone",
                    MediaKind::Video => "camera",
                };
                json!({"mid": s.mid.to_string(), "source": source})
            })
            .collect();
        let response = self.request(
            "rtc.offer.publish",
            json!({"sdp": sdp.clone(), "tracks": tracks}),
        );
        self.apply_answer(Pc::Publish, "rtc.answer.publish", sdp, pending, &response);
        let mut current = Vec::new();
        for t in response["payload"]["tracks"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let (Some(mid), Some(id)) = (t["mid"].as_str(), t["track_id"].as_str()) else {
                panic!("{}: a track without mid or track_id: {response}", self.name);
            };
            if let Some(s) = self.sent.iter_mut().find(|s| s.mid.to_string() == mid) {
                s.track_id = Some(id.to_string());
            }
            current.push((mid.to_string(), id.to_string()));
        }
        self.drive_until("the publish pc to connect", |p| p.publish_pc.is_connected());
        current
    }

    /// Adds one recvonly m-line per track (of the track's kind when known, else audio),
    /// sends `rtc.offer.subscribe` listing every subscription of this pc, applies
    /// `rtc.answer.subscribe` and, if an m-line of this offer was accepted, drives until
    /// the subscribe pc is connected. Returns the answer's payload (`sdp`, `rejected`).
    pub fn subscribe(&mut self, track_ids: &[String]) -> Value {
        let mut api = self.subscribe_pc.rtc.sdp_api();
        let mut new_mids = Vec::new();
        for id in track_ids {
            let kind = match self.known_tracks.get(id).map(|t| &t["kind"]) {
                Some(k) if k == "video" => MediaKind::Video,
                _ => MediaKind::Audio,
            };
            let mid = api.add_media(kind, Direction::RecvOnly, None, None, None);
            new_mids.push(mid.to_string());
            self.subscriptions.push(Subscription {
                mid,
                track_id: id.clone(),
            });
        }
        let (offer, pending) = api.apply().expect("subscribe() adds at least one m-line");
        let sdp = offer.to_sdp_string();
        let subscriptions: Vec<Value> = self
            .subscriptions
            .iter()
            .map(|s| json!({"mid": s.mid.to_string(), "track_id": s.track_id}))
            .collect();
        let response = self.request(
            "rtc.offer.subscribe",
            json!({"sdp": sdp.clone(), "subscriptions": subscriptions}),
        );
        self.apply_answer(
            Pc::Subscribe,
            "rtc.answer.subscribe",
            sdp,
            pending,
            &response,
        );
        let payload = response["payload"].clone();
        let rejected: Vec<&str> = payload["rejected"]
            .as_array()
            .unwrap_or_else(|| panic!("{}: `rejected` is always present: {response}", self.name))
            .iter()
            .filter_map(|r| r["mid"].as_str())
            .collect();
        if new_mids.iter().any(|m| !rejected.contains(&m.as_str())) {
            self.drive_until("the subscribe pc to connect", |p| {
                p.subscribe_pc.is_connected()
            });
        }
        payload
    }

    fn apply_answer(
        &mut self,
        which: Pc,
        expected: &str,
        offer: String,
        pending: SdpPendingOffer,
        response: &Value,
    ) {
        assert_eq!(
            response["type"], expected,
            "{}: the server refused the {which:?} offer: {response}",
            self.name
        );
        let sdp = response["payload"]["sdp"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: an answer without sdp: {response}", self.name));
        let answer = SdpAnswer::from_sdp_string(sdp)
            .unwrap_or_else(|e| panic!("{}: the {which:?} answer does not parse: {e}", self.name));
        let pc = match which {
            Pc::Publish => &mut self.publish_pc,
            Pc::Subscribe => &mut self.subscribe_pc,
        };
        pc.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .unwrap_or_else(|e| panic!("{}: the {which:?} answer is refused: {e}", self.name));
        pc.last_offer = Some(offer);
        pc.last_answer = Some(sdp.to_string());
        pc.drain(Instant::now());
    }

    /// Drives until `session_id` has published `n` tracks (as far as this participant
    /// heard); returns their ids.
    pub fn wait_for_tracks_of(&mut self, session_id: &str, n: usize) -> Vec<String> {
        let what = format!("{n} tracks of {session_id}");
        self.drive_until(&what, |p| p.tracks_of(session_id).len() >= n);
        self.tracks_of(session_id)
    }

    /// Sends `rtc.leave`; the server acknowledges and closes the socket.
    pub fn leave(&mut self) {
        let response = self.request("rtc.leave", json!({}));
        assert_eq!(response["type"], "rtc.ack", "{}: {response}", self.name);
        self.drive_until("the server to close the socket after rtc.leave", |p| {
            p.ws_closed.is_some()
        });
    }

    // ----- driving

    /// Drives both peer connections and the signaling socket until `until`.
    pub fn drive(&mut self, until: Instant) {
        // Bounded: every turn ends in a read that waits up to IDLE_WAIT when idle, and the
        // loop ends at the deadline.
        while Instant::now() < until {
            self.turn(None);
        }
    }

    /// [`RealPeer::drive`] for `d`.
    pub fn drive_for(&mut self, d: Duration) {
        self.drive(Instant::now() + d);
    }

    /// Drives until `done` holds; panics naming `what` after [`PATIENCE`].
    pub fn drive_until(&mut self, what: &str, mut done: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "{}: waited {PATIENCE:?} for {what}",
                self.name
            );
            self.turn(None);
        }
    }

    /// Sends media on every published track for `duration` while driving: audio every
    /// 20 ms, video at 30 fps. Media is written only once the publish pc is connected
    /// (str0m drops what is written before).
    pub fn send_media(&mut self, duration: Duration) {
        self.sending_media = true;
        self.drive_for(duration);
        self.sending_media = false;
        for s in &mut self.sent {
            s.next_at = None; // A later call starts afresh instead of catching up.
        }
    }

    /// One turn of the loop: datagrams, timers, media, signaling. Returns the response to
    /// `awaiting` if it arrived in this turn.
    fn turn(&mut self, awaiting: Option<&str>) -> Option<Value> {
        let now = Instant::now();
        for pc in [&mut self.publish_pc, &mut self.subscribe_pc] {
            pc.read_datagrams(&mut self.buf);
            pc.handle_timeout(now);
        }
        if self.sending_media {
            self.write_due_media(Instant::now());
        }
        self.read_signaling(awaiting)
    }

    /// Writes the frames that are due, then lets str0m send them.
    fn write_due_media(&mut self, now: Instant) {
        let pc = &mut self.publish_pc;
        if !pc.is_connected() {
            return;
        }
        for mid in std::mem::take(&mut pc.keyframe_requests) {
            if let Some(s) = self.sent.iter_mut().find(|s| s.mid == mid) {
                // A real encoder answers PLI/FIR with its next frame.
                s.force_keyframe = s.kind == MediaKind::Video;
            }
        }
        let mut wrote = false;
        for s in &mut self.sent {
            let codec = match s.kind {
                MediaKind::Audio => Codec::Opus,
                MediaKind::Video => Codec::Vp8,
            };
            let pt = pc
                .rtc
                .codec_config()
                .find(|p| p.spec().codec == codec)
                .map(|p| p.pt())
                .expect("the client offers only Opus and VP8, both negotiated");
            let interval = s.interval();
            let mut next_at = *s.next_at.get_or_insert(now);
            for _ in 0..MAX_FRAMES_PER_TURN {
                if next_at > now {
                    break;
                }
                let time = s.rtp_time();
                let mut api = pc.rtc.direct_api();
                let Some(tx) = api.stream_tx_by_mid(s.mid, None) else {
                    panic!("{}: no send stream for m-line {}", self.name, s.mid);
                };
                for (payload, marker) in s.next_frame() {
                    let ext = ExtensionValues {
                        audio_level: (s.kind == MediaKind::Audio).then_some(-30),
                        voice_activity: (s.kind == MediaKind::Audio).then_some(true),
                        ..Default::default()
                    };
                    tx.write_rtp(
                        RtpWrite::new(pt, s.next_seq.into(), time, now, payload.clone())
                            .marker(marker)
                            .ext_vals(ext)
                            .nackable(true),
                    );
                    s.payloads.push(payload);
                    s.next_seq += 1;
                }
                next_at += interval;
                wrote = true;
            }
            s.next_at = Some(next_at);
        }
        if wrote {
            // `write_rtp` only queues: a timeout input makes str0m send.
            pc.rtc
                .handle_input(Input::Timeout(now))
                .unwrap_or_else(|e| panic!("{}: timeout input failed: {e}", self.name));
            pc.drain(now);
        }
    }

    /// Reads what the signaling socket has (waiting up to [`IDLE_WAIT`] if nothing):
    /// events are kept, the response to `awaiting` is returned.
    fn read_signaling(&mut self, awaiting: Option<&str>) -> Option<Value> {
        if self.ws_closed.is_some() {
            std::thread::sleep(IDLE_WAIT);
            return None;
        }
        loop {
            let text = match self.ws.ws.read() {
                Ok(Message::Text(t)) => t,
                Ok(Message::Close(frame)) => {
                    self.ws_closed = Some(frame.map_or((1005, String::new()), |f| {
                        (u16::from(f.code), f.reason.to_string())
                    }));
                    return None;
                }
                Ok(_) => continue, // ping / pong (answered by tungstenite), binary
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                {
                    return None;
                }
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    self.ws_closed.get_or_insert((1006, "closed".into()));
                    return None;
                }
                Err(e) => panic!("{}: signaling read failed: {e}", self.name),
            };
            let m: Value = serde_json::from_str(text.as_str())
                .unwrap_or_else(|e| panic!("{}: a signaling frame is not JSON: {e}", self.name));
            if m["request_id"].is_null() {
                self.on_event(m);
                continue;
            }
            if awaiting.is_some_and(|id| m["request_id"] == id) {
                return Some(m);
            }
            // A response to a request nobody waits for any more: dropped.
        }
    }

    fn on_event(&mut self, e: Value) {
        match e["type"].as_str() {
            Some("rtc.track.published") => {
                let track = &e["payload"]["track"];
                if let Some(id) = track["track_id"].as_str() {
                    self.known_tracks.insert(id.to_string(), track.clone());
                }
            }
            Some("rtc.track.unpublished") => {
                if let Some(id) = e["payload"]["track_id"].as_str() {
                    self.known_tracks.remove(id);
                }
            }
            _ => {}
        }
        self.events.push(e);
    }
}
