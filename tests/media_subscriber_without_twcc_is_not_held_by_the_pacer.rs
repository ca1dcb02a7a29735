//! A subscriber whose client does not negotiate transport-cc (no TWCC feedback) gets
//! three 800 kbit/s cameras — 2.4 Mbit/s, well above str0m's initial 1 Mbit/s
//! estimate. Without feedback str0m's estimate never moves, and its pacer
//! (1.1 × estimate) used to queue the excess for up to 2 s: the subscriber saw
//! seconds of latency. Prism now keeps str0m's estimator at the rate its fallback
//! estimate lets it send, so over a steady window the subscriber receives what the
//! publishers sent, less at most the last fraction of a second in flight.
#![allow(clippy::disallowed_methods)] // tests own their clock

use std::time::Duration;

use prism::media::MediaKind;
use prism::media::sim::{Sim, VideoShape};

const BPS: u64 = 800_000;

#[test]
fn three_cameras_above_the_initial_estimate_are_not_queued_for_a_subscriber_without_twcc() {
    let mut sim = Sim::new(7);
    sim.video = Some(VideoShape {
        bitrate_bps: BPS,
        payload_bytes: 1000,
    });
    let mut tracks = Vec::new();
    let mut publishers = Vec::new();
    for name in ["a", "b", "c"] {
        let c = sim.add_client(name);
        let answer = sim.publish(c, false, true);
        let t = answer
            .tracks
            .iter()
            .find(|t| t.kind == MediaKind::Video)
            .expect("video published")
            .track_id
            .clone();
        tracks.push(t);
        publishers.push(c);
    }
    let s = sim.add_client("sub");
    sim.clients[s].twcc = false;
    sim.subscribe(s, &tracks);
    sim.drive_for(Duration::from_secs(5));

    // A steady window: what was sent in it must arrive in it (give or take the
    // packets in flight at its edges: 300 ms of media is far more than any pacer
    // smoothing, and far less than the 2 s queue of the bug).
    let sent_before: Vec<u64> = publishers
        .iter()
        .zip(&tracks)
        .map(|(&c, t)| sim.clients[c].sent_for(t).expect("sent").packets)
        .collect();
    let recv_before: Vec<u64> = tracks
        .iter()
        .map(|t| sim.clients[s].received_for(t).map_or(0, |r| r.packets))
        .collect();
    let window = Duration::from_secs(10);
    sim.drive_for(window);
    for (i, t) in tracks.iter().enumerate() {
        let sent = sim.clients[publishers[i]]
            .sent_for(t)
            .expect("sent")
            .packets
            - sent_before[i];
        let got = sim.clients[s].received_for(t).expect("received").packets - recv_before[i];
        let per_s = sent as f64 / window.as_secs_f64();
        let slack = (per_s * 0.3) as u64;
        println!(
            "camera {i}: sent {sent}, received {got} in {} s (slack {slack})",
            window.as_secs()
        );
        assert!(
            got + slack >= sent,
            "camera {i}: the subscriber received {got} of {sent} packets sent in the window: \
             media is being held back"
        );
    }
}
