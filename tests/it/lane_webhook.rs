//! The push fallback (`--webhook`) with the embedded Lane: a real HTTP endpoint in the
//! test (std TcpListener on loopback, one thread) that records request bodies and answers
//! from a script, a real gateway, real WebSocket users.

use crate::common::lane::{ack, lane_dir, lane_metric, next_notify, notify_ok, user, wait_metric};
use crate::common::{Gateway, SECRET};
use serde_json::json;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A webhook endpoint: answers 500 to the first `failures` POSTs and 200 after, or never
/// answers at all (`hang`), recording every body.
struct Hook {
    port: u16,
    bodies: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Hook {
    fn start(failures: usize, hang: bool) -> Hook {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let record = bodies.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut reader = BufReader::new(stream);
                let mut length = 0;
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                    if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = value.trim().parse().unwrap();
                    }
                    line.clear();
                }
                let mut body = vec![0; length];
                if reader.read_exact(&mut body).is_err() {
                    continue;
                }
                let n = {
                    let mut bodies = record.lock().unwrap();
                    bodies.push(serde_json::from_slice(&body).unwrap_or_else(|_| json!({"unparsable": String::from_utf8_lossy(&body)})));
                    bodies.len()
                };
                let mut stream = reader.into_inner();
                if hang {
                    held.push(stream);
                    continue;
                }
                let status = if n <= failures { "500 Internal Server Error" } else { "200 OK" };
                let _ = stream.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes());
            }
        });
        Hook { port, bodies }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/push", self.port)
    }

    fn wait_posts(&self, n: usize, within: Duration) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + within;
        loop {
            let bodies = self.bodies.lock().unwrap().clone();
            if bodies.len() >= n {
                return bodies;
            }
            assert!(Instant::now() < deadline, "the webhook got {} POSTs within {within:?}, wanted {n}: {bodies:?}", bodies.len());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn gateway(dir: &std::path::Path, hook: &Hook, extra: &[&str]) -> Gateway {
    let url = hook.url();
    let mut args = vec!["--jwt-secret", SECRET, "--lane-dir", dir.to_str().unwrap(), "--webhook", &url];
    args.extend_from_slice(extra);
    Gateway::start(&args)
}

#[test]
fn an_offline_users_notification_is_posted_and_a_500_is_retried() {
    let hook = Hook::start(2, false);
    let dir = lane_dir("webhook");
    // The webhook's retries use the Lane's backoff: full jitter from a 100 ms base
    // retries the two 500s within a second or so.
    let gw = gateway(&dir, &hook, &["--retry-base", "100ms", "--retry-max", "400ms", "--max-attempts", "50"]);
    let before = crate::common::now_unix() * 1000;
    let nid = notify_ok(gw.port, json!({"user": "frank", "data": {"text": "parcel"}, "nid": "wh-1"}));
    let bodies = hook.wait_posts(3, Duration::from_secs(10));
    for body in &bodies {
        assert_eq!(body["nid"], nid.as_str(), "{body}");
        assert_eq!(body["user"], "frank", "{body}");
        assert_eq!(body["data"], json!({"text": "parcel"}), "{body}");
        let ts = body["ts"].as_u64().unwrap_or_else(|| panic!("ts is unix ms: {body}"));
        assert!(ts >= before && ts < before + 60_000, "ts {ts} is when it was accepted ({before})");
    }
    wait_metric(gw.port, "webhook_sent_total", 1.0, Duration::from_secs(5));
    assert_eq!(lane_metric(gw.port, "webhook_failed_total"), 2.0);
    // Posted once per notification (after its first try found frank offline), not again
    // while it waits parked in-app.
    std::thread::sleep(Duration::from_secs(2));
    assert!(lane_metric(gw.port, "parked_total") >= 1.0, "parked in-app meanwhile");
    assert_eq!(hook.bodies.lock().unwrap().len(), 3, "a 200 ends the webhook's tries");
    assert_eq!(lane_metric(gw.port, "webhook_sent_total"), 1.0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_online_user_is_not_posted_to_the_webhook() {
    let hook = Hook::start(0, false);
    let dir = lane_dir("webhook-online");
    let gw = gateway(&dir, &hook, &["--ack-timeout", "5s", "--retry-base", "100ms"]);
    let mut gina = user(gw.port, "gina");
    let nid = notify_ok(gw.port, json!({"user": "gina", "data": 1}));
    let frame = next_notify(&mut gina, Duration::from_secs(5)).expect("in-app delivery");
    assert_eq!(frame["nid"], nid.as_str());
    ack(&mut gina, &nid);
    wait_metric(gw.port, "delivered_total", 1.0, Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(500));
    assert!(hook.bodies.lock().unwrap().is_empty(), "delivered on the first try: no push");
    assert_eq!(lane_metric(gw.port, "webhook_sent_total"), 0.0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_webhook_that_never_answers_does_not_hold_up_in_app_delivery() {
    let hook = Hook::start(0, true);
    let dir = lane_dir("webhook-hang");
    let gw = gateway(&dir, &hook, &["--retry-base", "20s", "--retry-max", "1m"]);
    let nid = notify_ok(gw.port, json!({"user": "hana", "data": "hello"}));
    // The first try failed (hana is offline) and the POST now hangs in the endpoint.
    hook.wait_posts(1, Duration::from_secs(5));
    let mut hana = user(gw.port, "hana");
    let frame = next_notify(&mut hana, Duration::from_secs(2)).expect("in-app delivery while the webhook hangs");
    assert_eq!(frame["nid"], nid.as_str());
    ack(&mut hana, &nid);
    wait_metric(gw.port, "delivered_total", 1.0, Duration::from_secs(5));
    // A second notification goes straight through too.
    let nid = notify_ok(gw.port, json!({"user": "hana", "data": "again"}));
    let frame = next_notify(&mut hana, Duration::from_secs(2)).expect("second in-app delivery");
    assert_eq!(frame["nid"], nid.as_str());
    // The hanging POST times out (5 s) and is counted as failed.
    wait_metric(gw.port, "webhook_failed_total", 1.0, Duration::from_secs(10));
    assert_eq!(lane_metric(gw.port, "webhook_sent_total"), 0.0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_webhook_that_is_down_does_not_hold_up_in_app_delivery() {
    // Connection refused: a port bound and released.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = lane_dir("webhook-down");
    let url = format!("http://127.0.0.1:{closed}/push");
    let gw = Gateway::start(&["--jwt-secret", SECRET, "--lane-dir", dir.to_str().unwrap(), "--webhook", &url, "--retry-base", "20s", "--retry-max", "1m"]);
    let nid = notify_ok(gw.port, json!({"user": "ivan", "data": 1}));
    wait_metric(gw.port, "webhook_failed_total", 1.0, Duration::from_secs(5));
    let mut ivan = user(gw.port, "ivan");
    let frame = next_notify(&mut ivan, Duration::from_secs(2)).expect("in-app delivery with the webhook down");
    assert_eq!(frame["nid"], nid.as_str());
    ack(&mut ivan, &nid);
    wait_metric(gw.port, "delivered_total", 1.0, Duration::from_secs(5));
    let _ = std::fs::remove_dir_all(&dir);
}
