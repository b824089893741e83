//! The bridge thread: the one place that talks to outside engines.
//!
//! Owns: node-wide interest (which shards want which patterns, reference counted), the
//! broker backend (embedded or NATS), resume replays, and the per-message encode-once
//! step. Must not touch: sockets or connections (it sees shards only through their
//! mailboxes). Runs on: its own thread with a current-thread tokio runtime and a
//! `LocalSet`, so async engine clients (async-nats, redis, lapin) plug in without a second
//! runtime and the broker's helper tasks need not be `Send`.
//!
//! Seams: [`Broker`] is embedded or NATS; shards never know which. Presence and the Lane
//! add their own backends and `ToBridge` variants the same way.

pub mod cluster;
mod embedded;
pub mod history;
pub mod lane;
pub mod nats;

pub use embedded::EmbeddedBroker;

use crate::channel::{Insert, Remove, SubIndex};
use crate::fanout::{ConnRef, Delivery, Full, Mailbox, ReplayError, SubConfirm, ToBridge, ToShard};
use crate::metrics::BridgeMetrics;
use crate::node::Node;
use crate::presence::{PresenceEngine, Presence};
use crate::protocol::{ops, ws};
use bytes::Bytes;
use nats::{Incoming, NatsBroker};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// How many bridge messages one loop turn handles before yielding to the runtime.
const BRIDGE_BATCH_MESSAGES_MAX: usize = 1024;
/// How long handing a replay to a full shard inbox may be retried before it is given up
/// (the shard then times the resume out with 503).
const REPLAY_HANDOFF_TIMEOUT: Duration = Duration::from_secs(5);

/// Where published messages go and come back from.
pub enum Broker {
    /// In-process: a publish is delivered straight back to this node's shards.
    Embedded(EmbeddedBroker),
    /// NATS: publishes go out, and every node's interest comes back in.
    Nats(NatsBroker),
}

impl Broker {
    fn subscribe(&mut self, pattern: &str) {
        match self {
            // Every publish on this node is already local; nothing to tell anyone.
            Broker::Embedded(_) => {}
            Broker::Nats(nats) => nats.subscribe(pattern),
        }
    }

    fn unsubscribe(&mut self, pattern: &str) {
        match self {
            Broker::Embedded(_) => {}
            Broker::Nats(nats) => nats.unsubscribe(pattern),
        }
    }

    /// The next message arriving from outside (never, for the embedded broker).
    async fn next(&mut self) -> Incoming {
        match self {
            Broker::Embedded(_) => std::future::pending().await,
            Broker::Nats(nats) => nats.next().await,
        }
    }
}

/// Everything the bridge thread owns.
pub struct Bridge {
    node: Arc<Node>,
    /// Pattern → shards with at least one local subscriber to it.
    interest: SubIndex<u16>,
    broker: Broker,
    metrics: Arc<BridgeMetrics>,
    /// Members and online users (memory or Redis); see `crate::presence`.
    presence: PresenceEngine,
    /// Durable notifications (embedded store or RabbitMQ) and the in-process worker.
    lane: crate::bridge::lane::LaneBridge,
    /// Cluster-wide channel counts and close orders (`cluster`).
    cluster: cluster::Cluster,
}

impl Bridge {
    /// Builds the broker the config asks for. NATS being unreachable is not an error (the
    /// node serves local connections and keeps trying); a bad credentials file is.
    pub async fn start(node: Arc<Node>) -> Result<Bridge, String> {
        assert!(node.shard_inboxes.len() <= u16::MAX as usize);
        let metrics = node.bridge_metrics.clone();
        let history = node.config.broker.history.clone();
        let broker = match &node.config.broker.nats {
            None => {
                node.broker_link.store(true, Ordering::Release);
                Broker::Embedded(EmbeddedBroker::new(history))
            }
            Some(config) => {
                let link = node.broker_link.clone();
                Broker::Nats(nats::start(config, history, &node.config.node, link, metrics.clone()).await?)
            }
        };
        let presence = PresenceEngine::start(&node.config.presence, &node.config.node, node.presence.clone())?;
        let lane = crate::bridge::lane::LaneBridge::start(&node).await?;
        let link = match (&broker, &node.config.broker.nats) {
            (Broker::Nats(nats), Some(config)) => Some(cluster::NatsLink { client: nats.client(), up: nats.link(), prefix: config.prefix.clone() }),
            _ => None,
        };
        let cluster = cluster::Cluster::start(node.clone(), link, metrics.clone());
        Ok(Bridge { node, interest: SubIndex::new(), broker, metrics, presence, lane, cluster })
    }

    /// Reads presence (`is_online`, `members`) from this node's backend; `Send`, so it
    /// may move to another runtime (the in-process Lane worker).
    pub fn presence(&self) -> Presence {
        self.presence.handle()
    }

    /// "User came online on this node" (its local connection count went 0 → 1): the
    /// Lane's fast path for pending notifications. Bounded: a receiver that falls
    /// `presence::ONLINE_EVENTS_CAPACITY` events behind gets `Lagged` and skips ahead.
    pub fn online_events(&self) -> tokio::sync::broadcast::Receiver<Arc<str>> {
        self.presence.online_events()
    }

    /// Runs until a `ToBridge::Stop` arrives.
    pub async fn run(mut self) {
        let inbox = self.node.bridge_inbox.clone();
        let mut batch = Vec::with_capacity(BRIDGE_BATCH_MESSAGES_MAX);
        loop {
            let flush_at = self.presence.flush_deadline();
            tokio::select! {
                _ = tokio::time::sleep_until(flush_at.unwrap_or_else(tokio::time::Instant::now)), if flush_at.is_some() => {
                    for (channel, frame) in self.presence.flush() {
                        self.publish_frame(channel, frame, None);
                    }
                }
                frames = self.presence.written() => {
                    for (channel, frame) in frames {
                        self.publish_frame(channel, frame, None);
                    }
                }
                _ = inbox.recv_batch(&mut batch, BRIDGE_BATCH_MESSAGES_MAX) => {
                    for message in batch.drain(..) {
                        if !self.handle(message) {
                            return;
                        }
                    }
                }
                incoming = self.broker.next() => {
                    self.deliver(incoming.channel, &incoming.payload, incoming.raw_frame, incoming.seq, incoming.exclude.as_deref());
                }
            }
        }
    }

    /// Returns false on Stop.
    fn handle(&mut self, message: ToBridge) -> bool {
        match message {
            ToBridge::Interest { shard, pattern, add } => self.interest_changed(shard, &pattern, add),
            ToBridge::ConfirmLive { shard, confirm } => self.confirm_live(shard, confirm),
            ToBridge::Publish { channel, data } => self.publish(channel, data),
            ToBridge::PublishFrame { channel, frame, exclude } => self.publish_frame(channel, frame, exclude),
            ToBridge::Replay { shard, target, replay, channel, since } => self.replay(shard, target, replay, channel, since),
            ToBridge::Presence(change) => {
                for (channel, frame) in self.presence.apply(change) {
                    self.publish_frame(channel, frame, None);
                }
            }
            ToBridge::PresenceQuery { channel, reply } => {
                for (channel, frame) in self.presence.query(channel, reply) {
                    self.publish_frame(channel, frame, None);
                }
            }
            ToBridge::Notify { notification, caller_nid, reply } => self.lane.notify(*notification, caller_nid, reply),
            ToBridge::NotifyDead { op, reply } => self.lane.dead(op, reply),
            ToBridge::Ack { user, nid } => self.lane.ack(&user, &nid),
            ToBridge::ClusterCount { query, reply } => self.cluster.count(query, reply),
            ToBridge::ClusterCloseUser { close, reply } => self.cluster.close_user(close, reply),
            ToBridge::Stop => return false,
        }
        true
    }

    fn publish(&mut self, channel: Box<str>, data: Bytes) {
        self.metrics.published.inc();
        match &mut self.broker {
            Broker::Embedded(broker) => {
                let seq = broker.publish(&channel, &data);
                self.metrics.history_channels.set(broker.history_channels() as u64);
                self.deliver(channel, &data, false, seq, None);
            }
            // Comes back through the node's own subscription, like every other node's.
            Broker::Nats(nats) => {
                nats.publish(&channel, data);
            }
        }
    }

    /// A complete server frame for `channel`'s subscribers on every node (presence
    /// `join`/`leave`, Lane `notify`). Not kept in history and carries no `seq`.
    /// `exclude`: a socket id that must not receive it (on whichever node holds it).
    pub fn publish_frame(&mut self, channel: Box<str>, frame: Bytes, exclude: Option<Box<str>>) {
        match &mut self.broker {
            Broker::Embedded(_) => self.deliver(channel, &frame, true, None, exclude.as_deref()),
            Broker::Nats(nats) => {
                nats.publish_frame(&channel, frame, exclude);
            }
        }
    }

    /// Answers a `sub` once its interest is live on the broker's server. The embedded
    /// broker's interest is live as soon as the bridge has seen it (it has: this message
    /// came after it).
    fn confirm_live(&mut self, shard: u16, confirm: Box<SubConfirm>) {
        let mailbox = self.node.shard_inboxes[shard as usize].clone();
        let Broker::Nats(nats) = &self.broker else {
            tokio::task::spawn_local(hand_confirmed(mailbox, confirm, true));
            return;
        };
        let waiting = self.metrics.sub_confirms_waiting.get() as usize;
        if waiting >= self.node.config.broker.nats.as_ref().map_or(usize::MAX, |c| c.sub_confirms_waiting_max) {
            self.metrics.sub_confirm_failures.inc();
            tokio::task::spawn_local(hand_confirmed(mailbox, confirm, false));
            return;
        }
        let barrier = nats.live_barrier();
        let metrics = self.metrics.clone();
        metrics.sub_confirms_waiting.inc();
        tokio::task::spawn_local(async move {
            let live = barrier.await;
            metrics.sub_confirms_waiting.sub(1);
            if !live {
                metrics.sub_confirm_failures.inc();
            }
            hand_confirmed(mailbox, confirm, live).await;
        });
    }

    fn replay(&mut self, shard: u16, target: ConnRef, replay: u32, channel: Box<str>, since: u64) {
        let mailbox = self.node.shard_inboxes[shard as usize].clone();
        match &mut self.broker {
            Broker::Embedded(broker) => {
                self.metrics.replays.inc();
                let (frames, outcome) = match broker.replay(&channel, since) {
                    Ok(replayed) => {
                        let frames: Vec<Bytes> =
                            replayed.messages.iter().map(|(seq, data)| encode_frame(&channel, data, false, Some(*seq))).collect();
                        self.metrics.replayed_messages.add(frames.len() as u64);
                        (frames, Ok(replayed.upto))
                    }
                    Err(error) => {
                        if error.code == 409 {
                            self.metrics.replays_gone.inc();
                        }
                        (Vec::new(), Err(error))
                    }
                };
                tokio::task::spawn_local(hand_replay(mailbox, target, replay, frames, outcome));
            }
            Broker::Nats(nats) => nats.replay(mailbox, target, replay, channel, since, self.metrics.clone()),
        }
    }

    fn interest_changed(&mut self, shard: u16, pattern: &str, add: bool) {
        if add {
            if self.interest.insert(pattern, shard) == Insert::NewPattern {
                self.metrics.patterns.inc();
                self.broker.subscribe(pattern);
                let live = match &self.broker {
                    Broker::Nats(nats) if pattern.starts_with("user.") => Some(nats.live_barrier()),
                    _ => None,
                };
                self.lane.interest_when(pattern, true, live);
            }
        } else if self.interest.remove(pattern, shard) == Remove::LastKey {
            self.metrics.patterns.sub(1);
            self.broker.unsubscribe(pattern);
            self.lane.interest(pattern, false);
        }
    }

    /// Encodes the message once and hands the same frame to every interested shard. A
    /// full shard queue drops that shard's copy (counted) and never blocks the others.
    pub fn deliver(&mut self, channel: Box<str>, payload: &[u8], raw_frame: bool, seq: Option<u64>, exclude: Option<&str>) {
        let received_us = self.node.started.elapsed().as_micros() as u64;
        if !raw_frame && channel.starts_with(crate::presence::PRESENCE_CHANNEL_PREFIX) {
            // Only the server's own join/leave frames belong there (a NATS client
            // publishing on `{prefix}.$pres.x` must not reach presence subscribers).
            return;
        }
        let mut wanted = ShardSet::default();
        self.interest.for_each_match(&channel, |shard| wanted.insert(shard));
        if wanted.is_empty() {
            return;
        }
        let frame = encode_frame(&channel, payload, raw_frame, seq);
        if frame.len() > self.node.config.outbound_bytes_max {
            // The doors refuse such publishes with 413; this one came from NATS (any NATS
            // client can publish on the prefix) or is a server frame. No subscriber could
            // queue it: each would be closed with 4008, and again on every resume.
            self.metrics.oversize_dropped.inc();
            tracing::debug!(%channel, bytes = frame.len(), "dropped a message larger than outbound_limit");
            return;
        }
        let exclude = exclude.and_then(|socket| crate::fanout::local_socket(socket, &self.node.config.node));
        let delivery = Arc::new(Delivery { channel, frame, seq, received_us, exclude });
        for shard in wanted.iter() {
            match self.node.shard_inboxes[shard as usize].push(ToShard::Deliver(delivery.clone())) {
                Ok(()) => self.metrics.deliveries_queued.inc(),
                Err(Full(_)) => self.metrics.deliveries_dropped.inc(),
            }
        }
    }
}

/// Gives a replay to its shard: the frames in chunks, then the outcome. A full inbox is
/// retried (this runs as its own task, so the bridge loop never waits), up to a deadline.
async fn hand_replay(shard: Arc<Mailbox<ToShard>>, target: ConnRef, replay: u32, frames: Vec<Bytes>, outcome: Result<u64, ReplayError>) {
    let deadline = tokio::time::Instant::now() + REPLAY_HANDOFF_TIMEOUT;
    let mut frames = frames.into_iter().peekable();
    while frames.peek().is_some() {
        let chunk: Vec<Bytes> = frames.by_ref().take(crate::limits::REPLAY_CHUNK_FRAMES).collect();
        if !push_until(&shard, ToShard::Replay { target, replay, frames: chunk }, deadline).await {
            return;
        }
    }
    push_until(&shard, ToShard::ReplayDone { target, replay, outcome }, deadline).await;
}

/// Gives a `sub`'s confirmation to its shard (retried on a full inbox, like a replay).
async fn hand_confirmed(shard: Arc<Mailbox<ToShard>>, confirm: Box<SubConfirm>, live: bool) {
    let deadline = tokio::time::Instant::now() + REPLAY_HANDOFF_TIMEOUT;
    push_until(&shard, ToShard::Confirmed { confirm, live }, deadline).await;
}

async fn push_until(shard: &Mailbox<ToShard>, mut message: ToShard, deadline: tokio::time::Instant) -> bool {
    loop {
        match shard.push(message) {
            Ok(()) => return true,
            Err(Full(refused)) => {
                if tokio::time::Instant::now() >= deadline {
                    tracing::warn!("a shard inbox stayed full; a resume was given up (the client gets 503)");
                    return false;
                }
                message = refused;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

/// The WebSocket frame for one message: `{"op":"msg","ch":..,"data":..,"seq"?:..}`, or, for
/// a payload that is itself a server frame (`Ringcast-Frame`), that frame verbatim.
pub fn encode_frame(channel: &str, payload: &[u8], raw_frame: bool, seq: Option<u64>) -> Bytes {
    if raw_frame && std::str::from_utf8(payload).is_ok() {
        return ws::encode_text(payload);
    }
    let data = ops::data_from_payload(payload);
    let mut json = Vec::with_capacity(channel.len() + data.len() + 48);
    ops::msg_into(&mut json, channel, &data, seq);
    ws::encode_text(&json)
}

/// `{"op":"msg","ch":..,"data":..}` as one WebSocket text frame.
pub fn encode_msg_frame(channel: &str, data: &[u8]) -> Bytes {
    encode_frame(channel, data, false, None)
}

/// A set of shard ids (≤ 256 shards, `limits::SHARD_COUNT_MAX`) as a bitmap, so matching
/// patterns from the same shard collapse without allocation.
#[derive(Default)]
struct ShardSet([u64; 4]);

impl ShardSet {
    fn insert(&mut self, shard: u16) {
        self.0[(shard / 64) as usize] |= 1 << (shard % 64);
    }
    fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }
    fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        (0..256u16).filter(move |s| self.0[(s / 64) as usize] & (1 << (s % 64)) != 0)
    }
}

