//! `prism-load`: drives a running Prism over the real protocol — WebSocket signaling,
//! ICE, DTLS, SRTP on real UDP — and measures what it costs the server.
//!
//! Clients are str0m peers in a few mio loops of their own (`client.rs`); publishers
//! send synthetic Opus-like and VP8-like media with a send timestamp in every payload;
//! subscribers count packets, bytes, loss and sequence gaps at the UDP level and
//! decrypt a sample for the end-to-end latency and the join time (`media.rs`). The
//! server is measured from outside (`server.rs`): CPU time per process and per thread
//! from `/proc`, resident memory, and the forwarding counters of its `/metrics`. The
//! headline figure is forwarded packets per second **per busy core**: forwarded
//! packets/s divided by the CPU seconds per second the server process used. Beside it,
//! the same run measures a bare recvmmsg → AES-GCM → 10 × (rewrite, encrypt) →
//! sendmmsg loop on the same core (`bare.rs`), so the ratio to the machine's ceiling
//! is honest.
//!
//! Scenarios (`--help`): `fanout`, `audio`, `livestream`, `rooms`, `meeting`, `bare`;
//! ramp mode adds subscribers until loss passes 1 % or the server's core saturates.
//! Output: a table, `--json FILE`, `--png FILE` (forwarded pps and loss against
//! subscribers). Ctrl-C stops cleanly: the report so far is printed and the server the
//! tool started is stopped.
#![forbid(unsafe_code)]
#![allow(clippy::disallowed_methods)] // a tool owns its clock

mod bare;
mod client;
mod compare;
mod janus;
mod media;
mod plot;
mod progress;
mod server;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use prism_tools::{Http, cpu_seconds, rss_bytes, sibling_binary};
use serde_json::{Value, json};
use str0m::media::MediaKind;

use client::{ClientPc, Loops, Role, Signal};
use janus::{JanusProcess, JanusSignal};
use media::{Shape, Snapshot};
use server::{Pinning, Sample, Target, Window};

const HELP: &str = "\
prism-load [SCENARIO] [options]

Scenarios (N = --subscribers):
  fanout      --rooms R rooms, each 1 publisher of a VP8-like video (--video-kbps,
              default 1000) -> N subscribers (default 10). Also runs the bare loop
              and prints the ratio (--no-bare to skip).
  audio       --publishers P (default 10) Opus-like publishers -> N subscribers
              (default 50), each subscribing to every publisher.
  livestream  1 publisher of audio + video (--simulcast for 3 layers) -> N (100).
  rooms       --rooms R (default 10) rooms of 4 participants, each publishing audio
              + video (default 500 kbit/s) and subscribing to the 3 others.
  meeting     N participants (default 6) in one room, each publishing audio + 720p
              simulcast video (default 1500 kbit/s full layer) and subscribing to
              every other one at --max-layer (default f).
  bare        only the bare forwarding loop (the machine's ceiling).

Server:
  --prism PATH         prism binary to start (default: the one next to this tool)
  --workers N          media workers of the started server (default 1: per-core figure)
  --server HOST:PORT   use a running server instead (dev mode, limits raised)
  --pid PID            ...and its pid, for the CPU and memory figures
Pinning (default on >= 2 CPUs: server on CPU 0, generator on the others):
  --pin-server CPUS    the whole server process      --pin-worker CPUS  its media threads
  --pin-load CPUS      this generator                --no-pin           none of it
Media:
  --video-kbps K  --video-payload BYTES (1100)  --audio-bytes BYTES (100)  --simulcast
  --max-layer q|h|f    layer subscribers ask for (default f)
Measurement:
  --seconds S (10)  --warmup S (3)  --loops N client threads (2)
  --decrypt-sample N   subscribers decrypt 1 RTP packet in N once their first frame
                       arrived (default 16; 1 = all; loss is counted at UDP level)
  --ramp STEP          add STEP subscribers per stage (fanout, audio, livestream)
  --max-subscribers N (2000)  --stage-seconds S (5)
  --bare-seconds S (5)  --bare-fanout K (10)  --payload BYTES bare packet size (1200)
Targets:
  --target prism|janus  which SFU (default prism); Janus is started from a minimal
                       config (needs `apt-get install janus`), or --janus-url ws://H:P
  prism-load compare --scenario fanout|audio|rooms|... [options]
                       the same load against Prism, then Janus, under the same
                       pinning; one table with the Prism/Janus ratio per row
Output: --json FILE  --png FILE  --quiet (no progress line; it is drawn only on a terminal)
  --check              exit 1 unless packets were delivered to every subscriber
                       (the CI smoke test; never a speed)";

/// Which SFU the clients drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TargetKind {
    Prism,
    Janus,
}

impl TargetKind {
    fn name(self) -> &'static str {
        match self {
            Self::Prism => "prism",
            Self::Janus => "janus",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Fanout,
    Audio,
    Livestream,
    Rooms,
    Meeting,
    Bare,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Self::Fanout => "fanout",
            Self::Audio => "audio",
            Self::Livestream => "livestream",
            Self::Rooms => "rooms",
            Self::Meeting => "meeting",
            Self::Bare => "bare",
        }
    }
}

#[derive(Clone)]
struct Args {
    scenario: Scenario,
    target: TargetKind,
    /// `prism-load compare`: run the load against Prism, then Janus.
    compare: bool,
    subscribers: Option<usize>,
    rooms: Option<usize>,
    publishers: usize,
    prism: Option<PathBuf>,
    workers: usize,
    server: Option<SocketAddr>,
    /// A running Janus (`--janus-url`), instead of starting one.
    janus: Option<SocketAddr>,
    pid: Option<u32>,
    pin: Pinning,
    no_pin: bool,
    video_kbps: Option<u32>,
    video_payload: usize,
    audio_bytes: usize,
    simulcast: bool,
    max_layer: String,
    seconds: f64,
    warmup: f64,
    loops: usize,
    sample: u64,
    ramp: Option<usize>,
    max_subscribers: usize,
    stage_seconds: f64,
    bare: bool,
    bare_seconds: f64,
    bare_fanout: usize,
    payload: usize,
    json: Option<PathBuf>,
    png: Option<PathBuf>,
    quiet: bool,
    check: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        scenario: Scenario::Fanout,
        target: TargetKind::Prism,
        compare: false,
        subscribers: None,
        rooms: None,
        publishers: 10,
        prism: None,
        workers: 1,
        server: None,
        janus: None,
        pid: None,
        pin: Pinning::default(),
        no_pin: false,
        video_kbps: None,
        video_payload: 1100,
        audio_bytes: 100,
        simulcast: false,
        max_layer: "f".into(),
        seconds: 10.0,
        warmup: 3.0,
        loops: 2,
        sample: 16,
        ramp: None,
        max_subscribers: 2000,
        stage_seconds: 5.0,
        bare: true,
        bare_seconds: 5.0,
        bare_fanout: 10,
        payload: 1200,
        json: None,
        png: None,
        quiet: false,
        check: false,
    };
    let mut it = std::env::args().skip(1);
    let mut first = true;
    while let Some(flag) = it.next() {
        if first && flag == "compare" {
            a.compare = true;
            continue;
        }
        if first && !flag.starts_with('-') {
            a.scenario = match flag.as_str() {
                "fanout" => Scenario::Fanout,
                "audio" => Scenario::Audio,
                "livestream" => Scenario::Livestream,
                "rooms" => Scenario::Rooms,
                "meeting" => Scenario::Meeting,
                "bare" => Scenario::Bare,
                other => return Err(format!("unknown scenario {other} (see --help)")),
            };
            first = false;
            continue;
        }
        first = false;
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        macro_rules! num {
            () => {
                val()?.parse().map_err(|e| format!("{flag}: {e}"))?
            };
        }
        match flag.as_str() {
            "--scenario" => {
                a.scenario = match val()?.as_str() {
                    "fanout" => Scenario::Fanout,
                    "audio" => Scenario::Audio,
                    "livestream" => Scenario::Livestream,
                    "rooms" => Scenario::Rooms,
                    "meeting" => Scenario::Meeting,
                    other => return Err(format!("unknown scenario {other} (see --help)")),
                }
            }
            "--target" => {
                a.target = match val()?.as_str() {
                    "prism" => TargetKind::Prism,
                    "janus" => TargetKind::Janus,
                    other => return Err(format!("unknown target {other}: prism or janus")),
                }
            }
            "--janus-url" => {
                let v = val()?;
                let hostport = v.strip_prefix("ws://").unwrap_or(&v).trim_end_matches('/');
                a.janus = Some(
                    hostport
                        .parse()
                        .map_err(|e| format!("--janus-url {v}: {e}"))?,
                );
                a.target = TargetKind::Janus;
            }
            "--subscribers" => a.subscribers = Some(num!()),
            "--rooms" => a.rooms = Some(num!()),
            "--publishers" => a.publishers = num!(),
            "--prism" => a.prism = Some(PathBuf::from(val()?)),
            "--workers" => a.workers = num!(),
            "--server" => a.server = Some(num!()),
            "--pid" => a.pid = Some(num!()),
            "--pin-server" => a.pin.server = Some(val()?),
            "--pin-worker" => a.pin.worker = Some(val()?),
            "--pin-load" => a.pin.load = Some(val()?),
            "--no-pin" => a.no_pin = true,
            "--video-kbps" => a.video_kbps = Some(num!()),
            "--video-payload" => a.video_payload = num!(),
            "--audio-bytes" => a.audio_bytes = num!(),
            "--simulcast" => a.simulcast = true,
            "--max-layer" => a.max_layer = val()?,
            "--seconds" => a.seconds = num!(),
            "--warmup" => a.warmup = num!(),
            "--loops" => a.loops = num!(),
            "--decrypt-sample" => a.sample = num!(),
            "--ramp" => a.ramp = Some(num!()),
            "--max-subscribers" => a.max_subscribers = num!(),
            "--stage-seconds" => a.stage_seconds = num!(),
            "--no-bare" => a.bare = false,
            "--bare-seconds" => a.bare_seconds = num!(),
            "--bare-fanout" => a.bare_fanout = num!(),
            "--payload" => a.payload = num!(),
            "--json" => a.json = Some(PathBuf::from(val()?)),
            "--png" => a.png = Some(PathBuf::from(val()?)),
            "--quiet" => a.quiet = true,
            "--check" => a.check = true,
            "-h" | "--help" => {
                println!("{HELP}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other} (see --help)")),
        }
    }
    if !["q", "h", "f"].contains(&a.max_layer.as_str()) {
        return Err("--max-layer is one of q, h, f".into());
    }
    if a.seconds < 1.0 || a.warmup < 0.0 || a.stage_seconds < 1.0 || a.bare_seconds < 0.5 {
        return Err("--seconds and --stage-seconds must be >= 1, --warmup >= 0".into());
    }
    if !(64..=1400).contains(&a.video_payload) || !(16..=1200).contains(&a.audio_bytes) {
        return Err("--video-payload must be in 64..=1400, --audio-bytes in 16..=1200".into());
    }
    if !(32..=1400).contains(&a.payload) || !(1..=1000).contains(&a.bare_fanout) {
        return Err("--payload must be in 32..=1400, --bare-fanout in 1..=1000".into());
    }
    if a.loops == 0 || a.loops > 64 || a.sample == 0 || a.workers == 0 {
        return Err("--loops (1..=64), --decrypt-sample and --workers must be positive".into());
    }
    if a.ramp == Some(0) {
        return Err("--ramp takes a positive step".into());
    }
    if a.ramp.is_some() && matches!(a.scenario, Scenario::Rooms | Scenario::Meeting) {
        return Err("--ramp works with fanout, audio and livestream".into());
    }
    if a.server.is_some() && a.prism.is_some() {
        return Err("--server and --prism exclude each other".into());
    }
    if !a.no_pin && a.pin.server.is_none() && a.pin.worker.is_none() && a.pin.load.is_none() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        if cpus >= 2 {
            if a.server.is_none() {
                a.pin.server = Some("0".into());
            }
            a.pin.load = Some(format!("1-{}", cpus - 1));
        }
    }
    if a.no_pin {
        a.pin = Pinning::default();
    }
    Ok(a)
}

fn main() {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second Ctrl-C ends the process at once.
        let _ = signal_hook::flag::register_conditional_shutdown(sig, 130, stop.clone());
        let _ = signal_hook::flag::register(sig, stop.clone());
    }
    media::epoch();
    match parse_args().and_then(|a| run(&a, &stop)) {
        Ok(()) => {}
        Err(e) => {
            progress::clear();
            eprintln!("prism-load: {e}");
            std::process::exit(1);
        }
    }
}

/// One measured window: the server's side and the clients'.
struct Row {
    subscribers: usize,
    subscribe_pcs: usize,
    server: Window,
    clients: Snapshot,
    generator_cores: Option<f64>,
    rss: Option<u64>,
}

impl Row {
    fn json(&self) -> Value {
        json!({
            "subscribers": self.subscribers,
            "subscribe_pcs": self.subscribe_pcs,
            "seconds": self.server.seconds,
            "forwarded_pps": self.server.forwarded_pps,
            "forwarded_bits_per_s": self.server.forwarded_bps,
            "server_busy_cores": self.server.busy_cores,
            "forwarded_pps_per_busy_core": self.server.pps_per_core(),
            "server_threads_busy_cores": self.server.threads.iter()
                .map(|(n, c)| json!({"thread": n, "busy_cores": c})).collect::<Vec<_>>(),
            "server_dropped_packets": self.server.dropped,
            "server_nacks": self.server.nacks,
            "received_pps": self.clients.rx_packets as f64 / self.server.seconds,
            "loss": self.clients.loss(),
            "sequence_gaps": self.clients.gaps,
            "retransmissions": self.clients.rtx_packets,
            "latency_p50_ms": self.clients.latency_ms(0.5),
            "latency_p95_ms": self.clients.latency_ms(0.95),
            "latency_samples": self.clients.decrypted,
            "generator_busy_cores": self.generator_cores,
            "server_rss_bytes": self.rss,
        })
    }
}

/// Everything a run produced.
struct Report {
    scenario: Scenario,
    rows: Vec<Row>,
    join_ms: Vec<f64>,
    rss_baseline: Option<u64>,
    publishers: usize,
    bare: Option<bare::BareResult>,
    setup_seconds: f64,
    interrupted: bool,
}

impl Report {
    fn new(scenario: Scenario) -> Self {
        Self {
            scenario,
            rows: Vec::new(),
            join_ms: Vec::new(),
            rss_baseline: None,
            publishers: 0,
            bare: None,
            setup_seconds: 0.0,
            interrupted: false,
        }
    }
}

fn run(a: &Args, stop: &AtomicBool) -> Result<(), String> {
    if let Some(cpu) = &a.pin.load {
        server::pin_self(cpu)?;
    }
    if a.compare {
        return compare::run(a, stop);
    }
    let mut report = Report::new(a.scenario);
    if a.scenario != Scenario::Bare {
        run_target(a, stop, &mut report)?;
    }
    let want_bare = a.scenario == Scenario::Bare || (a.scenario == Scenario::Fanout && a.bare);
    if want_bare && !stop.load(Relaxed) {
        if !a.quiet {
            eprintln!("bare loop: {} s, fan-out {}", a.bare_seconds, a.bare_fanout);
        }
        let cpu = a.pin.server.clone().or(a.pin.worker.clone());
        report.bare = Some(bare::run(&bare::BareConfig {
            fanout: a.bare_fanout,
            payload: a.payload,
            seconds: a.bare_seconds,
            pin_forwarder: cpu,
            stop,
        })?);
    }
    report.interrupted = stop.load(Relaxed);
    print_report(a, &report);
    if let Some(path) = &a.json {
        std::fs::write(path, report_json(a, &report).to_string() + "\n")
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if a.check {
        check(&report)?;
    }
    if let Some(path) = &a.png {
        let points: Vec<plot::Point> = report
            .rows
            .iter()
            .map(|r| plot::Point {
                x: r.subscribers as f64,
                pps: r.server.forwarded_pps,
                loss_percent: r.clients.loss() * 100.0,
            })
            .collect();
        let title = format!("prism-load {}: forwarded pkt/s and loss", a.scenario.name());
        plot::ramp_chart(path, &title, &points)?;
    }
    Ok(())
}

/// `--check`: packets reached every subscriber (and the bare loop forwarded some).
fn check(r: &Report) -> Result<(), String> {
    if r.interrupted {
        return Err("check: interrupted".into());
    }
    if let Some(row) = r.rows.last() {
        if row.clients.rx_packets == 0 || row.server.forwarded_pps <= 0.0 {
            return Err("check: no packet was forwarded to the subscribers".into());
        }
        if row.clients.first_frames < row.subscribe_pcs as u64 {
            return Err(format!(
                "check: {} of {} subscribe pcs received a first frame",
                row.clients.first_frames, row.subscribe_pcs
            ));
        }
    } else if r.scenario != Scenario::Bare {
        return Err("check: nothing was measured".into());
    }
    if let Some(b) = &r.bare
        && b.forwarded == 0
    {
        return Err("check: the bare loop forwarded nothing".into());
    }
    println!("check: packets delivered");
    Ok(())
}

/// Who publishes and who subscribes, room by room.
struct Plan {
    rooms: usize,
    /// Publishers per room and what each publishes.
    publishers: usize,
    publish_kinds: Vec<MediaKind>,
    /// Listen-only subscribers per room (fanout, audio, livestream).
    subscribers: usize,
    /// Every publisher also subscribes to the others (rooms, meeting).
    mesh: bool,
    shape: Shape,
}

fn plan(a: &Args) -> Plan {
    let shape = |kbps: u32, simulcast: bool| Shape {
        audio_bytes: a.audio_bytes,
        video_kbps: a.video_kbps.unwrap_or(kbps),
        video_payload: a.video_payload,
        simulcast,
    };
    let ramp_start = a.ramp.map(|_| 0);
    match a.scenario {
        Scenario::Fanout => Plan {
            rooms: a.rooms.unwrap_or(1),
            publishers: 1,
            publish_kinds: vec![MediaKind::Video],
            subscribers: ramp_start.or(a.subscribers).unwrap_or(10),
            mesh: false,
            shape: shape(1000, a.simulcast),
        },
        Scenario::Audio => Plan {
            rooms: a.rooms.unwrap_or(1),
            publishers: a.publishers.max(1),
            publish_kinds: vec![MediaKind::Audio],
            subscribers: ramp_start.or(a.subscribers).unwrap_or(50),
            mesh: false,
            shape: shape(1000, false),
        },
        Scenario::Livestream => Plan {
            rooms: a.rooms.unwrap_or(1),
            publishers: 1,
            publish_kinds: vec![MediaKind::Audio, MediaKind::Video],
            subscribers: ramp_start.or(a.subscribers).unwrap_or(100),
            mesh: false,
            shape: shape(1500, a.simulcast),
        },
        Scenario::Rooms => Plan {
            rooms: a.rooms.unwrap_or(10),
            publishers: a.subscribers.unwrap_or(4).max(2),
            publish_kinds: vec![MediaKind::Audio, MediaKind::Video],
            subscribers: 0,
            mesh: true,
            shape: shape(500, a.simulcast),
        },
        Scenario::Meeting => Plan {
            rooms: 1,
            publishers: a.subscribers.unwrap_or(6).max(2),
            publish_kinds: vec![MediaKind::Audio, MediaKind::Video],
            subscribers: 0,
            mesh: true,
            shape: shape(1500, true),
        },
        Scenario::Bare => unreachable!("the bare scenario starts no server"),
    }
}

/// A published track: its id and kind.
#[derive(Clone)]
struct Track {
    id: String,
    kind: MediaKind,
}

/// A joined participant's signaling, on either target.
enum AnySignal {
    Prism(Signal),
    Janus(JanusSignal),
}

impl AnySignal {
    fn opened_at(&self) -> Instant {
        match self {
            Self::Prism(s) => s.opened_at,
            Self::Janus(s) => s.opened_at,
        }
    }

    fn pump(&mut self) -> bool {
        match self {
            Self::Prism(s) => s.pump(),
            Self::Janus(s) => s.pump(),
        }
    }

    fn leave(&mut self) {
        match self {
            Self::Prism(s) => s.leave(),
            Self::Janus(s) => s.leave(),
        }
    }
}

/// What the clients talk to.
enum Backend {
    /// Prism's protocol-v1; dev session tokens and join tickets over HTTP.
    Prism { http: Http },
    /// Janus VideoRoom; one controller session creates the rooms.
    Janus {
        control: Box<JanusSignal>,
        handle: u64,
        rooms: Vec<usize>,
    },
}

/// The Janus room number of room `r`.
fn janus_room(r: usize) -> u64 {
    1000 + r as u64
}

/// The clients of a run.
struct Swarm {
    addr: SocketAddr,
    backend: Backend,
    scenario: Scenario,
    loops: Loops,
    /// Every joined socket (taken out while one is in use).
    signals: Vec<Option<AnySignal>>,
    next_user: usize,
    sample: u64,
    max_layer: String,
    subscribe_pcs: usize,
    subscribers: usize,
    /// What the clients' UDP sockets bind to.
    media_ip: IpAddr,
}

impl Swarm {
    /// A joined participant of room `room`.
    fn join(&mut self, room: usize) -> Result<AnySignal, String> {
        let channel = format!("{}-{room}", self.scenario.name());
        match &mut self.backend {
            Backend::Prism { http } => {
                self.next_user += 1;
                let user = format!("load{}", self.next_user);
                Ok(AnySignal::Prism(prism_join(
                    http, self.addr, &channel, &user,
                )?))
            }
            Backend::Janus {
                control,
                handle,
                rooms,
            } => {
                if !rooms.contains(&room) {
                    control.message(
                        *handle,
                        json!({"request": "create", "room": janus_room(room),
                               "description": channel, "publishers": 1000,
                               "audiocodec": "opus", "videocodec": "vp8",
                               "bitrate": 0, "fir_freq": 0, "notify_joining": false}),
                        None,
                    )?;
                    rooms.push(room);
                }
                Ok(AnySignal::Janus(JanusSignal::connect(self.addr)?))
            }
        }
    }

    /// Publishes `kinds` on a new publish pc of `signal`; returns the tracks.
    fn publish(
        &mut self,
        signal: &mut AnySignal,
        room: usize,
        kinds: &[MediaKind],
        shape: &Shape,
    ) -> Result<Vec<Track>, String> {
        let mut pc = ClientPc::new(Role::Publish, signal.opened_at(), 1, self.media_ip)?;
        let (sdp, pending, mids) = pc.offer(kinds, shape)?;
        let tracks = match signal {
            AnySignal::Prism(signal) => {
                let tracks: Vec<Value> = mids
                    .iter()
                    .zip(kinds)
                    .map(|(mid, kind)| {
                        let source = match kind {
                            MediaKind::Audio => "microphone",
                            MediaKind::Video => "camera",
                        };
                        json!({"mid": mid.to_string(), "source": source})
                    })
                    .collect();
                let r =
                    signal.request("rtc.offer.publish", json!({"sdp": sdp, "tracks": tracks}))?;
                let answer = r["payload"]["sdp"].as_str().ok_or("answer without sdp")?;
                pc.accept(pending, answer)?;
                let mut out = Vec::new();
                for (mid, kind) in mids.iter().zip(kinds) {
                    let id = r["payload"]["tracks"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|t| t["mid"] == mid.to_string())
                        .and_then(|t| t["track_id"].as_str())
                        .ok_or(format!("the answer has no track for m-line {mid}"))?;
                    out.push(Track {
                        id: id.to_string(),
                        kind: *kind,
                    });
                }
                out
            }
            AnySignal::Janus(signal) => {
                let handle = signal.attach()?;
                let r = signal.message(
                    handle,
                    json!({"request": "join", "ptype": "publisher", "room": janus_room(room)}),
                    None,
                )?;
                let feed = r["plugindata"]["data"]["id"]
                    .as_u64()
                    .ok_or("janus join: no publisher id")?;
                let r = signal.message(
                    handle,
                    json!({"request": "publish"}),
                    Some(json!({"type": "offer", "sdp": sdp})),
                )?;
                let answer = r["jsep"]["sdp"]
                    .as_str()
                    .ok_or("janus publish: no answer")?;
                pc.accept(pending, answer)?;
                signal.trickle_done(handle)?;
                kinds
                    .iter()
                    .map(|k| Track {
                        id: feed.to_string(),
                        kind: *k,
                    })
                    .collect()
            }
        };
        self.loops.add(pc)?;
        Ok(tracks)
    }

    /// Subscribes `signal` to `tracks` on a new subscribe pc.
    fn subscribe(
        &mut self,
        signal: &mut AnySignal,
        room: usize,
        tracks: &[Track],
        join_from: Instant,
    ) -> Result<(), String> {
        let mut pc = ClientPc::new(Role::Subscribe, join_from, self.sample, self.media_ip)?;
        match signal {
            AnySignal::Prism(signal) => {
                let kinds: Vec<MediaKind> = tracks.iter().map(|t| t.kind).collect();
                let (sdp, pending, mids) = pc.offer(&kinds, &Shape::default())?;
                let subs: Vec<Value> = mids
                    .iter()
                    .zip(tracks)
                    .map(|(mid, t)| {
                        let mut s = json!({"mid": mid.to_string(), "track_id": t.id});
                        if t.kind == MediaKind::Video {
                            s["max_layer"] = json!(self.max_layer);
                        }
                        s
                    })
                    .collect();
                let r = signal.request(
                    "rtc.offer.subscribe",
                    json!({"sdp": sdp, "subscriptions": subs}),
                )?;
                if let Some(rej) = r["payload"]["rejected"].as_array()
                    && !rej.is_empty()
                {
                    return Err(format!(
                        "subscriptions rejected: {}",
                        Value::Array(rej.clone())
                    ));
                }
                let answer = r["payload"]["sdp"].as_str().ok_or("answer without sdp")?;
                pc.accept(pending, answer)?;
            }
            AnySignal::Janus(signal) => {
                let mut feeds: Vec<u64> = tracks.iter().filter_map(|t| t.id.parse().ok()).collect();
                feeds.dedup();
                let substream = match self.max_layer.as_str() {
                    "q" => 0,
                    "h" => 1,
                    _ => 2,
                };
                let streams: Vec<Value> = feeds
                    .iter()
                    .map(|f| json!({"feed": f, "substream": substream}))
                    .collect();
                let handle = signal.attach()?;
                let r = signal.message(
                    handle,
                    json!({"request": "join", "ptype": "subscriber", "room": janus_room(room),
                           "streams": streams}),
                    None,
                )?;
                let offer = r["jsep"]["sdp"]
                    .as_str()
                    .ok_or("janus subscribe: no offer")?;
                let answer = pc.answer(offer)?;
                signal.message(
                    handle,
                    json!({"request": "start"}),
                    Some(json!({"type": "answer", "sdp": answer})),
                )?;
                signal.trickle_done(handle)?;
            }
        }
        self.loops.add(pc)?;
        self.subscribe_pcs += 1;
        Ok(())
    }

    fn pump(&mut self) -> usize {
        let control_closed = match &mut self.backend {
            Backend::Janus { control, .. } => usize::from(!control.pump()),
            Backend::Prism { .. } => 0,
        };
        control_closed
            + self
                .signals
                .iter_mut()
                .flatten()
                .map(|s| usize::from(!s.pump()))
                .sum::<usize>()
    }
}

/// A dev session token for `user`, a join ticket, and a joined signaling socket.
fn prism_join(
    http: &mut Http,
    addr: SocketAddr,
    channel: &str,
    user: &str,
) -> Result<Signal, String> {
    let (status, body) = http
        .request(
            "POST",
            "/v1/dev/session-token",
            None,
            Some(&json!({"user_uid": user,
                         "channels": {"*": ["speak", "video", "screenshare"]}})),
        )
        .map_err(|e| format!("dev session token: {e}"))?;
    let token = body["token"]
        .as_str()
        .filter(|_| status == 200)
        .ok_or(format!(
            "dev session token refused ({status}): {body} (is the server in dev mode?)"
        ))?
        .to_string();
    let (status, body) = http
        .request(
            "POST",
            &format!("/v1/rtc/channels/{channel}/join-ticket"),
            Some(&token),
            Some(&json!({"device_id": "d1"})),
        )
        .map_err(|e| format!("join ticket: {e}"))?;
    let ticket = body["ticket"]
        .as_str()
        .filter(|_| status == 201)
        .ok_or(format!("join ticket refused ({status}): {body}"))?;
    Signal::join(addr, channel, ticket)
}

fn run_target(a: &Args, stop: &AtomicBool, report: &mut Report) -> Result<(), String> {
    let p = plan(a);
    let mut janus_process = None;
    let mut media_ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    if a.janus.is_some() {
        media_ip = janus::local_ip()?;
    }
    let target = match (a.target, a.server) {
        (TargetKind::Janus, _) if a.janus.is_some() => {
            Target::existing(a.janus.unwrap_or(([127, 0, 0, 1], 8188).into()), a.pid)
                .without_metrics()
        }
        (TargetKind::Janus, _) => {
            let j = JanusProcess::start()?;
            let pid = j.pid();
            if let Some(cpu) = &a.pin.server {
                server::taskset_all(pid, cpu)?;
            }
            if !a.quiet {
                eprintln!(
                    "started janus (1 event loop, CPUs {}; generator CPUs {})",
                    a.pin.server.as_deref().unwrap_or("any"),
                    a.pin.load.as_deref().unwrap_or("any")
                );
            }
            media_ip = j.media_ip;
            let t = Target::existing(j.addr, Some(pid)).without_metrics();
            janus_process = Some(j);
            t
        }
        (TargetKind::Prism, Some(addr)) => Target::existing(addr, a.pid),
        (TargetKind::Prism, None) => {
            let bin = a.prism.clone().unwrap_or_else(|| sibling_binary("prism"));
            if !a.quiet {
                eprintln!(
                    "starting {} ({} media worker{}, server CPUs {}, generator CPUs {})",
                    bin.display(),
                    a.workers,
                    if a.workers == 1 { "" } else { "s" },
                    a.pin.server.as_deref().unwrap_or("any"),
                    a.pin.load.as_deref().unwrap_or("any"),
                );
            }
            Target::spawn(&bin, a.workers, &a.pin)?
        }
    };
    let backend = match a.target {
        TargetKind::Prism => Backend::Prism {
            http: Http::new(target.addr),
        },
        TargetKind::Janus => {
            let mut control = Box::new(JanusSignal::connect(target.addr)?);
            let handle = control.attach()?;
            Backend::Janus {
                control,
                handle,
                rooms: Vec::new(),
            }
        }
    };
    let mut swarm = Swarm {
        addr: target.addr,
        backend,
        scenario: a.scenario,
        loops: Loops::start(a.loops)?,
        signals: Vec::new(),
        next_user: 0,
        sample: a.sample,
        max_layer: a.max_layer.clone(),
        subscribe_pcs: 0,
        subscribers: 0,
        media_ip,
    };
    let started = Instant::now();
    // Publishers first: their media flows before anyone subscribes, as in a live call.
    let mut room_tracks: Vec<Vec<(usize, Vec<Track>)>> = Vec::new();
    for r in 0..p.rooms {
        let mut tracks = Vec::new();
        for _ in 0..p.publishers {
            if stop.load(Relaxed) {
                return Ok(());
            }
            let mut s = swarm.join(r)?;
            let t = swarm.publish(&mut s, r, &p.publish_kinds, &p.shape)?;
            tracks.push((swarm.signals.len(), t));
            swarm.signals.push(Some(s));
            report.publishers += 1;
        }
        room_tracks.push(tracks);
    }
    wait_for(
        stop,
        a.quiet,
        "publishers connected",
        Duration::from_secs(20),
        || swarm.loops.counters.connected.load(Relaxed) as usize >= report.publishers,
    )?;
    std::thread::sleep(Duration::from_millis(500));
    report.rss_baseline = target.sample().rss;
    if p.mesh {
        for (room, tracks) in room_tracks.iter().enumerate() {
            for (i, (si, _)) in tracks.iter().enumerate() {
                let others: Vec<Track> = tracks
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .flat_map(|(_, (_, t))| t.clone())
                    .collect();
                let mut s = swarm.signals[*si].take().ok_or("internal: signal taken")?;
                let res = swarm.subscribe(&mut s, room, &others, Instant::now());
                swarm.signals[*si] = Some(s);
                res?;
                swarm.subscribers += 1;
            }
        }
    }
    let add_subscribers = |swarm: &mut Swarm, n: usize| -> Result<(), String> {
        for _ in 0..n {
            if stop.load(Relaxed) {
                return Ok(());
            }
            let r = swarm.subscribers % p.rooms;
            let mut s = swarm.join(r)?;
            let tracks: Vec<Track> = room_tracks[r].iter().flat_map(|(_, t)| t.clone()).collect();
            let from = s.opened_at();
            swarm.subscribe(&mut s, r, &tracks, from)?;
            swarm.signals.push(Some(s));
            swarm.subscribers += 1;
        }
        Ok(())
    };
    add_subscribers(&mut swarm, p.subscribers * p.rooms)?;
    report.setup_seconds = started.elapsed().as_secs_f64();
    match a.ramp {
        None => {
            let want = swarm.subscribe_pcs;
            wait_for(
                stop,
                a.quiet,
                "subscribers' first frames",
                Duration::from_secs(30),
                || swarm.loops.counters.first_frames.load(Relaxed) as usize >= want,
            )?;
            measure_for(a.warmup, stop, a.quiet, &mut swarm, &target, "warm-up");
            let row = measure_for(a.seconds, stop, a.quiet, &mut swarm, &target, "measuring");
            report.rows.push(row);
        }
        Some(step) => {
            let cores = a
                .pin
                .server
                .as_deref()
                .map_or(f64::from(a.workers as u32), cpu_count);
            while swarm.subscribers < a.max_subscribers && !stop.load(Relaxed) {
                add_subscribers(&mut swarm, step)?;
                let want = swarm.subscribe_pcs;
                // Joins may fail to complete at saturation: measure what there is.
                let _ = wait_for(
                    stop,
                    a.quiet,
                    "first frames",
                    Duration::from_secs(20),
                    || swarm.loops.counters.first_frames.load(Relaxed) as usize >= want,
                );
                measure_for(1.0, stop, a.quiet, &mut swarm, &target, "settle");
                let row = measure_for(a.stage_seconds, stop, a.quiet, &mut swarm, &target, "stage");
                let (loss, busy) = (row.clients.loss(), row.server.busy_cores.unwrap_or(0.0));
                if !a.quiet {
                    progress::line(&format!(
                        "{:>5} subscribers: {:>9.0} pkt/s forwarded, {:.2} busy cores, loss {:.2} %",
                        row.subscribers,
                        row.server.forwarded_pps,
                        busy,
                        loss * 100.0,
                    ));
                }
                report.rows.push(row);
                if loss > 0.01 || busy >= 0.95 * cores {
                    break;
                }
            }
        }
    }
    if !a.quiet {
        progress::clear();
    }
    let joins = swarm.loops.stop();
    report.join_ms = joins.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    report.join_ms.sort_by(|x, y| x.total_cmp(y));
    for s in swarm.signals.iter_mut().flatten() {
        s.leave();
    }
    if let Backend::Janus { control, .. } = &mut swarm.backend {
        control.leave();
    }
    drop(swarm);
    drop(target);
    drop(janus_process);
    Ok(())
}

fn cpu_count(list: &str) -> f64 {
    list.split(',')
        .map(|part| match part.split_once('-') {
            Some((a, b)) => match (a.trim().parse::<u32>(), b.trim().parse::<u32>()) {
                (Ok(a), Ok(b)) if b >= a => f64::from(b - a + 1),
                _ => 1.0,
            },
            None => 1.0,
        })
        .sum()
}

/// Waits (pumping nothing) until `done`, Ctrl-C or `limit`.
fn wait_for(
    stop: &AtomicBool,
    quiet: bool,
    what: &str,
    limit: Duration,
    mut done: impl FnMut() -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    let mut shown = false;
    while !done() {
        if stop.load(Relaxed) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("timed out after {limit:?} waiting for {what}"));
        }
        if !quiet && !shown {
            progress::set(format!("waiting for {what}…"));
            shown = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Measures one window of `seconds`, showing progress once a second.
fn measure_for(
    seconds: f64,
    stop: &AtomicBool,
    quiet: bool,
    swarm: &mut Swarm,
    target: &Target,
    label: &str,
) -> Row {
    let me = std::process::id();
    let gen_a = cpu_seconds(me);
    let a = target.sample();
    let ca = swarm.loops.counters.snapshot();
    let end = a.at + Duration::from_secs_f64(seconds);
    let mut last: Sample = a.clone();
    let mut last_c = ca.clone();
    while Instant::now() < end && !stop.load(Relaxed) {
        let left = end.saturating_duration_since(Instant::now());
        std::thread::sleep(left.min(Duration::from_secs(1)));
        let closed = swarm.pump();
        if quiet {
            continue;
        }
        let now = target.sample();
        let c = swarm.loops.counters.snapshot();
        let mut w = Window::between(&last, &now);
        let d = c.since(&last_c);
        if !target.has_metrics() {
            w.forwarded_pps = d.rx_packets as f64 / w.seconds;
        }
        progress::set(format!(
            "[{label} {:>4.0}s] {} subscribers  fwd {:>8.0} pkt/s  server {:.2} cores  loss {:.2} %  closed {closed}",
            now.at.duration_since(a.at).as_secs_f64(),
            swarm.subscribers,
            w.forwarded_pps,
            w.busy_cores.unwrap_or(0.0),
            d.loss() * 100.0,
        ));
        last = now;
        last_c = c;
    }
    let b = target.sample();
    let cb = swarm.loops.counters.snapshot();
    let mut server = Window::between(&a, &b);
    if !target.has_metrics() {
        // No server counters (Janus): what the subscribers received is what was forwarded.
        let d = cb.since(&ca);
        server.forwarded_pps = d.rx_packets as f64 / server.seconds;
        server.forwarded_bps = d.rx_bytes as f64 * 8.0 / server.seconds;
    }
    let gen_cores = match (gen_a, cpu_seconds(me)) {
        (Some(x), Some(y)) => Some((y - x) / server.seconds),
        _ => None,
    };
    Row {
        subscribers: swarm.subscribers,
        subscribe_pcs: swarm.subscribe_pcs,
        server,
        clients: cb.since(&ca),
        generator_cores: gen_cores,
        rss: b.rss.or(target.pid.and_then(rss_bytes)),
    }
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[i])
}

fn fmt_opt(v: Option<f64>, digits: usize, unit: &str) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.digits$}{unit}"))
}

fn per_subscriber(report: &Report, row: &Row) -> Option<f64> {
    let (base, now) = (report.rss_baseline?, row.rss?);
    (row.subscribe_pcs > 0).then(|| now.saturating_sub(base) as f64 / row.subscribe_pcs as f64)
}

fn print_report(a: &Args, r: &Report) {
    println!();
    println!(
        "prism-load {} -> {}{}",
        r.scenario.name(),
        a.target.name(),
        if r.interrupted { " (interrupted)" } else { "" }
    );
    if let Some(row) = r.rows.last() {
        let s = &row.server;
        let c = &row.clients;
        println!(
            "  clients           {} publishers, {} subscribers ({} subscribe pcs), set up in {:.1} s",
            r.publishers, row.subscribers, row.subscribe_pcs, r.setup_seconds
        );
        println!("  window            {:.1} s", s.seconds);
        println!(
            "  forwarded         {:.0} pkt/s, {:.1} Mbit/s (server metrics)",
            s.forwarded_pps,
            s.forwarded_bps / 1e6
        );
        println!(
            "  received          {:.0} pkt/s (subscribers, UDP level)",
            c.rx_packets as f64 / s.seconds
        );
        let threads: Vec<String> = s
            .threads
            .iter()
            .filter(|(_, c)| *c >= 0.005)
            .map(|(n, c)| format!("{n} {c:.2}"))
            .collect();
        println!(
            "  server CPU        {} busy cores ({})",
            fmt_opt(s.busy_cores, 3, ""),
            threads.join(", ")
        );
        println!(
            "  per busy core     {} forwarded pkt/s",
            fmt_opt(s.pps_per_core(), 0, "")
        );
        if let (Some(b), Some(pc)) = (&r.bare, s.pps_per_core()) {
            println!(
                "  bare loop         {:.0} pkt/s per core (fan-out {}, {} B) -> Prism/bare = {:.2}",
                b.pps_per_core,
                b.fanout,
                b.payload,
                pc / b.pps_per_core
            );
        }
        println!(
            "  loss              {:.3} % ({} of {} expected), {} sequence gaps, {} retransmissions",
            c.loss() * 100.0,
            c.expected.saturating_sub(c.rx_packets),
            c.expected,
            c.gaps,
            c.rtx_packets
        );
        println!(
            "  latency p50/p95   {} / {} ({} decrypted samples)",
            fmt_opt(c.latency_ms(0.5), 2, " ms"),
            fmt_opt(c.latency_ms(0.95), 2, " ms"),
            c.decrypted
        );
        println!(
            "  join p50/p95      {} / {} ({} subscribers; {})",
            fmt_opt(percentile(&r.join_ms, 0.5), 0, " ms"),
            fmt_opt(percentile(&r.join_ms, 0.95), 0, " ms"),
            r.join_ms.len(),
            if matches!(r.scenario, Scenario::Rooms | Scenario::Meeting) {
                "subscribe offer -> first frame"
            } else {
                "WebSocket open -> first keyframe"
            }
        );
        println!(
            "  server memory     {} RSS, {} per subscribe pc",
            fmt_opt(row.rss.map(|b| b as f64 / 1048576.0), 1, " MiB"),
            fmt_opt(per_subscriber(r, row).map(|b| b / 1024.0), 0, " KiB")
        );
        println!(
            "  generator CPU     {} busy cores (decrypting 1 in {})",
            fmt_opt(row.generator_cores, 2, ""),
            a.sample
        );
    }
    if r.rows.len() > 1 {
        println!();
        println!(
            "  {:>11} {:>12} {:>10} {:>14} {:>8} {:>9}",
            "subscribers", "fwd pkt/s", "busy cores", "pkt/s per core", "loss %", "p95 ms"
        );
        for row in &r.rows {
            println!(
                "  {:>11} {:>12.0} {:>10} {:>14} {:>8.3} {:>9}",
                row.subscribers,
                row.server.forwarded_pps,
                fmt_opt(row.server.busy_cores, 3, ""),
                fmt_opt(row.server.pps_per_core(), 0, ""),
                row.clients.loss() * 100.0,
                fmt_opt(row.clients.latency_ms(0.95), 2, "")
            );
        }
    }
    if r.rows.is_empty()
        && let Some(b) = &r.bare
    {
        println!(
            "  bare loop         {:.0} forwarded pkt/s per core (fan-out {}, {} B, {:.2} busy cores, {:.1} s)",
            b.pps_per_core, b.fanout, b.payload, b.busy_cores, b.seconds
        );
    }
}

fn report_json(a: &Args, r: &Report) -> Value {
    json!({
        "scenario": r.scenario.name(),
        "interrupted": r.interrupted,
        "machine": machine(),
        "settings": {
            "workers": a.workers,
            "pin_server": a.pin.server, "pin_worker": a.pin.worker, "pin_load": a.pin.load,
            "decrypt_sample": a.sample, "video_kbps": a.video_kbps, "video_payload": a.video_payload,
            "audio_bytes": a.audio_bytes, "simulcast": a.simulcast, "max_layer": a.max_layer,
            "seconds": a.seconds, "ramp": a.ramp,
        },
        "publishers": r.publishers,
        "setup_seconds": r.setup_seconds,
        "rows": r.rows.iter().map(|row| {
            let mut v = row.json();
            v["rss_per_subscribe_pc_bytes"] = json!(per_subscriber(r, row));
            v
        }).collect::<Vec<_>>(),
        "server_rss_baseline_bytes": r.rss_baseline,
        "join_ms": {"p50": percentile(&r.join_ms, 0.5), "p95": percentile(&r.join_ms, 0.95),
                    "count": r.join_ms.len()},
        "bare": r.bare.as_ref().map(|b| json!({
            "fanout": b.fanout, "payload": b.payload, "seconds": b.seconds,
            "forwarded": b.forwarded, "busy_cores": b.busy_cores,
            "forwarded_pps_per_busy_core": b.pps_per_core,
        })),
        "prism_to_bare": match (r.rows.last().and_then(|x| x.server.pps_per_core()), &r.bare) {
            (Some(p), Some(b)) => Some(p / b.pps_per_core),
            _ => None,
        },
    })
}

/// CPU model and count, kernel, for the report.
fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split(':').nth(1))
        })
        .map(|m| m.trim().to_string());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .ok();
    json!({"cpu": model, "cpus": std::thread::available_parallelism().map_or(1, |n| n.get()),
           "kernel": kernel})
}
