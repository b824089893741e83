//! The dashboard's server side over real sockets: the embedded assets at `/` and
//! `/ringcast.js` (types, cache headers, ETag revalidation), and the `$sys.metrics` feed
//! (who may subscribe, one snapshot a second, values after known traffic).


use crate::common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

#[test]
fn dashboard_page_is_served_with_its_headers_and_revalidates() {
    let gateway = Gateway::start(&["--shards", "1"]);
    let (status, head, body) = http(gateway.port, "GET", "/", &[], b"");
    assert_eq!(status, 200, "{head}");
    assert_eq!(header(&head, "content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(header(&head, "cache-control"), Some("no-cache"));
    assert!(header(&head, "content-security-policy").unwrap().contains("default-src 'none'"));
    assert!(body.starts_with("<!doctype html>") && body.contains("$sys.metrics"));
    let etag = header(&head, "etag").expect("an ETag").to_string();

    let (status, head, body) = http(gateway.port, "GET", "/", &[("If-None-Match", &etag)], b"");
    assert_eq!(status, 304, "{head}");
    assert!(body.is_empty());
    assert_eq!(header(&head, "etag"), Some(etag.as_str()));
    let (status, _, _) = http(gateway.port, "GET", "/", &[("If-None-Match", "\"stale\"")], b"");
    assert_eq!(status, 200);

    let (status, head, body) = http(gateway.port, "HEAD", "/", &[], b"");
    assert_eq!(status, 200);
    assert!(body.is_empty(), "HEAD has no body");
    assert!(header(&head, "content-length").unwrap().parse::<usize>().unwrap() > 1000);
    let (status, head, _) = http(gateway.port, "POST", "/", &[], b"");
    assert_eq!(status, 405);
    assert_eq!(header(&head, "allow"), Some("GET"));
}

#[test]
fn ringcast_js_is_the_committed_client_file() {
    let gateway = Gateway::start(&["--shards", "1"]);
    let (status, head, body) = http(gateway.port, "GET", "/ringcast.js", &[], b"");
    assert_eq!(status, 200, "{head}");
    assert_eq!(header(&head, "content-type"), Some("text/javascript; charset=utf-8"));
    assert_eq!(header(&head, "cache-control"), Some("public, max-age=300"));
    assert_eq!(header(&head, "x-content-type-options"), Some("nosniff"));
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/clients/js/ringcast.js")).unwrap();
    assert_eq!(body, committed, "the gateway serves exactly the npm package's file");
    let etag = header(&head, "etag").unwrap().to_string();
    let (status, _, _) = http(gateway.port, "GET", "/ringcast.js", &[("If-None-Match", &format!("W/{etag}"))], b"");
    assert_eq!(status, 304, "weak comparison");
}

/// Reads frames until a `$sys.metrics` message arrives; returns its data.
fn next_snapshot(client: &mut Client) -> Value {
    loop {
        let frame = recv_json(client);
        if frame["op"] == "msg" && frame["ch"] == "$sys.metrics" {
            return frame["data"].clone();
        }
    }
}

fn metric(port: u16, name: &str) -> u64 {
    let (_, _, body) = http(port, "GET", "/metrics", &[], b"");
    body.lines()
        .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).map(|v| v.trim().parse().unwrap()))
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

#[test]
fn sys_metrics_feed_reports_known_traffic_once_a_second() {
    let node = format!("dash-{}", std::process::id());
    let gateway = Gateway::start(&["--shards", "2", "--sys-subscribe", "--node", &node]);
    // No JWT secret: every connection is anonymous, and --sys-subscribe lets them in.
    let (mut dashboard, _) = connect(&gateway.url(""));
    let answer = request(&mut dashboard, json!({"op": "sub", "ch": "$sys.metrics"}), 1);
    assert_eq!(answer["op"], "ok", "{answer}");
    let first = next_snapshot(&mut dashboard);
    assert_eq!(first["v"], 1);
    assert_eq!(first["node"], node.as_str());
    assert_eq!(first["interval_ms"], 1000);
    assert_eq!(first["shards"].as_array().unwrap().len(), 2);
    assert!(first["io"] == "io_uring" || first["io"] == "epoll", "{first}");
    assert!(first["connections"].as_u64().unwrap() >= 1, "the dashboard itself: {first}");
    assert!(first["fanout_p99_ms"].is_null() || first["fanout_p99_ms"].is_number());

    // Known traffic: a second subscriber and 20 publishes inside one second.
    let channel = format!("dash.{}", unique());
    let (mut subscriber, _) = connect(&gateway.url(""));
    assert_eq!(request(&mut subscriber, json!({"op": "sub", "ch": channel}), 1)["op"], "ok");
    let _ = next_snapshot(&mut dashboard); // a clean start: counts before this are in it
    for i in 0..20 {
        publish(gateway.port, &channel, json!(i));
    }
    for _ in 0..20 {
        assert_eq!(recv_json(&mut subscriber)["op"], "msg");
    }
    let mut published = 0.0;
    let mut deliveries = 0.0;
    let mut stamps = Vec::new();
    for _ in 0..3 {
        let snapshot = next_snapshot(&mut dashboard);
        published += snapshot["published_per_s"].as_f64().unwrap();
        deliveries += snapshot["deliveries_per_s"].as_f64().unwrap();
        stamps.push(snapshot["ts"].as_u64().unwrap());
        assert_eq!(snapshot["connections"], 2, "{snapshot}");
        let per_shard: u64 = snapshot["shards"].as_array().unwrap().iter().map(|s| s["connections"].as_u64().unwrap()).sum();
        assert_eq!(per_shard, 2);
        assert_eq!(snapshot["drops_total"], 0);
    }
    // Rates are per second over ~1 s intervals, so the sum over the intervals that
    // cover the burst is the count (within the interval's timing jitter).
    assert!((19.0..=21.0).contains(&published), "published/s summed over the burst: {published}");
    // Deliveries: the 20 messages plus the dashboard's own snapshots (one per interval).
    assert!((20.0..=25.0).contains(&deliveries), "deliveries/s summed: {deliveries}");
    for pair in stamps.windows(2) {
        let gap = pair[1] - pair[0];
        assert!((800..=1300).contains(&gap), "snapshots {gap} ms apart, want ~1000");
    }
    assert!(metric(gateway.port, "ringcast_sys_snapshots_total") >= 4);
    assert_eq!(metric(gateway.port, "ringcast_sys_snapshots_dropped_total"), 0);
}

#[test]
fn without_sys_subscribe_there_is_no_feed_and_no_access() {
    let gateway = Gateway::start(&["--shards", "1"]);
    let (mut client, _) = connect(&gateway.url(""));
    let answer = request(&mut client, json!({"op": "sub", "ch": "$sys.metrics"}), 1);
    assert_eq!(answer["op"], "err");
    assert_eq!(answer["code"], 403);
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(metric(gateway.port, "ringcast_sys_snapshots_total"), 0, "no feed thread without sys_subscribe");
}

#[test]
fn with_a_jwt_secret_the_feed_needs_a_token_that_covers_it() {
    let gateway = Gateway::start(&["--shards", "1", "--sys-subscribe", "--jwt-secret", SECRET, "--allow-anonymous"]);
    let exp = now_unix() + 600;
    let sub = |client: &mut Client| request(client, json!({"op": "sub", "ch": "$sys.metrics"}), 7);

    let (mut anonymous, _) = connect(&gateway.url(""));
    let answer = sub(&mut anonymous);
    assert_eq!(answer["code"], 403, "anonymous with a secret configured: {answer}");
    assert!(answer["msg"].as_str().unwrap().contains("token"));

    let cases = [
        (json!({"sub": "ops", "exp": exp}), true),
        (json!({"sub": "ops", "exp": exp, "chans": ["$sys.>"]}), true),
        (json!({"sub": "ops", "exp": exp, "chans": ["$sys.metrics"]}), true),
        (json!({"sub": "ops", "exp": exp, "chans": [">"]}), false),
        (json!({"sub": "ops", "exp": exp, "chans": ["chat.>"]}), false),
    ];
    for (claims, allowed) in cases {
        let (mut client, _) = connect(&gateway.url(&format!("?token={}", jwt(claims.clone()))));
        let answer = sub(&mut client);
        assert_eq!(answer["op"] == "ok", allowed, "{claims}: {answer}");
        if allowed {
            let started = Instant::now();
            let snapshot = next_snapshot(&mut client);
            assert!(started.elapsed() < Duration::from_millis(2500));
            assert_eq!(snapshot["v"], 1);
        }
    }
    let (mut publisher, _) = connect(&gateway.url(&format!("?token={}", jwt(json!({"sub": "ops", "exp": exp, "pub": [">"]})))));
    let answer = request(&mut publisher, json!({"op": "pub", "ch": "$sys.metrics", "data": {"fake": true}}), 9);
    assert_eq!(answer["code"], 403, "clients never publish on $sys: {answer}");
}

/// The feed splits connections by wire protocol (the dashboard's "v1 · Pusher" tile) and
/// counts Pusher events in.
#[test]
fn sys_metrics_feed_splits_connections_by_protocol() {
    use crate::pusher::{pusher_client, subscribe, trigger, APP_ID, KEY, SECRET};
    let app = format!("{APP_ID}:{KEY}:{SECRET}");
    let gateway = Gateway::start(&["--shards", "2", "--sys-subscribe", "--pusher-app", &app]);
    let (mut dashboard, _) = connect(&gateway.url(""));
    assert_eq!(request(&mut dashboard, json!({"op": "sub", "ch": "$sys.metrics"}), 1)["op"], "ok");
    let (mut pusher_a, socket_a) = pusher_client(gateway.port);
    let (_pusher_b, _) = pusher_client(gateway.port);
    assert_eq!(subscribe(&mut pusher_a, &socket_a, "dash-feed")["event"], "pusher_internal:subscription_succeeded");
    let _ = next_snapshot(&mut dashboard);
    for i in 0..6 {
        assert_eq!(trigger(gateway.port, json!({"name": "e", "channel": "dash-feed", "data": i.to_string()})).0, 200);
    }
    let mut events = 0.0;
    for _ in 0..3 {
        let snapshot = next_snapshot(&mut dashboard);
        assert_eq!((snapshot["connections"].clone(), snapshot["v1_connections"].clone(), snapshot["pusher_connections"].clone()), (json!(3), json!(1), json!(2)), "{snapshot}");
        assert_eq!(snapshot["pusher_apps"], 1);
        events += snapshot["pusher_events_per_s"].as_f64().unwrap();
    }
    assert!((5.0..=7.0).contains(&events), "Pusher events/s summed over the burst: {events}");
}
