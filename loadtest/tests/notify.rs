//! The `notify` scenario end to end: a real ringcast gateway from this workspace with its
//! Lane (the embedded on-disk queue in a private directory; RabbitMQ when it is running
//! on 127.0.0.1:5672, under a lane prefix of its own), real WebSocket users with HS256
//! tokens, `POST /api/notify`, `notify` frames and `ack`s. Every accepted notification
//! must arrive: online users while connected, the other half after they connect.
//! The Lane is on main: both run by default (the RabbitMQ one needs `scripts/services.sh`).

use serde_json::Value;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A gateway with `extra` flags on a free port; killed on drop, its directory removed.
struct Gateway {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Gateway {
    fn start(extra: &[&str]) -> Gateway {
        // RINGCAST_BIN: another gateway build (e.g. a branch's) to measure.
        let bin = std::env::var_os("RINGCAST_BIN").map_or_else(|| repo().join("target/release/ringcast"), PathBuf::from);
        assert!(bin.exists(), "{} is missing: build the workspace first (`cargo build --release --workspace`)", bin.display());
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("ringcast-lt-notify-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let lane_dir = dir.join("lane");
        let child = Command::new(bin)
            .args(["gateway", "--listen", &format!("127.0.0.1:{port}"), "--shards", "1", "--api-key", "k", "--jwt-secret", "s3cret", "--log", "warn"])
            .args(["--lane-dir", lane_dir.to_str().unwrap()])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the gateway did not listen on 127.0.0.1:{port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Gateway { child, port, dir }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `notify` with `--json` against `gw`, bounded; returns its report.
fn notify(gw: &Gateway, extra: &[&str]) -> Value {
    let url = format!("ws://127.0.0.1:{}/ws", gw.port);
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringcast-loadtest"))
        .args(["notify", "--url", &url, "--api-key", "k", "--jwt-secret", "s3cret", "--json"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("notify ran over 90 s; stderr:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "notify failed: {stderr}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("notify printed no JSON ({e}); stderr:\n{stderr}"))
}

fn figure(r: &Value, key: &str) -> f64 {
    r["figures"][key].as_f64().unwrap_or_else(|| panic!("no figure {key} in {r:#}"))
}

/// 20 users (10 online, 10 connecting after 1 s), 200 notifications: all accepted, every
/// one delivered, the waiting ones soon after their users connect.
fn assert_all_delivered(r: &Value) {
    assert_eq!(figure(r, "online_users_ready"), 10.0, "{r:#}");
    assert_eq!(figure(r, "offline_users_ready"), 10.0, "{r:#}");
    assert_eq!(figure(r, "accepted"), 200.0, "{r:#}");
    assert_eq!(figure(r, "missing"), 0.0, "{r:#}");
    assert_eq!(figure(r, "delivered"), 200.0, "{r:#}");
    assert!(figure(r, "acks_sent") >= 200.0, "every notify frame is acked: {r:#}");
    // Half the notifications of the first second went to users not yet connected.
    assert!(figure(r, "pending_deliveries") >= 10.0, "{r:#}");
    assert!(figure(r, "online_deliveries") >= 50.0, "{r:#}");
    assert!(figure(r, "online_latency_p50_ms") > 0.0, "{r:#}");
    // The issue asks for ≤ 1 s after reconnect; the Lane's own tests hold it to that. Here,
    // on a loaded shared host, a bound that still fails a missing fast path (the next
    // backoff tick would be seconds later).
    assert!(figure(r, "pending_delay_p50_ms") < 2000.0, "{r:#}");
    assert_eq!(figure(r, "connect_failures"), 0.0, "{r:#}");
}

const SMALL_RUN: [&str; 12] = ["--users", "20", "--rate", "100", "--duration", "2s", "--offline-for", "1s", "--settle", "20s", "--senders", "4"];

#[test]
fn notify_embedded_lane_delivers_every_accepted_notification() {
    let gw = Gateway::start(&[]);
    assert_all_delivered(&notify(&gw, &SMALL_RUN));
}

#[test]
fn notify_rabbitmq_lane_delivers_every_accepted_notification() {
    if std::net::TcpStream::connect("127.0.0.1:5672").is_err() {
        panic!("RabbitMQ is not running on 127.0.0.1:5672: start it with `bash scripts/services.sh`");
    }
    let prefix = format!("lt.notify.{}.{}", std::process::id(), free_port());
    let _queues = QueuesGone { amqp: AMQP, prefix: prefix.clone() };
    let gw = Gateway::start(&["--amqp", AMQP, "--lane-prefix", &prefix, "--lane-worker"]);
    assert_all_delivered(&notify(&gw, &SMALL_RUN));
}

/// Users offline far longer than the retry schedule: with these gateway timers a user's
/// notification used to be dead-lettered ("attempts exhausted (4 of 4)") within ~1.5 s of
/// time offline; now time offline is not an attempt, so nothing may be missing.
#[test]
fn notify_users_offline_longer_than_the_retry_schedule_miss_nothing() {
    let gw = Gateway::start(&["--retry-base", "200ms", "--retry-max", "1s", "--max-attempts", "4"]);
    let run = ["--users", "20", "--rate", "100", "--duration", "2s", "--offline-for", "8s", "--settle", "20s", "--senders", "4"];
    assert_all_delivered(&notify(&gw, &run));
}

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Deletes the test's RabbitMQ queues (work, retry buckets, dead letters) when the test
/// ends, passed or failed, with the gateway's own topology so no name is guessed here.
/// Declared before the gateway, so it drops after it: nothing re-declares them.
struct QueuesGone {
    amqp: &'static str,
    prefix: String,
}

impl Drop for QueuesGone {
    fn drop(&mut self) {
        use ringcast::config::lane::{RETRY_BASE_MS, RETRY_MAX_MS};
        let backoff = ringcast::backoff::Backoff::new(Duration::from_millis(RETRY_BASE_MS), Duration::from_millis(RETRY_MAX_MS)).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let deleted = tokio::task::LocalSet::new().block_on(&runtime, ringcast::lane::rabbitmq::delete_queues(self.amqp, &self.prefix, &backoff));
        if let Err(e) = deleted {
            eprintln!("could not delete the queues of {}: {e}", self.prefix);
        }
    }
}
