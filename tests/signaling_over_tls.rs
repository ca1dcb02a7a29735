//! HTTPS and WSS with a real rustls client against a self-signed certificate.

#![allow(clippy::disallowed_methods)] // tests drive real sockets on the real clock

mod common;

use common::TestServer;
use serde_json::json;

#[test]
fn https_api_and_wss_signaling_work_end_to_end() {
    let srv = TestServer::with_tls(&[]);
    let (status, body) = srv.http().get("/client/capabilities", None);
    assert_eq!(status, 200);
    assert_eq!(body["rtc"]["protocol_version"], "1.0");

    let (mut alice, joined) = srv.join("alice", "a", "secure");
    assert_eq!(joined["payload"]["user_uid"], "alice");
    let (_bob, _) = srv.join("bob", "b", "secure");
    let ev = alice.recv_type("rtc.participant.joined");
    assert_eq!(ev["payload"]["participant"]["user_uid"], "bob");
    let pong = alice.request("rtc.ping", "secure", json!({"over": "tls"}));
    assert_eq!(pong["payload"], json!({"over": "tls"}));
}

#[test]
fn plain_http_to_a_tls_listener_gets_no_answer() {
    let srv = TestServer::with_tls(&[]);
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(srv.addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));
}
