//! The media worker driver: one thread, one mio `Poll`, one UDP socket, one
//! [`Engine`].
//!
//! The only place on the media side that reads the clock. It wakes on datagrams,
//! on commands (a `mio::Waker` the front pokes after each bounded `try_send`) and
//! on the engine's deadline, feeds them to the engine, sends what the engine wants
//! sent, and reports busy time. Reads and commands are bounded per loop turn so
//! neither starves the other; a turn that stopped early polls again at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use mio::{Events, Poll, Token, Waker};

use crate::directory::Directory;
use crate::engine::command::{Command, WorkerHandle};
use crate::engine::{Engine, EngineConfig, EngineControl};
use crate::media::{MediaConfig, MediaCore};
use crate::metrics::Metrics;
use crate::overload::{WINDOW_MS, WorkerLoad};
use crate::udp;

/// Where a worker's UDP socket listens and what address it advertises.
#[derive(Debug, Clone, Copy)]
pub struct UdpSettings {
    /// Address to bind (port 0: ephemeral).
    pub bind: std::net::SocketAddr,
    /// Public IP to advertise instead of the bound one (1:1 NAT).
    pub public_ip: Option<std::net::IpAddr>,
}

const WAKER: Token = Token(0);
const UDP: Token = Token(1);

/// Most datagrams read in one loop turn.
const DATAGRAMS_PER_TURN: usize = 1024;

/// Socket buffer sizes asked of the kernel (it may cap them at net.core.*mem_max).
const SOCKET_BUFFER: usize = 4 << 20;

/// Most commands handled in one loop turn, so media is never starved by signaling.
const COMMANDS_PER_TURN: usize = 256;

/// A running worker.
pub struct Worker {
    /// Its command queue.
    pub handle: WorkerHandle,
    /// The UDP address clients send media to (the ICE host candidate).
    pub media_addr: std::net::SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts worker `cfg.worker_id` without moderation or audit (tools, tests).
    pub fn spawn(
        cfg: EngineConfig,
        udp: UdpSettings,
        queue: usize,
        directory: Arc<Directory>,
        metrics: Arc<Metrics>,
        shutdown: Arc<AtomicBool>,
    ) -> std::io::Result<Self> {
        Self::spawn_with(cfg, udp, queue, directory, metrics, shutdown, None)
    }

    /// Starts worker `cfg.worker_id`, consulting `control` (moderation, audit).
    pub fn spawn_with(
        cfg: EngineConfig,
        udp: UdpSettings,
        queue: usize,
        directory: Arc<Directory>,
        metrics: Arc<Metrics>,
        shutdown: Arc<AtomicBool>,
        control: Option<EngineControl>,
    ) -> std::io::Result<Self> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (handle, rx) = WorkerHandle::new(queue, waker);
        let id = cfg.worker_id;
        let sock = socket2::Socket::new(
            socket2::Domain::for_address(udp.bind),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        let _ = sock.set_recv_buffer_size(SOCKET_BUFFER);
        let _ = sock.set_send_buffer_size(SOCKET_BUFFER);
        sock.set_nonblocking(true)?;
        sock.bind(&udp.bind.into())?;
        let std_sock: std::net::UdpSocket = sock.into();
        let local = std_sock.local_addr()?;
        let media_addr =
            std::net::SocketAddr::new(udp.public_ip.unwrap_or(local.ip()), local.port());
        let mut socket = mio::net::UdpSocket::from_std(std_sock);
        poll.registry()
            .register(&mut socket, UDP, mio::Interest::READABLE)?;
        let load = handle.load().clone();
        let media = MediaCore::new(MediaConfig::new(media_addr));
        let mut engine = Engine::new(cfg, directory, metrics.clone(), media);
        if let Some(c) = control {
            engine.set_control(c);
        }
        log::info!("media worker {id}: UDP {local}, advertised {media_addr}");
        let thread = std::thread::Builder::new()
            .name(format!("prism-media-{id}"))
            .spawn(move || {
                run(
                    poll, socket, media_addr, rx, engine, metrics, shutdown, id, &load,
                )
            })?;
        Ok(Self {
            handle,
            media_addr,
            thread: Some(thread),
        })
    }

    /// Waits for the thread to end (after the shutdown flag is set and it is woken).
    pub fn join(mut self) {
        self.handle.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[expect(
    clippy::disallowed_methods,
    reason = "the worker driver owns the media clock"
)]
fn now() -> Instant {
    Instant::now()
}

#[allow(clippy::too_many_arguments)]
fn run(
    mut poll: Poll,
    socket: mio::net::UdpSocket,
    media_addr: std::net::SocketAddr,
    rx: Receiver<Command>,
    mut engine: Engine,
    metrics: Arc<Metrics>,
    shutdown: Arc<AtomicBool>,
    id: usize,
    load: &WorkerLoad,
) {
    let mut events = Events::with_capacity(256);
    let window = Duration::from_millis(WINDOW_MS);
    let mut window_start = now();
    let mut window_busy = Duration::ZERO;
    let mut rx_batch = udp::RecvBatch::new();
    let mut out: Vec<str0m::net::Transmit> = Vec::with_capacity(1024);
    let mut backlog = false;
    let mut send_errors = 0u64;
    log::info!("media worker {id} started");
    loop {
        let timeout = if backlog {
            Duration::ZERO
        } else {
            engine
                .poll_timeout()
                .map(|t| t.saturating_duration_since(now()))
                .unwrap_or(Duration::from_secs(1))
                .min(Duration::from_secs(1))
        };
        if let Err(e) = poll.poll(&mut events, Some(timeout))
            && e.kind() != std::io::ErrorKind::Interrupted
        {
            log::error!("media worker {id}: poll failed: {e}");
            return;
        }
        let start = now();
        if shutdown.load(Ordering::Acquire) {
            engine.shutdown(start);
            break;
        }
        backlog = false;
        // Datagrams: read until the socket is empty or the turn's budget is spent
        // (edge-triggered readiness: an unfinished read must be resumed at once).
        let mut read = 0;
        loop {
            if read >= DATAGRAMS_PER_TURN {
                backlog = true;
                break;
            }
            match rx_batch.recv(&socket) {
                Ok(0) => break,
                Ok(n) => {
                    read += n;
                    for i in 0..n {
                        match rx_batch.datagram(i) {
                            Some((from, data)) => {
                                engine.handle_datagram(start, from, media_addr, data)
                            }
                            None => metrics.dropped("oversized", 1),
                        }
                    }
                    // A short batch means the socket was empty when the kernel looked;
                    // a datagram arriving since raises a new readiness edge.
                    if n < udp::BATCH {
                        break;
                    }
                }
                Err(e) => {
                    // ICMP errors surface here (ECONNREFUSED from a gone peer): not fatal.
                    log::debug!("media worker {id}: recv: {e}");
                    break;
                }
            }
        }
        for _ in 0..COMMANDS_PER_TURN {
            match rx.try_recv() {
                Ok(cmd) => engine.handle_command(start, cmd),
                Err(_) => break,
            }
        }
        backlog |= !rx.is_empty();
        engine.handle_timeout(now());
        engine.flush();
        // Everything this turn produced goes out in sendmmsg batches; the vector keeps
        // its capacity, so the steady state allocates nothing here.
        while let Some(t) = engine.poll_transmit() {
            out.push(t);
        }
        if !out.is_empty() {
            let stats = udp::send_batch(&socket, &out, |t| (&t.contents[..], t.destination));
            out.clear();
            let lost = stats.would_block + stats.failed;
            if lost > 0 {
                // A full send buffer drops datagrams, as a congested link would.
                send_errors += lost as u64;
                if send_errors.is_power_of_two() || lost > 1 {
                    log::warn!(
                        "media worker {id}: {lost} datagrams not sent ({} send buffer full, {} refused; {send_errors} so far)",
                        stats.would_block,
                        stats.failed
                    );
                }
                metrics.dropped("send_failed", lost as u64);
            }
        }
        metrics.worker_queue(id, rx.len());
        load.set_queue(rx.len());
        let end = now();
        let busy = end.saturating_duration_since(start);
        metrics.worker_busy(id, busy.as_secs_f64());
        window_busy += busy;
        let elapsed = end.saturating_duration_since(window_start);
        if elapsed >= window {
            load.set_busy_ratio(window_busy.as_secs_f64() / elapsed.as_secs_f64());
            window_start = end;
            window_busy = Duration::ZERO;
        }
    }
    log::info!("media worker {id} stopped");
}
