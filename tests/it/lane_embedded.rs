//! Durable notifications with the embedded Lane (redb file, in-process worker): real
//! gateway processes, real WebSocket clients with tokens subscribed to `user.{id}`.


use crate::common::lane::{ack, dead, lane_dir, lane_metric, next_notify, notify, notify_ok, notify_raw, user, wait_dead, wait_metric};
use crate::common::{Gateway, SECRET};
use serde_json::json;
use std::time::{Duration, Instant};

fn gateway(dir: &std::path::Path, extra: &[&str]) -> Gateway {
    let mut args = vec!["--jwt-secret", SECRET, "--lane-dir", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    Gateway::start(&args)
}

#[test]
fn online_user_gets_the_notification_and_acks_it() {
    let dir = lane_dir("online");
    let gw = gateway(&dir, &["--ack-timeout", "2s", "--retry-base", "200ms"]);
    let mut alice = user(gw.port, "alice");
    let sent = Instant::now();
    let nid = notify_ok(gw.port, json!({"user": "alice", "data": {"text": "hello"}}));
    let frame = next_notify(&mut alice, Duration::from_secs(5)).expect("a notify frame");
    let latency = sent.elapsed();
    assert_eq!(frame["nid"], nid.as_str());
    assert_eq!(frame["data"], json!({"text": "hello"}));
    assert!(frame["ts"].as_u64().unwrap() > 1_600_000_000_000, "ts is unix ms: {frame}");
    ack(&mut alice, &nid);
    wait_metric(gw.port, "delivered_total", 1.0, Duration::from_secs(5));
    assert!(next_notify(&mut alice, Duration::from_millis(2500)).is_none(), "an acked notification is not sent again");
    assert_eq!(lane_metric(gw.port, "accepted_total"), 1.0);
    assert_eq!(lane_metric(gw.port, "retried_total"), 0.0);
    eprintln!("online delivery: {latency:?} from POST to notify frame (machine loaded)");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn offline_user_gets_it_within_a_second_of_coming_online() {
    let dir = lane_dir("offline");
    // A long backoff: only the fast path can deliver within a second.
    let gw = gateway(&dir, &["--retry-base", "20s", "--retry-max", "1m", "--ack-timeout", "1s"]);
    let nids: Vec<String> = (0..3).map(|i| notify_ok(gw.port, json!({"user": "bob", "data": i}))).collect();
    wait_metric(gw.port, "parked_total", 3.0, Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    let subscribed = Instant::now();
    let mut bob = user(gw.port, "bob");
    let mut got = Vec::new();
    while got.len() < 3 {
        let frame = next_notify(&mut bob, Duration::from_secs(1).saturating_sub(subscribed.elapsed())).unwrap_or_else(|| panic!("only {got:?} within 1 s of subscribing"));
        let nid = frame["nid"].as_str().unwrap().to_owned();
        ack(&mut bob, &nid);
        if !got.contains(&nid) {
            got.push(nid);
        }
    }
    eprintln!("offline → online: all 3 within {:?} of subscribing", subscribed.elapsed());
    got.sort();
    let mut want = nids.clone();
    want.sort();
    assert_eq!(got, want);
    wait_metric(gw.port, "delivered_total", 3.0, Duration::from_secs(5));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unacked_notifications_back_off_then_go_to_the_dead_letter_queue() {
    let dir = lane_dir("dead");
    let gw = gateway(&dir, &["--ack-timeout", "200ms", "--retry-base", "100ms", "--retry-max", "400ms", "--max-attempts", "4"]);
    let mut carol = user(gw.port, "carol");
    let nid = notify_ok(gw.port, json!({"user": "carol", "data": "never acked"}));
    let mut arrivals = Vec::new();
    while let Some(frame) = next_notify(&mut carol, Duration::from_secs(3)) {
        assert_eq!(frame["nid"], nid.as_str(), "the same nid every try");
        arrivals.push(Instant::now());
    }
    assert_eq!(arrivals.len(), 4, "one frame per attempt, --max-attempts 4");
    // Between tries k and k+1: the ack wait, then full jitter under min(400, 100·2^(k-1)) ms
    // rounded up to a bucket (≤ 19% more; the smallest bucket is 25 ms).
    let backoff = ringcast::backoff::Backoff::new(Duration::from_millis(100), Duration::from_millis(400)).unwrap();
    for (k, pair) in arrivals.windows(2).enumerate() {
        let gap = pair[1] - pair[0];
        let attempt = k as u32 + 1;
        let low = Duration::from_millis(200) + backoff.delay_min();
        let high = Duration::from_millis(200) + backoff.delay_max(attempt) + Duration::from_millis(250);
        assert!(gap >= low - Duration::from_millis(10) && gap <= high, "gap after try {attempt}: {gap:?} not in [{low:?}, {high:?}]");
        eprintln!("try {attempt} → {}: {gap:?} (bounds {low:?}..{high:?})", attempt + 1);
    }
    let list = wait_dead(gw.port, 1, Duration::from_secs(5));
    assert_eq!(list[0]["nid"], nid.as_str());
    assert_eq!(list[0]["user"], "carol");
    assert_eq!(list[0]["attempts"], 4);
    assert!(list[0]["reason"].as_str().unwrap().contains("attempts exhausted"), "{list:?}");
    assert_eq!(lane_metric(gw.port, "dead_lettered_total"), 1.0);
    assert_eq!(lane_metric(gw.port, "retried_total"), 3.0);
    // A user who never connects costs no attempt: the notification waits for its ttl and
    // is then dead-lettered as expired (before, it went as "attempts exhausted" in ~1 s).
    let nid = notify_ok(gw.port, json!({"user": "nobody", "data": 1, "ttl": "2s"}));
    let list = wait_dead(gw.port, 2, Duration::from_secs(10));
    let record = list.iter().find(|d| d["nid"] == nid.as_str()).unwrap_or_else(|| panic!("{list:?}"));
    assert!(record["reason"].as_str().unwrap().contains("expired"), "{record}");
    assert_eq!(record.get("attempts").and_then(|a| a.as_u64()).unwrap_or(0), 0, "{record}");
    assert_eq!(lane_metric(gw.port, "retried_total"), 3.0, "no retry counted for the offline user");
    assert!(lane_metric(gw.port, "parked_total") >= 1.0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn time_offline_is_not_an_attempt() {
    // Before, with these timers an offline user's notification was dead-lettered as
    // "attempts exhausted (4 of 4)" within ~1.5 s.
    let dir = lane_dir("parked");
    let gw = gateway(&dir, &["--ack-timeout", "500ms", "--retry-base", "200ms", "--retry-max", "1s", "--max-attempts", "4"]);
    let nid = notify_ok(gw.port, json!({"user": "olga", "data": "while you were away"}));
    wait_metric(gw.port, "parked_total", 1.0, Duration::from_secs(5));
    wait_metric(gw.port, "waiting_offline", 1.0, Duration::from_secs(3));
    std::thread::sleep(Duration::from_secs(4));
    assert!(dead(gw.port).is_empty(), "offline for 4 s with --max-attempts 4: {:?}", dead(gw.port));
    assert_eq!(lane_metric(gw.port, "retried_total"), 0.0, "no attempt was spent while olga was away");
    let subscribed = Instant::now();
    let mut olga = user(gw.port, "olga");
    let frame = next_notify(&mut olga, Duration::from_millis(1500)).expect("delivered within a second of subscribing");
    eprintln!("parked → online: notify {:?} after subscribing", subscribed.elapsed());
    assert_eq!(frame["nid"], nid.as_str());
    ack(&mut olga, &nid);
    wait_metric(gw.port, "delivered_total", 1.0, Duration::from_secs(5));
    assert!(dead(gw.port).is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_duplicate_nid_is_accepted_once() {
    let dir = lane_dir("dup");
    let gw = gateway(&dir, &["--ack-timeout", "2s"]);
    let mut dave = user(gw.port, "dave");
    let first = notify_ok(gw.port, json!({"user": "dave", "data": 1, "nid": "order-42"}));
    let second = notify_ok(gw.port, json!({"user": "dave", "data": 2, "nid": "order-42"}));
    assert_eq!((first.as_str(), second.as_str()), ("order-42", "order-42"));
    let frame = next_notify(&mut dave, Duration::from_secs(5)).unwrap();
    assert_eq!((frame["nid"].as_str(), &frame["data"]), (Some("order-42"), &json!(1)));
    ack(&mut dave, "order-42");
    assert!(next_notify(&mut dave, Duration::from_millis(1500)).is_none(), "the duplicate was not enqueued");
    assert_eq!(lane_metric(gw.port, "accepted_total"), 1.0);
    assert_eq!(lane_metric(gw.port, "duplicates_total"), 1.0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_input_is_refused_and_not_enqueued() {
    let dir = lane_dir("bad");
    let gw = gateway(&dir, &["--notify-max", "1KiB", "--ack-timeout", "1s"]);
    let mut erin = user(gw.port, "erin");
    let cases = [
        (json!({"user": "a.b", "data": 1}), 400, "not a user id"),
        (json!({"user": "erin"}), 400, "data is required"),
        (json!({"data": 1}), 400, "user is required"),
        (json!({"user": "erin", "data": 1, "ttl": "later"}), 400, "ttl"),
        (json!({"user": "erin", "data": 1, "nid": "has space"}), 400, "nid"),
        (json!({"user": "erin", "data": "x".repeat(2000)}), 413, "notify_max"),
    ];
    for (body, status, needle) in cases {
        let (got, answer) = notify(gw.port, body.clone());
        assert_eq!(got, status, "{body} → {answer}");
        let msg = answer["error"]["msg"].as_str().unwrap_or_default();
        assert!(msg.contains(needle), "{body}: {msg:?} should mention {needle:?}");
    }
    let (got, _) = notify_raw(gw.port, b"{\"user\":");
    assert_eq!(got, 400);
    let auth_less = crate::common::http(gw.port, "POST", "/api/notify", &[], br#"{"user":"erin","data":1}"#);
    assert_eq!(auth_less.0, 401);
    assert!(next_notify(&mut erin, Duration::from_millis(1000)).is_none(), "nothing was enqueued");
    assert_eq!(lane_metric(gw.port, "accepted_total"), 0.0);
    assert_eq!(lane_metric(gw.port, "rejected_total"), 7.0);
    assert!(dead(gw.port).is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn accepted_notifications_survive_kill_9_of_the_gateway() {
    let dir = lane_dir("kill");
    let flags = ["--retry-base", "20s", "--retry-max", "1m", "--ack-timeout", "1s"];
    let mut gw = gateway(&dir, &flags);
    let nids: Vec<String> = (0..50).map(|i| notify_ok(gw.port, json!({"user": "frank", "data": i}))).collect();
    gw.signal(libc::SIGKILL);
    assert!(gw.wait_exit(Duration::from_secs(5)).is_none(), "killed, no exit code");
    let gw = gateway(&dir, &flags);
    let mut frank = user(gw.port, "frank");
    let mut got = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < nids.len() && Instant::now() < deadline {
        if let Some(frame) = next_notify(&mut frank, Duration::from_secs(2)) {
            let nid = frame["nid"].as_str().unwrap().to_owned();
            ack(&mut frank, &nid);
            got.insert(nid);
        }
    }
    let want: std::collections::BTreeSet<String> = nids.into_iter().collect();
    assert_eq!(got, want, "every notification accepted before the kill is delivered after it");
    let _ = std::fs::remove_dir_all(&dir);
}
