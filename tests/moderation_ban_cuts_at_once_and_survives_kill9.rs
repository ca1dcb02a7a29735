//! A ban cuts the banned user's live session at once (rtc.kicked, close 4403, the
//! others see participant.left "banned"), refuses their next ticket, and survives
//! `kill -9` and a restart; and a burst of 1,000 acknowledged moderation writes cut
//! short by `kill -9` loses none of them. Real `prism` processes.
#![allow(clippy::disallowed_methods)] // tests own their clock

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::peer::PrismProcess;
use serde_json::{Value, json};

const ADMIN_KEY: &str = "test-admin-key-0123456789abcdefghijklmnopqrstuvwxyz";

fn start() -> PrismProcess {
    PrismProcess::start_with_env(&[("PRISM_SECRETS__ADMIN_KEY", ADMIN_KEY)])
}

fn admin(p: &PrismProcess, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let r = p.http().send(method, path, Some(ADMIN_KEY), body, &[]);
    (r.status, r.json())
}

fn ticket_status(p: &PrismProcess, user: &str, channel: &str) -> (u16, Value) {
    let (s, body) = p.http().post(
        "/v1/dev/session-token",
        None,
        &json!({"user_uid": user, "channels": {channel: ["speak"]}}),
    );
    assert_eq!(s, 200, "{body}");
    let token = body["token"].as_str().unwrap().to_string();
    p.http().post(
        &format!("/v1/rtc/channels/{channel}/join-ticket"),
        Some(&token),
        &json!({"device_id": "d1"}),
    )
}

#[test]
fn a_ban_cuts_the_live_session_at_once_and_survives_kill9() {
    let mut p = start();
    let (mut alice, _) = p.join("alice", "d1", "lobby");
    let (mut bob, _) = p.join("bob", "d1", "lobby");
    let _ = alice.recv_type("rtc.participant.joined");

    let (status, body) = admin(
        &p,
        "PUT",
        "/v1/admin/bans/alice",
        Some(&json!({"reason": "spam"})),
    );
    let answered = Instant::now();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["disconnected"], 1, "{body}");
    assert_eq!(body["channel_id"], Value::Null, "server-wide");

    // The cut was sent before the answer: it arrives within 100 ms of it.
    let (code, seen) = alice.expect_close();
    let cut = answered.elapsed();
    eprintln!("ban: session closed {cut:?} after the admin call returned");
    assert_eq!(code, 4403);
    let kicked = seen
        .iter()
        .find(|m| m["type"] == "rtc.kicked")
        .expect("rtc.kicked before the close");
    assert_eq!(kicked["payload"]["reason"], "banned");
    assert!(
        cut < Duration::from_millis(100),
        "the session was cut {cut:?} after the admin call returned"
    );
    let left = bob.recv_type("rtc.participant.left");
    assert_eq!(left["payload"]["user_uid"], "alice");
    assert_eq!(left["payload"]["reason"], "banned");

    // The next ticket is refused; bob's are not.
    let (s, body) = ticket_status(&p, "alice", "lobby");
    assert_eq!((s, body["error"]["code"].as_str()), (403, Some("banned")));
    assert_eq!(ticket_status(&p, "bob", "elsewhere").0, 201);

    p.kill9_and_restart();
    let (s, body) = ticket_status(&p, "alice", "other-channel");
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (403, Some("banned")),
        "{body}"
    );
    let (s, bans) = admin(&p, "GET", "/v1/admin/bans", None);
    assert_eq!(s, 200);
    let list = bans["bans"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{bans}");
    assert_eq!(list[0]["user_uid"], "alice");
    assert_eq!(list[0]["reason"], "spam");

    // Lifting it lets alice back in.
    let r = p
        .http()
        .send("DELETE", "/v1/admin/bans/alice", Some(ADMIN_KEY), None, &[]);
    assert_eq!(r.status, 204);
    assert_eq!(ticket_status(&p, "alice", "lobby").0, 201);
}

#[test]
fn a_channel_ban_cuts_only_that_channel_and_kick_counts_what_it_cut() {
    let p = start();
    let (mut a1, _) = p.join("carol", "d1", "one");
    let (mut a2, _) = p.join("carol", "d2", "two");
    let (status, body) = admin(
        &p,
        "PUT",
        "/v1/admin/bans/carol",
        Some(
            &json!({"channel_id": "one", "reason": "off-topic", "expires_at": "2999-01-01T00:00:00Z"}),
        ),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["disconnected"], 1);
    assert_eq!(a1.expect_close().0, 4403);
    assert_eq!(
        ticket_status(&p, "carol", "one").1["error"]["code"],
        "banned"
    );
    assert_eq!(ticket_status(&p, "carol", "two").0, 201);

    let (status, body) = admin(
        &p,
        "POST",
        "/v1/admin/channels/two/kick",
        Some(&json!({"user_uid": "carol", "reason": "cool off"})),
    );
    assert_eq!((status, body["disconnected"].as_u64()), (200, Some(1)));
    let (code, seen) = a2.expect_close();
    assert_eq!(code, 4410);
    assert!(
        seen.iter()
            .any(|m| m["type"] == "rtc.kicked" && m["payload"]["reason"] == "kicked")
    );
    // A kick is not a ban: the next ticket is fine.
    assert_eq!(ticket_status(&p, "carol", "two").0, 201);

    let text = p.http().send("GET", "/metrics", None, None, &[]);
    let text = String::from_utf8_lossy(&text.body).into_owned();
    assert!(
        text.contains("rtc_forced_disconnect_total{reason=\"banned\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("rtc_forced_disconnect_total{reason=\"kicked\"} 1"),
        "{text}"
    );

    // Bad input is refused and changes nothing.
    for (path, body) in [
        ("/v1/admin/bans/bad%20user", json!({})),
        (
            "/v1/admin/bans/x",
            json!({"expires_at": "2001-01-01T00:00:00Z"}),
        ),
        ("/v1/admin/bans/x", json!({"expires_at": "tomorrow"})),
        ("/v1/admin/bans/x", json!({"channel_id": ""})),
        ("/v1/admin/bans/x", json!({"reason": "x".repeat(300)})),
    ] {
        let (s, b) = admin(&p, "PUT", path, Some(&body));
        assert_eq!(
            (s, b["error"]["code"].as_str()),
            (400, Some("bad_request")),
            "{path} {body}"
        );
    }
    let r = p.http().send(
        "PUT",
        "/v1/admin/bans/x",
        Some(ADMIN_KEY),
        Some(&json!({})),
        &[("X-Prism-Actor", "not an id")],
    );
    assert_eq!(r.status, 400);
    assert_eq!(
        admin(&p, "GET", "/v1/admin/bans", None).1["bans"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        p.http()
            .send("PUT", "/v1/admin/bans/x", None, Some(&json!({})), &[])
            .status,
        401
    );
}

#[test]
fn kill9_during_a_burst_of_1000_moderation_writes_loses_none_acknowledged() {
    let mut p = start();
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let addr = p.addr;
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (acked, stop, next) = (acked.clone(), stop.clone(), next.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    let i = next.fetch_add(1, Ordering::AcqRel);
                    if i >= 1000 {
                        return;
                    }
                    let user = format!("u{i}");
                    let body = json!({"reason": format!("burst {i}")}).to_string();
                    let req = format!(
                        "PUT /v1/admin/bans/{user} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {ADMIN_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    // The server may die under us: any failure is "not acknowledged".
                    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
                        continue;
                    };
                    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                    if std::io::Write::write_all(&mut s, req.as_bytes()).is_err() {
                        continue;
                    }
                    match common::read_response(&mut s) {
                        Some(r) if r.status == 200 => acked.lock().unwrap().push(user),
                        Some(r) => panic!("unexpected status {} for {user}", r.status),
                        None => continue,
                    }
                }
            })
        })
        .collect();
    // Kill it mid-burst: after a few hundred acknowledgements.
    let began = Instant::now();
    let deadline = began + Duration::from_secs(60);
    while acked.lock().unwrap().len() < 300 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    eprintln!(
        "burst: {} bans acknowledged in {:?} before kill -9",
        acked.lock().unwrap().len(),
        began.elapsed()
    );
    // The burst goes on against the restarted server until all 1,000 were tried.
    p.kill9_and_restart();
    for t in threads {
        t.join().unwrap();
    }
    stop.store(true, Ordering::Release);
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 300, "only {} acknowledged", acked.len());
    let (s, bans) = admin(&p, "GET", "/v1/admin/bans", None);
    assert_eq!(s, 200);
    let stored: std::collections::HashSet<&str> = bans["bans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["user_uid"].as_str().unwrap())
        .collect();
    let lost: Vec<&String> = acked
        .iter()
        .filter(|u| !stored.contains(u.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged bans lost: {lost:?}",
        lost.len()
    );
    // Each acknowledged ban also left its audit record.
    let (_, audit) = admin(&p, "GET", "/v1/admin/audit?limit=1000", None);
    let recorded = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "ban")
        .count();
    assert!(
        recorded >= acked.len(),
        "{recorded} ban records for {} bans",
        acked.len()
    );
}
