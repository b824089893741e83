//! Configuration: CLI flags > `RINGCAST_*` environment > `--config` TOML file > defaults,
//! parsed and validated once into [`GatewayConfig`], then cloned into every thread.
//!
//! Every value arrives as text (a flag, a variable, a TOML scalar) and is parsed by one
//! function per kind, so a bad value always gives the same kind of one-line error naming
//! its key. `main` prints it and exits with code 2 (clap's own usage errors also use 2).

use crate::limits;
use clap::{Args, Parser, Subcommand};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(name = "ringcast", version, about = "Real-time WebSocket gateway: thread-per-core io_uring, embedded fan-out")]
struct Cli {
    /// TOML file with any gateway setting (keys as the flag names with `_`, e.g.
    /// `max_connections = 50000`); flags and RINGCAST_* variables override it.
    #[arg(long, global = true, env = "RINGCAST_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Sub,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// Run a gateway node (embedded broker: one command serves everything).
    Gateway(GatewayArgs),
    /// Check this host for a target connection count: io_uring, descriptor limits,
    /// kernel queues, memory; prints what to change. Exit 1 when something must change.
    Doctor(DoctorArgs),
    /// Run the notification worker as a sidecar (RabbitMQ Lane + NATS): consumes the
    /// Lane, delivers `notify` frames through NATS, retries with backoff, dead-letters.
    Worker(WorkerArgs),
    /// The Lane's dead-letter queue: list, replay (back to the work queue with a fresh
    /// attempt count) or purge.
    Dlq(DlqArgs),
}

/// `ringcast worker`: the broker and Lane flags of the gateway, plus its own.
#[derive(Args, Debug, Default)]
struct WorkerArgs {
    /// Serve the worker's Prometheus metrics (`ringcast_lane_*`) on this address, e.g. 127.0.0.1:9101.
    #[arg(long, env = "RINGCAST_METRICS_ADDR", value_name = "ADDR")]
    metrics_addr: Option<String>,
    /// Log filter (tracing EnvFilter syntax). [default: info]
    #[arg(long, env = "RINGCAST_LOG", value_name = "FILTER")]
    log: Option<String>,
    /// Log as JSON lines. [default: false]
    #[arg(long, env = "RINGCAST_LOG_JSON", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    log_json: Option<String>,
    #[command(flatten)]
    broker: BrokerArgs,
    #[command(flatten)]
    presence: crate::presence::PresenceArgs,
    #[command(flatten)]
    lane: crate::lane::config::LaneArgs,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum DlqVerb {
    /// Print each dead notification as one JSON line.
    List,
    /// Move dead notifications (all, or --nid) back to the work queue.
    Replay,
    /// Delete every dead notification.
    Purge,
}

#[derive(Args, Debug)]
struct DlqArgs {
    #[arg(value_enum)]
    action: DlqVerb,
    /// With `replay`: only this notification.
    #[arg(long, value_name = "NID")]
    nid: Option<String>,
    #[command(flatten)]
    lane: crate::lane::config::LaneArgs,
}

#[derive(Args, Debug)]
struct DoctorArgs {
    /// Connections the node should hold.
    #[arg(long, env = "RINGCAST_DOCTOR_CONNECTIONS", default_value_t = 1_000_000, value_name = "N")]
    connections: usize,
}

/// Raw gateway settings as given on the command line or in the environment.
#[derive(Args, Debug, Default)]
struct GatewayArgs {
    /// Address to listen on, shared by every shard (SO_REUSEPORT). [default: 127.0.0.1:8080]
    #[arg(long, env = "RINGCAST_LISTEN", value_name = "ADDR")]
    listen: Option<String>,
    /// Shard threads, one per core; 0 = every online core. [default: 0]
    #[arg(long, env = "RINGCAST_SHARDS", value_name = "N")]
    shards: Option<String>,
    /// CPUs to pin shards to, one per shard, e.g. `0,1`. [default: shard i on cpu i]
    #[arg(long, env = "RINGCAST_PIN", value_name = "CPUS")]
    pin: Option<String>,
    /// WebSocket connections this node accepts; past it upgrades get 503. [default: 100000]
    #[arg(long, env = "RINGCAST_MAX_CONNECTIONS", value_name = "N")]
    max_connections: Option<String>,
    /// Key for the server API (/api/*), sent as `Authorization: Bearer KEY`. Unset: the API answers 403.
    #[arg(long, env = "RINGCAST_API_KEY", value_name = "KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// HS256 secret for client JWTs. Unset: every connection is anonymous.
    #[arg(long, env = "RINGCAST_JWT_SECRET", value_name = "SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// With a JWT secret: tokens must carry this `aud` (one of their audiences); without it, 401.
    #[arg(long, env = "RINGCAST_JWT_AUDIENCE", value_name = "AUD")]
    jwt_audience: Option<String>,
    /// With a JWT secret: tokens must carry this `iss`; without it, 401.
    #[arg(long, env = "RINGCAST_JWT_ISSUER", value_name = "ISS")]
    jwt_issuer: Option<String>,
    /// With a JWT secret, still accept connections without a token (as anonymous). [default: false]
    #[arg(long, env = "RINGCAST_ALLOW_ANONYMOUS", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    allow_anonymous: Option<String>,
    /// Largest WebSocket frame a client may send; bigger closes with 1009. [default: 64KiB]
    #[arg(long, env = "RINGCAST_MAX_FRAME", value_name = "SIZE")]
    max_frame: Option<String>,
    /// Largest message (fragments reassembled) or published `data`; must fit in
    /// outbound_limit. [default: 128KiB]
    #[arg(long, env = "RINGCAST_MAX_MESSAGE", value_name = "SIZE")]
    max_message: Option<String>,
    /// Outbound backlog per connection; past it the slow reader is closed with 4008. [default: 256KiB]
    #[arg(long, env = "RINGCAST_OUTBOUND_LIMIT", value_name = "SIZE")]
    outbound_limit: Option<String>,
    /// Quiet time before the server pings a connection; sent to clients as `hb`. [default: 25s]
    #[arg(long, env = "RINGCAST_HEARTBEAT", value_name = "DURATION")]
    heartbeat: Option<String>,
    /// Silence after which a connection is considered dead and dropped. [default: 60s]
    #[arg(long, env = "RINGCAST_HEARTBEAT_TIMEOUT", value_name = "DURATION")]
    heartbeat_timeout: Option<String>,
    /// Time a client has to send a complete HTTP request head. [default: 10s]
    #[arg(long, env = "RINGCAST_HANDSHAKE_TIMEOUT", value_name = "DURATION")]
    handshake_timeout: Option<String>,
    /// On SIGTERM, time clients get to answer the 1001 close before sockets drop. [default: 10s]
    #[arg(long, env = "RINGCAST_SHUTDOWN_TIMEOUT", value_name = "DURATION")]
    shutdown_timeout: Option<String>,
    /// Node name shown in `welcome`, presence and metrics; must be unique among the nodes
    /// sharing a NATS or Redis (connection ids are unique per node only). Set a stable one
    /// in production, such as the pod name. [default: hostname-pid]
    #[arg(long, env = "RINGCAST_NODE", value_name = "NAME")]
    node: Option<String>,
    /// Bridge → shard queue bound, in messages; full drops are counted per shard. [default: 65536]
    #[arg(long, env = "RINGCAST_SHARD_INBOX", value_name = "N")]
    shard_inbox: Option<String>,
    /// Write coalescing: when a shard wakes to fewer than 256 queued messages it waits
    /// this long for more before writing, so each subscriber gets several messages per
    /// send (fewer syscalls at high rates, up to this much more latency). 0 = write at
    /// once. At most 1ms. [default: 0s]
    #[arg(long, env = "RINGCAST_COALESCE_DELAY", value_name = "DURATION")]
    coalesce_delay: Option<String>,
    /// Run coalescing: consecutive messages on one channel that a shard takes in one turn
    /// go to each subscriber as one buffer of up to this many bytes (one queue entry and
    /// one iovec per subscriber instead of one per message; the bytes on the wire are the
    /// same). 0 = one entry per message. At most 1MiB. [default: 64KiB]
    #[arg(long, env = "RINGCAST_COALESCE_BYTES", value_name = "SIZE")]
    coalesce_bytes: Option<String>,
    /// Shard → bridge queue bound, in messages; full answers 503 to publishers. [default: 65536]
    #[arg(long, env = "RINGCAST_BRIDGE_INBOX", value_name = "N")]
    bridge_inbox: Option<String>,
    /// Each shard's one receive buffer, shared by all its connections. [default: 64KiB]
    #[arg(long, env = "RINGCAST_READ_BUFFER", value_name = "SIZE")]
    read_buffer: Option<String>,
    /// io_uring submission queue entries per shard (power of two, 64..=32768). [default: 4096]
    #[arg(long, env = "RINGCAST_URING_ENTRIES", value_name = "N")]
    uring_entries: Option<String>,
    /// io_uring SQPOLL: a kernel thread per shard polls the submission queue, so sends and
    /// receives need no io_uring_enter syscall while it is awake; it sleeps after this long
    /// without work (0s = off; at most 1s). It burns a core while awake: only for hosts with
    /// spare cores. [default: 0s]
    #[arg(long, env = "RINGCAST_SQPOLL", value_name = "DURATION")]
    sqpoll: Option<String>,
    /// Use epoll even where io_uring works (for comparison or buggy kernels). [default: false]
    #[arg(long, env = "RINGCAST_EPOLL", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    epoll: Option<String>,
    /// Subscriptions one connection may hold; past it `sub` answers 413. [default: 1024]
    #[arg(long, env = "RINGCAST_MAX_SUBSCRIPTIONS", value_name = "N")]
    max_subscriptions: Option<String>,
    /// Client ops per second per connection (burst twice that); past it ops answer 429. [default: 1000]
    #[arg(long, env = "RINGCAST_CLIENT_RATE", value_name = "PER_SECOND")]
    client_rate: Option<String>,
    /// Publish `$sys.metrics` once a second and let clients subscribe to `$sys.*` (the dashboard at `/` needs
    /// it); with a JWT secret only token holders, without one anyone. [default: false]
    #[arg(long, env = "RINGCAST_SYS_SUBSCRIBE", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    sys_subscribe: Option<String>,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `ringcast=debug`. [default: info]
    #[arg(long, env = "RINGCAST_LOG", value_name = "FILTER")]
    log: Option<String>,
    /// Log as JSON lines instead of text. [default: false]
    #[arg(long, env = "RINGCAST_LOG_JSON", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    log_json: Option<String>,
    #[command(flatten)]
    broker: BrokerArgs,
    #[command(flatten)]
    transport: crate::transport::config::TransportArgs,
    #[command(flatten)]
    presence: crate::presence::PresenceArgs,
    #[command(flatten)]
    lane: crate::lane::config::LaneArgs,
    #[command(flatten)]
    admission: crate::admission::AdmissionArgs,
    #[command(flatten)]
    guard: crate::guard::GuardArgs,
}

/// The broker seam (Beacon): NATS for multi-node fan-out, JetStream for history.
#[derive(Args, Debug, Default)]
#[command(next_help_heading = "Broker (NATS, history)")]
struct BrokerArgs {
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
    fn given(&self) -> Vec<(&'static str, Option<String>)> {
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

impl GatewayArgs {
    /// (key, value given on the command line or in the environment).
    fn given(&self) -> Vec<(&'static str, Option<String>)> {
        let mut given: Vec<(&'static str, Option<String>)> = vec![
            ("listen", self.listen.as_ref()),
            ("shards", self.shards.as_ref()),
            ("pin", self.pin.as_ref()),
            ("max_connections", self.max_connections.as_ref()),
            ("api_key", self.api_key.as_ref()),
            ("jwt_secret", self.jwt_secret.as_ref()),
            ("jwt_audience", self.jwt_audience.as_ref()),
            ("jwt_issuer", self.jwt_issuer.as_ref()),
            ("allow_anonymous", self.allow_anonymous.as_ref()),
            ("max_frame", self.max_frame.as_ref()),
            ("max_message", self.max_message.as_ref()),
            ("outbound_limit", self.outbound_limit.as_ref()),
            ("heartbeat", self.heartbeat.as_ref()),
            ("heartbeat_timeout", self.heartbeat_timeout.as_ref()),
            ("handshake_timeout", self.handshake_timeout.as_ref()),
            ("shutdown_timeout", self.shutdown_timeout.as_ref()),
            ("node", self.node.as_ref()),
            ("shard_inbox", self.shard_inbox.as_ref()),
            ("coalesce_delay", self.coalesce_delay.as_ref()),
            ("coalesce_bytes", self.coalesce_bytes.as_ref()),
            ("bridge_inbox", self.bridge_inbox.as_ref()),
            ("read_buffer", self.read_buffer.as_ref()),
            ("uring_entries", self.uring_entries.as_ref()),
            ("sqpoll", self.sqpoll.as_ref()),
            ("epoll", self.epoll.as_ref()),
            ("max_subscriptions", self.max_subscriptions.as_ref()),
            ("client_rate", self.client_rate.as_ref()),
            ("sys_subscribe", self.sys_subscribe.as_ref()),
            ("log", self.log.as_ref()),
            ("log_json", self.log_json.as_ref()),
        ]
        .into_iter()
        .map(|(key, value)| (key, value.cloned()))
        .collect();
        given.extend(self.broker.given());
        given.extend(self.transport.given());
        given.extend(self.presence.given());
        given.extend(self.lane.given());
        given.extend(self.admission.given());
        given.extend(self.guard.given());
        given
    }
}

/// The validated settings of one gateway node.
#[derive(Clone)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    /// Resolved: never 0.
    pub shards: usize,
    pub pin: Option<Vec<usize>>,
    pub max_connections: usize,
    pub api_key: Option<String>,
    pub jwt_secret: Option<String>,
    /// Required `aud` in client tokens (with `jwt_secret`).
    pub jwt_audience: Option<String>,
    /// Required `iss` in client tokens (with `jwt_secret`).
    pub jwt_issuer: Option<String>,
    pub allow_anonymous: bool,
    pub max_frame_bytes: usize,
    pub max_message_bytes: usize,
    pub outbound_bytes_max: usize,
    pub heartbeat: Duration,
    pub heartbeat_timeout: Duration,
    pub handshake_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub node: String,
    pub shard_inbox_messages: usize,
    /// How long a shard waits for more messages before writing a small batch (0: never).
    pub coalesce_delay: Duration,
    /// Bytes of one run of same-channel messages sent to a subscriber as one buffer (0: off).
    pub coalesce_bytes: usize,
    pub bridge_inbox_messages: usize,
    pub read_buffer_bytes: usize,
    pub uring_entries: u32,
    /// io_uring SQPOLL idle time; zero = off.
    pub sqpoll: Duration,
    pub force_epoll: bool,
    pub subscriptions_max: usize,
    pub client_messages_per_second: u32,
    pub sys_subscribe: bool,
    pub log_filter: String,
    pub log_json: bool,
    pub broker: BrokerConfig,
    pub transport: crate::transport::config::TransportConfig,
    pub presence: crate::presence::PresenceConfig,
    pub lane: crate::lane::LaneConfig,
    /// Accept rate, drain window, port sharing (`admission` module).
    pub admission: crate::admission::AdmissionConfig,
    /// Hostile-client bounds: node subscriptions, long-poll sessions, HTTP sockets (`guard`).
    pub guard: crate::guard::GuardConfig,
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

impl std::fmt::Debug for GatewayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redact = |s: &Option<String>| s.as_ref().map(|_| "<redacted>");
        f.debug_struct("GatewayConfig")
            .field("listen", &self.listen)
            .field("shards", &self.shards)
            .field("pin", &self.pin)
            .field("max_connections", &self.max_connections)
            .field("api_key", &redact(&self.api_key))
            .field("jwt_secret", &redact(&self.jwt_secret))
            .field("jwt_audience", &self.jwt_audience)
            .field("jwt_issuer", &self.jwt_issuer)
            .field("allow_anonymous", &self.allow_anonymous)
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("outbound_bytes_max", &self.outbound_bytes_max)
            .field("heartbeat", &self.heartbeat)
            .field("heartbeat_timeout", &self.heartbeat_timeout)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

pub enum Command {
    Gateway(GatewayConfig),
    /// `ringcast doctor`: the connection count to check the host for.
    Doctor { connections: usize },
    /// `ringcast worker`.
    Worker(crate::lane::sidecar::SidecarConfig),
    /// `ringcast dlq …`.
    Dlq { lane: crate::lane::LaneConfig, action: crate::lane::dlq::DlqAction },
}

/// A bad setting: which key, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub msg: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "config error: {}: {}", self.key, self.msg)
    }
}

impl std::error::Error for ConfigError {}

fn error(key: &str, msg: impl Into<String>) -> ConfigError {
    ConfigError { key: key.to_string(), msg: msg.into() }
}

/// Parses the process's arguments. Clap's usage errors (unknown flag, --help) print and
/// exit by themselves, with code 2 for errors.
pub fn load() -> Result<Command, ConfigError> {
    load_from(std::env::args_os())
}

pub fn load_from<I, T>(args: I) -> Result<Command, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::parse_from(args);
    match cli.command {
        Sub::Doctor(args) => Ok(Command::Doctor { connections: args.connections }),
        Sub::Worker(args) => {
            let file = match &cli.config {
                Some(path) => read_file(path)?,
                None => BTreeMap::new(),
            };
            Ok(Command::Worker(resolve_worker(&args, &file)?))
        }
        Sub::Dlq(args) => {
            let file = match &cli.config {
                Some(path) => read_file(path)?,
                None => BTreeMap::new(),
            };
            let lane = crate::lane::config::build(&merge(args.lane.given(), &file))?;
            let action = match args.action {
                DlqVerb::List => crate::lane::dlq::DlqAction::List,
                DlqVerb::Replay => crate::lane::dlq::DlqAction::Replay { nid: args.nid.clone() },
                DlqVerb::Purge => crate::lane::dlq::DlqAction::Purge,
            };
            Ok(Command::Dlq { lane, action })
        }
        Sub::Gateway(args) => {
            let file = match &cli.config {
                Some(path) => read_file(path)?,
                None => BTreeMap::new(),
            };
            Ok(Command::Gateway(resolve(&args, &file)?))
        }
    }
}

/// Reads a TOML file into key → text. Unknown keys are errors, so a typo never silently
/// leaves a default in place.
fn read_file(path: &std::path::Path) -> Result<BTreeMap<String, String>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| error("config", format!("cannot read {}: {e}", path.display())))?;
    parse_file(&text).map_err(|mut e| {
        e.msg = format!("{} (in {})", e.msg, path.display());
        e
    })
}

fn parse_file(text: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| error("config", e.message().to_string()))?;
    let known: Vec<&str> = GatewayArgs::default().given().into_iter().map(|(k, _)| k).collect();
    let mut values = BTreeMap::new();
    for (key, value) in table {
        if !known.contains(&key.as_str()) {
            return Err(error(&key, "unknown setting (see ringcast.example.toml for every key)"));
        }
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(items) => items
                .iter()
                .map(|v| match v {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(","),
            other => return Err(error(&key, format!("expected a string, number or boolean, found {}", other.type_str()))),
        };
        values.insert(key, text);
    }
    Ok(values)
}

/// Given flags over file values, for the keys in `given`.
fn merge<'k>(given: Vec<(&'k str, Option<String>)>, file: &BTreeMap<String, String>) -> BTreeMap<&'k str, String> {
    let mut values = BTreeMap::new();
    for (key, value) in given {
        if let Some(value) = value.or_else(|| file.get(key).cloned()) {
            values.insert(key, value);
        }
    }
    values
}

/// `ringcast worker`: the broker and Lane keys, checked for what a separate worker needs.
fn resolve_worker(args: &WorkerArgs, file: &BTreeMap<String, String>) -> Result<crate::lane::sidecar::SidecarConfig, ConfigError> {
    let mut given = args.broker.given();
    given.extend(args.presence.given());
    given.extend(args.lane.given());
    given.push(("log", args.log.clone()));
    given.push(("log_json", args.log_json.clone()));
    let values = merge(given, file);
    let broker = build_broker(&values)?;
    let lane = crate::lane::config::build(&values)?;
    crate::lane::sidecar::requirements(&lane, broker.nats.as_ref()).map_err(|(key, msg)| error(key, msg))?;
    let metrics_addr = args
        .metrics_addr
        .as_deref()
        .map(|v| v.parse().map_err(|_| error("metrics_addr", format!("{v:?} is not an address (write it like 127.0.0.1:9101)"))))
        .transpose()?;
    let presence = crate::presence::PresenceConfig::from_values(&values)?;
    Ok(crate::lane::sidecar::SidecarConfig {
        presence: presence.redis.is_some().then_some(presence),
        lane,
        nats: broker.nats.expect("checked by requirements()"),
        metrics_addr,
        log_filter: values.get("log").cloned().unwrap_or_else(|| "info".into()),
        log_json: values.get("log_json").map_or(Ok(false), |v| parse_bool(v).map_err(|m| error("log_json", m)))?,
    })
}

/// Flags and environment (through clap) win over the file; the file over defaults.
fn resolve(args: &GatewayArgs, file: &BTreeMap<String, String>) -> Result<GatewayConfig, ConfigError> {
    let mut values: BTreeMap<&str, String> = BTreeMap::new();
    for (key, given) in args.given() {
        if let Some(value) = given.or_else(|| file.get(key).cloned()) {
            values.insert(key, value);
        }
    }
    build(&values)
}

fn build(values: &BTreeMap<&str, String>) -> Result<GatewayConfig, ConfigError> {
    let get = |key: &str| values.get(key).map(String::as_str);
    let size = |key: &str, default: usize| get(key).map_or(Ok(default), |v| parse_size(v).map_err(|m| error(key, m)));
    let duration = |key: &str, default_ms: u64| {
        get(key).map_or(Ok(Duration::from_millis(default_ms)), |v| parse_duration(v).map_err(|m| error(key, m)))
    };
    let count = |key: &str, default: usize| get(key).map_or(Ok(default), |v| parse_count(v).map_err(|m| error(key, m)));
    let flag = |key: &str| get(key).map_or(Ok(false), |v| parse_bool(v).map_err(|m| error(key, m)));
    let listen = match get("listen") {
        Some(v) => v.parse().map_err(|_| error("listen", format!("{v:?} is not an address (write it like 127.0.0.1:8080 or [::]:8080)")))?,
        None => SocketAddr::from(([127, 0, 0, 1], 8080)),
    };
    let cpus = limits::online_cpus();
    let shards = match count("shards", 0)? {
        0 => cpus,
        n => n,
    };
    let pin = get("pin").map(|v| parse_cpu_list(v).map_err(|m| error("pin", m))).transpose()?;
    let config = GatewayConfig {
        listen,
        shards,
        pin,
        max_connections: count("max_connections", limits::CONNECTIONS_MAX)?,
        api_key: get("api_key").filter(|k| !k.is_empty()).map(str::to_owned),
        jwt_secret: get("jwt_secret").filter(|k| !k.is_empty()).map(str::to_owned),
        jwt_audience: get("jwt_audience").filter(|k| !k.is_empty()).map(str::to_owned),
        jwt_issuer: get("jwt_issuer").filter(|k| !k.is_empty()).map(str::to_owned),
        allow_anonymous: flag("allow_anonymous")?,
        max_frame_bytes: size("max_frame", limits::FRAME_BYTES_MAX)?,
        max_message_bytes: size("max_message", limits::MESSAGE_BYTES_MAX)?,
        outbound_bytes_max: size("outbound_limit", limits::OUTBOUND_BYTES_MAX)?,
        heartbeat: duration("heartbeat", limits::HEARTBEAT_MS)?,
        heartbeat_timeout: duration("heartbeat_timeout", limits::HEARTBEAT_TIMEOUT_MS)?,
        handshake_timeout: duration("handshake_timeout", limits::HANDSHAKE_TIMEOUT_MS)?,
        shutdown_timeout: duration("shutdown_timeout", limits::SHUTDOWN_TIMEOUT_MS)?,
        node: get("node").map(str::to_owned).unwrap_or_else(default_node),
        shard_inbox_messages: count("shard_inbox", limits::SHARD_INBOX_MESSAGES_MAX)?,
        coalesce_delay: duration("coalesce_delay", 0)?,
        coalesce_bytes: size("coalesce_bytes", limits::COALESCE_BYTES)?,
        bridge_inbox_messages: count("bridge_inbox", limits::BRIDGE_INBOX_MESSAGES_MAX)?,
        read_buffer_bytes: size("read_buffer", limits::READ_BUFFER_BYTES)?,
        uring_entries: count("uring_entries", limits::URING_ENTRIES as usize)? as u32,
        sqpoll: duration("sqpoll", 0)?,
        force_epoll: flag("epoll")?,
        subscriptions_max: count("max_subscriptions", limits::SUBSCRIPTIONS_PER_CONNECTION_MAX)?,
        client_messages_per_second: count("client_rate", limits::CLIENT_MESSAGES_PER_SECOND_MAX as usize)?.min(u32::MAX as usize) as u32,
        sys_subscribe: flag("sys_subscribe")?,
        log_filter: get("log").unwrap_or("info").to_owned(),
        log_json: flag("log_json")?,
        broker: build_broker(values)?,
        transport: crate::transport::config::build(values)?,
        presence: crate::presence::PresenceConfig::from_values(values)?,
        lane: crate::lane::config::build(values)?,
        admission: crate::admission::build(values)?,
        guard: crate::guard::build(values)?,
    };
    validate(&config, cpus)?;
    Ok(config)
}

fn validate(c: &GatewayConfig, cpus: usize) -> Result<(), ConfigError> {
    if c.shards > limits::SHARD_COUNT_MAX {
        return Err(error("shards", format!("{} shards is more than the maximum {}", c.shards, limits::SHARD_COUNT_MAX)));
    }
    if let Some(pin) = &c.pin {
        if pin.len() != c.shards {
            return Err(error("pin", format!("lists {} CPUs but there are {} shards; give one CPU per shard", pin.len(), c.shards)));
        }
        if let Some(cpu) = pin.iter().find(|cpu| **cpu >= cpus) {
            return Err(error("pin", format!("CPU {cpu} does not exist (this host has CPUs 0..{})", cpus - 1)));
        }
    }
    if c.max_connections == 0 {
        return Err(error("max_connections", "must be at least 1"));
    }
    if c.max_frame_bytes < 125 {
        return Err(error("max_frame", "must be at least 125 bytes (the largest control frame)"));
    }
    if c.max_frame_bytes > c.max_message_bytes {
        return Err(error("max_frame", format!("({}) is larger than max_message ({}); raise max_message", c.max_frame_bytes, c.max_message_bytes)));
    }
    // A message no subscriber could queue would close every subscriber with 4008 (and,
    // from history, every resume): the backlog must hold the largest message and its header.
    // (max_frame <= max_message, checked above, so this also holds one max_frame frame.)
    let message_frame = c.max_message_bytes + limits::FRAME_HEADER_BYTES_MAX;
    if c.outbound_bytes_max < message_frame {
        return Err(error(
            "outbound_limit",
            format!(
                "({} bytes) must hold one max_message ({} bytes) plus its {}-byte frame header; raise outbound_limit to at least {message_frame} or lower max_message",
                c.outbound_bytes_max,
                c.max_message_bytes,
                limits::FRAME_HEADER_BYTES_MAX
            ),
        ));
    }
    if c.heartbeat.is_zero() || c.heartbeat >= c.heartbeat_timeout {
        return Err(error("heartbeat", format!("({:?}) must be above zero and below heartbeat_timeout ({:?})", c.heartbeat, c.heartbeat_timeout)));
    }
    for (key, n) in [("shard_inbox", c.shard_inbox_messages), ("bridge_inbox", c.bridge_inbox_messages)] {
        if n < limits::INBOX_MESSAGES_MIN {
            return Err(error(key, format!("{n} is below the minimum {} messages", limits::INBOX_MESSAGES_MIN)));
        }
    }
    if c.sqpoll > Duration::from_millis(limits::SQPOLL_IDLE_MS_MAX) {
        return Err(error("sqpoll", format!("{:?} is above the maximum {}ms (the poller's idle time before it sleeps)", c.sqpoll, limits::SQPOLL_IDLE_MS_MAX)));
    }
    if c.coalesce_delay > Duration::from_micros(limits::COALESCE_DELAY_US_MAX) {
        return Err(error("coalesce_delay", format!("{:?} is above the maximum {}us", c.coalesce_delay, limits::COALESCE_DELAY_US_MAX)));
    }
    if c.coalesce_bytes > limits::COALESCE_BYTES_MAX {
        return Err(error("coalesce_bytes", format!("{} bytes is above the maximum 1MiB (a run is one buffer every subscriber holds until written)", c.coalesce_bytes)));
    }
    if c.read_buffer_bytes < 4096 {
        return Err(error("read_buffer", "must be at least 4KiB"));
    }
    if !c.uring_entries.is_power_of_two() || !(64..=32768).contains(&c.uring_entries) {
        return Err(error("uring_entries", format!("{} must be a power of two from 64 to 32768", c.uring_entries)));
    }
    if c.client_messages_per_second == 0 {
        return Err(error("client_rate", "must be at least 1 per second"));
    }
    if c.allow_anonymous && c.jwt_secret.is_none() {
        return Err(error("allow_anonymous", "only means something with jwt_secret set (without a secret every connection is anonymous)"));
    }
    for (key, value) in [("jwt_audience", &c.jwt_audience), ("jwt_issuer", &c.jwt_issuer)] {
        if value.is_some() && c.jwt_secret.is_none() {
            return Err(error(key, "only means something with jwt_secret set (without a secret no token is read)"));
        }
    }
    Ok(())
}

fn build_broker(values: &BTreeMap<&str, String>) -> Result<BrokerConfig, ConfigError> {
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
            };
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

/// `hostname-pid`: unique among the processes of one host (several gateways may share a
/// port there), as presence and connection ids need.
fn default_node() -> String {
    format!("{}-{}", hostname(), std::process::id())
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is writable for its length; gethostname NUL-terminates within it.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let name = if ok { String::from_utf8_lossy(&buf[..buf.iter().position(|b| *b == 0).unwrap_or(0)]).into_owned() } else { String::new() };
    if name.is_empty() {
        "ringcast".into()
    } else {
        name
    }
}

/// `64KiB`, `1MiB`, `512`, `64KB` (KB = 1000, KiB = 1024; case-insensitive; a space allowed).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let bad = || format!("{text:?} is not a size (write it like 64KiB, 1MiB or 512)");
    let number: u64 = digits.parse().map_err(|_| bad())?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1000,
        "kib" => 1024,
        "mb" | "m" => 1000 * 1000,
        "mib" => 1024 * 1024,
        "gb" | "g" => 1000 * 1000 * 1000,
        "gib" => 1024 * 1024 * 1024,
        _ => return Err(bad()),
    };
    number.checked_mul(multiplier).and_then(|n| usize::try_from(n).ok()).ok_or_else(|| format!("{text:?} is too large"))
}

/// `250ms`, `30s`, `5m`, `1h`. A unit is required: a bare number is ambiguous.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let bad = || format!("{text:?} is not a duration (write it like 250ms, 30s, 5m or 1h)");
    let number: u64 = digits.parse().map_err(|_| bad())?;
    if matches!(unit.trim(), "us" | "µs") {
        return Ok(Duration::from_micros(number));
    }
    let ms = match unit.trim() {
        "ms" => Some(number),
        "s" => number.checked_mul(1000),
        "m" | "min" => number.checked_mul(60_000),
        "h" => number.checked_mul(3_600_000),
        "" => return Err(format!("{text:?} has no unit (write it like {number}s or {number}ms)")),
        _ => return Err(bad()),
    };
    ms.map(Duration::from_millis).ok_or_else(|| format!("{text:?} is too large"))
}

pub fn parse_count(text: &str) -> Result<usize, String> {
    let t = text.trim().replace('_', "");
    t.parse().map_err(|_| format!("{text:?} is not a whole number"))
}

pub fn parse_bool(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("{text:?} is not true or false")),
    }
}

fn parse_cpu_list(text: &str) -> Result<Vec<usize>, String> {
    text.split(',')
        .map(|part| part.trim().parse::<usize>().map_err(|_| format!("{text:?} is not a CPU list (write it like 0,1,2)")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway(args: &[&str]) -> Result<GatewayConfig, ConfigError> {
        let mut full = vec!["ringcast", "gateway"];
        full.extend_from_slice(args);
        match load_from(full)? {
            Command::Gateway(config) => Ok(config),
            _ => unreachable!(),
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("64 kib"), Ok(65536));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("64KB"), Ok(64_000));
        assert_eq!(parse_size("512"), Ok(512));
        assert!(parse_size("64XB").unwrap_err().contains("64KiB"));
        assert!(parse_size("").is_err());
        assert!(parse_size("-1KiB").is_err());
        assert!(parse_size("99999999999999GiB").unwrap_err().contains("too large"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("200us"), Ok(Duration::from_micros(200)));
        assert!(parse_duration("30").unwrap_err().contains("no unit"));
        assert!(parse_duration("soon").unwrap_err().contains("250ms"));
    }

    #[test]
    fn defaults_are_valid() {
        let c = gateway(&[]).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.shards, limits::online_cpus());
        assert_eq!(c.max_frame_bytes, limits::FRAME_BYTES_MAX);
        assert_eq!(c.heartbeat, Duration::from_millis(limits::HEARTBEAT_MS));
        assert!(c.api_key.is_none() && c.jwt_secret.is_none());
    }

    #[test]
    fn errors_name_their_key() {
        let e = gateway(&["--max-frame", "64XB"]).unwrap_err();
        assert_eq!(e.key, "max_frame");
        assert_eq!(e.to_string().lines().count(), 1);
        assert_eq!(gateway(&["--heartbeat", "30s", "--heartbeat-timeout", "10s"]).unwrap_err().key, "heartbeat");
        assert_eq!(gateway(&["--shards", "1", "--pin", "0,1"]).unwrap_err().key, "pin");
        assert_eq!(gateway(&["--shards", "1", "--pin", "9999"]).unwrap_err().key, "pin");
        assert_eq!(gateway(&["--max-frame", "2MiB"]).unwrap_err().key, "max_frame");
        assert_eq!(gateway(&["--outbound-limit", "1KiB"]).unwrap_err().key, "outbound_limit");
        assert_eq!(gateway(&["--uring-entries", "100"]).unwrap_err().key, "uring_entries");
        assert_eq!(gateway(&["--sqpoll", "2s"]).unwrap_err().key, "sqpoll");
        assert_eq!(gateway(&["--sqpoll", "2ms"]).unwrap().sqpoll, Duration::from_millis(2));
        assert_eq!(gateway(&["--coalesce-bytes", "2MiB"]).unwrap_err().key, "coalesce_bytes");
        assert_eq!(gateway(&["--coalesce-bytes", "0"]).unwrap().coalesce_bytes, 0);
        assert_eq!(gateway(&[]).unwrap().coalesce_bytes, 64 * 1024);
        assert_eq!(gateway(&["--listen", "nowhere"]).unwrap_err().key, "listen");
        assert_eq!(gateway(&["--allow-anonymous"]).unwrap_err().key, "allow_anonymous");
        assert_eq!(gateway(&["--shard-inbox", "8"]).unwrap_err().key, "shard_inbox");
        assert_eq!(gateway(&["--jwt-audience", "rt"]).unwrap_err().key, "jwt_audience");
        assert_eq!(gateway(&["--jwt-issuer", "auth"]).unwrap_err().key, "jwt_issuer");
        let c = gateway(&["--jwt-secret", "s", "--jwt-audience", "rt", "--jwt-issuer", "auth"]).unwrap();
        assert_eq!((c.jwt_audience.as_deref(), c.jwt_issuer.as_deref()), (Some("rt"), Some("auth")));
    }

    #[test]
    fn outbound_limit_holds_the_largest_message() {
        let c = gateway(&[]).unwrap();
        assert!(c.outbound_bytes_max >= c.max_message_bytes + limits::FRAME_HEADER_BYTES_MAX, "the defaults satisfy the rule");
        let e = gateway(&["--max-message", "1MiB"]).unwrap_err();
        assert_eq!(e.key, "outbound_limit");
        assert!(e.msg.contains("max_message") && e.msg.contains("1048590"), "names both keys and the least that works: {}", e.msg);
        assert!(gateway(&["--max-message", "1MiB", "--outbound-limit", "1048590"]).is_ok());
        assert_eq!(gateway(&["--outbound-limit", "128KiB"]).unwrap_err().key, "outbound_limit");
    }

    #[test]
    fn flags_override_the_file() {
        let dir = std::env::temp_dir().join(format!("ringcast-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ringcast.toml");
        std::fs::write(&path, "max_connections = 5000\nheartbeat = \"5s\"\nmax_frame = \"16KiB\"\npin = [0]\nshards = 1\n").unwrap();
        let c = gateway(&["--config", path.to_str().unwrap(), "--heartbeat", "7s"]).unwrap();
        assert_eq!(c.max_connections, 5000, "from the file");
        assert_eq!(c.heartbeat, Duration::from_secs(7), "flag beats file");
        assert_eq!(c.max_frame_bytes, 16 * 1024);
        assert_eq!(c.pin, Some(vec![0]));
        std::fs::write(&path, "max_conections = 5\n").unwrap();
        let e = gateway(&["--config", path.to_str().unwrap()]).unwrap_err();
        assert_eq!(e.key, "max_conections");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn broker_settings() {
        let c = gateway(&[]).unwrap();
        assert!(c.broker.nats.is_none() && !c.broker.history.is_enabled());
        assert_eq!(c.broker.history.stream, "RINGCAST_RC");
        let c = gateway(&["--nats", "nats://127.0.0.1:4222,nats://127.0.0.1:4223", "--nats-prefix", "acme.rt", "--history", "chat.>", "--history", "orders.*,alerts.x"]).unwrap();
        let nats = c.broker.nats.as_ref().unwrap();
        assert_eq!(nats.urls.len(), 2);
        assert_eq!(nats.prefix, "acme.rt");
        assert_eq!(c.broker.history.patterns, vec!["chat.>", "orders.*", "alerts.x"]);
        assert_eq!(c.broker.history.stream, "RINGCAST_ACME_RT");
        assert_eq!(c.broker.history.pattern_covering("chat.a.b"), Some("chat.>"));
        assert_eq!(c.broker.history.pattern_covering("orders.*"), Some("orders.*"));
        assert_eq!(c.broker.history.pattern_covering("orders.>"), None);
        assert_eq!(gateway(&["--nats-prefix", "a b"]).unwrap_err().key, "nats_prefix");
        assert_eq!(gateway(&["--nats-prefix", "$sys"]).unwrap_err().key, "nats_prefix");
        assert_eq!(gateway(&["--nats", "nats://x", "--nats-user", "u"]).unwrap_err().key, "nats_user");
        assert_eq!(gateway(&["--history", "a.*", "--history", "*.b"]).unwrap_err().key, "history");
        assert_eq!(gateway(&["--history", "$sys.>"]).unwrap_err().key, "history");
        assert_eq!(gateway(&["--history", "a..b"]).unwrap_err().key, "history");
        assert_eq!(gateway(&["--history-messages", "0"]).unwrap_err().key, "history_messages");
        assert_eq!(gateway(&["--history-age", "0s"]).unwrap_err().key, "history_age");
        assert_eq!(gateway(&["--history-replicas", "0"]).unwrap_err().key, "history_replicas");
        let nats = gateway(&["--nats", "nats://127.0.0.1:4222", "--nats-sub-confirm-timeout", "2s", "--nats-sub-confirms-waiting", "10"]).unwrap().broker.nats.unwrap();
        assert_eq!((nats.sub_confirm_timeout, nats.sub_confirms_waiting_max), (Duration::from_secs(2), 10));
        assert_eq!(gateway(&["--nats", "nats://127.0.0.1:4222", "--nats-sub-confirm-timeout", "0s"]).unwrap_err().key, "nats_sub_confirm_timeout");
        assert_eq!(gateway(&["--history-replicas", "6"]).unwrap_err().key, "history_replicas");
        assert_eq!(gateway(&["--history-replicas", "3"]).unwrap().broker.history.replicas, 3);
        assert_eq!(gateway(&[]).unwrap().broker.history.replicas, 1);
        let file = parse_file("history = [\"chat.>\", \"orders.*\"]\n").unwrap();
        assert_eq!(file["history"], "chat.>,orders.*");
    }

    #[test]
    fn debug_redacts_secrets() {
        let c = gateway(&["--api-key", "k3y", "--jwt-secret", "s3cret"]).unwrap();
        let text = format!("{c:?}");
        assert!(!text.contains("k3y") && !text.contains("s3cret"), "{text}");
    }
}
