//! One publisher shares its screen (q 150, h 500, f 1500 kbit/s) beside its camera
//! (q 150, h 1100, f 1500 kbit/s). A subscriber of both gets `f` of each on a 6 Mbit/s
//! link; throttled to 2.6 Mbit/s (an estimate of ~2.2–2.6 Mbit/s) the screen at `f`
//! with the camera at `q` fits (≈1.85 Mbit/s on the wire: `q` is at least one
//! 1000-byte packet per frame, ~250 kbit/s) but neither both at `f` (≈3.2) nor the
//! screen at `f` with the camera at `h` (≈2.8): the camera drops to `q` and the screen
//! never leaves `f`. Figures are printed (`--nocapture`).
//!
//! The camera's `h` is 1.1 Mbit/s so that this window is wide enough for the
//! estimate's noise; with the usual 500 kbit/s `h` see the ignored test below.
#![allow(clippy::disallowed_methods)] // tests own their clock

use std::time::Duration;

use prism::ids::TrackId;
use prism::media::sim::{Bottleneck, Sim, simulcast_payload_info};
use prism::media::{Layer, MediaKind, TrackSource};

const SCREEN_LAYERS: [(&str, u64); 3] = [("q", 150_000), ("h", 500_000), ("f", 1_500_000)];
const CAMERA_LAYERS: [(&str, u64); 3] = [("q", 150_000), ("h", 1_100_000), ("f", 1_500_000)];

/// Publishes a camera and a screen share from client `a`; their track ids.
fn publish_camera_and_screen(
    sim: &mut Sim,
    a: usize,
    camera_layers: &[(&str, u64)],
) -> (TrackId, TrackId) {
    let camera = sim
        .publish_simulcast(a, TrackSource::Camera, camera_layers)
        .tracks
        .iter()
        .find(|t| t.kind == MediaKind::Video)
        .expect("camera published")
        .track_id
        .clone();
    let screen = sim
        .publish_simulcast(a, TrackSource::Screen, &SCREEN_LAYERS)
        .tracks
        .iter()
        .find(|t| t.kind == MediaKind::Video && t.track_id != camera)
        .expect("screen published")
        .track_id
        .clone();
    assert_eq!(
        sim.core.track_info(&screen).expect("screen").source,
        TrackSource::Screen
    );
    (camera, screen)
}

/// Layer indices of the video packets client `c` received on `track` after `from`.
fn layers_after(sim: &Sim, c: usize, track: &TrackId, from: u64) -> Vec<u8> {
    sim.clients[c]
        .received_for(track)
        .map(|r| {
            r.payloads
                .range(from + 1..)
                .filter_map(|(_, p)| simulcast_payload_info(p).map(|i| i.0))
                .collect()
        })
        .unwrap_or_default()
}

fn highest_seq(sim: &Sim, c: usize, track: &TrackId) -> u64 {
    sim.clients[c]
        .received_for(track)
        .and_then(|r| r.payloads.keys().next_back().copied())
        .unwrap_or(0)
}

#[test]
fn throttled_so_only_screen_f_and_camera_q_fit_the_camera_drops_to_q_and_the_screen_stays_on_f() {
    let mut sim = Sim::new(54);
    let a = sim.add_client("alice");
    let b = sim.add_client("bob");
    let (camera, screen) = publish_camera_and_screen(&mut sim, a, &CAMERA_LAYERS);
    let downlink = sim.subscribe_addr(b);
    sim.bottlenecks.insert(downlink, Bottleneck::new(6_000_000));
    sim.subscribe(b, &[camera.clone(), screen.clone()]);
    let bob = sim.clients[b].id.clone();
    let layers = |s: &Sim| {
        (
            s.core.subscription_layer(&bob, &camera),
            s.core.subscription_layer(&bob, &screen),
        )
    };

    // Generous link: both on f.
    let mut both_f = None;
    while sim.elapsed() < Duration::from_secs(15) {
        sim.drive_for(Duration::from_millis(50));
        if layers(&sim) == (Some(Layer::F), Some(Layer::F)) {
            both_f = Some(sim.elapsed());
            break;
        }
    }
    let both_f = both_f.unwrap_or_else(|| {
        panic!(
            "camera and screen on {:?} after 15 s on 6 Mbit/s",
            layers(&sim)
        )
    });
    sim.drive_for(Duration::from_secs(2));
    assert_eq!(layers(&sim), (Some(Layer::F), Some(Layer::F)));

    // Throttle. For 12 s the screen stays on f; the camera goes down to q.
    sim.bottlenecks
        .get_mut(&downlink)
        .expect("set")
        .bandwidth_bps = 2_600_000;
    let throttled_at = sim.elapsed();
    let (mut camera_below_f, mut camera_q) = (None, None);
    let mut lowest_estimate = u64::MAX;
    let mut marks = None;
    for i in 0..1200 {
        sim.drive_for(Duration::from_millis(10));
        let t = sim.elapsed() - throttled_at;
        let (cam, scr) = layers(&sim);
        assert_eq!(
            scr,
            Some(Layer::F),
            "the screen left f {t:?} after the throttle (camera on {cam:?}, estimate {:?})",
            sim.core.subscriber_estimate(&bob)
        );
        if cam < Some(Layer::F) {
            camera_below_f.get_or_insert(t);
        }
        if cam == Some(Layer::Q) {
            camera_q.get_or_insert(t);
        }
        if let Some((e, _)) = sim.core.subscriber_estimate(&bob) {
            lowest_estimate = lowest_estimate.min(e);
        }
        if i == 1000 {
            marks = Some((highest_seq(&sim, b, &camera), highest_seq(&sim, b, &screen)));
        }
    }
    let (final_camera, final_screen) = layers(&sim);
    let (mc, ms) = marks.expect("marked 10 s after the throttle");
    let camera_got = layers_after(&sim, b, &camera, mc);
    let screen_got = layers_after(&sim, b, &screen, ms);
    println!(
        "camera and screen on f {both_f:?} after subscribing (6 Mbit/s); throttled to \
         2.6 Mbit/s: camera below f after {camera_below_f:?}, on q after {camera_q:?}, \
         screen on f throughout; lowest estimate {} kbit/s, now {:?}; last 2 s: camera \
         {} packets (layers {:?}), screen {} packets (layers {:?})",
        lowest_estimate / 1000,
        sim.core.subscriber_estimate(&bob),
        camera_got.len(),
        distinct(&camera_got),
        screen_got.len(),
        distinct(&screen_got),
    );
    let camera_q = camera_q.expect("the camera reaches q");
    assert!(
        camera_q <= Duration::from_secs(5),
        "the camera reached q only after {camera_q:?}"
    );
    assert_eq!(final_camera, Some(Layer::Q));
    assert_eq!(final_screen, Some(Layer::F));
    // On the wire too: ~30 q packets/s of the camera, ~190 f packets/s of the screen.
    assert!(camera_got.len() >= 40 && camera_got.iter().all(|l| *l == 0));
    assert!(screen_got.len() >= 300 && screen_got.iter().all(|l| *l == 2));
}

fn distinct(layers: &[u8]) -> Vec<u8> {
    let mut d = layers.to_vec();
    d.sort_unstable();
    d.dedup();
    d
}

/// With the camera's `h` at 500 kbit/s and a 2.2 Mbit/s link (estimate ~1.9–2.3
/// Mbit/s), screen `f` + camera `q` (≈1.85) fits. But the estimate dips below that
/// right after the throttle, the screen drops to `h`, and climbing back to `f` is
/// priced at its rate plus 25% headroom (≈2.0 + camera `q` ≈ 2.24 Mbit/s), more than
/// the estimate — while the camera's climb to `h` (≈0.66) fits. Before the screen's
/// claim (`SCREEN_CLAIM_PCT` in src/media/allocator.rs) the pair settled on screen and
/// camera both on `h` (8 of 8 runs, ~12 s of the 15 s): the camera held a layer above
/// `q` while the screen share was below `f`, though screen `f` and camera `q` fit at
/// their rates. Now the camera stays on `q` while the screen waits for its headroom.
#[test]
fn after_the_throttle_the_camera_never_sits_above_q_while_the_screen_is_below_f() {
    let mut inverted = Vec::new();
    for run in 0..8u64 {
        let mut sim = Sim::new(540 + run);
        let a = sim.add_client("alice");
        let b = sim.add_client("bob");
        let (camera, screen) = publish_camera_and_screen(&mut sim, a, &SCREEN_LAYERS);
        let downlink = sim.subscribe_addr(b);
        sim.bottlenecks.insert(downlink, Bottleneck::new(6_000_000));
        sim.subscribe(b, &[camera.clone(), screen.clone()]);
        let bob = sim.clients[b].id.clone();
        sim.drive_for(Duration::from_secs(10));
        sim.bottlenecks
            .get_mut(&downlink)
            .expect("set")
            .bandwidth_bps = 2_200_000;
        let mut for_ms = 0;
        for _ in 0..300 {
            sim.drive_for(Duration::from_millis(50));
            let cam = sim.core.subscription_layer(&bob, &camera);
            let scr = sim.core.subscription_layer(&bob, &screen);
            if cam > Some(Layer::Q) && scr < Some(Layer::F) {
                for_ms += 50;
            }
            if std::env::var("DBG").is_ok() {
                println!(
                    "DBG {run} {cam:?} {scr:?} {:?}",
                    sim.core.subscriber_estimate(&bob)
                );
            }
        }
        println!(
            "run {run}: camera above q while the screen was below f for {for_ms} ms of \
             15 s; now camera {:?}, screen {:?}, estimate {:?}",
            sim.core.subscription_layer(&bob, &camera),
            sim.core.subscription_layer(&bob, &screen),
            sim.core.subscriber_estimate(&bob)
        );
        if for_ms > 2000 {
            inverted.push(run);
        }
    }
    assert!(
        inverted.is_empty(),
        "camera above q with the screen below f for more than 2 s in runs {inverted:?} of 8"
    );
}
