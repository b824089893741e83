//! Durable notifications through RabbitMQ with `ringcast worker` sidecars: real
//! RabbitMQ (127.0.0.1:5672) and NATS (127.0.0.1:4222) as `scripts/services.sh` starts
//! them, unique queue and subject prefixes per test.


use crate::common::lane::{ack, next_notify, notify_ok, prefix, user, wait_dead, Setup, AMQP};
use serde_json::json;
use std::time::{Duration, Instant};


/// Waits until the gateway's RabbitMQ link is up (a notify answers 202).
fn first_notify(port: u16, body: serde_json::Value) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, answer) = crate::common::lane::notify(port, body.clone());
        if status == 202 {
            return answer["nid"].as_str().unwrap().to_owned();
        }
        assert_eq!(status, 503, "{answer}");
        assert!(Instant::now() < deadline, "RabbitMQ link never came up: {answer}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sidecar_delivers_to_an_online_user_and_a_returning_one() {
    let setup = Setup::new(AMQP, "online", &["--ack-timeout", "1s", "--retry-base", "20s", "--retry-max", "1m"]);
    let gw = setup.gateway();
    let worker = setup.worker();
    let mut alice = user(gw.port, "alice");
    std::thread::sleep(Duration::from_millis(200));
    let nid = first_notify(gw.port, json!({"user": "alice", "data": {"hi": 1}}));
    let frame = next_notify(&mut alice, Duration::from_secs(5)).expect("notify through NATS");
    assert_eq!((frame["nid"].as_str(), &frame["data"]), (Some(nid.as_str()), &json!({"hi": 1})));
    ack(&mut alice, &nid);
    worker.wait_metric("delivered_total", 1.0, Duration::from_secs(5));
    // Offline: the first try fails (no ack), the retry waits up to 20 s, but coming online
    // (subscribing to user.bob) brings it within a second.
    let nid = notify_ok(gw.port, json!({"user": "bob", "data": 2}));
    worker.wait_metric("retried_total", 1.0, Duration::from_secs(5));
    // Waiting in a retry queue: pending (RabbitMQ's count, every 2 s) and its age show it.
    worker.wait_metric("pending", 1.0, Duration::from_secs(6));
    assert_eq!(worker.metric("pending"), 1.0);
    assert!(worker.metric("oldest_pending_age_seconds") > 0.0);
    let subscribed = Instant::now();
    let mut bob = user(gw.port, "bob");
    let frame = next_notify(&mut bob, Duration::from_secs(1)).expect("delivered within 1 s of coming online");
    assert_eq!(frame["nid"], nid.as_str());
    ack(&mut bob, &nid);
    worker.wait_metric("delivered_total", 2.0, Duration::from_secs(5));
    // Delivered through the fast path: nothing is pending for the worker any more, though
    // RabbitMQ still holds the retry copy until its TTL (then it is dropped as acked).
    let deadline = Instant::now() + Duration::from_secs(6);
    while worker.metric("oldest_pending_age_seconds") > 0.0 {
        assert!(Instant::now() < deadline, "oldest pending age {} s after the last delivery", worker.metric("oldest_pending_age_seconds"));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(worker.metric("pending") <= 1.0);
    eprintln!("returning user: notify {:?} after subscribing (machine loaded)", subscribed.elapsed());
}

#[test]
fn kill_9_of_the_worker_mid_delivery_loses_nothing() {
    let setup = Setup::new(AMQP, "killw", &["--ack-timeout", "3s", "--retry-base", "200ms", "--retry-max", "1s"]);
    let gw = setup.gateway();
    let mut first = setup.worker();
    let mut carol = user(gw.port, "carol");
    std::thread::sleep(Duration::from_millis(200));
    let nid = first_notify(gw.port, json!({"user": "carol", "data": "once"}));
    let frame = next_notify(&mut carol, Duration::from_secs(5)).expect("first try");
    assert_eq!(frame["nid"], nid.as_str());
    // The worker now waits for the ack with the message unacked in RabbitMQ: kill it.
    first.kill9();
    let second = setup.worker();
    let frame = next_notify(&mut carol, Duration::from_secs(10)).expect("redelivered by the next worker");
    assert_eq!(frame["nid"], nid.as_str(), "same nid on redelivery");
    ack(&mut carol, &nid);
    second.wait_metric("delivered_total", 1.0, Duration::from_secs(5));
}

#[test]
fn dead_letters_are_listed_replayed_and_purged() {
    let setup = Setup::new(AMQP, "dlq", &["--ack-timeout", "200ms", "--retry-base", "100ms", "--retry-max", "300ms", "--max-attempts", "3"]);
    let gw = setup.gateway();
    let worker = setup.worker();
    let nid = first_notify(gw.port, json!({"user": "nobody", "data": 1, "nid": "dlq-1"}));
    let list = wait_dead(gw.port, 1, Duration::from_secs(15));
    assert_eq!(list[0]["nid"], nid.as_str());
    assert_eq!(list[0]["attempts"], 3);
    assert!(list[0]["reason"].as_str().unwrap().contains("attempts exhausted"));
    assert_eq!(worker.metric("dead_lettered_total"), 1.0);
    let cli = |verb: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringcast"))
            .args(["dlq", verb, "--amqp", AMQP, "--lane-prefix", &setup.lane_prefix, "--retry-base", "100ms", "--retry-max", "300ms"])
            .output()
            .unwrap();
        assert!(out.status.success(), "dlq {verb}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let listed = cli("list");
    assert!(listed.contains("\"nid\":\"dlq-1\""), "{listed}");
    assert_eq!(cli("replay").trim(), "replayed 1");
    // Replayed with a fresh count: it goes round again and lands back in the queue.
    let list = wait_dead(gw.port, 1, Duration::from_secs(15));
    assert_eq!(list[0]["nid"], "dlq-1");
    assert!(worker.metric("dead_lettered_total") >= 2.0);
    assert_eq!(cli("purge").trim(), "purged 1");
    assert!(crate::common::lane::dead(gw.port).is_empty());
}

/// Timers under which, before parking, an offline user's notification was dead-lettered as
/// "attempts exhausted (4 of 4)" within ~1.5 s; with `--redis` the worker knows who is
/// online (presence) and the fast path's inbox is shared.
fn parking_setup(name: &str) -> Setup {
    let redis_prefix = format!("{}.presence", prefix(name));
    Setup::new(
        AMQP,
        name,
        &[
            "--ack-timeout", "300ms", "--retry-base", "200ms", "--retry-max", "1s", "--max-attempts", "4",
            "--redis", crate::common::presence::SHARED_REDIS, "--redis-prefix", &redis_prefix,
        ],
    )
}

#[test]
fn a_restarted_worker_still_brings_a_returning_users_notifications_within_a_second() {
    // erin is offline (presence in Redis says so) for ~5 s, across a kill -9 of the worker
    // that parked her notification: no attempt is spent, and the next worker finds it in
    // the shared inbox when she subscribes.
    let setup = parking_setup("inbox");
    let gw = setup.gateway();
    let mut first = setup.worker();
    let accepted = Instant::now();
    let nid = first_notify(gw.port, json!({"user": "erin", "data": "while you were away"}));
    first.wait_metric("parked_total", 1.0, Duration::from_secs(10));
    assert_eq!(first.metric("retried_total"), 0.0, "offline is not an attempt");
    let mut redis = ::redis::Client::open(crate::common::presence::SHARED_REDIS).unwrap().get_connection().unwrap();
    let inbox = format!("{}:inbox:erin", setup.lane_prefix);
    let held: Vec<String> = ::redis::cmd("HKEYS").arg(&inbox).query(&mut redis).unwrap();
    assert_eq!(held, vec![nid.clone()], "held in the shared inbox");
    first.kill9();
    let second = setup.worker();
    // The new worker's NATS subscription to online events is set up just after it says
    // "consuming"; erin stays away ~5 s in all.
    std::thread::sleep(Duration::from_secs(5).saturating_sub(accepted.elapsed()).max(Duration::from_millis(300)));
    let subscribed = Instant::now();
    let mut erin = user(gw.port, "erin");
    let frame = next_notify(&mut erin, Duration::from_secs(3)).expect("the fast path after a worker restart");
    let took = subscribed.elapsed();
    assert_eq!(frame["nid"], nid.as_str());
    assert!(took < Duration::from_secs(2), "{took:?}");
    ack(&mut erin, &nid);
    second.wait_metric("delivered_total", 1.0, Duration::from_secs(5));
    let held: Vec<String> = ::redis::cmd("HKEYS").arg(&inbox).query(&mut redis).unwrap();
    assert!(held.is_empty(), "the ack empties the inbox: {held:?}");
    assert!(crate::common::lane::dead(gw.port).is_empty(), "nothing dead-lettered");
    assert_eq!(second.metric("dead_lettered_total"), 0.0);
    eprintln!("returning user after a worker restart: notify {took:?} after subscribing");
}

#[test]
fn offline_waits_for_the_ttl_and_an_online_user_who_never_acks_exhausts_attempts() {
    let setup = parking_setup("attempts");
    let gw = setup.gateway();
    let worker = setup.worker();
    // Never online, ttl 2 s: dead-lettered as expired, with no attempt spent.
    let gone = first_notify(gw.port, json!({"user": "nobody", "data": 1, "ttl": "2s"}));
    // Online and never acking: the attempts count still ends it.
    let mut mute = user(gw.port, "mute");
    std::thread::sleep(Duration::from_millis(300));
    let unacked = notify_ok(gw.port, json!({"user": "mute", "data": 2}));
    let list = wait_dead(gw.port, 2, Duration::from_secs(20));
    let find = |nid: &str| list.iter().find(|d| d["nid"] == nid).cloned().unwrap_or_else(|| panic!("{nid} not in {list:?}"));
    let expired = find(&gone);
    assert!(expired["reason"].as_str().unwrap().contains("expired"), "{expired}");
    assert_eq!(expired.get("attempts").and_then(|a| a.as_u64()).unwrap_or(0), 0, "{expired}");
    let exhausted = find(&unacked);
    assert!(exhausted["reason"].as_str().unwrap().contains("attempts exhausted (4 of 4)"), "{exhausted}");
    assert!(next_notify(&mut mute, Duration::from_millis(100)).is_some(), "mute got the frames");
    assert_eq!(worker.metric("retried_total"), 3.0);
    assert!(worker.metric("parked_total") >= 1.0);
}

/// `/readyz` of a gateway (`port`) or a worker's metrics address: (status, body).
fn readyz(port: u16, strict: bool) -> (u16, String) {
    let path = if strict { "/readyz?strict=1" } else { "/readyz" };
    let (status, _, body) = crate::common::http(port, "GET", path, &[], b"");
    (status, body)
}

fn wait_readyz(port: u16, what: &str, want: impl Fn(u16, &str) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = readyz(port, false);
        if want(status, &body) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: /readyz stayed {status} {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn readyz_names_the_lane_while_rabbitmq_is_down_on_the_gateway_and_the_worker() {
    let mut rabbit = crate::common::rabbit::RabbitServer::start();
    let setup = Setup::new(&rabbit.amqp(), "readyz", &[]);
    let gw = setup.gateway();
    let worker = setup.worker();
    let ready = |status: u16, body: &str| status == 200 && body.contains("\"ready\"");
    wait_readyz(gw.port, "gateway before", ready);
    wait_readyz(worker.metrics_port, "worker before", ready);
    assert_eq!(readyz(gw.port, true).0, 200);
    rabbit.kill();
    let degraded = |status: u16, body: &str| status == 200 && body.contains("\"degraded\"") && body.contains("\"lane\":\"disconnected\"");
    wait_readyz(gw.port, "gateway with RabbitMQ killed", degraded);
    wait_readyz(worker.metrics_port, "worker with RabbitMQ killed", degraded);
    let (status, body) = readyz(gw.port, true);
    assert_eq!(status, 503, "strict: {body}");
    let (status, body) = readyz(worker.metrics_port, true);
    assert_eq!(status, 503, "strict: {body}");
    rabbit.restart();
    wait_readyz(gw.port, "gateway after the restart", ready);
    wait_readyz(worker.metrics_port, "worker after the restart", ready);
    assert_eq!(readyz(worker.metrics_port, true).0, 200);
}
