//! Audit records (http-api.md "Audit records"): joins and leaves with their reason,
//! moderation actions with actor and reason, and per-session QoS aggregates at
//! leave. Only operational metadata: never media, SDP, tokens or ICE credentials —
//! the record type has no field that could carry them.
//!
//! Producers (media workers, the HTTP API, the housekeeping thread) hand records to
//! an [`AuditSink`], which queues them on the store without waiting; a full store
//! queue drops the record and counts it in `rtc_store_dropped_total`, so a worker
//! never blocks on the disk. Moderation actions are written together with the
//! change they record, in one durable transaction (`StoreWrite::Moderation`).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::ids::{ChannelId, DeviceId, SessionId, UserUid};
use crate::metrics::Metrics;
use crate::store::{StoreHandle, StoreWrite};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditKind {
    /// A participant joined a channel.
    Join,
    /// A participant left (`reason`: left, disconnected, kicked, banned, replaced,
    /// timeout).
    Leave,
    /// An admin kicked a user.
    Kick,
    /// An admin banned a user.
    Ban,
    /// An admin lifted a ban.
    Unban,
    /// An admin timed a user out.
    Timeout,
    /// An admin lifted a timeout.
    TimeoutLifted,
    /// An admin locked a channel.
    Lock,
    /// An admin unlocked a channel.
    Unlock,
    /// A ban reached its expiry.
    BanLapsed,
    /// A timeout reached its end.
    TimeoutLapsed,
}

impl AuditKind {
    /// The stored and reported name.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::Join => "join",
            AuditKind::Leave => "leave",
            AuditKind::Kick => "kick",
            AuditKind::Ban => "ban",
            AuditKind::Unban => "unban",
            AuditKind::Timeout => "timeout",
            AuditKind::TimeoutLifted => "timeout_lifted",
            AuditKind::Lock => "lock",
            AuditKind::Unlock => "unlock",
            AuditKind::BanLapsed => "ban_lapsed",
            AuditKind::TimeoutLapsed => "timeout_lapsed",
        }
    }
}

/// Aggregate media counters of one participant session, recorded at leave.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SessionQos {
    /// How long the session lasted, ms.
    pub duration_ms: u64,
    /// RTP packets received from the participant.
    pub packets_in: u64,
    /// Their payload bytes.
    pub bytes_in: u64,
    /// RTP packets forwarded to the participant.
    pub packets_out: u64,
    /// Their payload bytes.
    pub bytes_out: u64,
    /// NACKs the participant sent.
    pub nacks: u64,
    /// Keyframe requests (PLI/FIR) the participant sent.
    pub plis: u64,
    /// Fraction of its published packets lost on the way in (0–1), when known.
    pub loss: Option<f64>,
    /// Mean round-trip time to the participant, ms, when measured.
    pub rtt_ms_mean: Option<f64>,
}

/// One audit record. Built with [`AuditRecord::new`] and the setters; the sink
/// stamps the time.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    /// Unix ms.
    pub at_ms: u64,
    /// What happened.
    pub kind: AuditKind,
    /// In which channel.
    pub channel: Option<ChannelId>,
    /// To whom.
    pub user: Option<UserUid>,
    /// On which device.
    pub device: Option<DeviceId>,
    /// Which participant session.
    pub session: Option<SessionId>,
    /// Who did it (moderation).
    pub actor: Option<String>,
    /// Why (leave reason, or the admin's text).
    pub reason: Option<String>,
    /// Session QoS at leave.
    pub qos: Option<SessionQos>,
}

impl AuditRecord {
    /// A record of `kind` with nothing else set.
    pub fn new(kind: AuditKind) -> Self {
        Self {
            at_ms: 0,
            kind,
            channel: None,
            user: None,
            device: None,
            session: None,
            actor: None,
            reason: None,
            qos: None,
        }
    }

    /// Sets the channel.
    pub fn channel(mut self, c: &ChannelId) -> Self {
        self.channel = Some(c.clone());
        self
    }

    /// Sets the user.
    pub fn user(mut self, u: &UserUid) -> Self {
        self.user = Some(u.clone());
        self
    }

    /// Sets the device.
    pub fn device(mut self, d: &DeviceId) -> Self {
        self.device = Some(d.clone());
        self
    }

    /// Sets the session.
    pub fn session(mut self, s: &SessionId) -> Self {
        self.session = Some(s.clone());
        self
    }

    /// Sets the actor.
    pub fn actor(mut self, a: &str) -> Self {
        self.actor = Some(a.to_string());
        self
    }

    /// Sets the reason.
    pub fn reason(mut self, r: &str) -> Self {
        self.reason = Some(r.to_string());
        self
    }

    /// Sets the QoS aggregates.
    pub fn qos(mut self, q: SessionQos) -> Self {
        self.qos = Some(q);
        self
    }

    /// Stamps the record with `at_ms`.
    pub fn at(mut self, at_ms: u64) -> Self {
        self.at_ms = at_ms;
        self
    }
}

/// Milliseconds since the Unix epoch by the wall clock.
#[expect(
    clippy::disallowed_methods,
    reason = "audit records carry wall-clock time; this is their one clock"
)]
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Where producers put audit records: the store's queue, never waiting.
#[derive(Clone)]
pub struct AuditSink {
    store: StoreHandle,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for AuditSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditSink")
            .field("store", &self.store)
            .finish()
    }
}

impl AuditSink {
    /// A sink into `store`, counting drops in `metrics`.
    pub fn new(store: StoreHandle, metrics: Arc<Metrics>) -> Self {
        Self { store, metrics }
    }

    /// Queues `rec`, stamped now unless it has a time; a full queue drops it
    /// (counted in `rtc_store_dropped_total`).
    pub fn record(&self, mut rec: AuditRecord) {
        if rec.at_ms == 0 {
            rec.at_ms = wall_ms();
        }
        if self.store.try_write(StoreWrite::Audit(rec)).is_err() {
            self.metrics.store_dropped.inc();
        }
    }
}

/// Filters of `GET /v1/admin/audit`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only this channel.
    pub channel: Option<ChannelId>,
    /// Only records at or after this time (Unix ms).
    pub since_ms: Option<u64>,
    /// Only records older than this id (paging: the previous page's `next_before`).
    pub before_id: Option<i64>,
    /// At most this many (1–1000).
    pub limit: usize,
}

/// A stored audit record as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditRow {
    /// Increasing with insertion order.
    pub id: i64,
    /// RFC 3339 UTC.
    pub at: String,
    /// `AuditKind` name.
    pub kind: String,
    /// Channel, if any.
    pub channel_id: Option<String>,
    /// User, if any.
    pub user_uid: Option<String>,
    /// Device, if any.
    pub device_id: Option<String>,
    /// Participant session, if any.
    pub session_id: Option<String>,
    /// Actor, if any.
    pub actor: Option<String>,
    /// Reason, if any.
    pub reason: Option<String>,
    /// QoS aggregates (leave records).
    pub qos: Option<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{TempDir, when_queue_has_room};
    use crate::store::{QUEUE_CAPACITY, Store};

    #[test]
    fn a_full_store_queue_drops_and_counts_instead_of_waiting() {
        let tmp = TempDir::new();
        let store = Store::open(&tmp.0).unwrap();
        let metrics = Arc::new(Metrics::new(1));
        let sink = AuditSink::new(store.clone(), metrics.clone());
        let release = store.pause();
        for _ in 0..QUEUE_CAPACITY {
            sink.record(AuditRecord::new(AuditKind::Join));
        }
        assert_eq!(metrics.store_dropped.get(), 0);
        sink.record(AuditRecord::new(AuditKind::Leave).reason("left"));
        assert_eq!(metrics.store_dropped.get(), 1, "dropped, not waited for");
        drop(release);
        let rows = when_queue_has_room(|| {
            store.query_audit(AuditQuery {
                limit: 10,
                ..Default::default()
            })
        });
        assert!(
            rows.iter().all(|r| r.kind == "join"),
            "the dropped leave is absent"
        );
        assert!(
            rows.iter().all(|r| !r.at.starts_with("1970")),
            "stamped with the time"
        );
        store.shutdown();
    }
}
