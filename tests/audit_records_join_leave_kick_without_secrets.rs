//! The audit trail of a join / publish / leave / kick sequence: a record for each,
//! with time, reason, actor and the leaver's QoS aggregates, newest first, filtered
//! and paged by `GET /v1/admin/audit`; and the database files on disk hold no token,
//! ticket, resume token or SDP.
#![allow(clippy::disallowed_methods)] // tests own their clock

mod common;

use std::time::Duration;

use common::TestServer;
use common::peer::RealPeer;
use serde_json::{Value, json};

fn admin_get(ts: &TestServer, path: &str) -> Value {
    let r = ts.http().send("GET", path, Some(&ts.admin_key), None, &[]);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

#[test]
fn join_leave_and_kick_are_audited_and_no_secret_reaches_the_database() {
    let ts = TestServer::start();
    let token = ts.token("alice", json!({"audited": ["speak"]}));
    let ticket = ts.ticket(&token, "audited", "laptop");
    let mut ws = ts.ws();
    let joined = ws.request("rtc.join", "audited", json!({"ticket": ticket}));
    assert_eq!(joined["type"], "rtc.joined");
    let resume_token = joined["payload"]["resume_token"]
        .as_str()
        .unwrap()
        .to_string();
    let mut alice = RealPeer::new("alice", "audited", ws, joined);
    alice.publish(true, false);
    alice.send_media(Duration::from_millis(1500));
    let offer_marker = alice
        .pc(common::peer::Pc::Publish)
        .server_ufrag()
        .expect("the answer carried the server's ufrag");
    alice.leave();

    let (mut bob, _) = ts.join("bob", "phone", "audited");
    let r = ts.http().send(
        "POST",
        "/v1/admin/channels/audited/kick",
        Some(&ts.admin_key),
        Some(&json!({"user_uid": "bob", "reason": "testing kicks"})),
        &[("X-Prism-Actor", "mod.jane")],
    );
    assert_eq!(r.status, 200);
    assert_eq!(bob.expect_close().0, 4410);
    // Another channel's join, to check the filter.
    let _other = ts.join("carol", "d1", "elsewhere");

    // Leave records are written when the worker removes the participant.
    let mut records = Vec::new();
    for _ in 0..100 {
        records = admin_get(&ts, "/v1/admin/audit?channel_id=audited")["records"]
            .as_array()
            .unwrap()
            .clone();
        if records.iter().filter(|r| r["kind"] == "leave").count() == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let kinds: Vec<(&str, &str, &str)> = records
        .iter()
        .rev()
        .map(|r| {
            (
                r["kind"].as_str().unwrap(),
                r["user_uid"].as_str().unwrap_or(""),
                r["reason"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("join", "alice", ""),
            ("leave", "alice", "left"),
            ("join", "bob", ""),
            ("kick", "bob", "testing kicks"),
            ("leave", "bob", "kicked"),
        ],
        "{records:#?}"
    );
    let kick = records.iter().find(|r| r["kind"] == "kick").unwrap();
    assert_eq!(kick["actor"], "mod.jane");
    let alice_leave = records
        .iter()
        .find(|r| r["kind"] == "leave" && r["user_uid"] == "alice")
        .unwrap();
    assert_eq!(alice_leave["device_id"], "laptop");
    assert!(alice_leave["at"].as_str().unwrap().ends_with('Z'));
    let qos = &alice_leave["qos"];
    assert!(qos["packets_in"].as_u64().unwrap() > 20, "{qos}");
    assert!(qos["bytes_in"].as_u64().unwrap() > 0, "{qos}");
    assert!(qos["duration_ms"].as_u64().unwrap() >= 1000, "{qos}");
    let ids: Vec<i64> = records.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");

    // Paging and filters.
    let page = admin_get(&ts, "/v1/admin/audit?channel_id=audited&limit=2");
    assert_eq!(page["records"].as_array().unwrap().len(), 2);
    let next = page["next_before"].as_i64().unwrap();
    let page2 = admin_get(
        &ts,
        &format!("/v1/admin/audit?channel_id=audited&limit=2&before={next}"),
    );
    assert_eq!(page2["records"][0]["id"].as_i64().unwrap(), ids[2]);
    let all = admin_get(&ts, "/v1/admin/audit");
    assert!(all["records"].as_array().unwrap().len() > records.len());
    let future = admin_get(&ts, "/v1/admin/audit?since=2999-01-01T00:00:00Z");
    assert_eq!(future["records"], json!([]));
    for bad in [
        "limit=0",
        "limit=5000",
        "since=yesterday",
        "before=-1",
        "channel_id=a%20b",
    ] {
        let r = ts.http().send(
            "GET",
            &format!("/v1/admin/audit?{bad}"),
            Some(&ts.admin_key),
            None,
            &[],
        );
        assert_eq!(r.status, 400, "{bad}");
    }

    // Nothing secret on disk: grep the database and its WAL.
    let data = ts.dir.0.join("data");
    let mut bytes = Vec::new();
    for name in ["prism.db", "prism.db-wal"] {
        if let Ok(b) = std::fs::read(data.join(name)) {
            bytes.extend_from_slice(&b);
        }
    }
    assert!(bytes.len() > 4096, "the database was read");
    let resume_secret = resume_token.split_once('.').unwrap().1.to_string();
    for (what, needle) in [
        ("session token", token.as_str()),
        ("join ticket", ticket.as_str()),
        ("resume secret", resume_secret.as_str()),
        ("ICE ufrag from the SDP", offer_marker.as_str()),
        ("SDP", "v=0"),
        ("SDP ICE password", "a=ice-pwd"),
        ("SDP fingerprint", "a=fingerprint"),
        ("admin key", ts.admin_key.as_str()),
    ] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "the database holds a {what}"
        );
    }
}
