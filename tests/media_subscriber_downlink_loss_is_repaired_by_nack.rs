//! 5% random loss on the subscriber's downlink is repaired by NACK/RTX: the receiver
//! ends with no missing video sequence numbers.
#![allow(clippy::disallowed_methods)] // tests own their clock

use std::time::Duration;

use prism::media::MediaKind;
use prism::media::sim::{LinkConfig, Sim};

#[test]
fn five_percent_loss_on_the_subscriber_downlink_is_repaired_by_nack_and_rtx() {
    let mut sim = Sim::new(3);
    let a = sim.add_client("alice");
    let b = sim.add_client("bob");
    let pa = sim.publish(a, true, true);
    let video = pa
        .tracks
        .iter()
        .find(|t| t.kind == MediaKind::Video)
        .expect("video")
        .track_id
        .clone();
    sim.subscribe(b, std::slice::from_ref(&video));
    sim.drive(Duration::from_secs(1));
    assert!(sim.all_connected());

    let downlink = sim.clients[b].subscribe.as_ref().expect("subscribed").addr;
    sim.links_to.insert(
        downlink,
        LinkConfig {
            loss: 0.05,
            ..sim.link
        },
    );
    let lost_before = sim.lost;
    sim.drive(Duration::from_secs(11));
    let lost = sim.lost - lost_before;
    // Let the last NACKs be answered.
    sim.links_to.remove(&downlink);
    sim.drive(Duration::from_secs(12));

    let got = sim.clients[b]
        .received_for(&video)
        .expect("bob receives video");
    let distinct = got.payloads.len();
    eprintln!(
        "lost {lost} datagrams, {distinct} distinct packets, {} arrivals",
        got.seqs.len()
    );
    assert!(lost > 20, "the network really dropped packets ({lost})");
    assert!(distinct > 600);
    assert!(got.missing().is_empty(), "unrepaired: {:?}", got.missing());
    // The repairs were asked for: NACKs from the subscriber are counted (the figure
    // behind `rtc_nack_total`).
    let nacks = sim.core.stats().nacks_in;
    assert!(nacks > 0, "no NACK counted");
    eprintln!("{nacks} NACKs counted");
}
