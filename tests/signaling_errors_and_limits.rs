//! Every signaling error reachable without media, and the socket limits: rate
//! limit then 4429, oversize frame 1009, join timeout 4408, bad Origin 403.

#![allow(clippy::disallowed_methods)] // tests drive real sockets on the real clock

mod common;

use common::TestServer;
use prism::auth::{Permissions, TicketClaims, TicketKey};
use prism::ids::{ChannelId, DeviceId, UserUid};
use serde_json::{Value, json};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tungstenite::Message;

fn code(m: &Value) -> &str {
    assert_eq!(m["type"], "rtc.error", "{m}");
    m["payload"]["code"].as_str().unwrap()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn malformed_messages_get_bad_request_or_unknown_type_and_change_nothing() {
    let srv = TestServer::start();
    let mut ws = srv.ws();
    ws.send_text("not json");
    let m = ws.recv();
    assert_eq!(code(&m), "bad_request");
    assert_eq!(m["request_id"], json!(null));
    assert_eq!(m["channel_id"], json!(null));
    assert_eq!(m["seq"], 1);

    ws.send_json(
        &json!({"type": "rtc.ping", "request_id": "bad id!", "channel_id": "c", "payload": {}}),
    );
    let m = ws.recv();
    assert_eq!(code(&m), "bad_request");
    assert!(
        m["payload"]["message"]
            .as_str()
            .unwrap()
            .contains("request_id")
    );
    assert_eq!(m["channel_id"], "c", "a well-formed channel_id is echoed");

    ws.send_json(
        &json!({"type": "rtc.teleport", "request_id": "m1", "channel_id": "c", "payload": {}}),
    );
    let m = ws.recv();
    assert_eq!(code(&m), "unknown_type");
    assert_eq!(m["request_id"], "m1");

    ws.send_json(&json!({"type": "rtc.media.state", "request_id": "m2", "channel_id": "c", "payload": {"audio_muted": "yes"}}));
    assert_eq!(code(&ws.recv()), "bad_request");

    ws.ws.send(Message::binary(vec![1u8, 2, 3])).unwrap();
    assert_eq!(code(&ws.recv()), "bad_request");

    // Still open and usable.
    let pong = ws.request("rtc.ping", "c", json!({}));
    assert_eq!(pong["type"], "rtc.pong");
}

#[test]
fn requests_before_join_are_not_joined_and_a_second_join_is_already_joined() {
    let srv = TestServer::start();
    let mut ws = srv.ws();
    let m = ws.request("rtc.media.state", "c", json!({"audio_muted": true}));
    assert_eq!(code(&m), "not_joined");
    let m = ws.request(
        "rtc.offer.publish",
        "c",
        json!({"sdp": "v=0", "tracks": []}),
    );
    assert_eq!(code(&m), "not_joined");

    let (mut joined, _) = srv.join("u", "d", "c");
    let token = srv.token("u", json!({"c": []}));
    let ticket = srv.ticket(&token, "c", "d2");
    let m = joined.request("rtc.join", "c", json!({"ticket": ticket}));
    assert_eq!(code(&m), "already_joined");
    let m = joined.request("rtc.media.state", "other", json!({"audio_muted": true}));
    assert_eq!(code(&m), "wrong_channel");
    assert_eq!(m["channel_id"], "c", "the joined channel is echoed");
}

#[test]
fn ticket_failures_answer_their_code_then_close_4401() {
    let srv = TestServer::start();
    let token = srv.token("u", json!({"c": ["speak"]}));

    // Forged signature: a ticket signed with another key.
    let forged_key = TicketKey::new(prism::secret::Secret::new(vec![7u8; 32]));
    let claims = TicketClaims::new(
        &srv.config.server_id,
        ChannelId::parse("c").unwrap(),
        UserUid::parse("u").unwrap(),
        DeviceId::parse("d").unwrap(),
        Permissions::default(),
        vec![],
        unix_now(),
        60,
    );
    let mut ws = srv.ws();
    let m = ws.request("rtc.join", "c", json!({"ticket": forged_key.mint(&claims)}));
    assert_eq!(code(&m), "ticket_invalid");
    assert_eq!(ws.expect_close().0, 4401);

    // Garbage.
    let mut ws = srv.ws();
    assert_eq!(
        code(&ws.request("rtc.join", "c", json!({"ticket": "abc.def.ghi"}))),
        "ticket_invalid"
    );

    // Expired: signed with the server's own key, issued two minutes ago.
    let key = TicketKey::new(srv.config.secrets.ticket_key.clone());
    let old = TicketClaims::new(
        &srv.config.server_id,
        ChannelId::parse("c").unwrap(),
        UserUid::parse("u").unwrap(),
        DeviceId::parse("d").unwrap(),
        Permissions::default(),
        vec![],
        unix_now() - 200,
        60,
    );
    let mut ws = srv.ws();
    let m = ws.request("rtc.join", "c", json!({"ticket": key.mint(&old)}));
    assert_eq!(code(&m), "ticket_expired");
    assert_eq!(ws.expect_close().0, 4401);

    // Wrong channel: the ticket is for "c", the envelope says "d"; not consumed.
    let ticket = srv.ticket(&token, "c", "d1");
    let mut ws = srv.ws();
    let m = ws.request("rtc.join", "other", json!({"ticket": ticket}));
    assert_eq!(code(&m), "wrong_channel");
    let m = ws.request("rtc.join", "c", json!({"ticket": ticket}));
    assert_eq!(m["type"], "rtc.joined", "{m}");

    // Reused.
    let mut ws2 = srv.ws();
    let m = ws2.request("rtc.join", "c", json!({"ticket": ticket}));
    assert_eq!(code(&m), "ticket_used");
    assert_eq!(ws2.expect_close().0, 4401);

    // Unknown resume token.
    let mut ws3 = srv.ws();
    let m = ws3.request("rtc.join", "c", json!({"resume_token": "s_00.ffff"}));
    assert_eq!(code(&m), "resume_failed");
    assert_eq!(ws3.expect_close().0, 4401);
}

#[test]
fn a_used_ticket_stays_used_after_a_restart() {
    let mut srv = TestServer::start();
    let token = srv.token("u", json!({"c": []}));
    let ticket = srv.ticket(&token, "c", "d");
    let mut ws = srv.ws();
    assert_eq!(
        ws.request("rtc.join", "c", json!({"ticket": ticket}))["type"],
        "rtc.joined"
    );
    drop(ws);
    // Same data directory, new process state.
    let config = srv.config.clone();
    srv.stop();
    let server = prism::server::Server::start(config).expect("restart");
    srv.addr = server.local_addr();
    srv.server = Some(server);
    let mut ws = srv.ws();
    let m = ws.request("rtc.join", "c", json!({"ticket": ticket}));
    assert_eq!(code(&m), "ticket_used");
}

#[test]
fn a_full_room_answers_room_full() {
    let srv = TestServer::with_env(&[("PRISM_LIMITS__PARTICIPANTS_PER_CHANNEL", "2")]);
    let (_a, _) = srv.join("a", "a", "small");
    let (_b, _) = srv.join("b", "b", "small");
    let token = srv.token("c", json!({"small": []}));
    let ticket = srv.ticket(&token, "small", "c");
    let mut ws = srv.ws();
    let m = ws.request("rtc.join", "small", json!({"ticket": ticket}));
    assert_eq!(code(&m), "room_full");
}

#[test]
fn an_unparseable_publish_offer_answers_negotiation_failed() {
    let srv = TestServer::start();
    let (mut ws, _) = srv.join("u", "d", "c");
    let m = ws.request(
        "rtc.offer.publish",
        "c",
        json!({"sdp": "v=0\r\n", "tracks": []}),
    );
    assert_eq!(code(&m), "negotiation_failed");
    assert!(!m["payload"]["message"].as_str().unwrap().is_empty());
}

#[test]
fn a_flood_is_rate_limited_then_closed_4429() {
    let srv = TestServer::with_env(&[
        ("PRISM_LIMITS__MESSAGES_PER_S", "5"),
        ("PRISM_LIMITS__MESSAGE_BURST", "5"),
        ("PRISM_LIMITS__RATE_LIMIT_CLOSE_AFTER_MS", "1000"),
    ]);
    let mut ws = srv.ws();
    for i in 0..5 {
        ws.send_request("rtc.ping", "c", json!({"i": i}));
    }
    for _ in 0..5 {
        assert_eq!(ws.recv()["type"], "rtc.pong");
    }
    ws.send_request("rtc.ping", "c", json!({}));
    let m = ws.recv();
    assert_eq!(code(&m), "rate_limited");
    assert!(m["payload"]["retry_after_ms"].as_u64().unwrap() > 0);
    // Keep flooding past the close threshold, without reading.
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_millis(1600) {
        let flood = r#"{"type":"rtc.ping","request_id":"f","channel_id":"c","payload":{}}"#;
        if ws.ws.send(Message::text(flood)).is_err() {
            break; // closed under us
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (closed, seen) = ws.expect_close();
    assert!(seen.iter().any(|m| m["payload"]["code"] == "rate_limited"));
    let closed = Some(closed);
    assert_eq!(closed, Some(4429));
}

#[test]
fn an_oversize_frame_closes_1009() {
    let srv = TestServer::with_env(&[("PRISM_LIMITS__MAX_FRAME_BYTES", "65536")]);
    let mut ws = srv.ws();
    let big = "x".repeat(70_000);
    ws.send_json(
        &json!({"type": "rtc.ping", "request_id": "1", "channel_id": "c", "payload": {"b": big}}),
    );
    assert_eq!(ws.expect_close().0, 1009);
}

#[test]
fn a_socket_that_never_joins_closes_4408() {
    let srv = TestServer::with_env(&[("PRISM_LIMITS__JOIN_TIMEOUT_MS", "1000")]);
    let mut ws = srv.ws();
    let pong = ws.request("rtc.ping", "c", json!({}));
    assert_eq!(pong["type"], "rtc.pong", "ping works before join");
    assert_eq!(ws.expect_close().0, 4408);
}

#[test]
fn a_browser_origin_outside_the_allow_list_is_refused_403() {
    let srv = TestServer::start();
    let err = srv
        .ws_with_headers(&[("Origin", "https://evil.example")])
        .err()
        .expect("refused");
    match err {
        tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 403),
        e => panic!("expected an HTTP 403, got {e}"),
    }
    // Dev mode allows any localhost port, and requests without Origin.
    assert!(
        srv.ws_with_headers(&[("Origin", "http://localhost:5173")])
            .is_ok()
    );
    assert!(
        srv.ws_with_headers(&[("Origin", "http://127.0.0.1:9")])
            .is_ok()
    );
    assert!(
        srv.ws_with_headers(&[("Origin", "http://localhost.evil.com:80")])
            .is_err()
    );
}
