//! Overload shedding: each media worker publishes how loaded its loop is (share of
//! wall time spent working over the last window, and its command queue depth); a
//! saturated worker takes no new joins (`server_busy` with `retry_after_ms`) and
//! `/readyz` answers 503, while its existing calls keep their media.
//!
//! Written by the worker driver once per window (atomics, no lock), read by the
//! front on `rtc.join` and `/readyz`. [`WorkerLoad::force_saturated`] lets tests
//! simulate a saturated loop.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

/// How long the driver measures before publishing a busy ratio, ms.
pub const WINDOW_MS: u64 = 500;

/// What a client is told to wait before retrying a shed join, ms.
pub const RETRY_AFTER_MS: u64 = 1000;

/// The load one worker reports.
#[derive(Debug, Default)]
pub struct WorkerLoad {
    /// Busy share of the last window, in per mille.
    busy_permille: AtomicU32,
    /// Commands waiting, as of the last loop turn.
    queue: AtomicUsize,
    forced: AtomicBool,
}

impl WorkerLoad {
    /// The driver reports a window's busy share (0.0–1.0).
    pub fn set_busy_ratio(&self, ratio: f64) {
        let permille = (ratio.clamp(0.0, 1.0) * 1000.0).round() as u32;
        self.busy_permille.store(permille, Ordering::Relaxed);
    }

    /// The driver reports its queue depth.
    pub fn set_queue(&self, depth: usize) {
        self.queue.store(depth, Ordering::Relaxed);
    }

    /// Busy share of the last window, per mille.
    pub fn busy_permille(&self) -> u32 {
        self.busy_permille.load(Ordering::Relaxed)
    }

    /// Tests: pretend the loop is (or no longer is) saturated.
    pub fn force_saturated(&self, on: bool) {
        self.forced.store(on, Ordering::Relaxed);
    }

    /// Whether the loop is saturated: busy at least `busy_pct` % of the last window,
    /// or at least `queue_high` commands waiting.
    pub fn is_saturated(&self, busy_pct: u32, queue_high: usize) -> bool {
        self.forced.load(Ordering::Relaxed)
            || self.busy_permille() >= busy_pct.saturating_mul(10)
            || self.queue.load(Ordering::Relaxed) >= queue_high
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saturation_by_busy_ratio_queue_depth_or_the_test_hook() {
        let l = WorkerLoad::default();
        assert!(!l.is_saturated(90, 1024));
        l.set_busy_ratio(0.95);
        assert!(l.is_saturated(90, 1024));
        l.set_busy_ratio(0.5);
        l.set_queue(1024);
        assert!(l.is_saturated(90, 1024));
        l.set_queue(3);
        assert!(!l.is_saturated(90, 1024));
        l.force_saturated(true);
        assert!(l.is_saturated(90, 1024));
    }
}
