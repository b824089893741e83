//! Metrics after known traffic: connection, frame and delivery counts, the fan-out latency
//! histogram (one observation per delivered copy), refusals and closes by reason, the
//! README's metric table against what `/metrics` serves, the p99 in `$sys.metrics`, and
//! JSON logs.


use crate::common::edge_a::{metric, scrape, spawn_on};
use crate::common::{connect, publish, recv_json, request, unique, Gateway};
use serde_json::json;
use std::time::{Duration, Instant};

#[test]
fn known_traffic_shows_in_connections_frames_deliveries_and_the_latency_histogram() {
    let gateway = Gateway::start(&["--shards", "2", "--max-connections", "100"]);
    let channel = format!("t{}.metrics", unique());
    let mut clients: Vec<_> = (0..4).map(|_| connect(&gateway.url("")).0).collect();
    for (i, client) in clients.iter_mut().enumerate() {
        assert_eq!(request(client, json!({"op": "sub", "ch": channel}), i as u32)["op"], "ok");
    }
    for n in 0..5 {
        publish(gateway.port, &channel, json!(n));
    }
    for client in clients.iter_mut() {
        for n in 0..5 {
            assert_eq!(recv_json(client)["data"], n);
        }
    }
    let m = scrape(gateway.port);
    assert_eq!(metric(&m, "ringcast_connections", &[]), 4.0);
    assert_eq!(metric(&m, "ringcast_shard_connections", &[]), 4.0);
    assert_eq!(metric(&m, "ringcast_connections_max", &[]), 100.0);
    assert_eq!(metric(&m, "ringcast_capacity_ratio", &[]), 0.04);
    assert_eq!(metric(&m, "ringcast_deliveries_total", &[]), 20.0);
    // welcome + ok + 5 messages per client.
    assert_eq!(metric(&m, "ringcast_frames_out_total", &[]), 28.0, "{m}");
    assert_eq!(metric(&m, "ringcast_frames_in_total", &[]), 4.0);
    assert!(metric(&m, "ringcast_bytes_in_total", &[]) > 0.0);
    assert!(metric(&m, "ringcast_bytes_out_total", &[]) > 0.0);
    assert!(metric(&m, "ringcast_accepted_total", &[]) >= 9.0, "4 clients + 5 publishes");
    // The histogram counts every delivered copy, once, per shard.
    let count = metric(&m, "ringcast_fanout_latency_seconds_count", &[]);
    assert_eq!(count, 20.0, "{m}");
    assert_eq!(metric(&m, "ringcast_fanout_latency_seconds_bucket", &["le=\"+Inf\""]), 20.0);
    let sum = metric(&m, "ringcast_fanout_latency_seconds_sum", &[]);
    assert!(sum > 0.0 && sum < 20.0, "20 local deliveries take well under a second each: {sum}");
    for shard in ["0", "1"] {
        let label = format!("shard=\"{shard}\"");
        assert_eq!(
            metric(&m, "ringcast_fanout_latency_seconds_count", &[&label]),
            metric(&m, "ringcast_deliveries_total", &[&label]),
            "per shard too: {m}"
        );
    }
    assert!(m.contains("# TYPE ringcast_fanout_latency_seconds histogram"));
    assert_eq!(metric(&m, "ringcast_draining", &[]), 0.0);
    assert_eq!(metric(&m, "ringcast_accept_rate_per_shard", &[]), 2000.0);
    assert!(m.contains("ringcast_info{node=") && (m.contains("io=\"io_uring\"") || m.contains("io=\"epoll\"")));
    // A client leaving is counted by reason.
    clients.pop().unwrap().close(None).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&scrape(gateway.port), "ringcast_closes_total", &["reason=\"client_closed\""]) != 1.0 {
        assert!(Instant::now() < deadline, "client close not counted");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(metric(&scrape(gateway.port), "ringcast_connections", &[]), 3.0);
}

#[test]
fn every_metric_in_the_readme_table_is_served() {
    let gateway = Gateway::start(&["--shards", "1"]);
    let m = scrape(gateway.port);
    let readme = include_str!("../../README.md");
    let table = readme.split("| metric | type | what |").nth(1).expect("README has a metrics table");
    let mut checked = 0;
    for row in table.lines().skip(1).take_while(|l| l.starts_with('|')) {
        let names = row.split('|').nth(1).unwrap();
        for name in names.split('`').skip(1).step_by(2) {
            let prefix = name.trim_end_matches('*');
            assert!(m.lines().any(|l| l.starts_with("# TYPE ") && l[7..].starts_with(prefix)), "README lists {name}, /metrics has no such family");
            checked += 1;
        }
    }
    assert!(checked >= 30, "{checked}");
}

#[test]
fn the_sys_feed_reports_the_fanout_p99() {
    let gateway = Gateway::start(&["--shards", "1", "--sys-subscribe"]);
    let (mut client, _) = connect(&gateway.url(""));
    assert_eq!(request(&mut client, json!({"op": "sub", "ch": "$sys.metrics"}), 1)["op"], "ok");
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        assert!(Instant::now() < deadline, "no snapshot with fanout_p99_ms");
        let frame = recv_json(&mut client);
        if frame["ch"] != "$sys.metrics" {
            continue;
        }
        // Each snapshot delivered to this client is itself a fan-out the next one measures.
        if let Some(p99) = frame["data"]["fanout_p99_ms"].as_f64() {
            assert!(p99 > 0.0 && p99 < 1000.0, "{frame}");
            break;
        }
    }
}

#[test]
fn log_json_writes_one_json_object_per_line() {
    let mut gateway = spawn_on("127.0.0.1:0", &["--shards", "1", "--log", "info", "--log-json"]);
    let stderr = std::io::BufReader::new(gateway.stderr.take().unwrap());
    let line = std::io::BufRead::lines(stderr).map(Result::unwrap).find(|l| l.contains("gateway started")).expect("a start-up log line");
    let _ = gateway.kill();
    let _ = gateway.wait();
    let value: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(value["level"], "INFO", "{line}");
    assert!(value["timestamp"].is_string(), "{line}");
}
