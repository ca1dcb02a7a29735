//! The bare forwarding loop: the machine's ceiling for an SFU's hot path.
//!
//! One forwarder thread (pinned where the server runs) does only what any SFU must:
//! `recvmmsg` a batch of SRTP-like packets (RTP header + AES-128-GCM ciphertext + tag),
//! decrypt and authenticate each, then for each of `fanout` subscribers rewrite the
//! header (SSRC, sequence number), encrypt with that subscriber's key and queue it;
//! one `sendmmsg` per 32 datagrams sends the lot. A feeder thread (on the generator's
//! CPUs) keeps the forwarder's socket full and drains the subscribers' sockets, so the
//! kernel's receive path on the far side is paid by the generator, as with real
//! subscribers. The figure: forwarded packets per CPU second of the forwarder thread
//! (from `/proc/thread-self/stat`), the same unit as Prism's "per busy core".
#![allow(clippy::disallowed_methods)] // a tool owns its clock

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use prism::udp::{BATCH, RecvBatch, send_batch};
use ring::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

/// What to run.
pub struct BareConfig<'a> {
    pub fanout: usize,
    /// Bytes of each datagram (header + ciphertext + tag).
    pub payload: usize,
    pub seconds: f64,
    /// CPUs for the forwarder (`taskset -c` syntax).
    pub pin_forwarder: Option<String>,
    pub stop: &'a AtomicBool,
}

/// What it measured.
#[derive(Debug, Clone)]
pub struct BareResult {
    pub fanout: usize,
    pub payload: usize,
    pub seconds: f64,
    /// Datagrams sent to subscribers.
    pub forwarded: u64,
    /// CPU seconds per second of the forwarder thread.
    pub busy_cores: f64,
    /// Forwarded packets per CPU second.
    pub pps_per_core: f64,
}

const HEADER: usize = 12;
const TAG: usize = 16;

fn key(byte: u8) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &[byte; 16]).expect("a 16-byte AES-128 key"))
}

/// The SRTP-GCM style nonce: salt XOR (SSRC, sequence number).
fn nonce(ssrc: u32, seq: u16) -> Nonce {
    let mut n = [0x5au8; 12];
    for (i, b) in ssrc.to_be_bytes().iter().enumerate() {
        n[2 + i] ^= b;
    }
    for (i, b) in seq.to_be_bytes().iter().enumerate() {
        n[10 + i] ^= b;
    }
    Nonce::assume_unique_for_key(n)
}

/// Runs the loop for `seconds` and reports.
pub fn run(cfg: &BareConfig<'_>) -> Result<BareResult, String> {
    let bind = || UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"));
    let forwarder = bind()?;
    let feeder = bind()?;
    let sinks: Vec<UdpSocket> = (0..cfg.fanout).map(|_| bind()).collect::<Result<_, _>>()?;
    for s in [&forwarder, &feeder].into_iter().chain(&sinks) {
        s.set_nonblocking(true).map_err(|e| e.to_string())?;
    }
    let fwd_addr = forwarder.local_addr().map_err(|e| e.to_string())?;
    let dests: Vec<SocketAddr> = sinks
        .iter()
        .map(|s| s.local_addr().map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let done = Arc::new(AtomicBool::new(false));
    let payload = cfg.payload.max(HEADER + TAG + 4);
    let feeder_done = done.clone();
    let feeder_thread = std::thread::Builder::new()
        .name("bare-feeder".into())
        .spawn(move || feed(&feeder, fwd_addr, &sinks, payload, &feeder_done))
        .map_err(|e| e.to_string())?;
    let fanout = cfg.fanout;
    let seconds = cfg.seconds;
    // Pinned from inside the thread (taskset on its own tid).
    let pin = cfg.pin_forwarder.clone();
    let stop_flag = Arc::new(AtomicBool::new(false));
    let stop_inner = stop_flag.clone();
    let fwd_thread = std::thread::Builder::new()
        .name("bare-forwarder".into())
        .spawn(move || {
            forward(
                &forwarder,
                &dests,
                fanout,
                seconds,
                pin.as_deref(),
                &stop_inner,
            )
        })
        .map_err(|e| e.to_string())?;
    while !fwd_thread.is_finished() {
        if cfg.stop.load(Relaxed) {
            stop_flag.store(true, Relaxed);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let result = fwd_thread.join().map_err(|_| "the forwarder panicked")??;
    done.store(true, Relaxed);
    let _ = feeder_thread.join();
    let (forwarded, wall, cpu) = result;
    Ok(BareResult {
        fanout,
        payload,
        seconds: wall,
        forwarded,
        busy_cores: cpu / wall,
        pps_per_core: if cpu > 0.0 {
            forwarded as f64 / cpu
        } else {
            0.0
        },
    })
}

/// CPU seconds of the calling thread.
fn thread_cpu() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let u: f64 = f.get(11)?.parse().ok()?;
    let k: f64 = f.get(12)?.parse().ok()?;
    Some((u + k) / 100.0)
}

/// Keeps the forwarder fed and the sinks drained until `done`.
fn feed(socket: &UdpSocket, to: SocketAddr, sinks: &[UdpSocket], len: usize, done: &AtomicBool) {
    let k = key(1);
    let mut packets: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; len]).collect();
    let mut seq: u16 = 0;
    let mut drain = RecvBatch::new();
    while !done.load(Relaxed) {
        for p in &mut packets {
            seq = seq.wrapping_add(1);
            p[0] = 0x80;
            p[1] = 96;
            p[2..4].copy_from_slice(&seq.to_be_bytes());
            p[8..12].copy_from_slice(&0x1111_2222u32.to_be_bytes());
            let (head, body) = p.split_at_mut(HEADER);
            let body_len = body.len() - TAG;
            let (plain, tag_out) = body.split_at_mut(body_len);
            if let Ok(tag) =
                k.seal_in_place_separate_tag(nonce(0x1111_2222, seq), Aad::from(&*head), plain)
            {
                tag_out.copy_from_slice(tag.as_ref());
            }
        }
        let stats = send_batch(socket, &packets, |p| (p.as_slice(), to));
        if stats.would_block > 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
        for s in sinks {
            while matches!(drain.recv(s), Ok(n) if n > 0) {}
        }
    }
}

/// One outgoing datagram, reused batch after batch.
struct Slot {
    buf: Vec<u8>,
    len: usize,
    dest: SocketAddr,
}

type ForwardResult = Result<(u64, f64, f64), String>;

/// The forwarder: see the module docs. Returns (forwarded, wall seconds, CPU seconds).
fn forward(
    socket: &UdpSocket,
    dests: &[SocketAddr],
    fanout: usize,
    seconds: f64,
    pin: Option<&str>,
    stop: &AtomicBool,
) -> ForwardResult {
    if let Some(cpu) = pin {
        let tid = std::fs::read_link("/proc/thread-self")
            .ok()
            .and_then(|p| p.file_name()?.to_str()?.parse::<u32>().ok())
            .ok_or("no /proc/thread-self")?;
        let out = std::process::Command::new("taskset")
            .args(["-p", "-c", cpu, &tid.to_string()])
            .output()
            .map_err(|e| format!("taskset: {e}"))?;
        if !out.status.success() {
            return Err(format!("taskset: {}", String::from_utf8_lossy(&out.stderr)));
        }
    }
    let inbound = key(1);
    let outbound: Vec<LessSafeKey> = (0..fanout).map(|i| key(2 + (i % 200) as u8)).collect();
    let mut batch = RecvBatch::new();
    let mut work = vec![0u8; 2048];
    let mut out: Vec<Slot> = (0..BATCH * fanout)
        .map(|i| Slot {
            buf: vec![0u8; 2048],
            len: 0,
            dest: dests[i % fanout],
        })
        .collect();
    let mut seq_out = vec![0u16; fanout];
    let mut forwarded = 0u64;
    let mut failures = 0u64;
    // Let the feeder fill the socket before the clock starts.
    std::thread::sleep(Duration::from_millis(200));
    let cpu0 = thread_cpu().ok_or("no /proc/thread-self/stat")?;
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(seconds);
    while Instant::now() < end && !stop.load(Relaxed) {
        let n = match batch.recv(socket) {
            Ok(0) => {
                std::hint::spin_loop();
                continue;
            }
            Ok(n) => n,
            Err(_) => continue,
        };
        let mut count = 0;
        for i in 0..n {
            let Some((_, d)) = batch.datagram(i) else {
                continue;
            };
            if d.len() < HEADER + TAG {
                continue;
            }
            let len = d.len();
            work[..len].copy_from_slice(d);
            let seq = u16::from_be_bytes([work[2], work[3]]);
            let (head, body) = work[..len].split_at_mut(HEADER);
            if inbound
                .open_in_place(nonce(0x1111_2222, seq), Aad::from(&*head), body)
                .is_err()
            {
                failures += 1;
                continue;
            }
            let plain_len = len - HEADER - TAG;
            for (s, key) in outbound.iter().enumerate() {
                let slot = &mut out[count];
                slot.dest = dests[s];
                let o = &mut slot.buf;
                o[..HEADER].copy_from_slice(&work[..HEADER]);
                seq_out[s] = seq_out[s].wrapping_add(1);
                let ssrc = 0x3000_0000u32 + s as u32;
                o[2..4].copy_from_slice(&seq_out[s].to_be_bytes());
                o[8..12].copy_from_slice(&ssrc.to_be_bytes());
                o[HEADER..HEADER + plain_len].copy_from_slice(&work[HEADER..HEADER + plain_len]);
                let (h, rest) = o.split_at_mut(HEADER);
                let (plain, tag_out) = rest.split_at_mut(plain_len);
                let tag = key
                    .seal_in_place_separate_tag(nonce(ssrc, seq_out[s]), Aad::from(&*h), plain)
                    .map_err(|_| "encryption failed")?;
                tag_out[..TAG].copy_from_slice(tag.as_ref());
                slot.len = len;
                count += 1;
            }
        }
        let stats = send_batch(socket, &out[..count], |s| (&s.buf[..s.len], s.dest));
        forwarded += stats.sent as u64;
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = thread_cpu().ok_or("no /proc/thread-self/stat")? - cpu0;
    if failures > 0 && forwarded == 0 {
        return Err(format!("{failures} packets failed to decrypt"));
    }
    Ok((forwarded, wall, cpu))
}
