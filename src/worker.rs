//! The media worker driver: one thread, one mio `Poll`, one [`Engine`].
//!
//! The only place on the media side that reads the clock. It wakes on commands
//! (a `mio::Waker` the front pokes after each bounded `try_send`) and on the
//! engine's deadline, feeds both to the engine, and reports busy time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use mio::{Events, Poll, Token, Waker};

use crate::directory::Directory;
use crate::engine::command::{Command, WorkerHandle};
use crate::engine::{Engine, EngineConfig};
use crate::metrics::Metrics;

const WAKER: Token = Token(0);

/// Most commands handled in one loop turn, so media is never starved by signaling.
const COMMANDS_PER_TURN: usize = 256;

/// A running worker.
pub struct Worker {
    /// Its command queue.
    pub handle: WorkerHandle,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts worker `cfg.worker_id`.
    pub fn spawn(
        cfg: EngineConfig,
        queue: usize,
        directory: Arc<Directory>,
        metrics: Arc<Metrics>,
        shutdown: Arc<AtomicBool>,
    ) -> std::io::Result<Self> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (handle, rx) = WorkerHandle::new(queue, waker);
        let id = cfg.worker_id;
        let engine = Engine::new(cfg, directory, metrics.clone());
        let thread = std::thread::Builder::new()
            .name(format!("prism-media-{id}"))
            .spawn(move || run(poll, rx, engine, metrics, shutdown, id))?;
        Ok(Self {
            handle,
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

fn run(
    mut poll: Poll,
    rx: Receiver<Command>,
    mut engine: Engine,
    metrics: Arc<Metrics>,
    shutdown: Arc<AtomicBool>,
    id: usize,
) {
    let mut events = Events::with_capacity(256);
    log::info!("media worker {id} started");
    let mut backlog = false;
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
        for _ in 0..COMMANDS_PER_TURN {
            match rx.try_recv() {
                Ok(cmd) => engine.handle_command(start, cmd),
                Err(_) => break,
            }
        }
        backlog = !rx.is_empty();
        engine.handle_timeout(now());
        metrics.worker_queue(id, rx.len());
        metrics.worker_busy(id, now().saturating_duration_since(start).as_secs_f64());
    }
    log::info!("media worker {id} stopped");
}
