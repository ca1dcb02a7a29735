//! The admin endpoints (http-api.md): kick, bans, timeouts, channel locks, the
//! rooms view and the audit trail. The caller has shown the admin key already
//! (`api::route`).
//!
//! A moderation change is answered only after the store has committed it (with
//! its audit record, in one transaction): a full store queue is `503` and nothing
//! changes. Then the in-memory state is updated and the workers holding affected
//! sessions are told (bounded wait for their counts), so live sessions are cut
//! before the answer leaves. The `X-Prism-Actor` header (1–64 of
//! `[A-Za-z0-9_.:-]`, default `admin`) names who acted in the audit trail.

use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::api::Ctx;
use crate::audit::{AuditKind, AuditQuery, AuditRecord};
use crate::auth::{parse_rfc3339_ms, rfc3339_utc_ms};
use crate::engine::command::{Command, ModerateAction};
use crate::http::request::Request;
use crate::http::response::Response;
use crate::ids::{ChannelId, DeviceId, UserUid};
use crate::moderation::{Ban, Lock, MAX_REASON_CHARS, ModerationChange, Timeout};
use crate::store::{StoreError, StoreWrite};

/// Longest a moderation call waits for the workers' counts.
const WORKER_WAIT: Duration = Duration::from_secs(2);

/// Most audit records one page returns (and the default).
pub const AUDIT_PAGE_MAX: usize = 1000;
const AUDIT_PAGE_DEFAULT: usize = 100;

fn bad(message: &str) -> Response {
    Response::error(400, "bad_request", message)
}

/// Routes `/v1/admin/<rest>`.
pub fn handle(req: &Request, ctx: &Ctx<'_>, rest: &[&str]) -> Response {
    let result = match (req.method.as_str(), rest) {
        ("GET", ["rooms"]) => Ok(crate::admin_rooms::rooms(ctx)),
        ("POST", ["channels", ch, "kick"]) => kick(req, ctx, ch),
        ("PUT", ["bans", user]) => put_ban(req, ctx, user),
        ("DELETE", ["bans", user]) => delete_ban(req, ctx, user),
        ("GET", ["bans"]) => Ok(list(
            "bans",
            ctx.app
                .moderation
                .bans()
                .iter()
                .map(|b| serde_json::to_value(b.view())),
        )),
        ("PUT", ["channels", ch, "timeouts", user]) => put_timeout(req, ctx, ch, user),
        ("DELETE", ["channels", ch, "timeouts", user]) => delete_timeout(req, ctx, ch, user),
        ("GET", ["timeouts"]) => Ok(list(
            "timeouts",
            ctx.app
                .moderation
                .timeouts()
                .iter()
                .map(|t| serde_json::to_value(t.view())),
        )),
        ("PUT", ["channels", ch, "lock"]) => put_lock(req, ctx, ch),
        ("DELETE", ["channels", ch, "lock"]) => delete_lock(req, ctx, ch),
        ("GET", ["locks"]) => Ok(list(
            "locks",
            ctx.app
                .moderation
                .locks()
                .iter()
                .map(|l| serde_json::to_value(l.view())),
        )),
        ("GET", ["audit"]) => audit(req, ctx),
        (_, path) => Err(match allowed(path) {
            Some(allow) => Response::error(405, "method_not_allowed", "method not allowed")
                .with_header("Allow", allow),
            None => Response::error(404, "not_found", "no such endpoint"),
        }),
    };
    result.unwrap_or_else(|r| r)
}

fn allowed(path: &[&str]) -> Option<&'static str> {
    Some(match path {
        ["rooms"] | ["audit"] | ["bans"] | ["timeouts"] | ["locks"] => "GET",
        ["channels", _, "kick"] => "POST",
        ["bans", _] | ["channels", _, "timeouts", _] | ["channels", _, "lock"] => "PUT, DELETE",
        _ => return None,
    })
}

fn list<E>(key: &str, items: impl Iterator<Item = Result<serde_json::Value, E>>) -> Response {
    let items: Vec<serde_json::Value> = items.filter_map(Result::ok).collect();
    Response::json(200, &serde_json::json!({ key: items }))
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
    serde_json::from_slice(&req.body).map_err(|e| bad(&format!("body: {e}")))
}

fn path_id<T>(
    raw: &str,
    what: &str,
    parse: fn(&str) -> Result<T, crate::ids::IdError>,
) -> Result<T, Response> {
    let decoded = crate::http::request::percent_decode(raw).unwrap_or_default();
    parse(&decoded).map_err(|e| bad(&format!("{what}: {e}")))
}

fn channel(raw: &str) -> Result<ChannelId, Response> {
    path_id(raw, "channel_id", ChannelId::parse)
}

fn user(raw: &str) -> Result<UserUid, Response> {
    path_id(raw, "user_uid", UserUid::parse)
}

/// Who acts: `X-Prism-Actor`, else `admin`.
fn actor(req: &Request) -> Result<String, Response> {
    match req.header("x-prism-actor") {
        None => Ok("admin".into()),
        Some(a) => {
            let a = a.trim();
            crate::ids::check_id(a, 64).map_err(|e| bad(&format!("X-Prism-Actor: {e}")))?;
            Ok(a.to_string())
        }
    }
}

fn reason(r: Option<String>) -> Result<String, Response> {
    let r = r.unwrap_or_default();
    if r.chars().count() > MAX_REASON_CHARS {
        return Err(bad(&format!(
            "reason: at most {MAX_REASON_CHARS} characters"
        )));
    }
    if r.chars().any(char::is_control) {
        return Err(bad("reason: control characters are not allowed"));
    }
    Ok(r)
}

fn now_ms(ctx: &Ctx<'_>) -> u64 {
    crate::audit::wall_ms().max(ctx.now_unix.saturating_mul(1000))
}

/// A time in the future: RFC 3339 text, or Unix seconds as a number.
fn future_time(v: &serde_json::Value, what: &str, now_ms: u64) -> Result<u64, Response> {
    let ms = match v {
        serde_json::Value::String(s) => {
            parse_rfc3339_ms(s).map_err(|e| bad(&format!("{what}: {e}")))?
        }
        serde_json::Value::Number(n) => {
            n.as_u64()
                .and_then(|s| s.checked_mul(1000))
                .ok_or_else(|| {
                    bad(&format!(
                        "{what}: Unix seconds must be a non-negative integer"
                    ))
                })?
        }
        _ => return Err(bad(&format!("{what}: an RFC 3339 date-time is required"))),
    };
    if ms <= now_ms {
        return Err(bad(&format!("{what}: must be in the future")));
    }
    Ok(ms)
}

/// Persists `change` with its audit record, then applies it in memory.
fn commit(ctx: &Ctx<'_>, change: ModerationChange, audit: AuditRecord) -> Result<(), Response> {
    if !ctx.app.moderation.has_room_for(&change) {
        return Err(Response::error(
            409,
            "too_many_entries",
            &format!(
                "at most {} entries of this kind; lift some first",
                crate::moderation::MAX_ENTRIES
            ),
        ));
    }
    let at = if audit.at_ms == 0 {
        now_ms(ctx)
    } else {
        audit.at_ms
    };
    let write = StoreWrite::Moderation {
        change: change.clone(),
        audit: audit.at(at),
    };
    match ctx.app.store.write_durable(write) {
        Ok(()) => {}
        Err(StoreError::QueueFull) => {
            return Err(Response::error(
                503,
                "store_busy",
                "the moderation store is busy; nothing was changed, retry",
            )
            .with_header("Retry-After", "1"));
        }
        Err(e) => {
            log::error!("moderation write failed: {e}");
            return Err(Response::error(
                503,
                "store_unavailable",
                "the moderation store failed; nothing was changed",
            ));
        }
    }
    ctx.app.moderation.apply(&change);
    Ok(())
}

/// Sends `action` to the workers that may hold affected sessions (the owner of
/// `channel`, or all for `None`) and sums their counts, waiting at most
/// [`WORKER_WAIT`]. A worker whose queue stays full is skipped (logged): the
/// change is committed and enforced at the next join anyway.
fn tell_workers(ctx: &Ctx<'_>, channel: Option<&ChannelId>, action: ModerateAction) -> usize {
    let workers: Vec<usize> = match channel {
        Some(c) => ctx.app.directory.owner(c).into_iter().collect(),
        None => (0..ctx.app.workers.len()).collect(),
    };
    if workers.is_empty() {
        return 0;
    }
    let deadline = ctx.now + WORKER_WAIT;
    let (tx, rx) = crossbeam_channel::bounded(workers.len());
    let mut expected = 0;
    for w in workers {
        let Some(handle) = ctx.app.workers.get(w) else {
            continue;
        };
        let mut cmd = Command::Moderate {
            action: action.clone(),
            reply: Some(tx.clone()),
        };
        loop {
            match handle.try_send(cmd) {
                Ok(()) => {
                    expected += 1;
                    break;
                }
                Err(busy) if wall_before(deadline) => {
                    cmd = busy.0;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => {
                    log::warn!(
                        "moderation: media worker {w} stayed busy; its live sessions are not cut now"
                    );
                    break;
                }
            }
        }
    }
    drop(tx);
    let mut total = 0;
    for _ in 0..expected {
        match rx.recv_deadline(deadline) {
            Ok(n) => total += n,
            Err(_) => break,
        }
    }
    total
}

#[expect(
    clippy::disallowed_methods,
    reason = "a bounded wait on the front thread reads the clock"
)]
fn wall_before(deadline: Instant) -> bool {
    Instant::now() < deadline
}

#[derive(Deserialize)]
struct KickBody {
    user_uid: String,
    device_id: Option<String>,
    reason: Option<String>,
}

fn kick(req: &Request, ctx: &Ctx<'_>, ch: &str) -> Result<Response, Response> {
    let channel = channel(ch)?;
    let body: KickBody = json_body(req)?;
    let user = UserUid::parse(&body.user_uid).map_err(|e| bad(&format!("user_uid: {e}")))?;
    let device = body
        .device_id
        .as_deref()
        .map(DeviceId::parse)
        .transpose()
        .map_err(|e| bad(&format!("device_id: {e}")))?;
    let reason = reason(body.reason)?;
    let actor = actor(req)?;
    let mut rec = AuditRecord::new(AuditKind::Kick)
        .channel(&channel)
        .user(&user)
        .actor(&actor)
        .reason(&reason);
    if let Some(d) = &device {
        rec = rec.device(d);
    }
    ctx.app.audit.record(rec);
    let n = tell_workers(
        ctx,
        Some(&channel),
        ModerateAction::Kick {
            channel: channel.clone(),
            user: user.clone(),
            device,
        },
    );
    log::info!(
        "moderation: kick channel_id={channel} user_uid={user} actor={actor} disconnected={n}"
    );
    Ok(Response::json(200, &serde_json::json!({"disconnected": n})))
}

#[derive(Deserialize)]
struct BanBody {
    channel_id: Option<String>,
    reason: Option<String>,
    expires_at: Option<serde_json::Value>,
}

fn put_ban(req: &Request, ctx: &Ctx<'_>, u: &str) -> Result<Response, Response> {
    let user = user(u)?;
    let body: BanBody = json_body(req)?;
    let channel = body
        .channel_id
        .as_deref()
        .map(ChannelId::parse)
        .transpose()
        .map_err(|e| bad(&format!("channel_id: {e}")))?;
    let now = now_ms(ctx);
    let expires_at_ms = match &body.expires_at {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(future_time(v, "expires_at", now)?),
    };
    let ban = Ban {
        user: user.clone(),
        channel: channel.clone(),
        reason: reason(body.reason)?,
        expires_at_ms,
        actor: actor(req)?,
        created_at_ms: now,
    };
    let mut rec = AuditRecord::new(AuditKind::Ban)
        .user(&user)
        .actor(&ban.actor)
        .reason(&ban.reason);
    if let Some(c) = &channel {
        rec = rec.channel(c);
    }
    commit(ctx, ModerationChange::PutBan(ban.clone()), rec)?;
    let n = tell_workers(
        ctx,
        channel.as_ref(),
        ModerateAction::Ban {
            user: user.clone(),
            channel: channel.clone(),
        },
    );
    log::info!(
        "moderation: ban user_uid={user} channel_id={} actor={} disconnected={n}",
        channel.as_ref().map(ChannelId::as_str).unwrap_or("*"),
        ban.actor
    );
    let mut v = serde_json::to_value(ban.view()).unwrap_or_default();
    v["disconnected"] = n.into();
    Ok(Response::json(200, &v))
}

fn delete_ban(req: &Request, ctx: &Ctx<'_>, u: &str) -> Result<Response, Response> {
    let user = user(u)?;
    let channel = match req.query_param("channel_id") {
        None => None,
        Some(c) => Some(ChannelId::parse(&c).map_err(|e| bad(&format!("channel_id: {e}")))?),
    };
    let actor = actor(req)?;
    let mut rec = AuditRecord::new(AuditKind::Unban).user(&user).actor(&actor);
    if let Some(c) = &channel {
        rec = rec.channel(c);
    }
    commit(ctx, ModerationChange::DeleteBan { user, channel }, rec)?;
    Ok(Response::empty(204))
}

#[derive(Deserialize)]
struct TimeoutBody {
    until: serde_json::Value,
    reason: Option<String>,
    listen_only: Option<bool>,
}

fn put_timeout(req: &Request, ctx: &Ctx<'_>, ch: &str, u: &str) -> Result<Response, Response> {
    let channel = channel(ch)?;
    let user = user(u)?;
    let body: TimeoutBody = json_body(req)?;
    let now = now_ms(ctx);
    let t = Timeout {
        channel: channel.clone(),
        user: user.clone(),
        until_ms: future_time(&body.until, "until", now)?,
        listen_only: body.listen_only.unwrap_or(true),
        reason: reason(body.reason)?,
        actor: actor(req)?,
        created_at_ms: now,
    };
    let rec = AuditRecord::new(AuditKind::Timeout)
        .channel(&channel)
        .user(&user)
        .actor(&t.actor)
        .reason(&t.reason);
    commit(ctx, ModerationChange::PutTimeout(t.clone()), rec)?;
    let n = tell_workers(
        ctx,
        Some(&channel),
        ModerateAction::Timeout {
            channel: channel.clone(),
            user: user.clone(),
            listen_only: t.listen_only,
        },
    );
    log::info!(
        "moderation: timeout channel_id={channel} user_uid={user} until={} listen_only={} actor={} sessions={n}",
        rfc3339_utc_ms(t.until_ms),
        t.listen_only,
        t.actor
    );
    let mut v = serde_json::to_value(t.view()).unwrap_or_default();
    v[if t.listen_only {
        "affected"
    } else {
        "disconnected"
    }] = n.into();
    Ok(Response::json(200, &v))
}

fn delete_timeout(req: &Request, ctx: &Ctx<'_>, ch: &str, u: &str) -> Result<Response, Response> {
    let channel = channel(ch)?;
    let user = user(u)?;
    let actor = actor(req)?;
    let rec = AuditRecord::new(AuditKind::TimeoutLifted)
        .channel(&channel)
        .user(&user)
        .actor(&actor);
    commit(ctx, ModerationChange::DeleteTimeout { channel, user }, rec)?;
    Ok(Response::empty(204))
}

#[derive(Deserialize)]
struct LockBody {
    #[serde(default)]
    exempt_roles: Vec<String>,
    reason: Option<String>,
}

fn put_lock(req: &Request, ctx: &Ctx<'_>, ch: &str) -> Result<Response, Response> {
    let channel = channel(ch)?;
    let body: LockBody = if req.body.is_empty() {
        LockBody {
            exempt_roles: Vec::new(),
            reason: None,
        }
    } else {
        json_body(req)?
    };
    if body.exempt_roles.len() > 64 {
        return Err(bad("exempt_roles: at most 64"));
    }
    for r in &body.exempt_roles {
        crate::ids::check_id(r, 64).map_err(|e| bad(&format!("exempt_roles: {e}")))?;
    }
    let lock = Lock {
        channel: channel.clone(),
        exempt_roles: body.exempt_roles,
        reason: reason(body.reason)?,
        actor: actor(req)?,
        created_at_ms: now_ms(ctx),
    };
    let rec = AuditRecord::new(AuditKind::Lock)
        .channel(&channel)
        .actor(&lock.actor)
        .reason(&lock.reason);
    commit(ctx, ModerationChange::PutLock(lock.clone()), rec)?;
    log::info!("moderation: lock channel_id={channel} actor={}", lock.actor);
    Ok(Response::json(
        200,
        &serde_json::to_value(lock.view()).unwrap_or_default(),
    ))
}

fn delete_lock(req: &Request, ctx: &Ctx<'_>, ch: &str) -> Result<Response, Response> {
    let channel = channel(ch)?;
    let actor = actor(req)?;
    let rec = AuditRecord::new(AuditKind::Unlock)
        .channel(&channel)
        .actor(&actor);
    commit(ctx, ModerationChange::DeleteLock { channel }, rec)?;
    Ok(Response::empty(204))
}

fn audit(req: &Request, ctx: &Ctx<'_>) -> Result<Response, Response> {
    let channel = req
        .query_param("channel_id")
        .map(|c| ChannelId::parse(&c).map_err(|e| bad(&format!("channel_id: {e}"))))
        .transpose()?;
    let since_ms = match req.query_param("since") {
        None => None,
        Some(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => Some(
            s.parse::<u64>()
                .ok()
                .and_then(|v| v.checked_mul(1000))
                .ok_or_else(|| bad("since: too large"))?,
        ),
        Some(s) => Some(parse_rfc3339_ms(&s).map_err(|e| bad(&format!("since: {e}")))?),
    };
    let limit = match req.query_param("limit") {
        None => AUDIT_PAGE_DEFAULT,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=AUDIT_PAGE_MAX).contains(l))
            .ok_or_else(|| bad(&format!("limit: an integer from 1 to {AUDIT_PAGE_MAX}")))?,
    };
    let before_id = req
        .query_param("before")
        .map(|b| {
            b.parse::<i64>()
                .ok()
                .filter(|b| *b > 0)
                .ok_or_else(|| bad("before: a record id (positive integer)"))
        })
        .transpose()?;
    let query = AuditQuery {
        channel,
        since_ms,
        before_id,
        limit,
    };
    let rows = match ctx.app.store.query_audit(query) {
        Ok(rows) => rows,
        Err(StoreError::QueueFull) => {
            return Err(
                Response::error(503, "store_busy", "the store is busy; retry")
                    .with_header("Retry-After", "1"),
            );
        }
        Err(e) => {
            log::error!("audit query failed: {e}");
            return Err(Response::error(
                503,
                "store_unavailable",
                "the store failed",
            ));
        }
    };
    let next = (rows.len() == limit)
        .then(|| rows.last().map(|r| r.id))
        .flatten();
    Ok(Response::json(
        200,
        &serde_json::json!({"records": rows, "next_before": next}),
    ))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use crate::server::Server;
    use crate::store::QUEUE_CAPACITY;
    use crate::store::tests::TempDir;

    fn request(addr: std::net::SocketAddr, raw: &str) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        s.write_all(raw.as_bytes()).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    #[test]
    fn a_full_store_queue_refuses_moderation_writes_503_and_changes_nothing() {
        let tmp = TempDir::new();
        let vars: Vec<(String, String)> = vec![
            ("PRISM_LISTEN".into(), "127.0.0.1:0".into()),
            (
                "PRISM_DATA_DIR".into(),
                tmp.0.to_string_lossy().into_owned(),
            ),
            ("PRISM_MEDIA__WORKERS".into(), "1".into()),
            ("PRISM_FRONT_THREADS".into(), "1".into()),
        ];
        let config = crate::config::load_with(&Default::default(), &vars).unwrap();
        let key = config.secrets.admin_key.expose().clone();
        let server = Server::start(config).unwrap();
        let addr = server.local_addr();
        let store = server.app().store.clone();
        let release = store.pause();
        // Fill what is left of the queue (the housekeeping thread may hold a slot).
        for i in 0..=QUEUE_CAPACITY {
            let w = crate::store::StoreWrite::UsedTicket {
                jti: format!("j{i}"),
                exp: 1,
            };
            if store.try_write(w).is_err() {
                break;
            }
        }
        let body = r#"{"reason":"spam"}"#;
        let put = format!(
            "PUT /v1/admin/bans/mallory HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let answer = request(addr, &put);
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains("store_busy"), "{answer}");
        assert!(
            answer.to_ascii_lowercase().contains("retry-after: 1"),
            "{answer}"
        );
        assert!(server.app().moderation.bans().is_empty(), "nothing changed");
        drop(release);
        // Once the queue drains the same call succeeds.
        let mut ok = String::new();
        for _ in 0..200 {
            ok = request(addr, &put);
            if !ok.starts_with("HTTP/1.1 503") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert_eq!(server.app().moderation.bans().len(), 1);
        server.shutdown();
    }
}
