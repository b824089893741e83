//! Presence in the session: `sub` with `presence: true` (join), `unsub` (leave), the
//! `presence` op, and the members query `GET /api/presence/{channel}` shares.
//!
//! A joined connection is also subscribed to the internal channel `$pres.{channel}`,
//! where the bridge publishes `join`/`leave` frames (through the broker, so they reach
//! every node); that subscription is kept in the connection's list like any other, so
//! `unsub` and disconnect clean it up. Queries go to the bridge with a oneshot reply and
//! a bounded wait. Runs on: the shard that holds the connection.

use crate::channel;
use crate::fanout::ToBridge;
use crate::presence::{Change, PresenceError, PRESENCE_CHANNEL_PREFIX, PRESENCE_QUERY_TIMEOUT_MS};
use crate::shard::{Conn, Shard};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// `$pres.{channel}`.
pub fn internal_channel(channel: &str) -> Box<str> {
    format!("{PRESENCE_CHANNEL_PREFIX}{channel}").into_boxed_str()
}

/// Presence needs one concrete channel: a member is in a channel, not in a pattern.
pub fn check_joinable(pattern: &str) -> Result<(), String> {
    if !channel::is_literal(pattern) {
        return Err(format!("presence needs a literal channel: {pattern} is a wildcard pattern; subscribe with presence to each channel by name"));
    }
    Ok(())
}

/// Who joins a channel's presence with a `sub`.
#[derive(Debug)]
pub enum Join {
    /// A plain subscribe.
    No,
    /// As the connection's token says (`sub` and `info` claims): protocol v1's
    /// `"presence":true`.
    Token,
    /// As a member the wire adapter authorized (a Pusher presence channel's signed
    /// `channel_data`: `user_id` and `user_info`).
    Member { user: Arc<str>, info: Option<Box<serde_json::value::RawValue>> },
}

impl Join {
    pub fn is_join(&self) -> bool {
        !matches!(self, Join::No)
    }
}

/// Joins `channel`'s presence set (the connection is already subscribed to it) as `who`
/// says. False when the bridge could not take the `$pres` interest (the caller answers 503).
pub fn join(shard: &Shard, conn: &Conn, channel: &str, who: &Join) -> bool {
    let internal = internal_channel(channel);
    if conn.state.borrow().subscriptions.iter().any(|p| *p == internal) {
        return true;
    }
    if shard.add_subscription(conn.slot, &internal).is_err() {
        return false;
    }
    {
        let mut st = conn.state.borrow_mut();
        super::push_subscription(&mut st.subscriptions, internal);
        st.presence = true;
    }
    let (user, info) = match who {
        Join::Member { user, info } => (Some(user.clone()), info.clone()),
        Join::No | Join::Token => (conn.user().map(Arc::from), conn.identity.as_deref().and_then(|i| i.info.clone())),
    };
    shard.presence_change(Change::Join { channel: Arc::from(channel), conn: conn.id, user, info });
    true
}

/// Leaves `channel`'s presence set if the connection had joined it.
pub fn leave(shard: &Shard, conn: &Conn, channel: &str) {
    let internal = internal_channel(channel);
    let removed = {
        let mut st = conn.state.borrow_mut();
        let position = st.subscriptions.iter().position(|p| *p == internal);
        position.map(|i| st.subscriptions.swap_remove(i))
    };
    if let Some(internal) = removed {
        shard.remove_subscription(conn.slot, internal);
        shard.presence_change(Change::Leave { channel: Arc::from(channel), conn: conn.id });
    }
}

/// Asks the bridge for `channel`'s members and waits (bounded) for the answer.
pub async fn members(shard: &Shard, channel: &str) -> Result<Vec<Arc<str>>, PresenceError> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    let query = ToBridge::PresenceQuery { channel: Arc::from(channel), reply };
    if shard.node.bridge_inbox.push(query).is_err() {
        shard.metrics.bridge_full.inc();
        return Err(PresenceError::Unavailable("server is overloaded (bridge queue full); retry shortly".into()));
    }
    match monoio::time::timeout(Duration::from_millis(PRESENCE_QUERY_TIMEOUT_MS), answer).await {
        Ok(Ok(result)) => result,
        Ok(Err(_dropped)) => Err(PresenceError::Unavailable("presence query was dropped (bridge stopping); retry".into())),
        Err(_elapsed) => Err(PresenceError::Unavailable(format!("presence store did not answer within {PRESENCE_QUERY_TIMEOUT_MS}ms; retry shortly"))),
    }
}

/// The `presence` op: answered from a task of its own, since the bridge (and maybe Redis)
/// answers later; the connection may be gone by then.
pub fn query_op(shard: &Rc<Shard>, conn: &Rc<Conn>, id: Option<u32>, channel: String) {
    let shard = shard.clone();
    let conn = conn.clone();
    monoio::spawn(async move {
        let answer = members(&shard, &channel).await;
        if conn.state.borrow().finished.is_none() {
            match answer {
                Ok(members) => super::reply(&shard, &conn, super::Reply::Members { id, members: &members }),
                Err(error) => super::reply_err(&shard, &conn, id, error.code(), error.message()),
            }
            shard.flush(&conn);
        }
    });
}
