//! Joining over the real WebSocket: `rtc.joined`, presence events, ping, media
//! state, leave, replacement, and the participants endpoint.

#![allow(clippy::disallowed_methods)] // tests drive real sockets on the real clock

mod common;

use common::TestServer;
use serde_json::json;
use std::time::Duration;

#[test]
fn two_clients_join_see_each_other_and_leave() {
    let srv = TestServer::start();
    let (mut alice, joined) = srv.join("alice", "laptop", "lobby");
    let p = &joined["payload"];
    assert_eq!(joined["seq"], 1);
    assert_eq!(joined["channel_id"], "lobby");
    assert_eq!(p["user_uid"], "alice");
    assert_eq!(p["device_id"], "laptop");
    assert_eq!(p["resumed"], false);
    assert_eq!(p["participants"], json!([]));
    assert_eq!(p["permissions"], json!(["speak", "video", "screenshare"]));
    assert!(p["session_id"].as_str().unwrap().starts_with("s_"));
    assert!(p["resume_token"].as_str().unwrap().len() > 20);
    assert!(p["ice_servers"].is_array());

    let (mut bob, joined_b) = srv.join("bob", "phone", "lobby");
    let others = joined_b["payload"]["participants"].as_array().unwrap();
    assert_eq!(others.len(), 1);
    assert_eq!(others[0]["user_uid"], "alice");
    assert_eq!(
        others[0]["media_state"],
        json!({"audio_muted": false, "video_muted": false, "deafened": false})
    );

    let ev = alice.recv_type("rtc.participant.joined");
    assert_eq!(ev["request_id"], json!(null));
    assert_eq!(ev["seq"], 2, "seq counts every message on the socket");
    assert_eq!(ev["payload"]["participant"]["user_uid"], "bob");
    assert_eq!(ev["payload"]["participant"]["tracks"], json!([]));

    // Ping echoes any payload.
    let pong = bob.request("rtc.ping", "lobby", json!({"t": 42, "nested": {"a": [1]}}));
    assert_eq!(pong["type"], "rtc.pong");
    assert_eq!(pong["payload"], json!({"t": 42, "nested": {"a": [1]}}));

    // Participants endpoint.
    let token = srv.token("carol", json!({"lobby": []}));
    let (status, body) = srv
        .http()
        .get("/v1/rtc/channels/lobby/participants", Some(&token));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["participant_count"], 2);
    assert_eq!(body["channel_id"], "lobby");

    // Media state: the sender gets an ack, the others the full state.
    let ack = bob.request("rtc.media.state", "lobby", json!({"audio_muted": true}));
    assert_eq!(ack["type"], "rtc.ack");
    let st = alice.recv_type("rtc.media.state");
    assert_eq!(
        st["payload"],
        json!({"session_id": joined_b["payload"]["session_id"], "user_uid": "bob",
               "audio_muted": true, "video_muted": false, "deafened": false})
    );
    // No change, no event.
    let ack = bob.request("rtc.media.state", "lobby", json!({"audio_muted": true}));
    assert_eq!(ack["type"], "rtc.ack");
    assert_eq!(alice.quiet_for(Duration::from_millis(300)), None);

    // Leave: ack, then close 1000; the others see participant.left.
    let ack = bob.request("rtc.leave", "lobby", json!({}));
    assert_eq!(ack["type"], "rtc.ack");
    let (code, _) = bob.expect_close();
    assert_eq!(code, 1000);
    let left = alice.recv_type("rtc.participant.left");
    assert_eq!(left["payload"]["reason"], "left");
    assert_eq!(left["payload"]["user_uid"], "bob");
    assert_eq!(left["payload"]["device_id"], "phone");
}

#[test]
fn same_user_and_device_replaces_the_old_session() {
    let srv = TestServer::start();
    let (mut watcher, _) = srv.join("watcher", "w", "room");
    let (mut old, _) = srv.join("dave", "tablet", "room");
    watcher.recv_type("rtc.participant.joined");
    let (_new, _) = srv.join("dave", "tablet", "room");

    let (code, seen) = old.expect_close();
    assert_eq!(code, 4409);
    let kicked = seen
        .iter()
        .find(|m| m["type"] == "rtc.kicked")
        .expect("rtc.kicked first");
    assert_eq!(kicked["payload"]["reason"], "replaced");

    let left = watcher.recv_type("rtc.participant.left");
    assert_eq!(left["payload"]["reason"], "replaced");
    let joined = watcher.recv_type("rtc.participant.joined");
    assert_eq!(joined["payload"]["participant"]["user_uid"], "dave");
}

#[test]
fn a_dropped_socket_resumes_within_the_grace_window_unseen_by_others() {
    let srv = TestServer::with_env(&[("PRISM_LIMITS__RECONNECT_GRACE_MS", "5000")]);
    let (mut alice, _) = srv.join("alice", "a", "c1");
    let (bob, joined) = srv.join("bob", "b", "c1");
    alice.recv_type("rtc.participant.joined");
    let token = joined["payload"]["resume_token"]
        .as_str()
        .unwrap()
        .to_string();
    let sid = joined["payload"]["session_id"].clone();
    drop(bob); // the TCP connection drops without a close frame

    std::thread::sleep(Duration::from_millis(300));
    let mut again = srv.ws();
    let resumed = again.request("rtc.join", "c1", json!({"resume_token": token}));
    assert_eq!(resumed["type"], "rtc.joined", "{resumed}");
    assert_eq!(resumed["seq"], 1, "a new socket starts seq at 1");
    assert_eq!(resumed["payload"]["resumed"], true);
    assert_eq!(resumed["payload"]["session_id"], sid);
    assert_eq!(
        resumed["payload"]["participants"].as_array().unwrap().len(),
        1
    );
    let new_token = resumed["payload"]["resume_token"].as_str().unwrap();
    assert_ne!(new_token, token, "resume tokens are single use");
    // Nothing was broadcast to alice.
    assert_eq!(alice.quiet_for(Duration::from_millis(500)), None);

    // The old token is spent.
    let mut third = srv.ws();
    let err = third.request("rtc.join", "c1", json!({"resume_token": token}));
    assert_eq!(err["payload"]["code"], "resume_failed");
    assert_eq!(third.expect_close().0, 4401);
}

#[test]
fn grace_expiry_removes_a_stale_participant_as_disconnected() {
    let srv = TestServer::with_env(&[("PRISM_LIMITS__RECONNECT_GRACE_MS", "1000")]);
    let (mut alice, _) = srv.join("alice", "a", "c2");
    let (bob, _) = srv.join("bob", "b", "c2");
    alice.recv_type("rtc.participant.joined");
    drop(bob);
    let left = alice.recv_type("rtc.participant.left");
    assert_eq!(left["payload"]["reason"], "disconnected");
    assert_eq!(left["payload"]["user_uid"], "bob");
}

#[test]
fn a_replayed_request_id_gets_the_stored_response() {
    let srv = TestServer::start();
    let (mut a, _) = srv.join("alice", "a", "c3");
    a.send_json(
        &json!({"type": "rtc.ping", "request_id": "same", "channel_id": "c3", "payload": {"n": 1}}),
    );
    let first = a.response_to("same");
    // Same id, different payload: not executed again, the stored answer comes back.
    a.send_json(
        &json!({"type": "rtc.ping", "request_id": "same", "channel_id": "c3", "payload": {"n": 2}}),
    );
    let again = a.response_to("same");
    assert_eq!(again["payload"], json!({"n": 1}));
    assert_eq!(again["type"], first["type"]);
    assert_eq!(
        again["seq"].as_u64().unwrap(),
        first["seq"].as_u64().unwrap() + 1
    );

    // A worker-handled request is not executed twice either.
    a.send_json(&json!({"type": "rtc.media.state", "request_id": "m1", "channel_id": "c3", "payload": {"deafened": true}}));
    assert_eq!(a.response_to("m1")["type"], "rtc.ack");
    a.send_json(&json!({"type": "rtc.media.state", "request_id": "m1", "channel_id": "c3", "payload": {"deafened": false}}));
    assert_eq!(a.response_to("m1")["type"], "rtc.ack");
    let token = srv.token("obs", json!({"c3": []}));
    let (_, body) = srv
        .http()
        .get("/v1/rtc/channels/c3/participants", Some(&token));
    assert_eq!(
        body["participants"][0]["media_state"]["deafened"], true,
        "the replay did not apply"
    );
}

#[test]
fn responses_keep_request_order_around_worker_requests() {
    let srv = TestServer::start();
    let (mut a, _) = srv.join("alice", "a", "c4");
    // A worker-handled request then a front-handled one, back to back.
    a.send_json(&json!({"type": "rtc.media.state", "request_id": "1", "channel_id": "c4", "payload": {"video_muted": true}}));
    a.send_json(&json!({"type": "rtc.ping", "request_id": "2", "channel_id": "c4", "payload": {}}));
    a.send_json(&json!({"type": "nope", "request_id": "3", "channel_id": "c4", "payload": {}}));
    let ids: Vec<String> = (0..3)
        .map(|_| a.recv()["request_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["1", "2", "3"]);
}
