//! Who is speaking: RFC 6464 audio levels of one microphone track → a speaking state
//! with hysteresis.
//!
//! Each Opus packet carries the sender's audio level in -dBov (0 loudest, 127 silence).
//! A level at or below [`VOICE_LEVEL`] (-50 dBov) is voice. Speaking starts once voice
//! has lasted [`ON_AFTER`] (300 ms; dips shorter than [`DIP`] do not interrupt it, so a
//! short click never counts) and stops after [`OFF_AFTER`] (1 s) without voice — also
//! when packets stop altogether (mute, DTX), which [`SpeakingDetector::on_tick`] notices.
//! Two transitions are at least [`MIN_SPACING`] apart, so a participant produces a few
//! `rtc.speaking` events per second at most.
//!
//! The reported `level` is a smoothed level of the voice (-dBov, protocol-v1 §5): an
//! exponential average over the voice packets, the quiet level when speaking stops.
//!
//! Called per incoming audio packet (arithmetic only) and from the core's tick.

use std::time::{Duration, Instant};

/// Loudest level (-dBov) that still counts as silence is one above this.
pub(crate) const VOICE_LEVEL: u8 = 50;
/// Voice this long raises speaking.
pub(crate) const ON_AFTER: Duration = Duration::from_millis(300);
/// No voice this long lowers it.
pub(crate) const OFF_AFTER: Duration = Duration::from_secs(1);
/// A quiet gap shorter than this does not end a run of voice.
const DIP: Duration = Duration::from_millis(150);
/// Least time between two transitions.
const MIN_SPACING: Duration = Duration::from_millis(300);

/// A speaking state change to announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Transition {
    pub(crate) speaking: bool,
    /// -dBov, 0–127.
    pub(crate) level: u8,
}

/// Speaking state of one audio track.
#[derive(Debug, Clone)]
pub(crate) struct SpeakingDetector {
    run_start: Option<Instant>,
    last_voice: Option<Instant>,
    speaking: bool,
    /// Smoothed level in 1/16 dB steps (-dBov × 16).
    smoothed: u32,
    last_transition: Option<Instant>,
}

impl Default for SpeakingDetector {
    fn default() -> Self {
        Self {
            run_start: None,
            last_voice: None,
            speaking: false,
            smoothed: 127 * 16,
            last_transition: None,
        }
    }
}

impl SpeakingDetector {
    /// Whether the track is considered speaking.
    #[cfg(test)]
    pub(crate) fn speaking(&self) -> bool {
        self.speaking
    }

    fn level(&self) -> u8 {
        ((self.smoothed + 8) / 16).min(127) as u8
    }

    fn spaced(&self, now: Instant) -> bool {
        self.last_transition
            .is_none_or(|t| now.saturating_duration_since(t) >= MIN_SPACING)
    }

    /// One packet's level (-dBov; values above 127 are treated as 127).
    pub(crate) fn on_level(&mut self, now: Instant, level: u8) -> Option<Transition> {
        let level = level.min(127);
        // Average over ~4 packets (80 ms of Opus).
        self.smoothed = (self.smoothed * 3 + u32::from(level) * 16) / 4;
        if level <= VOICE_LEVEL {
            if self
                .last_voice
                .is_none_or(|t| now.saturating_duration_since(t) > DIP)
            {
                self.run_start = Some(now);
            }
            self.last_voice = Some(now);
        }
        self.on_tick(now)
    }

    /// Re-evaluates the state at `now` (also when no packet arrived).
    pub(crate) fn on_tick(&mut self, now: Instant) -> Option<Transition> {
        if !self.spaced(now) {
            return None;
        }
        let voice_recent = self
            .last_voice
            .is_some_and(|t| now.saturating_duration_since(t) <= DIP);
        let next = if self.speaking {
            self.last_voice
                .is_some_and(|t| now.saturating_duration_since(t) < OFF_AFTER)
        } else {
            voice_recent
                && self
                    .run_start
                    .is_some_and(|t| now.saturating_duration_since(t) >= ON_AFTER)
        };
        if next == self.speaking {
            return None;
        }
        self.speaking = next;
        self.last_transition = Some(now);
        Some(Transition {
            speaking: next,
            level: self.level(),
        })
    }

    /// The track stopped (muted, removed): speaking ends at once if it was on.
    pub(crate) fn stop(&mut self, now: Instant) -> Option<Transition> {
        self.run_start = None;
        self.last_voice = None;
        self.smoothed = 127 * 16;
        if !self.speaking {
            return None;
        }
        self.speaking = false;
        self.last_transition = Some(now);
        Some(Transition {
            speaking: false,
            level: 127,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PACKET: Duration = Duration::from_millis(20);

    /// Feeds `level` for `d` in 20 ms packets; returns the transitions with their time.
    fn feed(
        det: &mut SpeakingDetector,
        t: &mut Instant,
        d: Duration,
        level: u8,
        out: &mut Vec<(Instant, Transition)>,
    ) {
        let end = *t + d;
        while *t < end {
            if let Some(tr) = det.on_level(*t, level) {
                out.push((*t, tr));
            }
            *t += PACKET;
        }
    }

    #[test]
    fn voice_for_300_ms_raises_speaking_and_one_second_of_silence_lowers_it() {
        let t0 = Instant::now();
        let mut t = t0;
        let mut det = SpeakingDetector::default();
        let mut out = Vec::new();
        feed(&mut det, &mut t, Duration::from_secs(1), 127, &mut out);
        assert!(out.is_empty());
        let voice_at = t;
        feed(&mut det, &mut t, Duration::from_secs(2), 30, &mut out);
        assert_eq!(out.len(), 1);
        let (at, tr) = out[0];
        assert!(tr.speaking);
        assert_eq!(at - voice_at, ON_AFTER);
        assert!((30..=40).contains(&tr.level), "{}", tr.level);
        let quiet_at = t;
        feed(&mut det, &mut t, Duration::from_secs(2), 110, &mut out);
        assert_eq!(out.len(), 2);
        let (at, tr) = out[1];
        assert!(!tr.speaking);
        let after = at - quiet_at;
        assert!(
            after >= OFF_AFTER - PACKET && after <= OFF_AFTER,
            "{after:?}"
        );
    }

    #[test]
    fn short_clicks_and_brief_dips_do_not_toggle() {
        let mut t = Instant::now();
        let mut det = SpeakingDetector::default();
        let mut out = Vec::new();
        for _ in 0..10 {
            feed(&mut det, &mut t, Duration::from_millis(100), 20, &mut out);
            feed(&mut det, &mut t, Duration::from_millis(400), 120, &mut out);
        }
        assert!(out.is_empty(), "clicks: {out:?}");
        // Speech with 100 ms pauses between words stays one speaking period.
        for _ in 0..10 {
            feed(&mut det, &mut t, Duration::from_millis(400), 35, &mut out);
            feed(&mut det, &mut t, Duration::from_millis(100), 100, &mut out);
        }
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn silence_without_packets_ends_speaking_on_the_tick() {
        let mut t = Instant::now();
        let mut det = SpeakingDetector::default();
        let mut out = Vec::new();
        feed(&mut det, &mut t, Duration::from_millis(500), 25, &mut out);
        assert!(det.speaking());
        assert_eq!(det.on_tick(t + Duration::from_millis(900)), None);
        let tr = det.on_tick(t + Duration::from_millis(1000)).expect("off");
        assert!(!tr.speaking);
    }

    #[test]
    fn stop_ends_speaking_at_once() {
        let mut t = Instant::now();
        let mut det = SpeakingDetector::default();
        let mut out = Vec::new();
        feed(&mut det, &mut t, Duration::from_millis(500), 25, &mut out);
        assert_eq!(
            det.stop(t),
            Some(Transition {
                speaking: false,
                level: 127
            })
        );
        assert_eq!(det.stop(t), None);
    }
}
