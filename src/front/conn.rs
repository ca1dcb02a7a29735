//! One client connection of a front thread: HTTP/1.1 with keep-alive, then
//! optionally the signaling WebSocket, then an orderly close.
//!
//! State is derived after every event: the front asks [`Conn::interest`] and
//! [`Conn::is_done`] after each call, as rustls's mio example does.

use std::io::{self, Read};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tungstenite::{Error as WsError, Message};

use crate::api::{self, Ctx, Routed};
use crate::app::{App, ConnPermit};
use crate::engine::link::{FrontNotifier, SessionLink};
use crate::front::transport::Transport;
use crate::http::request::{Limits, Parsed, parse_request};
use crate::http::response::Response;
use crate::signaling::session::{Outgoing, Session, SessionLimits};

/// How long a closing connection waits for the peer's close.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

enum Phase {
    Http {
        /// When the current request's first byte arrived (or the connection opened).
        started: Instant,
        headers_done: bool,
        /// Close after the queued response is flushed.
        close_after: bool,
    },
    Ws {
        ctx: Box<WebSocketContext>,
        session: Box<Session>,
        link: SessionLink,
    },
    Closing {
        until: Instant,
        /// The write side has been shut (after the last byte was flushed).
        shut: bool,
    },
}

/// A client connection.
pub struct Conn {
    /// Slot-and-generation id (links use it).
    pub id: u64,
    transport: Transport,
    peer: SocketAddr,
    phase: Phase,
    rbuf: Vec<u8>,
    last_activity: Instant,
    done: bool,
    /// A session whose socket ended, for the front to tell the worker.
    ended: Option<Box<Session>>,
    _permit: ConnPermit,
}

impl Conn {
    /// A new connection.
    pub fn new(
        id: u64,
        transport: Transport,
        peer: SocketAddr,
        permit: ConnPermit,
        now: Instant,
    ) -> Self {
        Self {
            id,
            transport,
            peer,
            phase: Phase::Http {
                started: now,
                headers_done: false,
                close_after: false,
            },
            rbuf: Vec::new(),
            last_activity: now,
            done: false,
            ended: None,
            _permit: permit,
        }
    }

    /// The socket (registration).
    pub fn socket(&mut self) -> &mut mio::net::TcpStream {
        self.transport.socket()
    }

    /// Whether the front should drop it.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Whether it is a signaling session.
    pub fn is_ws(&self) -> bool {
        matches!(self.phase, Phase::Ws { .. })
    }

    /// What to wait for.
    pub fn interest(&self) -> mio::Interest {
        if self.transport.has_pending_output() {
            mio::Interest::READABLE | mio::Interest::WRITABLE
        } else {
            mio::Interest::READABLE
        }
    }

    /// The socket is readable: read until it would block.
    pub fn on_readable(
        &mut self,
        app: &App,
        notifier: &Arc<FrontNotifier>,
        now: Instant,
        now_unix: u64,
    ) {
        self.last_activity = now;
        match self.phase {
            Phase::Http { .. } => self.read_http(app, notifier, now, now_unix),
            Phase::Ws { .. } => self.read_ws(app, now, now_unix),
            Phase::Closing { .. } => self.drain_closing(),
        }
        self.flush();
    }

    /// Server shutdown: sessions get close 1012, plain HTTP connections end.
    pub fn shutdown_close(&mut self) {
        match self.phase {
            Phase::Ws { .. } => self.close_ws(1012, "server restart"),
            _ => self.done = true,
        }
        self.flush();
    }

    /// The socket is writable.
    pub fn on_writable(&mut self) {
        self.flush();
    }

    /// The worker has events for this session.
    pub fn on_session_events(&mut self, app: &App, now: Instant, now_unix: u64) {
        if let Phase::Ws { session, .. } = &mut self.phase {
            session.handle_events(app, now, now_unix);
            self.pump_ws_output();
        }
        self.flush();
    }

    /// Periodic check of timers.
    pub fn on_tick(&mut self, app: &App, now: Instant) {
        let limits = &app.config.limits;
        match &mut self.phase {
            Phase::Http {
                started,
                headers_done,
                ..
            } => {
                let idle = now.saturating_duration_since(self.last_activity);
                let since = now.saturating_duration_since(*started);
                let waiting_request = !self.rbuf.is_empty() || !*headers_done;
                if self.rbuf.is_empty()
                    && idle >= Duration::from_millis(limits.http_keepalive_timeout_ms)
                {
                    self.done = true;
                } else if waiting_request
                    && !self.rbuf.is_empty()
                    && since >= Duration::from_millis(limits.http_header_timeout_ms)
                {
                    // Slow-loris: a request that trickles in is cut.
                    self.respond_error(Response::error(
                        408,
                        "request_timeout",
                        "request not received in time",
                    ));
                }
            }
            Phase::Ws { session, .. } => {
                session.handle_timeout(now);
                self.pump_ws_output();
            }
            Phase::Closing { until, .. } => {
                if now >= *until {
                    self.done = true;
                }
            }
        }
        self.flush();
    }

    /// Tells the worker about a session whose socket ended (call after every
    /// event, and before dropping the connection).
    pub fn settle(&mut self, app: &App) {
        if self.done
            && let Phase::Ws { .. } = self.phase
        {
            self.end_ws();
        }
        if let Some(mut s) = self.ended.take() {
            s.handle_socket_closed(app);
        }
    }

    fn flush(&mut self) {
        if let Err(e) = self.transport.flush_out() {
            log::debug!("conn {}: write failed: {e}", self.peer);
            self.done = true;
            return;
        }
        if self.transport.has_pending_output() {
            return;
        }
        match &mut self.phase {
            Phase::Http {
                close_after: true, ..
            } => {
                self.phase = Phase::Closing {
                    until: self.last_activity + CLOSE_LINGER,
                    shut: false,
                };
                self.flush();
            }
            Phase::Closing {
                shut: shut @ false, ..
            } => {
                *shut = true;
                self.transport.send_close_notify();
                let _ = self.transport.flush_out();
                self.transport.shutdown_write();
            }
            _ => {}
        }
    }

    fn drain_closing(&mut self) {
        let mut buf = [0u8; 4096];
        loop {
            match self.transport.read(&mut buf) {
                Ok(0) => {
                    self.done = true;
                    return;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.done = true;
                    return;
                }
            }
        }
    }

    fn respond_error(&mut self, r: Response) {
        let mut out = Vec::new();
        r.write_to(&mut out, false);
        let _ = std::io::Write::write(&mut self.transport, &out);
        self.rbuf.clear();
        self.phase = Phase::Http {
            started: self.last_activity,
            headers_done: false,
            close_after: true,
        };
    }

    fn read_http(&mut self, app: &App, notifier: &Arc<FrontNotifier>, now: Instant, now_unix: u64) {
        let limits = Limits {
            header_max: app.config.limits.http_header_max,
            body_max: app.config.limits.http_body_max,
        };
        let cap = limits.header_max + limits.body_max + 4096;
        let mut buf = [0u8; 8192];
        loop {
            if matches!(
                self.phase,
                Phase::Http {
                    close_after: true,
                    ..
                }
            ) {
                // Discard what a client sends after a final response.
                self.drain_closing();
                return;
            }
            match self.transport.read(&mut buf) {
                Ok(0) => {
                    self.done = true;
                    return;
                }
                Ok(n) => {
                    if self.rbuf.is_empty()
                        && let Phase::Http { started, .. } = &mut self.phase
                    {
                        *started = now;
                    }
                    self.rbuf.extend_from_slice(&buf[..n]);
                    if self.rbuf.len() > cap {
                        self.respond_error(Response::error(
                            413,
                            "payload_too_large",
                            "request too large",
                        ));
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("conn {}: read failed: {e}", self.peer);
                    self.done = true;
                    return;
                }
            }
        }
        // Answer every complete request buffered (pipelining).
        while let Phase::Http { .. } = self.phase {
            match parse_request(&self.rbuf, limits) {
                Ok(Parsed::Partial { headers_done }) => {
                    if let Phase::Http {
                        headers_done: h, ..
                    } = &mut self.phase
                    {
                        *h = headers_done;
                    }
                    return;
                }
                Err(e) => {
                    app.metrics.http_answered(e.status());
                    self.respond_error(Response::error(e.status(), e.code(), &e.message()));
                    return;
                }
                Ok(Parsed::Complete(req, used)) => {
                    self.rbuf.drain(..used);
                    let ctx = Ctx {
                        app,
                        peer: self.peer.ip(),
                        now,
                        now_unix,
                    };
                    match api::route(&req, &ctx) {
                        Routed::Respond(r) => {
                            app.metrics.http_answered(r.status);
                            let keep = req.keep_alive();
                            let mut out = Vec::with_capacity(r.body.len() + 256);
                            r.write_to(&mut out, keep);
                            if std::io::Write::write(&mut self.transport, &out).is_err() {
                                self.done = true;
                                return;
                            }
                            self.phase = Phase::Http {
                                started: now,
                                headers_done: false,
                                close_after: !keep,
                            };
                        }
                        Routed::Upgrade => {
                            app.metrics.http_answered(101);
                            self.upgrade(app, notifier, &req, now, now_unix);
                        }
                    }
                }
            }
        }
    }

    fn upgrade(
        &mut self,
        app: &App,
        notifier: &Arc<FrontNotifier>,
        req: &crate::http::request::Request,
        now: Instant,
        now_unix: u64,
    ) {
        let key = req.header("sec-websocket-key").unwrap_or_default();
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        let head = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        );
        if std::io::Write::write(&mut self.transport, head.as_bytes()).is_err() {
            self.done = true;
            return;
        }
        let l = &app.config.limits;
        let mut cfg = WebSocketConfig::default();
        cfg.read_buffer_size = 4096;
        cfg.write_buffer_size = 0;
        cfg.max_write_buffer_size = l.ws_max_write_buffer;
        cfg.max_message_size = Some(l.max_frame_bytes);
        cfg.max_frame_size = Some(l.max_frame_bytes);
        let leftover = std::mem::take(&mut self.rbuf);
        let ctx = WebSocketContext::from_partially_read(leftover, Role::Server, Some(cfg));
        let (link, rx) = SessionLink::new(self.id, notifier.clone());
        let limits = SessionLimits {
            join_timeout: Duration::from_millis(l.join_timeout_ms),
            idle_timeout: Duration::from_millis(l.idle_timeout_ms),
            ping_interval: Duration::from_millis(l.ws_ping_interval_ms),
            messages_per_s: l.messages_per_s as f64,
            message_burst: l.message_burst,
            rate_limit_close_after: Duration::from_millis(l.rate_limit_close_after_ms),
        };
        let session = Session::new(self.id, link.clone(), rx, limits, now);
        self.phase = Phase::Ws {
            ctx: Box::new(ctx),
            session: Box::new(session),
            link,
        };
        log::debug!("websocket opened peer={}", self.peer);
        // Frames may have arrived with the upgrade request.
        self.read_ws(app, now, now_unix);
    }

    fn read_ws(&mut self, app: &App, now: Instant, now_unix: u64) {
        loop {
            let Phase::Ws { ctx, session, .. } = &mut self.phase else {
                return;
            };
            if session.is_closed() {
                break;
            }
            match ctx.read(&mut self.transport) {
                Ok(Message::Text(t)) => session.handle_text(app, now, now_unix, t.as_str()),
                Ok(Message::Binary(_)) => session.handle_binary(now),
                Ok(Message::Ping(_)) | Ok(Message::Pong(_)) | Ok(Message::Frame(_)) => {
                    session.handle_activity(now)
                }
                Ok(Message::Close(_)) => {
                    // tungstenite queued the close reply; flush it and finish.
                    let _ = ctx.flush(&mut self.transport);
                    self.end_ws();
                    return;
                }
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(WsError::Io(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(WsError::Capacity(e)) => {
                    log::info!("websocket frame too large peer={}: {e}", self.peer);
                    self.close_ws(1009, "message too big");
                    return;
                }
                Err(WsError::ConnectionClosed) | Err(WsError::AlreadyClosed) => {
                    self.end_ws();
                    return;
                }
                Err(e) => {
                    log::debug!("websocket error peer={}: {e}", self.peer);
                    match e {
                        WsError::Protocol(_) | WsError::Utf8(_) => {
                            self.close_ws(1002, "protocol error")
                        }
                        _ => self.end_ws(),
                    }
                    return;
                }
            }
            self.pump_ws_output();
        }
        self.pump_ws_output();
    }

    /// Sends what the session queued.
    fn pump_ws_output(&mut self) {
        loop {
            let Phase::Ws { ctx, session, .. } = &mut self.phase else {
                return;
            };
            let Some(out) = session.poll_output() else {
                return;
            };
            let r = match out {
                Outgoing::Text(t) => ctx.write(&mut self.transport, Message::text(t)),
                Outgoing::Ping => ctx.write(&mut self.transport, Message::Ping(Default::default())),
                Outgoing::Close(code, reason) => {
                    self.close_ws(code, &reason);
                    return;
                }
            };
            let r = r.and_then(|_| ctx.flush(&mut self.transport));
            if let Err(e) = r {
                match e {
                    WsError::Io(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    e => {
                        log::debug!("websocket write failed peer={}: {e}", self.peer);
                        self.end_ws();
                        return;
                    }
                }
            }
        }
    }

    fn close_ws(&mut self, code: u16, reason: &str) {
        if let Phase::Ws { ctx, .. } = &mut self.phase {
            let frame = CloseFrame {
                code: CloseCode::from(code),
                reason: reason.to_string().into(),
            };
            let _ = ctx.close(&mut self.transport, Some(frame));
            let _ = ctx.flush(&mut self.transport);
        }
        self.end_ws();
    }

    /// Leaves the WebSocket phase: the session learns the socket is gone, and the
    /// connection lingers until flushed and the peer closes.
    fn end_ws(&mut self) {
        let closing = Phase::Closing {
            until: self.last_activity + CLOSE_LINGER,
            shut: false,
        };
        if let Phase::Ws { session, link, .. } = std::mem::replace(&mut self.phase, closing) {
            link.mark_closed();
            self.ended = Some(session);
        }
    }
}
