//! The broker seam (Beacon) as data: NATS connection and history settings, and how they are built.
//!
//! Owns: `BrokerArgs`, `BrokerConfig`, `NatsConfig`, `HistoryConfig`, `build_broker`.
//! Must not touch: runtime modules; only `config::value`, `channel` and `limits`.

use super::value::{error, parse_bool, parse_count, parse_duration, ConfigError};
use crate::limits;
use clap::Args;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// The broker seam (Beacon): NATS for multi-node fan-out, JetStream for history.
#[derive(Args, Debug, Default)]
#[command(next_help_heading = "Broker (NATS, history)")]
pub struct BrokerArgs {
    /// NATS server(s) for multi-node fan-out, comma-separated, e.g. `nats://127.0.0.1:4222`.
    /// Unset: the embedded in-process broker (one node).
    #[arg(long, env = "RINGCAST_NATS", value_name = "URLS")]
    nats: Option<String>,
    /// Subject prefix: channel `a.b` is NATS subject `PREFIX.a.b`. [default: rc]
    #[arg(long, env = "RINGCAST_NATS_PREFIX", value_name = "PREFIX")]
    nats_prefix: Option<String>,
    /// NATS token authentication.
    #[arg(long, env = "RINGCAST_NATS_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    nats_token: Option<String>,
    /// NATS user (with --nats-password).
    #[arg(long, env = "RINGCAST_NATS_USER", value_name = "USER")]
    nats_user: Option<String>,
    /// NATS password (with --nats-user).
    #[arg(long, env = "RINGCAST_NATS_PASSWORD", value_name = "PASSWORD", hide_env_values = true)]
    nats_password: Option<String>,
    /// NATS credentials file (JWT + NKey seed, as `nsc` writes it).
    #[arg(long, env = "RINGCAST_NATS_CREDS", value_name = "FILE")]
    nats_creds: Option<String>,
    /// PEM file of CA certificates to trust for NATS TLS (implies TLS).
    #[arg(long, env = "RINGCAST_NATS_TLS_CA", value_name = "FILE")]
    nats_tls_ca: Option<String>,
    /// PEM client certificate for NATS mutual TLS (with --nats-tls-key).
    #[arg(long, env = "RINGCAST_NATS_TLS_CERT", value_name = "FILE")]
    nats_tls_cert: Option<String>,
    /// PEM private key for --nats-tls-cert.
    #[arg(long, env = "RINGCAST_NATS_TLS_KEY", value_name = "FILE")]
    nats_tls_key: Option<String>,
    /// Require TLS to NATS even without a CA file (system roots). [default: false]
    #[arg(long, env = "RINGCAST_NATS_TLS", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    nats_tls: Option<String>,
    /// Outgoing publishes queued while NATS is slow; past it publishes are refused (503). [default: 65536]
    #[arg(long, env = "RINGCAST_NATS_PUBLISH_QUEUE", value_name = "N")]
    nats_publish_queue: Option<String>,
    /// How long a `sub` waits for NATS to confirm its subscription on the server before
    /// it is answered 503 and undone (`ok` means live). [default: 5s]
    #[arg(long, env = "RINGCAST_NATS_SUB_CONFIRM_TIMEOUT", value_name = "DURATION")]
    nats_sub_confirm_timeout: Option<String>,
    /// `sub`s waiting for that confirmation on one node; past it a `sub` answers 503 at once. [default: 65536]
    #[arg(long, env = "RINGCAST_NATS_SUB_CONFIRMS_WAITING", value_name = "N")]
    nats_sub_confirms_waiting: Option<String>,
    /// How long a cluster-wide query (Pusher channel queries, terminate_connections)
    /// waits for every node's answer before it is answered 503. [default: 2s]
    #[arg(long, env = "RINGCAST_NATS_CLUSTER_QUERY_TIMEOUT", value_name = "DURATION")]
    nats_cluster_query_timeout: Option<String>,
    /// Channel pattern whose messages are kept for resume with `since` (repeatable, or
    /// comma-separated), e.g. `--history 'chat.>'`. Patterns must not overlap.
    #[arg(long, env = "RINGCAST_HISTORY", value_name = "PATTERN", action = clap::ArgAction::Append, value_delimiter = ',')]
    history: Vec<String>,
    /// Messages kept per history channel. [default: 1000]
    #[arg(long, env = "RINGCAST_HISTORY_MESSAGES", value_name = "N")]
    history_messages: Option<String>,
    /// Age after which history messages are dropped. [default: 1h]
    #[arg(long, env = "RINGCAST_HISTORY_AGE", value_name = "DURATION")]
    history_age: Option<String>,
    /// Most messages one `sub` with `since` may replay; more answers 409 (resync). [default: 10000]
    #[arg(long, env = "RINGCAST_HISTORY_REPLAY_MAX", value_name = "N")]
    history_replay_max: Option<String>,
    /// JetStream stream holding history (NATS mode). [default: RINGCAST_<PREFIX>]
    #[arg(long, env = "RINGCAST_HISTORY_STREAM", value_name = "NAME")]
    history_stream: Option<String>,
    /// Replicas of the history stream on a NATS cluster (1..=5; 3 keeps `since` resume
    /// working when one of three servers is lost). [default: 1]
    #[arg(long, env = "RINGCAST_HISTORY_REPLICAS", value_name = "N")]
    history_replicas: Option<String>,
    /// Embedded broker: most channels with history kept in memory; the least recently
    /// published channel's history is dropped past it. [default: 100000]
    #[arg(long, env = "RINGCAST_HISTORY_CHANNELS", value_name = "N")]
    history_channels: Option<String>,
}

impl BrokerArgs {
    pub fn given(&self) -> Vec<(&'static str, Option<String>)> {
        vec![
            ("nats", self.nats.clone()),
            ("nats_prefix", self.nats_prefix.clone()),
            ("nats_token", self.nats_token.clone()),
            ("nats_user", self.nats_user.clone()),
            ("nats_password", self.nats_password.clone()),
            ("nats_creds", self.nats_creds.clone()),
            ("nats_tls_ca", self.nats_tls_ca.clone()),
            ("nats_tls_cert", self.nats_tls_cert.clone()),
            ("nats_tls_key", self.nats_tls_key.clone()),
            ("nats_tls", self.nats_tls.clone()),
            ("nats_publish_queue", self.nats_publish_queue.clone()),
            ("nats_sub_confirm_timeout", self.nats_sub_confirm_timeout.clone()),
            ("nats_sub_confirms_waiting", self.nats_sub_confirms_waiting.clone()),
            ("nats_cluster_query_timeout", self.nats_cluster_query_timeout.clone()),
            ("history", (!self.history.is_empty()).then(|| self.history.join(","))),
            ("history_messages", self.history_messages.clone()),
            ("history_age", self.history_age.clone()),
            ("history_replay_max", self.history_replay_max.clone()),
            ("history_stream", self.history_stream.clone()),
            ("history_replicas", self.history_replicas.clone()),
            ("history_channels", self.history_channels.clone()),
        ]
    }
}

/// The broker seam: embedded (no `nats`) or NATS, and which channels keep history.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    pub nats: Option<NatsConfig>,
    pub history: HistoryConfig,
}

#[derive(Clone)]
pub struct NatsConfig {
    /// Server URLs as given (`nats://host:port`, `tls://…`); async-nats tries them in turn.
    pub urls: Vec<String>,
    /// Channel `a.b` is subject `{prefix}.a.b`.
    pub prefix: String,
    pub token: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub creds_file: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_required: bool,
    pub publish_queue_messages: usize,
    /// How long a `sub` waits for its subscription to be confirmed on the server.
    pub sub_confirm_timeout: Duration,
    /// `sub`s waiting for a confirmation at once on the node.
    pub sub_confirms_waiting_max: usize,
    /// How long a cluster-wide query waits for every node's answer (`bridge::cluster`).
    pub cluster_query_timeout: Duration,
}

impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsConfig")
            .field("urls", &self.urls)
            .field("prefix", &self.prefix)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("creds_file", &self.creds_file)
            .field("tls_required", &self.tls_required)
            .finish_non_exhaustive()
    }
}

impl BrokerConfig {
    /// Which engine carries messages between nodes, for logs, metrics and the dashboard.
    pub fn name(&self) -> &'static str {
        if self.nats.is_some() {
            "nats"
        } else {
            "embedded"
        }
    }

    /// How long a `sub` may wait for the broker to confirm that the node's interest is
    /// live on it; `None` when interest is live as soon as the bridge has seen it (the
    /// embedded broker), so a `sub` is answered at once.
    pub fn sub_confirm_timeout(&self) -> Option<Duration> {
        self.nats.as_ref().map(|nats| nats.sub_confirm_timeout)
    }

    /// How long a node-wide or cluster-wide query (`bridge::cluster`) may take before it
    /// is answered 503.
    pub fn cluster_query_timeout(&self) -> Duration {
        self.nats.as_ref().map_or(Duration::from_millis(limits::CLUSTER_QUERY_TIMEOUT_MS), |nats| nats.cluster_query_timeout)
    }

    /// Whether the bridge keeps its own copy of the node's interest (to tell the broker),
    /// which the node's subscription-memory bound must count.
    pub fn mirrors_interest(&self) -> bool {
        self.nats.is_some()
    }
}

/// Channels whose messages are kept (JetStream with NATS, memory rings when embedded) so a
/// client can resume with `sub … since`.
#[derive(Clone, Debug, Default)]
pub struct HistoryConfig {
    /// Non-overlapping channel patterns.
    pub patterns: Vec<String>,
    pub messages_per_channel: usize,
    pub age: Duration,
    pub replay_messages_max: usize,
    /// JetStream stream name (NATS mode).
    pub stream: String,
    /// Replicas of the JetStream stream (NATS mode, 1..=HISTORY_REPLICAS_MAX).
    pub replicas: usize,
    /// Embedded mode: channels with a history ring.
    pub channels_max: usize,
}

impl HistoryConfig {
    /// The history pattern that covers every channel `pattern` can match, if any.
    pub fn pattern_covering(&self, pattern: &str) -> Option<&str> {
        self.patterns.iter().map(String::as_str).find(|h| crate::channel::covers(h, pattern))
    }

    pub fn is_enabled(&self) -> bool {
        !self.patterns.is_empty()
    }
}

pub fn build_broker(values: &BTreeMap<&str, String>) -> Result<BrokerConfig, ConfigError> {
    let get = |key: &str| values.get(key).map(String::as_str).filter(|v| !v.is_empty());
    let path = |key: &str| get(key).map(PathBuf::from);
    let count = |key: &str, default: usize| get(key).map_or(Ok(default), |v| parse_count(v).map_err(|m| error(key, m)));
    let prefix = get("nats_prefix").unwrap_or("rc").to_owned();
    if crate::channel::validate_channel(&prefix).is_err() || prefix.starts_with('$') {
        return Err(error("nats_prefix", format!("{prefix:?} must be plain subject tokens ([A-Za-z0-9_-], dot-separated), e.g. rc or acme.rt")));
    }
    let nats = match get("nats") {
        None => None,
        Some(urls) => {
            let urls: Vec<String> = urls.split(',').map(|u| u.trim().to_owned()).filter(|u| !u.is_empty()).collect();
            for url in &urls {
                if url.parse::<async_nats::ServerAddr>().is_err() {
                    return Err(error("nats", format!("{url:?} is not a NATS URL (write it like nats://127.0.0.1:4222)")));
                }
            }
            let config = NatsConfig {
                urls,
                prefix: prefix.clone(),
                token: get("nats_token").map(str::to_owned),
                user: get("nats_user").map(str::to_owned),
                password: get("nats_password").map(str::to_owned),
                creds_file: path("nats_creds"),
                tls_ca: path("nats_tls_ca"),
                tls_cert: path("nats_tls_cert"),
                tls_key: path("nats_tls_key"),
                tls_required: get("nats_tls").map_or(Ok(false), |v| parse_bool(v).map_err(|m| error("nats_tls", m)))?,
                publish_queue_messages: count("nats_publish_queue", limits::NATS_PUBLISH_QUEUE_MESSAGES)?,
                sub_confirm_timeout: get("nats_sub_confirm_timeout")
                    .map_or(Ok(Duration::from_millis(limits::SUB_CONFIRM_TIMEOUT_MS)), |v| parse_duration(v).map_err(|m| error("nats_sub_confirm_timeout", m)))?,
                sub_confirms_waiting_max: count("nats_sub_confirms_waiting", limits::SUB_CONFIRMS_WAITING_MAX)?,
                cluster_query_timeout: get("nats_cluster_query_timeout")
                    .map_or(Ok(Duration::from_millis(limits::CLUSTER_QUERY_TIMEOUT_MS)), |v| parse_duration(v).map_err(|m| error("nats_cluster_query_timeout", m)))?,
            };
            if config.cluster_query_timeout.is_zero() {
                return Err(error("nats_cluster_query_timeout", "must be above zero"));
            }
            if config.sub_confirm_timeout.is_zero() {
                return Err(error("nats_sub_confirm_timeout", "must be above zero"));
            }
            if config.sub_confirms_waiting_max == 0 {
                return Err(error("nats_sub_confirms_waiting", "must be at least 1"));
            }
            if config.user.is_some() != config.password.is_some() {
                return Err(error("nats_user", "nats_user and nats_password go together; give both"));
            }
            if config.tls_cert.is_some() != config.tls_key.is_some() {
                return Err(error("nats_tls_cert", "nats_tls_cert and nats_tls_key go together; give both"));
            }
            if config.publish_queue_messages < limits::INBOX_MESSAGES_MIN {
                return Err(error("nats_publish_queue", format!("must be at least {}", limits::INBOX_MESSAGES_MIN)));
            }
            Some(config)
        }
    };
    let patterns: Vec<String> = get("history").map_or(Vec::new(), |v| v.split(',').map(|p| p.trim().to_owned()).filter(|p| !p.is_empty()).collect());
    for (i, pattern) in patterns.iter().enumerate() {
        if let Err(e) = crate::channel::validate_pattern(pattern) {
            return Err(error("history", format!("{pattern:?} is not a channel pattern: {e}")));
        }
        if pattern.starts_with('$') {
            return Err(error("history", format!("{pattern:?}: server channels ($…) have no history")));
        }
        if let Some(other) = patterns[..i].iter().find(|other| crate::channel::overlaps(other, pattern)) {
            return Err(error("history", format!("{other:?} and {pattern:?} overlap; give patterns that share no channel (merge them into one)")));
        }
    }
    let history = HistoryConfig {
        patterns,
        messages_per_channel: count("history_messages", limits::HISTORY_MESSAGES_PER_CHANNEL)?,
        age: get("history_age").map_or(Ok(Duration::from_millis(limits::HISTORY_AGE_MS)), |v| parse_duration(v).map_err(|m| error("history_age", m)))?,
        replay_messages_max: count("history_replay_max", limits::HISTORY_REPLAY_MESSAGES_MAX)?,
        stream: get("history_stream").map(str::to_owned).unwrap_or_else(|| format!("RINGCAST_{}", prefix.replace(['.', '-'], "_").to_ascii_uppercase())),
        channels_max: count("history_channels", limits::HISTORY_CHANNELS_MAX)?,
        replicas: count("history_replicas", 1)?,
    };
    if !(1..=limits::HISTORY_REPLICAS_MAX).contains(&history.replicas) {
        return Err(error("history_replicas", format!("must be 1 to {} (JetStream's limit)", limits::HISTORY_REPLICAS_MAX)));
    }
    if history.messages_per_channel == 0 {
        return Err(error("history_messages", "must be at least 1"));
    }
    if history.age.is_zero() {
        return Err(error("history_age", "must be above zero"));
    }
    if history.replay_messages_max == 0 {
        return Err(error("history_replay_max", "must be at least 1"));
    }
    if history.channels_max == 0 {
        return Err(error("history_channels", "must be at least 1"));
    }
    if !history.stream.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        return Err(error("history_stream", format!("{:?} must be letters, digits, _ or -", history.stream)));
    }
    Ok(BrokerConfig { nats, history })
}
