//! The bridge thread: the one place that talks to outside engines.
//!
//! Owns: node-wide interest (which shards want which patterns, reference counted), the
//! broker backend, and the per-message encode-once step. Must not touch: sockets or
//! connections (it sees shards only through their mailboxes). Runs on: its own thread
//! with a current-thread tokio runtime, so async engine clients (async-nats, redis,
//! lapin) plug in without a second runtime.
//!
//! Seams: [`Broker`] is the enum the NATS backend joins (issue: Beacon). Presence and the
//! Lane add their own backends and `ToBridge` variants the same way; shards never change.

mod embedded;

pub use embedded::EmbeddedBroker;

use crate::channel::{Insert, Remove, SubIndex};
use crate::fanout::{Delivery, Full, Mailbox, ToBridge, ToShard};
use crate::metrics::BridgeMetrics;
use crate::protocol::{ops, ws};
use bytes::Bytes;
use std::sync::Arc;

/// How many bridge messages one loop turn handles before yielding to the runtime.
const BRIDGE_BATCH_MESSAGES_MAX: usize = 1024;

/// Where published messages go and come back from.
pub enum Broker {
    /// In-process: a publish is delivered straight back to this node's shards.
    Embedded(EmbeddedBroker),
}

impl Broker {
    fn subscribe(&mut self, _pattern: &str) {
        match self {
            // Every publish on this node is already local; nothing to tell anyone.
            Broker::Embedded(_) => {}
        }
    }

    fn unsubscribe(&mut self, _pattern: &str) {
        match self {
            Broker::Embedded(_) => {}
        }
    }

    /// Returns the messages that arrive back for local fan-out.
    fn publish(&mut self, channel: Box<str>, data: Bytes) -> Option<(Box<str>, Bytes)> {
        match self {
            Broker::Embedded(broker) => Some(broker.publish(channel, data)),
        }
    }
}

/// Everything the bridge thread owns.
pub struct Bridge {
    inbox: Arc<Mailbox<ToBridge>>,
    shards: Vec<Arc<Mailbox<ToShard>>>,
    /// Pattern → shards with at least one local subscriber to it.
    interest: SubIndex<u16>,
    broker: Broker,
    metrics: Arc<BridgeMetrics>,
}

impl Bridge {
    pub fn new(
        inbox: Arc<Mailbox<ToBridge>>,
        shards: Vec<Arc<Mailbox<ToShard>>>,
        broker: Broker,
        metrics: Arc<BridgeMetrics>,
    ) -> Bridge {
        assert!(shards.len() <= u16::MAX as usize);
        Bridge { inbox, shards, interest: SubIndex::new(), broker, metrics }
    }

    /// Runs until a `ToBridge::Stop` arrives.
    pub async fn run(mut self) {
        let mut batch = Vec::with_capacity(BRIDGE_BATCH_MESSAGES_MAX);
        loop {
            self.inbox.recv_batch(&mut batch, BRIDGE_BATCH_MESSAGES_MAX).await;
            for message in batch.drain(..) {
                match message {
                    ToBridge::Interest { shard, pattern, add } => self.interest_changed(shard, &pattern, add),
                    ToBridge::Publish { channel, data } => {
                        self.metrics.published.inc();
                        if let Some((channel, data)) = self.broker.publish(channel, data) {
                            self.deliver(channel, &data);
                        }
                    }
                    ToBridge::Stop => return,
                }
            }
            tokio::task::yield_now().await;
        }
    }

    fn interest_changed(&mut self, shard: u16, pattern: &str, add: bool) {
        if add {
            if self.interest.insert(pattern, shard) == Insert::NewPattern {
                self.metrics.patterns.inc();
                self.broker.subscribe(pattern);
            }
        } else if self.interest.remove(pattern, shard) == Remove::LastKey {
            self.metrics.patterns.sub(1);
            self.broker.unsubscribe(pattern);
        }
    }

    /// Encodes the message once and hands the same frame to every interested shard. A
    /// full shard queue drops that shard's copy (counted) and never blocks the others.
    pub fn deliver(&mut self, channel: Box<str>, data: &[u8]) {
        let mut wanted = ShardSet::default();
        self.interest.for_each_match(&channel, |shard| wanted.insert(shard));
        if wanted.is_empty() {
            return;
        }
        let frame = encode_msg_frame(&channel, data);
        let delivery = Arc::new(Delivery { channel, frame });
        for shard in wanted.iter() {
            match self.shards[shard as usize].push(ToShard::Deliver(delivery.clone())) {
                Ok(()) => self.metrics.deliveries_queued.inc(),
                Err(Full(_)) => self.metrics.deliveries_dropped.inc(),
            }
        }
    }
}

/// `{"op":"msg","ch":..,"data":..}` as one WebSocket text frame.
pub fn encode_msg_frame(channel: &str, data: &[u8]) -> Bytes {
    let data = ops::data_from_payload(data);
    let mut json = Vec::with_capacity(channel.len() + data.len() + 32);
    ops::msg_into(&mut json, channel, &data, None);
    ws::encode_text(&json)
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

/// Starts the bridge on its own thread with a current-thread tokio runtime.
pub fn spawn(bridge: Bridge) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("ringcast-bridge".into()).spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("the bridge's tokio runtime could not start");
        runtime.block_on(bridge.run());
    })
}
