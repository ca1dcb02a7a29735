//! Unpublishing (renegotiation without the m-line, or `remove_track`) stops forwarding;
//! `set_audio_deafened` stops audio to that participant and only audio.
#![allow(clippy::disallowed_methods)] // tests own their clock

use std::time::Duration;

use prism::ids::TrackId;
use prism::media::MediaKind;
use prism::media::sim::Sim;

/// Distinct packets received: the subscriber's bandwidth estimator may probe with
/// retransmissions of packets already sent (RTX padding), which are not forwarding.
fn count(sim: &Sim, c: usize, t: &TrackId) -> usize {
    sim.clients[c]
        .received_for(t)
        .map_or(0, |r| r.payloads.len())
}

fn setup(seed: u64) -> (Sim, usize, TrackId, TrackId) {
    let mut sim = Sim::new(seed);
    let a = sim.add_client("alice");
    let b = sim.add_client("bob");
    let pa = sim.publish(a, true, true);
    let find = |k| {
        pa.tracks
            .iter()
            .find(|t| t.kind == k)
            .expect("published")
            .track_id
            .clone()
    };
    let (audio, video) = (find(MediaKind::Audio), find(MediaKind::Video));
    sim.subscribe(b, &[audio.clone(), video.clone()]);
    sim.drive(Duration::from_secs(2));
    assert!(count(&sim, b, &audio) > 50 && count(&sim, b, &video) > 50);
    (sim, b, audio, video)
}

#[test]
fn renegotiating_without_the_m_line_unpublishes_the_track_and_stops_forwarding() {
    let (mut sim, b, audio, video) = setup(4);
    let answer = sim.unpublish(0, &audio);
    assert_eq!(answer.removed, vec![audio.clone()]);
    assert_eq!(answer.tracks.len(), 1);
    assert!(sim.core.track_info(&audio).is_none());
    sim.drive_for(Duration::from_millis(100)); // in-flight packets land
    let (a0, v0) = (count(&sim, b, &audio), count(&sim, b, &video));
    sim.drive_for(Duration::from_secs(1));
    assert_eq!(count(&sim, b, &audio), a0, "audio stopped");
    assert!(count(&sim, b, &video) > v0 + 30, "video continues");
}

#[test]
fn remove_track_stops_forwarding_that_track_only() {
    let (mut sim, b, audio, video) = setup(5);
    sim.core.remove_track(&video);
    sim.drive_for(Duration::from_millis(100));
    let (a0, v0) = (count(&sim, b, &audio), count(&sim, b, &video));
    sim.drive_for(Duration::from_secs(1));
    assert_eq!(count(&sim, b, &video), v0, "video stopped");
    assert!(count(&sim, b, &audio) > a0 + 30, "audio continues");
}

#[test]
fn deafening_stops_audio_only_and_undeafening_resumes_it_without_a_gap() {
    let (mut sim, b, audio, video) = setup(6);
    let bob = sim.clients[b].id.clone();
    sim.core.set_audio_deafened(&bob, true);
    sim.drive_for(Duration::from_millis(100));
    let (a0, v0) = (count(&sim, b, &audio), count(&sim, b, &video));
    sim.drive_for(Duration::from_secs(1));
    assert_eq!(count(&sim, b, &audio), a0, "no audio while deafened");
    assert!(
        count(&sim, b, &video) > v0 + 30,
        "video continues while deafened"
    );

    sim.core.set_audio_deafened(&bob, false);
    sim.drive_for(Duration::from_secs(1));
    assert!(count(&sim, b, &audio) > a0 + 30, "audio resumes");
    let got = sim.clients[b].received_for(&audio).expect("audio");
    assert!(
        got.missing().is_empty(),
        "no gap to NACK: {:?}",
        got.missing()
    );
}

#[test]
fn muting_a_track_stops_it_for_every_subscriber_and_unmuting_resumes_on_a_keyframe() {
    let (mut sim, b, _audio, video) = setup(7);
    sim.core.set_track_forwarding(&video, false);
    sim.drive_for(Duration::from_millis(100));
    let v0 = count(&sim, b, &video);
    sim.drive_for(Duration::from_millis(500));
    assert_eq!(count(&sim, b, &video), v0);
    sim.core.set_track_forwarding(&video, true);
    sim.drive_for(Duration::from_secs(1));
    let got = sim.clients[b].received_for(&video).expect("video");
    assert!(got.seqs.len() > v0 + 30, "video resumes");
    assert!(
        got.missing().is_empty(),
        "no gap to NACK: {:?}",
        got.missing()
    );
}
