//! Pusher Channels protocol 7 (issue 16): the wire as the docs and pusher-js define it,
//! checked with a raw WebSocket client (tungstenite) and signed HTTP calls, and the real
//! ecosystem end to end: pusher-js 8, Laravel Echo and the npm `pusher` server library
//! (tests/pusher, installed with `npm ci` from its lock file) against two gateway nodes on
//! the shared nats-server.

use crate::common::edge_a::{metric, scrape};
use crate::common::nats::SHARED_NATS;
use crate::common::presence::wait_until;
use crate::common::*;
use ringcast::transport::pusher::sign;
use serde_json::{json, Value};
use std::net::TcpStream;
use std::time::{Duration, Instant};

pub(crate) const APP_ID: &str = "4242";
pub(crate) const KEY: &str = "test-pusher-key";
pub(crate) const SECRET: &str = "test-pusher-secret";

fn app_flag() -> String {
    format!("{APP_ID}:{KEY}:{SECRET}")
}

/// A gateway serving the test app; on the shared NATS with `prefix` when given.
pub(crate) fn node(prefix: Option<&str>, extra: &[&str]) -> Gateway {
    let app = app_flag();
    let mut args = vec!["--pusher-app", app.as_str(), "--pusher-client-events"];
    if let Some(prefix) = prefix {
        args.extend_from_slice(&["--nats", SHARED_NATS, "--nats-prefix", prefix]);
    }
    args.extend_from_slice(extra);
    let gateway = Gateway::start(&args);
    let ready = wait_until(Duration::from_secs(15), || http(gateway.port, "GET", "/readyz", &[], b"").2.contains("\"ready\""));
    assert!(ready.is_some(), "gateway never ready: {}", http(gateway.port, "GET", "/readyz", &[], b"").2);
    gateway
}

pub(crate) fn pusher_url(port: u16, key: &str, protocol: &str) -> String {
    format!("ws://127.0.0.1:{port}/app/{key}?protocol={protocol}&client=js&version=8.6.0&flash=false")
}

/// Connects and returns the client and its first frame.
pub(crate) fn connect_raw(url: &str) -> (Client, Value) {
    let port: u16 = url.split(':').nth(2).unwrap().split('/').next().unwrap().parse().unwrap();
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    let (mut client, _) = tungstenite::client(url, stream).unwrap_or_else(|e| panic!("upgrade {url}: {e:?}"));
    let first = recv_json(&mut client);
    (client, first)
}

/// A connected Pusher client and its socket id.
pub(crate) fn pusher_client(port: u16) -> (Client, String) {
    let (client, first) = connect_raw(&pusher_url(port, KEY, "7"));
    assert_eq!(first["event"], "pusher:connection_established", "{first}");
    let data: Value = serde_json::from_str(first["data"].as_str().expect("data is a JSON string")).unwrap();
    let socket = data["socket_id"].as_str().unwrap().to_string();
    (client, socket)
}

/// The next frame with this event name within `within`, skipping others; None if none came.
pub(crate) fn next_event(client: &mut Client, event: &str, within: Duration) -> Option<Value> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        client.get_mut().set_read_timeout(Some(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1)))).unwrap();
        match client.read() {
            Ok(tungstenite::Message::Text(text)) => {
                let frame: Value = serde_json::from_str(&text).unwrap();
                if frame["event"] == event {
                    client.get_mut().set_read_timeout(Some(READ_TIMEOUT)).unwrap();
                    return Some(frame);
                }
            }
            Ok(_) => continue,
            Err(_) => break,
        }
    }
    client.get_mut().set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    None
}

/// `data` of a server event: a JSON string (every event but `pusher:error`), parsed.
pub(crate) fn event_data(frame: &Value) -> Value {
    match frame["data"].as_str() {
        Some(text) => serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.into())),
        None => frame["data"].clone(),
    }
}

pub(crate) fn subscribe(client: &mut Client, socket: &str, channel: &str) -> Value {
    let auth = if channel.starts_with("private-") { format!("{KEY}:{}", sign::sign_hex(SECRET, &[socket.as_bytes(), b":", channel.as_bytes()])) } else { String::new() };
    send_json(client, json!({"event": "pusher:subscribe", "data": {"channel": channel, "auth": auth}}));
    loop {
        let frame = recv_json(client);
        if frame["event"] == "pusher_internal:subscription_succeeded" || frame["event"] == "pusher:subscription_error" || frame["event"] == "pusher:error" {
            return frame;
        }
    }
}

/// A signed Pusher HTTP API call, as the server libraries make it.
pub(crate) fn api(port: u16, method: &str, path: &str, body: &[u8], secret: &str, timestamp: u64) -> (u16, String) {
    let mut params = vec![("auth_key".to_string(), KEY.to_string()), ("auth_timestamp".into(), timestamp.to_string()), ("auth_version".into(), "1.0".into())];
    if !body.is_empty() {
        params.push(("body_md5".into(), sign::hex(&sign::md5_digest(body))));
    }
    params.sort();
    let qs = params.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
    let signature = sign::sign_hex(secret, &[format!("{method}\n{path}\n{qs}").as_bytes()]);
    let target = format!("{path}?{qs}&auth_signature={signature}");
    let (status, _head, body) = http(port, method, &target, &[("Content-Type", "application/json")], body);
    (status, body)
}

pub(crate) fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

pub(crate) fn trigger(port: u16, body: Value) -> (u16, String) {
    api(port, "POST", &format!("/apps/{APP_ID}/events"), body.to_string().as_bytes(), SECRET, now_unix())
}

#[test]
fn connection_established_ping_and_refusals() {
    let gateway = node(None, &[]);
    let (mut client, first) = connect_raw(&pusher_url(gateway.port, KEY, "7"));
    assert_eq!(first["event"], "pusher:connection_established");
    let data: Value = serde_json::from_str(first["data"].as_str().expect("data of server events is a string")).unwrap();
    let socket = data["socket_id"].as_str().unwrap();
    let (a, b) = socket.split_once('.').expect("socket id digits.digits");
    assert!(!a.is_empty() && !b.is_empty() && a.bytes().chain(b.bytes()).all(|c| c.is_ascii_digit()), "{socket}");
    assert_eq!(data["activity_timeout"], 120, "pusher-js needs activity_timeout");

    send_json(&mut client, json!({"event": "pusher:ping", "data": {}}));
    let pong = next_event(&mut client, "pusher:pong", Duration::from_secs(5)).expect("pusher:pong");
    assert!(pong["data"].is_string(), "{pong}");

    // Malformed and unknown frames: pusher:error with a message, the connection stays.
    client.send(tungstenite::Message::text("{not json")).unwrap();
    let error = next_event(&mut client, "pusher:error", Duration::from_secs(5)).expect("error for bad JSON");
    assert!(error["data"]["message"].as_str().unwrap().contains("bad frame"), "{error}");
    send_json(&mut client, json!({"event": "pusher:nonsense", "data": {}}));
    let error = next_event(&mut client, "pusher:error", Duration::from_secs(5)).expect("error for unknown event");
    assert!(error["data"]["message"].as_str().unwrap().contains("unknown event"), "{error}");
    // Bad channel names are refused on the channel.
    send_json(&mut client, json!({"event": "pusher:subscribe", "data": {"channel": "has space", "auth": ""}}));
    let refused = next_event(&mut client, "pusher:subscription_error", Duration::from_secs(5)).expect("invalid channel");
    assert_eq!(refused["channel"], "has space");
    assert!(refused["data"].is_string(), "server event data is a JSON string: {refused}");
    assert_eq!(event_data(&refused)["status"], 400, "{refused}");
    send_json(&mut client, json!({"event": "pusher:ping", "data": {}}));
    assert!(next_event(&mut client, "pusher:pong", Duration::from_secs(5)).is_some(), "still served after errors");

    // Unknown key: pusher:error 4001, then close 4001. Old protocol: 4007.
    for (key, protocol, code) in [("no-such-key", "7", 4001), (KEY, "5", 4007), (KEY, "", 4007)] {
        let (mut refused, first) = connect_raw(&pusher_url(gateway.port, key, protocol));
        assert_eq!(first["event"], "pusher:error", "{first}");
        assert_eq!(first["data"]["code"], code, "{first}");
        let closed = loop {
            match refused.read() {
                Ok(tungstenite::Message::Close(frame)) => break frame.map(|f| u16::from(f.code)),
                Ok(_) => continue,
                Err(e) => panic!("expected a close frame, got {e}"),
            }
        };
        assert_eq!(closed, Some(code));
    }
    let metrics = scrape(gateway.port);
    assert!(metric(&metrics, "ringcast_pusher_bad_frames_total", &[&format!("app=\"{APP_ID}\"")]) >= 2.0, "bad frames counted");
    let counted = wait_until(Duration::from_secs(5), || metric(&scrape(gateway.port), "ringcast_closes_total", &["reason=\"refused\""]) >= 3.0);
    assert!(counted.is_some(), "the three refusals are counted under reason=refused");
    assert_eq!(metric(&scrape(gateway.port), "ringcast_pusher_connections", &[&format!("app=\"{APP_ID}\"")]), 1.0, "refused sockets are not app connections");
}

#[test]
fn private_auth_events_exclusion_and_client_events_on_one_node() {
    let gateway = node(None, &["--pusher-client-event-rate", "5"]);
    let (mut a, socket_a) = pusher_client(gateway.port);
    let (mut b, socket_b) = pusher_client(gateway.port);
    let ok = subscribe(&mut a, &socket_a, "private-room");
    assert_eq!(ok["event"], "pusher_internal:subscription_succeeded", "{ok}");
    assert_eq!(ok["channel"], "private-room");
    assert_eq!(subscribe(&mut b, &socket_b, "private-room")["event"], "pusher_internal:subscription_succeeded");

    // A signature for another socket is refused with 401 AuthError.
    let stolen = format!("{KEY}:{}", sign::sign_hex(SECRET, &[socket_a.as_bytes(), b":private-other"]));
    send_json(&mut b, json!({"event": "pusher:subscribe", "data": {"channel": "private-other", "auth": stolen}}));
    let refused = next_event(&mut b, "pusher:subscription_error", Duration::from_secs(5)).expect("subscription_error");
    assert_eq!(refused["channel"], "private-other");
    assert_eq!(event_data(&refused)["type"], "AuthError");
    assert_eq!(event_data(&refused)["status"], 401);
    send_json(&mut b, json!({"event": "pusher:subscribe", "data": {"channel": "private-nothing", "auth": ""}}));
    assert_eq!(event_data(&next_event(&mut b, "pusher:subscription_error", Duration::from_secs(5)).expect("missing auth"))["status"], 401);

    // An API event reaches both; with socket_id, everyone but that socket.
    let (status, body) = trigger(gateway.port, json!({"name": "news", "channels": ["private-room"], "data": "{\"n\":1}"}));
    assert_eq!(status, 200, "{body}");
    for client in [&mut a, &mut b] {
        let event = next_event(client, "news", Duration::from_secs(5)).expect("event delivered");
        assert_eq!(event["channel"], "private-room");
        assert_eq!(event["data"], "{\"n\":1}", "data stays the string the backend sent");
    }
    let (status, _) = trigger(gateway.port, json!({"name": "news2", "channel": "private-room", "data": "x", "socket_id": socket_a}));
    assert_eq!(status, 200);
    assert!(next_event(&mut b, "news2", Duration::from_secs(5)).is_some(), "others get it");
    assert!(next_event(&mut a, "news2", Duration::from_millis(500)).is_none(), "the excluded socket does not");

    // Client events: relayed to others, not echoed; over the rate, 4301.
    send_json(&mut a, json!({"event": "client-typing", "channel": "private-room", "data": {"who": "a"}}));
    let typed = next_event(&mut b, "client-typing", Duration::from_secs(5)).expect("client event relayed");
    assert_eq!(typed["data"]["who"], "a", "{typed}");
    assert!(next_event(&mut a, "client-typing", Duration::from_millis(500)).is_none(), "not echoed to the sender");
    send_json(&mut a, json!({"event": "client-typing", "channel": "public-x", "data": {}}));
    assert!(next_event(&mut a, "pusher:error", Duration::from_secs(5)).is_some(), "client events only on private/presence");
    for _ in 0..10 {
        send_json(&mut a, json!({"event": "client-typing", "channel": "private-room", "data": {}}));
    }
    let closed = loop {
        match a.read() {
            Ok(tungstenite::Message::Close(frame)) => break frame.map(|f| u16::from(f.code)),
            Ok(_) => continue,
            Err(e) => panic!("expected close 4301, got {e}"),
        }
    };
    assert_eq!(closed, Some(4301), "client event rate limit");
    let metrics = scrape(gateway.port);
    let label = format!("app=\"{APP_ID}\"");
    assert!(metric(&metrics, "ringcast_pusher_client_events_total", &[&label]) >= 5.0);
    assert!(metric(&metrics, "ringcast_pusher_client_events_refused_total", &[&label]) >= 1.0);
    assert!(metric(&metrics, "ringcast_pusher_auth_failures_total", &[&label]) >= 2.0);
    assert_eq!(metric(&metrics, "ringcast_pusher_api_events_total", &[&label]), 2.0);
}

#[test]
fn http_api_checks_signature_body_and_bounds() {
    let gateway = node(None, &["--pusher-max-trigger-channels", "3", "--pusher-max-event-data", "1KiB"]);
    let events = format!("/apps/{APP_ID}/events");
    let body = json!({"name": "e", "channel": "c", "data": "d"}).to_string();
    assert_eq!(api(gateway.port, "POST", &events, body.as_bytes(), SECRET, now_unix()).0, 200);
    let (status, text) = api(gateway.port, "POST", &events, body.as_bytes(), "not-the-secret", now_unix());
    assert_eq!(status, 401, "{text}");
    let (status, text) = api(gateway.port, "POST", &events, body.as_bytes(), SECRET, now_unix() - 3600);
    assert_eq!(status, 401, "stale timestamp: {text}");
    assert!(text.contains("auth_timestamp"), "{text}");
    let (status, text) = api(gateway.port, "POST", &events, b"{\"name\":", SECRET, now_unix());
    assert_eq!(status, 400, "bad body: {text}");
    let four = json!({"name": "e", "channels": ["a", "b", "c", "d"], "data": "d"}).to_string();
    let (status, text) = api(gateway.port, "POST", &events, four.as_bytes(), SECRET, now_unix());
    assert_eq!(status, 400, "too many channels: {text}");
    let big = json!({"name": "e", "channel": "c", "data": "x".repeat(2000)}).to_string();
    let (status, text) = api(gateway.port, "POST", &events, big.as_bytes(), SECRET, now_unix());
    assert_eq!(status, 413, "too big: {text}");
    let bad_channel = json!({"name": "e", "channel": "a b", "data": "d"}).to_string();
    assert_eq!(api(gateway.port, "POST", &events, bad_channel.as_bytes(), SECRET, now_unix()).0, 400);
    let batch = json!({"batch": [{"name": "e", "channel": "c1", "data": "1"}, {"name": "e", "channel": "c2", "data": "2"}]}).to_string();
    assert_eq!(api(gateway.port, "POST", &format!("/apps/{APP_ID}/batch_events"), batch.as_bytes(), SECRET, now_unix()).0, 200);
    assert_eq!(api(gateway.port, "POST", "/apps/999/events", body.as_bytes(), SECRET, now_unix()).0, 404, "unknown app");
    // A protocol v1 client cannot reach an app's channels.
    let (mut v1, _) = connect(&gateway.url(""));
    let answer = request(&mut v1, json!({"op": "sub", "ch": format!("$pusher.{APP_ID}.c")}), 1);
    assert_eq!(answer["op"], "err", "{answer}");
    let metrics = scrape(gateway.port);
    let label = format!("app=\"{APP_ID}\"");
    assert_eq!(metric(&metrics, "ringcast_pusher_api_events_total", &[&label]), 3.0);
    assert!(metric(&metrics, "ringcast_pusher_api_refused_total", &[&label]) >= 6.0);
}

/// Reads to the close frame and returns its code (answering it).
pub(crate) fn close_code(client: &mut Client) -> Option<u16> {
    loop {
        match client.read() {
            Ok(tungstenite::Message::Close(frame)) => {
                let _ = client.flush();
                return frame.map(|f| u16::from(f.code));
            }
            Ok(_) => continue,
            Err(e) => panic!("expected a close frame, got {e}"),
        }
    }
}

/// Installs tests/pusher's pinned npm packages once (`npm ci`, only when the lock changed).
pub(crate) fn npm_ready() -> std::path::PathBuf {
    static ONCE: std::sync::Once = std::sync::Once::new();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pusher");
    ONCE.call_once(|| {
        let stamp = dir.join("node_modules/.package-lock.json.source");
        let lock = std::fs::read(dir.join("package-lock.json")).expect("tests/pusher/package-lock.json");
        if std::fs::read(&stamp).ok().as_deref() != Some(&lock[..]) {
            let status = std::process::Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(&dir)
                .status()
                .expect("npm (Node.js) is needed for the Pusher tests: apt-get install nodejs npm");
            assert!(status.success(), "npm ci failed in tests/pusher");
            std::fs::write(&stamp, &lock).unwrap();
        }
    });
    dir
}

#[test]
fn pusher_js_laravel_echo_and_the_server_library_across_two_nodes() {
    let dir = npm_ready();
    let prefix = format!("t{}", unique());
    // Presence across the nodes goes through Redis (members) and NATS (join/leave frames).
    let redis_prefix = crate::common::presence::redis_prefix();
    let redis = ["--redis", crate::common::presence::SHARED_REDIS, "--redis-prefix", redis_prefix.as_str()];
    let node_a = node(Some(&prefix), &redis);
    let node_b = node(Some(&prefix), &redis);
    let config = json!({"a": node_a.port, "b": node_b.port, "appId": APP_ID, "key": KEY, "secret": SECRET, "prefix": prefix});
    let output = std::process::Command::new("node")
        .arg("e2e.mjs")
        .arg(config.to_string())
        .current_dir(&dir)
        .output()
        .expect("run node tests/pusher/e2e.mjs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stdout.lines().rev().find(|l| l.starts_with('{')).unwrap_or_else(|| panic!("no result line; stdout {stdout} stderr {stderr}"));
    let out: Value = serde_json::from_str(line).unwrap();
    assert_eq!(out["ok"], true, "{out:#}\nstderr: {stderr}");
    assert_eq!(out["public_event"], json!({"n": 1, "text": "héllo"}), "{out:#}");
    assert_eq!(out["private_event"], json!({"n": 1, "text": "héllo"}));
    assert_eq!(out["bad_auth"]["status"], 401, "{out:#}");
    assert_eq!(out["excluded_event_other"], json!({"n": 2}));
    assert_eq!(out["excluded_event_self"], false, "socket_id exclusion across nodes");
    assert_eq!(out["client_event_sent"], true);
    assert_eq!(out["client_event"], json!({"who": "a"}));
    assert_eq!(out["client_event_echo"], false, "client events are not echoed");
    assert_eq!(out["echo_event"], json!({"order": 42}), "Laravel Echo got the event");
    assert_eq!(out["bad_api_status"], 401);
    assert_eq!(out["user_event"], json!({"to": "ada"}), "pusher:signin and sendToUser");
    assert_eq!(out["unknown_key"]["code"], 4001, "{out:#}");
    assert_ne!(out["socket_a"], out["socket_c"]);
    // Presence: pusher-js's members object, member events with user_info across nodes,
    // Laravel Echo's join().here(), user_id on client events.
    let ann = format!("ann-{prefix}");
    let bob = format!("bob-{prefix}");
    let cat = format!("cat-{prefix}");
    assert_eq!(out["presence_first"]["count"], 1, "{out:#}");
    assert_eq!(out["presence_first"]["me"], json!({"id": ann, "info": {"name": "Ann"}}), "{out:#}");
    assert_eq!(out["presence_second"], json!({"count": 2, "me": bob, "ids": [ann, bob]}), "{out:#}");
    assert_eq!(out["member_added"], json!({"id": bob, "info": {"name": "Bob"}}), "member_added on node A for a join on node B");
    let mut here: Vec<String> = out["echo_here"].as_array().expect("here() gets a list").iter().map(|u| u["name"].as_str().unwrap_or("?").to_string()).collect();
    here.sort();
    assert_eq!(here, ["Ann", "Bob", "Cat"], "{out:#}");
    assert_eq!(out["member_added_cat"]["id"], json!(cat));
    assert_eq!(out["presence_client_event"]["user_id"], json!(ann), "{out:#}");
    assert_eq!(out["member_removed"]["id"], json!(cat), "{out:#}");
}

#[test]
fn signin_and_server_to_user_channels() {
    let gateway = node(None, &[]);
    let (mut a, socket_a) = pusher_client(gateway.port);
    // Not signed in: the user's channel is refused.
    send_json(&mut a, json!({"event": "pusher:subscribe", "data": {"channel": "#server-to-user-42", "auth": ""}}));
    assert_eq!(event_data(&next_event(&mut a, "pusher:subscription_error", Duration::from_secs(5)).expect("refused before sign-in"))["status"], 401);
    let user_data = r#"{"id":"42","user_info":{"name":"Ada"}}"#;
    let auth = format!("{KEY}:{}", sign::sign_hex(SECRET, &[socket_a.as_bytes(), b"::user::", user_data.as_bytes()]));
    send_json(&mut a, json!({"event": "pusher:signin", "data": {"auth": auth, "user_data": user_data}}));
    let success = next_event(&mut a, "pusher:signin_success", Duration::from_secs(5)).expect("signin_success");
    assert_eq!(event_data(&success)["user_data"], user_data, "{success}");
    // Someone else's channel stays closed; one's own opens with empty auth.
    send_json(&mut a, json!({"event": "pusher:subscribe", "data": {"channel": "#server-to-user-7", "auth": ""}}));
    assert_eq!(event_data(&next_event(&mut a, "pusher:subscription_error", Duration::from_secs(5)).expect("other user's channel"))["status"], 403);
    send_json(&mut a, json!({"event": "pusher:subscribe", "data": {"channel": "#server-to-user-42", "auth": ""}}));
    let ok = next_event(&mut a, "pusher_internal:subscription_succeeded", Duration::from_secs(5)).expect("own channel");
    assert_eq!(ok["channel"], "#server-to-user-42");
    let (status, body) = trigger(gateway.port, json!({"name": "hello", "channel": "#server-to-user-42", "data": "{\"to\":\"ada\"}"}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(next_event(&mut a, "hello", Duration::from_secs(5)).expect("sent to the user")["data"], "{\"to\":\"ada\"}");

    // A bad sign-in: pusher:error 4009, then close 4009.
    let (mut b, socket_b) = pusher_client(gateway.port);
    let forged = format!("{KEY}:{}", sign::sign_hex("not-the-secret", &[socket_b.as_bytes(), b"::user::", user_data.as_bytes()]));
    send_json(&mut b, json!({"event": "pusher:signin", "data": {"auth": forged, "user_data": user_data}}));
    let error = next_event(&mut b, "pusher:error", Duration::from_secs(5)).expect("pusher:error before the close");
    assert_eq!(error["data"]["code"], 4009);
    assert_eq!(close_code(&mut b), Some(4009));
}

/// pusher-js reads close-code ranges: a Pusher client cut as a slow consumer gets 4100
/// (back off, reconnect), never protocol v1's 4008 (in 4000–4099: "do not reconnect").
#[test]
fn slow_consumer_is_closed_in_the_backoff_range() {
    let gateway = node(None, &["--outbound-limit", "64KiB", "--max-message", "32KiB", "--max-frame", "16KiB"]);
    let (mut a, _socket) = pusher_client(gateway.port);
    assert_eq!(subscribe(&mut a, "", "firehose")["event"], "pusher_internal:subscription_succeeded");
    // Stop reading; publish 8 MB, far past what the sockets hold and the 64 KiB bound,
    // then read (quickly: the close handshake waits 5 s at most).
    let data = "x".repeat(8 * 1024);
    let batch: Vec<Value> = (0..10).map(|_| json!({"name": "big", "channel": "firehose", "data": data})).collect();
    for _ in 0..100 {
        let (status, body) = api(gateway.port, "POST", &format!("/apps/{APP_ID}/batch_events"), json!({"batch": batch}).to_string().as_bytes(), SECRET, now_unix());
        assert_eq!(status, 200, "{body}");
    }
    let closed = loop {
        match a.read() {
            Ok(tungstenite::Message::Close(frame)) => break frame.map(|f| u16::from(f.code)),
            Ok(_) => continue,
            Err(e) => panic!("expected a close frame, got {e}"),
        }
    };
    assert_eq!(closed, Some(4100));
    let counted = wait_until(Duration::from_secs(10), || metric(&scrape(gateway.port), "ringcast_closes_total", &["reason=\"slow_consumer\""]) >= 1.0);
    assert!(counted.is_some(), "counted as a slow consumer");
}

/// A virtualenv with tests/pusher/requirements.txt (the PyPI `pusher` library, pinned),
/// made once under target/ (reinstalled when the requirements change).
pub(crate) fn python_ready() -> std::path::PathBuf {
    static ONCE: std::sync::Once = std::sync::Once::new();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = root.join("target/pusher-venv");
    ONCE.call_once(|| {
        let requirements = root.join("tests/pusher/requirements.txt");
        let wanted = std::fs::read(&requirements).expect("tests/pusher/requirements.txt");
        let stamp = venv.join("requirements.installed");
        if std::fs::read(&stamp).ok().as_deref() == Some(&wanted[..]) {
            return;
        }
        let made = std::process::Command::new("python3").args(["-m", "venv"]).arg(&venv).status().expect("python3 is needed for the Pusher tests");
        assert!(made.success(), "python3 -m venv failed (Debian: apt-get install python3-venv)");
        let installed = std::process::Command::new(venv.join("bin/pip")).args(["install", "-q", "--disable-pip-version-check", "-r"]).arg(&requirements).status().unwrap();
        assert!(installed.success(), "pip install -r tests/pusher/requirements.txt failed");
        std::fs::write(&stamp, &wanted).unwrap();
    });
    venv.join("bin/python")
}

pub(crate) fn python_lib(mode: &str, config: Value) -> Value {
    let python = python_ready();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pusher/server_lib.py");
    let output = std::process::Command::new(python).arg(script).arg(mode).arg(config.to_string()).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "server_lib.py {mode} failed: {stdout} {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// The PyPI `pusher` library: its channel signatures (presence channel_data written with
/// spaces, verified over the raw string) and its trigger, trigger_batch and signing.
#[test]
fn python_server_library() {
    let gateway = node(None, &[]);
    let (mut a, socket) = pusher_client(gateway.port);
    let channel = format!("private-py-{}", unique());
    let base = json!({"port": gateway.port, "appId": APP_ID, "key": KEY, "secret": SECRET, "channel": channel});
    let mut config = base.clone();
    config["socket"] = socket.clone().into();
    let auths = python_lib("auth", config);
    send_json(&mut a, json!({"event": "pusher:subscribe", "data": {"channel": channel, "auth": auths["private"]["auth"]}}));
    let ok = next_event(&mut a, "pusher_internal:subscription_succeeded", Duration::from_secs(5)).expect("the library's private auth is accepted");
    assert_eq!(ok["channel"], channel.as_str());
    // Its presence signature is over channel_data exactly as it wrote it (with spaces).
    let presence = &auths["presence"];
    let data = presence["channel_data"].as_str().unwrap();
    assert!(data.contains(": "), "the Python library writes JSON with spaces: {data}");
    let presence_channel = format!("presence-{channel}");
    let signature = presence["auth"].as_str().unwrap().split_once(':').unwrap().1;
    assert!(sign::verify_hex(SECRET, &[socket.as_bytes(), b":", presence_channel.as_bytes(), b":", data.as_bytes()], signature));

    let answers = python_lib("events", base);
    assert!(answers["bad_secret"].as_str().unwrap().starts_with("401"), "{answers}");
    let event = next_event(&mut a, "py-event", Duration::from_secs(5)).expect("trigger from Python");
    assert_eq!(serde_json::from_str::<Value>(event["data"].as_str().unwrap()).unwrap(), json!({"from": "python"}));
    let first = next_event(&mut a, "py-batch", Duration::from_secs(5)).expect("trigger_batch, first");
    let second = next_event(&mut a, "py-batch", Duration::from_secs(5)).expect("trigger_batch, second");
    assert_eq!((first["data"].as_str().unwrap(), second["data"].as_str().unwrap()), ("{\"n\": 1}", "{\"n\": 2}"));
}

/// `[[pusher_apps]]` tables in the config file: per-app client events and a per-node
/// connection quota (4004 past it, room again once a connection closes).
#[test]
fn per_app_switches_from_the_config_file() {
    let dir = std::env::temp_dir().join(format!("ringcast-pusher-apps-{}", unique()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ringcast.toml");
    std::fs::write(
        &path,
        r#"
[[pusher_apps]]
id = 5151
key = "quota-key"
secret = "quota-secret-1"
max_connections = 2

[[pusher_apps]]
id = "5152"
key = "events-key"
secret = "events-secret-2"
client_events = true
"#,
    )
    .unwrap();
    let gateway = Gateway::start(&["--config", path.to_str().unwrap()]);
    let connect = |key: &str| connect_raw(&pusher_url(gateway.port, key, "7"));
    let (first, a) = connect("quota-key");
    let (_second, b) = connect("quota-key");
    assert_eq!((a["event"].clone(), b["event"].clone()), (json!("pusher:connection_established"), json!("pusher:connection_established")));
    let (mut third, refused) = connect("quota-key");
    assert_eq!(refused["event"], "pusher:error", "{refused}");
    assert_eq!(refused["data"]["code"], 4004, "{refused}");
    assert_eq!(close_code(&mut third), Some(4004));
    // The other app has no quota, and its client events are on.
    let (mut x, socket_x) = {
        let (client, first) = connect("events-key");
        let data: Value = serde_json::from_str(first["data"].as_str().unwrap()).unwrap();
        (client, data["socket_id"].as_str().unwrap().to_string())
    };
    let auth = format!("events-key:{}", sign::sign_hex("events-secret-2", &[socket_x.as_bytes(), b":private-room"]));
    send_json(&mut x, json!({"event": "pusher:subscribe", "data": {"channel": "private-room", "auth": auth}}));
    assert!(next_event(&mut x, "pusher_internal:subscription_succeeded", Duration::from_secs(5)).is_some());
    send_json(&mut x, json!({"event": "client-hi", "channel": "private-room", "data": {}}));
    assert!(next_event(&mut x, "pusher:error", Duration::from_millis(500)).is_none(), "client events are on for events-key");
    // A closed connection makes room again.
    drop(first);
    let room = wait_until(Duration::from_secs(5), || {
        let (_client, frame) = connect("quota-key");
        frame["event"] == "pusher:connection_established"
    });
    assert!(room.is_some(), "a slot frees when a connection closes");
    let metrics = scrape(gateway.port);
    assert!(metric(&metrics, "ringcast_pusher_over_quota_total", &["app=\"5151\""]) >= 1.0, "over-quota refusals counted");
    let _ = std::fs::remove_dir_all(&dir);
}
