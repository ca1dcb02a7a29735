//! Limits answer with their codes: `room_full`, `track_limit`, connections per IP and
//! in total (503 before any HTTP), join tickets per user and per IP (429
//! `rate_limited` with `Retry-After`), and overload shedding: a saturated media worker
//! (simulated) refuses new joins `server_busy` with `retry_after_ms`, `/readyz` says
//! 503, and the calls already on it keep their media.
#![allow(clippy::disallowed_methods)] // tests own their clock

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::TestServer;
use common::peer::RealPeer;
use serde_json::{Value, json};

fn code(m: &Value) -> &str {
    m["payload"]["code"].as_str().unwrap_or("")
}

fn metrics(ts: &TestServer) -> String {
    let r = ts.http().send("GET", "/metrics", None, None, &[]);
    String::from_utf8_lossy(&r.body).into_owned()
}

#[test]
fn room_full_and_track_limit_answer_their_codes() {
    let ts = TestServer::with_env(&[
        ("PRISM_LIMITS__PARTICIPANTS_PER_CHANNEL", "2"),
        ("PRISM_LIMITS__TRACKS_PER_PARTICIPANT", "2"),
    ]);
    let (mut a, _) = ts.join("a", "d1", "small");
    let _b = ts.join("b", "d1", "small");
    let token = ts.token("c", json!({"small": ["speak"]}));
    let ticket = ts.ticket(&token, "small", "d1");
    let mut ws = ts.ws();
    let m = ws.request("rtc.join", "small", json!({"ticket": ticket}));
    assert_eq!(code(&m), "room_full", "{m}");
    assert!(metrics(&ts).contains("rtc_join_fail_total{reason=\"room_full\"} 1"));

    let tracks: Vec<Value> = (0..3)
        .map(|i| json!({"mid": i.to_string(), "source": "microphone"}))
        .collect();
    let m = a.request(
        "rtc.offer.publish",
        "small",
        json!({"sdp": "v=0", "tracks": tracks}),
    );
    assert_eq!(code(&m), "track_limit", "{m}");
}

/// A TCP connection from `source` (any 127.0.0.0/8 address) to the server.
fn connect_from(source: [u8; 4], to: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from((source, 0)).into()).unwrap();
    s.connect(&to.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

fn refused_503(mut s: TcpStream) -> bool {
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    buf.starts_with(b"HTTP/1.1 503")
}

fn still_served(s: &mut TcpStream) -> bool {
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .is_ok()
        && common::read_response(s).is_some_and(|r| r.status == 200)
}

#[test]
fn connections_are_limited_per_ip_and_in_total() {
    let ts = TestServer::with_env(&[
        ("PRISM_LIMITS__MAX_CONNECTIONS", "5"),
        ("PRISM_LIMITS__MAX_CONNECTIONS_PER_IP", "3"),
    ]);
    let mut held: Vec<TcpStream> = (0..3)
        .map(|_| connect_from([127, 0, 0, 1], ts.addr))
        .collect();
    assert!(held.iter_mut().all(still_served));
    assert!(
        refused_503(connect_from([127, 0, 0, 1], ts.addr)),
        "4th from one IP"
    );
    held.extend((0..2).map(|_| connect_from([127, 0, 0, 2], ts.addr)));
    assert!(held.iter_mut().all(still_served));
    assert!(
        refused_503(connect_from([127, 0, 0, 3], ts.addr)),
        "6th in total"
    );
    // A slot freed is a slot for the next client.
    drop(held.pop());
    std::thread::sleep(Duration::from_millis(300));
    let mut again = connect_from([127, 0, 0, 3], ts.addr);
    assert!(still_served(&mut again));
}

#[test]
fn join_tickets_are_rate_limited_per_user_and_per_ip() {
    let ts = TestServer::with_env(&[
        ("PRISM_LIMITS__TICKET_RATE_PER_USER_PER_MIN", "2"),
        ("PRISM_LIMITS__TICKET_RATE_PER_IP_PER_MIN", "4"),
    ]);
    let ticket = |user: &str| {
        let token = ts.token(user, json!({"c": []}));
        ts.http().send(
            "POST",
            "/v1/rtc/channels/c/join-ticket",
            Some(&token),
            Some(&json!({"device_id": "d"})),
            &[],
        )
    };
    assert_eq!(ticket("u1").status, 201);
    assert_eq!(ticket("u1").status, 201);
    let r = ticket("u1");
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (429, json!("rate_limited"))
    );
    assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
    // A per-user refusal spends no per-IP budget: u1 used 2 of the 4.
    let statuses: Vec<u16> = ["u2", "u3", "u4", "u5"]
        .iter()
        .map(|u| ticket(u).status)
        .collect();
    assert!(statuses.contains(&429), "per-IP limit: {statuses:?}");
    let r = ticket("u6");
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (429, json!("rate_limited"))
    );
}

#[test]
fn a_saturated_worker_sheds_new_joins_while_existing_calls_keep_media() {
    let ts = TestServer::start();
    let (ws, joined) = ts.join("alice", "d1", "busy");
    let mut alice = RealPeer::new("alice", "busy", ws, joined);
    let (ws, joined) = ts.join("bob", "d1", "busy");
    let mut bob = RealPeer::new("bob", "busy", ws, joined);
    alice.publish(true, false);
    let tracks = bob.wait_for_tracks_of(&alice.session_id.clone(), 1);
    bob.subscribe(&tracks);
    let run = |alice: &mut RealPeer, bob: &mut RealPeer, d: Duration| {
        std::thread::scope(|s| {
            s.spawn(|| alice.send_media(d));
            s.spawn(|| bob.drive_for(d + Duration::from_millis(300)));
        });
    };
    run(&mut alice, &mut bob, Duration::from_secs(1));
    let before = bob.received_for(&tracks[0]).map_or(0, |r| r.len());
    assert!(before > 20, "media flows: {before}");

    let load = ts.server.as_ref().unwrap().app().workers[0].load().clone();
    load.force_saturated(true);
    let token = ts.token("carol", json!({"busy": ["speak"]}));
    let ticket = ts.ticket(&token, "busy", "d1");
    let mut ws = ts.ws();
    let m = ws.request("rtc.join", "busy", json!({"ticket": ticket}));
    assert_eq!(code(&m), "server_busy", "{m}");
    assert!(m["payload"]["retry_after_ms"].as_u64().unwrap() > 0, "{m}");
    assert_eq!(ts.http().get("/readyz", None).0, 503);
    assert!(metrics(&ts).contains("rtc_join_fail_total{reason=\"server_busy\"} 1"));

    run(&mut alice, &mut bob, Duration::from_secs(1));
    let after = bob.received_for(&tracks[0]).map_or(0, |r| r.len());
    assert!(
        after > before + 20,
        "media kept flowing: {before} then {after}"
    );
    let pong = alice.request("rtc.ping", json!({}));
    assert_eq!(pong["type"], "rtc.pong");

    // Load gone: ready again, and the same ticket (not spent) joins.
    load.force_saturated(false);
    assert_eq!(ts.http().get("/readyz", None).0, 200);
    let m = ws.request("rtc.join", "busy", json!({"ticket": ticket}));
    assert_eq!(m["type"], "rtc.joined", "{m}");
}
