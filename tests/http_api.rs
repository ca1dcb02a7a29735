//! The HTTP API over real sockets: capabilities, join tickets, ICE config,
//! participants, dev tokens, CORS and Origin, errors, limits, metrics, health.

#![allow(clippy::disallowed_methods)] // tests drive real sockets on the real clock

mod common;

use common::TestServer;
use serde_json::json;

#[test]
fn capabilities_match_the_contract() {
    let srv = TestServer::start();
    let (status, body) = srv.http().get("/client/capabilities", None);
    assert_eq!(status, 200);
    let rtc = &body["rtc"];
    assert_eq!(rtc["protocol_version"], "1.0");
    assert_eq!(rtc["signaling_transport"], "websocket");
    assert_eq!(rtc["topologies"], json!(["sfu"]));
    assert_eq!(
        rtc["features"],
        json!({"voice": true, "video": true, "screenshare": true, "simulcast": true})
    );
    assert!(
        rtc["signaling_url"]
            .as_str()
            .unwrap()
            .ends_with("/v1/rtc/signaling")
    );
    assert_eq!(rtc["connection_policy"]["join_timeout_ms"], 12000);
    assert_eq!(rtc["connection_policy"]["answer_timeout_ms"], 10000);
    assert_eq!(rtc["connection_policy"]["ice_restart_enabled"], true);
    assert_eq!(
        rtc["connection_policy"]["reconnect_backoff_ms"],
        json!([250, 500, 1000, 2000, 5000])
    );
}

#[test]
fn join_ticket_is_minted_for_members_only() {
    let srv = TestServer::start();
    let http = srv.http();
    let token = srv.token("alice", json!({"lobby": ["speak"], "*": []}));
    let (status, body) = http.post(
        "/v1/rtc/channels/lobby/join-ticket",
        Some(&token),
        &json!({"device_id": "laptop"}),
    );
    assert_eq!(status, 201, "{body}");
    for field in [
        "ticket",
        "expires_at",
        "channel_id",
        "signaling_url",
        "ice_servers",
        "connection_policy",
    ] {
        assert!(!body[field].is_null(), "missing {field}");
    }
    assert_eq!(body["channel_id"], "lobby");
    assert!(body["expires_at"].as_str().unwrap().ends_with('Z'));

    // "*" grants connect everywhere.
    let (status, _) = http.post(
        "/v1/rtc/channels/other/join-ticket",
        Some(&token),
        &json!({"device_id": "x"}),
    );
    assert_eq!(status, 201);

    // No "*": a channel not listed is forbidden.
    let narrow = srv.token("bob", json!({"lobby": []}));
    let (status, body) = http.post(
        "/v1/rtc/channels/secret/join-ticket",
        Some(&narrow),
        &json!({"device_id": "x"}),
    );
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], "forbidden");

    // No token, a forged token.
    let (status, body) = http.post(
        "/v1/rtc/channels/lobby/join-ticket",
        None,
        &json!({"device_id": "x"}),
    );
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthorized");
    let mut forged = token.clone();
    forged.pop();
    forged.push(if token.ends_with('A') { 'B' } else { 'A' });
    let (status, _) = http.post(
        "/v1/rtc/channels/lobby/join-ticket",
        Some(&forged),
        &json!({"device_id": "x"}),
    );
    assert_eq!(status, 401);

    // Bad body, bad device id, bad channel id.
    let (status, body) = http.post(
        "/v1/rtc/channels/lobby/join-ticket",
        Some(&token),
        &json!({}),
    );
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("device_id")
    );
    let (status, body) = http.post(
        "/v1/rtc/channels/lobby/join-ticket",
        Some(&token),
        &json!({"device_id": "a b"}),
    );
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("device_id")
    );
    let (status, _) = http.post(
        "/v1/rtc/channels/bad%20id/join-ticket",
        Some(&token),
        &json!({"device_id": "x"}),
    );
    assert_eq!(status, 400);
}

#[test]
fn join_tickets_are_rate_limited_per_user_with_retry_after() {
    let srv = TestServer::with_env(&[("PRISM_LIMITS__TICKET_RATE_PER_USER_PER_MIN", "3")]);
    let token = srv.token("alice", json!({"c": []}));
    for i in 0..3 {
        let (status, _) = srv.http().post(
            "/v1/rtc/channels/c/join-ticket",
            Some(&token),
            &json!({"device_id": format!("d{i}")}),
        );
        assert_eq!(status, 201);
    }
    let r = srv.http().send(
        "POST",
        "/v1/rtc/channels/c/join-ticket",
        Some(&token),
        Some(&json!({"device_id": "d"})),
        &[],
    );
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["code"], "rate_limited");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(retry >= 1);
    // Another user is not affected.
    let other = srv.token("bob", json!({"c": []}));
    let (status, _) = srv.http().post(
        "/v1/rtc/channels/c/join-ticket",
        Some(&other),
        &json!({"device_id": "d"}),
    );
    assert_eq!(status, 201);
}

#[test]
fn ice_config_and_turn_credentials_follow_the_coturn_scheme() {
    let srv = TestServer::with_config(
        r#"
[secrets]
turn_secret = "a-turn-secret-of-at-least-32-chars!!"

[[ice_servers]]
urls = ["stun:stun.example.org:3478"]

[[ice_servers]]
urls = ["turn:turn.example.org:3478?transport=udp"]
turn = true
"#,
        &[],
    );
    let token = srv.token("u123", json!({"c": []}));
    let (status, body) = srv.http().get("/v1/rtc/ice-config", Some(&token));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["bundle_policy"], "max-bundle");
    assert_eq!(body["rtcp_mux_policy"], "require");
    assert_eq!(body["ice_transport_policy"], "all");
    let servers = body["ice_servers"].as_array().unwrap();
    assert_eq!(servers[0], json!({"urls": ["stun:stun.example.org:3478"]}));
    let turn = &servers[1];
    assert_eq!(turn["credential_type"], "ephemeral");
    let username = turn["username"].as_str().unwrap();
    let (expiry, user) = username.split_once(':').unwrap();
    assert_eq!(user, "u123");
    assert!(expiry.parse::<u64>().unwrap() > 1_700_000_000);
    // What coturn computes for use-auth-secret: base64(HMAC-SHA1(secret, username)).
    let key = ring::hmac::Key::new(
        ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        b"a-turn-secret-of-at-least-32-chars!!",
    );
    let tag = ring::hmac::sign(&key, username.as_bytes());
    use base64::Engine;
    let expected = base64::engine::general_purpose::STANDARD.encode(tag.as_ref());
    assert_eq!(turn["credential"], expected.as_str());

    // Capabilities list the TURN server without credentials.
    let (_, caps) = srv.http().get("/client/capabilities", None);
    let listed = caps["rtc"]["ice_servers"].as_array().unwrap();
    assert_eq!(listed.len(), 2);
    assert!(
        listed
            .iter()
            .all(|s| s.get("credential").is_none() && s.get("username").is_none())
    );
}

#[test]
fn cors_is_answered_for_allowed_origins_only_and_never_on_admin() {
    let srv = TestServer::start();
    let http = srv.http();
    let pre = http.send(
        "OPTIONS",
        "/v1/rtc/channels/c/join-ticket",
        None,
        None,
        &[
            ("Origin", "http://localhost:3000"),
            ("Access-Control-Request-Method", "POST"),
        ],
    );
    assert_eq!(pre.status, 204);
    assert_eq!(
        pre.header("access-control-allow-origin"),
        Some("http://localhost:3000")
    );
    assert!(
        pre.header("access-control-allow-headers")
            .unwrap()
            .contains("authorization")
    );

    let bad = http.send(
        "GET",
        "/client/capabilities",
        None,
        None,
        &[("Origin", "https://evil.example")],
    );
    assert_eq!(bad.status, 403);
    assert!(bad.header("access-control-allow-origin").is_none());

    let admin = http.send(
        "OPTIONS",
        "/v1/admin/rooms",
        None,
        None,
        &[("Origin", "http://localhost:3000")],
    );
    assert!(admin.header("access-control-allow-origin").is_none());
    let admin = http.send(
        "GET",
        "/v1/admin/rooms",
        Some(&srv.admin_key),
        None,
        &[("Origin", "http://localhost:3000")],
    );
    assert!(admin.header("access-control-allow-origin").is_none());
}

#[test]
fn errors_have_the_contract_body_and_status() {
    let srv = TestServer::start();
    let http = srv.http();
    let r = http.send("GET", "/nope", None, None, &[]);
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "not_found");
    let r = http.send("DELETE", "/client/capabilities", None, None, &[]);
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET"));
    // Body over 64 KiB.
    let big = format!("{{\"device_id\":\"{}\"}}", "x".repeat(70 * 1024));
    let req = format!(
        "POST /v1/rtc/channels/c/join-ticket HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{big}",
        big.len()
    );
    let r = http.raw(req.as_bytes());
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"]["code"], "payload_too_large");
    // Garbage request line.
    let r = http.raw(b"\x00\x01 nonsense\r\n\r\n");
    assert_eq!(r.status, 400);
    // Form bodies are refused.
    let token = srv.token("a", json!({"c": []}));
    let r = http.send(
        "POST",
        "/v1/rtc/channels/c/join-ticket",
        Some(&token),
        None,
        &[("Content-Type", "application/x-www-form-urlencoded")],
    );
    assert_eq!(r.status, 415);
    // Plain HTTP GET on the signaling path.
    let r = http.send("GET", "/v1/rtc/signaling", None, None, &[]);
    assert_eq!(r.status, 426);
}

#[test]
fn admin_endpoints_need_the_admin_key() {
    let srv = TestServer::start();
    let http = srv.http();
    assert_eq!(http.get("/v1/admin/rooms", None).0, 401);
    assert_eq!(http.get("/v1/admin/rooms", Some("wrong")).0, 401);
    let (_a, _) = srv.join("a", "a", "room1");
    let (status, body) = http.get("/v1/admin/rooms", Some(&srv.admin_key));
    assert_eq!(status, 200);
    assert_eq!(body["rooms"][0]["channel_id"], "room1");
    assert_eq!(body["rooms"][0]["participant_count"], 1);
}

#[test]
fn metrics_and_health() {
    let srv = TestServer::start();
    let token = srv.token("a", json!({"c": []}));
    srv.ticket(&token, "c", "d");
    let r = srv.http().send("GET", "/metrics", None, None, &[]);
    assert_eq!(r.status, 200);
    let text = String::from_utf8(r.body).unwrap();
    for name in [
        "rtc_active_rooms",
        "rtc_active_participants",
        "rtc_join_ticket_issued_total 1",
        "rtc_negotiation_error_total",
        "rtc_forced_disconnect_total",
        "rtc_forwarded_packets_total",
        "rtc_forwarded_bytes_total",
        "rtc_nack_total",
        "rtc_pli_total",
        "rtc_worker_busy_seconds_total",
        "rtc_signaling_connections",
    ] {
        assert!(text.contains(name), "{name} missing");
    }
    assert_eq!(srv.http().get("/healthz", None).0, 200);
    assert_eq!(srv.http().get("/readyz", None).0, 200);
}

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let srv = TestServer::start();
    use std::io::Write;
    let mut s = common::connect(srv.addr, None);
    for _ in 0..3 {
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let r = common::read_response(&mut s).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("connection"), Some("keep-alive"));
    }
    // Pipelined.
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    let mut chunk = [0u8; 4096];
    while text.matches("HTTP/1.1 200 OK").count() < 2 {
        use std::io::Read;
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed after {text:?}");
        text.push_str(&String::from_utf8_lossy(&chunk[..n]));
    }
    assert!(
        text.contains("\"ready\""),
        "both pipelined answers arrive in order"
    );
}

#[test]
fn a_slow_loris_request_is_cut() {
    let srv = TestServer::with_env(&[("PRISM_LIMITS__HTTP_HEADER_TIMEOUT_MS", "1000")]);
    use std::io::{Read, Write};
    let mut s = common::connect(srv.addr, None);
    s.write_all(b"GET /healthz HTTP/1.1\r\nX-Slow: ").unwrap();
    let start = std::time::Instant::now();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let elapsed = start.elapsed();
    assert!(
        elapsed < std::time::Duration::from_secs(5),
        "cut after {elapsed:?}"
    );
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 408"));
}

#[test]
fn production_mode_has_no_dev_endpoints() {
    let srv = TestServer::with_env(&[
        ("PRISM_MODE", "production"),
        ("PRISM_MEDIA__BIND_IP", "127.0.0.1"),
        ("PRISM_PUBLIC_URL", "http://127.0.0.1:8080"),
        (
            "PRISM_SECRETS__TICKET_KEY",
            "ticket-key-of-at-least-32-characters!",
        ),
        (
            "PRISM_SECRETS__ADMIN_KEY",
            "admin-key-of-at-least-32-characters!!",
        ),
        (
            "PRISM_SESSION_TOKENS__HS256_SECRET",
            "session-secret-of-at-least-32-chars!",
        ),
    ]);
    let (status, _) = srv.http().post(
        "/v1/dev/session-token",
        None,
        &json!({"user_uid": "a", "channels": {}}),
    );
    assert_eq!(status, 404);
    // Origin allow-list: only the public origin.
    let r = srv.http().send(
        "GET",
        "/client/capabilities",
        None,
        None,
        &[("Origin", "http://localhost:3000")],
    );
    assert_eq!(r.status, 403);
    let r = srv.http().send(
        "GET",
        "/client/capabilities",
        None,
        None,
        &[("Origin", "http://127.0.0.1:8080")],
    );
    assert_eq!(r.status, 200);
}
