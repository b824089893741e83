//! Presence settings: the `--redis*` and `--presence-*` flags (and TOML keys), shared by
//! `ringcast gateway` and any other subcommand that reads presence (the Lane worker
//! flattens [`PresenceArgs`] and calls [`PresenceConfig::from_values`]).
//!
//! Owns: parsing and validating presence settings. Must not touch: engines. Runs on: main.

use super::value::{error, parse_count, parse_duration, ConfigError};
use clap::Args;
use std::collections::BTreeMap;
use std::time::Duration;

/// Default time a node's presence entries outlive its last heartbeat: a node killed with
/// `kill -9` vanishes from presence within this (the default).
pub const PRESENCE_TTL_MS: u64 = 30_000;
/// Shortest TTL: heartbeats go out every ttl/3, and below this they would be most of
/// the Redis traffic of an idle node.
pub const PRESENCE_TTL_MS_MIN: u64 = 300;
/// Default most presence changes per Redis pipeline: 50,000 connects/s become ~100
/// round trips, and one pipeline stays well under Redis's query buffer limits.
pub const PRESENCE_BATCH_CHANGES: usize = 512;
/// Upper bound for `presence_batch`: a pipeline this large already takes Redis a few ms.
pub const PRESENCE_BATCH_CHANGES_MAX: usize = 65_536;
/// Default longest a change waits for its batch to fill before it is written: short
/// enough that `join` looks instant, long enough to gather a connect burst.
pub const PRESENCE_FLUSH_MS: u64 = 5;
/// Upper bound for `presence_flush`: presence older than this is stale to a human.
pub const PRESENCE_FLUSH_MS_MAX: u64 = 1_000;
/// Default most members a channel may have on this node for its `join`/`leave` frames to
/// be sent: every join is one frame to every presence subscriber, so a channel of n
/// members costs n frames per change (n² for n joins). Past it changes are counted, not
/// sent; members stay listed by `presence`.
pub const PRESENCE_EVENTS_MEMBERS: usize = 1_000;
/// Upper bound for `presence_events_max`.
pub const PRESENCE_EVENTS_MEMBERS_MAX: usize = 1_000_000;
/// Default key prefix in Redis.
pub const REDIS_PREFIX: &str = "rc";

/// The presence seam (Datastore): in-memory by default, Redis for several nodes.
#[derive(Args, Debug, Default, Clone)]
#[command(next_help_heading = "Presence (Redis)")]
pub struct PresenceArgs {
    /// Redis for presence shared by every node, e.g. `redis://127.0.0.1:6379/0`
    /// (`redis://user:pass@host:port/db`). Unset: in-memory presence (one node).
    #[arg(long, env = "RINGCAST_REDIS", value_name = "URL", hide_env_values = true)]
    pub redis: Option<String>,
    /// Key prefix in Redis: keys are `PREFIX:pres:{channel}`, `PREFIX:online:{user}`,
    /// `PREFIX:node:{node}`. [default: rc]
    #[arg(long, env = "RINGCAST_REDIS_PREFIX", value_name = "PREFIX")]
    pub redis_prefix: Option<String>,
    /// A node's presence entries vanish this long after its last heartbeat (kill -9,
    /// network loss); heartbeats go out every third of it (at least every second: they
    /// also check the link). [default: 30s]
    #[arg(long, env = "RINGCAST_PRESENCE_TTL", value_name = "DURATION")]
    pub presence_ttl: Option<String>,
    /// Most presence changes written to Redis in one pipeline (one round trip). [default: 512]
    #[arg(long, env = "RINGCAST_PRESENCE_BATCH", value_name = "N")]
    pub presence_batch: Option<String>,
    /// Longest a presence change waits for its batch to fill before it is written. [default: 5ms]
    #[arg(long, env = "RINGCAST_PRESENCE_FLUSH", value_name = "DURATION")]
    pub presence_flush: Option<String>,
    /// Most members a channel may have on this node and still get `join`/`leave` frames
    /// (each change is a frame to every member: n² frames for n joins); past it changes are
    /// counted in ringcast_presence_events_suppressed_total, and `presence` still lists
    /// everyone. 0: never send them. [default: 1000]
    #[arg(long, env = "RINGCAST_PRESENCE_EVENTS_MAX", value_name = "N")]
    pub presence_events_max: Option<String>,
}

impl PresenceArgs {
    /// (key, value given on the command line or in the environment), as in `config.rs`.
    pub fn given(&self) -> Vec<(&'static str, Option<String>)> {
        vec![
            ("redis", self.redis.clone()),
            ("redis_prefix", self.redis_prefix.clone()),
            ("presence_ttl", self.presence_ttl.clone()),
            ("presence_batch", self.presence_batch.clone()),
            ("presence_flush", self.presence_flush.clone()),
            ("presence_events_max", self.presence_events_max.clone()),
        ]
    }

    /// Flags/environment over `file` (TOML key → text) over defaults.
    pub fn resolve(&self, file: &BTreeMap<String, String>) -> Result<PresenceConfig, ConfigError> {
        let mut values: BTreeMap<&str, String> = BTreeMap::new();
        for (key, given) in self.given() {
            if let Some(value) = given.or_else(|| file.get(key).cloned()) {
                values.insert(key, value);
            }
        }
        PresenceConfig::from_values(&values)
    }
}

/// Validated presence settings.
#[derive(Clone)]
pub struct PresenceConfig {
    /// None: in-memory presence.
    pub redis: Option<RedisConfig>,
    pub ttl: Duration,
    pub batch_changes: usize,
    pub flush: Duration,
    /// `join`/`leave` frames are sent while a channel has at most this many members here.
    pub events_max: usize,
}

#[derive(Clone)]
pub struct RedisConfig {
    pub url: String,
    /// Every key starts with `{prefix}:`.
    pub prefix: String,
}

impl std::fmt::Debug for PresenceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresenceConfig")
            .field("redis", &self.redis.as_ref().map(|r| redact_url(&r.url)))
            .field("prefix", &self.redis.as_ref().map(|r| r.prefix.as_str()))
            .field("ttl", &self.ttl)
            .field("batch_changes", &self.batch_changes)
            .field("flush", &self.flush)
            .field("events_max", &self.events_max)
            .finish()
    }
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig {
            redis: None,
            ttl: Duration::from_millis(PRESENCE_TTL_MS),
            batch_changes: PRESENCE_BATCH_CHANGES,
            flush: Duration::from_millis(PRESENCE_FLUSH_MS),
            events_max: PRESENCE_EVENTS_MEMBERS,
        }
    }
}

/// `redis://user:secret@host` → `redis://user:<redacted>@host`, for logs and Debug.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://<redacted>@{}", &url[..scheme], &url[at + 1..]),
        _ => url.to_owned(),
    }
}


impl PresenceConfig {
    /// Builds from key → text (flags, environment and file already merged).
    pub fn from_values(values: &BTreeMap<&str, String>) -> Result<PresenceConfig, ConfigError> {
        let get = |key: &str| values.get(key).map(String::as_str).filter(|v| !v.is_empty());
        let duration = |key: &str, default_ms: u64| {
            get(key).map_or(Ok(Duration::from_millis(default_ms)), |v| parse_duration(v).map_err(|m| error(key, m)))
        };
        let prefix = get("redis_prefix").unwrap_or(REDIS_PREFIX).to_owned();
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)) {
            return Err(error("redis_prefix", format!("{prefix:?} must be letters, digits, '_', '-' or '.', e.g. rc or acme.rt")));
        }
        let redis = match get("redis") {
            None => None,
            Some(url) => {
                if !(url.starts_with("redis://") || url.starts_with("redis+unix://") || url.starts_with("unix://")) {
                    return Err(error("redis", format!("{:?} is not a Redis URL (write it like redis://127.0.0.1:6379/0)", redact_url(url))));
                }
                if let Err(e) = ::redis::Client::open(url) {
                    return Err(error("redis", format!("{:?} is not a usable Redis URL: {e}", redact_url(url))));
                }
                Some(RedisConfig { url: url.to_owned(), prefix })
            }
        };
        let batch_changes = get("presence_batch").map_or(Ok(PRESENCE_BATCH_CHANGES), |v| parse_count(v).map_err(|m| error("presence_batch", m)))?;
        let events_max = get("presence_events_max").map_or(Ok(PRESENCE_EVENTS_MEMBERS), |v| parse_count(v).map_err(|m| error("presence_events_max", m)))?;
        if events_max > PRESENCE_EVENTS_MEMBERS_MAX {
            return Err(error("presence_events_max", format!("{events_max} is above the maximum {PRESENCE_EVENTS_MEMBERS_MAX}")));
        }
        let config = PresenceConfig { redis, ttl: duration("presence_ttl", PRESENCE_TTL_MS)?, batch_changes, flush: duration("presence_flush", PRESENCE_FLUSH_MS)?, events_max };
        if config.ttl < Duration::from_millis(PRESENCE_TTL_MS_MIN) {
            return Err(error("presence_ttl", format!("{:?} is below the minimum {PRESENCE_TTL_MS_MIN}ms", config.ttl)));
        }
        if !(1..=PRESENCE_BATCH_CHANGES_MAX).contains(&config.batch_changes) {
            return Err(error("presence_batch", format!("{} must be from 1 to {PRESENCE_BATCH_CHANGES_MAX}", config.batch_changes)));
        }
        if config.flush > Duration::from_millis(PRESENCE_FLUSH_MS_MAX) {
            return Err(error("presence_flush", format!("{:?} is above the maximum {PRESENCE_FLUSH_MS_MAX}ms", config.flush)));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(pairs: &[(&'static str, &str)]) -> Result<PresenceConfig, ConfigError> {
        let values: BTreeMap<&str, String> = pairs.iter().map(|(k, v)| (*k, v.to_string())).collect();
        PresenceConfig::from_values(&values)
    }

    #[test]
    fn defaults_and_errors() {
        let c = build(&[]).unwrap();
        assert!(c.redis.is_none());
        assert_eq!(c.ttl, Duration::from_secs(30));
        let c = build(&[("redis", "redis://u:pw@127.0.0.1:6379/0"), ("redis_prefix", "t1.x"), ("presence_ttl", "2s")]).unwrap();
        assert_eq!(c.redis.as_ref().unwrap().prefix, "t1.x");
        assert!(!format!("{c:?}").contains("pw"));
        assert_eq!(build(&[("redis", "http://x")]).unwrap_err().key, "redis");
        assert_eq!(build(&[("redis_prefix", "a b")]).unwrap_err().key, "redis_prefix");
        assert_eq!(build(&[("presence_ttl", "10ms")]).unwrap_err().key, "presence_ttl");
        assert_eq!(build(&[("presence_batch", "0")]).unwrap_err().key, "presence_batch");
        assert_eq!(build(&[("presence_flush", "5s")]).unwrap_err().key, "presence_flush");
    }
}
