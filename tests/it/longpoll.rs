//! The long-poll transport end to end over real HTTP/1.1 sockets: open, subscribe,
//! publish through /api/publish, poll, ack and redelivery, expiry as a disconnect,
//! forwarding between shards, the slow-consumer bound, auth, limits and CORS.


use crate::common::edge_b::{metric_sum, metric_value};
use crate::common::{http, jwt, now_unix, publish, Gateway, SECRET};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn metrics(port: u16) -> String {
    http(port, "GET", "/metrics", &[], b"").2
}

fn open(port: u16, query: &str, headers: &[(&str, &str)]) -> (String, Value) {
    let (status, _, body) = http(port, "POST", &format!("/poll{query}"), headers, b"");
    assert_eq!(status, 200, "open: {body}");
    let opened: Value = serde_json::from_str(&body).unwrap();
    (opened["sid"].as_str().expect("sid").to_string(), opened)
}

/// `GET /poll/{sid}?ack=n` → (status, body as JSON).
fn get(port: u16, sid: &str, ack: u64) -> (u16, Value) {
    let (status, _, body) = http(port, "GET", &format!("/poll/{sid}?ack={ack}"), &[], b"");
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn post(port: u16, sid: &str, frames: Value) -> u16 {
    let body = frames.to_string();
    let (status, _, answer) = http(port, "POST", &format!("/poll/{sid}"), &[("Content-Type", "application/json")], body.as_bytes());
    assert!(status == 202 || status >= 400, "{answer}");
    status
}

/// Polls (acking everything seen) until `want` frames arrived; returns them and `next`.
fn poll_frames(port: u16, sid: &str, mut ack: u64, want: usize) -> (Vec<Value>, u64) {
    let mut frames = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while frames.len() < want {
        assert!(Instant::now() < deadline, "got only {frames:?}");
        let (status, answer) = get(port, sid, ack);
        assert_eq!(status, 200, "{answer}");
        let next = answer["next"].as_u64().unwrap();
        let batch = answer["frames"].as_array().unwrap();
        let first = next - batch.len() as u64;
        for (i, frame) in batch.iter().enumerate() {
            if first + i as u64 >= ack {
                frames.push(frame.clone());
            }
        }
        ack = next;
    }
    (frames, ack)
}

#[test]
fn open_subscribe_publish_poll_ack_and_redelivery() {
    let gateway = Gateway::start(&["--shards", "2", "--poll-wait", "1s"]);
    let port = gateway.port;
    let (sid, opened) = open(port, "", &[]);
    assert_eq!(opened["frames"][0]["op"], "welcome", "{opened}");
    assert_eq!(opened["next"], 1);
    let channel = format!("lp.{}", crate::common::unique());
    assert_eq!(post(port, &sid, json!({"op": "sub", "ch": channel, "id": 1})), 202);
    let (frames, next) = poll_frames(port, &sid, 1, 1);
    assert_eq!(frames[0], json!({"op": "ok", "id": 1}));
    assert_eq!(next, 2, "welcome was frame 0, the ok frame 1");

    publish(port, &channel, json!({"n": 1}));
    let (status, first) = get(port, &sid, next);
    assert_eq!(status, 200);
    assert_eq!(first["frames"][0]["op"], "msg", "{first}");
    assert_eq!(first["frames"][0]["data"], json!({"n": 1}));
    assert_eq!(first["next"], 3);
    // The answer was "lost": polling again without advancing ack gets the same frame.
    let (_, again) = get(port, &sid, next);
    assert_eq!(again, first, "unconfirmed frames are sent again");
    // Acked: nothing left, the poll waits --poll-wait and answers empty.
    let started = Instant::now();
    let (_, empty) = get(port, &sid, 3);
    assert_eq!(empty, json!({"frames": [], "next": 3}));
    assert!(started.elapsed() >= Duration::from_millis(900), "an empty poll waits for frames");

    // A waiting poll is answered as soon as a message arrives.
    let publisher = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        publish(port, &channel, json!({"n": 2}));
    });
    let (_, woken) = get(port, &sid, 3);
    publisher.join().unwrap();
    assert_eq!(woken["frames"][0]["data"], json!({"n": 2}), "{woken}");

    // An array of frames is handled in order.
    assert_eq!(post(port, &sid, json!([{"op": "ping", "id": 5}, {"op": "ping", "id": 6}, {"op": "nope", "id": 7}])), 202);
    let (frames, _) = poll_frames(port, &sid, 4, 3);
    assert_eq!(frames[0], json!({"op": "pong", "id": 5}));
    assert_eq!(frames[1], json!({"op": "pong", "id": 6}));
    assert_eq!(frames[2]["op"], "err", "unknown ops answer err as on WebSocket");
    assert_eq!(frames[2]["code"], 400);

    let text = metrics(port);
    assert_eq!(metric_sum(&text, "ringcast_poll_sessions", "shard="), 1.0, "{text}");
    assert_eq!(metric_value(&text, "ringcast_connections"), 1.0, "a session counts as a connection");
}

#[test]
fn an_unpolled_session_expires_as_a_disconnect() {
    let gateway = Gateway::start(&["--shards", "1", "--heartbeat", "1s", "--heartbeat-timeout", "3s", "--poll-wait", "1s", "--poll-timeout", "2s"]);
    let port = gateway.port;
    let (sid, _) = open(port, "", &[]);
    let channel = format!("lp.{}", crate::common::unique());
    post(port, &sid, json!({"op": "sub", "ch": channel}));
    assert_eq!(metric_value(&metrics(port), "ringcast_connections"), 1.0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric_sum(&metrics(port), "ringcast_poll_sessions_expired_total", "shard=") < 1.0 {
        assert!(Instant::now() < deadline, "the session never expired");
        std::thread::sleep(Duration::from_millis(200));
    }
    let text = metrics(port);
    assert_eq!(metric_value(&text, "ringcast_connections"), 0.0, "{text}");
    assert_eq!(metric_sum(&text, "ringcast_closes_total", "reason=\"heartbeat_timeout\""), 1.0, "{text}");
    assert_eq!(metric_sum(&text, "ringcast_subscriptions", "shard="), 0.0, "its subscriptions are gone");
    let (status, answer) = get(port, &sid, 1);
    assert_eq!(status, 404, "{answer}");
}

#[test]
fn requests_reaching_another_shard_are_forwarded_to_the_owner() {
    let gateway = Gateway::start(&["--shards", "2", "--poll-wait", "2s"]);
    let port = gateway.port;
    let channel = format!("lp.{}", crate::common::unique());
    let sessions: Vec<String> = (0..6).map(|_| open(port, "", &[]).0).collect();
    let owners: std::collections::BTreeSet<&str> = sessions.iter().map(|s| s.split('-').next().unwrap()).collect();
    for (i, sid) in sessions.iter().enumerate() {
        assert_eq!(post(port, sid, json!({"op": "sub", "ch": channel, "id": i})), 202);
    }
    let mut acks = vec![1u64; sessions.len()];
    for (i, sid) in sessions.iter().enumerate() {
        let (frames, next) = poll_frames(port, sid, acks[i], 1);
        assert_eq!(frames[0], json!({"op": "ok", "id": i}));
        acks[i] = next;
    }
    for round in 0..3 {
        publish(port, &channel, json!({"round": round}));
        for (i, sid) in sessions.iter().enumerate() {
            let (frames, next) = poll_frames(port, sid, acks[i], 1);
            assert_eq!(frames[0]["data"], json!({"round": round}), "session {sid}");
            acks[i] = next;
        }
    }
    let forwarded = metric_sum(&metrics(port), "ringcast_poll_forwarded_total", "shard=");
    // 6 opens, 6 posts and ~24 polls on fresh sockets spread by SO_REUSEPORT: some land
    // on the shard that does not own the session (all on the owner: ~2^-36).
    assert!(forwarded >= 1.0, "no request was forwarded (owners {owners:?})");
}

#[test]
fn bad_sids_bad_bodies_and_limits() {
    let gateway = Gateway::start(&["--shards", "1", "--max-connections", "2", "--poll-wait", "1s"]);
    let port = gateway.port;
    assert_eq!(get(port, "nonsense", 0).0, 404);
    assert_eq!(get(port, &format!("0-0-{}", "0".repeat(32)), 0).0, 404);
    let (sid, _) = open(port, "", &[]);
    let (other, _) = open(port, "", &[]);
    let forged = format!("{}-{}", &sid[..sid.rfind('-').unwrap()], "1".repeat(32));
    assert_eq!(get(port, &forged, 0).0, 404, "the slot alone does not reach a session");

    let (status, _, body) = http(port, "POST", "/poll", &[], b"");
    assert_eq!(status, 503, "sessions count against --max-connections: {body}");
    let (_, head, _) = http(port, "POST", "/poll", &[], b"");
    assert!(head.contains("Retry-After"), "{head}");

    assert_eq!(too_large(port, &format!("/poll/{sid}")), 413, "a body over the 1 MiB request bound");
    assert_eq!(post(port, &sid, json!("")), 202, "a non-object frame is answered with err through the session");
    let (status, _, body) = http(port, "POST", &format!("/poll/{sid}"), &[], b"[{\"op\":");
    assert_eq!(status, 400, "{body}");
    let (status, _, _) = http(port, "GET", &format!("/poll/{sid}?ack=x"), &[], b"");
    assert_eq!(status, 400);
    assert_eq!(get(port, &sid, 99).0, 400, "ack past the last frame");
    let (status, head, _) = http(port, "PUT", "/poll", &[], b"");
    assert_eq!(status, 405);
    assert!(head.contains("Allow: POST"), "{head}");
    assert_eq!(get(port, &other, 1).0, 200, "the other session is unaffected");
}

/// Announces a 2 MiB body and reads the answer (the server refuses it from the header alone).
fn too_large(port: u16, path: &str) -> u16 {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", 2 * 1024 * 1024);
    stream.write_all(head.as_bytes()).unwrap();
    let _ = stream.write_all(&[b' '; 4096]);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response);
    text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

#[test]
fn auth_and_permissions_are_those_of_websocket() {
    let gateway = Gateway::start(&["--shards", "1", "--jwt-secret", SECRET, "--poll-wait", "1s"]);
    let port = gateway.port;
    let (status, head, _) = http(port, "POST", "/poll", &[], b"");
    assert_eq!(status, 401);
    assert!(head.contains("WWW-Authenticate: Bearer"), "{head}");
    let (status, _, _) = http(port, "POST", "/poll?token=garbage", &[], b"");
    assert_eq!(status, 401);

    let token = jwt(json!({"sub": "alice", "exp": now_unix() + 600, "chans": ["news.*"]}));
    let (sid, _) = open(port, &format!("?token={token}"), &[]);
    let bearer = format!("Bearer {token}");
    let (sid2, _) = open(port, "", &[("Authorization", &bearer)]);
    assert_ne!(sid, sid2);
    post(port, &sid, json!([{"op": "sub", "ch": "news.a", "id": 1}, {"op": "sub", "ch": "sports.a", "id": 2}, {"op": "pub", "ch": "news.a", "data": 1, "id": 3}]));
    let (frames, _) = poll_frames(port, &sid, 1, 3);
    assert_eq!(frames[0]["op"], "ok");
    assert_eq!(frames[1]["code"], 403, "chans does not cover sports.a: {}", frames[1]);
    assert_eq!(frames[2]["code"], 403, "no pub claim: {}", frames[2]);
}

#[test]
fn a_session_over_its_buffer_is_closed_as_a_slow_consumer() {
    let gateway = Gateway::start(&["--shards", "1", "--max-frame", "1KiB", "--max-message", "1KiB", "--outbound-limit", "4KiB", "--poll-wait", "1s"]);
    let port = gateway.port;
    let (sid, _) = open(port, "", &[]);
    let channel = format!("lp.{}", crate::common::unique());
    post(port, &sid, json!({"op": "sub", "ch": channel, "id": 1}));
    poll_frames(port, &sid, 1, 1);
    for n in 0..8 {
        publish(port, &channel, json!({"n": n, "pad": "x".repeat(900)}));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric_sum(&metrics(port), "ringcast_closes_total", "reason=\"slow_consumer\"") < 1.0 {
        assert!(Instant::now() < deadline, "never closed");
        // The session is not finished until its close is delivered (or times out).
        if metric_value(&metrics(port), "ringcast_connections") == 0.0 {
            break;
        }
        let (status, answer) = get(port, &sid, 2);
        assert_eq!(status, 200);
        let frames = answer["frames"].as_array().unwrap();
        if let Some(close) = frames.last().filter(|f| f["op"] == "close") {
            assert_eq!(close["code"], 4008, "{close}");
            assert!(close["reason"].as_str().unwrap().contains("backlog"), "{close}");
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric_sum(&metrics(port), "ringcast_closes_total", "reason=\"slow_consumer\"") < 1.0 {
        assert!(Instant::now() < deadline, "the 4008 close was not counted");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(get(port, &sid, 2).0, 404, "the session is gone once its close was delivered");
}

#[test]
fn cors_for_pages_on_another_origin() {
    let gateway = Gateway::start(&["--shards", "1"]);
    let port = gateway.port;
    let (status, head, _) = http(port, "OPTIONS", "/poll/x", &[("Origin", "https://app.example"), ("Access-Control-Request-Method", "POST")], b"");
    assert_eq!(status, 204);
    assert!(head.contains("Access-Control-Allow-Origin: *"), "{head}");
    assert!(head.contains("Access-Control-Allow-Headers: Authorization, Content-Type"), "{head}");
    let (_, head, _) = http(port, "POST", "/poll", &[("Origin", "https://app.example")], b"");
    assert!(head.contains("Access-Control-Allow-Origin: *"), "{head}");

    let listed = Gateway::start(&["--shards", "1", "--cors-origin", "https://app.example, https://other.example"]);
    let (_, head, _) = http(listed.port, "POST", "/poll", &[("Origin", "https://app.example")], b"");
    assert!(head.contains("Access-Control-Allow-Origin: https://app.example") && head.contains("Vary: Origin"), "{head}");
    let (_, head, _) = http(listed.port, "POST", "/poll", &[("Origin", "https://evil.example")], b"");
    assert!(!head.contains("Access-Control-Allow-Origin"), "an unlisted origin gets no CORS grant: {head}");
}

#[test]
fn an_expired_token_closes_the_session_with_1008() {
    let gateway = Gateway::start(&["--shards", "1", "--jwt-secret", SECRET, "--heartbeat", "1s", "--heartbeat-timeout", "3s", "--poll-wait", "2s", "--poll-timeout", "5s"]);
    let port = gateway.port;
    let token = jwt(json!({"sub": "bob", "exp": now_unix() + 2}));
    let (sid, _) = open(port, &format!("?token={token}"), &[]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut ack = 1;
    let close = loop {
        assert!(Instant::now() < deadline, "the session was not closed when its token expired");
        let (status, answer) = get(port, &sid, ack);
        assert_eq!(status, 200, "{answer}");
        ack = answer["next"].as_u64().unwrap();
        if let Some(close) = answer["frames"].as_array().unwrap().iter().find(|f| f["op"] == "close") {
            break close.clone();
        }
    };
    assert_eq!(close["code"], 1008, "{close}");
    assert!(close["reason"].as_str().unwrap().contains("token expired"), "{close}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric_sum(&metrics(port), "ringcast_closes_total", "reason=\"token_expired\"") < 1.0 {
        assert!(Instant::now() < deadline, "the close was not counted");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(get(port, &sid, ack).0, 404);
}

/// A burst that a shard sends in runs (`--coalesce-bytes`: consecutive messages on one
/// channel as one buffer per WebSocket subscriber) still reaches a long-poll session as
/// one numbered frame per message, in order, none lost or doubled.
#[test]
fn a_burst_sent_in_runs_reaches_a_session_one_frame_per_message() {
    use crate::common::nats::{wait_live, NatsClient, SHARED_NATS};
    const BURST: u64 = 1_000;
    let p = format!("t{}", crate::common::unique());
    let gateway = Gateway::start(&["--nats", SHARED_NATS, "--nats-prefix", &p, "--shards", "1", "--poll-wait", "1s"]);
    let port = gateway.port;
    let (sid, _) = open(port, "", &[]);
    assert_eq!(post(port, &sid, json!({"op": "sub", "ch": "lp.burst", "id": 1})), 202);
    let (_, mut ack) = poll_frames(port, &sid, 1, 1);
    // A WebSocket subscriber on the same shard shows when the NATS subscription is live.
    let (mut ws, _) = crate::common::connect(&gateway.url(""));
    assert_eq!(crate::common::request(&mut ws, json!({"op": "sub", "ch": "lp.burst"}), 1)["op"], "ok");
    wait_live(&mut ws, 4222, &format!("{p}.lp.burst"));
    let mut nats = NatsClient::connect(4222);
    for i in 0..BURST {
        nats.publish(&format!("{p}.lp.burst"), format!(r#"{{"i":{i}}}"#).as_bytes());
    }
    nats.flush();
    let mut seen = Vec::new();
    let mut frames_total = 0u64;
    let first_number = ack;
    let deadline = Instant::now() + Duration::from_secs(20);
    while (seen.len() as u64) < BURST {
        assert!(Instant::now() < deadline, "got {} of {BURST}", seen.len());
        let (status, answer) = get(port, &sid, ack);
        assert_eq!(status, 200, "{answer}");
        let batch = answer["frames"].as_array().unwrap();
        frames_total += batch.len() as u64;
        for frame in batch {
            if frame["data"]["probe"] != true {
                seen.push(frame["data"]["i"].as_u64().unwrap());
            }
        }
        ack = answer["next"].as_u64().unwrap();
    }
    assert_eq!(seen, (0..BURST).collect::<Vec<_>>());
    assert_eq!(ack - first_number, frames_total, "one frame number per message");
    let coalesced = metric_value(&metrics(port), "ringcast_coalesced_messages_total{shard=\"0\"}");
    assert!(coalesced > 0.0, "the burst was sent in runs (else this test shows nothing)");
}
