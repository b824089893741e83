//! Command line: every flag with a help line. Parsed once in `main`.

use clap::{Args, Parser, Subcommand};
use std::time::Duration;

fn duration(text: &str) -> Result<Duration, String> {
    crate::host::parse_duration(text)
}

#[derive(Parser, Debug)]
#[command(name = "ringcast-loadtest", version, about = "Load-test harness for the ringcast WebSocket gateway")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Scenario,
}

#[derive(Subcommand, Debug)]
pub enum Scenario {
    /// N subscribers on one channel; publish at --rate (or --max) and measure delivery.
    Fanout(FanoutArgs),
    /// The machine's ceiling: the same fan-out against a minimal built-in server.
    Limit(LimitArgs),
    /// Connect N, hold them idle, report connect rate and server RSS per connection.
    Idle(IdleArgs),
    /// Connection storm: N connections as fast as possible; handshakes/s and failures.
    Burst(BurstArgs),
    /// (internal) One client worker process, driven over stdin/stdout.
    #[command(hide = true)]
    Worker,
    /// (internal) The `limit` ceiling server process, driven over stdin/stdout.
    #[command(hide = true)]
    LimitServer(LimitServerArgs),
}

#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// WebSocket endpoint of the server under test (loopback only).
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,
    /// Number of client connections.
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,
    /// Worker processes to spread connections over [default: ceil(conns / 19000)].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Source addresses 127.0.0.1..127.0.0.K to bind before connect [default: ceil(conns / 25000)].
    #[arg(long)]
    pub source_ips: Option<usize>,
    /// New connections per second over all workers; 0 = as fast as possible [default: 20000; burst: 0].
    #[arg(long)]
    pub connect_rate: Option<f64>,
    /// Connections in flight (connecting, upgrading, subscribing) per worker.
    #[arg(long, default_value_t = crate::limits::INFLIGHT_DEFAULT)]
    pub inflight: usize,
    /// A connection not ready after this long counts as a timeout failure.
    #[arg(long, value_parser = duration, default_value = "10s")]
    pub connect_timeout: Duration,
    /// PID of the server under test: report its CPU-µs per delivery and RSS from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Pin the harness (parent and workers) to these CPUs, e.g. "1" or "0-1".
    #[arg(long)]
    pub cpus: Option<String>,
    /// Print one JSON object (scenario, parameters, figures, host facts) instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Write an SVG chart of deliveries/s and p99 latency over time to this file.
    #[arg(long)]
    pub svg: Option<std::path::PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct PublishArgs {
    /// API key for POST /api/publish (sent as Authorization: Bearer KEY).
    #[arg(long, default_value = "")]
    pub api_key: String,
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
    /// delivers everything, late).
    #[arg(long, value_parser = duration, default_value = "50ms")]
    pub max_p99: Duration,
    /// How long to publish (with --max: the length of each step, default 5s then).
    #[arg(long, value_parser = duration)]
    pub duration: Option<Duration>,
    /// Size in bytes of each message's `data` JSON (carries the send timestamp).
    #[arg(long, default_value_t = 200)]
    pub payload: usize,
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
    /// Publisher connections, each with one request in flight and an equal share of the
    /// rate. More than 1 lets publishes arrive together, as from many backends, so the
    /// gateway can coalesce them into one send per subscriber.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
}

#[derive(Args, Debug, Clone)]
pub struct LimitArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub publish: PublishArgs,
    /// Address the ceiling server listens on (--url is ignored by `limit`).
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
    /// How long to hold the connections once all are open.
    #[arg(long, value_parser = duration, default_value = "30s")]
    pub duration: Duration,
}

#[derive(Args, Debug, Clone)]
pub struct BurstArgs {
    #[command(flatten)]
    pub client: ClientArgs,
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
