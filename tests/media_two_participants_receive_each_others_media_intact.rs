//! Two participants publish Opus + VP8 and each receives the other's media with no gap
//! in sequence numbers and payloads byte-for-byte equal to what was sent.
#![allow(clippy::disallowed_methods)] // tests own their clock

use std::time::Duration;

use prism::media::sim::{Received, SentStream, Sim};

/// The received payloads, in sequence order, are a contiguous run of the sent ones.
fn assert_intact(what: &str, sent: &SentStream, got: &Received) {
    assert!(
        got.missing().is_empty(),
        "{what}: missing {:?}",
        got.missing()
    );
    let received = got.ordered_payloads();
    assert!(
        received.len() > 20,
        "{what}: only {} packets",
        received.len()
    );
    let start = sent
        .payloads
        .iter()
        .position(|p| p.as_slice() == received[0])
        .unwrap_or_else(|| panic!("{what}: first received payload was never sent"));
    for (i, p) in received.iter().enumerate() {
        assert_eq!(
            sent.payloads.get(start + i).map(Vec::as_slice),
            Some(*p),
            "{what}: payload {i} differs"
        );
    }
}

#[test]
fn two_participants_publish_opus_and_vp8_and_receive_each_others_media_intact() {
    let mut sim = Sim::new(1);
    let a = sim.add_client("alice");
    let b = sim.add_client("bob");
    let pa = sim.publish(a, true, true);
    let pb = sim.publish(b, true, true);
    assert_eq!(pa.tracks.len(), 2);
    assert_eq!(pa.added.len(), 2);
    let ids_a: Vec<_> = pa.tracks.iter().map(|t| t.track_id.clone()).collect();
    let ids_b: Vec<_> = pb.tracks.iter().map(|t| t.track_id.clone()).collect();
    let sa = sim.subscribe(a, &ids_b);
    let sb = sim.subscribe(b, &ids_a);
    assert!(sa.rejected.is_empty() && sb.rejected.is_empty());

    sim.drive(Duration::from_secs(3));
    assert!(sim.all_connected(), "all peer connections connect");

    for (me, other, ids) in [(a, b, &ids_b), (b, a, &ids_a)] {
        for id in ids {
            let sent = sim.clients[other].sent_for(id).expect("sent");
            let got = sim.clients[me]
                .received_for(id)
                .unwrap_or_else(|| panic!("{} received nothing of {id}", sim.clients[me].name));
            assert_intact(&format!("{} <- {id}", sim.clients[me].name), sent, got);
        }
    }
    let stats = sim.core.stats();
    eprintln!("{stats:?}");
    assert!(stats.forwarded_packets > 200, "{stats:?}");
}
