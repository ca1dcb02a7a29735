//! The room directory: which media worker owns which channel, and a read-only
//! snapshot of each room's participants for the HTTP API.
//!
//! Control-plane state, read on join and by HTTP handlers, written by workers when
//! membership or tracks change — never per packet. Placement: a new room goes to
//! the worker with the fewest participants (ties: lowest index). A room's entry
//! stays while the room exists; the owning worker removes it when the room has been
//! empty for a while, and a worker that receives a join for a channel it no longer
//! owns re-claims it through [`Directory::claim`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use crate::ids::ChannelId;
use crate::protocol::Participant;

/// Index of a media worker.
pub type WorkerId = usize;

/// What the directory knows of one room.
#[derive(Debug, Clone)]
pub struct RoomEntry {
    /// The worker that owns it.
    pub worker: WorkerId,
    /// Its participants as of the last change.
    pub participants: Arc<Vec<Participant>>,
}

/// Shared directory of rooms.
#[derive(Debug)]
pub struct Directory {
    rooms: RwLock<HashMap<ChannelId, RoomEntry>>,
    load: Vec<AtomicUsize>,
}

impl Directory {
    /// A directory for `workers` media workers.
    pub fn new(workers: usize) -> Self {
        Self {
            rooms: RwLock::new(HashMap::new()),
            load: (0..workers.max(1)).map(|_| AtomicUsize::new(0)).collect(),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<ChannelId, RoomEntry>> {
        match self.rooms.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<ChannelId, RoomEntry>> {
        match self.rooms.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// The worker that owns `channel`, placing the room if it has none.
    pub fn place(&self, channel: &ChannelId) -> WorkerId {
        if let Some(e) = self.read().get(channel) {
            return e.worker;
        }
        let mut rooms = self.write();
        if let Some(e) = rooms.get(channel) {
            return e.worker;
        }
        let worker = self.least_loaded();
        rooms.insert(
            channel.clone(),
            RoomEntry {
                worker,
                participants: Arc::new(Vec::new()),
            },
        );
        worker
    }

    /// The owner of `channel`, if the room exists.
    pub fn owner(&self, channel: &ChannelId) -> Option<WorkerId> {
        self.read().get(channel).map(|e| e.worker)
    }

    /// Worker `worker` claims `channel`: true when it owns it (now or already).
    pub fn claim(&self, channel: &ChannelId, worker: WorkerId) -> bool {
        let mut rooms = self.write();
        match rooms.get(channel) {
            Some(e) => e.worker == worker,
            None => {
                rooms.insert(
                    channel.clone(),
                    RoomEntry {
                        worker,
                        participants: Arc::new(Vec::new()),
                    },
                );
                true
            }
        }
    }

    /// Publishes a room's participant list (called by the owning worker).
    pub fn update(&self, channel: &ChannelId, worker: WorkerId, participants: Vec<Participant>) {
        let mut rooms = self.write();
        if let Some(e) = rooms.get_mut(channel).filter(|e| e.worker == worker) {
            e.participants = Arc::new(participants);
        }
    }

    /// Removes an empty room (called by the owning worker).
    pub fn remove(&self, channel: &ChannelId, worker: WorkerId) {
        let mut rooms = self.write();
        if rooms.get(channel).is_some_and(|e| e.worker == worker) {
            rooms.remove(channel);
        }
    }

    /// A room's participants (empty when there is no such room).
    pub fn participants(&self, channel: &ChannelId) -> Arc<Vec<Participant>> {
        self.read()
            .get(channel)
            .map(|e| e.participants.clone())
            .unwrap_or_default()
    }

    /// Every room and its entry (admin views).
    pub fn rooms(&self) -> Vec<(ChannelId, RoomEntry)> {
        self.read()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Number of rooms.
    pub fn room_count(&self) -> usize {
        self.read().len()
    }

    /// Sets a worker's participant count (placement input).
    pub fn set_load(&self, worker: WorkerId, participants: usize) {
        if let Some(l) = self.load.get(worker) {
            l.store(participants, Ordering::Relaxed);
        }
    }

    fn least_loaded(&self) -> WorkerId {
        (0..self.load.len())
            .min_by_key(|&w| (self.load[w].load(Ordering::Relaxed), w))
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_on_least_loaded_and_is_sticky() {
        let d = Directory::new(2);
        d.set_load(0, 5);
        let a = ChannelId::parse("a").unwrap();
        assert_eq!(d.place(&a), 1);
        d.set_load(1, 10);
        assert_eq!(d.place(&a), 1, "an existing room stays where it is");
        let b = ChannelId::parse("b").unwrap();
        assert_eq!(d.place(&b), 0);
        assert!(!d.claim(&b, 1));
        d.remove(&b, 0);
        assert!(d.claim(&b, 1));
        assert_eq!(d.owner(&b), Some(1));
    }
}
