//! TLS termination: a real rustls client (TLS 1.3 and 1.2, ALPN), WebSocket traffic and
//! the server API over it, an expired certificate, non-TLS bytes, bad PEM at start, and
//! a SIGHUP reload that serves the new certificate while an old connection stays up.


use crate::common::edge_b::*;
use crate::common::{Gateway, API_KEY};
use serde_json::json;
use std::time::{Duration, Instant};

fn eventually(what: &str, mut probe: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if probe() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn websocket_and_api_over_tls_1_3_and_1_2() {
    let dir = TempDir::new();
    let minted = mint(false);
    let gateway = start_tls(&dir, &minted, &["--shards", "2"]);
    let port = gateway.port;

    let tls13 = client_config(&minted.ca_pem, &[&rustls::version::TLS13]);
    let (mut client, welcome) = wss_connect(port, tls13.clone(), "").expect("wss connect");
    assert!(welcome["conn"].as_u64().is_some());
    {
        let conn = &client.get_ref().conn;
        assert_eq!(conn.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
        assert_eq!(conn.alpn_protocol(), Some(&b"http/1.1"[..]), "ALPN picks http/1.1 over h2");
    }
    let channel = format!("tls.{}", crate::common::unique());
    assert_eq!(request(&mut client, json!({"op": "sub", "ch": channel}), 1)["op"], "ok");

    // Publish through the server API over its own TLS connection.
    let mut api = tls_connect(port, tls13.clone()).unwrap();
    let body = json!({"ch": channel, "data": {"n": 1, "pad": "x".repeat(40_000)}}).to_string();
    let auth = format!("Bearer {API_KEY}");
    let (status, _, answer) = http_over(&mut api, "POST", "/api/publish", &[("Authorization", &auth)], body.as_bytes());
    assert_eq!(status, 202, "{answer}");
    let msg = recv_json(&mut client);
    assert_eq!(msg["op"], "msg");
    assert_eq!(msg["data"]["n"], 1);
    assert_eq!(msg["data"]["pad"].as_str().unwrap().len(), 40_000, "a frame larger than one TLS record arrives whole");

    // A burst of client ops in one go is decrypted and answered in order.
    for id in 10..60u32 {
        send_json(&mut client, json!({"op": "ping", "id": id}));
    }
    for id in 10..60u32 {
        let pong = recv_json(&mut client);
        assert_eq!(pong["op"], "pong");
        assert_eq!(pong["id"], id);
    }

    // TLS 1.2 works too.
    let tls12 = client_config(&minted.ca_pem, &[&rustls::version::TLS12]);
    let (mut old, _) = wss_connect(port, tls12, "").expect("TLS 1.2 connect");
    assert_eq!(old.get_ref().conn.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));
    assert_eq!(request(&mut old, json!({"op": "ping"}), 7)["op"], "pong");

    // Large assets over keep-alive HTTP inside TLS.
    let mut page = tls_connect(port, tls13).unwrap();
    let (status, _, js) = http_over(&mut page, "GET", "/ringcast.js", &[], b"");
    assert_eq!(status, 200);
    assert!(js.len() > 10_000 && js.contains("LongPoll"), "the whole client script arrives ({} bytes)", js.len());

    client.close(None).unwrap();
    let metrics = {
        let mut stream = tls_connect(port, insecure_client_config()).unwrap();
        http_over(&mut stream, "GET", "/metrics", &[], b"").2
    };
    assert_eq!(metric_value(&metrics, "ringcast_tls_enabled"), 1.0);
    assert!(metric_sum(&metrics, "ringcast_tls_handshakes_total", "shard=") >= 5.0, "{metrics}");
}

#[test]
fn expired_certificate_and_non_tls_clients_fail_the_handshake() {
    let dir = TempDir::new();
    let minted = mint(true);
    let gateway = start_tls(&dir, &minted, &["--shards", "1"]);
    let port = gateway.port;

    let error = tls_connect(port, client_config(&minted.ca_pem, &[&rustls::version::TLS13])).err().expect("an expired certificate must not verify");
    assert!(format!("{error:?}").contains("Expired"), "the client says why: {error:?}");
    eventually("the client's alert counted", || metric_sum(&tls_get_metrics(port), "ringcast_tls_handshake_failures_total", "reason=\"client_alert\"") >= 1.0);

    // Plain HTTP to a TLS port: refused at the TLS layer, never served in clear text.
    let (status, head, _) = crate::common::http(port, "GET", "/healthz", &[], b"");
    assert_ne!(status, 200, "plain HTTP must not be served on a TLS listener: {head}");
    eventually("the protocol failure counted", || metric_sum(&tls_get_metrics(port), "ringcast_tls_handshake_failures_total", "reason=\"protocol\"") >= 1.0);
}

fn tls_get_metrics(port: u16) -> String {
    let mut stream = tls_connect(port, insecure_client_config()).unwrap();
    http_over(&mut stream, "GET", "/metrics", &[], b"").2
}

/// Starts the binary with `args` and returns (exit code, stderr).
fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["gateway", "--listen", "127.0.0.1:0"])
        .args(args)
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).to_string())
}

#[test]
fn bad_pem_at_start_names_the_flag() {
    let dir = TempDir::new();
    let minted = mint(false);
    let cert = dir.write("cert.pem", &minted.cert_pem);
    let key = dir.write("key.pem", &minted.key_pem);
    let garbage = dir.write("garbage.pem", "not a certificate\n");
    let other_key = dir.write("other-key.pem", &mint(false).key_pem);
    let (cert, key, garbage, other_key) = (cert.to_str().unwrap(), key.to_str().unwrap(), garbage.to_str().unwrap(), other_key.to_str().unwrap());

    let (code, err) = run_to_exit(&["--tls-cert", garbage, "--tls-key", key]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("tls_cert") && err.contains("garbage.pem"), "{err}");
    let (code, err) = run_to_exit(&["--tls-cert", cert, "--tls-key", "/nonexistent/key.pem"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("tls_key") && err.contains("cannot read"), "{err}");
    let (code, err) = run_to_exit(&["--tls-cert", cert, "--tls-key", other_key]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("tls_key") && err.contains("does not fit"), "a key of another certificate is refused: {err}");
    let (code, err) = run_to_exit(&["--tls-cert", cert]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("tls_key"), "{err}");
}

#[test]
fn sighup_reload_serves_the_new_certificate_and_keeps_old_connections() {
    let dir = TempDir::new();
    let first = mint(false);
    let mut gateway: Gateway = start_tls(&dir, &first, &["--shards", "2"]);
    let port = gateway.port;
    let trusts_first = client_config(&first.ca_pem, &[&rustls::version::TLS13]);
    let (mut old, _) = wss_connect(port, trusts_first.clone(), "").expect("connect with the first certificate");

    let second = mint(false);
    dir.write("cert.pem", &second.cert_pem);
    dir.write("key.pem", &second.key_pem);
    gateway.signal(libc::SIGHUP);
    eventually("the reload", || metric_value(&tls_get_metrics(port), "ringcast_tls_reloads_total") >= 1.0);

    let trusts_second = client_config(&second.ca_pem, &[&rustls::version::TLS13]);
    let (mut new, _) = wss_connect(port, trusts_second.clone(), "").expect("new handshakes use the new certificate");
    assert_eq!(request(&mut new, json!({"op": "ping"}), 1)["op"], "pong");
    assert!(tls_connect(port, trusts_first).is_err(), "the old certificate is no longer served");
    assert_eq!(request(&mut old, json!({"op": "ping"}), 2)["op"], "pong", "the connection made before the reload stays up");

    // A bad file keeps the current certificate and says so.
    dir.write("cert.pem", "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n");
    gateway.signal(libc::SIGHUP);
    eventually("the refused reload", || metric_value(&tls_get_metrics(port), "ringcast_tls_reload_failures_total") >= 1.0);
    let (mut after, _) = wss_connect(port, trusts_second, "").expect("still serving the second certificate");
    assert_eq!(request(&mut after, json!({"op": "ping"}), 3)["op"], "pong");
    assert_eq!(request(&mut old, json!({"op": "ping"}), 4)["op"], "pong");
    assert!(gateway.child.try_wait().unwrap().is_none(), "SIGHUP must not stop the gateway");
}

#[test]
fn long_poll_over_tls_and_handshake_limits() {
    let dir = TempDir::new();
    let minted = mint(false);
    let gateway = start_tls(&dir, &minted, &["--shards", "1", "--handshake-timeout", "1s", "--poll-wait", "1s"]);
    let port = gateway.port;
    let config = client_config(&minted.ca_pem, &[&rustls::version::TLS13]);

    // Long-poll over TLS: open, subscribe, poll.
    let (status, _, body) = http_over(&mut tls_connect(port, config.clone()).unwrap(), "POST", "/poll", &[], b"");
    assert_eq!(status, 200, "{body}");
    let sid = serde_json::from_str::<serde_json::Value>(&body).unwrap()["sid"].as_str().unwrap().to_string();
    let sub = json!({"op": "sub", "ch": "tls.poll", "id": 1}).to_string();
    let (status, _, _) = http_over(&mut tls_connect(port, config.clone()).unwrap(), "POST", &format!("/poll/{sid}"), &[], sub.as_bytes());
    assert_eq!(status, 202);
    let (status, _, body) = http_over(&mut tls_connect(port, config.clone()).unwrap(), "GET", &format!("/poll/{sid}?ack=1"), &[], b"");
    assert_eq!(status, 200);
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["frames"][0], json!({"op": "ok", "id": 1}), "{answer}");

    // A client that offers only h2 has no protocol in common with us: refused with an alert.
    let mut h2_only = (*client_config(&minted.ca_pem, &[&rustls::version::TLS13])).clone();
    h2_only.alpn_protocols = vec![b"h2".to_vec()];
    let error = tls_connect(port, std::sync::Arc::new(h2_only)).err().expect("no common ALPN protocol");
    assert!(format!("{error:?}").contains("NoApplicationProtocol"), "{error:?}");

    // A socket that never starts the handshake is closed after --handshake-timeout.
    let mut silent = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    silent.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    let mut byte = [0u8; 1];
    let read = std::io::Read::read(&mut silent, &mut byte);
    assert!(matches!(read, Ok(0)) || read.is_err(), "closed without a byte: {read:?}");
    assert!(started.elapsed() >= Duration::from_millis(800), "not before the timeout");
    eventually("the timeout counted", || metric_sum(&tls_get_metrics(port), "ringcast_tls_handshake_failures_total", "reason=\"timeout\"") >= 1.0);
    assert!(metric_sum(&tls_get_metrics(port), "ringcast_tls_handshake_failures_total", "reason=\"protocol\"") >= 1.0, "the h2-only client counted");
}
