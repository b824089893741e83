//! The Lane on RabbitMQ across crashes: a RabbitMQ node killed and restarted (a private
//! node on its own port, never the shared one on 5672), and a gateway killed in the middle
//! of a burst of accepts. Either way every notification that got a 202 reaches its user at
//! least once (duplicates allowed and counted) or sits in the dead-letter queue.

use crate::common::lane::{ack, dead, next_notify, notify, user, Setup, AMQP};
use crate::common::rabbit::RabbitServer;
use crate::common::{http, Client, API_KEY};
use serde_json::json;
use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Short timers so retries cycle quickly, and enough attempts that nothing dead-letters
/// while the user is away.
const TIMERS: [&str; 8] = ["--ack-timeout", "500ms", "--retry-base", "200ms", "--retry-max", "1s", "--max-attempts", "1000"];

/// Posts until one answers 202 (the gateway's RabbitMQ link is up); returns the nid.
fn notify_when_up(port: u16, body: serde_json::Value, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let (status, answer) = notify(port, body.clone());
        if status == 202 {
            return answer["nid"].as_str().unwrap().to_owned();
        }
        assert_eq!(status, 503, "{answer}");
        assert!(Instant::now() < deadline, "the gateway's RabbitMQ link did not come up within {within:?}: {answer}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Receives and acks notify frames until every nid in `want` came; returns how often
/// each nid arrived. Panics naming the missing ones after `within`.
fn receive_all(client: &mut Client, want: &BTreeSet<String>, within: Duration) -> HashMap<String, usize> {
    let deadline = Instant::now() + within;
    let mut seen: HashMap<String, usize> = HashMap::new();
    while !want.iter().all(|nid| seen.contains_key(nid)) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(frame) = next_notify(client, left) else {
            let missing: Vec<_> = want.iter().filter(|nid| !seen.contains_key(*nid)).collect();
            panic!("{} of {} accepted notifications never arrived within {within:?}: {missing:?}", missing.len(), want.len());
        };
        let nid = frame["nid"].as_str().unwrap().to_owned();
        ack(client, &nid);
        *seen.entry(nid).or_default() += 1;
    }
    seen
}

fn report(what: &str, seen: &HashMap<String, usize>) {
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    eprintln!("{what}: {} nids received, {duplicates} duplicate deliveries", seen.len());
}

#[test]
fn a_rabbitmq_restart_leaves_every_accepted_notification_delivered() {
    const N: usize = 200;
    let mut rabbit = RabbitServer::start();
    let setup = Setup::new(&rabbit.amqp(), "restart", &TIMERS);
    let gw = setup.gateway();
    let worker = setup.worker();
    let mut accepted = BTreeSet::new();
    accepted.insert(notify_when_up(gw.port, json!({"user": "dave", "data": 0, "nid": "r-0"}), Duration::from_secs(10)));
    for i in 1..N {
        let nid = crate::common::lane::notify_ok(gw.port, json!({"user": "dave", "data": i, "nid": format!("r-{i}")}));
        accepted.insert(nid);
    }
    // Dave is offline: the worker is trying and scheduling retries.
    worker.wait_metric("retried_total", 1.0, Duration::from_secs(10));

    rabbit.kill();
    // While the node is down nothing is claimed: 503 with a reason and Retry-After.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut down = 0;
    for i in 0.. {
        let nid = format!("down-{i}");
        let auth = format!("Bearer {API_KEY}");
        let body = json!({"user": "dave", "data": "down", "nid": nid}).to_string();
        let (status, head, text) = http(gw.port, "POST", "/api/notify", &[("Authorization", &auth)], body.as_bytes());
        match status {
            // Confirmed just before the node died: it is accepted and must arrive.
            202 => {
                accepted.insert(nid);
            }
            503 => {
                assert!(text.contains("RabbitMQ"), "a 503 says what is wrong: {text}");
                assert!(head.to_ascii_lowercase().contains("retry-after: 1"), "503 carries Retry-After: {head}");
                down += 1;
                if down == 5 {
                    break;
                }
            }
            other => panic!("notify while RabbitMQ is down answered {other}: {text}"),
        }
        assert!(Instant::now() < deadline, "the gateway kept answering 202 with RabbitMQ killed");
        std::thread::sleep(Duration::from_millis(20));
    }

    rabbit.restart();
    // The gateway reconnects by itself (its backoff caps at 2 s).
    accepted.insert(notify_when_up(gw.port, json!({"user": "dave", "data": "after", "nid": "r-after"}), Duration::from_secs(15)));
    // The worker too: it delivers what the restarted node kept, once dave comes online.
    let mut dave = user(gw.port, "dave");
    let seen = receive_all(&mut dave, &accepted, Duration::from_secs(90));
    report("after a RabbitMQ restart", &seen);
    assert!(dead(gw.port).is_empty(), "nothing should have dead-lettered with 1000 attempts");
    drop(worker);
    drop(gw);
}

/// One POST that never panics: Some(status) or None when the gateway is gone.
fn try_notify(port: u16, nid: &str) -> Option<u16> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let body = json!({"user": "erin", "data": {"burst": nid}, "nid": nid}).to_string();
    let request = format!(
        "POST /api/notify HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nAuthorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split(' ').nth(1)?.parse().ok()
}

#[test]
fn kill_9_of_a_rabbitmq_gateway_mid_burst_loses_no_accepted_notification() {
    const SENDERS: usize = 4;
    const KILL_AFTER: usize = 150;
    let setup = Setup::new(AMQP, "killgw", &TIMERS);
    let mut first = setup.gateway();
    notify_when_up(first.port, json!({"user": "warmup", "data": 0}), Duration::from_secs(10));
    let accepted = Arc::new(Mutex::new(BTreeSet::new()));
    let senders: Vec<_> = (0..SENDERS)
        .map(|t| {
            let accepted = accepted.clone();
            let port = first.port;
            std::thread::spawn(move || {
                for i in 0..100_000 {
                    let nid = format!("b-{t}-{i}");
                    match try_notify(port, &nid) {
                        Some(202) => {
                            accepted.lock().unwrap().insert(nid);
                        }
                        Some(503) => std::thread::sleep(Duration::from_millis(10)),
                        Some(other) => panic!("notify answered {other}"),
                        None => return i,
                    }
                }
                panic!("the gateway was never killed");
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while accepted.lock().unwrap().len() < KILL_AFTER {
        assert!(Instant::now() < deadline, "only {} accepts in 30 s", accepted.lock().unwrap().len());
        std::thread::sleep(Duration::from_millis(1));
    }
    first.signal(libc::SIGKILL);
    first.wait_exit(Duration::from_secs(5));
    let answered: usize = senders.into_iter().map(|s| s.join().expect("sender")).sum();
    let accepted = Arc::try_unwrap(accepted).unwrap().into_inner().unwrap();
    eprintln!("burst: {} accepted of {answered} answered before the kill", accepted.len());

    // A new gateway and a worker deliver everything that got a 202.
    let second = setup.gateway();
    notify_when_up(second.port, json!({"user": "warmup", "data": 1}), Duration::from_secs(10));
    let mut erin = user(second.port, "erin");
    let _worker = setup.worker();
    let seen = receive_all(&mut erin, &accepted, Duration::from_secs(60));
    report("after a gateway kill -9", &seen);
}

#[test]
fn an_offline_users_parked_notifications_survive_a_rabbitmq_restart() {
    // With these timers an offline user's notification used to be dead-lettered
    // ("attempts exhausted (4 of 4)") within ~1.5 s; parked, it waits across a kill -9 and
    // restart of RabbitMQ (durable park queues, persistent messages) until ivan comes back.
    let mut rabbit = RabbitServer::start();
    let redis_prefix = format!("{}.presence", crate::common::lane::prefix("park-restart"));
    let setup = Setup::new(
        &rabbit.amqp(),
        "park-restart",
        &[
            "--ack-timeout", "300ms", "--retry-base", "200ms", "--retry-max", "1s", "--max-attempts", "4",
            "--redis", crate::common::presence::SHARED_REDIS, "--redis-prefix", &redis_prefix,
        ],
    );
    let gw = setup.gateway();
    let worker = setup.worker();
    let mut accepted = BTreeSet::new();
    accepted.insert(notify_when_up(gw.port, json!({"user": "ivan", "data": 0, "nid": "p-0"}), Duration::from_secs(15)));
    for i in 1..5 {
        accepted.insert(crate::common::lane::notify_ok(gw.port, json!({"user": "ivan", "data": i, "nid": format!("p-{i}")})));
    }
    worker.wait_metric("parked_total", 5.0, Duration::from_secs(10));
    rabbit.restart();
    // Both links come back by themselves (the gateway's shows in its readiness).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _, body) = http(gw.port, "GET", "/readyz?strict=1", &[], b"");
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the gateway's RabbitMQ link did not come back: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    let mut ivan = user(gw.port, "ivan");
    let seen = receive_all(&mut ivan, &accepted, Duration::from_secs(30));
    report("parked across a RabbitMQ restart", &seen);
    assert!(dead(gw.port).is_empty(), "time offline is no attempt: {:?}", dead(gw.port));
    assert_eq!(worker.metric("retried_total"), 0.0);
}
