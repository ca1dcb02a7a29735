//! Signaling sessions: one WebSocket's protocol state, sans-IO.

pub mod session;
