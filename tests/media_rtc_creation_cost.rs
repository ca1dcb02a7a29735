//! Rtc creation cost: measured and printed, never asserted (tests do not assert on
//! wall-clock speed). Run with `--nocapture` (and `--release` for representative figures).
#![allow(clippy::disallowed_methods)] // tests own their clock

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use prism::media::{MediaConfig, MediaCore};

#[test]
fn rtc_creation_cost_with_the_cached_dtls_config_is_measured() {
    let host: SocketAddr = (Ipv4Addr::new(10, 0, 0, 1), 4000).into();
    let t = Instant::now();
    let core = MediaCore::new(MediaConfig::new(host));
    let core_cost = t.elapsed();

    let now = Instant::now();
    // Warm up (first config build happens here).
    let mut keep = vec![core.build_rtc(now)];
    let n = 200;
    let t = Instant::now();
    for _ in 0..n {
        keep.push(core.build_rtc(now));
    }
    let cached = t.elapsed() / n;

    let m = 10;
    let t = Instant::now();
    for _ in 0..m {
        keep.push(
            str0m::Rtc::builder()
                .set_ice_lite(true)
                .set_rtp_mode(true)
                .build(now),
        );
    }
    let default = t.elapsed() / m;
    eprintln!(
        "MediaCore::new {core_cost:?}; Rtc creation: cached DTLS {cached:?}, str0m default {default:?} (x{:.0})",
        default.as_secs_f64() / cached.as_secs_f64().max(1e-9)
    );
    assert_eq!(keep.len(), 1 + n as usize + m as usize);
    assert!(cached > Duration::ZERO);
}
