//! The long-poll transport's HTTP routes (PROTOCOL.md "Transports"):
//! `POST /poll` opens a session, `GET /poll/{sid}?ack=n` confirms and waits for frames,
//! `POST /poll/{sid}` takes client frames, `OPTIONS` answers CORS preflights.
//!
//! A session lives on the shard that opened it (`shard::poll`); a request that landed on
//! another shard is forwarded through the owner's mailbox and answered in a oneshot.
//!
//! Owns: routing, CORS, forwarding, the long-poll counters. Must not touch: another
//! shard's state (only its mailbox). Runs on: the shard that received the request, and
//! the owner for forwarded ones.

use crate::fanout::poll::{PollAnswer, PollForward, PollOp};
use crate::fanout::ToShard;
use crate::metrics::Refusal;
use crate::protocol::http::{self as h, Method, Request};
use crate::shard::poll::parse_sid;
use crate::shard::Shard;
use serde_json::value::RawValue;
use std::rc::Rc;
use std::time::Duration;

/// How long a forwarded request may wait for the owner beyond `poll_wait` before the
/// receiving shard gives up with 503 (the owner answers within `poll_wait` unless stalled).
const FORWARD_SLACK_MS: u64 = 5_000;
/// CORS preflight answers may be cached this long by the browser, in seconds.
const PREFLIGHT_MAX_AGE_SECONDS: &str = "600";
/// What a refused session open tells the client to wait, in seconds.
const RETRY_AFTER_SECONDS: &str = "5";

/// Frames one `POST /poll/{sid}` may carry: the client's whole burst (`client_rate`, burst
/// twice that). A POST can never use more than the burst, and a body of a million tiny
/// frames must cost its parse up to here only, not a shard's time for every frame.
pub fn frames_per_post_max(client_rate: u32) -> usize {
    (client_rate as usize).saturating_mul(2)
}

struct Answer {
    status: u16,
    body: Vec<u8>,
    headers: Vec<(&'static str, String)>,
}

impl Answer {
    fn json(status: u16, body: Vec<u8>) -> Answer {
        Answer { status, body, headers: Vec::new() }
    }

    fn error(status: u16, msg: &str) -> Answer {
        Answer::json(status, error_body(status, msg))
    }

    fn with(mut self, name: &'static str, value: &str) -> Answer {
        self.headers.push((name, value.to_owned()));
        self
    }
}

fn error_body(status: u16, msg: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(40 + msg.len());
    body.extend_from_slice(b"{\"error\":{\"code\":");
    body.extend_from_slice(status.to_string().as_bytes());
    body.extend_from_slice(b",\"msg\":\"");
    crate::protocol::ops::escape_json_str_into(&mut body, msg);
    body.extend_from_slice(b"\"}}");
    body
}

/// Serves `/poll` and `/poll/{sid}`; None for any other path. `peer`: the client's
/// address, for `poll_sessions_per_client` when it has no token.
pub async fn route(shard: &Rc<Shard>, request: &Request, peer: Option<std::net::IpAddr>) -> Option<Vec<u8>> {
    let session = match request.path.as_str() {
        "/poll" => None,
        path => Some(path.strip_prefix("/poll/")?),
    };
    let answer = match (request.method, session) {
        (Method::Options, _) => preflight(),
        (Method::Post, None) => open(shard, request, peer),
        (Method::Get, Some(sid)) => match request.query_param("ack").map(|a| a.parse::<u64>()) {
            None => on_session(shard, sid, PollOp::Get { ack: 0 }).await,
            Some(Ok(ack)) => on_session(shard, sid, PollOp::Get { ack }).await,
            Some(Err(_)) => Answer::error(400, "ack must be a frame number (the `next` of the previous answer)"),
        },
        (Method::Post, Some(sid)) => on_session(shard, sid, PollOp::Post { body: request.body.clone() }).await,
        (_, None) => Answer::error(405, "method not allowed; open a session with POST /poll").with("Allow", "POST, OPTIONS"),
        (_, Some(_)) => Answer::error(405, "method not allowed; use GET /poll/{sid}?ack=n or POST /poll/{sid}").with("Allow", "GET, POST, OPTIONS"),
    };
    shard.metrics.http_requests.inc();
    Some(respond(shard, request, answer))
}

fn respond(shard: &Shard, request: &Request, mut answer: Answer) -> Vec<u8> {
    let cors = &shard.node.config.transport.cors;
    if let Some(origin) = cors.allow(request.header("origin")) {
        answer.headers.push(("Access-Control-Allow-Origin", origin.to_owned()));
        if origin != "*" {
            answer.headers.push(("Vary", "Origin".to_owned()));
        }
    }
    answer.headers.push(("Cache-Control", "no-store".to_owned()));
    let headers: Vec<(&str, &str)> = answer.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let content_type = if answer.body.is_empty() { "" } else { "application/json" };
    h::response(answer.status, content_type, &answer.body, &headers, true)
}

fn preflight() -> Answer {
    Answer::json(204, Vec::new())
        .with("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
        .with("Access-Control-Allow-Headers", "Authorization, Content-Type")
        .with("Access-Control-Max-Age", PREFLIGHT_MAX_AGE_SECONDS)
}

/// `POST /poll`: the same checks as a WebSocket upgrade, then a session on this shard.
fn open(shard: &Rc<Shard>, request: &Request, peer: Option<std::net::IpAddr>) -> Answer {
    let identity = match super::identity::authenticate(shard, request) {
        Ok(identity) => identity,
        Err(e) => {
            shard.metrics.refused(Refusal::Unauthorized);
            return Answer::error(401, &e.to_string()).with("WWW-Authenticate", "Bearer");
        }
    };
    if shard.stop.is_set() {
        shard.metrics.refused(Refusal::Draining);
        return Answer::error(503, "server is shutting down; reconnect to another node").with("Retry-After", RETRY_AFTER_SECONDS);
    }
    // Sessions per client: its token's `sub`, else its address.
    let client = match identity.as_deref().and_then(|i| i.user.as_deref()) {
        Some(user) => Some(crate::guard::ClientKey::User(user.into())),
        None => peer.map(crate::guard::ClientKey::Addr),
    };
    let guard = &shard.node.guard;
    if let Some(client) = &client {
        if !guard.poll_client_enter(client) {
            let msg = format!(
                "this client already holds {} long-poll sessions (poll_sessions_per_client); poll or close one, sessions never polled expire within {:?}",
                guard.config.poll_sessions_per_client,
                guard.config.poll_open_timeout.min(shard.node.config.transport.poll_timeout)
            );
            return Answer::error(429, &msg).with("Retry-After", RETRY_AFTER_SECONDS);
        }
    }
    // The same admission as a WebSocket upgrade: draining, the shard's accept rate, the
    // node's max_connections.
    if let Err(refusal) = crate::admission::admit(&shard.node, &shard.admission, shard.now_ms()) {
        if let Some(client) = &client {
            guard.poll_client_leave(client);
        }
        shard.metrics.refused(refusal);
        let (msg, retry_after) = crate::admission::explain(refusal);
        return Answer::error(503, msg).with("Retry-After", retry_after);
    }
    let (conn, sid) = shard.register_poll(identity, client);
    let metrics = &shard.node.transport.poll_metrics[shard.id as usize];
    metrics.opened.inc();
    metrics.sessions.inc();
    let batch = conn.poll_batch(shard.now_ms());
    let mut body = Vec::with_capacity(batch.body.len() + sid.len() + 12);
    body.extend_from_slice(b"{\"sid\":\"");
    body.extend_from_slice(sid.as_bytes());
    body.extend_from_slice(b"\",");
    body.extend_from_slice(&batch.body[1..]);
    Answer::json(200, body)
}

/// A GET or POST on a session: here if this shard owns it, else forwarded to the owner.
async fn on_session(shard: &Rc<Shard>, sid: &str, op: PollOp) -> Answer {
    let Some((owner, slot, secret)) = parse_sid(sid).filter(|(owner, _, _)| (*owner as usize) < shard.node.shard_inboxes.len()) else {
        return gone();
    };
    if owner == shard.id {
        let answer = local(shard, slot, secret, op).await;
        return Answer::json(answer.status, answer.body);
    }
    let metrics = &shard.node.transport.poll_metrics[shard.id as usize];
    let (reply, answered) = tokio::sync::oneshot::channel();
    let forward = ToShard::Poll(Box::new(PollForward { slot, secret, op, reply }));
    if shard.node.shard_inboxes[owner as usize].push(forward).is_err() {
        metrics.forward_refused.inc();
        return Answer::error(503, "the session's shard is overloaded; retry shortly").with("Retry-After", "1");
    }
    metrics.forwarded.inc();
    let patience = shard.node.config.transport.poll_wait + Duration::from_millis(FORWARD_SLACK_MS);
    match monoio::time::timeout(patience, answered).await {
        Ok(Ok(answer)) => Answer::json(answer.status, answer.body),
        _ => Answer::error(503, "the session's shard did not answer; retry shortly").with("Retry-After", "1"),
    }
}

fn gone() -> Answer {
    Answer::error(404, "no such long-poll session (expired, closed or never opened); open a new one with POST /poll")
}

/// A request forwarded by another shard: answered on a task of its own (a GET waits).
pub fn serve_forwarded(shard: &Rc<Shard>, forward: PollForward) {
    let shard = shard.clone();
    monoio::spawn(async move {
        let PollForward { slot, secret, op, reply } = forward;
        let answer = local(&shard, slot, secret, op).await;
        let _ = reply.send(answer);
    });
}

/// Serves a request for a session this shard owns.
async fn local(shard: &Rc<Shard>, slot: u32, secret: u128, op: PollOp) -> PollAnswer {
    let Some(conn) = shard.poll_session(slot, secret) else {
        let answer = gone();
        return PollAnswer { status: answer.status, body: answer.body };
    };
    let metrics = &shard.node.transport.poll_metrics[shard.id as usize];
    match op {
        PollOp::Get { ack } => {
            metrics.gets.inc();
            if let Err(next) = conn.poll_ack(ack, shard.now_ms()) {
                let msg = format!("ack {ack} is past the last frame sent ({next}); ack the `next` of the previous answer");
                return PollAnswer { status: 400, body: error_body(400, &msg) };
            }
            if conn.state.borrow().outbox.is_empty() {
                conn.poll_wait(shard.node.config.transport.poll_wait).await;
            }
            if conn.state.borrow().finished.is_some() && conn.state.borrow().outbox.is_empty() {
                let answer = gone();
                return PollAnswer { status: answer.status, body: answer.body };
            }
            let batch = conn.poll_batch(shard.now_ms());
            if let Some(why) = batch.closed {
                // The close reached the client: the session is over.
                conn.finish(why);
            }
            PollAnswer { status: 200, body: batch.body }
        }
        PollOp::Post { body } => {
            metrics.posts.inc();
            let max = frames_per_post_max(shard.node.config.client_messages_per_second);
            let frames = match split_frames(&body, max) {
                Ok(frames) => frames,
                Err(SplitError::TooMany) => {
                    metrics.posts_too_many_frames.inc();
                    let msg = format!("more than {max} frames in one POST (twice client_rate, the burst a session may use); none were handled: send fewer");
                    return PollAnswer { status: 413, body: error_body(413, &msg) };
                }
                Err(SplitError::Malformed(msg)) => return PollAnswer { status: 400, body: error_body(400, &msg) },
            };
            for frame in frames {
                // A frame that closed the session (its replies overflowed outbound_limit,
                // say) ends the POST: a closing session takes no more ops.
                if conn.state.borrow().closing.is_some() || conn.state.borrow().finished.is_some() {
                    break;
                }
                shard.metrics.frames_in.inc();
                super::v1::on_text(shard, &conn, frame);
            }
            shard.flush(&conn);
            PollAnswer { status: 202, body: b"{}".to_vec() }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum SplitError {
    /// More than the allowed frames; parsing stopped at the first one over.
    TooMany,
    Malformed(String),
}

/// One JSON object, or an array of at most `max` of them, as the texts of client frames.
/// The array is read element by element and abandoned at element `max + 1`.
fn split_frames(body: &[u8], max: usize) -> Result<Vec<&str>, SplitError> {
    use serde::de::{DeserializeSeed, Deserializer, Error, SeqAccess, Visitor};
    let text = std::str::from_utf8(body).map_err(|_| SplitError::Malformed("the body must be UTF-8 JSON".into()))?;
    let trimmed = text.trim_start();
    if trimmed.is_empty() {
        return Err(SplitError::Malformed("empty body: send one frame ({\"op\":..}) or an array of frames".into()));
    }
    if !trimmed.starts_with('[') {
        return Ok(vec![text]);
    }
    /// (frames so far, the cap, set when the cap was passed).
    struct Seed<'a, 'v>(&'v mut Vec<&'a str>, usize, &'v mut bool);
    impl<'a> DeserializeSeed<'a> for Seed<'a, '_> {
        type Value = ();
        fn deserialize<D: Deserializer<'a>>(self, deserializer: D) -> Result<(), D::Error> {
            deserializer.deserialize_seq(self)
        }
    }
    impl<'a> Visitor<'a> for Seed<'a, '_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an array of frames")
        }
        fn visit_seq<A: SeqAccess<'a>>(self, mut seq: A) -> Result<(), A::Error> {
            while let Some(frame) = seq.next_element::<&'a RawValue>()? {
                if self.0.len() == self.1 {
                    *self.2 = true;
                    return Err(A::Error::custom("too many frames"));
                }
                self.0.push(frame.get());
            }
            Ok(())
        }
    }
    let mut frames = Vec::new();
    let mut too_many = false;
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let parsed = Seed(&mut frames, max, &mut too_many).deserialize(&mut deserializer).and_then(|()| deserializer.end());
    match parsed {
        _ if too_many => Err(SplitError::TooMany),
        Ok(()) => Ok(frames),
        Err(e) => Err(SplitError::Malformed(format!("the body is not a JSON array of frames: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_split_into_frames() {
        assert_eq!(split_frames(br#"{"op":"ping"}"#, 8).unwrap(), vec![r#"{"op":"ping"}"#]);
        assert_eq!(split_frames(br#" [{"op":"ping"}, {"op":"sub","ch":"a"}]"#, 8).unwrap(), vec![r#"{"op":"ping"}"#, r#"{"op":"sub","ch":"a"}"#]);
        assert_eq!(split_frames(b"[]", 8).unwrap(), Vec::<&str>::new());
        assert!(split_frames(b"", 8).is_err());
        assert!(split_frames(b"[1,", 8).is_err());
        assert!(split_frames(b"[{}] x", 8).is_err());
        assert!(split_frames(&[0xff, 0xfe], 8).is_err());
    }

    #[test]
    fn frames_past_the_cap_refuse_the_post() {
        assert_eq!(split_frames(b"[{},{},{}]", 3).unwrap().len(), 3);
        assert_eq!(split_frames(b"[{},{},{},{}]", 3), Err(SplitError::TooMany));
        // Refused at the first frame over, before the rest is even looked at.
        assert_eq!(split_frames(b"[{},{},{},{},not json", 3), Err(SplitError::TooMany));
        assert_eq!(frames_per_post_max(1000), 2000);
    }

    #[test]
    fn errors_are_json() {
        assert_eq!(error_body(404, "no \"such\""), br#"{"error":{"code":404,"msg":"no \"such\""}}"#.to_vec());
    }
}
