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
//! Runs on: the bridge thread (one multiplexed connection: concurrent requests pipeline).

use ::redis::aio::MultiplexedConnection;
use ::redis::AsyncConnectionConfig;
use std::cell::Cell;
use std::time::Duration;

/// How long a claim holds a `nid` while its request persists it: well above
/// [`super::LANE_REPLY_TIMEOUT`] (5 s), so a live request never loses its claim. It is
/// also the longest a resend waits (409s) after a node died mid-accept.
pub const CLAIM_MS: u64 = 15_000;
/// Redis connect and response timeouts: a slow Redis must not hold `/api/notify` (it
/// falls back to node-local idempotency instead).
const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_millis(1_000);
const REDIS_RESPONSE_TIMEOUT: Duration = Duration::from_millis(1_000);

/// Sets the claim unless the key exists; returns the existing value, or nil if it set it.
const CLAIM_SCRIPT: &str = "local v = redis.call('GET', KEYS[1]) if v then return v end \
                            redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return false";
/// Deletes the key only while it still holds this request's claim.
const RELEASE_SCRIPT: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

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

pub struct SharedNids {
    client: ::redis::Client,
    prefix: String,
    node: String,
    con: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    /// Logged that Redis is unreachable; cleared when it answers again.
    down_logged: Cell<bool>,
}

impl SharedNids {
    pub fn new(url: &str, lane_prefix: &str, node: &str) -> Result<SharedNids, String> {
        let client = ::redis::Client::open(url).map_err(|e| format!("bad Redis URL: {e}"))?;
        Ok(SharedNids { client, prefix: lane_prefix.to_owned(), node: node.to_owned(), con: tokio::sync::Mutex::new(None), down_logged: Cell::new(false) })
    }

    pub fn key(&self, nid: &str) -> String {
        format!("{}:nid:{nid}", self.prefix)
    }

    async fn connection(&self) -> Result<MultiplexedConnection, ::redis::RedisError> {
        let mut slot = self.con.lock().await;
        if let Some(con) = slot.as_ref() {
            return Ok(con.clone());
        }
        let config = AsyncConnectionConfig::new().set_connection_timeout(Some(REDIS_CONNECT_TIMEOUT)).set_response_timeout(Some(REDIS_RESPONSE_TIMEOUT));
        let con = self.client.get_multiplexed_async_connection_with_config(&config).await?;
        *slot = Some(con.clone());
        Ok(con)
    }

    /// Notes a Redis failure (drops the connection, logs once per outage).
    async fn failed(&self, error: &::redis::RedisError) {
        *self.con.lock().await = None;
        if !self.down_logged.replace(true) {
            tracing::warn!(%error, "Redis unreachable: nid idempotency is node-local until it answers again");
        }
    }

    fn answered(&self) {
        if self.down_logged.replace(false) {
            tracing::info!("Redis answers again: nid idempotency is shared across nodes");
        }
    }

    /// Claims `nid` for this request. `Err` means Redis did not answer (the caller goes on
    /// with node-local idempotency).
    pub async fn claim(&self, nid: &str) -> Result<Claim, ()> {
        let token = format!("p:{}:{:016x}", self.node, fastrand::u64(..));
        let result = async {
            let mut con = self.connection().await?;
            ::redis::cmd("EVAL").arg(CLAIM_SCRIPT).arg(1).arg(self.key(nid)).arg(&token).arg(CLAIM_MS).query_async::<Option<String>>(&mut con).await
        }
        .await;
        match result {
            Ok(None) => {
                self.answered();
                Ok(Claim::Mine(token))
            }
            Ok(Some(value)) => {
                self.answered();
                Ok(if value == DONE { Claim::Done } else { Claim::Busy })
            }
            Err(error) => {
                self.failed(&error).await;
                Err(())
            }
        }
    }

    /// The broker confirmed: `nid` is taken until `expires` (unix ms), the notification's
    /// own end. A failure leaves the claim to expire (a later resend is then a duplicate).
    pub async fn done(&self, nid: &str, expires: u64, now: u64) {
        let ttl_ms = expires.saturating_sub(now).max(1);
        let result = async {
            let mut con = self.connection().await?;
            ::redis::cmd("SET").arg(self.key(nid)).arg(DONE).arg("PX").arg(ttl_ms).exec_async(&mut con).await
        }
        .await;
        match result {
            Ok(()) => self.answered(),
            Err(error) => self.failed(&error).await,
        }
    }

    /// Persisting failed: give the `nid` back at once so the caller's resend is not held.
    pub async fn release(&self, nid: &str, token: &str) {
        let result = async {
            let mut con = self.connection().await?;
            ::redis::cmd("EVAL").arg(RELEASE_SCRIPT).arg(1).arg(self.key(nid)).arg(token).query_async::<i64>(&mut con).await
        }
        .await;
        if let Err(error) = result {
            self.failed(&error).await;
        }
    }
}
