//! What the server knows about each incoming simulcast layer (encoding) of a video
//! track: its SSRC, whether it flows, and its measured bitrate.
//!
//! A layer's SSRC is learned from the first packet that carries the rid header
//! extension (str0m binds it then; `MediaCore::ssrc_route` caches the binding at once,
//! because senders stop sending the rid after the first receiver report). The bitrate is
//! a sliding one-second window of 100 ms byte buckets, so the allocator can price each
//! layer from what the publisher really sends. A layer is available while packets arrive
//! and str0m has not reported it paused (`Event::StreamPaused`).
//!
//! Called per publisher packet (`on_packet`: arithmetic on a fixed array, no allocation)
//! and by the allocator a few times a second (`bitrate_bps`, `available`).

use std::time::{Duration, Instant};

use str0m::rtp::Ssrc;

/// What a forwarded packet costs on the wire beyond its payload: IPv4 (20), UDP (8),
/// RTP header (12), header extensions (~8) and the SRTP authentication tag (10–16).
/// Layer rates are priced with it because the bandwidth estimate counts wire bytes,
/// and for audio (~60-byte payloads) the headers are half the cost.
const WIRE_OVERHEAD_BYTES: usize = 60;

/// Width of one bucket of the bitrate window.
const BUCKET: Duration = Duration::from_millis(100);
/// Buckets in the window (one second).
const BUCKETS: usize = 10;

/// Bytes received in a sliding one-second window.
#[derive(Debug, Clone, Default)]
pub(crate) struct BitrateMeter {
    buckets: [u32; BUCKETS],
    /// Start of the current bucket (`buckets[index]`).
    bucket_start: Option<Instant>,
    index: usize,
    /// When the first byte was counted: the window is shorter than a second before that.
    since: Option<Instant>,
}

impl BitrateMeter {
    /// Moves the window to `now`, clearing buckets that fell out of it.
    fn advance(&mut self, now: Instant) {
        let Some(start) = self.bucket_start else {
            self.bucket_start = Some(now);
            return;
        };
        let elapsed = now.saturating_duration_since(start);
        if elapsed < BUCKET {
            return;
        }
        let steps = (elapsed.as_micros() / BUCKET.as_micros()) as usize;
        if steps >= BUCKETS {
            self.buckets = [0; BUCKETS];
            self.index = 0;
            self.bucket_start = Some(now);
            return;
        }
        for _ in 0..steps {
            self.index = (self.index + 1) % BUCKETS;
            self.buckets[self.index] = 0;
        }
        self.bucket_start = Some(start + BUCKET * steps as u32);
    }

    /// Counts `bytes` received at `now`.
    pub(crate) fn add(&mut self, now: Instant, bytes: usize) {
        self.advance(now);
        self.since.get_or_insert(now);
        let b = &mut self.buckets[self.index];
        *b = b.saturating_add(u32::try_from(bytes).unwrap_or(u32::MAX));
    }

    /// Bits per second over the last second (over less right after the first packet).
    pub(crate) fn bitrate_bps(&self, now: Instant) -> u64 {
        let (Some(start), Some(since)) = (self.bucket_start, self.since) else {
            return 0;
        };
        let steps =
            (now.saturating_duration_since(start).as_micros() / BUCKET.as_micros()) as usize;
        if steps >= BUCKETS {
            return 0;
        }
        // The buckets that moving the window to `now` would clear.
        let stale: u64 = (1..=steps)
            .map(|k| u64::from(self.buckets[(self.index + k) % BUCKETS]))
            .sum();
        let bytes = self.buckets.iter().map(|&b| u64::from(b)).sum::<u64>() - stale;
        let current_start = start + BUCKET * steps as u32;
        let full = BUCKET * (BUCKETS as u32 - 1) + now.saturating_duration_since(current_start);
        let window = full.min(now.saturating_duration_since(since)).max(BUCKET);
        (bytes * 8 * 1_000_000) / window.as_micros().max(1) as u64
    }
}

/// One incoming encoding of a track (one per rid, or the only one without simulcast).
#[derive(Debug, Clone, Default)]
pub(crate) struct LayerState {
    /// Learned from the first packet of the layer.
    pub(crate) ssrc: Option<Ssrc>,
    pub(crate) last_packet: Option<Instant>,
    /// First packet of the current run (reset when the layer stopped flowing).
    pub(crate) flowing_since: Option<Instant>,
    pub(crate) last_keyframe_request: Option<Instant>,
    /// The last keyframe received on this layer.
    pub(crate) last_keyframe: Option<Instant>,
    /// str0m reported the stream paused (no packets for a while).
    pub(crate) paused: bool,
    pub(crate) meter: BitrateMeter,
    /// Received counters and bitrate for the admin view and audit (`core/qos.rs`).
    pub(crate) qos: super::core::qos::LayerQos,
}

impl LayerState {
    /// Counts one packet of `bytes` payload (priced with its wire overhead).
    pub(crate) fn on_packet(&mut self, now: Instant, ssrc: Ssrc, bytes: usize) {
        if self
            .last_packet
            .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1))
        {
            self.flowing_since = Some(now);
        }
        self.last_packet = Some(now);
        self.ssrc = Some(ssrc);
        self.paused = false;
        self.meter.add(now, bytes + WIRE_OVERHEAD_BYTES);
    }

    /// Packets arrived within `idle` and str0m has not paused the stream.
    pub(crate) fn available(&self, now: Instant, idle: Duration) -> bool {
        !self.paused
            && self
                .last_packet
                .is_some_and(|t| now.saturating_duration_since(t) < idle)
    }
}

/// A layer must have flowed this long before the allocator prices it: its first
/// packets say little about its rate.
pub(crate) const WARM_UP: Duration = Duration::from_millis(500);

impl LayerState {
    /// The measured rate, once the layer is available and has flowed for [`WARM_UP`].
    pub(crate) fn priced_rate(&self, now: Instant, idle: Duration) -> Option<u64> {
        let warm = self
            .flowing_since
            .is_some_and(|t| now.saturating_duration_since(t) >= WARM_UP);
        (warm && self.available(now, idle)).then(|| self.meter.bitrate_bps(now).max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_stream_measures_its_rate_and_a_silent_one_decays_to_zero() {
        let t0 = Instant::now();
        let mut m = BitrateMeter::default();
        // 1250 bytes every 10 ms = 1 Mbit/s.
        for i in 0..300u32 {
            m.add(t0 + Duration::from_millis(10) * i, 1250);
        }
        let now = t0 + Duration::from_millis(2995);
        let r = m.bitrate_bps(now);
        assert!((950_000..=1_050_000).contains(&r), "{r}");
        assert_eq!(m.bitrate_bps(now + Duration::from_secs(2)), 0);
    }

    #[test]
    fn the_first_packets_are_not_averaged_over_a_whole_second() {
        let t0 = Instant::now();
        let mut m = BitrateMeter::default();
        for i in 0..20u32 {
            m.add(t0 + Duration::from_millis(10) * i, 1250);
        }
        let r = m.bitrate_bps(t0 + Duration::from_millis(200));
        assert!((900_000..=1_100_000).contains(&r), "{r}");
    }

    #[test]
    fn a_layer_is_available_only_while_it_flows_and_is_not_paused() {
        let t0 = Instant::now();
        let idle = Duration::from_millis(1500);
        let mut l = LayerState::default();
        assert!(!l.available(t0, idle));
        l.on_packet(t0, 5.into(), 100);
        assert!(l.available(t0 + Duration::from_secs(1), idle));
        assert!(!l.available(t0 + Duration::from_secs(2), idle));
        l.paused = true;
        assert!(!l.available(t0, idle));
    }
}
