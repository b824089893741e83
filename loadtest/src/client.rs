//! The client worker: one mio (epoll) event loop holding up to WORKER_CONNS_MAX WebSockets.
//!
//! Owns: opening connections at a bounded rate from spread source addresses, the upgrade,
//! the join (`sub`, or a NATS / MQTT login and subscribe, through `adapter`), reading
//! frames (headers, timestamp, message number and `seq` only), reconnecting with bounded
//! jittered backoff when asked (`reconnect`), and the per-interval counters it reports to
//! the parent as JSON lines on stdout. Runs as its own process (`ringcast-loadtest
//! worker`, one thread) so each process stays under the fd limit.
//! Must not touch: scenario logic or output formatting (the parent owns those).

use crate::adapter::{self, Event, TargetKind};
use crate::frame;
use crate::limits;
use crate::stats;
use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use serde::{Deserialize, Serialize};
use socket2::{Domain, Socket, Type};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::io::{BufRead, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// One server address; connection g goes to endpoint g % endpoints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
}

/// A group of connections that subscribe alike and are reported apart (telemetry's device
/// subscribers and dashboards). Member j of a class subscribes to `channel` with `{i}`
/// replaced by j % channel_count.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubClass {
    pub name: String,
    pub conns: usize,
    pub channel: String,
    pub channel_count: usize,
    /// Check message numbers per connection (gaps, duplicates). Only meaningful when the
    /// connection's channel has a single ordered publisher and no wildcard.
    pub track_order: bool,
}

/// When a ready connection is lost: reopen after a jittered delay doubling from `base_ms`
/// to `cap_ms`, at most `attempts_max` times in a row, then give up (counted).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ReconnectPolicy {
    pub base_ms: u64,
    pub cap_ms: u64,
    pub attempts_max: u32,
}

/// `notify`: one authenticated user per connection. Connection g is user `{sub_prefix}{g}`
/// (a fresh HS256 token per attempt, `?token=` on the upgrade) and channel `{g}` in a class
/// is that same number; `notify` frames are acked and counted by notification number.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserSpec {
    pub jwt_secret: String,
    pub sub_prefix: String,
    /// Token expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Notification ids of this run are `{nid_prefix}{k}` (k = 1, 2, ...); others are
    /// acked and counted as foreign (left over from an earlier run).
    pub nid_prefix: String,
}

/// Everything a worker needs, sent by the parent as the first line on stdin.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerConfig {
    pub worker_index: usize,
    pub endpoints: Vec<Endpoint>,
    pub kind: TargetKind,
    /// `nats-ws`: subjects are `{prefix}.{channel}` when set.
    pub nats_prefix: Option<String>,
    pub conns: usize,
    /// Global index of this worker's first connection (spreads source addresses and classes).
    pub first_conn_index: usize,
    pub source_ips: usize,
    /// New connections per second for this worker; 0 = as fast as possible.
    pub connect_rate: f64,
    pub inflight_max: usize,
    /// Subscription classes over all global connections; empty: hold idle.
    pub classes: Vec<SubClass>,
    pub connect_timeout_ms: u64,
    /// The worker exits by itself after this long even if the parent never says stop.
    pub lifetime_ms: u64,
    pub reconnect: Option<ReconnectPolicy>,
    /// `notify`: per-user tokens and notification bookkeeping.
    #[serde(default)]
    pub users: Option<UserSpec>,
    /// `burst --presence`: subscriptions join the channel's presence set.
    #[serde(default)]
    pub presence: bool,
    /// Global connections from this index on wait for the parent's `release` before
    /// opening (`notify`'s users who come online later).
    #[serde(default)]
    pub held_from: Option<usize>,
    /// Client-side dead-server check: a ready connection that receives nothing, not even
    /// a ping, for this long is closed as `heartbeat_timeout` (0 = off).
    #[serde(default)]
    pub heartbeat_timeout_ms: u64,
    /// Message numbers 1..=this are tallied one by one (`MessageReport`; at most
    /// `limits::TRACKED_MESSAGES_MAX`, 0 = off): each is one broadcast.
    #[serde(default)]
    pub tracked_messages: usize,
    /// Offer permessage-deflate and inflate RSV1 frames (`--deflate`).
    #[serde(default)]
    pub deflate: bool,
}

impl WorkerConfig {
    /// Class index and channel of global connection `global`.
    pub fn locate(&self, global: usize) -> Option<(usize, String)> {
        let mut offset = 0;
        for (c, class) in self.classes.iter().enumerate() {
            if global < offset + class.conns {
                let i = (global - offset) % class.channel_count.max(1);
                return Some((c, class.channel.replace("{i}", &i.to_string()).replace("{g}", &global.to_string())));
            }
            offset += class.conns;
        }
        None
    }
}

/// `notify` counters (cumulative), the pending-delivery delays since the previous report,
/// and, in the final report only, every notification number this worker received.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NotifyCounters {
    /// Distinct notifications of this run received (first arrivals).
    pub unique: u64,
    /// Second and later arrivals of a notification number on its user's connection.
    pub duplicates: u64,
    /// `notify` frames whose nid is not of this run (acked, not counted).
    pub foreign: u64,
    /// `ack` ops sent (one per `notify` frame).
    pub acks: u64,
    /// First arrivals of notifications sent before their user's connection was ready.
    pub pending: u64,
    /// Connection ready → delivery of such a pending notification, ns, since the last report.
    pub pending_delay: Vec<(u64, u64)>,
    /// Final report only: the numbers received (sorted).
    pub seen: Vec<u64>,
}

/// Per-class counters in a report.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClassReport {
    pub ready: u64,
    pub deliveries: u64,
    /// Latency since the previous report.
    pub latency: Vec<(u64, u64)>,
}

/// Order and resume counters (connections whose class tracks order).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct OrderCounters {
    /// Times a message number skipped ahead, and the messages skipped in total.
    pub gaps: u64,
    pub missed: u64,
    /// Messages whose number was not above the last one seen.
    pub duplicates: u64,
    /// Times the `seq` of a `msg` skipped ahead (history channels).
    pub seq_gaps: u64,
    /// Subscriptions re-sent with `since` after a reconnect.
    pub resumed: u64,
    /// ... of which the first message after resuming skipped a number.
    pub resumed_with_gap: u64,
    /// `sub` with `since` answered 409 (past retention): resubscribed without it.
    pub resume_refused: u64,
}

/// One tracked message number (a broadcast): its deliveries on this worker, its send
/// stamp, its last arrival, and its latency since the previous report.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MessageReport {
    pub deliveries: u64,
    /// CLOCK_REALTIME ns the publisher stamped into the message (0: none arrived yet).
    pub sent_ns: u64,
    /// CLOCK_REALTIME ns of the last arrival on this worker.
    pub last_arrival_ns: u64,
    pub latency: Vec<(u64, u64)>,
}

/// One report line (worker → parent). Counters are cumulative; histograms cover the
/// interval since the previous report, so the parent can merge them per second.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerReport {
    pub worker: usize,
    /// 0 for the periodic report, else the number of the `snap N` it answers.
    pub snap: u64,
    pub done: bool,
    pub attempted: u64,
    pub upgraded: u64,
    /// Compressed (RSV1) frames inflated (`--deflate`).
    #[serde(default)]
    pub inflated: u64,
    /// Connections currently upgraded and joined (subscribed or logged in).
    pub ready: u64,
    /// Connections currently open in any state.
    pub open: u64,
    /// Ready connections that the server closed or reset later.
    pub dropped_after_ready: u64,
    pub failures: BTreeMap<String, u64>,
    /// Set when a host limit (fds, ports, memory) stopped this worker from opening more.
    pub host_limit: Option<String>,
    pub deliveries: u64,
    pub latency: Vec<(u64, u64)>,
    pub handshake: Vec<(u64, u64)>,
    pub classes: Vec<ClassReport>,
    pub order: OrderCounters,
    /// Lost connections that became ready again, waiting to reopen now, and given up.
    pub reconnected: u64,
    pub waiting: u64,
    pub gave_up: u64,
    /// Time from losing a ready connection to it being ready again, since the last report.
    pub reconnect_ms: Vec<(u64, u64)>,
    /// CLOCK_REALTIME ns when `ready` last reached `conns` (0: not yet).
    pub all_ready_at_ns: u64,
    pub rss_kib: u64,
    /// RSS before the first connection: the per-connection figure subtracts it.
    pub rss_start_kib: u64,
    /// ms after the worker started when a connection last became ready (burst timing).
    pub last_ready_ms: u64,
    #[serde(default)]
    pub notify: NotifyCounters,
    /// WebSocket pings received (server heartbeats), cumulative; each was answered.
    #[serde(default)]
    pub pings: u64,
    /// Ready connections closed by the client-side heartbeat check (`heartbeat_timeout_ms`).
    #[serde(default)]
    pub heartbeat_timeouts: u64,
    /// Tracked message numbers 1..=`tracked_messages`, index n - 1.
    #[serde(default)]
    pub messages: Vec<MessageReport>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    /// Not opened yet, or failed for good.
    #[default]
    Unused,
    Connecting,
    Upgrading,
    /// Upgraded; waiting for the join answer (`ok`, PONG, SUBACK / CONNACK).
    Joining,
    Ready,
    /// Lost after being ready; reopens when its backoff is due.
    Waiting,
}

const EVER_READY: u8 = 1;
/// A `sub` with `since` was sent: the first message after it shows whether resume worked.
const RESUMING: u8 = 2;

/// Per-connection state, kept small: the read buffer is shared per worker, `carry` and
/// `app` allocate only while a frame (or a NATS / MQTT operation) is split across reads.
/// About 96 bytes; see the harness RSS per connection figure.
#[derive(Default)]
struct Conn {
    stream: Option<TcpStream>,
    state: State,
    class: u8,
    flags: u8,
    attempt: u8,
    /// µs since worker start when the current attempt began, and when the connection was lost.
    started_us: u64,
    down_us: u64,
    carry: Vec<u8>,
    app: Vec<u8>,
    last_n: u64,
    last_seq: u64,
    /// CLOCK_REALTIME ns when the connection last became ready (`notify`: a notification
    /// sent before it was pending, its delay counts from here).
    ready_ns: u64,
    /// Seconds since worker start when bytes last arrived (or it became ready): the
    /// client-side heartbeat check.
    last_rx_s: u32,
}

/// Parent → worker commands (`snap N`, `stop` lines on stdin).
pub enum Command {
    Snap(u64),
    /// Open the held connections (`held_from` on).
    Release,
    Stop,
}

const WAKER_TOKEN: Token = Token(usize::MAX);

struct Worker {
    cfg: WorkerConfig,
    poll: Poll,
    conns: Vec<Conn>,
    report: WorkerReport,
    latency: Histogram<u64>,
    class_latency: Vec<Histogram<u64>>,
    handshake: Histogram<u64>,
    reconnect_latency: Histogram<u64>,
    requests: Vec<Vec<u8>>,
    read_buf: Vec<u8>,
    out: Vec<u8>,
    started: Instant,
    /// (due ms, slot) of lost connections waiting to reopen.
    retry_queue: BinaryHeap<Reverse<(u32, u32)>>,
    rng: u64,
    /// `release` arrived: held connections may open.
    released: bool,
    /// Opening stopped at a held connection (no 1 ms polling while waiting for `release`).
    holding: bool,
    /// `notify`: notification numbers received so far, and pending-delivery delays.
    notify_seen: std::collections::HashSet<u64>,
    pending_delay: Histogram<u64>,
    /// Latency per tracked message number since the previous report.
    message_latency: Vec<Histogram<u64>>,
    /// `--deflate`: one inflater for every connection (the server sends each message
    /// compressed on its own) and its output buffer.
    inflater: flate2::Decompress,
    inflated: Vec<u8>,
}

/// Why a connection ended: a failure kind, counted by name.
struct Fail(String);

fn errno_kind(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "refused".into(),
        Some(libc::ECONNRESET) => "reset".into(),
        Some(libc::ETIMEDOUT) => "tcp_timeout".into(),
        Some(libc::EPIPE) => "broken_pipe".into(),
        Some(n) => format!("errno_{n}"),
        None => e.kind().to_string(),
    }
}

/// Names the host limit behind an error, if it is one.
pub fn host_limit_of(e: &std::io::Error) -> Option<String> {
    let what = match e.raw_os_error()? {
        libc::EMFILE => "file descriptors: per-process RLIMIT_NOFILE reached (EMFILE); use more --workers",
        libc::ENFILE => "file descriptors: system-wide fs.file-max reached (ENFILE); see tuning/sysctl.conf",
        libc::EADDRNOTAVAIL => "ports: no free source port (EADDRNOTAVAIL); raise --source-ips or widen net.ipv4.ip_local_port_range",
        libc::EADDRINUSE => "ports: source address in use (EADDRINUSE); raise --source-ips",
        libc::ENOMEM => "memory: kernel refused allocation (ENOMEM); see tcp_mem in tuning/sysctl.conf",
        libc::ENOBUFS => "memory: no buffer space (ENOBUFS); see tcp_mem in tuning/sysctl.conf",
        _ => return None,
    };
    Some(what.to_string())
}

impl Worker {
    fn new(cfg: WorkerConfig) -> Result<Self> {
        let requests = cfg
            .endpoints
            .iter()
            .map(|e| frame::offer_deflate(frame::handshake_request(&e.host, &e.path, "dGhlIHNhbXBsZSBub25jZQ==", cfg.kind.subprotocol()), cfg.deflate).into_bytes())
            .collect();
        let mut conns = Vec::with_capacity(cfg.conns);
        conns.resize_with(cfg.conns, Conn::default);
        let seed = (std::process::id() as u64) << 32 ^ cfg.worker_index as u64 ^ crate::host::now_ns();
        let tracked = cfg.tracked_messages.min(limits::TRACKED_MESSAGES_MAX);
        Ok(Worker {
            poll: Poll::new().context("epoll_create")?,
            conns,
            report: WorkerReport {
                worker: cfg.worker_index,
                rss_start_kib: stats::self_rss_kib(),
                classes: vec![ClassReport::default(); cfg.classes.len()],
                messages: vec![MessageReport::default(); tracked],
                ..Default::default()
            },
            latency: stats::new_histogram(),
            class_latency: cfg.classes.iter().map(|_| stats::new_histogram()).collect(),
            handshake: stats::new_histogram(),
            reconnect_latency: stats::new_histogram(),
            requests,
            read_buf: vec![0; limits::READ_BUFFER_BYTES],
            out: Vec::new(),
            started: Instant::now(),
            retry_queue: BinaryHeap::new(),
            rng: seed | 1,
            released: false,
            holding: false,
            notify_seen: std::collections::HashSet::new(),
            pending_delay: stats::new_histogram(),
            inflater: flate2::Decompress::new(false),
            inflated: Vec::new(),
            message_latency: (0..tracked).map(|_| stats::new_histogram()).collect(),
            cfg,
        })
    }

    fn now_ms(&self) -> u32 {
        self.started.elapsed().as_millis() as u32
    }

    fn now_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    fn now_s(&self) -> u32 {
        self.started.elapsed().as_secs() as u32
    }

    fn inflight(&self) -> u64 {
        self.report.open - self.report.ready
    }

    fn open_due(&mut self) {
        let target = self.cfg.conns as u64;
        let allowed = if self.cfg.connect_rate > 0.0 {
            ((self.started.elapsed().as_secs_f64() * self.cfg.connect_rate) as u64 + 1).min(target)
        } else {
            target
        };
        self.holding = false;
        while self.report.attempted < allowed && self.inflight() < self.cfg.inflight_max as u64 && self.report.host_limit.is_none() {
            let slot = self.report.attempted as usize;
            let global = self.cfg.first_conn_index + slot;
            if !self.released && self.cfg.held_from.is_some_and(|h| global >= h) {
                self.holding = true;
                break;
            }
            self.report.attempted += 1;
            if let Some((class, _)) = self.cfg.locate(global) {
                self.conns[slot].class = class as u8;
            }
            self.open_slot(slot);
        }
        let now = self.now_ms();
        while let Some(&Reverse((due, slot))) = self.retry_queue.peek() {
            if due > now || self.inflight() >= self.cfg.inflight_max as u64 || self.report.host_limit.is_some() {
                break;
            }
            self.retry_queue.pop();
            self.report.waiting -= 1;
            self.open_slot(slot as usize);
        }
    }

    fn open_slot(&mut self, slot: usize) {
        if let Err(e) = self.try_open(slot) {
            match host_limit_of(&e) {
                Some(limit) => {
                    self.report.host_limit = Some(limit);
                    self.conns[slot].state = State::Unused;
                }
                None => {
                    // Counted like a failed attempt (a reconnecting client retries).
                    self.conns[slot].state = State::Connecting;
                    self.report.open += 1;
                    self.fail(slot, Fail(errno_kind(&e)));
                }
            }
        }
    }

    fn try_open(&mut self, slot: usize) -> std::io::Result<()> {
        let global = self.cfg.first_conn_index + slot;
        let octet = 1 + (global % self.cfg.source_ips) as u8;
        let source = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, octet), 0);
        let target = self.cfg.endpoints[global % self.cfg.endpoints.len()].addr;
        let socket = Socket::new(Domain::IPV4, Type::STREAM.nonblocking(), None)?;
        // Choose the source port at connect() from the full 4-tuple, not at bind().
        set_bind_address_no_port(&socket)?;
        socket.set_nodelay(true)?;
        socket.bind(&SocketAddr::V4(source).into())?;
        match socket.connect(&target.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        let mut stream = TcpStream::from_std(socket.into());
        self.poll.registry().register(&mut stream, Token(slot), Interest::WRITABLE | Interest::READABLE)?;
        let now = self.now_us();
        let conn = &mut self.conns[slot];
        conn.stream = Some(stream);
        conn.state = State::Connecting;
        conn.started_us = now;
        conn.carry = Vec::new();
        conn.app = Vec::new();
        self.report.open += 1;
        Ok(())
    }

    fn count_failure(&mut self, kind: String) {
        *self.report.failures.entry(kind).or_insert(0) += 1;
    }

    /// Closes a connection for `fail`; a lost ready connection (or a failed retry of one)
    /// is queued to reopen when reconnecting is on.
    fn fail(&mut self, slot: usize, Fail(kind): Fail) {
        let now = self.now_ms();
        let conn = &mut self.conns[slot];
        if let Some(mut stream) = conn.stream.take() {
            let _ = self.poll.registry().deregister(&mut stream);
        }
        let was = conn.state;
        let ever_ready = conn.flags & EVER_READY != 0;
        let class = conn.class as usize;
        if !matches!(was, State::Connecting | State::Upgrading | State::Joining | State::Ready) {
            return;
        }
        self.report.open -= 1;
        if was == State::Ready {
            self.report.ready -= 1;
            if let Some(c) = self.report.classes.get_mut(class) {
                c.ready -= 1;
            }
            self.report.dropped_after_ready += 1;
            self.count_failure(format!("dropped_{kind}"));
        } else if ever_ready {
            self.count_failure(format!("retry_{kind}"));
        } else {
            self.count_failure(kind);
        }
        let conn = &mut self.conns[slot];
        conn.state = State::Unused;
        let Some(policy) = self.cfg.reconnect.filter(|_| ever_ready) else { return };
        if was == State::Ready {
            conn.down_us = self.started.elapsed().as_micros() as u64;
            conn.attempt = 0;
        } else {
            conn.attempt = conn.attempt.saturating_add(1);
        }
        if conn.attempt as u32 >= policy.attempts_max {
            self.report.gave_up += 1;
            return;
        }
        conn.state = State::Waiting;
        let delay = self.backoff_ms(policy, self.conns[slot].attempt);
        self.report.waiting += 1;
        self.retry_queue.push(Reverse((now.saturating_add(delay), slot as u32)));
    }

    /// Doubling from base to cap, then "equal jitter": half fixed, half random, so a mass
    /// disconnect does not come back as one thundering herd.
    fn backoff_ms(&mut self, policy: ReconnectPolicy, attempt: u8) -> u32 {
        let full = policy.base_ms.saturating_mul(1u64 << attempt.min(20)).min(policy.cap_ms).max(1);
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (full / 2 + self.rng % (full / 2 + 1)) as u32
    }

    fn on_event(&mut self, slot: usize, event: &mio::event::Event) {
        let state = match self.conns.get(slot) {
            Some(c) if c.stream.is_some() => c.state,
            _ => return,
        };
        if state == State::Connecting {
            if !event.is_writable() && !event.is_error() && !event.is_read_closed() {
                return;
            }
            if let Err(fail) = self.finish_connect(slot) {
                self.fail(slot, fail);
            }
            return;
        }
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            if let Err(fail) = self.read_all(slot) {
                self.fail(slot, fail);
            }
        }
    }

    fn finish_connect(&mut self, slot: usize) -> Result<(), Fail> {
        let global = self.cfg.first_conn_index + slot;
        let endpoint = global % self.requests.len();
        let own_request;
        let request = match &self.cfg.users {
            None => &self.requests[endpoint],
            Some(users) => {
                // A token per attempt: nothing per idle connection, and never an expired one on reconnect.
                let token = crate::jwt::hs256(users.jwt_secret.as_bytes(), &format!("{}{global}", users.sub_prefix), users.exp);
                let e = &self.cfg.endpoints[endpoint];
                let sep = if e.path.contains('?') { '&' } else { '?' };
                let path = format!("{}{sep}token={token}", e.path);
                own_request = frame::offer_deflate(frame::handshake_request(&e.host, &path, "dGhlIHNhbXBsZSBub25jZQ==", self.cfg.kind.subprotocol()), self.cfg.deflate).into_bytes();
                &own_request
            }
        };
        let conn = &mut self.conns[slot];
        let stream = conn.stream.as_mut().expect("checked by caller");
        if let Ok(Some(e)) | Err(e) = stream.take_error() {
            return Err(Fail(errno_kind(&e)));
        }
        match stream.peer_addr() {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotConnected => return Ok(()), // spurious wake
            Err(e) => return Err(Fail(errno_kind(&e))),
        }
        match stream.write(request) {
            Ok(n) if n == request.len() => {}
            Ok(_) => return Err(Fail("handshake_short_write".into())),
            Err(e) => return Err(Fail(errno_kind(&e))),
        }
        conn.state = State::Upgrading;
        let _ = self.poll.registry().reregister(stream, Token(slot), Interest::READABLE);
        Ok(())
    }

    fn read_all(&mut self, slot: usize) -> Result<(), Fail> {
        // The connection and the shared read buffer are lent out so processing may borrow
        // the worker mutably; both go back before any close.
        let mut conn = std::mem::take(&mut self.conns[slot]);
        let mut buf = std::mem::take(&mut self.read_buf);
        let result = self.read_conn(slot, &mut conn, &mut buf);
        self.read_buf = buf;
        self.conns[slot] = conn;
        result
    }

    fn read_conn(&mut self, slot: usize, conn: &mut Conn, buf: &mut [u8]) -> Result<(), Fail> {
        let now = crate::host::now_ns();
        let now_s = self.now_s();
        loop {
            let stream = conn.stream.as_mut().expect("open connection");
            let n = match stream.read(buf) {
                Ok(0) => return Err(Fail("eof".into())),
                Ok(n) => {
                    conn.last_rx_s = now_s;
                    n
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Fail(errno_kind(&e))),
            };
            let mut carry = std::mem::take(&mut conn.carry);
            let result = if carry.is_empty() {
                let data = &buf[..n];
                let r = self.process(slot, conn, data, now);
                if let Ok(used) = r {
                    carry.extend_from_slice(&data[used..]);
                }
                r
            } else {
                carry.extend_from_slice(&buf[..n]);
                let r = self.process(slot, conn, &carry, now);
                if let Ok(used) = r {
                    carry.drain(..used);
                }
                r
            };
            if carry.len() > limits::CARRY_BYTES_MAX {
                return Err(Fail("frame_too_big".into()));
            }
            if carry.is_empty() && carry.capacity() > limits::CARRY_KEEP_BYTES {
                carry = Vec::new(); // an idle client keeps no large buffer
            }
            conn.carry = carry;
            if !self.out.is_empty() {
                let wrote = conn.stream.as_mut().expect("open connection").write(&self.out);
                let whole = matches!(wrote, Ok(w) if w == self.out.len());
                self.out.clear();
                if !whole {
                    return Err(Fail("write_blocked".into()));
                }
            }
            result?;
            // A short read drained the socket; epoll (edge-triggered) reports new data anew.
            if n < buf.len() {
                return Ok(());
            }
        }
    }

    /// Consumes whole units (HTTP head, frames) from `data`; returns bytes used.
    fn process(&mut self, slot: usize, conn: &mut Conn, data: &[u8], now_ns: u64) -> Result<usize, Fail> {
        let mut pos = 0;
        if conn.state == State::Upgrading {
            let Some(end) = frame::http_head_end(data) else {
                if data.len() > limits::HTTP_HEAD_BYTES_MAX {
                    return Err(Fail("bad_upgrade_response".into()));
                }
                return Ok(0);
            };
            match frame::http_status(&data[..end]) {
                Some(101) => {}
                Some(code) => return Err(Fail(format!("http_{code}"))),
                None => return Err(Fail("bad_upgrade_response".into())),
            }
            self.report.upgraded += 1;
            let elapsed_us = self.now_us().saturating_sub(conn.started_us);
            self.handshake.saturating_record(elapsed_us.max(1) * 1_000);
            self.start_join(slot, conn, None);
            pos = end;
        }
        while let Some(h) = frame::parse_header(&data[pos..]) {
            if h.payload_len > limits::CARRY_BYTES_MAX as u64 {
                return Err(Fail("frame_too_big".into()));
            }
            if (data.len() - pos) < h.frame_len() as usize {
                break;
            }
            let payload = &data[pos + h.header_len..pos + h.frame_len() as usize];
            let compressed = data[pos] & 0x40 != 0;
            pos += h.frame_len() as usize;
            match h.opcode {
                frame::OPCODE_TEXT | frame::OPCODE_BINARY if compressed => {
                    if !self.cfg.deflate {
                        return Err(Fail("rsv1_not_negotiated".into()));
                    }
                    let mut inflated = std::mem::take(&mut self.inflated);
                    frame::inflate(&mut self.inflater, payload, &mut inflated).map_err(Fail)?;
                    self.report.inflated += 1;
                    let result = self.on_app(slot, conn, &inflated, now_ns);
                    self.inflated = inflated;
                    result?
                }
                frame::OPCODE_TEXT | frame::OPCODE_BINARY | frame::OPCODE_CONTINUATION => self.on_app(slot, conn, payload, now_ns)?,
                frame::OPCODE_PING => {
                    self.report.pings += 1;
                    frame::encode_client_frame(&mut self.out, frame::OPCODE_PONG, payload, adapter::MASK)
                }
                frame::OPCODE_CLOSE => {
                    let code = if payload.len() >= 2 { u16::from_be_bytes([payload[0], payload[1]]) } else { 1005 };
                    return Err(Fail(format!("close_{code}")));
                }
                _ => {}
            }
        }
        Ok(pos)
    }

    /// Sends the join frames after the 101 (or after a 409 resume refusal, without `since`).
    fn start_join(&mut self, slot: usize, conn: &mut Conn, force_since: Option<Option<u64>>) {
        let global = self.cfg.first_conn_index + slot;
        let channel = self.cfg.locate(global).map(|(_, ch)| ch);
        if !self.cfg.kind.needs_join(channel.as_deref()) {
            conn.state = State::Ready;
            self.mark_ready(conn);
            return;
        }
        let resume = conn.flags & EVER_READY != 0 && conn.last_seq > 0;
        let since = force_since.unwrap_or(resume.then_some(conn.last_seq));
        if since.is_some() {
            self.report.order.resumed += 1;
            conn.flags |= RESUMING;
        }
        let client_id = format!("lt{}-{}-{}", std::process::id(), global, conn.attempt);
        let join = adapter::Join { channel: channel.as_deref(), since, nats_prefix: self.cfg.nats_prefix.as_deref(), client_id: &client_id, presence: self.cfg.presence };
        self.out.extend_from_slice(&adapter::join_frames(self.cfg.kind, &join));
        conn.state = State::Joining;
    }

    /// One data frame's payload: through the adapter (with the stream carry for NATS/MQTT).
    fn on_app(&mut self, slot: usize, conn: &mut Conn, payload: &[u8], now_ns: u64) -> Result<(), Fail> {
        let kind = self.cfg.kind;
        let joining = conn.state == State::Joining;
        let wants_channel = !self.cfg.classes.is_empty();
        let mut app = std::mem::take(&mut conn.app);
        let mut joined = false;
        let mut established = false;
        let mut resume_refused = false;
        let mut handle = |worker: &mut Worker, conn: &mut Conn, bytes: &[u8]| -> Result<usize, Fail> {
            adapter::on_app_bytes(kind, joining, wants_channel, bytes, &mut |event| match event {
                Event::Delivery(p) => worker.deliver(conn, p, now_ns),
                Event::Notify { nid, payload } => worker.on_notify(conn, nid, payload, now_ns),
                Event::Joined => joined = true,
                Event::Established => established = true,
                Event::ResumeRefused => resume_refused = true,
                Event::Reply(bytes) => frame::encode_client_frame(&mut worker.out, kind.reply_opcode(), bytes, adapter::MASK),
            })
            .map_err(Fail)
        };
        let result = if !kind.is_stream() {
            handle(self, conn, payload).map(|_| ())
        } else if app.is_empty() {
            handle(self, conn, payload).map(|used| app.extend_from_slice(&payload[used..]))
        } else {
            app.extend_from_slice(payload);
            handle(self, conn, &app).map(|used| {
                app.drain(..used);
            })
        };
        if app.len() > limits::CARRY_BYTES_MAX {
            return Err(Fail("frame_too_big".into()));
        }
        if app.is_empty() && app.capacity() > limits::CARRY_KEEP_BYTES {
            app = Vec::new();
        }
        conn.app = app;
        result?;
        if resume_refused {
            self.report.order.resume_refused += 1;
            conn.flags &= !RESUMING;
            self.start_join(slot, conn, Some(None));
        } else if joined && conn.state == State::Joining {
            conn.state = State::Ready;
            self.mark_ready(conn);
        } else if established && conn.state == State::Joining {
            // Pusher: subscribe now that the server said hello; ready at its answer.
            let channel = self.cfg.locate(self.cfg.first_conn_index + slot).map(|(_, ch)| ch);
            self.out.extend_from_slice(&adapter::frames_after_established(kind, channel.as_deref()));
        }
        Ok(())
    }

    fn deliver(&mut self, conn: &mut Conn, payload: &[u8], now_ns: u64) {
        let class = conn.class as usize;
        self.report.deliveries += 1;
        let sent = frame::find_timestamp(payload);
        if let Some(c) = self.report.classes.get_mut(class) {
            c.deliveries += 1;
        }
        if let Some(sent) = sent {
            let latency = now_ns.saturating_sub(sent);
            self.latency.saturating_record(latency);
            if let Some(h) = self.class_latency.get_mut(class) {
                h.saturating_record(latency);
            }
        }
        if !self.message_latency.is_empty() {
            self.tally_message(payload, sent, now_ns);
        }
        if !self.cfg.classes.get(class).is_some_and(|c| c.track_order) {
            return;
        }
        let order = &mut self.report.order;
        if let Some(n) = frame::find_counter(payload) {
            let resuming = conn.flags & RESUMING != 0;
            conn.flags &= !RESUMING;
            if conn.last_n > 0 && n > conn.last_n + 1 {
                order.gaps += 1;
                order.missed += n - conn.last_n - 1;
                if resuming {
                    order.resumed_with_gap += 1;
                }
            } else if conn.last_n > 0 && n <= conn.last_n {
                order.duplicates += 1;
            }
            conn.last_n = conn.last_n.max(n);
        }
        if let Some(seq) = frame::find_u64_field(payload, frame::SEQ_KEY) {
            if conn.last_seq > 0 && seq > conn.last_seq + 1 {
                order.seq_gaps += 1;
            }
            conn.last_seq = conn.last_seq.max(seq);
        }
    }

    /// Counts a delivery of a tracked message number (a broadcast) on its own.
    fn tally_message(&mut self, payload: &[u8], sent: Option<u64>, now_ns: u64) {
        let Some(n) = frame::find_counter(payload) else { return };
        let Some(i) = (n as usize).checked_sub(1).filter(|&i| i < self.message_latency.len()) else { return };
        let m = &mut self.report.messages[i];
        m.deliveries += 1;
        m.last_arrival_ns = m.last_arrival_ns.max(now_ns);
        if let Some(sent) = sent {
            m.sent_ns = sent;
            self.message_latency[i].saturating_record(now_ns.saturating_sub(sent));
        }
    }

    /// A `notify` frame: ack it at once, then count it by its number (first arrival or
    /// duplicate) and time it: from the send stamp when it was sent while the connection was
    /// ready (online delivery), else from the moment the connection became ready (pending).
    fn on_notify(&mut self, conn: &mut Conn, nid: &[u8], payload: &[u8], now_ns: u64) {
        let mut ack = Vec::with_capacity(nid.len() + 20);
        ack.extend_from_slice(b"{\"op\":\"ack\",\"nid\":");
        ack.extend_from_slice(nid);
        ack.push(b'}');
        frame::encode_client_frame(&mut self.out, frame::OPCODE_TEXT, &ack, adapter::MASK);
        self.report.notify.acks += 1;
        let prefix = self.cfg.users.as_ref().map_or("", |u| u.nid_prefix.as_str());
        let Some(k) = notification_number(nid, prefix) else {
            self.report.notify.foreign += 1;
            return;
        };
        if !self.notify_seen.insert(k) {
            self.report.notify.duplicates += 1;
            return;
        }
        self.report.notify.unique += 1;
        self.report.deliveries += 1;
        let class = conn.class as usize;
        if let Some(c) = self.report.classes.get_mut(class) {
            c.deliveries += 1;
        }
        let Some(sent) = frame::find_timestamp(payload) else { return };
        if sent < conn.ready_ns {
            self.report.notify.pending += 1;
            self.pending_delay.saturating_record(now_ns.saturating_sub(conn.ready_ns).max(1));
        } else {
            let latency = now_ns.saturating_sub(sent);
            self.latency.saturating_record(latency);
            if let Some(h) = self.class_latency.get_mut(class) {
                h.saturating_record(latency);
            }
        }
    }

    fn mark_ready(&mut self, conn: &mut Conn) {
        conn.ready_ns = crate::host::now_ns();
        conn.last_rx_s = self.now_s();
        self.report.ready += 1;
        let now = self.now_us();
        self.report.last_ready_ms = now / 1000;
        if let Some(c) = self.report.classes.get_mut(conn.class as usize) {
            c.ready += 1;
        }
        if conn.flags & EVER_READY != 0 {
            self.report.reconnected += 1;
            self.reconnect_latency.saturating_record(now.saturating_sub(conn.down_us).max(1) * 1_000);
        }
        conn.flags |= EVER_READY;
        conn.attempt = 0;
        if self.report.ready == self.cfg.conns as u64 {
            self.report.all_ready_at_ns = crate::host::now_ns();
        }
    }

    fn expire_stale(&mut self) {
        let timeout = self.cfg.connect_timeout_ms * 1000;
        let now = self.now_us();
        let stale: Vec<(usize, State)> = self
            .conns
            .iter()
            .enumerate()
            .filter(|(_, c)| matches!(c.state, State::Connecting | State::Upgrading | State::Joining) && now.saturating_sub(c.started_us) > timeout)
            .map(|(i, c)| (i, c.state))
            .collect();
        for (slot, state) in stale {
            let what = match state {
                State::Connecting => "timeout_connect",
                State::Upgrading => "timeout_upgrade",
                _ => "timeout_join",
            };
            self.fail(slot, Fail(what.into()));
        }
        self.expire_silent();
    }

    /// Client-side heartbeat check: ready connections silent (no byte, not even a ping)
    /// for longer than `heartbeat_timeout_ms` are closed, as a real client would.
    fn expire_silent(&mut self) {
        if self.cfg.heartbeat_timeout_ms == 0 {
            return;
        }
        let timeout_s = self.cfg.heartbeat_timeout_ms.div_ceil(1000) as u32;
        let now = self.now_s();
        let silent: Vec<usize> = self
            .conns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.state == State::Ready && now.saturating_sub(c.last_rx_s) > timeout_s)
            .map(|(i, _)| i)
            .collect();
        for slot in silent {
            self.report.heartbeat_timeouts += 1;
            self.fail(slot, Fail("heartbeat_timeout".into()));
        }
    }

    fn emit(&mut self, snap: u64, done: bool, sink: &mut impl FnMut(&WorkerReport)) {
        self.report.snap = snap;
        self.report.done = done;
        self.report.latency = stats::histogram_to_pairs(&self.latency);
        self.report.handshake = stats::histogram_to_pairs(&self.handshake);
        self.report.reconnect_ms = stats::histogram_to_pairs(&self.reconnect_latency);
        self.report.notify.pending_delay = stats::histogram_to_pairs(&self.pending_delay);
        self.pending_delay.reset();
        if done && self.cfg.users.is_some() {
            let mut seen: Vec<u64> = self.notify_seen.iter().copied().collect();
            seen.sort_unstable();
            self.report.notify.seen = seen;
        }
        for (c, h) in self.report.classes.iter_mut().zip(self.class_latency.iter_mut()) {
            c.latency = stats::histogram_to_pairs(h);
            h.reset();
        }
        for (m, h) in self.report.messages.iter_mut().zip(self.message_latency.iter_mut()) {
            m.latency = stats::histogram_to_pairs(h);
            h.reset();
        }
        self.report.rss_kib = stats::self_rss_kib();
        self.latency.reset();
        self.handshake.reset();
        self.reconnect_latency.reset();
        sink(&self.report);
    }
}

/// The number k of a notification id `"{prefix}{k}"` (the raw JSON string, quotes included).
fn notification_number(nid: &[u8], prefix: &str) -> Option<u64> {
    let inner = nid.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    let digits = inner.strip_prefix(prefix.as_bytes())?;
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

fn set_bind_address_no_port(socket: &Socket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: valid fd and a c_int option value.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Reads commands from stdin on a helper thread; EOF (parent gone) means stop.
fn spawn_command_reader(waker: std::sync::Arc<Waker>) -> mpsc::Receiver<Command> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let Ok(line) = line else { break };
            let cmd = match line.split_whitespace().collect::<Vec<_>>().as_slice() {
                ["snap", n] => Command::Snap(n.parse().unwrap_or(1)),
                ["stop"] => Command::Stop,
                ["release"] => Command::Release,
                _ => continue,
            };
            let stop = matches!(cmd, Command::Stop);
            if tx.send(cmd).is_err() || waker.wake().is_err() || stop {
                return;
            }
        }
        let _ = tx.send(Command::Stop);
        let _ = waker.wake();
    });
    rx
}

/// Entry point of the hidden `worker` subcommand.
pub fn run_worker() -> Result<()> {
    crate::host::raise_fd_limit();
    let mut first = String::new();
    std::io::stdin().lock().read_line(&mut first).context("reading worker config from stdin")?;
    let cfg: WorkerConfig = serde_json::from_str(&first).context("parsing worker config")?;
    run_loop(cfg, spawn_command_reader, |report| {
        let line = serde_json::to_string(report).expect("report serializes");
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    })
}

/// The worker's event loop. `commands` is handed the loop's waker and returns the command
/// stream; `sink` receives every report. Returns after `stop` or the configured lifetime.
pub fn run_loop(
    cfg: WorkerConfig,
    commands: impl FnOnce(std::sync::Arc<Waker>) -> mpsc::Receiver<Command>,
    mut sink: impl FnMut(&WorkerReport),
) -> Result<()> {
    anyhow::ensure!(!cfg.endpoints.is_empty(), "worker needs at least one endpoint");
    anyhow::ensure!(cfg.conns <= limits::WORKER_CONNS_MAX, "worker asked for {} connections, above {}", cfg.conns, limits::WORKER_CONNS_MAX);
    let lifetime = Duration::from_millis(cfg.lifetime_ms);
    let mut worker = Worker::new(cfg)?;
    let waker = std::sync::Arc::new(Waker::new(worker.poll.registry(), WAKER_TOKEN)?);
    let commands = commands(waker);
    let mut events = Events::with_capacity(limits::EVENTS_PER_POLL);
    let started = worker.started;
    let mut next_tick = started + limits::REPORT_INTERVAL;
    loop {
        worker.open_due();
        let connecting = worker.report.attempted < worker.cfg.conns as u64 && worker.report.host_limit.is_none() && !worker.holding;
        let timeout = if connecting || !worker.retry_queue.is_empty() { Duration::from_millis(1) } else { limits::IDLE_POLL };
        if let Err(e) = worker.poll.poll(&mut events, Some(timeout)) {
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e).context("epoll_wait");
            }
        }
        for event in events.iter() {
            if event.token() != WAKER_TOKEN {
                worker.on_event(event.token().0, event);
            }
        }
        let mut stop = started.elapsed() >= lifetime;
        while let Ok(cmd) = commands.try_recv() {
            match cmd {
                Command::Snap(n) => worker.emit(n, false, &mut sink),
                Command::Release => worker.released = true,
                Command::Stop => stop = true,
            }
        }
        if stop {
            break;
        }
        if Instant::now() >= next_tick {
            next_tick += limits::REPORT_INTERVAL;
            worker.expire_stale();
            worker.emit(0, false, &mut sink);
        }
    }
    worker.emit(0, true, &mut sink);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn config(kind: TargetKind, classes: Vec<SubClass>) -> WorkerConfig {
        WorkerConfig {
            worker_index: 0,
            endpoints: vec![Endpoint { addr: "127.0.0.1:9".parse().unwrap(), host: "127.0.0.1:9".into(), path: "/ws".into() }],
            kind,
            nats_prefix: None,
            conns: 1,
            first_conn_index: 0,
            source_ips: 1,
            connect_rate: 0.0,
            inflight_max: 1,
            classes,
            connect_timeout_ms: 1000,
            lifetime_ms: 1000,
            reconnect: None,
            users: None,
            presence: false,
            held_from: None,
            heartbeat_timeout_ms: 0,
            tracked_messages: 0,
            deflate: false,
        }
    }

    fn one_class(track_order: bool) -> Vec<SubClass> {
        vec![SubClass { name: "subscribers".into(), conns: 1, channel: "bench".into(), channel_count: 1, track_order }]
    }

    fn msg_frame(out: &mut Vec<u8>, n: u64, seq: Option<u64>, sent: u64) {
        let t = frame::payload_template(300); // > 125 bytes: 16-bit length header
        let mut data = t.text.into_bytes();
        frame::write_fixed(&mut data[t.ts_at..t.ts_at + frame::TIMESTAMP_DIGITS], sent);
        frame::write_padded(&mut data[t.n_at..t.n_at + frame::COUNTER_DIGITS], n);
        let mut msg = br#"{"op":"msg","ch":"bench","data":"#.to_vec();
        msg.extend_from_slice(&data);
        if let Some(s) = seq {
            msg.extend_from_slice(format!(",\"seq\":{s}").as_bytes());
        }
        msg.push(b'}');
        frame::encode_server_frame(out, frame::OPCODE_TEXT, &msg);
    }

    /// Feeds `stream` to a fresh worker's connection cut in two at `cut`.
    fn feed(worker: &mut Worker, conn: &mut Conn, stream: &[u8], cut: usize) {
        let mut carry = Vec::new();
        for chunk in [&stream[..cut], &stream[cut..]] {
            carry.extend_from_slice(chunk);
            let used = worker.process(0, conn, &carry, crate::host::now_ns()).ok().expect("no failure");
            carry.drain(..used);
        }
        assert!(carry.is_empty(), "cut {cut}: {} bytes left", carry.len());
    }

    /// The upgrade answer, welcome, ok and three messages, cut at every byte.
    #[test]
    fn parser_survives_any_split_and_counts_each_message_once() {
        let mut stream = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n".to_vec();
        frame::encode_server_frame(&mut stream, frame::OPCODE_TEXT, br#"{"op":"welcome","conn":"c1","hb":25}"#);
        frame::encode_server_frame(&mut stream, frame::OPCODE_TEXT, br#"{"op":"ok","id":1}"#);
        let sent = crate::host::now_ns() - 1_000_000;
        for n in 1..=3 {
            msg_frame(&mut stream, n, None, sent);
        }
        frame::encode_server_frame(&mut stream, frame::OPCODE_PING, b"hb");
        for cut in 1..stream.len() {
            let mut worker = Worker::new(config(TargetKind::Ringcast, one_class(true))).unwrap();
            let mut conn = Conn { state: State::Upgrading, ..Default::default() };
            feed(&mut worker, &mut conn, &stream, cut);
            assert_eq!(conn.state, State::Ready, "cut {cut}");
            assert_eq!((worker.report.upgraded, worker.report.ready, worker.report.deliveries), (1, 1, 3), "cut {cut}");
            assert_eq!(worker.report.classes[0].deliveries, 3);
            assert_eq!(worker.latency.len(), 3);
            assert!(worker.latency.min() >= 1_000_000, "latency measured from the payload timestamp");
            assert_eq!(worker.report.order, OrderCounters::default(), "1, 2, 3: no gap, no duplicate");
            // The sub frame went out after the upgrade, then a pong for the ping.
            let sub = frame::parse_header(&worker.out).unwrap();
            let pong = frame::parse_header(&worker.out[sub.frame_len() as usize..]).unwrap();
            assert_eq!(pong.opcode, frame::OPCODE_PONG);
        }
    }

    #[test]
    fn gaps_duplicates_seq_and_resume_are_counted() {
        let mut worker = Worker::new(config(TargetKind::Ringcast, one_class(true))).unwrap();
        let mut conn = Conn { state: State::Ready, flags: EVER_READY, ..Default::default() };
        let mut stream = Vec::new();
        for (n, seq) in [(1, 10), (2, 11), (5, 14), (5, 14), (3, 12), (6, 15)] {
            msg_frame(&mut stream, n, Some(seq), 1);
        }
        feed(&mut worker, &mut conn, &stream, stream.len());
        let o = worker.report.order;
        assert_eq!((o.gaps, o.missed, o.duplicates, o.seq_gaps), (1, 2, 2, 1), "{o:?}");
        assert_eq!((conn.last_n, conn.last_seq), (6, 15));

        // Resume: the join after a reconnect carries `since` = last seq seen.
        conn.state = State::Upgrading;
        let mut stream = b"HTTP/1.1 101 Switching Protocols\r\n\r\n".to_vec();
        frame::encode_server_frame(&mut stream, frame::OPCODE_TEXT, br#"{"op":"ok","id":1}"#);
        msg_frame(&mut stream, 9, Some(18), 1); // 7 and 8 never came back
        worker.out.clear();
        feed(&mut worker, &mut conn, &stream, stream.len());
        let sub = frame::parse_header(&worker.out).unwrap();
        let mut body = worker.out[sub.header_len..sub.frame_len() as usize].to_vec();
        frame::unmask(&mut body, sub.mask.unwrap());
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&body).unwrap()["since"], 15);
        let o = worker.report.order;
        assert_eq!((o.resumed, o.resumed_with_gap, o.missed), (1, 1, 4), "{o:?}");
        assert_eq!(worker.report.reconnected, 1);
    }

    #[test]
    fn resume_past_retention_resubscribes_without_since() {
        let mut worker = Worker::new(config(TargetKind::Ringcast, one_class(true))).unwrap();
        let mut conn = Conn { state: State::Upgrading, flags: EVER_READY, last_seq: 7, last_n: 3, ..Default::default() };
        let mut stream = b"HTTP/1.1 101 Switching Protocols\r\n\r\n".to_vec();
        frame::encode_server_frame(&mut stream, frame::OPCODE_TEXT, br#"{"op":"err","id":1,"code":409,"msg":"past retention"}"#);
        frame::encode_server_frame(&mut stream, frame::OPCODE_TEXT, br#"{"op":"ok","id":1}"#);
        feed(&mut worker, &mut conn, &stream, stream.len());
        assert_eq!(conn.state, State::Ready);
        assert_eq!((worker.report.order.resumed, worker.report.order.resume_refused), (1, 1));
        let first = frame::parse_header(&worker.out).unwrap();
        let second = frame::parse_header(&worker.out[first.frame_len() as usize..]).unwrap();
        let at = first.frame_len() as usize + second.header_len;
        let mut body = worker.out[at..at + second.payload_len as usize].to_vec();
        frame::unmask(&mut body, second.mask.unwrap());
        assert!(serde_json::from_slice::<serde_json::Value>(&body).unwrap().get("since").is_none());
    }

    #[test]
    fn nats_stream_split_across_frames_counts_every_message() {
        let mut worker = Worker::new(config(TargetKind::NatsWs, one_class(false))).unwrap();
        let mut conn = Conn { state: State::Upgrading, ..Default::default() };
        let t = frame::payload_template(200);
        let mut text = b"INFO {\"server_id\":\"x\"}\r\nPONG\r\n".to_vec();
        for _ in 0..3 {
            text.extend_from_slice(format!("MSG bench 1 {}\r\n{}\r\n", t.text.len(), t.text).as_bytes());
        }
        text.extend_from_slice(b"PING\r\n");
        for cut in 1..text.len() {
            let mut stream = b"HTTP/1.1 101 Switching Protocols\r\n\r\n".to_vec();
            frame::encode_server_frame(&mut stream, frame::OPCODE_BINARY, &text[..cut]);
            frame::encode_server_frame(&mut stream, frame::OPCODE_BINARY, &text[cut..]);
            let mut w = Worker::new(config(TargetKind::NatsWs, one_class(false))).unwrap();
            let mut c = Conn { state: State::Upgrading, ..Default::default() };
            feed(&mut w, &mut c, &stream, stream.len());
            assert_eq!((c.state, w.report.deliveries), (State::Ready, 3), "cut {cut}");
            assert!(c.app.is_empty());
            // CONNECT/SUB/PING went out, then a PONG for the server's PING.
            assert_eq!(frame::parse_header(&w.out).unwrap().opcode, frame::OPCODE_BINARY);
        }
        // A protocol error is a named failure, not a panic.
        let mut stream = b"HTTP/1.1 101 Switching Protocols\r\n\r\n".to_vec();
        frame::encode_server_frame(&mut stream, frame::OPCODE_BINARY, b"-ERR 'Permissions Violation'\r\n");
        assert!(matches!(worker.process(0, &mut conn, &stream, 0), Err(Fail(k)) if k == "nats_err"));
    }

    fn notify_frame(out: &mut Vec<u8>, nid: &str, sent: u64) {
        let t = frame::payload_template(200);
        let mut data = t.text.into_bytes();
        frame::write_fixed(&mut data[t.ts_at..t.ts_at + frame::TIMESTAMP_DIGITS], sent);
        let mut op = format!(r#"{{"op":"notify","nid":"{nid}","data":"#).into_bytes();
        op.extend_from_slice(&data);
        op.extend_from_slice(br#","ts":1}"#);
        frame::encode_server_frame(out, frame::OPCODE_TEXT, &op);
    }

    /// Client frames in `out`, unmasked.
    fn sent_frames(out: &[u8]) -> Vec<String> {
        let mut frames = Vec::new();
        let mut pos = 0;
        while let Some(h) = frame::parse_header(&out[pos..]) {
            let mut body = out[pos + h.header_len..pos + h.frame_len() as usize].to_vec();
            frame::unmask(&mut body, h.mask.unwrap());
            frames.push(String::from_utf8(body).unwrap());
            pos += h.frame_len() as usize;
        }
        frames
    }

    #[test]
    fn notify_frames_are_acked_counted_once_and_timed_by_kind() {
        let mut cfg = config(TargetKind::Ringcast, vec![SubClass { name: "users".into(), conns: 1, channel: "user.u{g}".into(), channel_count: 1, track_order: false }]);
        cfg.users = Some(UserSpec { jwt_secret: "s".into(), sub_prefix: "u".into(), exp: 1, nid_prefix: "r9-".into() });
        assert_eq!(cfg.locate(0), Some((0, "user.u0".into())), "{{g}} is the global connection number");
        let mut worker = Worker::new(cfg).unwrap();
        let mut conn = Conn { state: State::Upgrading, ..Default::default() };
        let mut stream = b"HTTP/1.1 101 Switching Protocols\r\n\r\n".to_vec();
        frame::encode_server_frame(&mut stream, frame::OPCODE_TEXT, br#"{"op":"ok","id":1}"#);
        feed(&mut worker, &mut conn, &stream, stream.len());
        assert_eq!(conn.state, State::Ready);
        assert!(conn.ready_ns > 0);
        worker.out.clear();
        let mut stream = Vec::new();
        notify_frame(&mut stream, "r9-1", conn.ready_ns - 5_000_000_000); // waited 5 s for the user: pending
        notify_frame(&mut stream, "r9-2", crate::host::now_ns()); // online
        notify_frame(&mut stream, "r9-2", crate::host::now_ns()); // duplicate
        notify_frame(&mut stream, "other-3", crate::host::now_ns()); // another run's
        for cut in [1, stream.len() / 2, stream.len()] {
            let mut w = Worker::new(worker.cfg.clone()).unwrap();
            let mut c = Conn { state: State::Ready, ready_ns: conn.ready_ns, ..Default::default() };
            feed(&mut w, &mut c, &stream, cut);
            let n = &w.report.notify;
            assert_eq!((n.unique, n.duplicates, n.foreign, n.acks, n.pending), (2, 1, 1, 4, 1), "cut {cut}");
            assert_eq!(w.report.deliveries, 2);
            assert_eq!(w.latency.len(), 1, "only the online delivery is timed from its stamp");
            assert_eq!(w.pending_delay.len(), 1);
            assert!(w.pending_delay.max() < 5_000_000_000, "pending delay counts from ready, not from the send");
            let acks = sent_frames(&w.out);
            assert_eq!(acks, [r#"{"op":"ack","nid":"r9-1"}"#, r#"{"op":"ack","nid":"r9-2"}"#, r#"{"op":"ack","nid":"r9-2"}"#, r#"{"op":"ack","nid":"other-3"}"#]);
            let mut reports = Vec::new();
            w.emit(0, true, &mut |r: &WorkerReport| reports.push(r.clone()));
            assert_eq!(reports[0].notify.seen, [1, 2], "the final report lists what arrived");
        }
        assert_eq!(notification_number(br#""r9-17""#, "r9-"), Some(17));
        assert_eq!(notification_number(br#""r9-""#, "r9-"), None);
        assert_eq!(notification_number(b"17", ""), None, "a bare number is not one of ours");
    }

    #[test]
    fn held_connections_wait_for_release() {
        let mut cfg = config(TargetKind::Ringcast, vec![]);
        cfg.conns = 3;
        cfg.inflight_max = 10;
        cfg.held_from = Some(1);
        // A listener that never answers the upgrade: connections stay in flight.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        cfg.endpoints = vec![Endpoint { addr, host: addr.to_string(), path: "/ws".into() }];
        let mut worker = Worker::new(cfg).unwrap();
        worker.open_due();
        assert_eq!((worker.report.attempted, worker.holding), (1, true));
        worker.open_due();
        assert_eq!(worker.report.attempted, 1, "still held");
        worker.released = true;
        worker.open_due();
        assert_eq!((worker.report.attempted, worker.holding), (3, false));
    }

    #[test]
    fn silent_ready_connections_time_out_client_side_and_pings_are_counted() {
        let mut cfg = config(TargetKind::Ringcast, vec![]);
        cfg.conns = 2;
        cfg.heartbeat_timeout_ms = 60_000;
        let mut worker = Worker::new(cfg).unwrap();
        worker.started = Instant::now() - Duration::from_secs(90);
        let now_s = worker.now_s();
        worker.conns[0] = Conn { state: State::Ready, last_rx_s: 5, ..Default::default() };
        worker.conns[1] = Conn { state: State::Ready, last_rx_s: now_s - 30, ..Default::default() };
        worker.report.open = 2;
        worker.report.ready = 2;
        let mut ping = Vec::new();
        frame::encode_server_frame(&mut ping, frame::OPCODE_PING, b"");
        let mut conn = std::mem::take(&mut worker.conns[1]);
        assert_eq!(worker.process(1, &mut conn, &ping, crate::host::now_ns()).ok(), Some(ping.len()));
        worker.conns[1] = conn;
        assert_eq!(worker.report.pings, 1);
        assert!(!worker.out.is_empty(), "the ping was answered");
        worker.expire_stale();
        assert_eq!((worker.report.heartbeat_timeouts, worker.report.ready, worker.report.dropped_after_ready), (1, 1, 1));
        assert_eq!(worker.report.failures.get("dropped_heartbeat_timeout"), Some(&1));
        assert_eq!(worker.conns[1].state, State::Ready, "a connection heard from 30 s ago stays");
        // Off by default: nothing is closed however long the silence.
        let mut worker = Worker::new(config(TargetKind::Ringcast, vec![])).unwrap();
        worker.started = Instant::now() - Duration::from_secs(3600);
        worker.conns[0] = Conn { state: State::Ready, ..Default::default() };
        worker.report.open = 1;
        worker.report.ready = 1;
        worker.expire_stale();
        assert_eq!((worker.report.heartbeat_timeouts, worker.report.ready), (0, 1));
    }

    #[test]
    fn broadcasts_are_tallied_per_message_number() {
        let mut cfg = config(TargetKind::Ringcast, one_class(false));
        cfg.tracked_messages = 2;
        let mut worker = Worker::new(cfg).unwrap();
        let mut conn = Conn { state: State::Ready, ..Default::default() };
        let sent = crate::host::now_ns() - 2_000_000;
        let mut stream = Vec::new();
        for n in [1, 2, 2, 3] {
            msg_frame(&mut stream, n, None, sent);
        }
        assert_eq!(worker.process(0, &mut conn, &stream, crate::host::now_ns()).ok(), Some(stream.len()));
        assert_eq!(worker.report.deliveries, 4);
        let m = &worker.report.messages;
        assert_eq!(m.len(), 2, "only numbers 1..=2 are tracked");
        assert_eq!((m[0].deliveries, m[1].deliveries), (1, 2));
        assert_eq!((m[0].sent_ns, m[1].sent_ns), (sent, sent));
        assert!(m[1].last_arrival_ns >= sent + 2_000_000);
        worker.emit(0, false, &mut |r: &WorkerReport| {
            let count: u64 = r.messages[1].latency.iter().map(|&(_, c)| c).sum();
            assert_eq!(count, 2);
            assert!(r.messages[1].latency.iter().all(|&(v, _)| v >= 2_000_000), "latency from the publisher's stamp");
        });
    }

    #[test]
    fn refusals_are_named() {
        let mut worker = Worker::new(config(TargetKind::Ringcast, one_class(false))).unwrap();
        let mut conn = Conn { state: State::Upgrading, ..Default::default() };
        let r = worker.process(0, &mut conn, b"HTTP/1.1 401 Unauthorized\r\n\r\n", 0);
        assert!(matches!(r, Err(Fail(k)) if k == "http_401"));
        let e = std::io::Error::from_raw_os_error(libc::EMFILE);
        assert!(host_limit_of(&e).unwrap().starts_with("file descriptors"));
        assert!(host_limit_of(&std::io::Error::from_raw_os_error(libc::EADDRNOTAVAIL)).unwrap().starts_with("ports"));
        assert!(host_limit_of(&std::io::Error::from_raw_os_error(libc::ENOBUFS)).unwrap().starts_with("memory"));
        assert_eq!(host_limit_of(&std::io::Error::from_raw_os_error(libc::ECONNREFUSED)), None);
    }

    #[test]
    fn classes_locate_channels_and_backoff_is_bounded() {
        let mut cfg = config(TargetKind::Ringcast, vec![]);
        cfg.classes = vec![
            SubClass { name: "device".into(), conns: 6, channel: "dev.{i}.temp".into(), channel_count: 3, track_order: true },
            SubClass { name: "dashboard".into(), conns: 2, channel: "dev.*.temp".into(), channel_count: 1, track_order: false },
        ];
        assert_eq!(cfg.locate(0), Some((0, "dev.0.temp".into())));
        assert_eq!(cfg.locate(4), Some((0, "dev.1.temp".into())));
        assert_eq!(cfg.locate(7), Some((1, "dev.*.temp".into())));
        assert_eq!(cfg.locate(8), None);
        let mut worker = Worker::new(config(TargetKind::Ringcast, vec![])).unwrap();
        let policy = ReconnectPolicy { base_ms: 100, cap_ms: 2000, attempts_max: 10 };
        for attempt in 0..30u8 {
            let d = worker.backoff_ms(policy, attempt);
            let full = (100u64 << attempt.min(20)).min(2000) as u32;
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d} ms outside [{}, {full}]", full / 2);
        }
        assert!(std::mem::size_of::<Conn>() <= 120, "Conn grew to {} bytes", std::mem::size_of::<Conn>());
    }
}
