//! The HTTP side of the gateway: routes, the server API, auth before the upgrade,
//! config errors and graceful shutdown.


use crate::common::*;
use serde_json::json;
use std::time::Duration;

#[test]
fn routes_answer_and_unknown_ones_get_404_or_405() {
    let gateway = Gateway::start(&[]);
    let (status, _, body) = http(gateway.port, "GET", "/healthz", &[], b"");
    assert_eq!((status, body.as_str()), (200, "{\"status\":\"ok\"}"));
    assert_eq!(http(gateway.port, "GET", "/readyz", &[], b"").0, 200);
    let (status, head, body) = http(gateway.port, "HEAD", "/healthz", &[], b"");
    assert_eq!((status, body.as_str()), (200, ""), "HEAD answers the head only");
    assert!(head.contains("Content-Length: 15"), "{head}");
    let (status, head, body) = http(gateway.port, "GET", "/nope", &[], b"");
    assert_eq!(status, 404, "{head}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"]["code"], 404);
    let (status, head, _) = http(gateway.port, "DELETE", "/metrics", &[], b"");
    assert_eq!(status, 405);
    assert!(head.contains("Allow: GET"), "{head}");
    let (status, head, _) = http(gateway.port, "GET", "/api/publish", &[], b"");
    assert_eq!(status, 405);
    assert!(head.contains("Allow: POST"), "{head}");
    let (status, _, _) = http(gateway.port, "GET", "/ws", &[], b"");
    assert_eq!(status, 400, "a GET /ws without upgrade headers is a bad request");
}

#[test]
fn malformed_http_gets_an_error_not_a_hang() {
    let gateway = Gateway::start(&[]);
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", gateway.port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.write_all(b"GARBAGE\r\n\r\n").unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", gateway.port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(20_000));
    let _ = stream.write_all(long.as_bytes());
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    assert!(response.starts_with("HTTP/1.1 414") || response.starts_with("HTTP/1.1 431"), "{response}");
}

#[test]
fn server_api_needs_the_api_key_and_validates_bodies() {
    let gateway = Gateway::start(&[]);
    let body = json!({"ch": "a.b", "data": 1}).to_string();
    let (status, _, text) = http(gateway.port, "POST", "/api/publish", &[], body.as_bytes());
    assert_eq!(status, 401, "{text}");
    let (status, _, _) = http(gateway.port, "POST", "/api/publish", &[("Authorization", "Bearer wrong")], body.as_bytes());
    assert_eq!(status, 401);
    let auth = format!("Bearer {API_KEY}");
    let (status, _, text) = http(gateway.port, "POST", "/api/publish", &[("Authorization", &auth)], b"{\"ch\":\"a..b\",\"data\":1}");
    assert_eq!(status, 400);
    assert!(text.contains("channel"), "{text}");
    let (status, _, text) = http(gateway.port, "POST", "/api/publish", &[("Authorization", &auth)], b"{\"ch\":\"a.b\"}");
    assert_eq!(status, 400, "{text}");
    let (status, _, text) = http(gateway.port, "POST", "/api/publish", &[("Authorization", &auth)], b"not json");
    assert_eq!(status, 400, "{text}");

    let no_key = Gateway::start_without_api_key();
    let (status, _, text) = http(no_key.port, "POST", "/api/publish", &[("Authorization", &auth)], body.as_bytes());
    assert_eq!(status, 403);
    assert!(text.contains("--api-key"), "the error says how to enable the API: {text}");
}

#[test]
fn bad_tokens_get_401_before_the_upgrade() {
    let gateway = Gateway::start(&["--jwt-secret", SECRET]);
    let exp = now_unix() + 600;
    let good = jwt(json!({"sub": "u1", "exp": exp}));
    connect(&gateway.url(&format!("?token={good}")));
    let expired = jwt(json!({"sub": "u1", "exp": now_unix() - 120}));
    let other_secret = ringcast::auth::sign_hs256_for_tests(b"another secret", &json!({"sub": "u1", "exp": exp}));
    for (name, query) in [
        ("missing", String::new()),
        ("expired", format!("?token={expired}")),
        ("wrong signature", format!("?token={other_secret}")),
        ("garbage", "?token=abc.def".to_string()),
    ] {
        match try_connect(&gateway.url(&query)) {
            Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 401, "{name}"),
            Err(other) => panic!("{name}: expected HTTP 401, got {other}"),
            Ok(_) => panic!("{name}: upgrade must be refused"),
        }
    }
    let (status, _, _) = http(gateway.port, "GET", "/ws", &[("Authorization", &format!("Bearer {good}"))], b"");
    assert_eq!(status, 400, "a valid bearer token still needs the upgrade headers");
}

#[test]
fn expired_token_closes_the_session_with_1008() {
    let gateway = Gateway::start(&["--jwt-secret", SECRET, "--heartbeat", "200ms"]);
    let token = jwt(json!({"sub": "u1", "exp": now_unix() + 2}));
    let mut raw = Raw::connect(gateway.port, &format!("?token={token}"));
    // Pings keep arriving; the raw client ignores them until the close.
    let started = std::time::Instant::now();
    assert_eq!(raw.expect_close(), 1008);
    assert!(started.elapsed() < Duration::from_secs(8));
    raw.send_frame(8, true, &1008u16.to_be_bytes());
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let (_, _, metrics) = http(gateway.port, "GET", "/metrics", &[], b"");
        if metrics.lines().any(|l| l.contains("reason=\"token_expired\"") && l.ends_with(" 1")) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "token expiry not counted: {metrics}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn metrics_count_known_traffic() {
    let gateway = Gateway::start(&["--shards", "2"]);
    let channel = format!("t{}.m", unique());
    let (mut client, _) = connect(&gateway.url(""));
    assert_eq!(request(&mut client, json!({"op": "sub", "ch": channel}), 1)["op"], "ok");
    for n in 0..5 {
        publish(gateway.port, &channel, json!(n));
        recv_json(&mut client);
    }
    let (status, head, metrics) = http(gateway.port, "GET", "/metrics", &[], b"");
    assert_eq!(status, 200);
    assert!(head.contains("text/plain"));
    let total = |name: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name) && (l.as_bytes().get(name.len()) == Some(&b' ') || l.as_bytes().get(name.len()) == Some(&b'{')))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64)
            .sum()
    };
    assert_eq!(total("ringcast_connections"), 1);
    assert_eq!(total("ringcast_shard_connections"), 1);
    assert_eq!(total("ringcast_deliveries_total"), 5);
    assert_eq!(total("ringcast_published_total"), 5);
    assert_eq!(total("ringcast_subscriptions"), 1);
    assert_eq!(total("ringcast_broker_patterns"), 1);
    assert!(total("ringcast_frames_in_total") >= 1);
    assert!(total("ringcast_bytes_out_total") > 0);
    assert_eq!(total("ringcast_fanout_queue_drops_total"), 0);
    for name in ["ringcast_capacity_ratio", "ringcast_connections_max", "ringcast_fanout_queue_depth", "ringcast_slow_consumer_closes_total", "ringcast_bridge_queue_depth"] {
        assert!(metrics.contains(&format!("# TYPE {name} ")), "missing {name}");
    }
    // Interest goes away with the last subscriber.
    drop(client);
    std::thread::sleep(Duration::from_millis(300));
    let (_, _, metrics) = http(gateway.port, "GET", "/metrics", &[], b"");
    assert!(metrics.contains("ringcast_broker_patterns 0"), "{metrics}");
}

#[test]
fn sigint_closes_every_connection_with_1001_and_exits_0() {
    // SIGINT is the quick stop; SIGTERM drains with 1012 (tests/drain.rs).
    let mut gateway = Gateway::start(&["--shards", "2"]);
    let mut clients: Vec<Raw> = (0..8).map(|_| Raw::connect(gateway.port, "")).collect();
    gateway.signal(libc::SIGINT);
    for client in clients.iter_mut() {
        assert_eq!(client.expect_close(), 1001);
        // Complete the handshake as a well-behaved client would.
        client.send_frame(8, true, &1001u16.to_be_bytes());
    }
    assert_eq!(gateway.wait_exit(Duration::from_secs(10)), Some(0));
}

#[test]
fn bad_config_is_one_line_naming_the_key_and_exit_2() {
    for (args, key) in [
        (vec!["gateway", "--max-frame", "64XB"], "max_frame"),
        (vec!["gateway", "--heartbeat", "soon"], "heartbeat"),
        (vec!["gateway", "--heartbeat", "30s", "--heartbeat-timeout", "10s"], "heartbeat"),
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_ringcast")).args(&args).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(key), "names {key}: {stderr}");
    }
    // The environment is checked the same way, and names the same key.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ringcast")).arg("gateway").env("RINGCAST_MAX_FRAME", "64XB").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("max_frame"));
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ringcast")).args(["gateway", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in ["--listen", "--shards", "--pin", "--max-connections", "--api-key", "--jwt-secret", "--max-frame", "--outbound-limit", "--heartbeat"] {
        assert!(help.contains(flag), "--help explains {flag}");
    }
}

#[test]
fn doctor_reports_what_to_change_for_a_connection_count() {
    let run = |n: &str| std::process::Command::new(env!("CARGO_BIN_EXE_ringcast")).args(["doctor", "--connections", n]).output().unwrap();
    let small = run("1000");
    let text = String::from_utf8_lossy(&small.stdout);
    for check in ["io_uring", "open files", "fs.nr_open", "net.core.somaxconn", "memory available"] {
        assert!(text.contains(check), "doctor checks {check}: {text}");
    }
    assert_eq!(small.status.code(), Some(0), "a host that runs these tests holds 1,000 connections: {text}");
    // A billion idle connections need terabytes: the memory check must say so, exit 1.
    let huge = run("1000000000");
    let text = String::from_utf8_lossy(&huge.stdout);
    assert_eq!(huge.status.code(), Some(1), "{text}");
    assert!(text.lines().any(|l| l.starts_with("CHANGE memory available")), "{text}");
    assert!(text.contains("gateway processes on the same --listen port") || text.contains("ok     open files"), "{text}");
}
