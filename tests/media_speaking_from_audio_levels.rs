//! `rtc.speaking` from the RFC 6464 audio levels on a publisher's Opus packets: loud
//! audio (-20 dBov) for 300 ms raises `speaking: true` for that participant, 1 s of
//! silence (-127 dBov) lowers it, and short clicks (60 ms loud, then quiet, five times)
//! raise nothing. A second publisher who stays silent never gets an event. Latencies
//! are printed (`--nocapture`).
#![allow(clippy::disallowed_methods)] // tests own their clock

use std::time::{Duration, Instant};

use prism::ids::SessionId;
use prism::media::MediaEvent;
use prism::media::sim::Sim;

const LOUD: u8 = 20;
const SILENT: u8 = 127;

/// `(time, speaking, level)` of the speaking events for `who` from `after` on.
fn speaking_events(sim: &Sim, who: &SessionId, after: Instant) -> Vec<(Instant, bool, u8)> {
    sim.events
        .iter()
        .filter(|(t, _)| *t >= after)
        .filter_map(|(t, e)| match e {
            MediaEvent::Speaking {
                who: w,
                speaking,
                level,
            } if w == who => Some((*t, *speaking, *level)),
            _ => None,
        })
        .collect()
}

/// Drives in 5 ms steps until `who` has a speaking event after `from` (at most
/// `limit`); the event and its delay after `from`.
fn next_speaking_event(
    sim: &mut Sim,
    who: &SessionId,
    from: Instant,
    limit: Duration,
) -> Option<(Duration, bool, u8)> {
    while sim.now < from + limit {
        sim.drive_for(Duration::from_millis(5));
        if let Some(&(at, speaking, level)) = speaking_events(sim, who, from).first() {
            return Some((at - from, speaking, level));
        }
    }
    None
}

#[test]
fn loud_for_300_ms_raises_speaking_silence_for_1_s_lowers_it_and_clicks_raise_nothing() {
    let mut sim = Sim::new(53);
    let a = sim.add_client("alice");
    let b = sim.add_client("bob");
    let c = sim.add_client("carol");
    let alice_audio = sim.publish(a, true, false).tracks[0].track_id.clone();
    let bob_audio = sim.publish(b, true, false).tracks[0].track_id.clone();
    sim.set_audio_level(a, SILENT);
    sim.set_audio_level(b, SILENT);
    sim.subscribe(c, &[alice_audio.clone(), bob_audio]);
    let (alice, bob) = (sim.clients[a].id.clone(), sim.clients[b].id.clone());
    sim.drive_for(Duration::from_secs(2));
    let start = sim.now;
    assert!(
        sim.clients[c]
            .received_for(&alice_audio)
            .is_some_and(|r| r.packets > 20),
        "alice's audio flows"
    );

    // Clicks: 60 ms loud, 500 ms quiet, five times.
    for _ in 0..5 {
        sim.set_audio_level(a, LOUD);
        sim.drive_for(Duration::from_millis(60));
        sim.set_audio_level(a, SILENT);
        sim.drive_for(Duration::from_millis(500));
    }
    let clicks = speaking_events(&sim, &alice, start);
    println!("five 60 ms clicks: {} speaking events", clicks.len());
    assert!(clicks.is_empty(), "clicks raised speaking: {clicks:?}");

    // Voice: loud from now on.
    let voice_at = sim.now;
    sim.set_audio_level(a, LOUD);
    let (on, speaking, level) =
        next_speaking_event(&mut sim, &alice, voice_at, Duration::from_secs(2))
            .expect("300 ms of -20 dBov raise speaking within 2 s");
    println!(
        "speaking: true {} ms after alice turned loud (level {level})",
        on.as_millis()
    );
    assert!(speaking, "the first event after voice is speaking: true");
    // 300 ms of voice, plus one-way delay (10 ms) and a packet interval (20 ms).
    assert!(
        on >= Duration::from_millis(300) && on <= Duration::from_millis(400),
        "speaking raised {} ms after voice started",
        on.as_millis()
    );
    assert!((15..=25).contains(&level), "level {level} for -20 dBov");

    // Keep talking for 2 s: no other event.
    sim.drive_for(Duration::from_secs(2));
    assert_eq!(speaking_events(&sim, &alice, voice_at).len(), 1);

    // Silence.
    let quiet_at = sim.now;
    sim.set_audio_level(a, SILENT);
    let (off, speaking, level) =
        next_speaking_event(&mut sim, &alice, quiet_at, Duration::from_secs(3))
            .expect("1 s of silence lowers speaking within 3 s");
    println!(
        "speaking: false {} ms after alice fell silent (level {level})",
        off.as_millis()
    );
    assert!(
        !speaking,
        "the first event after silence is speaking: false"
    );
    assert!(
        off >= Duration::from_millis(950) && off <= Duration::from_millis(1100),
        "speaking lowered {} ms after silence started",
        off.as_millis()
    );
    sim.drive_for(Duration::from_secs(2));

    // Exactly one rise and one fall for alice; nothing for silent bob.
    let all: Vec<bool> = speaking_events(&sim, &alice, start)
        .iter()
        .map(|e| e.1)
        .collect();
    assert_eq!(all, vec![true, false]);
    let bobs = speaking_events(&sim, &bob, sim.start);
    assert!(bobs.is_empty(), "silent bob got speaking events: {bobs:?}");
}
