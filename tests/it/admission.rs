//! Admission control: past `--max-connections` or the per-shard `--accept-rate`, an
//! upgrade is answered 503 with `Retry-After` on its own socket (never accepted and then
//! dropped), counted by reason, and readyz turns 503 while the node is full. A second
//! gateway on a port a live process holds refuses to start unless `--share-port`.


use crate::common::edge_a::{header, metric, scrape, spawn_on, try_upgrade};
use crate::common::{connect, http, Gateway};
use std::io::Read;
use std::time::{Duration, Instant};

#[test]
fn past_max_connections_upgrades_get_503_with_retry_after_and_readyz_turns_503() {
    let gateway = Gateway::start(&["--shards", "2", "--max-connections", "3"]);
    let mut clients: Vec<_> = (0..3).map(|_| connect(&gateway.url("")).0).collect();
    assert_eq!(http(gateway.port, "GET", "/readyz", &[], b"").0, 503, "full node is not ready");
    for _ in 0..4 {
        let (status, head, mut stream) = try_upgrade(gateway.port);
        assert_eq!(status, 503, "{head}");
        assert_eq!(header(&head, "Retry-After").as_deref(), Some("5"), "{head}");
        // The body says why, and nothing becomes a WebSocket on this socket.
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
        assert!(String::from_utf8_lossy(&rest).contains("max_connections"));
    }
    let metrics = scrape(gateway.port);
    assert_eq!(metric(&metrics, "ringcast_refusals_total", &["reason=\"full\""]), 4.0, "{metrics}");
    assert_eq!(metric(&metrics, "ringcast_connections", &[]), 3.0);
    assert_eq!(metric(&metrics, "ringcast_capacity_ratio", &[]), 1.0);
    // One leaves: ready again, and the next client gets in.
    clients.pop().unwrap().close(None).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while http(gateway.port, "GET", "/readyz", &[], b"").0 != 200 {
        assert!(Instant::now() < deadline, "readyz never came back");
        std::thread::sleep(Duration::from_millis(20));
    }
    connect(&gateway.url(""));
}

#[test]
fn past_the_accept_rate_upgrades_get_503_with_retry_after_1() {
    let gateway = Gateway::start(&["--shards", "1", "--accept-rate", "5"]);
    let started = Instant::now();
    let mut open = Vec::new();
    let mut refused = 0;
    for _ in 0..20 {
        let (status, head, stream) = try_upgrade(gateway.port);
        match status {
            101 => open.push(stream),
            503 => {
                assert_eq!(header(&head, "Retry-After").as_deref(), Some("1"), "{head}");
                refused += 1;
            }
            other => panic!("unexpected {other}: {head}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // The burst is one second's worth (5); at most elapsed × 5 more refilled meanwhile.
    assert!(open.len() >= 5 && open.len() as f64 <= 5.0 + (elapsed * 5.0).ceil(), "{} admitted in {elapsed:.2}s", open.len());
    assert_eq!(open.len() + refused, 20);
    let metrics = scrape(gateway.port);
    assert_eq!(metric(&metrics, "ringcast_refusals_total", &["reason=\"rate_limited\""]), refused as f64, "{metrics}");
    // Being over the rate is not being full: readyz stays 200 (other requests still work).
    assert_eq!(http(gateway.port, "GET", "/readyz", &[], b"").0, 200);
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(try_upgrade(gateway.port).0, 101, "the bucket refills");
}

#[test]
fn a_second_gateway_on_a_live_port_refuses_to_start_unless_share_port() {
    let first = Gateway::start(&["--shards", "1"]);
    let listen = format!("127.0.0.1:{}", first.port);
    let second = spawn_on(&listen, &["--shards", "1", "--log", "warn"]);
    let output = second.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("already listening") && stderr.contains("--share-port"), "{stderr}");
    // On purpose: both serve the port.
    let mut shared = spawn_on(&listen, &["--shards", "1", "--log", "warn", "--share-port"]);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(shared.stdout.take().unwrap()), &mut line).unwrap();
    assert!(line.contains("listening"), "{line}");
    // A graceful stop (a killed process's io_uring may close its listener a moment after
    // it is reaped, and connections landing there meanwhile are reset).
    unsafe { libc::kill(shared.id() as i32, libc::SIGINT) };
    assert_eq!(shared.wait().unwrap().code(), Some(0));
    for _ in 0..4 {
        assert_eq!(http(first.port, "GET", "/healthz", &[], b"").0, 200, "the first gateway serves the port alone again");
    }
}

#[test]
fn bad_admission_settings_name_their_key() {
    for (flag, value, key) in [("--accept-rate", "0", "accept_rate"), ("--drain-seconds", "soon", "drain_seconds")] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_ringcast")).args(["gateway", flag, value]).output().unwrap();
        assert_eq!(output.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&output.stderr).contains(key));
    }
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ringcast")).args(["gateway", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in ["--accept-rate", "--drain-seconds", "--share-port"] {
        assert!(help.contains(flag), "--help explains {flag}");
    }
}
