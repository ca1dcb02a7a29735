//! `GET /v1/admin/rooms`: every room with its participants and their tracks —
//! per-track bitrate, loss and layers, per-participant RTT — gathered from the
//! media workers that own them.
//!
//! Each worker answers a `RoomsView` command from its own loop (a bounded wait
//! here, never a lock on the media path). A worker that cannot answer in time
//! (queue full, or slower than [`WAIT`]) is listed in `unavailable_workers` and
//! its rooms are missing from this answer.
//!
//! Shape: `{"rooms": [{"channel_id", "worker", "participant_count", "participants":
//! [{"participant_id", "user_uid", "state", "rtt_ms", "tracks": [{"track_id", "kind",
//! "source", "codec", "bitrate_bps", "loss", "layers": [{"rid", "active",
//! "bitrate_bps"}]}]}]}], "unavailable_workers": [...]}`.

use std::time::Duration;

use crate::api::Ctx;
use crate::engine::command::Command;
use crate::http::response::Response;

/// Longest the view waits for the workers.
const WAIT: Duration = Duration::from_secs(1);

/// The rooms view.
pub fn rooms(ctx: &Ctx<'_>) -> Response {
    let workers = &ctx.app.workers;
    let (tx, rx) = crossbeam_channel::bounded(workers.len().max(1));
    let mut asked = Vec::new();
    let mut unavailable = Vec::new();
    for (i, w) in workers.iter().enumerate() {
        match w.try_send(Command::RoomsView { reply: tx.clone() }) {
            Ok(()) => asked.push(i),
            Err(_) => unavailable.push(i),
        }
    }
    drop(tx);
    let deadline = ctx.now + WAIT;
    let mut rooms = Vec::new();
    let mut answered = Vec::new();
    for _ in 0..asked.len() {
        match rx.recv_deadline(deadline) {
            Ok((worker, mut r)) => {
                answered.push(worker);
                rooms.append(&mut r);
            }
            Err(_) => break,
        }
    }
    unavailable.extend(asked.into_iter().filter(|w| !answered.contains(w)));
    if !unavailable.is_empty() {
        log::warn!("admin rooms view: media worker(s) {unavailable:?} did not answer");
    }
    rooms.sort_by(|a, b| a.channel_id.cmp(&b.channel_id));
    unavailable.sort_unstable();
    Response::json(
        200,
        &serde_json::json!({"rooms": rooms, "unavailable_workers": unavailable}),
    )
}
