//! Configuration: CLI flags > `RINGCAST_*` environment > `--config` TOML file > defaults,
//! parsed and validated once into [`GatewayConfig`], then cloned into every thread.
//!
//! Every value arrives as text (a flag, a variable, a TOML scalar) and is parsed by one
//! function per kind, so a bad value always gives the same kind of one-line error naming
//! its key. `main` prints it and exits with code 2 (clap's own usage errors also use 2).

pub mod admission;
pub mod broker;
pub mod compression;
pub mod fanout;
pub mod guard;
pub mod lane;
pub mod presence;
pub mod pusher;
pub mod transport;
pub mod value;
pub mod worker;

pub use broker::{BrokerConfig, HistoryConfig, NatsConfig};
use broker::{build_broker, BrokerArgs};
pub use value::{parse_bool, parse_count, parse_duration, parse_size, ConfigError};
use value::error;
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
    presence: presence::PresenceArgs,
    #[command(flatten)]
    lane: crate::config::lane::LaneArgs,
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
    lane: crate::config::lane::LaneArgs,
}

#[derive(Args, Debug)]
struct DoctorArgs {
    /// Connections the node should hold.
    #[arg(long, env = "RINGCAST_DOCTOR_CONNECTIONS", default_value_t = 1_000_000, value_name = "N")]
    connections: usize,
    /// Sockets each gateway may hold in the HTTP phase besides its connections
    /// (`--max-http-connections` of the gateways you will run); they need descriptors too.
    #[arg(long, env = "RINGCAST_DOCTOR_HTTP_CONNECTIONS", default_value_t = crate::limits::HTTP_CONNECTIONS_MAX, value_name = "N")]
    http_connections: usize,
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
    transport: crate::config::transport::TransportArgs,
    #[command(flatten)]
    presence: presence::PresenceArgs,
    #[command(flatten)]
    lane: crate::config::lane::LaneArgs,
    #[command(flatten)]
    admission: admission::AdmissionArgs,
    #[command(flatten)]
    guard: guard::GuardArgs,
    #[command(flatten)]
    fanout: fanout::FanoutArgs,
    #[command(flatten)]
    compression: compression::CompressionArgs,
    #[command(flatten)]
    pusher: pusher::PusherArgs,
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
        given.extend(self.fanout.given());
        given.extend(self.compression.given());
        given.extend(self.pusher.given());
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
    pub transport: crate::config::transport::TransportConfig,
    pub presence: presence::PresenceConfig,
    pub lane: lane::LaneConfig,
    /// Accept rate, drain window, port sharing (`admission` module).
    pub admission: admission::AdmissionConfig,
    /// Hostile-client bounds: node subscriptions, long-poll sessions, HTTP sockets (`guard`).
    pub guard: guard::GuardConfig,
    pub fanout: fanout::FanoutConfig,
    /// permessage-deflate: on/off, threshold, level (`config::compression`).
    pub compression: compression::CompressionConfig,
    /// Pusher Channels apps and bounds (`config::pusher`); no apps: Pusher off.
    pub pusher: pusher::PusherConfig,
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
    /// `ringcast doctor`: the connection count to check the host for, and the HTTP-phase
    /// sockets each gateway may hold besides.
    Doctor { connections: usize, http_connections: usize },
    /// `ringcast worker`.
    Worker(worker::SidecarConfig),
    /// `ringcast dlq …`.
    Dlq { lane: lane::LaneConfig, action: lane::DlqAction },
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
        Sub::Doctor(args) => Ok(Command::Doctor { connections: args.connections, http_connections: args.http_connections }),
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
            let lane = crate::config::lane::build(&merge(args.lane.given(), &file))?;
            let action = match args.action {
                DlqVerb::List => lane::DlqAction::List,
                DlqVerb::Replay => lane::DlqAction::Replay { nid: args.nid.clone() },
                DlqVerb::Purge => lane::DlqAction::Purge,
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
            // Arrays of tables (`[[pusher_apps]]`) go on as JSON text for their module.
            toml::Value::Array(items) if !items.is_empty() && items.iter().all(|v| v.is_table()) => {
                serde_json::to_string(&items).map_err(|e| error(&key, e.to_string()))?
            }
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
fn resolve_worker(args: &WorkerArgs, file: &BTreeMap<String, String>) -> Result<worker::SidecarConfig, ConfigError> {
    let mut given = args.broker.given();
    given.extend(args.presence.given());
    given.extend(args.lane.given());
    given.push(("log", args.log.clone()));
    given.push(("log_json", args.log_json.clone()));
    let values = merge(given, file);
    let broker = build_broker(&values)?;
    let lane = crate::config::lane::build(&values)?;
    worker::requirements(&lane, broker.nats.as_ref()).map_err(|(key, msg)| error(key, msg))?;
    let metrics_addr = args
        .metrics_addr
        .as_deref()
        .map(|v| v.parse().map_err(|_| error("metrics_addr", format!("{v:?} is not an address (write it like 127.0.0.1:9101)"))))
        .transpose()?;
    let presence = presence::PresenceConfig::from_values(&values)?;
    Ok(worker::SidecarConfig {
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
        transport: crate::config::transport::build(values)?,
        presence: presence::PresenceConfig::from_values(values)?,
        lane: crate::config::lane::build(values)?,
        admission: admission::build(values)?,
        guard: guard::build(values)?,
        fanout: fanout::build(values, size("outbound_limit", limits::OUTBOUND_BYTES_MAX)?)?,
        compression: compression::build(values)?,
        pusher: pusher::build(values)?,
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

    /// ringcast.example.toml is the reference the "unknown setting" error points to: it
    /// parses, its values build a config, and it names every gateway key (set or commented).
    #[test]
    fn the_example_file_parses_and_names_every_key() {
        let text = include_str!("../../ringcast.example.toml");
        let values = parse_file(text).unwrap_or_else(|e| panic!("ringcast.example.toml: {}: {}", e.key, e.msg));
        assert!(!values.is_empty());
        let dir = std::env::temp_dir().join(format!("ringcast-example-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ringcast.toml");
        std::fs::write(&path, text).unwrap();
        let built = gateway(&["--config", path.to_str().unwrap()]);
        let _ = std::fs::remove_dir_all(&dir);
        if let Err(e) = built {
            panic!("ringcast.example.toml does not build a config: {}: {}", e.key, e.msg);
        }
        let missing: Vec<&str> = GatewayArgs::default()
            .given()
            .into_iter()
            .map(|(key, _)| key)
            .filter(|key| {
                !text.lines().any(|line| {
                    let line = line.trim_start_matches("# ");
                    line.starts_with(&format!("{key} =")) || line.starts_with(&format!("[[{key}]]"))
                })
            })
            .collect();
        assert!(missing.is_empty(), "keys missing from ringcast.example.toml: {missing:?}");
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
