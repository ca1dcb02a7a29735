//! SIGTERM: the server stops taking connections, closes signaling sessions with 1012,
//! flushes the store (moderation state and the audit trail of the sessions it
//! closed survive) and exits 0 well within 10 s. A real `prism` process.
#![allow(clippy::disallowed_methods)] // tests own their clock

mod common;

use std::time::{Duration, Instant};

use common::peer::PrismProcess;
use serde_json::json;

const ADMIN_KEY: &str = "test-admin-key-0123456789abcdefghijklmnopqrstuvwxyz";

#[test]
fn sigterm_closes_sessions_1012_flushes_the_store_and_exits_in_time() {
    let mut p = PrismProcess::start_with_env(&[("PRISM_SECRETS__ADMIN_KEY", ADMIN_KEY)]);
    let (mut alice, _) = p.join("alice", "d1", "lounge");
    let (mut bob, _) = p.join("bob", "d1", "lounge");
    let r = p.http().send(
        "PUT",
        "/v1/admin/channels/lounge/lock",
        Some(ADMIN_KEY),
        Some(&json!({"exempt_roles": ["moderator"]})),
        &[],
    );
    assert_eq!(r.status, 200);

    let asked = Instant::now();
    let status = p
        .sigterm_and_wait(Duration::from_secs(10))
        .expect("exited within 10 s of SIGTERM");
    let took = asked.elapsed();
    assert!(status.success(), "exit status {status}");
    for ws in [&mut alice, &mut bob] {
        assert_eq!(ws.expect_close().0, 1012);
    }
    eprintln!("stopped {took:?} after SIGTERM");
    assert!(
        std::net::TcpStream::connect(p.addr).is_err(),
        "nothing listens any more"
    );

    // Everything written before the stop is there after a restart.
    p.kill9_and_restart();
    let r = p
        .http()
        .send("GET", "/v1/admin/locks", Some(ADMIN_KEY), None, &[]);
    assert_eq!(r.json()["locks"].as_array().unwrap().len(), 1);
    let r = p.http().send(
        "GET",
        "/v1/admin/audit?channel_id=lounge",
        Some(ADMIN_KEY),
        None,
        &[],
    );
    let records = r.json()["records"].as_array().unwrap().clone();
    let leaves = records.iter().filter(|r| r["kind"] == "leave").count();
    assert_eq!(
        leaves, 2,
        "the sessions closed at shutdown were audited: {records:?}"
    );
}
