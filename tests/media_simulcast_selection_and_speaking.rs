//! Layer selection and speaking in the simulation (issue 4), beside
//! `media_simulcast_throttled_subscriber_moves_to_q_and_back.rs`:
//! - two subscribers of one publisher on different networks get different layers;
//! - `max_layer: q` holds a subscriber at `q` with ample bandwidth, lifting it brings
//!   `f`, `paused` stops the video (audio goes on) and unpausing resumes it;
//! - a screen share keeps its layer while the camera beside it is dropped;
//! - audio levels above the voice threshold for 300 ms raise `speaking`, 1 s of
//!   silence lowers it, short clicks raise nothing.
//!
//! Figures are printed (`--nocapture`).
#![allow(clippy::disallowed_methods)] // tests own their clock

use std::time::{Duration, Instant};

use prism::ids::{SessionId, TrackId};
use prism::media::sim::{Bottleneck, Sim};
use prism::media::{Layer, MediaEvent, MediaKind, TrackSource};

const LAYERS: [(&str, u64); 3] = [("q", 150_000), ("h", 500_000), ("f", 1_500_000)];

fn video_of(answer: &prism::media::PublishAnswer) -> TrackId {
    answer
        .tracks
        .iter()
        .find(|t| t.kind == MediaKind::Video)
        .expect("video published")
        .track_id
        .clone()
}

/// Drives until `done` holds (checked every 50 ms) or `limit` passes; the time taken.
fn drive_until(
    sim: &mut Sim,
    limit: Duration,
    mut done: impl FnMut(&Sim) -> bool,
) -> Option<Duration> {
    let from = sim.elapsed();
    while sim.elapsed() < from + limit {
        sim.drive_for(Duration::from_millis(50));
        if done(sim) {
            return Some(sim.elapsed() - from);
        }
    }
    None
}

#[test]
fn two_subscribers_on_different_networks_get_different_layers_at_once() {
    let mut sim = Sim::new(43);
    let a = sim.add_client("alice");
    let b = sim.add_client("bob");
    let c = sim.add_client("carol");
    let audio = sim.publish(a, true, false).tracks[0].track_id.clone();
    let video = video_of(&sim.publish_simulcast(a, TrackSource::Camera, &LAYERS));
    let (db, dc) = (sim.subscribe_addr(b), sim.subscribe_addr(c));
    sim.bottlenecks.insert(db, Bottleneck::new(3_000_000));
    sim.bottlenecks.insert(dc, Bottleneck::new(300_000));
    sim.subscribe(b, &[audio.clone(), video.clone()]);
    sim.subscribe(c, &[audio, video.clone()]);
    let (bob, carol) = (sim.clients[b].id.clone(), sim.clients[c].id.clone());

    let took = drive_until(&mut sim, Duration::from_secs(10), |s| {
        s.core.subscription_layer(&bob, &video) == Some(Layer::F)
            && s.core.subscription_layer(&carol, &video) == Some(Layer::Q)
    });
    let took = took.unwrap_or_else(|| {
        panic!(
            "bob (3 Mbit/s) on {:?}, carol (300 kbit/s) on {:?} after 10 s",
            sim.core.subscription_layer(&bob, &video),
            sim.core.subscription_layer(&carol, &video)
        )
    });
    println!(
        "bob on f and carol on q {:.2} s after subscribing",
        took.as_secs_f64()
    );
    // And they stay there.
    for _ in 0..60 {
        sim.drive_for(Duration::from_millis(50));
        assert_eq!(sim.core.subscription_layer(&bob, &video), Some(Layer::F));
        assert_eq!(sim.core.subscription_layer(&carol, &video), Some(Layer::Q));
    }
    // Both received video, carol only on q after her first switch down.
    let got = sim.clients[c]
        .received_for(&video)
        .expect("carol got video");
    let last = got.layer_changes.last().expect("a layer");
    assert_eq!(
        last.1, 0,
        "carol's last layer change is to q: {:?}",
        got.layer_changes
    );
    assert!(last.2, "carol's switch to q starts on a keyframe");
}

#[test]
fn max_layer_holds_q_lifting_it_climbs_and_pause_stops_video_only() {
    let mut sim = Sim::new(44);
    let a = sim.add_client("alice");
    let b = sim.add_client("bob");
    let audio = sim.publish(a, true, false).tracks[0].track_id.clone();
    let video = video_of(&sim.publish_simulcast(a, TrackSource::Camera, &LAYERS));
    let db = sim.subscribe_addr(b);
    sim.bottlenecks.insert(db, Bottleneck::new(8_000_000));
    sim.subscribe(b, &[audio.clone(), video.clone()]);
    let bob = sim.clients[b].id.clone();
    sim.core
        .set_subscription(&bob, &video, Some(Layer::Q), None);

    // Ten seconds with ample bandwidth: never above q.
    let mut on_q = false;
    for _ in 0..200 {
        sim.drive_for(Duration::from_millis(50));
        let l = sim.core.subscription_layer(&bob, &video);
        assert!(l <= Some(Layer::Q), "max_layer q exceeded: {l:?}");
        on_q |= l == Some(Layer::Q);
    }
    assert!(on_q, "the capped subscription never got q");

    sim.core
        .set_subscription(&bob, &video, Some(Layer::F), None);
    let up = drive_until(&mut sim, Duration::from_secs(10), |s| {
        s.core.subscription_layer(&bob, &video) == Some(Layer::F)
    })
    .expect("lifting the cap brings f on 8 Mbit/s");
    println!("max_layer lifted: on f after {:.2} s", up.as_secs_f64());

    // Pause: no more video packets (after what was in flight), audio goes on.
    sim.core.set_subscription(&bob, &video, None, Some(true));
    sim.drive_for(Duration::from_millis(300));
    let count = |s: &Sim, t: &TrackId| s.clients[b].received_for(t).map_or(0, |r| r.packets);
    let (v0, a0) = (count(&sim, &video), count(&sim, &audio));
    sim.drive_for(Duration::from_secs(2));
    let (v1, a1) = (count(&sim, &video), count(&sim, &audio));
    println!(
        "paused 2 s: video {} packets, audio {} packets",
        v1 - v0,
        a1 - a0
    );
    assert_eq!(v1, v0, "video still flows while paused");
    assert!(
        a1 - a0 >= 80,
        "audio must go on while video is paused: {}",
        a1 - a0
    );

    sim.core.set_subscription(&bob, &video, None, Some(false));
    let resumed = drive_until(&mut sim, Duration::from_secs(3), |s| count(s, &video) > v1)
        .expect("video resumes after unpause");
    println!("unpaused: video again after {:.2} s", resumed.as_secs_f64());
}

#[test]
fn a_screen_share_keeps_its_layer_while_the_camera_is_dropped() {
    let mut sim = Sim::new(45);
    let a = sim.add_client("alice");
    let b = sim.add_client("bob");
    let camera = video_of(&sim.publish_simulcast(a, TrackSource::Camera, &LAYERS));
    let screen_answer = sim.publish_simulcast(a, TrackSource::Screen, &LAYERS);
    let screen = screen_answer
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
    let db = sim.subscribe_addr(b);
    sim.bottlenecks.insert(db, Bottleneck::new(6_000_000));
    sim.subscribe(b, &[camera.clone(), screen.clone()]);
    let bob = sim.clients[b].id.clone();

    let both_f = drive_until(&mut sim, Duration::from_secs(15), |s| {
        s.core.subscription_layer(&bob, &camera) == Some(Layer::F)
            && s.core.subscription_layer(&bob, &screen) == Some(Layer::F)
    })
    .expect("camera and screen both reach f on 6 Mbit/s");
    println!("camera and screen on f after {:.2} s", both_f.as_secs_f64());
    sim.drive_for(Duration::from_secs(3));

    // 2.5 Mbit/s (an estimate of about 2.1): screen f (1.5 + overhead) with the
    // camera below f fits; both at f does not. The screen must not be the one to give.
    sim.bottlenecks.get_mut(&db).expect("set").bandwidth_bps = 2_500_000;
    let dropped = drive_until(&mut sim, Duration::from_secs(5), |s| {
        s.core.subscription_layer(&bob, &camera) < Some(Layer::F)
    })
    .expect("the camera drops below f");
    println!(
        "throttled to 2.5 Mbit/s: camera on {:?} after {:.2} s",
        sim.core.subscription_layer(&bob, &camera),
        dropped.as_secs_f64()
    );
    let mut screen_low = Duration::ZERO;
    for _ in 0..100 {
        sim.drive_for(Duration::from_millis(50));
        if sim.core.subscription_layer(&bob, &screen) != Some(Layer::F) {
            screen_low += Duration::from_millis(50);
        }
        assert!(sim.core.subscription_layer(&bob, &camera) <= Some(Layer::H));
    }
    println!(
        "screen below f for {} ms of the next 5 s",
        screen_low.as_millis()
    );
    assert_eq!(sim.core.subscription_layer(&bob, &screen), Some(Layer::F));
    assert!(
        screen_low <= Duration::from_millis(500),
        "the screen share gave up its layer for {} ms while the camera was dropped",
        screen_low.as_millis()
    );
}

fn speaking_events(sim: &Sim, who: &SessionId, after: Instant) -> Vec<(Instant, bool, u8)> {
    sim.events
        .iter()
        .filter(|(t, _)| *t >= after)
        .filter_map(|(t, e)| match e {
            MediaEvent::Speaking {
                who: w,
                speaking,
                level,
            } if w == who => Some((*t, *speaking, *level)),
            _ => None,
        })
        .collect()
}

fn set_level(sim: &mut Sim, c: usize, level: i8) {
    for s in sim.clients[c].sent.iter_mut() {
        if s.kind == MediaKind::Audio {
            s.audio_level = level;
        }
    }
}

#[test]
fn voice_for_300_ms_raises_speaking_silence_for_1_s_lowers_it_clicks_do_not() {
    let mut sim = Sim::new(46);
    let a = sim.add_client("alice");
    let b = sim.add_client("bob");
    let audio = sim.publish(a, true, false).tracks[0].track_id.clone();
    set_level(&mut sim, a, -127);
    sim.subscribe(b, &[audio]);
    let alice = sim.clients[a].id.clone();
    sim.drive_for(Duration::from_secs(2));
    let start = sim.now;

    // Clicks: 60 ms loud, 400 ms quiet, five times.
    for _ in 0..5 {
        set_level(&mut sim, a, -20);
        sim.drive_for(Duration::from_millis(60));
        set_level(&mut sim, a, -127);
        sim.drive_for(Duration::from_millis(400));
    }
    let clicks = speaking_events(&sim, &alice, start);
    assert!(clicks.is_empty(), "clicks raised speaking: {clicks:?}");

    // Voice.
    let voice_at = sim.now;
    set_level(&mut sim, a, -20);
    let mut on = None;
    while sim.now < voice_at + Duration::from_secs(2) {
        sim.drive_for(Duration::from_millis(10));
        if let Some(e) = speaking_events(&sim, &alice, voice_at).first() {
            on = Some(*e);
            break;
        }
    }
    let (on_at, speaking, level) = on.expect("speaking raised by voice");
    let on_ms = (on_at - voice_at).as_millis();
    println!("speaking: true after {on_ms} ms of voice (level {level})");
    assert!(speaking);
    assert!(
        (280..=450).contains(&on_ms),
        "speaking raised after {on_ms} ms"
    );
    assert!(
        (15..=30).contains(&level),
        "level {level} for -20 dBov voice"
    );

    // Silence.
    sim.drive_for(Duration::from_millis(500));
    let quiet_at = sim.now;
    set_level(&mut sim, a, -127);
    let mut off = None;
    while sim.now < quiet_at + Duration::from_secs(3) {
        sim.drive_for(Duration::from_millis(10));
        if let Some(e) = speaking_events(&sim, &alice, quiet_at).first() {
            off = Some(*e);
            break;
        }
    }
    let (off_at, speaking, _) = off.expect("speaking lowered by silence");
    let off_ms = (off_at - quiet_at).as_millis();
    println!("speaking: false after {off_ms} ms of silence");
    assert!(!speaking);
    assert!(
        (950..=1300).contains(&off_ms),
        "speaking lowered after {off_ms} ms"
    );
    // Only those two transitions.
    assert_eq!(speaking_events(&sim, &alice, start).len(), 2);
}
