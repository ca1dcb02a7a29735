//! Prism: a WebRTC selective forwarding unit.
//!
//! Threads (see `README.md` and `docs/architecture.md`): a pool of signaling front
//! threads (HTTP + WebSocket over mio, optional TLS), media workers (one mio loop
//! each, owning rooms and str0m `Rtc`s), and a store thread (SQLite). They talk over
//! bounded crossbeam channels only.
//!
//! The public API is what `tools/`, `tests/` and `fuzz/` need.
#![forbid(unsafe_code)]

pub mod auth;
pub mod config;
pub mod ids;
pub mod media;
pub mod protocol;
pub mod secret;
