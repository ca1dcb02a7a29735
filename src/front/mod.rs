//! The signaling front: a pool of threads, each a mio loop over many non-blocking
//! client connections (HTTP/1.1, TLS, WebSocket) — never a thread per connection.
//!
//! Every thread polls a clone of the one listener (the kernel hands each new
//! connection to one of them), its own connections, and a waker that workers poke
//! through [`FrontNotifier`] when a session has events. Timers are checked on a
//! coarse tick ([`TICK`]): the signaling timers are all hundreds of ms or more.

pub mod conn;
pub mod transport;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::Receiver;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::app::App;
use crate::engine::link::FrontNotifier;
use conn::Conn;
use transport::Transport;

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);

/// Timer granularity of the front.
pub const TICK: Duration = Duration::from_millis(100);

/// TLS settings shared by the front threads (swapped on SIGHUP).
pub type TlsConfig = Arc<std::sync::RwLock<Option<Arc<rustls::ServerConfig>>>>;

/// A running front thread.
pub struct FrontThread {
    notifier: Arc<FrontNotifier>,
    thread: Option<JoinHandle<()>>,
}

impl FrontThread {
    /// Starts a front thread over a clone of `listener`.
    pub fn spawn(
        index: usize,
        listener: &std::net::TcpListener,
        app: Arc<App>,
        tls: TlsConfig,
        shutdown: Arc<AtomicBool>,
    ) -> std::io::Result<Self> {
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let max = app.config.limits.max_connections.max(1);
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(max);
        let notifier = Arc::new(FrontNotifier::new(ready_tx, waker));
        let std_listener = listener.try_clone()?;
        std_listener.set_nonblocking(true)?;
        let mut listener = TcpListener::from_std(std_listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let n = notifier.clone();
        let thread = std::thread::Builder::new()
            .name(format!("prism-front-{index}"))
            .spawn(move || {
                let mut front = Front {
                    poll,
                    listener,
                    app,
                    tls,
                    notifier: n,
                    ready: ready_rx,
                    slots: Vec::new(),
                    free: Vec::new(),
                    shutdown,
                };
                front.run();
            })?;
        Ok(Self {
            notifier,
            thread: Some(thread),
        })
    }

    /// Wakes the thread (shutdown) and waits for it.
    pub fn join(mut self) {
        self.notifier.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Slot {
    generation: u32,
    conn: Option<Conn>,
}

struct Front {
    poll: Poll,
    listener: TcpListener,
    app: Arc<App>,
    tls: TlsConfig,
    notifier: Arc<FrontNotifier>,
    ready: Receiver<u64>,
    slots: Vec<Slot>,
    free: Vec<usize>,
    shutdown: Arc<AtomicBool>,
}

#[expect(
    clippy::disallowed_methods,
    reason = "the front thread owns the signaling clock"
)]
fn clock() -> (Instant, u64) {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    (Instant::now(), unix)
}

fn conn_id(index: usize, generation: u32) -> u64 {
    (u64::from(generation) << 32) | index as u64
}

impl Front {
    fn run(&mut self) {
        let mut events = Events::with_capacity(1024);
        let mut next_tick = clock().0 + TICK;
        loop {
            let (now, _) = clock();
            let timeout = next_tick.saturating_duration_since(now);
            if let Err(e) = self.poll.poll(&mut events, Some(timeout))
                && e.kind() != std::io::ErrorKind::Interrupted
            {
                log::error!("front poll failed: {e}");
                return;
            }
            if self.shutdown.load(Ordering::Acquire) {
                self.close_all();
                return;
            }
            let (now, now_unix) = clock();
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(now),
                    WAKER => {}
                    Token(i) => {
                        let app = self.app.clone();
                        let notifier = self.notifier.clone();
                        self.with_conn(i, |c| {
                            if ev.is_writable() {
                                c.on_writable();
                            }
                            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                                c.on_readable(&app, &notifier, now, now_unix);
                            }
                        });
                    }
                }
            }
            // Sessions with worker events (each queued at most once).
            while let Ok(id) = self.ready.try_recv() {
                let index = (id & 0xffff_ffff) as usize;
                let generation = (id >> 32) as u32;
                if self
                    .slots
                    .get(index)
                    .is_some_and(|s| s.generation == generation)
                {
                    let app = self.app.clone();
                    self.with_conn(index, |c| c.on_session_events(&app, now, now_unix));
                }
            }
            if now >= next_tick {
                next_tick = now + TICK;
                let app = self.app.clone();
                for i in 0..self.slots.len() {
                    if self.slots[i].conn.is_some() {
                        self.with_conn(i, |c| c.on_tick(&app, now));
                    }
                }
            }
        }
    }

    /// Runs `f` on a connection, then settles its registration or drops it.
    fn with_conn(&mut self, index: usize, f: impl FnOnce(&mut Conn)) {
        let Some(conn) = self.slots.get_mut(index).and_then(|s| s.conn.as_mut()) else {
            return;
        };
        f(conn);
        conn.settle(&self.app);
        if conn.is_done() {
            self.remove(index);
        } else {
            let interest = conn.interest();
            if let Err(e) = self
                .poll
                .registry()
                .reregister(conn.socket(), Token(index), interest)
            {
                log::debug!("reregister failed: {e}");
                self.remove(index);
            }
        }
    }

    fn remove(&mut self, index: usize) {
        if let Some(mut conn) = self.slots.get_mut(index).and_then(|s| s.conn.take()) {
            let _ = self.poll.registry().deregister(conn.socket());
            conn.settle(&self.app);
            self.app.metrics.signaling_connections.dec();
            self.slots[index].generation = self.slots[index].generation.wrapping_add(1);
            self.free.push(index);
        }
    }

    fn accept(&mut self, now: Instant) {
        loop {
            let (mut sock, peer) = match self.listener.accept() {
                Ok(x) => x,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: back off until the next event.
                    log::warn!("accept failed: {e}");
                    return;
                }
            };
            let Some(permit) = self.app.connections.try_acquire(peer.ip()) else {
                log::debug!("connection refused (limit) peer={peer}");
                let _ = std::io::Write::write(
                    &mut sock,
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                continue;
            };
            let _ = sock.set_nodelay(true);
            let max_out = self.app.config.limits.ws_max_write_buffer;
            let tls = match self.tls.read() {
                Ok(g) => g.clone(),
                Err(p) => p.into_inner().clone(),
            };
            let transport = match tls {
                Some(cfg) => match rustls::ServerConnection::new(cfg) {
                    Ok(c) => Transport::tls(sock, c, max_out),
                    Err(e) => {
                        log::warn!("TLS session setup failed: {e}");
                        continue;
                    }
                },
                None => Transport::plain(sock, max_out),
            };
            let index = match self.free.pop() {
                Some(i) => i,
                None => {
                    self.slots.push(Slot {
                        generation: 0,
                        conn: None,
                    });
                    self.slots.len() - 1
                }
            };
            let id = conn_id(index, self.slots[index].generation);
            let mut conn = Conn::new(id, transport, peer, permit, now);
            if let Err(e) =
                self.poll
                    .registry()
                    .register(conn.socket(), Token(index), Interest::READABLE)
            {
                log::warn!("register failed: {e}");
                self.free.push(index);
                continue;
            }
            self.slots[index].conn = Some(conn);
            self.app.metrics.signaling_connections.inc();
        }
    }

    /// Shutdown: close every signaling session with 1012 (server restart).
    fn close_all(&mut self) {
        for i in 0..self.slots.len() {
            self.with_conn(i, |c| c.shutdown_close());
        }
        // Give the close frames a moment to leave.
        let deadline = clock().0 + Duration::from_millis(500);
        let mut events = Events::with_capacity(256);
        while clock().0 < deadline && self.slots.iter().any(|s| s.conn.is_some()) {
            let _ = self.poll.poll(&mut events, Some(Duration::from_millis(50)));
            for ev in events.iter() {
                let Token(i) = ev.token();
                if i < self.slots.len() {
                    self.with_conn(i, |c| c.on_writable());
                }
            }
        }
    }
}
