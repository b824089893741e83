//! The NATS broker (Beacon): every gateway node subscribes to the subjects its shards have
//! interest in and publishes its clients' messages to NATS, so any number of nodes (and
//! any NATS client) form one system. History channels go through a JetStream stream.
//!
//! Owns: the async-nats client, one core subscription per interest pattern (reference
//! counted by the bridge), one ordered JetStream consumer per history pattern with local
//! interest, the publish queue, and resume (replay) tasks. Must not touch: sockets,
//! connections, shards' state (replays reach shards through their mailboxes). Runs on:
//! the bridge thread, inside its `LocalSet` (tasks here are `spawn_local`).
//!
//! Subjects: channel `a.b` is `{prefix}.a.b`. A message with the header
//! `Ringcast-Frame: 1` carries a complete server frame (a `notify`, say) that is sent to
//! subscribers verbatim instead of being wrapped in a `msg`.
//!
//! Why the filters in [`NatsBroker::accept_core`]: NATS delivers one copy per matching
//! subscription, so a node subscribed to `a.*` and `a.b` would get `a.b` twice. The copy
//! taken is the one from the oldest matching subscription (a new overlapping pattern
//! never takes over from an older one, so adding interest never loses or doubles a
//! message; removing the oldest can, for a message in flight at that instant). Channels
//! under a history pattern arrive through JetStream (with their `seq`), so their core
//! copies are dropped.
//!
//! Never blocking the bridge: async-nats stops reading its command queue while it
//! reconnects, so nothing here awaits the client on the bridge's own loop. Publishes go
//! through a bounded queue to a publisher task (full or link down: refused and counted);
//! subscribes run as small tasks, at most one per new pattern.

use super::history;
use crate::channel::{self, SubIndex};
use crate::config::{HistoryConfig, NatsConfig};
use crate::fanout::{ConnRef, Mailbox, ReplayError, ToShard};
use crate::metrics::BridgeMetrics;
use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures_util::stream::{LocalBoxStream, SelectAll, StreamExt};
use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// Header marking a payload that is a complete server frame.
pub const FRAME_HEADER: &str = "Ringcast-Frame";
/// NATS header naming a socket id (`{node}.{conn}`) that must not receive the message.
pub const EXCLUDE_HEADER: &str = "Ringcast-Exclude";
/// Messages one core subscription may have waiting in async-nats before it drops them
/// (counted from its slow-consumer events): a ~100 ms bridge stall at 600k msgs/s.
const SUBSCRIPTION_MESSAGES_MAX: usize = 65_536;
/// async-nats's command queue (publishes, subscribes). Larger than its default 2,048 so a
/// burst of new patterns after a reconnect storm does not stall on it.
const CLIENT_COMMANDS_MAX: usize = 65_536;
/// JetStream messages waiting between the consumer tasks and the bridge loop.
const HISTORY_QUEUE_MESSAGES: usize = 8_192;
/// Reconnect backoff: doubles from the base to the cap, with full jitter.
const RECONNECT_BASE_MS: u64 = 100;
const RECONNECT_CAP_MS: u64 = 5_000;
/// Deadline for one JetStream API request (stream info, consumer create, message get).
const JETSTREAM_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a resume waits for history to become available (NATS reachable, stream and
/// live consumer set up) before answering 503.
const REPLAY_READY_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between failed confirming round trips.
const SUB_CONFIRM_RETRY_PAUSE: Duration = Duration::from_millis(50);
/// Core subscribes sent before one confirming round trip at most (a connect burst's new
/// patterns share it).
const SUBSCRIBE_BATCH_MAX: usize = 4_096;
/// Messages fetched per pull request while replaying.
const REPLAY_FETCH_BATCH: usize = 256;

/// A message from NATS that passed the filters, ready for local fan-out.
pub struct Incoming {
    pub channel: Box<str>,
    pub payload: Bytes,
    pub raw_frame: bool,
    pub seq: Option<u64>,
    /// `Ringcast-Exclude`: the socket id that must not receive it.
    pub exclude: Option<Box<str>>,
}

struct CoreSub {
    order: u64,
    /// Dropping it ends the subscription's stream, which unsubscribes.
    _cancel: oneshot::Sender<()>,
}

struct HistoryConsumer {
    /// Interest patterns overlapping this history pattern.
    refs: usize,
    cancel: Option<oneshot::Sender<()>>,
    /// First sequence the live consumer delivers (set once it exists): a resume must
    /// replay at least up to the sequence before it.
    start: Rc<Cell<Option<u64>>>,
}

struct HistoryIn {
    floor: u64,
    subject: async_nats::Subject,
    payload: Bytes,
    raw_frame: bool,
    seq: u64,
}

struct Outgoing {
    subject: String,
    payload: Bytes,
    /// Sent with the `Ringcast-Frame: 1` header: the payload is a complete server frame.
    raw_frame: bool,
    /// Sent as `Ringcast-Exclude`: a socket id (`{node}.{conn}`) that must not receive it.
    exclude: Option<Box<str>>,
}

type CoreStream = LocalBoxStream<'static, (u64, async_nats::Message)>;

/// See [`NatsBroker::live_barrier`].
pub type LiveBarrier = std::pin::Pin<Box<dyn std::future::Future<Output = bool>>>;

/// One core subscribe on its way to the server.
struct PendingSubscribe {
    /// Its number in the node's order of subscribes.
    issue: u64,
    subject: String,
    order: u64,
    cancelled: oneshot::Receiver<()>,
}

pub struct NatsBroker {
    /// The node's connection, shared with `bridge::cluster` (its control subjects).
    client: async_nats::Client,
    js: jetstream::Context,
    prefix: String,
    history: Rc<HistoryConfig>,
    core: HashMap<Box<str>, CoreSub>,
    core_index: SubIndex<u64>,
    next_order: u64,
    streams: SelectAll<CoreStream>,
    /// Core subscribes for the subscriber task, in order (one per new interest pattern,
    /// so bounded by the node's patterns).
    subscribe_tx: mpsc::UnboundedSender<PendingSubscribe>,
    /// Core subscribes handed to the subscriber task so far (the number of the last).
    issued: u64,
    /// The number of the last core subscribe confirmed on the server.
    confirmed: Rc<watch::Sender<u64>>,
    /// Bumped whenever a history pattern's live consumer first exists.
    consumers_started: Rc<watch::Sender<u64>>,
    sub_confirm_timeout: Duration,
    new_streams_rx: mpsc::UnboundedReceiver<CoreStream>,
    consumers: Vec<HistoryConsumer>,
    history_tx: mpsc::Sender<HistoryIn>,
    history_rx: mpsc::Receiver<HistoryIn>,
    publish_tx: mpsc::Sender<Outgoing>,
    stream_ready: Rc<Cell<bool>>,
    /// Bumped on every (re)connection: JetStream consumers are recreated at once instead
    /// of waiting to miss heartbeats.
    connections: watch::Receiver<u64>,
    replays_running: Rc<Cell<usize>>,
    link: Arc<AtomicBool>,
    metrics: Arc<BridgeMetrics>,
}

/// Connects (or keeps trying in the background: a node starts and serves local
/// connections while NATS is unreachable) and starts the broker's tasks. Errors are
/// configuration problems only (an unreadable credentials file, say).
pub async fn start(
    config: &NatsConfig,
    history: HistoryConfig,
    node: &str,
    link: Arc<AtomicBool>,
    metrics: Arc<BridgeMetrics>,
) -> Result<NatsBroker, String> {
    let (connected, connections) = watch::channel(0u64);
    let client = connect(config, node, link.clone(), metrics.clone(), connected).await?;
    let mut js = jetstream::new(client.clone());
    js.set_timeout(JETSTREAM_REQUEST_TIMEOUT);
    let (publish_tx, publish_rx) = mpsc::channel(config.publish_queue_messages);
    tokio::task::spawn_local(run_publisher(client.clone(), publish_rx, metrics.clone()));
    let history = Rc::new(history);
    let stream_ready = Rc::new(Cell::new(false));
    if history.is_enabled() {
        tokio::task::spawn_local(ensure_stream(js.clone(), history.clone(), config.prefix.clone(), stream_ready.clone(), connections.clone()));
    }
    let (new_streams_tx, new_streams_rx) = mpsc::unbounded_channel();
    let (subscribe_tx, subscribe_rx) = mpsc::unbounded_channel();
    let confirmed = Rc::new(watch::channel(0u64).0);
    let consumers_started = Rc::new(watch::channel(0u64).0);
    tokio::task::spawn_local(run_subscriber(client.clone(), subscribe_rx, new_streams_tx, confirmed.clone(), metrics.clone()));
    let (history_tx, history_rx) = mpsc::channel(HISTORY_QUEUE_MESSAGES);
    let consumers = history
        .patterns
        .iter()
        .map(|_| HistoryConsumer { refs: 0, cancel: None, start: Rc::new(Cell::new(None)) })
        .collect();
    Ok(NatsBroker {
        client,
        js,
        prefix: config.prefix.clone(),
        history,
        core: HashMap::new(),
        core_index: SubIndex::new(),
        next_order: 0,
        streams: SelectAll::new(),
        subscribe_tx,
        issued: 0,
        confirmed,
        consumers_started,
        sub_confirm_timeout: config.sub_confirm_timeout,
        new_streams_rx,
        consumers,
        history_tx,
        history_rx,
        publish_tx,
        stream_ready,
        connections,
        replays_running: Rc::new(Cell::new(0)),
        link,
        metrics,
    })
}

async fn connect(
    config: &NatsConfig,
    node: &str,
    link: Arc<AtomicBool>,
    metrics: Arc<BridgeMetrics>,
    connected: watch::Sender<u64>,
) -> Result<async_nats::Client, String> {
    let connected = Arc::new(connected);
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("ringcast {node}"))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .subscription_capacity(SUBSCRIPTION_MESSAGES_MAX)
        .client_capacity(CLIENT_COMMANDS_MAX)
        .reconnect_delay_callback(link_retry_delay)
        .event_callback(move |event| {
            let link = link.clone();
            let metrics = metrics.clone();
            let connected = connected.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        link.store(true, Ordering::Release);
                        metrics.nats_connects.inc();
                        connected.send_modify(|generation| *generation += 1);
                        tracing::info!("NATS connected");
                    }
                    async_nats::Event::Disconnected => {
                        link.store(false, Ordering::Release);
                        tracing::warn!("NATS disconnected: reconnecting (publishes are refused until then)");
                    }
                    async_nats::Event::SlowConsumer(sid) => {
                        metrics.nats_slow_consumer.inc();
                        tracing::warn!(sid, "NATS subscription fell behind and dropped messages: the bridge is saturated");
                    }
                    other => tracing::info!(event = %other, "NATS event"),
                }
            }
        });
    if let Some(token) = &config.token {
        options = options.token(token.clone());
    }
    if let (Some(user), Some(password)) = (&config.user, &config.password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(path) = &config.creds_file {
        options = options
            .credentials_file(path)
            .await
            .map_err(|e| format!("cannot read the NATS credentials file {}: {e}", path.display()))?;
    }
    if let Some(ca) = &config.tls_ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
        options = options.add_client_certificate(cert.clone(), key.clone()).require_tls(true);
    }
    if config.tls_required {
        options = options.require_tls(true);
    }
    let addresses: Vec<async_nats::ServerAddr> = config.urls.iter().filter_map(|u| u.parse().ok()).collect();
    options.connect(addresses).await.map_err(|e| format!("cannot set up the NATS connection: {e}"))
}

/// A second NATS connection with the node's settings (auth, TLS, reconnect), for a
/// component that is not the broker (the Lane's worker and its event forwarding).
pub async fn client(config: &NatsConfig, name: &str) -> Result<async_nats::Client, String> {
    let (connected, _) = watch::channel(0u64);
    connect(config, name, Arc::new(AtomicBool::new(false)), Arc::new(BridgeMetrics::default()), connected).await
}

/// The wait before retry `attempts` of anything that needs the NATS link: full jitter
/// under a doubling cap (`backoff::reconnect_delay`).
fn link_retry_delay(attempts: usize) -> Duration {
    crate::backoff::reconnect_delay(attempts, Duration::from_millis(RECONNECT_BASE_MS), Duration::from_millis(RECONNECT_CAP_MS), fastrand::u64(..))
}

/// Sends the node's core subscribes in order and confirms them: after each batch (every
/// subscribe that arrived meanwhile), one round trip through the server proves it has
/// handled every SUB before it (a server handles one connection's commands in order), so
/// concurrent subscribes share one round trip. Retried until it succeeds: while NATS is
/// away the `sub`s waiting on it time out (503) and async-nats restores the SUBs on
/// reconnect.
async fn run_subscriber(
    client: async_nats::Client,
    mut queue: mpsc::UnboundedReceiver<PendingSubscribe>,
    streams: mpsc::UnboundedSender<CoreStream>,
    confirmed: Rc<watch::Sender<u64>>,
    metrics: Arc<BridgeMetrics>,
) {
    let mut batch = Vec::new();
    while queue.recv_many(&mut batch, SUBSCRIBE_BATCH_MAX).await > 0 {
        let mut upto = 0;
        for pending in batch.drain(..) {
            upto = pending.issue;
            match client.subscribe(pending.subject.clone()).await {
                Ok(subscriber) => {
                    let order = pending.order;
                    let stream = subscriber.map(move |message| (order, message)).take_until(pending.cancelled);
                    let _ = streams.send(stream.boxed_local());
                }
                Err(error) => tracing::error!(%error, subject = pending.subject, "NATS subscribe failed"),
            }
        }
        // A failed try is paced by its own timeout while NATS is away; the short pause
        // only keeps an instant failure (a refused publish, say) from spinning.
        while !round_trip(&client).await {
            metrics.sub_confirm_retries.inc();
            tokio::time::sleep(SUB_CONFIRM_RETRY_PAUSE).await;
        }
        metrics.sub_confirm_round_trips.inc();
        confirmed.send_modify(|c| *c = (*c).max(upto));
    }
}

/// One round trip through the server: a request to a fresh inbox nobody listens on,
/// answered by the server itself ("no responders") once it has handled everything this
/// connection sent before it.
async fn round_trip(client: &async_nats::Client) -> bool {
    let timeout = Duration::from_millis(crate::limits::SUB_CONFIRM_ROUND_TRIP_TIMEOUT_MS);
    match tokio::time::timeout(timeout, client.request(client.new_inbox(), Bytes::new())).await {
        Ok(Ok(_)) => true,
        Ok(Err(error)) => matches!(error.kind(), async_nats::client::RequestErrorKind::NoResponders),
        Err(_elapsed) => false,
    }
}

async fn run_publisher(client: async_nats::Client, mut queue: mpsc::Receiver<Outgoing>, metrics: Arc<BridgeMetrics>) {
    while let Some(out) = queue.recv().await {
        let sent = if out.raw_frame {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(FRAME_HEADER, "1");
            if let Some(socket) = out.exclude.as_deref() {
                headers.insert(EXCLUDE_HEADER, socket);
            }
            client.publish_with_headers(out.subject, headers, out.payload).await
        } else {
            client.publish(out.subject, out.payload).await
        };
        match sent {
            Ok(()) => metrics.nats_published.inc(),
            Err(error) => {
                metrics.publish_refused.inc();
                tracing::debug!(%error, "NATS publish failed");
            }
        }
    }
}

/// Creates or updates the history stream, retrying until NATS answers, and again after
/// every reconnection (the server may have come back without its store).
async fn ensure_stream(
    js: jetstream::Context,
    history: Rc<HistoryConfig>,
    prefix: String,
    ready: Rc<Cell<bool>>,
    mut connections: watch::Receiver<u64>,
) {
    let config = stream::Config {
        name: history.stream.clone(),
        subjects: history.patterns.iter().map(|p| format!("{prefix}.{p}")).collect(),
        max_messages_per_subject: history.messages_per_channel as i64,
        max_age: history.age,
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::Old,
        allow_direct: true,
        num_replicas: history.replicas,
        ..Default::default()
    };
    let mut attempt = 0;
    loop {
        if let Ok(mut existing) = js.get_stream(&config.name).await {
            if let Ok(info) = existing.info().await {
                let replicas = info.config.num_replicas.max(1);
                if replicas != history.replicas {
                    tracing::warn!(
                        stream = %config.name,
                        replicas,
                        wanted = history.replicas,
                        "the history stream exists with {replicas} replica(s) but --history-replicas asks for {}: changing it (every node must give the same value)",
                        history.replicas
                    );
                }
            }
        }
        match js.create_or_update_stream(config.clone()).await {
            Ok(info) => {
                if info.config.num_replicas.max(1) != history.replicas {
                    tracing::error!(
                        stream = %info.config.name,
                        replicas = info.config.num_replicas,
                        wanted = history.replicas,
                        "the history stream kept its replica count; change it with `nats stream edit` or delete the stream"
                    );
                }
                tracing::info!(stream = %info.config.name, subjects = ?info.config.subjects, replicas = info.config.num_replicas, "history stream ready");
                ready.set(true);
                attempt = 0;
                if connections.changed().await.is_err() {
                    return;
                }
            }
            Err(error) => {
                if history.replicas > 1 {
                    tracing::warn!(%error, stream = %config.name, replicas = history.replicas, "cannot create or update the history stream with {} replicas yet (a cluster with at least that many JetStream servers is needed); retrying", history.replicas);
                } else {
                    tracing::warn!(%error, stream = %config.name, "cannot create the history stream yet; retrying");
                }
                tokio::time::sleep(link_retry_delay(attempt).max(Duration::from_millis(50))).await;
                attempt += 1;
            }
        }
    }
}

impl NatsBroker {
    /// The node's NATS connection (for the cluster control subjects, `bridge::cluster`).
    pub fn client(&self) -> async_nats::Client {
        self.client.clone()
    }

    /// The link state the bridge and `/readyz` read.
    pub fn link(&self) -> Arc<AtomicBool> {
        self.link.clone()
    }

    pub fn is_connected(&self) -> bool {
        self.link.load(Ordering::Acquire)
    }

    pub fn subject(&self, channel: &str) -> String {
        format!("{}.{channel}", self.prefix)
    }

    /// Queues a publish; false when refused (link down or queue full), counted.
    pub fn publish(&mut self, channel: &str, data: Bytes) -> bool {
        self.publish_as(channel, data, false, None)
    }

    /// Queues a complete server frame (sent with the `Ringcast-Frame: 1` header), kept
    /// from the socket `exclude` names (`Ringcast-Exclude`).
    pub fn publish_frame(&mut self, channel: &str, frame: Bytes, exclude: Option<Box<str>>) -> bool {
        self.publish_as(channel, frame, true, exclude)
    }

    fn publish_as(&mut self, channel: &str, data: Bytes, raw_frame: bool, exclude: Option<Box<str>>) -> bool {
        if !self.is_connected() {
            self.metrics.publish_refused.inc();
            return false;
        }
        match self.publish_tx.try_send(Outgoing { subject: self.subject(channel), payload: data, raw_frame, exclude }) {
            Ok(()) => true,
            Err(_) => {
                self.metrics.publish_refused.inc();
                false
            }
        }
    }

    /// The node's first subscriber to `pattern` appeared.
    pub fn subscribe(&mut self, pattern: &str) {
        for index in 0..self.history.patterns.len() {
            if channel::overlaps(&self.history.patterns[index], pattern) {
                self.history_ref(index, true);
            }
        }
        if self.history.pattern_covering(pattern).is_some() {
            return; // JetStream delivers every channel of it.
        }
        let order = self.next_order;
        self.next_order += 1;
        self.core_index.insert(pattern, order);
        let (cancel, cancelled) = oneshot::channel();
        self.core.insert(pattern.into(), CoreSub { order, _cancel: cancel });
        self.metrics.nats_subscriptions.set(self.core.len() as u64);
        self.issued += 1;
        let pending = PendingSubscribe { issue: self.issued, subject: self.subject(pattern), order, cancelled };
        if self.subscribe_tx.send(pending).is_err() {
            tracing::error!(pattern, "the NATS subscriber task is gone; cannot subscribe");
        }
    }

    /// Resolves to true once every subscription this node asked for so far is live on
    /// the NATS server (its SUB confirmed by a round trip; a history pattern's live
    /// consumer created); false if that has not happened within `nats_sub_confirm_timeout`
    /// or never will (the broker stopped). `'static`, so it may wait in a task of its own.
    pub fn live_barrier(&self) -> LiveBarrier {
        let target = self.issued;
        let mut confirmed = self.confirmed.subscribe();
        let starting: Vec<Rc<Cell<Option<u64>>>> =
            self.consumers.iter().filter(|c| c.refs > 0 && c.start.get().is_none()).map(|c| c.start.clone()).collect();
        let mut started = self.consumers_started.subscribe();
        let live = async move {
            if confirmed.wait_for(|upto| *upto >= target).await.is_err() {
                return false;
            }
            starting.is_empty() || started.wait_for(|_| starting.iter().all(|s| s.get().is_some())).await.is_ok()
        };
        let timeout = self.sub_confirm_timeout;
        Box::pin(async move { tokio::time::timeout(timeout, live).await.unwrap_or(false) })
    }

    /// The node's last subscriber to `pattern` left.
    pub fn unsubscribe(&mut self, pattern: &str) {
        for index in 0..self.history.patterns.len() {
            if channel::overlaps(&self.history.patterns[index], pattern) {
                self.history_ref(index, false);
            }
        }
        if let Some(sub) = self.core.remove(pattern) {
            self.core_index.remove(pattern, sub.order);
            self.metrics.nats_subscriptions.set(self.core.len() as u64);
        }
    }

    fn history_ref(&mut self, index: usize, add: bool) {
        let filter = self.subject(&self.history.patterns[index]);
        let consumer = &mut self.consumers[index];
        if add {
            consumer.refs += 1;
            if consumer.refs == 1 {
                let (cancel, cancelled) = oneshot::channel();
                consumer.cancel = Some(cancel);
                consumer.start.set(None);
                let task = LiveConsumer {
                    js: self.js.clone(),
                    stream: self.history.stream.clone(),
                    filter,
                    start: consumer.start.clone(),
                    ready: self.stream_ready.clone(),
                    queue: self.history_tx.clone(),
                    connections: self.connections.clone(),
                    started: self.consumers_started.clone(),
                };
                tokio::task::spawn_local(task.run(cancelled));
                self.metrics.history_consumers.inc();
            }
        } else {
            consumer.refs -= 1;
            if consumer.refs == 0 {
                consumer.cancel = None;
                self.metrics.history_consumers.sub(1);
            }
        }
    }

    /// The next message to fan out. Cancel-safe: nothing is taken from a source unless it
    /// is returned or dropped by a filter.
    pub async fn next(&mut self) -> Incoming {
        loop {
            tokio::select! {
                Some(stream) = self.new_streams_rx.recv() => self.streams.push(stream),
                Some((order, message)) = self.streams.next(), if !self.streams.is_empty() => {
                    if let Some(incoming) = self.accept_core(order, message) {
                        return incoming;
                    }
                }
                Some(message) = self.history_rx.recv() => {
                    if let Some(incoming) = self.accept_history(message) {
                        return incoming;
                    }
                }
            }
        }
    }

    fn channel_of<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject.strip_prefix(self.prefix.as_str())?.strip_prefix('.')
    }

    fn accept_core(&mut self, order: u64, message: async_nats::Message) -> Option<Incoming> {
        self.metrics.nats_messages_in.inc();
        let channel = self.channel_of(&message.subject)?;
        if self.history.patterns.iter().any(|h| channel::matches(h, channel)) {
            return None; // its JetStream copy carries the seq
        }
        let mut oldest = u64::MAX;
        self.core_index.for_each_match(channel, |o| oldest = oldest.min(o));
        if oldest != order {
            self.metrics.nats_overlap_duplicates.inc();
            return None;
        }
        let raw_frame = is_raw_frame(message.headers.as_ref());
        let exclude = message.headers.as_ref().and_then(|h| h.get(EXCLUDE_HEADER)).map(|v| v.as_str().into());
        Some(Incoming { channel: channel.into(), payload: message.payload, raw_frame, seq: None, exclude })
    }

    fn accept_history(&mut self, message: HistoryIn) -> Option<Incoming> {
        self.metrics.nats_messages_in.inc();
        if message.seq < message.floor {
            return None; // a recreated consumer starting over from the stream's beginning
        }
        let channel = self.channel_of(&message.subject)?;
        Some(Incoming { channel: channel.into(), payload: message.payload, raw_frame: message.raw_frame, seq: Some(message.seq), exclude: None })
    }

    /// Starts a resume of `channel` (literal, under a history pattern) for one connection.
    pub fn replay(&mut self, shard: Arc<Mailbox<ToShard>>, target: ConnRef, replay: u32, channel: Box<str>, since: u64, metrics: Arc<BridgeMetrics>) {
        let Some(index) = self.history.patterns.iter().position(|h| channel::matches(h, &channel)) else {
            let error = ReplayError { code: 400, msg: format!("{channel} has no history (see --history)") };
            tokio::task::spawn_local(super::hand_replay(shard, target, replay, Vec::new(), Err(error)));
            return;
        };
        if self.replays_running.get() >= crate::limits::REPLAYS_CONCURRENT_MAX {
            metrics.replays_refused.inc();
            let error = ReplayError { code: 503, msg: "too many resumes in progress on this node; retry shortly".into() };
            tokio::task::spawn_local(super::hand_replay(shard, target, replay, Vec::new(), Err(error)));
            return;
        }
        let job = ReplayJob {
            js: self.js.clone(),
            stream: self.history.stream.clone(),
            subject: self.subject(&channel),
            since,
            max: self.history.replay_messages_max,
            live_start: self.consumers[index].start.clone(),
            ready: self.stream_ready.clone(),
        };
        let running = self.replays_running.clone();
        running.set(running.get() + 1);
        metrics.replays_running.set(running.get() as u64);
        // The connection's other new interest (its `$pres` channel, say) must be live too
        // before the resume's `ok`.
        let barrier = self.live_barrier();
        tokio::task::spawn_local(async move {
            let result = if barrier.await { job.run().await } else { Err(ReplayError { code: 503, msg: "NATS did not confirm the subscription in time; retry shortly".into() }) };
            let (frames, outcome) = match result {
                Ok((frames, upto)) => {
                    metrics.replayed_messages.add(frames.len() as u64);
                    (frames, Ok(upto))
                }
                Err(error) => {
                    if error.code == 409 {
                        metrics.replays_gone.inc();
                    }
                    (Vec::new(), Err(error))
                }
            };
            metrics.replays.inc();
            super::hand_replay(shard, target, replay, frames, outcome).await;
            running.set(running.get() - 1);
            metrics.replays_running.set(running.get() as u64);
        });
    }
}

fn is_raw_frame(headers: Option<&async_nats::HeaderMap>) -> bool {
    headers.and_then(|h| h.get(FRAME_HEADER)).is_some_and(|v| v.as_str() == "1")
}

/// The live JetStream consumer of one history pattern: an ordered pull consumer starting
/// after the stream's last message, recreated (from the last sequence seen, so a link
/// outage loses nothing) whenever it fails, until cancelled.
struct LiveConsumer {
    js: jetstream::Context,
    stream: String,
    filter: String,
    start: Rc<Cell<Option<u64>>>,
    ready: Rc<Cell<bool>>,
    queue: mpsc::Sender<HistoryIn>,
    connections: watch::Receiver<u64>,
    /// Told when `start` is first set (a `sub` may be waiting for it: see `live_barrier`).
    started: Rc<watch::Sender<u64>>,
}

impl LiveConsumer {
    async fn run(self, mut cancelled: oneshot::Receiver<()>) {
        // The first sequence not yet delivered: set when the first consumer is created,
        // advanced by every message, so a recreated consumer continues exactly there.
        let mut resume_from: Option<u64> = None;
        let mut attempt = 0usize;
        loop {
            tokio::select! {
                _ = &mut cancelled => return,
                _ = self.consume(&mut resume_from) => {}
            }
            tokio::select! {
                _ = &mut cancelled => return,
                _ = tokio::time::sleep(link_retry_delay(attempt).max(Duration::from_millis(20))) => {}
            }
            attempt = (attempt + 1).min(20);
        }
    }

    /// One consumer's life: returns when it fails or NATS reconnects.
    async fn consume(&self, resume_from: &mut Option<u64>) {
        let mut connections = self.connections.clone();
        connections.borrow_and_update();
        while !self.ready.get() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let start = match *resume_from {
            Some(seq) => seq,
            None => match self.js.get_stream_no_info(&self.stream).await {
                Ok(stream) => match stream.get_info().await {
                    Ok(info) => info.state.last_sequence + 1,
                    Err(error) => return tracing::warn!(%error, "history stream info failed"),
                },
                Err(error) => return tracing::warn!(%error, "history stream lookup failed"),
            },
        };
        let config = consumer::pull::OrderedConfig {
            filter_subject: self.filter.clone(),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: start },
            ..Default::default()
        };
        let messages = match self.js.create_consumer_on_stream(config, &self.stream).await {
            Ok(consumer) => match consumer.messages().await {
                Ok(messages) => messages,
                Err(error) => return tracing::warn!(%error, filter = %self.filter, "history consumer stream failed"),
            },
            Err(error) => return tracing::warn!(%error, filter = %self.filter, "history consumer create failed"),
        };
        *resume_from = Some(start);
        if self.start.get().is_none() {
            self.start.set(Some(start));
            self.started.send_modify(|n| *n += 1);
        }
        let floor = self.start.get().unwrap_or(start);
        let mut messages = std::pin::pin!(messages);
        loop {
            let next = tokio::select! {
                next = messages.next() => next,
                _ = connections.changed() => return tracing::debug!(filter = %self.filter, "NATS reconnected: recreating the history consumer"),
            };
            let Some(next) = next else { return };
            let message = match next {
                Ok(message) => message,
                Err(error) => return tracing::warn!(%error, filter = %self.filter, "history consumer failed; recreating"),
            };
            let Ok(info) = message.info() else { continue };
            let seq = info.stream_sequence;
            *resume_from = Some(seq + 1);
            let raw_frame = is_raw_frame(message.headers.as_ref());
            let incoming = HistoryIn { floor, subject: message.subject.clone(), payload: message.payload.clone(), raw_frame, seq };
            if self.queue.send(incoming).await.is_err() {
                return;
            }
        }
    }
}

/// One resume: decide whether `since` is still covered, then fetch every message after
/// it up to a sequence at or past where the live consumer started.
struct ReplayJob {
    js: jetstream::Context,
    stream: String,
    subject: String,
    since: u64,
    max: usize,
    live_start: Rc<Cell<Option<u64>>>,
    ready: Rc<Cell<bool>>,
}

type Replayed = (Vec<Bytes>, u64);

impl ReplayJob {
    async fn run(self) -> Result<Replayed, ReplayError> {
        let unavailable = |why: &str| ReplayError { code: 503, msg: format!("history is unavailable right now ({why}); retry shortly") };
        let waited = tokio::time::timeout(REPLAY_READY_TIMEOUT, async {
            while !self.ready.get() || self.live_start.get().is_none() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        if waited.is_err() {
            return Err(unavailable("NATS or the history stream is not reachable"));
        }
        let stream = self.js.get_stream_no_info(&self.stream).await.map_err(|e| unavailable(&e.to_string()))?;
        let state = stream.get_info().await.map_err(|e| unavailable(&e.to_string()))?.state;
        // The live consumer already has everything after its start; replay up to there at
        // least, and up to the stream's end now (the shard drops live copies ≤ upto).
        let upto = state.last_sequence.max(self.live_start.get().unwrap_or(0).saturating_sub(1));
        let channel = self.subject.split_once('.').map_or(self.subject.as_str(), |(_, c)| c);
        if self.since != 0 {
            // Deletions drop a subject's oldest messages first (per-subject count, age,
            // stream limits), so a gap exists iff the first kept message of this subject
            // comes after since + 1 (or nothing is kept and the stream moved past it).
            let first_kept = match stream.get_first_raw_message_by_subject(&self.subject, 0).await {
                Ok(message) => Some(message.sequence),
                Err(e) if matches!(e.kind(), stream::LastRawMessageErrorKind::NoMessageFound) => None,
                Err(e) => return Err(unavailable(&e.to_string())),
            };
            let gap = match first_kept {
                Some(first) => self.since + 1 < first,
                None => self.since + 1 < state.first_sequence,
            };
            if gap {
                return Err(history::gone(channel, self.since));
            }
        }
        if self.since >= upto {
            return Ok((Vec::new(), upto));
        }
        self.fetch(upto, channel).await
    }

    async fn fetch(&self, upto: u64, channel: &str) -> Result<Replayed, ReplayError> {
        let unavailable = |e: String| ReplayError { code: 503, msg: format!("history is unavailable right now ({e}); retry shortly") };
        let config = consumer::pull::Config {
            filter_subject: self.subject.clone(),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: self.since + 1 },
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            memory_storage: true,
            ..Default::default()
        };
        let consumer = self.js.create_consumer_on_stream(config, &self.stream).await.map_err(|e| unavailable(e.to_string()))?;
        let name = consumer.cached_info().name.clone();
        let mut frames = Vec::new();
        let result = async {
            loop {
                let mut batch = consumer
                    .fetch()
                    .max_messages(REPLAY_FETCH_BATCH)
                    .expires(Duration::from_secs(1))
                    .messages()
                    .await
                    .map_err(|e| unavailable(e.to_string()))?;
                let mut got = 0;
                while let Some(message) = batch.next().await {
                    let message = message.map_err(|e| unavailable(e.to_string()))?;
                    got += 1;
                    let info = message.info().map_err(|e| unavailable(e.to_string()))?;
                    let (seq, pending) = (info.stream_sequence, info.pending);
                    if seq > upto {
                        return Ok(());
                    }
                    if frames.is_empty() && pending as usize + 1 > self.max {
                        return Err(history::too_many(pending as usize + 1, self.max));
                    }
                    let raw = is_raw_frame(message.headers.as_ref());
                    frames.push(super::encode_frame(channel, &message.payload, raw, Some(seq)));
                    if frames.len() > self.max {
                        return Err(history::too_many(frames.len(), self.max));
                    }
                    if seq >= upto || pending == 0 {
                        return Ok(());
                    }
                }
                if got == 0 {
                    return Ok(()); // nothing more within the fetch window
                }
            }
        }
        .await;
        let _ = self.js.delete_consumer_from_stream(&name, &self.stream).await;
        result.map(|()| (frames, upto))
    }
}

