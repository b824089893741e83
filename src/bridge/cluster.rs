//! Questions and orders that span every gateway node: "how many connections subscribe to
//! each channel under this prefix, cluster-wide" and "close this user's connections on
//! every node" (the Pusher channel API and `terminate_connections`; nothing here knows
//! Pusher: a query is a channel prefix, an order a scope and a user).
//!
//! Owns: the control subjects, the table of live peers, gathering the nodes' answers.
//! Must not touch: connections (questions and orders reach shards as `ToShard` messages,
//! and the transport decides which connection a close order means). Runs on: the bridge
//! thread, as tasks on its `LocalSet`.
//!
//! # Why scatter-gather over NATS, not a registry in Redis
//! - Fresh answers: each node counts its shards' subscription indexes when asked, so a
//!   subscription made before the query is in the answer. A registry would be written on
//!   the subscribe path of every node (or sampled, and then lag by the sampling period)
//!   for the sake of an occasional query.
//! - Nothing to clean up: a node that dies takes its counts with it. A registry needs
//!   per-node keys with TTLs, resyncs after a Redis outage and bounded batched writes.
//! - One engine: Pusher on several nodes needs NATS already (events cross nodes there);
//!   Redis is only needed for presence.
//!
//! The price: a query costs a NATS round trip and one turn of every node's bridge and
//! shards, and the asker must know when every node has answered. So each node sends a
//! heartbeat every [`HEARTBEAT`] (and answers a newcomer's at once), and a query waits
//! for every node heard within [`PEER_EXPIRY`], up to `nats_cluster_query_timeout`; a node
//! that stays silent makes the query fail with 503 naming it, never a silently partial
//! answer. A stopped node is forgotten after `PEER_EXPIRY`. With the embedded broker
//! there is one node, and its shards are asked directly.
//!
//! Subjects: `$RINGCAST.{prefix}.count` (a request; each node replies with its counts),
//! `$RINGCAST.{prefix}.close_user` (an order, no reply) and `$RINGCAST.{prefix}.nodes`
//! (heartbeats). A `nats_prefix` cannot start with `$`, so no channel's subject
//! (`{prefix}.{channel}`) is one of these: clients cannot forge a query or an order, and
//! history streams never capture them. A NATS user for ringcast needs publish and
//! subscribe permission on `$RINGCAST.{prefix}.>` as well as `{prefix}.>` and `_INBOX.>`.

use crate::fanout::cluster::{CloseUser, ClusterCloseReply, ClusterCountsReply, CountQuery, Counts, CountsMerge};
use crate::fanout::{Full, Mailbox, ToShard};
use crate::metrics::BridgeMetrics;
use crate::node::Node;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How often a node says it is alive on `.nodes`: the period in which a new node becomes
/// part of every query (sooner: a newcomer's first heartbeat is answered at once).
pub const HEARTBEAT: Duration = Duration::from_millis(1_000);
/// A node not heard for this long is no longer waited for: three missed heartbeats and
/// some slack for a busy bridge. Until then, queries answer 503 for a stopped node.
pub const PEER_EXPIRY: Duration = Duration::from_millis(3_500);
/// Nodes one node keeps track of; past it new names are ignored (and logged), so a NATS
/// client sending junk heartbeats cannot grow the table.
pub const PEERS_MAX: usize = 1_024;
/// Answers to a newcomer's heartbeat at most this often (a restart storm of many nodes
/// costs one heartbeat each per period, not one per newcomer).
const NEWCOMER_ANSWER_GAP: Duration = Duration::from_millis(100);
/// Other nodes' queries being answered at once; past it a query is answered with an error
/// (the asker answers 503). Each lasts at most the query timeout.
pub const ANSWERS_RUNNING_MAX: usize = 64;
/// How long handing a close order to a full shard inbox is retried.
const CLOSE_HANDOFF_TIMEOUT: Duration = Duration::from_secs(5);
/// The root of the control subjects: starts with `$`, which a `nats_prefix` cannot.
pub const SUBJECT_ROOT: &str = "$RINGCAST";

/// What the bridge needs of its NATS broker to talk to the other nodes.
pub struct NatsLink {
    pub client: async_nats::Client,
    /// Up while the NATS connection is (the broker's link state).
    pub up: Arc<AtomicBool>,
    pub prefix: String,
}

/// The bridge's side: asks questions, hands orders on, answers other nodes.
pub struct Cluster {
    node: Arc<Node>,
    metrics: Arc<BridgeMetrics>,
    timeout: Duration,
    control: Option<Rc<Control>>,
}

struct Control {
    client: async_nats::Client,
    up: Arc<AtomicBool>,
    name: String,
    count_subject: String,
    close_subject: String,
    nodes_subject: String,
    peers: RefCell<Peers>,
    answers_running: Cell<usize>,
    newcomer_answered: Cell<Option<Instant>>,
}

/// One node's reply to a count request.
#[derive(Serialize, Deserialize)]
struct NodeAnswer {
    node: String,
    #[serde(default)]
    counts: Option<Counts>,
    #[serde(default)]
    error: Option<String>,
}

/// Nodes heard recently, by name, bounded by [`PEERS_MAX`].
#[derive(Default)]
struct Peers {
    seen: HashMap<Box<str>, Instant>,
}

impl Peers {
    /// Records a heartbeat; true when the node was not known (or had been forgotten).
    fn heard(&mut self, name: &str, now: Instant) -> bool {
        if let Some(at) = self.seen.get_mut(name) {
            let forgotten = now.duration_since(*at) > PEER_EXPIRY;
            *at = now;
            return forgotten;
        }
        self.seen.retain(|_, at| now.duration_since(*at) <= PEER_EXPIRY);
        if self.seen.len() >= PEERS_MAX {
            tracing::warn!(node = name, "more than {PEERS_MAX} gateway nodes heard on NATS: this one is left out of cluster-wide queries");
            return false;
        }
        self.seen.insert(name.into(), now);
        true
    }

    fn alive(&self, now: Instant) -> impl Iterator<Item = &str> {
        self.seen.iter().filter(move |(_, at)| now.duration_since(**at) <= PEER_EXPIRY).map(|(name, _)| &**name)
    }
}

type Answer = Pin<Box<dyn Future<Output = Result<Counts, String>>>>;

impl Cluster {
    /// Must run inside the bridge's `LocalSet` (its NATS tasks are local).
    pub fn start(node: Arc<Node>, nats: Option<NatsLink>, metrics: Arc<BridgeMetrics>) -> Cluster {
        let timeout = node.config.broker.cluster_query_timeout();
        metrics.cluster_peers.set(1);
        let control = nats.map(|link| {
            let root = format!("{SUBJECT_ROOT}.{}", link.prefix);
            let control = Rc::new(Control {
                client: link.client,
                up: link.up,
                name: node.config.node.clone(),
                count_subject: format!("{root}.count"),
                close_subject: format!("{root}.close_user"),
                nodes_subject: format!("{root}.nodes"),
                peers: RefCell::new(Peers::default()),
                answers_running: Cell::new(0),
                newcomer_answered: Cell::new(None),
            });
            tokio::task::spawn_local(heartbeat(control.clone(), metrics.clone()));
            tokio::task::spawn_local(listen(control.clone(), node.clone(), metrics.clone(), timeout));
            control
        });
        Cluster { node, metrics, timeout, control }
    }

    /// Counts of the channels `query` covers on every node, answered on `reply`.
    pub fn count(&self, query: CountQuery, reply: ClusterCountsReply) {
        self.metrics.cluster_queries.inc();
        let timeout = self.timeout;
        let answer: Answer = match &self.control {
            None => Box::pin(gather_local(self.node.clone(), Arc::new(query), Instant::now() + timeout)),
            Some(control) => Box::pin(gather_cluster(control.clone(), query, timeout)),
        };
        let metrics = self.metrics.clone();
        tokio::task::spawn_local(async move {
            // The inner waits are bounded by `timeout` already and say who was missing;
            // this one only catches a NATS client that stopped taking commands.
            let answer = match tokio::time::timeout(timeout + timeout / 4, answer).await {
                Ok(answer) => answer,
                Err(_) => Err(format!("NATS did not take the query within {} ms; retry shortly", timeout.as_millis())),
            };
            if answer.is_err() {
                metrics.cluster_query_failures.inc();
            }
            let _ = reply.send(answer);
        });
    }

    /// Closes `close.user`'s connections in `close.scope` on every node. Answered Ok once
    /// the order is on the NATS server (embedded: handed to this node's shards).
    pub fn close_user(&self, close: CloseUser, reply: ClusterCloseReply) {
        let Some(control) = self.control.clone() else {
            tokio::task::spawn_local(apply_close(self.node.clone(), Arc::new(close), self.metrics.clone()));
            let _ = reply.send(Ok(()));
            return;
        };
        if !control.up.load(Ordering::Acquire) {
            let _ = reply.send(Err("NATS is unreachable, and the order must reach every node; retry shortly".into()));
            return;
        }
        let timeout = self.timeout;
        tokio::task::spawn_local(async move {
            let payload = Bytes::from(serde_json::to_vec(&close).expect("a CloseUser serializes"));
            let sent = async {
                control.client.publish(control.close_subject.clone(), payload).await.map_err(|e| e.to_string())?;
                control.client.flush().await.map_err(|e| e.to_string())
            };
            let outcome = match tokio::time::timeout(timeout, sent).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) => Err(format!("could not send the order over NATS ({error}); retry shortly")),
                Err(_) => Err(format!("NATS did not take the order within {} ms; retry shortly", timeout.as_millis())),
            };
            let _ = reply.send(outcome);
        });
    }
}

/// Every node's counts, merged; Err names the nodes that did not answer in time.
async fn gather_cluster(control: Rc<Control>, query: CountQuery, timeout: Duration) -> Result<Counts, String> {
    if !control.up.load(Ordering::Acquire) {
        return Err("NATS is unreachable, and the answer needs every node; retry shortly".into());
    }
    let deadline = Instant::now() + timeout;
    let mut expected: HashSet<String> = control.peers.borrow().alive(Instant::now()).map(str::to_owned).collect();
    expected.insert(control.name.clone());
    let inbox = control.client.new_inbox();
    let mut replies = control.client.subscribe(inbox.clone()).await.map_err(|e| format!("cannot ask the other nodes over NATS ({e}); retry shortly"))?;
    let payload = Bytes::from(serde_json::to_vec(&query).expect("a CountQuery serializes"));
    control.client.publish_with_reply(control.count_subject.clone(), inbox, payload).await.map_err(|e| format!("cannot ask the other nodes over NATS ({e}); retry shortly"))?;
    let mut merge = CountsMerge::default();
    let mut answered: HashSet<String> = HashSet::new();
    while !expected.iter().all(|node| answered.contains(node)) {
        let message = match tokio::time::timeout_at(deadline, replies.next()).await {
            Ok(Some(message)) => message,
            Ok(None) => return Err("the NATS reply subscription ended early; retry".into()),
            Err(_elapsed) => {
                let mut missing: Vec<&str> = expected.iter().filter(|n| !answered.contains(*n)).map(String::as_str).collect();
                missing.sort_unstable();
                return Err(format!("node(s) {} did not answer within {} ms (nats_cluster_query_timeout); retry shortly", missing.join(", "), timeout.as_millis()));
            }
        };
        let Ok(answer) = serde_json::from_slice::<NodeAnswer>(&message.payload) else { continue };
        if let Some(error) = answer.error {
            return Err(format!("node {} could not answer: {error}", answer.node));
        }
        if answered.insert(answer.node) {
            merge.add(answer.counts.unwrap_or_default());
        }
    }
    Ok(merge.finish())
}

/// This node's counts: every shard asked, each answer awaited until `deadline`.
pub async fn gather_local(node: Arc<Node>, query: Arc<CountQuery>, deadline: Instant) -> Result<Counts, String> {
    let mut waiting = Vec::with_capacity(node.shard_inboxes.len());
    for inbox in &node.shard_inboxes {
        let (reply, answer) = tokio::sync::oneshot::channel();
        if !push_before(inbox, ToShard::Count { query: query.clone(), reply }, deadline).await {
            return Err("a shard's queue stayed full (the node is overloaded); retry shortly".into());
        }
        waiting.push(answer);
    }
    let mut merge = CountsMerge::default();
    for answer in waiting {
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(counts)) => merge.add(counts),
            Ok(Err(_dropped)) => return Err("a shard stopped before answering".into()),
            Err(_elapsed) => return Err("a shard did not answer in time (the node is overloaded); retry shortly".into()),
        }
    }
    Ok(merge.finish())
}

/// Pushes `message`, retrying a full inbox every millisecond until `deadline`.
async fn push_before(inbox: &Mailbox<ToShard>, mut message: ToShard, deadline: Instant) -> bool {
    loop {
        match inbox.push(message) {
            Ok(()) => return true,
            Err(Full(refused)) => {
                if Instant::now() >= deadline {
                    return false;
                }
                message = refused;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

/// Hands a close order to every shard of this node.
async fn apply_close(node: Arc<Node>, close: Arc<CloseUser>, metrics: Arc<BridgeMetrics>) {
    metrics.cluster_close_orders.inc();
    let deadline = Instant::now() + CLOSE_HANDOFF_TIMEOUT;
    for inbox in &node.shard_inboxes {
        if !push_before(inbox, ToShard::CloseUser(close.clone()), deadline).await {
            tracing::warn!(scope = %close.scope, "a shard inbox stayed full: a close-user order (terminate_connections) did not reach it");
        }
    }
}

/// Says "alive" every [`HEARTBEAT`] while NATS is up, and keeps the peer gauge.
async fn heartbeat(control: Rc<Control>, metrics: Arc<BridgeMetrics>) {
    loop {
        if control.up.load(Ordering::Acquire) {
            // Not awaited on the bridge loop: a reconnecting client only delays this task.
            let _ = control.client.publish(control.nodes_subject.clone(), Bytes::from(control.name.clone())).await;
        }
        let now = Instant::now();
        let alive = {
            let mut peers = control.peers.borrow_mut();
            peers.heard(&control.name, now);
            peers.alive(now).count()
        };
        metrics.cluster_peers.set(alive as u64);
        tokio::time::sleep(HEARTBEAT).await;
    }
}

/// Reads the control subjects: heartbeats, other nodes' queries, close orders.
async fn listen(control: Rc<Control>, node: Arc<Node>, metrics: Arc<BridgeMetrics>, timeout: Duration) {
    let subscribed = async {
        let nodes = control.client.subscribe(control.nodes_subject.clone()).await?;
        let counts = control.client.subscribe(control.count_subject.clone()).await?;
        let closes = control.client.subscribe(control.close_subject.clone()).await?;
        Ok::<_, async_nats::SubscribeError>((nodes, counts, closes))
    };
    let (mut nodes, mut counts, mut closes) = match subscribed.await {
        Ok(subscriptions) => subscriptions,
        Err(error) => return tracing::error!(%error, "cannot subscribe to the cluster control subjects: cluster-wide queries will time out"),
    };
    // Answering leaves the asker some of its timeout to receive the answer.
    let answer_within = timeout - timeout / 4;
    loop {
        tokio::select! {
            Some(message) = nodes.next() => heard(&control, &message.payload),
            Some(message) = counts.next() => {
                let Some(reply) = message.reply else { continue };
                if control.answers_running.get() >= ANSWERS_RUNNING_MAX {
                    let busy = NodeAnswer { node: control.name.clone(), counts: None, error: Some(format!("{ANSWERS_RUNNING_MAX} queries are being answered already; retry shortly")) };
                    let _ = control.client.publish(reply, Bytes::from(serde_json::to_vec(&busy).unwrap_or_default())).await;
                    continue;
                }
                control.answers_running.set(control.answers_running.get() + 1);
                tokio::task::spawn_local(answer_count(control.clone(), node.clone(), metrics.clone(), reply, message.payload, answer_within));
            }
            Some(message) = closes.next() => match serde_json::from_slice::<CloseUser>(&message.payload) {
                Ok(close) => {
                    tokio::task::spawn_local(apply_close(node.clone(), Arc::new(close), metrics.clone()));
                }
                Err(error) => tracing::debug!(%error, "ignored a malformed close-user order"),
            },
            else => return tracing::warn!("the cluster control subscriptions ended"),
        }
    }
}

/// A heartbeat: remember the node; a newcomer hears ours at once.
fn heard(control: &Control, payload: &[u8]) {
    let Ok(name) = std::str::from_utf8(payload) else { return };
    if name.is_empty() || name.len() > 255 {
        return;
    }
    let now = Instant::now();
    let newcomer = control.peers.borrow_mut().heard(name, now) && name != control.name;
    let answered_lately = control.newcomer_answered.get().is_some_and(|at| now.duration_since(at) < NEWCOMER_ANSWER_GAP);
    if newcomer && !answered_lately && control.up.load(Ordering::Acquire) {
        control.newcomer_answered.set(Some(now));
        let client = control.client.clone();
        let (subject, me) = (control.nodes_subject.clone(), Bytes::from(control.name.clone()));
        tokio::task::spawn_local(async move {
            let _ = client.publish(subject, me).await;
        });
    }
}

async fn answer_count(control: Rc<Control>, node: Arc<Node>, metrics: Arc<BridgeMetrics>, reply: async_nats::Subject, payload: Bytes, within: Duration) {
    let answer = match serde_json::from_slice::<CountQuery>(&payload) {
        Ok(query) => match gather_local(node, Arc::new(query), Instant::now() + within).await {
            Ok(counts) => NodeAnswer { node: control.name.clone(), counts: Some(counts), error: None },
            Err(error) => NodeAnswer { node: control.name.clone(), counts: None, error: Some(error) },
        },
        Err(error) => NodeAnswer { node: control.name.clone(), counts: None, error: Some(format!("malformed count query: {error}")) },
    };
    metrics.cluster_answers.inc();
    let body = Bytes::from(serde_json::to_vec(&answer).unwrap_or_default());
    if let Err(error) = control.client.publish(reply, body).await {
        tracing::debug!(%error, "could not send a cluster query answer");
    }
    control.answers_running.set(control.answers_running.get() - 1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_expire_and_are_bounded() {
        let start = Instant::now();
        let mut peers = Peers::default();
        assert!(peers.heard("a", start), "a newcomer");
        assert!(!peers.heard("a", start + Duration::from_millis(500)), "known");
        assert!(peers.heard("a", start + Duration::from_millis(500) + PEER_EXPIRY + Duration::from_millis(1)), "forgotten, then new again");
        let later = start + Duration::from_secs(60);
        assert_eq!(peers.alive(later + PEER_EXPIRY * 2).count(), 0);
        for i in 0..PEERS_MAX {
            peers.heard(&format!("n{i}"), later);
        }
        assert!(!peers.heard("one-too-many", later), "bounded");
        assert_eq!(peers.alive(later).count(), PEERS_MAX);
        assert!(peers.heard("fresh", later + PEER_EXPIRY + Duration::from_millis(1)), "expired entries make room");
    }

    #[test]
    fn control_subjects_never_carry_a_channel() {
        // A channel's subject is `{prefix}.{channel}`, and a prefix never starts with `$`.
        assert!(SUBJECT_ROOT.starts_with('$'));
        let values: std::collections::BTreeMap<&str, String> = [("nats_prefix", SUBJECT_ROOT.to_string())].into_iter().collect();
        assert!(crate::config::broker::build_broker(&values).is_err(), "a prefix cannot start with $");
    }
}
