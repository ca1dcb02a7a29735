//! One publisher sends three simulcast layers (q 150, h 500, f 1500 kbit/s). Bob
//! subscribes behind a 3 Mbit/s link, Carol behind 300 kbit/s: within 8 s of
//! subscribing (measured 4.4–5.2 s: Bob's estimate starts at 1 Mbit/s and probes its way
//! up to what `f` needs) Bob is on `f` and Carol on `q` at the same time, both stay there, and the
//! packets each of them receives are of that layer only (the layer is per subscriber,
//! not per track). Figures are printed (`--nocapture`).
#![allow(clippy::disallowed_methods)] // tests own their clock

use std::time::Duration;

use prism::ids::TrackId;
use prism::media::sim::{Bottleneck, Sim, simulcast_payload_info};
use prism::media::{Layer, MediaKind, TrackSource};

const LAYERS: [(&str, u64); 3] = [("q", 150_000), ("h", 500_000), ("f", 1_500_000)];

/// Layer indices of the video packets client `c` received from sequence `from` on.
fn layers_received_since(sim: &Sim, c: usize, video: &TrackId, from: u64) -> Vec<u8> {
    sim.clients[c]
        .received_for(video)
        .map(|r| {
            r.payloads
                .range(from..)
                .filter_map(|(_, p)| simulcast_payload_info(p).map(|i| i.0))
                .collect()
        })
        .unwrap_or_default()
}

fn highest_seq(sim: &Sim, c: usize, video: &TrackId) -> u64 {
    sim.clients[c]
        .received_for(video)
        .and_then(|r| r.payloads.keys().next_back().copied())
        .unwrap_or(0)
}

#[test]
fn subscribers_behind_3_mbit_and_300_kbit_get_f_and_q_at_once_within_8s() {
    let mut sim = Sim::new(51);
    let a = sim.add_client("alice");
    let b = sim.add_client("bob");
    let c = sim.add_client("carol");
    let audio = sim.publish(a, true, false).tracks[0].track_id.clone();
    let answer = sim.publish_simulcast(a, TrackSource::Camera, &LAYERS);
    let video = answer
        .tracks
        .iter()
        .find(|t| t.kind == MediaKind::Video)
        .expect("video published")
        .track_id
        .clone();
    let (db, dc) = (sim.subscribe_addr(b), sim.subscribe_addr(c));
    sim.bottlenecks.insert(db, Bottleneck::new(3_000_000));
    sim.bottlenecks.insert(dc, Bottleneck::new(300_000));
    sim.subscribe(b, &[audio.clone(), video.clone()]);
    sim.subscribe(c, &[audio, video.clone()]);
    let (bob, carol) = (sim.clients[b].id.clone(), sim.clients[c].id.clone());
    let subscribed_at = sim.elapsed();

    // Every 10 ms: when each first reached (and currently holds) its layer, and when
    // both hold theirs at once.
    let (mut bob_f, mut carol_q, mut both) = (None, None, None);
    while sim.elapsed() < subscribed_at + Duration::from_secs(8) {
        sim.drive_for(Duration::from_millis(10));
        let t = sim.elapsed() - subscribed_at;
        let on_f = sim.core.subscription_layer(&bob, &video) == Some(Layer::F);
        let on_q = sim.core.subscription_layer(&carol, &video) == Some(Layer::Q);
        if on_f {
            bob_f.get_or_insert(t);
        }
        if on_q {
            carol_q.get_or_insert(t);
        }
        if on_f && on_q {
            both = Some(t);
            break;
        }
    }
    let (bob_layer, carol_layer) = (
        sim.core.subscription_layer(&bob, &video),
        sim.core.subscription_layer(&carol, &video),
    );
    println!(
        "after subscribing: bob (3 Mbit/s) first on f at {bob_f:?}, carol (300 kbit/s) \
         first on q at {carol_q:?}; both at once at {both:?}; estimates bob {:?}, carol {:?}",
        sim.core.subscriber_estimate(&bob),
        sim.core.subscriber_estimate(&carol)
    );
    let both = both.unwrap_or_else(|| {
        panic!("after 8 s bob is on {bob_layer:?} (want f), carol on {carol_layer:?} (want q)")
    });

    // Both hold their layer for 3 s; what arrives in the last 2 s is of that layer only.
    let mut marks = None;
    for i in 0..300 {
        sim.drive_for(Duration::from_millis(10));
        assert_eq!(
            sim.core.subscription_layer(&bob, &video),
            Some(Layer::F),
            "bob left f {} ms after both were reached",
            10 * (i + 1)
        );
        assert_eq!(
            sim.core.subscription_layer(&carol, &video),
            Some(Layer::Q),
            "carol left q {} ms after both were reached",
            10 * (i + 1)
        );
        if i == 99 {
            marks = Some((highest_seq(&sim, b, &video), highest_seq(&sim, c, &video)));
        }
    }
    let (mb, mc) = marks.expect("marked after 1 s");
    let bob_got = layers_received_since(&sim, b, &video, mb + 1);
    let carol_got = layers_received_since(&sim, c, &video, mc + 1);
    let bob_not_f = bob_got.iter().filter(|l| **l != 2).count();
    let carol_not_q = carol_got.iter().filter(|l| **l != 0).count();
    let carol_changes: Vec<_> = sim.clients[c]
        .received_for(&video)
        .expect("carol received video")
        .layer_changes
        .iter()
        .map(|(at, l, key)| (at.duration_since(sim.start), *l, *key))
        .collect();
    println!(
        "last 2 s: bob received {} video packets ({} not f), carol {} ({} not q); \
         carol's layer changes (time, layer, keyframe): {carol_changes:?}",
        bob_got.len(),
        bob_not_f,
        carol_got.len(),
        carol_not_q
    );
    // f is ~190 packets/s, q ~19 packets/s (1000-byte payloads at 30 fps).
    assert!(bob_got.len() >= 300, "bob got {} packets", bob_got.len());
    assert!(
        carol_got.len() >= 30,
        "carol got {} packets",
        carol_got.len()
    );
    assert_eq!(bob_not_f, 0, "bob received packets of another layer than f");
    assert_eq!(
        carol_not_q, 0,
        "carol received packets of another layer than q"
    );
    let last = carol_changes.last().expect("carol received a layer");
    assert!(
        last.1 == 0 && last.2,
        "carol's last switch is to q on a keyframe"
    );
    assert!(both <= Duration::from_secs(8));
}
