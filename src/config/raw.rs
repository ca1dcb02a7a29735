//! The configuration as written, before validation: the TOML file's shape
//! ([`RawConfig`]), the registry of every key ([`all_keys`]: dotted name, value kind,
//! `PRISM_*` variable) and the layering of file, environment and flags into one value.
//!
//! Invariants: the file and every single `PRISM_*` variable or flag are checked
//! against [`RawConfig`] on their own, so a wrong type or an unknown key is reported
//! against the variable or line that carries it; the registry and `RawConfig` describe
//! the same keys (tests check both directions through `prism.example.toml`). Nothing
//! here checks ranges or cross-key rules — `config::build` does, naming the key.
//! [`Sources`] remembers which variable or flag set a key so errors can say so.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::limits::{Limits, RawLimits};
use crate::cli::ServeArgs;

/// `PRISM_*` variables that are not configuration keys and are therefore not refused.
pub const NON_CONFIG_ENV_VARS: &[&str] = &["PRISM_CONFIG", "PRISM_LOG"];

/// The whole file as written; every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub mode: Option<String>,
    pub server_id: Option<String>,
    pub listen: Option<String>,
    pub public_url: Option<String>,
    pub front_threads: Option<i64>,
    pub data_dir: Option<String>,
    pub ice_transport_policy: Option<String>,
    pub turn_ttl_s: Option<i64>,
    pub ticket_ttl_s: Option<i64>,
    pub reconnect_backoff_ms: Option<Vec<i64>>,
    pub metrics_public: Option<bool>,
    pub audit_retention_days: Option<i64>,
    pub call_page: Option<bool>,
    pub call_page_path: Option<String>,
    pub ice_servers: Option<Vec<RawIceServer>>,
    #[serde(default)]
    pub tls: RawTls,
    #[serde(default)]
    pub media: RawMedia,
    #[serde(default)]
    pub origins: RawOrigins,
    #[serde(default)]
    pub session_tokens: RawSessionTokens,
    #[serde(default)]
    pub secrets: RawSecrets,
    #[serde(default)]
    pub limits: RawLimits,
}

/// One `[[ice_servers]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIceServer {
    pub urls: Vec<String>,
    pub turn: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMedia {
    pub workers: Option<i64>,
    pub bind_ip: Option<String>,
    pub port_base: Option<i64>,
    pub public_ip: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOrigins {
    pub allowed: Option<Vec<String>>,
    pub allow_localhost_any_port: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSessionTokens {
    pub algorithm: Option<String>,
    pub hs256_secret: Option<String>,
    pub hs256_secret_file: Option<String>,
    pub public_key_file: Option<String>,
    pub audience: Option<String>,
    pub issuer: Option<String>,
}

/// `[secrets]`, and also the shape of `<data_dir>/secrets.toml` (only the plain
/// values there). Each secret is text; its UTF-8 bytes are the key.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSecrets {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ticket_key: Option<String>,
    #[serde(skip_serializing)]
    pub ticket_key_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub turn_secret: Option<String>,
    #[serde(skip_serializing)]
    pub turn_secret_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_key: Option<String>,
    #[serde(skip_serializing)]
    pub admin_key_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dev_token_key: Option<String>,
    #[serde(skip_serializing)]
    pub dev_token_key_file: Option<String>,
}

/// How a `PRISM_*` variable's text becomes a TOML value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// Taken as is.
    Str,
    /// A decimal integer.
    Int,
    /// `true` or `false`.
    Bool,
    /// Comma-separated strings; empty text is the empty list.
    StrList,
    /// Comma-separated integers.
    IntList,
    /// A TOML inline value (used for `ice_servers`).
    Toml,
}

const KEYS: &[(&str, Kind)] = &[
    ("mode", Kind::Str),
    ("server_id", Kind::Str),
    ("listen", Kind::Str),
    ("public_url", Kind::Str),
    ("front_threads", Kind::Int),
    ("data_dir", Kind::Str),
    ("ice_transport_policy", Kind::Str),
    ("turn_ttl_s", Kind::Int),
    ("ticket_ttl_s", Kind::Int),
    ("reconnect_backoff_ms", Kind::IntList),
    ("metrics_public", Kind::Bool),
    ("audit_retention_days", Kind::Int),
    ("call_page", Kind::Bool),
    ("call_page_path", Kind::Str),
    ("ice_servers", Kind::Toml),
    ("tls.cert_file", Kind::Str),
    ("tls.key_file", Kind::Str),
    ("media.workers", Kind::Int),
    ("media.bind_ip", Kind::Str),
    ("media.port_base", Kind::Int),
    ("media.public_ip", Kind::Str),
    ("origins.allowed", Kind::StrList),
    ("origins.allow_localhost_any_port", Kind::Bool),
    ("session_tokens.algorithm", Kind::Str),
    ("session_tokens.hs256_secret", Kind::Str),
    ("session_tokens.hs256_secret_file", Kind::Str),
    ("session_tokens.public_key_file", Kind::Str),
    ("session_tokens.audience", Kind::Str),
    ("session_tokens.issuer", Kind::Str),
    ("secrets.ticket_key", Kind::Str),
    ("secrets.ticket_key_file", Kind::Str),
    ("secrets.turn_secret", Kind::Str),
    ("secrets.turn_secret_file", Kind::Str),
    ("secrets.admin_key", Kind::Str),
    ("secrets.admin_key_file", Kind::Str),
    ("secrets.dev_token_key", Kind::Str),
    ("secrets.dev_token_key_file", Kind::Str),
];

/// Every configuration key (dotted) with its kind, `[limits]` included.
pub(super) fn all_keys() -> Vec<(String, Kind)> {
    let mut keys: Vec<(String, Kind)> = KEYS.iter().map(|(k, t)| (k.to_string(), *t)).collect();
    keys.extend(
        Limits::TABLE
            .iter()
            .map(|(name, ..)| (format!("limits.{name}"), Kind::Int)),
    );
    keys
}

/// `limits.join_timeout_ms` → `PRISM_LIMITS__JOIN_TIMEOUT_MS`.
pub fn env_var_name(key: &str) -> String {
    format!("PRISM_{}", key.to_ascii_uppercase().replace('.', "__"))
}

/// Which variable or flag set a key (keys absent here came from the file or defaults),
/// so validation errors can name it.
#[derive(Debug, Default)]
pub(crate) struct Sources {
    by_key: HashMap<String, String>,
}

impl Sources {
    fn record(&mut self, key: &str, source: &str) {
        self.by_key.insert(key.to_string(), source.to_string());
    }

    /// The error for `key`, with "(set by PRISM_…)" when a variable or flag set it.
    pub(super) fn invalid(&self, key: &str, reason: impl Into<String>) -> ConfigError {
        let mut reason = reason.into();
        if let Some(source) = self.by_key.get(key) {
            reason.push_str(&format!(" (set by {source})"));
        }
        ConfigError::Invalid {
            key: key.to_string(),
            reason,
        }
    }

    /// `value` (or `default`) if within `min..=max`, else an error naming `key`.
    pub(super) fn int_in(
        &self,
        key: &str,
        value: Option<i64>,
        default: i64,
        min: i64,
        max: i64,
    ) -> Result<i64, ConfigError> {
        let v = value.unwrap_or(default);
        if (min..=max).contains(&v) {
            Ok(v)
        } else {
            Err(self.invalid(key, format!("must be between {min} and {max} (got {v})")))
        }
    }
}

/// File, environment and flags merged (in rising precedence) and checked for shape.
pub(super) struct Layered {
    pub raw: RawConfig,
    pub sources: Sources,
}

/// Merges `file` (path and text), the `PRISM_*` entries of `env` and the set flags.
pub(super) fn layer(
    file: Option<(&Path, &str)>,
    env: &[(String, String)],
    flags: &ServeArgs,
) -> Result<Layered, ConfigError> {
    let mut table = toml::Table::new();
    if let Some((path, text)) = file {
        let shape_error = |e: toml::de::Error| ConfigError::Toml {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        // Deserializing the text itself (not the merged table) keeps line and column
        // information in the error, and names an unknown key where it is written.
        toml::from_str::<RawConfig>(text).map_err(shape_error)?;
        table = text.parse::<toml::Table>().map_err(shape_error)?;
    }

    let keys: HashMap<String, (String, Kind)> = all_keys()
        .into_iter()
        .map(|(key, kind)| (env_var_name(&key), (key, kind)))
        .collect();
    let mut sources = Sources::default();

    let mut env: Vec<&(String, String)> = env
        .iter()
        .filter(|(name, _)| name.starts_with("PRISM_"))
        .filter(|(name, _)| !NON_CONFIG_ENV_VARS.contains(&name.as_str()))
        .collect();
    env.sort();
    for (name, text) in env {
        let (key, kind) = keys
            .get(name)
            .ok_or_else(|| ConfigError::UnknownEnv { name: name.clone() })?;
        sources.record(key, name);
        let value = env_value(*kind, text).map_err(|reason| sources.invalid(key, reason))?;
        set_checked(&mut table, key, value, &sources)?;
    }

    for (key, flag, value) in flag_values(flags, &sources)? {
        sources.record(key, flag);
        set_checked(&mut table, key, value, &sources)?;
    }

    let raw = table
        .try_into::<RawConfig>()
        .map_err(|e| ConfigError::Invalid {
            key: "(merged configuration)".into(),
            reason: e.to_string(),
        })?;
    Ok(Layered { raw, sources })
}

/// Sets `key` to `value` after checking that the key alone has the right shape.
fn set_checked(
    table: &mut toml::Table,
    key: &str,
    value: toml::Value,
    sources: &Sources,
) -> Result<(), ConfigError> {
    let mut alone = toml::Table::new();
    set_path(&mut alone, key, value.clone());
    if let Err(e) = alone.try_into::<RawConfig>() {
        return Err(sources.invalid(key, e.message().trim().to_string()));
    }
    set_path(table, key, value);
    Ok(())
}

/// Inserts `value` at dotted `key`, creating (or replacing non-table) parents. The
/// file's shape was checked before, so a parent that is not a table cannot come
/// from a valid file.
fn set_path(table: &mut toml::Table, key: &str, value: toml::Value) {
    let mut node = table;
    let mut parts = key.split('.').peekable();
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            node.insert(part.to_string(), value);
            return;
        }
        let entry = node
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        node = entry
            .as_table_mut()
            .expect("the entry was made a table just above");
    }
}

fn env_value(kind: Kind, text: &str) -> Result<toml::Value, String> {
    let int = |s: &str| {
        s.trim()
            .parse::<i64>()
            .map_err(|_| format!("must be an integer (got {s:?})"))
    };
    let list = |text: &str| -> Result<Vec<String>, String> {
        if text.trim().is_empty() {
            return Ok(Vec::new());
        }
        text.split(',')
            .map(|item| {
                let item = item.trim();
                if item.is_empty() {
                    Err(format!(
                        "has an empty entry in the comma-separated list {text:?}"
                    ))
                } else {
                    Ok(item.to_string())
                }
            })
            .collect()
    };
    Ok(match kind {
        Kind::Str => toml::Value::String(text.to_string()),
        Kind::Int => toml::Value::Integer(int(text)?),
        Kind::Bool => match text.trim() {
            "true" => toml::Value::Boolean(true),
            "false" => toml::Value::Boolean(false),
            other => return Err(format!("must be true or false (got {other:?})")),
        },
        Kind::StrList => {
            toml::Value::Array(list(text)?.into_iter().map(toml::Value::String).collect())
        }
        Kind::IntList => toml::Value::Array(
            list(text)?
                .iter()
                .map(|s| int(s).map(toml::Value::Integer))
                .collect::<Result<_, _>>()?,
        ),
        Kind::Toml => {
            let mut doc = format!("v = {text}")
                .parse::<toml::Table>()
                .map_err(|e| {
                    format!(
                        "must be a TOML inline value, e.g. [{{ urls = [\"stun:stun.example.org:3478\"] }}]: {}",
                        e.message().trim()
                    )
                })?;
            doc.remove("v")
                .ok_or_else(|| "must be a TOML inline value".to_string())?
        }
    })
}

/// The flags that were given, as (key, flag, value).
fn flag_values(
    flags: &ServeArgs,
    sources: &Sources,
) -> Result<Vec<(&'static str, &'static str, toml::Value)>, ConfigError> {
    let mut out = Vec::new();
    let string = |s: String| toml::Value::String(s);
    if let Some(mode) = flags.mode {
        out.push(("mode", "--mode", string(mode.as_str().to_string())));
    }
    if let Some(listen) = flags.listen {
        out.push(("listen", "--listen", string(socket_addr_text(listen))));
    }
    if let Some(dir) = &flags.data_dir {
        let text = dir.to_str().ok_or_else(|| {
            sources.invalid("data_dir", "the --data-dir path must be valid UTF-8")
        })?;
        out.push(("data_dir", "--data-dir", string(text.to_string())));
    }
    if let Some(n) = flags.media_workers {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        out.push(("media.workers", "--media-workers", toml::Value::Integer(n)));
    }
    if let Some(n) = flags.front_threads {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        out.push(("front_threads", "--front-threads", toml::Value::Integer(n)));
    }
    if let Some(ip) = flags.public_ip {
        out.push(("media.public_ip", "--public-ip", string(ip.to_string())));
    }
    if let Some(url) = &flags.public_url {
        out.push(("public_url", "--public-url", string(url.clone())));
    }
    Ok(out)
}

fn socket_addr_text(addr: SocketAddr) -> String {
    addr.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_follow_the_rule() {
        assert_eq!(
            env_var_name("limits.join_timeout_ms"),
            "PRISM_LIMITS__JOIN_TIMEOUT_MS"
        );
        assert_eq!(env_var_name("mode"), "PRISM_MODE");
    }

    #[test]
    fn every_registered_key_is_a_file_key() {
        for (key, kind) in all_keys() {
            let sample = match kind {
                Kind::Str => toml::Value::String("x".into()),
                Kind::Int => toml::Value::Integer(1),
                Kind::Bool => toml::Value::Boolean(true),
                Kind::StrList => toml::Value::Array(vec![toml::Value::String("x".into())]),
                Kind::IntList => toml::Value::Array(vec![toml::Value::Integer(1)]),
                Kind::Toml => env_value(Kind::Toml, "[{ urls = [\"stun:x\"] }]").unwrap(),
            };
            let mut t = toml::Table::new();
            set_path(&mut t, &key, sample);
            assert!(t.try_into::<RawConfig>().is_ok(), "{key} is not a file key");
        }
    }

    #[test]
    fn env_values_are_typed_by_kind() {
        assert_eq!(env_value(Kind::Int, " 42 ").unwrap().as_integer(), Some(42));
        assert!(env_value(Kind::Int, "4x").is_err());
        assert!(env_value(Kind::Bool, "yes").is_err());
        assert_eq!(
            env_value(Kind::StrList, "a, b")
                .unwrap()
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            env_value(Kind::StrList, "")
                .unwrap()
                .as_array()
                .unwrap()
                .len(),
            0
        );
        assert!(env_value(Kind::StrList, "a,,b").is_err());
        assert!(env_value(Kind::IntList, "1,x").is_err());
        assert!(env_value(Kind::Toml, "[{ urls = ").is_err());
    }
}
