//! Client → server messages (protocol-v1 §2 envelope, §4 requests) and the pure parser
//! [`parse_client_message`], the fuzz target's entry point.
//!
//! The parser runs in three steps: text → JSON tree (duplicate keys refused, depth
//! bounded by serde_json's recursion limit of 128), tree → raw envelope (each field
//! validated on its own, so a well-formed `request_id` / `channel_id` is echoed even
//! when something else is wrong), payload → typed [`ClientRequest`].
//!
//! Invariants: it never panics on any input; every string and array it keeps is
//! bounded (the `MAX_*` constants here and in [`super::candidate`]); the only error
//! codes it returns are `bad_request` (the message names the field) and
//! `unknown_type` (well-formed envelope, type not a client type). Optional fields
//! that are `null` count as absent. Unknown fields are ignored. The session calls it
//! once per text frame; the frame size itself is bounded by the WebSocket layer.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::ids::{ChannelId, IdError, RequestId, TrackId};
use crate::secret::Secret;

use super::candidate::{IceCandidate, check_candidate_line};
use super::error::{ErrorCode, ProtocolError};
use super::objects::{Layer, MediaStatePatch, Mid, PeerKind, Source};

/// Longest accepted `sdp`, in bytes.
pub const MAX_SDP_LEN: usize = 256 * 1024;
/// Most entries in `rtc.offer.publish` `tracks`.
pub const MAX_PUBLISH_TRACKS: usize = 16;
/// Most entries in `rtc.offer.subscribe` `subscriptions`.
pub const MAX_SUBSCRIPTIONS: usize = 256;
/// Longest accepted join ticket or resume token, in bytes.
pub const MAX_CREDENTIAL_LEN: usize = 8 * 1024;

/// Client-supplied text quoted in an error message is cut to this many characters.
const QUOTE_MAX_CHARS: usize = 64;

/// A parsed, validated client request with its envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientMessage {
    /// Echoed in the response; keys the idempotency cache.
    pub request_id: RequestId,
    /// The channel the client means; checked against the joined one by the session.
    pub channel_id: ChannelId,
    /// What the client asks for.
    pub request: ClientRequest,
}

/// How a client proves it may join (`rtc.join`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinCredential {
    /// A join ticket (JWT) from the HTTP API.
    Ticket(Secret<String>),
    /// A resume token from an earlier `rtc.joined`.
    Resume(Secret<String>),
}

/// One sending m-line of a publish offer and what it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublishTrackSpec {
    /// The m-line's mid.
    pub mid: Mid,
    /// What it carries.
    pub source: Source,
}

/// One receiving m-line of a subscribe offer and the track it wants.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SubscriptionSpec {
    /// The m-line's mid.
    pub mid: Mid,
    /// The wanted track.
    pub track_id: TrackId,
    /// Highest simulcast layer wanted; `None` keeps the current cap (highest for a
    /// new subscription).
    pub max_layer: Option<Layer>,
}

/// The request a client message carries, one variant per client type of §4.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientRequest {
    /// `rtc.join`.
    Join(JoinCredential),
    /// `rtc.offer.publish`: an offer for the publish peer connection.
    OfferPublish {
        /// The SDP offer, non-empty, at most [`MAX_SDP_LEN`] bytes.
        sdp: String,
        /// The source of every sending m-line, mids distinct.
        tracks: Vec<PublishTrackSpec>,
    },
    /// `rtc.offer.subscribe`: an offer for the subscribe peer connection.
    OfferSubscribe {
        /// The SDP offer, non-empty, at most [`MAX_SDP_LEN`] bytes.
        sdp: String,
        /// Every live subscription, mids distinct.
        subscriptions: Vec<SubscriptionSpec>,
    },
    /// `rtc.ice.candidate`.
    IceCandidate(IceCandidate),
    /// `rtc.media.state`.
    MediaState(MediaStatePatch),
    /// `rtc.subscription.update`; at least one of `max_layer` and `paused` is set.
    SubscriptionUpdate {
        /// The subscribed track.
        track_id: TrackId,
        /// New layer cap, if given.
        max_layer: Option<Layer>,
        /// Pause (`true`) or resume (`false`), if given.
        paused: Option<bool>,
    },
    /// `rtc.leave`.
    Leave,
    /// `rtc.ping`, with the payload to echo in `rtc.pong`.
    Ping(Map<String, Value>),
}

impl ClientRequest {
    /// The wire `type` of this request.
    pub fn type_name(&self) -> &'static str {
        match self {
            ClientRequest::Join(_) => "rtc.join",
            ClientRequest::OfferPublish { .. } => "rtc.offer.publish",
            ClientRequest::OfferSubscribe { .. } => "rtc.offer.subscribe",
            ClientRequest::IceCandidate(_) => "rtc.ice.candidate",
            ClientRequest::MediaState(_) => "rtc.media.state",
            ClientRequest::SubscriptionUpdate { .. } => "rtc.subscription.update",
            ClientRequest::Leave => "rtc.leave",
            ClientRequest::Ping(_) => "rtc.ping",
        }
    }
}

/// Parses one text frame into a validated client message.
///
/// Never panics. On error, `request_id` / `channel_id` of the returned
/// [`ProtocolError`] carry those envelope fields when they were well-formed.
pub fn parse_client_message(text: &str) -> Result<ClientMessage, ProtocolError> {
    let bad = |message: String| ProtocolError {
        code: ErrorCode::BadRequest,
        message,
        request_id: None,
        channel_id: None,
    };
    let mut root = match serde_json::from_str::<StrictValue>(text) {
        Ok(StrictValue(Value::Object(map))) => map,
        Ok(StrictValue(other)) => {
            return Err(bad(format!(
                "message must be a JSON object, not {}",
                describe(&other)
            )));
        }
        Err(e) => return Err(bad(format!("message is not valid JSON: {e}"))),
    };

    let raw = RawEnvelope {
        ty: root.remove("type"),
        request_id: root.remove("request_id"),
        channel_id: root.remove("channel_id"),
        payload: root.remove("payload"),
    };
    let request_id = raw
        .request_id
        .as_ref()
        .ok_or_else(|| "request_id: required".to_string())
        .and_then(|v| parse_id(v, "request_id", RequestId::parse));
    let channel_id = raw
        .channel_id
        .as_ref()
        .ok_or_else(|| "channel_id: required".to_string())
        .and_then(|v| parse_id(v, "channel_id", ChannelId::parse));
    let fail = |code: ErrorCode, message: String| ProtocolError {
        code,
        message,
        request_id: request_id.as_ref().ok().cloned(),
        channel_id: channel_id.as_ref().ok().cloned(),
    };

    let ty = match &raw.ty {
        None => return Err(fail(ErrorCode::BadRequest, "type: required".into())),
        Some(Value::String(s)) => s.as_str(),
        Some(other) => {
            return Err(fail(
                ErrorCode::BadRequest,
                must_be("type", "a string", other),
            ));
        }
    };
    let request_id = request_id
        .as_ref()
        .map_err(|m| fail(ErrorCode::BadRequest, m.clone()))?
        .clone();
    let channel_id = channel_id
        .as_ref()
        .map_err(|m| fail(ErrorCode::BadRequest, m.clone()))?
        .clone();
    let payload = match raw.payload {
        None => return Err(fail(ErrorCode::BadRequest, "payload: required".into())),
        Some(Value::Object(map)) => map,
        Some(other) => {
            return Err(fail(
                ErrorCode::BadRequest,
                must_be("payload", "an object", &other),
            ));
        }
    };

    let request = match ty {
        "rtc.join" => parse_join(&payload),
        "rtc.offer.publish" => parse_offer_publish(&payload),
        "rtc.offer.subscribe" => parse_offer_subscribe(&payload),
        "rtc.ice.candidate" => parse_ice_candidate(&payload),
        "rtc.media.state" => parse_media_state(&payload),
        "rtc.subscription.update" => parse_subscription_update(&payload),
        "rtc.leave" => Ok(ClientRequest::Leave),
        "rtc.ping" => Ok(ClientRequest::Ping(payload)),
        other => {
            return Err(fail(
                ErrorCode::UnknownType,
                format!("type: unknown message type {}", quote(other)),
            ));
        }
    }
    .map_err(|m| fail(ErrorCode::BadRequest, m))?;

    Ok(ClientMessage {
        request_id,
        channel_id,
        request,
    })
}

/// The envelope fields, each kept as raw JSON until validated on its own.
struct RawEnvelope {
    ty: Option<Value>,
    request_id: Option<Value>,
    channel_id: Option<Value>,
    payload: Option<Value>,
}

/// A field-level failure: the message, already naming the field path.
type FieldResult<T> = Result<T, String>;

fn parse_join(p: &Map<String, Value>) -> FieldResult<ClientRequest> {
    let ticket = opt(p, "ticket")
        .map(|v| credential(v, "payload.ticket"))
        .transpose()?;
    let resume = opt(p, "resume_token")
        .map(|v| credential(v, "payload.resume_token"))
        .transpose()?;
    match (ticket, resume) {
        (Some(t), None) => Ok(ClientRequest::Join(JoinCredential::Ticket(t))),
        (None, Some(r)) => Ok(ClientRequest::Join(JoinCredential::Resume(r))),
        (Some(_), Some(_)) => {
            Err("payload: give exactly one of ticket and resume_token, not both".into())
        }
        (None, None) => Err("payload.ticket: required (or payload.resume_token to resume)".into()),
    }
}

fn credential(v: &Value, at: &str) -> FieldResult<Secret<String>> {
    let s = as_str(v, at)?;
    if s.is_empty() {
        return Err(format!("{at}: must not be empty"));
    }
    if s.len() > MAX_CREDENTIAL_LEN {
        return Err(format!("{at}: must be at most {MAX_CREDENTIAL_LEN} bytes"));
    }
    // Tickets are JWTs and resume tokens are server-minted; neither has spaces or
    // control characters, and refusing them keeps the value safe to pass on.
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("{at}: must be printable ASCII without spaces"));
    }
    Ok(Secret::new(s.to_owned()))
}

fn sdp(p: &Map<String, Value>) -> FieldResult<String> {
    let s = as_str(req(p, "payload", "sdp")?, "payload.sdp")?;
    if s.is_empty() {
        return Err("payload.sdp: must not be empty".into());
    }
    if s.len() > MAX_SDP_LEN {
        return Err(format!("payload.sdp: must be at most {MAX_SDP_LEN} bytes"));
    }
    Ok(s.to_owned())
}

fn parse_offer_publish(p: &Map<String, Value>) -> FieldResult<ClientRequest> {
    let sdp = sdp(p)?;
    let list = as_array(
        req(p, "payload", "tracks")?,
        "payload.tracks",
        MAX_PUBLISH_TRACKS,
    )?;
    let mut tracks: Vec<PublishTrackSpec> = Vec::with_capacity(list.len());
    for (i, entry) in list.iter().enumerate() {
        let at = format!("payload.tracks[{i}]");
        let obj = as_object(entry, &at)?;
        let mid = mid(req(obj, &at, "mid")?, &format!("{at}.mid"))?;
        if tracks.iter().any(|t| t.mid == mid) {
            return Err(format!("{at}.mid: duplicate mid {}", quote(mid.as_str())));
        }
        let source = wire_enum(
            req(obj, &at, "source")?,
            &format!("{at}.source"),
            "source",
            Source::from_wire,
        )?;
        tracks.push(PublishTrackSpec { mid, source });
    }
    Ok(ClientRequest::OfferPublish { sdp, tracks })
}

fn parse_offer_subscribe(p: &Map<String, Value>) -> FieldResult<ClientRequest> {
    let sdp = sdp(p)?;
    let list = as_array(
        req(p, "payload", "subscriptions")?,
        "payload.subscriptions",
        MAX_SUBSCRIPTIONS,
    )?;
    let mut subscriptions: Vec<SubscriptionSpec> = Vec::with_capacity(list.len());
    for (i, entry) in list.iter().enumerate() {
        let at = format!("payload.subscriptions[{i}]");
        let obj = as_object(entry, &at)?;
        let mid = mid(req(obj, &at, "mid")?, &format!("{at}.mid"))?;
        // Linear scan: at most 256 entries, compared inline (Mid is 33 bytes).
        if subscriptions.iter().any(|s| s.mid == mid) {
            return Err(format!("{at}.mid: duplicate mid {}", quote(mid.as_str())));
        }
        let track_id = parse_id(
            req(obj, &at, "track_id")?,
            &format!("{at}.track_id"),
            TrackId::parse,
        )?;
        let max_layer = opt(obj, "max_layer")
            .map(|v| layer(v, &format!("{at}.max_layer")))
            .transpose()?;
        subscriptions.push(SubscriptionSpec {
            mid,
            track_id,
            max_layer,
        });
    }
    Ok(ClientRequest::OfferSubscribe { sdp, subscriptions })
}

fn parse_ice_candidate(p: &Map<String, Value>) -> FieldResult<ClientRequest> {
    let pc = wire_enum(
        req(p, "payload", "pc")?,
        "payload.pc",
        "peer connection",
        PeerKind::from_wire,
    )?;
    // `candidate` must be present: a missing field silently meaning
    // end-of-candidates would hide client bugs. `null` and "" are the two spellings
    // browsers use for end-of-candidates.
    let candidate = match p.get("candidate") {
        None => {
            return Err("payload.candidate: required (null for end-of-candidates)".into());
        }
        Some(Value::Null) => None,
        Some(v) => match as_str(v, "payload.candidate")? {
            "" => None,
            line => {
                check_candidate_line(line).map_err(|m| format!("payload.candidate: {m}"))?;
                Some(line.to_owned())
            }
        },
    };
    let sdp_mid = opt(p, "sdp_mid")
        .map(|v| mid(v, "payload.sdp_mid"))
        .transpose()?;
    let sdp_mline_index = opt(p, "sdp_mline_index")
        .map(|v| {
            v.as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .ok_or_else(|| must_be("payload.sdp_mline_index", "an integer 0-65535", v))
        })
        .transpose()?;
    // Same rule as the browser's addIceCandidate: a real candidate must say which
    // m-line it belongs to.
    if candidate.is_some() && sdp_mid.is_none() && sdp_mline_index.is_none() {
        return Err(
            "payload.sdp_mid: required with a candidate (or payload.sdp_mline_index)".into(),
        );
    }
    Ok(ClientRequest::IceCandidate(IceCandidate {
        pc,
        candidate,
        sdp_mid,
        sdp_mline_index,
    }))
}

fn parse_media_state(p: &Map<String, Value>) -> FieldResult<ClientRequest> {
    let flag = |name: &str| {
        opt(p, name)
            .map(|v| as_bool(v, &format!("payload.{name}")))
            .transpose()
    };
    Ok(ClientRequest::MediaState(MediaStatePatch {
        audio_muted: flag("audio_muted")?,
        video_muted: flag("video_muted")?,
        deafened: flag("deafened")?,
    }))
}

fn parse_subscription_update(p: &Map<String, Value>) -> FieldResult<ClientRequest> {
    let track_id = parse_id(
        req(p, "payload", "track_id")?,
        "payload.track_id",
        TrackId::parse,
    )?;
    let max_layer = opt(p, "max_layer")
        .map(|v| layer(v, "payload.max_layer"))
        .transpose()?;
    let paused = opt(p, "paused")
        .map(|v| as_bool(v, "payload.paused"))
        .transpose()?;
    if max_layer.is_none() && paused.is_none() {
        return Err("payload: give max_layer or paused (or both)".into());
    }
    Ok(ClientRequest::SubscriptionUpdate {
        track_id,
        max_layer,
        paused,
    })
}

// ---- field access: every error names the field path ----

/// A present, non-null field.
fn opt<'v>(obj: &'v Map<String, Value>, name: &str) -> Option<&'v Value> {
    obj.get(name).filter(|v| !v.is_null())
}

/// A required field; `null` is reported by the type check that follows.
fn req<'v>(obj: &'v Map<String, Value>, parent: &str, name: &str) -> FieldResult<&'v Value> {
    obj.get(name)
        .ok_or_else(|| format!("{parent}.{name}: required"))
}

fn as_str<'v>(v: &'v Value, at: &str) -> FieldResult<&'v str> {
    v.as_str().ok_or_else(|| must_be(at, "a string", v))
}

fn as_bool(v: &Value, at: &str) -> FieldResult<bool> {
    v.as_bool().ok_or_else(|| must_be(at, "a boolean", v))
}

fn as_object<'v>(v: &'v Value, at: &str) -> FieldResult<&'v Map<String, Value>> {
    v.as_object().ok_or_else(|| must_be(at, "an object", v))
}

fn as_array<'v>(v: &'v Value, at: &str, max: usize) -> FieldResult<&'v Vec<Value>> {
    let list = v.as_array().ok_or_else(|| must_be(at, "an array", v))?;
    if list.len() > max {
        return Err(format!("{at}: at most {max} entries, got {}", list.len()));
    }
    Ok(list)
}

fn parse_id<T>(v: &Value, at: &str, parse: fn(&str) -> Result<T, IdError>) -> FieldResult<T> {
    parse(as_str(v, at)?).map_err(|e| format!("{at}: {e}"))
}

fn mid(v: &Value, at: &str) -> FieldResult<Mid> {
    parse_id(v, at, Mid::parse)
}

fn layer(v: &Value, at: &str) -> FieldResult<Layer> {
    wire_enum(v, at, "layer", Layer::from_wire)
}

fn wire_enum<T>(v: &Value, at: &str, what: &str, from: fn(&str) -> Option<T>) -> FieldResult<T> {
    let s = as_str(v, at)?;
    from(s).ok_or_else(|| format!("{at}: unknown {what} {}", quote(s)))
}

fn must_be(at: &str, expected: &str, got: &Value) -> String {
    format!("{at}: must be {expected}, not {}", describe(got))
}

fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Client text for an error message: cut to [`QUOTE_MAX_CHARS`] and escaped, so a
/// hostile value can neither bloat the response nor inject into a log line.
fn quote(s: &str) -> String {
    match s.char_indices().nth(QUOTE_MAX_CHARS) {
        Some((cut, _)) => format!("{:?}…", &s[..cut]),
        None => format!("{s:?}"),
    }
}

// ---- JSON tree with duplicate keys refused ----

/// A JSON value parsed like `serde_json::Value`, except that an object with a
/// repeated key is an error: JSON parsers disagree on which duplicate wins, and the
/// server should not pick silently. Depth stays bounded because every nested value
/// goes through serde_json's `deserialize_any`, which counts recursion.
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number out of range"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut obj = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if obj.contains_key(&key) {
                return Err(de::Error::custom(format_args!(
                    "duplicate key {}",
                    quote(&key)
                )));
            }
            let StrictValue(v) = map.next_value()?;
            obj.insert(key, v);
        }
        Ok(Value::Object(obj))
    }
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
