//! Synthetic media and what subscribers count.
//!
//! Publishers send Opus-shaped audio (one packet every 20 ms, `audio_bytes` of payload)
//! and VP8-shaped video (30 frames/s at a set bitrate, cut into packets of at most
//! `video_payload` bytes, a keyframe — three times a delta frame's size — every 2 s and
//! on every PLI/FIR), optionally as three simulcast layers (`q`, `h`, `f` at 1/10, 1/3
//! and 1 of the bitrate). Every payload carries, right after its codec header, a tag and
//! the send time in microseconds since [`epoch`], so a subscriber that decrypts it knows
//! the end-to-end latency.
//!
//! Subscribers count at the UDP level: an SRTP packet's RTP header is plaintext, so
//! sequence numbers (loss, gaps) and sizes are read without decrypting. Only a sample of
//! packets (and everything until the first frame) goes through str0m for decryption,
//! which gives latency and the join time; so the generator stays cheaper than the
//! server it measures. [`Counters`] are shared atomics, read by the main thread once a
//! second; the per-packet path takes no lock and allocates nothing.
#![allow(clippy::disallowed_methods)] // a tool owns its clock

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use str0m::media::{MediaKind, Mid, Rid};

/// Marks a payload of this tool, right after the codec header.
pub const TAG: &[u8; 4] = b"PRLD";
/// Audio packet interval.
pub const AUDIO_INTERVAL: Duration = Duration::from_millis(20);
/// Video frames per second.
pub const FPS: u32 = 30;
/// A keyframe every this many frames (2 s).
pub const KEYFRAME_EVERY: u64 = 2 * FPS as u64;

/// The clock every thread of the tool measures latency against.
pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Microseconds since [`epoch`].
pub fn micros(at: Instant) -> u64 {
    at.saturating_duration_since(epoch()).as_micros() as u64
}

/// What publishers send.
#[derive(Debug, Clone, Copy, Default)]
pub struct Shape {
    /// Opus payload bytes.
    pub audio_bytes: usize,
    /// Video bitrate of the full layer, kbit/s (payload bytes only).
    pub video_kbps: u32,
    /// Largest video payload per packet.
    pub video_payload: usize,
    /// Three simulcast layers instead of one.
    pub simulcast: bool,
}

/// One layer of a published video (or the single audio stream).
#[derive(Debug)]
struct Layer {
    rid: Option<Rid>,
    /// Payload bytes of a delta frame.
    frame_bytes: usize,
    seq: u64,
}

/// One published m-line and its send schedule.
#[derive(Debug)]
pub struct Source {
    /// Its m-line.
    pub mid: Mid,
    /// Audio or video.
    pub kind: MediaKind,
    layers: Vec<Layer>,
    frames: u64,
    next_at: Option<Instant>,
    force_keyframe: bool,
    payload_max: usize,
    audio_bytes: usize,
    buf: Vec<u8>,
}

/// The rids of the three simulcast layers, lowest first, and their share of the bitrate.
pub const LAYERS: [(&str, f64); 3] = [("q", 0.1), ("h", 1.0 / 3.0), ("f", 1.0)];

impl Source {
    /// A source for m-line `mid`.
    pub fn new(mid: Mid, kind: MediaKind, shape: &Shape) -> Self {
        let full = shape.video_kbps as usize * 1000 / 8 / FPS as usize;
        let layers = match kind {
            MediaKind::Audio => vec![Layer {
                rid: None,
                frame_bytes: shape.audio_bytes,
                seq: 0,
            }],
            MediaKind::Video if shape.simulcast => LAYERS
                .iter()
                .map(|(rid, share)| Layer {
                    rid: Some(Rid::from(*rid)),
                    frame_bytes: ((full as f64 * share) as usize).max(64),
                    seq: 0,
                })
                .collect(),
            MediaKind::Video => vec![Layer {
                rid: None,
                frame_bytes: full.max(64),
                seq: 0,
            }],
        };
        Self {
            mid,
            kind,
            layers,
            frames: 0,
            next_at: None,
            force_keyframe: false,
            payload_max: shape.video_payload.max(64),
            audio_bytes: shape.audio_bytes.max(TAG.len() + 9),
            buf: Vec::with_capacity(2048),
        }
    }

    /// Answers a PLI/FIR with the next frame, as an encoder does.
    pub fn request_keyframe(&mut self) {
        self.force_keyframe = self.kind == MediaKind::Video;
    }

    /// When the next frame is due (`None` before the first call to [`Source::write_due`]).
    pub fn next_at(&self) -> Option<Instant> {
        self.next_at
    }

    fn interval(&self) -> Duration {
        match self.kind {
            MediaKind::Audio => AUDIO_INTERVAL,
            MediaKind::Video => Duration::from_secs(1) / FPS,
        }
    }

    /// Writes the frames due at `now` through `write(rid, seq, rtp_time, marker, payload)`;
    /// returns how many packets were written. At most 5 frames are caught up after a
    /// stall, the rest skipped (as a real encoder would).
    pub fn write_due(
        &mut self,
        now: Instant,
        mut write: impl FnMut(Option<Rid>, u64, u32, bool, &[u8]),
    ) -> usize {
        let interval = self.interval();
        let mut next = *self.next_at.get_or_insert(now);
        let mut written = 0;
        for _ in 0..5 {
            if next > now {
                break;
            }
            written += self.write_frame(now, &mut write);
            next += interval;
        }
        if next <= now {
            next = now + interval;
        }
        self.next_at = Some(next);
        written
    }

    fn write_frame(
        &mut self,
        now: Instant,
        write: &mut impl FnMut(Option<Rid>, u64, u32, bool, &[u8]),
    ) -> usize {
        let sent_us = micros(now);
        let mut written = 0;
        let per_frame = match self.kind {
            MediaKind::Audio => 960u64,
            MediaKind::Video => 90_000 / u64::from(FPS),
        };
        let rtp_time = (0x1234_5678 + self.frames * per_frame) as u32;
        let key = self.kind == MediaKind::Video
            && (self.force_keyframe || self.frames.is_multiple_of(KEYFRAME_EVERY));
        for li in 0..self.layers.len() {
            let (rid, frame_bytes) = (self.layers[li].rid, self.layers[li].frame_bytes);
            match self.kind {
                MediaKind::Audio => {
                    self.buf.clear();
                    self.buf.push(0x78); // Opus TOC: hybrid full-band 20 ms, mono
                    self.buf.extend_from_slice(TAG);
                    self.buf.extend_from_slice(&sent_us.to_be_bytes());
                    self.buf.resize(self.audio_bytes, 0x55);
                    let seq = self.layers[li].seq;
                    write(rid, seq, rtp_time, true, &self.buf);
                    self.layers[li].seq += 1;
                    written += 1;
                }
                MediaKind::Video => {
                    let total = if key { frame_bytes * 3 } else { frame_bytes };
                    let count = total.div_ceil(self.payload_max).max(1);
                    let each = total / count;
                    for i in 0..count {
                        vp8_payload(&mut self.buf, self.frames, key, i == 0, each, sent_us);
                        let seq = self.layers[li].seq;
                        write(rid, seq, rtp_time, i == count - 1, &self.buf);
                        self.layers[li].seq += 1;
                        written += 1;
                    }
                }
            }
        }
        if key {
            self.force_keyframe = false;
        }
        self.frames += 1;
        written
    }
}

/// A VP8 RTP payload (RFC 7741) of about `len` bytes: the payload descriptor with a
/// 15-bit PictureID, on a frame's first packet the VP8 payload header (a keyframe's with
/// start code and size), then the tag, the send time and filler.
fn vp8_payload(buf: &mut Vec<u8>, frame: u64, key: bool, first: bool, len: usize, sent_us: u64) {
    buf.clear();
    buf.push(0x80 | if first { 0x10 } else { 0x00 });
    buf.push(0x80);
    buf.extend_from_slice(&(0x8000 | (frame & 0x7fff) as u16).to_be_bytes());
    if first {
        let size = len as u32;
        buf.push(u8::from(!key) | 0x10 | ((size & 0x07) << 5) as u8);
        buf.push((size >> 3) as u8);
        buf.push((size >> 11) as u8);
        if key {
            buf.extend_from_slice(&[0x9d, 0x01, 0x2a]);
            buf.extend_from_slice(&1280u16.to_le_bytes());
            buf.extend_from_slice(&720u16.to_le_bytes());
        }
    }
    buf.extend_from_slice(TAG);
    buf.extend_from_slice(&sent_us.to_be_bytes());
    let target = len.max(buf.len());
    buf.resize(target, (frame as u8).wrapping_mul(17));
}

/// The send time a payload of this tool carries, if it is one.
pub fn sent_micros(payload: &[u8]) -> Option<u64> {
    let head = &payload[..payload.len().min(32)];
    let at = head.windows(TAG.len()).position(|w| w == TAG)? + TAG.len();
    let bytes: [u8; 8] = payload.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

// ----- counting -------------------------------------------------------------------------

/// Latency histogram buckets: 10 µs up to 1 ms, 100 µs up to 100 ms, 10 ms up to 2 s.
const BUCKETS: usize = 100 + 990 + 191;

fn bucket(us: u64) -> usize {
    if us < 1000 {
        (us / 10) as usize
    } else if us < 100_000 {
        100 + ((us - 1000) / 100) as usize
    } else {
        (1090 + ((us - 100_000) / 10_000) as usize).min(BUCKETS - 1)
    }
}

fn bucket_upper_us(i: usize) -> u64 {
    if i < 100 {
        (i as u64 + 1) * 10
    } else if i < 1090 {
        1000 + (i as u64 - 99) * 100
    } else {
        100_000 + (i as u64 - 1089) * 10_000
    }
}

/// Counters shared by the client loops and the main thread.
pub struct Counters {
    /// RTP packets that arrived at subscribers (primary streams).
    pub rx_packets: AtomicU64,
    /// Their bytes on the wire (SRTP).
    pub rx_bytes: AtomicU64,
    /// Packets the subscribers' sequence numbers say were sent.
    pub expected: AtomicU64,
    /// Jumps in a sequence (a gap of one or more packets).
    pub gaps: AtomicU64,
    /// Retransmissions (RTX payload types).
    pub rtx_packets: AtomicU64,
    /// Packets decrypted by str0m (the sample).
    pub decrypted: AtomicU64,
    /// RTP packets the publishers wrote.
    pub tx_packets: AtomicU64,
    /// UDP send errors of the clients.
    pub send_errors: AtomicU64,
    /// Peer connections connected (ICE + DTLS).
    pub connected: AtomicU64,
    /// Subscribe peer connections that received their first frame.
    pub first_frames: AtomicU64,
    latency: Box<[AtomicU64]>,
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            rx_packets: AtomicU64::new(0),
            rx_bytes: AtomicU64::new(0),
            expected: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            rtx_packets: AtomicU64::new(0),
            decrypted: AtomicU64::new(0),
            tx_packets: AtomicU64::new(0),
            send_errors: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            first_frames: AtomicU64::new(0),
            latency: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

/// A copy of [`Counters`] at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub expected: u64,
    pub gaps: u64,
    pub rtx_packets: u64,
    pub decrypted: u64,
    pub tx_packets: u64,
    pub send_errors: u64,
    pub connected: u64,
    pub first_frames: u64,
    latency: Vec<u64>,
}

impl Counters {
    /// Records one latency sample.
    pub fn latency(&self, us: u64) {
        self.latency[bucket(us)].fetch_add(1, Relaxed);
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            rx_packets: self.rx_packets.load(Relaxed),
            rx_bytes: self.rx_bytes.load(Relaxed),
            expected: self.expected.load(Relaxed),
            gaps: self.gaps.load(Relaxed),
            rtx_packets: self.rtx_packets.load(Relaxed),
            decrypted: self.decrypted.load(Relaxed),
            tx_packets: self.tx_packets.load(Relaxed),
            send_errors: self.send_errors.load(Relaxed),
            connected: self.connected.load(Relaxed),
            first_frames: self.first_frames.load(Relaxed),
            latency: self.latency.iter().map(|a| a.load(Relaxed)).collect(),
        }
    }
}

impl Snapshot {
    /// What happened between `earlier` and this one.
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot {
            rx_packets: self.rx_packets - earlier.rx_packets,
            rx_bytes: self.rx_bytes - earlier.rx_bytes,
            expected: self.expected - earlier.expected,
            gaps: self.gaps - earlier.gaps,
            rtx_packets: self.rtx_packets - earlier.rtx_packets,
            decrypted: self.decrypted - earlier.decrypted,
            tx_packets: self.tx_packets - earlier.tx_packets,
            send_errors: self.send_errors - earlier.send_errors,
            connected: self.connected,
            first_frames: self.first_frames,
            latency: self
                .latency
                .iter()
                .zip(earlier.latency.iter().chain(std::iter::repeat(&0)))
                .map(|(a, b)| a - b)
                .collect(),
        }
    }

    /// Share of expected packets that never arrived (0..1).
    pub fn loss(&self) -> f64 {
        if self.expected == 0 {
            return 0.0;
        }
        self.expected.saturating_sub(self.rx_packets) as f64 / self.expected as f64
    }

    /// A latency percentile in milliseconds (`None` without samples).
    pub fn latency_ms(&self, p: f64) -> Option<f64> {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64 * p).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.latency.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(bucket_upper_us(i) as f64 / 1000.0);
            }
        }
        None
    }
}

/// The sequence state of one received stream (by SSRC), at the UDP level.
#[derive(Debug, Default, Clone, Copy)]
pub struct SeqState {
    last16: u16,
    max: u64,
    started: bool,
}

impl SeqState {
    /// Takes one packet's 16-bit sequence number; returns (newly expected packets,
    /// whether a gap opened). Reordered and repeated packets add nothing expected.
    pub fn observe(&mut self, seq16: u16) -> (u64, bool) {
        if !self.started {
            self.started = true;
            self.last16 = seq16;
            self.max = (1 << 16) + u64::from(seq16);
            return (1, false);
        }
        let delta = seq16.wrapping_sub(self.last16) as i16;
        let ext = (self.max as i64 + i64::from(delta)).max(0) as u64;
        if ext > self.max {
            let added = ext - self.max;
            self.max = ext;
            self.last16 = seq16;
            (added, added > 1)
        } else {
            (0, false)
        }
    }
}

/// The RTP header fields the counting needs, if `d` is an RTP (not RTCP) packet.
pub fn rtp_header(d: &[u8]) -> Option<(u8, u16, u32)> {
    if d.len() < 12 || d[0] >> 6 != 2 {
        return None;
    }
    let pt = d[1] & 0x7f;
    if (64..96).contains(&pt) {
        return None; // RTCP (rtcp-mux: packet types 192..223)
    }
    let seq = u16::from_be_bytes([d[2], d[3]]);
    let ssrc = u32::from_be_bytes([d[8], d[9], d[10], d[11]]);
    Some((pt, seq, ssrc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_wrap_and_gaps_are_counted() {
        let mut s = SeqState::default();
        assert_eq!(s.observe(65534), (1, false));
        assert_eq!(s.observe(65535), (1, false));
        assert_eq!(s.observe(1), (2, true));
        assert_eq!(s.observe(0), (0, false));
        assert_eq!(s.observe(2), (1, false));
    }

    #[test]
    fn payloads_carry_their_send_time() {
        let shape = Shape {
            audio_bytes: 100,
            video_kbps: 1000,
            video_payload: 1100,
            simulcast: true,
        };
        let now = epoch() + Duration::from_millis(5);
        let mut v = Source::new(Mid::from("1"), MediaKind::Video, &shape);
        let mut got = Vec::new();
        v.write_due(now, |rid, seq, _, _, p| got.push((rid, seq, p.to_vec())));
        assert_eq!(
            got.iter().filter(|g| g.0 == Some(Rid::from("f"))).count(),
            12
        );
        assert!(str0m::format::detect_vp8_keyframe(&got[0].2));
        assert!(got.iter().all(|g| sent_micros(&g.2) == Some(5000)));
        let mut a = Source::new(Mid::from("0"), MediaKind::Audio, &shape);
        let mut got = Vec::new();
        a.write_due(now, |_, _, _, _, p| got.push(p.to_vec()));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].len(), 100);
    }

    #[test]
    fn rtp_headers_are_read_and_rtcp_is_not_rtp() {
        let mut p = [0u8; 20];
        p[0] = 0x80;
        p[1] = 0x80 | 111;
        p[2..4].copy_from_slice(&513u16.to_be_bytes());
        p[4..8].copy_from_slice(&7u32.to_be_bytes());
        p[8..12].copy_from_slice(&0xdead_beefu32.to_be_bytes());
        assert_eq!(rtp_header(&p), Some((111, 513, 0xdead_beef)));
        p[1] = 200; // a sender report
        assert_eq!(rtp_header(&p), None);
        assert_eq!(rtp_header(&p[..8]), None);
    }

    #[test]
    fn percentiles_come_from_the_histogram() {
        let c = Counters::default();
        for us in [500, 1500, 2500, 150_000] {
            c.latency(us);
        }
        let s = c.snapshot();
        assert_eq!(s.latency_ms(0.5), Some(1.6));
        assert_eq!(s.latency_ms(1.0), Some(160.0));
    }
}
