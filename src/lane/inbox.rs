//! The online fast path's inbox in Redis (RabbitMQ Lane with `--redis`): per user, the
//! notifications waiting in a retry queue, so that when the user comes back the worker
//! sends them at once instead of at the next backoff tick, whichever worker scheduled the
//! retry and even if that worker has restarted since.
//!
//! Keys (under `--lane-prefix`): `{p}:inbox:{user}`, a hash `nid` → notification JSON,
//! expiring with its latest notification; `{p}:wake:{user}`, a short hold ([`WAKE_HOLD_MS`])
//! taken by the one worker that answers a user's online event, so several workers do not
//! all send the same frames.
//!
//! The inbox is a copy: every notification in it is also in a retry queue, so a lost or
//! full inbox only means the user waits for the backoff tick. Redis unreachable: the
//! worker uses its own in-memory inbox (what it scheduled itself) and tries Redis again
//! after [`RETRY_AFTER`].
//!
//! Runs on: the worker's tokio current-thread runtime (one multiplexed connection).

use super::Notification;
use ::redis::aio::MultiplexedConnection;
use crate::redis_link::RedisLink;
use std::cell::Cell;
use std::time::{Duration, Instant};

/// How long one worker holds a user's wake-up (the others skip that online event).
pub const WAKE_HOLD_MS: u64 = 1_000;
/// After a Redis error, the worker goes without the shared inbox for this long.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);
const REDIS_RESPONSE_TIMEOUT: Duration = Duration::from_millis(1_000);

/// KEYS[1] inbox; ARGV nid, json, per-user max, keep-for ms. 1 = held, 0 = full.
const PUT_SCRIPT: &str = "if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end \
                          redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) \
                          if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[4]) then redis.call('PEXPIRE', KEYS[1], ARGV[4]) end \
                          return 1";

pub struct RedisInbox {
    link: RedisLink,
    prefix: String,
    /// Set after an error: Redis is skipped until then.
    down_until: Cell<Option<Instant>>,
    /// Notifications held per user (`--lane-inbox-per-user`); past it a returning user waits
    /// for the next backoff tick for the rest (`ringcast_lane_inbox_full_total`).
    per_user: usize,
}

impl RedisInbox {
    pub fn new(url: &str, lane_prefix: &str, per_user: usize) -> Result<RedisInbox, String> {
        let link = RedisLink::open(url, REDIS_RESPONSE_TIMEOUT)?;
        Ok(RedisInbox { link, prefix: lane_prefix.to_owned(), down_until: Cell::new(None), per_user })
    }

    pub fn inbox_key(&self, user: &str) -> String {
        format!("{}:inbox:{user}", self.prefix)
    }

    fn wake_key(&self, user: &str) -> String {
        format!("{}:wake:{user}", self.prefix)
    }

    /// A connection, or None while Redis is known to be down.
    async fn connection(&self) -> Option<MultiplexedConnection> {
        if let Some(until) = self.down_until.get() {
            if Instant::now() < until {
                return None;
            }
        }
        match self.link.connection().await {
            Ok(con) => {
                if self.down_until.take().is_some() {
                    tracing::info!("Redis answers again: the online fast path's inbox is shared");
                }
                Some(con)
            }
            Err(error) => {
                self.failed(&error).await;
                None
            }
        }
    }

    async fn failed(&self, error: &::redis::RedisError) {
        self.link.reset().await;
        if self.down_until.replace(Some(Instant::now() + RETRY_AFTER)).is_none() {
            tracing::warn!(%error, "Redis unreachable: the online fast path uses this worker's own inbox");
        }
    }

    /// Whether the shared inbox is usable now (false while Redis is down).
    pub async fn available(&self) -> bool {
        self.connection().await.is_some()
    }

    /// Holds `n` until it is delivered, retried or dead. `Some(false)`: the user's inbox is
    /// full; `None`: Redis did not answer.
    pub async fn put(&self, n: &Notification, now_ms: u64) -> Option<bool> {
        let mut con = self.connection().await?;
        let json = serde_json::to_string(n).expect("notifications serialize");
        let keep_ms = n.expires.saturating_sub(now_ms).max(1);
        let result = ::redis::cmd("EVAL")
            .arg(PUT_SCRIPT)
            .arg(1)
            .arg(self.inbox_key(&n.user))
            .arg(&n.nid)
            .arg(json)
            .arg(self.per_user)
            .arg(keep_ms)
            .query_async::<i64>(&mut con)
            .await;
        match result {
            Ok(held) => Some(held == 1),
            Err(error) => {
                self.failed(&error).await;
                None
            }
        }
    }

    /// Drops `user/nid`; `Some(true)` if this call removed it.
    pub async fn remove(&self, user: &str, nid: &str) -> Option<bool> {
        let mut con = self.connection().await?;
        match ::redis::cmd("HDEL").arg(self.inbox_key(user)).arg(nid).query_async::<i64>(&mut con).await {
            Ok(n) => Some(n == 1),
            Err(error) => {
                self.failed(&error).await;
                None
            }
        }
    }

    /// The user is back: if this worker wins the wake-up, their held notifications (not
    /// yet expired). `Some(vec![])` when another worker answers this one; `None`: Redis
    /// did not answer.
    pub async fn wake(&self, user: &str, now_ms: u64) -> Option<Vec<Notification>> {
        let mut con = self.connection().await?;
        let result = async {
            let won: Option<String> = ::redis::cmd("SET").arg(self.wake_key(user)).arg(1).arg("NX").arg("PX").arg(WAKE_HOLD_MS).query_async(&mut con).await?;
            if won.is_none() {
                return Ok(Vec::new());
            }
            let held: Vec<(String, String)> = ::redis::cmd("HGETALL").arg(self.inbox_key(user)).query_async(&mut con).await?;
            Ok::<_, ::redis::RedisError>(held)
        }
        .await;
        match result {
            Ok(held) => Some(
                held.into_iter()
                    .filter_map(|(_, json)| serde_json::from_str::<Notification>(&json).ok())
                    .filter(|n| n.expires > now_ms)
                    .collect(),
            ),
            Err(error) => {
                self.failed(&error).await;
                None
            }
        }
    }
}
