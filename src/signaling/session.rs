//! One signaling WebSocket's protocol state (protocol-v1 §2, §4, §6, §8), sans-IO.
//!
//! Inputs: text and binary frames, worker events, and timeouts, each with the
//! time; outputs: [`Outgoing`] frames polled by the front. The front thread owns
//! the socket and the clock.
//!
//! Invariants:
//! - every request gets exactly one response, in request order: while a request
//!   is with the worker, later ones wait in a bounded queue;
//! - `seq` counts every server message on this socket from 1 without gaps;
//! - a malformed message never changes state or closes the socket; a flood does
//!   (rate limit, then close 4429 when sustained);
//! - responses are remembered for idempotent replay (the last 64), except the
//!   transient `rate_limited` and `server_busy`, which a retry should not get back.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::app::App;
use crate::auth::{ConsumeError, TicketError};
use crate::directory::WorkerId;
use crate::engine::command::{Command, JoinGrant};
use crate::engine::link::{SessionEvent, SessionLink};
use crate::ids::{ChannelId, RequestId, SessionId};
use crate::protocol::{
    ClientMessage, ClientRequest, ErrorCode, JoinCredential, ProtocolError, ServerMessage,
    encode_server_message, parse_client_message,
};

/// Requests that may wait behind one the worker is handling.
const MAX_QUEUED: usize = 128;

/// A frame for the front to send.
#[derive(Debug, PartialEq)]
pub enum Outgoing {
    /// A text frame.
    Text(String),
    /// A WebSocket ping.
    Ping,
    /// A close frame; the socket is done after it.
    Close(u16, String),
}

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    AwaitingJoin,
    Joining {
        channel: ChannelId,
        worker: WorkerId,
    },
    Joined {
        session_id: SessionId,
        channel: ChannelId,
        worker: WorkerId,
    },
    Closed,
}

enum Queued {
    Message(ClientMessage),
    Reply {
        request_id: Option<RequestId>,
        channel: Option<ChannelId>,
        message: ServerMessage,
    },
}

/// Timers and limits of a session (from the config).
#[derive(Debug, Clone)]
pub struct SessionLimits {
    /// `rtc.join` must succeed within this after the socket opens.
    pub join_timeout: Duration,
    /// No frame for this long: close 1001.
    pub idle_timeout: Duration,
    /// Send a WebSocket ping after this much silence.
    pub ping_interval: Duration,
    /// Sustained message rate.
    pub messages_per_s: f64,
    /// Burst.
    pub message_burst: u32,
    /// Refusals for this long in a row close the socket (4429).
    pub rate_limit_close_after: Duration,
}

/// One signaling session.
pub struct Session {
    conn_id: u64,
    link: SessionLink,
    events: Receiver<SessionEvent>,
    limits: SessionLimits,
    phase: Phase,
    seq: u64,
    out: VecDeque<Outgoing>,
    bucket: crate::ratelimit::TokenBucket,
    limited_since: Option<Instant>,
    last_refusal: Option<Instant>,
    pending: Option<RequestId>,
    queued: VecDeque<Queued>,
    opened_at: Instant,
    last_seen: Instant,
    last_ping: Instant,
}

impl Session {
    /// A session for a freshly upgraded socket.
    pub fn new(
        conn_id: u64,
        link: SessionLink,
        events: Receiver<SessionEvent>,
        limits: SessionLimits,
        now: Instant,
    ) -> Self {
        let bucket =
            crate::ratelimit::TokenBucket::new(limits.messages_per_s, limits.message_burst, now);
        Self {
            conn_id,
            link,
            events,
            limits,
            phase: Phase::AwaitingJoin,
            seq: 0,
            out: VecDeque::new(),
            bucket,
            limited_since: None,
            last_refusal: None,
            pending: None,
            queued: VecDeque::new(),
            opened_at: now,
            last_seen: now,
            last_ping: now,
        }
    }

    /// The participant's session id once joined.
    pub fn session_id(&self) -> Option<&SessionId> {
        match &self.phase {
            Phase::Joined { session_id, .. } => Some(session_id),
            _ => None,
        }
    }

    /// Whether the session has asked to close.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// The next frame to send.
    pub fn poll_output(&mut self) -> Option<Outgoing> {
        self.out.pop_front()
    }

    /// Any frame (a pong included) shows the peer is alive.
    pub fn handle_activity(&mut self, now: Instant) {
        self.last_seen = now;
    }

    /// A binary frame: a protocol error answered without closing.
    pub fn handle_binary(&mut self, now: Instant) {
        self.last_seen = now;
        let msg = error_message(
            ErrorCode::BadRequest,
            "binary frames are not accepted",
            None,
        );
        self.submit_reply(None, None, msg, now);
    }

    /// A text frame.
    pub fn handle_text(&mut self, app: &App, now: Instant, now_unix: u64, text: &str) {
        if self.phase == Phase::Closed {
            return;
        }
        self.last_seen = now;
        let parsed = parse_client_message(text);
        if let Err(wait) = self.bucket.try_take(now) {
            let (request_id, channel) = match &parsed {
                Ok(m) => (Some(m.request_id.clone()), Some(m.channel_id.clone())),
                Err(e) => (e.request_id.clone(), e.channel_id.clone()),
            };
            let retry = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
            let msg = ServerMessage::Error {
                code: ErrorCode::RateLimited,
                message: format!(
                    "more than {} messages per second",
                    self.limits.messages_per_s
                ),
                retry_after_ms: Some(retry),
            };
            self.submit_reply(request_id, channel, msg, now);
            let since = match (self.limited_since, self.last_refusal) {
                (Some(s), Some(last))
                    if now.saturating_duration_since(last) <= Duration::from_secs(1) =>
                {
                    s
                }
                _ => now,
            };
            self.limited_since = Some(since);
            self.last_refusal = Some(now);
            if now.saturating_duration_since(since) >= self.limits.rate_limit_close_after {
                self.close(4429, "rate limited");
            }
            return;
        }
        match parsed {
            Err(e) => {
                let ProtocolError {
                    code,
                    message,
                    request_id,
                    channel_id,
                } = e;
                let msg = error_message(code, &message, None);
                self.submit_reply(request_id, channel_id, msg, now);
            }
            Ok(m) => {
                if self.pending.is_some() || !self.queued.is_empty() {
                    if self.queued.len() >= MAX_QUEUED {
                        let msg = ServerMessage::Error {
                            code: ErrorCode::RateLimited,
                            message: "too many requests waiting for an answer".into(),
                            retry_after_ms: Some(100),
                        };
                        let (r, c) = (Some(m.request_id.clone()), Some(m.channel_id.clone()));
                        self.emit(r.as_ref(), c.as_ref(), &msg);
                        return;
                    }
                    self.queued.push_back(Queued::Message(m));
                } else {
                    self.dispatch(app, now, now_unix, m);
                }
            }
        }
    }

    /// Drains the worker's events for this session.
    pub fn handle_events(&mut self, app: &App, now: Instant, now_unix: u64) {
        self.link.clear_notified();
        while let Some(ev) = self.link.try_recv(&self.events) {
            self.handle_event(app, now, now_unix, ev);
        }
        if self.link.is_lagged() && self.phase != Phase::Closed {
            log::warn!("signaling session lagged: closing so it resumes");
            self.close(1011, "session lagged");
        }
    }

    fn handle_event(&mut self, app: &App, now: Instant, now_unix: u64, ev: SessionEvent) {
        match ev {
            SessionEvent::Response {
                request_id,
                message,
            } => {
                if self.pending.as_ref() == Some(&request_id) {
                    if matches!(self.phase, Phase::Joining { .. })
                        && matches!(message, ServerMessage::Error { .. })
                    {
                        self.phase = Phase::AwaitingJoin;
                    }
                    self.pending = None;
                    let channel = self.channel().cloned();
                    self.respond(Some(request_id), channel, message);
                    self.drain_queue(app, now, now_unix);
                }
            }
            SessionEvent::Joined {
                request_id,
                message,
                session_id,
            } => {
                if let Phase::Joining { channel, worker } = self.phase.clone() {
                    // Fresh TURN credentials for this user, minted here where the
                    // config is (protocol-v1 §5: `ice_servers` are the current ones).
                    let message = match message {
                        ServerMessage::Joined(mut j) => {
                            j.ice_servers = app.ice_servers_for(&j.user_uid, now_unix);
                            ServerMessage::Joined(j)
                        }
                        other => other,
                    };
                    log::info!(
                        "signaling joined channel_id={channel} session_id={session_id} conn={}",
                        self.conn_id
                    );
                    self.phase = Phase::Joined {
                        session_id,
                        channel: channel.clone(),
                        worker,
                    };
                    app.metrics.signaling_sessions.inc();
                    self.pending = None;
                    self.respond(Some(request_id), Some(channel), message);
                    self.drain_queue(app, now, now_unix);
                }
            }
            SessionEvent::Event(message) => {
                let channel = self.channel().cloned();
                self.emit(None, channel.as_ref(), &message);
            }
            SessionEvent::Close {
                kicked,
                code,
                reason,
            } => {
                if let Some((reason, message)) = kicked {
                    let channel = self.channel().cloned();
                    self.emit(
                        None,
                        channel.as_ref(),
                        &ServerMessage::Kicked { reason, message },
                    );
                }
                self.close(code, reason);
            }
        }
    }

    /// Join timeout, idle timeout, keep-alive pings.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.phase == Phase::Closed {
            return;
        }
        let joined = matches!(self.phase, Phase::Joined { .. });
        if !joined && now.saturating_duration_since(self.opened_at) >= self.limits.join_timeout {
            self.close(4408, "join timeout");
            return;
        }
        if now.saturating_duration_since(self.last_seen) >= self.limits.idle_timeout {
            self.close(1001, "idle timeout");
            return;
        }
        if now.saturating_duration_since(self.last_seen) >= self.limits.ping_interval
            && now.saturating_duration_since(self.last_ping) >= self.limits.ping_interval
        {
            self.last_ping = now;
            self.out.push_back(Outgoing::Ping);
        }
    }

    /// The socket is gone: the participant turns stale (protocol-v1 §6).
    pub fn handle_socket_closed(&mut self, app: &App) {
        self.link.mark_closed();
        if let Phase::Joined {
            session_id, worker, ..
        } = &self.phase
        {
            app.metrics.signaling_sessions.dec();
            if let Some(w) = app.workers.get(*worker) {
                // If the queue is full, the engine's tick notices the dead link.
                let _ = w.try_send(Command::SocketClosed {
                    session_id: session_id.clone(),
                    conn_id: self.conn_id,
                });
            }
        }
        self.phase = Phase::Closed;
    }

    fn channel(&self) -> Option<&ChannelId> {
        match &self.phase {
            Phase::Joining { channel, .. } | Phase::Joined { channel, .. } => Some(channel),
            _ => None,
        }
    }

    fn close(&mut self, code: u16, reason: &str) {
        if self.phase != Phase::Closed {
            self.out
                .push_back(Outgoing::Close(code, reason.to_string()));
            self.phase = Phase::Closed;
            self.queued.clear();
        }
    }

    fn drain_queue(&mut self, app: &App, now: Instant, now_unix: u64) {
        while self.pending.is_none() && self.phase != Phase::Closed {
            match self.queued.pop_front() {
                Some(Queued::Message(m)) => self.dispatch(app, now, now_unix, m),
                Some(Queued::Reply {
                    request_id,
                    channel,
                    message,
                }) => self.respond(request_id, channel, message),
                None => break,
            }
        }
    }

    /// A reply computed at arrival, sent in order behind any waiting request.
    fn submit_reply(
        &mut self,
        request_id: Option<RequestId>,
        channel: Option<ChannelId>,
        message: ServerMessage,
        _now: Instant,
    ) {
        if self.pending.is_some() || !self.queued.is_empty() {
            if self.queued.len() < MAX_QUEUED {
                self.queued.push_back(Queued::Reply {
                    request_id,
                    channel,
                    message,
                });
            }
        } else {
            self.respond(request_id, channel, message);
        }
    }

    fn dispatch(&mut self, app: &App, now: Instant, now_unix: u64, m: ClientMessage) {
        let ClientMessage {
            request_id,
            channel_id,
            request,
        } = m;
        if let Some(stored) = self.link.with_replay(|c| c.get(&request_id).cloned()) {
            let channel = self.channel().cloned().or(Some(channel_id));
            self.emit(Some(&request_id), channel.as_ref(), &stored);
            return;
        }
        if let ClientRequest::Ping(payload) = request {
            let channel = self.channel().cloned().or(Some(channel_id));
            self.respond(Some(request_id), channel, ServerMessage::Pong(payload));
            return;
        }
        if let ClientRequest::Join(cred) = request {
            if !matches!(self.phase, Phase::AwaitingJoin) {
                let channel = self.channel().cloned();
                self.respond(
                    Some(request_id),
                    channel,
                    error_message(
                        ErrorCode::AlreadyJoined,
                        "this socket has joined already",
                        None,
                    ),
                );
                return;
            }
            self.join(app, now_unix, request_id, channel_id, cred);
            return;
        }
        let Phase::Joined {
            session_id,
            channel,
            worker,
        } = self.phase.clone()
        else {
            self.respond(
                Some(request_id),
                Some(channel_id),
                error_message(ErrorCode::NotJoined, "send rtc.join first", None),
            );
            return;
        };
        if channel_id != channel {
            self.respond(
                Some(request_id),
                Some(channel),
                error_message(
                    ErrorCode::WrongChannel,
                    "channel_id: this socket is joined to another channel",
                    None,
                ),
            );
            return;
        }
        let cmd = Command::Request {
            session_id,
            conn_id: self.conn_id,
            request_id: request_id.clone(),
            request,
        };
        self.send_to_worker(app, worker, request_id, Some(channel), cmd);
        let _ = now;
    }

    fn send_to_worker(
        &mut self,
        app: &App,
        worker: WorkerId,
        request_id: RequestId,
        channel: Option<ChannelId>,
        cmd: Command,
    ) -> bool {
        let sent = app.workers.get(worker).map(|w| w.try_send(cmd).is_ok());
        if sent == Some(true) {
            self.pending = Some(request_id);
            true
        } else {
            let msg = ServerMessage::Error {
                code: ErrorCode::ServerBusy,
                message: "the media worker is overloaded; retry".into(),
                retry_after_ms: Some(1000),
            };
            self.respond(Some(request_id), channel, msg);
            false
        }
    }

    fn join(
        &mut self,
        app: &App,
        now_unix: u64,
        request_id: RequestId,
        channel: ChannelId,
        cred: JoinCredential,
    ) {
        let fail = |s: &mut Self, code: ErrorCode, msg: &str, close: bool| {
            app.metrics.join_failed(code.as_str());
            s.respond(
                Some(request_id.clone()),
                Some(channel.clone()),
                error_message(code, msg, None),
            );
            if close {
                s.close(4401, code.as_str());
            }
        };
        match cred {
            JoinCredential::Ticket(ticket) => {
                let claims =
                    match app
                        .tickets
                        .verify(ticket.expose(), now_unix, &app.config.server_id)
                    {
                        Ok(c) => c,
                        Err(TicketError::Expired) => {
                            return fail(
                                self,
                                ErrorCode::TicketExpired,
                                "the join ticket has expired",
                                true,
                            );
                        }
                        Err(_) => {
                            return fail(
                                self,
                                ErrorCode::TicketInvalid,
                                "the join ticket is not valid",
                                true,
                            );
                        }
                    };
                if claims.channel_id != channel {
                    return fail(
                        self,
                        ErrorCode::WrongChannel,
                        "channel_id: the ticket is for another channel",
                        false,
                    );
                }
                // Before the ticket is consumed: a locked channel's ticket stays
                // usable once the lock is lifted.
                if let Err(r) = app.moderation.check_join(
                    &channel,
                    &claims.user_uid,
                    &claims.roles,
                    now_unix.saturating_mul(1000),
                ) {
                    app.metrics.join_failed(r.code.as_str());
                    self.respond(
                        Some(request_id.clone()),
                        Some(channel.clone()),
                        error_message(r.code, &r.message, None),
                    );
                    if r.code == ErrorCode::Banned {
                        self.close(4403, "banned");
                    }
                    return;
                }
                // Overload shedding, also before the ticket is spent: the client
                // retries with the same ticket after `retry_after_ms`.
                let worker = app.directory.place(&channel);
                if app.worker_saturated(worker) {
                    app.metrics.join_failed(ErrorCode::ServerBusy.as_str());
                    let msg = ServerMessage::Error {
                        code: ErrorCode::ServerBusy,
                        message: "the media worker for this channel is overloaded; retry".into(),
                        retry_after_ms: Some(crate::overload::RETRY_AFTER_MS),
                    };
                    self.respond(Some(request_id), Some(channel), msg);
                    return;
                }
                match app
                    .used_tickets
                    .try_consume(&claims.jti, claims.exp, now_unix)
                {
                    Ok(()) => {}
                    Err(ConsumeError::Used) => {
                        return fail(
                            self,
                            ErrorCode::TicketUsed,
                            "the join ticket was used already",
                            true,
                        );
                    }
                    Err(_) => {
                        app.metrics.join_failed(ErrorCode::ServerBusy.as_str());
                        let msg = ServerMessage::Error {
                            code: ErrorCode::ServerBusy,
                            message: "the ticket store is busy; retry".into(),
                            retry_after_ms: Some(1000),
                        };
                        self.respond(Some(request_id), Some(channel), msg);
                        return;
                    }
                }
                let cmd = Command::Join {
                    link: self.link.clone(),
                    request_id: request_id.clone(),
                    grant: JoinGrant {
                        channel: channel.clone(),
                        user: claims.user_uid,
                        device: claims.device_id,
                        permissions: claims.permissions,
                        roles: claims.roles,
                    },
                };
                if self.send_to_worker(app, worker, request_id, Some(channel.clone()), cmd) {
                    self.phase = Phase::Joining { channel, worker };
                } else {
                    app.metrics.join_failed(ErrorCode::ServerBusy.as_str());
                }
            }
            JoinCredential::Resume(token) => {
                let Some(worker) = app.directory.owner(&channel) else {
                    return fail(
                        self,
                        ErrorCode::ResumeFailed,
                        "unknown, used or expired resume token; join with a new ticket",
                        true,
                    );
                };
                let cmd = Command::Resume {
                    link: self.link.clone(),
                    request_id: request_id.clone(),
                    channel: channel.clone(),
                    token,
                };
                if self.send_to_worker(app, worker, request_id, Some(channel.clone()), cmd) {
                    self.phase = Phase::Joining { channel, worker };
                }
            }
        }
    }

    /// Sends a response and remembers it for replay.
    fn respond(
        &mut self,
        request_id: Option<RequestId>,
        channel: Option<ChannelId>,
        message: ServerMessage,
    ) {
        self.emit(request_id.as_ref(), channel.as_ref(), &message);
        let transient = matches!(
            message,
            ServerMessage::Error {
                code: ErrorCode::RateLimited | ErrorCode::ServerBusy,
                ..
            }
        );
        if let (Some(id), false) = (request_id, transient) {
            self.link.with_replay(|c| c.insert(id, message));
        }
    }

    fn emit(
        &mut self,
        request_id: Option<&RequestId>,
        channel: Option<&ChannelId>,
        message: &ServerMessage,
    ) {
        self.seq += 1;
        let text = encode_server_message(message, request_id, channel, self.seq);
        self.out.push_back(Outgoing::Text(text));
    }
}

fn error_message(code: ErrorCode, message: &str, retry_after_ms: Option<u64>) -> ServerMessage {
    ServerMessage::Error {
        code,
        message: message.to_string(),
        retry_after_ms,
    }
}
