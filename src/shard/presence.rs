//! A shard's side of presence: it reports connects of identified users, joins, leaves
//! and disconnects to the bridge, and never loses one to a full bridge inbox (it parks
//! them in order and retries each loop turn and wheel tick, bounded and counted).
//!
//! Owns: the shard's presence retry queue. Runs on: its shard.

use super::{Conn, Shard};
use crate::fanout::ToBridge;
use crate::presence::{Change, PRESENCE_RETRY_CHANGES_MAX};
use std::sync::atomic::Ordering;
use std::sync::Arc;

impl Shard {
    /// Reports `change` to the bridge, after any change still parked (order matters: a
    /// disconnect must not overtake its connect).
    pub fn presence_change(&self, change: Change) {
        let mut parked = self.presence_retry.borrow_mut();
        if parked.is_empty() {
            match self.node.bridge_inbox.push(ToBridge::Presence(change)) {
                Ok(()) => return,
                Err(refused) => {
                    self.metrics.bridge_full.inc();
                    if let ToBridge::Presence(change) = refused.0 {
                        parked.push_back(change);
                        self.node.presence.metrics.retried.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            return;
        }
        if parked.len() >= PRESENCE_RETRY_CHANGES_MAX {
            self.node.presence.metrics.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(shard = self.id, "presence retry queue full (bridge inbox stayed full): a presence change was dropped");
            return;
        }
        parked.push_back(change);
        self.node.presence.metrics.retried.fetch_add(1, Ordering::Relaxed);
    }

    /// Hands parked changes to the bridge, in order, until its inbox is full again.
    pub(super) fn retry_presence(&self) {
        let mut parked = self.presence_retry.borrow_mut();
        while let Some(change) = parked.pop_front() {
            if let Err(refused) = self.node.bridge_inbox.push(ToBridge::Presence(change)) {
                if let ToBridge::Presence(change) = refused.0 {
                    parked.push_front(change);
                }
                return;
            }
        }
    }

    /// A new connection: an identified user is online.
    pub(super) fn presence_connected(&self, conn: &Conn) {
        if let Some(user) = conn.user() {
            conn.state.borrow_mut().presence = true;
            self.presence_change(Change::Connect { conn: conn.id, user: Arc::from(user) });
        }
    }

    /// A finished connection that was online or joined a channel leaves everything.
    pub(super) fn presence_disconnected(&self, conn: &Conn) {
        if std::mem::take(&mut conn.state.borrow_mut().presence) {
            self.presence_change(Change::Disconnect { conn: conn.id });
        }
    }
}
