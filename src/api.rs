//! The HTTP API (http-api.md): routing, authentication, CORS and each endpoint.
//!
//! Pure over its inputs: a parsed request, the shared [`App`], the peer address and
//! the time; it returns a [`Routed`] answer. The front thread does the I/O. The
//! WebSocket upgrade is only recognised here; the front performs it.

use std::net::IpAddr;
use std::time::Instant;

use serde::Deserialize;

use crate::app::App;
use crate::auth::{ChannelPattern, Permission, Permissions, SessionClaims, TicketClaims};
use crate::http::request::Request;
use crate::http::response::Response;
use crate::ids::{ChannelId, DeviceId, UserUid};

/// Path of the signaling WebSocket.
pub const SIGNALING_PATH: &str = "/v1/rtc/signaling";

/// What the front does with a request.
#[derive(Debug)]
pub enum Routed {
    /// Send this response.
    Respond(Response),
    /// Upgrade to the signaling WebSocket (the request was checked).
    Upgrade,
}

/// Inputs besides the request.
pub struct Ctx<'a> {
    /// Shared state.
    pub app: &'a App,
    /// The client's address.
    pub peer: IpAddr,
    /// Monotonic now (rate limits).
    pub now: Instant,
    /// Wall-clock now (tokens).
    pub now_unix: u64,
}

/// Which CORS policy a route has.
#[derive(Clone, Copy, PartialEq)]
enum Cors {
    /// Browser-facing: answered for allowed origins, preflight included.
    Browser,
    /// Admin, metrics, health: never.
    None,
}

/// Routes one request.
pub fn route(req: &Request, ctx: &Ctx<'_>) -> Routed {
    let path = req.path.as_str();
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = req.method.as_str();
    let cors = match segs.as_slice() {
        ["client", "capabilities"]
        | ["v1", "rtc", "ice-config"]
        | ["v1", "rtc", "channels", _, "join-ticket"]
        | ["v1", "rtc", "channels", _, "participants"]
        | ["v1", "dev", "session-token"] => Cors::Browser,
        _ => Cors::None,
    };
    let origin = req.header("origin");
    if let Some(o) = origin
        && cors == Cors::Browser
        && !ctx.app.config.origin_allowed(o)
    {
        return Routed::Respond(Response::error(
            403,
            "origin_forbidden",
            "this Origin is not in the allow-list",
        ));
    }
    if method == "OPTIONS" {
        let r = if cors == Cors::Browser {
            Response::empty(204)
                .with_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
                .with_header(
                    "Access-Control-Allow-Headers",
                    "authorization, content-type",
                )
                .with_header("Access-Control-Max-Age", "600")
        } else {
            Response::error(405, "method_not_allowed", "no CORS on this endpoint")
        };
        return Routed::Respond(with_cors(r, cors, origin));
    }
    let r = match (method, segs.as_slice()) {
        ("GET", ["v1", "rtc", "signaling"]) => return upgrade_check(req, ctx),
        ("GET", ["client", "capabilities"]) => {
            Response::json(200, &ctx.app.config.capabilities_json())
        }
        ("POST", ["v1", "rtc", "channels", ch, "join-ticket"]) => join_ticket(req, ctx, ch),
        ("GET", ["v1", "rtc", "ice-config"]) => ice_config(req, ctx),
        ("GET", ["v1", "rtc", "channels", ch, "participants"]) => participants(req, ctx, ch),
        ("POST", ["v1", "dev", "session-token"]) => dev_session_token(req, ctx),
        ("GET", ["metrics"]) if ctx.app.config.metrics_public => Response::bytes(
            200,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            ctx.app.metrics.encode().into_bytes(),
        ),
        ("GET", ["healthz"]) => Response::json(200, &serde_json::json!({"status": "ok"})),
        ("GET", ["readyz"]) => {
            if ctx.app.is_ready() {
                Response::json(200, &serde_json::json!({"status": "ready"}))
            } else {
                Response::error(
                    503,
                    "not_ready",
                    "starting up, shutting down, or a media worker is overloaded",
                )
            }
        }
        (_, ["v1", "admin", ..]) => admin(req, ctx, &segs[2..]),
        ("GET", _) if ctx.app.config.call_page && path == ctx.app.config.call_page_path => {
            crate::web::page()
        }
        ("GET", ["web", name]) if ctx.app.config.call_page => crate::web::asset(name)
            .unwrap_or_else(|| Response::error(404, "not_found", "no such asset")),
        (_, _) if ctx.app.config.call_page && path == ctx.app.config.call_page_path => {
            Response::error(405, "method_not_allowed", "method not allowed")
                .with_header("Allow", "GET")
        }
        (_, segs) => match allowed_methods(segs) {
            Some(allow) => Response::error(405, "method_not_allowed", "method not allowed")
                .with_header("Allow", allow),
            None => Response::error(404, "not_found", "no such endpoint"),
        },
    };
    Routed::Respond(with_cors(r, cors, origin))
}

/// Whether `path` is (or is under) a route of the API or of the call page's assets:
/// `call_page_path` must not be one of them.
pub fn is_reserved_path(path: &str) -> bool {
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    matches!(
        first,
        "v1" | "client" | "metrics" | "healthz" | "readyz" | "web"
    )
}

fn allowed_methods(segs: &[&str]) -> Option<&'static str> {
    match segs {
        ["client", "capabilities"]
        | ["v1", "rtc", "ice-config"]
        | ["v1", "rtc", "signaling"]
        | ["metrics"]
        | ["healthz"]
        | ["readyz"]
        | ["v1", "rtc", "channels", _, "participants"] => Some("GET"),
        ["v1", "rtc", "channels", _, "join-ticket"] | ["v1", "dev", "session-token"] => {
            Some("POST")
        }
        _ => None,
    }
}

fn with_cors(mut r: Response, cors: Cors, origin: Option<&str>) -> Response {
    if let (Cors::Browser, Some(o)) = (cors, origin) {
        r.headers
            .push(("Access-Control-Allow-Origin", o.to_string()));
        r.headers.push(("Vary", "Origin".to_string()));
    }
    r
}

fn upgrade_check(req: &Request, ctx: &Ctx<'_>) -> Routed {
    if let Some(o) = req.header("origin")
        && !ctx.app.config.origin_allowed(o)
    {
        return Routed::Respond(Response::error(
            403,
            "origin_forbidden",
            "this Origin is not in the allow-list",
        ));
    }
    let ok = req.header_has_token("upgrade", "websocket")
        && req.header_has_token("connection", "upgrade")
        && req.header("sec-websocket-version") == Some("13")
        && req.header("sec-websocket-key").is_some();
    if !ok {
        return Routed::Respond(
            Response::error(
                426,
                "upgrade_required",
                "this endpoint is a WebSocket (version 13)",
            )
            .with_header("Sec-WebSocket-Version", "13"),
        );
    }
    Routed::Upgrade
}

fn bearer(req: &Request) -> Option<&str> {
    let h = req.header("authorization")?;
    let (scheme, token) = h.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn session_claims(req: &Request, ctx: &Ctx<'_>) -> Result<SessionClaims, Response> {
    let Some(token) = bearer(req) else {
        return Err(Response::error(
            401,
            "unauthorized",
            "Authorization: Bearer <session token> required",
        )
        .with_header("WWW-Authenticate", "Bearer"));
    };
    ctx.app
        .session_tokens
        .verify(token, ctx.now_unix)
        .map_err(|e| {
            Response::error(401, "unauthorized", &format!("session token refused: {e}"))
                .with_header("WWW-Authenticate", "Bearer")
        })
}

fn channel_param(ch: &str) -> Result<ChannelId, Response> {
    let decoded = crate::http::request::percent_decode(ch).unwrap_or_default();
    ChannelId::parse(&decoded)
        .map_err(|e| Response::error(400, "bad_request", &format!("channel_id: {e}")))
}

fn json_body<'a, T: Deserialize<'a>>(req: &'a Request) -> Result<T, Response> {
    if let Some(ct) = req.header("content-type")
        && !ct
            .trim_start()
            .to_ascii_lowercase()
            .starts_with("application/json")
    {
        return Err(Response::error(
            415,
            "unsupported_media_type",
            "Content-Type must be application/json",
        ));
    }
    serde_json::from_slice(&req.body)
        .map_err(|e| Response::error(400, "bad_request", &format!("body: {e}")))
}

#[derive(Deserialize)]
struct JoinTicketBody {
    device_id: String,
}

fn join_ticket(req: &Request, ctx: &Ctx<'_>, ch: &str) -> Response {
    let app = ctx.app;
    let result = (|| {
        let channel = channel_param(ch)?;
        let claims = session_claims(req, ctx)?;
        let body: JoinTicketBody = json_body(req)?;
        let device = DeviceId::parse(&body.device_id)
            .map_err(|e| Response::error(400, "bad_request", &format!("device_id: {e}")))?;
        if !claims.can_connect(&channel) {
            app.metrics.join_failed("forbidden");
            return Err(Response::error(
                403,
                "forbidden",
                "the session token does not grant connect on this channel",
            ));
        }
        if let Err(wait) = app.ticket_rate_user.check(&claims.user_uid, ctx.now) {
            return Err(Response::rate_limited(wait.as_millis() as u64));
        }
        if let Err(wait) = app.ticket_rate_ip.check(&ctx.peer, ctx.now) {
            return Err(Response::rate_limited(wait.as_millis() as u64));
        }
        if let Err(r) = app.moderation.check_join(
            &channel,
            &claims.user_uid,
            &claims.roles,
            ctx.now_unix.saturating_mul(1000),
        ) {
            app.metrics.join_failed(r.code.as_str());
            return Err(Response::error(403, r.code.as_str(), &r.message));
        }
        let mut perms = Permissions::default();
        let granted = claims.permissions_in(&channel);
        for p in [
            Permission::Speak,
            Permission::Video,
            Permission::Screenshare,
        ] {
            if granted.contains(p) {
                perms.insert(p);
            }
        }
        let ticket = TicketClaims::new(
            &app.config.server_id,
            channel.clone(),
            claims.user_uid.clone(),
            device,
            perms,
            claims.roles.clone(),
            ctx.now_unix,
            app.config.ticket_ttl_s,
        );
        let token = app.tickets.mint(&ticket);
        app.metrics.join_ticket_issued.inc();
        log::info!(
            "join ticket issued channel_id={channel} user_uid={} device_id={}",
            ticket.user_uid,
            ticket.device_id
        );
        Ok(Response::json(
            201,
            &serde_json::json!({
                "ticket": token,
                "expires_at": crate::auth::rfc3339_utc(ticket.exp),
                "channel_id": channel,
                "signaling_url": app.config.signaling_url(),
                "ice_servers": app.ice_servers_for(&claims.user_uid, ctx.now_unix),
                "connection_policy": app.config.capabilities_json()["rtc"]["connection_policy"],
            }),
        ))
    })();
    result.unwrap_or_else(|r| r)
}

fn ice_config(req: &Request, ctx: &Ctx<'_>) -> Response {
    match session_claims(req, ctx) {
        Ok(claims) => Response::json(
            200,
            &serde_json::json!({
                "ice_servers": ctx.app.ice_servers_for(&claims.user_uid, ctx.now_unix),
                "ice_transport_policy": ctx.app.config.ice_transport_policy,
                "bundle_policy": "max-bundle",
                "rtcp_mux_policy": "require",
            }),
        ),
        Err(r) => r,
    }
}

fn participants(req: &Request, ctx: &Ctx<'_>, ch: &str) -> Response {
    let result = (|| {
        let channel = channel_param(ch)?;
        let claims = session_claims(req, ctx)?;
        if !claims.can_connect(&channel) {
            return Err(Response::error(
                403,
                "forbidden",
                "the session token does not grant connect on this channel",
            ));
        }
        let list = ctx.app.directory.participants(&channel);
        Ok(Response::json(
            200,
            &serde_json::json!({
                "channel_id": channel,
                "participants": *list,
                "participant_count": list.len(),
            }),
        ))
    })();
    result.unwrap_or_else(|r| r)
}

#[derive(Deserialize)]
struct DevTokenBody {
    user_uid: String,
    channels: std::collections::BTreeMap<String, Vec<String>>,
    #[serde(default)]
    roles: Vec<String>,
}

/// Parses `{"ch": ["speak", …]}` into token channel entries (`connect` implied).
pub fn dev_channels(
    channels: &std::collections::BTreeMap<String, Vec<String>>,
) -> Result<Vec<(ChannelPattern, Permissions)>, String> {
    if channels.len() > 256 {
        return Err("channels: at most 256 entries".into());
    }
    channels
        .iter()
        .map(|(ch, perms)| {
            let pattern = if ch == "*" {
                ChannelPattern::Any
            } else {
                ChannelPattern::Exact(
                    ChannelId::parse(ch).map_err(|e| format!("channels.{ch}: {e}"))?,
                )
            };
            for p in perms {
                if !matches!(p.as_str(), "connect" | "speak" | "video" | "screenshare") {
                    return Err(format!("channels.{ch}: unknown permission \"{p}\""));
                }
            }
            let names: Vec<&str> = perms.iter().map(String::as_str).collect();
            let mut set = Permissions::from_names(&names);
            set.insert(Permission::Connect);
            Ok((pattern, set))
        })
        .collect()
}

fn dev_session_token(req: &Request, ctx: &Ctx<'_>) -> Response {
    let app = ctx.app;
    let Some(key) = app
        .config
        .secrets
        .dev_token_key
        .as_ref()
        .filter(|_| app.config.mode.is_dev())
    else {
        return Response::error(404, "not_found", "dev endpoints are off in production mode");
    };
    let result = (|| {
        let body: DevTokenBody = json_body(req)?;
        let user = UserUid::parse(&body.user_uid)
            .map_err(|e| Response::error(400, "bad_request", &format!("user_uid: {e}")))?;
        let channels =
            dev_channels(&body.channels).map_err(|e| Response::error(400, "bad_request", &e))?;
        for r in &body.roles {
            crate::ids::check_id(r, 64)
                .map_err(|e| Response::error(400, "bad_request", &format!("roles: {e}")))?;
        }
        let token = crate::auth::mint_dev_session_token(
            key,
            &user,
            &channels,
            &body.roles,
            ctx.now_unix,
            3600,
        );
        Ok(Response::json(200, &serde_json::json!({"token": token})))
    })();
    result.unwrap_or_else(|r| r)
}

fn admin(req: &Request, ctx: &Ctx<'_>, rest: &[&str]) -> Response {
    if !crate::auth::admin_key_matches(
        &ctx.app.config.secrets.admin_key,
        req.header("authorization"),
    ) {
        return Response::error(401, "unauthorized", "admin key required")
            .with_header("WWW-Authenticate", "Bearer");
    }
    crate::admin_api::handle(req, ctx, rest)
}
