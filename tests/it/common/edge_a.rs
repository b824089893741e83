//! Helpers for the admission, drain and metrics tests (edge-a): raw upgrades that may be
//! refused, metric lookups, a gateway on a given port.

use super::{http, Gateway, READ_TIMEOUT};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

/// Sends a WebSocket upgrade and returns (status, response head). The socket is returned
/// too, so an accepted upgrade stays open as long as the caller keeps it.
pub fn try_upgrade(port: u16) -> (u16, String, TcpStream) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    let request = "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    stream.write_all(request.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head, stream)
}

/// The value of header `name` in a response head (case-insensitive name).
pub fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim().to_string())
    })
}

/// GET /metrics.
pub fn scrape(port: u16) -> String {
    let (status, _, body) = http(port, "GET", "/metrics", &[], b"");
    assert_eq!(status, 200, "{body}");
    body
}

/// Sum of every sample of `name` whose labels contain all of `labels` (`k="v"` pairs).
pub fn metric(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b' ') | Some(b'{')))
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// Starts a gateway on a fixed `listen` address with exactly `extra` flags besides it
/// (`Gateway::start` picks a free port and sets `--log warn`); stdout and stderr piped.
pub fn spawn_on(listen: &str, extra: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["gateway", "--listen", listen])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ringcast")
}

/// Waits until `gateway` has exited; panics after `seconds`.
pub fn exit_code(gateway: &mut Gateway, seconds: u64) -> Option<i32> {
    gateway.wait_exit(std::time::Duration::from_secs(seconds))
}
