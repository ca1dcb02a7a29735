//! The media core's side of layer selection and speaking: the 5 Hz tick, reallocation
//! of one subscriber's downlink among its subscriptions, and BWE probing.
//!
//! The decisions themselves are pure and live in `allocator.rs` (shares, hysteresis)
//! and `speaking.rs`; this file gathers their inputs from the core's tables (measured
//! layer rates, caps, pauses, the subscriber's estimate) and applies their outputs: a
//! new target layer per subscription (switched to on its next keyframe by the fan-out,
//! which asks for one now), `rtc.speaking` transitions, and `bwe().set_bitrate` so
//! str0m probes towards the rate the subscriber's ideal layers need.
//!
//! Runs on the tick and right after an estimate changes; never per packet. The
//! scratch vectors are kept in the core, so a steady tick allocates nothing.

use std::time::{Duration, Instant};

use str0m::bwe::Bitrate;
use str0m::media::KeyframeRequestKind;
use str0m::rtp::Extension;

use super::super::allocator::{self, EstimateSource, MAX_LAYERS, Priority, VideoDemand};
use super::super::{Layer, MediaEvent, MediaKind, PcKind, TrackSource};
use super::MediaCore;
use crate::ids::{SessionId, TrackId};

/// Period of the allocation and speaking tick.
const TICK: Duration = Duration::from_millis(200);
/// `set_bitrate` is repeated only when a value moved by more than this (percent).
const BWE_SET_CHANGE_PCT: u64 = 5;
/// Without transport-cc, str0m's pacer is held this far above what we send (percent).
const NO_TWCC_PACER_HEADROOM_PCT: u64 = 200;
/// Least time between two allocation probes of one subscriber.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

impl MediaCore {
    /// The downlink estimate of a subscriber and where it comes from.
    pub fn subscriber_estimate(&self, who: &SessionId) -> Option<(u64, EstimateSource)> {
        let key = self.pc_key(who, PcKind::Subscribe)?;
        let now = self.last_now?;
        Some(self.pcs.get(key)?.bandwidth.estimate(now))
    }

    /// The layer a subscriber receives of a track now (`None`: nothing forwarded yet,
    /// or paused). A track without simulcast reports `F`.
    pub fn subscription_layer(&self, who: &SessionId, track: &TrackId) -> Option<Layer> {
        let key = self.pc_key(who, PcKind::Subscribe)?;
        let tk = *self.track_ids.get(track)?;
        let t = self.tracks.get(tk)?;
        let pc = self.pcs.get(key)?;
        pc.subs_by_mid
            .iter()
            .filter_map(|&(_, sk)| self.subs.get(sk))
            .find(|s| s.track == tk)
            .and_then(|s| s.current_layer)
            .map(|l| {
                if t.layers.len() > 1 {
                    t.layer_name(l)
                } else {
                    Layer::F
                }
            })
    }

    /// The periodic work: speaking silence and every subscriber's allocation.
    pub(super) fn tick(&mut self, now: Instant) {
        self.next_tick = (self.pcs.len() > 0).then_some(now + TICK);
        for slot in self.tracks.slots.iter_mut().flatten() {
            if let Some(det) = slot.speaking.as_mut()
                && let Some(tr) = det.on_tick(now)
            {
                self.events.push_back(MediaEvent::Speaking {
                    who: slot.owner.clone(),
                    speaking: tr.speaking,
                    level: tr.level,
                });
            }
        }
        for (key, pc) in self.pcs.slots.iter().enumerate() {
            if pc.as_ref().is_some_and(|p| p.kind == PcKind::Subscribe)
                && !self.realloc.contains(&key)
            {
                self.realloc.push(key);
            }
        }
    }

    /// Reallocates the subscribers whose inputs changed. Entries added while this
    /// runs wait for the next input.
    pub(super) fn reallocate_pending(&mut self, now: Instant) {
        if self.realloc.is_empty() {
            return;
        }
        let mut keys = std::mem::take(&mut self.realloc);
        for key in keys.drain(..) {
            self.allocate_subscriber(now, key);
        }
        if self.realloc.is_empty() {
            self.realloc = keys;
        }
    }

    /// Shares one subscriber's estimate among its subscriptions (`allocator.rs`).
    fn allocate_subscriber(&mut self, now: Instant, key: usize) {
        let Some(pc) = self.pcs.get(key) else { return };
        if pc.dead || pc.kind != PcKind::Subscribe {
            return;
        }
        self.demands.clear();
        self.demand_subs.clear();
        // Audio is paid first; `sending` is what goes out now, `ideal` what the caps
        // would allow with unlimited bandwidth.
        let (mut audio, mut sending, mut ideal) = (0u64, 0u64, 0u64);
        for &(_, sk) in &pc.subs_by_mid {
            let Some(sub) = self.subs.get(sk) else {
                continue;
            };
            let Some(track) = self.tracks.get(sub.track) else {
                continue;
            };
            if !track.forwarding {
                continue;
            }
            if track.kind == MediaKind::Audio {
                if !sub.deafened {
                    audio += track.layers.first().map_or(0, |l| l.meter.bitrate_bps(now));
                }
                continue;
            }
            if sub.paused {
                continue;
            }
            let idle = track.layer_idle();
            let mut rates = [None; MAX_LAYERS];
            for (i, l) in track.layers.iter().enumerate().take(MAX_LAYERS) {
                rates[i] = l.priced_rate(now, idle);
            }
            let cap = track.cap_index(sub.max_layer).min(MAX_LAYERS - 1);
            let priority = if track.source == TrackSource::Screen {
                Priority::Screen
            } else {
                Priority::Camera
            };
            if let Some(c) = sub.current_layer {
                sending += rates.get(c).copied().flatten().unwrap_or(0);
            }
            ideal += (0..=cap).rev().find_map(|i| rates[i]).unwrap_or(0);
            self.demands.push(VideoDemand {
                priority,
                rates,
                cap,
                pinned: (priority == Priority::Screen && sub.max_layer_pinned).then_some(cap),
                current: sub.target.or(sub.current_layer),
            });
            self.demand_subs.push(sk);
        }
        sending += audio;
        ideal += audio;

        let pc = self.pcs.get_mut(key).expect("checked above");
        pc.bandwidth.update_loss(now, sending);
        let (estimate, _) = pc.bandwidth.estimate(now);
        let budget = estimate.saturating_sub(audio);
        let may_climb = pc.gate.may_climb(now);
        allocator::allocate(budget, &self.demands, may_climb, &mut self.allocation);

        let (mut climbed, mut dropped, mut limited) = (false, false, false);
        let mut allocated = audio;
        for (i, &sk) in self.demand_subs.iter().enumerate() {
            let new = self.allocation[i];
            let Some(sub) = self.subs.get_mut(sk) else {
                continue;
            };
            let old = sub.target.or(sub.current_layer);
            if let (Some(o), Some(n)) = (old, new) {
                climbed |= n > o;
                dropped |= n < o;
            }
            sub.target = new;
            let d = &self.demands[i];
            let top = (0..=d.cap.min(MAX_LAYERS - 1))
                .rev()
                .find(|&l| d.rates[l].is_some());
            limited |= new < top;
            if let Some(n) = new {
                allocated += self.demands[i].rates[n].unwrap_or(0);
                if sub.current_layer != Some(n) {
                    self.pending_keyframes
                        .push((sub.track, n, KeyframeRequestKind::Pli));
                }
            }
        }
        if dropped {
            pc.gate.on_drop(now);
        } else if climbed {
            pc.gate.on_climb(now);
        }

        // Tell str0m what is sent and what the ideal layers need (with the climb
        // headroom). str0m probes when `desired` increases, so while the estimate is
        // short of that (a subscription held below its best layer, or a single-layer
        // stream the pacer would otherwise hold back), `desired` is lowered for one
        // tick and raised on the next, at most every PROBE_INTERVAL: each probe can
        // double the estimate, so a restored link is found in a few seconds.
        let mut desired = ideal.saturating_mul(125) / 100;
        let short = limited || desired > estimate;
        if short && (may_climb || !limited) && pc.next_probe.is_none_or(|t| now >= t) {
            if pc.probe_armed {
                pc.probe_armed = false;
                pc.next_probe = Some(now + PROBE_INTERVAL);
                // Force the raise through even when `desired` itself did not move.
                pc.bwe_set.1 = 0;
            } else {
                pc.probe_armed = true;
                desired = allocated;
            }
        }
        // str0m probes right after connecting, usually before any video flows: with
        // nothing to pad with, those probes measure little and the estimate starts far
        // too low (the pacer then holds video back). Restart the estimator once, when
        // the first video is priced, so its initial probes run with video to pad with.
        //
        // Without transport-cc on this connection str0m's estimator gets no feedback:
        // its estimate would stay at the initial rate and its pacer (1.1 × estimate)
        // would queue anything above that for up to 2 s — seconds of latency for a
        // subscriber of a few cameras. Our estimate then comes from REMB or receiver
        // reports; str0m's is reset to what that lets us send, plus headroom, so the
        // pacer only smooths bursts. Resets are rare: only when the rate rises past
        // the last one or falls below half of it.
        let twcc = pc.subs_by_mid.iter().any(|&(mid, _)| {
            pc.rtc.media(mid).is_some_and(|m| {
                m.remote_extmap()
                    .id_of(Extension::TransportSequenceNumber)
                    .is_some()
            })
        });
        if !twcc && !pc.subs_by_mid.is_empty() {
            let floor = estimate
                .max(allocated)
                .max(allocator::INITIAL_ESTIMATE_BPS)
                .saturating_mul(NO_TWCC_PACER_HEADROOM_PCT)
                / 100;
            if floor > pc.pacer_floor || floor.saturating_mul(2) < pc.pacer_floor {
                pc.pacer_floor = floor;
                pc.bwe_primed = true;
                pc.rtc.bwe().reset(Bitrate::bps(floor));
                pc.bwe_set = (0, 0);
            }
        }
        if twcc && !pc.bwe_primed && !self.demands.is_empty() && ideal > audio {
            pc.bwe_primed = true;
            if estimate < allocator::INITIAL_ESTIMATE_BPS {
                pc.rtc
                    .bwe()
                    .reset(Bitrate::bps(allocator::INITIAL_ESTIMATE_BPS));
                pc.bwe_set = (0, 0);
            }
        }
        let moved = |a: u64, b: u64| a.abs_diff(b).saturating_mul(100) > b * BWE_SET_CHANGE_PCT;
        if moved(allocated, pc.bwe_set.0) || moved(desired, pc.bwe_set.1) {
            pc.bwe_set = (allocated, desired);
            pc.rtc.bwe().set_bitrate(
                Bitrate::bps(allocated),
                Bitrate::bps(desired.max(allocated)),
            );
            self.drain(now, key);
        }
    }
}
