//! Drain: SIGTERM (or `POST /admin/drain`) refuses new upgrades, turns readyz 503
//! `draining`, closes every connection with 1012 spread over `--drain-seconds`, then the
//! process exits 0. A second SIGTERM exits at once.


use crate::common::edge_a::try_upgrade;
use crate::common::{http, Gateway, Raw, API_KEY};
use std::time::{Duration, Instant};

/// Reads each client's close frame on its own thread; returns (code, seconds after
/// `since`) per client. Each answers the close like a well-behaved client.
fn closes(clients: Vec<Raw>, since: Instant) -> Vec<std::thread::JoinHandle<(u16, f64)>> {
    clients
        .into_iter()
        .map(|mut client| {
            std::thread::spawn(move || {
                let code = client.expect_close();
                let at = since.elapsed().as_secs_f64();
                client.send_frame(8, true, &code.to_be_bytes());
                (code, at)
            })
        })
        .collect()
}

#[test]
fn sigterm_closes_every_client_with_1012_spread_over_the_window_and_exits_0() {
    let mut gateway = Gateway::start(&["--shards", "2", "--drain-seconds", "2"]);
    let clients: Vec<Raw> = (0..20).map(|_| Raw::connect(gateway.port, "")).collect();
    let started = Instant::now();
    gateway.signal(libc::SIGTERM);
    let readers = closes(clients, started);
    std::thread::sleep(Duration::from_millis(150));
    let (status, _, body) = http(gateway.port, "GET", "/readyz", &[], b"");
    assert_eq!((status, body.as_str()), (503, "{\"status\":\"draining\"}"));
    let (status, head, _) = try_upgrade(gateway.port);
    assert_eq!(status, 503, "no new connections while draining: {head}");
    let mut times: Vec<f64> = readers
        .into_iter()
        .map(|r| {
            let (code, at) = r.join().unwrap();
            assert_eq!(code, 1012);
            at
        })
        .collect();
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (first, last) = (times[0], times[times.len() - 1]);
    assert!(last <= 2.8, "every client closed within the 2 s window (+ slack): {times:?}");
    assert!(last - first >= 1.0, "spread over the window, not all at once: {times:?}");
    let early = times.iter().filter(|t| **t < 0.5).count();
    assert!(early <= 8, "a quarter of the window closes about a quarter of the clients: {times:?}");
    assert_eq!(gateway.wait_exit(Duration::from_secs(8)), Some(0));
}

#[test]
fn a_second_sigterm_exits_at_once() {
    let mut gateway = Gateway::start(&["--shards", "1", "--drain-seconds", "30"]);
    let _clients: Vec<Raw> = (0..4).map(|_| Raw::connect(gateway.port, "")).collect();
    gateway.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(gateway.wait_exit(Duration::from_millis(100)), None, "still draining");
    let started = Instant::now();
    gateway.signal(libc::SIGTERM);
    assert!(gateway.wait_exit(Duration::from_secs(2)).is_some(), "second SIGTERM must exit at once");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn admin_drain_needs_the_api_key_then_drains_and_exits_0() {
    let mut gateway = Gateway::start(&["--shards", "1", "--drain-seconds", "1"]);
    let clients: Vec<Raw> = (0..3).map(|_| Raw::connect(gateway.port, "")).collect();
    assert_eq!(http(gateway.port, "POST", "/admin/drain", &[], b"").0, 401);
    assert_eq!(http(gateway.port, "POST", "/admin/drain", &[("Authorization", "Bearer wrong")], b"").0, 401);
    assert_eq!(http(gateway.port, "GET", "/admin/drain", &[], b"").0, 405);
    let auth = format!("Bearer {API_KEY}");
    let started = Instant::now();
    let (status, _, body) = http(gateway.port, "POST", "/admin/drain", &[("Authorization", &auth)], b"");
    assert_eq!(status, 202, "{body}");
    assert!(body.contains("\"status\":\"draining\""), "{body}");
    // Asking again changes nothing.
    assert_eq!(http(gateway.port, "POST", "/admin/drain", &[("Authorization", &auth)], b"").0, 202);
    for reader in closes(clients, started) {
        let (code, at) = reader.join().unwrap();
        assert_eq!(code, 1012);
        assert!(at < 1.8, "closed within the 1 s window: {at}");
    }
    assert_eq!(gateway.wait_exit(Duration::from_secs(8)), Some(0));
}
