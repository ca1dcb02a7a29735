//! `rtc.subscription.update` on a simulcast subscription with ample bandwidth (5 Mbit/s,
//! publisher sending q 150, h 500, f 1500 kbit/s): `max_layer: q` holds it on `q` for
//! 10 s (nothing above q is forwarded); lifting the cap brings `f`; `paused` stops its
//! video at the server at once while the same subscriber's audio goes on; unpausing
//! resumes the video on a keyframe. Figures are printed (`--nocapture`).
#![allow(clippy::disallowed_methods)] // tests own their clock

use std::time::Duration;

use prism::ids::TrackId;
use prism::media::sim::{Bottleneck, Sim, simulcast_payload_info};
use prism::media::{Layer, MediaEvent, MediaKind, TrackSource};

const LAYERS: [(&str, u64); 3] = [("q", 150_000), ("h", 500_000), ("f", 1_500_000)];

fn packets(sim: &Sim, c: usize, track: &TrackId) -> u64 {
    sim.clients[c].received_for(track).map_or(0, |r| r.packets)
}

#[test]
fn max_layer_q_holds_q_lifting_it_brings_f_pause_stops_video_and_unpause_starts_on_a_keyframe() {
    let mut sim = Sim::new(52);
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
    let downlink = sim.subscribe_addr(b);
    sim.bottlenecks.insert(downlink, Bottleneck::new(5_000_000));
    sim.subscribe(b, &[audio.clone(), video.clone()]);
    let bob = sim.clients[b].id.clone();

    // Uncapped on 5 Mbit/s: f.
    let mut on_f = None;
    while sim.elapsed() < Duration::from_secs(15) {
        sim.drive_for(Duration::from_millis(10));
        if sim.core.subscription_layer(&bob, &video) == Some(Layer::F) {
            on_f = Some(sim.elapsed());
            break;
        }
    }
    let on_f = on_f.expect("an uncapped subscriber on 5 Mbit/s reaches f");
    sim.drive_for(Duration::from_secs(1));

    // rtc.subscription.update {max_layer: q}: down to q, then 10 s never above it,
    // neither as reported nor on the wire.
    let capped_at = sim.elapsed();
    let capped_instant = sim.now;
    let seq_at_cap = *sim.clients[b]
        .received_for(&video)
        .and_then(|r| r.payloads.keys().next_back())
        .expect("video flows");
    sim.core
        .set_subscription(&bob, &video, Some(Layer::Q), None);
    let mut down = None;
    while sim.elapsed() < capped_at + Duration::from_secs(2) {
        sim.drive_for(Duration::from_millis(10));
        if sim.core.subscription_layer(&bob, &video) == Some(Layer::Q) {
            down = Some(sim.elapsed() - capped_at);
            break;
        }
    }
    let down = down.expect("max_layer q takes effect within 2 s");
    // What was in flight drains; the first q packet bob gets starts a keyframe.
    sim.drive_for(Duration::from_millis(200));
    let first_q_seq = {
        let got = sim.clients[b].received_for(&video).expect("video received");
        let (seq, p) = got
            .payloads
            .range(seq_at_cap + 1..)
            .find(|(_, p)| simulcast_payload_info(p).is_some_and(|i| i.0 == 0))
            .expect("q packets after the cap");
        let (_, _, key) = simulcast_payload_info(p).expect("sim payload");
        assert!(
            key && p[0] & 0x10 != 0,
            "the switch to q (seq {seq}) does not start a keyframe"
        );
        *seq
    };
    let held_from = sim.elapsed();
    while sim.elapsed() < held_from + Duration::from_secs(10) {
        sim.drive_for(Duration::from_millis(10));
        let l = sim.core.subscription_layer(&bob, &video);
        assert_eq!(
            l,
            Some(Layer::Q),
            "max_layer q with 5 Mbit/s: on {l:?} {:?} into the 10 s",
            sim.elapsed() - held_from
        );
    }
    let estimate_capped = sim.core.subscriber_estimate(&bob);
    let got = sim.clients[b].received_for(&video).expect("video received");
    let layers: Vec<u8> = got
        .payloads
        .range(first_q_seq..)
        .filter_map(|(_, p)| simulcast_payload_info(p).map(|i| i.0))
        .collect();
    let above_q = layers.iter().filter(|l| **l > 0).count();
    let reported: Vec<_> = sim
        .events
        .iter()
        .filter(|(at, _)| *at >= capped_instant)
        .filter_map(|(_, e)| match e {
            MediaEvent::LayerChanged {
                subscriber,
                track,
                layer,
            } if *subscriber == bob && *track == video => Some(*layer),
            _ => None,
        })
        .collect();
    println!(
        "uncapped: f at {on_f:?}; max_layer q: on q after {down:?}, then 10 s on q: {} video \
         packets, {above_q} above q; layer events since the update {reported:?} (estimate \
         {estimate_capped:?})",
        layers.len()
    );
    assert_eq!(above_q, 0, "packets above q forwarded under max_layer q");
    assert_eq!(
        reported,
        vec![Some(Layer::Q)],
        "rtc.layer.changed after the cap"
    );
    // One 1000-byte packet per 33 ms frame: ~300 in 10 s.
    assert!(layers.len() >= 250, "q flows: {} packets", layers.len());

    // Lift the cap.
    let lifted_at = sim.elapsed();
    sim.core
        .set_subscription(&bob, &video, Some(Layer::F), None);
    let mut up = None;
    while sim.elapsed() < lifted_at + Duration::from_secs(10) {
        sim.drive_for(Duration::from_millis(10));
        if sim.core.subscription_layer(&bob, &video) == Some(Layer::F) {
            up = Some(sim.elapsed() - lifted_at);
            break;
        }
    }
    let up = up.unwrap_or_else(|| {
        panic!(
            "cap lifted 10 s ago on 5 Mbit/s, still on {:?} (estimate {:?})",
            sim.core.subscription_layer(&bob, &video),
            sim.core.subscriber_estimate(&bob)
        )
    });
    println!("cap lifted: on f after {up:?}");
    sim.drive_for(Duration::from_secs(1));
    assert_eq!(sim.core.subscription_layer(&bob, &video), Some(Layer::F));

    // Pause. The server's output on bob's video stream stops at once; at bob, what was
    // already in flight or queued at the bottleneck drains, then nothing.
    let ssrc = sim.received_ssrc(b, &video).expect("bob's video stream");
    let paused_at = sim.now;
    let (v0, a0) = (packets(&sim, b, &video), packets(&sim, b, &audio));
    let events_before = sim.events.len();
    sim.core.set_subscription(&bob, &video, None, Some(true));
    sim.drive_for(Duration::from_millis(300));
    // rtc.layer.changed {layer: null} at once, and the subscription reports none.
    let null_event = sim.events[events_before..].iter().find(|(_, e)| {
        matches!(e, MediaEvent::LayerChanged { subscriber, track, layer: None }
            if *subscriber == bob && *track == video)
    });
    // (The sim collects the core's events at its next call into it.)
    let null_after = null_event.map(|(at, _)| *at - paused_at);
    assert!(
        null_after.is_some_and(|d| d <= Duration::from_millis(20)),
        "a null layer is reported when paused: {null_after:?}"
    );
    assert_eq!(sim.core.subscription_layer(&bob, &video), None);
    let (v_drained, a_drained) = (packets(&sim, b, &video), packets(&sim, b, &audio));
    sim.drive_for(Duration::from_secs(2));
    let (v1, a1) = (packets(&sim, b, &video), packets(&sim, b, &audio));
    let server_sent_paused = sim.server_rtp[&downlink]
        .iter()
        .filter(|(at, s, _)| *s == ssrc && *at > paused_at)
        .count();
    println!(
        "paused: null layer reported after {null_after:?}; server sent \
         {server_sent_paused} video packets after the pause; bob got \
         {} video packets in the first 300 ms (in flight), then {} video and {} audio \
         packets in 2 s",
        v_drained - v0,
        v1 - v_drained,
        a1 - a_drained
    );
    assert_eq!(
        server_sent_paused, 0,
        "the server forwarded video to a paused subscription"
    );
    assert_eq!(v1, v_drained, "video packets reached bob while paused");
    // Opus every 20 ms: 100 packets in 2 s.
    assert!(
        a1 - a_drained >= 95,
        "bob's audio must go on while video is paused: {} packets in 2 s",
        a1 - a_drained
    );
    assert!(a_drained > a0);

    // Unpause: video again, starting on a keyframe.
    let last_seq_before = *sim.clients[b]
        .received_for(&video)
        .and_then(|r| r.payloads.keys().next_back())
        .expect("video flowed");
    let unpaused_at = sim.elapsed();
    sim.core.set_subscription(&bob, &video, None, Some(false));
    let mut resumed = None;
    while sim.elapsed() < unpaused_at + Duration::from_secs(3) {
        sim.drive_for(Duration::from_millis(10));
        if packets(&sim, b, &video) > v1 {
            resumed = Some(sim.elapsed() - unpaused_at);
            break;
        }
    }
    let resumed = resumed.expect("video resumes within 3 s of unpausing");
    sim.drive_for(Duration::from_secs(1));
    let got = sim.clients[b].received_for(&video).expect("video received");
    let (first_seq, first) = got
        .payloads
        .range(last_seq_before + 1..)
        .find(|(_, p)| simulcast_payload_info(p).is_some())
        .expect("video after unpausing");
    let (layer, _, key) = simulcast_payload_info(first).expect("sim payload");
    let gap = first_seq - last_seq_before - 1;
    println!(
        "unpaused: first video packet after {resumed:?}, seq {first_seq} (gap of {gap} after \
         the last one received before), layer {layer}, keyframe {key}; layer now {:?}",
        sim.core.subscription_layer(&bob, &video)
    );
    assert!(key, "video resumed on a delta frame (seq {first_seq})");
    assert_eq!(gap, 0, "sequence numbers jump across the pause");
    assert!(
        first[0] & 0x10 != 0,
        "video resumed mid-frame (seq {first_seq})"
    );
    assert!(
        sim.core.subscription_layer(&bob, &video).is_some(),
        "a layer is reported once video flows again"
    );
}

/// A subscription capped at `q` before its video flows (as with `max_layer` in
/// `rtc.offer.subscribe`) must not get any packet of `h` or `f`, nor an
/// `rtc.layer.changed` above `q`. It once did, in about half the runs: the core fell
/// back to the lowest layer *seen so far* when none within the cap had arrived yet, so
/// if the first keyframe packet to reach the server was of `f` (or `h`), that one packet
/// was forwarded and `f` reported, then `q` a moment later. Ten runs make a clean pass
/// by chance negligible.
#[test]
fn max_layer_given_before_video_flows_is_never_exceeded() {
    let mut violations = Vec::new();
    for run in 0..10u64 {
        let mut sim = Sim::new(520 + run);
        let a = sim.add_client("alice");
        let b = sim.add_client("bob");
        let answer = sim.publish_simulcast(a, TrackSource::Camera, &LAYERS);
        let video = answer
            .tracks
            .iter()
            .find(|t| t.kind == MediaKind::Video)
            .expect("video published")
            .track_id
            .clone();
        let downlink = sim.subscribe_addr(b);
        sim.bottlenecks.insert(downlink, Bottleneck::new(5_000_000));
        sim.subscribe(b, std::slice::from_ref(&video));
        let bob = sim.clients[b].id.clone();
        sim.core
            .set_subscription(&bob, &video, Some(Layer::Q), None);
        sim.drive_for(Duration::from_secs(3));
        let got = sim.clients[b].received_for(&video).expect("video received");
        let above: Vec<(u64, u8)> = got
            .payloads
            .iter()
            .filter_map(|(seq, p)| simulcast_payload_info(p).map(|i| (*seq, i.0)))
            .filter(|(_, layer)| *layer > 0)
            .collect();
        let reported: Vec<Option<Layer>> = sim
            .events
            .iter()
            .filter_map(|(_, e)| match e {
                MediaEvent::LayerChanged { layer, .. } => Some(*layer),
                _ => None,
            })
            .collect();
        println!("run {run}: packets above q (seq, layer) {above:?}; reported {reported:?}");
        if !above.is_empty() || reported != vec![Some(Layer::Q)] {
            violations.push(run);
        }
    }
    assert!(
        violations.is_empty(),
        "max_layer q exceeded at the start in runs {violations:?} of 10"
    );
}
