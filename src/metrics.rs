//! Prometheus metrics (names are part of the contract, http-api.md "Metrics").
//!
//! One [`Metrics`] per process, shared by `Arc`. Counters are atomics: the media
//! path adds to them once per loop turn, not per packet. Labelled families
//! (`reason`, `kind`, `source`, `worker`) are touched only on control-plane events.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// Every metric Prism exports.
pub struct Metrics {
    registry: Registry,
    /// `rtc_active_rooms`.
    pub active_rooms: Gauge,
    /// `rtc_active_participants`.
    pub active_participants: Gauge,
    /// `rtc_join_ticket_issued_total`.
    pub join_ticket_issued: Counter,
    /// `rtc_join_fail_total{reason}`.
    pub join_fail: Family<Labels, Counter>,
    /// `rtc_publish_track_total{kind,source}`.
    pub publish_track: Family<Labels, Counter>,
    /// `rtc_negotiation_error_total`.
    pub negotiation_error: Counter,
    /// `rtc_forced_disconnect_total{reason}`.
    pub forced_disconnect: Family<Labels, Counter>,
    /// `rtc_forwarded_packets_total`.
    pub forwarded_packets: Counter,
    /// `rtc_forwarded_bytes_total`.
    pub forwarded_bytes: Counter,
    /// `rtc_dropped_packets_total{reason}`.
    pub dropped_packets: Family<Labels, Counter>,
    /// `rtc_nack_total`.
    pub nack: Counter,
    /// `rtc_pli_total`.
    pub pli: Counter,
    /// `rtc_layer_switches_total`: simulcast layer changes of subscriptions.
    pub layer_switches: Counter,
    /// `rtc_worker_busy_seconds_total{worker}`: time each media worker spent working.
    pub worker_busy: Family<Labels, Counter<f64, AtomicU64>>,
    /// `rtc_worker_queue_depth{worker}`: commands waiting for each worker.
    pub worker_queue_depth: Family<Labels, Gauge>,
    /// `rtc_signaling_connections`: open HTTP/WebSocket connections.
    pub signaling_connections: Gauge,
    /// `rtc_signaling_sessions`: open WebSocket signaling sessions.
    pub signaling_sessions: Gauge,
    /// `rtc_http_requests_total{status}`.
    pub http_requests: Family<Labels, Counter>,
    /// `rtc_store_dropped_total`: audit records the store could not queue.
    pub store_dropped: Counter,
    worker_rooms: std::sync::Mutex<Vec<(usize, usize)>>,
}

fn label(k: &str, v: &str) -> Labels {
    vec![(k.to_string(), v.to_string())]
}

impl Metrics {
    /// Registers every metric.
    pub fn new(workers: usize) -> Self {
        let mut registry = Registry::default();
        let m = Self {
            active_rooms: Gauge::default(),
            active_participants: Gauge::default(),
            join_ticket_issued: Counter::default(),
            join_fail: Family::default(),
            publish_track: Family::default(),
            negotiation_error: Counter::default(),
            forced_disconnect: Family::default(),
            forwarded_packets: Counter::default(),
            forwarded_bytes: Counter::default(),
            dropped_packets: Family::default(),
            nack: Counter::default(),
            pli: Counter::default(),
            layer_switches: Counter::default(),
            worker_busy: Family::default(),
            worker_queue_depth: Family::default(),
            signaling_connections: Gauge::default(),
            signaling_sessions: Gauge::default(),
            http_requests: Family::default(),
            store_dropped: Counter::default(),
            worker_rooms: std::sync::Mutex::new(vec![(0, 0); workers.max(1)]),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "rtc_active_rooms",
            "Rooms with at least one participant",
            m.active_rooms.clone(),
        );
        r.register(
            "rtc_active_participants",
            "Participants in all rooms",
            m.active_participants.clone(),
        );
        r.register(
            "rtc_join_ticket_issued",
            "Join tickets minted",
            m.join_ticket_issued.clone(),
        );
        r.register(
            "rtc_join_fail",
            "Joins refused, by reason",
            m.join_fail.clone(),
        );
        r.register(
            "rtc_publish_track",
            "Tracks published, by kind and source",
            m.publish_track.clone(),
        );
        r.register(
            "rtc_negotiation_error",
            "Offers that could not be accepted",
            m.negotiation_error.clone(),
        );
        r.register(
            "rtc_forced_disconnect",
            "Sessions cut by the server, by reason",
            m.forced_disconnect.clone(),
        );
        r.register(
            "rtc_forwarded_packets",
            "RTP packets forwarded to subscribers",
            m.forwarded_packets.clone(),
        );
        r.register(
            "rtc_forwarded_bytes",
            "RTP payload bytes forwarded to subscribers",
            m.forwarded_bytes.clone(),
        );
        r.register(
            "rtc_dropped_packets",
            "Packets dropped, by reason",
            m.dropped_packets.clone(),
        );
        r.register(
            "rtc_nack",
            "NACKs received from subscribers",
            m.nack.clone(),
        );
        r.register(
            "rtc_pli",
            "Keyframe requests sent to publishers",
            m.pli.clone(),
        );
        r.register(
            "rtc_layer_switches",
            "Simulcast layer switches of subscriptions",
            m.layer_switches.clone(),
        );
        r.register(
            "rtc_worker_busy_seconds",
            "Time each media worker loop spent working",
            m.worker_busy.clone(),
        );
        r.register(
            "rtc_worker_queue_depth",
            "Commands waiting for each media worker",
            m.worker_queue_depth.clone(),
        );
        r.register(
            "rtc_signaling_connections",
            "Open HTTP and WebSocket connections",
            m.signaling_connections.clone(),
        );
        r.register(
            "rtc_signaling_sessions",
            "Open WebSocket signaling sessions",
            m.signaling_sessions.clone(),
        );
        r.register(
            "rtc_http_requests",
            "HTTP requests answered, by status",
            m.http_requests.clone(),
        );
        r.register(
            "rtc_store_dropped",
            "Audit records dropped because the store queue was full",
            m.store_dropped.clone(),
        );
        for w in 0..workers.max(1) {
            let _ = m
                .worker_busy
                .get_or_create(&label("worker", &w.to_string()));
            let _ = m
                .worker_queue_depth
                .get_or_create(&label("worker", &w.to_string()));
        }
        for reason in ["kicked", "banned", "replaced", "timeout"] {
            let _ = m.forced_disconnect.get_or_create(&label("reason", reason));
        }
        Self { registry, ..m }
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Counts a refused join.
    pub fn join_failed(&self, reason: &str) {
        self.join_fail.get_or_create(&label("reason", reason)).inc();
    }

    /// Counts a session the server cut.
    pub fn forced_disconnect(&self, reason: &str) {
        self.forced_disconnect
            .get_or_create(&label("reason", reason))
            .inc();
    }

    /// Counts a published track.
    pub fn track_published(&self, kind: &str, source: &str) {
        self.publish_track
            .get_or_create(&vec![
                ("kind".to_string(), kind.to_string()),
                ("source".to_string(), source.to_string()),
            ])
            .inc();
    }

    /// Counts dropped packets.
    pub fn dropped(&self, reason: &str, n: u64) {
        self.dropped_packets
            .get_or_create(&label("reason", reason))
            .inc_by(n);
    }

    /// Counts an HTTP response.
    pub fn http_answered(&self, status: u16) {
        self.http_requests
            .get_or_create(&label("status", &status.to_string()))
            .inc();
    }

    /// Adds busy time to a worker.
    pub fn worker_busy(&self, worker: usize, seconds: f64) {
        self.worker_busy
            .get_or_create(&label("worker", &worker.to_string()))
            .inc_by(seconds);
    }

    /// Records a worker's queue depth.
    pub fn worker_queue(&self, worker: usize, depth: usize) {
        self.worker_queue_depth
            .get_or_create(&label("worker", &worker.to_string()))
            .set(depth as i64);
    }

    /// A worker reports its rooms and participants; the gauges are the sums.
    pub fn set_worker_load(&self, worker: usize, rooms: usize, participants: usize) {
        let mut g = match self.worker_rooms.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(slot) = g.get_mut(worker) {
            *slot = (rooms, participants);
        }
        let (r, p) = g.iter().fold((0, 0), |(a, b), (r, p)| (a + r, b + p));
        self.active_rooms.set(r as i64);
        self.active_participants.set(p as i64);
    }
}

/// A counter the media path bumps without touching the shared registry: added to
/// the shared counter once per loop turn by [`LocalCounter::flush`].
#[derive(Debug, Default)]
pub struct LocalCounter(u64);

impl LocalCounter {
    /// Adds `n`.
    pub fn add(&mut self, n: u64) {
        self.0 += n;
    }

    /// Moves the local count into `shared`.
    pub fn flush(&mut self, shared: &Counter) {
        if self.0 > 0 {
            shared.inc_by(self.0);
            self.0 = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_names_are_exported() {
        let m = Metrics::new(2);
        m.join_failed("ticket_used");
        m.track_published("audio", "microphone");
        m.dropped("no_subscriber", 3);
        m.set_worker_load(1, 2, 5);
        let text = m.encode();
        for name in [
            "rtc_active_rooms 2",
            "rtc_active_participants 5",
            "rtc_join_ticket_issued_total 0",
            "rtc_join_fail_total{reason=\"ticket_used\"} 1",
            "rtc_publish_track_total{kind=\"audio\",source=\"microphone\"} 1",
            "rtc_negotiation_error_total 0",
            "rtc_forced_disconnect_total{reason=\"kicked\"} 0",
            "rtc_forwarded_packets_total 0",
            "rtc_forwarded_bytes_total 0",
            "rtc_dropped_packets_total{reason=\"no_subscriber\"} 3",
            "rtc_nack_total 0",
            "rtc_pli_total 0",
            "rtc_worker_busy_seconds_total{worker=\"1\"}",
            "rtc_signaling_connections 0",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
