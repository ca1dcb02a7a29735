//! Against the `prism` binary: a subscriber whose signaling socket drops keeps
//! receiving media over UDP while it is stale (protocol-v1 §6), resumes on a new
//! socket with `rtc.join {resume_token}`, and the others never see it leave.
#![allow(clippy::disallowed_methods)] // tests drive real sockets on the real clock

mod common;

use std::time::Duration;

use common::peer::{PrismProcess, assert_intact};
use common::{Stream, Ws, connect};
use serde_json::json;

const CHANNEL: &str = "e2e_resume";

#[test]
fn media_keeps_flowing_through_a_signaling_drop_and_resume() {
    let server = PrismProcess::start();
    let mut alice = server.peer("alice", CHANNEL);
    let mut bob = server.peer("bob", CHANNEL);
    let published = alice.publish(true, true);
    assert_eq!(published.len(), 2, "{published:?}");
    let alice_id = alice.session_id.clone();
    let tracks = bob.wait_for_tracks_of(&alice_id, 2);
    let answer = bob.subscribe(&tracks);
    assert_eq!(answer["rejected"], json!([]), "{answer}");
    let token = bob.joined["payload"]["resume_token"]
        .as_str()
        .expect("a resume token")
        .to_string();

    std::thread::scope(|s| {
        let alice = &mut alice;
        s.spawn(move || {
            alice.send_media(Duration::from_secs(4));
            alice.drive_for(Duration::from_millis(1500));
        });
        // One second of media, then the signaling socket drops (no close frame).
        bob.drive_for(Duration::from_secs(1));
        if let Stream::Plain(sock) = bob.ws.ws.get_mut() {
            sock.shutdown(std::net::Shutdown::Both)
                .expect("shut the socket");
        }
        bob.ws_closed = Some((1006, "dropped by the test".into()));
        let before = bob
            .subscribe_pc
            .received
            .values()
            .map(|r| r.len())
            .sum::<usize>();
        // Stale for 1.5 s: media must keep arriving.
        bob.drive_for(Duration::from_millis(1500));
        let during = bob
            .subscribe_pc
            .received
            .values()
            .map(|r| r.len())
            .sum::<usize>();
        assert!(
            during > before + 50,
            "media kept flowing while the socket was gone ({before} -> {during} packets)"
        );
        // Resume on a new socket.
        let request = tungstenite::client::IntoClientRequest::into_client_request(format!(
            "ws://{}/v1/rtc/signaling",
            server.addr
        ))
        .expect("a valid URL");
        let (ws, _) = tungstenite::client::client(request, connect(server.addr, None))
            .expect("signaling upgrade");
        let mut ws = Ws { ws, next_id: 100 };
        let resumed = ws.request("rtc.join", CHANNEL, json!({"resume_token": token}));
        assert_eq!(resumed["type"], "rtc.joined", "{resumed}");
        assert_eq!(resumed["payload"]["resumed"], true);
        assert_eq!(resumed["payload"]["session_id"], bob.session_id.as_str());
        let snapshot = resumed["payload"]["participants"]
            .as_array()
            .expect("participants");
        assert_eq!(snapshot.len(), 1, "{resumed}");
        assert_eq!(
            snapshot[0]["tracks"].as_array().map(Vec::len),
            Some(2),
            "{resumed}"
        );
        if let Stream::Plain(sock) = ws.ws.get_mut() {
            sock.set_read_timeout(Some(Duration::from_millis(1)))
                .expect("read timeout");
        }
        bob.ws = ws;
        bob.ws_closed = None;
        // Signaling works again on the resumed session.
        let ack = bob.request("rtc.media.state", json!({"deafened": false}));
        assert_eq!(ack["type"], "rtc.ack", "{ack}");
        bob.drive_for(Duration::from_secs(3));
    });

    for id in &tracks {
        let sent = alice.sent_for(id).expect("alice published it");
        let got = bob.received_for(id).expect("bob received it");
        assert_intact(
            &format!("bob <- alice {id}"),
            sent,
            got,
            sent.max_packets_per_second(),
        );
    }
    assert!(
        alice.events_of("rtc.participant.left").is_empty(),
        "the others never saw bob leave: {:?}",
        alice.events_of("rtc.participant.left")
    );
}
