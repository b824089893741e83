//! Idempotency on `nid` across gateway nodes (RabbitMQ Lane with `--redis`): one Redis key
//! per accepted `nid`, shared by every node, so a backend that resends a notification to
//! another node (its first node died, a load balancer picked another) does not enqueue it
//! twice.
//!
//! A bare "seen" mark (`SET NX`) is not crash-safe: a node that dies between the mark and
//! the broker's confirm would turn the caller's resend into a false duplicate, and the
//! notification would be lost. So the key has two states:
//! - `p:{node}:{token}` with a short expiry ([`CLAIM_MS`]) while one request persists it;
//!   another request for that `nid` is answered 409 with Retry-After (resend later);
//! - `done`, kept until the notification's own expiry, once the broker confirmed it.
//!
//! A claim whose node died expires by itself, and the resend is then accepted: nothing
//! is lost. A failed publish deletes its own claim at once (compare-and-delete). If the
//! final `SET done` fails (Redis went down in between), the claim expires and a resend
//! is enqueued again: a duplicate, which at-least-once allows, never a loss.
//!
//! Redis down: the node accepts with its own memory of `nid`s only (counted in
//! `ringcast_lane_dedupe_unshared_total`, logged once per outage). Availability of
//! `/api/notify` never depends on Redis.
//!
//! Concurrent accepts share their Redis round trips: claims that wait go out together in
//! one script call (up to [`NIDS_PER_CALL_MAX`]), and so do `done` marks.
//!
//! Runs on: the bridge thread (one multiplexed connection).

use ::redis::aio::MultiplexedConnection;
use crate::redis_link::RedisLink;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

/// How long a claim holds a `nid` while its request persists it: well above
/// [`super::LANE_REPLY_TIMEOUT`] (5 s), so a live request never loses its claim. It is
/// also the longest a resend waits (409s) after a node died mid-accept.
pub const CLAIM_MS: u64 = 15_000;
/// Redis connect and response timeouts: a slow Redis must not hold `/api/notify` (it
/// falls back to node-local idempotency instead).
const REDIS_RESPONSE_TIMEOUT: Duration = Duration::from_millis(1_000);

/// Claims every key (KEYS[i] with token ARGV[i], expiry ARGV[#KEYS + 1] ms) that does
/// not exist; returns, per key, '' when this call set it, else the value it found.
const CLAIM_MANY_SCRIPT: &str = "local out = {} local ms = ARGV[#KEYS + 1] \
                                 for i, k in ipairs(KEYS) do \
                                   local v = redis.call('GET', k) \
                                   if v then out[i] = v else redis.call('SET', k, ARGV[i], 'PX', ms) out[i] = '' end \
                                 end return out";
/// Marks every key `done` (KEYS[i] kept for ARGV[i] ms).
const DONE_MANY_SCRIPT: &str = "for i, k in ipairs(KEYS) do redis.call('SET', k, 'done', 'PX', ARGV[i]) end return #KEYS";
/// Deletes the key only while it still holds this request's claim.
const RELEASE_SCRIPT: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";
/// Claims (or `done` marks) sent to Redis in one script call at most: concurrent accepts
/// share a round trip, as they share a RabbitMQ envelope.
pub const NIDS_PER_CALL_MAX: usize = 256;
/// Script calls of each kind waiting for Redis at once.
const CALLS_IN_FLIGHT: usize = 4;

pub const DONE: &str = "done";

/// What the shared store says about a `nid`.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// This request holds it now: persist, then [`SharedNids::done`].
    Mine(String),
    /// Accepted before (within its TTL).
    Done,
    /// Another request (on any node) is persisting it right now.
    Busy,
}

struct Pending<T, R> {
    item: T,
    reply: tokio::sync::oneshot::Sender<Result<R, ()>>,
}

/// Requests waiting for the next script call.
/// At most `max` (`--lane-waiting`); past it a request is answered `Err` at once (the
/// accept goes on with node-local idempotency, counted like a Redis outage).
struct Waiting<T, R> {
    items: RefCell<Vec<Pending<T, R>>>,
    wake: tokio::sync::Notify,
    max: usize,
}

impl<T, R> Waiting<T, R> {
    fn new(max: usize) -> Self {
        Waiting { items: RefCell::new(Vec::new()), wake: tokio::sync::Notify::new(), max }
    }

    async fn push(&self, item: T) -> Result<R, ()> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        {
            let mut items = self.items.borrow_mut();
            if items.len() >= self.max {
                return Err(());
            }
            items.push(Pending { item, reply });
        }
        self.wake.notify_one();
        answer.await.unwrap_or(Err(()))
    }

    async fn next_batch(&self) -> Vec<Pending<T, R>> {
        loop {
            {
                let mut items = self.items.borrow_mut();
                if !items.is_empty() {
                    let n = items.len().min(NIDS_PER_CALL_MAX);
                    return items.drain(..n).collect();
                }
            }
            self.wake.notified().await;
        }
    }
}

struct Inner {
    link: RedisLink,
    prefix: String,
    /// Logged that Redis is unreachable; cleared when it answers again.
    down_logged: Cell<bool>,
    /// nid and token.
    claims: Waiting<(String, String), Claim>,
    /// nid and keep-for ms.
    dones: Waiting<(String, u64), ()>,
}

pub struct SharedNids {
    inner: Rc<Inner>,
    node: String,
    /// The two batching tasks run (started on first use, on the caller's LocalSet).
    started: Cell<bool>,
}

impl SharedNids {
    /// `waiting_max`: claims (and `done` marks) waiting for a call at most.
    pub fn new(url: &str, lane_prefix: &str, node: &str, waiting_max: usize) -> Result<SharedNids, String> {
        let inner = Inner {
            link: RedisLink::open(url, REDIS_RESPONSE_TIMEOUT)?,
            prefix: lane_prefix.to_owned(),
            down_logged: Cell::new(false),
            claims: Waiting::new(waiting_max),
            dones: Waiting::new(waiting_max),
        };
        Ok(SharedNids { inner: Rc::new(inner), node: node.to_owned(), started: Cell::new(false) })
    }

    pub fn key(&self, nid: &str) -> String {
        self.inner.key(nid)
    }

    fn start(&self) {
        if !self.started.replace(true) {
            tokio::task::spawn_local(run_calls(self.inner.clone(), |inner| &inner.claims, claim_call));
            tokio::task::spawn_local(run_calls(self.inner.clone(), |inner| &inner.dones, done_call));
        }
    }

    /// Claims `nid` for this request. `Err` means Redis did not answer (the caller goes on
    /// with node-local idempotency).
    pub async fn claim(&self, nid: &str) -> Result<Claim, ()> {
        self.start();
        let token = format!("p:{}:{:016x}", self.node, fastrand::u64(..));
        self.inner.claims.push((nid.to_owned(), token)).await
    }

    /// The broker confirmed: `nid` is taken until `expires` (unix ms), the notification's
    /// own end. A failure leaves the claim to expire (a later resend is then a duplicate).
    pub async fn done(&self, nid: &str, expires: u64, now: u64) {
        self.start();
        let _ = self.inner.dones.push((nid.to_owned(), expires.saturating_sub(now).max(1))).await;
    }

    /// Persisting failed: give the `nid` back at once so the caller's resend is not held.
    pub async fn release(&self, nid: &str, token: &str) {
        let inner = &self.inner;
        let result = async {
            let mut con = inner.connection().await?;
            ::redis::cmd("EVAL").arg(RELEASE_SCRIPT).arg(1).arg(inner.key(nid)).arg(token).query_async::<i64>(&mut con).await
        }
        .await;
        if let Err(error) = result {
            inner.failed(&error).await;
        }
    }
}

impl Inner {
    fn key(&self, nid: &str) -> String {
        format!("{}:nid:{nid}", self.prefix)
    }

    async fn connection(&self) -> Result<MultiplexedConnection, ::redis::RedisError> {
        self.link.connection().await
    }

    /// Notes a Redis failure (drops the connection, logs once per outage).
    async fn failed(&self, error: &::redis::RedisError) {
        self.link.reset().await;
        if !self.down_logged.replace(true) {
            tracing::warn!(%error, "Redis unreachable: nid idempotency is node-local until it answers again");
        }
    }

    fn answered(&self) {
        if self.down_logged.replace(false) {
            tracing::info!("Redis answers again: nid idempotency is shared across nodes");
        }
    }
}

/// Sends what waits in `pick(inner)`, up to [`NIDS_PER_CALL_MAX`] per script call and
/// [`CALLS_IN_FLIGHT`] calls at once; `call` makes one call and answers its batch.
async fn run_calls<T: 'static, R: 'static, Fut: std::future::Future<Output = ()> + 'static>(
    inner: Rc<Inner>,
    pick: fn(&Inner) -> &Waiting<T, R>,
    call: fn(Rc<Inner>, Vec<Pending<T, R>>) -> Fut,
) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(CALLS_IN_FLIGHT));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let batch = pick(&inner).next_batch().await;
        let answered = call(inner.clone(), batch);
        tokio::task::spawn_local(async move {
            answered.await;
            drop(permit);
        });
    }
}

/// `EVAL script` over a batch of (nid, argument): every nid's key, then every argument.
fn eval_many<'a, A: ::redis::ToRedisArgs>(inner: &Inner, script: &str, batch: impl Iterator<Item = (&'a str, A)> + Clone) -> ::redis::Cmd {
    let mut call = ::redis::cmd("EVAL");
    call.arg(script).arg(batch.clone().count());
    for (nid, _) in batch.clone() {
        call.arg(inner.key(nid));
    }
    for (_, argument) in batch {
        call.arg(argument);
    }
    call
}

/// One claim-many call for a batch of (nid, token).
async fn claim_call(inner: Rc<Inner>, batch: Vec<Pending<(String, String), Claim>>) {
    let result = async {
        let mut con = inner.connection().await?;
        let mut call = eval_many(&inner, CLAIM_MANY_SCRIPT, batch.iter().map(|p| (p.item.0.as_str(), &p.item.1)));
        call.arg(CLAIM_MS).query_async::<Vec<String>>(&mut con).await
    }
    .await;
    match result {
        Ok(values) if values.len() == batch.len() => {
            inner.answered();
            for (p, value) in batch.into_iter().zip(values) {
                let claim = if value.is_empty() {
                    Claim::Mine(p.item.1)
                } else if value == DONE {
                    Claim::Done
                } else {
                    Claim::Busy
                };
                let _ = p.reply.send(Ok(claim));
            }
        }
        other => {
            if let Err(error) = &other {
                inner.failed(error).await;
            }
            for p in batch {
                let _ = p.reply.send(Err(()));
            }
        }
    }
}

/// One done-many call for a batch of (nid, keep-for ms).
async fn done_call(inner: Rc<Inner>, batch: Vec<Pending<(String, u64), ()>>) {
    let result = async {
        let mut con = inner.connection().await?;
        eval_many(&inner, DONE_MANY_SCRIPT, batch.iter().map(|p| (p.item.0.as_str(), p.item.1))).query_async::<i64>(&mut con).await
    }
    .await;
    let answer = match result {
        Ok(_) => {
            inner.answered();
            Ok(())
        }
        Err(error) => {
            inner.failed(&error).await;
            Err(())
        }
    };
    for p in batch {
        let _ = p.reply.send(answer);
    }
}
