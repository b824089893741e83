//! Conflation (`--conflate PATTERN`): a subscriber on a slow link stays connected and ends
//! on the latest reading of each conflated channel; a subscriber that keeps up gets every
//! message; a slow subscriber of a channel that is not conflated is still closed with 4008.

use crate::common::edge_a::{metric, scrape};
use crate::common::{connect, publish, recv_json, request, unique, Client, Gateway};
use serde_json::json;
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A WebSocket client whose socket takes little from the network before its reader
/// drains it (4 KiB receive buffer), so the gateway's backlog for it grows as soon as it
/// stops reading: a dashboard on a slow link.
fn slow_client(gateway: &Gateway) -> Client {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let address: std::net::SocketAddr = ([127, 0, 0, 1], gateway.port).into();
    socket.connect(&address.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (mut client, _) = tungstenite::client(gateway.url(""), stream).expect("upgrade");
    assert_eq!(recv_json(&mut client)["op"], "welcome");
    client
}

/// Reads `msg` frames until `last` arrives; returns the `n` of each. Panics on a close.
fn read_until(client: &mut Client, last: u64) -> Vec<u64> {
    read_until_counting(client, last, &AtomicU64::new(0))
}

/// As [`read_until`], storing how many messages have arrived in `arrived` as it goes.
fn read_until_counting(client: &mut Client, last: u64, arrived: &AtomicU64) -> Vec<u64> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        match client.read().expect("connection open") {
            tungstenite::Message::Text(text) => {
                let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
                if frame["op"] == "msg" {
                    let n = frame["data"]["n"].as_u64().unwrap();
                    seen.push(n);
                    arrived.store(seen.len() as u64, Ordering::Release);
                    if n == last {
                        return seen;
                    }
                }
            }
            tungstenite::Message::Close(close) => panic!("closed: {close:?} after {} messages", seen.len()),
            _ => {}
        }
    }
    panic!("message {last} did not arrive; saw {} messages, last {:?}", seen.len(), seen.last());
}

#[test]
fn a_slow_dashboard_gets_the_latest_values_and_stays_connected() {
    let gateway = Gateway::start(&["--shards", "1", "--conflate", "tele.>", "--conflate-threshold", "128KiB", "--outbound-limit", "256KiB"]);
    let u = unique();
    let (tele, raw) = (format!("tele.{u}.dev1"), format!("raw.{u}.dev1"));
    let mut slow_tele = slow_client(&gateway);
    let mut slow_raw = slow_client(&gateway);
    assert_eq!(request(&mut slow_tele, json!({"op": "sub", "ch": tele}), 1)["op"], "ok");
    assert_eq!(request(&mut slow_raw, json!({"op": "sub", "ch": raw}), 1)["op"], "ok");
    // A subscriber that keeps up, reading on its own thread.
    let (mut fast, _) = connect(&gateway.url(""));
    assert_eq!(request(&mut fast, json!({"op": "sub", "ch": tele}), 1)["op"], "ok");
    let total: u64 = 400;
    let arrived = Arc::new(AtomicU64::new(0));
    let fast_arrived = arrived.clone();
    let fast_reader = std::thread::spawn(move || read_until_counting(&mut fast, total - 1, &fast_arrived));

    // 400 readings of ~8 KB on each channel (3.2 MB each): far past what the slow
    // clients' sockets take and past the 256 KiB bound. The fast subscriber is never more
    // than 8 readings (64 KB, under the 128 KiB threshold) behind: "keeps up" must hold
    // on a loaded test host too.
    let pad = "x".repeat(8_000);
    for n in 0..total {
        let deadline = Instant::now() + Duration::from_secs(10);
        while n >= arrived.load(Ordering::Acquire) + 8 {
            assert!(Instant::now() < deadline, "the fast subscriber stopped reading at {}", arrived.load(Ordering::Acquire));
            std::thread::sleep(Duration::from_millis(1));
        }
        publish(gateway.port, &tele, json!({"n": n, "pad": pad}));
        publish(gateway.port, &raw, json!({"n": n, "pad": pad}));
    }

    // The fast subscriber got every message, in order.
    let every = fast_reader.join().unwrap();
    assert_eq!(every, (0..total).collect::<Vec<_>>());
    // The slow one on the conflated channel is still connected and ends on the latest
    // reading, having skipped the ones replaced while it was behind.
    let conflated = read_until(&mut slow_tele, total - 1);
    assert!(conflated.windows(2).all(|w| w[0] < w[1]), "in order: {conflated:?}");
    assert!(conflated.len() < total as usize, "some readings were replaced: got {}", conflated.len());
    // The slow one on a channel that is not conflated was closed with 4008, as before.
    let close = loop {
        match slow_raw.read() {
            Ok(tungstenite::Message::Close(close)) => break close,
            Ok(_) => continue,
            Err(e) => panic!("expected a 4008 close frame, got {e}"),
        }
    };
    assert_eq!(close.map(|c| u16::from(c.code)), Some(4008));
    // The close is counted once its handshake ends (the client's answer, sent by the read).
    let _ = slow_raw.flush();
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let metrics = scrape(gateway.port);
        if metric(&metrics, "ringcast_slow_consumer_closes_total", &[]) >= 1.0 || Instant::now() > deadline {
            break metrics;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let replaced = metric(&metrics, "ringcast_conflated_total", &[]);
    eprintln!("conflate: {} of {total} readings reached the slow dashboard, {replaced} replaced", conflated.len());
    assert!(replaced >= (total as usize - conflated.len()) as f64, "{replaced} replaced; {} of {total} arrived", conflated.len());
    assert_eq!(metric(&metrics, "ringcast_slow_consumer_closes_total", &[]), 1.0, "only the subscriber of the channel that is not conflated");
}

#[test]
fn conflation_settings_are_checked_at_start() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["gateway", "--listen", "127.0.0.1:0", "--conflate", "tele.>", "--conflate-threshold", "1MiB"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("conflate_threshold") && text.contains("outbound_limit"), "{text}");
}

#[test]
fn a_channel_past_conflate_channels_is_queued_whole_and_counted() {
    // conflate_channels = 2: a slow dashboard of three conflated channels can conflate two;
    // the third's messages are queued as usual and ringcast_conflate_channels_full_total counts them.
    let gateway = Gateway::start(&["--shards", "1", "--conflate", "tele.>", "--conflate-threshold", "64KiB", "--outbound-limit", "4MiB", "--conflate-channels", "2"]);
    let u = unique();
    let (a, b, c) = (format!("tele.{u}.a"), format!("tele.{u}.b"), format!("tele.{u}.c"));
    let mut slow = slow_client(&gateway);
    assert_eq!(request(&mut slow, json!({"op": "sub", "ch": format!("tele.{u}.*")}), 1)["op"], "ok");
    let pad = "x".repeat(8_000);
    // Channel a until its backlog passes the threshold (a message of it gets conflated):
    // the kernel's socket buffers fill first, so the count is found, not assumed.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut sent = 0u64;
    while metric(&scrape(gateway.port), "ringcast_conflated_total", &[]) == 0.0 {
        assert!(sent < 2_000 && Instant::now() < deadline, "channel a never conflated after {sent} messages");
        for _ in 0..20 {
            publish(gateway.port, &a, json!({"n": sent, "pad": pad}));
            sent += 1;
        }
    }
    assert_eq!(metric(&scrape(gateway.port), "ringcast_conflate_channels_full_total", &[]), 0.0, "a alone fits the bound");
    // b takes the second place; c finds none.
    publish(gateway.port, &b, json!({"n": 0, "pad": pad}));
    for n in 0..3 {
        publish(gateway.port, &c, json!({"n": n, "pad": pad}));
        // Apart, so the shard never takes two of them in one turn: consecutive messages of
        // one channel that arrive together form a run, which a conflated channel sends as
        // its newest message (counted in ringcast_conflated_total, not here).
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let full = loop {
        let full = metric(&scrape(gateway.port), "ringcast_conflate_channels_full_total", &[]);
        if full >= 3.0 || Instant::now() > deadline {
            break full;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(full, 3.0, "each of c's three messages was queued whole");
    // Nothing was closed: c's whole messages stay under the byte bound, and the dashboard
    // still reads through to the end (c's last message).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last_c = None;
    while last_c != Some(2) {
        assert!(Instant::now() < deadline, "c's last message did not arrive");
        match slow.read().expect("connection open") {
            tungstenite::Message::Text(text) => {
                let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
                if frame["op"] == "msg" && frame["ch"] == c.as_str() {
                    last_c = frame["data"]["n"].as_u64();
                }
            }
            tungstenite::Message::Close(close) => panic!("closed: {close:?}"),
            _ => {}
        }
    }
    assert_eq!(metric(&scrape(gateway.port), "ringcast_slow_consumer_closes_total", &[]), 0.0);
}
