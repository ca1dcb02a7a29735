//! The timer heap: which peer connection is due next.
//!
//! Entries are `(deadline, slot, generation)`. Rescheduling pushes a new entry and leaves
//! the old one in place; the owner decides whether a popped entry is still current by
//! comparing it with the deadline it stored for that slot (lazy deletion, so no
//! decrease-key). The heap is rebuilt from the live deadlines when stale entries
//! outnumber live ones, so it stays O(live peer connections).
//!
//! Called by `MediaCore` after every drain of an `Rtc` (schedule) and from
//! `handle_timeout` (pop due). Never holds "never" deadlines: callers filter those.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// A min-heap of `(deadline, slot, generation)`.
#[derive(Debug, Default)]
pub(crate) struct TimerHeap {
    heap: BinaryHeap<Reverse<(Instant, usize, u32)>>,
}

impl TimerHeap {
    pub(crate) fn push(&mut self, at: Instant, slot: usize, generation: u32) {
        self.heap.push(Reverse((at, slot, generation)));
    }

    /// The earliest entry, possibly stale (a stale entry only causes an early wake-up).
    pub(crate) fn peek(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Pops the earliest entry if it is due at `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(Instant, usize, u32)> {
        match self.heap.peek() {
            Some(Reverse((at, _, _))) if *at <= now => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    /// Replaces the content with exactly the given live entries.
    pub(crate) fn rebuild(&mut self, live: impl Iterator<Item = (Instant, usize, u32)>) {
        let mut entries = std::mem::take(&mut self.heap).into_vec();
        entries.clear();
        entries.extend(live.map(Reverse));
        self.heap = BinaryHeap::from(entries);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pops_only_due_entries_in_deadline_order() {
        let t0 = Instant::now();
        let mut h = TimerHeap::default();
        h.push(t0 + Duration::from_millis(30), 1, 0);
        h.push(t0 + Duration::from_millis(10), 2, 0);
        h.push(t0 + Duration::from_millis(20), 3, 0);
        assert_eq!(h.peek(), Some(t0 + Duration::from_millis(10)));
        let now = t0 + Duration::from_millis(25);
        assert_eq!(h.pop_due(now).map(|e| e.1), Some(2));
        assert_eq!(h.pop_due(now).map(|e| e.1), Some(3));
        assert_eq!(h.pop_due(now), None);
        assert_eq!(h.len(), 1);
        h.rebuild(std::iter::once((t0, 9, 4)));
        assert_eq!(h.pop_due(t0), Some((t0, 9, 4)));
    }
}
