//! `nid` idempotency across gateway nodes: two gateways on the real RabbitMQ
//! (127.0.0.1:5672) sharing the real Redis (127.0.0.1:6379), one queue prefix per test.
//! What reaches RabbitMQ is counted by RabbitMQ itself (a passive declare of `.work`).

use crate::common::lane::{delete_queues, lane_metric, notify, prefix, AMQP};
use crate::common::presence::SHARED_REDIS;
use crate::common::{http, Gateway, API_KEY};
use serde_json::json;
use std::time::{Duration, Instant};

struct Pair {
    lane_prefix: String,
    a: Gateway,
    b: Gateway,
}

impl Pair {
    /// Two gateways on one queue prefix; `redis` None = no shared store.
    fn start(name: &str, redis: Option<&str>) -> Pair {
        let lane_prefix = prefix(name);
        let redis_prefix = format!("{lane_prefix}.presence");
        let mut args = vec!["--amqp", AMQP, "--lane-prefix", &lane_prefix];
        if let Some(url) = redis {
            args.extend(["--redis", url, "--redis-prefix", &redis_prefix]);
        }
        let a = Gateway::start(&args);
        let b = Gateway::start(&args);
        for gateway in [&a, &b] {
            wait_accepting(gateway.port);
        }
        Pair { lane_prefix, a, b }
    }

    /// Messages in `{prefix}.work`, as RabbitMQ counts them.
    fn work_queue_len(&self) -> u32 {
        let queue = format!("{}.work", self.lane_prefix);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let conn = lapin::Connection::connect(AMQP, Default::default()).await.expect("RabbitMQ (bash scripts/services.sh starts it)");
            let channel = conn.create_channel().await.unwrap();
            let options = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
            let queue = channel.queue_declare(queue.as_str().into(), options, Default::default()).await.unwrap();
            let _ = conn.close(200, "done".into()).await;
            queue.message_count()
        })
    }

    fn accepted(&self) -> f64 {
        lane_metric(self.a.port, "accepted_total") + lane_metric(self.b.port, "accepted_total")
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        delete_queues(AMQP, &self.lane_prefix, Duration::from_secs(1), Duration::from_secs(300));
    }
}

/// Waits until the gateway's RabbitMQ link is up (a probe notification to a throwaway
/// user is accepted).
fn wait_accepting(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, answer) = notify(port, json!({"user": "probe", "data": 0}));
        if status == 202 {
            return;
        }
        assert!(Instant::now() < deadline, "gateway never accepted a notification: {status} {answer}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// POSTs until the answer is not 409 (at most 20 s); returns the final status and how
/// many 409s came first.
fn notify_until_settled(port: u16, body: &serde_json::Value) -> (u16, u32) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut conflicts = 0;
    loop {
        let (status, answer) = notify(port, body.clone());
        if status != 409 {
            return (status, conflicts);
        }
        assert!(answer["error"]["msg"].as_str().unwrap_or("").contains("resend"), "409 says what to do: {answer}");
        conflicts += 1;
        assert!(Instant::now() < deadline, "still 409 after 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_nid_resent_to_another_node_is_not_enqueued_twice() {
    let pair = Pair::start("nids-two", Some(SHARED_REDIS));
    let before = (pair.work_queue_len(), pair.accepted());
    let body = json!({"user": "alice", "data": {"order": 17}, "nid": "order-17"});
    let (first, answer) = notify(pair.a.port, body.clone());
    assert_eq!((first, answer["nid"].as_str()), (202, Some("order-17")), "{answer}");
    let (again, answer) = notify(pair.b.port, body.clone());
    assert_eq!((again, answer["nid"].as_str()), (202, Some("order-17")), "the resend through node b: {answer}");
    assert_eq!(notify(pair.a.port, body).0, 202);
    assert_eq!(pair.accepted() - before.1, 1.0, "accepted once over both nodes");
    assert_eq!(lane_metric(pair.b.port, "duplicates_total"), 1.0);
    assert_eq!(pair.work_queue_len() - before.0, 1, "one message in RabbitMQ");
    // A new nid through b is accepted normally.
    assert_eq!(notify(pair.b.port, json!({"user": "alice", "data": 1, "nid": "order-18"})).0, 202);
    assert_eq!(pair.work_queue_len() - before.0, 2);
    // Only nids the caller chose are claimed in Redis: the start-up probes and this one,
    // whose nids the gateway generated, cost no Redis round trip.
    assert_eq!(notify(pair.a.port, json!({"user": "alice", "data": 2})).0, 202);
    let mut redis = ::redis::Client::open(SHARED_REDIS).unwrap().get_connection().unwrap();
    let mut keys: Vec<String> = ::redis::cmd("KEYS").arg(format!("{}:nid:*", pair.lane_prefix)).query(&mut redis).unwrap();
    keys.sort();
    assert_eq!(keys, [format!("{}:nid:order-17", pair.lane_prefix), format!("{}:nid:order-18", pair.lane_prefix)]);
    let _: () = ::redis::cmd("DEL").arg(&keys).query(&mut redis).unwrap();
}

#[test]
fn without_redis_each_node_remembers_only_its_own_nids() {
    // The documented limit, shown so that the test above can fail: a resend through the
    // other node is enqueued again.
    let pair = Pair::start("nids-local", None);
    let before = pair.work_queue_len();
    let body = json!({"user": "alice", "data": 1, "nid": "order-1"});
    assert_eq!(notify(pair.a.port, body.clone()).0, 202);
    assert_eq!(notify(pair.a.port, body.clone()).0, 202);
    assert_eq!(lane_metric(pair.a.port, "duplicates_total"), 1.0);
    assert_eq!(notify(pair.b.port, body).0, 202);
    assert_eq!(pair.work_queue_len() - before, 2);
}

#[test]
fn concurrent_resends_through_both_nodes_enqueue_once() {
    let pair = Pair::start("nids-race", Some(SHARED_REDIS));
    let before = (pair.work_queue_len(), pair.accepted());
    let rounds = 5;
    let mut conflicts = 0;
    for round in 0..rounds {
        let body = json!({"user": "bob", "data": round, "nid": format!("race-{round}")});
        let ports = [pair.a.port, pair.b.port];
        let outcomes: Vec<(u16, u32)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..16).map(|i| {
                let body = body.clone();
                s.spawn(move || notify_until_settled(ports[i % 2], &body))
            }).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(outcomes.iter().all(|(status, _)| *status == 202), "round {round}: {outcomes:?}");
        conflicts += outcomes.iter().map(|(_, c)| c).sum::<u32>();
    }
    assert_eq!(pair.accepted() - before.1, rounds as f64, "each nid accepted once ({conflicts} 409s on the way)");
    assert_eq!(pair.work_queue_len() - before.0, rounds);
    let counted = lane_metric(pair.a.port, "in_progress_total") + lane_metric(pair.b.port, "in_progress_total");
    assert_eq!(counted, conflicts as f64, "every 409 is counted");
}

#[test]
fn a_claim_left_by_a_dead_node_lapses_and_the_resend_is_accepted() {
    let pair = Pair::start("nids-crash", Some(SHARED_REDIS));
    let before = pair.work_queue_len();
    // What a node that died between its claim and the broker's confirm leaves behind
    // (its claim, with the expiry shortened from 15 s so the test is quick).
    let mut redis = ::redis::Client::open(SHARED_REDIS).unwrap().get_connection().unwrap();
    let key = format!("{}:nid:crash-1", pair.lane_prefix);
    let _: () = ::redis::cmd("SET").arg(&key).arg("p:dead-node:1").arg("PX").arg(1500).query(&mut redis).unwrap();
    let body = json!({"user": "carol", "data": 1, "nid": "crash-1"});
    let auth = format!("Bearer {API_KEY}");
    let (status, headers, text) = http(pair.b.port, "POST", "/api/notify", &[("Authorization", &auth)], body.to_string().as_bytes());
    assert_eq!(status, 409, "{text}");
    assert!(headers.to_ascii_lowercase().contains("retry-after: 1"), "{headers}");
    assert_eq!(pair.work_queue_len(), before, "nothing enqueued while the claim holds");
    let (status, conflicts) = notify_until_settled(pair.b.port, &body);
    assert_eq!(status, 202);
    assert!(conflicts >= 1, "the claim held for its 1.5 s");
    assert_eq!(pair.work_queue_len() - before, 1, "the resend was enqueued: nothing lost");
    let value: String = ::redis::cmd("GET").arg(&key).query(&mut redis).unwrap();
    assert_eq!(value, "done");
    let ttl: i64 = ::redis::cmd("PTTL").arg(&key).query(&mut redis).unwrap();
    assert!(ttl > 3_600_000, "kept for the notification's TTL (24 h default), not the claim's: {ttl} ms");
    let _: () = ::redis::cmd("DEL").arg(&key).query(&mut redis).unwrap();
}

#[test]
fn with_redis_down_nodes_still_accept_with_local_idempotency() {
    // A port nothing listens on: Redis is "down" from the start.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("redis://127.0.0.1:{closed}");
    let pair = Pair::start("nids-down", Some(&url));
    let before = pair.work_queue_len();
    let counted = lane_metric(pair.a.port, "dedupe_unshared_total");
    let body = json!({"user": "dave", "data": 1, "nid": "down-1"});
    assert_eq!(notify(pair.a.port, body.clone()).0, 202, "accepted although Redis is down");
    assert_eq!(lane_metric(pair.a.port, "dedupe_unshared_total") - counted, 1.0);
    assert_eq!(notify(pair.a.port, body).0, 202);
    assert_eq!(lane_metric(pair.a.port, "duplicates_total"), 1.0, "the node still remembers its own");
    assert_eq!(pair.work_queue_len() - before, 1);
}
