//! Timeouts: a listen-only timeout unpublishes the user's live tracks (the others see
//! `rtc.track.unpublished` reason `publish_blocked`), refuses new publishes with
//! `publish_blocked`, and lapses on time; `listen_only: false` cuts the session and
//! keeps the user out. Locks: new tickets are refused `channel_locked` except to
//! exempt roles, and live sessions stay.
#![allow(clippy::disallowed_methods)] // tests own their clock

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::TestServer;
use common::peer::RealPeer;
use serde_json::{Value, json};

fn admin(ts: &TestServer, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let r = ts.http().send(method, path, Some(&ts.admin_key), body, &[]);
    (r.status, r.json())
}

fn in_ms(ms: u64) -> String {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap() + Duration::from_millis(ms);
    let secs = t.as_secs();
    // RFC 3339 with milliseconds, via the server's own formatter's contract.
    let (d, s) = (secs / 86_400, secs % 86_400);
    let (y, m, dd) = civil(d);
    format!(
        "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s % 3600 / 60,
        s % 60,
        t.subsec_millis()
    )
}

fn civil(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + u64::from(m <= 2), m, d)
}

fn token_with_roles(ts: &TestServer, user: &str, channel: &str, roles: &[&str]) -> String {
    let (s, body) = ts.http().post(
        "/v1/dev/session-token",
        None,
        &json!({"user_uid": user, "channels": {channel: ["speak", "video"]}, "roles": roles}),
    );
    assert_eq!(s, 200, "{body}");
    body["token"].as_str().unwrap().to_string()
}

fn ticket_answer(ts: &TestServer, token: &str, channel: &str) -> (u16, Value) {
    ts.http().post(
        &format!("/v1/rtc/channels/{channel}/join-ticket"),
        Some(token),
        &json!({"device_id": "d1"}),
    )
}

/// A publish offer the moderation check refuses before the SDP is even read.
fn bogus_publish(ws: &mut common::Ws, channel: &str) -> Value {
    ws.request(
        "rtc.offer.publish",
        channel,
        json!({"sdp": "v=0", "tracks": [{"mid": "0", "source": "microphone"}]}),
    )
}

#[test]
fn a_listen_only_timeout_unpublishes_refuses_publishing_and_lapses_on_time() {
    let ts = TestServer::start();
    let (ws, joined) = ts.join("alice", "d1", "room");
    let mut alice = RealPeer::new("alice", "room", ws, joined);
    let (mut bob, _) = ts.join("bob", "d1", "room");
    let tracks = alice.publish(true, false);
    assert_eq!(tracks.len(), 1);
    let track_id = tracks[0].1.clone();
    let published = bob.recv_type("rtc.track.published");
    assert_eq!(published["payload"]["track"]["track_id"], track_id.as_str());

    let lapse_ms = 2500;
    let until = in_ms(lapse_ms);
    let set_at = Instant::now();
    let (s, body) = admin(
        &ts,
        "PUT",
        "/v1/admin/channels/room/timeouts/alice",
        Some(&json!({"until": until, "reason": "shouting", "listen_only": true})),
    );
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["affected"], 1);
    assert_eq!(body["listen_only"], true);

    let gone = bob.recv_type("rtc.track.unpublished");
    assert_eq!(gone["payload"]["track_id"], track_id.as_str());
    assert_eq!(gone["payload"]["reason"], "publish_blocked");
    alice.drive_until("the publish_blocked event", |p| {
        p.events_of("rtc.error")
            .iter()
            .any(|e| e["payload"]["code"] == "publish_blocked")
    });
    let (_, parts) = ts.http().get(
        "/v1/rtc/channels/room/participants",
        Some(&ts.token("bob", json!({"room": []}))),
    );
    let alice_entry = parts["participants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["user_uid"] == "alice")
        .expect("alice stays in the room")
        .clone();
    assert_eq!(alice_entry["tracks"], json!([]), "{parts}");

    // A new publish is refused while the timeout lasts; bob may still publish.
    let (mut carol_ws, _) = ts.join("alice", "d2", "room");
    let refused = bogus_publish(&mut carol_ws, "room");
    assert_eq!(refused["payload"]["code"], "publish_blocked", "{refused}");
    let other = bogus_publish(&mut bob, "room");
    assert_eq!(other["payload"]["code"], "negotiation_failed", "{other}");
    let (_, list) = admin(&ts, "GET", "/v1/admin/timeouts", None);
    assert_eq!(list["timeouts"].as_array().unwrap().len(), 1);

    // It lapses on time (the housekeeping tick is 250 ms).
    let wait = Duration::from_millis(lapse_ms + 400).saturating_sub(set_at.elapsed());
    std::thread::sleep(wait);
    let after = bogus_publish(&mut carol_ws, "room");
    assert_eq!(after["payload"]["code"], "negotiation_failed", "{after}");
    let (_, list) = admin(&ts, "GET", "/v1/admin/timeouts", None);
    assert_eq!(list["timeouts"], json!([]));
    let (_, audit) = admin(&ts, "GET", "/v1/admin/audit?channel_id=room", None);
    let kinds: Vec<&str> = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"timeout") && kinds.contains(&"timeout_lapsed"),
        "{kinds:?}"
    );
}

#[test]
fn a_timeout_without_listen_only_cuts_and_keeps_out_until_lifted() {
    let ts = TestServer::start();
    let (mut alice, _) = ts.join("alice", "d1", "room");
    let (mut bob, _) = ts.join("bob", "d1", "room");
    let (s, body) = admin(
        &ts,
        "PUT",
        "/v1/admin/channels/room/timeouts/alice",
        Some(&json!({"until": in_ms(600_000), "reason": "out", "listen_only": false})),
    );
    assert_eq!((s, body["disconnected"].as_u64()), (200, Some(1)), "{body}");
    let (code, seen) = alice.expect_close();
    assert_eq!(code, 4410);
    assert!(seen.iter().any(|m| m["type"] == "rtc.kicked"));
    let left = bob.recv_type("rtc.participant.left");
    assert_eq!(left["payload"]["reason"], "kicked");
    let token = ts.token("alice", json!({"room": ["speak"]}));
    let (s, body) = ticket_answer(&ts, &token, "room");
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (403, Some("publish_blocked"))
    );
    let metrics = String::from_utf8_lossy(&ts.http().send("GET", "/metrics", None, None, &[]).body)
        .into_owned();
    assert!(
        metrics.contains("rtc_forced_disconnect_total{reason=\"timeout\"} 1"),
        "{metrics}"
    );

    let r = ts.http().send(
        "DELETE",
        "/v1/admin/channels/room/timeouts/alice",
        Some(&ts.admin_key),
        None,
        &[],
    );
    assert_eq!(r.status, 204);
    assert_eq!(ticket_answer(&ts, &token, "room").0, 201);

    // A timeout in the past or without `until` is refused.
    for body in [
        json!({"until": "2001-01-01T00:00:00Z"}),
        json!({"reason": "x"}),
    ] {
        let (s, _) = admin(
            &ts,
            "PUT",
            "/v1/admin/channels/room/timeouts/alice",
            Some(&body),
        );
        assert_eq!(s, 400, "{body}");
    }
}

#[test]
fn a_locked_channel_refuses_new_tickets_except_exempt_roles_and_keeps_live_sessions() {
    let ts = TestServer::start();
    let (mut inside, _) = ts.join("dave", "d1", "hall");
    // A ticket minted before the lock, used after it.
    let early = ts.ticket(&token_with_roles(&ts, "erin", "hall", &[]), "hall", "d1");
    let (s, body) = admin(
        &ts,
        "PUT",
        "/v1/admin/channels/hall/lock",
        Some(&json!({"exempt_roles": ["moderator"], "reason": "raid"})),
    );
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["exempt_roles"], json!(["moderator"]));

    let member = token_with_roles(&ts, "frank", "hall", &["member"]);
    let (s, body) = ticket_answer(&ts, &member, "hall");
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (403, Some("channel_locked"))
    );
    let moderator = token_with_roles(&ts, "grace", "hall", &["moderator"]);
    assert_eq!(ticket_answer(&ts, &moderator, "hall").0, 201);
    // Other channels are not affected.
    let elsewhere = token_with_roles(&ts, "frank", "other", &[]);
    assert_eq!(ticket_answer(&ts, &elsewhere, "other").0, 201);

    // rtc.join with the early ticket is refused, the socket stays, the ticket unspent.
    let mut ws = ts.ws();
    let m = ws.request("rtc.join", "hall", json!({"ticket": early}));
    assert_eq!(m["payload"]["code"], "channel_locked", "{m}");
    let pong = ws.request("rtc.ping", "hall", json!({}));
    assert_eq!(pong["type"], "rtc.pong");

    // The live session is untouched.
    let still = inside.request("rtc.ping", "hall", json!({"x": 1}));
    assert_eq!(still["type"], "rtc.pong");
    assert!(inside.quiet_for(Duration::from_millis(200)).is_none());
    let (_, locks) = admin(&ts, "GET", "/v1/admin/locks", None);
    assert_eq!(locks["locks"].as_array().unwrap().len(), 1);

    let r = ts.http().send(
        "DELETE",
        "/v1/admin/channels/hall/lock",
        Some(&ts.admin_key),
        None,
        &[],
    );
    assert_eq!(r.status, 204);
    let m = ws.request("rtc.join", "hall", json!({"ticket": early}));
    assert_eq!(m["type"], "rtc.joined", "{m}");
    assert_eq!(ticket_answer(&ts, &member, "hall").0, 201);
}
