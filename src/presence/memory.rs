//! In-memory presence (the embedded default): one node's members and online users.
//!
//! Owns: channel → members and user → live connection count, behind one mutex so a
//! reader on another thread (the in-process Lane worker) can ask `is_online`. Written
//! only by the bridge thread, once per change; never touched by a shard.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct MemoryStore {
    /// Channel → connection id → member JSON.
    channels: HashMap<Arc<str>, BTreeMap<u64, Arc<str>>>,
    /// User → live identified connections.
    online: HashMap<Arc<str>, u32>,
}

#[derive(Clone, Default)]
pub struct MemoryPresence(Arc<Mutex<MemoryStore>>);

impl MemoryPresence {
    fn store(&self) -> std::sync::MutexGuard<'_, MemoryStore> {
        // A panic while holding it cannot leave the maps half-updated in a way that
        // matters more than losing presence: keep serving.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn online(&self, user: &Arc<str>) {
        *self.store().online.entry(user.clone()).or_insert(0) += 1;
    }

    pub fn offline(&self, user: &str) {
        let mut store = self.store();
        if let Some(count) = store.online.get_mut(user) {
            *count -= 1;
            if *count == 0 {
                store.online.remove(user);
            }
        }
    }

    pub fn join(&self, channel: &Arc<str>, conn: u64, member: Arc<str>) {
        self.store().channels.entry(channel.clone()).or_default().insert(conn, member);
    }

    pub fn leave(&self, channel: &str, conn: u64) {
        let mut store = self.store();
        if let Some(members) = store.channels.get_mut(channel) {
            members.remove(&conn);
            if members.is_empty() {
                store.channels.remove(channel);
            }
        }
    }

    pub fn is_online(&self, user: &str) -> bool {
        self.store().online.contains_key(user)
    }

    /// Member JSON objects, in connection order.
    pub fn members(&self, channel: &str) -> Vec<Arc<str>> {
        self.store().channels.get(channel).map(|m| m.values().cloned().collect()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_connections_per_user() {
        let p = MemoryPresence::default();
        let ann: Arc<str> = "ann".into();
        p.online(&ann);
        p.online(&ann);
        p.offline("ann");
        assert!(p.is_online("ann"));
        p.offline("ann");
        assert!(!p.is_online("ann"));
        let room: Arc<str> = "room".into();
        p.join(&room, 2, "{\"conn\":2}".into());
        p.join(&room, 1, "{\"conn\":1}".into());
        assert_eq!(p.members("room").iter().map(|m| &**m).collect::<Vec<_>>(), ["{\"conn\":1}", "{\"conn\":2}"]);
        p.leave("room", 1);
        p.leave("room", 2);
        assert!(p.members("room").is_empty());
    }
}
