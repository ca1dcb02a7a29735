//! Against the `prism` binary, over real UDP sockets and the real WebSocket signaling:
//! while two participants exchange audio and video, bad input arrives from every side —
//! random and truncated STUN / DTLS / RTP / RTCP datagrams and forged STUN binding
//! requests at the server's UDP port, from a stranger's socket and from the participants'
//! own addresses; SDP garbage and subscriptions to tracks that never existed or whose
//! owner left, from a third participant. Each bad request gets its error or its
//! `unknown_track` rejection, the two keep receiving each other's media without a gap
//! during and after, and the server neither panics nor exits.
#![allow(clippy::disallowed_methods)] // tests drive real sockets on the real clock

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::peer::{Pc, PrismProcess, RealPeer, assert_intact};
use prism::media::sim::SimRng;
use serde_json::{Value, json};
use str0m::media::MediaKind;

const CHANNEL: &str = "e2e_bad_input";
/// How long alice and bob send media; the bad input comes in the middle of it.
const MEDIA_FOR: Duration = Duration::from_secs(6);
/// When the bad input starts, after media started.
const BAD_INPUT_FROM: Duration = Duration::from_secs(1);
/// Bad datagrams sent, and the pause between two.
const BAD_DATAGRAMS: u32 = 600;
const BAD_DATAGRAM_GAP: Duration = Duration::from_millis(5);
/// How long everyone keeps driving after the media stops, so the last packets arrive.
const TAIL: Duration = Duration::from_millis(1500);
/// Seed of the garbage generator: every run sends the same bad datagrams.
const SEED: u64 = 0x5eed_0bad;

#[test]
fn bad_datagrams_and_bad_signaling_do_not_disturb_flowing_media() {
    let mut server = PrismProcess::start();
    let mut alice = server.peer("alice", CHANNEL);
    let mut bob = server.peer("bob", CHANNEL);
    let of_alice = publish_and_announce(&mut alice, &mut bob);
    let of_bob = publish_and_announce(&mut bob, &mut alice);
    for (peer, tracks) in [(&mut alice, &of_bob), (&mut bob, &of_alice)] {
        let answer = peer.subscribe(tracks);
        assert_eq!(answer["rejected"], json!([]), "{answer}");
    }
    let mut carol = server.peer("carol", CHANNEL);

    // The server's one media port, as both answers advertise it.
    let server_udp = alice.publish_pc.server_candidates();
    assert_eq!(server_udp.len(), 1, "one worker, one host candidate");
    let server_udp = server_udp[0];
    for pc in [&alice.subscribe_pc, &bob.publish_pc, &bob.subscribe_pc] {
        assert_eq!(pc.server_candidates(), vec![server_udp]);
    }
    let targets = Targets {
        server: server_udp,
        // Second handles on the participants' own sockets: bad datagrams from addresses
        // the server has bound to live peer connections.
        own_sockets: vec![
            alice.publish_pc.socket_clone(),
            bob.subscribe_pc.socket_clone(),
        ],
        usernames: [(&alice, Pc::Publish), (&bob, Pc::Subscribe)]
            .into_iter()
            .map(|(p, which)| stun_username(p, which))
            .collect(),
    };

    let start = Instant::now();
    let media_end = start + MEDIA_FOR + TAIL;
    let mut sent_bad = 0;
    std::thread::scope(|s| {
        for peer in [&mut alice, &mut bob] {
            s.spawn(move || {
                peer.send_media(MEDIA_FOR);
                peer.drive_for(TAIL);
            });
        }
        let targets = &targets;
        let bad_datagrams = s.spawn(move || {
            std::thread::sleep(BAD_INPUT_FROM);
            send_bad_datagrams(targets)
        });
        let server = &server;
        let carol = &mut carol;
        s.spawn(move || {
            carol.drive(start + BAD_INPUT_FROM);
            bad_signaling(server, carol, media_end);
        });
        sent_bad = bad_datagrams.join().expect("the bad-datagram thread");
    });
    eprintln!("{sent_bad} bad datagrams sent to {server_udp}");

    for (receiver, sender, tracks) in [(&alice, &bob, &of_bob), (&bob, &alice, &of_alice)] {
        for id in tracks {
            let sent = sender
                .sent_for(id)
                .expect("the sender published this track");
            let what = format!("{} <- {} {:?} {id}", receiver.name, sender.name, sent.kind);
            let got = receiver
                .received_for(id)
                .unwrap_or_else(|| panic!("{what}: nothing received"));
            // Connected before any media was sent and before any bad input: at most a
            // second's worth may be missing at the start; none during or after.
            let lost_at_start = assert_intact(&what, sent, got, sent.max_packets_per_second());
            eprintln!(
                "{what}: {} packets intact, {lost_at_start} missing at the start",
                got.len()
            );
            if sent.kind == MediaKind::Video {
                assert!(got.keyframes >= 1, "{what}: no keyframe arrived");
            }
        }
        assert!(
            receiver.events_of("rtc.error").is_empty(),
            "{}: asynchronous errors: {:?}",
            receiver.name,
            receiver.events_of("rtc.error")
        );
    }

    // Carol's one good subscription was served next to the rejected ones.
    let alice_audio = audio_track(&alice, &of_alice);
    let sent = alice.sent_for(&alice_audio).expect("alice sent audio");
    let got = carol
        .received_for(&alice_audio)
        .expect("carol received alice's audio");
    assert_intact("carol <- alice Audio", sent, got, usize::MAX);

    // The bad datagrams did reach the server: it counted them as dropped.
    let dropped = dropped_packets(&server);
    eprintln!("server dropped packets: {dropped:?}");
    let refused: u64 = dropped
        .iter()
        .filter(|(reason, _)| reason == "unroutable" || reason == "invalid")
        .map(|(_, n)| n)
        .sum();
    assert!(
        refused >= u64::from(BAD_DATAGRAMS) / 3,
        "only {refused} of {sent_bad} bad datagrams counted as dropped: {dropped:?}"
    );

    assert!(server.is_running(), "the server exited");
    let (status, body) = server.http().get("/healthz", None);
    assert_eq!(status, 200, "{body}");
    assert!(
        !server.log().contains("panicked"),
        "the server logged a panic:\n{}",
        server.log()
    );
}

/// `rtc_dropped_packets_total` per reason, from `/metrics`.
fn dropped_packets(server: &PrismProcess) -> Vec<(String, u64)> {
    let r = server.http().send("GET", "/metrics", None, None, &[]);
    assert_eq!(r.status, 200);
    String::from_utf8_lossy(&r.body)
        .lines()
        .filter_map(|l| l.strip_prefix("rtc_dropped_packets_total{reason=\""))
        .filter_map(|l| {
            let (reason, rest) = l.split_once("\"}")?;
            Some((reason.to_string(), rest.trim().parse().ok()?))
        })
        .collect()
}

/// `publisher` publishes audio and video; `listener` hears of both tracks.
fn publish_and_announce(publisher: &mut RealPeer, listener: &mut RealPeer) -> Vec<String> {
    let published = publisher.publish(true, true);
    assert_eq!(published.len(), 2, "{published:?}");
    listener.wait_for_tracks_of(&publisher.session_id.clone(), 2)
}

fn audio_track(peer: &RealPeer, tracks: &[String]) -> String {
    tracks
        .iter()
        .find(|id| {
            peer.sent_for(id)
                .is_some_and(|s| s.kind == MediaKind::Audio)
        })
        .expect("an audio track")
        .clone()
}

// ----- bad datagrams ----------------------------------------------------------------------

/// Where bad datagrams go and what they may pretend to be.
struct Targets {
    server: SocketAddr,
    own_sockets: Vec<UdpSocket>,
    /// `server-ufrag:client-ufrag` of live peer connections (what a STUN binding
    /// request towards them carries in USERNAME).
    usernames: Vec<String>,
}

/// The STUN USERNAME the client of `which` uses towards the server.
fn stun_username(peer: &RealPeer, which: Pc) -> String {
    let pc = peer.pc(which);
    let server = pc.server_ufrag().expect("the answer has an ice-ufrag");
    let client = pc
        .last_offer
        .as_deref()
        .and_then(|sdp| {
            sdp.lines()
                .find_map(|l| l.trim().strip_prefix("a=ice-ufrag:"))
        })
        .expect("the offer has an ice-ufrag");
    format!("{server}:{client}")
}

/// Sends [`BAD_DATAGRAMS`] bad datagrams: two in three from a stranger's socket, the rest
/// from the participants' own addresses. Returns how many were sent.
fn send_bad_datagrams(t: &Targets) -> u32 {
    let stranger = UdpSocket::bind("127.0.0.1:0").expect("bind the stranger's socket");
    let mut rng = SimRng::new(SEED);
    let mut sent = 0;
    for round in 0..BAD_DATAGRAMS {
        let data = bad_datagram(round, &mut rng, t);
        let socket = if round % 3 == 0 {
            &t.own_sockets[(round as usize / 3) % t.own_sockets.len()]
        } else {
            &stranger
        };
        if socket.send_to(&data, t.server).is_ok() {
            sent += 1;
        }
        std::thread::sleep(BAD_DATAGRAM_GAP);
    }
    sent
}

fn bad_datagram(round: u32, rng: &mut SimRng, t: &Targets) -> Vec<u8> {
    let mut random = vec![0u8; (rng.next_u64() % 1300) as usize];
    rng.fill(&mut random);
    let cut = |mut v: Vec<u8>, rng: &mut SimRng| {
        let keep = (rng.next_u64() as usize) % v.len().max(1);
        v.truncate(keep);
        v
    };
    match round % 8 {
        // Random bytes of any length, empty included.
        0 => random,
        // A STUN binding request cut anywhere.
        1 => cut(stun_binding_request("nobody:nobody", rng, true), rng),
        // A complete binding request naming a live peer connection, with a valid
        // FINGERPRINT but a MESSAGE-INTEGRITY nobody could compute: it must not
        // move that peer connection to the sender's address.
        2 => {
            let user = &t.usernames[(round as usize / 8) % t.usernames.len()];
            stun_binding_request(user, rng, true)
        }
        // The same, truncated.
        3 => {
            let user = &t.usernames[(round as usize / 8) % t.usernames.len()];
            cut(stun_binding_request(user, rng, false), rng)
        }
        // A DTLS handshake record (epoch 0, ClientHello) with a random body, cut anywhere.
        4 => {
            let mut d = vec![22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0];
            d.extend_from_slice(&(random.len() as u16).to_be_bytes());
            d.push(1); // ClientHello
            d.extend_from_slice(&random);
            if round % 16 == 4 { d } else { cut(d, rng) }
        }
        // Any other DTLS content type (20..=63), random body.
        5 => {
            let mut d = random;
            d.insert(0, 20 + (rng.next_u64() % 44) as u8);
            d
        }
        // RTP: version 2, a random payload type, SSRC and body; often cut inside the
        // fixed header.
        6 => {
            let mut d = random;
            d.splice(0..0, [0x80, (rng.next_u64() % 128) as u8]);
            if round % 16 == 6 { cut(d, rng) } else { d }
        }
        // RTCP: sender / receiver report, SDES, BYE, feedback, with a random body.
        _ => {
            let mut d = random;
            d.splice(0..0, [0x81, 200 + (rng.next_u64() % 7) as u8, 0, 7]);
            d
        }
    }
}

/// A STUN binding request (RFC 5389 / 8445) with USERNAME, PRIORITY, ICE-CONTROLLING,
/// USE-CANDIDATE, a random MESSAGE-INTEGRITY and, when asked, a correct FINGERPRINT.
fn stun_binding_request(username: &str, rng: &mut SimRng, fingerprint: bool) -> Vec<u8> {
    fn attr(msg: &mut Vec<u8>, ty: u16, value: &[u8]) {
        msg.extend_from_slice(&ty.to_be_bytes());
        msg.extend_from_slice(&(value.len() as u16).to_be_bytes());
        msg.extend_from_slice(value);
        msg.resize(msg.len().next_multiple_of(4), 0);
    }
    let mut m = vec![0x00, 0x01, 0, 0, 0x21, 0x12, 0xa4, 0x42];
    let mut txid = [0u8; 12];
    rng.fill(&mut txid);
    m.extend_from_slice(&txid);
    attr(&mut m, 0x0006, username.as_bytes());
    attr(&mut m, 0x0024, &0x6e00_01ffu32.to_be_bytes());
    attr(&mut m, 0x802a, &rng.next_u64().to_be_bytes());
    attr(&mut m, 0x0025, &[]);
    let mut integrity = [0u8; 20];
    rng.fill(&mut integrity);
    attr(&mut m, 0x0008, &integrity);
    let set_len = |m: &mut Vec<u8>, extra: usize| {
        let len = (m.len() - 20 + extra) as u16;
        m[2..4].copy_from_slice(&len.to_be_bytes());
    };
    if fingerprint {
        set_len(&mut m, 8);
        let crc = crc32(&m) ^ 0x5354_554e;
        attr(&mut m, 0x8028, &crc.to_be_bytes());
    } else {
        set_len(&mut m, 0);
    }
    m
}

/// CRC-32 (IEEE 802.3), as STUN's FINGERPRINT uses it.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

// ----- bad signaling ----------------------------------------------------------------------

/// Carol sends SDP garbage, then subscribes to alice's audio together with a track that
/// never existed and one whose owner (dave) has left; she keeps receiving until
/// `media_end`.
fn bad_signaling(server: &PrismProcess, carol: &mut RealPeer, media_end: Instant) {
    let (real_offer, mid) = sample_publish_offer();
    let truncated = &real_offer[..real_offer.len() / 2];
    let without_ice = real_offer
        .lines()
        .filter(|l| !l.starts_with("a=ice-"))
        .collect::<Vec<_>>()
        .join("\r\n");
    let tracks = json!([{"mid": mid, "source": "microphone"}]);
    for (what, ty, payload, codes) in [
        (
            "garbage publish",
            "rtc.offer.publish",
            json!({"sdp": "garbage", "tracks": tracks}),
            &["negotiation_failed"][..],
        ),
        (
            "truncated publish",
            "rtc.offer.publish",
            json!({"sdp": truncated, "tracks": tracks}),
            &["negotiation_failed"],
        ),
        (
            "publish without ICE credentials",
            "rtc.offer.publish",
            json!({"sdp": without_ice, "tracks": tracks}),
            &["negotiation_failed"],
        ),
        (
            "garbage subscribe",
            "rtc.offer.subscribe",
            json!({"sdp": "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n", "subscriptions": []}),
            &["negotiation_failed"],
        ),
        (
            "binary subscribe",
            "rtc.offer.subscribe",
            json!({"sdp": "\u{0}\u{1}\u{fffd}\u{7f}", "subscriptions": []}),
            &["bad_request", "negotiation_failed"],
        ),
        (
            "empty subscribe",
            "rtc.offer.subscribe",
            json!({"sdp": "", "subscriptions": []}),
            // An empty `sdp` is a malformed payload before it is an SDP (protocol-v1 §7).
            &["bad_request", "negotiation_failed"],
        ),
    ] {
        let response = carol.request(ty, payload);
        assert_eq!(response["type"], "rtc.error", "{what}: {response}");
        let code = response["payload"]["code"].as_str().unwrap_or_default();
        assert!(codes.contains(&code), "{what}: {response}");
        let message = response["payload"]["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "{what}: an error says why: {response}");
        assert!(
            !message.contains("0x") && !message.contains('\n'),
            "{what}: the reason is one plain line without server internals: {response}"
        );
    }

    // Dave publishes and leaves: his track id now belongs to nobody.
    let mut dave = server.peer("dave", CHANNEL);
    let daves = dave.publish(true, false);
    assert_eq!(daves.len(), 1, "{daves:?}");
    let dead_track = daves[0].1.clone();
    dave.leave();
    carol.drive_until("dave's track to be unpublished", |c| {
        c.events_of("rtc.track.unpublished")
            .iter()
            .any(|e| e["payload"]["track_id"] == dead_track.as_str())
    });

    let alice_session = carol.joined["payload"]["participants"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["user_uid"] == "alice"))
        .map(|p| p["session_id"].as_str().unwrap_or_default().to_string())
        .expect("alice was in the channel when carol joined");
    let alice_audio = carol
        .tracks_of(&alice_session)
        .into_iter()
        .find(|id| carol.known_tracks[id]["kind"] == "audio")
        .expect("carol knows alice's audio track");
    let never_existed = "t_00000000000000000000".to_string();
    let answer = carol.subscribe(&[alice_audio, never_existed, dead_track]);
    let mids: Vec<String> = carol
        .subscriptions
        .iter()
        .map(|s| s.mid.to_string())
        .collect();
    let mut rejected: Vec<(String, String)> = answer["rejected"]
        .as_array()
        .unwrap_or_else(|| panic!("`rejected` is always present: {answer}"))
        .iter()
        .map(|r: &Value| {
            let field = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            (field("mid"), field("code"))
        })
        .collect();
    rejected.sort();
    let mut expected: Vec<(String, String)> = mids[1..]
        .iter()
        .map(|mid| (mid.clone(), "unknown_track".to_string()))
        .collect();
    expected.sort();
    assert_eq!(rejected, expected, "{answer}");

    let pong = carol.request("rtc.ping", json!({"still": "here"}));
    assert_eq!(pong["type"], "rtc.pong", "{pong}");
    assert_eq!(pong["payload"], json!({"still": "here"}), "{pong}");
    carol.drive(media_end);
}

/// A well-formed publish offer (Opus, sendonly) from a throwaway str0m peer, and the mid
/// of its m-line.
fn sample_publish_offer() -> (String, String) {
    let mut rtc = str0m::RtcConfig::new().build(Instant::now());
    let host: SocketAddr = ([127, 0, 0, 1], 9).into();
    rtc.add_local_candidate(str0m::Candidate::host(host, "udp").expect("a host candidate"));
    let mut api = rtc.sdp_api();
    let mid = api.add_media(
        MediaKind::Audio,
        str0m::media::Direction::SendOnly,
        None,
        None,
        None,
    );
    let (offer, _pending) = api.apply().expect("an m-line was added");
    (offer.to_sdp_string(), mid.to_string())
}

/// The forged binding requests are well-formed STUN, so they reach the server's
/// integrity check instead of being refused at parse (which would test much less).
#[test]
fn forged_binding_requests_are_well_formed_stun_naming_the_peer() {
    assert_eq!(crc32(b"123456789"), 0xcbf4_3926, "CRC-32 check value");
    let mut rng = SimRng::new(SEED);
    for fingerprint in [true, false] {
        let m = stun_binding_request("srvufrag:cliufrag", &mut rng, fingerprint);
        let parsed = str0m::ice::StunMessage::parse(&m)
            .unwrap_or_else(|e| panic!("not STUN (fingerprint {fingerprint}): {e:?}"));
        assert!(parsed.is_binding_request());
        assert_eq!(parsed.split_username(), Some(("srvufrag", "cliufrag")));
    }
}
