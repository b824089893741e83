//! Lane test helpers: users with tokens subscribed to `user.{id}`, `POST /api/notify`,
//! reading `notify` frames, the dead-letter listing and `/metrics` counters.

use super::{connect, http, jwt, now_unix, recv_json, request, send_json, Client, API_KEY};
use std::time::{Duration, Instant};

pub const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A fresh, private embedded store directory.
pub fn lane_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ringcast-lane-test-{name}-{}-{}", std::process::id(), super::unique()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A unique queue / subject prefix.
pub fn prefix(name: &str) -> String {
    format!("t{}.{name}.{}", std::process::id(), super::unique() % 1_000_000)
}

/// Connects as `user` (token with `sub`) and subscribes to `user.{user}`.
pub fn user(port: u16, user: &str) -> Client {
    let token = jwt(serde_json::json!({ "sub": user, "exp": now_unix() + 3600 }));
    let (mut client, _) = connect(&format!("ws://127.0.0.1:{port}/ws?token={token}"));
    let answer = request(&mut client, serde_json::json!({"op": "sub", "ch": format!("user.{user}")}), 1);
    assert_eq!(answer["op"], "ok", "sub user.{user}: {answer}");
    client
}

/// POSTs a notification; returns (status, body as JSON or the raw text in "text").
pub fn notify(port: u16, body: serde_json::Value) -> (u16, serde_json::Value) {
    notify_raw(port, body.to_string().as_bytes())
}

pub fn notify_raw(port: u16, body: &[u8]) -> (u16, serde_json::Value) {
    let auth = format!("Bearer {API_KEY}");
    let (status, _, text) = http(port, "POST", "/api/notify", &[("Authorization", &auth), ("Content-Type", "application/json")], body);
    let json = serde_json::from_str(&text).unwrap_or_else(|_| serde_json::json!({ "text": text }));
    (status, json)
}

/// Sends and expects 202; returns the nid.
pub fn notify_ok(port: u16, body: serde_json::Value) -> String {
    let (status, answer) = notify(port, body);
    assert_eq!(status, 202, "notify: {answer}");
    answer["nid"].as_str().expect("nid in a 202").to_owned()
}

/// The next `notify` frame (other frames skipped), or None after `within`.
pub fn next_notify(client: &mut Client, within: Duration) -> Option<serde_json::Value> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        client.get_mut().set_read_timeout(Some(left.max(Duration::from_millis(1)))).unwrap();
        match client.read() {
            Ok(tungstenite::Message::Text(text)) => {
                let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
                if frame["op"] == "notify" {
                    return Some(frame);
                }
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => return None,
            Err(e) => panic!("reading notify frames: {e}"),
        }
    }
}

pub fn ack(client: &mut Client, nid: &str) {
    send_json(client, serde_json::json!({"op": "ack", "nid": nid}));
}

pub fn dead(port: u16) -> Vec<serde_json::Value> {
    let auth = format!("Bearer {API_KEY}");
    let (status, _, text) = http(port, "GET", "/api/notifications/dead", &[("Authorization", &auth)], b"");
    assert_eq!(status, 200, "dead list: {text}");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["dead"].as_array().expect("dead is a list").clone()
}

/// A `ringcast_lane_*` value from `/metrics`.
pub fn lane_metric(port: u16, name: &str) -> f64 {
    let (_, _, text) = http(port, "GET", "/metrics", &[], b"");
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("ringcast_lane_{name} ")))
        .unwrap_or_else(|| panic!("no ringcast_lane_{name} in /metrics"))
        .trim()
        .parse()
        .unwrap()
}

/// Polls a metric until it reaches `want` (or panics after `within`).
pub fn wait_metric(port: u16, name: &str, want: f64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got = lane_metric(port, name);
        if got >= want {
            return;
        }
        assert!(Instant::now() < deadline, "ringcast_lane_{name} is {got}, wanted {want}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls the dead-letter listing until it holds `n` entries.
pub fn wait_dead(port: u16, n: usize, within: Duration) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + within;
    loop {
        let list = dead(port);
        if list.len() >= n {
            return list;
        }
        assert!(Instant::now() < deadline, "dead-letter queue has {} entries, wanted {n}: {list:?}", list.len());
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn recv_any(client: &mut Client) -> serde_json::Value {
    recv_json(client)
}

/// A `ringcast worker` sidecar process.
pub struct Sidecar {
    pub child: std::process::Child,
    pub metrics_port: u16,
}

impl Sidecar {
    pub fn start(args: &[&str]) -> Sidecar {
        use std::io::BufRead;
        let log = std::env::temp_dir().join(format!("ringcast-worker-{}-{}.log", std::process::id(), super::unique()));
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ringcast"))
            .args(["worker", "--metrics-addr", "127.0.0.1:0", "--log", "warn"])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start ringcast worker");
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut metrics_port = 0;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(rest) = line.split("metrics on http://127.0.0.1:").nth(1) {
                metrics_port = rest.split('/').next().unwrap().parse().unwrap();
            }
            if line.contains("consuming") {
                break;
            }
        }
        assert!(metrics_port > 0, "the worker did not start; log: {}", std::fs::read_to_string(&log).unwrap_or_default());
        // Keep reading stdout so the worker never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Sidecar { child, metrics_port }
    }

    pub fn metric(&self, name: &str) -> f64 {
        lane_metric(self.metrics_port, name)
    }

    pub fn wait_metric(&self, name: &str, want: f64, within: Duration) {
        wait_metric(self.metrics_port, name, want, within)
    }

    pub fn kill9(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Deletes a test's RabbitMQ queues.
pub fn delete_queues(amqp: &str, prefix: &str, retry_base: Duration, retry_max: Duration) {
    let backoff = ringcast::backoff::Backoff::new(retry_base, retry_max).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    tokio::task::LocalSet::new().block_on(&rt, async {
        let _ = ringcast::lane::rabbitmq::delete_queues(amqp, prefix, &backoff).await;
    });
}

/// A gateway and its workers sharing one lane prefix (RabbitMQ) and one NATS prefix, with
/// the same timer flags. Its queues go when it drops (on the shared broker; a private
/// node's go with its directory), even after a failed test.
pub struct Setup {
    pub amqp: String,
    pub lane_prefix: String,
    pub nats_prefix: String,
    timers: Vec<String>,
}

impl Setup {
    pub fn new(amqp: &str, name: &str, timers: &[&str]) -> Setup {
        Setup {
            amqp: amqp.to_owned(),
            lane_prefix: prefix(name),
            nats_prefix: format!("n{}", super::unique() % 100_000_000),
            timers: timers.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn shared(&self) -> Vec<String> {
        let mut args: Vec<String> = ["--nats", "nats://127.0.0.1:4222", "--nats-prefix", &self.nats_prefix, "--amqp", &self.amqp, "--lane-prefix", &self.lane_prefix]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(self.timers.iter().cloned());
        args
    }

    pub fn gateway(&self) -> super::Gateway {
        let mut args = vec!["--jwt-secret".to_string(), super::SECRET.to_string()];
        args.extend(self.shared());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        super::Gateway::start(&args)
    }

    pub fn worker(&self) -> Sidecar {
        let args = self.shared();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Sidecar::start(&args)
    }

    /// The value of a timer flag, or `default` when the setup does not set it.
    pub fn timer(&self, flag: &str, default: Duration) -> Duration {
        self.timers.iter().position(|t| t == flag).map_or(default, |i| ringcast::config::parse_duration(&self.timers[i + 1]).unwrap())
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if self.amqp == AMQP {
            delete_queues(AMQP, &self.lane_prefix, self.timer("--retry-base", Duration::from_secs(1)), self.timer("--retry-max", Duration::from_secs(300)));
        }
    }
}
