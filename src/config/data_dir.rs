//! What configuration keeps in the data directory: the directory itself (created
//! `0700`), the generated `server-id`, and in dev mode the generated secrets in
//! `secrets.toml` (`0600`).
//!
//! Invariants: a value is generated at most once per data directory — it is created
//! with a hard link from a private temporary file, which fails if another process got
//! there first, and then the winner's value is read back; `secrets.toml` is never
//! readable by group or others (a file that is is refused, not silently used).
//! Called by `config::build` after every pure check has passed, so a refused
//! configuration writes nothing.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;

use super::ConfigError;
use super::raw::RawSecrets;
use crate::secret::{fill_random, random_hex};

/// File name of the dev secrets inside the data directory.
pub const SECRETS_FILE: &str = "secrets.toml";
/// File name of the generated server id inside the data directory.
pub const SERVER_ID_FILE: &str = "server-id";

fn io_err(path: &Path, source: io::Error) -> ConfigError {
    ConfigError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates the data directory (mode 0700) unless it exists; refuses a non-directory.
pub(super) fn ensure_dir(dir: &Path) -> Result<(), ConfigError> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(ConfigError::Invalid {
            key: "data_dir".into(),
            reason: format!("{} exists and is not a directory", dir.display()),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io_err(dir, e)),
        Err(e) => Err(io_err(dir, e)),
    }
}

/// 32 random bytes as 43 characters of unpadded base64url: printable, so it can be
/// pasted into coturn or an identity service, and its UTF-8 bytes are the key.
pub(super) fn generate_secret_text() -> String {
    let mut bytes = [0u8; 32];
    fill_random(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Writes `contents` to `path` (mode 0600) only if `path` does not exist yet.
/// Returns false when another writer created it first.
fn create_once(path: &Path, contents: &str) -> Result<bool, ConfigError> {
    let tmp = temp_path(path);
    write_private(&tmp, contents)?;
    let linked = fs::hard_link(&tmp, path);
    // The temporary name has served its purpose either way.
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(io_err(path, e)),
    }
}

/// Replaces `path` atomically with `contents` (mode 0600).
fn replace(path: &Path, contents: &str) -> Result<(), ConfigError> {
    let tmp = temp_path(path);
    write_private(&tmp, contents)?;
    fs::rename(&tmp, path).map_err(|e| io_err(path, e))
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.tmp", random_hex(6)));
    path.with_file_name(name)
}

fn write_private(path: &Path, contents: &str) -> Result<(), ConfigError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io_err(path, e))?;
    f.write_all(contents.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| io_err(path, e))
}

/// The server id stored in the data directory, generated (`prism-<8 hex>`) on first use.
pub(super) fn server_id(dir: &Path) -> Result<String, ConfigError> {
    let path = dir.join(SERVER_ID_FILE);
    for _ in 0..2 {
        match fs::read_to_string(&path) {
            Ok(text) => {
                let id = text.trim_end_matches(['\n', '\r']);
                return match crate::ids::check_id(id, 64) {
                    Ok(()) => Ok(id.to_string()),
                    Err(e) => Err(ConfigError::Invalid {
                        key: "server_id".into(),
                        reason: format!("{} holds an invalid server id: {e}", path.display()),
                    }),
                };
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let id = format!("prism-{}", random_hex(4));
                if create_once(&path, &format!("{id}\n"))? {
                    return Ok(id);
                }
            }
            Err(e) => return Err(io_err(&path, e)),
        }
    }
    Err(io_err(
        &path,
        io::Error::other("appeared and vanished while being created"),
    ))
}

/// Which dev secrets to supply from the store: the ones not configured.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Wanted {
    pub ticket_key: bool,
    pub turn_secret: bool,
    pub admin_key: bool,
    pub dev_token_key: bool,
}

/// Dev secrets read from, or generated into, `<dir>/secrets.toml`.
pub(super) struct Stored {
    pub values: RawSecrets,
    /// True when this call generated the admin key.
    pub fresh_admin_key: bool,
}

/// Reads `secrets.toml`, generates what is wanted and missing, and stores it.
pub(super) fn dev_secrets(dir: &Path, wanted: Wanted) -> Result<Stored, ConfigError> {
    let path = dir.join(SECRETS_FILE);
    for _ in 0..2 {
        let existing = read_secrets(&path)?;
        let existed = existing.is_some();
        let mut values = existing.unwrap_or_default();
        let mut generated_admin = false;
        let mut changed = false;
        let mut fill = |want: bool, slot: &mut Option<String>| {
            if want && slot.is_none() {
                *slot = Some(generate_secret_text());
                changed = true;
                true
            } else {
                false
            }
        };
        fill(wanted.ticket_key, &mut values.ticket_key);
        fill(wanted.turn_secret, &mut values.turn_secret);
        generated_admin |= fill(wanted.admin_key, &mut values.admin_key);
        fill(wanted.dev_token_key, &mut values.dev_token_key);
        if !changed {
            return Ok(Stored {
                values,
                fresh_admin_key: false,
            });
        }
        let text = format!(
            "# Generated by prism in dev mode; keep private (mode 0600).\n\
             # Each value is used as the key's UTF-8 bytes.\n{}",
            toml::to_string(&values).map_err(|e| io_err(&path, io::Error::other(e)))?
        );
        if existed {
            replace(&path, &text)?;
        } else if !create_once(&path, &text)? {
            // Another process (e.g. `prism dev-token` started alongside `prism serve`)
            // created it first: use its values.
            continue;
        }
        return Ok(Stored {
            values,
            fresh_admin_key: generated_admin,
        });
    }
    Err(io_err(
        &path,
        io::Error::other("appeared and vanished while being created"),
    ))
}

fn read_secrets(path: &Path) -> Result<Option<RawSecrets>, ConfigError> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path, e)),
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(io_err(
            path,
            io::Error::other(format!(
                "is readable or writable by group or others (mode {mode:o}); run `chmod 600` on it"
            )),
        ));
    }
    let text = fs::read_to_string(path).map_err(|e| io_err(path, e))?;
    let values: RawSecrets = toml::from_str(&text).map_err(|e| ConfigError::Toml {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    if values.ticket_key_file.is_some()
        || values.turn_secret_file.is_some()
        || values.admin_key_file.is_some()
        || values.dev_token_key_file.is_some()
    {
        return Err(ConfigError::Toml {
            path: path.to_path_buf(),
            message: "holds only plain values, no *_file keys".into(),
        });
    }
    Ok(Some(values))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secret_text_is_43_url_safe_chars() {
        let s = generate_secret_text();
        assert_eq!(s.len(), 43);
        assert!(
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_ne!(s, generate_secret_text());
    }
}
