//! Against the `prism` binary, over real UDP sockets and the real WebSocket signaling:
//! two participants publish Opus + VP8, each subscribes to the other's tracks as
//! `rtc.track.published` announces them, and each receives the other's media byte for
//! byte, without a sequence gap, up to the last packet sent, with a VP8 keyframe.
#![allow(clippy::disallowed_methods)] // tests drive real sockets on the real clock

mod common;

use std::time::Duration;

use common::peer::{PrismProcess, assert_intact};
use str0m::media::MediaKind;

const CHANNEL: &str = "e2e_publish_subscribe";
/// How long both send media.
const MEDIA_FOR: Duration = Duration::from_secs(3);
/// How long both keep driving after they stop sending, so the last packets arrive.
const TAIL: Duration = Duration::from_millis(1500);

#[test]
fn two_peers_receive_each_others_audio_and_video_intact_over_real_sockets() {
    let mut server = PrismProcess::start();
    let mut alice = server.peer("alice", CHANNEL);
    let mut bob = server.peer("bob", CHANNEL);

    let published_by_alice = alice.publish(true, true);
    let published_by_bob = bob.publish(true, true);
    assert_eq!(published_by_alice.len(), 2, "{published_by_alice:?}");
    assert_eq!(published_by_bob.len(), 2, "{published_by_bob:?}");

    // Each learns the other's tracks from `rtc.track.published` (both joined before
    // anything was published, so the join snapshots held no tracks).
    let alice_id = alice.session_id.clone();
    let bob_id = bob.session_id.clone();
    let of_alice = bob.wait_for_tracks_of(&alice_id, 2);
    let of_bob = alice.wait_for_tracks_of(&bob_id, 2);
    for (listener, publisher, announced, answered) in [
        (&bob, &alice, &of_alice, &published_by_alice),
        (&alice, &bob, &of_bob, &published_by_bob),
    ] {
        let mut answered_ids: Vec<String> = answered.iter().map(|(_, id)| id.clone()).collect();
        answered_ids.sort();
        assert_eq!(
            announced, &answered_ids,
            "{} heard other tracks",
            listener.name
        );
        for e in listener.events_of("rtc.track.published") {
            let t = &e["payload"]["track"];
            assert_eq!(t["session_id"], publisher.session_id.as_str(), "{e}");
            assert_eq!(t["user_uid"], publisher.name.as_str(), "{e}");
            match t["kind"].as_str() {
                Some("audio") => {
                    assert_eq!(t["codec"], "opus", "{e}");
                    assert_eq!(t["source"], "microphone", "{e}");
                }
                Some("video") => {
                    assert_eq!(t["codec"], "vp8", "{e}");
                    assert_eq!(t["source"], "camera", "{e}");
                }
                _ => panic!("a track of unknown kind: {e}"),
            }
        }
    }

    let answer = alice.subscribe(&of_bob);
    assert_eq!(answer["rejected"], serde_json::json!([]), "{answer}");
    let answer = bob.subscribe(&of_alice);
    assert_eq!(answer["rejected"], serde_json::json!([]), "{answer}");

    std::thread::scope(|s| {
        for peer in [&mut alice, &mut bob] {
            s.spawn(move || {
                peer.send_media(MEDIA_FOR);
                peer.drive_for(TAIL);
            });
        }
    });

    for (receiver, sender, tracks) in [(&alice, &bob, &of_bob), (&bob, &alice, &of_alice)] {
        for id in tracks {
            let sent = sender
                .sent_for(id)
                .expect("the sender published this track");
            let what = format!("{} <- {} {:?} {id}", receiver.name, sender.name, sent.kind);
            let got = receiver
                .received_for(id)
                .unwrap_or_else(|| panic!("{what}: nothing received"));
            // Both subscriptions were connected before any media was sent: at most a
            // second's worth may be missing at the start.
            let lost_at_start = assert_intact(&what, sent, got, sent.max_packets_per_second());
            eprintln!(
                "{what}: {} packets intact, {lost_at_start} missing at the start, {} keyframes",
                got.len(),
                got.keyframes
            );
            if sent.kind == MediaKind::Video {
                assert!(got.keyframes >= 1, "{what}: no keyframe arrived");
            }
        }
    }
    // Each video subscription reports its layer when it first flows; a track
    // without simulcast reports `f` (protocol-v1 §5).
    for (peer, other) in [(&alice, &of_bob), (&bob, &of_alice)] {
        let layers = peer.events_of("rtc.layer.changed");
        let video: Vec<&String> = other
            .iter()
            .filter(|id| {
                peer.known_tracks
                    .get(*id)
                    .is_some_and(|t| t["kind"] == "video")
            })
            .collect();
        assert!(
            !video.is_empty(),
            "{}: a video track was subscribed",
            peer.name
        );
        for id in video {
            let first = layers
                .iter()
                .find(|e| e["payload"]["track_id"] == id.as_str())
                .unwrap_or_else(|| {
                    panic!("{}: no rtc.layer.changed for {id}: {layers:?}", peer.name)
                });
            assert_eq!(first["payload"]["layer"], "f", "{first}");
        }
    }
    for peer in [&alice, &bob] {
        assert!(
            peer.events_of("rtc.error").is_empty(),
            "{}: asynchronous errors: {:?}",
            peer.name,
            peer.events_of("rtc.error")
        );
    }
    assert!(server.is_running(), "the server exited");
    assert!(
        !server.log().contains("panicked"),
        "the server logged a panic:\n{}",
        server.log()
    );
}
