//! Promises kept at the seams between parts: `ok` to a `sub` means live on every node,
//! a connection cut for a cause is counted under that cause, and a node on a NATS
//! cluster survives losing the server it is attached to. Real nats-server processes (the
//! shared one with a unique subject prefix, or private ones for tests that kill them),
//! real gateway processes, real WebSocket clients.

use crate::common::nats::{NatsClient, NatsCluster, NatsServer, SHARED_NATS};
use crate::common::presence::{redis_prefix, wait_until, SHARED_REDIS};
use crate::common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn prefix() -> String {
    format!("t{}", unique())
}

fn nats_node(nats: &str, prefix: &str, extra: &[&str]) -> Gateway {
    let mut args = vec!["--nats", nats, "--nats-prefix", prefix, "--jwt-secret", SECRET, "--allow-anonymous"];
    args.extend_from_slice(extra);
    let gateway = Gateway::start(&args);
    let ready = wait_until(Duration::from_secs(15), || http(gateway.port, "GET", "/readyz", &[], b"").2.contains("\"ready\""));
    assert!(ready.is_some(), "gateway never ready: {}", http(gateway.port, "GET", "/readyz", &[], b"").2);
    gateway
}

/// The next frame within `within`, or None.
fn recv_within(client: &mut Client, within: Duration) -> Option<Value> {
    client.get_mut().set_read_timeout(Some(within)).unwrap();
    let frame = loop {
        match client.read() {
            Ok(tungstenite::Message::Text(text)) => break Some(serde_json::from_str(&text).unwrap()),
            Ok(_) => continue,
            Err(_) => break None,
        }
    };
    client.get_mut().set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    frame
}

/// Waits up to `within` for a frame that `wanted` accepts, skipping others.
fn expect_frame(client: &mut Client, within: Duration, wanted: impl Fn(&Value) -> bool) -> Option<Value> {
    let deadline = Instant::now() + within;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match recv_within(client, left) {
            Some(frame) if wanted(&frame) => return Some(frame),
            Some(_) => continue,
            None => return None,
        }
    }
    None
}

/// Whatever anyone publishes right after a client has read `ok` to its `sub` reaches it:
/// a NATS client publishing on the subject, and another gateway node's `/api/publish`.
/// Each round is a fresh channel, so each `sub` is a new NATS subscription racing the
/// publish. (Before `ok` waited for the server, about one publish in ten went missing.)
#[test]
fn whatever_is_published_after_ok_reaches_the_subscriber() {
    let p = prefix();
    let one = nats_node(SHARED_NATS, &p, &[]);
    let two = nats_node(SHARED_NATS, &p, &[]);
    let (mut client, _) = connect(&one.url(""));
    let mut nats = NatsClient::connect(4222);
    let mut missed = Vec::new();
    for round in 0..40u32 {
        let channel = format!("live.r{round}");
        let answer = request(&mut client, json!({"op": "sub", "ch": channel}), round + 1);
        assert_eq!(answer["op"], "ok", "{answer}");
        if round % 2 == 0 {
            nats.publish(&format!("{p}.{channel}"), format!("{{\"round\":{round}}}").as_bytes());
            nats.flush();
        } else {
            let body = json!({"ch": channel, "data": {"round": round}}).to_string();
            let (status, _, answer) = http(two.port, "POST", "/api/publish", &[("Authorization", &format!("Bearer {API_KEY}"))], body.as_bytes());
            assert_eq!(status, 202, "{answer}");
        }
        if expect_frame(&mut client, Duration::from_secs(2), |f| f["op"] == "msg" && f["ch"] == channel.as_str()).is_none() {
            missed.push(round);
        }
    }
    assert!(missed.is_empty(), "published right after ok but never delivered, rounds {missed:?}");
}

fn user_client(gateway: &Gateway, user: &str) -> (Client, String) {
    let token = jwt(json!({"sub": user, "exp": now_unix() + 3600}));
    let (client, welcome) = connect(&gateway.url(&format!("?token={token}")));
    (client, welcome["conn"].to_string())
}

/// Alice joins a room on node one; Bob joins it on node two right after Alice's `ok`:
/// Alice receives Bob's `join`. (Before, Alice's node was not yet subscribed to the
/// room's presence frames on NATS and the join was lost.)
#[test]
fn a_join_right_after_a_members_ok_reaches_that_member() {
    let p = prefix();
    let redis = redis_prefix();
    let shared = ["--redis", SHARED_REDIS, "--redis-prefix", &redis];
    let one = nats_node(SHARED_NATS, &p, &shared);
    let two = nats_node(SHARED_NATS, &p, &shared);
    let mut missed = Vec::new();
    for round in 0..10u32 {
        let room = format!("room.r{round}x{}", unique());
        let (mut alice, _) = user_client(&one, "alice");
        let answer = request(&mut alice, json!({"op": "sub", "ch": room, "presence": true}), 1);
        assert_eq!(answer["op"], "ok", "{answer}");
        let (mut bob, bob_conn) = user_client(&two, "bob");
        let answer = request(&mut bob, json!({"op": "sub", "ch": room, "presence": true}), 1);
        assert_eq!(answer["op"], "ok", "{answer}");
        let joined = expect_frame(&mut alice, Duration::from_secs(3), |f| f["op"] == "join" && f["user"] == "bob");
        match joined {
            Some(frame) => assert_eq!(frame["conn"].to_string(), bob_conn, "{frame}"),
            None => missed.push(round),
        }
    }
    assert!(missed.is_empty(), "Bob's join never reached Alice in rounds {missed:?}");
}

/// While NATS is unreachable a `sub` cannot be made live: it is answered 503 within
/// the confirmation timeout and not made (no message arrives for it later); once NATS
/// is back, `sub` answers `ok` and the subscription is live.
#[test]
fn sub_while_nats_is_down_answers_503_then_works_when_it_is_back() {
    let mut nats = NatsServer::start();
    let p = prefix();
    let gateway = nats_node(&nats.url(), &p, &[]);
    let (mut client, _) = connect(&gateway.url(""));
    assert_eq!(request(&mut client, json!({"op": "sub", "ch": "warm.up"}), 1)["op"], "ok");
    nats.kill();
    let started = Instant::now();
    let answer = request(&mut client, json!({"op": "sub", "ch": "down.x"}), 2);
    assert_eq!((answer["op"].as_str(), answer["code"].as_u64()), (Some("err"), Some(503)), "{answer}");
    assert!(answer["msg"].as_str().unwrap().contains("NATS"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(9), "answered after {:?}", started.elapsed());
    let (_, _, metrics) = http(gateway.port, "GET", "/metrics", &[], b"");
    assert!(metrics.contains("ringcast_sub_confirm_failures_total 1"), "{metrics}");

    nats.restart();
    let back = wait_until(Duration::from_secs(15), || http(gateway.port, "GET", "/readyz", &[], b"").2.contains("\"ready\""));
    assert!(back.is_some(), "gateway never reconnected");
    let mut publisher = NatsClient::connect(nats.port);
    // The refused subscription was undone: nothing published on it arrives.
    publisher.publish(&format!("{p}.down.x"), b"{\"undone\":true}");
    publisher.flush();
    assert_eq!(request(&mut client, json!({"op": "sub", "ch": "up.x"}), 3)["op"], "ok");
    publisher.publish(&format!("{p}.up.x"), b"{\"live\":true}");
    publisher.flush();
    let frame = expect_frame(&mut client, Duration::from_secs(3), |f| f["op"] == "msg").expect("live after ok");
    assert_eq!(frame["ch"], "up.x", "the undone subscription delivered: {frame}");
}

/// A slow consumer whose receive window is tiny cannot even take its 4008 close frame;
/// the socket is shut when the close handshake times out. It was cut for being slow,
/// and that is what the metrics say (it used to be counted as `close_timeout`).
#[test]
fn a_slow_consumer_stuck_behind_its_own_close_is_counted_as_slow_consumer() {
    let (gateway, channel, slow) = slow_consumer_setup();
    // Never read again. 250 × 48 KiB = 12 MB: more than the socket buffers plus the
    // bound, so the backlog overflows and the close frame cannot be written either.
    let payload = "x".repeat(48 * 1024);
    for n in 0..250 {
        publish(gateway.port, &channel, json!({"n": n, "pad": payload}));
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let metrics = loop {
        let (_, _, metrics) = http(gateway.port, "GET", "/metrics", &[], b"");
        if metrics.contains("ringcast_slow_consumer_closes_total 1") {
            break metrics;
        }
        assert!(Instant::now() < deadline, "slow consumer not counted as one: {metrics}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let timeouts: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("ringcast_close_handshake_timeouts_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(timeouts, 1, "the close frame should have been stuck until the handshake timeout: {metrics}");
    drop(slow);
}

/// A private three-server cluster with JetStream; two gateway nodes given every URL,
/// history with three replicas. The server node one is attached to is killed mid-traffic:
/// node one reconnects to another server, restores its subscriptions, is ready again,
/// fan-out between the nodes resumes within seconds, and `since` resume still replays
/// what was published before the loss.
#[test]
fn a_node_survives_losing_its_nats_server_in_a_cluster() {
    let mut cluster = NatsCluster::start(3);
    let p = prefix();
    let urls = cluster.urls();
    let one_name = format!("one{}", unique());
    let history = ["--history", "hist.>", "--history-replicas", "3"];
    let mut args_one = vec!["--node", one_name.as_str()];
    args_one.extend_from_slice(&history);
    let one = nats_node(&urls, &p, &args_one);
    let two = nats_node(&urls, &p, &history);
    let (mut watcher, _) = connect(&one.url(""));
    assert_eq!(request(&mut watcher, json!({"op": "sub", "ch": "tele.x"}), 1)["op"], "ok");
    // A fresh cluster may still be placing the R3 history stream: its live consumer (and
    // so the `ok`) can take longer than the 5 s a `sub` waits; a client retries the 503.
    let mut id = 2;
    let live = wait_until(Duration::from_secs(30), || {
        id += 1;
        let answer = request(&mut watcher, json!({"op": "sub", "ch": "hist.x"}), id);
        assert!(answer["op"] == "ok" || answer["code"] == 503, "{answer}");
        answer["op"] == "ok"
    });
    assert!(live.is_some(), "history channel never live on a fresh cluster");
    let publish_on_two = |channel: &str, n: u32| {
        let body = json!({"ch": channel, "data": {"n": n}}).to_string();
        http(two.port, "POST", "/api/publish", &[("Authorization", &format!("Bearer {API_KEY}"))], body.as_bytes()).0
    };
    // History first, then live traffic across the nodes.
    let stored = wait_until(Duration::from_secs(15), || publish_on_two("hist.x", 0) == 202);
    assert!(stored.is_some(), "node two never published");
    let first = expect_frame(&mut watcher, Duration::from_secs(10), |f| f["ch"] == "hist.x").expect("history message before the loss");
    let first_seq = first["seq"].as_u64().expect("history messages carry seq");
    assert_eq!(publish_on_two("tele.x", 1), 202);
    assert!(expect_frame(&mut watcher, Duration::from_secs(5), |f| f["ch"] == "tele.x").is_some(), "no fan-out before the loss");

    let attached = cluster.server_with_client(&format!("ringcast {one_name}")).expect("node one is attached to a cluster server");
    cluster.kill(attached);
    let killed = Instant::now();

    // Fan-out resumes: publish on node two until node one's client hears one.
    let mut n = 2;
    let resumed = loop {
        let _ = publish_on_two("tele.x", n);
        if expect_frame(&mut watcher, Duration::from_millis(300), |f| f["ch"] == "tele.x").is_some() {
            break killed.elapsed();
        }
        assert!(killed.elapsed() < Duration::from_secs(20), "fan-out between the nodes did not resume within 20 s");
        n += 1;
    };
    let ready = wait_until(Duration::from_secs(15), || http(one.port, "GET", "/readyz", &[], b"").2.contains("\"ready\""));
    assert!(ready.is_some(), "node one never ready again: {}", http(one.port, "GET", "/readyz", &[], b"").2);
    assert_ne!(cluster.server_with_client(&format!("ringcast {one_name}")), Some(attached));
    eprintln!("fan-out resumed {resumed:?} after the server was killed");

    // History on the surviving replicas: a resume from before the first message gets it.
    let accepted = wait_until(Duration::from_secs(15), || publish_on_two("hist.x", 100) == 202);
    assert!(accepted.is_some());
    // A resume that lands while JetStream moves the stream's leadership off the dead
    // server answers 503 (retry); within seconds one succeeds, from the surviving replicas.
    let (mut resumer, _) = connect(&one.url(""));
    let mut replayed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut id = 7;
    'resume: loop {
        replayed.clear();
        send_json(&mut resumer, json!({"op": "sub", "ch": "hist.x", "since": first_seq - 1, "id": id}));
        loop {
            let frame = recv_within(&mut resumer, Duration::from_secs(15)).expect("resume answered");
            if frame["id"] == id {
                if frame["op"] == "ok" {
                    break 'resume;
                }
                assert_eq!(frame["code"], 503, "resume after losing a server: {frame}");
                assert!(Instant::now() < deadline, "resume still failing 30 s after the loss: {frame}");
                std::thread::sleep(Duration::from_millis(500));
                id += 1;
                continue 'resume;
            }
            if frame["op"] == "msg" && frame["ch"] == "hist.x" {
                replayed.push(frame["data"]["n"].as_u64().unwrap());
            }
        }
    }
    eprintln!("resume served {:?} after the server was killed", killed.elapsed());
    assert_eq!(replayed.first(), Some(&0), "the message from before the loss was replayed: {replayed:?}");
}
