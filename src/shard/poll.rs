//! Long-poll sessions on the shard that opened them. A session is a connection record
//! without a socket: it sits in the same table, subscription index and heartbeat wheel
//! as WebSocket connections, so fan-out, permissions, limits and close reasons are the
//! same. Its outbound queue doubles as the resend buffer: frames stay queued until the
//! client acks them (`GET /poll/{sid}?ack=n`), numbered from the session's start.
//!
//! Owns: the session state (frame numbering, the waiting poll, expiry). Must not touch:
//! sockets, other shards (requests for them are forwarded by `transport::longpoll`).
//! Runs on: the owning shard.

use super::{Conn, Identity, Shard};
use crate::metrics::CloseReason;
use crate::protocol::ws;
use bytes::Bytes;
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

/// A long-poll session's state, in its connection record.
#[derive(Default)]
pub struct PollState {
    /// The capability in the sid: only its holder reaches the session.
    pub secret: u128,
    /// Number of the first frame in the outbox (frames are numbered from 0 = welcome).
    pub base: u64,
    /// Shard clock of the last poll's start or answer; a session not polled for
    /// `poll_timeout` expires.
    pub last_poll_ms: u64,
    /// A GET is waiting (the session is not idle while one does).
    pub waiting: bool,
    /// Bumped by every GET, so a newer one releases an older one still waiting.
    pub wait_generation: u64,
    waiter: Option<Waker>,
    /// The task that unregisters the session once it is finished.
    reaper: Option<Waker>,
    /// A `GET` came: until then the session expires after `poll_open_timeout`.
    pub polled: bool,
    /// Whose session it is, for `poll_sessions_per_client` (released by the reaper).
    pub client: Option<crate::guard::ClientKey>,
}

impl PollState {
    fn wake_waiter(&mut self) {
        if let Some(waker) = self.waiter.take() {
            waker.wake();
        }
    }

    /// Frames are queued or the session ended: wake the GET and the reaper.
    pub fn wake(&mut self, finished: bool) {
        self.wake_waiter();
        if finished {
            if let Some(waker) = self.reaper.take() {
                waker.wake();
            }
        }
    }
}

/// A session id: `{shard}-{slot}-{secret}` in hex, so any shard can route a request to
/// the owner and the owner can find the record without a map.
pub fn format_sid(shard: u16, slot: u32, secret: u128) -> String {
    format!("{shard:x}-{slot:x}-{secret:032x}")
}

pub fn parse_sid(sid: &str) -> Option<(u16, u32, u128)> {
    let mut parts = sid.split('-');
    let shard = u16::from_str_radix(parts.next()?, 16).ok()?;
    let slot = u32::from_str_radix(parts.next()?, 16).ok()?;
    let secret = parts.next().filter(|s| s.len() == 32).and_then(|s| u128::from_str_radix(s, 16).ok())?;
    parts.next().is_none().then_some((shard, slot, secret))
}

/// 128 random bits from the kernel.
pub fn random_secret() -> u128 {
    let mut bytes = [0u8; 16];
    let mut filled = 0;
    while filled < bytes.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `bytes`.
        let n = unsafe { libc::getrandom(bytes[filled..].as_mut_ptr().cast(), bytes.len() - filled, 0) };
        if n > 0 {
            filled += n as usize;
        } else if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            panic!("getrandom failed: {}", std::io::Error::last_os_error());
        }
    }
    u128::from_ne_bytes(bytes)
}

/// What a poll answer carries: the JSON body and whether it ended the session.
pub struct Batch {
    pub body: Vec<u8>,
    pub closed: Option<CloseReason>,
}

impl Shard {
    /// Opens a session (the node slot, and the client's session count when `client` is
    /// given, are already reserved) and queues its welcome.
    pub fn register_poll(self: &Rc<Self>, identity: Option<Box<Identity>>, client: Option<crate::guard::ClientKey>) -> (Rc<Conn>, String) {
        let slot = match self.free_slots.borrow_mut().pop() {
            Some(slot) => slot,
            None => {
                let mut conns = self.conns.borrow_mut();
                conns.push(None);
                (conns.len() - 1) as u32
            }
        };
        let sequence = self.next_conn.get();
        self.next_conn.set(sequence + 1);
        let id = ((self.id as u64) << 48) | sequence;
        let now = self.now_ms();
        let secret = random_secret();
        let conn = Rc::new(Conn::new_poll(slot, id, identity, now));
        {
            let mut st = conn.state.borrow_mut();
            st.tokens = self.node.config.client_messages_per_second.saturating_mul(2);
            st.poll = Some(Box::new(PollState { secret, last_poll_ms: now, client, ..PollState::default() }));
        }
        self.conns.borrow_mut()[slot as usize] = Some(conn.clone());
        self.live.set(self.live.get() + 1);
        self.metrics.connections.inc();
        self.presence_connected(&conn);
        let hb = self.node.config.heartbeat.as_secs().max(1);
        self.send(&conn, ws::encode_text(&crate::protocol::ops::welcome(conn.id, &self.node.config.node, hb)));
        monoio::spawn(reap(self.clone(), conn.clone()));
        monoio::spawn(expire_unpolled(self.clone(), conn.clone()));
        (conn, format_sid(self.id, slot, secret))
    }

    /// The live session in `slot` holding `secret`.
    pub fn poll_session(&self, slot: u32, secret: u128) -> Option<Rc<Conn>> {
        let conns = self.conns.borrow();
        let conn = conns.get(slot as usize)?.as_ref()?;
        let st = conn.state.borrow();
        let poll = st.poll.as_ref()?;
        (poll.secret == secret && st.finished.is_none()).then(|| conn.clone())
    }

    /// The wheel's visit to a session: expire it when nobody polled for `poll_timeout`,
    /// close it when its token expired.
    pub(super) fn tick_poll(&self, conn: &Rc<Conn>, now: u64, now_unix: u64) {
        let timeout = self.node.config.transport.poll_timeout.as_millis() as u64;
        let (idle, closing) = {
            let st = conn.state.borrow();
            let Some(poll) = st.poll.as_ref() else { return };
            (if poll.waiting { 0 } else { now.saturating_sub(poll.last_poll_ms) }, st.closing.is_some())
        };
        if idle >= timeout {
            self.node.transport.poll_metrics[self.id as usize].expired.inc();
            conn.finish(CloseReason::HeartbeatTimeout);
            return;
        }
        if !closing && conn.identity.as_ref().is_some_and(|i| i.expired(now_unix)) {
            (self.handlers.token_expired)(self, conn);
        }
    }
}

/// Unregisters a session once it is finished (expired, or its close was delivered).
async fn reap(shard: Rc<Shard>, conn: Rc<Conn>) {
    poll_fn(|cx| {
        let mut st = conn.state.borrow_mut();
        if st.finished.is_some() {
            return Poll::Ready(());
        }
        if let Some(poll) = st.poll.as_mut() {
            poll.reaper = Some(cx.waker().clone());
        }
        Poll::Pending
    })
    .await;
    shard.unregister(&conn);
    shard.node.transport.poll_metrics[shard.id as usize].sessions.sub(1);
    let client = conn.state.borrow_mut().poll.as_mut().and_then(|poll| poll.client.take());
    if let Some(client) = client {
        shard.node.guard.poll_client_leave(&client);
    }
}

/// Ends a session whose first `GET` did not come within `poll_open_timeout` (the lower of
/// it and `poll_timeout`): a `POST /poll` alone must not hold a node slot for long.
async fn expire_unpolled(shard: Rc<Shard>, conn: Rc<Conn>) {
    let config = &shard.node.config;
    monoio::time::sleep(config.guard.poll_open_timeout.min(config.transport.poll_timeout)).await;
    let unpolled = {
        let st = conn.state.borrow();
        st.finished.is_none() && st.poll.as_ref().is_some_and(|poll| !poll.polled && !poll.waiting)
    };
    if unpolled {
        shard.node.guard.poll_unclaimed_expired.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        shard.node.transport.poll_metrics[shard.id as usize].expired.inc();
        conn.finish(CloseReason::HeartbeatTimeout);
    }
}

impl Conn {
    pub fn is_poll(&self) -> bool {
        self.state.borrow().poll.is_some()
    }

    /// Confirms every frame numbered below `ack`. Err: `ack` is past the last frame sent.
    pub fn poll_ack(&self, ack: u64, now_ms: u64) -> Result<(), u64> {
        let mut st = self.state.borrow_mut();
        let queued = st.outbox.len() as u64;
        let Some(poll) = st.poll.as_mut() else { return Ok(()) };
        poll.last_poll_ms = now_ms;
        poll.polled = true;
        let next = poll.base + queued;
        if ack > next {
            return Err(next);
        }
        let confirmed = ack.saturating_sub(poll.base);
        poll.base += confirmed;
        for _ in 0..confirmed {
            if let Some(frame) = st.outbox.pop_front() {
                st.outbox_bytes -= frame.len();
            }
        }
        Ok(())
    }

    /// Waits until a frame is queued, the session ends, a newer GET arrives, or `wait`
    /// passes.
    pub async fn poll_wait(&self, wait: std::time::Duration) {
        let generation = {
            let mut st = self.state.borrow_mut();
            let Some(poll) = st.poll.as_mut() else { return };
            poll.wait_generation += 1;
            poll.waiting = true;
            poll.wake_waiter(); // an older GET answers (empty) now
            poll.wait_generation
        };
        let ready = poll_fn(|cx| {
            let mut st = self.state.borrow_mut();
            let has_frames = !st.outbox.is_empty() || st.finished.is_some();
            let Some(poll) = st.poll.as_mut() else { return Poll::Ready(()) };
            if has_frames || poll.wait_generation != generation {
                return Poll::Ready(());
            }
            poll.waiter = Some(cx.waker().clone());
            Poll::Pending
        });
        monoio::select! {
            _ = ready => {},
            _ = monoio::time::sleep(wait) => {},
        }
        let mut st = self.state.borrow_mut();
        if let Some(poll) = st.poll.as_mut() {
            if poll.wait_generation == generation {
                poll.waiting = false;
                poll.waiter = None;
            }
        }
    }

    /// Every unconfirmed frame as `{"frames":[..],"next":n}`. A close frame becomes
    /// `{"op":"close","code":..,"reason":..}` and ends the session once answered.
    pub fn poll_batch(&self, now_ms: u64) -> Batch {
        let mut st = self.state.borrow_mut();
        let closing = st.closing.map(|(why, _)| why);
        let count = st.outbox.len() as u64;
        let base = match st.poll.as_mut() {
            Some(poll) => {
                poll.last_poll_ms = now_ms;
                poll.base
            }
            None => 0,
        };
        let mut body = Vec::with_capacity(32 + st.outbox_bytes);
        body.extend_from_slice(b"{\"frames\":[");
        let mut closed = None;
        for (i, frame) in st.outbox.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            if push_frame_json(&mut body, frame) {
                closed = Some(closing.unwrap_or(CloseReason::Shutdown));
            }
        }
        body.extend_from_slice(b"],\"next\":");
        body.extend_from_slice((base + count).to_string().as_bytes());
        body.push(b'}');
        Batch { body, closed }
    }
}

/// Appends one queued WebSocket frame as a JSON value; true when it was a close frame.
fn push_frame_json(out: &mut Vec<u8>, frame: &Bytes) -> bool {
    let (opcode, payload) = ws_payload(frame);
    match opcode {
        ws::opcode::TEXT => {
            out.extend_from_slice(payload);
            false
        }
        ws::opcode::CLOSE => {
            let code = if payload.len() >= 2 { u16::from_be_bytes([payload[0], payload[1]]) } else { ws::close_code::NORMAL };
            let reason = std::str::from_utf8(payload.get(2..).unwrap_or_default()).unwrap_or("");
            out.extend_from_slice(b"{\"op\":\"close\",\"code\":");
            out.extend_from_slice(code.to_string().as_bytes());
            out.extend_from_slice(b",\"reason\":\"");
            crate::protocol::ops::escape_json_str_into(out, reason);
            out.extend_from_slice(b"\"}");
            true
        }
        // Nothing else is queued on a session (no pings: polls are its heartbeat); keep
        // the numbering whole anyway.
        _ => {
            out.extend_from_slice(b"{\"op\":\"noop\"}");
            false
        }
    }
}

/// The opcode and payload of an unmasked server frame.
fn ws_payload(frame: &[u8]) -> (u8, &[u8]) {
    let opcode = frame[0] & 0x0f;
    let header = match frame[1] & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    (opcode, &frame[header.min(frame.len())..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sids_round_trip_and_reject_junk() {
        let secret = random_secret();
        let sid = format_sid(3, 77, secret);
        assert_eq!(parse_sid(&sid), Some((3, 77, secret)));
        assert_eq!(parse_sid("3-4d"), None);
        assert_eq!(parse_sid("3-4d-abc"), None, "short secret");
        assert_eq!(parse_sid(&format!("{sid}-1")), None);
        assert_eq!(parse_sid("zz-1-00000000000000000000000000000000"), None);
        assert_ne!(random_secret(), random_secret());
    }

    #[test]
    fn frames_become_json() {
        let mut out = Vec::new();
        assert!(!push_frame_json(&mut out, &ws::encode_text(br#"{"op":"msg"}"#)));
        assert_eq!(out, br#"{"op":"msg"}"#);
        let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(70_000));
        out.clear();
        push_frame_json(&mut out, &ws::encode_text(big.as_bytes()));
        assert_eq!(out, big.as_bytes());
        out.clear();
        assert!(push_frame_json(&mut out, &ws::encode_close(4008, "slow \"reader\"")));
        assert_eq!(String::from_utf8(out).unwrap(), r#"{"op":"close","code":4008,"reason":"slow \"reader\""}"#);
    }
}
