//! Fan-out across shards, private channels, slow consumers and ten thousand
//! connections, against a real gateway process over real sockets.


use crate::common::*;
use serde_json::json;
use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Every `msg` before the one whose data has `"sentinel": true`. Publishes through one
/// node reach each subscriber in publish order, so a sentinel published last proves
/// nothing else is still on its way.
fn messages_before_sentinel(client: &mut Client) -> Vec<serde_json::Value> {
    let mut messages = Vec::new();
    loop {
        let frame = recv_json(client);
        if frame["data"]["sentinel"] == true {
            return messages;
        }
        messages.push(frame);
    }
}

/// Opens connections until both shards hold at least `per_shard` of them.
fn clients_on_both_shards(gateway: &Gateway, per_shard: usize) -> Vec<(Client, u64)> {
    let mut clients = Vec::new();
    let mut counts = [0usize; 2];
    while counts.iter().any(|c| *c < per_shard) {
        assert!(clients.len() < 200, "SO_REUSEPORT never spread connections over both shards: {counts:?}");
        let (client, welcome) = connect(&gateway.url(""));
        let shard = shard_of(&welcome);
        counts[shard as usize] += 1;
        clients.push((client, shard));
    }
    clients
}

#[test]
fn wildcards_fan_out_across_shards_exactly_once() {
    let gateway = Gateway::start(&["--shards", "2"]);
    let prefix = format!("t{}", unique());
    let mut clients = clients_on_both_shards(&gateway, 3);
    let patterns = [format!("{prefix}.room.a"), format!("{prefix}.room.*"), format!("{prefix}.>")];
    for (i, (client, _)) in clients.iter_mut().enumerate() {
        // Every client subscribes twice with overlapping patterns: delivery stays single.
        for (j, pattern) in [&patterns[i % 3], &patterns[(i + 1) % 3]].into_iter().enumerate() {
            assert_eq!(request(client, json!({"op": "sub", "ch": pattern}), j as u32)["op"], "ok");
        }
    }
    publish(gateway.port, &format!("{prefix}.room.a"), json!({"seq": 1}));
    publish(gateway.port, &format!("{prefix}.other.x"), json!({"seq": 2}));
    publish(gateway.port, &format!("{prefix}.room.a"), json!({"sentinel": true}));
    for (i, (client, shard)) in clients.iter_mut().enumerate() {
        let seqs: Vec<u64> = messages_before_sentinel(client).iter().map(|m| m["data"]["seq"].as_u64().unwrap()).collect();
        // Patterns i%3 and (i+1)%3: only holders of `{prefix}.>` see `other.x`.
        let has_full_wildcard = i % 3 == 2 || (i + 1) % 3 == 2;
        let expected = if has_full_wildcard { vec![1, 2] } else { vec![1] };
        assert_eq!(seqs, expected, "client {i} on shard {shard}");
    }
    // Exactly-once and in order: a numbered burst, then a sentinel.
    for n in 0..20 {
        publish(gateway.port, &format!("{prefix}.room.a"), json!({"seq": n}));
    }
    publish(gateway.port, &format!("{prefix}.room.a"), json!({"sentinel": true}));
    for (client, _) in clients.iter_mut() {
        let seqs: Vec<u64> = messages_before_sentinel(client).iter().map(|m| m["data"]["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (0..20).collect::<Vec<_>>(), "in order, no duplicates");
    }
}

#[test]
fn private_channels_reach_only_their_owner() {
    let gateway = Gateway::start(&["--shards", "2", "--jwt-secret", SECRET, "--allow-anonymous"]);
    let exp = now_unix() + 600;
    let alice = jwt(json!({"sub": "alice", "exp": exp, "pub": ["chat.>", "user.bob"]}));
    let bob = jwt(json!({"sub": "bob", "exp": exp}));
    let (mut alice_ws, _) = connect(&gateway.url(&format!("?token={alice}")));
    let (mut bob_ws, _) = connect(&gateway.url(&format!("?token={bob}")));
    let (mut anon_ws, _) = connect(&gateway.url(""));
    assert_eq!(request(&mut alice_ws, json!({"op": "sub", "ch": ">"}), 1)["op"], "ok");
    assert_eq!(request(&mut alice_ws, json!({"op": "sub", "ch": "*.bob"}), 2)["op"], "ok");
    let denied = request(&mut alice_ws, json!({"op": "sub", "ch": "user.bob"}), 3);
    assert_eq!(denied["code"], 403, "{denied}");
    assert_eq!(request(&mut anon_ws, json!({"op": "sub", "ch": "user.bob"}), 1)["code"], 403);
    assert_eq!(request(&mut anon_ws, json!({"op": "sub", "ch": "user.*"}), 2)["code"], 403);
    assert_eq!(request(&mut anon_ws, json!({"op": "sub", "ch": ">"}), 3)["op"], "ok");
    assert_eq!(request(&mut bob_ws, json!({"op": "sub", "ch": "user.bob"}), 1)["op"], "ok");
    // Alice may publish to bob's channel (her `pub` claim says so); only bob receives it.
    assert_eq!(request(&mut alice_ws, json!({"op": "pub", "ch": "user.bob", "data": "secret"}), 4)["op"], "ok");
    assert_eq!(recv_json(&mut bob_ws), json!({"op": "msg", "ch": "user.bob", "data": "secret"}));
    publish(gateway.port, "chat.lobby", json!("public"));
    assert_eq!(recv_json(&mut alice_ws)["data"], "public", "alice's `>` gets public traffic but not bob's");
    assert_eq!(recv_json(&mut anon_ws)["data"], "public");
    let denied = request(&mut bob_ws, json!({"op": "pub", "ch": "chat.lobby", "data": 1}), 2);
    assert_eq!(denied["code"], 403, "a token without `pub` may not publish");
}

#[test]
fn slow_consumer_is_closed_with_4008_while_others_keep_receiving() {
    let (gateway, channel, mut slow) = slow_consumer_setup();
    let (mut fast, _) = connect(&gateway.url(""));
    assert_eq!(request(&mut fast, json!({"op": "sub", "ch": channel}), 1)["op"], "ok");
    // 250 × 48 KiB = 12 MB: more than loopback's socket buffers (4 MB send at most by
    // default) plus the 128 KiB backlog bound, so the backlog must overflow.
    let payload = "x".repeat(48 * 1024);
    let mut received = 0;
    for n in 0..250 {
        publish(gateway.port, &channel, json!({"n": n, "pad": payload}));
        let frame = recv_json(&mut fast);
        assert_eq!(frame["data"]["n"], n);
        received += 1;
    }
    assert_eq!(received, 250);
    // The slow client now reads: whatever was queued, then a 4008 close.
    assert_eq!(slow.expect_close(), 4008);
    slow.send_frame(8, true, &4008u16.to_be_bytes());
    // Counted once the connection is gone (each connection is counted with one reason).
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (_, _, metrics) = http(gateway.port, "GET", "/metrics", &[], b"");
        if metrics.contains("ringcast_slow_consumer_closes_total 1") {
            break;
        }
        assert!(Instant::now() < deadline, "slow consumer close not counted: {metrics}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A minimal client for the ten-thousand-connection test: raw upgrade, one sub.
fn open_raw(port: u16, channel: &str) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let sub = json!({"op": "sub", "ch": channel}).to_string();
    let mut bytes = format!(
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes();
    bytes.extend(ringcast::protocol::ws::encode_client_frame(1, true, sub.as_bytes(), [1, 2, 3, 4]));
    stream.write_all(&bytes).unwrap();
    stream
}

/// Reads from `stream` until `needle` has been seen `count` times in total.
fn read_until_count(stream: &mut TcpStream, needle: &[u8], count: usize, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8192];
    loop {
        if buf.windows(needle.len()).filter(|w| *w == needle).count() >= count {
            return true;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[test]
fn ten_thousand_connections_all_receive_one_broadcast() {
    const CONNECTIONS: usize = 10_000;
    let gateway = Gateway::start(&["--shards", "2", "--max-connections", "20000", "--accept-rate", "1000000"]);
    let channel = format!("t{}.broadcast", unique());
    let started = Instant::now();
    let mut streams: Vec<TcpStream> = (0..CONNECTIONS).map(|_| open_raw(gateway.port, &channel)).collect();
    let mut buffers: Vec<Vec<u8>> = vec![Vec::new(); CONNECTIONS];
    let mut shards = HashSet::new();
    for (stream, buf) in streams.iter_mut().zip(buffers.iter_mut()) {
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        // welcome + ok for the sub, so the subscription is in place before the publish.
        assert!(read_until_count(stream, b"\"op\":\"ok\"", 1, buf), "no ok for sub");
        let text = String::from_utf8_lossy(buf);
        let conn: u64 = text.split("\"conn\":").nth(1).unwrap().split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap();
        shards.insert(conn >> 48);
        buf.clear();
    }
    eprintln!("{CONNECTIONS} connections subscribed in {:?}", started.elapsed());
    assert_eq!(shards.len(), 2, "connections spread over both shards");
    let (_, _, metrics) = http(gateway.port, "GET", "/metrics", &[], b"");
    assert!(metrics.contains(&format!("ringcast_connections {CONNECTIONS}")), "{metrics}");
    publish(gateway.port, &channel, json!({"hello": "everyone"}));
    for (i, (stream, buf)) in streams.iter_mut().zip(buffers.iter_mut()).enumerate() {
        assert!(read_until_count(stream, b"\"everyone\"", 1, buf), "connection {i} missed the broadcast");
    }
    eprintln!("broadcast received by all {CONNECTIONS} in {:?}", started.elapsed());
}

#[test]
fn shards_with_sqpoll_fan_out_through_a_kernel_polling_thread() {
    let gateway = Gateway::start(&["--shards", "2", "--sqpoll", "5ms"]);
    // One SQPOLL kernel thread per shard's ring, shown among the process's threads.
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", gateway.child.id()))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .collect();
    assert_eq!(threads.iter().filter(|t| t.starts_with("iou-sqp")).count(), 2, "{threads:?}");
    let mut clients = clients_on_both_shards(&gateway, 2);
    for (client, _) in clients.iter_mut() {
        assert_eq!(request(client, json!({"op": "sub", "ch": "sq.room"}), 1)["op"], "ok");
    }
    for i in 0..50 {
        publish(gateway.port, "sq.room", json!({ "i": i }));
    }
    publish(gateway.port, "sq.room", json!({ "sentinel": true }));
    for (client, shard) in clients.iter_mut() {
        let got: Vec<u64> = messages_before_sentinel(client).iter().map(|m| m["data"]["i"].as_u64().unwrap()).collect();
        assert_eq!(got, (0..50).collect::<Vec<_>>(), "shard {shard}");
    }
}

/// Consecutive messages on one channel that a shard takes in one turn go to each
/// subscriber as one buffer (`--coalesce-bytes`), yet every message still arrives as its
/// own WebSocket message, in order, exactly once. A pipelined burst through NATS makes
/// such runs (the metric counts the messages sent in them); with `--coalesce-bytes 0`
/// none are made and the same burst arrives the same way.
#[test]
fn a_burst_goes_out_in_runs_and_every_message_arrives_once_in_order() {
    use crate::common::edge_a::{metric, scrape};
    use crate::common::nats::{wait_live, NatsClient, SHARED_NATS};
    const BURST: u64 = 3_000;
    const SUBSCRIBERS: usize = 40;
    for (flags, coalesces) in [(&[][..], true), (&["--coalesce-bytes", "0"][..], false)] {
        let p = format!("t{}", unique());
        let mut args = vec!["--nats", SHARED_NATS, "--nats-prefix", &p, "--shards", "1"];
        args.extend_from_slice(flags);
        let gateway = Gateway::start(&args);
        let mut clients: Vec<Client> = (0..SUBSCRIBERS).map(|_| connect(&gateway.url("")).0).collect();
        for client in clients.iter_mut() {
            assert_eq!(request(client, json!({"op": "sub", "ch": "burst.room"}), 1)["op"], "ok");
        }
        let subject = format!("{p}.burst.room");
        wait_live(&mut clients[0], 4222, &subject);
        let mut nats = NatsClient::connect(4222);
        for i in 0..BURST {
            nats.publish(&subject, format!(r#"{{"i":{i},"pad":"{}"}}"#, "x".repeat(100)).as_bytes());
        }
        nats.flush();
        for (n, client) in clients.iter_mut().enumerate() {
            let mut next = 0;
            while next < BURST {
                let frame = recv_json(client);
                if frame["data"]["probe"] == true {
                    continue; // wait_live's probes reached every subscriber
                }
                assert_eq!((frame["op"].as_str(), frame["data"]["i"].as_u64()), (Some("msg"), Some(next)), "subscriber {n}: {frame}");
                next += 1;
            }
        }
        let metrics = scrape(gateway.port);
        let coalesced = metric(&metrics, "ringcast_coalesced_messages_total", &[]);
        if coalesces {
            assert!(coalesced > 0.0, "a {BURST}-message burst to {SUBSCRIBERS} subscribers made no run");
            assert!(coalesced <= BURST as f64 + 64.0, "counted per message, not per copy: {coalesced}");
        } else {
            assert_eq!(coalesced, 0.0, "--coalesce-bytes 0 turns runs off");
        }
        for counted in ["ringcast_deliveries_total", "ringcast_frames_out_total"] {
            assert!(metric(&metrics, counted, &[]) >= (BURST as usize * SUBSCRIBERS) as f64, "{counted} counts every message to every subscriber");
        }
    }
}
