//! The `limit` ceiling: a minimal one-thread fan-out server on plain non-blocking sockets.
//!
//! Owns: accepting WebSocket upgrades, answering any `sub` with `ok`, and broadcasting a
//! pre-encoded `msg` frame (timestamp patched in place) to every subscriber at the rate
//! the parent asks for, coalescing due messages into one write per client. It does the
//! least work a fan-out server can do per delivery, so its figures are what the kernel
//! allows on this machine. Runs as its own process (`ringcast-loadtest limit-server`),
//! controlled by lines on stdin (`publish RATE MS`, `stop`), answering on stdout.

use crate::frame;
use crate::limits;
use anyhow::{Context, Result};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use std::io::{BufRead, Read, Write};
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX);

struct ServerConn {
    stream: TcpStream,
    upgraded: bool,
    subscribed: bool,
    inbound: Vec<u8>,
    outbound: Vec<u8>,
}

struct Publishing {
    rate: f64,
    /// Wall-clock ns read just before `started`, so no due time lies in the future.
    started_ns: u64,
    started: Instant,
    until: Instant,
    sent: u64,
}

struct Server {
    poll: Poll,
    listener: TcpListener,
    conns: Vec<Option<ServerConn>>,
    free: Vec<usize>,
    template: Vec<u8>,
    ts_at: usize,
    batch: Vec<u8>,
    buf: Vec<u8>,
    dropped: u64,
    conn_counter: u64,
}

impl Server {
    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let slot = self.free.pop().unwrap_or(self.conns.len());
                    if self.poll.registry().register(&mut stream, Token(slot), Interest::READABLE).is_err() {
                        self.free.push(slot);
                        continue;
                    }
                    let conn = ServerConn { stream, upgraded: false, subscribed: false, inbound: Vec::new(), outbound: Vec::new() };
                    if slot == self.conns.len() {
                        self.conns.push(Some(conn));
                    } else {
                        self.conns[slot] = Some(conn);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)) => {
                    eprintln!("limit server: accept stopped by a host limit: {e}");
                    return;
                }
                Err(_) => continue,
            }
        }
    }

    fn drop_conn(&mut self, slot: usize) {
        if let Some(mut c) = self.conns[slot].take() {
            let _ = self.poll.registry().deregister(&mut c.stream);
            self.free.push(slot);
        }
    }

    /// Writes now if nothing is queued; queues the rest (bounded) and asks for writability.
    fn send(poll: &Poll, slot: usize, conn: &mut ServerConn, bytes: &[u8], dropped: &mut u64) -> bool {
        if !conn.outbound.is_empty() {
            if conn.outbound.len() + bytes.len() > limits::LIMIT_OUTBOUND_BYTES_MAX {
                *dropped += 1;
            } else {
                conn.outbound.extend_from_slice(bytes);
            }
            return true;
        }
        match conn.stream.write(bytes) {
            Ok(n) if n == bytes.len() => true,
            Ok(n) => {
                conn.outbound.extend_from_slice(&bytes[n..]);
                poll.registry().reregister(&mut conn.stream, Token(slot), Interest::READABLE | Interest::WRITABLE).is_ok()
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                conn.outbound.extend_from_slice(bytes);
                poll.registry().reregister(&mut conn.stream, Token(slot), Interest::READABLE | Interest::WRITABLE).is_ok()
            }
            Err(_) => false,
        }
    }

    fn flush(&mut self, slot: usize) -> bool {
        let Some(conn) = self.conns[slot].as_mut() else { return true };
        while !conn.outbound.is_empty() {
            match conn.stream.write(&conn.outbound) {
                Ok(n) => {
                    conn.outbound.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(_) => return false,
            }
        }
        conn.outbound = Vec::new();
        self.poll.registry().reregister(&mut conn.stream, Token(slot), Interest::READABLE).is_ok()
    }

    fn on_readable(&mut self, slot: usize) -> bool {
        let Some(conn) = self.conns[slot].as_mut() else { return true };
        loop {
            match conn.stream.read(&mut self.buf) {
                Ok(0) => return false,
                Ok(n) => {
                    conn.inbound.extend_from_slice(&self.buf[..n]);
                    if conn.inbound.len() > limits::CARRY_BYTES_MAX {
                        return false;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        self.handle_inbound(slot)
    }

    fn handle_inbound(&mut self, slot: usize) -> bool {
        let Some(conn) = self.conns[slot].as_mut() else { return true };
        let mut reply = Vec::new();
        let mut pos = 0;
        if !conn.upgraded {
            let Some(end) = frame::http_head_end(&conn.inbound) else { return conn.inbound.len() <= limits::HTTP_HEAD_BYTES_MAX };
            let Some(key) = frame::http_header(&conn.inbound[..end], "sec-websocket-key") else { return false };
            let protocol = frame::http_header(&conn.inbound[..end], "sec-websocket-protocol")
                .filter(|p| p.split(',').any(|x| x.trim() == "ringcast.v1"))
                .map(|_| "Sec-WebSocket-Protocol: ringcast.v1\r\n")
                .unwrap_or("");
            reply.extend_from_slice(
                format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n{protocol}\r\n",
                    frame::accept_key(key)
                )
                .as_bytes(),
            );
            self.conn_counter += 1;
            let welcome = format!(r#"{{"op":"welcome","conn":"L{}","node":"limit","hb":25}}"#, self.conn_counter);
            frame::encode_server_frame(&mut reply, frame::OPCODE_TEXT, welcome.as_bytes());
            conn.upgraded = true;
            pos = end;
        }
        let mut keep = true;
        while let Some(h) = frame::parse_header(&conn.inbound[pos..]) {
            if conn.inbound.len() - pos < h.frame_len() as usize {
                break;
            }
            let mut payload = conn.inbound[pos + h.header_len..pos + h.frame_len() as usize].to_vec();
            pos += h.frame_len() as usize;
            if let Some(mask) = h.mask {
                frame::unmask(&mut payload, mask);
            }
            match h.opcode {
                frame::OPCODE_TEXT if frame::contains(&payload, b"\"sub\"") => {
                    conn.subscribed = true;
                    let answer = match frame::find_u64_field(&payload, b"\"id\":") {
                        Some(id) => format!(r#"{{"op":"ok","id":{id}}}"#),
                        None => r#"{"op":"ok"}"#.to_string(),
                    };
                    frame::encode_server_frame(&mut reply, frame::OPCODE_TEXT, answer.as_bytes());
                }
                frame::OPCODE_PING => frame::encode_server_frame(&mut reply, frame::OPCODE_PONG, &payload),
                frame::OPCODE_CLOSE => {
                    frame::encode_server_frame(&mut reply, frame::OPCODE_CLOSE, &payload[..payload.len().min(2)]);
                    keep = false;
                    break;
                }
                _ => {}
            }
        }
        conn.inbound.drain(..pos);
        if conn.inbound.is_empty() {
            conn.inbound = Vec::new();
        }
        if !reply.is_empty() && !Self::send(&self.poll, slot, conn, &reply, &mut self.dropped) {
            return false;
        }
        keep
    }

    /// Sends every message now due, coalesced into one write per subscriber.
    fn publish_due(&mut self, p: &mut Publishing) {
        let now = Instant::now();
        let due_total = ((now.min(p.until) - p.started).as_secs_f64() * p.rate) as u64 + 1;
        let due_total = due_total.min((p.rate * (p.until - p.started).as_secs_f64()).ceil() as u64);
        let due = (due_total.saturating_sub(p.sent) as usize).min(limits::LIMIT_BATCH_MAX);
        if due == 0 {
            return;
        }
        // Each message carries the time it was due, not the time of this pass: a message
        // that fell due while the previous pass was still writing has been waiting since
        // then, exactly as a published message waits inside a real server. (Stamping the
        // pass start left that wait out and halved the ceiling's latency at 10k clients.)
        let now_ns = crate::host::now_ns();
        self.batch.clear();
        for k in p.sent..p.sent + due as u64 {
            let ts = due_ns(p.started_ns, p.rate, k).min(now_ns);
            frame::write_timestamp(&mut self.template[self.ts_at..self.ts_at + frame::TIMESTAMP_DIGITS], ts);
            self.batch.extend_from_slice(&self.template);
        }
        p.sent += due as u64;
        for slot in 0..self.conns.len() {
            let Some(conn) = self.conns[slot].as_mut() else { continue };
            if conn.subscribed && !Self::send(&self.poll, slot, conn, &self.batch, &mut self.dropped) {
                self.drop_conn(slot);
            }
        }
    }
}

/// When message `k` (from 0) of a run started at `started_ns` at `rate` msgs/s was due.
fn due_ns(started_ns: u64, rate: f64, k: u64) -> u64 {
    started_ns + (k as f64 * 1e9 / rate) as u64
}

/// A listener with a deep accept backlog: a connect storm must not hit SYN retransmits
/// (1 s each) because of the ceiling server's own queue.
fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM.nonblocking(), None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(limits::LIMIT_ACCEPT_BACKLOG)?;
    Ok(TcpListener::from_std(socket.into()))
}

fn spawn_command_reader(waker: std::sync::Arc<Waker>) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() || waker.wake().is_err() {
                return;
            }
        }
        let _ = tx.send("stop".into());
        let _ = waker.wake();
    });
    rx
}

/// Entry point of the hidden `limit-server` subcommand: commands on stdin, answers on stdout.
pub fn run(listen: SocketAddr, channel: &str, payload_bytes: usize, lifetime: Duration) -> Result<()> {
    crate::host::raise_fd_limit();
    serve(listen, channel, payload_bytes, lifetime, spawn_command_reader, |line| {
        println!("{line}");
        let _ = std::io::stdout().flush();
    })
}

/// The server loop; `commands` gets the loop's waker, `answer` takes each output line.
pub fn serve(
    listen: SocketAddr,
    channel: &str,
    payload_bytes: usize,
    lifetime: Duration,
    commands: impl FnOnce(std::sync::Arc<Waker>) -> mpsc::Receiver<String>,
    mut answer: impl FnMut(String),
) -> Result<()> {
    let poll = Poll::new()?;
    let mut listener = bind_listener(listen).with_context(|| format!("limit server binding {listen}"))?;
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    let waker = std::sync::Arc::new(Waker::new(poll.registry(), WAKER)?);
    let commands = commands(waker);
    let (data, data_ts_at) = frame::payload_json(payload_bytes);
    let prefix = format!(r#"{{"op":"msg","ch":{},"data":"#, serde_json::to_string(channel)?);
    let text = format!("{prefix}{data}}}");
    let mut template = Vec::new();
    frame::encode_server_frame(&mut template, frame::OPCODE_TEXT, text.as_bytes());
    let ts_at = template.len() - text.len() + prefix.len() + data_ts_at;
    let mut server = Server {
        poll,
        listener,
        conns: Vec::new(),
        free: Vec::new(),
        template,
        ts_at,
        batch: Vec::new(),
        buf: vec![0; limits::READ_BUFFER_BYTES],
        dropped: 0,
        conn_counter: 0,
    };
    answer(format!("listening {}", server.listener.local_addr()?));
    let mut events = Events::with_capacity(limits::EVENTS_PER_POLL);
    let mut publishing: Option<Publishing> = None;
    let deadline = Instant::now() + lifetime;
    while Instant::now() < deadline {
        let timeout = match &publishing {
            Some(p) => {
                let next = p.started + Duration::from_secs_f64((p.sent + 1) as f64 / p.rate);
                next.saturating_duration_since(Instant::now()).min(limits::IDLE_POLL)
            }
            None => limits::IDLE_POLL,
        };
        server.poll.poll(&mut events, Some(timeout)).or_else(|e| if e.kind() == std::io::ErrorKind::Interrupted { Ok(()) } else { Err(e) })?;
        for event in events.iter() {
            match event.token() {
                LISTENER => server.accept_all(),
                WAKER => {}
                Token(slot) => {
                    let mut ok = true;
                    if event.is_writable() {
                        ok = server.flush(slot);
                    }
                    if ok && (event.is_readable() || event.is_read_closed()) {
                        ok = server.on_readable(slot);
                    }
                    if !ok || event.is_error() {
                        server.drop_conn(slot);
                    }
                }
            }
        }
        if let Some(p) = publishing.as_mut() {
            server.publish_due(p);
            if Instant::now() >= p.until {
                answer(format!("published {} dropped {}", p.sent, server.dropped));
                publishing = None;
            }
        }
        while let Ok(line) = commands.try_recv() {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["publish", rate, ms] => {
                    let rate: f64 = rate.parse::<f64>().unwrap_or(1.0).max(0.001);
                    let ms: u64 = ms.parse().unwrap_or(1000);
                    let started_ns = crate::host::now_ns();
                    let started = Instant::now();
                    server.dropped = 0;
                    publishing = Some(Publishing { rate, started_ns, started, until: started + Duration::from_millis(ms), sent: 0 });
                }
                ["stop"] => return Ok(()),
                _ => eprintln!("limit server: unknown command {line:?}"),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! End to end over loopback: the ceiling server and the harness's own client loop.
    use crate::client::{self, Command, WorkerConfig, WorkerReport};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    const CONNS: usize = 300;

    /// Waits for a report satisfying `done`, bounded by `within`.
    fn wait_report(rx: &mpsc::Receiver<WorkerReport>, within: Duration, done: impl Fn(&WorkerReport) -> bool) -> WorkerReport {
        let deadline = Instant::now() + within;
        let mut last = WorkerReport::default();
        while Instant::now() < deadline {
            if let Ok(r) = rx.recv_timeout(Duration::from_millis(50)) {
                last = r;
                if done(&last) {
                    return last;
                }
            }
        }
        panic!("condition not met within {within:?}; last report: {last:?}");
    }

    /// A ceiling server on a thread, driven as the parent process drives it.
    struct TestServer {
        commands: mpsc::Sender<String>,
        waker: std::sync::Arc<mio::Waker>,
        out: mpsc::Receiver<String>,
        addr: std::net::SocketAddr,
        thread: std::thread::JoinHandle<anyhow::Result<()>>,
    }

    impl TestServer {
        fn start() -> TestServer {
            let (commands, commands_rx) = mpsc::channel::<String>();
            let (out_tx, out) = mpsc::channel::<String>();
            let (waker_tx, waker_rx) = mpsc::channel();
            let thread = std::thread::spawn(move || {
                super::serve(
                    "127.0.0.1:0".parse().unwrap(),
                    "bench",
                    200,
                    Duration::from_secs(60),
                    move |waker| {
                        waker_tx.send(waker).unwrap();
                        commands_rx
                    },
                    move |line| out_tx.send(line).unwrap(),
                )
            });
            let waker = waker_rx.recv_timeout(Duration::from_secs(5)).unwrap();
            let listening = out.recv_timeout(Duration::from_secs(5)).unwrap();
            let addr = listening.strip_prefix("listening ").unwrap().parse().unwrap();
            TestServer { commands, waker, out, addr, thread }
        }

        fn send(&self, line: &str) {
            self.commands.send(line.to_string()).unwrap();
            self.waker.wake().unwrap();
        }

        fn stop(self) {
            self.send("stop");
            self.thread.join().unwrap().unwrap();
        }
    }

    #[test]
    fn limit_server_fans_out_to_every_harness_client() {
        let server = TestServer::start();
        let addr = server.addr;
        let cfg = WorkerConfig {
            worker_index: 0,
            endpoints: vec![client::Endpoint { addr, host: "127.0.0.1".into(), path: "/ws".into() }],
            kind: crate::adapter::TargetKind::Ringcast,
            nats_prefix: None,
            conns: CONNS,
            first_conn_index: 0,
            source_ips: 2,
            connect_rate: 0.0,
            inflight_max: 128,
            classes: vec![client::SubClass { name: "subscribers".into(), conns: CONNS, channel: "bench".into(), channel_count: 1, track_order: false }],
            reconnect: None,
            users: None,
            presence: false,
            held_from: None,
            heartbeat_timeout_ms: 0,
            tracked_messages: 0,
            deflate: false,
            connect_timeout_ms: 10_000,
            lifetime_ms: 60_000,
        };
        let (cmd_tx, cmd_rx) = mpsc::channel::<Command>();
        let (waker_tx, waker_rx) = mpsc::channel();
        let (report_tx, report_rx) = mpsc::channel::<WorkerReport>();
        let worker = std::thread::spawn(move || {
            client::run_loop(
                cfg,
                move |waker| {
                    waker_tx.send(waker).unwrap();
                    cmd_rx
                },
                move |r| {
                    let _ = report_tx.send(r.clone());
                },
            )
        });
        let waker = waker_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        let to_worker = |cmd: Command| {
            cmd_tx.send(cmd).unwrap();
            waker.wake().unwrap();
        };

        let ready = wait_report(&report_rx, Duration::from_secs(20), |r| r.ready as usize == CONNS);
        assert!(ready.failures.is_empty(), "{:?}", ready.failures);

        server.send("publish 100 500");
        let answer = server.out.recv_timeout(Duration::from_secs(10)).unwrap();
        let mut words = answer.split_whitespace();
        assert_eq!(words.next(), Some("published"));
        let published: u64 = words.next().unwrap().parse().unwrap();
        assert!((40..=60).contains(&published), "100 msgs/s for 0.5 s published {published}");

        let expected = published * CONNS as u64;
        let got = wait_report(&report_rx, Duration::from_secs(10), |r| r.deliveries >= expected);
        assert_eq!(got.deliveries, expected, "every subscriber got every message exactly once");
        assert_eq!(got.dropped_after_ready, 0);

        to_worker(Command::Snap(7));
        let snap = wait_report(&report_rx, Duration::from_secs(5), |r| r.snap == 7);
        assert_eq!(snap.deliveries, expected, "no duplicates after the drain");

        to_worker(Command::Stop);
        let done = wait_report(&report_rx, Duration::from_secs(5), |r| r.done);
        assert_eq!(done.ready as usize, CONNS);
        worker.join().unwrap().unwrap();
        server.stop();
    }

    /// The ceiling stamps each message with the time it fell due, never with the time its
    /// pass got to it: stamps follow the schedule to the nanosecond (1 ms apart at 1,000
    /// msgs/s) however the passes fell, and none is in the future when it arrives.
    #[test]
    fn limit_server_stamps_each_message_with_its_due_time() {
        use std::io::{Read, Write};
        let server = TestServer::start();
        let addr = server.addr;
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        client.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        client.write_all(crate::frame::handshake_request("127.0.0.1", "/ws", "dGhlIHNhbXBsZSBub25jZQ==", None).as_bytes()).unwrap();
        let mut sub = Vec::new();
        crate::frame::encode_client_frame(&mut sub, crate::frame::OPCODE_TEXT, br#"{"op":"sub","ch":"bench","id":1}"#, [1, 2, 3, 4]);
        client.write_all(&sub).unwrap();

        // Read frames until the `ok`, then publish and collect every message's stamp.
        let mut buf = Vec::new();
        let mut chunk = [0u8; 65536];
        let mut stamps: Vec<u64> = Vec::new();
        let mut head_done = false;
        let mut subscribed = false;
        let (rate, ms) = (1000u64, 300u64);
        let mut published: Option<usize> = None;
        let deadline = Instant::now() + Duration::from_secs(20);
        while published.map_or(true, |p| stamps.len() < p) {
            assert!(Instant::now() < deadline, "not every message arrived: {} stamps, published {published:?}", stamps.len());
            if let Ok(line) = server.out.try_recv() {
                let count = line.strip_prefix("published ").and_then(|rest| rest.split_whitespace().next()).unwrap();
                published = Some(count.parse().unwrap());
            }
            let n = match client.read(&mut chunk) {
                Ok(n) => n,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
                Err(e) => panic!("reading from the ceiling server: {e}"),
            };
            assert!(n > 0, "server closed; stamps so far {}", stamps.len());
            buf.extend_from_slice(&chunk[..n]);
            let mut pos = 0;
            if !head_done {
                let Some(end) = crate::frame::http_head_end(&buf) else { continue };
                assert_eq!(crate::frame::http_status(&buf[..end]), Some(101));
                head_done = true;
                pos = end;
            }
            while let Some(h) = crate::frame::parse_header(&buf[pos..]) {
                if ((buf.len() - pos) as u64) < h.frame_len() {
                    break;
                }
                let payload = &buf[pos + h.header_len..pos + h.frame_len() as usize];
                if let Some(ts) = crate::frame::find_timestamp(payload) {
                    assert!(ts <= crate::host::now_ns(), "a stamp in the future");
                    stamps.push(ts);
                } else if !subscribed && crate::frame::contains(payload, br#""ok""#) {
                    subscribed = true;
                    server.send(&format!("publish {rate} {ms}"));
                }
                pos += h.frame_len() as usize;
            }
            buf.drain(..pos);
        }
        let published = published.unwrap();
        assert!(published >= 250, "1,000 msgs/s for 0.3 s published {published}");
        assert_eq!(stamps.len(), published);
        let step = 1_000_000_000 / rate;
        for (k, ts) in stamps.iter().enumerate() {
            assert_eq!(ts - stamps[0], k as u64 * step, "message {k} is stamped off its due time; stamps {:?}", &stamps[..stamps.len().min(k + 2)]);
        }
        server.stop();
    }
}
