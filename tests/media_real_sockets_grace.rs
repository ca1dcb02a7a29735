//! Against the `prism` binary, the two grace windows of a participant (protocol-v1 §6,
//! docs/protocol.md "Media behaviour"):
//! - a publisher whose signaling socket drops and never resumes is removed when the
//!   reconnect grace expires: the others get `rtc.track.unpublished` then
//!   `rtc.participant.left`, both `disconnected`, its media stops, and its resume token
//!   is refused;
//! - a publisher whose publish peer connection goes silent (no ICE) while its socket
//!   stays up loses that connection after str0m's ICE timeout plus the ICE grace: the
//!   others get `rtc.track.unpublished` (`disconnected`), it gets an `rtc.error`, and it
//!   stays in the room.
#![allow(clippy::disallowed_methods)] // tests drive real sockets on the real clock

mod common;

use std::time::{Duration, Instant};

use common::peer::{ClientPc, Pc, PrismProcess};
use common::{Stream, Ws, connect};
use serde_json::{Value, json};

fn received_total(p: &common::peer::RealPeer) -> usize {
    p.subscribe_pc.received.values().map(|r| r.len()).sum()
}

fn events<'a>(p: &'a common::peer::RealPeer, ty: &str) -> Vec<&'a Value> {
    p.events_of(ty)
}

#[test]
fn reconnect_grace_expiry_removes_a_stale_publisher() {
    const CHANNEL: &str = "e2e_grace_expiry";
    let server = PrismProcess::start_with_env(&[("PRISM_LIMITS__RECONNECT_GRACE_MS", "1500")]);
    let mut alice = server.peer("alice", CHANNEL);
    let mut bob = server.peer("bob", CHANNEL);
    alice.publish(true, true);
    let alice_id = alice.session_id.clone();
    let tracks = bob.wait_for_tracks_of(&alice_id, 2);
    let answer = bob.subscribe(&tracks);
    assert_eq!(answer["rejected"], json!([]), "{answer}");
    let token = alice.joined["payload"]["resume_token"]
        .as_str()
        .expect("a resume token")
        .to_string();

    std::thread::scope(|s| {
        let alice = &mut alice;
        s.spawn(move || {
            alice.send_media(Duration::from_secs(1));
            // Alice's signaling socket drops (no close frame); her media goes on.
            if let Stream::Plain(sock) = alice.ws.ws.get_mut() {
                sock.shutdown(std::net::Shutdown::Both)
                    .expect("shut the socket");
            }
            alice.ws_closed = Some((1006, "dropped by the test".into()));
            alice.send_media(Duration::from_secs(4));
        });
        bob.drive_until("media from alice", |b| received_total(b) > 30);
        let dropped_at = Instant::now();
        bob.drive_until("alice to leave after her grace", |b| {
            !b.events_of("rtc.participant.left").is_empty()
        });
        let waited = dropped_at.elapsed();
        assert!(
            waited >= Duration::from_millis(1000),
            "alice was removed only after the grace window, not at once ({waited:?})"
        );
        // Media stops with her: nothing more arrives after a short drain.
        bob.drive_for(Duration::from_millis(300));
        let after = received_total(&bob);
        bob.drive_for(Duration::from_millis(1000));
        assert_eq!(
            received_total(&bob),
            after,
            "no media is forwarded from a removed participant"
        );
    });

    let left = events(&bob, "rtc.participant.left");
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0]["payload"]["session_id"], alice_id.as_str());
    assert_eq!(left[0]["payload"]["reason"], "disconnected");
    let unpublished = events(&bob, "rtc.track.unpublished");
    assert_eq!(unpublished.len(), 2, "{unpublished:?}");
    for u in &unpublished {
        assert_eq!(u["payload"]["reason"], "disconnected", "{u}");
        assert_eq!(u["payload"]["session_id"], alice_id.as_str(), "{u}");
    }
    // Both unpublished events come before the participant.left.
    let order: Vec<&str> = bob
        .events
        .iter()
        .filter_map(|e| e["type"].as_str())
        .filter(|t| *t == "rtc.track.unpublished" || *t == "rtc.participant.left")
        .collect();
    assert_eq!(
        order,
        [
            "rtc.track.unpublished",
            "rtc.track.unpublished",
            "rtc.participant.left"
        ]
    );

    // Her resume token no longer works.
    let request = tungstenite::client::IntoClientRequest::into_client_request(format!(
        "ws://{}/v1/rtc/signaling",
        server.addr
    ))
    .expect("a valid URL");
    let (ws, _) = tungstenite::client::client(request, connect(server.addr, None))
        .expect("signaling upgrade");
    let mut ws = Ws { ws, next_id: 100 };
    let resumed = ws.request("rtc.join", CHANNEL, json!({"resume_token": token}));
    assert_eq!(resumed["type"], "rtc.error", "{resumed}");
    assert_eq!(resumed["payload"]["code"], "resume_failed", "{resumed}");
}

#[test]
fn a_silent_publish_connection_is_closed_after_the_ice_grace() {
    const CHANNEL: &str = "e2e_ice_grace";
    let server = PrismProcess::start_with_env(&[("PRISM_LIMITS__ICE_DISCONNECT_GRACE_MS", "1000")]);
    let mut alice = server.peer("alice", CHANNEL);
    let mut bob = server.peer("bob", CHANNEL);
    alice.publish(true, true);
    let alice_id = alice.session_id.clone();
    let tracks = bob.wait_for_tracks_of(&alice_id, 2);
    let answer = bob.subscribe(&tracks);
    assert_eq!(answer["rejected"], json!([]), "{answer}");

    std::thread::scope(|s| {
        let alice = &mut alice;
        let bob = &mut bob;
        s.spawn(move || {
            bob.drive_until("media from alice", |b| received_total(b) > 30);
            // str0m (ICE-lite) declares ICE disconnected 15 s after the last binding
            // request; the grace adds 1 s; the engine looks every 250 ms.
            let deadline = Instant::now() + Duration::from_secs(30);
            while bob.events_of("rtc.track.unpublished").len() < 2 {
                assert!(
                    Instant::now() < deadline,
                    "bob saw alice's tracks go within 30 s: {:?}",
                    bob.events
                );
                bob.drive_for(Duration::from_millis(100));
            }
        });
        alice.send_media(Duration::from_secs(1));
        // Her publish peer connection vanishes without a word (its socket closes; no
        // more binding requests), while her signaling socket stays up.
        alice.publish_pc = ClientPc::new(Pc::Publish, Instant::now());
        let gone_at = Instant::now();
        let deadline = gone_at + Duration::from_secs(30);
        while alice.events_of("rtc.error").is_empty() {
            assert!(
                Instant::now() < deadline,
                "alice was told within 30 s: {:?}",
                alice.events
            );
            alice.drive_for(Duration::from_millis(100));
        }
        let waited = gone_at.elapsed();
        assert!(
            waited >= Duration::from_secs(10),
            "the connection was given its ICE timeout and grace ({waited:?})"
        );
        alice.drive_for(Duration::from_millis(500));
    });

    let errors = alice.events_of("rtc.error");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["payload"]["code"], "negotiation_failed");
    let message = errors[0]["payload"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("publish peer connection"), "{message}");
    let unpublished = bob.events_of("rtc.track.unpublished");
    assert_eq!(unpublished.len(), 2, "{unpublished:?}");
    for u in &unpublished {
        assert_eq!(u["payload"]["reason"], "disconnected", "{u}");
    }
    assert!(
        bob.events_of("rtc.participant.left").is_empty(),
        "alice stays in the room: {:?}",
        bob.events_of("rtc.participant.left")
    );
    // Her signaling still works, and she can publish again on a new connection.
    let ack = alice.request("rtc.media.state", json!({"audio_muted": false}));
    assert_eq!(ack["type"], "rtc.ack", "{ack}");
    alice.sent.clear();
    let again = alice.publish(true, false);
    assert_eq!(again.len(), 1, "{again:?}");
}
