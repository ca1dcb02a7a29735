//! The housekeeping thread: lapses expired bans and timeouts (every
//! [`TICK`]), and prunes audit records past the retention setting (every
//! [`PRUNE_EVERY`], and once at start).
//!
//! A lapsed entry is removed from the moderation state, deleted from the store
//! and recorded in the audit trail (`ban_lapsed`, `timeout_lapsed`) in one
//! transaction, queued without waiting: if the store queue is full the deletion
//! is retried on the next tick (the in-memory entry already no longer refuses
//! anything, and a reload at start skips expired rows the same way). Nothing here
//! touches a media worker: a lapsed timeout simply stops refusing publishes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::audit::{AuditKind, AuditRecord, wall_ms};
use crate::moderation::{Moderation, ModerationChange};
use crate::store::{StoreHandle, StoreWrite};

/// How often expiries are checked.
pub const TICK: Duration = Duration::from_millis(250);

/// How often old audit records are pruned.
pub const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// The running thread.
pub struct Housekeeping {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Housekeeping {
    /// Starts the thread.
    pub fn spawn(
        moderation: Arc<Moderation>,
        store: StoreHandle,
        audit_retention_days: u32,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let retention_ms = u64::from(audit_retention_days) * 86_400_000;
        let thread = std::thread::Builder::new()
            .name("prism-housekeeping".into())
            .spawn(move || run(&moderation, &store, retention_ms, &flag))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it (at most one tick).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(moderation: &Moderation, store: &StoreHandle, retention_ms: u64, stop: &AtomicBool) {
    let prune_every = PRUNE_EVERY.as_millis() as u64;
    let mut next_prune = 0u64;
    let mut retry: Vec<ModerationChange> = Vec::new();
    while !stop.load(Ordering::Acquire) {
        let now = wall_ms();
        retry.extend(moderation.take_expired(now));
        retry.retain(|change| {
            let kind = match change {
                ModerationChange::DeleteBan { .. } => AuditKind::BanLapsed,
                _ => AuditKind::TimeoutLapsed,
            };
            let mut rec = AuditRecord::new(kind).actor("system").at(now);
            match change {
                ModerationChange::DeleteBan { user, channel } => {
                    rec = rec.user(user);
                    if let Some(c) = channel {
                        rec = rec.channel(c);
                    }
                    log::info!("moderation: ban lapsed user_uid={user}");
                }
                ModerationChange::DeleteTimeout { channel, user } => {
                    rec = rec.user(user).channel(channel);
                    log::info!("moderation: timeout lapsed channel_id={channel} user_uid={user}");
                }
                _ => {}
            }
            let write = StoreWrite::Moderation {
                change: change.clone(),
                audit: rec,
            };
            // Keep it for the next tick only if the queue was full.
            store.try_write(write).is_err()
        });
        if retry.len() > crate::moderation::MAX_ENTRIES {
            retry.clear();
        }
        if now >= next_prune {
            store.prune_audit(now.saturating_sub(retention_ms));
            next_prune = now + prune_every;
        }
        std::thread::sleep(TICK);
    }
}
