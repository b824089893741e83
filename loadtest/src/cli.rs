//! Command line: every flag with a help line. Parsed once in `main`.

use crate::adapter::TargetKind;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::time::Duration;

fn duration(text: &str) -> Result<Duration, String> {
    crate::host::parse_duration(text)
}

/// `--max-p99`: a fixed bound, or one scaled to the subscriber count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MaxP99 {
    Auto,
    Fixed(Duration),
}

/// The `auto` bound's floor and its share per subscriber.
pub const MAX_P99_AUTO_FLOOR: Duration = Duration::from_millis(50);
pub const MAX_P99_AUTO_PER_SUBSCRIBER: Duration = Duration::from_micros(25);

impl MaxP99 {
    /// The bound for a run with `subscribers` subscribers.
    pub fn bound(self, subscribers: usize) -> Duration {
        match self {
            MaxP99::Fixed(d) => d,
            MaxP99::Auto => MAX_P99_AUTO_FLOOR.max(MAX_P99_AUTO_PER_SUBSCRIBER * subscribers.min(u32::MAX as usize) as u32),
        }
    }
}

impl std::fmt::Display for MaxP99 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MaxP99::Auto => f.write_str("auto"),
            MaxP99::Fixed(d) => write!(f, "{d:?}"),
        }
    }
}

fn max_p99(text: &str) -> Result<MaxP99, String> {
    if text == "auto" {
        return Ok(MaxP99::Auto);
    }
    duration(text).map(MaxP99::Fixed).map_err(|e| format!("{e} (or `auto`: 50ms, and 25us per subscriber past 2,000)"))
}

#[derive(Parser, Debug)]
#[command(
    name = "ringcast-loadtest",
    version,
    about = "Load-test harness for the ringcast WebSocket gateway and its peers (nats-server and mosquitto over WebSocket, Pusher protocol 7 servers)",
    after_help = "Each scenario prints a progress line every second (stderr) and a final table (stdout), or one JSON \
                  object with --json. Pin server and harness apart, e.g. `taskset -c 0 ringcast gateway --shards 1 --pin 0` \
                  and `ringcast-loadtest ... --cpus 1`. See README.md (Load testing) and BENCHMARKS.md."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Scenario,
}

#[derive(Subcommand, Debug)]
pub enum Scenario {
    /// N subscribers on one channel; publish at --rate (or --max) and measure delivery.
    Fanout(FanoutArgs),
    /// IoT: M devices each publishing to its own channel; S subscribers per device channel
    /// plus D dashboards on the wildcard; delivery, latency and loss per class.
    Telemetry(TelemetryArgs),
    /// Kill-and-restart or drain the server mid-run; time until every client is back and
    /// whether any resumed subscription missed a message.
    Reconnect(ReconnectArgs),
    /// In-app notifications (ringcast Lane): N users, half online from the start, half
    /// connecting after --offline-for; POST /api/notify at --rate; each `notify` is acked.
    /// Accepted/s, accept latency, online delivery latency, delay after reconnect,
    /// duplicates and notifications missing at the end.
    Notify(NotifyArgs),
    /// The machine's ceiling: the same fan-out against a minimal built-in server.
    Limit(LimitArgs),
    /// Connect N, hold them idle, report connect rate and server RSS per connection.
    Idle(IdleArgs),
    /// Connection storm: N connections as fast as possible; handshakes/s and failures.
    Burst(BurstArgs),
    /// ringcast: `sub` → `ok` latency. Each `sub` is a new channel (on NATS a new
    /// subscription the server must confirm); sent open loop at --rate over --conns.
    Subscribe(SubscribeArgs),
    /// Medians and spread of figures over runs: reads `--json` results (one per line) and
    /// prints one Markdown table (rows: --label, columns: figures).
    Summarize(SummarizeArgs),
    /// (internal) One client worker process, driven over stdin/stdout.
    #[command(hide = true)]
    Worker,
    /// (internal) The `limit` ceiling server process, driven over stdin/stdout.
    #[command(hide = true)]
    LimitServer(LimitServerArgs),
}

#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// WebSocket endpoint of the server under test (loopback only). Several, comma-separated,
    /// spread connections round-robin (e.g. one per node of a nats-server cluster).
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,
    /// What speaks at --url: ringcast (protocol v1), nats-ws (nats-server's websocket
    /// listener), mqtt-ws (mosquitto's websockets listener, MQTT 3.1.1), pusher (Pusher
    /// Channels protocol 7: ringcast's /app/{key} endpoint, Sockudo; needs --pusher-app).
    #[arg(long, value_enum, default_value_t = TargetKind::Ringcast)]
    pub target: TargetKind,
    /// --target pusher: the app as ID:KEY:SECRET, as the server knows it (ringcast's
    /// `--pusher-app`). Clients connect to /app/KEY?protocol=7 (when --url has no path or
    /// the default /ws) and ready at `pusher:connection_established`, or at
    /// `pusher_internal:subscription_succeeded` when they subscribe; messages are
    /// triggered through the signed HTTP API, `POST /apps/ID/events` on the --url node.
    #[arg(long, value_name = "ID:KEY:SECRET", value_parser = crate::pusher::parse_app)]
    pub pusher_app: Option<crate::pusher::App>,
    /// Number of client connections [default: 1000; telemetry: devices × subs-per-device + dashboards].
    #[arg(long)]
    pub conns: Option<usize>,
    /// Worker processes to spread connections over [default: ceil(conns / 19000)].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Source addresses 127.0.0.1..127.0.0.K to bind before connect [default: ceil(conns / 10000)].
    #[arg(long)]
    pub source_ips: Option<usize>,
    /// New connections per second over all workers; 0 = as fast as possible [default: 20000; burst: 0].
    #[arg(long)]
    pub connect_rate: Option<f64>,
    /// Connections in flight (connecting, upgrading, joining) per worker.
    #[arg(long, default_value_t = crate::limits::INFLIGHT_DEFAULT)]
    pub inflight: usize,
    /// A connection not ready after this long counts as a timeout failure.
    #[arg(long, value_parser = duration, default_value = "10s")]
    pub connect_timeout: Duration,
    /// Client-side heartbeat check, as a real client does it: a ready connection that
    /// receives nothing, not even a ping, for this long is closed and counted
    /// (`dropped_heartbeat_timeout`). Set it above the server's ping interval (ringcast:
    /// `--heartbeat`, 25s by default, e.g. 60s here). [default: off]
    #[arg(long, value_parser = duration)]
    pub heartbeat_timeout: Option<Duration>,
    /// Offer permessage-deflate (RFC 7692) on the upgrade, as browsers do, and inflate
    /// compressed (RSV1) frames before reading them. For measuring ringcast's compression
    /// (the gateway's --compression); the harness's own inflate CPU is on the client side.
    #[arg(long)]
    pub deflate: bool,
    /// PID(s) of the server under test, comma-separated (several gateway processes on one
    /// port): their summed CPU-µs per delivery and RSS, from /proc.
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// Pin the harness (parent and workers) to these CPUs, e.g. "1" or "0-1".
    #[arg(long)]
    pub cpus: Option<String>,
    /// Print one JSON object (scenario, parameters, figures, host facts) instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Write an SVG chart (deliveries/s, p99 latency and connections over time) to this file.
    #[arg(long)]
    pub svg: Option<std::path::PathBuf>,
    /// Free text stored in the JSON parameters, to group runs (`summarize` rows).
    #[arg(long)]
    pub label: Option<String>,
}

impl ClientArgs {
    pub fn conns(&self) -> usize {
        self.conns.unwrap_or(1000)
    }
}

/// Where messages come from, shared by every publishing scenario.
#[derive(Args, Debug, Clone)]
pub struct SourceArgs {
    /// API key for POST /api/publish (sent as Authorization: Bearer KEY), and for --drain-url.
    #[arg(long, default_value = "")]
    pub api_key: String,
    /// How to publish: `http` (POST /api/publish on the --url node; ringcast only; for
    /// --target pusher the signed `POST /apps/ID/events` there, also named `pusher`),
    /// `nats://HOST:PORT[?prefix=rc]` (NATS PUB to `{prefix}.{channel}`: the gateway's
    /// NATS bridge, or nats-server itself for --target nats-ws, where the prefix defaults
    /// to none), `mqtt://HOST:PORT[?prefix=rc]` (MQTT QoS 0 PUBLISH: to mosquitto for
    /// --target mqtt-ws; for ringcast, devices publishing to nats-server's MQTT listener,
    /// topic `{prefix}/a/b` for channel `a.b`, README "IoT devices over MQTT") [default: http].
    #[arg(long)]
    pub publish: Option<String>,
    /// Publisher connections, each with an equal share of the rate. HTTP has one request
    /// in flight per connection, so more than 1 lets publishes arrive together as from
    /// many backends. With several channels each channel stays on one publisher (ordered).
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Size in bytes of each message's `data` JSON (carries the send time and a number).
    #[arg(long, default_value_t = 200)]
    pub payload: usize,
    /// What fills the payload: `x` (one letter; deflates ~100x) or `telemetry`: an array of
    /// readings like {"device":"dev-0042","sensor":"temp","ts":1733450000123,"value":21.5,"unit":"C"}
    /// from four sensors sampled once a second (timestamps increase), each value a small
    /// random walk at fixed precision, from a fixed seed (the same bytes every run); bytes
    /// left over (under one reading) are random digits. Deflates ~3.7x at 1000 B, ~2.7x at
    /// 500 B. Use `telemetry` when measuring compression.
    #[arg(long, default_value = "x", value_parser = ["x", "telemetry"])]
    pub pad: String,
}

#[derive(Args, Debug, Clone)]
pub struct PublishArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Messages published per second.
    #[arg(long, conflicts_with = "max")]
    pub rate: Option<f64>,
    /// Closed loop: raise the rate while every delivery arrives; report the highest sustained.
    #[arg(long)]
    pub max: bool,
    /// Starting rate for --max (msgs/s).
    #[arg(long, default_value_t = 50.0)]
    pub max_start: f64,
    /// --max: a step also fails when its p99 latency exceeds this (a queue building up
    /// delivers everything, late). `auto` (default) scales the bound with the subscribers:
    /// 50ms up to 2,000, then 25us per subscriber (250ms at 10,000, 2.5s at 100,000). One
    /// message to N subscribers is N socket writes (~9-12us each on loopback here), and a
    /// message that arrives during one pass waits for it and then for its own, so a fixed
    /// 50ms bound is one no server can meet past ~4,000 subscribers on one core.
    #[arg(long, value_parser = max_p99, default_value = "auto")]
    pub max_p99: MaxP99,
    /// How long to publish (with --max: the length of each step, default 5s then).
    #[arg(long, value_parser = duration)]
    pub duration: Option<Duration>,
    /// Channel all subscribers join and the publisher publishes to.
    #[arg(long, default_value = "bench")]
    pub channel: String,
}

#[derive(Args, Debug, Clone)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub publish: PublishArgs,
    /// Once every subscriber is ready, hold them this long with nothing published (only
    /// the server's heartbeats) before publishing: drops and heartbeat timeouts during
    /// the hold, heartbeats received, server and harness CPU seconds per 1,000 heartbeats.
    /// At most 1h.
    #[arg(long, value_parser = duration, default_value = "0s")]
    pub hold: Duration,
    /// After publishing ends, wait at most this long for the last deliveries (a broadcast
    /// to 1,000,000 subscribers takes seconds to write on one core); the wait also ends
    /// when deliveries stop growing for a tenth of it (at least 1 s). At most 10m.
    #[arg(long, value_parser = duration, default_value = "5s")]
    pub drain: Duration,
}

#[derive(Args, Debug, Clone)]
pub struct TelemetryArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub source: SourceArgs,
    /// Devices, each publishing to its own channel.
    #[arg(long, default_value_t = 100)]
    pub devices: usize,
    /// Messages per second each device publishes.
    #[arg(long, default_value_t = 1.0)]
    pub device_rate: f64,
    /// Subscribers on each device's channel.
    #[arg(long, default_value_t = 10)]
    pub subs_per_device: usize,
    /// Dashboard subscribers on the wildcard over all devices (the channel with `{i}` → `*`).
    #[arg(long, default_value_t = 10)]
    pub dashboards: usize,
    /// Device channel; `{i}` is the device number.
    #[arg(long, default_value = "dev.{i}.temp")]
    pub device_channel: String,
    /// How long the devices publish.
    #[arg(long, value_parser = duration, default_value = "20s")]
    pub duration: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KillSignal {
    /// SIGKILL: the process dies at once; clients see resets.
    Kill,
    /// SIGTERM: the process shuts down gracefully (ringcast closes with 1001).
    Term,
}

#[derive(Args, Debug, Clone)]
pub struct ReconnectArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub source: SourceArgs,
    /// Messages per second published throughout (before, during and after the disruption).
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// How long to publish in all.
    #[arg(long, value_parser = duration, default_value = "20s")]
    pub duration: Duration,
    /// Channel every client subscribes to. For resume, enable history on it in the gateway;
    /// clients then resubscribe with `since` = the last `seq` they saw.
    #[arg(long, default_value = "bench")]
    pub channel: String,
    /// When to disrupt, after publishing starts [default: a third of --duration].
    #[arg(long, value_parser = duration)]
    pub disrupt_at: Option<Duration>,
    /// Disrupt by killing this process (e.g. one of several gateways on one port).
    #[arg(long)]
    pub kill_pid: Option<u32>,
    /// Signal for --kill-pid.
    #[arg(long, value_enum, default_value_t = KillSignal::Kill)]
    pub kill_signal: KillSignal,
    /// Shell command run after the kill or drain request (e.g. to start a new gateway in
    /// the background); it must return within 30 s.
    #[arg(long)]
    pub restart_cmd: Option<String>,
    /// Disrupt by draining: POST this URL (e.g. http://127.0.0.1:8080/admin/drain) with
    /// --api-key; the gateway closes clients with 1012 over its drain window.
    #[arg(long)]
    pub drain_url: Option<String>,
    /// First reconnect delay; doubles per failed attempt up to --reconnect-cap, each with
    /// equal jitter (half fixed, half random).
    #[arg(long, value_parser = duration, default_value = "100ms")]
    pub reconnect_base: Duration,
    /// Longest reconnect delay.
    #[arg(long, value_parser = duration, default_value = "2s")]
    pub reconnect_cap: Duration,
    /// Failed attempts in a row after which a client gives up (counted).
    #[arg(long, default_value_t = 40)]
    pub reconnect_attempts: u32,
    /// After the disruption, wait at most this long for every client to be back.
    #[arg(long, value_parser = duration, default_value = "60s")]
    pub back_within: Duration,
}

#[derive(Args, Debug, Clone)]
pub struct NotifyArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// API key for POST /api/notify (sent as Authorization: Bearer KEY).
    #[arg(long, default_value = "")]
    pub api_key: String,
    /// Users, one WebSocket connection each, subscribed to `user.{sub}`. The first half
    /// (rounded up) is online from the start, the rest connects after --offline-for.
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// HS256 secret for the users' tokens: start the gateway with the same `--jwt-secret`.
    #[arg(long)]
    pub jwt_secret: String,
    /// User ids are `{prefix}{i}` (i = 0..users) [default: `lt{run}u`, unique per run, so a
    /// durable Lane never hands a previous run's notifications to this run's users].
    #[arg(long)]
    pub user_prefix: Option<String>,
    /// Notifications per second asked (spread round-robin over all users); 0 = closed
    /// loop: every sender connection sends as soon as its last request is answered (the
    /// Lane's accept capacity with --senders requests in flight).
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// How long to send.
    #[arg(long, value_parser = duration, default_value = "10s")]
    pub duration: Duration,
    /// The second half of the users connects this long after sending starts; what was sent
    /// to them meanwhile waits in the Lane (delay after reconnect measured from their ready).
    #[arg(long, value_parser = duration, default_value = "3s")]
    pub offline_for: Duration,
    /// After sending ends (and every user is online), wait at most this long for every
    /// accepted notification; what has not arrived by then is reported missing.
    #[arg(long, value_parser = duration, default_value = "15s")]
    pub settle: Duration,
    /// Sender connections for POST /api/notify, each with one request in flight and an
    /// equal share of --rate (a Lane answers only once persisted: more connections, more
    /// notifications in flight; 1..=512, each a thread).
    #[arg(long, default_value_t = 8)]
    pub senders: usize,
    /// Size in bytes of each notification's `data` JSON (carries the send time and number).
    #[arg(long, default_value_t = 200)]
    pub payload: usize,
    /// `ttl` of each notification (e.g. 10m) [default: the server's].
    #[arg(long)]
    pub ttl: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct LimitArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub publish: PublishArgs,
    /// Address the ceiling server listens on (--url, --target and --publish are ignored by `limit`).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,
    /// Pin the ceiling server to this CPU (keep it apart from --cpus).
    #[arg(long)]
    pub server_cpu: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct IdleArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Subscribe every connection to this channel and count it ready once subscribed:
    /// memory per idle *subscribed* connection [default: subscribe to nothing].
    #[arg(long)]
    pub channel: Option<String>,
    /// How long to hold the connections once all are open.
    #[arg(long, value_parser = duration, default_value = "30s")]
    pub duration: Duration,
}

#[derive(Args, Debug, Clone)]
pub struct BurstArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// ringcast: every connection subscribes to this channel with `"presence": true` (a
    /// presence burst: with --redis on the gateway, what Redis absorbs); a connection is
    /// ready once its `ok` arrives.
    #[arg(long, value_name = "CHANNEL")]
    pub presence: Option<String>,
    /// With --presence: spread the connections over this many channels, `{CHANNEL}.{i}`
    /// (rooms of conns/rooms members; one room of n members is n² join frames).
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
    /// Connect with a token per connection (HS256 with this secret, `sub` = a user of its
    /// own), so each connection is also an identified, online user.
    #[arg(long, value_name = "SECRET")]
    pub jwt_secret: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct SubscribeArgs {
    /// --conns defaults to 100 here; the subs are spread round-robin over them.
    #[command(flatten)]
    pub client: ClientArgs,
    /// `sub`s per second over all connections (each a new channel).
    #[arg(long, default_value_t = 1.0)]
    pub rate: f64,
    /// How long to send.
    #[arg(long, value_parser = duration, default_value = "5s")]
    pub duration: Duration,
    /// How long to wait for the last answers after sending stops.
    #[arg(long, value_parser = duration, default_value = "10s")]
    pub settle: Duration,
    /// The gateway's per-connection subscription bound (`--max-subscriptions`): the run
    /// refuses to start if it would send more subs than that on one connection.
    #[arg(long, default_value_t = 1024)]
    pub max_per_conn: usize,
}

#[derive(Args, Debug, Clone)]
pub struct SummarizeArgs {
    /// Files of `--json` results, one object per line or pretty-printed one after another.
    #[arg(required = true)]
    pub files: Vec<std::path::PathBuf>,
    /// Figures (JSON keys under `figures`) to show as columns, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "deliveries_per_s,latency_p50_ms,latency_p99_ms,lost,server_cpu_us_per_delivery")]
    pub figures: Vec<String>,
}

#[derive(Args, Debug, Clone)]
pub struct LimitServerArgs {
    /// Address to listen on.
    #[arg(long)]
    pub listen: String,
    /// Channel name written into each `msg` frame.
    #[arg(long, default_value = "bench")]
    pub channel: String,
    /// Size in bytes of each message's `data` JSON.
    #[arg(long, default_value_t = 200)]
    pub payload: usize,
    /// Pin the server to these CPUs.
    #[arg(long)]
    pub cpu: Option<String>,
    /// The server exits by itself after this long.
    #[arg(long, value_parser = duration, default_value = "1h")]
    pub lifetime: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_p99_auto_scales_with_subscribers_and_a_fixed_bound_does_not() {
        let auto = max_p99("auto").unwrap();
        assert_eq!(auto.bound(100), Duration::from_millis(50));
        assert_eq!(auto.bound(2_000), Duration::from_millis(50));
        assert_eq!(auto.bound(10_000), Duration::from_millis(250));
        assert_eq!(auto.bound(100_000), Duration::from_millis(2_500));
        let fixed = max_p99("80ms").unwrap();
        assert_eq!(fixed.bound(100_000), Duration::from_millis(80));
        assert_eq!(fixed.to_string(), "80ms");
        assert!(max_p99("soon").unwrap_err().contains("auto"));
    }
}
