//! Single use of join tickets: the set of `jti`s already consumed, in memory for
//! the check and in the store so the refusal survives a restart.
//!
//! Invariants: a `jti` is recorded in memory only after its store write was
//! queued, and the check and the record happen under one lock, so two racing
//! joins with the same ticket cannot both pass and no accepted ticket is missing
//! from the store queue. When the write cannot be queued (store queue full or
//! store stopped) or the table is at its bound ([`MAX_USED_TICKETS`]), the join is
//! refused with [`ConsumeError::StoreBusy`] rather than admitted unrecorded. An
//! entry is kept while `now < exp + CLOCK_SKEW_S`, i.e. as long as ticket
//! verification could still accept the ticket; older entries are pruned at most
//! once a minute (once a second while at the bound).
//!
//! Loaded at start-up from the store; consulted by the signaling session on
//! `rtc.join` after the ticket verified.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};

use super::CLOCK_SKEW_S;
use crate::store::{StoreError, StoreHandle, StoreWrite};

/// Most used tickets remembered at once. At 60 s tickets this allows ~16,000
/// joins per second sustained; beyond it joins are refused (`StoreBusy`) rather
/// than memory growing without bound.
pub const MAX_USED_TICKETS: usize = 1_000_000;

/// Seconds between two prunes of expired entries.
const PRUNE_INTERVAL_S: u64 = 60;

/// Why a ticket could not be consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumeError {
    /// The ticket was used before (`ticket_used` on the wire).
    Used,
    /// Its use cannot be recorded now (store queue full, store stopped, or the
    /// used-ticket table at its bound); nothing was recorded, the client may
    /// retry with the same ticket shortly.
    StoreBusy,
}

impl fmt::Display for ConsumeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConsumeError::Used => write!(f, "the join ticket was already used"),
            ConsumeError::StoreBusy => {
                write!(f, "the join ticket cannot be recorded as used right now")
            }
        }
    }
}

impl std::error::Error for ConsumeError {}

struct Inner {
    /// jti → exp.
    live: HashMap<String, u64>,
    last_prune_at: u64,
}

/// The used join ticket ids. Thread-safe; share it behind an `Arc`.
pub struct UsedTickets {
    store: StoreHandle,
    max_entries: usize,
    inner: Mutex<Inner>,
}

impl fmt::Debug for UsedTickets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsedTickets")
            .field("tracked", &self.lock().live.len())
            .finish_non_exhaustive()
    }
}

/// Whether a ticket that expires at `exp` could still pass verification at `now`.
fn is_live(exp: u64, now_unix: u64) -> bool {
    now_unix < exp.saturating_add(CLOCK_SKEW_S)
}

impl UsedTickets {
    /// Loads the used tickets still live at `now_unix` from the store, and asks
    /// the store to drop the rest.
    pub fn load(store: &StoreHandle, now_unix: u64) -> Result<Self, StoreError> {
        Self::load_bounded(store, now_unix, MAX_USED_TICKETS)
    }

    fn load_bounded(
        store: &StoreHandle,
        now_unix: u64,
        max_entries: usize,
    ) -> Result<Self, StoreError> {
        let live: HashMap<String, u64> = store.load_used_tickets(now_unix)?.into_iter().collect();
        store.prune_used_tickets(now_unix);
        // Everything loaded is kept even beyond the bound: forgetting a used
        // ticket would let it be replayed.
        log::info!("auth: {} used join tickets loaded", live.len());
        Ok(Self {
            store: store.clone(),
            max_entries,
            inner: Mutex::new(Inner {
                live,
                last_prune_at: now_unix,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every mutation below is a single map operation, so a panic elsewhere
        // while holding the lock cannot leave the map inconsistent.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks ticket `jti` (expiring at `exp_unix`) as used at `now_unix`; refuses
    /// it if it was used before. Never blocks on the store.
    pub fn try_consume(&self, jti: &str, exp_unix: u64, now_unix: u64) -> Result<(), ConsumeError> {
        let mut inner = self.lock();
        let full = inner.live.len() >= self.max_entries;
        let due = now_unix >= inner.last_prune_at.saturating_add(PRUNE_INTERVAL_S);
        if due || (full && now_unix > inner.last_prune_at) {
            inner.live.retain(|_, exp| is_live(*exp, now_unix));
            inner.last_prune_at = now_unix;
            self.store.prune_used_tickets(now_unix);
        }
        match inner.live.get(jti) {
            Some(exp) if is_live(*exp, now_unix) => return Err(ConsumeError::Used),
            // Present but no longer live: the ticket would fail verification
            // anyway; the entry is simply renewed below.
            Some(_) => {}
            None if inner.live.len() >= self.max_entries => {
                log::warn!("auth: used-ticket table full; refusing a join");
                return Err(ConsumeError::StoreBusy);
            }
            None => {}
        }
        self.store
            .try_write(StoreWrite::UsedTicket {
                jti: jti.to_owned(),
                exp: exp_unix,
            })
            .map_err(|e| {
                log::warn!("auth: cannot record a used ticket ({e}); refusing the join");
                ConsumeError::StoreBusy
            })?;
        inner.live.insert(jti.to_owned(), exp_unix);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::store::tests::TempDir;

    const NOW: u64 = 1_767_225_600;

    #[test]
    fn can_be_shared_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<UsedTickets>();
    }

    #[test]
    fn a_ticket_is_used_once() {
        let tmp = TempDir::new();
        let store = Store::open(&tmp.0).unwrap();
        let used = UsedTickets::load(&store, NOW).unwrap();
        assert_eq!(used.try_consume("j1", NOW + 60, NOW), Ok(()));
        assert_eq!(
            used.try_consume("j1", NOW + 60, NOW + 1),
            Err(ConsumeError::Used)
        );
        assert_eq!(used.try_consume("j2", NOW + 60, NOW + 1), Ok(()));
        store.shutdown();
    }

    #[test]
    fn a_used_ticket_is_still_refused_after_a_restart() {
        let tmp = TempDir::new();
        let store = Store::open(&tmp.0).unwrap();
        let used = UsedTickets::load(&store, NOW).unwrap();
        used.try_consume("j1", NOW + 60, NOW).unwrap();
        store.shutdown();
        drop(used);

        let store = Store::open(&tmp.0).unwrap();
        let used = UsedTickets::load(&store, NOW + 5).unwrap();
        assert_eq!(
            used.try_consume("j1", NOW + 60, NOW + 5),
            Err(ConsumeError::Used)
        );
        assert_eq!(used.try_consume("j2", NOW + 60, NOW + 5), Ok(()));
        store.shutdown();
    }

    #[test]
    fn expired_entries_are_pruned_in_memory_and_in_the_store() {
        let tmp = TempDir::new();
        let store = Store::open(&tmp.0).unwrap();
        let used = UsedTickets::load(&store, NOW).unwrap();
        used.try_consume("short", NOW + 10, NOW).unwrap();
        used.try_consume("long", NOW + 3600, NOW).unwrap();
        // Still refused right up to exp + skew.
        let edge = NOW + 10 + CLOCK_SKEW_S;
        assert_eq!(
            used.try_consume("short", NOW + 10, edge - 1),
            Err(ConsumeError::Used)
        );

        let later = NOW + PRUNE_INTERVAL_S;
        used.try_consume("other", NOW + 3600, later).unwrap();
        assert_eq!(used.lock().live.len(), 2, "the short entry was pruned");
        let mut in_store: Vec<String> = store
            .load_used_tickets(0)
            .unwrap()
            .into_iter()
            .map(|(j, _)| j)
            .collect();
        in_store.sort();
        assert_eq!(in_store, vec!["long", "other"]);
        store.shutdown();
    }

    #[test]
    fn a_full_store_queue_refuses_and_records_nothing() {
        let tmp = TempDir::new();
        let store = Store::open(&tmp.0).unwrap();
        let used = UsedTickets::load(&store, NOW).unwrap();
        let release = store.pause();
        let mut consumed = 0;
        let refused = loop {
            match used.try_consume(&format!("j{consumed}"), NOW + 60, NOW) {
                Ok(()) => consumed += 1,
                Err(e) => break e,
            }
            assert!(
                consumed <= crate::store::QUEUE_CAPACITY,
                "the queue never filled"
            );
        };
        assert_eq!(refused, ConsumeError::StoreBusy);
        drop(release);
        // Nothing was recorded for the refused ticket: it can be used once later.
        crate::store::tests::when_queue_has_room(|| store.load_used_tickets(0));
        let refused_jti = format!("j{consumed}");
        assert_eq!(used.try_consume(&refused_jti, NOW + 60, NOW), Ok(()));
        assert_eq!(
            used.try_consume(&refused_jti, NOW + 60, NOW),
            Err(ConsumeError::Used)
        );
        store.shutdown();
    }

    #[test]
    fn a_stopped_store_refuses() {
        let tmp = TempDir::new();
        let store = Store::open(&tmp.0).unwrap();
        let used = UsedTickets::load(&store, NOW).unwrap();
        store.shutdown();
        assert_eq!(
            used.try_consume("j", NOW + 60, NOW),
            Err(ConsumeError::StoreBusy)
        );
    }

    #[test]
    fn the_table_is_bounded() {
        let tmp = TempDir::new();
        let store = Store::open(&tmp.0).unwrap();
        let used = UsedTickets::load_bounded(&store, NOW, 2).unwrap();
        used.try_consume("a", NOW + 60, NOW).unwrap();
        used.try_consume("b", NOW + 5, NOW).unwrap();
        assert_eq!(
            used.try_consume("c", NOW + 60, NOW),
            Err(ConsumeError::StoreBusy)
        );
        // A used ticket is still reported as used at the bound.
        assert_eq!(
            used.try_consume("a", NOW + 60, NOW),
            Err(ConsumeError::Used)
        );
        // Once "b" is no longer live, pruning at the bound makes room.
        let later = NOW + 5 + CLOCK_SKEW_S;
        assert_eq!(used.try_consume("c", NOW + 60, later), Ok(()));
        store.shutdown();
    }
}
