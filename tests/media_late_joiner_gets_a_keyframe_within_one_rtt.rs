//! A third participant joining late gets a keyframe within one RTT of subscribing
//! (measured on simulated time from the moment its subscribe peer connection is up).
#![allow(clippy::disallowed_methods)] // tests own their clock

use std::time::Duration;

use prism::media::MediaKind;
use prism::media::sim::Sim;

#[test]
fn a_third_participant_joining_late_gets_a_keyframe_within_one_rtt_of_subscribing() {
    let mut sim = Sim::new(2);
    let one_way = sim.link.latency;
    let a = sim.add_client("alice");
    let b = sim.add_client("bob");
    let pa = sim.publish(a, true, true);
    let pb = sim.publish(b, true, true);
    let ids_a: Vec<_> = pa.tracks.iter().map(|t| t.track_id.clone()).collect();
    let ids_b: Vec<_> = pb.tracks.iter().map(|t| t.track_id.clone()).collect();
    sim.subscribe(a, &ids_b);
    sim.subscribe(b, &ids_a);
    // Join between two periodic keyframes (every 3 s), so only a requested one helps.
    sim.drive(Duration::from_millis(1500));

    let c = sim.add_client("carol");
    let video_a = pa
        .tracks
        .iter()
        .find(|t| t.kind == MediaKind::Video)
        .expect("alice publishes video")
        .track_id
        .clone();
    let requests_before = sim.core.stats().keyframe_requests_out;
    sim.subscribe(c, std::slice::from_ref(&video_a));
    sim.drive(Duration::from_millis(2500));

    let sub = sim.clients[c].subscribe.as_ref().expect("subscribed");
    let connected = sub.connected_at.expect("carol's subscribe pc connects");
    let got = sim.clients[c]
        .received_for(&video_a)
        .expect("carol receives video");
    let keyframe = got.first_keyframe_at.expect("carol receives a keyframe");
    let rtt = 2 * one_way;
    let waited = keyframe.saturating_duration_since(connected);
    eprintln!(
        "connected at {:?}, keyframe after {waited:?} (rtt {rtt:?})",
        connected - sim.start
    );
    // Server asks the publisher as soon as the subscriber is connected; a few ms of
    // slack for the pacer.
    assert!(
        waited <= rtt + Duration::from_millis(5),
        "waited {waited:?}"
    );
    assert_eq!(
        got.first_packet_at,
        Some(keyframe),
        "nothing before the keyframe"
    );
    assert!(got.missing().is_empty());
    assert!(sim.core.stats().keyframe_requests_out > requests_before);
}
