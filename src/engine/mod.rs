//! The media engine of one worker: its rooms and participants, sans-IO.
//!
//! Inputs are [`Engine::handle_command`] and [`Engine::handle_timeout`] with the
//! time passed in; outputs are events sent on each participant's [`SessionLink`]
//! (bounded, never blocking) and [`Engine::poll_timeout`]. The worker driver
//! (`crate::worker`) owns the clock and the sockets.
//!
//! Invariants: a participant belongs to exactly one room of this engine; every
//! `rtc.participant.left` is preceded by `rtc.track.unpublished` for each of its
//! tracks; a stale participant (socket gone) keeps its place for the reconnect
//! grace window and is removed with reason `disconnected` after it.

pub mod command;
pub mod link;
mod media_map;
mod moderate;
pub mod rooms_view;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::auth::Permissions;
use crate::directory::{Directory, WorkerId};
use crate::ids::{ChannelId, DeviceId, RequestId, SessionId, TrackId, UserUid};
use crate::media::{MediaCore, MediaEvent, MediaKind, MediaStats, NegotiationError, PcKind};
use crate::metrics::Metrics;
use crate::protocol::{
    ClientRequest, ErrorCode, IceCandidate, Joined, KickReason, Kind, LeaveReason, MediaState, Mid,
    Participant, PeerKind, PublishTrackSpec, PublishedTrackRef, Rejected, ServerMessage,
    SubscriptionSpec, Track, UnpublishReason,
};
use crate::secret::{Secret, constant_time_eq, random_hex};

use crate::audit::{AuditKind, AuditRecord, AuditSink};
use crate::moderation::Moderation;
use command::{Command, JoinGrant};
use link::{SessionEvent, SessionLink};

/// How often the engine looks for dead sockets and expired grace windows.
const TICK: Duration = Duration::from_millis(250);

/// Limits and timers of an engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// This worker's index.
    pub worker_id: WorkerId,
    /// `room_full` past this.
    pub participants_per_channel: usize,
    /// `track_limit` past this.
    pub tracks_per_participant: usize,
    /// How long a participant whose socket dropped stays (protocol-v1 §6).
    pub reconnect_grace: Duration,
    /// How long a peer connection's ICE may stay `Disconnected` (str0m reports it 15 s
    /// after the last binding request) before that connection is closed.
    pub ice_disconnect_grace: Duration,
    /// How long an empty room keeps its directory entry.
    pub room_linger: Duration,
}

/// Remote candidates held for a peer connection not offered yet (protocol-v1 §4).
const MAX_HELD_CANDIDATES: usize = 32;

/// The control-plane services an engine consults (never per packet): moderation
/// state (checked at join and publish) and the audit sink (join and leave records).
#[derive(Clone, Debug)]
pub struct EngineControl {
    /// Bans, timeouts, locks.
    pub moderation: Arc<Moderation>,
    /// Where join and leave records go.
    pub audit: AuditSink,
}

struct Member {
    session_id: SessionId,
    /// When it joined (session duration in its leave record).
    joined_at: Instant,
    user: UserUid,
    device: DeviceId,
    permissions: Permissions,
    media_state: MediaState,
    link: SessionLink,
    stale_since: Option<Instant>,
    resume_secret: Secret<String>,
    tracks: Vec<Track>,
    /// Candidates that arrived before their peer connection's offer.
    held_candidates: Vec<(PcKind, String)>,
    /// Since when each peer connection's ICE is disconnected: `[publish, subscribe]`.
    ice_lost: [Option<Instant>; 2],
}

fn pc_index(pc: PcKind) -> usize {
    match pc {
        PcKind::Publish => 0,
        PcKind::Subscribe => 1,
    }
}

impl Member {
    fn participant(&self) -> Participant {
        Participant {
            session_id: self.session_id.clone(),
            user_uid: self.user.clone(),
            device_id: self.device.clone(),
            media_state: self.media_state,
            tracks: self.tracks.clone(),
        }
    }

    fn resume_token(&self) -> Secret<String> {
        Secret::new(format!(
            "{}.{}",
            self.session_id.as_str(),
            self.resume_secret.expose()
        ))
    }
}

struct Room {
    /// In join order.
    members: Vec<Member>,
    empty_since: Option<Instant>,
}

/// One worker's rooms.
pub struct Engine {
    cfg: EngineConfig,
    directory: Arc<Directory>,
    metrics: Arc<Metrics>,
    media: MediaCore,
    rooms: HashMap<ChannelId, Room>,
    sessions: HashMap<SessionId, ChannelId>,
    /// Every published track of this worker → its publisher.
    track_owner: HashMap<TrackId, SessionId>,
    next_tick: Option<Instant>,
    /// Media counters already exported to the metrics.
    exported: MediaStats,
    /// The latest time an input brought (media events carry none of their own).
    now: Option<Instant>,
    /// Moderation and audit, when attached (the server always does).
    control: Option<EngineControl>,
}

impl Engine {
    /// An engine with no rooms.
    pub fn new(
        cfg: EngineConfig,
        directory: Arc<Directory>,
        metrics: Arc<Metrics>,
        media: MediaCore,
    ) -> Self {
        Self {
            cfg,
            directory,
            metrics,
            media,
            rooms: HashMap::new(),
            sessions: HashMap::new(),
            track_owner: HashMap::new(),
            next_tick: None,
            exported: MediaStats::default(),
            now: None,
            control: None,
        }
    }

    /// Attaches moderation state and the audit sink.
    pub fn set_control(&mut self, control: EngineControl) {
        self.control = Some(control);
    }

    /// A datagram arrived on the worker's UDP socket.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        source: std::net::SocketAddr,
        destination: std::net::SocketAddr,
        data: &[u8],
    ) {
        self.now = Some(now);
        self.media.handle_datagram(now, source, destination, data);
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<str0m::net::Transmit> {
        self.media.poll_transmit()
    }

    /// Handles the media core's events and exports its counters; the driver calls
    /// this once per loop turn.
    pub fn flush(&mut self) {
        while let Some(ev) = self.media.poll_event() {
            self.media_event(ev);
        }
        let s = self.media.stats();
        let e = &self.exported;
        let m = &self.metrics;
        m.forwarded_packets
            .inc_by(s.forwarded_packets.saturating_sub(e.forwarded_packets));
        m.forwarded_bytes
            .inc_by(s.forwarded_bytes.saturating_sub(e.forwarded_bytes));
        m.pli.inc_by(
            s.keyframe_requests_out
                .saturating_sub(e.keyframe_requests_out),
        );
        m.nack.inc_by(s.nacks_in.saturating_sub(e.nacks_in));
        m.layer_switches
            .inc_by(s.layer_switches.saturating_sub(e.layer_switches));
        for (reason, now_v, then_v) in [
            ("unroutable", s.dropped_unroutable, e.dropped_unroutable),
            ("invalid", s.dropped_invalid, e.dropped_invalid),
            (
                "unknown_stream",
                s.dropped_unknown_stream,
                e.dropped_unknown_stream,
            ),
            ("muted", s.dropped_muted, e.dropped_muted),
            ("waiting_keyframe", s.dropped_waiting, e.dropped_waiting),
            ("no_codec", s.dropped_no_codec, e.dropped_no_codec),
        ] {
            if now_v > then_v {
                m.dropped(reason, now_v - then_v);
            }
        }
        self.exported = s;
    }

    fn media_event(&mut self, ev: MediaEvent) {
        match ev {
            MediaEvent::LayerChanged {
                subscriber,
                track,
                layer,
            } => {
                if let Some(m) = self.member_mut(&subscriber) {
                    m.link
                        .send(SessionEvent::Event(ServerMessage::LayerChanged {
                            track_id: track,
                            layer: layer.map(media_map::layer_to_wire),
                        }));
                }
            }
            MediaEvent::PeerConnected { who, pc } => {
                log::debug!("peer connected session_id={who} pc={pc:?}");
                if let Some(m) = self.member_mut(&who) {
                    m.ice_lost[pc_index(pc)] = None;
                }
            }
            MediaEvent::PeerDisconnected { who, pc } => {
                log::info!("peer ICE disconnected session_id={who} pc={pc:?}");
                let now = self.now;
                if let Some(m) = self.member_mut(&who)
                    && let Some(now) = now
                {
                    m.ice_lost[pc_index(pc)].get_or_insert(now);
                    self.next_tick.get_or_insert(now + TICK);
                }
            }
            MediaEvent::TrackFlowing { track } => {
                log::debug!("track flowing track_id={track}");
            }
            MediaEvent::Speaking {
                who,
                speaking,
                level,
            } => self.speaking(&who, speaking, level),
        }
    }

    /// `rtc.speaking` to the whole room, the speaker included (its own indicator).
    fn speaking(&self, who: &SessionId, speaking: bool, level: u8) {
        let Some(room) = self.sessions.get(who).and_then(|ch| self.rooms.get(ch)) else {
            return;
        };
        let Some(m) = room.members.iter().find(|m| &m.session_id == who) else {
            return;
        };
        let ev = ServerMessage::Speaking {
            session_id: who.clone(),
            user_uid: m.user.clone(),
            speaking,
            level,
        };
        for other in &room.members {
            other.link.send(SessionEvent::Event(ev.clone()));
        }
    }

    /// Number of participants (placement load).
    pub fn participant_count(&self) -> usize {
        self.sessions.len()
    }

    /// Number of rooms.
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// Handles one command from the front.
    pub fn handle_command(&mut self, now: Instant, cmd: Command) {
        self.now = Some(now);
        match cmd {
            Command::Join {
                link,
                request_id,
                grant,
            } => self.join(now, link, request_id, grant),
            Command::Resume {
                link,
                request_id,
                channel,
                token,
            } => self.resume(link, request_id, channel, token),
            Command::Request {
                session_id,
                conn_id,
                request_id,
                request,
            } => self.request(now, session_id, conn_id, request_id, request),
            Command::RoomsView { reply } => {
                let _ = reply.try_send((self.cfg.worker_id, self.rooms_view(now)));
            }
            Command::Moderate { action, reply } => {
                let n = self.moderate(now, action);
                if let Some(reply) = reply {
                    let _ = reply.try_send(n);
                }
            }
            Command::SocketClosed {
                session_id,
                conn_id,
            } => {
                if let Some(m) = self.member_mut(&session_id)
                    && m.link.conn_id() == conn_id
                    && m.stale_since.is_none()
                {
                    m.stale_since = Some(now);
                    log::info!("participant stale session_id={session_id}");
                }
            }
        }
        self.next_tick.get_or_insert(now + TICK);
    }

    /// When [`Engine::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.next_tick, self.media.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs due media timers; expires grace windows, notices dead sockets,
    /// forgets empty rooms.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = Some(now);
        self.media.handle_timeout(now);
        if self.next_tick.is_none_or(|t| now < t) {
            return;
        }
        let grace = self.cfg.reconnect_grace;
        let ice_grace = self.cfg.ice_disconnect_grace;
        let mut expired = Vec::new();
        let mut ice_expired = Vec::new();
        for room in self.rooms.values_mut() {
            for m in &mut room.members {
                for pc in [PcKind::Publish, PcKind::Subscribe] {
                    if m.ice_lost[pc_index(pc)]
                        .is_some_and(|t| now.saturating_duration_since(t) >= ice_grace)
                    {
                        m.ice_lost[pc_index(pc)] = None;
                        ice_expired.push((m.session_id.clone(), pc));
                    }
                }
                if m.stale_since.is_none() && m.link.is_dead() {
                    m.stale_since = Some(now);
                    log::info!("participant stale session_id={}", m.session_id);
                }
                if m.stale_since
                    .is_some_and(|t| now.saturating_duration_since(t) >= grace)
                {
                    expired.push(m.session_id.clone());
                }
            }
        }
        for sid in expired {
            log::info!("reconnect grace expired session_id={sid}");
            self.remove_member(now, &sid, LeaveReason::Disconnected, None);
        }
        for (sid, pc) in ice_expired {
            self.ice_lost(now, &sid, pc);
        }
        let linger = self.cfg.room_linger;
        let worker = self.cfg.worker_id;
        let directory = &self.directory;
        self.rooms.retain(|ch, room| {
            if !room.members.is_empty() {
                return true;
            }
            let since = *room.empty_since.get_or_insert(now);
            if now.saturating_duration_since(since) >= linger {
                directory.remove(ch, worker);
                log::info!("room closed channel_id={ch}");
                false
            } else {
                true
            }
        });
        self.metrics
            .set_worker_load(worker, self.rooms.len(), self.sessions.len());
        self.directory.set_load(worker, self.sessions.len());
        self.next_tick = (!self.rooms.is_empty()).then_some(now + TICK);
    }

    /// The server is stopping: every participant's session ends here, recorded in
    /// the audit trail with reason `shutdown` (the front closes the sockets 1012).
    pub fn shutdown(&mut self, now: Instant) {
        let Some(c) = &self.control else {
            return;
        };
        for (channel, room) in &self.rooms {
            for m in &room.members {
                let qos = crate::audit::SessionQos {
                    duration_ms: u64::try_from(
                        now.saturating_duration_since(m.joined_at).as_millis(),
                    )
                    .unwrap_or(u64::MAX),
                    ..self.media.session_qos(&m.session_id)
                };
                c.audit.record(
                    AuditRecord::new(AuditKind::Leave)
                        .channel(channel)
                        .user(&m.user)
                        .device(&m.device)
                        .session(&m.session_id)
                        .reason("shutdown")
                        .qos(qos),
                );
            }
        }
    }

    /// A peer connection's ICE stayed disconnected past its grace: close it, tell the
    /// others its tracks are gone and the participant why (docs/protocol.md, "Media
    /// behaviour"). The participant itself stays: its socket may be fine, and a new
    /// peer connection brings its media back.
    fn ice_lost(&mut self, now: Instant, sid: &SessionId, pc: PcKind) {
        if !self.sessions.contains_key(sid) {
            return;
        }
        let stopped = self.media.close_peer_connection(now, sid, pc);
        let secs = self.cfg.ice_disconnect_grace.as_secs();
        log::info!(
            "peer connection closed after ICE grace session_id={sid} pc={pc:?} tracks_stopped={}",
            stopped.len()
        );
        for t in &stopped {
            self.track_owner.remove(t);
        }
        let Some(m) = self.member_mut(sid) else {
            return;
        };
        m.tracks.retain(|t| !stopped.contains(&t.track_id));
        let side = match pc {
            PcKind::Publish => "publish",
            PcKind::Subscribe => "subscribe",
        };
        m.link
            .send(SessionEvent::Event(ServerMessage::Error {
                code: ErrorCode::NegotiationFailed,
                message: format!(
                    "{side} peer connection closed: no ICE connectivity for {secs} s after it was lost; create a new peer connection and offer again"
                ),
                retry_after_ms: None,
            }));
        for track_id in stopped {
            self.broadcast_except(
                sid,
                &ServerMessage::TrackUnpublished {
                    track_id,
                    session_id: sid.clone(),
                    reason: UnpublishReason::Disconnected,
                },
            );
        }
        self.publish_snapshot_of(sid);
    }

    fn member_mut(&mut self, sid: &SessionId) -> Option<&mut Member> {
        let ch = self.sessions.get(sid)?;
        self.rooms
            .get_mut(ch)?
            .members
            .iter_mut()
            .find(|m| &m.session_id == sid)
    }

    fn reply(link: &SessionLink, request_id: RequestId, message: ServerMessage) {
        link.send(SessionEvent::Response {
            request_id,
            message,
        });
    }

    fn error(link: &SessionLink, request_id: RequestId, code: ErrorCode, message: &str) {
        Self::reply(
            link,
            request_id,
            ServerMessage::Error {
                code,
                message: message.to_string(),
                retry_after_ms: None,
            },
        );
    }

    fn join(&mut self, now: Instant, link: SessionLink, request_id: RequestId, grant: JoinGrant) {
        let channel = grant.channel.clone();
        if !self.rooms.contains_key(&channel) && !self.directory.claim(&channel, self.cfg.worker_id)
        {
            // The room was closed here and re-placed elsewhere between the front's
            // look-up and this command: the client retries and lands right.
            Self::reply(
                &link,
                request_id,
                ServerMessage::Error {
                    code: ErrorCode::ServerBusy,
                    message: "room moved to another worker, retry".into(),
                    retry_after_ms: Some(100),
                },
            );
            return;
        }
        // The front checked at the ticket and at rtc.join; checking again here closes
        // the race with a moderation change that reached this worker first.
        if let Some(c) = &self.control
            && let Err(r) = c
                .moderation
                .check_join(&channel, &grant.user, &grant.roles, 0)
        {
            self.metrics.join_failed(r.code.as_str());
            Self::error(&link, request_id, r.code, &r.message);
            if r.code == ErrorCode::Banned {
                link.send(SessionEvent::Close {
                    kicked: None,
                    code: 4403,
                    reason: "banned",
                });
            }
            return;
        }
        // Same user and device as a live session: replace it (protocol-v1 §5).
        let replaced = self.rooms.get(&channel).and_then(|r| {
            r.members
                .iter()
                .find(|m| m.user == grant.user && m.device == grant.device)
                .map(|m| m.session_id.clone())
        });
        if let Some(old) = replaced {
            log::info!(
                "session replaced channel_id={channel} user_uid={} device_id={} session_id={old}",
                grant.user,
                grant.device
            );
            self.remove_member(now, &old, LeaveReason::Replaced, Some(KickReason::Replaced));
            self.metrics.forced_disconnect("replaced");
        }
        let room = self.rooms.entry(channel.clone()).or_insert_with(|| Room {
            members: Vec::new(),
            empty_since: None,
        });
        if room.members.len() >= self.cfg.participants_per_channel {
            self.metrics.join_failed("room_full");
            Self::error(
                &link,
                request_id,
                ErrorCode::RoomFull,
                &format!(
                    "channel has {} participants, the most it takes",
                    self.cfg.participants_per_channel
                ),
            );
            return;
        }
        room.empty_since = None;
        let member = Member {
            joined_at: now,
            session_id: SessionId::mint(),
            user: grant.user.clone(),
            device: grant.device.clone(),
            permissions: grant.permissions,
            media_state: MediaState::default(),
            link,
            stale_since: None,
            resume_secret: Secret::new(random_hex(24)),
            tracks: Vec::new(),
            held_candidates: Vec::new(),
            ice_lost: [None; 2],
        };
        let others: Vec<Participant> = room.members.iter().map(Member::participant).collect();
        let me = member.participant();
        let joined = ServerMessage::Joined(Joined {
            session_id: member.session_id.clone(),
            user_uid: member.user.clone(),
            device_id: member.device.clone(),
            permissions: grant
                .permissions
                .names()
                .into_iter()
                .map(String::from)
                .collect(),
            resume_token: member.resume_token(),
            resumed: false,
            participants: others,
            // Filled in by the front, which holds the TURN secret.
            ice_servers: Vec::new(),
        });
        member.link.send(SessionEvent::Joined {
            request_id,
            message: joined,
            session_id: member.session_id.clone(),
        });
        for other in &room.members {
            other
                .link
                .send(SessionEvent::Event(ServerMessage::ParticipantJoined(
                    me.clone(),
                )));
        }
        log::info!(
            "participant joined channel_id={channel} user_uid={} device_id={} session_id={}",
            member.user,
            member.device,
            member.session_id
        );
        if let Some(c) = &self.control {
            c.audit.record(
                AuditRecord::new(AuditKind::Join)
                    .channel(&channel)
                    .user(&member.user)
                    .device(&member.device)
                    .session(&member.session_id),
            );
        }
        self.sessions
            .insert(member.session_id.clone(), channel.clone());
        room.members.push(member);
        self.publish_snapshot(&channel);
    }

    fn resume(
        &mut self,
        link: SessionLink,
        request_id: RequestId,
        channel: ChannelId,
        token: Secret<String>,
    ) {
        let found = token
            .expose()
            .split_once('.')
            .and_then(|(sid, secret)| {
                let sid = SessionId::parse(sid).ok()?;
                let m = self.member_mut(&sid)?;
                constant_time_eq(secret.as_bytes(), m.resume_secret.expose().as_bytes())
                    .then_some(sid)
            })
            .filter(|sid| self.sessions.get(sid) == Some(&channel));
        let Some(sid) = found else {
            self.metrics.join_failed("resume_failed");
            Self::error(
                &link,
                request_id,
                ErrorCode::ResumeFailed,
                "unknown, used or expired resume token; join with a new ticket",
            );
            link.send(SessionEvent::Close {
                kicked: None,
                code: 4401,
                reason: "resume failed",
            });
            return;
        };
        let room = self
            .rooms
            .get_mut(&channel)
            .expect("sessions maps to a live room");
        let others: Vec<Participant> = room
            .members
            .iter()
            .filter(|m| m.session_id != sid)
            .map(Member::participant)
            .collect();
        let m = room
            .members
            .iter_mut()
            .find(|m| m.session_id == sid)
            .expect("found above");
        if m.link.conn_id() != link.conn_id() && !m.link.is_dead() {
            // The old socket is still open (the client noticed the drop first).
            m.link.send(SessionEvent::Close {
                kicked: None,
                code: 1000,
                reason: "session resumed on another connection",
            });
            m.link.mark_closed();
        }
        link.adopt_replay(&m.link);
        m.link = link;
        m.stale_since = None;
        m.resume_secret = Secret::new(random_hex(24));
        let joined = ServerMessage::Joined(Joined {
            session_id: m.session_id.clone(),
            user_uid: m.user.clone(),
            device_id: m.device.clone(),
            permissions: m
                .permissions
                .names()
                .into_iter()
                .map(String::from)
                .collect(),
            resume_token: m.resume_token(),
            resumed: true,
            participants: others,
            // Filled in by the front, which holds the TURN secret.
            ice_servers: Vec::new(),
        });
        m.link.send(SessionEvent::Joined {
            request_id,
            message: joined,
            session_id: sid.clone(),
        });
        log::info!("session resumed channel_id={channel} session_id={sid}");
    }

    fn request(
        &mut self,
        now: Instant,
        sid: SessionId,
        conn_id: u64,
        request_id: RequestId,
        request: ClientRequest,
    ) {
        let Some(m) = self.member_mut(&sid) else {
            return;
        };
        if m.link.conn_id() != conn_id {
            return; // A request from a socket this session has moved away from.
        }
        let link = m.link.clone();
        match request {
            ClientRequest::MediaState(patch) => self.media_state(&sid, &link, request_id, &patch),
            ClientRequest::Leave => {
                Self::reply(&link, request_id, ServerMessage::Ack);
                self.remove_member(now, &sid, LeaveReason::Left, None);
                link.send(SessionEvent::Close {
                    kicked: None,
                    code: 1000,
                    reason: "left",
                });
            }
            ClientRequest::OfferPublish { sdp, tracks } => {
                self.offer_publish(now, &sid, &link, request_id, &sdp, &tracks)
            }
            ClientRequest::OfferSubscribe { sdp, subscriptions } => {
                self.offer_subscribe(now, &sid, &link, request_id, &sdp, &subscriptions)
            }
            ClientRequest::IceCandidate(c) => self.ice_candidate(&sid, &link, request_id, c),
            ClientRequest::SubscriptionUpdate {
                track_id,
                max_layer,
                paused,
            } => {
                if !self.track_in_room_of(&track_id, &sid) {
                    Self::error(
                        &link,
                        request_id,
                        ErrorCode::UnknownTrack,
                        "track_id: no such track in this channel",
                    );
                    return;
                }
                self.media.set_subscription(
                    &sid,
                    &track_id,
                    max_layer.map(media_map::layer_to_media),
                    paused,
                );
                Self::reply(&link, request_id, ServerMessage::Ack);
            }
            ClientRequest::Join(_) | ClientRequest::Ping(_) => {
                // The front answers these itself; reaching here is a front bug.
                Self::error(&link, request_id, ErrorCode::Internal, "unexpected request");
            }
        }
    }

    fn track_in_room_of(&self, track: &TrackId, sid: &SessionId) -> bool {
        match (self.track_owner.get(track), self.sessions.get(sid)) {
            (Some(owner), Some(ch)) => self.sessions.get(owner) == Some(ch),
            _ => false,
        }
    }

    fn media_state(
        &mut self,
        sid: &SessionId,
        link: &SessionLink,
        request_id: RequestId,
        patch: &crate::protocol::MediaStatePatch,
    ) {
        let Some(m) = self.member_mut(sid) else {
            return;
        };
        let changed = m.media_state.apply(patch);
        let state = m.media_state;
        let user = m.user.clone();
        let mut forwarding = Vec::new();
        for t in &mut m.tracks {
            let muted = match t.kind {
                Kind::Audio => state.audio_muted,
                Kind::Video => state.video_muted,
            };
            t.muted = muted;
            forwarding.push((t.track_id.clone(), !muted));
        }
        for (track, enabled) in forwarding {
            self.media.set_track_forwarding(&track, enabled);
        }
        self.media.set_audio_deafened(sid, state.deafened);
        Self::reply(link, request_id, ServerMessage::Ack);
        if changed {
            let ev = ServerMessage::MediaStateChanged {
                session_id: sid.clone(),
                user_uid: user,
                state,
            };
            self.broadcast_except(sid, &ev);
            self.publish_snapshot_of(sid);
        }
    }

    fn offer_publish(
        &mut self,
        now: Instant,
        sid: &SessionId,
        link: &SessionLink,
        request_id: RequestId,
        sdp: &str,
        tracks: &[PublishTrackSpec],
    ) {
        let Some(m) = self.member_mut(sid) else {
            return;
        };
        let (perms, user, state) = (m.permissions, m.user.clone(), m.media_state);
        if !tracks.is_empty()
            && let Some(c) = &self.control
            && let Some(ch) = self.sessions.get(sid)
            && let Some(t) = c.moderation.timeout_for(ch, &user, 0)
        {
            Self::error(
                link,
                request_id,
                ErrorCode::PublishBlocked,
                &format!(
                    "timed out in this channel until {}: publishing is not allowed",
                    crate::auth::rfc3339_utc_ms(t.until_ms)
                ),
            );
            return;
        }
        if let Some(t) = tracks
            .iter()
            .find(|t| !media_map::may_publish(perms, t.source))
        {
            Self::error(
                link,
                request_id,
                ErrorCode::Forbidden,
                &format!(
                    "publishing {} needs the {} permission",
                    t.source.as_str(),
                    media_map::permission_for(t.source).name()
                ),
            );
            return;
        }
        if tracks.len() > self.cfg.tracks_per_participant {
            Self::error(
                link,
                request_id,
                ErrorCode::TrackLimit,
                &format!(
                    "at most {} published tracks per participant",
                    self.cfg.tracks_per_participant
                ),
            );
            return;
        }
        let specs: Vec<(String, crate::media::TrackSource)> = tracks
            .iter()
            .map(|t| {
                (
                    t.mid.as_str().to_string(),
                    media_map::source_to_media(t.source),
                )
            })
            .collect();
        let answer = match self.media.publish_offer(now, sid, sdp, &specs) {
            Ok(a) => a,
            Err(e) => {
                self.metrics.negotiation_error.inc();
                // The reason goes to the client only: it may quote the SDP, whose
                // ICE password and fingerprint never reach a log line.
                log::info!("publish offer refused session_id={sid}");
                Self::error(
                    link,
                    request_id,
                    ErrorCode::NegotiationFailed,
                    &e.to_string(),
                );
                return;
            }
        };
        let all: Vec<Track> = answer
            .tracks
            .iter()
            .map(|ti| {
                let kind = media_map::kind_to_wire(ti.kind);
                let muted = match ti.kind {
                    MediaKind::Audio => state.audio_muted,
                    MediaKind::Video => state.video_muted,
                };
                Track {
                    track_id: ti.track_id.clone(),
                    session_id: sid.clone(),
                    user_uid: user.clone(),
                    kind,
                    source: media_map::source_to_wire(ti.source),
                    simulcast: ti.simulcast_rids.clone(),
                    codec: media_map::codec_to_wire(ti.codec),
                    muted,
                }
            })
            .collect();
        let refs: Vec<PublishedTrackRef> = answer
            .tracks
            .iter()
            .filter_map(|ti| {
                Some(PublishedTrackRef {
                    mid: Mid::parse(&ti.mid).ok()?,
                    track_id: ti.track_id.clone(),
                })
            })
            .collect();
        Self::reply(
            link,
            request_id,
            ServerMessage::AnswerPublish {
                sdp: answer.sdp,
                tracks: refs,
            },
        );
        for t in &all {
            if t.muted {
                self.media.set_track_forwarding(&t.track_id, false);
            }
        }
        for removed in &answer.removed {
            self.track_owner.remove(removed);
            self.broadcast_except(
                sid,
                &ServerMessage::TrackUnpublished {
                    track_id: removed.clone(),
                    session_id: sid.clone(),
                    reason: UnpublishReason::Unpublished,
                },
            );
        }
        for added in &answer.added {
            if let Some(t) = all.iter().find(|t| &t.track_id == added) {
                self.track_owner.insert(added.clone(), sid.clone());
                self.metrics
                    .track_published(t.kind.as_str(), t.source.as_str());
                log::info!(
                    "track published session_id={sid} track_id={added} source={}",
                    t.source.as_str()
                );
                self.broadcast_except(sid, &ServerMessage::TrackPublished(t.clone()));
            }
        }
        if let Some(m) = self.member_mut(sid) {
            m.tracks = all;
        }
        self.apply_held_candidates(sid, PcKind::Publish);
        self.publish_snapshot_of(sid);
    }

    fn offer_subscribe(
        &mut self,
        now: Instant,
        sid: &SessionId,
        link: &SessionLink,
        request_id: RequestId,
        sdp: &str,
        subscriptions: &[SubscriptionSpec],
    ) {
        // Tracks of other channels are invisible: left out here, their m-lines are
        // rejected `unknown_track` by the media core like any unnamed m-line.
        let subs: Vec<(String, TrackId, Option<crate::media::Layer>)> = subscriptions
            .iter()
            .filter(|s| self.track_in_room_of(&s.track_id, sid))
            .map(|s| {
                (
                    s.mid.as_str().to_string(),
                    s.track_id.clone(),
                    s.max_layer.map(media_map::layer_to_media),
                )
            })
            .collect();
        match self.media.subscribe_offer(now, sid, sdp, &subs) {
            Ok(answer) => {
                let rejected = answer
                    .rejected
                    .iter()
                    .filter_map(|(mid, r)| {
                        Some(Rejected {
                            mid: Mid::parse(mid).ok()?,
                            code: media_map::reject_code(*r),
                        })
                    })
                    .collect();
                Self::reply(
                    link,
                    request_id,
                    ServerMessage::AnswerSubscribe {
                        sdp: answer.sdp,
                        rejected,
                    },
                );
                self.apply_held_candidates(sid, PcKind::Subscribe);
            }
            Err(e) => {
                self.metrics.negotiation_error.inc();
                log::info!("subscribe offer refused session_id={sid}");
                Self::error(
                    link,
                    request_id,
                    ErrorCode::NegotiationFailed,
                    &e.to_string(),
                );
            }
        }
    }

    /// Applies the candidates that arrived before `pc` was offered.
    fn apply_held_candidates(&mut self, sid: &SessionId, pc: PcKind) {
        let held = match self.member_mut(sid) {
            Some(m) => {
                let (now, later): (Vec<_>, Vec<_>) = std::mem::take(&mut m.held_candidates)
                    .into_iter()
                    .partition(|(kind, _)| *kind == pc);
                m.held_candidates = later;
                now
            }
            None => return,
        };
        for (kind, c) in held {
            if self.media.add_remote_candidate(sid, kind, &c).is_err() {
                log::debug!("held candidate not used session_id={sid}");
            }
        }
    }

    fn ice_candidate(
        &mut self,
        sid: &SessionId,
        link: &SessionLink,
        request_id: RequestId,
        c: IceCandidate,
    ) {
        // Every well-formed candidate is acked (protocol-v1 §4); ICE-lite learns
        // addresses from STUN, so a candidate str0m cannot use changes nothing.
        Self::reply(link, request_id, ServerMessage::Ack);
        let mdns = c.is_mdns();
        let Some(text) = c.candidate.filter(|_| !mdns) else {
            return;
        };
        let pc = match c.pc {
            PeerKind::Publish => PcKind::Publish,
            PeerKind::Subscribe => PcKind::Subscribe,
        };
        match self.media.add_remote_candidate(sid, pc, &text) {
            Ok(()) => {}
            Err(NegotiationError::NoPeerConnection) => {
                if let Some(m) = self.member_mut(sid)
                    && m.held_candidates.len() < MAX_HELD_CANDIDATES
                {
                    m.held_candidates.push((pc, text));
                }
            }
            Err(_) => log::debug!("remote candidate not used session_id={sid}"),
        }
    }

    fn broadcast_except(&self, sid: &SessionId, ev: &ServerMessage) {
        let Some(room) = self.sessions.get(sid).and_then(|ch| self.rooms.get(ch)) else {
            return;
        };
        for m in room.members.iter().filter(|m| &m.session_id != sid) {
            m.link.send(SessionEvent::Event(ev.clone()));
        }
    }

    /// Removes a participant: its tracks unpublished, then `participant.left`, both
    /// with `reason`; `kick` sends it `rtc.kicked` and closes its socket.
    fn remove_member(
        &mut self,
        now: Instant,
        sid: &SessionId,
        reason: LeaveReason,
        kick: Option<KickReason>,
    ) {
        let Some(channel) = self.sessions.remove(sid) else {
            return;
        };
        let leave_qos = self.media.session_qos(sid);
        self.media.remove_participant(now, sid);
        let Some(room) = self.rooms.get_mut(&channel) else {
            return;
        };
        let Some(pos) = room.members.iter().position(|m| &m.session_id == sid) else {
            return;
        };
        let m = room.members.remove(pos);
        for t in &m.tracks {
            self.track_owner.remove(&t.track_id);
        }
        if let Some(k) = kick {
            let (code, text) = match k {
                KickReason::Replaced => (4409, "replaced"),
                KickReason::Banned => (4403, "banned"),
                KickReason::Kicked | KickReason::TimeoutExpiredSession => (4410, "kicked"),
            };
            m.link.send(SessionEvent::Close {
                kicked: Some((k, format!("{text} by the server"))),
                code,
                reason: text,
            });
            m.link.mark_closed();
        }
        for other in &room.members {
            for t in &m.tracks {
                other
                    .link
                    .send(SessionEvent::Event(ServerMessage::TrackUnpublished {
                        track_id: t.track_id.clone(),
                        session_id: m.session_id.clone(),
                        reason: UnpublishReason::from(reason),
                    }));
            }
            other
                .link
                .send(SessionEvent::Event(ServerMessage::ParticipantLeft {
                    session_id: m.session_id.clone(),
                    user_uid: m.user.clone(),
                    device_id: m.device.clone(),
                    reason,
                }));
        }
        log::info!(
            "participant left channel_id={channel} user_uid={} device_id={} session_id={} reason={reason:?}",
            m.user,
            m.device,
            m.session_id
        );
        if let Some(c) = &self.control {
            let qos = crate::audit::SessionQos {
                duration_ms: u64::try_from(now.saturating_duration_since(m.joined_at).as_millis())
                    .unwrap_or(u64::MAX),
                ..leave_qos
            };
            c.audit.record(
                AuditRecord::new(AuditKind::Leave)
                    .channel(&channel)
                    .user(&m.user)
                    .device(&m.device)
                    .session(&m.session_id)
                    .reason(reason.as_str())
                    .qos(qos),
            );
        }
        self.publish_snapshot(&channel);
    }

    fn publish_snapshot_of(&self, sid: &SessionId) {
        if let Some(ch) = self.sessions.get(sid) {
            self.publish_snapshot(ch);
        }
    }

    fn publish_snapshot(&self, channel: &ChannelId) {
        let list = self
            .rooms
            .get(channel)
            .map(|r| r.members.iter().map(Member::participant).collect())
            .unwrap_or_default();
        self.directory.update(channel, self.cfg.worker_id, list);
        self.directory
            .set_load(self.cfg.worker_id, self.sessions.len());
        self.metrics
            .set_worker_load(self.cfg.worker_id, self.rooms.len(), self.sessions.len());
    }
}
