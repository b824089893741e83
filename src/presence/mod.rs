//! Presence: who is in a channel (members, with `join`/`leave` frames) and whether a user
//! has a live connection anywhere (`is_online`, used by the Lane worker).
//!
//! Owns: the change types shards send ([`Change`]), the node's [`local::LocalState`]
//! (source of truth), the backends (in-memory by default, Redis for several nodes), the
//! batching of writes, the "came online" broadcast and the presence metrics. Must not
//! touch: sockets or connections. Runs on: the bridge thread ([`PresenceEngine`]); the
//! read handle [`Presence`] on any tokio runtime.
//!
//! Seams: a shard reports changes (`ToBridge::Presence`) and asks queries
//! (`ToBridge::PresenceQuery`); the engine applies changes to local state at once, writes
//! them to the backend in batches (`presence_batch` / `presence_flush`) and publishes
//! `join`/`leave` frames on the internal channel `$pres.{channel}` through the broker.

pub mod local;
pub mod memory;
pub mod redis;

pub use crate::config::presence::{PresenceArgs, PresenceConfig};

use crate::metrics::Counter;
use bytes::Bytes;
use local::LocalState;
use memory::MemoryPresence;
use redis::{RedisReader, RedisWriter};
use serde_json::value::RawValue;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// "Came online on this node" events buffered for each receiver; a receiver that falls
/// further behind skips the oldest (tokio broadcast `Lagged`), it never blocks the bridge.
pub const ONLINE_EVENTS_CAPACITY: usize = 4_096;
/// How long a shard waits for a presence query's answer before replying 503.
pub const PRESENCE_QUERY_TIMEOUT_MS: u64 = 3_000;
/// Changes waiting on a shard while the bridge inbox is full; past it a change is
/// dropped and counted (`ringcast_presence_dropped_total`). One connect plus a few joins
/// per connection of a 50k burst fits.
pub const PRESENCE_RETRY_CHANGES_MAX: usize = 262_144;
/// Prefix of the internal channel carrying a channel's `join`/`leave` frames.
pub const PRESENCE_CHANNEL_PREFIX: &str = "$pres.";

/// A presence change reported by a shard.
#[derive(Debug)]
pub enum Change {
    /// An identified connection (token with `sub`) is up: the user is online.
    Connect { conn: u64, user: Arc<str> },
    /// The connection is gone: it leaves every channel and goes offline.
    Disconnect { conn: u64 },
    /// `sub` with `presence: true` on a literal channel (`user` None: anonymous).
    Join { channel: Arc<str>, conn: u64, user: Option<Arc<str>>, info: Option<Box<RawValue>> },
    /// `unsub` of a channel joined with presence.
    Leave { channel: Arc<str>, conn: u64 },
}

/// One write to the backend (a change resolved against local state).
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Online { user: Arc<str>, conn: u64 },
    Offline { user: Arc<str>, conn: u64 },
    Join { channel: Arc<str>, conn: u64, member: Arc<str> },
    Leave { channel: Arc<str>, conn: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceError {
    /// The store cannot answer now (Redis down or overloaded): 503, retry.
    Unavailable(String),
}

impl PresenceError {
    pub fn code(&self) -> u16 {
        503
    }
    pub fn message(&self) -> &str {
        match self {
            PresenceError::Unavailable(msg) => msg,
        }
    }
}

impl std::fmt::Display for PresenceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

/// Where the bridge sends the answer to a members query: member JSON objects.
pub type MembersReply = tokio::sync::oneshot::Sender<Result<Vec<Arc<str>>, PresenceError>>;

/// Reads presence: cheap to clone, `Send`, usable on any tokio runtime. In-memory it
/// reads this process's store (the embedded, in-process worker); with Redis it reads
/// every node's entries (gateway or a separate `ringcast worker`).
#[derive(Clone)]
pub enum Presence {
    Memory(MemoryPresence),
    Redis(RedisReader),
}

impl Presence {
    /// A reader for a process that runs no gateway (the Lane worker): needs Redis,
    /// since in-memory presence lives in the gateway process.
    pub fn reader(config: &PresenceConfig) -> Result<Presence, String> {
        match &config.redis {
            Some(redis) => Ok(Presence::Redis(RedisReader::new(&redis.url, &redis.prefix)?)),
            None => Err("presence is in-memory in the gateway process; a separate worker needs --redis (or run the worker in-process)".into()),
        }
    }

    /// Whether `user` has at least one live connection on any node.
    pub async fn is_online(&self, user: &str) -> Result<bool, PresenceError> {
        match self {
            Presence::Memory(memory) => Ok(memory.is_online(user)),
            Presence::Redis(reader) => reader.is_online(user).await,
        }
    }

    /// Member JSON objects of `channel` (`{"user","conn","node","joined","info"?}`).
    pub async fn members(&self, channel: &str) -> Result<Vec<Arc<str>>, PresenceError> {
        match self {
            Presence::Memory(memory) => Ok(memory.members(channel)),
            Presence::Redis(reader) => reader.members(channel).await,
        }
    }
}

/// Presence counters; written by the bridge thread (and, rarely, by shards through the
/// atomic ones), read on scrape.
#[derive(Default)]
pub struct PresenceMetrics {
    pub changes: Counter,
    pub pipelines: Counter,
    pub commands: Counter,
    pub errors: Counter,
    pub resyncs: Counter,
    pub overflows: Counter,
    pub queries: Counter,
    /// `join`/`leave` frames not sent: the channel had more than `presence_events_max` members here.
    pub events_suppressed: Counter,
    pub members: Counter,
    pub online_users: Counter,
    pub pending: Counter,
    /// Written by shards (any thread): changes parked because the bridge inbox was full,
    /// and changes dropped past `PRESENCE_RETRY_CHANGES_MAX`.
    pub retried: AtomicU64,
    pub dropped: AtomicU64,
}

/// What the bridge, the shards and `/metrics`, `/readyz` share about presence.
pub struct PresenceShared {
    pub metrics: PresenceMetrics,
    /// The backend can answer (always, in memory; Redis's link state).
    pub link_up: AtomicBool,
    pub backend: &'static str,
}

impl PresenceShared {
    pub fn new(config: &PresenceConfig) -> Arc<PresenceShared> {
        let redis = config.redis.is_some();
        Arc::new(PresenceShared {
            metrics: PresenceMetrics::default(),
            link_up: AtomicBool::new(!redis),
            backend: if redis { "redis" } else { "memory" },
        })
    }

    pub fn is_up(&self) -> bool {
        self.link_up.load(Ordering::Acquire)
    }

    /// Prometheus text for the presence counters.
    pub fn render(&self, out: &mut String) {
        let m = &self.metrics;
        let counters: [(&str, &str, u64); 10] = [
            ("presence_changes_total", "presence changes applied (connect, disconnect, join, leave)", m.changes.get()),
            ("presence_pipelines_total", "Redis pipelines (round trips) written for presence", m.pipelines.get()),
            ("presence_redis_commands_total", "Redis commands sent for presence", m.commands.get()),
            ("presence_errors_total", "presence store failures (Redis link lost or unreachable)", m.errors.get()),
            ("presence_resyncs_total", "full rewrites of this node's presence into the store", m.resyncs.get()),
            ("presence_overflows_total", "presence batches dropped for a full writer queue (a resync follows)", m.overflows.get()),
            ("presence_queries_total", "presence queries (op and HTTP API)", m.queries.get()),
            ("presence_events_suppressed_total", "join/leave frames not sent: the channel had more than presence_events_max members on this node", m.events_suppressed.get()),
            ("presence_retried_total", "presence changes parked on a shard while the bridge inbox was full", m.retried.load(Ordering::Relaxed)),
            ("presence_dropped_total", "presence changes lost past the shard's retry bound", m.dropped.load(Ordering::Relaxed)),
        ];
        for (name, help, value) in counters {
            crate::metrics::prometheus::single(out, &format!("ringcast_{name}"), "counter", help, value);
        }
        let gauges: [(&str, &str, u64); 4] = [
            ("presence_members", "channel memberships held by this node's connections", m.members.get()),
            ("presence_online_users", "users with a live connection on this node", m.online_users.get()),
            ("presence_pending", "presence changes waiting for their batch to be written", m.pending.get()),
            ("presence_degraded", "1 while the presence store is unavailable", u64::from(!self.is_up())),
        ];
        for (name, help, value) in gauges {
            crate::metrics::prometheus::single(out, &format!("ringcast_{name}"), "gauge", help, value);
        }
    }
}

enum Backend {
    Memory(MemoryPresence),
    Redis { writer: RedisWriter, reader: RedisReader },
}

/// The bridge side: applies changes, batches backend writes, answers queries.
pub struct PresenceEngine {
    shared: Arc<PresenceShared>,
    node: Arc<str>,
    local: Rc<RefCell<LocalState>>,
    backend: Backend,
    pending: Vec<Op>,
    batch_changes: usize,
    flush_after: Duration,
    flush_at: Option<tokio::time::Instant>,
    events_max: usize,
    online_tx: tokio::sync::broadcast::Sender<Arc<str>>,
    /// With Redis: the frames of the pending batch (published once it is written, so a
    /// node that reads the members and saw no frame finds the change there).
    pending_frames: redis::Frames,
    /// Frames of written batches, from the writer to the bridge.
    written: Option<tokio::sync::mpsc::Receiver<redis::Frames>>,
}

impl PresenceEngine {
    /// Must run inside the bridge's `LocalSet` (the Redis writer is a local task).
    pub fn start(config: &PresenceConfig, node: &str, shared: Arc<PresenceShared>) -> Result<PresenceEngine, String> {
        let local = Rc::new(RefCell::new(LocalState::default()));
        let mut written = None;
        let backend = match &config.redis {
            None => Backend::Memory(MemoryPresence::default()),
            Some(redis) => {
                let (frames_tx, frames_rx) = tokio::sync::mpsc::channel(redis::WRITER_QUEUE_JOBS);
                written = Some(frames_rx);
                let writer = RedisWriter::start(&redis.url, &redis.prefix, node, config.ttl, config.batch_changes, local.clone(), shared.clone(), frames_tx)?;
                Backend::Redis { writer, reader: RedisReader::new(&redis.url, &redis.prefix)? }
            }
        };
        let (online_tx, _) = tokio::sync::broadcast::channel(ONLINE_EVENTS_CAPACITY);
        Ok(PresenceEngine {
            shared,
            node: node.into(),
            local,
            backend,
            pending: Vec::new(),
            batch_changes: config.batch_changes,
            flush_after: config.flush,
            flush_at: None,
            events_max: config.events_max,
            online_tx,
            pending_frames: Vec::new(),
            written,
        })
    }

    /// A read handle (`is_online`, `members`) for this node's backend.
    pub fn handle(&self) -> Presence {
        match &self.backend {
            Backend::Memory(memory) => Presence::Memory(memory.clone()),
            Backend::Redis { reader, .. } => Presence::Redis(reader.clone()),
        }
    }

    /// Users whose first connection on this node came up (local count 0 → 1).
    pub fn online_events(&self) -> tokio::sync::broadcast::Receiver<Arc<str>> {
        self.online_tx.subscribe()
    }

    /// The frames of the next written batch (Redis), to publish; never ready in memory.
    pub async fn written(&mut self) -> redis::Frames {
        if let Some(rx) = &mut self.written {
            if let Some(frames) = rx.recv().await {
                return frames;
            }
            // The writer is gone (shutting down): nothing more will come.
            self.written = None;
        }
        std::future::pending().await
    }

    /// Applies one change; returns the `join`/`leave` frames to publish now, as
    /// (`$pres.{channel}`, frame). With Redis they wait for their batch to be written
    /// (see [`PresenceEngine::written`]) unless the link is down.
    pub fn apply(&mut self, change: Change) -> Vec<(Box<str>, Bytes)> {
        self.shared.metrics.changes.inc();
        // A Pusher presence join carries the member's info in its frame (member_added
        // shows user_info); protocol v1 frames stay as they were.
        let frame_info = match &change {
            Change::Join { channel, info: Some(info), .. } if is_pusher(channel) => Some(info.clone()),
            _ => None,
        };
        let applied = {
            let mut local = self.local.borrow_mut();
            let applied = match change {
                Change::Connect { conn, user } => local.connect(conn, user),
                Change::Disconnect { conn } => local.disconnect(conn),
                Change::Join { channel, conn, user, info } => {
                    let node = self.node.clone();
                    let who = user.clone();
                    local.join(channel, conn, user, move || local::member_json(who.as_deref(), conn, &node, unix_ms(), info.as_deref()))
                }
                Change::Leave { channel, conn } => local.leave(&channel, conn),
            };
            self.shared.metrics.members.set(local.members() as u64);
            self.shared.metrics.online_users.set(local.online_users() as u64);
            applied
        };
        if let Some(user) = applied.came_online {
            // No receiver is fine: nobody is listening for online events.
            let _ = self.online_tx.send(user);
        }
        let frames = self.frames(applied.frames, frame_info);
        self.write(applied.ops, frames)
    }

    fn frames(&self, frames: Vec<(Arc<str>, Option<Arc<str>>, u64, bool)>, frame_info: Option<Box<RawValue>>) -> redis::Frames {
        let local = self.local.borrow();
        frames
            .into_iter()
            .filter(|(channel, _, _, joined)| {
                // The channel's size around this change: after a join, before a leave.
                // Pusher presence channels are exempt: the adapter keeps each shard's
                // member list from these frames (a missed one would leave it wrong), and
                // their size has its own bound (pusher_max_presence_members users).
                let size = local.channel_members(channel) as usize + usize::from(!*joined);
                let send = size <= self.events_max || is_pusher(channel);
                if !send {
                    self.shared.metrics.events_suppressed.inc();
                }
                send
            })
            .map(|(channel, user, conn, joined)| {
                let mut json = Vec::with_capacity(64 + channel.len() + self.node.len());
                let info = if joined { frame_info.as_deref().map(RawValue::get) } else { None };
                crate::protocol::ops::presence_change_into(&mut json, joined, &channel, user.as_deref(), conn, &self.node, info);
                (format!("{PRESENCE_CHANNEL_PREFIX}{channel}").into_boxed_str(), Bytes::from(json))
            })
            .collect()
    }

    /// Writes `ops` (in memory now, to Redis in batches); returns the frames to publish now.
    fn write(&mut self, ops: Vec<Op>, frames: redis::Frames) -> redis::Frames {
        if ops.is_empty() {
            return frames;
        }
        match &self.backend {
            Backend::Memory(memory) => {
                for op in ops {
                    match op {
                        Op::Online { user, .. } => memory.online(&user),
                        Op::Offline { user, .. } => memory.offline(&user),
                        Op::Join { channel, conn, member } => memory.join(&channel, conn, member),
                        Op::Leave { channel, conn } => memory.leave(&channel, conn),
                    }
                }
                frames
            }
            Backend::Redis { .. } => {
                if !self.shared.is_up() {
                    // The resync on recovery writes local state; nothing to queue.
                    return frames;
                }
                if self.pending.is_empty() {
                    self.flush_at = Some(tokio::time::Instant::now() + self.flush_after);
                }
                self.pending.extend(ops);
                self.pending_frames.extend(frames);
                let now = if self.pending.len() >= self.batch_changes { self.flush() } else { Vec::new() };
                self.shared.metrics.pending.set(self.pending.len() as u64);
                now
            }
        }
    }

    /// When the pending batch must be written even if not full.
    pub fn flush_deadline(&self) -> Option<tokio::time::Instant> {
        self.flush_at
    }

    /// Hands the pending batch to the writer; returns frames to publish now (those of a
    /// batch the full writer queue refused).
    pub fn flush(&mut self) -> redis::Frames {
        self.flush_at = None;
        let ops = std::mem::take(&mut self.pending);
        let frames = std::mem::take(&mut self.pending_frames);
        self.shared.metrics.pending.set(0);
        match (&self.backend, ops.is_empty()) {
            (Backend::Redis { writer, .. }, false) => writer.write(ops, frames, &self.shared),
            _ => frames,
        }
    }

    /// Members of `channel`, answered on `reply` (after this node's pending changes);
    /// returns frames to publish now (as [`PresenceEngine::flush`]).
    pub fn query(&mut self, channel: Arc<str>, reply: MembersReply) -> redis::Frames {
        self.shared.metrics.queries.inc();
        match &self.backend {
            Backend::Memory(memory) => {
                let _ = reply.send(Ok(memory.members(&channel)));
                Vec::new()
            }
            Backend::Redis { .. } if !self.shared.is_up() => {
                let _ = reply.send(Err(PresenceError::Unavailable("presence store (Redis) unavailable; retry shortly".into())));
                Vec::new()
            }
            Backend::Redis { .. } => {
                let now = self.flush();
                if let Backend::Redis { writer, .. } = &self.backend {
                    writer.query(channel, reply);
                }
                now
            }
        }
    }
}

/// A Pusher app's channel (`$pusher.{app}.…`).
fn is_pusher(channel: &str) -> bool {
    channel.strip_prefix(crate::channel::PUSHER_TOKEN).is_some_and(|rest| rest.starts_with('.'))
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
