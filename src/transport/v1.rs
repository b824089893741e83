//! Protocol v1 (PROTOCOL.md) as a wire adapter: a JSON text frame (from a WebSocket or a
//! long-poll POST) is decoded into a session [`Op`]; a session [`Reply`] is encoded into
//! a v1 frame. The rules of each op live in `session`; this file knows only the format.
//!
//! Owns: v1 decoding and encoding of ops and replies. Must not touch: the rules of an op
//! (permissions, bounds, presence, history). Runs on: the shard that holds the connection.

use crate::metrics::CloseReason;
use crate::protocol::ops::{self, ClientOp};
use crate::protocol::ws;
use crate::session::{self, Op, Reply};
use crate::shard::{Conn, Shard};
use std::rc::Rc;
use std::sync::Arc;

/// Encodes a session answer as a v1 frame and queues it on the connection (every v1
/// connection, WebSocket or long-poll, queues WebSocket text frames).
pub fn answer(shard: &Shard, conn: &Conn, reply: Reply<'_>) {
    let json = match reply {
        Reply::Ok { id } | Reply::Subscribed { id, .. } => ops::ok(id),
        Reply::Members { id, members } => ops::ok_with(id, &members_field(members)),
        Reply::Pong { id } => ops::pong(id),
        Reply::Err { id, code, msg } => ops::err(id, code, msg),
    };
    shard.send(conn, ws::encode_text(&json));
}

/// A v1 connection whose token ran out is closed with 1008 (policy) and says why; the
/// client reconnects with a fresh token.
pub fn token_expired(shard: &Shard, conn: &Conn) {
    shard.close(conn, ws::close_code::POLICY, "token expired; reconnect with a fresh token", CloseReason::TokenExpired);
}

/// One client op (a WebSocket text frame, or a frame posted to a long-poll session).
pub fn on_text(shard: &Rc<Shard>, conn: &Rc<Conn>, text: &str) {
    if !session::take_token(shard, conn) {
        shard.metrics.rate_limited.inc();
        // Refused anyway: read only as far as the `id`, not the whole op (a flood of
        // rate-limited frames must cost less than the ops it stands for).
        let id = id_only(text);
        return session::reply_err(shard, conn, id, 429, "rate limited: too many messages per second (client_rate); slow down");
    }
    let op = match ops::parse_client_op(text) {
        Ok(op) => op,
        Err(e) => return session::reply_err(shard, conn, e.id, e.code, &e.msg),
    };
    let op = match &op {
        ClientOp::Sub { id, ch, since, presence } => {
            let presence = if *presence { session::presence::Join::Token } else { session::presence::Join::No };
            Op::Sub { id: *id, ch, since: *since, presence }
        }
        ClientOp::Unsub { id, ch } => Op::Unsub { id: *id, ch },
        ClientOp::Pub { id, ch, data } => Op::Pub { id: *id, ch, data: data.get().as_bytes() },
        ClientOp::Ping { id } => Op::Ping { id: *id },
        ClientOp::Ack { nid } => Op::Ack { nid },
        ClientOp::Presence { id, ch } => Op::Presence { id: *id, ch: ch.to_string() },
    };
    session::handle(shard, conn, op);
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

/// `"members":[..]` for an `ok` frame or the HTTP body.
pub fn members_field(members: &[Arc<str>]) -> String {
    let mut out = String::with_capacity(16 + members.iter().map(|m| m.len() + 1).sum::<usize>());
    out.push_str("\"members\":[");
    for (i, member) in members.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(member);
    }
    out.push(']');
    out
}

