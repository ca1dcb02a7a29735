//! Moderation on live sessions of this worker: kick, ban, timeout
//! ([`Command::Moderate`](super::command::Command::Moderate)).
//!
//! A cut session gets `rtc.kicked` and its socket is closed (4410 kicked, 4403
//! banned); the others see its tracks unpublished, then `rtc.participant.left`,
//! with the same reason (`kicked` or `banned`; a `listen_only: false` timeout cuts
//! as `kicked`). Every cut counts in `rtc_forced_disconnect_total{reason}` with
//! reason `kicked`, `banned` or `timeout`. A listen-only timeout unpublishes the
//! user's tracks (`rtc.track.unpublished` reason `publish_blocked` to the others)
//! and tells the user with an `rtc.error` event `publish_blocked`; the session stays.

use std::time::Instant;

use super::Engine;
use super::command::ModerateAction;
use super::link::SessionEvent;
use crate::ids::SessionId;
use crate::protocol::{ErrorCode, KickReason, LeaveReason, ServerMessage, UnpublishReason};

impl Engine {
    /// Applies `action` to this worker's live sessions; returns how many it cut or
    /// changed.
    pub(super) fn moderate(&mut self, now: Instant, action: ModerateAction) -> usize {
        let matching = |engine: &Engine,
                        pred: &dyn Fn(&super::Member) -> bool,
                        channel: Option<&crate::ids::ChannelId>|
         -> Vec<SessionId> {
            engine
                .rooms
                .iter()
                .filter(|(ch, _)| channel.is_none_or(|c| c == *ch))
                .flat_map(|(_, room)| room.members.iter())
                .filter(|m| pred(m))
                .map(|m| m.session_id.clone())
                .collect()
        };
        match action {
            ModerateAction::Kick {
                channel,
                user,
                device,
            } => {
                let sids = matching(
                    self,
                    &|m| m.user == user && device.as_ref().is_none_or(|d| &m.device == d),
                    Some(&channel),
                );
                for sid in &sids {
                    self.cut(now, sid, LeaveReason::Kicked, KickReason::Kicked, "kicked");
                }
                sids.len()
            }
            ModerateAction::Ban { user, channel } => {
                let sids = matching(self, &|m| m.user == user, channel.as_ref());
                for sid in &sids {
                    self.cut(now, sid, LeaveReason::Banned, KickReason::Banned, "banned");
                }
                sids.len()
            }
            ModerateAction::Timeout {
                channel,
                user,
                listen_only,
            } => {
                let sids = matching(self, &|m| m.user == user, Some(&channel));
                for sid in &sids {
                    if listen_only {
                        self.block_publishing(sid);
                    } else {
                        self.cut(now, sid, LeaveReason::Kicked, KickReason::Kicked, "timeout");
                    }
                }
                sids.len()
            }
        }
    }

    fn cut(
        &mut self,
        now: Instant,
        sid: &SessionId,
        leave: LeaveReason,
        kick: KickReason,
        metric: &str,
    ) {
        log::info!("session cut by moderation session_id={sid} reason={metric}");
        self.remove_member(now, sid, leave, Some(kick));
        self.metrics.forced_disconnect(metric);
    }

    /// Unpublishes every track of `sid` (moderation timeout, listen-only).
    fn block_publishing(&mut self, sid: &SessionId) {
        let Some(m) = self.member_mut(sid) else {
            return;
        };
        let tracks: Vec<_> = std::mem::take(&mut m.tracks)
            .into_iter()
            .map(|t| t.track_id)
            .collect();
        m.link.send(SessionEvent::Event(ServerMessage::Error {
            code: ErrorCode::PublishBlocked,
            message: format!(
                "timed out in this channel: {} published track(s) stopped, publishing is refused until the timeout ends",
                tracks.len()
            ),
            retry_after_ms: None,
        }));
        for track_id in tracks {
            self.media.remove_track(&track_id);
            self.track_owner.remove(&track_id);
            self.broadcast_except(
                sid,
                &ServerMessage::TrackUnpublished {
                    track_id,
                    session_id: sid.clone(),
                    reason: UnpublishReason::PublishBlocked,
                },
            );
        }
        self.publish_snapshot_of(sid);
    }
}
