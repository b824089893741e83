//! End-to-end in-process fan-out: a real gateway (one shard, embedded broker) on a
//! thread of this process, N WebSocket sinks on loopback, and a publisher that pipelines
//! a burst of `POST /api/publish` requests. One iteration is one burst: from the first
//! request written until every sink has read every message of it. Throughput is in
//! deliveries (messages × sinks). The sinks read on the bench thread, so the figure
//! includes the client's reads; compare the rows with each other (run coalescing on and
//! off, the same sinks), not with the load-test harness.
//!
//!   cargo bench --bench fanout_e2e

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};
use tungstenite::{Message, WebSocket};

const API_KEY: &str = "bench";
const BURST: usize = 32;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts a gateway on a thread of this process with `extra` flags; returns its port.
/// It runs until the bench process exits.
fn gateway(extra: &[&str]) -> u16 {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    // A burst is BURST pipelined requests: above the default bound on queued pipelined
    // requests (max_pipelined_requests 16), which answers 429 and closes.
    let pipelined = BURST.to_string();
    let mut args = vec!["ringcast", "gateway", "--listen", &listen, "--shards", "1", "--api-key", API_KEY, "--log", "error", "--max-pipelined-requests", &pipelined];
    args.extend_from_slice(extra);
    let command = ringcast::config::load_from(args).expect("bench gateway flags");
    let ringcast::config::Command::Gateway(config) = command else { panic!("not a gateway command") };
    std::thread::spawn(move || ringcast::cmd::gateway::run(config));
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the bench gateway did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    port
}

/// `sinks` WebSocket clients subscribed to `channel`.
fn sinks(port: u16, channel: &str, sinks: usize) -> Vec<WebSocket<TcpStream>> {
    (0..sinks)
        .map(|_| {
            let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
            stream.set_nodelay(true).unwrap();
            let (mut ws, _) = tungstenite::client(format!("ws://127.0.0.1:{port}/ws"), stream).unwrap();
            ws.send(Message::text(format!(r#"{{"op":"sub","ch":"{channel}","id":1}}"#))).unwrap();
            loop {
                if let Message::Text(text) = ws.read().unwrap() {
                    if text.contains(r#""op":"ok""#) {
                        break;
                    }
                }
            }
            ws
        })
        .collect()
}

/// One keep-alive publisher connection; `burst` writes `n` pipelined publishes and reads
/// their `202`s.
struct Publisher {
    stream: TcpStream,
    request: Vec<u8>,
    buf: Vec<u8>,
}

impl Publisher {
    fn new(port: u16, channel: &str) -> Publisher {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_nodelay(true).unwrap();
        let body = format!(r#"{{"ch":"{channel}","data":{{"pad":"{}"}}}}"#, "x".repeat(180));
        let request = format!(
            "POST /api/publish HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        Publisher { stream, request: request.into_bytes(), buf: vec![0; 64 * 1024] }
    }

    fn burst(&mut self, n: usize) {
        let all: Vec<u8> = self.request.repeat(n);
        self.stream.write_all(&all).unwrap();
        let mut answered = 0;
        let mut text = Vec::new();
        while answered < n {
            let read = self.stream.read(&mut self.buf).unwrap();
            assert!(read > 0, "the gateway closed the publisher");
            text.extend_from_slice(&self.buf[..read]);
            answered = text.windows(12).filter(|w| w == b"HTTP/1.1 202").count();
        }
        assert_eq!(text.windows(9).filter(|w| w == b"HTTP/1.1 ").count(), n, "every publish answered 202");
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout_e2e");
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(5));
    for n in [100usize, 1000] {
        for (label, flags) in [("runs", &[][..]), ("one_entry_per_message", &["--coalesce-bytes", "0"][..])] {
            let port = gateway(flags);
            let mut sinks = sinks(port, "bench.room", n);
            let mut publisher = Publisher::new(port, "bench.room");
            group.throughput(Throughput::Elements((n * BURST) as u64));
            group.bench_function(format!("{n}_sinks_burst{BURST}/{label}"), |b| {
                b.iter_custom(|iterations| {
                    let started = Instant::now();
                    for _ in 0..iterations {
                        publisher.burst(BURST);
                        for sink in sinks.iter_mut() {
                            let mut got = 0;
                            while got < BURST {
                                if let Message::Text(_) = sink.read().unwrap() {
                                    got += 1;
                                }
                            }
                        }
                    }
                    started.elapsed()
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
