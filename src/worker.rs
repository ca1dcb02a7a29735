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
use crate::engine::{Engine, EngineConfig};
use crate::media::{MediaConfig, MediaCore};
use crate::metrics::Metrics;

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
    /// Starts worker `cfg.worker_id`.
    pub fn spawn(
        cfg: EngineConfig,
        udp: UdpSettings,
        queue: usize,
        directory: Arc<Directory>,
        metrics: Arc<Metrics>,
        shutdown: Arc<AtomicBool>,
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
        let media = MediaCore::new(MediaConfig::new(media_addr));
        let engine = Engine::new(cfg, directory, metrics.clone(), media);
        log::info!("media worker {id}: UDP {local}, advertised {media_addr}");
        let thread = std::thread::Builder::new()
            .name(format!("prism-media-{id}"))
            .spawn(move || run(poll, socket, media_addr, rx, engine, metrics, shutdown, id))?;
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
) {
    let mut events = Events::with_capacity(256);
    // One buffer for every datagram: the largest UDP payload.
    let mut buf = vec![0u8; 65536];
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
            break;
        }
        backlog = false;
        // Datagrams: read until the socket is empty or the turn's budget is spent
        // (edge-triggered readiness: an unfinished read must be resumed at once).
        let mut read = 0;
        loop {
            if read == DATAGRAMS_PER_TURN {
                backlog = true;
                break;
            }
            match socket.recv_from(&mut buf) {
                Ok((n, from)) => {
                    read += 1;
                    engine.handle_datagram(start, from, media_addr, &buf[..n]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
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
        while let Some(t) = engine.poll_transmit() {
            if let Err(e) = socket.send_to(&t.contents, t.destination) {
                // A full send buffer drops the datagram, as a congested link would.
                send_errors += 1;
                if send_errors.is_power_of_two() {
                    log::warn!("media worker {id}: send failed ({send_errors} so far): {e}");
                }
                metrics.dropped("send_failed", 1);
            }
        }
        metrics.worker_queue(id, rx.len());
        metrics.worker_busy(id, now().saturating_duration_since(start).as_secs_f64());
    }
    log::info!("media worker {id} stopped");
}
