//! The WebSocket session against a real gateway process: ops, errors, close codes,
//! fragmentation, heartbeats.


use crate::common::*;
use serde_json::json;
use std::time::Duration;

#[test]
fn welcome_ping_and_subprotocol_echo() {
    let gateway = Gateway::start(&["--shards", "2"]);
    let (mut client, welcome) = connect(&gateway.url(""));
    assert!(welcome["conn"].as_u64().is_some());
    assert!(welcome["node"].as_str().is_some());
    assert_eq!(welcome["hb"], 25);
    let pong = request(&mut client, json!({"op": "ping"}), 7);
    assert_eq!(pong, json!({"op": "pong", "id": 7}));

    let mut request = tungstenite::client::IntoClientRequest::into_client_request(gateway.url("")).unwrap();
    request.headers_mut().insert("Sec-WebSocket-Protocol", "foo, ringcast.v1".parse().unwrap());
    let stream = std::net::TcpStream::connect(("127.0.0.1", gateway.port)).unwrap();
    let (_client, response) = tungstenite::client(request, stream).unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "ringcast.v1");
}

#[test]
fn bad_ops_get_400_and_the_connection_stays_open() {
    let gateway = Gateway::start(&[]);
    let (mut client, _) = connect(&gateway.url(""));
    send_json(&mut client, json!({"op": "dance", "id": 3}));
    let answer = recv_json(&mut client);
    assert_eq!((answer["op"].as_str(), answer["code"].as_u64(), answer["id"].as_u64()), (Some("err"), Some(400), Some(3)));
    client.send(tungstenite::Message::text("{not json")).unwrap();
    let answer = recv_json(&mut client);
    assert_eq!(answer["code"], 400);
    let answer = request(&mut client, json!({"op": "sub", "ch": "a..b"}), 4);
    assert_eq!(answer["code"], 400, "{answer}");
    assert!(answer["msg"].as_str().unwrap().contains("empty"), "{answer}");
    let answer = request(&mut client, json!({"op": "unsub", "ch": "never.subscribed"}), 5);
    assert_eq!(answer["code"], 404);
    let answer = request(&mut client, json!({"op": "pub", "ch": "a.b", "data": 1}), 6);
    assert_eq!(answer["code"], 403, "anonymous may not publish: {answer}");
    client.send(tungstenite::Message::binary(vec![1u8, 2, 3])).unwrap();
    assert_eq!(recv_json(&mut client)["code"], 400);
    assert_eq!(request(&mut client, json!({"op": "ping"}), 9)["op"], "pong");
}

#[test]
fn subscribe_receive_unsubscribe() {
    let gateway = Gateway::start(&[]);
    let (mut client, _) = connect(&gateway.url(""));
    let channel = format!("t{}.news", unique());
    assert_eq!(request(&mut client, json!({"op": "sub", "ch": channel}), 1)["op"], "ok");
    publish(gateway.port, &channel, json!({"n": 1, "s": "é\"x"}));
    let message = recv_json(&mut client);
    assert_eq!(message, json!({"op": "msg", "ch": channel, "data": {"n": 1, "s": "é\"x"}}));
    assert_eq!(request(&mut client, json!({"op": "unsub", "ch": channel}), 2)["op"], "ok");
    let sentinel = format!("{channel}.sentinel");
    assert_eq!(request(&mut client, json!({"op": "sub", "ch": sentinel}), 3)["op"], "ok");
    publish(gateway.port, &channel, json!(2));
    publish(gateway.port, &sentinel, json!("last"));
    // Publishes reach a subscriber in order: had the unsubscribed one arrived, it would
    // come before the sentinel.
    assert_eq!(recv_json(&mut client), json!({"op": "msg", "ch": sentinel, "data": "last"}));
}

#[test]
fn unmasked_client_frame_closes_with_1002() {
    let gateway = Gateway::start(&[]);
    let mut raw = Raw::connect(gateway.port, "");
    raw.send_bytes(&[0x81, 0x02, b'h', b'i']);
    assert_eq!(raw.expect_close(), 1002);
}

#[test]
fn invalid_utf8_closes_with_1007_even_across_fragments() {
    let gateway = Gateway::start(&[]);
    let mut raw = Raw::connect(gateway.port, "");
    raw.send_frame(1, true, &[0xff, 0xfe]);
    assert_eq!(raw.expect_close(), 1007);

    let mut raw = Raw::connect(gateway.port, "");
    // "é" is C3 A9: split across fragments it is fine…
    raw.send_frame(1, false, b"{\"op\":\"ping\",\"x\":\"\xc3");
    raw.send_frame(0, true, b"\xa9\",\"id\":1}");
    let (opcode, payload) = raw.read_frame().unwrap();
    assert_eq!(opcode, 1);
    assert!(String::from_utf8(payload).unwrap().contains("pong"));
    // …but a lead byte followed by a non-continuation byte is not.
    raw.send_frame(1, false, b"{\"x\":\"\xc3");
    raw.send_frame(0, true, b"(\"}");
    assert_eq!(raw.expect_close(), 1007);
}

#[test]
fn oversize_frame_closes_with_1009() {
    let gateway = Gateway::start(&["--max-frame", "1KiB", "--max-message", "4KiB"]);
    let mut raw = Raw::connect(gateway.port, "");
    raw.send_frame(1, true, &vec![b' '; 2048]);
    assert_eq!(raw.expect_close(), 1009);
    // Fragments each under the frame bound but over the message bound.
    let mut raw = Raw::connect(gateway.port, "");
    for i in 0..5 {
        raw.send_frame(if i == 0 { 1 } else { 0 }, false, &[b' '; 1000]);
    }
    assert_eq!(raw.expect_close(), 1009);
}

#[test]
fn fragmented_message_with_interleaved_ping() {
    let gateway = Gateway::start(&[]);
    let mut raw = Raw::connect(gateway.port, "");
    raw.send_frame(1, false, b"{\"op\":");
    raw.send_frame(9, true, b"hb");
    raw.send_frame(0, false, b"\"ping\",");
    raw.send_frame(0, true, b"\"id\":42}");
    let (opcode, payload) = raw.read_frame().unwrap();
    assert_eq!((opcode, payload.as_slice()), (10, &b"hb"[..]), "pong answers the interleaved ping first");
    let (opcode, payload) = raw.read_frame().unwrap();
    assert_eq!(opcode, 1);
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&payload).unwrap(), json!({"op": "pong", "id": 42}));
    // A continuation with no message started is a protocol error.
    raw.send_frame(0, true, b"x");
    assert_eq!(raw.expect_close(), 1002);
}

#[test]
fn client_close_is_echoed_with_its_code() {
    let gateway = Gateway::start(&[]);
    let mut raw = Raw::connect(gateway.port, "");
    raw.send_frame(8, true, &1000u16.to_be_bytes());
    assert_eq!(raw.expect_close(), 1000);
    assert!(raw.read_frame().is_none(), "server closes the socket after the handshake");
}

#[test]
fn silent_peer_is_dropped_and_answering_peer_is_kept() {
    let gateway = Gateway::start(&["--heartbeat", "200ms", "--heartbeat-timeout", "1s"]);
    let mut silent = Raw::connect(gateway.port, "");
    let url = gateway.url("");
    // tungstenite answers pings while reading, so a client that keeps reading stays up.
    let live = std::thread::spawn(move || {
        let (mut live, _) = connect(&url);
        for id in 0..10 {
            std::thread::sleep(Duration::from_millis(250));
            assert_eq!(request(&mut live, json!({"op": "ping"}), id)["op"], "pong");
        }
    });
    // The raw client never answers pings.
    let started = std::time::Instant::now();
    let mut pings = 0;
    let mut close_code = None;
    while let Some((opcode, payload)) = silent.read_frame() {
        if opcode == 9 {
            pings += 1;
        }
        if opcode == 8 {
            close_code = Some(u16::from_be_bytes([payload[0], payload[1]]));
        }
    }
    assert_eq!(close_code, Some(1001), "a heartbeat timeout says why with a close frame before the socket closes");
    assert!(started.elapsed() < Duration::from_secs(8), "silent peer never dropped");
    assert!(pings >= 1, "server must ping before giving up");
    assert!(started.elapsed() >= Duration::from_millis(900));
    live.join().expect("the answering client stayed connected");
    let (_, _, metrics) = http(gateway.port, "GET", "/metrics", &[], b"");
    let dropped: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("ringcast_closes_total") && l.contains("heartbeat_timeout"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(dropped, 1, "{metrics}");
}

#[test]
fn rate_limit_answers_429_and_keeps_the_connection() {
    let gateway = Gateway::start(&["--client-rate", "10"]);
    let (mut client, _) = connect(&gateway.url(""));
    for id in 0..40u32 {
        send_json(&mut client, json!({"op": "ping", "id": id}));
    }
    let mut limited = 0;
    for _ in 0..40 {
        let frame = recv_json(&mut client);
        if frame["op"] == "err" {
            assert_eq!(frame["code"], 429);
            limited += 1;
        }
    }
    assert!(limited >= 15, "burst is 2x rate = 20, so ≥ 15 of 40 must be refused, got {limited}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(request(&mut client, json!({"op": "ping"}), 99)["op"], "pong");
}

#[test]
fn epoll_fallback_serves_the_same_protocol() {
    let gateway = Gateway::start(&["--epoll", "--shards", "2"]);
    let (mut client, _) = connect(&gateway.url(""));
    let channel = format!("t{}.epoll", unique());
    assert_eq!(request(&mut client, json!({"op": "sub", "ch": channel}), 1)["op"], "ok");
    for n in 0..50 {
        publish(gateway.port, &channel, json!(n));
    }
    for n in 0..50 {
        assert_eq!(recv_json(&mut client)["data"], n);
    }
    let (_, _, metrics) = http(gateway.port, "GET", "/metrics", &[], b"");
    assert!(metrics.contains("io=\"epoll\""), "metrics name the io mode: {metrics}");
}
