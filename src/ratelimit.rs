//! Token buckets on explicit time, and a keyed set of them for per-user / per-IP
//! limits on the HTTP API.
//!
//! Time is an input (`Instant`), so tests step it. A bucket holds at most `burst`
//! tokens and refills at `rate_per_s`; [`TokenBucket::try_take`] answers how long to
//! wait when empty, which becomes `retry_after_ms` / `Retry-After`.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One token bucket.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate_per_s: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate_per_s: f64, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate_per_s: rate_per_s.max(f64::MIN_POSITIVE),
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate_per_s).min(self.burst);
        self.last = now;
    }

    /// Takes one token, or says how long until one is available.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - self.tokens) / self.rate_per_s;
            Err(Duration::from_secs_f64(wait).max(Duration::from_millis(1)))
        }
    }

    /// Whether the bucket is full again (nothing to remember about this key).
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }
}

/// Buckets by key (user, IP), pruned as they refill so memory stays bounded by the
/// number of keys active within one refill period, and hard-capped at `max_keys`
/// (past that, new keys are refused rather than growing the map).
#[derive(Debug)]
pub struct KeyedLimiter<K> {
    rate_per_s: f64,
    burst: u32,
    max_keys: usize,
    inner: Mutex<KeyedInner<K>>,
}

#[derive(Debug)]
struct KeyedInner<K> {
    buckets: HashMap<K, TokenBucket>,
    last_prune: Option<Instant>,
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    /// `per_minute` requests per minute, all of which may come at once.
    pub fn per_minute(per_minute: u32, max_keys: usize) -> Self {
        Self {
            rate_per_s: f64::from(per_minute.max(1)) / 60.0,
            burst: per_minute.max(1),
            max_keys,
            inner: Mutex::new(KeyedInner {
                buckets: HashMap::new(),
                last_prune: None,
            }),
        }
    }

    /// Takes a token for `key`.
    pub fn check(&self, key: &K, now: Instant) -> Result<(), Duration> {
        let mut inner = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let prune_due = inner
            .last_prune
            .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(10));
        if prune_due {
            inner.buckets.retain(|_, b| !b.is_full(now));
            inner.last_prune = Some(now);
        }
        if !inner.buckets.contains_key(key) && inner.buckets.len() >= self.max_keys {
            return Err(Duration::from_secs(1));
        }
        let (rate, burst) = (self.rate_per_s, self.burst);
        inner
            .buckets
            .entry(key.clone())
            .or_insert_with(|| TokenBucket::new(rate, burst, now))
            .try_take(now)
    }

    /// How many keys are remembered (for tests and metrics).
    pub fn len(&self) -> usize {
        self.inner.lock().map(|g| g.buckets.len()).unwrap_or(0)
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(50.0, 100, t0);
        for _ in 0..100 {
            assert!(b.try_take(t0).is_ok());
        }
        let wait = b.try_take(t0).unwrap_err();
        assert!(wait >= Duration::from_millis(19) && wait <= Duration::from_millis(21));
        assert!(b.try_take(t0 + Duration::from_millis(20)).is_ok());
        assert!(b.try_take(t0 + Duration::from_millis(20)).is_err());
        assert!(b.is_full(t0 + Duration::from_secs(3)));
    }

    #[test]
    fn keyed_limiter_separates_keys_and_prunes() {
        let t0 = Instant::now();
        let l = KeyedLimiter::per_minute(2, 10);
        assert!(l.check(&"a", t0).is_ok());
        assert!(l.check(&"a", t0).is_ok());
        assert!(l.check(&"a", t0).is_err());
        assert!(l.check(&"b", t0).is_ok());
        assert_eq!(l.len(), 2);
        // After a full refill and the prune interval, both are forgotten.
        let later = t0 + Duration::from_secs(120);
        assert!(l.check(&"c", later).is_ok());
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn keyed_limiter_caps_keys() {
        let t0 = Instant::now();
        let l = KeyedLimiter::per_minute(1, 2);
        assert!(l.check(&1, t0).is_ok());
        assert!(l.check(&2, t0).is_ok());
        assert!(l.check(&3, t0).is_err());
    }
}
