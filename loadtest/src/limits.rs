//! Every bound of the harness in one place, with its unit and why.

use std::time::Duration;

/// Sockets per worker process: the hard RLIMIT_NOFILE here is 20,000, minus room for
/// stdio, epoll, the waker and pipes.
pub const WORKER_CONNS_MAX: usize = 19_000;
/// One read buffer per worker; 64 KiB drains a backlog of ~300 frames of 200 B in one read.
pub const READ_BUFFER_BYTES: usize = 64 * 1024;
/// A frame split across reads is carried per connection up to this; larger is a failure.
pub const CARRY_BYTES_MAX: usize = 1024 * 1024;
/// An emptied carry buffer larger than this is freed, so idle clients stay a few hundred
/// bytes while busy ones do not reallocate on every split frame.
pub const CARRY_KEEP_BYTES: usize = 4 * 1024;
/// An upgrade response head larger than this is not a WebSocket server.
pub const HTTP_HEAD_BYTES_MAX: usize = 8 * 1024;
/// epoll events taken per wake.
pub const EVENTS_PER_POLL: usize = 4096;
/// Workers report (and the parent prints progress) once per second.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// Poll timeout once all connections are opened: commands arrive through the waker anyway.
pub const IDLE_POLL: Duration = Duration::from_millis(100);
/// Default connections in flight (connecting, upgrading, subscribing) per worker: keeps a
/// storm under the server's accept backlog (somaxconn 4096 by default).
pub const INFLIGHT_DEFAULT: usize = 1024;
/// Source addresses available on 127.0.0.0/8 with a fixed last octet scheme (127.0.0.1..254).
pub const SOURCE_IPS_MAX: usize = 254;
/// Connections per source address before the default spreads to the next. Linux's
/// connect() tries ports of one parity first (half the default range 32768..60999, i.e.
/// ~14,100) and only then scans the other half, so past ~14k connections per (source,
/// destination) pair every connect() walks thousands of used ports in the kernel: measured
/// here as workers stalling at 85k connections over 6 source addresses (and missing the
/// server's heartbeats meanwhile). 10,000 stays well inside the first half.
pub const CONNS_PER_SOURCE_IP: usize = 10_000;
/// After publishing stops, wait for stragglers until deliveries stop growing for this long...
pub const DRAIN_QUIET: Duration = Duration::from_millis(1000);
/// ...but never longer than this (`fanout --drain` overrides it for big broadcasts).
pub const DRAIN_MAX: Duration = Duration::from_secs(5);
/// Longest `fanout --drain`: a broadcast to 1,000,000 subscribers on one server core
/// takes seconds to write; ten minutes bounds any run.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(600);
/// Longest `fanout --hold` (connections held, heartbeats only, before publishing).
pub const HOLD_LIMIT: Duration = Duration::from_secs(3600);
/// Message numbers tallied one by one (deliveries, spread, latency per message) when a
/// fan-out publishes at most this many: each is one broadcast (`fanout --rate 10
/// --duration 200ms` is two broadcasts 100 ms apart).
pub const TRACKED_MESSAGES_MAX: usize = 8;
/// `--max`: steps of the closed loop, and the bisection resolution that ends it.
pub const MAX_STEPS: usize = 14;
pub const MAX_RESOLUTION: f64 = 0.05;
/// `--max`: a step passes when deliveries reach this share of expected (no loss) and the
/// publisher achieved this share of the asked rate.
pub const MAX_PUBLISH_ACHIEVED_MIN: f64 = 0.95;
/// The `limit` server coalesces at most this many due messages into one write per client.
pub const LIMIT_BATCH_MAX: usize = 64;
/// The `limit` server queues at most this many bytes per slow client, then drops (counted).
pub const LIMIT_OUTBOUND_BYTES_MAX: usize = 256 * 1024;
/// The `limit` server's accept backlog (the kernel caps it at net.core.somaxconn).
pub const LIMIT_ACCEPT_BACKLOG: i32 = 65_535;

/// Publisher connections for `fanout --publishers`: each is a thread and a socket; a few
/// dozen already arrive together more than any single backend would.
pub const PUBLISHERS_MAX: usize = 64;
/// Sender connections for `notify --senders`: each is a thread and a socket with one
/// request in flight, so the accept rate a run can show is about senders / accept
/// latency (256 at 12 ms: ~21,000/s); 512 leaves room for a slower store.
pub const SENDERS_MAX: usize = 512;
