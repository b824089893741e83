//! A shard's answers to node-wide questions and orders (`fanout::cluster`): how many of
//! its connections subscribe to which channels, and closing a user's connections. The
//! shard knows no wire: which connection belongs to a user is asked of the transport
//! (`Handlers::close_user`).
//!
//! Owns: nothing of its own (reads the subscription index and the connection table).
//! Runs on: its shard.

use super::{Conn, Shard};
use crate::fanout::cluster::{CloseUser, CountQuery, Counts, CountsReply, COUNT_CHANNELS_MAX};
use std::rc::Rc;

impl Shard {
    /// Subscribers per literal channel the query covers, at most `COUNT_CHANNELS_MAX`.
    pub(super) fn count_channels(&self, query: &CountQuery, reply: CountsReply) {
        let subs = self.subs.borrow();
        let mut counts = Counts::default();
        if query.exact {
            let keys = subs.literal_keys(&query.prefix);
            if keys > 0 {
                counts.channels.push(("".into(), keys as u64));
            }
        } else {
            subs.for_each_literal_prefixed(&query.prefix, |channel, keys| {
                if counts.channels.len() == COUNT_CHANNELS_MAX {
                    counts.truncated = true;
                    return false;
                }
                counts.channels.push((channel[query.prefix.len()..].into(), keys as u64));
                true
            });
        }
        // The asker may have timed out meanwhile: nothing to do then.
        let _ = reply.send(counts);
    }

    /// Hands every open connection to the transport, which closes those of the user.
    pub(super) fn close_user(&self, close: &CloseUser) {
        let conns: Vec<Rc<Conn>> = self.conns.borrow().iter().flatten().cloned().collect();
        for conn in conns {
            (self.handlers.close_user)(self, &conn, &close.scope, &close.user);
        }
    }
}
