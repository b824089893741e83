//! The delivery worker: takes due notifications from the Lane, sends each to its user as a
//! `notify` frame on `user.{id}` (through the broker, so it reaches whichever node holds
//! the user), waits for the client's `ack`, and settles the try: delivered, retried with
//! backoff, parked while its user is offline, or dead-lettered.
//!
//! Attempts vs waiting: only an online try that gets no ack counts toward `max_attempts`.
//! A notification whose user is known to be offline is parked (no attempt) until the user
//! subscribes again or `min(lane_park_max, time left)` passes; its `expires` is its only
//! deadline.
//!
//! Owns: the in-flight bound (a semaphore of `lane_in_flight` permits), the acks it waits
//! for, the set of recently acked notifications (so a copy that comes back from a retry
//! queue after a fast-path delivery is dropped), and the per-user inbox of notifications
//! waiting for a retry (the online fast path re-sends them when the user comes back, well
//! before the next backoff tick). Must not touch: client sockets. Runs on: a tokio
//! current-thread runtime with a `LocalSet` — the gateway's bridge thread (in-process) or
//! `ringcast worker`.

use super::embedded::EmbeddedLane;
use super::metrics::LaneMetrics;
use super::rabbitmq::{RabbitJob, RabbitSource};
use super::{DeadRecord, LaneConfig, Notification, Outcome};
use bytes::Bytes;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

/// Acked notifications remembered (`user/nid`, ~100 bytes each) so a copy still waiting in a
/// retry queue is dropped when it returns. Past it the oldest are forgotten: such a copy
/// is sent again (a duplicate, allowed; the client dedupes by `nid`).
pub const ACKED_REMEMBERED_MAX: usize = 200_000;
/// Notifications held for the online fast path across all users (each is also safe in
/// the queue; past the bound a returning user waits for the next backoff tick, counted).
pub const INBOX_NOTIFICATIONS_MAX: usize = 100_000;
/// Longest an idle embedded worker sleeps before looking for due work again (it is also
/// woken by every accept).
const EMBEDDED_POLL_MAX: Duration = Duration::from_millis(500);
/// How long past `ack_timeout` an embedded lease lasts: a try takes at most the ack
/// wait plus a store round trip, and a worker that dies mid-try leaves the notification
/// due again this soon after.
const LEASE_MARGIN: Duration = Duration::from_secs(5);
/// Worker events (acks, online users) waiting to be handled; past it they are dropped
/// (an ack lost here only causes one redelivery).
pub const WORKER_EVENTS_MAX: usize = 65_536;

/// What the worker hears from gateways.
#[derive(Debug)]
pub enum WorkerEvent {
    /// A client acked `nid` (the user from its token).
    Ack { user: String, nid: String },
    /// The user subscribed to `user.{id}` on some node: pending notifications can go now.
    Online { user: String },
}

/// Where `notify` frames go, handed in by whoever runs the worker: the gateway's bridge
/// (embedded broker or NATS) or, for a separate worker, a NATS publish. The Lane knows
/// neither; it gets the notification's channel (`user.{id}`) and its `notify` frame, and
/// learns whether the frame was taken.
pub struct FrameSink {
    send: Box<dyn Fn(String, Bytes) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool>>>>,
}

impl FrameSink {
    pub fn new(send: impl Fn(String, Bytes) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool>>> + 'static) -> FrameSink {
        FrameSink { send: Box::new(send) }
    }

    async fn send(&self, notification: &Notification) -> bool {
        (self.send)(notification.channel().into(), Bytes::from(notification.frame_json())).await
    }
}

/// Whether a user can receive a frame right now.
#[derive(Clone)]
pub enum OnlineCheck {
    /// Authoritative: this single node's users with a `user.{id}` subscription (the
    /// embedded broker: there is no other node).
    Local(Rc<RefCell<HashSet<String>>>),
    /// Presence (Redis): connected on some node. Unreachable counts as online (try).
    Presence(crate::presence::Presence),
    /// Not known here (several nodes, no shared presence): send and let the ack decide.
    /// A try then counts as an attempt even if no one was subscribed (it cannot be told
    /// apart from an unacked frame), so an offline user can exhaust `max_attempts`: give
    /// such a worker `--redis` (presence) to have offline time not counted.
    Unknown,
}

impl OnlineCheck {
    async fn is_online(&self, user: &str) -> bool {
        match self {
            OnlineCheck::Local(users) => users.borrow().contains(user),
            OnlineCheck::Presence(presence) => presence.is_online(user).await.unwrap_or(true),
            OnlineCheck::Unknown => true,
        }
    }
}

/// Where due notifications come from.
pub enum Source {
    Embedded(EmbeddedLane),
    Rabbit(RabbitSource),
}

enum Job {
    Embedded(Notification),
    Rabbit(RabbitJob),
}

impl Job {
    fn notification(&self) -> &Notification {
        match self {
            Job::Embedded(n) => n,
            Job::Rabbit(job) => &job.notification,
        }
    }
}

/// Settles jobs; cloned into each delivery task.
#[derive(Clone)]
enum Settle {
    Embedded(EmbeddedLane),
    Rabbit(super::rabbitmq::RabbitFinisher),
}

impl Settle {
    async fn finish(&self, job: Job, outcome: Outcome) {
        match (self, job) {
            (Settle::Embedded(lane), Job::Embedded(n)) => lane.finish(n.nid, outcome),
            (Settle::Rabbit(finisher), Job::Rabbit(job)) => {
                if let Err(e) = finisher.finish(job, outcome).await {
                    tracing::warn!(error = %e, "could not settle a notification; RabbitMQ will hand it out again");
                }
            }
            _ => unreachable!("a job is settled by the source it came from"),
        }
    }

    /// Whether this store re-schedules a returning user's notifications itself (embedded:
    /// `wake_user`), so the worker keeps no inbox of them.
    fn wakes_users(&self) -> bool {
        matches!(self, Settle::Embedded(_))
    }

    /// A fast-path ack: drop the stored copy now where the store allows it.
    fn forget(&self, notification: &Notification) {
        if let Settle::Embedded(lane) = self {
            lane.finish(notification.nid.clone(), Outcome::Delivered);
        }
    }
}

#[derive(Default)]
struct State {
    /// `user/nid` → who waits for its ack.
    waiting: RefCell<HashMap<String, oneshot::Sender<()>>>,
    /// `user/nid` → accepted-at (unix ms) of the tries running now.
    trying: RefCell<HashMap<String, u64>>,
    acked: RefCell<(HashSet<String>, VecDeque<String>)>,
    /// user → nid → the notification as it waits for its next try.
    inbox: RefCell<HashMap<String, HashMap<String, Notification>>>,
    inbox_len: Cell<usize>,
}

fn key(user: &str, nid: &str) -> String {
    format!("{user}/{nid}")
}

impl State {
    fn was_acked(&self, n: &Notification) -> bool {
        self.acked.borrow().0.contains(&key(&n.user, &n.nid))
    }

    /// Returns true the first time this `user/nid` is acked.
    fn mark_acked(&self, key: String) -> bool {
        let mut acked = self.acked.borrow_mut();
        let (set, order) = &mut *acked;
        if !set.insert(key.clone()) {
            return false;
        }
        order.push_back(key);
        while order.len() > ACKED_REMEMBERED_MAX {
            if let Some(old) = order.pop_front() {
                set.remove(&old);
            }
        }
        true
    }

    fn inbox_put(&self, n: &Notification) -> bool {
        let mut inbox = self.inbox.borrow_mut();
        let exists = inbox.get(&n.user).is_some_and(|m| m.contains_key(&n.nid));
        if !exists && self.inbox_len.get() >= INBOX_NOTIFICATIONS_MAX {
            return false;
        }
        if inbox.entry(n.user.clone()).or_default().insert(n.nid.clone(), n.clone()).is_none() {
            self.inbox_len.set(self.inbox_len.get() + 1);
        }
        true
    }

    fn inbox_take(&self, user: &str, nid: &str) -> Option<Notification> {
        let mut inbox = self.inbox.borrow_mut();
        let per_user = inbox.get_mut(user)?;
        let taken = per_user.remove(nid);
        if per_user.is_empty() {
            inbox.remove(user);
        }
        if taken.is_some() {
            self.inbox_len.set(self.inbox_len.get() - 1);
        }
        taken
    }
}

pub struct Worker {
    config: LaneConfig,
    source: Option<Source>,
    settle: Settle,
    frames: Rc<FrameSink>,
    online: OnlineCheck,
    events: mpsc::Receiver<WorkerEvent>,
    metrics: Arc<LaneMetrics>,
    state: Rc<State>,
    /// RabbitMQ with `--redis`: the fast path's inbox shared by every worker ([`super::inbox`]).
    shared: Option<Rc<super::inbox::RedisInbox>>,
}

impl Worker {
    pub fn new(config: LaneConfig, source: Source, frames: FrameSink, online: OnlineCheck, events: mpsc::Receiver<WorkerEvent>, metrics: Arc<LaneMetrics>) -> Worker {
        let settle = match &source {
            Source::Embedded(lane) => Settle::Embedded(lane.clone()),
            Source::Rabbit(rabbit) => Settle::Rabbit(rabbit.finisher()),
        };
        Worker { config, source: Some(source), settle, frames: Rc::new(frames), online, events, metrics, state: Rc::new(State::default()), shared: None }
    }

    /// Keeps the online fast path's inbox in Redis too (RabbitMQ only: the embedded store
    /// wakes users itself), so a returning user gets notifications another worker, or this
    /// one before a restart, scheduled for retry.
    pub fn with_shared_inbox(mut self, inbox: super::inbox::RedisInbox) -> Worker {
        if matches!(self.settle, Settle::Rabbit(_)) {
            self.shared = Some(Rc::new(inbox));
        }
        self
    }

    /// Runs until the event channel closes (the gateway or worker is stopping).
    pub async fn run(mut self) {
        let slots = Arc::new(Semaphore::new(self.config.in_flight));
        let source = self.source.take().expect("a worker runs once");
        match &source {
            Source::Embedded(lane) => drop(tokio::task::spawn_local(report_embedded_stats(lane.clone(), self.metrics.clone()))),
            Source::Rabbit(rabbit) => drop(tokio::task::spawn_local(report_rabbit_stats(rabbit.queued(), self.state.clone(), self.metrics.clone()))),
        }
        // Due work is fetched by its own task, never inside the `select!` below: a lease
        // abandoned half way (an ack arriving while the store answers) would leave the
        // leased notifications stranded until the lease ran out (ack timeout + margin).
        let (jobs_tx, mut jobs_rx) = mpsc::channel(1);
        let feeder = tokio::task::spawn_local(feed(source, slots, self.config.ack_timeout + LEASE_MARGIN, jobs_tx));
        loop {
            tokio::select! {
                event = self.events.recv() => match event {
                    Some(event) => self.on_event(event).await,
                    None => break,
                },
                batch = jobs_rx.recv() => {
                    let Some(batch) = batch else { break };
                    for (job, permit) in batch {
                        let task = Delivery {
                            config: self.config.clone(),
                            settle: self.settle.clone(),
                            frames: self.frames.clone(),
                            online: self.online.clone(),
                            metrics: self.metrics.clone(),
                            state: self.state.clone(),
                            shared: self.shared.clone(),
                        };
                        tokio::task::spawn_local(async move {
                            task.run(job).await;
                            drop(permit);
                        });
                    }
                }
            }
        }
        feeder.abort();
    }

    async fn on_event(&mut self, event: WorkerEvent) {
        match event {
            WorkerEvent::Ack { user, nid } => {
                LaneMetrics::inc(&self.metrics.acks);
                let key = key(&user, &nid);
                if let Some(waiter) = self.state.waiting.borrow_mut().remove(&key) {
                    let _ = waiter.send(());
                    return;
                }
                let held = self.state.inbox_take(&user, &nid);
                // Every worker hears every ack; the one whose removal from the shared inbox
                // took effect counts the delivery (or, without Redis, the one that held it).
                let removed = match &self.shared {
                    Some(inbox) => inbox.remove(&user, &nid).await,
                    None => None,
                };
                if self.state.mark_acked(key) {
                    if removed == Some(true) || (removed.is_none() && held.is_some()) {
                        LaneMetrics::inc(&self.metrics.delivered);
                    }
                    if let Some(n) = held {
                        self.settle.forget(&n);
                    }
                }
            }
            WorkerEvent::Online { user } => {
                if let Settle::Embedded(lane) = &self.settle {
                    lane.wake_user(&user);
                    return;
                }
                let shared = match &self.shared {
                    Some(inbox) => inbox.wake(&user, super::now_ms()).await,
                    None => None,
                };
                let held: Vec<Notification> = match shared {
                    Some(held) => held,
                    None => self.state.inbox.borrow().get(&user).map(|m| m.values().cloned().collect()).unwrap_or_default(),
                };
                for n in held {
                    if self.frames.send(&n).await {
                        LaneMetrics::inc(&self.metrics.frames_sent);
                    }
                }
            }
        }
    }
}

/// Hands due work to the worker, each job with its delivery slot: at most `in_flight`
/// tries run at once, and a full worker leaves work in the queue.
async fn feed(mut source: Source, slots: Arc<Semaphore>, lease: Duration, out: mpsc::Sender<Vec<(Job, OwnedSemaphorePermit)>>) {
    loop {
        let Ok(first) = slots.clone().acquire_owned().await else { return };
        // Only this task takes permits, so the free count can only grow until the batch is
        // handed over.
        let free = 1 + slots.available_permits();
        let jobs = next_jobs(&mut source, free, lease).await;
        let mut spare = Some(first);
        let mut batch = Vec::with_capacity(jobs.len());
        for job in jobs {
            let permit = match spare.take() {
                Some(permit) => permit,
                None => match slots.clone().acquire_owned().await {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
            };
            batch.push((job, permit));
        }
        if out.send(batch).await.is_err() {
            return;
        }
    }
}

/// Waits for up to `free` due jobs.
async fn next_jobs(source: &mut Source, free: usize, lease: Duration) -> Vec<Job> {
    match source {
        Source::Rabbit(rabbit) => match rabbit.next().await {
            Some(job) => vec![Job::Rabbit(job)],
            None => std::future::pending().await,
        },
        Source::Embedded(lane) => loop {
            match lane.lease(free, lease).await {
                Ok(leased) if !leased.notifications.is_empty() => return leased.notifications.into_iter().map(Job::Embedded).collect(),
                Ok(leased) => {
                    let now = super::now_ms();
                    let wait = leased.next_due_ms.map_or(EMBEDDED_POLL_MAX, |due| Duration::from_millis(due.saturating_sub(now))).min(EMBEDDED_POLL_MAX);
                    let _ = tokio::time::timeout(wait, lane.work_added.notified()).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the lane store");
                    tokio::time::sleep(EMBEDDED_POLL_MAX).await;
                }
            }
        },
    }
}

async fn report_embedded_stats(lane: EmbeddedLane, metrics: Arc<LaneMetrics>) {
    loop {
        if let Ok(stats) = lane.stats().await {
            metrics.pending.store(stats.pending, Ordering::Relaxed);
            metrics.parked.store(stats.parked, Ordering::Relaxed);
            metrics.oldest_pending_ms.store(stats.oldest_ms.unwrap_or(0), Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// RabbitMQ: pending is what waits in the queues (RabbitMQ's count) plus the tries in
/// flight here; the oldest pending is the oldest this worker knows of (its in-flight tries
/// and the notifications it holds for the online fast path): with several workers each
/// reports its own view, and the gauge's maximum over workers is the figure to watch.
async fn report_rabbit_stats(queued: Rc<Cell<Option<super::rabbitmq::Queued>>>, state: Rc<State>, metrics: Arc<LaneMetrics>) {
    loop {
        let in_flight = metrics.in_flight.load(Ordering::Relaxed);
        if let Some(queued) = queued.get() {
            metrics.pending.store(queued.total + in_flight, Ordering::Relaxed);
            metrics.parked.store(queued.parked, Ordering::Relaxed);
        }
        let oldest = {
            let inbox = state.inbox.borrow();
            let held = inbox.values().flat_map(|per_user| per_user.values()).map(|n| n.ts).min();
            let trying = state.trying.borrow().values().copied().min();
            held.into_iter().chain(trying).min()
        };
        metrics.oldest_pending_ms.store(oldest.unwrap_or(0), Ordering::Relaxed);
        tokio::time::sleep(super::rabbitmq::QUEUE_STATS_INTERVAL).await;
    }
}

/// One try of one notification.
struct Delivery {
    config: LaneConfig,
    settle: Settle,
    frames: Rc<FrameSink>,
    online: OnlineCheck,
    metrics: Arc<LaneMetrics>,
    state: Rc<State>,
    shared: Option<Rc<super::inbox::RedisInbox>>,
}

impl Delivery {
    async fn run(self, job: Job) {
        let n = job.notification().clone();
        let key = key(&n.user, &n.nid);
        self.state.trying.borrow_mut().insert(key.clone(), n.ts);
        self.try_job(job, n).await;
        self.state.trying.borrow_mut().remove(&key);
    }

    /// One look at a due notification. An attempt is an online try only: the frame went
    /// out while its user was known online (or could not be known offline, see
    /// [`OnlineCheck::Unknown`]) and no ack came within `ack_timeout`. A user known to be
    /// offline costs no attempt: the notification is parked ([`Delivery::park`]).
    async fn try_job(&self, job: Job, n: Notification) {
        let now = super::now_ms();
        // This copy supersedes the one held for the fast path (a first try was never held).
        self.state.inbox_take(&n.user, &n.nid);
        if let Some(inbox) = self.shared.as_ref().filter(|_| n.attempts > 0 || n.parked > 0) {
            inbox.remove(&n.user, &n.nid).await;
        }
        if self.state.was_acked(&n) {
            return self.settle.finish(job, Outcome::Delivered).await;
        }
        if n.expires <= now {
            return self.dead(job, n, "expired (ttl passed)".into()).await;
        }
        if !self.online.is_online(&n.user).await {
            return self.park(job, n, now).await;
        }
        if self.try_once(&n).await {
            LaneMetrics::inc(&self.metrics.delivered);
            return self.settle.finish(job, Outcome::Delivered).await;
        }
        let first_miss = n.attempts == 0 && n.parked == 0;
        let mut next = n;
        next.attempts += 1;
        if next.attempts >= self.config.max_attempts {
            let reason = format!("attempts exhausted ({} of {})", next.attempts, self.config.max_attempts);
            return self.dead(job, next, reason).await;
        }
        let delay = self.config.backoff.delay(next.attempts, fastrand::f64());
        self.hold(&next, now).await;
        if first_miss {
            self.post_webhook(&next);
        }
        LaneMetrics::inc(&self.metrics.retried);
        self.settle.finish(job, Outcome::Retry { notification: next, delay }).await;
    }

    /// The user is offline: keep the notification, without counting an attempt, until
    /// they subscribe to `user.{id}` again (the online fast path: the embedded store's
    /// `wake_user`, or the inbox this puts it in) or `min(lane_park_max, time left)` passes
    /// and it is looked at again (expired by then: dead-lettered as expired). Nothing runs
    /// while it waits.
    async fn park(&self, job: Job, n: Notification, now: u64) {
        let first_miss = n.attempts == 0 && n.parked == 0;
        let mut parked = n;
        parked.parked += 1;
        let left = Duration::from_millis(parked.expires.saturating_sub(now));
        let delay = self.config.park_max.min(left);
        self.hold(&parked, now).await;
        if first_miss {
            self.post_webhook(&parked);
        }
        LaneMetrics::inc(&self.metrics.parked_total);
        self.settle.finish(job, Outcome::Park { notification: parked.clone(), delay }).await;
        // The user may have subscribed between the check and the park, when the fast path
        // could not see the notification yet: look once more.
        if self.online.is_online(&parked.user).await {
            match &self.settle {
                Settle::Embedded(lane) => lane.wake_user(&parked.user),
                Settle::Rabbit(_) => {
                    if self.frames.send(&parked).await {
                        LaneMetrics::inc(&self.metrics.frames_sent);
                    }
                }
            }
        }
    }

    /// Holds `n` for the online fast path (RabbitMQ: the embedded store wakes users itself).
    async fn hold(&self, n: &Notification, now: u64) {
        if !self.settle.wakes_users() && !self.state.inbox_put(n) {
            LaneMetrics::inc(&self.metrics.inbox_full);
        }
        if let Some(inbox) = &self.shared {
            if inbox.put(n, now).await == Some(false) {
                LaneMetrics::inc(&self.metrics.inbox_full);
            }
        }
    }

    /// The push fallback, once per notification: after its first try that did not deliver
    /// it (an unacked frame or an offline user).
    fn post_webhook(&self, n: &Notification) {
        if let Some(webhook) = &self.config.webhook {
            tokio::task::spawn_local(super::webhook::post(webhook.clone(), n.clone(), self.config.backoff.clone(), self.config.max_attempts, self.metrics.clone()));
        }
    }

    async fn dead(&self, job: Job, notification: Notification, reason: String) {
        self.state.inbox_take(&notification.user, &notification.nid);
        if let Some(inbox) = &self.shared {
            inbox.remove(&notification.user, &notification.nid).await;
        }
        LaneMetrics::inc(&self.metrics.dead_lettered);
        tracing::info!(nid = %notification.nid, user = %notification.user, %reason, "notification dead-lettered");
        self.settle.finish(job, Outcome::Dead { record: DeadRecord { notification, reason } }).await;
    }

    /// Sends the frame and waits for its ack; true when acked in time.
    async fn try_once(&self, n: &Notification) -> bool {
        let key = key(&n.user, &n.nid);
        let (tx, rx) = oneshot::channel();
        self.state.waiting.borrow_mut().insert(key.clone(), tx);
        if !self.frames.send(n).await {
            self.state.waiting.borrow_mut().remove(&key);
            return false;
        }
        LaneMetrics::inc(&self.metrics.frames_sent);
        self.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
        let acked = tokio::time::timeout(self.config.ack_timeout, rx).await.is_ok_and(|r| r.is_ok());
        self.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.state.waiting.borrow_mut().remove(&key);
        if acked {
            self.state.mark_acked(key);
        }
        acked
    }
}
