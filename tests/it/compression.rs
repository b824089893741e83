//! permessage-deflate (RFC 7692) against a real gateway over real sockets: negotiation,
//! published messages compressed once per shard and shared by every compressing
//! subscriber (RSV1 frames that inflate to exactly the plain frame), the size threshold,
//! compressed client frames, and a zip bomb closed with 1009. The client side is a raw
//! socket with flate2 inflating and deflating, as a browser's permessage-deflate does.

use crate::common::*;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;

/// A raw WebSocket client that offered permessage-deflate.
struct Deflating {
    stream: TcpStream,
    pending: Vec<u8>,
    /// The server's 101 head.
    head: String,
}

/// One server frame: its first byte (FIN, RSV1, opcode) and payload.
struct Frame {
    first: u8,
    payload: Vec<u8>,
}

impl Frame {
    fn rsv1(&self) -> bool {
        self.first & 0x40 != 0
    }
    fn opcode(&self) -> u8 {
        self.first & 0x0f
    }
    /// The message text, inflated when RSV1 says it is compressed.
    fn text(&self) -> String {
        let bytes = if self.rsv1() { inflate(&self.payload) } else { self.payload.clone() };
        String::from_utf8(bytes).unwrap()
    }
}

fn inflate(body: &[u8]) -> Vec<u8> {
    let mut input = body.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut d = Decompress::new(false);
    let mut out = Vec::with_capacity(body.len() * 20 + 1024);
    loop {
        let before = d.total_in();
        d.decompress_vec(&input[d.total_in() as usize..], &mut out, FlushDecompress::Sync).expect("valid deflate from the server");
        if d.total_in() as usize == input.len() && out.len() < out.capacity() {
            return out;
        }
        assert!(d.total_in() > before || out.len() == out.capacity(), "inflate made no progress");
        out.reserve(out.capacity());
    }
}

fn deflate(data: &[u8]) -> Vec<u8> {
    let mut c = Compress::new(Compression::new(6), false);
    let mut out = Vec::with_capacity(data.len() + 1024);
    c.compress_vec(data, &mut out, FlushCompress::Sync).unwrap();
    assert_eq!(c.total_in() as usize, data.len());
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

impl Deflating {
    fn connect(port: u16, extensions: &str) -> Deflating {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: {extensions}\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).unwrap();
        let mut client = Deflating { stream, pending: Vec::new(), head: String::new() };
        while !client.pending.windows(4).any(|w| w == b"\r\n\r\n") {
            assert!(client.fill_more(), "no upgrade response");
        }
        let end = client.pending.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        client.head = String::from_utf8(client.pending.drain(..end).collect()).unwrap();
        assert!(client.head.starts_with("HTTP/1.1 101"), "upgrade refused: {}", client.head);
        let welcome = client.read_frame().expect("welcome");
        assert!(!welcome.rsv1(), "small frames stay plain");
        assert!(welcome.text().contains("welcome"));
        client
    }

    fn negotiated(&self) -> bool {
        self.head.to_ascii_lowercase().contains("\r\nsec-websocket-extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n")
    }

    fn fill_more(&mut self) -> bool {
        let mut chunk = [0u8; 65536];
        match self.stream.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.pending.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    fn read_frame(&mut self) -> Option<Frame> {
        loop {
            if self.pending.len() >= 2 {
                let (len, header) = match self.pending[1] & 0x7f {
                    126 if self.pending.len() >= 4 => (u16::from_be_bytes([self.pending[2], self.pending[3]]) as usize, 4),
                    127 if self.pending.len() >= 10 => (u64::from_be_bytes(self.pending[2..10].try_into().unwrap()) as usize, 10),
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && self.pending.len() >= header + len {
                    let first = self.pending[0];
                    let payload = self.pending[header..header + len].to_vec();
                    self.pending.drain(..header + len);
                    return Some(Frame { first, payload });
                }
            }
            if !self.fill_more() {
                return None;
            }
        }
    }

    /// The next text message (pings skipped).
    fn next_text(&mut self) -> (bool, serde_json::Value) {
        loop {
            let frame = self.read_frame().expect("a frame");
            if frame.opcode() == 1 {
                return (frame.rsv1(), serde_json::from_str(&frame.text()).unwrap());
            }
            assert_ne!(frame.opcode(), 8, "closed: {:?}", frame.payload);
        }
    }

    /// Sends a masked text frame, compressed (RSV1) when `compressed`.
    fn send_text(&mut self, text: &[u8], compressed: bool) {
        let payload = if compressed { deflate(text) } else { text.to_vec() };
        let mut frame = ringcast::protocol::ws::encode_client_frame(1, true, &payload, [0x11, 0x22, 0x33, 0x44]);
        if compressed {
            frame[0] |= 0x40;
        }
        self.stream.write_all(&frame).unwrap();
    }

    fn expect_close(&mut self) -> u16 {
        while let Some(frame) = self.read_frame() {
            if frame.opcode() == 8 {
                return u16::from_be_bytes([frame.payload[0], frame.payload[1]]);
            }
        }
        panic!("socket closed without a close frame");
    }
}

/// Telemetry JSON as devices send it: ~1.5 KB of readings.
fn telemetry(seq: u64) -> serde_json::Value {
    let readings: Vec<serde_json::Value> = (0..12)
        .map(|i| json!({"sensor": format!("temperature-{i}"), "value": 20.0 + (seq + i) as f64 / 10.0, "unit": "celsius", "status": "ok", "battery": 87 - i}))
        .collect();
    json!({"device": "dev-0042", "site": "plant-north", "seq": seq, "readings": readings})
}

fn metric(port: u16, name: &str) -> f64 {
    let (_, _, body) = http(port, "GET", "/metrics", &[], b"");
    body.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

#[test]
fn published_messages_are_compressed_once_and_shared_by_compressing_subscribers() {
    let gateway = Gateway::start(&["--shards", "1"]);
    let channel = format!("t{}.tele", unique());
    let mut compressing: Vec<Deflating> = (0..3).map(|_| Deflating::connect(gateway.port, "permessage-deflate; client_max_window_bits")).collect();
    let (mut plain, _) = connect(&gateway.url(""));
    for (i, client) in compressing.iter_mut().enumerate() {
        assert!(client.negotiated(), "{}", client.head);
        client.send_text(json!({"op": "sub", "ch": channel, "id": i}).to_string().as_bytes(), false);
        assert_eq!(client.next_text().1["op"], "ok");
    }
    assert_eq!(request(&mut plain, json!({"op": "sub", "ch": channel}), 1)["op"], "ok");
    let compressed_before = metric(gateway.port, "ringcast_compressed_messages_total");

    for seq in 0..5 {
        publish(gateway.port, &channel, telemetry(seq));
        let expected = recv_json(&mut plain);
        assert_eq!(expected["data"]["seq"], seq);
        for client in compressing.iter_mut() {
            let (rsv1, message) = client.next_text();
            assert!(rsv1, "a 1.5 KB message goes out compressed");
            assert_eq!(message, expected, "inflates to exactly what a plain client gets");
        }
    }
    // Below the threshold (256 B by default): plain frames, RSV1 clear.
    publish(gateway.port, &channel, json!({"t": 21.5}));
    let expected = recv_json(&mut plain);
    for client in compressing.iter_mut() {
        assert_eq!(client.next_text(), (false, expected.clone()));
    }
    // Once per message per shard: 5 messages compressed for 3 subscribers (15 copies).
    assert_eq!(metric(gateway.port, "ringcast_compressed_messages_total") - compressed_before, 5.0);
    assert!(metric(gateway.port, "ringcast_compressed_deliveries_total") >= 15.0);
    let (before, after) = (metric(gateway.port, "ringcast_compress_bytes_in_total"), metric(gateway.port, "ringcast_compress_bytes_out_total"));
    assert!(before >= 3.0 * after, "telemetry JSON shrinks at least 3x: {before} -> {after} bytes");
    assert!(metric(gateway.port, "ringcast_deflate_connections_total") >= 3.0);
}

#[test]
fn compressed_client_frames_are_inflated_and_a_zip_bomb_closes_with_1009() {
    let gateway = Gateway::start(&["--shards", "1"]);
    let channel = format!("t{}.in", unique());
    let mut client = Deflating::connect(gateway.port, "permessage-deflate");
    assert!(client.negotiated());
    // A compressed `sub` is understood like a plain one.
    client.send_text(json!({"op": "sub", "ch": channel, "id": 7}).to_string().as_bytes(), true);
    let (_, ok) = client.next_text();
    assert_eq!((ok["op"].as_str(), ok["id"].as_u64()), (Some("ok"), Some(7)));
    assert!(metric(gateway.port, "ringcast_inflated_messages_total") >= 1.0);
    // 8 MiB of spaces inside a JSON string deflates to ~8 KB, well under max_frame (64
    // KiB), and inflates far past max_message (128 KiB): closed with 1009, never allocated.
    let mut bomb = b"{\"op\":\"ping\",\"pad\":\"".to_vec();
    bomb.extend_from_slice(&vec![b' '; 8 << 20]);
    bomb.extend_from_slice(b"\"}");
    let compressed = deflate(&bomb);
    assert!(compressed.len() < 64 * 1024, "{} bytes", compressed.len());
    client.send_text(&bomb, true);
    assert_eq!(client.expect_close(), 1009);
}

#[test]
fn compression_off_or_not_offered_means_plain_frames_and_rsv1_is_a_protocol_error() {
    let gateway = Gateway::start(&["--compression", "off"]);
    let mut client = Deflating::connect(gateway.port, "permessage-deflate");
    assert!(!client.negotiated(), "--compression off: {}", client.head);
    assert!(!client.head.to_ascii_lowercase().contains("sec-websocket-extensions"));
    client.send_text(b"{\"op\":\"ping\"}", true);
    assert_eq!(client.expect_close(), 1002, "RSV1 without the extension");

    // On (the default) but an offer the server cannot take (a 9-bit server window).
    let gateway = Gateway::start(&[]);
    let client = Deflating::connect(gateway.port, "permessage-deflate; server_max_window_bits=9");
    assert!(!client.negotiated());
}

#[test]
fn the_sys_metrics_snapshot_carries_the_compression_bytes_for_the_dashboard_tile() {
    let gateway = Gateway::start(&["--shards", "1", "--sys-subscribe"]);
    let channel = format!("t{}.tele", unique());
    let mut subscriber = Deflating::connect(gateway.port, "permessage-deflate");
    assert!(subscriber.negotiated(), "{}", subscriber.head);
    subscriber.send_text(json!({"op": "sub", "ch": channel, "id": 1}).to_string().as_bytes(), false);
    assert_eq!(subscriber.next_text().1["op"], "ok");
    let (mut dashboard, _) = connect(&gateway.url(""));
    assert_eq!(request(&mut dashboard, json!({"op": "sub", "ch": "$sys.metrics"}), 1)["op"], "ok");
    for seq in 0..5 {
        publish(gateway.port, &channel, telemetry(seq));
        assert!(subscriber.next_text().0, "compressed");
    }
    let (scraped_in, scraped_out) = (metric(gateway.port, "ringcast_compress_bytes_in_total"), metric(gateway.port, "ringcast_compress_bytes_out_total"));
    assert!(scraped_out > 0.0);
    // Snapshots come once a second; one taken after the publishes has the same totals as
    // /metrics (earlier ones may have part of them).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let snapshot = loop {
        assert!(std::time::Instant::now() < deadline, "no snapshot with the scraped totals {scraped_in} / {scraped_out}");
        let frame = recv_json(&mut dashboard);
        if frame["op"] == "msg" && frame["ch"] == "$sys.metrics" && frame["data"]["compress_bytes_out_total"].as_f64() == Some(scraped_out) {
            break frame["data"].clone();
        }
    };
    let (bytes_in, bytes_out) = (snapshot["compress_bytes_in_total"].as_f64().unwrap(), snapshot["compress_bytes_out_total"].as_f64().unwrap());
    assert_eq!(bytes_in, scraped_in, "the same counters as /metrics: {snapshot}");
    assert!(bytes_in >= 3.0 * bytes_out, "the tile's ratio, {bytes_in} / {bytes_out}, is the telemetry's");
    assert!(snapshot["compress_bytes_in_per_s"].is_number() && snapshot["compress_bytes_out_per_s"].is_number(), "{snapshot}");
}
