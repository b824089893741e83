//! Hostile input (issue 18, items 4 to 7): each attack at small scale against a real
//! gateway process, and the bound that stops it (name, config key, metric).

use crate::common::edge_b::{metric_sum, metric_value};
use crate::common::nats::{wait_live, NatsClient};
use crate::common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn metrics(port: u16) -> String {
    http(port, "GET", "/metrics", &[], b"").2
}

fn api_publish(port: u16, body: &Value) -> (u16, String) {
    let auth = format!("Bearer {API_KEY}");
    let (status, _, answer) = http(port, "POST", "/api/publish", &[("Authorization", &auth)], body.to_string().as_bytes());
    (status, answer)
}

fn publisher_token(pattern: &str) -> String {
    jwt(json!({"sub": "mallory", "exp": now_unix() + 600, "pub": [pattern]}))
}

/// The next `msg` frame on `client`, skipping NATS liveness probes.
fn next_msg(client: &mut Client) -> Value {
    loop {
        let frame = recv_json(client);
        if frame["op"] == "msg" && frame["data"]["probe"] != true {
            return frame;
        }
    }
}

fn open_poll(port: u16, query: &str) -> String {
    let (status, _, body) = http(port, "POST", &format!("/poll{query}"), &[], b"");
    assert_eq!(status, 200, "open: {body}");
    serde_json::from_str::<Value>(&body).unwrap()["sid"].as_str().unwrap().to_string()
}

fn post_poll(port: u16, sid: &str, body: &[u8]) -> (u16, String) {
    let (status, _, answer) = http(port, "POST", &format!("/poll/{sid}"), &[("Content-Type", "application/json")], body);
    (status, answer)
}

/// Polls until a frame matching `want` arrives; returns it.
fn poll_until(port: u16, sid: &str, want: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut ack = 0;
    loop {
        assert!(Instant::now() < deadline, "no matching frame on the long-poll session");
        let (status, _, body) = http(port, "GET", &format!("/poll/{sid}?ack={ack}"), &[], b"");
        assert_eq!(status, 200, "{body}");
        let answer: Value = serde_json::from_str(&body).unwrap();
        if let Some(frame) = answer["frames"].as_array().unwrap().iter().find(|f| want(f)) {
            return frame.clone();
        }
        ack = answer["next"].as_u64().unwrap();
    }
}

/// Item 4, at the defaults: a 300 KB publish (over a subscriber's 256 KiB outbound
/// bound) used to be accepted and close every subscriber with 4008. Now /api/publish and
/// a long-poll `pub` refuse it with 413, and the subscriber keeps receiving.
#[test]
fn an_oversized_publish_is_refused_and_subscribers_stay_connected() {
    let gateway = Gateway::start(&["--jwt-secret", SECRET, "--allow-anonymous", "--shards", "1"]);
    let channel = format!("h{}.big", unique());
    let (mut subscriber, _) = connect(&gateway.url(""));
    assert_eq!(request(&mut subscriber, json!({"op": "sub", "ch": channel}), 1)["op"], "ok");
    let big = "x".repeat(300_000);

    let (status, answer) = api_publish(gateway.port, &json!({"ch": channel, "data": big}));
    assert_eq!(status, 413, "{answer}");
    assert!(answer.contains("max_message"), "names the limit: {answer}");

    let sid = open_poll(gateway.port, &format!("?token={}", publisher_token(&channel)));
    let frame = json!([{"op": "pub", "id": 5, "ch": channel, "data": big}]).to_string();
    assert_eq!(post_poll(gateway.port, &sid, frame.as_bytes()).0, 202);
    let err = poll_until(gateway.port, &sid, |f| f["id"] == 5);
    assert_eq!((err["op"].as_str(), err["code"].as_u64()), (Some("err"), Some(413)), "{err}");
    assert!(err["msg"].as_str().unwrap().contains("max_message"), "{err}");

    publish(gateway.port, &channel, json!({"after": true}));
    let msg = next_msg(&mut subscriber);
    assert_eq!(msg["data"]["after"], true, "the subscriber was not cut: {msg}");
    assert_eq!(metric_sum(&metrics(gateway.port), "ringcast_publish_too_large_total", "shard"), 2.0);
}

/// Item 4, the envelope margin: `data` within max_message whose `msg` frame (envelope
/// and a possible seq included) would not fit outbound_limit is answered 413 naming it.
#[test]
fn a_pub_whose_frame_would_not_fit_outbound_limit_answers_413() {
    // 16398 = max_message + the 14-byte frame header: the least the config accepts.
    let gateway = Gateway::start(&["--jwt-secret", SECRET, "--max-frame", "16KiB", "--max-message", "16KiB", "--outbound-limit", "16398"]);
    // A short channel: the whole pub op must stay within max_message (16384 bytes) while
    // its msg frame (14 + 55 + channel + data bytes at most) passes 16398.
    let channel = format!("e{}", unique() % 1000);
    let (mut publisher, _) = connect(&gateway.url(&format!("?token={}", publisher_token(&channel))));
    let answer = request(&mut publisher, json!({"op": "pub", "ch": channel, "data": "y".repeat(16_335)}), 1);
    assert_eq!((answer["op"].as_str(), answer["code"].as_u64()), (Some("err"), Some(413)), "{answer}");
    assert!(answer["msg"].as_str().unwrap().contains("outbound_limit"), "{answer}");
    let answer = request(&mut publisher, json!({"op": "pub", "ch": channel, "data": "y".repeat(15_000)}), 2);
    assert_eq!(answer["op"], "ok", "{answer}");
}

/// Item 4, NATS ingress: any NATS client can publish on the prefix. A message whose frame
/// is larger than outbound_limit is dropped and counted instead of closing subscribers.
#[test]
fn an_oversized_message_from_nats_is_dropped_and_counted() {
    let prefix = format!("t{}", unique());
    let gateway = Gateway::start(&["--nats", "nats://127.0.0.1:4222", "--nats-prefix", &prefix, "--shards", "1"]);
    let (mut subscriber, _) = connect(&gateway.url(""));
    assert_eq!(request(&mut subscriber, json!({"op": "sub", "ch": "big.x"}), 1)["op"], "ok");
    let subject = format!("{prefix}.big.x");
    wait_live(&mut subscriber, 4222, &subject);
    let mut nats = NatsClient::connect(4222);
    let payload = json!({"blob": "z".repeat(300_000)}).to_string();
    nats.publish(&subject, payload.as_bytes());
    nats.publish(&subject, br#"{"after":true}"#);
    nats.flush();
    let msg = next_msg(&mut subscriber);
    assert_eq!(msg["data"]["after"], true, "only the small message arrives, on a live connection: {msg}");
    assert_eq!(metric_value(&metrics(gateway.port), "ringcast_oversize_dropped_total"), 1.0);
}

/// Item 4, config: outbound_limit below max_message + header refuses to start and says
/// which keys to change.
#[test]
fn a_max_message_that_outbound_limit_cannot_hold_refuses_to_start() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["gateway", "--listen", "127.0.0.1:0", "--max-message", "1MiB"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("outbound_limit") && stderr.contains("max_message"), "{stderr}");
}

/// Item 5: only the server publishes on `$…`: the API answers 403 (it answered 202 for
/// `$sys.metrics`, forging the dashboard's feed), and so does `pub`.
#[test]
fn server_channels_are_refused_at_the_api_and_pub() {
    let gateway = Gateway::start(&["--jwt-secret", SECRET, "--sys-subscribe"]);
    for channel in ["$sys.metrics", "$pres.room"] {
        let (status, answer) = api_publish(gateway.port, &json!({"ch": channel, "data": {"node": "forged"}}));
        assert_eq!(status, 403, "{channel}: {answer}");
    }
    let (mut client, _) = connect(&gateway.url(&format!("?token={}", publisher_token(">"))));
    let answer = request(&mut client, json!({"op": "pub", "ch": "$sys.metrics", "data": {"node": "forged"}}), 1);
    assert_eq!(answer["code"], 403, "{answer}");
}

/// Item 5: the dashboard's CSP allows no inline script; its script is a served file.
#[test]
fn the_dashboard_runs_no_inline_script() {
    let gateway = Gateway::start(&[]);
    let (status, head, body) = http(gateway.port, "GET", "/", &[], b"");
    assert_eq!(status, 200);
    let csp = head.lines().find_map(|l| l.strip_prefix("Content-Security-Policy: ")).expect("a CSP").to_string();
    let scripts = csp.split(';').find(|d| d.trim().starts_with("script-src")).expect("script-src").to_string();
    assert!(!scripts.contains("unsafe-inline"), "{csp}");
    assert!(!body.contains("<script>"), "no inline script element");
    let (status, head, js) = http(gateway.port, "GET", "/dashboard.js", &[], b"");
    assert_eq!(status, 200);
    assert!(head.contains("text/javascript"), "{head}");
    assert!(js.contains("$sys.metrics") && !js.contains("innerHTML"), "renders feed data as text only");
}

/// Item 6: a POST of many tiny frames costs at most its parse up to the cap (twice
/// client_rate) and is refused whole with 413; the session goes on working.
#[test]
fn a_long_poll_post_of_many_tiny_frames_is_refused_and_the_session_still_works() {
    let gateway = Gateway::start(&["--client-rate", "50", "--shards", "1"]);
    let sid = open_poll(gateway.port, "");
    let flood = format!("[{}]", vec!["{}"; 5000].join(","));
    let (status, answer) = post_poll(gateway.port, &sid, flood.as_bytes());
    assert_eq!(status, 413, "{answer}");
    assert!(answer.contains("100") && answer.contains("client_rate"), "names the bound: {answer}");
    // Exactly the cap is accepted, and every frame is answered.
    let pings: Vec<Value> = (1..=100).map(|id| json!({"op": "ping", "id": id})).collect();
    assert_eq!(post_poll(gateway.port, &sid, Value::Array(pings).to_string().as_bytes()).0, 202);
    let last = poll_until(gateway.port, &sid, |f| f["id"] == 100);
    assert_eq!(last["op"], "pong", "{last}");
    assert_eq!(metric_sum(&metrics(gateway.port), "ringcast_poll_posts_too_many_frames_total", "shard"), 1.0);
}

/// Item 6: a rate-limited op is answered 429 with its id (read without parsing the op).
#[test]
fn rate_limited_ops_keep_their_id() {
    let gateway = Gateway::start(&["--client-rate", "1"]);
    let (mut client, _) = connect(&gateway.url(""));
    let mut codes = Vec::new();
    for id in 1..=3u32 {
        send_json(&mut client, json!({"id": id, "op": "ping", "pad": "p".repeat(1000)}));
        let answer = recv_json(&mut client);
        assert_eq!(answer["id"], id, "{answer}");
        codes.push(answer["code"].as_u64().unwrap_or(0));
    }
    assert_eq!(codes, vec![0, 0, 429], "a burst of two, then refused");
}

fn upgrade_status(gateway: &Gateway, token: &str) -> u16 {
    match try_connect(&gateway.url(&format!("?token={token}"))) {
        Ok(_) => 101,
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("{e}"),
    }
}

/// Item 7: `nbf` in the future is refused (it was ignored); `--jwt-audience` and
/// `--jwt-issuer` require the matching claims.
#[test]
fn jwt_nbf_audience_and_issuer_are_enforced() {
    let plain = Gateway::start(&["--jwt-secret", SECRET]);
    let exp = now_unix() + 600;
    assert_eq!(upgrade_status(&plain, &jwt(json!({"sub": "a", "exp": exp, "nbf": now_unix() + 300}))), 401);
    assert_eq!(upgrade_status(&plain, &jwt(json!({"sub": "a", "exp": exp, "nbf": now_unix() - 5}))), 101);

    let strict = Gateway::start(&["--jwt-secret", SECRET, "--jwt-audience", "realtime", "--jwt-issuer", "auth.example"]);
    assert_eq!(upgrade_status(&strict, &jwt(json!({"sub": "a", "exp": exp, "aud": "realtime", "iss": "auth.example"}))), 101);
    assert_eq!(upgrade_status(&strict, &jwt(json!({"sub": "a", "exp": exp, "aud": "billing", "iss": "auth.example"}))), 401);
    assert_eq!(upgrade_status(&strict, &jwt(json!({"sub": "a", "exp": exp, "iss": "auth.example"}))), 401);
    assert_eq!(upgrade_status(&strict, &jwt(json!({"sub": "a", "exp": exp, "aud": "realtime"}))), 401);
}

fn raw_exchange(port: u16, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    stream.write_all(request).unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    String::from_utf8_lossy(&response).to_string()
}

/// Item 7: framing a proxy may read differently is refused, and a request that asks to
/// close gets `Connection: close` (it was told keep-alive) and a closed socket.
#[test]
fn http_framing_and_connection_close() {
    let gateway = Gateway::start(&[]);
    let bare_lf = raw_exchange(gateway.port, b"GET /healthz HTTP/1.1\nHost: x\n\n");
    assert!(bare_lf.starts_with("HTTP/1.1 400"), "{bare_lf}");
    let no_host = raw_exchange(gateway.port, b"GET /healthz HTTP/1.1\r\n\r\n");
    assert!(no_host.starts_with("HTTP/1.1 400") && no_host.contains("Host"), "{no_host}");
    // read_to_end returns only because the server closed after the answer.
    let closing = raw_exchange(gateway.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(closing.starts_with("HTTP/1.1 200"), "{closing}");
    assert!(closing.contains("\r\nConnection: close\r\n") && !closing.contains("keep-alive"), "{closing}");
    let (status, head, _) = http(gateway.port, "POST", "/poll", &[], b"");
    assert_eq!(status, 200);
    assert!(head.contains("Connection: close"), "every route: {head}");
}

// ---------------------------------------------------------------------------------------
// Items 1-3: node-wide bounds (the `guard` module).
// ---------------------------------------------------------------------------------------

/// A 16-token channel name unique to this test run, `~100` bytes.
fn long_name(run: u64, i: usize) -> String {
    let mut tokens: Vec<String> = (0..15).map(|t| format!("t{t}x{run}")).collect();
    tokens.push(format!("n{i}"));
    tokens.join(".")
}

fn sub_answer(client: &mut Client, channel: &str, id: u32) -> Value {
    request(client, json!({"op": "sub", "ch": channel}), id)
}

fn eventually(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Item 1: subscriptions have a node-wide count. Past it a `sub` answers `err` 503 naming
/// max_node_subscriptions (counted), and every way a subscription ends gives its place
/// back: unsub and connection close.
#[test]
fn node_wide_subscription_count_answers_503_and_is_given_back() {
    let gateway = Gateway::start(&["--max-node-subscriptions", "50", "--client-rate", "100000"]);
    let run = unique();
    let (mut first, _) = connect(&gateway.url(""));
    let (mut second, _) = connect(&gateway.url(""));
    for i in 0..30 {
        assert_eq!(sub_answer(&mut first, &format!("a{run}.{i}"), i as u32)["op"], "ok");
    }
    let mut refused = Vec::new();
    for i in 0..30 {
        let answer = sub_answer(&mut second, &format!("b{run}.{i}"), i as u32);
        if answer["op"] != "ok" {
            refused.push(answer);
        }
    }
    assert_eq!(refused.len(), 10, "{refused:?}");
    assert_eq!(refused[0]["code"], 503, "{}", refused[0]);
    assert!(refused[0]["msg"].as_str().unwrap().contains("max_node_subscriptions"), "{}", refused[0]);
    let scrape = metrics(gateway.port);
    assert_eq!(metric_value(&scrape, "ringcast_node_subscriptions"), 50.0);
    assert_eq!(metric_value(&scrape, "ringcast_subscriptions_refused_total{reason=\"node_subscriptions\"}"), 10.0);

    // Unsub gives one place back.
    assert_eq!(request(&mut first, json!({"op": "unsub", "ch": format!("a{run}.0")}), 100)["op"], "ok");
    assert_eq!(sub_answer(&mut second, &format!("b{run}.again"), 101)["op"], "ok");
    assert_eq!(sub_answer(&mut second, &format!("b{run}.over"), 102)["code"], 503);
    // Closing a connection gives back all of its places.
    drop(first);
    eventually(Duration::from_secs(5), "the closed connection's subscriptions released", || {
        metric_value(&metrics(gateway.port), "ringcast_node_subscriptions") == 21.0
    });
    assert!(metric_value(&metrics(gateway.port), "ringcast_node_subscription_bytes") > 0.0);
    for i in 0..29 {
        assert_eq!(sub_answer(&mut second, &format!("c{run}.{i}"), 200 + i)["op"], "ok", "place {i}");
    }
    assert_eq!(sub_answer(&mut second, &format!("c{run}.over"), 300)["code"], 503);
}

/// Item 1, the attack at small scale: long-poll sessions each posting `sub` frames for
/// unique 16-token names. The node's subscription memory stops at max_subscription_bytes
/// (503, counted) and every session's patterns at max_pattern_bytes (413, counted).
#[test]
fn unique_long_names_stop_at_the_node_byte_bound_and_the_pattern_budget() {
    let gateway = Gateway::start(&["--max-subscription-bytes", "64KiB", "--max-pattern-bytes", "4KiB", "--client-rate", "100000", "--shards", "2"]);
    let run = 100 + unique() % 900; // three digits: the names' length (asserted below) must not depend on the draw
    let mut codes: std::collections::BTreeMap<u64, usize> = Default::default();
    let mut messages = Vec::new();
    for session in 0..6 {
        let sid = open_poll(gateway.port, "");
        let frames: Vec<Value> = (0..60).map(|i| json!({"op": "sub", "id": i + 1, "ch": long_name(run, session * 100 + i)})).collect();
        assert_eq!(post_poll(gateway.port, &sid, Value::Array(frames).to_string().as_bytes()).0, 202);
        let mut ack = 0;
        let mut answered = 0;
        while answered < 60 {
            let (status, _, body) = http(gateway.port, "GET", &format!("/poll/{sid}?ack={ack}"), &[], b"");
            assert_eq!(status, 200, "{body}");
            let answer: Value = serde_json::from_str(&body).unwrap();
            for frame in answer["frames"].as_array().unwrap().iter().filter(|f| f["id"].is_u64()) {
                answered += 1;
                *codes.entry(frame["code"].as_u64().unwrap_or(200)).or_default() += 1;
                if frame["op"] == "err" {
                    messages.push(frame["msg"].as_str().unwrap().to_string());
                }
            }
            ack = answer["next"].as_u64().unwrap();
        }
    }
    let name_bytes = long_name(run, 100).len();
    assert!(name_bytes > 100 && name_bytes <= 200, "{name_bytes}");
    // The first session alone passes its pattern budget; by the third the node is full.
    assert!(codes[&413] >= 60 - 4096 / name_bytes, "pattern budget: {codes:?}");
    assert!(codes.get(&503).copied().unwrap_or(0) >= 60, "node bytes: {codes:?}");
    assert!(messages.iter().any(|m| m.contains("max_pattern_bytes")), "{messages:?}");
    assert!(messages.iter().any(|m| m.contains("max_subscription_bytes")), "{messages:?}");
    let scrape = metrics(gateway.port);
    let bytes = metric_value(&scrape, "ringcast_node_subscription_bytes");
    assert!(bytes > 32.0 * 1024.0 && bytes <= 64.0 * 1024.0, "charged {bytes} bytes");
    assert_eq!(metric_value(&scrape, "ringcast_subscriptions_refused_total{reason=\"node_bytes\"}"), codes[&503] as f64);
    assert_eq!(metric_value(&scrape, "ringcast_subscriptions_refused_total{reason=\"pattern_bytes\"}"), codes[&413] as f64);
}

/// Item 1: on a node that issues tokens, a connection without one has a lower
/// subscription count (413 naming max_anonymous_subscriptions); with a token the usual
/// max_subscriptions applies.
#[test]
fn anonymous_connections_have_a_lower_subscription_cap() {
    let gateway = Gateway::start(&["--jwt-secret", SECRET, "--allow-anonymous", "--max-anonymous-subscriptions", "3"]);
    let run = unique();
    let (mut anonymous, _) = connect(&gateway.url(""));
    for i in 0..3 {
        assert_eq!(sub_answer(&mut anonymous, &format!("p{run}.{i}"), i)["op"], "ok");
    }
    let refused = sub_answer(&mut anonymous, &format!("p{run}.3"), 3);
    assert_eq!(refused["code"], 413, "{refused}");
    assert!(refused["msg"].as_str().unwrap().contains("max_anonymous_subscriptions"), "{refused}");
    let token = jwt(json!({"sub": "reader", "exp": now_unix() + 600}));
    let (mut known, _) = connect(&gateway.url(&format!("?token={token}")));
    for i in 0..5 {
        assert_eq!(sub_answer(&mut known, &format!("p{run}.{i}"), i)["op"], "ok");
    }
    assert_eq!(metric_value(&metrics(gateway.port), "ringcast_subscriptions_refused_total{reason=\"anonymous\"}"), 1.0);
}

/// Item 2: one client opening sessions it never polls used to hold every slot of the node
/// for poll_timeout (60 s). Now sessions per client are bounded (429 with Retry-After),
/// a session never polled expires after poll_open_timeout, and a WebSocket client gets in
/// within seconds; a polled session lives on.
#[test]
fn unpolled_long_poll_sessions_do_not_hold_the_node() {
    let gateway = Gateway::start(&["--max-connections", "8", "--poll-sessions-per-client", "8", "--poll-open-timeout", "1s", "--poll-wait", "300ms", "--shards", "1"]);
    let mut statuses = Vec::new();
    let mut refusal = String::new();
    for _ in 0..20 {
        let (status, head, body) = http(gateway.port, "POST", "/poll", &[], b"");
        if status == 429 {
            assert!(head.contains("Retry-After:"), "{head}");
            refusal = body;
        }
        statuses.push(status);
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 8, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 12, "{statuses:?}");
    assert!(refusal.contains("poll_sessions_per_client"), "{refusal}");
    // The node is full now...
    assert!(matches!(try_connect(&gateway.url("")), Err(tungstenite::Error::Http(r)) if r.status() == 503));
    // ...for about poll_open_timeout, not poll_timeout.
    let started = Instant::now();
    eventually(Duration::from_secs(4), "a WebSocket client gets in", || try_connect(&gateway.url("")).is_ok());
    eprintln!("a WebSocket client got in {:?} after the sessions were opened", started.elapsed());
    let scrape = metrics(gateway.port);
    assert_eq!(metric_value(&scrape, "ringcast_poll_sessions_unpolled_expired_total"), 8.0);
    assert_eq!(metric_value(&scrape, "ringcast_poll_sessions_per_client_refused_total"), 12.0);
    // A session that is polled does not expire at poll_open_timeout.
    let sid = open_poll(gateway.port, "");
    assert_eq!(http(gateway.port, "GET", &format!("/poll/{sid}?ack=1"), &[], b"").0, 200);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(http(gateway.port, "GET", &format!("/poll/{sid}?ack=1"), &[], b"").0, 200, "a polled session lives on");
}

/// Item 3: sockets in the HTTP phase are bounded node-wide; past the bound a new socket
/// is answered 503 with Retry-After (not left to run the process out of descriptors).
#[test]
fn http_sockets_past_max_http_connections_get_503() {
    let gateway = Gateway::start(&["--max-http-connections", "4"]);
    let idle: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(("127.0.0.1", gateway.port)).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    // The answer may come before the request is even sent: tolerate a reset after it.
    let mut extra = TcpStream::connect(("127.0.0.1", gateway.port)).unwrap();
    extra.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    let _ = extra.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut answer = Vec::new();
    let _ = extra.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("Retry-After:") && answer.contains("max_http_connections"), "{answer}");
    drop(idle);
    eventually(Duration::from_secs(5), "room again", || http(gateway.port, "GET", "/healthz", &[], b"").0 == 200);
    let scrape = metrics(gateway.port);
    assert!(metric_value(&scrape, "ringcast_http_connections_refused_total") >= 1.0, "{scrape}");
}

/// Item 3: a client that pipelines requests and never reads its answers used to keep its
/// socket (and MBs of kernel buffers) forever. Now the answer that cannot be written
/// within http_write_timeout resets the socket, counted.
#[test]
fn a_client_that_never_reads_is_cut_at_the_write_deadline() {
    let gateway = Gateway::start(&["--http-write-timeout", "1s", "--max-pipelined-requests", "100000", "--shards", "1"]);
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let address: std::net::SocketAddr = ([127, 0, 0, 1], gateway.port).into();
    socket.connect(&address.into()).unwrap();
    let mut stream: TcpStream = socket.into();
    stream.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let pipelined = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(3000);
    let _ = stream.write_all(pipelined.as_bytes()); // may block once the server stops reading
    eventually(Duration::from_secs(8), "the write deadline passed and was counted", || {
        metric_value(&metrics(gateway.port), "ringcast_http_write_timeouts_total") == 1.0
    });
    // The socket is gone from the node: only the scrape itself is in the HTTP phase.
    assert_eq!(metric_value(&metrics(gateway.port), "ringcast_http_connections"), 1.0);
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut sink = vec![0u8; 1 << 16];
    let ended = loop {
        match stream.read(&mut sink) {
            Ok(0) => break "eof",
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break "reset",
            Err(e) => panic!("the socket was not closed: {e}"),
        }
    };
    eprintln!("the client saw its socket end: {ended}");
}

/// Item 3: requests pipelined past max_pipelined_requests are answered 429 and the socket
/// is closed (counted); those before it are answered.
#[test]
fn pipelined_requests_past_the_bound_are_refused() {
    let gateway = Gateway::start(&["--max-pipelined-requests", "4"]);
    let answer = raw_exchange(gateway.port, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".repeat(10).as_bytes());
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 5, "{answer}");
    assert!(answer.contains("HTTP/1.1 429") && answer.contains("max_pipelined_requests"), "{answer}");
    assert_eq!(metric_value(&metrics(gateway.port), "ringcast_http_pipeline_refused_total"), 1.0);
}
