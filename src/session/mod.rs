//! The session core: what a client may do, once for every wire. A wire adapter (protocol
//! v1 over WebSocket or long-poll in `transport::v1`; another protocol beside it) decodes
//! its frames into an [`Op`] and calls [`handle`]; every answer comes back as a [`Reply`]
//! through the shard's `answer` handler, which the adapter encodes into its own frames.
//! Subscribe (with presence and `since`), unsubscribe, publish, ack, presence query and
//! ping live here, with their permission checks and bounds.
//!
//! Owns: the rules of each operation and the per-connection op budget (`client_rate`).
//! Must not touch: frames, sockets, JSON of any wire. Runs on: the shard that holds the
//! connection.

pub mod presence;

use crate::channel;
use crate::fanout::{ConnRef, ReplayError, SubConfirm, ToBridge};
use crate::permission::{self, Principal};
use crate::shard::{Conn, Replaying, Shard, REPLAYS_PER_CONNECTION_MAX};
use bytes::Bytes;
use std::rc::Rc;

/// One decoded client operation, whatever wire it came on.
pub enum Op<'a> {
    /// Subscribe to a channel or pattern; `presence` also joins its member set (as the
    /// token's user, or as a member the wire authorized); `since` resumes from history.
    Sub { id: Option<u32>, ch: &'a str, since: Option<u64>, presence: presence::Join },
    Unsub { id: Option<u32>, ch: &'a str },
    /// `data` is the message's JSON value as it arrived (published as is).
    Pub { id: Option<u32>, ch: &'a str, data: &'a [u8] },
    Ping { id: Option<u32> },
    /// A notification was received; no reply unless something is wrong.
    Ack { nid: &'a str },
    /// Who is in a literal channel (answered later, from the presence store).
    Presence { id: Option<u32>, ch: String },
}

pub use crate::shard::Reply;

/// Runs one operation. Its answers (now, or later for a `sub` that waits for the broker,
/// a resume and a presence query) reach the connection through the shard's `answer`.
pub fn handle(shard: &Rc<Shard>, conn: &Rc<Conn>, op: Op<'_>) {
    match op {
        Op::Sub { id, ch, since, presence } => subscribe(shard, conn, id, ch, since, &presence),
        Op::Unsub { id, ch } => unsubscribe(shard, conn, id, ch),
        Op::Pub { id, ch, data } => publish(shard, conn, id, ch, data),
        Op::Ping { id } => reply(shard, conn, Reply::Pong { id }),
        Op::Ack { nid } => ack(shard, conn, nid),
        Op::Presence { id, ch } => presence_query(shard, conn, id, ch),
    }
}

/// An answer to the connection, encoded by its wire.
pub fn reply(shard: &Shard, conn: &Conn, reply: Reply<'_>) {
    (shard.handlers.answer)(shard, conn, reply);
}

/// An error answer, counted in `ringcast_client_errors_total`.
pub fn reply_err(shard: &Shard, conn: &Conn, id: Option<u32>, code: u16, msg: &str) {
    shard.metrics.client_errors.inc();
    reply(shard, conn, Reply::Err { id, code, msg });
}

/// Whether the connection may send one more op now: a token bucket with
/// `client_messages_per_second` refill, burst of twice that (new connections start with
/// a full bucket, see `Shard::register`). An adapter asks before it decodes an op, so a
/// flood of refused frames costs less than the ops it stands for.
///
/// Token bucket: `client_messages_per_second` refill, burst of twice that (new
/// connections start with a full bucket, see `Shard::register`).
pub fn take_token(shard: &Shard, conn: &Conn) -> bool {
    let rate = shard.node.config.client_messages_per_second as u64;
    let now = shard.now_ms();
    let mut st = conn.state.borrow_mut();
    let refill = now.saturating_sub(st.tokens_at_ms) * rate / 1000;
    if refill > 0 {
        st.tokens = (st.tokens as u64 + refill).min(rate * 2) as u32;
        st.tokens_at_ms = now;
    }
    if st.tokens == 0 {
        return false;
    }
    st.tokens -= 1;
    true
}

/// `ack` of a notification: to the bridge and on to the worker. No reply (protocol v1's
/// `ack` carries no id); only a problem is answered.
fn ack(shard: &Rc<Shard>, conn: &Rc<Conn>, nid: &str) {
    let Some(user) = conn.identity.as_deref().and_then(|i| i.user.as_deref()) else {
        return reply_err(shard, conn, None, 403, "ack needs a token with a sub: notifications belong to a user");
    };
    if let Err(e) = crate::lane::validate_nid(nid) {
        return reply_err(shard, conn, None, 400, &e);
    }
    if shard.node.bridge_inbox.push(ToBridge::Ack { user: user.into(), nid: nid.into() }).is_err() {
        shard.metrics.bridge_full.inc();
        reply_err(shard, conn, None, 503, "server busy; send the ack again shortly");
    }
}

fn principal<'a>(shard: &Shard, conn: &'a Conn) -> Principal<'a> {
    let identity = conn.identity.as_deref();
    Principal {
        user: identity.and_then(|i| i.user.as_deref()),
        chans: identity.and_then(|i| i.chans.as_deref()),
        pubs: identity.and_then(|i| i.pubs.as_deref()),
        sys_allowed: shard.node.config.sys_subscribe,
        sys_anonymous: shard.node.jwt.is_none(),
    }
}

/// Whether `since` on `pattern` asks for a resume: yes on a literal channel under a
/// history pattern; ignored (plain subscribe, as in protocol v1 before history) where no
/// history applies; an error on a wildcard that touches history, whose resume would mix
/// channels with separate retention.
fn wants_resume(shard: &Shard, pattern: &str) -> Result<bool, String> {
    let history = &shard.node.config.broker.history;
    if !history.is_enabled() {
        return Ok(false);
    }
    if channel::is_literal(pattern) {
        return Ok(history.pattern_covering(pattern).is_some());
    }
    match history.patterns.iter().find(|h| channel::overlaps(h, pattern)) {
        Some(h) => Err(format!("since needs a literal channel: {pattern} overlaps history pattern {h}; subscribe to each channel with its own since")),
        None => Ok(false),
    }
}

fn subscribe(shard: &Rc<Shard>, conn: &Rc<Conn>, id: Option<u32>, pattern: &str, since: Option<u64>, presence: &presence::Join) {
    if let Err(e) = channel::validate_pattern(pattern) {
        return reply_err(shard, conn, id, 400, &format!("bad channel: {e}"));
    }
    // A Pusher connection's channels were authorized by its adapter (app namespace,
    // channel auth signatures); token rules are protocol v1's.
    let wire_authorized = conn.state.borrow().wire != crate::shard::Wire::V1;
    if !wire_authorized {
        if let Err(denied) = permission::check_subscribe(&principal(shard, conn), pattern) {
            return reply_err(shard, conn, id, denied.code, &denied.msg);
        }
    }
    if presence.is_join() {
        if let Err(msg) = presence::check_joinable(pattern) {
            return reply_err(shard, conn, id, 400, &msg);
        }
    }
    let resume = match since {
        Some(since) => match wants_resume(shard, pattern) {
            Ok(true) => Some(since),
            Ok(false) => None,
            Err(msg) => return reply_err(shard, conn, id, 400, &msg),
        },
        None => None,
    };
    let (count, pattern_bytes) = {
        let st = conn.state.borrow();
        if st.subscriptions.iter().any(|p| &**p == pattern) {
            drop(st);
            if presence.is_join() && !presence::join(shard, conn, pattern, presence) {
                return reply_err(shard, conn, id, 503, "server is overloaded (bridge queue full); retry shortly");
            }
            return answer_when_live(shard, conn, id, pattern, false);
        }
        (st.subscriptions.len(), st.subscriptions.iter().map(|p| p.len()).sum::<usize>())
    };
    let max = shard.node.config.subscriptions_max;
    if count >= max {
        let msg = format!("subscription limit reached ({max} per connection, max_subscriptions); unsubscribe first");
        return reply_err(shard, conn, id, 413, &msg);
    }
    let guard = &shard.node.guard;
    // Anonymous on a node that issues tokens (without a secret everyone is anonymous).
    let anonymous_max = guard.config.anonymous_subscriptions_max.unwrap_or(usize::MAX);
    if conn.identity.is_none() && !wire_authorized && shard.node.jwt.is_some() && count >= anonymous_max {
        guard.count_sub_refusal(crate::guard::SubRefusal::Anonymous);
        let msg = format!("subscription limit reached ({anonymous_max} per connection without a token, max_anonymous_subscriptions); connect with a token, or unsubscribe first");
        return reply_err(shard, conn, id, 413, &msg);
    }
    let pattern_max = guard.config.pattern_bytes_max;
    if pattern_bytes + pattern.len() > pattern_max {
        guard.count_sub_refusal(crate::guard::SubRefusal::PatternBytes);
        let msg = format!(
            "this connection's patterns would total {} bytes, over max_pattern_bytes ({pattern_max}); unsubscribe first, or use shorter names or a wildcard",
            pattern_bytes + pattern.len()
        );
        return reply_err(shard, conn, id, 413, &msg);
    }
    if resume.is_some() && conn.replays_in_progress() >= REPLAYS_PER_CONNECTION_MAX {
        let msg = format!("{REPLAYS_PER_CONNECTION_MAX} resumes already in progress on this connection; wait for their answers");
        return reply_err(shard, conn, id, 429, &msg);
    }
    if let Err(refused) = shard.add_subscription(conn.slot, pattern) {
        return reply_err(shard, conn, id, 503, &shard.node.guard.refusal_message(refused));
    }
    push_subscription(&mut conn.state.borrow_mut().subscriptions, pattern.into());
    if presence.is_join() && !presence::join(shard, conn, pattern, presence) {
        unsubscribe_quietly(shard, conn, pattern);
        return reply_err(shard, conn, id, 503, "server is overloaded (bridge queue full); retry shortly");
    }
    match resume {
        None => answer_when_live(shard, conn, id, pattern, true),
        Some(since) => start_resume(shard, conn, id, pattern, since),
    }
}

/// `ok` means live (PROTOCOL.md): whatever is published after the client reads it, on any
/// node, reaches the connection. With NATS the answer waits for the bridge to confirm
/// that the node's subscriptions are on the server; the embedded broker's interest is in
/// place as soon as the bridge has seen it, which it has before any later publish.
/// `undo`: this `sub` added the pattern, so an unconfirmed one is taken back.
fn answer_when_live(shard: &Rc<Shard>, conn: &Rc<Conn>, id: Option<u32>, pattern: &str, undo: bool) {
    if shard.node.config.broker.sub_confirm_timeout().is_none() {
        return reply(shard, conn, Reply::Subscribed { id, ch: pattern });
    }
    let confirm = Box::new(SubConfirm { target: ConnRef { slot: conn.slot, conn: conn.id }, id, pattern: pattern.into(), undo });
    if shard.node.bridge_inbox.push(ToBridge::ConfirmLive { shard: shard.id, confirm }).is_err() {
        shard.metrics.bridge_full.inc();
        if undo {
            presence::leave(shard, conn, pattern);
            unsubscribe_quietly(shard, conn, pattern);
        }
        reply_err(shard, conn, id, 503, "server is overloaded (bridge queue full); retry shortly");
    }
}

/// The bridge's answer to [`answer_when_live`] (the shard hands it over through the
/// transports' `sub_confirmed` handler): the `sub`'s `ok`, or 503 and the
/// subscription undone when NATS did not confirm it in time.
pub fn on_confirmed(shard: &Rc<Shard>, confirm: Box<SubConfirm>, live: bool) {
    let Some(conn) = shard.conn_at(confirm.target) else { return };
    if conn.state.borrow().finished.is_some() {
        return;
    }
    if live {
        return reply(shard, &conn, Reply::Subscribed { id: confirm.id, ch: &confirm.pattern });
    }
    if confirm.undo {
        presence::leave(shard, &conn, &confirm.pattern);
        unsubscribe_quietly(shard, &conn, &confirm.pattern);
    }
    let timeout = shard.node.config.broker.sub_confirm_timeout().unwrap_or_default();
    let msg = format!(
        "NATS did not confirm the subscription within {timeout:?} (nats_sub_confirm_timeout; broker unreachable?), so it was not made; retry shortly"
    );
    reply_err(shard, &conn, confirm.id, 503, &msg);
}

/// Live messages of `channel` now reach the connection; they are held while the bridge
/// replays history after `since`, and the `sub` is answered when the replay ends.
fn start_resume(shard: &Rc<Shard>, conn: &Rc<Conn>, id: Option<u32>, channel: &str, since: u64) {
    let replay = shard.next_replay_id();
    conn.start_replay(Replaying { replay, channel: channel.into(), id, started_ms: shard.now_ms(), held: Vec::new(), held_bytes: 0, upto: None });
    let target = ConnRef { slot: conn.slot, conn: conn.id };
    let message = ToBridge::Replay { shard: shard.id, target, replay, channel: channel.into(), since };
    if shard.node.bridge_inbox.push(message).is_err() {
        shard.metrics.bridge_full.inc();
        let error = ReplayError { code: 503, msg: "server is overloaded (bridge queue full); retry shortly".into() };
        shard.replay_done(target, replay, Err(error));
    }
}

/// Adds to a connection's list. The first one gets room for exactly one: most
/// connections hold one or two subscriptions, and a Vec's first growth (to four) would
/// cost a 64-byte block per connection where 16 do.
pub fn push_subscription(list: &mut Vec<Box<str>>, pattern: Box<str>) {
    if list.capacity() == 0 {
        list.reserve_exact(1);
    }
    list.push(pattern);
}

/// Undoes a subscription that could not be completed.
fn unsubscribe_quietly(shard: &Shard, conn: &Conn, pattern: &str) {
    let removed = {
        let mut st = conn.state.borrow_mut();
        let position = st.subscriptions.iter().position(|p| &**p == pattern);
        position.map(|i| st.subscriptions.swap_remove(i))
    };
    if let Some(pattern) = removed {
        shard.remove_subscription(conn.slot, pattern);
    }
}

fn presence_query(shard: &Rc<Shard>, conn: &Rc<Conn>, id: Option<u32>, ch: String) {
    if let Err(e) = channel::validate_channel(&ch) {
        return reply_err(shard, conn, id, 400, &format!("bad channel: {e}"));
    }
    // Seeing who is in a channel is reading it: the same rule as subscribing.
    if let Err(denied) = permission::check_subscribe(&principal(shard, conn), &ch) {
        return reply_err(shard, conn, id, denied.code, &denied.msg);
    }
    presence::query_op(shard, conn, id, ch);
}

fn unsubscribe(shard: &Rc<Shard>, conn: &Rc<Conn>, id: Option<u32>, pattern: &str) {
    if pattern.starts_with(crate::presence::PRESENCE_CHANNEL_PREFIX) {
        return reply_err(shard, conn, id, 400, "$pres.* channels are internal; unsub the channel itself to leave its presence");
    }
    presence::leave(shard, conn, pattern);
    let removed = {
        let mut st = conn.state.borrow_mut();
        let position = st.subscriptions.iter().position(|p| &**p == pattern);
        position.map(|i| st.subscriptions.swap_remove(i))
    };
    match removed {
        Some(pattern) => {
            conn.take_replay(|r| *r.channel == *pattern);
            shard.remove_subscription(conn.slot, pattern);
            reply(shard, conn, Reply::Ok { id });
        }
        None => reply_err(shard, conn, id, 404, &format!("not subscribed to {pattern}")),
    }
}

fn publish(shard: &Rc<Shard>, conn: &Rc<Conn>, id: Option<u32>, channel_name: &str, data: &[u8]) {
    if let Err(e) = channel::validate_channel(channel_name) {
        return reply_err(shard, conn, id, 400, &format!("bad channel: {e}"));
    }
    if channel_name.starts_with('$') {
        return reply_err(shard, conn, id, 403, SERVER_CHANNEL_REFUSAL);
    }
    if let Err(denied) = permission::check_publish(&principal(shard, conn), channel_name) {
        return reply_err(shard, conn, id, denied.code, &denied.msg);
    }
    if let Err(msg) = check_publish_size(&shard.node.config, channel_name, data.len()) {
        shard.metrics.publish_too_large.inc();
        return reply_err(shard, conn, id, 413, &msg);
    }
    if !shard.node.broker_up() {
        shard.metrics.publish_refused.inc();
        return reply_err(shard, conn, id, 503, "the broker (NATS) is unreachable; retry shortly");
    }
    let message = ToBridge::Publish { channel: channel_name.into(), data: Bytes::copy_from_slice(data) };
    if shard.node.bridge_inbox.push(message).is_err() {
        shard.metrics.bridge_full.inc();
        return reply_err(shard, conn, id, 503, "server is overloaded (bridge queue full); retry shortly");
    }
    reply(shard, conn, Reply::Ok { id });
}

/// Why a client or the API may not publish on `$…` channels: the server alone speaks
/// there (`$sys.metrics` feeds the dashboard; `$pres.*` carries join/leave frames).
pub const SERVER_CHANNEL_REFUSAL: &str = "channels starting with $ ($sys.*, $pres.*) are published by the server only";

/// The `msg` frame envelope around `ch` and `data`, at its largest:
/// `{"op":"msg","ch":"","data":,"seq":}` plus a 20-digit `seq`.
const MSG_ENVELOPE_BYTES_MAX: usize = r#"{"op":"msg","ch":"","data":,"seq":}"#.len() + 20;

/// Whether a publish of `data_bytes` on `channel` can reach a subscriber at all: `data`
/// within `max_message`, and the `msg` frame it becomes within `outbound_limit` (a frame
/// larger than a subscriber's whole backlog would close every subscriber with 4008). The
/// error names the limit. Every door (pub op, long-poll, /api/publish) asks this.
pub fn check_publish_size(config: &crate::config::GatewayConfig, channel: &str, data_bytes: usize) -> Result<(), String> {
    if data_bytes > config.max_message_bytes {
        return Err(format!("data is {data_bytes} bytes, over max_message ({} bytes); send less, or a link to it", config.max_message_bytes));
    }
    let frame_bytes = crate::limits::FRAME_HEADER_BYTES_MAX + MSG_ENVELOPE_BYTES_MAX + channel.len() + data_bytes;
    if frame_bytes > config.outbound_bytes_max {
        return Err(format!(
            "the message frame would be up to {frame_bytes} bytes, over a subscriber's outbound_limit ({} bytes): nobody could receive it; send less",
            config.outbound_bytes_max
        ));
    }
    Ok(())
}
