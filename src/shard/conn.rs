//! One WebSocket connection's record: its outbound queue, reader state and
//! subscriptions. Kept small (no buffers while idle) because a node holds a million.
//!
//! Owns: the outbound backlog and its byte bound (slow consumer → 4008), the close
//! state machine. Must not touch: other connections, other threads. Runs on: its shard.

use super::sys;
use crate::metrics::{CloseReason, ShardMetrics};
use crate::protocol::ws::{self, WsReader};
use bytes::Bytes;
use monoio::net::TcpStream;
use serde_json::value::RawValue;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};

/// Who is on the other end, from the JWT (absent: anonymous).
#[derive(Debug)]
pub struct Identity {
    pub user: Option<String>,
    pub chans: Option<Vec<String>>,
    pub pubs: Option<Vec<String>>,
    pub info: Option<Box<RawValue>>,
    /// Token expiry, seconds since the Unix epoch (0: none).
    pub expires_unix: u64,
}

impl Identity {
    /// Whether the token has run out at `now_unix` (seconds): the connection must end.
    pub fn expired(&self, now_unix: u64) -> bool {
        self.expires_unix != 0 && self.expires_unix < now_unix
    }
}

/// Which wire adapter speaks on a connection: the transports encode its answers and
/// decode its frames by it (data only; the shard never acts on it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Wire {
    /// Protocol v1 (PROTOCOL.md), over WebSocket or long-poll.
    #[default]
    V1,
    /// Pusher Channels protocol 7, for the app at this index of `config.pusher.apps`.
    Pusher { app: u16 },
}

impl Wire {
    /// The close code this wire's clients get for a close the shard decides (`why`).
    /// pusher-js reads ranges, not codes: 4000–4099 means "do not reconnect", so protocol
    /// v1's 4008 would strand a Pusher client for good. Pusher connections get 4100 (over
    /// capacity: back off, then reconnect) for a slow consumer, 4201 for a heartbeat
    /// timeout (no pong) and 4200 (reconnect now) for a drain or shutdown;
    /// `ringcast_closes_total` keeps the cause.
    pub fn close_code(self, code: u16, why: CloseReason) -> u16 {
        match (self, why) {
            (Wire::V1, _) => code,
            (Wire::Pusher { .. }, CloseReason::SlowConsumer) => 4100,
            (Wire::Pusher { .. }, CloseReason::HeartbeatTimeout) => 4201,
            (Wire::Pusher { .. }, CloseReason::Drain | CloseReason::Shutdown) => 4200,
            (Wire::Pusher { .. }, _) => code,
        }
    }
}

pub struct Conn {
    pub slot: u32,
    pub id: u64,
    /// None for a long-poll session (its frames leave through HTTP answers).
    pub stream: Option<TcpStream>,
    /// -1 for a long-poll session.
    pub fd: RawFd,
    /// Boxed: most deployments are token-authenticated, but the record stays small.
    pub identity: Option<Box<Identity>>,
    pub state: RefCell<ConnState>,
}

#[derive(Default)]
pub struct ConnState {
    pub outbox: VecDeque<Bytes>,
    pub outbox_bytes: usize,
    /// Bytes of `outbox[0]` already written (a frame is far below 4 GiB; u32 keeps the
    /// record at 304 bytes, which with `Rc`'s counts fills mimalloc's 320-byte class
    /// exactly: 8 bytes more would take a 384-byte block per connection).
    pub head_offset: u32,
    pub reader: WsReader,
    /// The unconsumed tail of the last read: a frame that has not fully arrived.
    pub carry: Option<Vec<u8>>,
    pub subscriptions: Vec<Box<str>>,
    /// Set once a close frame is queued: why, and when to give up on the handshake.
    pub closing: Option<(CloseReason, u64)>,
    /// The connection is finished; the task exits at its next wake.
    pub finished: Option<CloseReason>,
    pub last_seen_ms: u64,
    pub ping_outstanding: bool,
    pub dirty: bool,
    pub writer_active: bool,
    /// Shard delivery sequence last queued here, so overlapping patterns deliver once.
    pub last_delivery: u32,
    /// Token bucket for client ops (rate limit).
    pub tokens: u32,
    pub tokens_at_ms: u64,
    /// Resumes (`sub` with `since`) in progress; boxed because almost no connection has one.
    pub replays: Option<Box<Vec<Replaying>>>,
    /// The TLS session when the listener terminates TLS: the outbox holds plaintext
    /// frames, encrypted at flush time (see `shard::tls`).
    pub tls: Option<Box<rustls::ServerConnection>>,
    /// Set on a long-poll session: the outbox is its resend buffer (see `shard::poll`).
    pub poll: Option<Box<super::poll::PollState>>,
    /// The last queued frame of each conflated channel (`--conflate`), once this backlog
    /// has passed the conflation threshold; dropped when the backlog drains.
    pub conflated: Option<Box<Vec<(Box<str>, Bytes)>>>,
    /// The bridge knows this connection for presence (online or joined): its end must
    /// be reported.
    pub presence: bool,
    /// permessage-deflate was negotiated: published messages go out compressed (the
    /// shard's shared RSV1 copy) and RSV1 client frames are inflated by the shard.
    pub deflate: bool,
    /// The wire adapter of this connection.
    pub wire: Wire,
    /// The wire adapter's own per-connection state, made on first use (boxed: an idle
    /// connection, or any protocol v1 one, pays one pointer).
    pub wire_state: Option<Box<WireState>>,
}

/// What a wire adapter keeps per connection beyond the shared record (Pusher: the client
/// event rate window and the signed-in user).
#[derive(Default, Debug)]
pub struct WireState {
    /// The second the rate window counts in, and the events counted in it.
    pub window: u32,
    pub count: u16,
    /// The user the connection signed in as (`pusher:signin`).
    pub signed_in: Option<Box<str>>,
    /// The presence channels it is a member of, as whom (Pusher `channel_data`); at most
    /// one per subscription, so bounded by `max_subscriptions`.
    pub members: Vec<WireMember>,
}

/// A connection's membership of one presence channel (Pusher).
#[derive(Debug)]
pub struct WireMember {
    /// The internal channel (`$pusher.{app}.presence-…`).
    pub channel: Box<str>,
    pub user: std::sync::Arc<str>,
    /// `user_info`, verbatim JSON.
    pub info: Option<Box<serde_json::value::RawValue>>,
}

/// A resume: while `upto` is None the bridge is replaying `channel`'s history after
/// `since`, and live messages for it wait here until the replay says where it ended. Then
/// `upto` is set and the entry stays as a seam guard: the live feed may still be behind
/// the replay (JetStream delivers to the node a little later than the replay read the
/// stream), so live messages with `seq <= upto` are dropped until the first one past it.
pub struct Replaying {
    /// The shard's id for this resume (a later resume of the same channel gets another).
    pub replay: u32,
    pub channel: Box<str>,
    /// The `sub` op's id: `ok` (or `err`) is sent once the replay is done.
    pub id: Option<u32>,
    pub started_ms: u64,
    /// Live (seq, frame) that arrived during the replay, in order.
    pub held: Vec<(u64, Bytes)>,
    pub held_bytes: usize,
    /// Set when the replay is done: everything up to here was replayed.
    pub upto: Option<u64>,
}

/// What [`Conn::hold_if_replaying`] did with a live message.
pub enum Hold {
    /// The channel is not being replayed: deliver as usual.
    No,
    Held,
    /// Already replayed: a duplicate at the seam, dropped.
    Skip,
    /// Holding it would pass the outbound bound: a slow consumer.
    Overflow,
}

impl Conn {
    /// Holds a live message of a channel that is being replayed, so it goes out after the
    /// replay (or not at all, if the replay already had it).
    pub fn hold_if_replaying(&self, channel: &str, seq: u64, frame: &Bytes, limit_bytes: usize) -> Hold {
        let mut st = self.state.borrow_mut();
        let outbox_bytes = st.outbox_bytes;
        let Some(replays) = st.replays.as_mut() else { return Hold::No };
        let Some(index) = replays.iter().position(|r| *r.channel == *channel) else { return Hold::No };
        let replaying = &mut replays[index];
        match replaying.upto {
            Some(upto) if seq <= upto => return Hold::Skip,
            Some(_) => {
                // The live feed has passed the seam: the guard is no longer needed.
                replays.swap_remove(index);
                if replays.is_empty() {
                    st.replays = None;
                }
                return Hold::No;
            }
            None => {}
        }
        if outbox_bytes + replaying.held_bytes + frame.len() > limit_bytes {
            return Hold::Overflow;
        }
        replaying.held_bytes += frame.len();
        replaying.held.push((seq, frame.clone()));
        Hold::Held
    }

    pub fn replays_in_progress(&self) -> usize {
        self.state.borrow().replays.as_ref().map_or(0, |r| r.iter().filter(|r| r.upto.is_none()).count())
    }

    pub fn start_replay(&self, replaying: Replaying) {
        self.state.borrow_mut().replays.get_or_insert_with(Default::default).push(replaying);
    }

    pub fn is_replaying(&self, replay: u32) -> bool {
        self.state.borrow().replays.as_ref().is_some_and(|r| r.iter().any(|r| r.replay == replay && r.upto.is_none()))
    }

    /// Ends the replay `replay` (still in progress) at `upto`: returns the `sub`'s id and the
    /// live messages held meanwhile; the entry stays as the seam guard.
    pub fn finish_replay(&self, replay: u32, upto: u64, now_ms: u64) -> Option<(Option<u32>, Vec<(u64, Bytes)>)> {
        let mut st = self.state.borrow_mut();
        let replaying = st.replays.as_mut()?.iter_mut().find(|r| r.replay == replay && r.upto.is_none())?;
        replaying.upto = Some(upto);
        replaying.started_ms = now_ms;
        replaying.held_bytes = 0;
        Some((replaying.id, std::mem::take(&mut replaying.held)))
    }

    /// Removes the resume with this id (or of this channel), if it is still in progress.
    pub fn take_replay(&self, matches: impl Fn(&Replaying) -> bool) -> Option<Replaying> {
        let mut st = self.state.borrow_mut();
        let replays = st.replays.as_mut()?;
        let index = replays.iter().position(matches)?;
        let replaying = replays.swap_remove(index);
        if replays.is_empty() {
            st.replays = None;
        }
        Some(replaying)
    }

    /// Resumes still replaying since before `started_before_ms`; seam guards older than
    /// that are dropped (the live feed is never that far behind).
    pub fn stale_replays(&self, started_before_ms: u64) -> Vec<u32> {
        let mut st = self.state.borrow_mut();
        let Some(replays) = st.replays.as_mut() else { return Vec::new() };
        replays.retain(|r| r.upto.is_none() || r.started_ms >= started_before_ms);
        let stale = replays.iter().filter(|r| r.upto.is_none() && r.started_ms < started_before_ms).map(|r| r.replay).collect();
        if replays.is_empty() {
            st.replays = None;
        }
        stale
    }
}

/// What a write attempt left behind.
pub enum Flushed {
    /// Everything queued is on the wire.
    Empty,
    /// The socket is full; wait for writability.
    Blocked,
    /// The socket failed; the connection is finished.
    Failed,
}

impl Conn {
    pub fn new(slot: u32, id: u64, stream: TcpStream, identity: Option<Box<Identity>>, now_ms: u64) -> Conn {
        let fd = stream.as_raw_fd();
        let state = ConnState { last_seen_ms: now_ms, tokens_at_ms: now_ms, ..ConnState::default() };
        Conn { slot, id, stream: Some(stream), fd, identity, state: RefCell::new(state) }
    }

    /// A long-poll session's record: no socket.
    pub fn new_poll(slot: u32, id: u64, identity: Option<Box<Identity>>, now_ms: u64) -> Conn {
        let state = ConnState { last_seen_ms: now_ms, tokens_at_ms: now_ms, ..ConnState::default() };
        Conn { slot, id, stream: None, fd: -1, identity, state: RefCell::new(state) }
    }

    pub fn user(&self) -> Option<&str> {
        self.identity.as_ref().and_then(|i| i.user.as_deref())
    }

    /// Queues a frame, enforcing the backlog bound. Returns true when the connection just
    /// became dirty (the caller adds it to the shard's flush list).
    pub fn enqueue(&self, frame: Bytes, limit_bytes: usize, now_ms: u64, close_timeout_ms: u64, metrics: &ShardMetrics) -> bool {
        self.enqueue_frames(frame, 1, limit_bytes, now_ms, close_timeout_ms, metrics)
    }

    /// [`Conn::enqueue`] for a buffer holding `frames` whole frames back to back (a run of
    /// messages sent as one queue entry).
    pub fn enqueue_frames(&self, frame: Bytes, frames: u64, limit_bytes: usize, now_ms: u64, close_timeout_ms: u64, metrics: &ShardMetrics) -> bool {
        let mut st = self.state.borrow_mut();
        if st.closing.is_some() || st.finished.is_some() {
            return false;
        }
        if st.outbox_bytes + frame.len() > limit_bytes {
            drop(st);
            return self.close(ws::close_code::SLOW_CONSUMER, "outbound backlog over its bound", CloseReason::SlowConsumer, now_ms, close_timeout_ms, metrics);
        }
        st.outbox_bytes += frame.len();
        st.outbox.push_back(frame);
        metrics.frames_out.add(frames);
        let newly = !st.dirty;
        st.dirty = true;
        newly
    }

    /// Queues a message of a conflated channel on a backlog past the conflation threshold:
    /// when this channel's previous frame is still waiting (not started on the wire), the
    /// new frame takes its place and the old message is dropped (`replaced` counts it, and
    /// `skipped` more messages of a run that only its newest one stands for); otherwise it
    /// is queued as usual and remembered (up to `channels_max` channels; a channel past
    /// that is queued whole and counted in `conflate_channels_full`). The byte bound holds
    /// either way. Returns true if newly dirty.
    #[allow(clippy::too_many_arguments)]
    pub fn enqueue_conflated(&self, channel: &str, frame: Bytes, skipped: u64, channels_max: usize, limit_bytes: usize, now_ms: u64, close_timeout_ms: u64, metrics: &ShardMetrics) -> bool {
        let mut st = self.state.borrow_mut();
        if st.closing.is_some() || st.finished.is_some() {
            return false;
        }
        let mut conflated = st.conflated.take().unwrap_or_default();
        // The head may be half written: it must go out whole.
        let first_waiting = usize::from(st.head_offset > 0);
        if let Some(i) = conflated.iter().position(|(ch, _)| **ch == *channel) {
            let previous = &conflated[i].1;
            let queued = st.outbox.iter().skip(first_waiting).position(|b| b.as_ptr() == previous.as_ptr() && b.len() == previous.len());
            match queued {
                Some(at) if st.outbox_bytes - st.outbox[first_waiting + at].len() + frame.len() <= limit_bytes => {
                    let at = first_waiting + at;
                    st.outbox_bytes = st.outbox_bytes - st.outbox[at].len() + frame.len();
                    st.outbox[at] = frame.clone();
                    conflated[i].1 = frame;
                    st.conflated = Some(conflated);
                    metrics.conflated.add(1 + skipped);
                    return false; // already queued: the connection is dirty or being written
                }
                Some(_) => {}
                None => {
                    conflated.swap_remove(i);
                }
            }
        }
        if st.outbox_bytes + frame.len() <= limit_bytes {
            if conflated.len() < channels_max {
                conflated.push((channel.into(), frame.clone()));
            } else {
                metrics.conflate_channels_full.inc();
            }
        }
        st.conflated = Some(conflated);
        metrics.conflated.add(skipped);
        drop(st);
        self.enqueue_frames(frame, 1, limit_bytes, now_ms, close_timeout_ms, metrics)
    }

    /// Starts the close handshake: drops what is queued (except a half-written frame,
    /// which must finish to keep the stream framed), queues the close frame, and sets the
    /// deadline after which the socket is shut regardless. Returns true if newly dirty.
    pub fn close(&self, code: u16, reason: &str, why: CloseReason, now_ms: u64, close_timeout_ms: u64, metrics: &ShardMetrics) -> bool {
        let mut st = self.state.borrow_mut();
        if st.closing.is_some() || st.finished.is_some() {
            return false;
        }
        let keep = if st.head_offset > 0 { 1 } else { 0 };
        let dropped = st.outbox.len().saturating_sub(keep) as u64;
        if let Some(poll) = st.poll.as_mut() {
            // Frame numbers never go back: the dropped frames' numbers stay used.
            poll.base += dropped;
        }
        st.outbox.truncate(keep);
        st.outbox_bytes = st.outbox.iter().map(|b| b.len()).sum();
        let frame = ws::encode_close(st.wire.close_code(code, why), reason);
        st.outbox_bytes += frame.len();
        st.outbox.push_back(frame);
        metrics.frames_out.inc();
        st.closing = Some((why, now_ms + close_timeout_ms));
        let newly = !st.dirty;
        st.dirty = true;
        newly
    }

    /// Ends the connection now: the reading task wakes with EOF and cleans up. A close
    /// the server started keeps its cause (a slow consumer whose 4008 is stuck behind a
    /// full socket is a slow consumer, not an I/O error or a handshake timeout).
    pub fn finish(&self, why: CloseReason) {
        let mut st = self.state.borrow_mut();
        if st.finished.is_none() {
            st.finished = Some(st.closing.map_or(why, |(cause, _)| cause));
            match st.poll.as_mut() {
                Some(poll) => poll.wake(true),
                None => sys::shutdown(self.fd),
            }
        }
    }

    /// Writes as much of the backlog as the socket accepts, in vectored sends.
    pub fn flush(&self, iovecs_max: usize, metrics: &ShardMetrics) -> Flushed {
        let mut st = self.state.borrow_mut();
        st.dirty = false;
        if st.tls.is_some() {
            return self.flush_tls(&mut st, iovecs_max, metrics);
        }
        if let Some(poll) = st.poll.as_mut() {
            // A session's frames wait for a GET; wake the one waiting.
            poll.wake(false);
            return Flushed::Empty;
        }
        while !st.outbox.is_empty() {
            match sys::send_queue(self.fd, &st.outbox, st.head_offset as usize, iovecs_max) {
                Ok(0) => return Flushed::Blocked,
                Ok(written) => {
                    metrics.writes.inc();
                    metrics.bytes_out.add(written as u64);
                    advance(&mut st, written);
                }
                Err(_) => {
                    drop(st);
                    self.finish(CloseReason::IoError);
                    return Flushed::Failed;
                }
            }
        }
        Flushed::Empty
    }
}

impl Conn {
    fn flush_tls(&self, st: &mut ConnState, iovecs_max: usize, metrics: &ShardMetrics) -> Flushed {
        let ConnState { tls, outbox, head_offset, outbox_bytes, .. } = st;
        let Some(session) = tls.as_mut() else { return Flushed::Empty };
        let advance = |queue: &mut VecDeque<Bytes>, offset: &mut usize, n: usize| {
            *outbox_bytes -= n;
            advance_queue(queue, offset, n);
        };
        let wrote = |n: usize| {
            metrics.writes.inc();
            metrics.bytes_out.add(n as u64);
        };
        let mut offset = *head_offset as usize;
        let flushed = super::tls::flush(session, self.fd, outbox, &mut offset, iovecs_max, advance, wrote);
        *head_offset = offset as u32;
        match flushed {
            super::tls::TlsFlushed::Empty => Flushed::Empty,
            super::tls::TlsFlushed::Blocked => Flushed::Blocked,
            super::tls::TlsFlushed::Failed => {
                st.finished.get_or_insert(CloseReason::IoError);
                sys::shutdown(self.fd);
                Flushed::Failed
            }
        }
    }
}

fn advance_queue(queue: &mut VecDeque<Bytes>, offset: &mut usize, mut written: usize) {
    while written > 0 {
        let head_left = queue[0].len() - *offset;
        if written >= head_left {
            written -= head_left;
            queue.pop_front();
            *offset = 0;
        } else {
            *offset += written;
            written = 0;
        }
    }
}

fn advance(st: &mut ConnState, mut written: usize) {
    st.outbox_bytes -= written;
    while written > 0 {
        let head_left = st.outbox[0].len() - st.head_offset as usize;
        if written >= head_left {
            written -= head_left;
            st.outbox.pop_front();
            st.head_offset = 0;
        } else {
            // Less than the head frame's length, itself below u32::MAX.
            st.head_offset += written as u32;
            written = 0;
        }
    }
}

#[cfg(test)]
mod size_tests {
    /// A node holds a million connections: the record's size is watched. Prints it (run
    /// with --nocapture) and holds the bound the idle-memory figures in BENCHMARKS.md rest on.
    #[test]
    fn connection_record_stays_small() {
        let state = std::mem::size_of::<super::ConnState>();
        let conn = std::mem::size_of::<super::Conn>();
        println!("ConnState {state} bytes, Conn {conn} bytes");
        // Rc<Conn> adds 16 bytes of counts: 304 + 16 fills mimalloc's 320-byte size
        // class; one byte more and every connection takes a 384-byte block.
        assert!(conn <= 304, "Conn grew to {conn} bytes (ConnState {state}); keep rarely used fields boxed");
    }
}
