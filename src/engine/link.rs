//! The channel between one signaling session (on a front thread) and the media
//! worker that owns its room.
//!
//! Worker → session: each session has its own bounded event queue. Sending never
//! blocks the worker: when a session's queue is full the session is marked
//! *lagged* and its front thread closes the socket (1011); the participant turns
//! stale and the client resumes with a full snapshot, so nothing is silently lost.
//! A front thread learns which sessions have events through its *ready* queue,
//! which holds each connection at most once (the `notified` flag), so it is bounded
//! by the number of connections of that thread.
//!
//! The link also carries the session's replay cache (idempotency, protocol-v1 §2),
//! so a resumed session on another socket keeps it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::{Receiver, Sender};

use crate::ids::RequestId;
use crate::protocol::{KickReason, ServerMessage};

/// Events a session's queue holds at most before the session counts as lagged.
pub const SESSION_QUEUE: usize = 1024;

/// Responses remembered per session for idempotent replay.
pub const REPLAY_DEPTH: usize = 64;

/// What a worker tells a session.
#[derive(Debug)]
pub enum SessionEvent {
    /// The response to a request the session forwarded.
    Response {
        /// Echoed request id.
        request_id: RequestId,
        /// The response.
        message: ServerMessage,
    },
    /// `rtc.joined` after a join or resume; the session is now bound to `session_id`.
    Joined {
        /// Echoed request id.
        request_id: RequestId,
        /// The `rtc.joined` message.
        message: ServerMessage,
        /// The participant's session id.
        session_id: crate::ids::SessionId,
    },
    /// An event for this participant.
    Event(ServerMessage),
    /// Close the socket, after `rtc.kicked` when `kicked` is set.
    Close {
        /// Reason and message for `rtc.kicked`.
        kicked: Option<(KickReason, String)>,
        /// WebSocket close code.
        code: u16,
        /// Close reason text.
        reason: &'static str,
    },
}

/// Wakes a front thread and tells it which connection has events.
pub struct FrontNotifier {
    ready: Sender<u64>,
    waker: mio::Waker,
}

impl FrontNotifier {
    /// `ready` must be able to hold every connection of that front thread at once.
    pub fn new(ready: Sender<u64>, waker: mio::Waker) -> Self {
        Self { ready, waker }
    }

    /// Wakes the front thread (also used for shutdown).
    pub fn wake(&self) {
        if let Err(e) = self.waker.wake() {
            log::warn!("front waker failed: {e}");
        }
    }
}

/// Stored responses of a session, newest last.
#[derive(Debug, Default)]
pub struct ReplayCache {
    entries: std::collections::VecDeque<(RequestId, ServerMessage)>,
}

impl ReplayCache {
    /// The stored response to `id`, if it is among the last [`REPLAY_DEPTH`].
    pub fn get(&self, id: &RequestId) -> Option<&ServerMessage> {
        self.entries.iter().find(|(k, _)| k == id).map(|(_, m)| m)
    }

    /// Remembers a response, forgetting the oldest past [`REPLAY_DEPTH`].
    pub fn insert(&mut self, id: RequestId, message: ServerMessage) {
        if self.entries.len() == REPLAY_DEPTH {
            self.entries.pop_front();
        }
        self.entries.push_back((id, message));
    }

    /// How many responses are stored.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is stored.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

struct LinkInner {
    conn_id: u64,
    /// Unbounded in type, bounded by `queued`: an array channel would allocate all
    /// [`SESSION_QUEUE`] slots up front for every idle session.
    events: Sender<SessionEvent>,
    queued: AtomicUsize,
    notified: AtomicBool,
    lagged: AtomicBool,
    closed: AtomicBool,
    replay: Mutex<ReplayCache>,
    front: Arc<FrontNotifier>,
}

/// The worker's end (cloneable; the front keeps one too).
#[derive(Clone)]
pub struct SessionLink {
    inner: Arc<LinkInner>,
}

impl std::fmt::Debug for SessionLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionLink(conn {})", self.inner.conn_id)
    }
}

impl SessionLink {
    /// A new link for connection `conn_id` of the front behind `front`, and the
    /// receiving end the front drains.
    pub fn new(conn_id: u64, front: Arc<FrontNotifier>) -> (Self, Receiver<SessionEvent>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let link = Self {
            inner: Arc::new(LinkInner {
                conn_id,
                events: tx,
                queued: AtomicUsize::new(0),
                notified: AtomicBool::new(false),
                lagged: AtomicBool::new(false),
                closed: AtomicBool::new(false),
                replay: Mutex::new(ReplayCache::default()),
                front,
            }),
        };
        (link, rx)
    }

    /// Queues an event and wakes the front. Returns false when the session is
    /// gone or lagged (the caller treats the participant as disconnected).
    pub fn send(&self, ev: SessionEvent) -> bool {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return false;
        }
        let ok = if inner.queued.fetch_add(1, Ordering::AcqRel) >= SESSION_QUEUE {
            inner.queued.fetch_sub(1, Ordering::AcqRel);
            inner.lagged.store(true, Ordering::Release);
            false
        } else if inner.events.send(ev).is_err() {
            inner.queued.fetch_sub(1, Ordering::AcqRel);
            inner.closed.store(true, Ordering::Release);
            return false;
        } else {
            true
        };
        if !inner.notified.swap(true, Ordering::AcqRel) {
            // Cannot be full: each connection is queued at most once and the
            // queue is sized for every connection of the front thread.
            let _ = inner.front.ready.try_send(inner.conn_id);
            inner.front.wake();
        }
        ok
    }

    /// The front calls this before draining the queue, so a send racing with the
    /// drain queues the connection again.
    pub fn clear_notified(&self) {
        self.inner.notified.store(false, Ordering::Release);
    }

    /// Takes the next event (front side).
    pub fn try_recv(&self, rx: &Receiver<SessionEvent>) -> Option<SessionEvent> {
        let ev = rx.try_recv().ok()?;
        self.inner.queued.fetch_sub(1, Ordering::AcqRel);
        Some(ev)
    }

    /// Whether the worker overflowed this session's queue.
    pub fn is_lagged(&self) -> bool {
        self.inner.lagged.load(Ordering::Acquire)
    }

    /// Marks the socket gone (front side).
    pub fn mark_closed(&self) {
        self.inner.closed.store(true, Ordering::Release);
    }

    /// Whether the socket is gone or lagged: the participant is stale.
    pub fn is_dead(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire) || self.is_lagged()
    }

    /// The connection id this link belongs to.
    pub fn conn_id(&self) -> u64 {
        self.inner.conn_id
    }

    /// Runs `f` on the replay cache.
    pub fn with_replay<R>(&self, f: impl FnOnce(&mut ReplayCache) -> R) -> R {
        let mut g = match self.inner.replay.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut g)
    }

    /// Moves the replay cache of `old` into this link (resume).
    pub fn adopt_replay(&self, old: &SessionLink) {
        if Arc::ptr_eq(&self.inner, &old.inner) {
            return;
        }
        let taken = old.with_replay(std::mem::take);
        self.with_replay(|c| *c = taken);
    }
}
