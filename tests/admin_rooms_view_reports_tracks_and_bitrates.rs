//! `GET /v1/admin/rooms`: rooms → participants → tracks with per-track bitrate,
//! loss and layers, and per-participant RTT, in exactly the documented shape, with
//! bitrates measured from the media actually flowing.
#![allow(clippy::disallowed_methods)] // tests own their clock

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::TestServer;
use common::peer::RealPeer;
use serde_json::Value;

fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object()
        .unwrap_or_else(|| panic!("an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect()
}

#[test]
fn the_rooms_view_lists_participants_tracks_bitrates_and_layers() {
    let ts = TestServer::start();
    let (ws, joined) = ts.join("alice", "d1", "stage");
    let mut alice = RealPeer::new("alice", "stage", ws, joined);
    let (ws, joined) = ts.join("bob", "d1", "stage");
    let mut bob = RealPeer::new("bob", "stage", ws, joined);
    let published = alice.publish(true, true);
    let tracks = bob.wait_for_tracks_of(&alice.session_id.clone(), 2);
    bob.subscribe(&tracks);
    std::thread::scope(|s| {
        s.spawn(|| alice.send_media(Duration::from_millis(2500)));
        s.spawn(|| bob.drive_for(Duration::from_millis(2700)));
    });

    let r = ts
        .http()
        .send("GET", "/v1/admin/rooms", Some(&ts.admin_key), None, &[]);
    assert_eq!(r.status, 200);
    let view = r.json();
    assert_eq!(view["unavailable_workers"], serde_json::json!([]));
    let rooms = view["rooms"].as_array().unwrap();
    assert_eq!(rooms.len(), 1, "{view}");
    let room = &rooms[0];
    assert_eq!(
        keys(room),
        BTreeSet::from(["channel_id", "worker", "participant_count", "participants"])
    );
    assert_eq!(room["channel_id"], "stage");
    assert_eq!(room["worker"], 0);
    assert_eq!(room["participant_count"], 2);
    let parts = room["participants"].as_array().unwrap();
    let a = parts
        .iter()
        .find(|p| p["user_uid"] == "alice")
        .expect("alice listed");
    assert_eq!(
        keys(a),
        BTreeSet::from(["participant_id", "user_uid", "state", "rtt_ms", "tracks"])
    );
    assert_eq!(a["participant_id"], alice.session_id.as_str());
    assert_eq!(a["state"], "joined");
    assert!(a["rtt_ms"].is_null() || a["rtt_ms"].as_f64().unwrap() >= 0.0);
    let ts_ = a["tracks"].as_array().unwrap();
    assert_eq!(ts_.len(), 2, "{a}");
    for t in ts_ {
        assert_eq!(
            keys(t),
            BTreeSet::from([
                "track_id",
                "kind",
                "source",
                "codec",
                "bitrate_bps",
                "loss",
                "layers"
            ])
        );
        assert!(
            published.iter().any(|(_, id)| t["track_id"] == id.as_str()),
            "{t}"
        );
        let (codec, source) = match t["kind"].as_str().unwrap() {
            "audio" => ("opus", "microphone"),
            _ => ("vp8", "camera"),
        };
        assert_eq!(
            (t["codec"].as_str(), t["source"].as_str()),
            (Some(codec), Some(source))
        );
        let bps = t["bitrate_bps"].as_u64().unwrap();
        assert!(bps > 1000, "a measured bitrate: {t}");
        assert!(
            t["loss"].is_null() || (0.0..=1.0).contains(&t["loss"].as_f64().unwrap()),
            "{t}"
        );
        let layers = t["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 1, "no simulcast: one layer {t}");
        assert_eq!(
            keys(&layers[0]),
            BTreeSet::from(["rid", "active", "bitrate_bps"])
        );
        assert!(layers[0]["rid"].is_null());
        assert_eq!(layers[0]["active"], true);
        assert_eq!(layers[0]["bitrate_bps"].as_u64().unwrap(), bps);
    }
    let b = parts.iter().find(|p| p["user_uid"] == "bob").unwrap();
    assert_eq!(b["tracks"], serde_json::json!([]));
    assert_eq!(
        ts.http()
            .send("GET", "/v1/admin/rooms", None, None, &[])
            .status,
        401
    );
}
