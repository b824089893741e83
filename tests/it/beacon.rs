//! Beacon: gateway nodes behind NATS behave as one system, with JetStream history and
//! resume. Real nats-server processes (the shared one with a unique subject prefix, or a
//! private one for tests that kill it or read its monitoring), real gateway processes,
//! real WebSocket clients.


use crate::common::nats::{free_port, wait_live, NatsClient, NatsServer, Proxy, SHARED_NATS};
use crate::common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn prefix() -> String {
    format!("t{}", unique())
}

fn node(nats: &str, prefix: &str, extra: &[&str]) -> Gateway {
    let mut args = vec!["--nats", nats, "--nats-prefix", prefix, "--jwt-secret", SECRET, "--allow-anonymous"];
    args.extend_from_slice(extra);
    Gateway::start(&args)
}

fn is_probe(frame: &Value) -> bool {
    frame["data"]["probe"] == true
}

/// The next `n` msg frames (other frames, and `wait_live` probes, are skipped).
fn recv_msgs(client: &mut Client, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        let frame = recv_json(client);
        if frame["op"] == "msg" && !is_probe(&frame) {
            out.push(frame);
        }
    }
    out
}

/// Asserts no frame (but a late probe) arrives for `quiet`.
fn assert_quiet(client: &mut Client, quiet: Duration) {
    client.get_mut().set_read_timeout(Some(quiet)).unwrap();
    loop {
        match client.read() {
            Err(tungstenite::Error::Io(e)) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => break,
            Ok(tungstenite::Message::Text(text)) if is_probe(&serde_json::from_str(&text).unwrap()) => continue,
            other => panic!("expected silence, got {other:?}"),
        }
    }
    client.get_mut().set_read_timeout(Some(READ_TIMEOUT)).unwrap();
}

fn sub(client: &mut Client, channel: &str, id: u32) {
    let answer = request(client, json!({"op": "sub", "ch": channel}), id);
    assert_eq!(answer["op"], "ok", "sub {channel}: {answer}");
}

/// Data field `n` of each message, as a multiset (count per value).
fn counts(messages: &[Value]) -> BTreeMap<u64, usize> {
    let mut out = BTreeMap::new();
    for m in messages {
        *out.entry(m["data"]["n"].as_u64().unwrap()).or_default() += 1;
    }
    out
}

/// Waits until `check` holds, polling.
fn eventually(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("timed out waiting for: {what}");
}

#[test]
fn two_nodes_share_publishes_from_every_path_with_wildcards() {
    let p = prefix();
    let a = node(SHARED_NATS, &p, &["--shards", "2"]);
    let b = node(SHARED_NATS, &p, &["--shards", "1"]);
    let (mut on_a, _) = connect(&a.url(""));
    sub(&mut on_a, "room.*", 1);
    sub(&mut on_a, "room.>", 2); // overlapping: still one copy each
    let (mut exact_b, _) = connect(&b.url(""));
    sub(&mut exact_b, "room.x", 1);
    let (mut wild_b, _) = connect(&b.url(""));
    sub(&mut wild_b, "room.>", 1);
    for client in [&mut on_a, &mut exact_b, &mut wild_b] {
        wait_live(client, 4222, &format!("{p}.room.x"));
    }

    let token = jwt(json!({"sub": "pub1", "exp": now_unix() + 600, "pub": ["room.>"]}));
    let (mut publisher, _) = connect(&a.url(&format!("?token={token}")));
    let ok = request(&mut publisher, json!({"op": "pub", "ch": "room.x", "data": {"n": 1, "via": "client on A"}}), 9);
    assert_eq!(ok["op"], "ok", "{ok}");
    publish(b.port, "room.x", json!({"n": 2, "via": "api on B"}));
    let mut nats = NatsClient::connect(4222);
    nats.publish(&format!("{p}.room.x"), br#"{"n":3,"via":"plain NATS"}"#);
    nats.publish(&format!("{p}.room.y.z"), br#"{"n":4}"#);
    nats.flush();

    let a_msgs = recv_msgs(&mut on_a, 4);
    let exact = recv_msgs(&mut exact_b, 3);
    let wild = recv_msgs(&mut wild_b, 4);
    // `room.*` does not match room.y.z but `room.>` does; the connection holds both
    // (overlapping) patterns and still gets each message once.
    assert_eq!(counts(&a_msgs), BTreeMap::from([(1, 1), (2, 1), (3, 1), (4, 1)]), "{a_msgs:?}");
    assert_eq!(counts(&exact), BTreeMap::from([(1, 1), (2, 1), (3, 1)]));
    assert_eq!(counts(&wild), BTreeMap::from([(1, 1), (2, 1), (3, 1), (4, 1)]));
    let plain = exact.iter().find(|m| m["data"]["n"] == 3).unwrap();
    assert_eq!(plain["ch"], "room.x");
    assert_eq!(plain["data"], json!({"n": 3, "via": "plain NATS"}), "payload arrives as data unchanged");
    assert!(plain.get("seq").is_none(), "no seq outside history channels");
    for client in [&mut on_a, &mut exact_b, &mut wild_b] {
        assert_quiet(client, Duration::from_millis(300));
    }
}

#[test]
fn non_json_payloads_arrive_as_b64_and_frame_payloads_verbatim() {
    let p = prefix();
    let gateway = node(SHARED_NATS, &p, &[]);
    let alice = jwt(json!({"sub": "alice", "exp": now_unix() + 600}));
    let (mut client, _) = connect(&gateway.url(&format!("?token={alice}")));
    sub(&mut client, "bin.x", 1);
    sub(&mut client, "user.alice", 2);
    wait_live(&mut client, 4222, &format!("{p}.bin.x"));
    let mut nats = NatsClient::connect(4222);
    nats.publish(&format!("{p}.bin.x"), b"\xff\x00raw");
    nats.publish(&format!("{p}.bin.x"), b"hello world");
    let notify = br#"{"op":"notify","nid":"n-1","data":{"text":"hi"},"ts":1700000000000}"#;
    nats.publish_with_headers(&format!("{p}.user.alice"), &[("Ringcast-Frame", "1")], notify);
    nats.flush();
    let first = recv_json(&mut client);
    assert_eq!(first, json!({"op": "msg", "ch": "bin.x", "data": {"b64": "/wByYXc="}}));
    let second = recv_json(&mut client);
    assert_eq!(second["data"], json!({"b64": "aGVsbG8gd29ybGQ="}));
    let third = recv_json(&mut client);
    assert_eq!(third, serde_json::from_slice::<Value>(notify).unwrap(), "a frame payload is sent as is");
}

#[test]
fn node_subscribes_to_nats_only_while_it_has_interest() {
    let nats = NatsServer::start();
    let p = prefix();
    let gateway = node(&nats.url(), &p, &["--shards", "2"]);
    let subject = format!("{p}.a.b");
    let wildcard = format!("{p}.a.*");
    let count = |s: &str| nats.subscriptions().iter().filter(|x| *x == s).count();
    assert_eq!(count(&subject), 0);
    let (mut first, _) = connect(&gateway.url(""));
    let (mut second, _) = connect(&gateway.url(""));
    sub(&mut first, "a.b", 1);
    sub(&mut second, "a.b", 1);
    sub(&mut second, "a.*", 2);
    eventually(Duration::from_secs(5), "a.b and a.* subscribed", || count(&subject) == 1 && count(&wildcard) == 1);
    assert_eq!(request(&mut first, json!({"op": "unsub", "ch": "a.b"}), 3)["op"], "ok");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(count(&subject), 1, "the second connection still wants a.b");
    drop(second);
    eventually(Duration::from_secs(5), "a.* gone with its last subscriber", || count(&wildcard) == 0);
    assert_eq!(count(&subject), 0, "and a.b too");
    let metrics = http(gateway.port, "GET", "/metrics", &[], b"").2;
    assert!(metrics.contains("ringcast_nats_subscriptions 0"), "{metrics}");
    assert!(metrics.contains("ringcast_broker_connected{broker=\"nats\"} 1"));
}

/// Publishes `n` = from..to on `channel` through a node's API.
fn publish_range(port: u16, channel: &str, range: std::ops::Range<u64>) {
    for n in range {
        publish(port, channel, json!({ "n": n }));
    }
}

fn resume(client: &mut Client, channel: &str, since: u64, id: u32) -> (Vec<Value>, Value) {
    send_json(client, json!({"op": "sub", "ch": channel, "since": since, "id": id}));
    let mut replayed = Vec::new();
    loop {
        let frame = recv_json(client);
        if frame["id"] == id {
            return (replayed, frame);
        }
        if frame["op"] == "msg" {
            replayed.push(frame);
        }
    }
}

fn seq(m: &Value) -> u64 {
    m["seq"].as_u64().unwrap_or_else(|| panic!("no seq on a history message: {m}"))
}

/// Subscribes to a history channel with `since: 0`: its `ok` comes once the node's live
/// feed of the channel is in place, so everything published afterwards arrives.
fn sub_history(client: &mut Client, channel: &str, id: u32) -> Vec<Value> {
    let (replayed, answer) = resume(client, channel, 0, id);
    assert_eq!(answer["op"], "ok", "{answer}");
    replayed
}

/// The shared scenario of the resume tests: live with seq, a gap while disconnected,
/// resume with no gap and no duplicate while publishing goes on.
fn resume_scenario(gateway: &Gateway) {
    let channel = "chat.room";
    let (mut client, _) = connect(&gateway.url(""));
    assert!(sub_history(&mut client, channel, 1).is_empty(), "a new channel has no history");
    publish_range(gateway.port, channel, 1..4);
    let live = recv_msgs(&mut client, 3);
    assert_eq!(live.iter().map(|m| m["data"]["n"].as_u64().unwrap()).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert!(seq(&live[0]) < seq(&live[1]) && seq(&live[1]) < seq(&live[2]), "{live:?}");
    let last_seen = seq(&live[2]);
    drop(client);

    publish_range(gateway.port, channel, 4..7); // missed while away
    let (mut client, _) = connect(&gateway.url(""));
    // Publishing goes on while the resume runs: the seam must be exact.
    let port = gateway.port;
    let publisher = std::thread::spawn(move || publish_range(port, "chat.room", 7..30));
    let (replayed, answer) = resume(&mut client, channel, last_seen, 5);
    assert_eq!(answer["op"], "ok", "{answer}");
    publisher.join().unwrap();
    let replayed_n: Vec<u64> = replayed.iter().map(|m| m["data"]["n"].as_u64().unwrap()).collect();
    assert!(replayed_n.starts_with(&[4, 5, 6]), "the missed messages first: {replayed_n:?}");
    let rest = recv_msgs(&mut client, 29 - 3 - replayed.len());
    let all: Vec<Value> = replayed.into_iter().chain(rest).collect();
    let ns: Vec<u64> = all.iter().map(|m| m["data"]["n"].as_u64().unwrap()).collect();
    assert_eq!(ns, (4..30).collect::<Vec<_>>(), "no gap and no duplicate at the seam");
    let seqs: Vec<u64> = all.iter().map(seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "sequences increase: {seqs:?}");
    assert_quiet(&mut client, Duration::from_millis(300));

    // Nothing missed: an empty replay, then ok.
    let (mut again, _) = connect(&gateway.url(""));
    let (replayed, answer) = resume(&mut again, channel, *seqs.last().unwrap(), 6);
    assert!(replayed.is_empty() && answer["op"] == "ok", "{replayed:?} {answer}");
    // `since` on a channel without history is ignored (a plain subscribe).
    let (replayed, answer) = resume(&mut again, "news.x", 5, 7);
    assert!(replayed.is_empty() && answer["op"] == "ok", "{answer}");
    // A wildcard touching history cannot resume.
    let (_, answer) = resume(&mut again, "chat.*", 5, 8);
    assert_eq!((answer["op"].as_str(), answer["code"].as_u64()), (Some("err"), Some(400)), "{answer}");
}

fn history_node(nats: &str, prefix: &str, extra: &[&str]) -> Gateway {
    let mut args = vec!["--history", "chat.>"];
    args.extend_from_slice(extra);
    node(nats, prefix, &args)
}

#[test]
fn resume_with_since_through_jetstream_across_reconnect_and_restart() {
    let nats = NatsServer::start();
    let p = prefix();
    let mut first = history_node(&nats.url(), &p, &[]);
    resume_scenario(&first);

    // Across a gateway restart (kill -9): JetStream kept the history.
    let (mut client, _) = connect(&first.url(""));
    let (replayed, answer) = resume(&mut client, "chat.room", 0, 1);
    assert_eq!(answer["op"], "ok");
    let last = seq(replayed.last().unwrap());
    drop(client);
    first.signal(libc::SIGKILL);
    first.wait_exit(Duration::from_secs(5));
    let mut backend = NatsClient::connect(nats.port);
    backend.publish(&format!("{p}.chat.room"), br#"{"n":100}"#);
    backend.flush();
    let second = history_node(&nats.url(), &p, &[]);
    let (mut client, _) = connect(&second.url(""));
    let (replayed, answer) = resume(&mut client, "chat.room", last, 2);
    assert_eq!(answer["op"], "ok", "{answer}");
    assert_eq!(replayed.len(), 1, "{replayed:?}");
    assert_eq!(replayed[0]["data"], json!({"n": 100}), "published by a plain NATS client while no gateway ran");
    assert!(seq(&replayed[0]) > last);
}

#[test]
fn resume_with_since_on_the_embedded_broker() {
    let gateway = Gateway::start(&["--history", "chat.>"]);
    resume_scenario(&gateway);
}

#[test]
fn resume_past_the_retention_window_is_409_and_undoes_the_subscription() {
    for nats in [Some(NatsServer::start()), None] {
        let p = prefix();
        let gateway = match &nats {
            Some(server) => history_node(&server.url(), &p, &["--history-messages", "3"]),
            None => Gateway::start(&["--history", "chat.>", "--history-messages", "3"]),
        };
        let (mut client, _) = connect(&gateway.url(""));
        sub_history(&mut client, "chat.a", 1);
        publish(gateway.port, "chat.a", json!({"n": 1}));
        let first_seq = seq(&recv_msgs(&mut client, 1)[0]);
        drop(client);
        publish_range(gateway.port, "chat.a", 2..8); // only the last 3 are kept
        let (mut client, _) = connect(&gateway.url(""));
        let (replayed, answer) = resume(&mut client, "chat.a", first_seq, 2);
        assert!(replayed.is_empty());
        assert_eq!(answer["op"], "err", "{answer}");
        assert_eq!(answer["code"], 409, "{answer}");
        let unsub = request(&mut client, json!({"op": "unsub", "ch": "chat.a"}), 3);
        assert_eq!(unsub["code"], 404, "the failed resume left no subscription: {unsub}");
        // Within the window it works: the last three are there.
        let (replayed, answer) = resume(&mut client, "chat.a", 0, 4);
        assert_eq!(answer["op"], "ok");
        assert_eq!(counts(&replayed), BTreeMap::from([(5, 1), (6, 1), (7, 1)]));
        let metrics = http(gateway.port, "GET", "/metrics", &[], b"").2;
        assert!(metrics.contains("ringcast_replays_gone_total 1"), "{metrics}");
    }
}

#[test]
fn nats_killed_and_restarted_mid_stream() {
    let mut nats = NatsServer::start();
    let p = prefix();
    let gateway = history_node(&nats.url(), &p, &[]);
    let (mut client, _) = connect(&gateway.url(""));
    sub(&mut client, "live.x", 1);
    sub_history(&mut client, "chat.x", 2);
    wait_live(&mut client, nats.port, &format!("{p}.live.x"));
    publish(gateway.port, "chat.x", json!({"n": 1}));
    assert_eq!(recv_msgs(&mut client, 1)[0]["data"]["n"], 1);

    nats.kill();
    let auth = format!("Bearer {API_KEY}");
    let body = json!({"ch": "live.x", "data": {"n": 2}}).to_string();
    eventually(Duration::from_secs(10), "publishes refused with 503 while NATS is down", || {
        http(gateway.port, "POST", "/api/publish", &[("Authorization", &auth)], body.as_bytes()).0 == 503
    });
    let (status, _, ready) = http(gateway.port, "GET", "/readyz", &[], b"");
    assert_eq!((status, ready.contains("degraded")), (200, true), "{ready}");
    assert_eq!(http(gateway.port, "GET", "/readyz?strict=1", &[], b"").0, 503);

    nats.restart();
    eventually(Duration::from_secs(15), "node reconnected", || http(gateway.port, "GET", "/readyz", &[], b"").2.contains("\"ready\""));
    // Resubscribed by itself: both channels flow again.
    wait_live(&mut client, nats.port, &format!("{p}.live.x"));
    publish(gateway.port, "chat.x", json!({"n": 3}));
    let after = recv_msgs(&mut client, 1);
    assert_eq!(after[0]["data"]["n"], 3);
    let metrics = http(gateway.port, "GET", "/metrics", &[], b"").2;
    let connects = metrics.lines().find(|l| l.starts_with("ringcast_nats_connects_total")).unwrap();
    assert_eq!(connects, "ringcast_nats_connects_total 2", "{metrics}");
    assert!(metrics.lines().any(|l| l.starts_with("ringcast_publish_refused_total{") && !l.ends_with(" 0")), "{metrics}");
}

#[test]
fn history_published_while_a_node_was_cut_off_is_recovered() {
    let nats = NatsServer::start();
    let proxy = Proxy::start(nats.port);
    let p = prefix();
    let cut_off = history_node(&proxy.url(), &p, &[]);
    let direct = history_node(&nats.url(), &p, &[]);
    let (mut client, _) = connect(&cut_off.url(""));
    sub_history(&mut client, "chat.x", 1);
    sub(&mut client, "news.x", 2);
    wait_live(&mut client, nats.port, &format!("{p}.news.x"));
    publish(direct.port, "chat.x", json!({"n": 0}));
    assert_eq!(recv_msgs(&mut client, 1)[0]["data"]["n"], 0);

    proxy.cut();
    eventually(Duration::from_secs(10), "the cut-off node notices", || http(cut_off.port, "GET", "/readyz", &[], b"").2.contains("degraded"));
    publish_range(direct.port, "chat.x", 1..6);
    publish(direct.port, "news.x", json!({"n": 99})); // no history: lost for the cut-off node
    proxy.restore();
    eventually(Duration::from_secs(15), "the cut-off node reconnects", || http(cut_off.port, "GET", "/readyz", &[], b"").2.contains("\"ready\""));
    let recovered = recv_msgs(&mut client, 5);
    assert_eq!(recovered.iter().map(|m| m["data"]["n"].as_u64().unwrap()).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
    assert!(recovered.iter().all(|m| m["ch"] == "chat.x"), "{recovered:?}");
    publish(direct.port, "chat.x", json!({"n": 6}));
    let next = recv_msgs(&mut client, 1);
    assert_eq!(next[0]["data"]["n"], 6, "the lost news.x message never arrives: {next:?}");
}

#[test]
fn unreachable_nats_at_start_degrades_then_recovers() {
    let port = free_port();
    let p = prefix();
    let url = format!("nats://127.0.0.1:{port}");
    let gateway = node(&url, &p, &[]);
    let (status, _, body) = http(gateway.port, "GET", "/readyz", &[], b"");
    assert_eq!(status, 200);
    assert!(body.contains("degraded"), "{body}");
    let (mut client, _) = connect(&gateway.url(""));
    // `ok` means live, which it cannot be while NATS is away: 503, and not made.
    let refused = request(&mut client, json!({"op": "sub", "ch": "late.x"}), 1);
    assert_eq!(refused["code"], 503, "sub while NATS is away: {refused}");
    let token = jwt(json!({"sub": "p", "exp": now_unix() + 600, "pub": [">"]}));
    let (mut publisher, _) = connect(&gateway.url(&format!("?token={token}")));
    let refused = request(&mut publisher, json!({"op": "pub", "ch": "late.x", "data": 1}), 2);
    assert_eq!(refused["code"], 503, "{refused}");
    let _server = NatsServer::start_on(port);
    eventually(Duration::from_secs(15), "node connected", || http(gateway.port, "GET", "/readyz", &[], b"").2.contains("\"ready\""));
    sub(&mut client, "late.x", 4);
    let ok = request(&mut publisher, json!({"op": "pub", "ch": "late.x", "data": {"n": 1}}), 3);
    assert_eq!(ok["op"], "ok");
    assert_eq!(recv_msgs(&mut client, 1)[0]["data"]["n"], 1);
}

#[test]
fn thousands_of_channels_resubscribe_in_a_pipeline_after_a_nats_restart() {
    const CHANNELS: usize = 5000;
    let mut nats = NatsServer::start();
    let p = prefix();
    let gateway = node(&nats.url(), &p, &["--max-subscriptions", "10000", "--client-rate", "100000"]);
    let (mut client, _) = connect(&gateway.url(""));
    for i in 0..CHANNELS {
        send_json(&mut client, json!({"op": "sub", "ch": format!("dev.{i}"), "id": i}));
    }
    let mut acked = 0;
    while acked < CHANNELS {
        if recv_json(&mut client)["op"] == "ok" {
            acked += 1;
        }
    }
    let base = nats.subscription_count();
    eventually(Duration::from_secs(10), "every channel subscribed", || nats.subscription_count() >= base.min(CHANNELS as u64) && nats.subscription_count() >= CHANNELS as u64);
    nats.restart();
    let started = Instant::now();
    eventually(Duration::from_secs(20), "every channel resubscribed", || nats.subscription_count() >= CHANNELS as u64);
    let took = started.elapsed();
    eprintln!("{CHANNELS} subscriptions restored {took:?} after the NATS restart (including the node's reconnect backoff)");
    let mut backend = NatsClient::connect(nats.port);
    backend.publish(&format!("{p}.dev.4321"), br#"{"n":4321}"#);
    backend.flush();
    let got = recv_msgs(&mut client, 1);
    assert_eq!(got[0]["ch"], "dev.4321");
}

#[test]
fn bad_broker_settings_are_one_line_errors() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringcast")).arg("gateway").args(args).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (code, err) = run(&["--nats", "http://x y"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("nats:"), "{err}");
    let (code, err) = run(&["--history", "chat.>", "--history", "chat.a"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("overlap"), "{err}");
    let (code, err) = run(&["--nats", SHARED_NATS, "--nats-creds", "/nonexistent/creds", "--listen", "127.0.0.1:0"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("credentials"), "{err}");
}
