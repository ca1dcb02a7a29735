//! Prism: a WebRTC selective forwarding unit.
//!
//! Threads (see `docs/architecture.md`): a pool of signaling front
//! threads (HTTP + WebSocket over mio, optional TLS), media workers (one mio loop
//! each, owning rooms and str0m `Rtc`s), and a store thread (SQLite). They talk over
//! bounded crossbeam channels only.
//!
//! The public API is what `tools/`, `tests/` and `fuzz/` need.
// `unsafe` is denied everywhere except `udp`, the one module of FFI (recvmmsg/sendmmsg),
// which states its safety argument.
#![deny(unsafe_code)]
#![cfg_attr(test, allow(clippy::disallowed_methods))]

pub mod admin_api;
pub mod admin_rooms;
pub mod api;
pub mod app;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
pub mod directory;
pub mod engine;
pub mod front;
pub mod housekeeping;
pub mod http;
pub mod ids;
pub mod media;
pub mod metrics;
pub mod moderation;
pub mod overload;
pub mod protocol;
pub mod ratelimit;
pub mod secret;
pub mod server;
pub mod signaling;
pub mod store;
pub mod udp;
pub mod web;
pub mod worker;
