//! Presence in Redis, shared by every node.
//!
//! Layout (every key under `{prefix}:`):
//! - `pres:{channel}`  HASH `{instance}/{conn}` → member JSON
//! - `online:{user}`   HASH `{instance}/{conn}` → node name
//! - `node:{instance}` STRING, `PX` = presence TTL, refreshed every TTL/3
//!
//! An instance is one node's run of its Redis link (`{node}~{start}`): a node that dies
//! stops refreshing its key, and readers drop (and lazily `HDEL`) every entry whose
//! instance key is gone, so a `kill -9`'d node vanishes within the TTL with nobody's help.
//! A node that loses Redis and comes back starts a new instance, writes all its live
//! entries again from its local state, then deletes its old instance key, so entries that
//! changed during the outage vanish at once.
//!
//! Owns: the writer task (one connection, batches applied in order as pipelines) and the
//! reader ([`RedisReader`], usable on any tokio runtime, e.g. by the Lane worker).
//! Runs on: the bridge thread (writer), anywhere (reader).

use bytes::Bytes;
use super::local::LocalState;
use super::{MembersReply, Op, PresenceError, PresenceShared};
use ::redis::aio::MultiplexedConnection;
use crate::redis_link::{RedisLink, REDIS_RESPONSE_TIMEOUT_MS};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Reconnect delay: full jitter under a cap doubling from the minimum to the maximum
/// (`backoff::Reconnect`).
pub const REDIS_RECONNECT_DELAY_MS_MIN: u64 = 50;
pub const REDIS_RECONNECT_DELAY_MS_MAX: u64 = 2_000;
/// Jobs (batches and queries) waiting for the writer: past it a batch is dropped and
/// the writer resyncs from local state instead (counted), so memory stays bounded while
/// Redis is slow.
pub const WRITER_QUEUE_JOBS: usize = 256;
/// Longest an idle writer goes without a command to Redis: its heartbeat (every
/// `presence_ttl / 3`) comes at least this often, so a lost link is noticed in about a
/// second even with a long TTL.
pub const LINK_CHECK_MS_MAX: u64 = 1_000;

/// Work for the writer task, done in order on its one connection, so a `presence` query
/// sees every change this node made before it.
pub enum Job {
    /// Changes to write, and the `join`/`leave` frames to publish once they are written.
    Batch(Vec<Op>, Frames),
    Members { channel: Arc<str>, reply: MembersReply },
}

/// `join`/`leave` frames as (`$pres.{channel}`, frame).
pub type Frames = Vec<(Box<str>, Bytes)>;

fn unavailable(error: impl std::fmt::Display) -> PresenceError {
    PresenceError::Unavailable(format!("presence store (Redis) unavailable: {error}; retry shortly"))
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Key names, in one place.
#[derive(Clone)]
pub struct Keys {
    prefix: Arc<str>,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys { prefix: prefix.into() }
    }
    pub fn channel(&self, channel: &str) -> String {
        format!("{}:pres:{channel}", self.prefix)
    }
    pub fn online(&self, user: &str) -> String {
        format!("{}:online:{user}", self.prefix)
    }
    pub fn instance(&self, instance: &str) -> String {
        format!("{}:node:{instance}", self.prefix)
    }
}

/// The instance part of a field `{instance}/{conn}`.
fn instance_of(field: &str) -> &str {
    field.rsplit_once('/').map_or(field, |(instance, _)| instance)
}

/// The live entries of one hash: fields whose instance key still exists. Dead ones are
/// deleted on the way (lazily; any reader does it, no node needs to be alive).
async fn live_entries(con: &mut MultiplexedConnection, keys: &Keys, key: &str) -> Result<Vec<(String, String)>, ::redis::RedisError> {
    let entries: Vec<(String, String)> = ::redis::cmd("HGETALL").arg(key).query_async(con).await?;
    if entries.is_empty() {
        return Ok(entries);
    }
    let mut instances: Vec<String> = entries.iter().map(|(f, _)| instance_of(f).to_owned()).collect();
    instances.sort_unstable();
    instances.dedup();
    let mut mget = ::redis::cmd("MGET");
    for instance in &instances {
        mget.arg(keys.instance(instance));
    }
    let alive: Vec<Option<String>> = mget.query_async(con).await?;
    let alive: Vec<&str> = instances.iter().zip(&alive).filter(|(_, a)| a.is_some()).map(|(i, _)| i.as_str()).collect();
    let (live, dead): (Vec<_>, Vec<_>) = entries.into_iter().partition(|(f, _)| alive.contains(&instance_of(f)));
    if !dead.is_empty() {
        let mut hdel = ::redis::cmd("HDEL");
        hdel.arg(key);
        for (field, _) in &dead {
            hdel.arg(field);
        }
        hdel.exec_async(con).await?;
    }
    Ok(live)
}

async fn members_on(con: &mut MultiplexedConnection, keys: &Keys, channel: &str) -> Result<Vec<Arc<str>>, ::redis::RedisError> {
    let mut live = live_entries(con, keys, &keys.channel(channel)).await?;
    live.sort_unstable();
    Ok(live.into_iter().map(|(_, member)| member.into()).collect())
}

/// Reads presence from Redis on any tokio runtime: the gateway's queries and the Lane
/// worker's `is_online`. Connects lazily and again after an error.
#[derive(Clone)]
pub struct RedisReader {
    link: Arc<RedisLink>,
    keys: Keys,
}

impl RedisReader {
    pub fn new(url: &str, prefix: &str) -> Result<RedisReader, String> {
        let link = RedisLink::open(url, Duration::from_millis(REDIS_RESPONSE_TIMEOUT_MS))?;
        Ok(RedisReader { link: Arc::new(link), keys: Keys::new(prefix) })
    }

    async fn connection(&self) -> Result<MultiplexedConnection, PresenceError> {
        self.link.connection().await.map_err(unavailable)
    }

    async fn forget(&self) {
        self.link.reset().await;
    }

    /// At least one live connection of `user` on any node.
    pub async fn is_online(&self, user: &str) -> Result<bool, PresenceError> {
        let mut con = self.connection().await?;
        match live_entries(&mut con, &self.keys, &self.keys.online(user)).await {
            Ok(live) => Ok(!live.is_empty()),
            Err(error) => {
                self.forget().await;
                Err(unavailable(error))
            }
        }
    }

    /// Member JSON objects of `channel` on every live node.
    pub async fn members(&self, channel: &str) -> Result<Vec<Arc<str>>, PresenceError> {
        let mut con = self.connection().await?;
        match members_on(&mut con, &self.keys, channel).await {
            Ok(members) => Ok(members),
            Err(error) => {
                self.forget().await;
                Err(unavailable(error))
            }
        }
    }
}

/// The bridge's handle on the writer task.
pub struct RedisWriter {
    queue: tokio::sync::mpsc::Sender<Job>,
    /// Set when a batch was dropped (queue full): the writer rewrites everything.
    resync: Rc<Cell<bool>>,
}

impl RedisWriter {
    /// Starts the writer task on the current `LocalSet`; it connects in the background.
    /// `written`: where the frames of each batch go once the batch is in Redis (or failed
    /// to get there), for the bridge to publish.
    pub fn start(
        url: &str,
        prefix: &str,
        node: &str,
        ttl: Duration,
        batch: usize,
        local: Rc<RefCell<LocalState>>,
        shared: Arc<PresenceShared>,
        written: tokio::sync::mpsc::Sender<Frames>,
    ) -> Result<RedisWriter, String> {
        let link = RedisLink::open(url, Duration::from_millis(REDIS_RESPONSE_TIMEOUT_MS))?;
        let (queue, jobs) = tokio::sync::mpsc::channel(WRITER_QUEUE_JOBS);
        let resync = Rc::new(Cell::new(false));
        let task = WriterTask {
            link,
            keys: Keys::new(prefix),
            node: node.replace('/', "_"),
            ttl,
            batch,
            local,
            shared,
            resync: resync.clone(),
            instance: None,
            starts: 0,
            written,
        };
        tokio::task::spawn_local(task.run(jobs));
        Ok(RedisWriter { queue, resync })
    }

    /// Hands a batch to the writer; a full queue drops it and asks for a resync, and its
    /// frames come back to be published now.
    pub fn write(&self, ops: Vec<Op>, frames: Frames, shared: &PresenceShared) -> Frames {
        match self.queue.try_send(Job::Batch(ops, frames)) {
            Ok(()) => Vec::new(),
            Err(error) => {
                shared.metrics.overflows.inc();
                tracing::warn!("presence writer queue full (Redis slow): resyncing from local state");
                self.resync.set(true);
                match error {
                    tokio::sync::mpsc::error::TrySendError::Full(Job::Batch(_, frames)) | tokio::sync::mpsc::error::TrySendError::Closed(Job::Batch(_, frames)) => frames,
                    _ => Vec::new(),
                }
            }
        }
    }

    pub fn query(&self, channel: Arc<str>, reply: MembersReply) {
        if let Err(error) = self.queue.try_send(Job::Members { channel, reply }) {
            let job = match error {
                tokio::sync::mpsc::error::TrySendError::Full(job) | tokio::sync::mpsc::error::TrySendError::Closed(job) => job,
            };
            if let Job::Members { reply, .. } = job {
                let _ = reply.send(Err(PresenceError::Unavailable("presence store is overloaded (writer queue full); retry shortly".into())));
            }
        }
    }
}

struct WriterTask {
    link: RedisLink,
    keys: Keys,
    node: String,
    ttl: Duration,
    batch: usize,
    local: Rc<RefCell<LocalState>>,
    shared: Arc<PresenceShared>,
    resync: Rc<Cell<bool>>,
    /// The current instance name, once registered.
    instance: Option<String>,
    starts: u64,
    written: tokio::sync::mpsc::Sender<Frames>,
}

impl WriterTask {
    async fn run(mut self, mut jobs: tokio::sync::mpsc::Receiver<Job>) {
        let mut reconnect = crate::backoff::Reconnect::new(Duration::from_millis(REDIS_RECONNECT_DELAY_MS_MIN), Duration::from_millis(REDIS_RECONNECT_DELAY_MS_MAX));
        loop {
            let mut con = match self.link.connect().await {
                Ok(con) => con,
                Err(error) => {
                    self.down(&error, &mut jobs);
                    tokio::time::sleep(reconnect.next_delay()).await;
                    continue;
                }
            };
            if let Err(error) = self.register(&mut con, &mut jobs).await {
                self.down(&error, &mut jobs);
                tokio::time::sleep(reconnect.next_delay()).await;
                continue;
            }
            reconnect.reset();
            let error = self.serve(&mut con, &mut jobs).await;
            self.down(&error, &mut jobs);
        }
    }

    /// Link lost (or never made): say so once, answer waiting queries, drop batches
    /// (the resync on recovery rewrites everything from local state).
    fn down(&mut self, error: &::redis::RedisError, jobs: &mut tokio::sync::mpsc::Receiver<Job>) {
        self.shared.metrics.errors.inc();
        if self.shared.link_up.swap(false, Ordering::AcqRel) {
            tracing::warn!(%error, "presence: Redis link lost; presence answers 503 until it is back");
        }
        while let Ok(job) = jobs.try_recv() {
            match job {
                Job::Members { reply, .. } => {
                    let _ = reply.send(Err(unavailable(error)));
                }
                Job::Batch(_, frames) => self.hand_back(frames),
            }
        }
    }

    /// Frames of a batch that is in Redis, or will be by the resync: to the bridge. A
    /// bridge this far behind (WRITER_QUEUE_JOBS batches) loses them, counted.
    fn hand_back(&self, frames: Frames) {
        if frames.is_empty() {
            return;
        }
        let count = frames.len() as u64;
        if self.written.try_send(frames).is_err() {
            self.shared.metrics.events_suppressed.add(count);
        }
    }

    /// A new instance: heartbeat key, every local entry, then the old instance's key is
    /// deleted (its entries, stale or not, vanish for readers at once).
    async fn register(&mut self, con: &mut MultiplexedConnection, jobs: &mut tokio::sync::mpsc::Receiver<Job>) -> Result<(), ::redis::RedisError> {
        self.starts += 1;
        let instance = format!("{}~{:x}{:x}", self.node, unix_ms(), self.starts);
        let ttl_ms = self.ttl.as_millis() as u64;
        ::redis::cmd("SET").arg(self.keys.instance(&instance)).arg(&self.node).arg("PX").arg(ttl_ms).exec_async(con).await?;
        self.shared.metrics.commands.inc();
        // Batches queued before this point are older than the snapshot: drop them.
        let mut queries = Vec::new();
        let mut frames = Vec::new();
        while let Ok(job) = jobs.try_recv() {
            match job {
                Job::Members { channel, reply } => queries.push((channel, reply)),
                Job::Batch(_, batch_frames) => frames.extend(batch_frames),
            }
        }
        self.resync.set(false);
        // Up from here, in the same step as the snapshot: every change applied before it
        // is in the snapshot, every change after it is queued behind it (the engine drops
        // changes while the link is down, counting on this resync).
        let was_up = self.shared.link_up.swap(true, Ordering::AcqRel);
        let snapshot = self.local.borrow().snapshot();
        for chunk in snapshot.chunks(self.batch) {
            self.pipeline(con, &instance, chunk).await?;
        }
        if let Some(old) = self.instance.replace(instance) {
            ::redis::cmd("DEL").arg(self.keys.instance(&old)).exec_async(con).await?;
            self.shared.metrics.commands.inc();
        }
        self.shared.metrics.resyncs.inc();
        if !was_up {
            tracing::info!(entries = snapshot.len(), "presence: Redis link up; local presence registered");
        }
        // Their changes are in the snapshot just written.
        self.hand_back(frames);
        for (channel, reply) in queries {
            let answer = members_on(con, &self.keys, &channel).await;
            let _ = reply.send(answer.map_err(unavailable));
        }
        Ok(())
    }

    async fn serve(&mut self, con: &mut MultiplexedConnection, jobs: &mut tokio::sync::mpsc::Receiver<Job>) -> ::redis::RedisError {
        // The heartbeat doubles as the link check: at least every second, so a lost Redis
        // shows in `/readyz` and in presence answers within about that long.
        let period = (self.ttl / 3).min(Duration::from_millis(LINK_CHECK_MS_MAX));
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.resync.get() {
                if let Err(error) = self.register(con, jobs).await {
                    return error;
                }
            }
            let instance = self.instance.clone().expect("registered before serving");
            let result = tokio::select! {
                job = jobs.recv() => match job {
                    None => std::future::pending().await,
                    Some(Job::Batch(ops, frames)) => {
                        // Written first, then published: a node that reads the members
                        // after seeing no frame finds the change in Redis.
                        let written = self.pipeline(con, &instance, &ops).await;
                        if self.written.send(frames).await.is_err() {
                            tracing::debug!("presence frames after the bridge stopped");
                        }
                        written
                    }
                    Some(Job::Members { channel, reply }) => {
                        self.shared.metrics.commands.add(3);
                        match members_on(con, &self.keys, &channel).await {
                            Ok(members) => { let _ = reply.send(Ok(members)); Ok(()) }
                            Err(error) => { let _ = reply.send(Err(unavailable(&error))); Err(error) }
                        }
                    }
                },
                _ = heartbeat.tick() => {
                    self.shared.metrics.commands.inc();
                    let ttl_ms = self.ttl.as_millis() as u64;
                    // XX: a key that expired (Redis stalled past the TTL) means readers
                    // already dropped this instance; start a new one with a full resync.
                    let kept: Option<String> = match ::redis::cmd("SET").arg(self.keys.instance(&instance)).arg(&self.node).arg("PX").arg(ttl_ms).arg("XX").query_async(con).await {
                        Ok(kept) => kept,
                        Err(error) => return error,
                    };
                    if kept.is_none() {
                        tracing::warn!("presence: this node's heartbeat key had expired; registering again");
                        self.resync.set(true);
                    }
                    Ok(())
                }
            };
            if let Err(error) = result {
                return error;
            }
        }
    }

    /// One round trip for `ops`: per key and field only the last change counts, and the
    /// changes of one key go out as one `HSET` and one `HDEL`.
    async fn pipeline(&self, con: &mut MultiplexedConnection, instance: &str, ops: &[Op]) -> Result<(), ::redis::RedisError> {
        if ops.is_empty() {
            return Ok(());
        }
        let commands = build_pipeline(&self.keys, instance, &self.node, ops);
        self.shared.metrics.commands.add(commands.cmd_iter().count() as u64);
        self.shared.metrics.pipelines.inc();
        commands.exec_async(con).await
    }
}

/// The pipeline for `ops` (pure, so it is tested without Redis).
pub fn build_pipeline(keys: &Keys, instance: &str, node: &str, ops: &[Op]) -> ::redis::Pipeline {
    // key → field → Some(value) to set, None to delete; last change wins. Keys keep their
    // first-seen order so the pipeline is deterministic.
    let mut order: Vec<String> = Vec::new();
    let mut changes: HashMap<String, Vec<(String, Option<Arc<str>>)>> = HashMap::new();
    let node: Arc<str> = node.into();
    for op in ops {
        let (key, conn, value) = match op {
            Op::Online { user, conn } => (keys.online(user), conn, Some(node.clone())),
            Op::Offline { user, conn } => (keys.online(user), conn, None),
            Op::Join { channel, conn, member } => (keys.channel(channel), conn, Some(member.clone())),
            Op::Leave { channel, conn } => (keys.channel(channel), conn, None),
        };
        let field = format!("{instance}/{conn}");
        let fields = changes.entry(key.clone()).or_insert_with(|| {
            order.push(key);
            Vec::new()
        });
        match fields.iter_mut().find(|(f, _)| *f == field) {
            Some(slot) => slot.1 = value,
            None => fields.push((field, value)),
        }
    }
    let mut pipe = ::redis::pipe();
    for key in order {
        let fields = &changes[&key];
        if fields.iter().any(|(_, v)| v.is_some()) {
            let hset = pipe.cmd("HSET").arg(&key);
            for (field, value) in fields {
                if let Some(value) = value {
                    hset.arg(field).arg(&**value);
                }
            }
            hset.ignore();
        }
        if fields.iter().any(|(_, v)| v.is_none()) {
            let hdel = pipe.cmd("HDEL").arg(&key);
            for (field, value) in fields {
                if value.is_none() {
                    hdel.arg(field);
                }
            }
            hdel.ignore();
        }
    }
    pipe
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_becomes_one_command_per_key() {
        let keys = Keys::new("t");
        let room: Arc<str> = "room".into();
        let mut ops = Vec::new();
        for conn in 0..100u64 {
            ops.push(Op::Online { user: "ann".into(), conn });
            ops.push(Op::Join { channel: room.clone(), conn, member: "{}".into() });
        }
        ops.push(Op::Leave { channel: room.clone(), conn: 5 });
        let pipe = build_pipeline(&keys, "n~1", "n", &ops);
        let commands: Vec<Vec<u8>> = pipe.cmd_iter().map(|c| c.get_packed_command()).collect();
        assert_eq!(commands.len(), 3, "HSET online:ann, HSET pres:room, HDEL pres:room");
        let text = String::from_utf8_lossy(&commands[2]);
        assert!(text.contains("HDEL") && text.contains("t:pres:room") && text.contains("n~1/5"), "{text}");
        assert!(!String::from_utf8_lossy(&commands[1]).contains("n~1/5\r\n"), "the leave wins over the join");
        assert_eq!(instance_of("node/with/slash~1/42"), "node/with/slash~1");
    }
}
