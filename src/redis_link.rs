//! The one way ringcast connects to Redis: a client opened from a URL, one multiplexed
//! connection made lazily with the same connect and response deadlines for every user
//! (presence reader and writer, the Lane's shared inbox and nid claims), shared by
//! cloning, and dropped on an error so the next call connects again.
//!
//! Owns: the Redis connection settings. Must not touch: keys or commands (each user owns
//! its own). Runs on: any tokio runtime.

use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncConnectionConfig, RedisError};
use std::time::Duration;

/// Time to establish a Redis connection before the attempt counts as failed.
pub const REDIS_CONNECT_TIMEOUT_MS: u64 = 1_000;
/// Time one command or pipeline may take before the link is declared down.
pub const REDIS_RESPONSE_TIMEOUT_MS: u64 = 2_000;

/// A Redis client and its current connection (none until first needed or after an error).
pub struct RedisLink {
    client: ::redis::Client,
    con: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    response_timeout: Duration,
}

impl RedisLink {
    /// A link to `url` whose commands may take up to `response_timeout`
    /// ([`REDIS_RESPONSE_TIMEOUT_MS`] unless a user needs an earlier answer). Connects on
    /// first use; the error is a bad URL.
    pub fn open(url: &str, response_timeout: Duration) -> Result<RedisLink, String> {
        let client = ::redis::Client::open(url).map_err(|e| format!("bad Redis URL: {e}"))?;
        Ok(RedisLink { client, con: tokio::sync::Mutex::new(None), response_timeout })
    }

    /// The current connection, or a new one.
    pub async fn connection(&self) -> Result<MultiplexedConnection, RedisError> {
        let mut slot = self.con.lock().await;
        if let Some(con) = slot.as_ref() {
            return Ok(con.clone());
        }
        let con = self.connect().await?;
        *slot = Some(con.clone());
        Ok(con)
    }

    /// A connection of its own, not shared with other callers (a writer that pipelines).
    pub async fn connect(&self) -> Result<MultiplexedConnection, RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(REDIS_CONNECT_TIMEOUT_MS)))
            .set_response_timeout(Some(self.response_timeout));
        self.client.get_multiplexed_async_connection_with_config(&config).await
    }

    /// Forgets the current connection after an error: the next call connects again.
    pub async fn reset(&self) {
        *self.con.lock().await = None;
    }
}
