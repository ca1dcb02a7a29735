//! Signaling protocol v1 (`/work/shared/spec/protocol-v1.md`, documented for client
//! authors in `docs/protocol.md`): typed messages and the pure parser.
//!
//! This module owns the wire format only: [`parse_client_message`] turns one text
//! frame into a validated [`ClientMessage`] or a [`ProtocolError`] carrying the wire
//! code, and [`encode_server_message`] turns a [`ServerMessage`] into one text frame.
//! It holds no state and does no I/O; the signaling session calls it per frame and
//! decides what the messages mean (joined or not, channel checks, idempotency). The
//! fuzz target `fuzz/fuzz_targets/signaling_parser.rs` wraps the parser, whose
//! invariant is that no input makes it panic or keep an unbounded value.
//!
//! Files: `client` (requests and the parser), `server` (responses, events, encoding),
//! `objects` (shared wire objects and vocabularies), `candidate` (ICE candidates),
//! `error` (wire error codes).

mod candidate;
mod client;
mod error;
mod objects;
mod server;

pub use candidate::{IceCandidate, MAX_CANDIDATE_LEN};
pub use client::{
    ClientMessage, ClientRequest, JoinCredential, MAX_CREDENTIAL_LEN, MAX_PUBLISH_TRACKS,
    MAX_SDP_LEN, MAX_SUBSCRIPTIONS, PublishTrackSpec, SubscriptionSpec, parse_client_message,
};
pub use error::{ErrorCode, ProtocolError};
pub use objects::{
    Codec, KickReason, Kind, Layer, LeaveReason, MediaState, MediaStatePatch, Mid, Participant,
    PeerKind, Source, Track, UnpublishReason,
};
pub use server::{Joined, PublishedTrackRef, Rejected, ServerMessage, encode_server_message};
