//! The harness against real servers, end to end through its command line: private
//! nats-server and mosquitto instances started by `scripts/peers.sh` on free ports, and a
//! ringcast gateway process from this workspace (`scripts/test.sh` builds it first).
//! Every run is bounded by a timeout; every server is stopped on drop.

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

fn wait_listening(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on 127.0.0.1:{port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs the harness with `args` and `--json`, bounded by `limit`; returns its JSON report.
fn harness(args: &[&str], limit: Duration) -> Value {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringcast-loadtest"))
        .args(args)
        .arg("--json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("harness {args:?} ran over {limit:?}; stderr:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "harness {args:?} failed: {stderr}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("harness {args:?} printed no JSON ({e}); stderr:\n{stderr}"))
}

fn figure(report: &Value, key: &str) -> u64 {
    report["figures"][key].as_f64().unwrap_or_else(|| panic!("no figure {key} in {report:#}")) as u64
}

/// Private peers from scripts/peers.sh in their own directory; `stop` on drop.
struct Peers {
    dir: tempdir::Dir,
    env: Vec<(&'static str, String)>,
}

mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new(tag: &str) -> Dir {
            let path = std::env::temp_dir().join(format!("ringcast-lt-{tag}-{}-{}", std::process::id(), super::free_port()));
            std::fs::create_dir_all(&path).unwrap();
            Dir(path)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Peers {
    fn start(which: &str) -> (Peers, Vec<u16>) {
        let dir = tempdir::Dir::new(which);
        let ports: Vec<u16> = (0..2).map(|_| free_port()).collect();
        let (a, b) = match which {
            "nats" => ("NATS_PORT", "NATS_WS_PORT"),
            _ => ("MQTT_PORT", "MQTT_WS_PORT"),
        };
        let env = vec![("PEERS", which.to_string()), ("PEERS_DIR", dir.0.display().to_string()), (a, ports[0].to_string()), (b, ports[1].to_string())];
        let peers = Peers { dir, env };
        let out = peers.script("start");
        assert!(out.contains(if which == "nats" { "nats-ws:" } else { "mqtt-ws:" }), "peers.sh printed: {out}");
        (peers, ports)
    }

    fn script(&self, verb: &str) -> String {
        let out = Command::new("bash").arg(repo().join("scripts/peers.sh")).arg(verb).envs(self.env.iter().map(|(k, v)| (*k, v.as_str()))).output().unwrap();
        assert!(out.status.success(), "peers.sh {verb}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn pid(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.0.join(format!("{name}.pid"))).unwrap().trim().to_string()
    }
}

impl Drop for Peers {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(repo().join("scripts/peers.sh")).arg("stop").envs(self.env.iter().map(|(k, v)| (*k, v.as_str()))).status();
    }
}

fn telemetry_args<'a>(target: &'a str, url: &'a str, publish: &'a str) -> Vec<&'a str> {
    vec![
        "telemetry", "--target", target, "--url", url, "--publish", publish, "--devices", "5", "--subs-per-device", "4",
        "--dashboards", "3", "--device-rate", "10", "--duration", "2s",
    ]
}

/// Every device subscriber gets its device's messages in order, every dashboard all of them.
fn assert_telemetry_complete(r: &Value) {
    let published = figure(r, "published");
    assert!(published >= 80, "5 devices × 10 msgs/s × 2 s published only {published}");
    assert_eq!(figure(r, "device_subscribers"), 20);
    assert_eq!(figure(r, "dashboard_subscribers"), 3);
    assert_eq!(figure(r, "device_deliveries"), published * 4, "{r:#}");
    assert_eq!(figure(r, "dashboard_deliveries"), published * 3, "wildcard dashboards see every device: {r:#}");
    assert_eq!((figure(r, "device_lost"), figure(r, "dashboard_lost")), (0, 0));
    assert_eq!((figure(r, "device_gaps"), figure(r, "device_duplicates")), (0, 0), "numbers arrive in order per device");
    assert!(r["figures"]["dashboard_latency_p50_ms"].as_f64().unwrap() > 0.0);
}

#[test]
fn nats_ws_fanout_and_telemetry_against_a_private_nats_server() {
    let (peers, ports) = Peers::start("nats");
    let url = format!("ws://127.0.0.1:{}", ports[1]);
    let publish = format!("nats://127.0.0.1:{}", ports[0]);
    let pid = peers.pid("nats");
    let r = harness(
        &["fanout", "--target", "nats-ws", "--url", &url, "--publish", &publish, "--conns", "300", "--rate", "50", "--duration", "2s", "--server-pid", &pid],
        Duration::from_secs(60),
    );
    let published = figure(&r, "published");
    assert_eq!(figure(&r, "connections_ready"), 300);
    assert_eq!(figure(&r, "deliveries"), published * 300, "{r:#}");
    assert_eq!(figure(&r, "lost"), 0);
    assert!(r["figures"]["latency_p50_ms"].as_f64().unwrap() > 0.0);
    assert!(figure(&r, "server_rss_mib") > 0, "the nats-server's RSS came from /proc");
    assert_eq!(r["parameters"]["target"], "nats-ws");
    assert_telemetry_complete(&harness(&telemetry_args("nats-ws", &url, &publish), Duration::from_secs(60)));
}

#[test]
fn mqtt_ws_telemetry_and_idle_against_a_private_mosquitto() {
    let (peers, ports) = Peers::start("mosquitto");
    let url = format!("ws://127.0.0.1:{}/mqtt", ports[1]);
    let publish = format!("mqtt://127.0.0.1:{}", ports[0]);
    // `dev.*.temp` becomes the MQTT filter `dev/+/temp`.
    assert_telemetry_complete(&harness(&telemetry_args("mqtt-ws", &url, &publish), Duration::from_secs(60)));
    let pid = peers.pid("mosquitto");
    let r = harness(&["idle", "--target", "mqtt-ws", "--url", &url, "--conns", "400", "--duration", "1s", "--server-pid", &pid], Duration::from_secs(60));
    assert_eq!(figure(&r, "connections_held_at_end"), 400, "{r:#}");
    assert!(figure(&r, "server_rss_bytes_per_conn") > 0, "{r:#}");
    assert_eq!(figure(&r, "dropped_after_ready"), 0);
}

/// A ringcast gateway from this workspace on a free port; killed on drop.
struct Gateway {
    child: Child,
    port: u16,
}

fn gateway_bin() -> PathBuf {
    let bin = repo().join("target/release/ringcast");
    assert!(bin.exists(), "{} is missing: build the workspace first (`cargo build --release --workspace`; scripts/test.sh does)", bin.display());
    bin
}

impl Gateway {
    fn start() -> Gateway {
        Gateway::start_with(&[])
    }

    fn start_with(extra: &[&str]) -> Gateway {
        let port = free_port();
        let child = Command::new(gateway_bin())
            .args(["gateway", "--listen", &format!("127.0.0.1:{port}"), "--shards", "1", "--api-key", "k", "--log", "warn", "--accept-rate", "1000000"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_listening(port, "ringcast gateway");
        Gateway { child, port }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn ringcast_telemetry_with_wildcard_dashboards() {
    let gw = Gateway::start();
    let url = format!("ws://127.0.0.1:{}/ws", gw.port);
    let mut args = telemetry_args("ringcast", &url, "http");
    args.extend(["--api-key", "k", "--publishers", "2"]);
    assert_telemetry_complete(&harness(&args, Duration::from_secs(60)));
}

#[test]
fn ringcast_reconnect_after_kill_and_restart_brings_every_client_back() {
    let gw = Gateway::start();
    let port = gw.port;
    let url = format!("ws://127.0.0.1:{port}/ws");
    let dir = tempdir::Dir::new("reconnect");
    let pidfile = dir.0.join("restarted.pid");
    let restart = format!(
        "sleep 0.3; {} gateway --listen 127.0.0.1:{port} --shards 1 --api-key k --log warn >/dev/null 2>&1 & echo $! > {}",
        gateway_bin().display(),
        pidfile.display()
    );
    let pid = gw.child.id().to_string();
    let r = harness(
        &[
            "reconnect", "--url", &url, "--api-key", "k", "--conns", "500", "--rate", "20", "--duration", "5s", "--disrupt-at", "1500ms",
            "--kill-pid", &pid, "--restart-cmd", &restart, "--back-within", "20s",
        ],
        Duration::from_secs(90),
    );
    let restarted: i32 = std::fs::read_to_string(&pidfile).expect("the restart command ran").trim().parse().unwrap();
    stop_pid(restarted);
    assert_eq!(figure(&r, "disrupted"), 500, "killing the gateway dropped every client: {r:#}");
    assert_eq!(figure(&r, "reconnected"), 500, "{r:#}");
    assert_eq!((figure(&r, "ready_at_end"), figure(&r, "gave_up"), figure(&r, "still_waiting")), (500, 0, 0));
    let back = r["figures"]["time_until_all_back_ms"].as_f64().expect("every client came back");
    assert!(back > 0.0 && back < 20_000.0, "{back} ms");
    assert!(figure(&r, "reconnect_max_ms") as f64 <= back + 1.0);
    // Without history there is no resume: what the clients missed while away shows up as
    // gaps in the publisher's numbers, and accounts for every lost delivery.
    assert_eq!(figure(&r, "resumed"), 0);
    assert_eq!(figure(&r, "missed_in_gaps"), figure(&r, "lost"), "{r:#}");
    assert_eq!(figure(&r, "duplicates"), 0);
    assert!(figure(&r, "published") > 50);
}

/// SIGTERM to the restarted gateway (not our child: the restart command started it).
fn stop_pid(pid: i32) {
    // SAFETY: kill(2) has no memory effects; the pid is the gateway this test started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
}

/// A private nats-server with JetStream on a free port (the gateway's history lives there).
struct PrivateNats {
    child: Child,
    port: u16,
    _dir: tempdir::Dir,
}

impl PrivateNats {
    fn start() -> PrivateNats {
        let dir = tempdir::Dir::new("js");
        let port = free_port();
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd", &dir.0.display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server on PATH (scripts/services.sh installs it)");
        wait_listening(port, "nats-server");
        PrivateNats { child, port, _dir: dir }
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn ringcast_fanout_published_through_the_nats_bridge() {
    let nats = PrivateNats::start();
    let prefix = format!("lt{}a", std::process::id());
    let nats_url = format!("nats://127.0.0.1:{}", nats.port);
    let gw = Gateway::start_with(&["--nats", &nats_url, "--nats-prefix", &prefix]);
    let url = format!("ws://127.0.0.1:{}/ws", gw.port);
    let publish = format!("{nats_url}?prefix={prefix}");
    let r = harness(&["fanout", "--url", &url, "--publish", &publish, "--conns", "300", "--rate", "50", "--duration", "2s"], Duration::from_secs(60));
    let published = figure(&r, "published");
    assert!(published >= 90, "{r:#}");
    assert_eq!(figure(&r, "deliveries"), published * 300, "every NATS publish on {prefix}.bench reached every WebSocket subscriber: {r:#}");
    assert_eq!(figure(&r, "lost"), 0);
}

/// History on NATS JetStream: the gateway is killed while the publisher keeps publishing
/// through NATS; the restarted gateway replays, and every client resumes with `since`
/// without a gap or a duplicate.
#[test]
fn ringcast_resume_with_since_after_a_gateway_restart_misses_nothing() {
    let nats = PrivateNats::start();
    let prefix = format!("lt{}b", std::process::id());
    let nats_url = format!("nats://127.0.0.1:{}", nats.port);
    let flags = ["--nats", nats_url.as_str(), "--nats-prefix", prefix.as_str(), "--history", "hist.>"];
    let gw = Gateway::start_with(&flags);
    let port = gw.port;
    let url = format!("ws://127.0.0.1:{port}/ws");
    let dir = tempdir::Dir::new("resume");
    let pidfile = dir.0.join("restarted.pid");
    let restart = format!(
        "sleep 0.5; {} gateway --listen 127.0.0.1:{port} --shards 1 --api-key k --log warn {} >/dev/null 2>&1 & echo $! > {}",
        gateway_bin().display(),
        flags.iter().map(|f| format!("'{f}'")).collect::<Vec<_>>().join(" "),
        pidfile.display()
    );
    let pid = gw.child.id().to_string();
    let publish = format!("{nats_url}?prefix={prefix}");
    let r = harness(
        &[
            "reconnect", "--url", &url, "--publish", &publish, "--channel", "hist.room", "--conns", "300", "--rate", "20",
            "--duration", "5s", "--disrupt-at", "1500ms", "--kill-pid", &pid, "--restart-cmd", &restart, "--back-within", "20s",
        ],
        Duration::from_secs(90),
    );
    if let Ok(text) = std::fs::read_to_string(&pidfile) {
        stop_pid(text.trim().parse().unwrap());
    }
    assert_eq!((figure(&r, "disrupted"), figure(&r, "reconnected"), figure(&r, "ready_at_end")), (300, 300, 300), "{r:#}");
    // `resumed` counts `sub` with `since` sent; a retry whose connection failed mid-join sends another.
    assert!(figure(&r, "resumed") >= 300, "every client saw a seq and resubscribed with since: {r:#}");
    assert_eq!(figure(&r, "resume_refused"), 0);
    assert_eq!(figure(&r, "resumed_with_gap"), 0, "no resumed subscription missed a message: {r:#}");
    assert_eq!((figure(&r, "gaps"), figure(&r, "seq_gaps")), (0, 0), "{r:#}");
    assert_eq!(figure(&r, "duplicates"), 0, "no duplicate at the replay/live seam: {r:#}");
    assert_eq!(figure(&r, "lost"), 0, "messages published while the gateway was down were replayed: {r:#}");
    assert!(r["figures"].get("publish_errors").is_none(), "publishing through NATS never saw the outage");
}

/// `--target pusher` against ringcast's Pusher protocol 7 endpoint: subscribers connect to
/// /app/KEY, subscribe once greeted, and every event triggered through the signed HTTP API
/// reaches every one of them with its stamp (found inside the JSON-string `data`).
#[test]
fn pusher_fanout_and_idle_subscribed_against_ringcasts_pusher_endpoint() {
    let app = "4242:lt-pusher-key:lt-pusher-secret";
    let gw = Gateway::start_with(&["--pusher-app", app]);
    let url = format!("ws://127.0.0.1:{}", gw.port);
    let pid = gw.child.id().to_string();
    let r = harness(
        &[
            "fanout", "--target", "pusher", "--pusher-app", app, "--url", &url, "--conns", "300", "--rate", "50", "--duration", "2s",
            "--server-pid", &pid,
        ],
        Duration::from_secs(60),
    );
    let published = figure(&r, "published");
    assert!(published >= 90, "50 msgs/s for 2 s published only {published}: {r:#}");
    assert_eq!(figure(&r, "connections_ready"), 300, "{r:#}");
    assert_eq!(figure(&r, "deliveries"), published * 300, "{r:#}");
    assert_eq!(figure(&r, "lost"), 0);
    assert!(r["figures"]["latency_p50_ms"].as_f64().unwrap() > 0.0, "the stamp was read out of the data string: {r:#}");
    assert!(r["figures"].get("publish_errors").is_none(), "every signed trigger was accepted: {r:#}");
    assert_eq!(r["parameters"]["target"], "pusher");

    let r = harness(
        &["idle", "--target", "pusher", "--pusher-app", app, "--url", &url, "--channel", "idle-room", "--conns", "200", "--duration", "1s", "--server-pid", &pid],
        Duration::from_secs(60),
    );
    assert_eq!(figure(&r, "connections_held_at_end"), 200, "{r:#}");
    assert_eq!(figure(&r, "dropped_after_ready"), 0);
    assert!(r["figures"].get("server_rss_bytes_per_conn").is_some(), "{r:#}");

    // A wrong secret is refused by the server's signature check, and the run says so.
    let stderr = harness_fails(&["fanout", "--target", "pusher", "--pusher-app", "4242:lt-pusher-key:wrong", "--url", &url, "--conns", "5", "--rate", "5", "--duration", "1s"], Duration::from_secs(30));
    assert!(stderr.contains("HTTP 401"), "{stderr}");
}

/// Runs the harness expecting it to fail within `limit`; returns its stderr.
fn harness_fails(args: &[&str], limit: Duration) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringcast-loadtest")).args(args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("harness {args:?} ran over {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "harness {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}
