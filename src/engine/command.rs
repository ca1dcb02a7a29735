//! Commands from the signaling front to a media worker, and the worker's handle.
//!
//! The queue is bounded ([`WorkerHandle::try_send`] never blocks): when a worker
//! is saturated the front answers `server_busy` and the worker's loop is untouched.

use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::auth::Permissions;
use crate::engine::link::SessionLink;
use crate::ids::{ChannelId, DeviceId, RequestId, SessionId, UserUid};
use crate::protocol::ClientRequest;
use crate::secret::Secret;

/// What a valid, unused join ticket grants.
#[derive(Debug, Clone)]
pub struct JoinGrant {
    /// The channel.
    pub channel: ChannelId,
    /// Who.
    pub user: UserUid,
    /// Which device.
    pub device: DeviceId,
    /// What they may publish.
    pub permissions: Permissions,
    /// Their roles (moderation exemptions).
    pub roles: Vec<String>,
}

/// What a moderation action does to live sessions.
#[derive(Debug, Clone)]
pub enum ModerateAction {
    /// Cut the user's sessions in `channel` (only `device`'s when given).
    Kick {
        /// Where.
        channel: ChannelId,
        /// Who.
        user: UserUid,
        /// Which device, if only one.
        device: Option<DeviceId>,
    },
    /// Cut the user's sessions in `channel`, or everywhere when `None`.
    Ban {
        /// Who.
        user: UserUid,
        /// Where (`None`: every channel).
        channel: Option<ChannelId>,
    },
    /// Unpublish the user's tracks in `channel`; with `listen_only: false` also
    /// cut the sessions.
    Timeout {
        /// Where.
        channel: ChannelId,
        /// Who.
        user: UserUid,
        /// Stay as a listener, or be cut.
        listen_only: bool,
    },
}

/// A request for a media worker.
#[derive(Debug)]
pub enum Command {
    /// `rtc.join` with a ticket the front has verified and consumed.
    Join {
        /// The session's link.
        link: SessionLink,
        /// Echo.
        request_id: RequestId,
        /// What the ticket grants.
        grant: JoinGrant,
    },
    /// `rtc.join` with a resume token.
    Resume {
        /// The new socket's link.
        link: SessionLink,
        /// Echo.
        request_id: RequestId,
        /// The envelope's channel (routes the command).
        channel: ChannelId,
        /// The token presented.
        token: Secret<String>,
    },
    /// Any other request of a joined session.
    Request {
        /// Whose.
        session_id: SessionId,
        /// The link it came from (a stale socket's late request is refused).
        conn_id: u64,
        /// Echo.
        request_id: RequestId,
        /// What.
        request: ClientRequest,
    },
    /// A moderation action on live sessions (sent to every worker that may hold
    /// them). `reply` gets how many sessions it cut or changed.
    Moderate {
        /// What to do.
        action: ModerateAction,
        /// Answered once with the count (never blocks: sized for every worker).
        reply: Option<Sender<usize>>,
    },
    /// The admin rooms view: the worker answers with its index and its rooms
    /// (never blocks: the reply channel is sized for every worker).
    RoomsView {
        /// Where the answer goes.
        reply: Sender<(usize, Vec<crate::engine::rooms_view::RoomView>)>,
    },
    /// The session's socket closed (or lagged): the participant turns stale.
    SocketClosed {
        /// Whose.
        session_id: SessionId,
        /// Which socket (a resumed session ignores its old socket's close).
        conn_id: u64,
    },
}

/// The front's handle to one worker: its bounded queue and its waker.
#[derive(Clone)]
pub struct WorkerHandle {
    tx: Sender<Command>,
    waker: Arc<mio::Waker>,
    load: Arc<crate::overload::WorkerLoad>,
}

/// The worker's queue is full.
#[derive(Debug)]
pub struct WorkerBusy(pub Command);

impl WorkerHandle {
    /// A queue of `capacity` commands waking `waker`.
    pub fn new(capacity: usize, waker: Arc<mio::Waker>) -> (Self, Receiver<Command>) {
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        let load = Arc::default();
        (Self { tx, waker, load }, rx)
    }

    /// The worker's reported load (overload shedding).
    pub fn load(&self) -> &Arc<crate::overload::WorkerLoad> {
        &self.load
    }

    /// Queues a command without blocking.
    pub fn try_send(&self, cmd: Command) -> Result<(), WorkerBusy> {
        match self.tx.try_send(cmd) {
            Ok(()) => {
                let _ = self.waker.wake();
                Ok(())
            }
            Err(TrySendError::Full(c)) | Err(TrySendError::Disconnected(c)) => Err(WorkerBusy(c)),
        }
    }

    /// Commands waiting (overload signal).
    pub fn queue_len(&self) -> usize {
        self.tx.len()
    }

    /// Wakes the worker (shutdown).
    pub fn wake(&self) {
        let _ = self.waker.wake();
    }
}
