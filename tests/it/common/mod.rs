//! Shared test plumbing: start a real gateway process on an ephemeral port, talk to it
//! with a real WebSocket client (tungstenite), raw sockets, or plain HTTP.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tungstenite::protocol::WebSocket;

pub mod edge_b;
pub mod edge_a;
pub mod lane;
pub mod nats;
pub mod presence;
pub mod rabbit;

pub const API_KEY: &str = "test-api-key";
pub const SECRET: &str = "test-jwt-secret";
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Gateway {
    pub child: Child,
    pub port: u16,
    pub stderr_log: std::path::PathBuf,
}

impl Gateway {
    /// Starts `ringcast gateway --listen 127.0.0.1:0 --api-key ..` plus `extra` flags.
    pub fn start(extra: &[&str]) -> Gateway {
        let mut args = vec!["--api-key", API_KEY];
        args.extend_from_slice(extra);
        Gateway::spawn(&args)
    }

    pub fn start_without_api_key() -> Gateway {
        Gateway::spawn(&[])
    }

    fn spawn(extra: &[&str]) -> Gateway {
        let log = std::env::temp_dir().join(format!("ringcast-test-{}-{}.log", std::process::id(), unique()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringcast"))
            .args(["gateway", "--listen", "127.0.0.1:0", "--log", "warn"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start ringcast");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let port = line
            .split("://127.0.0.1:")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no listening line from the gateway: {line:?}; log: {}", std::fs::read_to_string(&log).unwrap_or_default()));
        Gateway { child, port, stderr_log: log }
    }

    pub fn url(&self, query: &str) -> String {
        format!("ws://127.0.0.1:{}/ws{}", self.port, query)
    }

    pub fn signal(&self, signal: i32) {
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.stderr_log);
    }
}

pub fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as u64;
    (nanos << 16) ^ NEXT.fetch_add(1, Ordering::Relaxed)
}

pub type Client = WebSocket<TcpStream>;

/// Connects with tungstenite and returns the client and its welcome frame.
pub fn connect(url: &str) -> (Client, serde_json::Value) {
    try_connect(url).unwrap_or_else(|e| panic!("connect {url}: {e}"))
}

pub fn try_connect(url: &str) -> Result<(Client, serde_json::Value), tungstenite::Error> {
    let port: u16 = url.split(':').nth(2).unwrap().split('/').next().unwrap().parse().unwrap();
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    let (mut client, _response) = tungstenite::client(url, stream).map_err(|e| match e {
        tungstenite::HandshakeError::Failure(e) => e,
        tungstenite::HandshakeError::Interrupted(_) => panic!("blocking handshake interrupted"),
    })?;
    let welcome = recv_json(&mut client);
    assert_eq!(welcome["op"], "welcome", "first frame must be welcome: {welcome}");
    Ok((client, welcome))
}

pub fn send_json(client: &mut Client, value: serde_json::Value) {
    client.send(tungstenite::Message::text(value.to_string())).unwrap();
}

/// Next text frame as JSON (control frames are answered by tungstenite itself).
pub fn recv_json(client: &mut Client) -> serde_json::Value {
    loop {
        match client.read().expect("read frame") {
            tungstenite::Message::Text(text) => return serde_json::from_str(&text).unwrap(),
            tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Sends an op with an id and returns the answer with that id (skipping msg frames).
pub fn request(client: &mut Client, mut op: serde_json::Value, id: u32) -> serde_json::Value {
    op["id"] = id.into();
    send_json(client, op);
    loop {
        let frame = recv_json(client);
        if frame["id"] == id {
            return frame;
        }
    }
}

/// The shard that owns a connection: the top 16 bits of its id.
pub fn shard_of(welcome: &serde_json::Value) -> u64 {
    welcome["conn"].as_u64().unwrap() >> 48
}

pub fn jwt(claims: serde_json::Value) -> String {
    ringcast::auth::sign_hs256_for_tests(SECRET.as_bytes(), &claims)
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// A plain HTTP/1.1 request; returns (status, head, body).
pub fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    http_over(&mut stream, method, path, headers, body)
}

/// One HTTP/1.1 request over any stream (plain or TLS; `Connection: close`); returns
/// (status, head, body).
pub fn http_over<S: Read + Write>(stream: &mut S, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String, String) {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    stream.flush().unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

pub fn publish(port: u16, channel: &str, data: serde_json::Value) {
    let body = serde_json::json!({ "ch": channel, "data": data }).to_string();
    let auth = format!("Bearer {API_KEY}");
    let (status, _, body) = http(port, "POST", "/api/publish", &[("Authorization", &auth)], body.as_bytes());
    assert_eq!(status, 202, "publish failed: {body}");
}

/// A raw socket after a hand-made upgrade, for frames a compliant client never sends.
pub struct Raw {
    pub stream: TcpStream,
    pending: Vec<u8>,
}

impl Raw {
    pub fn connect(port: u16, query: &str) -> Raw {
        Raw::upgrade(TcpStream::connect(("127.0.0.1", port)).unwrap(), query)
    }

    /// A client with a 4 KiB receive buffer, so the kernel cannot absorb a backlog.
    pub fn connect_small_buffer(port: u16, query: &str) -> Raw {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let address: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        socket.connect(&address.into()).unwrap();
        Raw::upgrade(socket.into(), query)
    }

    fn upgrade(mut stream: TcpStream, query: &str) -> Raw {
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        let request = format!(
            "GET /ws{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).unwrap();
        let mut raw = Raw { stream, pending: Vec::new() };
        let head = raw.read_until(b"\r\n\r\n");
        let head = String::from_utf8_lossy(&head).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
        let (opcode, payload) = raw.read_frame().expect("welcome frame");
        assert_eq!(opcode, 1);
        assert!(String::from_utf8_lossy(&payload).contains("welcome"));
        raw
    }

    fn read_until(&mut self, delimiter: &[u8]) -> Vec<u8> {
        loop {
            if let Some(i) = self.pending.windows(delimiter.len()).position(|w| w == delimiter) {
                let rest = self.pending.split_off(i + delimiter.len());
                return std::mem::replace(&mut self.pending, rest);
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).expect("read");
            assert!(n > 0, "connection closed while reading the head");
            self.pending.extend_from_slice(&chunk[..n]);
        }
    }

    fn fill(&mut self, want: usize) -> bool {
        while self.pending.len() < want {
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return false,
                Ok(n) => self.pending.extend_from_slice(&chunk[..n]),
            }
        }
        true
    }

    /// Next server frame (opcode, payload); None once the socket is closed.
    pub fn read_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        if !self.fill(2) {
            return None;
        }
        let opcode = self.pending[0] & 0x0f;
        assert_eq!(self.pending[1] & 0x80, 0, "server frames must not be masked");
        let (len, header) = match self.pending[1] & 0x7f {
            126 => {
                self.fill(4);
                (u16::from_be_bytes([self.pending[2], self.pending[3]]) as usize, 4)
            }
            127 => {
                self.fill(10);
                (u64::from_be_bytes(self.pending[2..10].try_into().unwrap()) as usize, 10)
            }
            n => (n as usize, 2),
        };
        if !self.fill(header + len) {
            return None;
        }
        let payload = self.pending[header..header + len].to_vec();
        self.pending.drain(..header + len);
        Some((opcode, payload))
    }

    /// Reads frames until a close frame; returns its code.
    pub fn expect_close(&mut self) -> u16 {
        while let Some((opcode, payload)) = self.read_frame() {
            if opcode == 8 {
                assert!(payload.len() >= 2, "close frame without a code");
                return u16::from_be_bytes([payload[0], payload[1]]);
            }
        }
        panic!("socket closed without a close frame");
    }

    pub fn send_frame(&mut self, opcode: u8, fin: bool, payload: &[u8]) {
        let frame = ringcast::protocol::ws::encode_client_frame(opcode, fin, payload, [0x11, 0x22, 0x33, 0x44]);
        self.stream.write_all(&frame).unwrap();
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }
}

/// A gateway with a 128 KiB outbound bound (64 KiB messages), and a subscriber to a fresh
/// channel on a socket with a tiny receive window that has read its `ok`: the slow
/// consumer of the slow-consumer tests.
pub fn slow_consumer_setup() -> (Gateway, String, Raw) {
    let gateway = Gateway::start(&["--outbound-limit", "128KiB", "--max-frame", "64KiB", "--max-message", "64KiB"]);
    let channel = format!("t{}.firehose", unique());
    let mut slow = Raw::connect_small_buffer(gateway.port, "");
    slow.send_frame(1, true, serde_json::json!({"op": "sub", "ch": channel, "id": 1}).to_string().as_bytes());
    let (opcode, _) = slow.read_frame().unwrap();
    assert_eq!(opcode, 1);
    (gateway, channel, slow)
}
