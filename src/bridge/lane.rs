//! The Lane on a gateway's bridge thread: persists what `/api/notify` accepted, serves the
//! dead-letter listing, and passes client acks and "user is reachable" events to the
//! worker — the in-process one through a channel, separate ones (`ringcast worker`)
//! through NATS subjects `_lane.{lane_prefix}.ack` and `_lane.{lane_prefix}.online`.
//!
//! Those subjects sit outside the channel prefix (`rc.…`) on purpose: a client that
//! subscribes to `>` must never see another user's acks.
//!
//! "Reachable" means: some connection on this node subscribed to `user.{id}` (the bridge
//! sees the first local subscription as new interest). That, not the bare connect, is the
//! moment a `notify` frame can arrive, so the fast path fires then.
//!
//! Runs on: the bridge thread (tokio current-thread + LocalSet).

use crate::lane::worker::{FrameSink, OnlineCheck, Source, Worker, WorkerEvent, WORKER_EVENTS_MAX};
use crate::lane::{Accepted, DeadAnswer, DeadOp, Lane, Notification};
use crate::node::Node;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// An ack or online event as it travels on NATS (JSON).
#[derive(Serialize, Deserialize)]
struct WireEvent {
    user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nid: Option<String>,
}

const OFF: &str = "notifications are off on this node: its embedded queue file is held by another process (start it with its own --lane-dir)";

pub fn ack_subject(lane_prefix: &str) -> String {
    format!("_lane.{lane_prefix}.ack")
}

pub fn online_subject(lane_prefix: &str) -> String {
    format!("_lane.{lane_prefix}.online")
}

pub struct LaneBridge {
    /// None when the default embedded file was taken by another process.
    lane: Option<Rc<Lane>>,
    /// The in-process worker's events (embedded broker: acks and online users go straight to it).
    events: Option<mpsc::Sender<WorkerEvent>>,
    /// With NATS every event goes out there (the in-process worker listens too).
    nats: Option<async_nats::Client>,
    lane_prefix: String,
    /// Users with a `user.{id}` subscription on this node.
    reachable: Rc<RefCell<HashSet<String>>>,
}

impl LaneBridge {
    /// Opens the Lane the config asks for and starts the in-process worker if configured.
    pub async fn start(node: &Arc<Node>) -> Result<LaneBridge, String> {
        let config = node.config.lane.clone();
        let (lane, source) = match &config.amqp {
            None => match crate::lane::embedded::EmbeddedLane::open(&config.dir) {
                Ok(lane) => (Some(Lane::Embedded(lane.clone())), Some(Source::Embedded(lane))),
                Err(e) if !config.dir_given => {
                    // Another gateway on this host (tests, several processes on one port)
                    // holds the default file: this node serves everything but notifications.
                    tracing::warn!(error = %e, "notifications are off on this node; give it its own --lane-dir");
                    (None, None)
                }
                Err(e) => return Err(e),
            },
            Some(url) => {
                let shared = match &node.config.presence.redis {
                    Some(redis) => Some(crate::lane::nids::SharedNids::new(&redis.url, &config.prefix, &node.config.node, config.waiting)?),
                    None => None,
                };
                let lane = Lane::Rabbit(crate::lane::rabbitmq::RabbitLane::start(url, &config.prefix, &config.backoff, (&config).into(), shared, node.lane_metrics.clone()));
                let source = config
                    .worker_in_process
                    .then(|| Source::Rabbit(crate::lane::rabbitmq::RabbitSource::start(url, &config.prefix, &config.backoff, config.in_flight, (&config).into())));
                (Some(lane), source)
            }
        };
        let nats = match &node.config.broker.nats {
            Some(nats) => Some(super::nats::client(nats, &format!("{} lane", node.config.node)).await?),
            None => None,
        };
        let reachable = Rc::new(RefCell::new(HashSet::new()));
        let mut events = None;
        if let Some(source) = source.filter(|_| config.worker_in_process) {
            let (tx, rx) = mpsc::channel(WORKER_EVENTS_MAX);
            let online = match &nats {
                None => OnlineCheck::Local(reachable.clone()),
                Some(client) => {
                    tokio::task::spawn_local(forward_nats_events(client.clone(), config.prefix.clone(), tx.clone()));
                    // Users on other nodes: presence in Redis knows them; without it a
                    // try cannot tell offline from unacked (see `OnlineCheck::Unknown`).
                    match &node.config.presence.redis {
                        Some(_) => OnlineCheck::Presence(crate::presence::Presence::reader(&node.config.presence)?),
                        None => OnlineCheck::Unknown,
                    }
                }
            };
            if nats.is_none() {
                events = Some(tx);
            }
            let inbox = node.bridge_inbox.clone();
            let frames = FrameSink::new(move |channel, frame| {
                let taken = inbox.push(crate::fanout::ToBridge::PublishFrame { channel: channel.into(), frame, exclude: None }).is_ok();
                Box::pin(std::future::ready(taken))
            });
            let mut worker = Worker::new(config.clone(), source, frames, online, rx, node.lane_metrics.clone());
            if let Some(redis) = &node.config.presence.redis {
                worker = worker.with_shared_inbox(crate::lane::inbox::RedisInbox::new(&redis.url, &config.prefix, config.inbox_per_user)?);
            }
            tokio::task::spawn_local(worker.run());
        }
        Ok(LaneBridge { lane: lane.map(Rc::new), events, nats, lane_prefix: config.prefix.clone(), reachable })
    }

    pub fn notify(&self, notification: Notification, caller_nid: bool, reply: oneshot::Sender<Result<Accepted, String>>) {
        let Some(lane) = self.lane.clone() else {
            let _ = reply.send(Err(OFF.into()));
            return;
        };
        tokio::task::spawn_local(async move {
            let _ = reply.send(lane.enqueue_from(notification, caller_nid).await);
        });
    }

    pub fn dead(&self, op: DeadOp, reply: oneshot::Sender<Result<DeadAnswer, String>>) {
        let Some(lane) = self.lane.clone() else {
            let _ = reply.send(Err(OFF.into()));
            return;
        };
        tokio::task::spawn_local(async move {
            let _ = reply.send(lane.dead(op).await);
        });
    }

    pub fn ack(&self, user: &str, nid: &str) {
        self.send(WorkerEvent::Ack { user: user.to_owned(), nid: nid.to_owned() });
    }

    /// Called on every change of node-wide interest; `user.{id}` literals are reachability.
    pub fn interest(&self, pattern: &str, added: bool) {
        self.interest_when(pattern, added, None);
    }

    /// [`LaneBridge::interest`], telling the worker a user came online only once `live`
    /// resolves (the broker's subscription to `user.{id}` is on the server), so the
    /// `notify` the worker sends at once is not lost to that race.
    pub fn interest_when(&self, pattern: &str, added: bool, live: Option<std::pin::Pin<Box<dyn std::future::Future<Output = bool>>>>) {
        let Some(user) = pattern.strip_prefix("user.").filter(|u| crate::channel::is_valid_token(u)) else { return };
        if added {
            self.reachable.borrow_mut().insert(user.to_owned());
            match live {
                None => self.send(WorkerEvent::Online { user: user.to_owned() }),
                Some(live) => {
                    let (nats, events, prefix, user) = (self.nats.clone(), self.events.clone(), self.lane_prefix.clone(), user.to_owned());
                    tokio::task::spawn_local(async move {
                        // Bounded by the broker's confirmation timeout; sent either way.
                        live.await;
                        send_event(nats.as_ref(), events.as_ref(), &prefix, WorkerEvent::Online { user });
                    });
                }
            }
        } else {
            self.reachable.borrow_mut().remove(user);
        }
    }

    fn send(&self, event: WorkerEvent) {
        send_event(self.nats.as_ref(), self.events.as_ref(), &self.lane_prefix, event);
    }
}

fn send_event(nats: Option<&async_nats::Client>, events: Option<&mpsc::Sender<WorkerEvent>>, lane_prefix: &str, event: WorkerEvent) {
    {
        if let Some(client) = nats {
            let (subject, wire) = match &event {
                WorkerEvent::Ack { user, nid } => (ack_subject(lane_prefix), WireEvent { user: user.clone(), nid: Some(nid.clone()) }),
                WorkerEvent::Online { user } => (online_subject(lane_prefix), WireEvent { user: user.clone(), nid: None }),
            };
            let client = client.clone();
            let payload = Bytes::from(serde_json::to_vec(&wire).expect("json"));
            tokio::task::spawn_local(async move {
                let _ = client.publish(subject, payload).await;
            });
        } else if let Some(events) = events {
            // Full: the event is dropped (an ack lost here costs one redelivery).
            let _ = events.try_send(event);
        }
    }
}

/// Subscribes to the Lane's NATS event subjects and feeds a worker.
pub async fn forward_nats_events(client: async_nats::Client, lane_prefix: String, events: mpsc::Sender<WorkerEvent>) {
    use futures_util::StreamExt;
    let subscribe = |subject: String| {
        let client = client.clone();
        async move {
            loop {
                match client.subscribe(subject.clone()).await {
                    Ok(subscription) => return subscription,
                    Err(e) => {
                        tracing::warn!(%subject, error = %e, "cannot subscribe to Lane events; retrying");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                }
            }
        }
    };
    let acks = subscribe(ack_subject(&lane_prefix)).await.map(|m| (true, m));
    let online = subscribe(online_subject(&lane_prefix)).await.map(|m| (false, m));
    let mut merged = futures_util::stream::select(acks, online);
    while let Some((is_ack, message)) = merged.next().await {
        let Ok(wire) = serde_json::from_slice::<WireEvent>(&message.payload) else { continue };
        let event = match (is_ack, wire.nid) {
            (true, Some(nid)) => WorkerEvent::Ack { user: wire.user, nid },
            (true, None) => continue,
            (false, _) => WorkerEvent::Online { user: wire.user },
        };
        if events.send(event).await.is_err() {
            return;
        }
    }
}
