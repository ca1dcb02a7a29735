//! `prism-bench-engine`: what does forwarding cost the media core, per packet and per
//! peer connection?
//!
//! Runs the real [`MediaCore`](prism::media::MediaCore) on the in-memory network of
//! `prism::media::sim` (no sockets, no syscalls, simulated time) with real str0m client
//! peers: one publisher (Opus + VP8-like video, 1 Mbit/s in 1200 B payloads by
//! default) and K subscribers that each receive both tracks, over lossless links. For
//! every K it reports:
//!
//! - the server's CPU time per forwarded packet: wall time spent inside `MediaCore`
//!   calls only (ingress decrypt, routing, egress encrypt, timers, draining its
//!   outputs), scaled by the share of the window the thread was on a CPU (from
//!   `/proc/thread-self/schedstat`, so time spent preempted by other processes is not
//!   billed to the core), divided by the packets it handed to subscriber streams; the
//!   implied forwarded packets per second on one core; what one subscriber copy adds
//!   over the publisher-alone run; and, separately, the rest of the run (the client
//!   peers' str0m work and the simulated network);
//! - allocations per forwarded packet made inside those calls, and with
//!   `--alloc-sites` where they come from (sampled backtraces);
//! - heap per subscriber and per publisher peer connection after the run (100 s of
//!   simulated media by default): bytes still allocated by blocks that were allocated
//!   inside `MediaCore` calls, against a run with the publisher alone. The whole
//!   process's growth (client peers included) is shown beside it.
//!
//! Both measures come from the counting global allocator below, which tags every block
//! with the side that allocated it (a thread-local flag set by the sim's core probe).
//!
//! Not measured: syscalls and the kernel's UDP path (the driver's share, which the
//! architecture's budget puts above str0m's), simulcast layer switching, NACK/RTX
//! under loss, more than one publisher per room. The client peers run in the same
//! thread and share the caches with the core, which makes large K pessimistic for a
//! dedicated server (and realistic for a worker serving many rooms).
//! Timing on a shared machine is noisy: each K runs `--repeat` times and the median
//! is shown with its spread. Compare ratios between runs of the same build; nothing
//! here passes or fails on time.
//!
//! Example: `cargo build --release -p prism-tools --bin prism-bench-engine &&
//!           target/release/prism-bench-engine --fanout 1,10,100 --seconds 100`
#![deny(unsafe_code)] // except the allocator module, which says why it is sound
#![allow(clippy::disallowed_methods)] // a tool owns its clock

use std::backtrace::Backtrace;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use prism::ids::TrackId;
use prism::media::sim::{CoreCall, CoreProbe, LinkConfig, Sim, VideoShape};
use prism::media::{MediaConfig, MediaCore};

#[global_allocator]
static ALLOCATOR: counting::CountingAlloc = counting::CountingAlloc;

/// A global allocator that counts, per side (inside a `MediaCore` call or not), the
/// allocation calls, the bytes requested, and the bytes still live, attributing every
/// block for its whole life to the side that allocated it (a block allocated by the
/// core and freed by the sim still leaves the core's count when it is freed).
///
/// With [`counting::sample_sites`] on, every Nth core allocation also captures a
/// backtrace (`--alloc-sites`), to show where the core's allocations come from.
#[allow(unsafe_code)]
mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::backtrace::Backtrace;
    use std::cell::Cell;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

    /// Blocks allocated outside any `MediaCore` call.
    pub const OTHER: usize = 0;
    /// Blocks allocated inside a `MediaCore` call.
    pub const CORE: usize = 1;

    thread_local! {
        // Const-initialised and without destructor: reading them never allocates.
        static IN_CORE: Cell<bool> = const { Cell::new(false) };
        /// A backtrace is being captured: its own allocations are not the core's.
        static CAPTURING: Cell<bool> = const { Cell::new(false) };
    }

    // The bench is single-threaded. The counters are atomics only because a global
    // allocator must be `Sync`; they are updated with a plain load and store (no locked
    // read-modify-write, which cost ~3 % of the core's time in a profile), so updates
    // from concurrent threads could be lost, never corrupt memory.
    static LIVE_BYTES: [AtomicI64; 2] = [const { AtomicI64::new(0) }; 2];
    static ALLOC_CALLS: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];
    static ALLOC_BYTES: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];

    fn add_u64(counter: &AtomicU64, n: u64) {
        counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
    }

    fn add_i64(counter: &AtomicI64, n: i64) {
        counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
    }

    /// Marks whether this thread is inside a `MediaCore` call.
    pub fn set_in_core(on: bool) {
        IN_CORE.with(|f| f.set(on));
    }

    fn side() -> usize {
        let in_core = IN_CORE.try_with(Cell::get).unwrap_or(false);
        let capturing = CAPTURING.try_with(Cell::get).unwrap_or(true);
        if in_core && !capturing { CORE } else { OTHER }
    }

    /// 0: off; otherwise one core allocation in this many captures a backtrace.
    static SAMPLE_EVERY: AtomicU64 = AtomicU64::new(0);
    static SAMPLE_COUNTDOWN: AtomicU64 = AtomicU64::new(0);
    static SAMPLES: Mutex<Vec<Backtrace>> = Mutex::new(Vec::new());

    /// Samples one core allocation in `every` (0 turns sampling off).
    pub fn sample_sites(every: u64) {
        SAMPLE_EVERY.store(every, Relaxed);
        SAMPLE_COUNTDOWN.store(every, Relaxed);
    }

    /// The backtraces sampled so far (emptied).
    pub fn take_samples() -> Vec<Backtrace> {
        SAMPLES
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }

    fn maybe_sample() {
        let every = SAMPLE_EVERY.load(Relaxed);
        if every == 0 {
            return;
        }
        let left = SAMPLE_COUNTDOWN.load(Relaxed);
        if left > 1 {
            SAMPLE_COUNTDOWN.store(left - 1, Relaxed);
            return;
        }
        SAMPLE_COUNTDOWN.store(every, Relaxed);
        // Capturing and storing allocate; with CAPTURING set those allocations are
        // "other" and never sampled, so this does not recurse.
        CAPTURING.with(|c| c.set(true));
        let trace = Backtrace::force_capture();
        if let Ok(mut samples) = SAMPLES.lock() {
            samples.push(trace);
        }
        CAPTURING.with(|c| c.set(false));
    }

    /// Counters at one instant, per side.
    #[derive(Debug, Clone, Copy, Default)]
    pub struct Snapshot {
        /// Requested bytes of blocks still allocated.
        pub live_bytes: [i64; 2],
        /// `alloc`, `alloc_zeroed` and `realloc` calls.
        pub alloc_calls: [u64; 2],
        /// Bytes requested by those calls (a realloc counts its growth).
        pub alloc_bytes: [u64; 2],
    }

    pub fn snapshot() -> Snapshot {
        let get = |a: &[AtomicU64; 2]| [a[0].load(Relaxed), a[1].load(Relaxed)];
        Snapshot {
            live_bytes: [LIVE_BYTES[0].load(Relaxed), LIVE_BYTES[1].load(Relaxed)],
            alloc_calls: get(&ALLOC_CALLS),
            alloc_bytes: get(&ALLOC_BYTES),
        }
    }

    /// Every block is preceded by a header; its last 8 bytes hold the owning side.
    /// The header is `max(16, align)` bytes so the user pointer keeps its alignment.
    const MIN_HEADER: usize = 16;

    /// The layout handed to the system allocator, and the header size.
    fn outer(layout: Layout) -> Option<(Layout, usize)> {
        let header = layout.align().max(MIN_HEADER);
        let size = layout.size().checked_add(header)?;
        Some((Layout::from_size_align(size, header).ok()?, header))
    }

    fn note_alloc(side: usize, bytes: usize) {
        add_u64(&ALLOC_CALLS[side], 1);
        add_u64(&ALLOC_BYTES[side], bytes as u64);
        if side == CORE {
            maybe_sample();
        }
    }

    pub struct CountingAlloc;

    impl CountingAlloc {
        /// SAFETY (for callers): `layout` has a non-zero size, as `GlobalAlloc` requires.
        unsafe fn alloc_tagged(&self, layout: Layout, zeroed: bool) -> *mut u8 {
            let Some((outer, header)) = outer(layout) else {
                return std::ptr::null_mut();
            };
            // SAFETY: `outer` has a non-zero size (it includes the header).
            let base = unsafe {
                if zeroed {
                    System.alloc_zeroed(outer)
                } else {
                    System.alloc(outer)
                }
            };
            if base.is_null() {
                return base;
            }
            let side = side();
            // SAFETY: `base` points to `header + size` bytes aligned to `header` (≥ 16,
            // a multiple of 8), so `base + header - 8` is in bounds and 8-aligned, and
            // `base + header` is in bounds (or one past the end for a zero-size tail)
            // and aligned to `layout.align()`.
            let user = unsafe {
                base.add(header - 8).cast::<usize>().write(side);
                base.add(header)
            };
            add_i64(&LIVE_BYTES[side], layout.size() as i64);
            note_alloc(side, layout.size());
            user
        }
    }

    // SAFETY: every method forwards to `System` with the enlarged layout computed by
    // `outer` (the same one for a block's whole life, since `GlobalAlloc` callers pass
    // the layout the block was allocated with), and hands out `base + header`, which
    // keeps the requested alignment and size; the side tag lives inside the header,
    // outside the bytes the caller may touch.
    unsafe impl GlobalAlloc for CountingAlloc {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: forwarded contract of `GlobalAlloc::alloc`.
            unsafe { self.alloc_tagged(layout, false) }
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            // SAFETY: forwarded contract of `GlobalAlloc::alloc_zeroed`.
            unsafe { self.alloc_tagged(layout, true) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            let (outer, header) = outer(layout).expect("the layout was accepted at alloc");
            // SAFETY: `ptr` came from `alloc_tagged`/`realloc` with this layout, so the
            // tag sits 8 bytes before it and the system block starts `header` before it.
            unsafe {
                let side = ptr.sub(8).cast::<usize>().read();
                add_i64(&LIVE_BYTES[side & 1], -(layout.size() as i64));
                System.dealloc(ptr.sub(header), outer);
            }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            let (outer, header) = outer(layout).expect("the layout was accepted at alloc");
            let Some((new_outer, _)) = Layout::from_size_align(new_size, layout.align())
                .ok()
                .and_then(self::outer)
            else {
                return std::ptr::null_mut();
            };
            // SAFETY: as in `dealloc` for the old block; the system allocator copies the
            // header (tag included) with the contents, and the header size depends on
            // the alignment only, which a realloc keeps.
            unsafe {
                let owner = ptr.sub(8).cast::<usize>().read() & 1;
                let base = System.realloc(ptr.sub(header), outer, new_outer.size());
                if base.is_null() {
                    return base;
                }
                add_i64(&LIVE_BYTES[owner], new_size as i64 - layout.size() as i64);
                note_alloc(side(), new_size.saturating_sub(layout.size()));
                base.add(header)
            }
        }
    }
}

/// Time and call counts per kind of core call.
#[derive(Debug, Clone, Copy, Default)]
struct Timing {
    ns: [u64; 5],
    calls: [u64; 5],
}

impl Timing {
    fn index(call: CoreCall) -> usize {
        match call {
            CoreCall::Signaling => 0,
            CoreCall::Datagram => 1,
            CoreCall::Timeout => 2,
            CoreCall::Poll => 3,
            CoreCall::PollTimeout => 4,
        }
    }

    fn since(&self, earlier: &Timing) -> Timing {
        let mut d = *self;
        for i in 0..5 {
            d.ns[i] -= earlier.ns[i];
            d.calls[i] -= earlier.calls[i];
        }
        d
    }

    fn total_ns(&self) -> u64 {
        self.ns.iter().sum()
    }

    fn total_calls(&self) -> u64 {
        self.calls.iter().sum()
    }
}

/// Times every core call and marks the allocator's side while inside one.
struct Probe {
    timing: Rc<RefCell<Timing>>,
    entered: Option<Instant>,
}

impl CoreProbe for Probe {
    fn enter(&mut self, _call: CoreCall) {
        counting::set_in_core(true);
        self.entered = Some(Instant::now());
    }

    fn exit(&mut self, call: CoreCall) {
        let now = Instant::now();
        counting::set_in_core(false);
        if let Some(t) = self.entered.take() {
            let mut timing = self.timing.borrow_mut();
            let i = Timing::index(call);
            timing.ns[i] += now.duration_since(t).as_nanos() as u64;
            timing.calls[i] += 1;
        }
    }
}

/// What an empty probe span records: the clock reads themselves, included in every
/// core figure (reported, not subtracted).
fn probe_bias_ns() -> f64 {
    let timing = Rc::new(RefCell::new(Timing::default()));
    let mut probe = Probe {
        timing: Rc::clone(&timing),
        entered: None,
    };
    const N: u64 = 200_000;
    for _ in 0..N {
        probe.enter(CoreCall::Poll);
        probe.exit(CoreCall::Poll);
    }
    timing.borrow().total_ns() as f64 / N as f64
}

#[derive(Clone)]
struct Args {
    fanouts: Vec<usize>,
    seconds: u64,
    warmup: u64,
    payload: usize,
    /// Every `--payload` given (one report each).
    payloads: Vec<usize>,
    /// Count instructions under valgrind instead of timing.
    callgrind: bool,
    /// Skip the K=0 run (a callgrind child measures one K).
    no_baseline: bool,
    video_kbps: u64,
    audio: bool,
    seed: u64,
    repeat: usize,
    rtx_video: Option<usize>,
    rtx_audio: Option<usize>,
    /// Sample one core allocation in this many (0: off).
    alloc_sites: u64,
    json: bool,
}

const HELP: &str = "\
prism-bench-engine [--fanout K[,K…]=1,10,100] [--seconds S=100] [--warmup S=5]
                   [--payload BYTES=1200] [--video-kbps KBPS=1000] [--no-audio]
                   [--repeat N=3] [--rtx-video PACKETS] [--rtx-audio PACKETS]
                   [--alloc-sites] [--seed N=1] [--json]
                   [--callgrind]

Runs the media core on the in-memory network with one publisher (Opus + VP8-like
video) and K subscribers per run, plus a run with the publisher alone (the memory
baseline). Reports the core's time and allocations per forwarded packet, the
client side's time separately, and heap per subscriber and per publisher.
--seconds is simulated time measured after the warm-up (connection, first
keyframe); memory is read at its end. --payload sets the video packet size; the
packet rate follows from --video-kbps (1000 kbit/s at 1200 B is ~104 packets/s;
at 100 B use --video-kbps 83 for the same rate). Each K runs --repeat times;
the run with the median core time is reported, with the spread. --rtx-video and
--rtx-audio override the core's RTX cache sizes (MediaConfig). --alloc-sites
samples one core allocation in 64 with a backtrace and prints the top call
sites (one run per K; its timings include the captures).

--payload takes a list (e.g. 100,1200): one report per size. With more than one,
the video bitrate scales with the size so every size sends the packet rate that
--video-kbps gives at 1200 B, and per-packet figures compare.

--callgrind counts instructions instead of time (valgrind must be installed): for
every payload and K it runs this tool twice under callgrind with instruction
collection on only inside MediaCore's handle_datagram / handle_timeout /
poll_transmit / poll_event, with --seconds S and 2S of simulated time, and
reports (Ir(2S) - Ir(S)) / (forwarded(2S) - forwarded(S)): the core's
instructions per forwarded packet in steady state, the same on every run up to
the randomness of ICE and DTLS (a few tenths of a percent), so a small regression
shows on a noisy machine. Use a short --seconds (default there: 5).";

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        fanouts: vec![1, 10, 100],
        seconds: 100,
        warmup: 5,
        payload: 1200,
        payloads: vec![1200],
        callgrind: false,
        no_baseline: false,
        video_kbps: 1000,
        audio: true,
        seed: 1,
        repeat: 3,
        rtx_video: None,
        rtx_audio: None,
        alloc_sites: 0,
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--fanout" => {
                a.fanouts = val()?
                    .split(',')
                    .map(|k| k.trim().parse().map_err(|e| format!("--fanout {k}: {e}")))
                    .collect::<Result<_, _>>()?;
            }
            "--seconds" => a.seconds = val()?.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--warmup" => a.warmup = val()?.parse().map_err(|e| format!("--warmup: {e}"))?,
            "--payload" => {
                a.payloads = val()?
                    .split(',')
                    .map(|k| k.trim().parse().map_err(|e| format!("--payload {k}: {e}")))
                    .collect::<Result<_, _>>()?;
                a.payload = a.payloads.first().copied().unwrap_or(1200);
            }
            "--callgrind" => a.callgrind = true,
            "--no-baseline" => a.no_baseline = true,
            "--video-kbps" => {
                a.video_kbps = val()?.parse().map_err(|e| format!("--video-kbps: {e}"))?;
            }
            "--no-audio" => a.audio = false,
            "--seed" => a.seed = val()?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--repeat" => a.repeat = val()?.parse().map_err(|e| format!("--repeat: {e}"))?,
            "--rtx-video" => {
                a.rtx_video = Some(val()?.parse().map_err(|e| format!("--rtx-video: {e}"))?);
            }
            "--rtx-audio" => {
                a.rtx_audio = Some(val()?.parse().map_err(|e| format!("--rtx-audio: {e}"))?);
            }
            "--alloc-sites" => a.alloc_sites = 64,
            "--json" => a.json = true,
            "-h" | "--help" => {
                println!("{HELP}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other} (see --help)")),
        }
    }
    a.fanouts.retain(|&k| k > 0);
    a.fanouts.dedup();
    if a.fanouts.is_empty() || a.fanouts.iter().any(|&k| k > 5000) {
        return Err("--fanout takes values in 1..=5000".into());
    }
    if a.seconds < 2 || a.warmup < 2 {
        return Err("--seconds and --warmup must be at least 2".into());
    }
    if a.payloads.is_empty() || a.payloads.iter().any(|p| !(16..=1400).contains(p)) {
        return Err("--payload must be in 16..=1400 bytes".into());
    }
    if a.video_kbps == 0 {
        return Err("--video-kbps must be positive".into());
    }
    if a.repeat == 0 {
        return Err("--repeat must be positive".into());
    }
    if a.alloc_sites > 0 {
        a.repeat = 1;
    }
    Ok(a)
}

/// The figures of one run (one K).
#[derive(Debug, Clone)]
struct RunResult {
    fanout: usize,
    wall_s: f64,
    /// RTP packets the publisher client wrote in the window (all reach the core).
    published: u64,
    forwarded: u64,
    forwarded_bytes: u64,
    delivered: u64,
    core: Timing,
    core_allocs: u64,
    core_alloc_bytes: u64,
    /// Core-owned live heap at the middle and the end of the measured window.
    core_heap_mid: i64,
    core_heap_end: i64,
    /// Whole-process live heap (client peers and sim included) at the end.
    process_heap_end: i64,
    /// Core-owned bytes still live after the sim was dropped (should be ~0).
    core_heap_after_drop: i64,
    sim_s_at_end: f64,
    /// Backtraces of sampled core allocations (`--alloc-sites`).
    samples: Rc<Vec<Backtrace>>,
    /// Share of the window this thread was on a CPU (not waiting in the run queue).
    on_cpu: Option<f64>,
}

impl RunResult {
    /// Wall time inside the core × on-CPU share: an estimate of the core's CPU time
    /// when other processes compete for the cores (preemption lands uniformly in
    /// time, so inside core calls in proportion). Wall time when unknown.
    fn core_cpu_ns(&self) -> f64 {
        self.core.total_ns() as f64 * self.on_cpu.unwrap_or(1.0)
    }
}

/// This thread's (on-CPU, run-queue wait) time so far, ns (`/proc/thread-self/schedstat`).
fn sched_times() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let mut f = s.split_whitespace().map(|v| v.parse::<u64>().ok());
    Some((f.next()??, f.next()??))
}

fn published_total(sim: &Sim) -> u64 {
    sim.clients
        .iter()
        .flat_map(|c| c.sent.iter())
        .map(|s| s.packets)
        .sum()
}

fn delivered_total(sim: &Sim) -> u64 {
    sim.clients
        .iter()
        .filter_map(|c| c.subscribe.as_ref())
        .flat_map(|pc| pc.received.values())
        .map(|r| r.packets)
        .sum()
}

/// Runs one K `--repeat` times; returns the run with the median core time per
/// published packet and the (min, max) of that figure over the repeats.
fn run_repeated(args: &Args, fanout: usize) -> Result<(RunResult, (f64, f64)), String> {
    let mut results = Vec::new();
    for i in 0..args.repeat {
        eprint!("\rK={fanout}: run {} of {} …", i + 1, args.repeat);
        results.push(run_one(args, fanout)?);
    }
    let key = |r: &RunResult| r.core_cpu_ns() / r.published.max(1) as f64;
    results.sort_by(|a, b| key(a).total_cmp(&key(b)));
    let spread = (key(&results[0]), key(&results[results.len() - 1]));
    let median = results.swap_remove(results.len() / 2);
    eprintln!(
        "\rK={fanout}: {} run(s), median {:.2} s wall for {} s simulated",
        args.repeat, median.wall_s, args.seconds
    );
    Ok((median, spread))
}

fn run_one(args: &Args, fanout: usize) -> Result<RunResult, String> {
    let before = counting::snapshot();
    let timing = Rc::new(RefCell::new(Timing::default()));
    let mut sim = Sim::new(args.seed);
    sim.link = LinkConfig {
        latency: Duration::from_millis(10),
        jitter: Duration::ZERO,
        loss: 0.0,
    };
    sim.links_to.clear();
    if args.rtx_video.is_some() || args.rtx_audio.is_some() {
        // Before any peer connection exists, so replacing the core loses nothing.
        let mut cfg = MediaConfig::new(sim.server_addr);
        cfg.rtx_cache_video_packets = args.rtx_video.unwrap_or(cfg.rtx_cache_video_packets);
        cfg.rtx_cache_audio_packets = args.rtx_audio.unwrap_or(cfg.rtx_cache_audio_packets);
        sim.core = MediaCore::new(cfg);
    }
    sim.record_media = false;
    sim.video = Some(VideoShape {
        bitrate_bps: args.video_kbps * 1000,
        payload_bytes: args.payload,
    });
    sim.set_probe(Box::new(Probe {
        timing: Rc::clone(&timing),
        entered: None,
    }));

    let publisher = sim.add_client("publisher");
    // The answer (SDP text) was allocated by the core; drop it now so it is not
    // counted as the publisher's memory. The track ids are shared with the core.
    let tracks: Vec<TrackId> = sim
        .publish(publisher, args.audio, true)
        .tracks
        .iter()
        .map(|t| t.track_id.clone())
        .collect();
    for i in 0..fanout {
        let c = sim.add_client(&format!("sub{i}"));
        let a = sim.subscribe(c, &tracks);
        if !a.rejected.is_empty() {
            return Err(format!("subscriber {i} was refused: {:?}", a.rejected));
        }
    }
    sim.drive(Duration::from_secs(args.warmup));
    if !sim.all_connected() {
        return Err(format!(
            "K={fanout}: not every peer connection connected within the {} s warm-up",
            args.warmup
        ));
    }

    let t0 = *timing.borrow();
    let a0 = counting::snapshot();
    let s0 = sim.core.stats();
    let d0 = delivered_total(&sim);
    let p0 = published_total(&sim);
    counting::sample_sites(args.alloc_sites);
    let sched0 = sched_times();
    let wall = Instant::now();
    let half = Duration::from_secs(args.seconds) / 2;
    sim.drive_for(half);
    let core_heap_mid = counting::snapshot().live_bytes[counting::CORE] - before.live_bytes[1];
    sim.drive_for(Duration::from_secs(args.seconds) - half);
    let wall_s = wall.elapsed().as_secs_f64();
    let on_cpu = match (sched0, sched_times()) {
        (Some((run0, wait0)), Some((run1, wait1))) if run1 + wait1 > run0 + wait0 => {
            Some((run1 - run0) as f64 / ((run1 - run0) + (wait1 - wait0)) as f64)
        }
        _ => None,
    };
    counting::sample_sites(0);
    let samples = counting::take_samples();
    let a1 = counting::snapshot();
    let t1 = *timing.borrow();
    let s1 = sim.core.stats();
    let d1 = delivered_total(&sim);
    let p1 = published_total(&sim);
    let sim_s_at_end = sim.elapsed().as_secs_f64();
    drop(sim);
    let after = counting::snapshot();

    let core = counting::CORE;
    Ok(RunResult {
        fanout,
        wall_s,
        published: p1 - p0,
        forwarded: s1.forwarded_packets - s0.forwarded_packets,
        forwarded_bytes: s1.forwarded_bytes - s0.forwarded_bytes,
        delivered: d1 - d0,
        core: t1.since(&t0),
        core_allocs: a1.alloc_calls[core] - a0.alloc_calls[core],
        core_alloc_bytes: a1.alloc_bytes[core] - a0.alloc_bytes[core],
        core_heap_mid,
        core_heap_end: a1.live_bytes[core] - before.live_bytes[core],
        process_heap_end: a1.live_bytes.iter().sum::<i64>() - before.live_bytes.iter().sum::<i64>(),
        core_heap_after_drop: after.live_bytes[core] - before.live_bytes[core],
        sim_s_at_end,
        samples: Rc::new(samples),
        on_cpu,
    })
}

struct Machine {
    cpus: usize,
    model: String,
    release: bool,
}

fn machine() -> Machine {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    Machine {
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        model,
        release: !cfg!(debug_assertions),
    }
}

/// Per-run figures derived for the report (`None` where a run forwarded nothing).
struct Derived {
    /// Core CPU-time estimate per forwarded packet (see [`RunResult::core_cpu_ns`]).
    core_ns: Option<f64>,
    /// The same, wall time inside core calls.
    core_wall_ns: Option<f64>,
    /// Core time per packet the publisher sent (ingress once, egress K times).
    core_ns_per_published: Option<f64>,
    allocs_per_published: Option<f64>,
    per_call_ns: [Option<f64>; 5],
    per_core_pps: Option<f64>,
    outside_ns: Option<f64>,
    allocs: Option<f64>,
    alloc_bytes: Option<f64>,
    calls: Option<f64>,
    avg_payload: Option<f64>,
    sub_heap_mid: Option<f64>,
    sub_heap_end: Option<f64>,
    sub_process_heap: Option<f64>,
}

fn derive(r: &RunResult, base: &RunResult) -> Derived {
    let per = |x: f64| (r.forwarded > 0).then(|| x / r.forwarded as f64);
    let scale = r.on_cpu.unwrap_or(1.0);
    let core_ns = per(r.core_cpu_ns());
    let k = r.fanout as f64;
    let per_sub = |x: i64, b: i64| (r.fanout > 0).then(|| (x - b) as f64 / k);
    let per_published = |x: f64| (r.published > 0).then(|| x / r.published as f64);
    Derived {
        core_ns,
        core_wall_ns: per(r.core.total_ns() as f64),
        core_ns_per_published: per_published(r.core_cpu_ns()),
        allocs_per_published: per_published(r.core_allocs as f64),
        per_call_ns: std::array::from_fn(|i| per(r.core.ns[i] as f64 * scale)),
        per_core_pps: core_ns.map(|ns| 1e9 / ns),
        outside_ns: per((r.wall_s * 1e9 - r.core.total_ns() as f64) * scale),
        allocs: per(r.core_allocs as f64),
        alloc_bytes: per(r.core_alloc_bytes as f64),
        calls: per(r.core.total_calls() as f64),
        avg_payload: per(r.forwarded_bytes as f64),
        sub_heap_mid: per_sub(r.core_heap_mid, base.core_heap_mid),
        sub_heap_end: per_sub(r.core_heap_end, base.core_heap_end),
        sub_process_heap: per_sub(r.process_heap_end, base.process_heap_end),
    }
}

/// The frames of a backtrace, innermost first, without hashes.
fn frames(trace: &Backtrace) -> Vec<String> {
    trace
        .to_string()
        .lines()
        .filter_map(|l| {
            let (n, name) = l.trim_start().split_once(": ")?;
            n.parse::<usize>().ok()?;
            let name = match name.rfind("::h") {
                Some(i) if name.len() - i == 19 => &name[..i],
                _ => name,
            };
            Some(name.to_string())
        })
        .collect()
}

/// Allocator, collection, std and blanket-conversion frames say nothing about who
/// allocates: skip them (`Vec::from_elem`, `<T as Into<U>>::into`, `Arc::from`, …).
fn is_plumbing(frame: &str) -> bool {
    let std_path = |p: &str| {
        ["std::", "core::", "alloc::", "hashbrown::", "backtrace"]
            .iter()
            .any(|s| p.starts_with(s))
    };
    if let Some(qualified) = frame.strip_prefix('<') {
        // `<Type as Trait>::method`: plumbing when Type is a std or generic type, or
        // the trait is a blanket conversion.
        let (ty, tr) = qualified.split_once(" as ").unwrap_or((qualified, ""));
        let std_type = std_path(ty)
            || ty.starts_with(['&', '['])
            || ty.len() <= 3 // `T`, `u8`, `str`
            || ty.starts_with("prism_bench_engine::counting");
        let blanket =
            tr.starts_with("core::convert::Into") || tr.starts_with("core::convert::TryInto");
        return std_type || blanket;
    }
    std_path(frame)
        || [
            "__rust",
            "prism_bench_engine::counting",
            "prism_bench_engine::frames",
            "<unknown>",
        ]
        .iter()
        .any(|p| frame.starts_with(p))
}

/// Top allocation sites of one run: the first two frames below the plumbing.
fn print_alloc_sites(r: &RunResult, d: &Derived) {
    if r.samples.is_empty() {
        return;
    }
    let mut sites: HashMap<String, usize> = HashMap::new();
    for trace in r.samples.iter() {
        let site: Vec<String> = frames(trace)
            .into_iter()
            .skip_while(|f| is_plumbing(f))
            .filter(|f| !is_plumbing(f))
            .take(2)
            .collect();
        *sites.entry(site.join(" ← ")).or_default() += 1;
    }
    let mut sites: Vec<(String, usize)> = sites.into_iter().collect();
    sites.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let n = r.samples.len() as f64;
    println!("  K={} ({} samples)", r.fanout, r.samples.len());
    for (site, count) in sites.iter().take(12) {
        let share = *count as f64 / n;
        let per = |v: Option<f64>| v.map_or("–".into(), |v| format!("{:.2}", v * share));
        println!(
            "    {:>5.1}%  {:>5}/fwd {:>6}/pub  {site}",
            100.0 * share,
            per(d.allocs),
            per(d.allocs_per_published),
        );
    }
}

fn main() {
    if let Err(e) = run() {
        eprintln!("prism-bench-engine: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    if args.callgrind {
        return callgrind::run(&args);
    }
    for &payload in &args.payloads {
        let mut a = args.clone();
        a.payload = payload;
        if args.payloads.len() > 1 {
            // Same packet rate at every size (that of --video-kbps at 1200 B).
            a.video_kbps = (args.video_kbps * payload as u64 / 1200).max(1);
        }
        report(&a)?;
        if args.payloads.len() > 1 {
            println!();
        }
    }
    Ok(())
}

fn report(args: &Args) -> Result<(), String> {
    let args = args.clone();
    let m = machine();
    if !m.release {
        eprintln!("warning: debug build; build with --release for meaningful figures");
    }
    let bias = probe_bias_ns();
    let video_pps = (args.video_kbps * 1000) as f64 / 8.0 / args.payload as f64;

    // K=0 first: the publisher alone is the memory baseline. It is shown as the first
    // column; its per-forwarded-packet cells are empty, its heap is the publisher's.
    let mut columns = Vec::new();
    let mut spreads = Vec::new();
    let baseline = (!args.no_baseline).then_some(0);
    for k in baseline.into_iter().chain(args.fanouts.iter().copied()) {
        let (run, spread) = run_repeated(&args, k)?;
        columns.push(run);
        spreads.push(spread);
    }
    let base = columns[0].clone();
    let derived: Vec<Derived> = columns.iter().map(|r| derive(r, &base)).collect();
    // What each subscriber copy adds: (cost per published packet at K − at K=0) / K.
    // The K=0 run pays the ingress (decrypt, route, the publisher's RTCP and timers)
    // without forwarding; the rest is the egress (rewrite, write_rtp, pacing,
    // encrypt) plus each subscriber's own RTCP and timers.
    let per_copy = |y: fn(&Derived) -> Option<f64>, prec: usize| -> Vec<String> {
        let y0 = y(&derived[0]);
        columns
            .iter()
            .zip(&derived)
            .map(|(r, d)| match (y(d), y0) {
                (Some(y), Some(y0)) if r.fanout > 0 => {
                    format!("{:.prec$}", (y - y0) / r.fanout as f64)
                }
                _ => "–".into(),
            })
            .collect()
    };

    let f = |v: Option<f64>, prec: usize| v.map_or("–".into(), |v| format!("{v:.prec$}"));
    let kib = |v: Option<f64>| v.map_or("–".into(), |v| format!("{:.1}", v / 1024.0));
    println!("prism-bench-engine: the media core on the in-memory network (no syscalls)");
    println!(
        "machine : {} CPUs (available_parallelism), {}; {} build",
        m.cpus,
        m.model,
        if m.release { "release" } else { "DEBUG" }
    );
    println!(
        "media   : 1 publisher: VP8-like video {} kbit/s in {} B payloads ({video_pps:.1} pkt/s, keyframe every 3 s){}",
        args.video_kbps,
        args.payload,
        if args.audio {
            " + Opus 60 B every 20 ms (50 pkt/s)"
        } else {
            ""
        }
    );
    println!("          K subscribers each receive every track; lossless links, 10 ms one-way");
    println!(
        "window  : warm-up {} s (excluded), then {} s simulated measured; memory read at t = {:.0} s; seed {}",
        args.warmup, args.seconds, base.sim_s_at_end, args.seed
    );
    println!();
    let row = |name: &str, cells: Vec<String>| {
        let mut line = format!("{name:<44}");
        for c in cells {
            line.push_str(&format!("{c:>11}"));
        }
        println!("{line}");
    };
    let each = |g: &dyn Fn(&RunResult, &Derived) -> String| -> Vec<String> {
        columns.iter().zip(&derived).map(|(r, d)| g(r, d)).collect()
    };
    row(
        "fan-out K (0: publisher alone)",
        each(&|r, _| r.fanout.to_string()),
    );
    row(
        "published packets (measured window)",
        each(&|r, _| r.published.to_string()),
    );
    row("forwarded packets", each(&|r, _| r.forwarded.to_string()));
    row(
        "  delivered to client peers",
        each(&|r, _| {
            if r.forwarded > 0 {
                format!("{:.2}%", 100.0 * r.delivered as f64 / r.forwarded as f64)
            } else {
                "–".into()
            }
        }),
    );
    row("  mean payload, B", each(&|_, d| f(d.avg_payload, 0)));
    row(
        "on-CPU share of the measured window",
        each(&|r, _| {
            r.on_cpu
                .map_or("–".into(), |c| format!("{:.0}%", 100.0 * c))
        }),
    );
    row(
        "core ns / forwarded packet (CPU)",
        each(&|_, d| f(d.core_ns, 0)),
    );
    row(
        "  wall time in core calls, ns",
        each(&|_, d| f(d.core_wall_ns, 0)),
    );
    for (i, name) in [
        (1, "  in handle_datagram"),
        (2, "  in handle_timeout"),
        (3, "  in poll_transmit + poll_event"),
        (4, "  in poll_timeout"),
    ] {
        row(name, each(&|_, d| f(d.per_call_ns[i], 0)));
    }
    row(
        "  core calls / forwarded packet",
        each(&|_, d| f(d.calls, 2)),
    );
    row(
        "forwarded packets/s per core (1e9 / ns)",
        each(&|_, d| {
            d.per_core_pps
                .map_or("–".into(), |p| format!("{:.0}k", p / 1000.0))
        }),
    );
    row(
        "core ns / published packet",
        each(&|_, d| f(d.core_ns_per_published, 0)),
    );
    row(
        "  per subscriber copy: (pub − pub@K=0) / K",
        per_copy(|d| d.core_ns_per_published, 0),
    );
    if args.repeat > 1 {
        row(
            &format!("  spread over {} runs (min/max vs median)", args.repeat),
            spreads
                .iter()
                .zip(&derived)
                .map(|((lo, hi), d)| match d.core_ns_per_published {
                    Some(m) if m > 0.0 => {
                        format!(
                            "{:+.0}/{:+.0}%",
                            100.0 * (lo / m - 1.0),
                            100.0 * (hi / m - 1.0)
                        )
                    }
                    _ => "–".into(),
                })
                .collect(),
        );
    }
    row(
        "client peers + sim, ns / forwarded packet",
        each(&|_, d| f(d.outside_ns, 0)),
    );
    row(
        "allocations / forwarded packet (core)",
        each(&|_, d| f(d.allocs, 2)),
    );
    row(
        "  bytes allocated / forwarded packet",
        each(&|_, d| f(d.alloc_bytes, 0)),
    );
    row(
        "allocations / published packet (core)",
        each(&|_, d| f(d.allocs_per_published, 2)),
    );
    row(
        "  per subscriber copy",
        per_copy(|d| d.allocs_per_published, 2),
    );
    row(
        "core heap, KiB (end of window)",
        each(&|r, _| kib(Some(r.core_heap_end as f64))),
    );
    row(
        "core heap per subscriber, KiB (end)",
        each(&|_, d| kib(d.sub_heap_end)),
    );
    row("  same at mid-window", each(&|_, d| kib(d.sub_heap_mid)));
    row(
        "  process heap per subscriber (+ client)",
        each(&|_, d| kib(d.sub_process_heap)),
    );
    row(
        "core heap left after dropping the sim, B",
        each(&|r, _| r.core_heap_after_drop.to_string()),
    );
    row(
        "wall time of the measured window, s",
        each(&|r, _| format!("{:.2}", r.wall_s)),
    );
    println!();
    println!(
        "core heap per publisher (audio + video, K=0 run): {:.1} KiB (process: {:.1} KiB incl. its client peer)",
        base.core_heap_end as f64 / 1024.0,
        base.process_heap_end as f64 / 1024.0
    );
    println!(
        "core heap per subscriber = (core heap with K subscribers − with K=0) / K; target ≤ 300 KB"
    );
    println!(
        "core time = wall time inside MediaCore calls (incl. ~{bias:.0} ns of clock reads per call) × on-CPU share"
    );
    if args.alloc_sites > 0 {
        println!();
        println!(
            "where the core allocates (1 in {} core allocations sampled in the measured window; \
             timings above include the captures):",
            args.alloc_sites
        );
        for (r, d) in columns.iter().zip(&derived) {
            print_alloc_sites(r, d);
        }
    }

    if args.json {
        let runs_json: Vec<serde_json::Value> = columns
            .iter()
            .zip(&derived)
            .map(|(r, d)| {
                serde_json::json!({
                    "fanout": r.fanout,
                    "published_packets": r.published,
                    "forwarded_packets": r.forwarded,
                    "delivered_packets": r.delivered,
                    "mean_payload_bytes": d.avg_payload,
                    "on_cpu_share": r.on_cpu,
                    "core_ns_per_packet": d.core_ns,
                    "core_wall_ns_per_packet": d.core_wall_ns,
                    "core_ns_per_packet_by_call": {
                        "handle_datagram": d.per_call_ns[1],
                        "handle_timeout": d.per_call_ns[2],
                        "poll_transmit_event": d.per_call_ns[3],
                        "poll_timeout": d.per_call_ns[4],
                    },
                    "core_calls_per_packet": d.calls,
                    "packets_per_second_per_core": d.per_core_pps,
                    "core_ns_per_published_packet": d.core_ns_per_published,
                    "outside_core_ns_per_packet": d.outside_ns,
                    "allocations_per_packet": d.allocs,
                    "allocated_bytes_per_packet": d.alloc_bytes,
                    "allocations_per_published_packet": d.allocs_per_published,
                    "core_heap_bytes": r.core_heap_end,
                    "core_heap_per_subscriber_bytes": d.sub_heap_end,
                    "core_heap_per_subscriber_bytes_mid": d.sub_heap_mid,
                    "process_heap_per_subscriber_bytes": d.sub_process_heap,
                    "core_heap_after_drop_bytes": r.core_heap_after_drop,
                    "wall_seconds": r.wall_s,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "tool": "prism-bench-engine",
                "machine": {"cpus": m.cpus, "cpu_model": m.model, "release": m.release},
                "settings": {
                    "seconds": args.seconds, "warmup_seconds": args.warmup,
                    "payload_bytes": args.payload, "video_kbps": args.video_kbps,
                    "video_packets_per_second": video_pps, "audio": args.audio,
                    "seed": args.seed, "link_latency_ms": 10, "loss": 0.0,
                    "memory_read_at_seconds": base.sim_s_at_end,
                },
                "probe_ns_per_call": bias,
                "publisher_core_heap_bytes": base.core_heap_end,
                "publisher_process_heap_bytes": base.process_heap_end,
                "runs": runs_json,
            })
        );
    }
    Ok(())
}

/// `--callgrind`: instructions per forwarded packet, counted by valgrind.
mod callgrind {
    use std::process::Command;

    use super::Args;

    /// The core's entry points the sim calls; instructions are counted only inside them
    /// (`--toggle-collect` switches collection on at their entry and off at their exit;
    /// none of them calls another).
    const ENTRY_POINTS: [&str; 4] = [
        "prism::media::core::MediaCore::handle_datagram",
        "prism::media::core::MediaCore::handle_timeout",
        "prism::media::core::MediaCore::poll_transmit",
        "prism::media::core::MediaCore::poll_event",
    ];

    /// One run under callgrind: (instructions counted, forwarded packets in the window).
    fn measure(args: &Args, fanout: usize, seconds: u64) -> Result<(u64, u64), String> {
        let exe = std::env::current_exe().map_err(|e| format!("own path: {e}"))?;
        let out = std::env::temp_dir().join(format!(
            "prism-bench-callgrind-{}-{fanout}-{seconds}.out",
            std::process::id()
        ));
        let mut cmd = Command::new("valgrind");
        cmd.arg("--tool=callgrind")
            .arg(format!("--callgrind-out-file={}", out.display()))
            .arg("--collect-atstart=no");
        for f in ENTRY_POINTS {
            cmd.arg(format!("--toggle-collect={f}"));
        }
        cmd.arg(&exe)
            .args(["--fanout", &fanout.to_string()])
            .args(["--payload", &args.payload.to_string()])
            .args(["--video-kbps", &args.video_kbps.to_string()])
            .args(["--seconds", &seconds.to_string()])
            .args(["--warmup", &args.warmup.to_string()])
            .args(["--seed", &args.seed.to_string()])
            .args(["--repeat", "1", "--json", "--no-baseline"]);
        if !args.audio {
            cmd.arg("--no-audio");
        }
        let output = cmd
            .output()
            .map_err(|e| format!("valgrind (is it installed?): {e}"))?;
        let text = std::fs::read_to_string(&out);
        let _ = std::fs::remove_file(&out);
        if !output.status.success() {
            return Err(format!(
                "the run under callgrind failed: {}",
                String::from_utf8_lossy(&output.stderr)
                    .lines()
                    .rev()
                    .take(5)
                    .collect::<Vec<_>>()
                    .join(" / ")
            ));
        }
        let text = text.map_err(|e| format!("callgrind output: {e}"))?;
        let ir = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("totals:")
                    .or_else(|| l.strip_prefix("summary:"))
            })
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .ok_or("no totals in the callgrind output")?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let json: serde_json::Value = stdout
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str(l).ok())
            .ok_or("no JSON report from the run under callgrind")?;
        let forwarded = json["runs"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["fanout"] == fanout))
            .and_then(|r| r["forwarded_packets"].as_u64())
            .ok_or("no forwarded count in the JSON report")?;
        Ok((ir, forwarded))
    }

    pub fn run(args: &Args) -> Result<(), String> {
        // Shorter defaults: valgrind runs ~50x slower than native.
        let seconds = if args.seconds == 100 { 5 } else { args.seconds };
        let mut rows = Vec::new();
        for &payload in &args.payloads {
            let mut a = args.clone();
            a.payload = payload;
            if args.payloads.len() > 1 {
                a.video_kbps = (args.video_kbps * payload as u64 / 1200).max(1);
            }
            for &k in &args.fanouts {
                eprint!("\rcallgrind: payload {payload} B, K={k} …          ");
                let (ir1, f1) = measure(&a, k, seconds)?;
                let (ir2, f2) = measure(&a, k, 2 * seconds)?;
                if f2 <= f1 {
                    return Err(format!("K={k}: the longer run forwarded no more packets"));
                }
                let per = (ir2.saturating_sub(ir1)) as f64 / (f2 - f1) as f64;
                rows.push((payload, k, per, f2 - f1));
            }
        }
        eprintln!();
        println!("prism-bench-engine --callgrind: MediaCore instructions per forwarded packet");
        println!(
            "(Ir inside handle_datagram/handle_timeout/poll_transmit/poll_event, runs of {seconds} s and {} s simulated, difference)",
            2 * seconds
        );
        println!(
            "{:>8} {:>6} {:>14} {:>12}",
            "payload", "K", "Ir / packet", "packets"
        );
        for (p, k, per, n) in &rows {
            println!("{p:>8} {k:>6} {per:>14.0} {n:>12}");
        }
        if args.json {
            let runs: Vec<serde_json::Value> = rows
                .iter()
                .map(|(p, k, per, n)| {
                    serde_json::json!({"payload_bytes": p, "fanout": k,
                        "instructions_per_forwarded_packet": per, "packets": n})
                })
                .collect();
            println!(
                "{}",
                serde_json::json!({"tool": "prism-bench-engine", "mode": "callgrind",
                                   "seconds": [seconds, 2 * seconds], "runs": runs})
            );
        }
        Ok(())
    }
}
