//! The wire error codes of protocol-v1 §7 and the parser's error value.
//!
//! [`ErrorCode`] maps 1:1 to the `rtc.error.code` strings; it is the one vocabulary
//! every subsystem (parser, session, engine, auth) uses to tell a client what went
//! wrong. [`ProtocolError`] is what [`super::parse_client_message`] returns: the code,
//! a message naming the offending field, and the request's `request_id` /
//! `channel_id` when those fields themselves were well-formed, so the session can
//! echo them in its `rtc.error` response (protocol-v1 §2).

use std::fmt;

use crate::ids::{ChannelId, RequestId};

use super::server::ServerMessage;

/// Every `rtc.error.code` of protocol-v1 §7.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Malformed JSON, envelope or payload; the message names the field.
    BadRequest,
    /// A well-formed envelope whose `type` is not a client message type.
    UnknownType,
    /// Only `rtc.join` and `rtc.ping` are accepted before a join succeeds.
    NotJoined,
    /// `rtc.join` on a socket that already carries a session.
    AlreadyJoined,
    /// The envelope's `channel_id` is not the joined channel (or not the ticket's).
    WrongChannel,
    /// The join ticket is not a valid ticket of this server.
    TicketInvalid,
    /// The join ticket's `exp` has passed.
    TicketExpired,
    /// The join ticket's `jti` was used before.
    TicketUsed,
    /// The resume token is unknown, reused, or its grace window has passed.
    ResumeFailed,
    /// A permission the request needs is missing.
    Forbidden,
    /// The user is banned from this channel or the server.
    Banned,
    /// The channel is locked for new joins.
    ChannelLocked,
    /// Publishing is denied by a moderation timeout.
    PublishBlocked,
    /// The channel has reached its participant limit.
    RoomFull,
    /// The participant has reached its published-track limit.
    TrackLimit,
    /// Too many messages; `retry_after_ms` says when to try again.
    RateLimited,
    /// The SDP could not be parsed or accepted; the message says why.
    NegotiationFailed,
    /// The named track does not exist (or no longer).
    UnknownTrack,
    /// The offer lacks the codec the publisher sends.
    CodecUnsupported,
    /// The server is shedding load; try again later.
    ServerBusy,
    /// A server fault; not the client's doing.
    Internal,
}

impl ErrorCode {
    /// The wire string, e.g. `"bad_request"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::AlreadyJoined => "already_joined",
            ErrorCode::WrongChannel => "wrong_channel",
            ErrorCode::TicketInvalid => "ticket_invalid",
            ErrorCode::TicketExpired => "ticket_expired",
            ErrorCode::TicketUsed => "ticket_used",
            ErrorCode::ResumeFailed => "resume_failed",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Banned => "banned",
            ErrorCode::ChannelLocked => "channel_locked",
            ErrorCode::PublishBlocked => "publish_blocked",
            ErrorCode::RoomFull => "room_full",
            ErrorCode::TrackLimit => "track_limit",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::NegotiationFailed => "negotiation_failed",
            ErrorCode::UnknownTrack => "unknown_track",
            ErrorCode::CodecUnsupported => "codec_unsupported",
            ErrorCode::ServerBusy => "server_busy",
            ErrorCode::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Why a client frame was refused by the parser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError {
    /// [`ErrorCode::BadRequest`] or [`ErrorCode::UnknownType`].
    pub code: ErrorCode,
    /// Human-readable reason naming the field, e.g.
    /// `payload.tracks[1].source: unknown source "foo"`. Client-supplied text in it
    /// is truncated and escaped, so it is safe to log and to send back.
    pub message: String,
    /// The request's `request_id`, when that field was well-formed.
    pub request_id: Option<RequestId>,
    /// The request's `channel_id`, when that field was well-formed.
    pub channel_id: Option<ChannelId>,
}

impl ProtocolError {
    /// The `rtc.error` message that answers this error.
    pub fn to_server_message(&self) -> ServerMessage {
        ServerMessage::Error {
            code: self.code,
            message: self.message.clone(),
            retry_after_ms: None,
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ProtocolError {}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [ErrorCode; 21] = [
        ErrorCode::BadRequest,
        ErrorCode::UnknownType,
        ErrorCode::NotJoined,
        ErrorCode::AlreadyJoined,
        ErrorCode::WrongChannel,
        ErrorCode::TicketInvalid,
        ErrorCode::TicketExpired,
        ErrorCode::TicketUsed,
        ErrorCode::ResumeFailed,
        ErrorCode::Forbidden,
        ErrorCode::Banned,
        ErrorCode::ChannelLocked,
        ErrorCode::PublishBlocked,
        ErrorCode::RoomFull,
        ErrorCode::TrackLimit,
        ErrorCode::RateLimited,
        ErrorCode::NegotiationFailed,
        ErrorCode::UnknownTrack,
        ErrorCode::CodecUnsupported,
        ErrorCode::ServerBusy,
        ErrorCode::Internal,
    ];

    #[test]
    fn every_code_has_the_spec_wire_string() {
        let spec = "bad_request unknown_type not_joined already_joined wrong_channel \
                    ticket_invalid ticket_expired ticket_used resume_failed forbidden \
                    banned channel_locked publish_blocked room_full track_limit \
                    rate_limited negotiation_failed unknown_track codec_unsupported \
                    server_busy internal";
        let wire: Vec<&str> = ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(wire, spec.split_whitespace().collect::<Vec<_>>());
    }

    #[test]
    fn serializes_and_displays_as_the_wire_string() {
        for code in ALL {
            assert_eq!(
                serde_json::to_string(&code).unwrap(),
                format!("\"{}\"", code.as_str())
            );
            assert_eq!(code.to_string(), code.as_str());
        }
    }

    #[test]
    fn converts_to_an_rtc_error_without_retry_hint() {
        let e = ProtocolError {
            code: ErrorCode::BadRequest,
            message: "payload.sdp: required".into(),
            request_id: None,
            channel_id: None,
        };
        assert_eq!(
            e.to_server_message(),
            ServerMessage::Error {
                code: ErrorCode::BadRequest,
                message: "payload.sdp: required".into(),
                retry_after_ms: None
            }
        );
        assert_eq!(e.to_string(), "bad_request: payload.sdp: required");
    }
}
