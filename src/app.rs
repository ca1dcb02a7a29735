//! The process's shared control-plane state: configuration, token keys, the room
//! directory, worker handles, metrics, limits, the store.
//!
//! Read by the front threads on every request; never touched by the media path.
//! Everything here is either immutable after start-up, atomic, or behind a small
//! lock held for a map look-up.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::auth::{SessionTokenVerifier, TicketKey, UsedTickets, turn_credentials};
use crate::config::Config;
use crate::directory::Directory;
use crate::engine::command::WorkerHandle;
use crate::ids::UserUid;
use crate::metrics::Metrics;
use crate::ratelimit::KeyedLimiter;
use crate::store::StoreHandle;

/// Shared state of the control plane.
pub struct App {
    /// The validated configuration.
    pub config: Config,
    /// Join-ticket key.
    pub tickets: TicketKey,
    /// Single-use ticket ids.
    pub used_tickets: UsedTickets,
    /// Session-token verifier.
    pub session_tokens: SessionTokenVerifier,
    /// Rooms → workers.
    pub directory: Arc<Directory>,
    /// One per media worker.
    pub workers: Vec<WorkerHandle>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Join-ticket minting per user.
    pub ticket_rate_user: KeyedLimiter<UserUid>,
    /// Join-ticket minting per client IP.
    pub ticket_rate_ip: KeyedLimiter<IpAddr>,
    /// Open connections, total and per IP.
    pub connections: Arc<ConnectionLimits>,
    /// The store thread.
    pub store: StoreHandle,
    /// Bans, timeouts, channel locks.
    pub moderation: Arc<crate::moderation::Moderation>,
    /// Where audit records go.
    pub audit: crate::audit::AuditSink,
    /// False while starting and once shutting down (`/readyz`).
    pub ready: AtomicBool,
}

impl App {
    /// Whether media worker `worker` is saturated (overload shedding).
    pub fn worker_saturated(&self, worker: usize) -> bool {
        let l = &self.config.limits;
        self.workers.get(worker).is_some_and(|w| {
            w.load()
                .is_saturated(l.worker_busy_ratio_pct, l.worker_queue_high)
        })
    }

    /// Whether the server takes new sessions: started, not stopping, and no media
    /// worker saturated (`/readyz`).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
            && !(0..self.workers.len()).any(|w| self.worker_saturated(w))
    }

    /// `ice_servers` for a client: the configured servers, TURN ones with fresh
    /// per-user credentials (coturn REST scheme).
    pub fn ice_servers_for(&self, user: &UserUid, now_unix: u64) -> Vec<serde_json::Value> {
        self.config
            .ice_servers
            .iter()
            .map(|s| {
                if s.turn {
                    let c = turn_credentials(
                        &self.config.secrets.turn_secret,
                        user,
                        now_unix,
                        self.config.turn_ttl_s,
                    );
                    serde_json::json!({
                        "urls": s.urls,
                        "username": c.username,
                        "credential": c.credential.expose(),
                        "credential_type": "ephemeral",
                        "expires_at": c.expires_at,
                    })
                } else {
                    serde_json::json!({"urls": s.urls})
                }
            })
            .collect()
    }
}

/// Counts open connections so one client (or all of them) cannot exhaust the
/// process's file descriptors.
#[derive(Debug)]
pub struct ConnectionLimits {
    max_total: usize,
    max_per_ip: usize,
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// A held connection slot; released on drop.
#[derive(Debug)]
pub struct ConnPermit {
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
}

impl ConnectionLimits {
    /// Limits of `max_total` connections, `max_per_ip` from one address.
    pub fn new(max_total: usize, max_per_ip: usize) -> Self {
        Self {
            max_total,
            max_per_ip,
            total: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a slot for a connection from `ip`, or `None` when over a limit.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<ConnPermit> {
        let mut per_ip = match self.per_ip.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if self.total.load(Ordering::Relaxed) >= self.max_total {
            return None;
        }
        let n = per_ip.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return None;
        }
        *n += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        Some(ConnPermit {
            limits: self.clone(),
            ip,
        })
    }

    /// Open connections.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut per_ip = match self.limits.per_ip.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
        self.limits.total.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_limits_hold_and_release() {
        let l = Arc::new(ConnectionLimits::new(3, 2));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let p1 = l.try_acquire(a).unwrap();
        let _p2 = l.try_acquire(a).unwrap();
        assert!(l.try_acquire(a).is_none(), "per-IP limit");
        let _p3 = l.try_acquire(b).unwrap();
        assert!(l.try_acquire(b).is_none(), "total limit");
        drop(p1);
        let p4 = l.try_acquire(a);
        assert!(p4.is_some());
        assert_eq!(l.total(), 3);
        drop(p4);
        assert_eq!(l.total(), 2);
    }
}
