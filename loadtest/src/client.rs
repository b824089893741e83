//! The client worker: one mio (epoll) event loop holding up to WORKER_CONNS_MAX WebSockets.
//!
//! Owns: opening connections at a bounded rate from spread source addresses, the upgrade,
//! the `sub`, reading frames (headers plus the timestamp only), and the per-interval
//! counters it reports to the parent as JSON lines on stdout. Runs as its own process
//! (`ringcast-loadtest worker`, one thread) so each process stays under the fd limit.
//! Must not touch: scenario logic or output formatting (the parent owns those).

use crate::frame;
use crate::limits;
use crate::stats;
use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use serde::{Deserialize, Serialize};
use socket2::{Domain, Socket, Type};
use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Everything a worker needs, sent by the parent as the first line on stdin.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerConfig {
    pub worker_index: usize,
    pub target: SocketAddr,
    pub host_header: String,
    pub path: String,
    pub conns: usize,
    /// Global index of this worker's first connection (spreads source addresses).
    pub first_conn_index: usize,
    pub source_ips: usize,
    /// New connections per second for this worker; 0 = as fast as possible.
    pub connect_rate: f64,
    pub inflight_max: usize,
    /// Subscribe to this channel after the upgrade (fanout); `None` holds idle.
    pub channel: Option<String>,
    pub connect_timeout_ms: u64,
    /// The worker exits by itself after this long even if the parent never says stop.
    pub lifetime_ms: u64,
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
    /// Connections currently upgraded and (for fanout) subscribed.
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
    pub rss_kib: u64,
    /// RSS before the first connection: the per-connection figure subtracts it.
    pub rss_start_kib: u64,
    /// ms after the worker started when a connection last became ready (burst timing).
    pub last_ready_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Connecting,
    Upgrading,
    Subscribing,
    Ready,
}

/// Per-connection state: kept small (the read buffer is shared per worker; `carry`
/// allocates only while a frame is split across reads).
struct Conn {
    stream: TcpStream,
    state: State,
    started: Instant,
    carry: Vec<u8>,
}

/// Parent → worker commands (`snap N`, `stop` lines on stdin).
pub enum Command {
    Snap(u64),
    Stop,
}

const WAKER_TOKEN: Token = Token(usize::MAX);

struct Worker {
    cfg: WorkerConfig,
    poll: Poll,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    report: WorkerReport,
    latency: Histogram<u64>,
    handshake: Histogram<u64>,
    request: Vec<u8>,
    sub_frame: Vec<u8>,
    read_buf: Vec<u8>,
    out: Vec<u8>,
    started: Instant,
}

/// Why a connection ended.
enum Fail {
    Kind(String),
}

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
        let request = frame::handshake_request(&cfg.host_header, &cfg.path, "dGhlIHNhbXBsZSBub25jZQ==").into_bytes();
        let mut sub_frame = Vec::new();
        if let Some(ch) = &cfg.channel {
            let text = serde_json::json!({"op": "sub", "ch": ch, "id": 1}).to_string();
            frame::encode_client_frame(&mut sub_frame, frame::OPCODE_TEXT, text.as_bytes(), [0x5a, 0x17, 0xc3, 0x2e]);
        }
        Ok(Worker {
            poll: Poll::new().context("epoll_create")?,
            conns: Vec::with_capacity(cfg.conns),
            free: Vec::new(),
            report: WorkerReport { worker: cfg.worker_index, rss_start_kib: stats::self_rss_kib(), ..Default::default() },
            latency: stats::new_histogram(),
            handshake: stats::new_histogram(),
            request,
            sub_frame,
            read_buf: vec![0; limits::READ_BUFFER_BYTES],
            out: Vec::new(),
            started: Instant::now(),
            cfg,
        })
    }

    fn inflight(&self) -> u64 {
        self.report.open - self.report.ready
    }

    fn open_due(&mut self, started: Instant) {
        let target = self.cfg.conns as u64;
        let allowed = if self.cfg.connect_rate > 0.0 {
            ((started.elapsed().as_secs_f64() * self.cfg.connect_rate) as u64 + 1).min(target)
        } else {
            target
        };
        while self.report.attempted < allowed
            && self.inflight() < self.cfg.inflight_max as u64
            && self.report.host_limit.is_none()
        {
            let global = self.cfg.first_conn_index + self.report.attempted as usize;
            self.report.attempted += 1;
            if let Err(e) = self.open_one(global) {
                match host_limit_of(&e) {
                    Some(limit) => self.report.host_limit = Some(limit),
                    None => self.count_failure(errno_kind(&e)),
                }
            }
        }
    }

    fn open_one(&mut self, global: usize) -> std::io::Result<()> {
        let octet = 1 + (global % self.cfg.source_ips) as u8;
        let source = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, octet), 0);
        let socket = Socket::new(Domain::IPV4, Type::STREAM.nonblocking(), None)?;
        // Choose the source port at connect() from the full 4-tuple, not at bind().
        set_bind_address_no_port(&socket)?;
        socket.set_nodelay(true)?;
        socket.bind(&SocketAddr::V4(source).into())?;
        match socket.connect(&self.cfg.target.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        let mut stream = TcpStream::from_std(socket.into());
        let slot = self.free.pop().unwrap_or(self.conns.len());
        self.poll.registry().register(&mut stream, Token(slot), Interest::WRITABLE | Interest::READABLE)?;
        let conn = Conn { stream, state: State::Connecting, started: Instant::now(), carry: Vec::new() };
        if slot == self.conns.len() {
            self.conns.push(Some(conn));
        } else {
            self.conns[slot] = Some(conn);
        }
        self.report.open += 1;
        Ok(())
    }

    fn count_failure(&mut self, kind: String) {
        *self.report.failures.entry(kind).or_insert(0) += 1;
    }

    fn close(&mut self, slot: usize, fail: Fail) {
        let Some(mut conn) = self.conns[slot].take() else { return };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        self.free.push(slot);
        self.report.open -= 1;
        let Fail::Kind(kind) = fail;
        if conn.state == State::Ready {
            self.report.ready -= 1;
            self.report.dropped_after_ready += 1;
            self.count_failure(format!("dropped_{kind}"));
        } else {
            self.count_failure(kind);
        }
    }

    fn on_event(&mut self, slot: usize, event: &mio::event::Event) {
        let state = match &self.conns[slot] {
            Some(c) => c.state,
            None => return,
        };
        if state == State::Connecting {
            if !event.is_writable() && !event.is_error() && !event.is_read_closed() {
                return;
            }
            if let Err(fail) = self.finish_connect(slot) {
                self.close(slot, fail);
            }
            return;
        }
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            if let Err(fail) = self.read_all(slot) {
                self.close(slot, fail);
            }
        }
    }

    fn finish_connect(&mut self, slot: usize) -> Result<(), Fail> {
        let conn = self.conns[slot].as_mut().expect("slot checked by caller");
        if let Ok(Some(e)) | Err(e) = conn.stream.take_error() {
            return Err(Fail::Kind(errno_kind(&e)));
        }
        match conn.stream.peer_addr() {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotConnected => return Ok(()), // spurious wake
            Err(e) => return Err(Fail::Kind(errno_kind(&e))),
        }
        match conn.stream.write(&self.request) {
            Ok(n) if n == self.request.len() => {}
            Ok(_) => return Err(Fail::Kind("handshake_short_write".into())),
            Err(e) => return Err(Fail::Kind(errno_kind(&e))),
        }
        conn.state = State::Upgrading;
        let _ = self.poll.registry().reregister(&mut conn.stream, Token(slot), Interest::READABLE);
        Ok(())
    }

    fn read_all(&mut self, slot: usize) -> Result<(), Fail> {
        // The shared read buffer is lent out so `process` may borrow the worker mutably.
        let mut buf = std::mem::take(&mut self.read_buf);
        let result = self.read_all_with(slot, &mut buf);
        self.read_buf = buf;
        result
    }

    fn read_all_with(&mut self, slot: usize, buf: &mut [u8]) -> Result<(), Fail> {
        let now = crate::host::now_ns();
        loop {
            let conn = self.conns[slot].as_mut().expect("slot checked by caller");
            let n = match conn.stream.read(buf) {
                Ok(0) => return Err(Fail::Kind("eof".into())),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Fail::Kind(errno_kind(&e))),
            };
            let mut carry = std::mem::take(&mut conn.carry);
            let mut state = conn.state;
            let started = conn.started;
            let result = if carry.is_empty() {
                let data = &buf[..n];
                let r = self.process(&mut state, started, data, now);
                if let Ok(used) = r {
                    carry.extend_from_slice(&data[used..]);
                }
                r
            } else {
                carry.extend_from_slice(&buf[..n]);
                let r = self.process(&mut state, started, &carry, now);
                if let Ok(used) = r {
                    carry.drain(..used);
                }
                r
            };
            let conn = self.conns[slot].as_mut().expect("slot checked by caller");
            conn.state = state;
            if carry.len() > limits::CARRY_BYTES_MAX {
                return Err(Fail::Kind("frame_too_big".into()));
            }
            if carry.is_empty() && carry.capacity() > limits::CARRY_KEEP_BYTES {
                carry = Vec::new(); // an idle client keeps no large buffer
            }
            conn.carry = carry;
            if !self.out.is_empty() {
                let wrote = conn.stream.write(&self.out);
                let whole = matches!(wrote, Ok(w) if w == self.out.len());
                self.out.clear();
                if !whole {
                    return Err(Fail::Kind("write_blocked".into()));
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
    fn process(&mut self, state: &mut State, started: Instant, data: &[u8], now_ns: u64) -> Result<usize, Fail> {
        let mut pos = 0;
        if *state == State::Upgrading {
            let Some(end) = frame::http_head_end(data) else {
                if data.len() > limits::HTTP_HEAD_BYTES_MAX {
                    return Err(Fail::Kind("bad_upgrade_response".into()));
                }
                return Ok(0);
            };
            match frame::http_status(&data[..end]) {
                Some(101) => {}
                Some(code) => return Err(Fail::Kind(format!("http_{code}"))),
                None => return Err(Fail::Kind("bad_upgrade_response".into())),
            }
            self.report.upgraded += 1;
            self.handshake.saturating_record(started.elapsed().as_nanos() as u64);
            if self.sub_frame.is_empty() {
                *state = State::Ready;
                self.mark_ready();
            } else {
                *state = State::Subscribing;
                self.out.extend_from_slice(&self.sub_frame);
            }
            pos = end;
        }
        while let Some(h) = frame::parse_header(&data[pos..]) {
            if h.payload_len > limits::CARRY_BYTES_MAX as u64 {
                return Err(Fail::Kind("frame_too_big".into()));
            }
            if (data.len() - pos) < h.frame_len() as usize {
                break;
            }
            let payload = &data[pos + h.header_len..pos + h.frame_len() as usize];
            pos += h.frame_len() as usize;
            match h.opcode {
                frame::OPCODE_TEXT | frame::OPCODE_BINARY | frame::OPCODE_CONTINUATION => {
                    if let Some(sent) = frame::find_timestamp(payload) {
                        self.report.deliveries += 1;
                        self.latency.saturating_record(now_ns.saturating_sub(sent));
                    } else if *state == State::Subscribing {
                        if frame::contains(payload, b"\"ok\"") {
                            *state = State::Ready;
                            self.mark_ready();
                        } else if frame::contains(payload, b"\"err\"") {
                            return Err(Fail::Kind("sub_refused".into()));
                        }
                    }
                }
                frame::OPCODE_PING => {
                    frame::encode_client_frame(&mut self.out, frame::OPCODE_PONG, payload, [1, 2, 3, 4]);
                }
                frame::OPCODE_CLOSE => {
                    let code = if payload.len() >= 2 { u16::from_be_bytes([payload[0], payload[1]]) } else { 1005 };
                    return Err(Fail::Kind(format!("close_{code}")));
                }
                _ => {}
            }
        }
        Ok(pos)
    }

    fn mark_ready(&mut self) {
        self.report.ready += 1;
        self.report.last_ready_ms = self.started.elapsed().as_millis() as u64;
    }

    fn expire_stale(&mut self) {
        let timeout = Duration::from_millis(self.cfg.connect_timeout_ms);
        let stale: Vec<(usize, State)> = self
            .conns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().filter(|c| c.state != State::Ready && c.started.elapsed() > timeout).map(|c| (i, c.state)))
            .collect();
        for (slot, state) in stale {
            let what = match state {
                State::Connecting => "timeout_connect",
                State::Upgrading => "timeout_upgrade",
                _ => "timeout_subscribe",
            };
            self.close(slot, Fail::Kind(what.into()));
        }
    }

    fn emit(&mut self, snap: u64, done: bool, sink: &mut impl FnMut(&WorkerReport)) {
        self.report.snap = snap;
        self.report.done = done;
        self.report.latency = stats::histogram_to_pairs(&self.latency);
        self.report.handshake = stats::histogram_to_pairs(&self.handshake);
        self.report.rss_kib = stats::self_rss_kib();
        self.latency.reset();
        self.handshake.reset();
        sink(&self.report);
    }
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
    let lifetime = Duration::from_millis(cfg.lifetime_ms);
    let mut worker = Worker::new(cfg)?;
    let waker = std::sync::Arc::new(Waker::new(worker.poll.registry(), WAKER_TOKEN)?);
    let commands = commands(waker);
    let mut events = Events::with_capacity(limits::EVENTS_PER_POLL);
    let started = worker.started;
    let mut next_tick = started + limits::REPORT_INTERVAL;
    loop {
        worker.open_due(started);
        let connecting = worker.report.attempted < worker.cfg.conns as u64 && worker.report.host_limit.is_none();
        let timeout = if connecting { Duration::from_millis(1) } else { limits::IDLE_POLL };
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

    fn config() -> WorkerConfig {
        WorkerConfig {
            worker_index: 0,
            target: "127.0.0.1:9".parse().unwrap(),
            host_header: "127.0.0.1:9".into(),
            path: "/ws".into(),
            conns: 1,
            first_conn_index: 0,
            source_ips: 1,
            connect_rate: 0.0,
            inflight_max: 1,
            channel: Some("bench".into()),
            connect_timeout_ms: 1000,
            lifetime_ms: 1000,
        }
    }

    /// The upgrade answer, welcome, ok and three messages, cut at every byte.
    #[test]
    fn parser_survives_any_split_and_counts_each_message_once() {
        let mut stream = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n".to_vec();
        frame::encode_server_frame(&mut stream, frame::OPCODE_TEXT, br#"{"op":"welcome","conn":"c1","hb":25}"#);
        frame::encode_server_frame(&mut stream, frame::OPCODE_TEXT, br#"{"op":"ok","id":1}"#);
        let sent = crate::host::now_ns() - 1_000_000;
        for _ in 0..3 {
            let (data, at) = frame::payload_json(300); // > 125 bytes: 16-bit length header
            let mut data = data.into_bytes();
            frame::write_timestamp(&mut data[at..at + frame::TIMESTAMP_DIGITS], sent);
            let mut msg = br#"{"op":"msg","ch":"bench","data":"#.to_vec();
            msg.extend_from_slice(&data);
            msg.push(b'}');
            frame::encode_server_frame(&mut stream, frame::OPCODE_TEXT, &msg);
        }
        frame::encode_server_frame(&mut stream, frame::OPCODE_PING, b"hb");
        for cut in 1..stream.len() {
            let mut worker = Worker::new(config()).unwrap();
            let mut state = State::Upgrading;
            let mut carry = Vec::new();
            for chunk in [&stream[..cut], &stream[cut..]] {
                carry.extend_from_slice(chunk);
                let used = worker.process(&mut state, Instant::now(), &carry, crate::host::now_ns()).ok().expect("no failure");
                carry.drain(..used);
            }
            assert!(carry.is_empty(), "cut {cut}: {} bytes left", carry.len());
            assert_eq!(state, State::Ready, "cut {cut}");
            assert_eq!((worker.report.upgraded, worker.report.ready, worker.report.deliveries), (1, 1, 3), "cut {cut}");
            assert_eq!(worker.latency.len(), 3);
            assert!(worker.latency.min() >= 1_000_000, "latency measured from the payload timestamp");
            // The sub frame went out after the upgrade, then a pong for the ping.
            assert!(worker.out.starts_with(&worker.sub_frame));
            let pong = frame::parse_header(&worker.out[worker.sub_frame.len()..]).unwrap();
            assert_eq!(pong.opcode, frame::OPCODE_PONG);
        }
    }

    #[test]
    fn refusals_are_named() {
        let mut worker = Worker::new(config()).unwrap();
        let mut state = State::Upgrading;
        let r = worker.process(&mut state, Instant::now(), b"HTTP/1.1 401 Unauthorized\r\n\r\n", 0);
        assert!(matches!(r, Err(Fail::Kind(k)) if k == "http_401"));
        let e = std::io::Error::from_raw_os_error(libc::EMFILE);
        assert!(host_limit_of(&e).unwrap().starts_with("file descriptors"));
        assert!(host_limit_of(&std::io::Error::from_raw_os_error(libc::EADDRNOTAVAIL)).unwrap().starts_with("ports"));
        assert!(host_limit_of(&std::io::Error::from_raw_os_error(libc::ENOBUFS)).unwrap().starts_with("memory"));
        assert_eq!(host_limit_of(&std::io::Error::from_raw_os_error(libc::ECONNREFUSED)), None);
    }
}
