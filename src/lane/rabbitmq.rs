//! The Lane on RabbitMQ: durable queues, persistent messages, publisher confirms, manual
//! acks, and retries scheduled by RabbitMQ itself.
//!
//! Topology (every name under `--lane-prefix`, default `rc.lane`):
//! - `{p}.work`: durable; what the workers consume. A message it rejects (unreadable)
//!   dead-letters to `{p}.dead`.
//! - `{p}.retry.{ms}`: one durable queue per backoff bucket ([`super::backoff`]) with
//!   `x-message-ttl = ms` and a dead-letter route back to `{p}.work`: a retry is a
//!   confirmed publish there, after which the original is acked. No worker ever holds a
//!   message while it waits.
//! - `{p}.park.{ms}`: durable, like the retry queues but for notifications whose user is
//!   offline ([`PARK_BUCKETS_MS`], 250 ms doubling up to 1 h): a parked copy sits there
//!   (no worker holds it, no timer runs) and comes back to `{p}.work` when the bucket's TTL
//!   passes; the worker then checks it again (expired: dead letter; user still away: park
//!   again, no attempt counted). A returning user does not wait for that: the online fast
//!   path sends it from the inbox ([`super::inbox`]).
//! - `{p}.dead`: durable; attempts or TTL exhausted. Listed with `basic.get` without ack
//!   (the channel's close puts them back), replayed with confirm-then-ack, purged.
//!
//! Owns: AMQP connections, channels, and reconnecting them. Runs on: a tokio current-thread
//! runtime with a `LocalSet` (the bridge thread, or `ringcast worker`).

use crate::backoff::Backoff;
use super::{Accepted, DeadAnswer, DeadOp, DeadRecord, Notification, Outcome};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Acker, BasicProperties, Channel, Connection, ConnectionProperties};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Publishing channels per connection on the gateway side: confirms are per channel, so
/// several let accepts from many requests be confirmed in parallel. It is also the most
/// work-queue publishes a gateway has waiting for their confirm at once.
pub const PUBLISH_CHANNELS: usize = 8;
/// An envelope: while every publishing channel waits for a confirm, accepts that arrive
/// queue up and go out together in one persistent message with one confirm, up to
/// `--lane-envelope` notifications and about this many bytes. No wait is added when the
/// broker keeps up; under load the broker's per-message cost is shared.
pub const ENVELOPE_BYTES_MAX: usize = 1024 * 1024;
/// How publishes are grouped and bounded (`--lane-envelope`, `--lane-waiting`).
#[derive(Clone, Copy, Debug)]
pub struct Envelopes {
    /// Notifications per message at most.
    pub per_message: usize,
    /// Publishes waiting for a slot at most; past it a publish fails at once.
    pub waiting_max: usize,
}

impl Default for Envelopes {
    fn default() -> Self {
        Envelopes { per_message: crate::config::lane::LANE_ENVELOPE, waiting_max: crate::config::lane::LANE_WAITING }
    }
}

impl From<&super::LaneConfig> for Envelopes {
    fn from(config: &super::LaneConfig) -> Self {
        Envelopes { per_message: config.envelope, waiting_max: config.waiting }
    }
}
/// How often a worker asks RabbitMQ how many notifications wait in its queues (one
/// passive declare per queue: `.work` and each retry bucket).
pub const QUEUE_STATS_INTERVAL: Duration = Duration::from_secs(2);
/// How often a link checks that its connection is still up.
const LINK_CHECK_INTERVAL: Duration = Duration::from_millis(200);
/// Reconnect backoff: from 100 ms doubling to 2 s (RabbitMQ restarts take seconds).
const RECONNECT_DELAY_MIN: Duration = Duration::from_millis(100);
const RECONNECT_DELAY_MAX: Duration = Duration::from_secs(2);
/// nids remembered per gateway node for idempotency when no shared store is configured
/// (~100 bytes each): past it the oldest are forgotten (a very late duplicate is enqueued
/// again, which at-least-once allows).
pub const DEDUPE_NIDS_MAX: usize = 200_000;

/// Park queue delays, ms: 250 ms doubling to ~34 min, then 1 h (= `LANE_PARK_MAX_MS`). A
/// park rounds its wanted delay DOWN to a bucket so a copy comes back by its expiry (only a
/// wait under 250 ms is rounded up): a notification with a long TTL is looked at about once
/// per `lane_park_max`, one with time left `t` about log2(t / 250 ms) more times near the
/// end. Fixed, so every process declares and deletes the same queues.
pub const PARK_BUCKETS_MS: [u64; 15] = [250, 500, 1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 128_000, 256_000, 512_000, 1_024_000, 2_048_000, 3_600_000];
const _: () = assert!(PARK_BUCKETS_MS[PARK_BUCKETS_MS.len() - 1] == crate::config::lane::LANE_PARK_MAX_MS);

/// The park bucket for a wanted delay: the largest not above it (the smallest for less).
pub fn park_bucket(ms: u64) -> u64 {
    let i = PARK_BUCKETS_MS.partition_point(|b| *b <= ms);
    PARK_BUCKETS_MS[i.saturating_sub(1)]
}

/// Queue names under one prefix.
#[derive(Clone, Debug)]
pub struct Topology {
    pub work: String,
    pub dead: String,
    prefix: String,
}

impl Topology {
    pub fn new(prefix: &str) -> Topology {
        Topology { work: format!("{prefix}.work"), dead: format!("{prefix}.dead"), prefix: prefix.to_owned() }
    }

    pub fn retry(&self, ms: u64) -> String {
        format!("{}.retry.{ms}", self.prefix)
    }

    pub fn park(&self, ms: u64) -> String {
        format!("{}.park.{ms}", self.prefix)
    }

    /// The retry queues, then the park queues (each dead-letters back to `.work`).
    fn delayed(&self, backoff: &Backoff) -> Vec<(String, u64)> {
        let retries = backoff.buckets().iter().map(|ms| (self.retry(*ms), *ms));
        retries.chain(PARK_BUCKETS_MS.iter().map(|ms| (self.park(*ms), *ms))).collect()
    }

    /// Declares every queue (idempotent: the same arguments every time).
    pub async fn declare(&self, channel: &Channel, backoff: &Backoff) -> lapin::Result<()> {
        let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
        channel.queue_declare(self.dead.as_str().into(), durable, FieldTable::default()).await?;
        let mut work_args = FieldTable::default();
        work_args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString("".into()));
        work_args.insert("x-dead-letter-routing-key".into(), AMQPValue::LongString(self.dead.as_str().into()));
        channel.queue_declare(self.work.as_str().into(), durable, work_args).await?;
        for (name, ms) in self.delayed(backoff) {
            let mut args = FieldTable::default();
            args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ms as i64));
            args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString("".into()));
            args.insert("x-dead-letter-routing-key".into(), AMQPValue::LongString(self.work.as_str().into()));
            channel.queue_declare(name.as_str().into(), durable, args).await?;
        }
        Ok(())
    }
}

/// Deletes every queue of a prefix (tests and `ringcast dlq` housekeeping; a running
/// worker re-declares them).
pub async fn delete_queues(url: &str, prefix: &str, backoff: &Backoff) -> Result<(), String> {
    let topology = Topology::new(prefix);
    let conn = connect(url, "ringcast-cleanup").await.map_err(|e| format!("RabbitMQ: {e}"))?;
    let channel = conn.create_channel().await.map_err(|e| format!("RabbitMQ: {e}"))?;
    let mut names = vec![topology.work.clone(), topology.dead.clone()];
    names.extend(topology.delayed(backoff).into_iter().map(|(name, _)| name));
    for name in names {
        let _ = channel.queue_delete(name.as_str().into(), lapin::options::QueueDeleteOptions::default()).await;
    }
    let _ = conn.close(200, "done".into()).await;
    Ok(())
}

fn persistent(nid: &str) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(nid.into())
        .with_content_type("application/json".into())
}

/// Publishes to `queue` through the default exchange and waits for the broker's confirm.
/// `mandatory` turns a missing queue into an error instead of a silent drop.
pub async fn publish_confirmed(channel: &Channel, queue: &str, nid: &str, body: &[u8]) -> Result<(), String> {
    let options = BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() };
    let confirm = channel
        .basic_publish("".into(), queue.into(), options, body, persistent(nid))
        .await
        .map_err(|e| format!("RabbitMQ publish failed: {e}"))?
        .await
        .map_err(|e| format!("RabbitMQ confirm failed: {e}"))?;
    if confirm.is_nack() {
        return Err("RabbitMQ refused the message (nack)".into());
    }
    if confirm.take_message().is_some() {
        return Err(format!("RabbitMQ had no queue {queue} for the message"));
    }
    Ok(())
}

async fn connect(url: &str, name: &str) -> lapin::Result<Connection> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(url, properties).await
}

/// Keeps one connection up: `setup` builds the link on a fresh connection; the link is
/// published in `slot` while the connection lives and cleared when it drops. Stops (and
/// closes the connection, so RabbitMQ hands unacked messages to others) once the owner
/// of `slot` is gone. `readiness`, if given, mirrors the link state for `/readyz` (read on
/// other threads).
fn supervise<L: 'static>(
    url: String,
    name: &'static str,
    owner: &Rc<RefCell<Option<Rc<L>>>>,
    connected: Rc<Cell<bool>>,
    readiness: Option<std::sync::Arc<super::metrics::LaneMetrics>>,
    setup: impl AsyncFn(&Connection) -> lapin::Result<L> + 'static,
) {
    let set_up = move |up: bool| {
        connected.set(up);
        if let Some(metrics) = &readiness {
            metrics.amqp_up.store(up, std::sync::atomic::Ordering::Relaxed);
        }
    };
    let slot = Rc::downgrade(owner);
    tokio::task::spawn_local(async move {
        let mut reconnect = crate::backoff::Reconnect::new(RECONNECT_DELAY_MIN, RECONNECT_DELAY_MAX);
        while slot.strong_count() > 0 {
            let attempt = async {
                let conn = connect(&url, name).await?;
                let link = setup(&conn).await?;
                Ok::<_, lapin::Error>((conn, link))
            };
            match attempt.await {
                Ok((conn, link)) => {
                    tracing::info!(link = name, "RabbitMQ connected");
                    let Some(owner) = slot.upgrade() else { break };
                    *owner.borrow_mut() = Some(Rc::new(link));
                    drop(owner);
                    set_up(true);
                    reconnect.reset();
                    while conn.status().connected() && slot.strong_count() > 0 {
                        tokio::time::sleep(LINK_CHECK_INTERVAL).await;
                    }
                    set_up(false);
                    if let Some(owner) = slot.upgrade() {
                        owner.borrow_mut().take();
                        tracing::warn!(link = name, "RabbitMQ connection lost; reconnecting");
                    } else {
                        let _ = conn.close(200, "shutting down".into()).await;
                        break;
                    }
                }
                Err(e) => {
                    let delay = reconnect.next_delay();
                    tracing::warn!(link = name, error = %e, "cannot reach RabbitMQ; retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    continue;
                }
            }
            tokio::time::sleep(reconnect.next_delay()).await;
        }
    });
}

/// A publish waiting for its envelope.
struct Waiting {
    queue: Rc<str>,
    nid: String,
    body: Vec<u8>,
    reply: tokio::sync::oneshot::Sender<Result<(), String>>,
}

/// Queues publishes and sends them in envelopes (see [`ENVELOPE_BYTES_MAX`] and
/// `--lane-envelope`): the gateway's accepts into `.work`, and a worker's retries into
/// each `.retry.{ms}` bucket. A task ([`run_batcher`]) sends one envelope per free
/// publishing slot; what arrives while every slot waits for its confirm goes together.
struct Batcher {
    waiting: RefCell<VecDeque<Waiting>>,
    wake: tokio::sync::Notify,
    /// The owner is gone: the publishing task stops.
    closed: Cell<bool>,
    waiting_max: usize,
}

impl Batcher {
    fn new(waiting_max: usize) -> Rc<Batcher> {
        Rc::new(Batcher { waiting: RefCell::new(VecDeque::new()), wake: tokio::sync::Notify::new(), closed: Cell::new(false), waiting_max })
    }

    /// Queues one notification for the next envelope to `queue` and waits for its confirm.
    /// (Notifications in one envelope share its confirm, and its failure.)
    async fn publish(&self, queue: Rc<str>, nid: String, body: Vec<u8>) -> Result<(), String> {
        let (reply, confirmed) = tokio::sync::oneshot::channel();
        {
            let mut waiting = self.waiting.borrow_mut();
            if waiting.len() >= self.waiting_max {
                return Err(format!("{} notifications already wait for RabbitMQ (lane_waiting); retry shortly", self.waiting_max));
            }
            waiting.push_back(Waiting { queue, nid, body, reply });
        }
        self.wake.notify_one();
        confirmed.await.unwrap_or_else(|_| Err("stopping: the RabbitMQ publisher is gone".into()))
    }

    fn close(&self) {
        self.closed.set(true);
        self.wake.notify_one();
    }

    /// The next envelope: the oldest waiting publish and the next ones to the same queue,
    /// up to `envelope` notifications and [`ENVELOPE_BYTES_MAX`].
    fn next_envelope(&self, envelope: usize) -> Vec<Waiting> {
        let mut waiting = self.waiting.borrow_mut();
        let Some(first) = waiting.pop_front() else { return Vec::new() };
        let mut bytes = first.body.len();
        let mut batch = vec![first];
        let mut i = 0;
        while i < waiting.len() && batch.len() < envelope {
            let w = &waiting[i];
            if w.queue == batch[0].queue && bytes + w.body.len() <= ENVELOPE_BYTES_MAX {
                bytes += w.body.len();
                batch.push(waiting.remove(i).expect("index checked"));
            } else {
                i += 1;
            }
        }
        batch
    }
}

/// A work-queue message body: one notification (`{..}`, its body moved, not copied) or
/// an envelope (`[{..},..]`).
fn envelope_body(batch: &mut [Waiting]) -> Vec<u8> {
    if let [one] = batch {
        return std::mem::take(&mut one.body);
    }
    let mut body = Vec::with_capacity(batch.iter().map(|w| w.body.len() + 1).sum::<usize>() + 1);
    body.push(b'[');
    for (i, w) in batch.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&w.body);
    }
    body.push(b']');
    body
}

/// The notifications in a work-queue message (either form).
pub fn parse_work(data: &[u8]) -> Result<Vec<Notification>, serde_json::Error> {
    if data.first() == Some(&b'[') {
        serde_json::from_slice(data)
    } else {
        serde_json::from_slice(data).map(|n| vec![n])
    }
}

/// Publishes what waits in `b`, one envelope per free slot ([`PUBLISH_CHANNELS`] at
/// once), on the channel `channel(i)` gives for the i-th envelope (None: not connected,
/// the envelope fails), until `b` is closed.
/// `published`, if given, counts the messages RabbitMQ confirmed.
async fn run_batcher(b: Rc<Batcher>, channel: impl Fn(usize) -> Option<Channel>, envelope: usize, published: Option<std::sync::Arc<super::metrics::LaneMetrics>>) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(PUBLISH_CHANNELS));
    let mut sent = 0usize;
    while !b.closed.get() {
        if b.waiting.borrow().is_empty() {
            b.wake.notified().await;
            continue;
        }
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let mut batch = b.next_envelope(envelope);
        if batch.is_empty() {
            continue;
        }
        let Some(channel) = channel(sent) else {
            for w in batch {
                let _ = w.reply.send(Err("RabbitMQ is unreachable; retry shortly".into()));
            }
            continue;
        };
        sent = sent.wrapping_add(1);
        let published = published.clone();
        tokio::task::spawn_local(async move {
            let body = envelope_body(&mut batch);
            let result = publish_confirmed(&channel, &batch[0].queue, &batch[0].nid, &body).await;
            if let (Ok(()), Some(metrics)) = (&result, &published) {
                super::metrics::LaneMetrics::inc(&metrics.work_messages);
            }
            for w in batch {
                let _ = w.reply.send(result.clone());
            }
            drop(permit);
        });
    }
}

struct PublishLink {
    channels: Vec<Channel>,
    /// Dead-letter operations, one at a time (confirm mode).
    dead: tokio::sync::Mutex<Channel>,
}

/// The gateway side: accepts notifications into `{p}.work` and serves the DLQ API.
pub struct RabbitLane {
    topology: Topology,
    link: Rc<RefCell<Option<Rc<PublishLink>>>>,
    pub connected: Rc<Cell<bool>>,
    batcher: Rc<Batcher>,
    /// `{p}.work`, shared by every accept's envelope entry.
    work: Rc<str>,
    /// nid → expiry (unix ms), with insertion order for eviction.
    seen: RefCell<(HashMap<String, u64>, VecDeque<String>)>,
    /// `--redis`: idempotency shared by every node ([`super::nids`]).
    shared: Option<super::nids::SharedNids>,
    metrics: std::sync::Arc<super::metrics::LaneMetrics>,
}

impl RabbitLane {
    /// Starts connecting in the background; until connected, accepts answer with an error.
    pub fn start(url: &str, prefix: &str, backoff: &Backoff, envelopes: Envelopes, shared: Option<super::nids::SharedNids>, metrics: std::sync::Arc<super::metrics::LaneMetrics>) -> RabbitLane {
        let topology = Topology::new(prefix);
        let link = Rc::new(RefCell::new(None));
        let connected = Rc::new(Cell::new(false));
        let declare = (topology.clone(), backoff.clone());
        metrics.amqp_configured.store(true, std::sync::atomic::Ordering::Relaxed);
        supervise(url.to_owned(), "ringcast-gateway", &link, connected.clone(), Some(metrics.clone()), async move |conn: &Connection| {
            let first = conn.create_channel().await?;
            declare.0.declare(&first, &declare.1).await?;
            let mut channels = vec![first];
            while channels.len() < PUBLISH_CHANNELS {
                channels.push(conn.create_channel().await?);
            }
            for channel in &channels {
                channel.confirm_select(ConfirmSelectOptions::default()).await?;
            }
            let dead = conn.create_channel().await?;
            dead.confirm_select(ConfirmSelectOptions::default()).await?;
            Ok(PublishLink { channels, dead: tokio::sync::Mutex::new(dead) })
        });
        let batcher = Batcher::new(envelopes.waiting_max);
        let weak = Rc::downgrade(&link);
        let channel = move |i: usize| weak.upgrade().and_then(|l| l.borrow().clone()).map(|l: Rc<PublishLink>| l.channels[i % l.channels.len()].clone());
        tokio::task::spawn_local(run_batcher(batcher.clone(), channel, envelopes.per_message.max(1), Some(metrics.clone())));
        let work: Rc<str> = topology.work.as_str().into();
        RabbitLane { topology, link, connected, batcher, work, seen: RefCell::new((HashMap::new(), VecDeque::new())), shared, metrics }
    }

    fn link(&self) -> Result<Rc<PublishLink>, String> {
        self.link.borrow().clone().ok_or_else(|| "RabbitMQ is unreachable; retry shortly".to_string())
    }

    fn seen_before(&self, nid: &str, now: u64) -> bool {
        self.seen.borrow().0.get(nid).is_some_and(|expires| *expires > now)
    }

    fn remember(&self, nid: &str, expires: u64) {
        let mut seen = self.seen.borrow_mut();
        let (map, order) = &mut *seen;
        if map.insert(nid.to_owned(), expires).is_none() {
            order.push_back(nid.to_owned());
        }
        while order.len() > DEDUPE_NIDS_MAX {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
    }

    pub async fn enqueue(&self, notification: Notification) -> Result<Accepted, String> {
        self.enqueue_checked(notification, true).await
    }

    /// `shared_check` false: no claim in Redis (the gateway generated the nid just now).
    pub async fn enqueue_checked(&self, notification: Notification, shared_check: bool) -> Result<Accepted, String> {
        if self.seen_before(&notification.nid, notification.ts) {
            return Ok(Accepted::Duplicate);
        }
        let link = self.link()?;
        let claim = match self.shared.as_ref().filter(|_| shared_check) {
            None => None,
            Some(shared) => match shared.claim(&notification.nid).await {
                Ok(super::nids::Claim::Mine(token)) => Some((shared, token)),
                Ok(super::nids::Claim::Done) => {
                    self.remember(&notification.nid, notification.expires);
                    return Ok(Accepted::Duplicate);
                }
                Ok(super::nids::Claim::Busy) => return Ok(Accepted::InProgress),
                Err(()) => {
                    super::metrics::LaneMetrics::inc(&self.metrics.dedupe_unshared);
                    None
                }
            },
        };
        drop(link);
        let body = serde_json::to_vec(&notification).expect("notifications serialize");
        if let Err(e) = self.batcher.publish(self.work.clone(), notification.nid.clone(), body).await {
            if let Some((shared, token)) = claim {
                shared.release(&notification.nid, &token).await;
            }
            return Err(e);
        }
        self.remember(&notification.nid, notification.expires);
        if let Some((shared, _)) = claim {
            shared.done(&notification.nid, notification.expires, super::now_ms()).await;
        }
        Ok(Accepted::New)
    }

    pub async fn dead(&self, op: DeadOp) -> Result<DeadAnswer, String> {
        let link = self.link()?;
        let channel = link.dead.lock().await;
        dead_op(&channel, &self.topology, op).await
    }
}

impl Drop for RabbitLane {
    fn drop(&mut self) {
        self.batcher.close();
    }
}

/// Dead-letter operations on one confirm-mode channel. Messages looked at and kept are
/// handed back (nack + requeue) before returning.
pub async fn dead_op(channel: &Channel, topology: &Topology, op: DeadOp) -> Result<DeadAnswer, String> {
    let err = |e: lapin::Error| format!("RabbitMQ: {e}");
    match op {
        DeadOp::Purge => {
            let n = channel.queue_purge(topology.dead.as_str().into(), QueuePurgeOptions::default()).await.map_err(err)?;
            Ok(DeadAnswer::Count(n as u64))
        }
        DeadOp::List { limit } => {
            let mut list = Vec::new();
            let mut last: Option<Acker> = None;
            while list.len() < limit {
                let Some(message) = channel.basic_get(topology.dead.as_str().into(), BasicGetOptions { no_ack: false }).await.map_err(err)? else { break };
                match serde_json::from_slice::<DeadRecord>(&message.delivery.data) {
                    Ok(record) => list.push(record),
                    Err(_) => tracing::warn!("an unreadable message sits in the dead-letter queue"),
                }
                last = Some(message.delivery.acker);
            }
            if let Some(last) = last {
                last.nack(BasicNackOptions { multiple: true, requeue: true }).await.map_err(err)?;
            }
            Ok(DeadAnswer::List(list))
        }
        DeadOp::Replay { nid } => {
            let mut moved = 0;
            let mut kept: Vec<Acker> = Vec::new();
            loop {
                let Some(message) = channel.basic_get(topology.dead.as_str().into(), BasicGetOptions { no_ack: false }).await.map_err(err)? else { break };
                let record = match serde_json::from_slice::<DeadRecord>(&message.delivery.data) {
                    Ok(record) if nid.as_deref().is_none_or(|wanted| wanted == record.notification.nid) => record,
                    _ => {
                        kept.push(message.delivery.acker);
                        continue;
                    }
                };
                let mut notification = record.notification;
                let now = super::now_ms();
                let ttl = notification.expires.saturating_sub(notification.ts).max(1);
                notification.attempts = 0;
                notification.parked = 0;
                notification.expires = now + ttl;
                let body = serde_json::to_vec(&notification).expect("notifications serialize");
                publish_confirmed(channel, &topology.work, &notification.nid, &body).await?;
                message.delivery.acker.ack(BasicAckOptions::default()).await.map_err(err)?;
                moved += 1;
                if nid.is_some() {
                    break;
                }
            }
            for acker in kept {
                acker.nack(BasicNackOptions { multiple: false, requeue: true }).await.map_err(err)?;
            }
            Ok(DeadAnswer::Count(moved))
        }
    }
}

/// A notification a worker holds, with what it needs to settle it.
pub struct RabbitJob {
    pub notification: Notification,
    message: Rc<MessageAck>,
    link: Rc<ConsumeLink>,
}

/// The work-queue message a job came in: acked once every notification in it is settled,
/// or handed back (nack, requeue) if settling any of them failed, so RabbitMQ gives the
/// whole message out again (its other notifications may then arrive twice, with their
/// `nid`s: at-least-once).
struct MessageAck {
    acker: Acker,
    unsettled: Cell<usize>,
    failed: Cell<bool>,
}

impl MessageAck {
    async fn settled(&self, ok: bool) -> Result<(), String> {
        if !ok {
            self.failed.set(true);
        }
        let left = self.unsettled.get() - 1;
        self.unsettled.set(left);
        if left > 0 {
            return Ok(());
        }
        if self.failed.get() {
            let _ = self.acker.nack(BasicNackOptions { requeue: true, multiple: false }).await;
            return Ok(());
        }
        self.acker.ack(BasicAckOptions::default()).await.map(|_| ()).map_err(|e| format!("RabbitMQ: {e}"))
    }
}

struct ConsumeLink {
    /// Confirm-mode channel for retries and dead letters.
    publish: Channel,
    /// Retries, in envelopes per bucket queue, on `publish`.
    retries: Rc<Batcher>,
}

impl Drop for ConsumeLink {
    fn drop(&mut self) {
        self.retries.close();
    }
}

/// The worker side: a consumer on `{p}.work` with prefetch = in-flight bound.
pub struct RabbitSource {
    topology: Topology,
    backoff: Backoff,
    jobs: mpsc::Receiver<RabbitJob>,
    pub connected: Rc<Cell<bool>>,
    queued: Rc<Cell<Option<Queued>>>,
    /// Keeps the connection's supervisor going while this source lives.
    _link: Rc<RefCell<Option<Rc<()>>>>,
}

impl RabbitSource {
    /// `envelopes`: how retries are grouped per bucket queue and bounded.
    pub fn start(url: &str, prefix: &str, backoff: &Backoff, in_flight: usize, envelopes: Envelopes) -> RabbitSource {
        let envelope = envelopes.per_message.max(1);
        let topology = Topology::new(prefix);
        let (tx, jobs) = mpsc::channel(in_flight.max(1));
        let slot: Rc<RefCell<Option<Rc<()>>>> = Rc::new(RefCell::new(None));
        let connected = Rc::new(Cell::new(false));
        let queued = Rc::new(Cell::new(None));
        let setup = (topology.clone(), backoff.clone(), tx, queued.clone());
        supervise(url.to_owned(), "ringcast-worker", &slot, connected.clone(), None, async move |conn: &Connection| {
            let (topology, backoff, jobs, queued) = &setup;
            let consume = conn.create_channel().await?;
            topology.declare(&consume, backoff).await?;
            consume.basic_qos(in_flight as u16, BasicQosOptions::default()).await?;
            let publish = conn.create_channel().await?;
            publish.confirm_select(ConfirmSelectOptions::default()).await?;
            let retries = Batcher::new(envelopes.waiting_max);
            let channel = publish.clone();
            tokio::task::spawn_local(run_batcher(retries.clone(), move |_| Some(channel.clone()), envelope, None));
            let link = Rc::new(ConsumeLink { publish, retries });
            let mut consumer = consume
                .basic_consume(topology.work.as_str().into(), "".into(), BasicConsumeOptions::default(), FieldTable::default())
                .await?;
            let stats = conn.create_channel().await?;
            tokio::task::spawn_local(count_queued(stats, topology.clone(), backoff.clone(), queued.clone()));
            let jobs = jobs.clone();
            tokio::task::spawn_local(async move {
                while let Some(delivery) = consumer.next().await {
                    let Ok(delivery) = delivery else { break };
                    match parse_work(&delivery.data) {
                        Ok(notifications) if !notifications.is_empty() => {
                            let message = Rc::new(MessageAck { acker: delivery.acker, unsettled: Cell::new(notifications.len()), failed: Cell::new(false) });
                            for notification in notifications {
                                let job = RabbitJob { notification, message: message.clone(), link: link.clone() };
                                if jobs.send(job).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Ok(_) => {
                            tracing::warn!("an empty envelope in the work queue is dropped");
                            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "an unreadable message in the work queue goes to the dead-letter queue");
                            let _ = delivery.acker.reject(BasicRejectOptions { requeue: false }).await;
                        }
                    }
                }
            });
            Ok(())
        });
        RabbitSource { topology, backoff: backoff.clone(), jobs, connected, queued, _link: slot }
    }

    /// Notifications waiting in `.work`, the retry and the park queues (ready, not held by a
    /// worker), as RabbitMQ last counted them; None until counted or while disconnected.
    pub fn queued(&self) -> Rc<Cell<Option<Queued>>> {
        self.queued.clone()
    }

    /// The next notification to try (waits while none is there or RabbitMQ is away).
    pub async fn next(&mut self) -> Option<RabbitJob> {
        self.jobs.recv().await
    }

    pub fn finisher(&self) -> RabbitFinisher {
        RabbitFinisher { topology: self.topology.clone(), backoff: self.backoff.clone() }
    }

    pub async fn finish(&self, job: RabbitJob, outcome: Outcome) -> Result<(), String> {
        self.finisher().finish(job, outcome).await
    }
}

/// Settles jobs from a [`RabbitSource`]; cheap to clone into delivery tasks.
#[derive(Clone)]
pub struct RabbitFinisher {
    topology: Topology,
    backoff: Backoff,
}

impl RabbitFinisher {
    /// Settles a try: ack, or a confirmed publish to a retry queue / the dead-letter
    /// queue and then ack. A failure leaves the message unacked, so RabbitMQ hands it out
    /// again (a duplicate at worst).
    pub async fn finish(&self, job: RabbitJob, outcome: Outcome) -> Result<(), String> {
        let published = match &outcome {
            Outcome::Delivered => Ok(()),
            Outcome::Retry { notification, delay } => {
                let queue = self.topology.retry(self.backoff.round_up(delay.as_millis() as u64));
                let body = serde_json::to_vec(notification).expect("notifications serialize");
                job.link.retries.publish(queue.as_str().into(), notification.nid.clone(), body).await
            }
            Outcome::Park { notification, delay } => {
                let queue = self.topology.park(park_bucket(delay.as_millis() as u64));
                let body = serde_json::to_vec(notification).expect("notifications serialize");
                job.link.retries.publish(queue.as_str().into(), notification.nid.clone(), body).await
            }
            Outcome::Dead { record } => {
                let body = serde_json::to_vec(record).expect("records serialize");
                publish_confirmed(&job.link.publish, &self.topology.dead, &record.notification.nid, &body).await
            }
        };
        match published {
            Ok(()) => job.message.settled(true).await,
            Err(e) => {
                let _ = job.message.settled(false).await;
                Err(e)
            }
        }
    }
}

/// What waits in a worker's queues, as RabbitMQ last counted it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Queued {
    /// `.work`, the retry and the park queues.
    pub total: u64,
    /// The park queues alone: notifications waiting for an offline user.
    pub parked: u64,
}

/// Counts the messages waiting in `.work`, every retry and every park queue each
/// [`QUEUE_STATS_INTERVAL`] into `queued`, until the channel fails (the connection's
/// supervisor starts a new counter with the next connection).
async fn count_queued(channel: Channel, topology: Topology, backoff: Backoff, queued: Rc<Cell<Option<Queued>>>) {
    let passive = QueueDeclareOptions { passive: true, durable: true, ..QueueDeclareOptions::default() };
    let park_prefix = format!("{}.park.", topology.prefix);
    let mut names = vec![topology.work.clone()];
    names.extend(topology.delayed(&backoff).into_iter().map(|(name, _)| name));
    loop {
        let mut counted = Queued::default();
        for name in &names {
            match channel.queue_declare(name.as_str().into(), passive, FieldTable::default()).await {
                Ok(queue) => {
                    counted.total += u64::from(queue.message_count());
                    if name.starts_with(&park_prefix) {
                        counted.parked += u64::from(queue.message_count());
                    }
                }
                Err(_) => {
                    queued.set(None);
                    return;
                }
            }
        }
        queued.set(Some(counted));
        tokio::time::sleep(QUEUE_STATS_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(nid: &str) -> Waiting {
        waiting_to("q.work", nid)
    }

    fn waiting_to(queue: &str, nid: &str) -> Waiting {
        let now = 1;
        let n = Notification { nid: nid.into(), user: "u".into(), data: serde_json::value::RawValue::from_string("{\"x\":1}".into()).unwrap(), ts: now, expires: 2, attempts: 0, parked: 0 };
        Waiting { queue: queue.into(), nid: nid.into(), body: serde_json::to_vec(&n).unwrap(), reply: tokio::sync::oneshot::channel().0 }
    }

    #[test]
    fn a_park_comes_back_by_its_expiry() {
        assert_eq!(park_bucket(0), 250, "under the smallest bucket: rounded up");
        assert_eq!(park_bucket(1_999), 1_000);
        assert_eq!(park_bucket(2_000), 2_000);
        assert_eq!(park_bucket(86_400_000), 3_600_000, "a long ttl is looked at once per hour");
        assert!(PARK_BUCKETS_MS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn one_notification_is_a_plain_message_and_several_an_envelope() {
        let one = envelope_body(&mut [waiting("a")]);
        assert_eq!(one[0], b'{', "a lone accept is published as before (old workers read it)");
        assert_eq!(parse_work(&one).unwrap().len(), 1);
        let three = envelope_body(&mut [waiting("a"), waiting("b"), waiting("c")]);
        let parsed = parse_work(&three).unwrap();
        assert_eq!(parsed.iter().map(|n| n.nid.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(parsed[1].data.get(), "{\"x\":1}");
        assert!(parse_work(b"[{\"nid\":1}]").is_err());
    }

    #[test]
    fn an_envelope_holds_one_queue_and_at_most_its_bound() {
        let b = Batcher::new(16);
        for (queue, nid) in [("r.100", "a"), ("r.200", "b"), ("r.100", "c"), ("r.100", "d"), ("r.200", "e")] {
            b.waiting.borrow_mut().push_back(waiting_to(queue, nid));
        }
        let nids = |batch: Vec<Waiting>| batch.into_iter().map(|w| w.nid).collect::<Vec<_>>();
        assert_eq!(nids(b.next_envelope(2)), ["a", "c"], "the oldest, then the next ones to its queue, up to the bound");
        assert_eq!(nids(b.next_envelope(64)), ["b", "e"]);
        assert_eq!(nids(b.next_envelope(64)), ["d"]);
        assert!(b.next_envelope(64).is_empty());
        let big = String::from_utf8(vec![b'x'; ENVELOPE_BYTES_MAX / 2 + 1]).unwrap();
        for nid in ["f", "g"] {
            let mut w = waiting_to("r.100", nid);
            w.body = big.clone().into_bytes();
            b.waiting.borrow_mut().push_back(w);
        }
        assert_eq!(nids(b.next_envelope(64)), ["f"], "about 1 MiB per envelope at most");
    }
}
