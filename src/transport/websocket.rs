//! The WebSocket session: reads land in the shard's shared buffer, frames are decoded in
//! place, protocol v1 ops are answered, and replies are queued and flushed once per read.

use crate::channel;
use crate::fanout::{ConnRef, ReplayError, SubConfirm, ToBridge};
use crate::metrics::CloseReason;
use crate::permission::{self, Principal};
use crate::protocol::ops::{self, ClientOp};
use crate::protocol::ws::{self, Flow, WsMessage};
use crate::shard::{sys, tls, Conn, Identity, Replaying, Shard, REPLAYS_PER_CONNECTION_MAX};
use bytes::Bytes;
use monoio::net::TcpStream;
use std::rc::Rc;
use std::time::Duration;

/// Registers an upgraded connection, greets it and handles any frames that arrived
/// with the upgrade request. Synchronous, so none of this lives in the session task.
pub fn start(
    shard: &Rc<Shard>,
    stream: TcpStream,
    identity: Option<Box<Identity>>,
    leftover: Option<Vec<u8>>,
    tls: Option<Box<rustls::ServerConnection>>,
) -> Rc<Conn> {
    let conn = shard.register(stream, identity);
    let tls_on = tls.is_some();
    conn.state.borrow_mut().tls = tls;
    let hb = shard.node.config.heartbeat.as_secs().max(1);
    shard.send(&conn, ws::encode_text(&ops::welcome(conn.id, &shard.node.config.node, hb)));
    if let Some(mut bytes) = leftover {
        handle_bytes(shard, &conn, &mut bytes);
    }
    if tls_on {
        // rustls may already hold decrypted frames that came with the upgrade request.
        read_available(shard, &conn);
    }
    if shard.stop.is_set() {
        shard.close(&conn, ws::close_code::GOING_AWAY, "server shutting down", CloseReason::Shutdown);
    }
    shard.flush(&conn);
    conn
}

/// The connection's one long-lived task: wait until readable, handle what arrived.
/// Kept to two pointers and the poll op, because a node holds a million of these.
pub async fn session(shard: Rc<Shard>, conn: Rc<Conn>) {
    while conn.state.borrow().finished.is_none() {
        let Some(stream) = conn.stream.as_ref() else { break };
        if stream.readable(false).await.is_err() {
            conn.finish(CloseReason::IoError);
            break;
        }
        read_available(&shard, &conn);
    }
    shard.unregister(&conn);
}

/// Reads until the socket is drained, handling every complete frame.
fn read_available(shard: &Rc<Shard>, conn: &Rc<Conn>) {
    loop {
        let mut buf = shard.read_buf.borrow_mut();
        let capacity = buf.len();
        let (outcome, tls) = {
            let mut st = conn.state.borrow_mut();
            match st.tls.as_mut() {
                Some(session) => {
                    let mut ciphertext = 0;
                    let outcome = tls::read_plain(session, conn.fd, &mut buf, &mut ciphertext);
                    shard.metrics.bytes_in.add(ciphertext);
                    (outcome, true)
                }
                None => (sys::recv(conn.fd, &mut buf), false),
            }
        };
        let n = match outcome {
            Ok(sys::ReadOutcome::Data(n)) => n,
            Ok(sys::ReadOutcome::WouldBlock) => break,
            Ok(sys::ReadOutcome::Eof) => {
                let why = conn.state.borrow().closing.map(|(why, _)| why).unwrap_or(CloseReason::ClientClosed);
                conn.finish(why);
                break;
            }
            Err(_) => {
                conn.finish(CloseReason::IoError);
                break;
            }
        };
        if !tls {
            shard.metrics.bytes_in.add(n as u64);
        }
        {
            let mut st = conn.state.borrow_mut();
            st.last_seen_ms = shard.now_ms();
            st.ping_outstanding = false;
        }
        let carry = conn.state.borrow_mut().carry.take();
        match carry {
            Some(mut carried) => {
                carried.extend_from_slice(&buf[..n]);
                drop(buf);
                handle_bytes(shard, conn, &mut carried);
            }
            None => {
                let consumed = decode(shard, conn, &mut buf[..n]);
                if consumed < n && conn.state.borrow().finished.is_none() {
                    conn.state.borrow_mut().carry = Some(buf[consumed..n].to_vec());
                }
            }
        }
        // A short plain read drained the socket; rustls may still hold decrypted bytes.
        if conn.state.borrow().finished.is_some() || (n < capacity && !tls) {
            break;
        }
    }
    shard.flush(conn);
}

/// Decodes an owned buffer (a carried partial frame plus new bytes), keeping the tail.
fn handle_bytes(shard: &Rc<Shard>, conn: &Rc<Conn>, bytes: &mut Vec<u8>) {
    let consumed = decode(shard, conn, bytes);
    bytes.drain(..consumed);
    if !bytes.is_empty() && conn.state.borrow().finished.is_none() {
        conn.state.borrow_mut().carry = Some(std::mem::take(bytes));
    }
}

/// Runs the frame decoder over `buf`; returns bytes consumed.
fn decode(shard: &Rc<Shard>, conn: &Rc<Conn>, buf: &mut [u8]) -> usize {
    let mut reader = std::mem::take(&mut conn.state.borrow_mut().reader);
    let result = reader.feed(buf, &shard.ws_limits, &mut |message| on_message(shard, conn, message));
    conn.state.borrow_mut().reader = reader;
    match result {
        Ok(consumed) => consumed,
        Err(error) => {
            let why = CloseReason::from_close_code(error.close_code);
            shard.close(conn, error.close_code, error.reason, why);
            buf.len()
        }
    }
}

fn on_message(shard: &Rc<Shard>, conn: &Rc<Conn>, message: WsMessage<'_>) -> Flow {
    shard.metrics.frames_in.inc();
    let closing = conn.state.borrow().closing;
    if let WsMessage::Close { code, .. } = message {
        match closing {
            // Our close was answered: the handshake is complete.
            Some((why, _)) => conn.finish(why),
            None => {
                // Echo the client's code, as RFC 6455 §5.5.1 asks.
                let code = code.unwrap_or(ws::close_code::NORMAL);
                shard.close(conn, code, "", CloseReason::ClientClosed);
                shard.flush(conn);
                conn.finish(CloseReason::ClientClosed);
            }
        }
        return Flow::Stop;
    }
    if closing.is_some() {
        return Flow::Continue;
    }
    match message {
        WsMessage::Text(text) => on_text(shard, conn, text),
        WsMessage::Binary(_) => reply_err(shard, conn, None, 400, "binary frames are not part of protocol v1; send JSON text frames"),
        WsMessage::Ping(payload) => shard.send(conn, ws::encode_pong(payload)),
        WsMessage::Pong(_) | WsMessage::Close { .. } => {}
    }
    Flow::Continue
}

fn reply(shard: &Shard, conn: &Conn, json: Vec<u8>) {
    shard.send(conn, ws::encode_text(&json));
}

fn reply_err(shard: &Shard, conn: &Conn, id: Option<u32>, code: u16, msg: &str) {
    shard.metrics.client_errors.inc();
    reply(shard, conn, ops::err(id, code, msg));
}

/// Token bucket: `client_messages_per_second` refill, burst of twice that (new
/// connections start with a full bucket, see `Shard::register`).
fn take_token(shard: &Shard, conn: &Conn) -> bool {
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

/// One client op (a WebSocket text frame, or a frame posted to a long-poll session).
pub(super) fn on_text(shard: &Rc<Shard>, conn: &Rc<Conn>, text: &str) {
    if !take_token(shard, conn) {
        shard.metrics.rate_limited.inc();
        // Refused anyway: read only as far as the `id`, not the whole op (a flood of
        // rate-limited frames must cost less than the ops it stands for).
        let id = id_only(text);
        return reply_err(shard, conn, id, 429, "rate limited: too many messages per second (client_rate); slow down");
    }
    let op = match ops::parse_client_op(text) {
        Ok(op) => op,
        Err(e) => return reply_err(shard, conn, e.id, e.code, &e.msg),
    };
    match op {
        ClientOp::Sub { id, ch, since, presence } => subscribe(shard, conn, id, &ch, since, presence),
        ClientOp::Unsub { id, ch } => unsubscribe(shard, conn, id, &ch),
        ClientOp::Pub { id, ch, data } => publish(shard, conn, id, &ch, data.get().as_bytes()),
        ClientOp::Ping { id } => reply(shard, conn, ops::pong(id)),
        ClientOp::Ack { nid } => ack(shard, conn, &nid),
        ClientOp::Presence { id, ch } => presence_query(shard, conn, id, ch.into_owned()),
    }
}

/// The `id` of a frame, reading its fields only until `id` (clients put it before `data`);
/// None when the frame is not an object or has no numeric `id` before it breaks off.
fn id_only(text: &str) -> Option<u32> {
    use serde::de::{DeserializeSeed, Deserializer, Error, IgnoredAny, MapAccess, Visitor};
    struct Seek<'a>(&'a std::cell::Cell<Option<u32>>);
    impl<'de> DeserializeSeed<'de> for Seek<'_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
            deserializer.deserialize_map(self)
        }
    }
    impl<'de> Visitor<'de> for Seek<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an op object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if key == "id" {
                    self.0.set(map.next_value::<u32>().ok());
                    // Stop here: the rest of the frame is never read.
                    return Err(A::Error::custom("found the id"));
                }
                map.next_value::<IgnoredAny>()?;
            }
            Ok(())
        }
    }
    let found = std::cell::Cell::new(None);
    let _ = Seek(&found).deserialize(&mut serde_json::Deserializer::from_str(text));
    found.get()
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

fn subscribe(shard: &Rc<Shard>, conn: &Rc<Conn>, id: Option<u32>, pattern: &str, since: Option<u64>, presence: bool) {
    if let Err(e) = channel::validate_pattern(pattern) {
        return reply_err(shard, conn, id, 400, &format!("bad channel: {e}"));
    }
    if let Err(denied) = permission::check_subscribe(&principal(shard, conn), pattern) {
        return reply_err(shard, conn, id, denied.code, &denied.msg);
    }
    if presence {
        if let Err(msg) = super::presence::check_joinable(pattern) {
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
            if presence && !super::presence::join(shard, conn, pattern) {
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
    if conn.identity.is_none() && shard.node.jwt.is_some() && count >= anonymous_max {
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
    conn.state.borrow_mut().subscriptions.push(pattern.into());
    if presence && !super::presence::join(shard, conn, pattern) {
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
    if shard.node.config.broker.nats.is_none() {
        return reply(shard, conn, ops::ok(id));
    }
    let confirm = Box::new(SubConfirm { target: ConnRef { slot: conn.slot, conn: conn.id }, id, pattern: pattern.into(), undo });
    if shard.node.bridge_inbox.push(ToBridge::ConfirmLive { shard: shard.id, confirm }).is_err() {
        shard.metrics.bridge_full.inc();
        if undo {
            super::presence::leave(shard, conn, pattern);
            unsubscribe_quietly(shard, conn, pattern);
        }
        reply_err(shard, conn, id, 503, "server is overloaded (bridge queue full); retry shortly");
    }
}

/// The bridge's answer to [`answer_when_live`]: the `sub`'s `ok`, or 503 and the
/// subscription undone when NATS did not confirm it in time.
pub fn sub_confirmed(shard: &Rc<Shard>, confirm: Box<SubConfirm>, live: bool) {
    let Some(conn) = shard.conn_at(confirm.target) else { return };
    if conn.state.borrow().finished.is_some() {
        return;
    }
    if live {
        return reply(shard, &conn, ops::ok(confirm.id));
    }
    if confirm.undo {
        super::presence::leave(shard, &conn, &confirm.pattern);
        unsubscribe_quietly(shard, &conn, &confirm.pattern);
    }
    let timeout = shard.node.config.broker.nats.as_ref().map_or(Duration::ZERO, |c| c.sub_confirm_timeout);
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
    super::presence::query_op(shard, conn, id, ch);
}

fn unsubscribe(shard: &Rc<Shard>, conn: &Rc<Conn>, id: Option<u32>, pattern: &str) {
    if pattern.starts_with(crate::presence::PRESENCE_CHANNEL_PREFIX) {
        return reply_err(shard, conn, id, 400, "$pres.* channels are internal; unsub the channel itself to leave its presence");
    }
    super::presence::leave(shard, conn, pattern);
    let removed = {
        let mut st = conn.state.borrow_mut();
        let position = st.subscriptions.iter().position(|p| &**p == pattern);
        position.map(|i| st.subscriptions.swap_remove(i))
    };
    match removed {
        Some(pattern) => {
            conn.take_replay(|r| *r.channel == *pattern);
            shard.remove_subscription(conn.slot, pattern);
            reply(shard, conn, ops::ok(id));
        }
        None => reply_err(shard, conn, id, 404, &format!("not subscribed to {pattern}")),
    }
}

fn publish(shard: &Rc<Shard>, conn: &Rc<Conn>, id: Option<u32>, channel_name: &str, data: &[u8]) {
    if let Err(e) = channel::validate_channel(channel_name) {
        return reply_err(shard, conn, id, 400, &format!("bad channel: {e}"));
    }
    if channel_name.starts_with('$') {
        return reply_err(shard, conn, id, 403, super::http::SERVER_CHANNEL_REFUSAL);
    }
    if let Err(denied) = permission::check_publish(&principal(shard, conn), channel_name) {
        return reply_err(shard, conn, id, denied.code, &denied.msg);
    }
    if let Err(msg) = super::http::check_publish_size(&shard.node.config, channel_name, data.len()) {
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
    reply(shard, conn, ops::ok(id));
}
