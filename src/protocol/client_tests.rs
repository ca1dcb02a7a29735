//! Unit tests of the client-message parser: the spec's examples, each malformed field,
//! bounds, the echo rules, candidate edge cases, and a seeded mutation run that feeds
//! ~10k hostile inputs and checks the parser's invariants hold.

use super::*;
use crate::protocol::{MAX_CANDIDATE_LEN, MediaState, MediaStatePatch};

fn ok(text: &str) -> ClientMessage {
    match parse_client_message(text) {
        Ok(m) => m,
        Err(e) => panic!("expected {text:.200} to parse, got {e}"),
    }
}

fn err(text: &str) -> ProtocolError {
    match parse_client_message(text) {
        Ok(m) => panic!("expected {text:.200} to fail, got {m:?}"),
        Err(e) => e,
    }
}

/// A full message of `ty` with `payload` (JSON text) and the standard envelope.
fn msg(ty: &str, payload: &str) -> String {
    format!(r#"{{"type":"{ty}","request_id":"req_1","channel_id":"ch_42","payload":{payload}}}"#)
}

fn rid(s: &str) -> RequestId {
    RequestId::parse(s).unwrap()
}

fn cid(s: &str) -> ChannelId {
    ChannelId::parse(s).unwrap()
}

fn mid_of(s: &str) -> Mid {
    Mid::parse(s).unwrap()
}

const CANDIDATE: &str = "candidate:842163049 1 udp 1677729535 203.0.113.7 54321 typ srflx \
                         raddr 192.168.1.10 rport 54321 generation 0 ufrag EsAw network-id 1 \
                         network-cost 10";

// ---- the spec's examples ----

#[test]
fn parses_join_with_ticket_or_resume_token() {
    let m = ok(&msg("rtc.join", r#"{"ticket":"eyJ.abc.def"}"#));
    assert_eq!(m.request_id, rid("req_1"));
    assert_eq!(m.channel_id, cid("ch_42"));
    match &m.request {
        ClientRequest::Join(JoinCredential::Ticket(t)) => assert_eq!(t.expose(), "eyJ.abc.def"),
        other => panic!("{other:?}"),
    }
    assert_eq!(m.request.type_name(), "rtc.join");

    let m = ok(&msg("rtc.join", r#"{"resume_token":"rt_0123abcd"}"#));
    match &m.request {
        ClientRequest::Join(JoinCredential::Resume(t)) => assert_eq!(t.expose(), "rt_0123abcd"),
        other => panic!("{other:?}"),
    }
    // null counts as absent.
    let m = ok(&msg(
        "rtc.join",
        r#"{"ticket":"eyJ.a.b","resume_token":null}"#,
    ));
    assert!(matches!(
        m.request,
        ClientRequest::Join(JoinCredential::Ticket(_))
    ));
}

#[test]
fn join_credentials_never_reach_debug_output() {
    let m = ok(&msg("rtc.join", r#"{"ticket":"eyJ.very.secret"}"#));
    assert!(!format!("{m:?}").contains("secret"));
}

#[test]
fn parses_offer_publish() {
    let m = ok(&msg(
        "rtc.offer.publish",
        r#"{"sdp":"v=0\r\n","tracks":[{"mid":"0","source":"microphone"},{"mid":"1","source":"camera"},{"mid":"2","source":"screen"},{"mid":"3","source":"screen_audio"}]}"#,
    ));
    assert_eq!(
        m.request,
        ClientRequest::OfferPublish {
            sdp: "v=0\r\n".into(),
            tracks: vec![
                PublishTrackSpec {
                    mid: mid_of("0"),
                    source: Source::Microphone
                },
                PublishTrackSpec {
                    mid: mid_of("1"),
                    source: Source::Camera
                },
                PublishTrackSpec {
                    mid: mid_of("2"),
                    source: Source::Screen
                },
                PublishTrackSpec {
                    mid: mid_of("3"),
                    source: Source::ScreenAudio
                },
            ],
        }
    );
    assert_eq!(m.request.type_name(), "rtc.offer.publish");
    // Unpublishing everything is an offer with no sending m-line.
    let m = ok(&msg("rtc.offer.publish", r#"{"sdp":"v=0","tracks":[]}"#));
    assert!(
        matches!(m.request, ClientRequest::OfferPublish { ref tracks, .. } if tracks.is_empty())
    );
}

#[test]
fn parses_offer_subscribe() {
    let m = ok(&msg(
        "rtc.offer.subscribe",
        r#"{"sdp":"v=0","subscriptions":[{"mid":"0","track_id":"t_ab","max_layer":"f"},{"mid":"1","track_id":"t_cd"},{"mid":"2","track_id":"t_ef","max_layer":null}]}"#,
    ));
    assert_eq!(
        m.request,
        ClientRequest::OfferSubscribe {
            sdp: "v=0".into(),
            subscriptions: vec![
                SubscriptionSpec {
                    mid: mid_of("0"),
                    track_id: TrackId::parse("t_ab").unwrap(),
                    max_layer: Some(Layer::F)
                },
                SubscriptionSpec {
                    mid: mid_of("1"),
                    track_id: TrackId::parse("t_cd").unwrap(),
                    max_layer: None
                },
                SubscriptionSpec {
                    mid: mid_of("2"),
                    track_id: TrackId::parse("t_ef").unwrap(),
                    max_layer: None
                },
            ],
        }
    );
    assert_eq!(m.request.type_name(), "rtc.offer.subscribe");
}

#[test]
fn parses_ice_candidate() {
    let m = ok(&msg(
        "rtc.ice.candidate",
        &format!(
            r#"{{"pc":"publish","candidate":"{CANDIDATE}","sdp_mid":"0","sdp_mline_index":0}}"#
        ),
    ));
    assert_eq!(
        m.request,
        ClientRequest::IceCandidate(IceCandidate {
            pc: PeerKind::Publish,
            candidate: Some(CANDIDATE.into()),
            sdp_mid: Some(mid_of("0")),
            sdp_mline_index: Some(0),
        })
    );
    assert_eq!(m.request.type_name(), "rtc.ice.candidate");
}

#[test]
fn parses_media_state_subsets() {
    let m = ok(&msg("rtc.media.state", r#"{"audio_muted":true}"#));
    assert_eq!(
        m.request,
        ClientRequest::MediaState(MediaStatePatch {
            audio_muted: Some(true),
            video_muted: None,
            deafened: None
        })
    );
    assert_eq!(m.request.type_name(), "rtc.media.state");
    let m = ok(&msg(
        "rtc.media.state",
        r#"{"audio_muted":false,"video_muted":true,"deafened":true}"#,
    ));
    let ClientRequest::MediaState(patch) = m.request else {
        panic!("not media state")
    };
    let mut state = MediaState::default();
    assert!(state.apply(&patch));
    assert_eq!(
        state,
        MediaState {
            audio_muted: false,
            video_muted: true,
            deafened: true
        }
    );
    let m = ok(&msg("rtc.media.state", "{}"));
    assert_eq!(
        m.request,
        ClientRequest::MediaState(MediaStatePatch::default())
    );
}

#[test]
fn parses_subscription_update() {
    let m = ok(&msg(
        "rtc.subscription.update",
        r#"{"track_id":"t_1","max_layer":"q","paused":false}"#,
    ));
    assert_eq!(
        m.request,
        ClientRequest::SubscriptionUpdate {
            track_id: TrackId::parse("t_1").unwrap(),
            max_layer: Some(Layer::Q),
            paused: Some(false)
        }
    );
    assert_eq!(m.request.type_name(), "rtc.subscription.update");
    let m = ok(&msg(
        "rtc.subscription.update",
        r#"{"track_id":"t_1","paused":true}"#,
    ));
    assert!(matches!(
        m.request,
        ClientRequest::SubscriptionUpdate {
            max_layer: None,
            paused: Some(true),
            ..
        }
    ));
}

#[test]
fn parses_leave_and_ping() {
    let m = ok(&msg("rtc.leave", "{}"));
    assert_eq!(m.request, ClientRequest::Leave);
    assert_eq!(m.request.type_name(), "rtc.leave");
    let m = ok(&msg(
        "rtc.ping",
        r#"{"t":1712,"nested":{"a":[1,2,{"b":null}]}}"#,
    ));
    let ClientRequest::Ping(p) = &m.request else {
        panic!("not ping")
    };
    assert_eq!(
        Value::Object(p.clone()),
        serde_json::json!({"t":1712,"nested":{"a":[1,2,{"b":null}]}})
    );
    assert_eq!(m.request.type_name(), "rtc.ping");
}

#[test]
fn ignores_unknown_fields() {
    let m = ok(
        r#"{"type":"rtc.leave","request_id":"r","channel_id":"c","payload":{"x":1},"extra":[1,{"y":2}],"v":2}"#,
    );
    assert_eq!(m.request, ClientRequest::Leave);
    let m = ok(&msg(
        "rtc.offer.publish",
        r#"{"sdp":"v=0","tracks":[{"mid":"0","source":"camera","rid":["q"],"kind":"video"}],"simulcast":true}"#,
    ));
    assert!(matches!(m.request, ClientRequest::OfferPublish { .. }));
}

// ---- malformed input ----

#[test]
fn malformed_fields_are_bad_requests_naming_the_field() {
    let cases: &[(String, &str)] = &[
        ("not json".into(), "message is not valid JSON"),
        ("".into(), "message is not valid JSON"),
        ("[1,2]".into(), "message must be a JSON object, not an array"),
        ("\"rtc.join\"".into(), "must be a JSON object, not a string"),
        (r#"{"type":"rtc.leave"} trailing"#.into(), "not valid JSON"),
        (
            r#"{"request_id":"r","channel_id":"c","payload":{}}"#.into(),
            "type: required",
        ),
        (
            r#"{"type":7,"request_id":"r","channel_id":"c","payload":{}}"#.into(),
            "type: must be a string, not a number",
        ),
        (
            r#"{"type":"rtc.leave","channel_id":"c","payload":{}}"#.into(),
            "request_id: required",
        ),
        (
            r#"{"type":"rtc.leave","request_id":"a b","channel_id":"c","payload":{}}"#.into(),
            "request_id: may only contain",
        ),
        (
            r#"{"type":"rtc.leave","request_id":"","channel_id":"c","payload":{}}"#.into(),
            "request_id: must not be empty",
        ),
        (
            r#"{"type":"rtc.leave","request_id":5,"channel_id":"c","payload":{}}"#.into(),
            "request_id: must be a string, not a number",
        ),
        (
            r#"{"type":"rtc.leave","request_id":"r","payload":{}}"#.into(),
            "channel_id: required",
        ),
        (
            r#"{"type":"rtc.leave","request_id":"r","channel_id":null,"payload":{}}"#.into(),
            "channel_id: must be a string, not null",
        ),
        (
            r#"{"type":"rtc.leave","request_id":"r","channel_id":"c"}"#.into(),
            "payload: required",
        ),
        (
            r#"{"type":"rtc.leave","request_id":"r","channel_id":"c","payload":[]}"#.into(),
            "payload: must be an object, not an array",
        ),
        (
            r#"{"type":"rtc.ping","request_id":"r","channel_id":"c","payload":null}"#.into(),
            "payload: must be an object, not null",
        ),
        (msg("rtc.join", "{}"), "payload.ticket: required"),
        (
            msg("rtc.join", r#"{"ticket":"a","resume_token":"b"}"#),
            "payload: give exactly one of ticket and resume_token",
        ),
        (msg("rtc.join", r#"{"ticket":""}"#), "payload.ticket: must not be empty"),
        (msg("rtc.join", r#"{"ticket":5}"#), "payload.ticket: must be a string"),
        (
            msg("rtc.join", r#"{"resume_token":"a b"}"#),
            "payload.resume_token: must be printable ASCII",
        ),
        (msg("rtc.offer.publish", r#"{"tracks":[]}"#), "payload.sdp: required"),
        (
            msg("rtc.offer.publish", r#"{"sdp":"","tracks":[]}"#),
            "payload.sdp: must not be empty",
        ),
        (
            msg("rtc.offer.publish", r#"{"sdp":{},"tracks":[]}"#),
            "payload.sdp: must be a string, not an object",
        ),
        (msg("rtc.offer.publish", r#"{"sdp":"v=0"}"#), "payload.tracks: required"),
        (
            msg("rtc.offer.publish", r#"{"sdp":"v=0","tracks":{}}"#),
            "payload.tracks: must be an array",
        ),
        (
            msg("rtc.offer.publish", r#"{"sdp":"v=0","tracks":[1]}"#),
            "payload.tracks[0]: must be an object, not a number",
        ),
        (
            msg(
                "rtc.offer.publish",
                r#"{"sdp":"v=0","tracks":[{"mid":"0","source":"camera"},{"mid":"1","source":"foo"}]}"#,
            ),
            "payload.tracks[1].source: unknown source \"foo\"",
        ),
        (
            msg("rtc.offer.publish", r#"{"sdp":"v=0","tracks":[{"mid":"0"}]}"#),
            "payload.tracks[0].source: required",
        ),
        (
            msg("rtc.offer.publish", r#"{"sdp":"v=0","tracks":[{"source":"camera"}]}"#),
            "payload.tracks[0].mid: required",
        ),
        (
            msg(
                "rtc.offer.publish",
                r#"{"sdp":"v=0","tracks":[{"mid":"a b","source":"camera"}]}"#,
            ),
            "payload.tracks[0].mid: may only contain",
        ),
        (
            msg(
                "rtc.offer.publish",
                r#"{"sdp":"v=0","tracks":[{"mid":"0","source":"camera"},{"mid":"0","source":"microphone"}]}"#,
            ),
            "payload.tracks[1].mid: duplicate mid \"0\"",
        ),
        (
            msg("rtc.offer.subscribe", r#"{"sdp":"v=0"}"#),
            "payload.subscriptions: required",
        ),
        (
            msg(
                "rtc.offer.subscribe",
                r#"{"sdp":"v=0","subscriptions":[{"mid":"0","track_id":"t 1"}]}"#,
            ),
            "payload.subscriptions[0].track_id: may only contain",
        ),
        (
            msg(
                "rtc.offer.subscribe",
                r#"{"sdp":"v=0","subscriptions":[{"mid":"0","track_id":"t_1","max_layer":"x"}]}"#,
            ),
            "payload.subscriptions[0].max_layer: unknown layer \"x\"",
        ),
        (
            msg(
                "rtc.offer.subscribe",
                r#"{"sdp":"v=0","subscriptions":[{"mid":"0","track_id":"t_1"},{"mid":"0","track_id":"t_2"}]}"#,
            ),
            "payload.subscriptions[1].mid: duplicate mid",
        ),
        (
            msg("rtc.ice.candidate", r#"{"candidate":null}"#),
            "payload.pc: required",
        ),
        (
            msg("rtc.ice.candidate", r#"{"pc":"both","candidate":null}"#),
            "payload.pc: unknown peer connection \"both\"",
        ),
        (
            msg("rtc.ice.candidate", r#"{"pc":"publish"}"#),
            "payload.candidate: required",
        ),
        (
            msg("rtc.ice.candidate", r#"{"pc":"publish","candidate":"garbage","sdp_mid":"0"}"#),
            "payload.candidate: not a candidate line",
        ),
        (
            msg("rtc.ice.candidate", r#"{"pc":"publish","candidate":false}"#),
            "payload.candidate: must be a string, not a boolean",
        ),
        (
            msg(
                "rtc.ice.candidate",
                r#"{"pc":"publish","candidate":null,"sdp_mline_index":-1}"#,
            ),
            "payload.sdp_mline_index: must be an integer 0-65535",
        ),
        (
            msg(
                "rtc.ice.candidate",
                r#"{"pc":"publish","candidate":null,"sdp_mline_index":65536}"#,
            ),
            "payload.sdp_mline_index: must be an integer 0-65535",
        ),
        (
            msg(
                "rtc.ice.candidate",
                r#"{"pc":"publish","candidate":null,"sdp_mline_index":0.5}"#,
            ),
            "payload.sdp_mline_index",
        ),
        (
            msg("rtc.ice.candidate", r#"{"pc":"publish","candidate":null,"sdp_mid":""}"#),
            "payload.sdp_mid: must not be empty",
        ),
        (
            msg("rtc.media.state", r#"{"audio_muted":"yes"}"#),
            "payload.audio_muted: must be a boolean, not a string",
        ),
        (
            msg("rtc.media.state", r#"{"deafened":1}"#),
            "payload.deafened: must be a boolean",
        ),
        (
            msg("rtc.subscription.update", r#"{"paused":true}"#),
            "payload.track_id: required",
        ),
        (
            msg("rtc.subscription.update", r#"{"track_id":"t_1"}"#),
            "payload: give max_layer or paused",
        ),
        (
            msg("rtc.subscription.update", r#"{"track_id":"t_1","max_layer":"F"}"#),
            "payload.max_layer: unknown layer \"F\"",
        ),
        (
            msg("rtc.subscription.update", r#"{"track_id":"t_1","paused":"no"}"#),
            "payload.paused: must be a boolean",
        ),
        (
            r#"{"type":"rtc.leave","type":"rtc.ping","request_id":"r","channel_id":"c","payload":{}}"#.into(),
            "duplicate key \"type\"",
        ),
        (
            msg("rtc.media.state", r#"{"deafened":true,"deafened":false}"#),
            "duplicate key \"deafened\"",
        ),
        (msg("rtc.ping", r#"{"n":1e400}"#), "not valid JSON"),
        (msg("rtc.ping", r#"{"s":"\ud800"}"#), "not valid JSON"),
    ];
    for (text, expect) in cases {
        let e = err(text);
        assert_eq!(e.code, ErrorCode::BadRequest, "{text}: {e}");
        assert!(
            e.message.contains(expect),
            "{text}\n  got: {}\n  want: {expect}",
            e.message
        );
    }
}

#[test]
fn unknown_type_needs_a_well_formed_envelope() {
    let e = err(&msg("rtc.dance", "{}"));
    assert_eq!(e.code, ErrorCode::UnknownType);
    assert_eq!(e.message, "type: unknown message type \"rtc.dance\"");
    assert_eq!(e.request_id, Some(rid("req_1")));
    assert_eq!(e.channel_id, Some(cid("ch_42")));
    // Server types are not client types.
    assert_eq!(err(&msg("rtc.joined", "{}")).code, ErrorCode::UnknownType);
    // A malformed envelope is bad_request even when the type is unknown too.
    let e = err(r#"{"type":"rtc.dance","request_id":"r","channel_id":"c"}"#);
    assert_eq!(e.code, ErrorCode::BadRequest);
    // A huge type is quoted truncated.
    let e = err(&msg(&"x".repeat(10_000), "{}"));
    assert_eq!(e.code, ErrorCode::UnknownType);
    assert!(e.message.len() < 200, "{}", e.message);
}

#[test]
fn echoes_request_and_channel_ids_only_when_well_formed() {
    // Payload error: both echoed.
    let e = err(&msg("rtc.offer.publish", "{}"));
    assert_eq!(
        (e.request_id, e.channel_id),
        (Some(rid("req_1")), Some(cid("ch_42")))
    );
    // Bad request_id: channel_id still echoed.
    let e = err(r#"{"type":"rtc.leave","request_id":"bad id","channel_id":"ch_1","payload":{}}"#);
    assert!(e.message.starts_with("request_id:"));
    assert_eq!((e.request_id, e.channel_id), (None, Some(cid("ch_1"))));
    // Bad channel_id: request_id still echoed.
    let e = err(r#"{"type":"rtc.leave","request_id":"r_1","channel_id":"","payload":{}}"#);
    assert!(e.message.starts_with("channel_id:"));
    assert_eq!((e.request_id, e.channel_id), (Some(rid("r_1")), None));
    // Bad type: both ids still echoed.
    let e = err(r#"{"type":null,"request_id":"r_1","channel_id":"c_1","payload":{}}"#);
    assert_eq!(
        (e.request_id, e.channel_id),
        (Some(rid("r_1")), Some(cid("c_1")))
    );
    // Not JSON: nothing to echo.
    let e = err(r#"{"type":"rtc.leave","request_id":"r_1","#);
    assert_eq!((e.request_id, e.channel_id), (None, None));
}

// ---- bounds ----

#[test]
fn bounds_sdp_size() {
    let at_limit = "a".repeat(MAX_SDP_LEN);
    ok(&msg(
        "rtc.offer.publish",
        &format!(r#"{{"sdp":"{at_limit}","tracks":[]}}"#),
    ));
    let over = "a".repeat(MAX_SDP_LEN + 1);
    let e = err(&msg(
        "rtc.offer.subscribe",
        &format!(r#"{{"sdp":"{over}","subscriptions":[]}}"#),
    ));
    assert_eq!(e.message, "payload.sdp: must be at most 262144 bytes");
}

#[test]
fn bounds_track_and_subscription_counts() {
    let tracks = |n: usize| {
        (0..n)
            .map(|i| format!(r#"{{"mid":"{i}","source":"camera"}}"#))
            .collect::<Vec<_>>()
            .join(",")
    };
    ok(&msg(
        "rtc.offer.publish",
        &format!(
            r#"{{"sdp":"v=0","tracks":[{}]}}"#,
            tracks(MAX_PUBLISH_TRACKS)
        ),
    ));
    let e = err(&msg(
        "rtc.offer.publish",
        &format!(
            r#"{{"sdp":"v=0","tracks":[{}]}}"#,
            tracks(MAX_PUBLISH_TRACKS + 1)
        ),
    ));
    assert_eq!(e.message, "payload.tracks: at most 16 entries, got 17");

    let subs = |n: usize| {
        (0..n)
            .map(|i| format!(r#"{{"mid":"{i}","track_id":"t_{i}"}}"#))
            .collect::<Vec<_>>()
            .join(",")
    };
    ok(&msg(
        "rtc.offer.subscribe",
        &format!(
            r#"{{"sdp":"v=0","subscriptions":[{}]}}"#,
            subs(MAX_SUBSCRIPTIONS)
        ),
    ));
    let e = err(&msg(
        "rtc.offer.subscribe",
        &format!(
            r#"{{"sdp":"v=0","subscriptions":[{}]}}"#,
            subs(MAX_SUBSCRIPTIONS + 1)
        ),
    ));
    assert_eq!(
        e.message,
        "payload.subscriptions: at most 256 entries, got 257"
    );
}

#[test]
fn bounds_mid_credential_and_candidate_lengths() {
    let publish = |mid: &str| {
        msg(
            "rtc.offer.publish",
            &format!(r#"{{"sdp":"v=0","tracks":[{{"mid":"{mid}","source":"camera"}}]}}"#),
        )
    };
    ok(&publish(&"m".repeat(32)));
    assert_eq!(
        err(&publish(&"m".repeat(33))).message,
        "payload.tracks[0].mid: must be at most 32 characters"
    );

    ok(&msg(
        "rtc.join",
        &format!(r#"{{"ticket":"{}"}}"#, "t".repeat(MAX_CREDENTIAL_LEN)),
    ));
    assert_eq!(
        err(&msg(
            "rtc.join",
            &format!(
                r#"{{"resume_token":"{}"}}"#,
                "t".repeat(MAX_CREDENTIAL_LEN + 1)
            ),
        ))
        .message,
        "payload.resume_token: must be at most 8192 bytes"
    );

    let base = "candidate:1 1 udp 1 10.0.0.1 5000 typ host x ";
    let fits = format!("{base}{}", "y".repeat(MAX_CANDIDATE_LEN - base.len()));
    let cand = |c: &str| {
        msg(
            "rtc.ice.candidate",
            &format!(r#"{{"pc":"subscribe","candidate":"{c}","sdp_mline_index":1}}"#),
        )
    };
    ok(&cand(&fits));
    assert_eq!(
        err(&cand(&format!("{fits}y"))).message,
        "payload.candidate: must be at most 1024 bytes"
    );

    let long_id = "r".repeat(65);
    let e = err(&format!(
        r#"{{"type":"rtc.leave","request_id":"{long_id}","channel_id":"c","payload":{{}}}}"#
    ));
    assert_eq!(e.message, "request_id: must be at most 64 characters");
    let long_ch = "c".repeat(129);
    let e = err(&format!(
        r#"{{"type":"rtc.leave","request_id":"r","channel_id":"{long_ch}","payload":{{}}}}"#
    ));
    assert_eq!(e.message, "channel_id: must be at most 128 characters");
    ok(&format!(
        r#"{{"type":"rtc.leave","request_id":"{}","channel_id":"{}","payload":{{}}}}"#,
        "r".repeat(64),
        "c".repeat(128)
    ));
}

#[test]
fn bounds_nesting_depth_without_overflowing_the_stack() {
    let nested = |depth: usize| {
        msg(
            "rtc.ping",
            &format!(r#"{{"a":{}1{}}}"#, "[".repeat(depth), "]".repeat(depth)),
        )
    };
    ok(&nested(100));
    let e = err(&nested(200));
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert!(e.message.contains("recursion limit"), "{}", e.message);
    // Far beyond the limit: refused early, not recursed into.
    assert!(err(&nested(1_000_000)).message.contains("recursion limit"));
    let objects = format!("{}{}", r#"{"a":"#.repeat(100_000), "}".repeat(100_000));
    assert_eq!(err(&objects).code, ErrorCode::BadRequest);
}

// ---- candidates ----

#[test]
fn candidate_edge_cases() {
    let cand = |payload: &str| match ok(&msg("rtc.ice.candidate", payload)).request {
        ClientRequest::IceCandidate(c) => c,
        other => panic!("{other:?}"),
    };
    // End-of-candidates, both spellings, mid and index optional.
    let c = cand(r#"{"pc":"publish","candidate":null}"#);
    assert_eq!(
        (c.candidate, c.sdp_mid, c.sdp_mline_index),
        (None, None, None)
    );
    let c = cand(r#"{"pc":"subscribe","candidate":"","sdp_mid":null,"sdp_mline_index":null}"#);
    assert_eq!(c.candidate, None);
    assert_eq!(c.pc, PeerKind::Subscribe);
    let c = cand(r#"{"pc":"publish","candidate":"","sdp_mid":"0"}"#);
    assert_eq!(c.sdp_mid, Some(mid_of("0")));
    // No `candidate:` prefix, index only.
    let c = cand(
        r#"{"pc":"publish","candidate":"1 1 udp 2122260223 10.0.0.2 5000 typ host","sdp_mline_index":3}"#,
    );
    assert_eq!(c.sdp_mline_index, Some(3));
    assert!(!c.is_mdns());
    // mDNS: well-formed, flagged.
    let c = cand(
        r#"{"pc":"publish","candidate":"candidate:1 1 udp 2113937151 3f7c1a2e-1b2c-4d5e-8f90-123456789abc.local 51000 typ host generation 0 network-cost 999","sdp_mid":"0"}"#,
    );
    assert!(c.is_mdns());
    // A real candidate must name its m-line.
    let e = err(&msg(
        "rtc.ice.candidate",
        &format!(r#"{{"pc":"publish","candidate":"{CANDIDATE}"}}"#),
    ));
    assert!(
        e.message.starts_with("payload.sdp_mid: required"),
        "{}",
        e.message
    );
}

// ---- no panic on hostile input ----

/// xorshift64*: tiny, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        // n is small; the modulo bias does not matter for fuzzing.
        (self.next() % n as u64) as usize
    }
}

fn seeds() -> Vec<String> {
    vec![
        msg("rtc.join", r#"{"ticket":"eyJ.abc.def"}"#),
        msg("rtc.join", r#"{"resume_token":"rt_1"}"#),
        msg(
            "rtc.offer.publish",
            r#"{"sdp":"v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n","tracks":[{"mid":"0","source":"microphone"},{"mid":"1","source":"camera"}]}"#,
        ),
        msg(
            "rtc.offer.subscribe",
            r#"{"sdp":"v=0","subscriptions":[{"mid":"0","track_id":"t_ab","max_layer":"h"}]}"#,
        ),
        msg(
            "rtc.ice.candidate",
            &format!(
                r#"{{"pc":"publish","candidate":"{CANDIDATE}","sdp_mid":"0","sdp_mline_index":0}}"#
            ),
        ),
        msg(
            "rtc.media.state",
            r#"{"audio_muted":true,"deafened":false}"#,
        ),
        msg(
            "rtc.subscription.update",
            r#"{"track_id":"t_1","max_layer":"q","paused":false}"#,
        ),
        msg("rtc.leave", "{}"),
        msg(
            "rtc.ping",
            r#"{"t":[1,2.5,-3e10,{"x":null,"y":"\u00e9\n"}]}"#,
        ),
    ]
}

const ALPHABET: &[u8] = b"{}[]\":,\\ 0123456789.eE+-truefalsnul\x00\x7f\xc3\xa9abcdrtc_";

fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.below(4) {
        let len = out.len();
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                out[i] = rng.next() as u8;
            }
            1 => {
                let i = rng.below(len + 1);
                out.insert(i, ALPHABET[rng.below(ALPHABET.len())]);
            }
            2 if len > 0 => {
                let i = rng.below(len);
                let n = rng.below(len - i + 1).min(16);
                out.drain(i..i + n);
            }
            3 => out.truncate(rng.below(len + 1)),
            4 if len > 0 => {
                // Duplicate a slice in place: repeats keys, values, brackets.
                let i = rng.below(len);
                let n = rng.below(len - i).min(64) + 1;
                let chunk: Vec<u8> = out[i..i + n].to_vec();
                let at = rng.below(len + 1);
                out.splice(at..at, chunk);
            }
            5 => {
                let i = rng.below(len + 1);
                let n = rng.below(300);
                let b = if rng.below(2) == 0 { b'[' } else { b'{' };
                out.splice(i..i, std::iter::repeat_n(b, n));
            }
            _ => {
                let n = rng.below(64);
                out = (0..n)
                    .map(|_| ALPHABET[rng.below(ALPHABET.len())])
                    .collect();
            }
        }
    }
    out
}

#[test]
fn ten_thousand_mutated_inputs_never_panic_and_keep_the_error_contract() {
    let seed = 0x7072_6973_6d5e_ed01_u64;
    println!("mutation seed: {seed:#x}");
    let mut rng = Rng(seed);
    let seeds = seeds();
    for s in &seeds {
        ok(s);
    }
    let (mut oks, mut errs) = (0, 0);
    for i in 0..10_000 {
        let base = seeds[rng.below(seeds.len())].as_bytes();
        let bytes = mutate(&mut rng, base);
        // The WebSocket layer only hands over valid UTF-8; lossy conversion keeps the
        // mutated structure while meeting that precondition.
        let text = String::from_utf8_lossy(&bytes);
        match parse_client_message(&text) {
            Ok(m) => {
                oks += 1;
                // Whatever parsed respects the bounds.
                match &m.request {
                    ClientRequest::OfferPublish { sdp, tracks } => {
                        assert!(!sdp.is_empty() && sdp.len() <= MAX_SDP_LEN);
                        assert!(tracks.len() <= MAX_PUBLISH_TRACKS);
                    }
                    ClientRequest::OfferSubscribe { sdp, subscriptions } => {
                        assert!(!sdp.is_empty() && sdp.len() <= MAX_SDP_LEN);
                        assert!(subscriptions.len() <= MAX_SUBSCRIPTIONS);
                    }
                    ClientRequest::IceCandidate(c) => {
                        assert!(c.candidate.as_ref().is_none_or(|c| !c.is_empty()));
                    }
                    ClientRequest::SubscriptionUpdate {
                        max_layer, paused, ..
                    } => assert!(max_layer.is_some() || paused.is_some()),
                    _ => {}
                }
            }
            Err(e) => {
                errs += 1;
                assert!(
                    matches!(e.code, ErrorCode::BadRequest | ErrorCode::UnknownType),
                    "case {i}: {e}"
                );
                if e.code == ErrorCode::UnknownType {
                    assert!(e.request_id.is_some() && e.channel_id.is_some(), "case {i}");
                }
                assert!(
                    !e.message.is_empty() && e.message.len() < 1024,
                    "case {i}: {e}"
                );
            }
        }
    }
    // The mutations must exercise both outcomes, or the test proves little.
    assert!(oks > 100 && errs > 5_000, "oks {oks}, errs {errs}");
}
