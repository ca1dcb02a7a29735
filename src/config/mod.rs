//! Configuration: one TOML file, overridden by `PRISM_*` environment variables and
//! command-line flags, turned into the validated [`Config`] every thread reads.
//!
//! Owns: the file format and its defaults (`docs/configuration.md` is the reference,
//! `prism.example.toml` lists every key), the precedence flags > environment > file >
//! defaults, dev-mode conveniences (generated secrets and server id in the data
//! directory) and production refusals (no TLS off loopback, no dev endpoints, no
//! missing secrets), the Origin allow-list check of protocol-v1 §1 and the
//! `GET /client/capabilities` body.
//!
//! Invariants: a [`Config`] only exists validated — every value within its documented
//! range, every cross-key rule checked, every refusal a [`ConfigError`] naming the key;
//! secrets live in [`Secret`] so `{:?}` of a `Config` never prints one; loading writes
//! to disk only after every pure check passed. Called once by `main` (through
//! [`load`]) before any thread starts; the result is shared read-only.

mod data_dir;
mod limits;
mod origin;
mod raw;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::cli::ServeArgs;
use crate::secret::Secret;

pub use data_dir::{SECRETS_FILE, SERVER_ID_FILE};
pub use limits::Limits;
pub use raw::{NON_CONFIG_ENV_VARS, env_var_name};

use origin::{Scheme, WebUrl};
use raw::{RawConfig, Sources};

/// Dev (local convenience, dev endpoints) or production (strict).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Loopback defaults, generated secrets, dev endpoints, the call page.
    Dev,
    /// TLS off loopback, explicit secrets, no dev endpoints.
    Production,
}

impl Mode {
    /// True in dev mode.
    pub fn is_dev(self) -> bool {
        self == Mode::Dev
    }

    /// `"dev"` or `"production"`, as written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Dev => "dev",
            Mode::Production => "production",
        }
    }
}

/// TLS on the main listener: PEM certificate chain and private key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM certificate chain (`tls.cert_file`).
    pub cert_path: PathBuf,
    /// PEM private key (`tls.key_file`).
    pub key_path: PathBuf,
}

/// Media workers and their UDP sockets (`[media]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaSettings {
    /// Number of media worker threads, 1..=256.
    pub workers: usize,
    /// Address the workers' UDP sockets bind to.
    pub bind_ip: IpAddr,
    /// 0 = ephemeral ports; else worker `i` binds `port_base + i`.
    pub port_base: u16,
    /// Address advertised in ICE candidates instead of `bind_ip` (NAT, 0.0.0.0 binds).
    pub public_ip: Option<IpAddr>,
}

/// Browser origins allowed to use the API and the signaling socket (protocol-v1 §1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OriginPolicy {
    /// Exact `scheme://host[:port]` origins, normalised (lowercase, default port dropped).
    pub allowed: Vec<String>,
    /// Also allow `http://localhost[:port]` and `http://127.0.0.1[:port]` (dev only).
    pub allow_localhost_any_port: bool,
}

/// Server-side secrets. Text secrets are used as their UTF-8 bytes.
#[derive(Clone, Debug)]
pub struct Secrets {
    /// HS256 key of join tickets.
    pub ticket_key: Secret<Vec<u8>>,
    /// coturn `static-auth-secret` for TURN REST credentials.
    pub turn_secret: Secret<Vec<u8>>,
    /// Bearer key of the admin API.
    pub admin_key: Secret<String>,
    /// HS256 key of dev session tokens; `Some` only in dev mode.
    pub dev_token_key: Option<Secret<Vec<u8>>>,
}

/// One STUN or TURN server handed to clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IceServer {
    /// `stun:` / `stuns:` / `turn:` / `turns:` URLs.
    pub urls: Vec<String>,
    /// True for TURN: clients get per-user REST credentials for it.
    pub turn: bool,
}

pub use crate::auth::{SessionTokenSettings, TokenAlgorithm};

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Dev or production.
    pub mode: Mode,
    /// This server's id in join tickets; generated once into the data directory.
    pub server_id: String,
    /// HTTP/WebSocket listener.
    pub listen: SocketAddr,
    /// Public base URL, normalised, no trailing slash.
    pub public_url: String,
    /// Signaling front threads, 1..=64.
    pub front_threads: usize,
    /// TLS on the listener, if configured.
    pub tls: Option<TlsSettings>,
    /// Database, generated secrets, server id.
    pub data_dir: PathBuf,
    /// Media workers.
    pub media: MediaSettings,
    /// Browser Origin allow-list.
    pub origins: OriginPolicy,
    /// Session token verification.
    pub session_tokens: SessionTokenSettings,
    /// Server-side secrets.
    pub secrets: Secrets,
    /// True only when this load generated the admin key (main prints it once).
    pub fresh_admin_key: bool,
    /// STUN/TURN servers for clients.
    pub ice_servers: Vec<IceServer>,
    /// `"all"` or `"relay"`.
    pub ice_transport_policy: String,
    /// Lifetime of TURN credentials, seconds.
    pub turn_ttl_s: u64,
    /// Lifetime of join tickets, seconds.
    pub ticket_ttl_s: u64,
    /// Protocol and transport limits.
    pub limits: Limits,
    /// Client reconnect backoff advertised in `connection_policy`.
    pub reconnect_backoff_ms: Vec<u64>,
    /// Serve `/metrics` on the main listener.
    pub metrics_public: bool,
    /// Days audit records are kept.
    pub audit_retention_days: u32,
    /// Serve the call page (`web/`, embedded) at [`Config::call_page_path`].
    pub call_page: bool,
    /// Path of the call page, `/` by default; its assets are under `/web/`.
    pub call_page_path: String,
}

/// Why the configuration was refused.
#[derive(Debug)]
pub enum ConfigError {
    /// A key's value is refused; `key` is the dotted name (`limits.join_timeout_ms`).
    Invalid { key: String, reason: String },
    /// A file could not be read or written.
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A TOML file is malformed, has a wrongly typed value or an unknown key.
    Toml { path: PathBuf, message: String },
    /// A `PRISM_*` environment variable that is not a configuration key (typo safety).
    UnknownEnv { name: String },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Invalid { key, reason } => write!(f, "config: {key}: {reason}"),
            ConfigError::Io { path, source } => write!(f, "config: {}: {source}", path.display()),
            ConfigError::Toml { path, message } => {
                write!(f, "config: {}: {}", path.display(), message.trim_end())
            }
            ConfigError::UnknownEnv { name } => write!(
                f,
                "config: environment variable {name} is not a configuration key \
                 (PRISM_ + the dotted key in upper case with . as __, e.g. \
                 PRISM_LIMITS__JOIN_TIMEOUT_MS; see docs/configuration.md)"
            ),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Loads the configuration from `args`, the process environment and the file.
pub fn load(args: &ServeArgs) -> Result<Config, ConfigError> {
    let mut env = Vec::new();
    for (name, value) in std::env::vars_os() {
        let name_text = name.to_string_lossy();
        if !name_text.starts_with("PRISM_") {
            continue;
        }
        match (name.to_str(), value.into_string()) {
            (Some(n), Ok(v)) => env.push((n.to_string(), v)),
            _ => {
                return Err(ConfigError::Invalid {
                    key: name_text.into_owned(),
                    reason: "environment variable is not valid UTF-8".into(),
                });
            }
        }
    }
    load_with(args, &env)
}

/// [`load`] with the environment given as (name, value) pairs, for tests.
pub fn load_with(args: &ServeArgs, env: &[(String, String)]) -> Result<Config, ConfigError> {
    let path = match &args.config {
        Some(p) => Some(p.clone()),
        None => match env.iter().rev().find(|(n, _)| n == "PRISM_CONFIG") {
            Some((_, v)) if v.is_empty() => {
                return Err(ConfigError::Invalid {
                    key: "PRISM_CONFIG".into(),
                    reason: "is empty; unset it or name a file".into(),
                });
            }
            Some((_, v)) => Some(PathBuf::from(v)),
            None => None,
        },
    };
    let text = match &path {
        Some(p) => Some(
            std::fs::read_to_string(p).map_err(|source| ConfigError::Io {
                path: p.clone(),
                source,
            })?,
        ),
        None => None,
    };
    let file = path.as_deref().zip(text.as_deref());
    let layered = raw::layer(file, env, args)?;
    build(&layered.raw, &layered.sources)
}

fn build(r: &RawConfig, s: &Sources) -> Result<Config, ConfigError> {
    let mode = match r.mode.as_deref() {
        None | Some("dev") => Mode::Dev,
        Some("production") => Mode::Production,
        Some(other) => {
            return Err(s.invalid(
                "mode",
                format!("must be \"dev\" or \"production\" (got {other:?})"),
            ));
        }
    };
    let dev = mode.is_dev();

    let data_dir = match r.data_dir.as_deref() {
        None => PathBuf::from("./data"),
        Some("") => return Err(s.invalid("data_dir", "must not be empty")),
        Some(d) => PathBuf::from(d),
    };

    let listen = match &r.listen {
        Some(t) => t.parse::<SocketAddr>().map_err(|_| {
            s.invalid(
                "listen",
                format!("must be an IP address and port such as 127.0.0.1:8080 (got {t:?})"),
            )
        })?,
        None if dev => SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)),
        None => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 8443)),
    };
    let loopback = listen.ip().is_loopback();

    let tls = tls_settings(r, s)?;
    let front_threads = as_usize(s.int_in("front_threads", r.front_threads, 2, 1, 64)?);

    let public_url = match &r.public_url {
        Some(t) => WebUrl::parse_base(t).map_err(|e| s.invalid("public_url", e))?,
        None if dev => default_public_url(listen, tls.is_some()),
        None => {
            return Err(s.invalid(
                "public_url",
                "is required in production mode (e.g. https://rtc.example.org)",
            ));
        }
    };
    if !dev && !loopback {
        if tls.is_none() {
            return Err(s.invalid(
                "tls",
                format!(
                    "production mode requires tls.cert_file and tls.key_file unless listen \
                     is a loopback address (listen is {listen})"
                ),
            ));
        }
        if public_url.scheme != Scheme::Https {
            return Err(s.invalid(
                "public_url",
                "must be https:// in production mode unless listen is a loopback address",
            ));
        }
    }
    if dev && !loopback {
        log::warn!(
            "dev mode on {listen}: anyone who can reach it can mint session tokens; \
             use mode = \"production\" for a reachable server"
        );
    }

    let media = media_settings(r, s, dev)?;
    let origins = origin_policy(r, s, dev, &public_url)?;
    let ice_servers = ice_servers(r, s)?;
    let any_turn = ice_servers.iter().any(|i| i.turn);
    let ice_transport_policy = match r.ice_transport_policy.as_deref() {
        None | Some("all") => "all".to_string(),
        Some("relay") if any_turn => "relay".to_string(),
        Some("relay") => {
            return Err(s.invalid(
                "ice_transport_policy",
                "\"relay\" needs at least one TURN server in ice_servers",
            ));
        }
        Some(other) => {
            return Err(s.invalid(
                "ice_transport_policy",
                format!("must be \"all\" or \"relay\" (got {other:?})"),
            ));
        }
    };
    let turn_ttl_s = as_u64(s.int_in("turn_ttl_s", r.turn_ttl_s, 86_400, 60, 604_800)?);
    let ticket_ttl_s = as_u64(s.int_in("ticket_ttl_s", r.ticket_ttl_s, 60, 5, 3600)?);
    let reconnect_backoff_ms = backoff(r, s)?;
    let audit_retention_days =
        u32::try_from(s.int_in("audit_retention_days", r.audit_retention_days, 30, 1, 3650)?)
            .unwrap_or(30);
    let limits = Limits::from_raw(&r.limits, s)?;
    let call_page_path = call_page_path(r, s)?;

    let configured_server_id = match &r.server_id {
        Some(id) => {
            crate::ids::check_id(id, 64).map_err(|e| s.invalid("server_id", e.to_string()))?;
            Some(id.clone())
        }
        None => None,
    };

    let secrets_in = configured_secrets(r, s, dev, any_turn)?;
    let tokens_in = session_token_inputs(r, s, dev)?;

    // Every pure check passed: only now touch the disk.
    data_dir::ensure_dir(&data_dir)?;
    let server_id = match configured_server_id {
        Some(id) => id,
        None => data_dir::server_id(&data_dir)?,
    };
    let (secrets, fresh_admin_key) = finish_secrets(secrets_in, s, dev, &data_dir)?;
    let session_tokens = SessionTokenSettings {
        hs256_secret: tokens_in.hs256_secret.or_else(|| {
            (tokens_in.algorithm == TokenAlgorithm::Hs256)
                .then(|| secrets.dev_token_key.clone())
                .flatten()
        }),
        ..tokens_in
    };

    Ok(Config {
        mode,
        server_id,
        listen,
        public_url: public_url.full(),
        front_threads,
        tls,
        data_dir,
        media,
        origins,
        session_tokens,
        secrets,
        fresh_admin_key,
        ice_servers,
        ice_transport_policy,
        turn_ttl_s,
        ticket_ttl_s,
        limits,
        reconnect_backoff_ms,
        metrics_public: r.metrics_public.unwrap_or(true),
        audit_retention_days,
        call_page: r.call_page.unwrap_or(dev),
        call_page_path,
    })
}

/// `call_page_path`: an absolute path that no API route or the page's own assets use.
fn call_page_path(r: &RawConfig, s: &Sources) -> Result<String, ConfigError> {
    let key = "call_page_path";
    let Some(p) = &r.call_page_path else {
        return Ok("/".to_string());
    };
    if p.is_empty() || p.len() > 128 || !p.starts_with('/') {
        return Err(s.invalid(
            key,
            format!(
                "must be an absolute path of 1 to 128 characters such as \"/call\" (got {p:?})"
            ),
        ));
    }
    if !p
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.' | b'~'))
    {
        return Err(s.invalid(
            key,
            format!("may hold only letters, digits and / - _ . ~ (got {p:?})"),
        ));
    }
    if p.contains("//") || p.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(s.invalid(
            key,
            format!("must not contain // or . or .. segments (got {p:?})"),
        ));
    }
    if crate::api::is_reserved_path(p) {
        return Err(s.invalid(
            key,
            format!("{p:?} is used by the API or the page's assets (/web/); pick another path"),
        ));
    }
    Ok(p.clone())
}

/// Range-checked values are non-negative and small, so these conversions are exact.
fn as_usize(v: i64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

fn as_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn default_public_url(listen: SocketAddr, tls: bool) -> WebUrl {
    let scheme = if tls { Scheme::Https } else { Scheme::Http };
    // A wildcard bind is reachable at loopback; "0.0.0.0" is no browser's origin.
    let ip = match listen.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let host = match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    };
    let default_port = if tls { 443 } else { 80 };
    WebUrl {
        scheme,
        host,
        port: (listen.port() != default_port).then_some(listen.port()),
        path: String::new(),
    }
}

fn tls_settings(r: &RawConfig, s: &Sources) -> Result<Option<TlsSettings>, ConfigError> {
    let (cert, key) = match (&r.tls.cert_file, &r.tls.key_file) {
        (None, None) => return Ok(None),
        (Some(c), Some(k)) => (c, k),
        (Some(_), None) => {
            return Err(s.invalid("tls.key_file", "is required when tls.cert_file is set"));
        }
        (None, Some(_)) => {
            return Err(s.invalid("tls.cert_file", "is required when tls.key_file is set"));
        }
    };
    for (key_name, path) in [("tls.cert_file", cert), ("tls.key_file", key)] {
        readable_file(path).map_err(|e| s.invalid(key_name, e))?;
    }
    Ok(Some(TlsSettings {
        cert_path: PathBuf::from(cert),
        key_path: PathBuf::from(key),
    }))
}

/// Checks that `path` names a regular file this process can open.
fn readable_file(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("must name a file".into());
    }
    let p = Path::new(path);
    match std::fs::metadata(p) {
        Ok(m) if m.is_file() => std::fs::File::open(p)
            .map(|_| ())
            .map_err(|e| format!("cannot open {path}: {e}")),
        Ok(_) => Err(format!("{path} is not a regular file")),
        Err(e) => Err(format!("cannot read {path}: {e}")),
    }
}

fn read_text_file(path: &str) -> Result<String, String> {
    readable_file(path)?;
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))
}

fn parse_ip(s: &Sources, key: &str, text: &str) -> Result<IpAddr, ConfigError> {
    text.parse::<IpAddr>()
        .map_err(|_| s.invalid(key, format!("must be an IP address (got {text:?})")))
}

fn media_settings(r: &RawConfig, s: &Sources, dev: bool) -> Result<MediaSettings, ConfigError> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get().min(256));
    let workers = as_usize(s.int_in(
        "media.workers",
        r.media.workers,
        i64::try_from(cpus).unwrap_or(1),
        1,
        256,
    )?);
    let bind_ip = match &r.media.bind_ip {
        Some(t) => parse_ip(s, "media.bind_ip", t)?,
        None if dev => IpAddr::V4(Ipv4Addr::LOCALHOST),
        None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    };
    if bind_ip.is_multicast() {
        return Err(s.invalid("media.bind_ip", "must not be a multicast address"));
    }
    let port_base = s.int_in("media.port_base", r.media.port_base, 0, 0, 65_535)?;
    if port_base != 0 {
        let last = port_base + i64::try_from(workers).unwrap_or(256) - 1;
        if port_base < 1024 || last > 65_535 {
            return Err(s.invalid(
                "media.port_base",
                format!(
                    "must be 0 (ephemeral) or a port from 1024 such that port_base + \
                     media.workers - 1 <= 65535 (got {port_base} with {workers} workers)"
                ),
            ));
        }
    }
    let public_ip = match &r.media.public_ip {
        Some(t) => {
            let ip = parse_ip(s, "media.public_ip", t)?;
            if ip.is_unspecified() || ip.is_multicast() {
                return Err(s.invalid(
                    "media.public_ip",
                    format!("must be a unicast address clients can reach (got {ip})"),
                ));
            }
            Some(ip)
        }
        None => None,
    };
    if bind_ip.is_unspecified() && public_ip.is_none() {
        return Err(s.invalid(
            "media.public_ip",
            format!(
                "is required when media.bind_ip is {bind_ip}: ICE candidates need an address \
                 clients can reach (or set media.bind_ip to one)"
            ),
        ));
    }
    Ok(MediaSettings {
        workers,
        bind_ip,
        port_base: u16::try_from(port_base).unwrap_or(0),
        public_ip,
    })
}

fn origin_policy(
    r: &RawConfig,
    s: &Sources,
    dev: bool,
    public_url: &WebUrl,
) -> Result<OriginPolicy, ConfigError> {
    let allow_localhost_any_port = r.origins.allow_localhost_any_port.unwrap_or(dev);
    if allow_localhost_any_port && !dev {
        return Err(s.invalid(
            "origins.allow_localhost_any_port",
            "is a dev-mode convenience and is refused in production mode",
        ));
    }
    let allowed = match &r.origins.allowed {
        None => vec![public_url.origin()],
        Some(list) => {
            let mut out: Vec<String> = Vec::with_capacity(list.len());
            for entry in list {
                let o = WebUrl::parse_origin(entry).map_err(|e| {
                    s.invalid(
                        "origins.allowed",
                        format!("{entry:?} is not an origin (scheme://host[:port]): {e}"),
                    )
                })?;
                let o = o.origin();
                if !out.contains(&o) {
                    out.push(o);
                }
            }
            out
        }
    };
    Ok(OriginPolicy {
        allowed,
        allow_localhost_any_port,
    })
}

fn ice_servers(r: &RawConfig, s: &Sources) -> Result<Vec<IceServer>, ConfigError> {
    let key = "ice_servers";
    let Some(list) = &r.ice_servers else {
        return Ok(Vec::new());
    };
    if list.len() > 16 {
        return Err(s.invalid(key, format!("at most 16 servers (got {})", list.len())));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, server) in list.iter().enumerate() {
        if server.urls.is_empty() || server.urls.len() > 16 {
            return Err(s.invalid(key, format!("entry {i}: urls must hold 1 to 16 URLs")));
        }
        let mut kinds = Vec::with_capacity(server.urls.len());
        for url in &server.urls {
            let is_turn =
                check_ice_url(url).map_err(|e| s.invalid(key, format!("{url:?}: {e}")))?;
            kinds.push(is_turn);
        }
        let all_turn = kinds.iter().all(|t| *t);
        let any_turn = kinds.iter().any(|t| *t);
        if any_turn && !all_turn {
            return Err(s.invalid(
                key,
                format!("entry {i} mixes STUN and TURN URLs; give each its own entry"),
            ));
        }
        let turn = server.turn.unwrap_or(all_turn);
        if turn != all_turn {
            let reason = if turn {
                "turn = true needs turn: or turns: URLs"
            } else {
                "TURN URLs need per-user credentials; set turn = true (or omit it)"
            };
            return Err(s.invalid(key, format!("entry {i}: {reason}")));
        }
        out.push(IceServer {
            urls: server.urls.clone(),
            turn,
        });
    }
    Ok(out)
}

/// RFC 7064 / 7065 URI: `stun(s):host[:port]`, `turn(s):host[:port][?transport=udp|tcp]`.
/// Returns whether it is a TURN URL.
fn check_ice_url(url: &str) -> Result<bool, String> {
    let (scheme, rest) = url
        .split_once(':')
        .ok_or_else(|| "must start with stun:, stuns:, turn: or turns:".to_string())?;
    let is_turn = match scheme {
        "stun" | "stuns" => false,
        "turn" | "turns" => true,
        _ => return Err("the scheme must be stun:, stuns:, turn: or turns:".into()),
    };
    if rest.starts_with("//") {
        return Err("has no // after the scheme (e.g. stun:stun.example.org:3478)".into());
    }
    let (authority, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    if authority.contains(['@', '/']) || authority.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err("must be scheme:host[:port] without user-info, path or spaces".into());
    }
    let (_host, port) = origin::split_host_port(authority)?;
    if let Some(p) = port {
        origin::parse_port(p)?;
    }
    match query {
        None => {}
        Some("transport=udp" | "transport=tcp") if is_turn => {}
        Some(_) if is_turn => return Err("the only query allowed is ?transport=udp|tcp".into()),
        Some(_) => return Err("STUN URLs take no query".into()),
    }
    Ok(is_turn)
}

fn backoff(r: &RawConfig, s: &Sources) -> Result<Vec<u64>, ConfigError> {
    let key = "reconnect_backoff_ms";
    let Some(list) = &r.reconnect_backoff_ms else {
        return Ok(vec![250, 500, 1000, 2000, 5000]);
    };
    if list.is_empty() || list.len() > 16 {
        return Err(s.invalid(
            key,
            format!("must hold 1 to 16 delays (got {})", list.len()),
        ));
    }
    let mut out = Vec::with_capacity(list.len());
    for &v in list {
        if !(0..=600_000).contains(&v) {
            return Err(s.invalid(
                key,
                format!("each delay must be between 0 and 600000 (got {v})"),
            ));
        }
        if out.last().is_some_and(|&last| as_u64(v) < last) {
            return Err(s.invalid(key, format!("delays must not decrease (got {list:?})")));
        }
        out.push(as_u64(v));
    }
    Ok(out)
}

/// Secrets as configured (value or `*_file`), validated but not yet completed.
struct SecretInputs {
    ticket_key: Option<String>,
    turn_secret: Option<String>,
    admin_key: Option<String>,
    dev_token_key: Option<String>,
    turn_needed: bool,
}

/// The value of `key` or the contents of `key_file` (one trailing newline dropped).
fn secret_value(
    s: &Sources,
    key: &str,
    value: &Option<String>,
    file: &Option<String>,
) -> Result<Option<String>, ConfigError> {
    let file_key = format!("{key}_file");
    let text = match (value, file) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(s.invalid(
                &file_key,
                format!("set either {key} or {file_key}, not both"),
            ));
        }
        (Some(v), None) => v.clone(),
        (None, Some(path)) => {
            let mut t = read_text_file(path).map_err(|e| s.invalid(&file_key, e))?;
            if t.ends_with('\n') {
                t.pop();
                if t.ends_with('\r') {
                    t.pop();
                }
            }
            t
        }
    };
    check_secret_text(&text, key == "secrets.admin_key").map_err(|e| s.invalid(key, e))?;
    Ok(Some(text))
}

/// At least 32 bytes, no control characters; the admin key is also limited to
/// visible ASCII because it travels in an `Authorization` header.
fn check_secret_text(text: &str, header_safe: bool) -> Result<(), String> {
    if text.len() < 32 {
        return Err(format!(
            "must be at least 32 bytes long (got {})",
            text.len()
        ));
    }
    if header_safe && !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("may only contain visible ASCII characters (no spaces)".into());
    }
    if text.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

fn configured_secrets(
    r: &RawConfig,
    s: &Sources,
    dev: bool,
    turn_needed: bool,
) -> Result<SecretInputs, ConfigError> {
    let c = &r.secrets;
    let inputs = SecretInputs {
        ticket_key: secret_value(s, "secrets.ticket_key", &c.ticket_key, &c.ticket_key_file)?,
        turn_secret: secret_value(
            s,
            "secrets.turn_secret",
            &c.turn_secret,
            &c.turn_secret_file,
        )?,
        admin_key: secret_value(s, "secrets.admin_key", &c.admin_key, &c.admin_key_file)?,
        dev_token_key: secret_value(
            s,
            "secrets.dev_token_key",
            &c.dev_token_key,
            &c.dev_token_key_file,
        )?,
        turn_needed,
    };
    if !dev {
        if inputs.dev_token_key.is_some() {
            let key = if c.dev_token_key.is_some() {
                "secrets.dev_token_key"
            } else {
                "secrets.dev_token_key_file"
            };
            return Err(s.invalid(
                key,
                "dev endpoints are refused in production mode; remove it",
            ));
        }
        let required = [
            ("secrets.ticket_key", inputs.ticket_key.is_some()),
            ("secrets.admin_key", inputs.admin_key.is_some()),
            (
                "secrets.turn_secret",
                inputs.turn_secret.is_some() || !turn_needed,
            ),
        ];
        for (key, present) in required {
            if !present {
                return Err(s.invalid(
                    key,
                    format!(
                        "is required in production mode (set {key} or {key}_file, at least 32 bytes)"
                    ),
                ));
            }
        }
    }
    Ok(inputs)
}

/// Fills in dev secrets from the data directory (generating them once) and wraps all.
fn finish_secrets(
    inputs: SecretInputs,
    s: &Sources,
    dev: bool,
    dir: &Path,
) -> Result<(Secrets, bool), ConfigError> {
    let mut inputs = inputs;
    let mut fresh_admin_key = false;
    let mut dev_token_key = None;
    if dev {
        let stored = data_dir::dev_secrets(
            dir,
            data_dir::Wanted {
                ticket_key: inputs.ticket_key.is_none(),
                turn_secret: inputs.turn_secret.is_none(),
                admin_key: inputs.admin_key.is_none(),
                dev_token_key: inputs.dev_token_key.is_none(),
            },
        )?;
        fresh_admin_key = stored.fresh_admin_key;
        let path = dir.join(SECRETS_FILE);
        let check = |key: &str, v: Option<String>| -> Result<Option<String>, ConfigError> {
            if let Some(text) = &v {
                check_secret_text(text, key == "admin_key").map_err(|e| ConfigError::Invalid {
                    key: format!("secrets.{key}"),
                    reason: format!("in {}: {e}", path.display()),
                })?;
            }
            Ok(v)
        };
        let v = stored.values;
        inputs.ticket_key = inputs.ticket_key.or(check("ticket_key", v.ticket_key)?);
        inputs.turn_secret = inputs.turn_secret.or(check("turn_secret", v.turn_secret)?);
        inputs.admin_key = inputs.admin_key.or(check("admin_key", v.admin_key)?);
        dev_token_key = inputs
            .dev_token_key
            .or(check("dev_token_key", v.dev_token_key)?);
    }
    let missing = |key: &str| s.invalid(key, "is required in production mode");
    let ticket_key = inputs
        .ticket_key
        .ok_or_else(|| missing("secrets.ticket_key"))?;
    let admin_key = inputs
        .admin_key
        .ok_or_else(|| missing("secrets.admin_key"))?;
    let turn_secret = match inputs.turn_secret {
        Some(t) => t,
        None if inputs.turn_needed => return Err(missing("secrets.turn_secret")),
        // No TURN server uses it: an in-memory random value keeps the type total.
        None => data_dir::generate_secret_text(),
    };
    Ok((
        Secrets {
            ticket_key: Secret::new(ticket_key.into_bytes()),
            turn_secret: Secret::new(turn_secret.into_bytes()),
            admin_key: Secret::new(admin_key),
            dev_token_key: dev_token_key.map(|k| Secret::new(k.into_bytes())),
        },
        fresh_admin_key,
    ))
}

fn parse_algorithm(text: &str) -> Option<TokenAlgorithm> {
    match text.to_ascii_lowercase().as_str() {
        "hs256" => Some(TokenAlgorithm::Hs256),
        "es256" => Some(TokenAlgorithm::Es256),
        "eddsa" => Some(TokenAlgorithm::EdDsa),
        "rs256" => Some(TokenAlgorithm::Rs256),
        _ => None,
    }
}

fn algorithm_name(a: TokenAlgorithm) -> &'static str {
    match a {
        TokenAlgorithm::Hs256 => "hs256",
        TokenAlgorithm::Es256 => "es256",
        TokenAlgorithm::EdDsa => "eddsa",
        TokenAlgorithm::Rs256 => "rs256",
    }
}

/// `[session_tokens]` validated; in dev an absent HS256 secret is filled with the dev
/// token key once it is known.
fn session_token_inputs(
    r: &RawConfig,
    s: &Sources,
    dev: bool,
) -> Result<SessionTokenSettings, ConfigError> {
    let t = &r.session_tokens;
    let algorithm = match &t.algorithm {
        None => TokenAlgorithm::Hs256,
        Some(a) => parse_algorithm(a).ok_or_else(|| {
            s.invalid(
                "session_tokens.algorithm",
                format!("must be hs256, es256, eddsa or rs256 (got {a:?})"),
            )
        })?,
    };
    let hs256_secret = secret_value(
        s,
        "session_tokens.hs256_secret",
        &t.hs256_secret,
        &t.hs256_secret_file,
    )?;
    let name = algorithm_name(algorithm);
    let public_key_pem = match (&t.public_key_file, algorithm) {
        (Some(_), TokenAlgorithm::Hs256) => {
            return Err(s.invalid(
                "session_tokens.public_key_file",
                "is only used with es256, eddsa or rs256; hs256 uses session_tokens.hs256_secret",
            ));
        }
        (Some(path), alg) => {
            let key = "session_tokens.public_key_file";
            let pem = read_text_file(path).map_err(|e| s.invalid(key, e))?;
            let parsed = match alg {
                TokenAlgorithm::Es256 => jsonwebtoken::DecodingKey::from_ec_pem(pem.as_bytes()),
                TokenAlgorithm::EdDsa => jsonwebtoken::DecodingKey::from_ed_pem(pem.as_bytes()),
                _ => jsonwebtoken::DecodingKey::from_rsa_pem(pem.as_bytes()),
            };
            parsed.map_err(|e| {
                s.invalid(
                    key,
                    format!("{path} is not a PEM public key for {name}: {e}"),
                )
            })?;
            Some(pem)
        }
        (None, TokenAlgorithm::Hs256) => None,
        (None, _) => {
            return Err(s.invalid(
                "session_tokens.public_key_file",
                format!("is required with algorithm {name}"),
            ));
        }
    };
    if hs256_secret.is_some() && algorithm != TokenAlgorithm::Hs256 {
        return Err(s.invalid(
            "session_tokens.hs256_secret",
            format!("is only used with algorithm hs256 (algorithm is {name})"),
        ));
    }
    if algorithm == TokenAlgorithm::Hs256 && hs256_secret.is_none() && !dev {
        return Err(s.invalid(
            "session_tokens.hs256_secret",
            "is required in production mode with algorithm hs256 (or set \
             session_tokens.hs256_secret_file, or use es256/eddsa/rs256 with \
             session_tokens.public_key_file)",
        ));
    }
    let claim = |key: &str, v: &Option<String>| -> Result<Option<String>, ConfigError> {
        match v {
            Some(text) if text.is_empty() || text.chars().any(char::is_control) => {
                Err(s.invalid(key, "must be non-empty text without control characters"))
            }
            other => Ok(other.clone()),
        }
    };
    Ok(SessionTokenSettings {
        algorithm,
        hs256_secret: hs256_secret.map(|k| Secret::new(k.into_bytes())),
        public_key_pem,
        audience: claim("session_tokens.audience", &t.audience)?,
        issuer: claim("session_tokens.issuer", &t.issuer)?,
    })
}

impl Config {
    /// `ws(s)://host[:port][/prefix]/v1/rtc/signaling`, from `public_url`.
    pub fn signaling_url(&self) -> String {
        let url = &self.public_url;
        let base = if let Some(rest) = url.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = url.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            url.clone()
        };
        format!("{base}/v1/rtc/signaling")
    }

    /// Whether a browser `Origin` header value may use the API (protocol-v1 §1).
    ///
    /// Exact match against the allow-list (scheme, host and port); in dev also any
    /// `http://localhost[:port]` and `http://127.0.0.1[:port]`. Anything that is not a
    /// strictly well-formed origin (user-info, path, bad port, `null`) is refused. A
    /// request without an `Origin` header is not a browser's and is the caller's to
    /// allow; this function is only for a header that is present.
    pub fn origin_allowed(&self, origin: &str) -> bool {
        let Ok(o) = WebUrl::parse_origin(origin.trim_matches([' ', '\t'])) else {
            return false;
        };
        self.origins
            .allowed
            .iter()
            .any(|a| WebUrl::parse_origin(a).is_ok_and(|a| a == o))
            || (self.origins.allow_localhost_any_port && origin::is_dev_loopback_origin(&o))
    }

    /// The body of `GET /client/capabilities` (http-api.md); no TURN credentials.
    pub fn capabilities_json(&self) -> serde_json::Value {
        let ice_servers: Vec<serde_json::Value> = self
            .ice_servers
            .iter()
            .map(|i| json!({ "urls": i.urls }))
            .collect();
        json!({
            "rtc": {
                "protocol_version": "1.0",
                "signaling_url": self.signaling_url(),
                "signaling_transport": "websocket",
                "topologies": ["sfu"],
                "features": {"voice": true, "video": true, "screenshare": true, "simulcast": true},
                "ice_servers": ice_servers,
                "connection_policy": {
                    "join_timeout_ms": self.limits.join_timeout_ms,
                    "answer_timeout_ms": self.limits.answer_timeout_ms,
                    "ice_restart_enabled": true,
                    "reconnect_backoff_ms": self.reconnect_backoff_ms,
                }
            }
        })
    }

    /// The effective configuration as TOML-like text with every secret shown as
    /// `"[redacted]"`, for `prism check-config` and the start-up log.
    pub fn redacted_summary(&self) -> String {
        fn q(s: &str) -> String {
            serde_json::Value::from(s).to_string()
        }
        fn list<T: fmt::Display>(items: &[T], quote: bool) -> String {
            let parts: Vec<String> = items
                .iter()
                .map(|i| {
                    if quote {
                        q(&i.to_string())
                    } else {
                        i.to_string()
                    }
                })
                .collect();
            format!("[{}]", parts.join(", "))
        }
        // An unset optional key is shown commented out, so the text stays TOML.
        fn opt(key: &str, o: &Option<String>) -> String {
            o.as_deref().map_or_else(
                || format!("# {key} = (not set)"),
                |v| format!("{key} = {}", q(v)),
            )
        }
        fn secret(key: &str, set: bool) -> String {
            if set {
                format!("{key} = \"[redacted]\"")
            } else {
                format!("# {key} = (not set)")
            }
        }
        let mut out = vec![
            format!("mode = {}", q(self.mode.as_str())),
            format!("server_id = {}", q(&self.server_id)),
            format!("listen = {}", q(&self.listen.to_string())),
            format!("public_url = {}", q(&self.public_url)),
            format!("# signaling_url = {}", q(&self.signaling_url())),
            format!("front_threads = {}", self.front_threads),
            format!("data_dir = {}", q(&self.data_dir.display().to_string())),
            format!("ice_transport_policy = {}", q(&self.ice_transport_policy)),
            format!("turn_ttl_s = {}", self.turn_ttl_s),
            format!("ticket_ttl_s = {}", self.ticket_ttl_s),
            format!(
                "reconnect_backoff_ms = {}",
                list(&self.reconnect_backoff_ms, false)
            ),
            format!("metrics_public = {}", self.metrics_public),
            format!("audit_retention_days = {}", self.audit_retention_days),
            format!("call_page = {}", self.call_page),
            format!("call_page_path = {}", q(&self.call_page_path)),
            String::new(),
            "[tls]".into(),
        ];
        match &self.tls {
            Some(t) => {
                out.push(format!(
                    "cert_file = {}",
                    q(&t.cert_path.display().to_string())
                ));
                out.push(format!(
                    "key_file = {}",
                    q(&t.key_path.display().to_string())
                ));
            }
            None => out.push("# (off)".into()),
        }
        out.extend([
            String::new(),
            "[media]".into(),
            format!("workers = {}", self.media.workers),
            format!("bind_ip = {}", q(&self.media.bind_ip.to_string())),
            format!("port_base = {}", self.media.port_base),
            opt("public_ip", &self.media.public_ip.map(|ip| ip.to_string())),
            String::new(),
            "[origins]".into(),
            format!("allowed = {}", list(&self.origins.allowed, true)),
            format!(
                "allow_localhost_any_port = {}",
                self.origins.allow_localhost_any_port
            ),
            String::new(),
            "[session_tokens]".into(),
            format!(
                "algorithm = {}",
                q(algorithm_name(self.session_tokens.algorithm))
            ),
            secret("hs256_secret", self.session_tokens.hs256_secret.is_some()),
            format!(
                "# public key: {}",
                self.session_tokens
                    .public_key_pem
                    .as_ref()
                    .map_or("(none)".to_string(), |p| format!("PEM, {} bytes", p.len()))
            ),
            opt("audience", &self.session_tokens.audience),
            opt("issuer", &self.session_tokens.issuer),
            String::new(),
            "[secrets]".into(),
            secret("ticket_key", true),
            secret("turn_secret", true),
            secret("admin_key", true),
            secret("dev_token_key", self.secrets.dev_token_key.is_some()),
            String::new(),
            "[limits]".into(),
        ]);
        out.extend(self.limits.summary_lines());
        for server in &self.ice_servers {
            out.extend([
                String::new(),
                "[[ice_servers]]".into(),
                format!("urls = {}", list(&server.urls, true)),
                format!("turn = {}", server.turn),
            ]);
        }
        out.push(String::new());
        out.join("\n")
    }
}
