//! Garbage datagrams (random, truncated STUN/DTLS/RTP) from unknown and known addresses
//! do not panic the core and the others keep receiving.
#![allow(clippy::disallowed_methods)] // tests own their clock

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use prism::media::sim::Sim;

#[test]
fn garbage_datagrams_do_not_panic_and_the_others_keep_receiving() {
    let mut sim = Sim::new(8);
    let a = sim.add_client("alice");
    let b = sim.add_client("bob");
    let pa = sim.publish(a, true, true);
    let ids: Vec<_> = pa.tracks.iter().map(|t| t.track_id.clone()).collect();
    sim.subscribe(b, &ids);
    sim.drive(Duration::from_secs(1));
    assert!(sim.all_connected());
    let before: Vec<usize> = ids
        .iter()
        .map(|t| sim.clients[b].received_for(t).map_or(0, |r| r.seqs.len()))
        .collect();

    let server = sim.server_addr;
    let stranger: SocketAddr = (Ipv4Addr::new(192, 0, 2, 7), 9999).into();
    let known = [
        sim.clients[a].publish.as_ref().expect("pc").addr,
        sim.clients[b].subscribe.as_ref().expect("pc").addr,
    ];
    let stun_header = {
        // Binding request, length 12, magic cookie, transaction id, then a USERNAME
        // attribute cut short.
        let mut h = vec![0x00, 0x01, 0x00, 0x0c, 0x21, 0x12, 0xa4, 0x42];
        h.extend_from_slice(&[7; 12]);
        h.extend_from_slice(&[0x00, 0x06, 0x00, 0x20, b'a', b'b']);
        h
    };
    for round in 0..400u32 {
        let from = if round % 3 == 0 {
            stranger
        } else {
            known[(round % 2) as usize]
        };
        let len = (sim.rng().next_u64() % 1300) as usize;
        let mut data = vec![0u8; len];
        sim.rng().fill(&mut data);
        match round % 5 {
            0 => {}
            1 => {
                data = stun_header[..(round as usize % stun_header.len()) + 1].to_vec();
            }
            2 => {
                // DTLS record header range (20..=63), truncated.
                if let Some(b0) = data.first_mut() {
                    *b0 = 20 + (round % 44) as u8;
                }
                data.truncate(round as usize % 40);
            }
            3 => {
                // RTP/RTCP range (128..=191), truncated or random body.
                if let Some(b0) = data.first_mut() {
                    *b0 = 0x80 | (round % 64) as u8;
                }
                if round % 2 == 0 {
                    data.truncate(round as usize % 20);
                }
            }
            _ => data.clear(),
        }
        sim.inject(from, server, data);
        if round % 40 == 0 {
            sim.drive_for(Duration::from_millis(20));
        }
    }
    sim.drive_for(Duration::from_secs(2));

    let stats = sim.core.stats();
    eprintln!("{stats:?}");
    assert!(
        stats.dropped_unroutable + stats.dropped_invalid > 100,
        "{stats:?}"
    );
    for (t, n) in ids.iter().zip(before) {
        let got = sim.clients[b].received_for(t).expect("still receiving");
        assert!(got.seqs.len() > n + 60, "{t} kept flowing");
        assert!(got.missing().is_empty());
    }
    assert!(
        !sim.events
            .iter()
            .any(|(_, e)| matches!(e, prism::media::MediaEvent::PeerDisconnected { .. })),
        "no peer was disconnected by garbage"
    );
}

#[test]
fn sdp_garbage_is_a_negotiation_error_with_a_reason() {
    let mut sim = Sim::new(9);
    let who = prism::ids::SessionId::parse("s_x").expect("valid");
    let now = sim.now;
    for sdp in ["", "garbage", "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"] {
        let err = sim
            .core
            .publish_offer(now, &who, sdp, &[])
            .expect_err("garbage is refused");
        assert!(!err.to_string().is_empty());
        let err = sim
            .core
            .subscribe_offer(now, &who, sdp, &[])
            .expect_err("garbage is refused");
        assert!(!err.to_string().is_empty());
    }
    assert_eq!(sim.core.peer_connection_count(), 0);
}
