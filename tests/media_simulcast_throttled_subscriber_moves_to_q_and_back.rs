//! A publisher sends three simulcast layers (q 150, h 500, f 1500 kbit/s). A subscriber
//! behind a 3 Mbit/s link gets `f`; throttled to 300 kbit/s it is moved down to `q`
//! within 2 s, starting on a keyframe with no sequence gap at the switch; with the link
//! restored it is back on `f` within 10 s; on a steady link with jitter it changes layer
//! at most once per 2 s. Figures are printed (`--nocapture`).
#![allow(clippy::disallowed_methods)] // tests own their clock

use std::time::Duration;

use prism::media::sim::{Bottleneck, LinkConfig, Sim, simulcast_payload_info};
use prism::media::{Layer, MediaKind, TrackSource};

const LAYERS: [(&str, u64); 3] = [("q", 150_000), ("h", 500_000), ("f", 1_500_000)];

#[test]
fn throttled_subscriber_moves_to_q_within_2s_and_back_to_f_within_10s_without_flapping() {
    let mut sim = Sim::new(41);
    let a = sim.add_client("alice");
    let b = sim.add_client("bob");
    let audio = sim.publish(a, true, false).tracks[0].track_id.clone();
    let answer = sim.publish_simulcast(a, TrackSource::Camera, &LAYERS);
    let video = answer
        .tracks
        .iter()
        .find(|t| t.kind == MediaKind::Video)
        .expect("video published")
        .track_id
        .clone();
    assert_eq!(
        sim.core.track_info(&video).expect("track").simulcast_rids,
        vec!["q", "h", "f"]
    );
    let downlink = sim.subscribe_addr(b);
    sim.bottlenecks.insert(downlink, Bottleneck::new(3_000_000));
    sim.subscribe(b, &[audio, video.clone()]);
    let bob = sim.clients[b].id.clone();

    // Warm up on the 3 Mbit/s link: f is reached and held for 4 s.
    let mut on_f_since = None;
    while sim.elapsed() < Duration::from_secs(15) {
        sim.drive_for(Duration::from_millis(50));
        if sim.core.subscription_layer(&bob, &video) == Some(Layer::F) {
            let since = *on_f_since.get_or_insert(sim.elapsed());
            if sim.elapsed() - since >= Duration::from_secs(4) {
                break;
            }
        } else {
            on_f_since = None;
        }
    }
    let reached_f = on_f_since.expect("the subscriber reaches f on 3 Mbit/s");
    assert_eq!(sim.core.subscription_layer(&bob, &video), Some(Layer::F));

    // Throttle.
    let seq_at_throttle = *sim.clients[b]
        .received_for(&video)
        .and_then(|r| r.payloads.keys().next_back())
        .expect("video flows");
    sim.bottlenecks
        .get_mut(&downlink)
        .expect("set")
        .bandwidth_bps = 300_000;
    let throttled_at = sim.elapsed();
    let mut down = None;
    while sim.elapsed() < throttled_at + Duration::from_secs(5) {
        sim.drive_for(Duration::from_millis(10));
        if sim.core.subscription_layer(&bob, &video) == Some(Layer::Q) {
            down = Some(sim.elapsed() - throttled_at);
            break;
        }
    }
    let down = down.expect("moved down to q");
    let estimate_low = sim.core.subscriber_estimate(&bob);
    sim.drive_for(Duration::from_secs(3));
    assert_eq!(sim.core.subscription_layer(&bob, &video), Some(Layer::Q));

    // At the switch to q: the first q packet bob received belongs to a keyframe and its
    // picture id follows the last one of the previous layer that got through.
    {
        let got = sim.clients[b].received_for(&video).expect("video received");
        let (first_q, payload) = got
            .payloads
            .range(seq_at_throttle..)
            .find(|(_, p)| simulcast_payload_info(p).is_some_and(|i| i.0 == 0))
            .expect("q packets received");
        let (_, pid, _) = simulcast_payload_info(payload).expect("sim payload");
        // Unless the keyframe itself was lost in the congestion (and not repaired):
        // then the packet before the first q packet received is missing.
        assert!(
            payload[4] & 1 == 0 || !got.payloads.contains_key(&(first_q - 1)),
            "the first q packet {first_q} is not part of a keyframe"
        );
        let (prev_seq, prev_pid) = got
            .picture_ids
            .range(..first_q)
            .next_back()
            .map(|(s, p)| (*s, *p))
            .expect("packets before the switch");
        assert!(
            pid > prev_pid && pid - prev_pid <= (first_q - prev_seq) as u16,
            "picture id {prev_pid} (seq {prev_seq}) -> {pid} (seq {first_q})"
        );
        eprintln!("switch to q at output seq {first_q}, picture id {prev_pid} -> {pid}");
    }

    // Restore.
    sim.bottlenecks
        .get_mut(&downlink)
        .expect("set")
        .bandwidth_bps = 3_000_000;
    let restored_at = sim.elapsed();
    let mut up = None;
    while sim.elapsed() < restored_at + Duration::from_secs(20) {
        sim.drive_for(Duration::from_millis(50));
        if sim.core.subscription_layer(&bob, &video) == Some(Layer::F) {
            up = Some(sim.elapsed() - restored_at);
            break;
        }
    }
    let up = up.expect("back to f");

    // Steady network with jitter: count layer changes and the estimate's noise.
    sim.links_to.insert(
        downlink,
        LinkConfig {
            jitter: Duration::from_millis(4),
            ..sim.link
        },
    );
    sim.drive_for(Duration::from_secs(2));
    let steady_from = sim.now;
    let mut estimates = Vec::new();
    for _ in 0..200 {
        sim.drive_for(Duration::from_millis(100));
        if let Some((e, _)) = sim.core.subscriber_estimate(&bob) {
            estimates.push(e as f64);
        }
    }
    let ssrc = sim.received_ssrc(b, &video).expect("bob's video stream");
    let got = sim.clients[b].received_for(&video).expect("video received");
    let changes: Vec<_> = got
        .layer_changes
        .iter()
        .filter(|(at, _, _)| *at >= steady_from)
        .map(|(at, _, _)| *at)
        .collect();
    for w in changes.windows(2) {
        assert!(
            w[1] - w[0] >= Duration::from_secs(2),
            "two layer changes within 2 s: {changes:?}"
        );
    }
    // The server's own output on bob's video stream (read off the wire before the
    // bottleneck) never skips a sequence number across all the switches.
    let sent: Vec<u16> = sim.server_rtp[&downlink]
        .iter()
        .filter(|(_, s, _)| *s == ssrc)
        .map(|(_, _, seq)| *seq)
        .collect();
    let mut highest = sent[0];
    for &seq in &sent[1..] {
        let ahead = seq.wrapping_sub(highest);
        assert!(
            ahead <= 1 || ahead > u16::MAX / 2,
            "the server skipped from {highest} to {seq}"
        );
        if ahead == 1 {
            highest = seq;
        }
    }
    let mean = estimates.iter().sum::<f64>() / estimates.len() as f64;
    let sd =
        (estimates.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / estimates.len() as f64).sqrt();
    let missing = got.missing().len();
    let stats = sim.core.stats();
    eprintln!(
        "simulcast throttle: f reached after {reached_f:?}; 3M->300k: q after {down:?} \
         (estimate then {estimate_low:?}); 300k->3M: f after {up:?}; steady 20 s with 4 ms \
         jitter: {} layer changes, estimate mean {:.0} kbit/s, noise {:.1}% (sd/mean); \
         layer switches total {}; receiver missing {missing} of {} packets",
        changes.len(),
        mean / 1000.0,
        100.0 * sd / mean,
        stats.layer_switches,
        got.payloads.len()
    );
    assert!(down <= Duration::from_secs(2), "down after {down:?}");
    assert!(up <= Duration::from_secs(10), "up after {up:?}");
}
