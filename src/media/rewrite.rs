//! Sequence-number and timestamp rewriting for one subscription.
//!
//! A subscriber sees one continuous RTP stream per subscription even though the source
//! changes under it: the publisher restarts with a new SSRC, the selected simulcast layer
//! switches, or the m-line is rebound to another track. [`Rewriter`] owns the offsets that
//! make that true.
//!
//! Invariants:
//! - output sequence numbers are extended (u64) and start below 65 536, so a fresh
//!   receiver's SRTP rollover counter (0) matches without out-of-band signalling;
//! - after a source change the first output sequence number is exactly one more than the
//!   highest one sent before, so the subscriber never NACKs a packet nobody can serve;
//! - packets of an old source that arrive after a switch are dropped, never interleaved.
//!
//! Called per forwarded packet by the core's fan-out; pure arithmetic, no allocation.

use std::time::Instant;

/// A jump of the incoming sequence number larger than this (either way) on the same SSRC
/// is treated as a stream restart and rebased instead of forwarded as a gap.
const MAX_SEQ_JUMP: u64 = 3000;

/// Where the current source maps onto the output.
#[derive(Debug, Clone, Copy)]
struct SourceMap {
    ssrc: u32,
    seq_offset: u64,
    ts_offset: u32,
    /// First output sequence number of this source; anything below belongs to before.
    base_out_seq: u64,
    /// Highest incoming extended sequence number seen from this source.
    max_in_seq: u64,
}

#[derive(Debug, Clone, Copy)]
struct LastOut {
    seq: u64,
    ts: u32,
    at: Instant,
}

/// Rewrites (SSRC, seq, ts) of one source into one continuous output stream.
#[derive(Debug, Default, Clone)]
pub(crate) struct Rewriter {
    last_out: Option<LastOut>,
    source: Option<SourceMap>,
    /// The SSRC replaced by an implicit restart (publisher switched SSRC): its late
    /// packets are dropped instead of flipping the mapping back.
    replaced_ssrc: Option<u32>,
}

impl Rewriter {
    /// Forget the current source: the next packet (of any SSRC) starts a new mapping.
    /// Used when the layer or the track bound to the subscription changes.
    pub(crate) fn switch_source(&mut self) {
        self.source = None;
        self.replaced_ssrc = None;
    }

    /// Maps one incoming packet. `clock_rate` (Hz) converts the wall time since the last
    /// output packet into a timestamp step on a source change. Returns `None` when the
    /// packet must be dropped (it belongs to a source already switched away from).
    pub(crate) fn rewrite(
        &mut self,
        ssrc: u32,
        in_seq: u64,
        in_ts: u32,
        now: Instant,
        clock_rate: u32,
    ) -> Option<(u64, u32)> {
        if self.replaced_ssrc == Some(ssrc) {
            return None;
        }
        let restart = match &self.source {
            None => true,
            Some(src) => {
                if src.ssrc != ssrc {
                    self.replaced_ssrc = Some(src.ssrc);
                }
                src.ssrc != ssrc || in_seq.abs_diff(src.max_in_seq) > MAX_SEQ_JUMP
            }
        };
        if restart {
            self.rebase(ssrc, in_seq, in_ts, now, clock_rate);
        }
        let src = self.source.as_mut()?;
        let out_seq = in_seq.wrapping_add(src.seq_offset);
        if out_seq < src.base_out_seq {
            return None;
        }
        src.max_in_seq = src.max_in_seq.max(in_seq);
        let out_ts = in_ts.wrapping_add(src.ts_offset);
        match &mut self.last_out {
            Some(last) if last.seq >= out_seq => {}
            last => {
                *last = Some(LastOut {
                    seq: out_seq,
                    ts: out_ts,
                    at: now,
                })
            }
        }
        Some((out_seq, out_ts))
    }

    fn rebase(&mut self, ssrc: u32, in_seq: u64, in_ts: u32, now: Instant, clock_rate: u32) {
        let (first_seq, first_ts) = match self.last_out {
            // Low 16 bits only: see the ROC invariant in the module doc.
            None => (in_seq & 0xffff, in_ts),
            Some(last) => {
                let elapsed = now.saturating_duration_since(last.at);
                let step = (elapsed.as_micros() * u128::from(clock_rate) / 1_000_000)
                    .clamp(1, u128::from(u32::MAX / 2)) as u32;
                (last.seq + 1, last.ts.wrapping_add(step))
            }
        };
        self.source = Some(SourceMap {
            ssrc,
            seq_offset: first_seq.wrapping_sub(in_seq),
            ts_offset: first_ts.wrapping_sub(in_ts),
            base_out_seq: first_seq,
            max_in_seq: in_seq,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn first_source_starts_below_the_first_rollover() {
        let now = Instant::now();
        let mut r = Rewriter::default();
        assert_eq!(
            r.rewrite(7, 70_000, 1000, now, 90_000),
            Some((70_000 - 65_536, 1000))
        );
        assert_eq!(
            r.rewrite(7, 70_001, 4000, now, 90_000),
            Some((70_001 - 65_536, 4000))
        );
    }

    #[test]
    fn a_new_ssrc_continues_the_sequence_and_advances_time() {
        let t0 = Instant::now();
        let mut r = Rewriter::default();
        assert_eq!(r.rewrite(1, 100, 5000, t0, 90_000), Some((100, 5000)));
        assert_eq!(r.rewrite(1, 101, 8000, t0, 90_000), Some((101, 8000)));
        let t1 = t0 + Duration::from_millis(100);
        // Publisher restarted: new SSRC, unrelated numbers.
        assert_eq!(
            r.rewrite(2, 40_000, 123, t1, 90_000),
            Some((102, 8000 + 9000))
        );
        assert_eq!(
            r.rewrite(2, 40_001, 3123, t1, 90_000),
            Some((103, 8000 + 12_000))
        );
        // A straggler of the old source is dropped, not interleaved.
        assert_eq!(r.rewrite(1, 102, 11_000, t1, 90_000), None);
    }

    #[test]
    fn reordered_packets_keep_their_place_and_wrap_correctly() {
        let t0 = Instant::now();
        let mut r = Rewriter::default();
        assert_eq!(
            r.rewrite(1, 65_535, u32::MAX, t0, 48_000),
            Some((65_535, u32::MAX))
        );
        assert_eq!(r.rewrite(1, 65_537, 1919, t0, 48_000), Some((65_537, 1919)));
        assert_eq!(r.rewrite(1, 65_536, 959, t0, 48_000), Some((65_536, 959)));
    }

    #[test]
    fn switch_source_rebases_even_on_the_same_ssrc_and_drops_older_packets() {
        let t0 = Instant::now();
        let mut r = Rewriter::default();
        r.rewrite(1, 10, 0, t0, 90_000);
        r.rewrite(1, 11, 3000, t0, 90_000);
        r.switch_source();
        assert_eq!(r.rewrite(1, 500, 90_000, t0, 90_000), Some((12, 3001)));
        assert_eq!(r.rewrite(1, 499, 87_000, t0, 90_000), None);
    }

    #[test]
    fn a_huge_jump_on_one_ssrc_is_a_restart_not_a_gap() {
        let t0 = Instant::now();
        let mut r = Rewriter::default();
        r.rewrite(1, 10, 0, t0, 90_000);
        assert_eq!(r.rewrite(1, 50_000, 7, t0, 90_000), Some((11, 1)));
    }
}
