//! Node-wide bounds against hostile clients, as data: subscription memory, long-poll
//! sessions, HTTP-phase sockets (the counters that enforce them live in `guard`).
//!
//! Owns: `GuardArgs`, `GuardConfig`, `build`. Must not touch: runtime modules.
use super::value::{error, parse_count, parse_duration, parse_size, ConfigError};
use crate::limits;
use clap::Args;
use std::collections::BTreeMap;
use std::time::Duration;

/// Flags of these bounds, flattened into `ringcast gateway`.
#[derive(Args, Debug, Default)]
#[command(next_help_heading = "Hostile-client bounds")]
pub struct GuardArgs {
    /// Subscriptions (connection, pattern pairs) the whole node holds; past it a `sub`
    /// answers `err` 503. [default: 1000000]
    #[arg(long, env = "RINGCAST_MAX_NODE_SUBSCRIPTIONS", value_name = "N")]
    pub max_node_subscriptions: Option<String>,
    /// Estimated memory of the node's subscription indexes (shard, bridge and NATS copies);
    /// past it a `sub` answers `err` 503. [default: 256MiB]
    #[arg(long, env = "RINGCAST_MAX_SUBSCRIPTION_BYTES", value_name = "SIZE")]
    pub max_subscription_bytes: Option<String>,
    /// Total bytes of the patterns one connection may subscribe to; past it `err` 413.
    /// [default: 64KiB]
    #[arg(long, env = "RINGCAST_MAX_PATTERN_BYTES", value_name = "SIZE")]
    pub max_pattern_bytes: Option<String>,
    /// Subscriptions per anonymous connection (no token) when --jwt-secret is set (with
    /// --allow-anonymous); the lower of this and --max-subscriptions applies. Unset: only
    /// --max-subscriptions (e.g. 64 for readers of a few public channels).
    #[arg(long, env = "RINGCAST_MAX_ANONYMOUS_SUBSCRIPTIONS", value_name = "N")]
    pub max_anonymous_subscriptions: Option<String>,
    /// A long-poll session whose first `GET /poll/{sid}` has not come within this long of
    /// `POST /poll` expires (the lower of this and --poll-timeout applies). [default: 10s]
    #[arg(long, env = "RINGCAST_POLL_OPEN_TIMEOUT", value_name = "DURATION")]
    pub poll_open_timeout: Option<String>,
    /// Open long-poll sessions per client: per token `sub`, or per address for anonymous
    /// clients; past it `POST /poll` answers 429. Behind a proxy every anonymous client has
    /// the proxy's address: raise it, or 0 for no bound. [default: 16]
    #[arg(long, env = "RINGCAST_POLL_SESSIONS_PER_CLIENT", value_name = "N")]
    pub poll_sessions_per_client: Option<String>,
    /// Longest an HTTP response may take to be written (a client that does not read);
    /// past it the socket is reset and its kernel buffers freed. [default: 30s]
    #[arg(long, env = "RINGCAST_HTTP_WRITE_TIMEOUT", value_name = "DURATION")]
    pub http_write_timeout: Option<String>,
    /// Sockets in the HTTP phase (before a WebSocket upgrade, long-poll requests included)
    /// on the node; past it a new socket gets 503 and is closed. Keep it and
    /// --max-connections together below the descriptor limit. [default: 10000]
    #[arg(long, env = "RINGCAST_MAX_HTTP_CONNECTIONS", value_name = "N")]
    pub max_http_connections: Option<String>,
    /// Requests answered back to back from what one socket already sent (pipelining);
    /// past it 429 and the socket is closed. [default: 16]
    #[arg(long, env = "RINGCAST_MAX_PIPELINED_REQUESTS", value_name = "N")]
    pub max_pipelined_requests: Option<String>,
}

impl GuardArgs {
    pub fn given(&self) -> Vec<(&'static str, Option<String>)> {
        vec![
            ("max_node_subscriptions", self.max_node_subscriptions.clone()),
            ("max_subscription_bytes", self.max_subscription_bytes.clone()),
            ("max_pattern_bytes", self.max_pattern_bytes.clone()),
            ("max_anonymous_subscriptions", self.max_anonymous_subscriptions.clone()),
            ("poll_open_timeout", self.poll_open_timeout.clone()),
            ("poll_sessions_per_client", self.poll_sessions_per_client.clone()),
            ("http_write_timeout", self.http_write_timeout.clone()),
            ("max_http_connections", self.max_http_connections.clone()),
            ("max_pipelined_requests", self.max_pipelined_requests.clone()),
        ]
    }
}

#[derive(Clone, Debug)]
pub struct GuardConfig {
    pub node_subscriptions_max: usize,
    pub subscription_bytes_max: usize,
    pub pattern_bytes_max: usize,
    /// None: only `max_subscriptions` applies.
    pub anonymous_subscriptions_max: Option<usize>,
    pub poll_open_timeout: Duration,
    /// 0: no bound.
    pub poll_sessions_per_client: usize,
    pub http_write_timeout: Duration,
    pub http_connections_max: usize,
    pub pipelined_requests_max: usize,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            node_subscriptions_max: limits::NODE_SUBSCRIPTIONS_MAX,
            subscription_bytes_max: limits::NODE_SUBSCRIPTION_BYTES_MAX,
            pattern_bytes_max: limits::PATTERN_BYTES_PER_CONNECTION_MAX,
            anonymous_subscriptions_max: None,
            poll_open_timeout: Duration::from_millis(limits::POLL_OPEN_TIMEOUT_MS),
            poll_sessions_per_client: limits::POLL_SESSIONS_PER_CLIENT_MAX,
            http_write_timeout: Duration::from_millis(limits::HTTP_WRITE_TIMEOUT_MS),
            http_connections_max: limits::HTTP_CONNECTIONS_MAX,
            pipelined_requests_max: limits::PIPELINED_REQUESTS_MAX,
        }
    }
}


pub fn build(values: &BTreeMap<&str, String>) -> Result<GuardConfig, ConfigError> {
    let mut c = GuardConfig::default();
    let count = |key: &str, default: usize| values.get(key).map_or(Ok(default), |v| parse_count(v).map_err(|m| error(key, m)));
    let size = |key: &str, default: usize| values.get(key).map_or(Ok(default), |v| parse_size(v).map_err(|m| error(key, m)));
    let duration = |key: &str, default: Duration| values.get(key).map_or(Ok(default), |v| parse_duration(v).map_err(|m| error(key, m)));
    c.node_subscriptions_max = count("max_node_subscriptions", c.node_subscriptions_max)?;
    c.subscription_bytes_max = size("max_subscription_bytes", c.subscription_bytes_max)?;
    c.pattern_bytes_max = size("max_pattern_bytes", c.pattern_bytes_max)?;
    c.anonymous_subscriptions_max = values.get("max_anonymous_subscriptions").map(|v| parse_count(v).map_err(|m| error("max_anonymous_subscriptions", m))).transpose()?;
    c.poll_open_timeout = duration("poll_open_timeout", c.poll_open_timeout)?;
    c.poll_sessions_per_client = count("poll_sessions_per_client", c.poll_sessions_per_client)?;
    c.http_write_timeout = duration("http_write_timeout", c.http_write_timeout)?;
    c.http_connections_max = count("max_http_connections", c.http_connections_max)?;
    c.pipelined_requests_max = count("max_pipelined_requests", c.pipelined_requests_max)?;
    let positive = [
        ("max_node_subscriptions", c.node_subscriptions_max),
        ("max_subscription_bytes", c.subscription_bytes_max),
        ("max_pattern_bytes", c.pattern_bytes_max),
        ("max_anonymous_subscriptions", c.anonymous_subscriptions_max.unwrap_or(1)),
        ("max_http_connections", c.http_connections_max),
        ("max_pipelined_requests", c.pipelined_requests_max),
    ];
    if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
        return Err(error(key, "must be at least 1"));
    }
    if c.pattern_bytes_max < crate::channel::CHANNEL_BYTES_MAX {
        return Err(error("max_pattern_bytes", format!("must be at least {} bytes (one longest pattern)", crate::channel::CHANNEL_BYTES_MAX)));
    }
    if c.poll_open_timeout.is_zero() {
        return Err(error("poll_open_timeout", "must be above zero"));
    }
    if c.http_write_timeout.is_zero() || c.http_write_timeout > Duration::from_millis(limits::HTTP_WRITE_TIMEOUT_MS_MAX) {
        return Err(error("http_write_timeout", format!("must be above zero and at most {} s", limits::HTTP_WRITE_TIMEOUT_MS_MAX / 1000)));
    }
    Ok(c)
}
