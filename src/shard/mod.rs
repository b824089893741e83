//! One core's world: a pinned thread running one monoio ring, its own SO_REUSEPORT
//! listener, and every connection it accepted, with their subscriptions, timers and
//! outbound queues. Nothing here is shared or locked; per-shard state is `Rc`/`Cell`.
//!
//! Owns: the connection table, the shard's subscription index, the flush list, the
//! heartbeat wheel. Must not touch: other shards' state (only mailboxes cross threads),
//! outside engines. Runs on: its shard thread.

pub mod conn;
pub mod drain;
mod event;
pub mod poll;
mod reply;
mod presence;
mod query;
pub mod sys;
pub mod tls;

pub use conn::{Conn, Flushed, Hold, Identity, Replaying, Wire, WireMember};
pub use event::LocalEvent;
pub use reply::Reply;

use crate::channel::{Insert, Remove, SubIndex};
use crate::fanout::{ConnRef, Delivery, Mailbox, ReplayError, ToBridge, ToShard};
use crate::metrics::{CloseReason, ShardMetrics};
use crate::node::Node;
use crate::permission;
use crate::protocol::ws::{self, WsLimits};
use bytes::Bytes;
use monoio::net::{TcpListener, TcpStream};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// Messages the shard takes from its inbox per loop turn before flushing; bounds the
/// latency one burst can add to the writes it queued.
const INBOX_BATCH_MESSAGES_MAX: usize = 256;
/// Heartbeat wheel slots: each tick visits 1/WHEEL_SLOTS of the connections, so every
/// connection is checked once per heartbeat without a timer of its own.
const WHEEL_SLOTS: u64 = 16;
/// Shortest wheel tick, so a tiny heartbeat setting cannot spin the shard.
const WHEEL_TICK_MS_MIN: u64 = 10;
/// How long a close handshake may take before the socket is shut regardless.
pub const CLOSE_TIMEOUT_MS: u64 = 5_000;
/// How long a resume may take before it is answered 503: the bridge gives up handing a
/// replay to a full inbox after 5 s and JetStream requests time out after 5 s, so a
/// replay still missing after this will never come.
pub const REPLAY_TIMEOUT_MS: u64 = 30_000;
/// Resumes one connection may have in progress (a reconnecting client resumes each of
/// its history channels at once); past it `sub … since` answers 429.
pub const REPLAYS_PER_CONNECTION_MAX: usize = 64;

/// What one fan-out pass sends: a message, or a run of consecutive messages on one
/// channel joined into one buffer (see `coalesce_bytes`).
struct Outgoing<'a> {
    channel: &'a str,
    /// The message's stream sequence; always None for a run of several.
    seq: Option<u64>,
    /// What each subscriber gets: the message's frame, or the run's frames back to back.
    frame: Bytes,
    /// The messages in it, in order (one for a single message).
    parts: &'a [Arc<Delivery>],
    /// The connection (id) that must not get it; runs are only of messages without one.
    exclude: Option<u64>,
}

pub struct Shard {
    pub id: u16,
    pub node: Arc<Node>,
    pub metrics: Arc<ShardMetrics>,
    inbox: Arc<Mailbox<ToShard>>,
    conns: RefCell<Vec<Option<Rc<Conn>>>>,
    free_slots: RefCell<Vec<u32>>,
    live: Cell<usize>,
    subs: RefCell<SubIndex<u32>>,
    dirty: RefCell<Vec<u32>>,
    /// One receive buffer for every connection on the shard: reads are handled to the
    /// end before the next one starts, so idle connections hold none.
    pub read_buf: RefCell<Box<[u8]>>,
    delivery_seq: Cell<u32>,
    next_conn: Cell<u64>,
    next_replay: Cell<u32>,
    closing: RefCell<Vec<u32>>,
    pub stop: LocalEvent,
    /// Interest changes the full bridge inbox refused; retried each tick. At most one
    /// entry per pattern in `subs`, so bounded by it.
    interest_retry: RefCell<Vec<(Box<str>, bool)>>,
    /// Presence changes the full bridge inbox refused, in order; see `shard/presence.rs`.
    presence_retry: RefCell<std::collections::VecDeque<crate::presence::Change>>,
    ping_frame: Bytes,
    pub ws_limits: WsLimits,
    /// permessage-deflate: the shard's one compressor (each published message compressed
    /// once, shared by every compressing subscriber) and one inflater (client messages,
    /// no context kept), made on first use.
    deflater: RefCell<Option<crate::protocol::deflate::Deflater>>,
    pub inflater: RefCell<Option<crate::protocol::deflate::Inflater>>,
    /// This shard's accept-rate bucket.
    pub admission: crate::admission::ShardAdmission,
    /// What the transports do with what the shard cannot handle itself.
    pub handlers: Handlers,
    /// The wire adapters' own per-shard state (Pusher: presence member lists), made on
    /// first use by the adapter that owns it; the shard never looks inside.
    pub wire_shared: RefCell<Option<Box<dyn std::any::Any>>>,
    /// This shard, for an adapter that must start a task from a `&Shard` ([`Shard::rc`]).
    me: std::rc::Weak<Shard>,
}

/// The transports' entry points, handed to each shard at start-up by `cmd::gateway`, so the
/// shard (below the transports) never names them: what to run on an accepted socket, a
/// long-poll request forwarded from another shard, and a NATS confirmation of a `sub`.
#[derive(Clone, Copy)]
pub struct Handlers {
    /// Serves one accepted socket from its first byte to its close.
    pub serve: fn(Rc<Shard>, TcpStream) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>,
    /// A long-poll request for a session this shard owns, forwarded by another shard.
    pub poll_forwarded: fn(&Rc<Shard>, crate::fanout::poll::PollForward),
    /// The broker's answer to a `sub` that waited for it (`live`: confirmed on the server).
    pub sub_confirmed: fn(&Rc<Shard>, Box<crate::fanout::SubConfirm>, bool),
    /// Encodes a session answer in the connection's wire format and queues it.
    pub answer: fn(&Shard, &Conn, Reply<'_>),
    /// The connection's token ran out: end it as its wire says (the shard found it on its
    /// heartbeat wheel).
    pub token_expired: fn(&Shard, &Conn),
    /// The connection is being unregistered (its wire's counters).
    pub closed: fn(&Shard, &Conn),
    /// A join/leave frame on a presence channel a wire adapter keeps itself
    /// (`$pres.$pusher.…`, see [`WIRE_PRESENCE_PREFIX`]): Pusher's member events are per
    /// user, not per connection, so its adapter turns these into `member_added` /
    /// `member_removed` from its own member lists instead of relaying them.
    pub wire_presence: fn(&Rc<Shard>, &Delivery),
    /// A cluster-wide order to close `user`'s connections in `scope` (`fanout::cluster`):
    /// the transport closes this connection if it is one of them.
    pub close_user: fn(&Shard, &Conn, &str, &str),
}

/// Presence frames of channels under this prefix go to `Handlers::wire_presence`.
pub const WIRE_PRESENCE_PREFIX: &str = "$pres.$pusher.";

impl Shard {
    pub fn new(id: u16, node: Arc<Node>, handlers: Handlers) -> Rc<Shard> {
        Rc::new_cyclic(move |me| {
            let config = &node.config;
            Shard {
            id,
            metrics: node.shard_metrics[id as usize].clone(),
            inbox: node.shard_inboxes[id as usize].clone(),
            conns: RefCell::new(Vec::new()),
            free_slots: RefCell::new(Vec::new()),
            live: Cell::new(0),
            subs: RefCell::new(SubIndex::new()),
            dirty: RefCell::new(Vec::new()),
            read_buf: RefCell::new(vec![0u8; config.read_buffer_bytes].into_boxed_slice()),
            delivery_seq: Cell::new(0),
            next_conn: Cell::new(1),
            next_replay: Cell::new(0),
            closing: RefCell::new(Vec::new()),
            stop: LocalEvent::default(),
            interest_retry: RefCell::new(Vec::new()),
            presence_retry: RefCell::new(std::collections::VecDeque::new()),
            ping_frame: ws::encode_ping(b""),
            deflater: RefCell::new(None),
            inflater: RefCell::new(None),
            ws_limits: WsLimits { max_frame_bytes: config.max_frame_bytes, max_message_bytes: config.max_message_bytes },
            admission: crate::admission::ShardAdmission::new(&node),
            handlers,
            wire_shared: RefCell::new(None),
            me: me.clone(),
            node,
            }
        })
    }

    /// A strong handle to this shard (it lives as long as its thread; any `&Shard` is
    /// borrowed from one).
    pub fn rc(&self) -> Rc<Shard> {
        self.me.upgrade().expect("a shard is alive while borrowed")
    }

    pub fn now_ms(&self) -> u64 {
        self.node.started.elapsed().as_millis() as u64
    }

    pub fn live_connections(&self) -> usize {
        self.live.get()
    }

    /// Adds an upgraded connection to the table.
    pub fn register(&self, stream: monoio::net::TcpStream, identity: Option<Box<Identity>>) -> Rc<Conn> {
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
        // The shard id in the top bits makes connection ids unique per node and tells
        // an operator (and the tests) which shard holds a connection.
        let id = ((self.id as u64) << 48) | sequence;
        let conn = Rc::new(Conn::new(slot, id, stream, identity, self.now_ms()));
        conn.state.borrow_mut().tokens = self.node.config.client_messages_per_second.saturating_mul(2);
        self.conns.borrow_mut()[slot as usize] = Some(conn.clone());
        self.live.set(self.live.get() + 1);
        self.metrics.connections.inc();
        self.presence_connected(&conn);
        conn
    }

    /// Removes a finished connection: its subscriptions, its slot, its counters.
    pub fn unregister(&self, conn: &Conn) {
        let subscriptions = std::mem::take(&mut conn.state.borrow_mut().subscriptions);
        for pattern in subscriptions {
            self.remove_subscription(conn.slot, pattern);
        }
        self.presence_disconnected(conn);
        (self.handlers.closed)(self, conn);
        self.conns.borrow_mut()[conn.slot as usize] = None;
        self.free_slots.borrow_mut().push(conn.slot);
        self.live.set(self.live.get() - 1);
        self.metrics.connections.sub(1);
        let why = conn.state.borrow().finished.unwrap_or(CloseReason::ClientClosed);
        self.metrics.closed(why);
        self.node.release();
    }

    /// Adds `pattern` for the connection in `slot`, charged to the node-wide bounds
    /// (`guard`). Err when a node-wide bound would be passed, or the bridge could not take
    /// the new interest (the subscription is undone).
    pub fn add_subscription(&self, slot: u32, pattern: &str) -> Result<(), crate::guard::SubRefused> {
        let guard = &self.node.guard;
        // Charge as if the pattern were new to this shard; refund below if it was not.
        let (entry, new_pattern) = (guard.entry_bytes(pattern), guard.pattern_bytes(pattern));
        guard.reserve_subscription(entry + new_pattern)?;
        let inserted = self.subs.borrow_mut().insert(pattern, slot);
        match inserted {
            Insert::NewPattern => {
                let message = ToBridge::Interest { shard: self.id, pattern: pattern.into(), add: true };
                if self.node.bridge_inbox.push(message).is_err() {
                    self.subs.borrow_mut().remove(pattern, slot);
                    guard.release_subscription(entry + new_pattern);
                    self.metrics.bridge_full.inc();
                    return Err(crate::guard::SubRefused::BridgeFull);
                }
            }
            Insert::NewKey => guard.release_bytes(new_pattern),
            // Nothing was added: nothing is charged (a removal gives back one pair only).
            Insert::AlreadyPresent => guard.release_subscription(entry + new_pattern),
        }
        self.metrics.subscriptions.inc();
        Ok(())
    }

    pub fn remove_subscription(&self, slot: u32, pattern: Box<str>) {
        let removed = self.subs.borrow_mut().remove(&pattern, slot);
        if removed == Remove::NotPresent {
            return;
        }
        let guard = &self.node.guard;
        let new_pattern = if removed == Remove::LastKey { guard.pattern_bytes(&pattern) } else { 0 };
        guard.release_subscription(guard.entry_bytes(&pattern) + new_pattern);
        self.metrics.subscriptions.sub(1);
        if removed == Remove::LastKey {
            let message = ToBridge::Interest { shard: self.id, pattern, add: false };
            if let Err(refused) = self.node.bridge_inbox.push(message) {
                self.metrics.bridge_full.inc();
                if let ToBridge::Interest { pattern, .. } = refused.0 {
                    self.interest_retry.borrow_mut().push((pattern, false));
                }
            }
        }
    }

    /// The connection `target` names, if it is still the one in that slot.
    pub fn conn_at(&self, target: ConnRef) -> Option<Rc<Conn>> {
        let conns = self.conns.borrow();
        conns.get(target.slot as usize)?.as_ref().filter(|c| c.id == target.conn).cloned()
    }

    pub fn next_replay_id(&self) -> u32 {
        let id = self.next_replay.get().wrapping_add(1);
        self.next_replay.set(id);
        id
    }

    /// A chunk of replayed history for one connection's resume.
    fn replay_frames(&self, target: ConnRef, replay: u32, frames: Vec<Bytes>) {
        let Some(conn) = self.conn_at(target) else { return };
        if !conn.is_replaying(replay) {
            return; // unsubscribed meanwhile, or timed out
        }
        self.metrics.replayed.add(frames.len() as u64);
        for frame in frames {
            self.send(&conn, frame);
        }
    }

    /// The end of a resume: the live messages held meanwhile go out (those the replay did
    /// not already carry), then the `sub`'s `ok`; or the subscription is undone and the
    /// `sub` answered with the error.
    pub fn replay_done(&self, target: ConnRef, replay: u32, outcome: Result<u64, ReplayError>) {
        let Some(conn) = self.conn_at(target) else { return };
        match outcome {
            Ok(upto) => {
                let Some((id, held)) = conn.finish_replay(replay, upto, self.now_ms()) else { return };
                for (seq, frame) in held {
                    if seq > upto {
                        self.send(&conn, frame);
                    } else {
                        self.metrics.resume_duplicates.inc();
                    }
                }
                (self.handlers.answer)(self, &conn, Reply::Ok { id });
            }
            Err(error) => {
                let Some(replaying) = conn.take_replay(|r| r.replay == replay && r.upto.is_none()) else { return };
                let removed = {
                    let mut st = conn.state.borrow_mut();
                    let position = st.subscriptions.iter().position(|p| *p == replaying.channel);
                    position.map(|i| st.subscriptions.swap_remove(i))
                };
                if let Some(pattern) = removed {
                    self.remove_subscription(conn.slot, pattern);
                }
                self.metrics.client_errors.inc();
                (self.handlers.answer)(self, &conn, Reply::Err { id: replaying.id, code: error.code, msg: &error.msg });
            }
        }
    }

    /// Queues `frame` on the connection and remembers to flush it this turn.
    pub fn send(&self, conn: &Conn, frame: Bytes) {
        let limit = self.node.config.outbound_bytes_max;
        if conn.enqueue(frame, limit, self.now_ms(), CLOSE_TIMEOUT_MS, &self.metrics) {
            self.dirty.borrow_mut().push(conn.slot);
        }
    }

    /// Starts a server-initiated close with `code`.
    pub fn close(&self, conn: &Conn, code: u16, reason: &str, why: CloseReason) {
        if conn.state.borrow().closing.is_some() {
            return;
        }
        if conn.close(code, reason, why, self.now_ms(), CLOSE_TIMEOUT_MS, &self.metrics) {
            self.dirty.borrow_mut().push(conn.slot);
        }
        self.closing.borrow_mut().push(conn.slot);
    }

    /// Fans one published message, or a run of them, out to every local subscriber,
    /// sharing one buffer. Returns the copies of each message counted as deliveries.
    fn deliver(&self, out: &Outgoing) -> u32 {
        let copies = Cell::new(0u32);
        let seq = self.delivery_seq.get().wrapping_add(1);
        self.delivery_seq.set(seq);
        let conns = self.conns.borrow();
        let limit = self.node.config.outbound_bytes_max;
        let now = self.now_ms();
        let private = crate::channel::private_owner(out.channel).is_some();
        let frames = out.parts.len() as u64;
        let mut dirty = self.dirty.borrow_mut();
        let mut closing = self.closing.borrow_mut();
        let fanout = &self.node.config.fanout;
        // Whether this channel is conflated: asked once per message, and only when a
        // backlogged subscriber needs the answer.
        let conflating = !fanout.conflate.is_empty();
        let conflates: Cell<Option<bool>> = Cell::new(if conflating { None } else { Some(false) });
        // The compressed form (whole buffer, newest message), made once on the first
        // subscriber that negotiated permessage-deflate; None: nothing got smaller.
        let deflated: std::cell::OnceCell<Option<(Bytes, Bytes)>> = std::cell::OnceCell::new();
        self.subs.borrow().for_each_match(out.channel, |slot| {
            let Some(conn) = conns[slot as usize].as_ref() else { return };
            if out.exclude == Some(conn.id) {
                return;
            }
            let deflate = {
                let mut st = conn.state.borrow_mut();
                if st.last_delivery == seq {
                    return;
                }
                st.last_delivery = seq;
                st.deflate
            };
            if private && !permission::may_receive(conn.user(), out.channel) {
                return;
            }
            if let Some(seq) = out.seq {
                // Only a single message carries a sequence (runs are of seq-less ones).
                match conn.hold_if_replaying(out.channel, seq, &out.frame, limit) {
                    Hold::No => {}
                    Hold::Held => {
                        copies.set(copies.get() + 1);
                        return self.metrics.deliveries.inc();
                    }
                    Hold::Skip => return self.metrics.resume_duplicates.inc(),
                    Hold::Overflow => {
                        let reason = "outbound backlog over its bound";
                        if conn.close(ws::close_code::SLOW_CONSUMER, reason, CloseReason::SlowConsumer, now, CLOSE_TIMEOUT_MS, &self.metrics) {
                            dirty.push(slot);
                        }
                        closing.push(slot);
                        return;
                    }
                }
            }
            let (was_closing, backlogged) = {
                let st = conn.state.borrow();
                // The backlog matters only when some channel conflates at all.
                (st.closing.is_some(), conflating && conn.stream.is_some() && st.outbox_bytes >= fanout.conflate_threshold_bytes)
            };
            let compressed = if deflate { deflated.get_or_init(|| self.deflate(out)).as_ref() } else { None };
            if compressed.is_some() {
                self.metrics.compressed_deliveries.add(frames);
            }
            let newly_dirty = if backlogged && conflatable(&conflates, &fanout.conflate, out.channel) {
                // A slow subscriber of a conflated channel: the newest message stands for
                // the run and replaces the one still waiting.
                let newest = match compressed {
                    Some((_, newest)) => newest.clone(),
                    None => out.parts.last().map_or_else(|| out.frame.clone(), |part| if frames > 1 { part.frame.clone() } else { out.frame.clone() }),
                };
                conn.enqueue_conflated(out.channel, newest, frames - 1, fanout.conflate_channels_max, limit, now, CLOSE_TIMEOUT_MS, &self.metrics)
            } else if conn.stream.is_none() && frames > 1 {
                // A long-poll session numbers its frames one by one: give it each message.
                let mut newly = false;
                for part in out.parts {
                    newly |= conn.enqueue(part.frame.clone(), limit, now, CLOSE_TIMEOUT_MS, &self.metrics);
                }
                newly
            } else {
                let frame = compressed.map_or_else(|| out.frame.clone(), |(frame, _)| frame.clone());
                conn.enqueue_frames(frame, frames, limit, now, CLOSE_TIMEOUT_MS, &self.metrics)
            };
            if newly_dirty {
                dirty.push(slot);
            }
            if !was_closing && conn.state.borrow().closing.is_some() {
                closing.push(slot);
            }
            self.metrics.deliveries.add(frames);
            copies.set(copies.get() + 1);
        });
        copies.get()
    }
}

impl Shard {
    /// The permessage-deflate form of a delivery: each message of the run compressed on its
    /// own (no context between messages, RFC 7692 `server_no_context_takeover`), those
    /// below the threshold or that would not shrink left plain (RSV1 clear). Returns the
    /// whole buffer and the newest message's frame, or None if no message got smaller.
    fn deflate(&self, out: &Outgoing) -> Option<(Bytes, Bytes)> {
        let config = &self.node.config.compression;
        let mut deflater = self.deflater.borrow_mut();
        let deflater = deflater.get_or_insert_with(|| crate::protocol::deflate::Deflater::new(config.level));
        let mut any = false;
        let frames: Vec<Bytes> = out
            .parts
            .iter()
            .map(|part| match deflater.compress_frame(&part.frame, config.threshold_bytes) {
                Some(small) => {
                    any = true;
                    self.metrics.compressed_messages.inc();
                    self.metrics.compress_bytes_in.add(part.frame.len() as u64);
                    self.metrics.compress_bytes_out.add(small.len() as u64);
                    small
                }
                None => part.frame.clone(),
            })
            .collect();
        if !any {
            return None;
        }
        let newest = frames.last().cloned().unwrap_or_else(|| out.frame.clone());
        let whole = match frames.len() {
            1 => newest.clone(),
            _ => {
                let mut joined = bytes::BytesMut::with_capacity(frames.iter().map(Bytes::len).sum());
                for frame in &frames {
                    joined.extend_from_slice(frame);
                }
                joined.freeze()
            }
        };
        Some((whole, newest))
    }
}

/// Whether `channel` matches a `--conflate` pattern, computed at most once per message.
fn conflatable(cache: &Cell<Option<bool>>, patterns: &[String], channel: &str) -> bool {
    if let Some(known) = cache.get() {
        return known;
    }
    let answer = patterns.iter().any(|p| crate::channel::matches(p, channel));
    cache.set(Some(answer));
    answer
}

impl Shard {
    /// Writes every connection that had frames queued this turn: one vectored send each.
    pub fn flush_dirty(self: &Rc<Self>) {
        let slots = std::mem::take(&mut *self.dirty.borrow_mut());
        for slot in slots {
            let conn = self.conns.borrow()[slot as usize].clone();
            if let Some(conn) = conn {
                self.flush(&conn);
            }
        }
    }

    /// Flushes one connection now; a full socket gets a writer task that waits for room.
    pub fn flush(self: &Rc<Self>, conn: &Rc<Conn>) {
        if conn.state.borrow().writer_active {
            return;
        }
        let iovecs = crate::limits::WRITE_IOVECS_MAX;
        if let Flushed::Blocked = conn.flush(iovecs, &self.metrics) {
            conn.state.borrow_mut().writer_active = true;
            let shard = self.clone();
            let conn = conn.clone();
            monoio::spawn(async move {
                loop {
                    let Some(stream) = conn.stream.as_ref() else { break };
                    if stream.writable(false).await.is_err() {
                        conn.finish(CloseReason::IoError);
                        break;
                    }
                    match conn.flush(iovecs, &shard.metrics) {
                        Flushed::Blocked => continue,
                        Flushed::Empty | Flushed::Failed => break,
                    }
                }
                conn.state.borrow_mut().writer_active = false;
            });
        }
    }

    fn handle_inbox(self: &Rc<Self>, batch: &mut Vec<ToShard>) {
        let mut latency = crate::metrics::histogram::PendingLatency::<INBOX_BATCH_MESSAGES_MAX>::new();
        let run_bytes_max = self.node.config.coalesce_bytes;
        let mut run: Vec<Arc<Delivery>> = Vec::new();
        let mut messages = batch.drain(..).peekable();
        while let Some(message) = messages.next() {
            match message {
                ToShard::Deliver(head) if head.channel.starts_with(WIRE_PRESENCE_PREFIX) => (self.handlers.wire_presence)(self, &head),
                ToShard::Deliver(head) => {
                    // The run: this message and the ones right behind it on the same channel,
                    // without sequences (a resume stitches those one by one), within the
                    // byte bound. Only consecutive ones, so every connection keeps the order.
                    run.clear();
                    let mut bytes = head.frame.len();
                    run.push(head.clone());
                    if head.seq.is_none() && head.exclude.is_none() {
                        while let Some(ToShard::Deliver(next)) = messages.next_if(|m| {
                            matches!(m, ToShard::Deliver(d) if d.seq.is_none() && d.exclude.is_none() && d.channel == head.channel && bytes + d.frame.len() <= run_bytes_max)
                        }) {
                            bytes += next.frame.len();
                            run.push(next);
                        }
                    }
                    let frame = match run.len() {
                        1 => head.frame.clone(),
                        n => {
                            self.metrics.coalesced.add(n as u64);
                            let mut joined = bytes::BytesMut::with_capacity(bytes);
                            for part in &run {
                                joined.extend_from_slice(&part.frame);
                            }
                            joined.freeze()
                        }
                    };
                    let copies = self.deliver(&Outgoing { channel: &head.channel, seq: head.seq, frame, parts: &run, exclude: head.exclude });
                    for part in &run {
                        latency.push(part.received_us, copies);
                    }
                }
                ToShard::Shutdown => self.begin_shutdown(),
                ToShard::Drain => drain::begin(self),
                ToShard::Replay { target, replay, frames } => self.replay_frames(target, replay, frames),
                ToShard::ReplayDone { target, replay, outcome } => self.replay_done(target, replay, outcome),
                ToShard::Poll(forward) => (self.handlers.poll_forwarded)(self, *forward),
                ToShard::Confirmed { confirm, live } => (self.handlers.sub_confirmed)(self, confirm, live),
                ToShard::Count { query, reply } => self.count_channels(&query, reply),
                ToShard::CloseUser(close) => self.close_user(&close),
            }
        }
        self.retry_presence();
        self.flush_dirty();
        latency.observe(&self.metrics.fanout_latency, self.node.started.elapsed().as_micros() as u64);
    }

    fn begin_shutdown(self: &Rc<Self>) {
        if self.stop.is_set() {
            return;
        }
        self.stop.set();
        let conns: Vec<Rc<Conn>> = self.conns.borrow().iter().flatten().cloned().collect();
        for conn in conns {
            self.close(&conn, ws::close_code::GOING_AWAY, "server shutting down", CloseReason::Shutdown);
        }
    }

    /// One heartbeat-wheel tick: expire close handshakes, ping the quiet, drop the dead.
    fn tick(self: &Rc<Self>, tick: u64) {
        let now = self.now_ms();
        self.expire_closing(now);
        let heartbeat = self.node.config.heartbeat.as_millis() as u64;
        let timeout = self.node.config.heartbeat_timeout.as_millis() as u64;
        let now_unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let conns: Vec<Rc<Conn>> = {
            let table = self.conns.borrow();
            let start = (tick % WHEEL_SLOTS) as usize;
            (start..table.len()).step_by(WHEEL_SLOTS as usize).filter_map(|s| table[s].clone()).collect()
        };
        for conn in conns {
            if conn.is_poll() {
                self.tick_poll(&conn, now, now_unix);
                continue;
            }
            let (idle, pinged, closing) = {
                let st = conn.state.borrow();
                (now.saturating_sub(st.last_seen_ms), st.ping_outstanding, st.closing.is_some())
            };
            if closing {
                continue;
            }
            {
                // Give back an idle connection's queue memory; an active one regrows it
                // at most once per heartbeat.
                let mut st = conn.state.borrow_mut();
                if st.outbox.is_empty() && st.outbox.capacity() > 0 && !st.writer_active {
                    st.outbox = std::collections::VecDeque::new();
                }
                if st.outbox.is_empty() {
                    st.conflated = None;
                }
            }
            for replay in conn.stale_replays(now.saturating_sub(REPLAY_TIMEOUT_MS)) {
                let target = ConnRef { slot: conn.slot, conn: conn.id };
                let error = ReplayError { code: 503, msg: "resume timed out (history unavailable); retry".into() };
                self.replay_done(target, replay, Err(error));
            }
            if conn.identity.as_ref().is_some_and(|i| i.expired(now_unix)) {
                (self.handlers.token_expired)(self, &conn);
            } else if idle >= timeout {
                // Say why (1001 going away, as load balancers do on idle timeouts) in case
                // only the peer's pongs were lost; a dead peer gets no handshake wait.
                self.close(&conn, ws::close_code::GOING_AWAY, "heartbeat timeout", CloseReason::HeartbeatTimeout);
                self.flush(&conn);
                conn.finish(CloseReason::HeartbeatTimeout);
            } else if idle >= heartbeat && !pinged {
                conn.state.borrow_mut().ping_outstanding = true;
                self.send(&conn, self.ping_frame.clone());
            }
        }
        self.retry_interest();
        self.retry_presence();
        self.flush_dirty();
    }

    fn expire_closing(&self, now: u64) {
        let conns = self.conns.borrow();
        self.closing.borrow_mut().retain(|slot| {
            let Some(conn) = conns[*slot as usize].as_ref() else { return false };
            let st = conn.state.borrow();
            match st.closing {
                Some((why, deadline)) if st.finished.is_none() => {
                    if now >= deadline {
                        drop(st);
                        self.metrics.close_handshake_timeouts.inc();
                        conn.finish(why);
                        return false;
                    }
                    true
                }
                _ => false,
            }
        });
    }

    fn retry_interest(&self) {
        let pending = std::mem::take(&mut *self.interest_retry.borrow_mut());
        for (pattern, add) in pending {
            let message = ToBridge::Interest { shard: self.id, pattern, add };
            if let Err(refused) = self.node.bridge_inbox.push(message) {
                if let ToBridge::Interest { pattern, add, .. } = refused.0 {
                    self.interest_retry.borrow_mut().push((pattern, add));
                }
            }
        }
    }
}

/// Runs the shard until shutdown: accept loop, inbox drain, heartbeat wheel.
pub async fn run(shard: Rc<Shard>, listener: TcpListener) {
    monoio::spawn(inbox_loop(shard.clone()));
    monoio::spawn(wheel_loop(shard.clone()));
    accept_loop(&shard, &listener).await;
    drop(listener);
    let deadline = shard.now_ms() + shard.node.config.shutdown_timeout.as_millis() as u64;
    while shard.live_connections() > 0 && shard.now_ms() < deadline {
        monoio::time::sleep(Duration::from_millis(20)).await;
    }
    if shard.live_connections() > 0 {
        tracing::warn!(shard = shard.id, left = shard.live_connections(), "shutdown timeout: dropping connections");
    }
}

async fn accept_loop(shard: &Rc<Shard>, listener: &TcpListener) {
    // Accept failures (EMFILE: out of descriptors) are logged at most once a second, with
    // how many there were since the last line; every one is counted.
    let (mut logged_ms, mut unlogged) = (0u64, 0u64);
    loop {
        monoio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    shard.metrics.accepted.inc();
                    monoio::spawn((shard.handlers.serve)(shard.clone(), stream));
                }
                Err(error) => {
                    // EMFILE/ENFILE: out of descriptors. Back off instead of spinning.
                    shard.node.guard.accept_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    unlogged += 1;
                    let now = shard.now_ms();
                    if logged_ms == 0 || now.saturating_sub(logged_ms) >= ACCEPT_ERROR_LOG_MS {
                        tracing::warn!(shard = shard.id, %error, failures = unlogged, "accept failed; is the fd limit too low (or max_connections + max_http_connections above it)? see `ringcast doctor`");
                        (logged_ms, unlogged) = (now.max(1), 0);
                    }
                    monoio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shard.stop.wait() => return,
        }
    }
}

/// At most one accept-failure log line per shard this often.
const ACCEPT_ERROR_LOG_MS: u64 = 1_000;

async fn inbox_loop(shard: Rc<Shard>) {
    let inbox = shard.inbox.clone();
    let coalesce = shard.node.config.coalesce_delay;
    let mut batch = Vec::with_capacity(INBOX_BATCH_MESSAGES_MAX);
    loop {
        inbox.recv_batch(&mut batch, INBOX_BATCH_MESSAGES_MAX).await;
        if !coalesce.is_zero() && batch.len() < INBOX_BATCH_MESSAGES_MAX {
            // Write coalescing: let more messages arrive so each subscriber's send carries
            // several (bounded by the turn's batch and by coalesce_delay).
            monoio::time::sleep(coalesce).await;
            while batch.len() < INBOX_BATCH_MESSAGES_MAX {
                match inbox.try_pop() {
                    Some(message) => batch.push(message),
                    None => break,
                }
            }
        }
        shard.handle_inbox(&mut batch);
    }
}

async fn wheel_loop(shard: Rc<Shard>) {
    let heartbeat_ms = shard.node.config.heartbeat.as_millis() as u64;
    let tick_ms = (heartbeat_ms / WHEEL_SLOTS).max(WHEEL_TICK_MS_MIN);
    let mut tick = 0u64;
    loop {
        monoio::time::sleep(Duration::from_millis(tick_ms)).await;
        shard.tick(tick);
        tick += 1;
    }
}
