//! Moderation state: bans (server-wide or per channel), timeouts (per channel) and
//! channel locks, as the control plane sees them.
//!
//! One [`Moderation`] per process, shared by `Arc`: the HTTP API changes it (after
//! the store has committed the change), ticket minting and `rtc.join` on the front
//! threads and offers on the media workers read it. It is control-plane state — a
//! small mutex held for a hash look-up, never touched per packet.
//!
//! Invariants: every entry here is also in the store (it is loaded from there at
//! start and only changed after a durable write); an entry whose expiry has passed
//! no longer refuses anything, and the housekeeping thread removes it
//! ([`Moderation::take_expired`]) within its tick. Times are Unix milliseconds.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use serde::Serialize;

use crate::auth::rfc3339_utc_ms;
use crate::ids::{ChannelId, UserUid};
use crate::protocol::ErrorCode;

/// Entries of one kind kept at most (bans, timeouts or locks): an admin script gone
/// wrong gets `409` rather than growing the process without bound.
pub const MAX_ENTRIES: usize = 100_000;

/// Longest `reason` accepted, in characters.
pub const MAX_REASON_CHARS: usize = 256;

/// A ban: `channel` `None` is server-wide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    /// Who.
    pub user: UserUid,
    /// Where (`None`: every channel).
    pub channel: Option<ChannelId>,
    /// Why (free text from the admin).
    pub reason: String,
    /// When it lapses (Unix ms); `None`: never.
    pub expires_at_ms: Option<u64>,
    /// Who set it (the admin's `X-Prism-Actor`, or `admin`).
    pub actor: String,
    /// When it was set (Unix ms).
    pub created_at_ms: u64,
}

/// A timeout in one channel: publishing is refused until `until_ms`; with
/// `listen_only: false` the user may not be in the channel at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeout {
    /// Where.
    pub channel: ChannelId,
    /// Who.
    pub user: UserUid,
    /// When it lapses (Unix ms).
    pub until_ms: u64,
    /// `true`: may stay and listen; `false`: cut and kept out.
    pub listen_only: bool,
    /// Why.
    pub reason: String,
    /// Who set it.
    pub actor: String,
    /// When it was set (Unix ms).
    pub created_at_ms: u64,
}

/// A channel lock: new join tickets are refused except to holders of an exempt role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock {
    /// Which channel.
    pub channel: ChannelId,
    /// Roles still admitted.
    pub exempt_roles: Vec<String>,
    /// Why.
    pub reason: String,
    /// Who set it.
    pub actor: String,
    /// When it was set (Unix ms).
    pub created_at_ms: u64,
}

/// One change to the moderation state (persisted, then applied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModerationChange {
    /// Sets (or replaces) a ban.
    PutBan(Ban),
    /// Lifts a ban.
    DeleteBan {
        /// Who.
        user: UserUid,
        /// Which one (`None`: the server-wide one).
        channel: Option<ChannelId>,
    },
    /// Sets (or replaces) a timeout.
    PutTimeout(Timeout),
    /// Lifts a timeout.
    DeleteTimeout {
        /// Where.
        channel: ChannelId,
        /// Who.
        user: UserUid,
    },
    /// Locks a channel (or replaces its lock).
    PutLock(Lock),
    /// Unlocks a channel.
    DeleteLock {
        /// Which.
        channel: ChannelId,
    },
}

/// Why a user may not have a ticket for, or join, a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The wire code (`banned`, `channel_locked`, `publish_blocked`).
    pub code: ErrorCode,
    /// A message for the client.
    pub message: String,
}

#[derive(Debug, Default)]
struct State {
    bans: HashMap<(UserUid, Option<ChannelId>), Ban>,
    timeouts: HashMap<(ChannelId, UserUid), Timeout>,
    locks: HashMap<ChannelId, Lock>,
}

/// The process's moderation state. See the module documentation.
#[derive(Debug, Default)]
pub struct Moderation {
    state: Mutex<State>,
}

fn live(expiry: Option<u64>, now_ms: u64) -> bool {
    expiry.is_none_or(|e| now_ms < e)
}

impl Moderation {
    /// Empty state.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            // Every update is a single map operation: a panic cannot leave it torn.
            Err(p) => p.into_inner(),
        }
    }

    /// Whether one more entry of the kind `change` adds fits under [`MAX_ENTRIES`]
    /// (a replacement always fits).
    pub fn has_room_for(&self, change: &ModerationChange) -> bool {
        let s = self.lock();
        match change {
            ModerationChange::PutBan(b) => {
                s.bans.len() < MAX_ENTRIES
                    || s.bans.contains_key(&(b.user.clone(), b.channel.clone()))
            }
            ModerationChange::PutTimeout(t) => {
                s.timeouts.len() < MAX_ENTRIES
                    || s.timeouts
                        .contains_key(&(t.channel.clone(), t.user.clone()))
            }
            ModerationChange::PutLock(l) => {
                s.locks.len() < MAX_ENTRIES || s.locks.contains_key(&l.channel)
            }
            _ => true,
        }
    }

    /// Applies a change; returns whether it changed anything (a delete of a missing
    /// entry does not).
    pub fn apply(&self, change: &ModerationChange) -> bool {
        let mut s = self.lock();
        match change {
            ModerationChange::PutBan(b) => {
                s.bans
                    .insert((b.user.clone(), b.channel.clone()), b.clone());
                true
            }
            ModerationChange::DeleteBan { user, channel } => {
                s.bans.remove(&(user.clone(), channel.clone())).is_some()
            }
            ModerationChange::PutTimeout(t) => {
                s.timeouts
                    .insert((t.channel.clone(), t.user.clone()), t.clone());
                true
            }
            ModerationChange::DeleteTimeout { channel, user } => s
                .timeouts
                .remove(&(channel.clone(), user.clone()))
                .is_some(),
            ModerationChange::PutLock(l) => {
                s.locks.insert(l.channel.clone(), l.clone());
                true
            }
            ModerationChange::DeleteLock { channel } => s.locks.remove(channel).is_some(),
        }
    }

    /// The ban that keeps `user` out of `channel` at `now_ms` (server-wide first).
    pub fn ban_for(&self, user: &UserUid, channel: &ChannelId, now_ms: u64) -> Option<Ban> {
        let s = self.lock();
        [None, Some(channel.clone())]
            .into_iter()
            .filter_map(|c| s.bans.get(&(user.clone(), c)))
            .find(|b| live(b.expires_at_ms, now_ms))
            .cloned()
    }

    /// The timeout of `user` in `channel` at `now_ms`.
    pub fn timeout_for(&self, channel: &ChannelId, user: &UserUid, now_ms: u64) -> Option<Timeout> {
        self.lock()
            .timeouts
            .get(&(channel.clone(), user.clone()))
            .filter(|t| live(Some(t.until_ms), now_ms))
            .cloned()
    }

    /// The lock of `channel`.
    pub fn lock_for(&self, channel: &ChannelId) -> Option<Lock> {
        self.lock().locks.get(channel).cloned()
    }

    /// Whether `user` with `roles` may get a join ticket for, or join, `channel` at
    /// `now_ms`: not banned there, not timed out of it (`listen_only: false`), and
    /// the channel not locked unless one of `roles` is exempt.
    pub fn check_join(
        &self,
        channel: &ChannelId,
        user: &UserUid,
        roles: &[String],
        now_ms: u64,
    ) -> Result<(), Refusal> {
        if let Some(b) = self.ban_for(user, channel, now_ms) {
            let scope = if b.channel.is_some() {
                "from this channel"
            } else {
                "from this server"
            };
            let until = b
                .expires_at_ms
                .map(|e| format!(" until {}", rfc3339_utc_ms(e)))
                .unwrap_or_default();
            return Err(Refusal {
                code: ErrorCode::Banned,
                message: format!("banned {scope}{until}"),
            });
        }
        if let Some(t) = self.timeout_for(channel, user, now_ms)
            && !t.listen_only
        {
            return Err(Refusal {
                code: ErrorCode::PublishBlocked,
                message: format!(
                    "timed out of this channel until {}",
                    rfc3339_utc_ms(t.until_ms)
                ),
            });
        }
        if let Some(l) = self.lock_for(channel)
            && !roles.iter().any(|r| l.exempt_roles.contains(r))
        {
            return Err(Refusal {
                code: ErrorCode::ChannelLocked,
                message: "the channel is locked".into(),
            });
        }
        Ok(())
    }

    /// Removes every ban and timeout whose expiry is at or before `now_ms` and
    /// returns the deletions, for the store and the audit.
    pub fn take_expired(&self, now_ms: u64) -> Vec<ModerationChange> {
        let mut s = self.lock();
        let mut gone = Vec::new();
        s.bans.retain(|(user, channel), b| {
            let keep = live(b.expires_at_ms, now_ms);
            if !keep {
                gone.push(ModerationChange::DeleteBan {
                    user: user.clone(),
                    channel: channel.clone(),
                });
            }
            keep
        });
        s.timeouts.retain(|(channel, user), t| {
            let keep = live(Some(t.until_ms), now_ms);
            if !keep {
                gone.push(ModerationChange::DeleteTimeout {
                    channel: channel.clone(),
                    user: user.clone(),
                });
            }
            keep
        });
        gone
    }

    /// Every ban, oldest first.
    pub fn bans(&self) -> Vec<Ban> {
        let mut v: Vec<Ban> = self.lock().bans.values().cloned().collect();
        v.sort_by(|a, b| (a.created_at_ms, &a.user).cmp(&(b.created_at_ms, &b.user)));
        v
    }

    /// Every timeout, oldest first.
    pub fn timeouts(&self) -> Vec<Timeout> {
        let mut v: Vec<Timeout> = self.lock().timeouts.values().cloned().collect();
        v.sort_by(|a, b| (a.created_at_ms, &a.user).cmp(&(b.created_at_ms, &b.user)));
        v
    }

    /// Every lock, oldest first.
    pub fn locks(&self) -> Vec<Lock> {
        let mut v: Vec<Lock> = self.lock().locks.values().cloned().collect();
        v.sort_by(|a, b| (a.created_at_ms, &a.channel).cmp(&(b.created_at_ms, &b.channel)));
        v
    }
}

/// JSON of a ban for the admin API.
#[derive(Serialize)]
pub struct BanView<'a> {
    user_uid: &'a UserUid,
    channel_id: Option<&'a ChannelId>,
    reason: &'a str,
    expires_at: Option<String>,
    actor: &'a str,
    created_at: String,
}

impl Ban {
    /// The admin API's view.
    pub fn view(&self) -> BanView<'_> {
        BanView {
            user_uid: &self.user,
            channel_id: self.channel.as_ref(),
            reason: &self.reason,
            expires_at: self.expires_at_ms.map(rfc3339_utc_ms),
            actor: &self.actor,
            created_at: rfc3339_utc_ms(self.created_at_ms),
        }
    }
}

/// JSON of a timeout for the admin API.
#[derive(Serialize)]
pub struct TimeoutView<'a> {
    channel_id: &'a ChannelId,
    user_uid: &'a UserUid,
    until: String,
    listen_only: bool,
    reason: &'a str,
    actor: &'a str,
    created_at: String,
}

impl Timeout {
    /// The admin API's view.
    pub fn view(&self) -> TimeoutView<'_> {
        TimeoutView {
            channel_id: &self.channel,
            user_uid: &self.user,
            until: rfc3339_utc_ms(self.until_ms),
            listen_only: self.listen_only,
            reason: &self.reason,
            actor: &self.actor,
            created_at: rfc3339_utc_ms(self.created_at_ms),
        }
    }
}

/// JSON of a lock for the admin API.
#[derive(Serialize)]
pub struct LockView<'a> {
    channel_id: &'a ChannelId,
    exempt_roles: &'a [String],
    reason: &'a str,
    actor: &'a str,
    created_at: String,
}

impl Lock {
    /// The admin API's view.
    pub fn view(&self) -> LockView<'_> {
        LockView {
            channel_id: &self.channel,
            exempt_roles: &self.exempt_roles,
            reason: &self.reason,
            actor: &self.actor,
            created_at: rfc3339_utc_ms(self.created_at_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> UserUid {
        UserUid::parse(s).unwrap()
    }
    fn c(s: &str) -> ChannelId {
        ChannelId::parse(s).unwrap()
    }
    fn ban(user: &str, channel: Option<&str>, expires: Option<u64>) -> Ban {
        Ban {
            user: u(user),
            channel: channel.map(c),
            reason: "r".into(),
            expires_at_ms: expires,
            actor: "admin".into(),
            created_at_ms: 1,
        }
    }

    #[test]
    fn bans_apply_server_wide_or_per_channel_until_they_expire() {
        let m = Moderation::new();
        m.apply(&ModerationChange::PutBan(ban("a", None, Some(5000))));
        m.apply(&ModerationChange::PutBan(ban("b", Some("x"), None)));
        assert_eq!(
            m.check_join(&c("y"), &u("a"), &[], 4999).unwrap_err().code,
            ErrorCode::Banned
        );
        assert!(m.check_join(&c("y"), &u("a"), &[], 5000).is_ok(), "lapsed");
        assert!(m.check_join(&c("x"), &u("b"), &[], 0).is_err());
        assert!(
            m.check_join(&c("y"), &u("b"), &[], 0).is_ok(),
            "other channel"
        );
        let gone = m.take_expired(5000);
        assert_eq!(gone.len(), 1);
        assert_eq!(m.bans().len(), 1);
        assert!(m.apply(&ModerationChange::DeleteBan {
            user: u("b"),
            channel: Some(c("x"))
        }));
        assert!(!m.apply(&ModerationChange::DeleteBan {
            user: u("b"),
            channel: Some(c("x"))
        }));
        assert!(m.check_join(&c("x"), &u("b"), &[], 0).is_ok());
    }

    #[test]
    fn locks_admit_exempt_roles_and_timeouts_keep_out_unless_listen_only() {
        let m = Moderation::new();
        m.apply(&ModerationChange::PutLock(Lock {
            channel: c("x"),
            exempt_roles: vec!["moderator".into()],
            reason: String::new(),
            actor: "admin".into(),
            created_at_ms: 0,
        }));
        let r = m
            .check_join(&c("x"), &u("a"), &["member".into()], 0)
            .unwrap_err();
        assert_eq!(r.code, ErrorCode::ChannelLocked);
        assert!(
            m.check_join(&c("x"), &u("a"), &["moderator".into()], 0)
                .is_ok()
        );
        let t = |listen_only| Timeout {
            channel: c("y"),
            user: u("a"),
            until_ms: 100,
            listen_only,
            reason: String::new(),
            actor: "admin".into(),
            created_at_ms: 0,
        };
        m.apply(&ModerationChange::PutTimeout(t(true)));
        assert!(m.check_join(&c("y"), &u("a"), &[], 0).is_ok());
        assert!(m.timeout_for(&c("y"), &u("a"), 99).is_some());
        m.apply(&ModerationChange::PutTimeout(t(false)));
        assert_eq!(
            m.check_join(&c("y"), &u("a"), &[], 0).unwrap_err().code,
            ErrorCode::PublishBlocked
        );
        assert!(m.timeout_for(&c("y"), &u("a"), 100).is_none());
        assert_eq!(m.take_expired(100).len(), 1);
        assert!(m.timeouts().is_empty());
    }
}
