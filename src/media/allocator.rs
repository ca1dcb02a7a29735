//! Per-subscriber bandwidth allocation: which simulcast layer each video subscription
//! gets out of the subscriber's downlink estimate.
//!
//! Three parts, all pure (time is an argument) and unit-tested here:
//! - [`Bandwidth`]: the subscriber's estimate. TWCC (str0m's delay- and loss-based
//!   estimator, `Event::EgressBitrateEstimate`) when the client negotiated transport-cc;
//!   else REMB when the client sends it; else a loss-based controller fed by receiver
//!   reports (RFC 3550 fraction lost): above 10% loss it steps down to what was sent
//!   minus half the loss, below 2% it grows 8% per report.
//! - [`allocate`]: shares the estimate. Audio is paid first (its measured rate), then
//!   screen shares (highest video priority, each raised to the layer its subscriber
//!   pinned with `max_layer` when the budget allows), then cameras one layer step at a
//!   time in turn, so equals share fairly. Every video subscription keeps at least its
//!   lowest available layer: bandwidth lowers quality, it never blanks a video.
//!   Keeping the current layer costs its rate; a higher layer costs its rate plus 25%
//!   headroom, so a noisy estimate cannot flip a subscription up and down.
//! - [`ClimbGate`]: how often a subscriber may climb. After a climb the next waits
//!   `hold` (2 s); a drop soon after a climb (a failed climb) doubles `hold`, up to
//!   16 s; 30 s without a drop brings it back to 2 s. Drops are never delayed.
//!
//! Called by `MediaCore` from its allocation tick (5 Hz) and when an estimate arrives;
//! never per packet.

use std::time::{Duration, Instant};

/// Layers per track the allocator handles (protocol-v1: up to three rids).
pub(crate) const MAX_LAYERS: usize = 4;
/// The estimate before any feedback arrived (and str0m's initial TWCC estimate).
pub(crate) const INITIAL_ESTIMATE_BPS: u64 = 1_000_000;
/// Climbing to a layer needs this much more than its rate (numerator / 100).
const CLIMB_HEADROOM_PCT: u64 = 125;
/// A screen share below its top keeps the cameras beside it at their lowest layer while
/// its next layer fits at this share of its measured rate (percent).
const SCREEN_CLAIM_PCT: u64 = 90;
const MIN_HOLD: Duration = Duration::from_secs(2);
const MAX_HOLD: Duration = Duration::from_secs(16);
/// A drop this soon after a climb means the climb failed.
const FAILED_CLIMB_WINDOW: Duration = Duration::from_secs(3);
/// This long without a drop resets the hold to its minimum.
const CALM: Duration = Duration::from_secs(30);
/// Loss-based controller (receiver reports only).
const LOSS_HIGH: f32 = 0.10;
const LOSS_LOW: f32 = 0.02;
const LOSS_GROWTH_PCT: u64 = 108;
/// The loss-based estimate never runs further ahead of what is sent than this.
const LOSS_MAX_AHEAD_FACTOR: u64 = 4;
const LOSS_MAX_AHEAD_BPS: u64 = 100_000;
/// Receiver reports are applied at most this often (one per m-line arrives each second).
const LOSS_INTERVAL: Duration = Duration::from_millis(900);
/// How long heavy loss caps any estimate at the rate that got through.
const LOSS_CAP_HOLD: Duration = Duration::from_secs(3);

/// Where a subscriber's estimate comes from (for diagnostics and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EstimateSource {
    /// No feedback yet: the initial estimate.
    Initial,
    /// Transport-wide congestion control (str0m's estimator).
    Twcc,
    /// Receiver Estimated Maximum Bitrate sent by the client.
    Remb,
    /// Loss fractions of receiver reports.
    ReceiverReports,
}

/// A subscriber's downlink estimate, from the best feedback it gives.
#[derive(Debug, Clone, Default)]
pub(crate) struct Bandwidth {
    twcc: Option<u64>,
    twcc_active: bool,
    remb: Option<u64>,
    loss_based: Option<u64>,
    /// Highest loss fraction reported since the last loss update.
    pending_loss: Option<f32>,
    /// Highest loss fraction reported since the cap was last considered.
    pending_cap: Option<f32>,
    last_loss_update: Option<Instant>,
    /// Heavy loss seen: the rate that got through, and until when it caps the estimate.
    /// Delay-based estimates fall gradually; this reacts within one report.
    loss_cap: Option<(u64, Instant)>,
}

impl Bandwidth {
    /// A TWCC estimate; `can_probe: false` means TWCC feedback stopped being possible.
    pub(crate) fn on_twcc(&mut self, bps: u64, can_probe: bool) {
        self.twcc = Some(bps);
        self.twcc_active = can_probe;
        if !can_probe {
            self.loss_based.get_or_insert(bps);
        }
    }

    /// A REMB from the client.
    pub(crate) fn on_remb(&mut self, bps: u64) {
        self.remb = Some(bps);
    }

    /// The loss fraction (0–1) of one receiver report block.
    pub(crate) fn on_loss(&mut self, loss: f32) {
        if loss.is_finite() {
            let l = loss.clamp(0.0, 1.0);
            self.pending_loss = Some(self.pending_loss.map_or(l, |p| p.max(l)));
            self.pending_cap = Some(self.pending_cap.map_or(l, |p| p.max(l)));
        }
    }

    /// Applies the reported loss to the loss-based estimate, at most once per report
    /// interval. `sending_bps` is what the subscriber is being sent now. Returns whether
    /// the estimate changed.
    pub(crate) fn update_loss(&mut self, now: Instant, sending_bps: u64) -> bool {
        let capped = self.loss_cap;
        // The cap reacts to every report at once.
        match self.pending_cap.take() {
            Some(loss) if loss > LOSS_HIGH => {
                let lost_permille = (f64::from(loss) * 1000.0).round() as u64;
                let delivered = sending_bps / 1000 * (1000 - lost_permille.min(1000));
                self.loss_cap = Some((delivered, now + LOSS_CAP_HOLD));
            }
            // A clean report: the congestion is over.
            Some(loss) if loss < LOSS_LOW => self.loss_cap = None,
            _ => {}
        }
        if self
            .last_loss_update
            .is_some_and(|t| now.saturating_duration_since(t) < LOSS_INTERVAL)
        {
            return capped != self.loss_cap;
        }
        let Some(loss) = self.pending_loss.take() else {
            return capped != self.loss_cap;
        };
        self.last_loss_update = Some(now);
        let est = self.loss_based.unwrap_or(INITIAL_ESTIMATE_BPS);
        let next = if loss > LOSS_HIGH {
            let lost_permille = (f64::from(loss) * 500.0).round() as u64;
            sending_bps.min(est) / 1000 * (1000 - lost_permille.min(1000))
        } else if loss < LOSS_LOW {
            let grown = est.saturating_mul(LOSS_GROWTH_PCT) / 100;
            let ceiling = sending_bps
                .saturating_mul(LOSS_MAX_AHEAD_FACTOR)
                .saturating_add(LOSS_MAX_AHEAD_BPS);
            grown.min(ceiling.max(est))
        } else {
            est
        };
        self.loss_based = Some(next);
        next != est || capped != self.loss_cap
    }

    /// The estimate in use at `now` and where it comes from.
    pub(crate) fn estimate(&self, now: Instant) -> (u64, EstimateSource) {
        let (est, source) = match (self.twcc_active, self.twcc, self.remb, self.loss_based) {
            (true, Some(t), _, _) => (t, EstimateSource::Twcc),
            (_, _, Some(r), _) => (r, EstimateSource::Remb),
            (_, _, _, Some(l)) => (l, EstimateSource::ReceiverReports),
            _ => (INITIAL_ESTIMATE_BPS, EstimateSource::Initial),
        };
        match self.loss_cap {
            Some((cap, until)) if now < until => (est.min(cap), source),
            _ => (est, source),
        }
    }
}

/// When a subscriber may next climb a layer.
#[derive(Debug, Clone)]
pub(crate) struct ClimbGate {
    hold: Duration,
    not_before: Option<Instant>,
    last_climb: Option<Instant>,
    last_drop: Option<Instant>,
    /// The last climb already counted as failed (one doubling per climb, however many
    /// steps the drop after it takes).
    climb_failed: bool,
}

impl Default for ClimbGate {
    fn default() -> Self {
        Self {
            hold: MIN_HOLD,
            not_before: None,
            last_climb: None,
            last_drop: None,
            climb_failed: false,
        }
    }
}

impl ClimbGate {
    /// Whether a climb is allowed at `now`.
    pub(crate) fn may_climb(&self, now: Instant) -> bool {
        self.not_before.is_none_or(|t| now >= t)
    }

    /// A subscription of this subscriber was moved up.
    pub(crate) fn on_climb(&mut self, now: Instant) {
        if self
            .last_drop
            .is_none_or(|t| now.saturating_duration_since(t) >= CALM)
        {
            self.hold = MIN_HOLD;
        }
        self.last_climb = Some(now);
        self.climb_failed = false;
        self.not_before = Some(now + self.hold);
    }

    /// A subscription of this subscriber was moved down for bandwidth.
    pub(crate) fn on_drop(&mut self, now: Instant) {
        if !self.climb_failed
            && self
                .last_climb
                .is_some_and(|t| now.saturating_duration_since(t) < FAILED_CLIMB_WINDOW)
        {
            self.hold = (self.hold * 2).min(MAX_HOLD);
            self.climb_failed = true;
        }
        self.last_drop = Some(now);
        self.not_before = Some(now + self.hold);
    }

    /// The current hold (for diagnostics and tests).
    #[cfg(test)]
    pub(crate) fn hold(&self) -> Duration {
        self.hold
    }
}

/// Allocation priority of a video subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Priority {
    /// Screen share: served first.
    Screen,
    /// Camera (and anything else): shares what is left fairly.
    Camera,
}

/// One video subscription as the allocator sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct VideoDemand {
    pub(crate) priority: Priority,
    /// Measured rate of each layer (lowest first); `None`: not available now.
    pub(crate) rates: [Option<u64>; MAX_LAYERS],
    /// Highest layer index allowed (`max_layer`).
    pub(crate) cap: usize,
    /// Screen share: the layer the subscriber asked for explicitly, kept when the
    /// budget allows it.
    pub(crate) pinned: Option<usize>,
    /// The layer the subscription receives (or is switching to).
    pub(crate) current: Option<usize>,
}

impl VideoDemand {
    fn rate(&self, layer: usize) -> Option<u64> {
        self.rates.get(layer).copied().flatten()
    }

    /// What holding `layer` costs: its rate, plus headroom if it is a climb.
    fn cost(&self, layer: usize) -> u64 {
        let rate = self.rate(layer).unwrap_or(0);
        match self.current {
            Some(c) if layer <= c => rate,
            None if Some(layer) == self.base() => rate,
            _ => rate.saturating_mul(CLIMB_HEADROOM_PCT) / 100,
        }
    }

    /// The lowest available layer within the cap; `None` while none of them is (a
    /// layer above `max_layer` is never given, even when it is all that flows).
    fn base(&self) -> Option<usize> {
        (0..=self.cap.min(MAX_LAYERS - 1)).find(|&l| self.rate(l).is_some())
    }

    /// The next available layer above `from`, within the cap.
    fn step_up(&self, from: usize) -> Option<usize> {
        (from + 1..=self.cap.min(MAX_LAYERS - 1)).find(|&l| self.rate(l).is_some())
    }

    fn is_climb(&self, layer: usize) -> bool {
        match self.current {
            Some(c) => layer > c,
            None => false,
        }
    }
}

/// Shares `budget` (bits/s left after audio) among `demands`; writes one target layer
/// per demand into `out` (`None` only when nothing is available). Climbs above a
/// subscription's current layer happen only when `may_climb`.
pub(crate) fn allocate(
    budget: u64,
    demands: &[VideoDemand],
    may_climb: bool,
    out: &mut Vec<Option<usize>>,
) {
    out.clear();
    out.extend(demands.iter().map(VideoDemand::base));
    let mut spent: u64 = demands
        .iter()
        .zip(out.iter())
        .map(|(d, l)| l.map_or(0, |l| d.cost(l)))
        .sum();
    let allowed = |d: &VideoDemand, l: usize| may_climb || !d.is_climb(l);

    // Screens first: straight to the pinned layer if it fits, then step by step.
    for (i, d) in demands.iter().enumerate() {
        if d.priority != Priority::Screen {
            continue;
        }
        let Some(base) = out[i] else { continue };
        if let Some(p) = d.pinned.map(|p| p.min(d.cap))
            && p > base
            && d.rate(p).is_some()
            && allowed(d, p)
        {
            let extra = d.cost(p).saturating_sub(d.cost(base));
            if spent + extra <= budget {
                out[i] = Some(p);
                spent += extra;
            }
        }
        while let Some(cur) = out[i] {
            let Some(next) = d.step_up(cur).filter(|&n| allowed(d, n)) else {
                break;
            };
            let extra = d.cost(next).saturating_sub(d.cost(cur));
            if spent + extra > budget {
                break;
            }
            out[i] = Some(next);
            spent += extra;
        }
    }
    // A screen held below its top by the climb headroom (or barely by the estimate)
    // keeps its claim: if its next layer fits at [`SCREEN_CLAIM_PCT`] of its measured
    // rate with the cameras at their lowest, the cameras stay there. So a camera never
    // sits above its base while the screen, which has priority, could nearly have had
    // that bandwidth; the screen climbs once the estimate grants the headroom (probing
    // asks for it). The margin keeps the decision from following the noise of the
    // measured rates when the screen's next layer only just fits.
    let screen_waits = demands.iter().zip(out.iter()).any(|(d, l)| {
        d.priority == Priority::Screen
            && l.and_then(|cur| d.step_up(cur).map(|next| (cur, next)))
                .is_some_and(|(cur, next)| {
                    let claim = d.rate(next).unwrap_or(0).saturating_mul(SCREEN_CLAIM_PCT) / 100;
                    spent + claim.saturating_sub(d.cost(cur)) <= budget
                })
    });
    if screen_waits {
        return;
    }
    // Cameras: one step each in turn, so equals end up equal.
    loop {
        let mut progressed = false;
        for (i, d) in demands.iter().enumerate() {
            if d.priority != Priority::Camera {
                continue;
            }
            let Some(cur) = out[i] else { continue };
            let Some(next) = d.step_up(cur).filter(|&n| allowed(d, n)) else {
                continue;
            };
            let extra = d.cost(next).saturating_sub(d.cost(cur));
            if spent + extra <= budget {
                out[i] = Some(next);
                spent += extra;
                progressed = true;
            }
        }
        if !progressed {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q: u64 = 150_000;
    const H: u64 = 500_000;
    const F: u64 = 1_500_000;

    fn cam(current: Option<usize>) -> VideoDemand {
        VideoDemand {
            priority: Priority::Camera,
            rates: [Some(Q), Some(H), Some(F), None],
            cap: 2,
            pinned: None,
            current,
        }
    }

    fn run(budget: u64, d: &[VideoDemand], climb: bool) -> Vec<Option<usize>> {
        let mut out = Vec::new();
        allocate(budget, d, climb, &mut out);
        out
    }

    #[test]
    fn a_layer_is_kept_at_its_rate_but_climbed_to_only_with_headroom() {
        assert_eq!(run(1_600_000, &[cam(Some(2))], true), vec![Some(2)]);
        assert_eq!(run(1_600_000, &[cam(Some(1))], true), vec![Some(1)]);
        assert_eq!(run(1_900_000, &[cam(Some(1))], true), vec![Some(2)]);
        assert_eq!(run(1_400_000, &[cam(Some(2))], true), vec![Some(1)]);
        assert_eq!(run(300_000, &[cam(Some(2))], true), vec![Some(0)]);
        // Never blank: the lowest layer stays even when nothing fits.
        assert_eq!(run(10_000, &[cam(Some(2))], true), vec![Some(0)]);
    }

    #[test]
    fn climbing_waits_for_the_gate_but_dropping_does_not() {
        assert_eq!(run(5_000_000, &[cam(Some(0))], false), vec![Some(0)]);
        assert_eq!(run(200_000, &[cam(Some(2))], false), vec![Some(0)]);
        // A new subscription picks freely.
        assert_eq!(run(5_000_000, &[cam(None)], false), vec![Some(2)]);
    }

    #[test]
    fn max_layer_caps_and_unavailable_layers_are_skipped() {
        let mut d = cam(Some(0));
        d.cap = 0;
        assert_eq!(run(9_000_000, &[d], true), vec![Some(0)]);
        let mut d = cam(Some(0));
        d.rates[1] = None;
        assert_eq!(run(700_000, &[d], true), vec![Some(0)]);
        assert_eq!(run(2_000_000, &[d], true), vec![Some(2)]);
        let mut d = cam(None);
        d.rates = [None; MAX_LAYERS];
        assert_eq!(run(2_000_000, &[d], true), vec![None]);
        // Only layers above the cap flow (q not priced yet): nothing rather than them.
        let mut d = cam(None);
        d.cap = 0;
        d.rates[0] = None;
        assert_eq!(run(9_000_000, &[d], true), vec![None]);
    }

    #[test]
    fn a_camera_stays_low_while_the_screen_beside_it_nearly_fits_its_next_layer() {
        let screen = VideoDemand {
            priority: Priority::Screen,
            ..cam(Some(1))
        };
        // Screen f + camera q fit at their rates but not the screen's climb headroom:
        // the screen stays on h and the camera on q (camera h would fit).
        let out = run(F + Q + 20_000, &[cam(Some(0)), screen], true);
        assert_eq!(out, vec![Some(0), Some(1)]);
        // The same holds a camera already on h down to q.
        let out = run(F + Q + 20_000, &[cam(Some(1)), screen], true);
        assert_eq!(out, vec![Some(0), Some(1)]);
        // Screen f out of reach even at 90% of its rate: the camera may climb.
        let out = run(
            H + H * 125 / 100 + Q + 10_000,
            &[cam(Some(0)), screen],
            true,
        );
        assert_eq!(out, vec![Some(1), Some(1)]);
    }

    #[test]
    fn cameras_share_fairly_and_screens_come_first() {
        // Two cameras, room for q+h each but not f for either.
        let both = run(
            2 * H * 125 / 100 + 10_000,
            &[cam(Some(0)), cam(Some(0))],
            true,
        );
        assert_eq!(both, vec![Some(1), Some(1)]);
        let screen = VideoDemand {
            priority: Priority::Screen,
            ..cam(Some(2))
        };
        // Enough for screen f + camera q only.
        let out = run(F + Q + 50_000, &[cam(Some(2)), screen], true);
        assert_eq!(out, vec![Some(0), Some(2)]);
    }

    #[test]
    fn a_pinned_screen_layer_is_taken_when_it_fits_and_left_when_it_does_not() {
        let screen = VideoDemand {
            priority: Priority::Screen,
            pinned: Some(1),
            cap: 1,
            ..cam(Some(1))
        };
        assert_eq!(run(H + 10_000, &[screen], true), vec![Some(1)]);
        assert_eq!(run(H - 10_000, &[screen], true), vec![Some(0)]);
    }

    #[test]
    fn three_percent_estimate_noise_changes_nothing_at_a_layer_boundary() {
        // Estimate right at f + 10%: noise of ±3% must neither drop nor re-climb.
        let mut rng = 0x1234_5678_u64;
        let mut current = Some(2);
        let mut changes = 0;
        for _ in 0..1000 {
            rng = rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let noise = ((rng >> 33) % 601) as i64 - 300; // ±3.00%
            let est = (F as i64 * 110 / 100) * (10_000 + noise) / 10_000;
            let out = run(est as u64, &[cam(current)], true);
            if out[0] != current {
                changes += 1;
                current = out[0];
            }
        }
        assert_eq!(changes, 0);
    }

    #[test]
    fn a_failed_climb_doubles_the_hold_up_to_sixteen_seconds_and_calm_resets_it() {
        let t0 = Instant::now();
        let mut g = ClimbGate::default();
        assert!(g.may_climb(t0));
        let mut t = t0;
        for expected in [4, 8, 16, 16] {
            g.on_climb(t);
            t += Duration::from_secs(1);
            g.on_drop(t);
            assert_eq!(g.hold(), Duration::from_secs(expected));
            assert!(!g.may_climb(t + Duration::from_secs(expected) - Duration::from_millis(1)));
            t += Duration::from_secs(expected);
            assert!(g.may_climb(t));
        }
        // A drop in several steps after one climb doubles once.
        g.on_climb(t);
        g.on_drop(t + Duration::from_millis(500));
        assert_eq!(g.hold(), MAX_HOLD);
        let mut g = ClimbGate::default();
        g.on_climb(t);
        g.on_drop(t + Duration::from_millis(500));
        g.on_drop(t + Duration::from_millis(900));
        assert_eq!(g.hold(), Duration::from_secs(4));
        g.on_climb(t + CALM + Duration::from_secs(1));
        assert_eq!(g.hold(), MIN_HOLD);
    }

    #[test]
    fn twcc_wins_then_remb_then_receiver_reports() {
        let t0 = Instant::now();
        let mut b = Bandwidth::default();
        // Past the loss caps of the reports below (their own test is next).
        let later = t0 + Duration::from_secs(10);
        assert_eq!(
            b.estimate(later),
            (INITIAL_ESTIMATE_BPS, EstimateSource::Initial)
        );
        b.on_loss(0.3);
        assert!(b.update_loss(t0, 800_000));
        assert_eq!(
            b.estimate(later),
            (680_000, EstimateSource::ReceiverReports)
        );
        // Not twice within the report interval.
        b.on_loss(0.3);
        b.update_loss(t0 + Duration::from_millis(100), 800_000);
        assert_eq!(b.estimate(later).0, 680_000);
        // ...but kept: the worst loss of the interval counts.
        b.on_loss(0.0);
        assert!(b.update_loss(t0 + Duration::from_secs(1), 800_000));
        assert_eq!(b.estimate(later).0, 578_000);
        b.on_loss(0.0);
        assert!(b.update_loss(t0 + Duration::from_secs(2), 600_000));
        assert_eq!(b.estimate(later).0, 578_000 * 108 / 100);
        b.on_remb(2_000_000);
        assert_eq!(b.estimate(later), (2_000_000, EstimateSource::Remb));
        b.on_twcc(3_000_000, true);
        assert_eq!(b.estimate(later), (3_000_000, EstimateSource::Twcc));
        b.on_twcc(3_000_000, false);
        assert_eq!(b.estimate(later), (2_000_000, EstimateSource::Remb));
    }

    #[test]
    fn heavy_loss_caps_any_estimate_at_what_got_through_for_a_while() {
        let t0 = Instant::now();
        let mut b = Bandwidth::default();
        b.on_twcc(3_000_000, true);
        b.on_loss(0.8);
        assert!(b.update_loss(t0, 1_500_000));
        assert_eq!(b.estimate(t0), (300_000, EstimateSource::Twcc));
        assert_eq!(
            b.estimate(t0 + LOSS_CAP_HOLD),
            (3_000_000, EstimateSource::Twcc)
        );
        b.on_loss(0.8);
        b.update_loss(t0, 1_500_000);
        b.on_loss(0.0);
        b.update_loss(t0 + Duration::from_millis(200), 1_500_000);
        assert_eq!(b.estimate(t0), (3_000_000, EstimateSource::Twcc));
    }

    #[test]
    fn the_loss_based_estimate_does_not_run_far_ahead_of_what_is_sent() {
        let mut t = Instant::now();
        let mut b = Bandwidth::default();
        for _ in 0..100 {
            b.on_loss(0.0);
            b.update_loss(t, 200_000);
            t += Duration::from_secs(1);
        }
        assert_eq!(b.estimate(t).0, INITIAL_ESTIMATE_BPS);
    }
}
