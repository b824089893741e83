//! The Lane's settings: clap flags (flattened into the gateway's and the worker's), TOML
//! keys of the same names, and their validation into [`LaneConfig`].
//!
//! Owns: every `--amqp`, `--lane-*`, retry and notification bound. Runs on: the main
//! thread at start-up; the result is cloned into the bridge and the worker.

use crate::backoff::Backoff;
use super::value::{error, parse_bool, parse_count, parse_duration, parse_size, ConfigError};
use clap::Args;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Wait for a client's `ack` after a `notify` frame. 10 s: a phone on a slow link answers
/// well within it, and a missing ack costs only one retry.
pub const ACK_TIMEOUT_MS: u64 = 10_000;
/// First retry ceiling: 1 s, so a user who was just offline gets a quick second try.
pub const RETRY_BASE_MS: u64 = 1_000;
/// Longest wait between tries: 5 min keeps a returning user's wait short even without
/// the online fast path.
pub const RETRY_MAX_MS: u64 = 300_000;
/// Online tries without an ack before the dead-letter queue: 12 with the defaults span
/// ~30 min of a user who is connected and never acks (time offline is not counted).
pub const MAX_ATTEMPTS: u32 = 12;
/// Longest a notification for an offline user is parked before the worker looks at it
/// again (it comes back sooner when its user subscribes, through the online fast path, and
/// never later than its expiry). 1 h: a re-check per notification per hour costs nothing,
/// and it bounds a returning user's wait when no fast path can reach the notification
/// (RabbitMQ without `--redis` after a worker restart).
pub const LANE_PARK_MAX_MS: u64 = 3_600_000;
/// The smallest `lane_park_max`: below it parking turns into polling.
pub const LANE_PARK_MAX_MIN_MS: u64 = 1_000;
/// How long a notification may wait for its user by default (`ttl` per request).
pub const NOTIFY_TTL_MS: u64 = 86_400_000;
/// The longest `ttl` a request may ask for: 30 days, beyond which "in-app" stops meaning much.
pub const NOTIFY_TTL_MAX_MS: u64 = 30 * 86_400_000;
/// Largest `data` of one notification: 64 KiB, a message to a person, not a file transfer.
pub const NOTIFY_BYTES_MAX: usize = 64 * 1024;
/// Deliveries a worker has in flight at once (the RabbitMQ prefetch): each waits up to
/// `ack_timeout` for its user, so this bounds memory and the broker's unacked backlog.
pub const LANE_IN_FLIGHT: usize = 1024;
/// Notifications one RabbitMQ work message may carry (see `rabbitmq::ENVELOPE_BYTES_MAX`
/// for its size bound); 1 publishes each on its own.
pub const LANE_ENVELOPE: usize = 64;
pub const LANE_ENVELOPE_MAX: usize = 1024;
/// Publishes waiting for a RabbitMQ publishing slot (a gateway's accepts, a worker's
/// retries) and accepts waiting for their Redis nid claim, each at most; past it an accept
/// answers 503 (`ringcast_lane_unavailable_total`), a claim is skipped
/// (`ringcast_lane_dedupe_unshared_total`).
pub const LANE_WAITING: usize = 16_384;
pub const LANE_WAITING_MAX: usize = 1_048_576;
/// Notifications held per user for the online fast path in Redis (`--redis`); past it
/// they wait for their backoff tick (`ringcast_lane_inbox_full_total`).
pub const LANE_INBOX_PER_USER: usize = 1_000;
pub const LANE_INBOX_PER_USER_MAX: usize = 100_000;
pub const LANE_PREFIX: &str = "rc.lane";
pub const LANE_DIR: &str = "ringcast-lane";

/// Lane (durable notifications): flags shared by `ringcast gateway` and `ringcast worker`.
#[derive(Args, Debug, Default, Clone)]
#[command(next_help_heading = "Lane (durable notifications)")]
pub struct LaneArgs {
    /// RabbitMQ for durable notifications, e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`.
    /// Unset: the embedded on-disk queue in --lane-dir, with the worker in-process.
    #[arg(long, env = "RINGCAST_AMQP", value_name = "URL", hide_env_values = true)]
    pub amqp: Option<String>,
    /// Prefix of every queue (RabbitMQ) and NATS subject the Lane uses. [default: rc.lane]
    #[arg(long, env = "RINGCAST_LANE_PREFIX", value_name = "PREFIX")]
    pub lane_prefix: Option<String>,
    /// Directory of the embedded queue (a redb file, fsync'd on every accept). [default: ringcast-lane]
    #[arg(long, env = "RINGCAST_LANE_DIR", value_name = "DIR")]
    pub lane_dir: Option<String>,
    /// Run the delivery worker inside the gateway. [default: true without --amqp, false with it]
    #[arg(long, env = "RINGCAST_LANE_WORKER", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub lane_worker: Option<String>,
    /// Time a client has to `ack` a `notify` frame before the try counts as failed. [default: 10s]
    #[arg(long, env = "RINGCAST_ACK_TIMEOUT", value_name = "DURATION")]
    pub ack_timeout: Option<String>,
    /// Backoff base: the first retry waits a random time up to this, doubling per try. [default: 1s]
    #[arg(long, env = "RINGCAST_RETRY_BASE", value_name = "DURATION")]
    pub retry_base: Option<String>,
    /// Backoff ceiling: no retry waits longer. [default: 5m]
    #[arg(long, env = "RINGCAST_RETRY_MAX", value_name = "DURATION")]
    pub retry_max: Option<String>,
    /// Online delivery tries without an ack before a notification goes to the dead-letter
    /// queue (time its user is offline is not counted). [default: 12]
    #[arg(long, env = "RINGCAST_MAX_ATTEMPTS", value_name = "N")]
    pub max_attempts: Option<String>,
    /// Default time a notification waits for its user (a request's `ttl` overrides it, up to 30 days). [default: 24h]
    #[arg(long, env = "RINGCAST_NOTIFY_TTL", value_name = "DURATION")]
    pub notify_ttl: Option<String>,
    /// Largest notification `data`; bigger is refused with 413. [default: 64KiB]
    #[arg(long, env = "RINGCAST_NOTIFY_MAX", value_name = "SIZE")]
    pub notify_max: Option<String>,
    /// Deliveries a worker has in flight at once (RabbitMQ prefetch). [default: 1024]
    #[arg(long, env = "RINGCAST_LANE_IN_FLIGHT", value_name = "N")]
    pub lane_in_flight: Option<String>,
    /// RabbitMQ: accepts that arrive while every publishing channel waits for a confirm go out
    /// together, up to this many per message (1 = one message each; at most 1024). [default: 64]
    #[arg(long, env = "RINGCAST_LANE_ENVELOPE", value_name = "N")]
    pub lane_envelope: Option<String>,
    /// RabbitMQ: publishes waiting for a publishing slot, and accepts waiting for their Redis
    /// nid claim, at most each (past it: 503, or a node-local check). [default: 16384]
    #[arg(long, env = "RINGCAST_LANE_WAITING", value_name = "N")]
    pub lane_waiting: Option<String>,
    /// RabbitMQ with --redis: notifications held per user for the online fast path (past
    /// it they wait for their backoff tick). [default: 1000]
    #[arg(long, env = "RINGCAST_LANE_INBOX_PER_USER", value_name = "N")]
    pub lane_inbox_per_user: Option<String>,
    /// Longest a notification waits parked for its offline user before the worker checks it
    /// again (the user's return brings it at once; at most 1h). [default: 1h]
    #[arg(long, env = "RINGCAST_LANE_PARK_MAX", value_name = "DURATION")]
    pub lane_park_max: Option<String>,
    /// Push fallback: POST notifications still undelivered after their first try to this http:// URL.
    #[arg(long, env = "RINGCAST_WEBHOOK", value_name = "URL")]
    pub webhook: Option<String>,
}

impl LaneArgs {
    /// (key, value given on the command line or in the environment), as in `config.rs`.
    pub fn given(&self) -> Vec<(&'static str, Option<String>)> {
        vec![
            ("amqp", self.amqp.clone()),
            ("lane_prefix", self.lane_prefix.clone()),
            ("lane_dir", self.lane_dir.clone()),
            ("lane_worker", self.lane_worker.clone()),
            ("ack_timeout", self.ack_timeout.clone()),
            ("retry_base", self.retry_base.clone()),
            ("retry_max", self.retry_max.clone()),
            ("max_attempts", self.max_attempts.clone()),
            ("notify_ttl", self.notify_ttl.clone()),
            ("notify_max", self.notify_max.clone()),
            ("lane_in_flight", self.lane_in_flight.clone()),
            ("lane_envelope", self.lane_envelope.clone()),
            ("lane_waiting", self.lane_waiting.clone()),
            ("lane_inbox_per_user", self.lane_inbox_per_user.clone()),
            ("lane_park_max", self.lane_park_max.clone()),
            ("webhook", self.webhook.clone()),
        ]
    }
}

#[derive(Clone)]
pub struct LaneConfig {
    /// RabbitMQ URL; `None` = embedded store.
    pub amqp: Option<String>,
    pub prefix: String,
    pub dir: PathBuf,
    /// `lane_dir` was set (a failure to open it is then an error, not a warning).
    pub dir_given: bool,
    /// Run the worker as a task on the gateway's bridge thread.
    pub worker_in_process: bool,
    pub ack_timeout: Duration,
    pub backoff: Backoff,
    pub max_attempts: u32,
    pub ttl: Duration,
    pub notify_bytes_max: usize,
    pub in_flight: usize,
    /// Notifications per RabbitMQ work message at most.
    pub envelope: usize,
    /// Publishes (and nid claims) waiting at most.
    pub waiting: usize,
    /// Fast-path notifications held per user in Redis.
    pub inbox_per_user: usize,
    /// Longest park of a notification whose user is offline (`lane_park_max`).
    pub park_max: Duration,
    pub webhook: Option<Webhook>,
}

/// A parsed `http://host:port/path` push endpoint (plain HTTP: put a TLS proxy in front
/// for an https provider).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Webhook {
    pub url: String,
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl std::fmt::Debug for LaneConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaneConfig")
            .field("amqp", &self.amqp.as_ref().map(|_| "<redacted>"))
            .field("prefix", &self.prefix)
            .field("dir", &self.dir)
            .field("worker_in_process", &self.worker_in_process)
            .field("ack_timeout", &self.ack_timeout)
            .field("backoff", &self.backoff)
            .field("max_attempts", &self.max_attempts)
            .field("ttl", &self.ttl)
            .field("in_flight", &self.in_flight)
            .field("envelope", &self.envelope)
            .field("waiting", &self.waiting)
            .field("inbox_per_user", &self.inbox_per_user)
            .field("park_max", &self.park_max)
            .field("webhook", &self.webhook)
            .finish_non_exhaustive()
    }
}


/// Builds the Lane's settings from the merged key → text map.
pub fn build(values: &BTreeMap<&str, String>) -> Result<LaneConfig, ConfigError> {
    let get = |key: &str| values.get(key).map(String::as_str).filter(|v| !v.is_empty());
    let duration = |key: &str, default_ms: u64| get(key).map_or(Ok(Duration::from_millis(default_ms)), |v| parse_duration(v).map_err(|m| error(key, m)));
    let count = |key: &str, default: usize| get(key).map_or(Ok(default), |v| parse_count(v).map_err(|m| error(key, m)));
    let amqp = get("amqp").map(str::to_owned);
    if let Some(url) = &amqp {
        if let Err(e) = url.parse::<lapin::uri::AMQPUri>() {
            return Err(error("amqp", format!("not an AMQP URL ({e}); write it like amqp://user:pass@127.0.0.1:5672/%2f")));
        }
    }
    let prefix = get("lane_prefix").unwrap_or(LANE_PREFIX).to_owned();
    if crate::channel::validate_channel(&prefix).is_err() || prefix.starts_with('$') {
        return Err(error("lane_prefix", format!("{prefix:?} must be plain dot-separated tokens ([A-Za-z0-9_-]), e.g. rc.lane")));
    }
    let worker_in_process = match get("lane_worker") {
        Some(v) => parse_bool(v).map_err(|m| error("lane_worker", m))?,
        None => amqp.is_none(),
    };
    let retry_base = duration("retry_base", RETRY_BASE_MS)?;
    let retry_max = duration("retry_max", RETRY_MAX_MS)?;
    let backoff = Backoff::new(retry_base, retry_max).map_err(|m| error(if m.starts_with("retry_base") { "retry_base" } else { "retry_max" }, m))?;
    let config = LaneConfig {
        amqp,
        prefix,
        dir: PathBuf::from(get("lane_dir").unwrap_or(LANE_DIR)),
        dir_given: get("lane_dir").is_some(),
        worker_in_process,
        ack_timeout: duration("ack_timeout", ACK_TIMEOUT_MS)?,
        backoff,
        max_attempts: count("max_attempts", MAX_ATTEMPTS as usize)?.min(u32::MAX as usize) as u32,
        ttl: duration("notify_ttl", NOTIFY_TTL_MS)?,
        notify_bytes_max: get("notify_max").map_or(Ok(NOTIFY_BYTES_MAX), |v| parse_size(v).map_err(|m| error("notify_max", m)))?,
        in_flight: count("lane_in_flight", LANE_IN_FLIGHT)?,
        envelope: count("lane_envelope", LANE_ENVELOPE)?,
        waiting: count("lane_waiting", LANE_WAITING)?,
        inbox_per_user: count("lane_inbox_per_user", LANE_INBOX_PER_USER)?,
        park_max: duration("lane_park_max", LANE_PARK_MAX_MS)?,
        webhook: get("webhook").map(|url| parse_webhook(url).map_err(|m| error("webhook", m))).transpose()?,
    };
    if config.ack_timeout.is_zero() {
        return Err(error("ack_timeout", "must be above zero"));
    }
    if config.max_attempts == 0 {
        return Err(error("max_attempts", "must be at least 1"));
    }
    if config.ttl.is_zero() || config.ttl > Duration::from_millis(NOTIFY_TTL_MAX_MS) {
        return Err(error("notify_ttl", "must be above zero and at most 30 days"));
    }
    if config.notify_bytes_max == 0 {
        return Err(error("notify_max", "must be at least 1 byte"));
    }
    if config.in_flight == 0 || config.in_flight > u16::MAX as usize {
        return Err(error("lane_in_flight", "must be from 1 to 65535 (the AMQP prefetch is 16 bits)"));
    }
    if config.envelope == 0 || config.envelope > LANE_ENVELOPE_MAX {
        return Err(error("lane_envelope", format!("must be from 1 to {LANE_ENVELOPE_MAX}")));
    }
    if config.waiting == 0 || config.waiting > LANE_WAITING_MAX {
        return Err(error("lane_waiting", format!("must be from 1 to {LANE_WAITING_MAX}")));
    }
    if config.inbox_per_user == 0 || config.inbox_per_user > LANE_INBOX_PER_USER_MAX {
        return Err(error("lane_inbox_per_user", format!("must be from 1 to {LANE_INBOX_PER_USER_MAX}")));
    }
    if config.park_max < Duration::from_millis(LANE_PARK_MAX_MIN_MS) || config.park_max > Duration::from_millis(LANE_PARK_MAX_MS) {
        return Err(error("lane_park_max", "must be from 1s to 1h"));
    }
    Ok(config)
}

/// `http://host[:port][/path]`.
pub fn parse_webhook(url: &str) -> Result<Webhook, String> {
    let bad = || format!("{url:?} is not a plain http:// URL (write it like http://127.0.0.1:9000/push; put a TLS proxy in front of an https endpoint)");
    let rest = url.strip_prefix("http://").ok_or_else(bad)?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => (host, port.parse::<u16>().map_err(|_| bad())?),
        _ => (authority, 80),
    };
    if host.is_empty() || path.contains(char::is_whitespace) {
        return Err(bad());
    }
    Ok(Webhook { url: url.to_owned(), host: host.trim_matches(['[', ']']).to_owned(), port, path: path.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lane(pairs: &[(&'static str, &str)]) -> Result<LaneConfig, ConfigError> {
        let values: BTreeMap<&str, String> = pairs.iter().map(|(k, v)| (*k, v.to_string())).collect();
        build(&values)
    }

    #[test]
    fn defaults() {
        let c = lane(&[]).unwrap();
        assert!(c.amqp.is_none() && c.worker_in_process);
        assert_eq!(c.prefix, "rc.lane");
        assert_eq!(c.ack_timeout, Duration::from_secs(10));
        assert_eq!(c.max_attempts, 12);
        assert_eq!(c.notify_bytes_max, 64 * 1024);
        let c = lane(&[("amqp", "amqp://guest:guest@127.0.0.1:5672/%2f")]).unwrap();
        assert!(!c.worker_in_process, "with RabbitMQ the worker is a sidecar unless asked");
        assert!(!format!("{c:?}").contains("guest"), "the URL's password stays out of logs");
    }

    #[test]
    fn errors_name_their_key() {
        assert_eq!(lane(&[("amqp", "nope")]).unwrap_err().key, "amqp");
        assert_eq!(lane(&[("lane_prefix", "a b")]).unwrap_err().key, "lane_prefix");
        assert_eq!(lane(&[("retry_base", "0ms")]).unwrap_err().key, "retry_base");
        assert_eq!(lane(&[("retry_base", "2s"), ("retry_max", "1s")]).unwrap_err().key, "retry_max");
        assert_eq!(lane(&[("max_attempts", "0")]).unwrap_err().key, "max_attempts");
        assert_eq!(lane(&[("notify_ttl", "60d")]).unwrap_err().key, "notify_ttl");
        assert_eq!(lane(&[("lane_in_flight", "70000")]).unwrap_err().key, "lane_in_flight");
        assert_eq!(lane(&[("lane_envelope", "0")]).unwrap_err().key, "lane_envelope");
        assert_eq!(lane(&[("lane_envelope", "1025")]).unwrap_err().key, "lane_envelope");
        assert_eq!(lane(&[("lane_waiting", "0")]).unwrap_err().key, "lane_waiting");
        assert_eq!(lane(&[("lane_inbox_per_user", "100001")]).unwrap_err().key, "lane_inbox_per_user");
        assert_eq!((lane(&[]).unwrap().waiting, lane(&[]).unwrap().inbox_per_user), (16_384, 1_000));
        assert_eq!(lane(&[("webhook", "https://x")]).unwrap_err().key, "webhook");
        assert_eq!(lane(&[]).unwrap().park_max, Duration::from_secs(3600));
        assert_eq!(lane(&[("lane_park_max", "90s")]).unwrap().park_max, Duration::from_secs(90));
        assert_eq!(lane(&[("lane_park_max", "500ms")]).unwrap_err().key, "lane_park_max");
        assert_eq!(lane(&[("lane_park_max", "2h")]).unwrap_err().key, "lane_park_max");
    }

    #[test]
    fn webhook_urls() {
        let w = parse_webhook("http://127.0.0.1:9000/push/x").unwrap();
        assert_eq!((w.host.as_str(), w.port, w.path.as_str()), ("127.0.0.1", 9000, "/push/x"));
        let w = parse_webhook("http://push.local").unwrap();
        assert_eq!((w.host.as_str(), w.port, w.path.as_str()), ("push.local", 80, "/"));
        assert!(parse_webhook("http://:80/").is_err());
        assert!(parse_webhook("ftp://x").is_err());
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DlqAction {
    List,
    Replay { nid: Option<String> },
    Purge,
}
