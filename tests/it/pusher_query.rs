//! The Pusher HTTP API's channel queries and terminate_connections (issue 16): answers are
//! cluster-wide, so every test here runs two gateway nodes on the shared nats-server (and
//! Redis for presence), subscribes on node A with a real WebSocket client and asks node B.
//! The npm and PyPI `pusher` server libraries (tests/pusher) make some of the calls.

use crate::common::edge_a::{metric, scrape};
use crate::common::nats::SHARED_NATS;
use crate::common::presence::{redis_prefix, wait_until, SHARED_REDIS};
use crate::common::*;
use crate::pusher::{close_code, connect_raw, next_event, npm_ready, pusher_url};
use ringcast::transport::pusher::sign;
use serde_json::{json, Value};
use std::time::Duration;

const KEY: &str = "query-test-key";
const SECRET: &str = "query-test-secret";

/// A fresh app id (digits) and NATS prefix per test: nothing seen here comes from another test.
struct Cluster {
    app: String,
    prefix: String,
    redis_prefix: String,
}

impl Cluster {
    fn new() -> Cluster {
        let n = unique();
        Cluster { app: format!("7{}", n % 1_000_000_000), prefix: format!("q{n}"), redis_prefix: redis_prefix() }
    }

    /// One gateway node of this cluster.
    fn node(&self, extra: &[&str]) -> Gateway {
        let app = format!("{}:{KEY}:{SECRET}", self.app);
        let mut args = vec!["--pusher-app", app.as_str(), "--nats", SHARED_NATS, "--nats-prefix", &self.prefix, "--redis", SHARED_REDIS, "--redis-prefix", &self.redis_prefix];
        args.extend_from_slice(extra);
        let gateway = Gateway::start(&args);
        let ready = wait_until(Duration::from_secs(15), || http(gateway.port, "GET", "/readyz", &[], b"").2.contains("\"ready\""));
        assert!(ready.is_some(), "gateway never ready: {}", http(gateway.port, "GET", "/readyz", &[], b"").2);
        gateway
    }

    /// Two nodes that hear each other (each counts two peers).
    fn pair(&self, extra: &[&str]) -> (Gateway, Gateway) {
        let (a, b) = (self.node(extra), self.node(extra));
        for gateway in [&a, &b] {
            let heard = wait_until(Duration::from_secs(10), || metric(&scrape(gateway.port), "ringcast_cluster_peers", &[]) == 2.0);
            assert!(heard.is_some(), "the nodes never heard each other on NATS");
        }
        (a, b)
    }

    /// A signed Pusher HTTP API call, as the server libraries make it; `params` are signed too.
    fn api(&self, port: u16, method: &str, path: &str, params: &[(&str, &str)], body: &[u8], secret: &str) -> (u16, Value) {
        let mut signed: Vec<(String, String)> = vec![("auth_key".into(), KEY.into()), ("auth_timestamp".into(), now_unix().to_string()), ("auth_version".into(), "1.0".into())];
        signed.extend(params.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        if !body.is_empty() {
            signed.push(("body_md5".into(), sign::hex(&sign::md5_digest(body))));
        }
        signed.sort();
        let qs = signed.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
        let signature = sign::sign_hex(secret, &[format!("{method}\n{path}\n{qs}").as_bytes()]);
        let (status, _head, text) = http(port, method, &format!("{path}?{qs}&auth_signature={signature}"), &[("Content-Type", "application/json")], body);
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    fn get(&self, port: u16, route: &str, params: &[(&str, &str)]) -> (u16, Value) {
        self.api(port, "GET", &format!("/apps/{}/{route}", self.app), params, b"", SECRET)
    }

    fn terminate(&self, port: u16, user: &str) -> (u16, Value) {
        self.api(port, "POST", &format!("/apps/{}/users/{user}/terminate_connections", self.app), &[], b"{}", SECRET)
    }

    /// The channel's answer once it satisfies `done` (asked every 50 ms for 5 s), or the last one.
    fn channel_until(&self, port: u16, channel: &str, done: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        wait_until(Duration::from_secs(5), || {
            let (status, body) = self.get(port, &format!("channels/{channel}"), &[("info", "subscription_count")]);
            assert_eq!(status, 200, "{body}");
            last = body;
            done(&last)
        });
        last
    }
}

/// A connected Pusher client (raw WebSocket) of this file's app, and its socket id.
fn pusher_client(port: u16) -> (Client, String) {
    let (client, first) = connect_raw(&pusher_url(port, KEY, "7"));
    assert_eq!(first["event"], "pusher:connection_established", "{first}");
    let data: Value = serde_json::from_str(first["data"].as_str().unwrap()).unwrap();
    (client, data["socket_id"].as_str().unwrap().to_string())
}

fn subscribe(client: &mut Client, socket: &str, channel: &str) {
    let auth = if channel.starts_with("private-") { format!("{KEY}:{}", sign::sign_hex(SECRET, &[socket.as_bytes(), b":", channel.as_bytes()])) } else { String::new() };
    send_json(client, json!({"event": "pusher:subscribe", "data": {"channel": channel, "auth": auth}}));
    let ok = next_event(client, "pusher_internal:subscription_succeeded", Duration::from_secs(5)).unwrap_or_else(|| panic!("subscribed to {channel}"));
    assert_eq!(ok["channel"], channel);
}

fn unsubscribe(client: &mut Client, channel: &str) {
    send_json(client, json!({"event": "pusher:unsubscribe", "data": {"channel": channel}}));
}

/// `pusher:signin` as `user` (signed as the backend would).
fn sign_in(client: &mut Client, socket: &str, user: &str) {
    let user_data = json!({"id": user}).to_string();
    let auth = format!("{KEY}:{}", sign::sign_hex(SECRET, &[socket.as_bytes(), b"::user::", user_data.as_bytes()]));
    send_json(client, json!({"event": "pusher:signin", "data": {"auth": auth, "user_data": user_data}}));
    assert!(next_event(client, "pusher:signin_success", Duration::from_secs(5)).is_some(), "signed in as {user}");
}

fn still_served(client: &mut Client) -> bool {
    send_json(client, json!({"event": "pusher:ping", "data": {}}));
    next_event(client, "pusher:pong", Duration::from_secs(5)).is_some()
}

#[test]
fn channel_queries_are_cluster_wide() {
    let cluster = Cluster::new();
    let (a, b) = cluster.pair(&[]);
    let (one, two, secret) = ("q-room.1", "q-room_2", "private-q-room");
    assert_eq!(cluster.get(b.port, "channels", &[("filter_by_prefix", "q-")]), (200, json!({"channels": {}})), "nothing occupied yet");

    // Subscribed on node A (two clients) and node B (one): node B's answers count them all.
    let (mut x, socket_x) = pusher_client(a.port);
    let (mut y, socket_y) = pusher_client(a.port);
    let (mut z, socket_z) = pusher_client(b.port);
    subscribe(&mut x, &socket_x, one);
    subscribe(&mut x, &socket_x, secret);
    subscribe(&mut y, &socket_y, one);
    subscribe(&mut z, &socket_z, two);
    let (status, list) = cluster.get(b.port, "channels", &[("filter_by_prefix", "q-")]);
    assert_eq!((status, &list), (200, &json!({"channels": {one: {}, two: {}}})), "names decoded back to Pusher names");
    let (_, all) = cluster.get(b.port, "channels", &[]);
    assert_eq!(all, json!({"channels": {one: {}, two: {}, secret: {}}}), "no filter: every occupied channel of the app");
    let (_, private) = cluster.get(a.port, "channels", &[("filter_by_prefix", "private-")]);
    assert_eq!(private, json!({"channels": {secret: {}}}));
    assert_eq!(cluster.get(b.port, &format!("channels/{one}"), &[("info", "subscription_count")]), (200, json!({"occupied": true, "subscription_count": 2})));
    assert_eq!(cluster.get(a.port, &format!("channels/{two}"), &[("info", "subscription_count")]), (200, json!({"occupied": true, "subscription_count": 1})), "node A sees node B's subscriber");
    assert_eq!(cluster.get(b.port, &format!("channels/{one}"), &[]), (200, json!({"occupied": true})), "occupied is always there; the rest on request");
    assert_eq!(cluster.get(b.port, "channels/q-nobody", &[("info", "subscription_count")]), (200, json!({"occupied": false, "subscription_count": 0})));

    // Unsubscribing on node A shows on node B; the last one out vacates the channel.
    unsubscribe(&mut y, one);
    let after = cluster.channel_until(b.port, one, |v| v["subscription_count"] == 1);
    assert_eq!(after, json!({"occupied": true, "subscription_count": 1}));
    unsubscribe(&mut x, one);
    let vacated = cluster.channel_until(b.port, one, |v| v["occupied"] == false);
    assert_eq!(vacated, json!({"occupied": false, "subscription_count": 0}));
    assert_eq!(cluster.get(b.port, "channels", &[("filter_by_prefix", "q-")]).1, json!({"channels": {two: {}}}));
    drop(x);
    let gone = wait_until(Duration::from_secs(5), || cluster.get(b.port, "channels", &[("filter_by_prefix", "private-")]).1 == json!({"channels": {}}));
    assert!(gone.is_some(), "a closed connection's channels are vacated");

    // Refusals, as the Pusher docs have them.
    let (status, body) = cluster.get(b.port, "channels", &[("info", "user_count")]);
    assert_eq!(status, 400, "user_count needs a presence- filter: {body}");
    let (status, body) = cluster.get(b.port, "channels", &[("filter_by_prefix", "q-"), ("info", "user_count")]);
    assert_eq!(status, 400, "{body}");
    let (status, body) = cluster.get(b.port, &format!("channels/{two}"), &[("info", "user_count")]);
    assert_eq!(status, 400, "user_count of a public channel: {body}");
    let (status, body) = cluster.get(b.port, &format!("channels/{two}"), &[("info", "cache")]);
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("cache channels are not served"), "says why: {body}");
    let (status, body) = cluster.get(b.port, &format!("channels/{two}/users"), &[]);
    assert_eq!(status, 400, "users of a channel that is not presence: {body}");
    let (status, body) = cluster.get(b.port, "channels/has%20space", &[]);
    assert_eq!(status, 400, "{body}");
    let (status, body) = cluster.api(b.port, "GET", &format!("/apps/{}/channels", cluster.app), &[], b"", "not-the-secret");
    assert_eq!(status, 401, "bad signature: {body}");
    let (status, _) = cluster.api(b.port, "POST", &format!("/apps/{}/channels/{two}", cluster.app), &[], b"{}", SECRET);
    assert_eq!(status, 405);
    let (status, _) = cluster.get(b.port, "nothing-here", &[]);
    assert_eq!(status, 404);

    let metrics = scrape(b.port);
    let label = format!("app=\"{}\"", cluster.app);
    assert!(metric(&metrics, "ringcast_pusher_api_queries_total", &[&label]) >= 10.0, "queries counted");
    assert!(metric(&metrics, "ringcast_pusher_api_refused_total", &[&label]) >= 9.0, "refusals counted");
    assert!(metric(&metrics, "ringcast_cluster_queries_total", &[]) >= 10.0);
    assert_eq!(metric(&metrics, "ringcast_cluster_query_failures_total", &[]), 0.0);
    assert!(metric(&scrape(a.port), "ringcast_cluster_answers_total", &[]) >= 10.0, "node A answered node B's queries");
    drop(z);
}

#[test]
fn terminate_connections_closes_the_user_on_every_node() {
    let cluster = Cluster::new();
    let (a, b) = cluster.pair(&[]);
    let (mut on_a, socket_on_a) = pusher_client(a.port);
    let (mut on_b, socket_on_b) = pusher_client(b.port);
    let (mut other, socket_other) = pusher_client(a.port);
    let (mut anonymous, _) = pusher_client(a.port);
    sign_in(&mut on_a, &socket_on_a, "kick-me");
    sign_in(&mut on_b, &socket_on_b, "kick-me");
    sign_in(&mut other, &socket_other, "stay");

    // A bad signature is refused, and closes nothing.
    let path = format!("/apps/{}/users/kick-me/terminate_connections", cluster.app);
    let (status, body) = cluster.api(b.port, "POST", &path, &[], b"{}", "not-the-secret");
    assert_eq!(status, 401, "{body}");
    assert!(still_served(&mut on_a), "a refused order closes nothing");

    // Posted to node B: the user's sockets on both nodes are closed with 4009 (since
    // protocol 6 the close code alone says why; no pusher:error before it).
    assert_eq!(cluster.terminate(b.port, "kick-me"), (200, json!({})));
    for client in [&mut on_a, &mut on_b] {
        assert_eq!(close_code(client), Some(4009), "the code pusher-js reads as 'do not reconnect unchanged'");
    }
    assert!(still_served(&mut other), "another user stays");
    assert!(still_served(&mut anonymous), "a connection that never signed in stays");
    let (status, body) = cluster.api(b.port, "GET", &path, &[], b"", SECRET);
    assert_eq!(status, 405, "{body}");
    let label = format!("app=\"{}\"", cluster.app);
    for (gateway, name) in [(&a, "node A"), (&b, "node B")] {
        let counted = wait_until(Duration::from_secs(5), || metric(&scrape(gateway.port), "ringcast_closes_total", &["reason=\"terminated\""]) >= 1.0);
        assert!(counted.is_some(), "{name} counts the close as terminated");
        assert_eq!(metric(&scrape(gateway.port), "ringcast_pusher_terminated_connections_total", &[&label]), 1.0, "{name}");
        assert_eq!(metric(&scrape(gateway.port), "ringcast_cluster_close_orders_total", &[]), 1.0, "{name} carried out the order once");
    }
    assert_eq!(metric(&scrape(b.port), "ringcast_pusher_api_terminations_total", &[&label]), 1.0);
}

/// A node that stops answering makes cluster-wide answers fail with a clear 503 (never a
/// silently partial one) until it is forgotten; then queries are answered again.
#[test]
fn a_silent_node_is_a_503_until_it_is_forgotten() {
    let cluster = Cluster::new();
    let (a, b) = cluster.pair(&["--nats-cluster-query-timeout", "300ms"]);
    assert_eq!(cluster.get(a.port, "channels", &[]).0, 200);
    // SIGSTOP: the node is still "alive" for its peers a while, but answers nothing.
    b.signal(libc::SIGSTOP);
    let (status, body) = cluster.get(a.port, "channels", &[]);
    assert_eq!(status, 503, "{body}");
    assert!(body.to_string().contains("did not answer"), "names the cause: {body}");
    let forgotten = wait_until(Duration::from_secs(10), || cluster.get(a.port, "channels", &[]).0 == 200);
    assert!(forgotten.is_some(), "a node silent past the peer expiry is no longer waited for");
    assert!(metric(&scrape(a.port), "ringcast_cluster_query_failures_total", &[]) >= 1.0, "the failure is counted");
    let alone = wait_until(Duration::from_secs(5), || metric(&scrape(a.port), "ringcast_cluster_peers", &[]) == 1.0);
    assert!(alone.is_some(), "the silent node is no longer counted");
    b.signal(libc::SIGCONT);
    let back = wait_until(Duration::from_secs(10), || metric(&scrape(a.port), "ringcast_cluster_peers", &[]) == 2.0);
    assert!(back.is_some(), "a node heard again is waited for again");
    assert_eq!(cluster.get(a.port, "channels", &[]).0, 200);
}

/// pusher-js on node A, the npm `pusher` library asking node B: `get` for channels and
/// channel info, `terminateUserConnections` for a signed-in pusher-js client.
#[test]
fn npm_library_queries_and_terminates_across_nodes() {
    let dir = npm_ready();
    let cluster = Cluster::new();
    let (a, b) = cluster.pair(&[]);
    let p = cluster.prefix.clone();
    let config = json!({"a": a.port, "b": b.port, "appId": cluster.app, "key": KEY, "secret": SECRET, "prefix": p});
    let output = std::process::Command::new("node").arg("query.mjs").arg(config.to_string()).current_dir(&dir).output().expect("run node tests/pusher/query.mjs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stdout.lines().rev().find(|l| l.starts_with('{')).unwrap_or_else(|| panic!("no result line; stdout {stdout} stderr {stderr}"));
    let out: Value = serde_json::from_str(line).unwrap();
    assert_eq!(out["ok"], true, "{out:#}\nstderr: {stderr}");
    assert_eq!(out["channels"], json!({"status": 200, "body": {"channels": {format!("q-{p}-one"): {}}}}), "{out:#}");
    assert_eq!(out["private_channels"]["body"], json!({"channels": {format!("private-q-{p}-two"): {}}}));
    assert_eq!(out["channel"], json!({"status": 200, "body": {"occupied": true, "subscription_count": 2}}));
    assert_eq!(out["vacant"]["body"], json!({"occupied": false, "subscription_count": 0}));
    assert_eq!(out["user_count_refused"]["status"], 400);
    assert_eq!((&out["terminate_status"], &out["terminate_body"]), (&json!(200), &json!({})));
    assert_eq!(out["terminated_state"], "disconnected", "pusher-js stops on 4009 (does not reconnect unchanged)");
    assert!(out["terminated_codes"].as_array().unwrap().contains(&json!(4009)), "pusher-js saw 4009: {out:#}");
    assert_eq!(out["bystander_state"], "connected", "a connection without that user stays");
}

fn python_lib(config: Value) -> Value {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = root.join("target/pusher-venv");
    let requirements = std::fs::read(root.join("tests/pusher/requirements.txt")).unwrap();
    if std::fs::read(venv.join("requirements.installed")).ok().as_deref() != Some(&requirements[..]) {
        // tests/it/pusher.rs makes the virtualenv; made here too so this test runs alone.
        let made = std::process::Command::new("python3").args(["-m", "venv"]).arg(&venv).status().expect("python3 is needed for the Pusher tests");
        assert!(made.success(), "python3 -m venv failed (Debian: apt-get install python3-venv)");
        let installed = std::process::Command::new(venv.join("bin/pip")).args(["install", "-q", "--disable-pip-version-check", "-r"]).arg(root.join("tests/pusher/requirements.txt")).status().unwrap();
        assert!(installed.success(), "pip install -r tests/pusher/requirements.txt failed");
        std::fs::write(venv.join("requirements.installed"), &requirements).unwrap();
    }
    let output = std::process::Command::new(venv.join("bin/python")).arg(root.join("tests/pusher/server_lib.py")).arg("query").arg(config.to_string()).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "server_lib.py query failed: {stdout} {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// The PyPI `pusher` library against node B while the subscriber is on node A: its
/// channels_info, channel_info, users_info and terminate_user_connections (which it posts
/// to `/users/{id}/terminate_connections`, without `/apps/{id}`).
#[test]
fn python_library_queries_and_terminates_across_nodes() {
    let cluster = Cluster::new();
    let (a, b) = cluster.pair(&[]);
    let channel = format!("py-{}", cluster.prefix);
    let (mut client, socket) = pusher_client(a.port);
    subscribe(&mut client, &socket, &channel);
    sign_in(&mut client, &socket, "py-user");
    let config = json!({"port": b.port, "appId": cluster.app, "key": KEY, "secret": SECRET, "channel": channel, "prefix": "py-", "user": "py-user"});
    let out = python_lib(config);
    assert_eq!(out["channels"], json!({"channels": {channel.as_str(): {}}}), "{out:#}");
    assert_eq!(out["channel"], json!({"occupied": true, "subscription_count": 1}));
    assert!(out["user_count_refused"].as_str().unwrap().starts_with("400"), "{out:#}");
    assert!(out["users_refused"].as_str().unwrap().starts_with("400"), "{out:#}");
    assert_eq!(out["terminate"], json!({}));
    assert!(out["bad_secret"].as_str().unwrap().starts_with("401"), "{out:#}");
    assert_eq!(close_code(&mut client), Some(4009), "terminated by the Python library's call");
}

/// `users` and `user_count` read presence (every node's members, Redis here): a user
/// with sockets on both nodes counts once.
#[test]
fn users_and_user_count_come_from_presence_on_every_node() {
    let cluster = Cluster::new();
    let (a, b) = cluster.pair(&[]);
    let channel = "presence-q-room";
    let join = |port: u16, user: &str| {
        let (mut client, socket) = pusher_client(port);
        let channel_data = json!({"user_id": user, "user_info": {"name": user}}).to_string();
        let auth = format!("{KEY}:{}", sign::sign_hex(SECRET, &[socket.as_bytes(), b":", channel.as_bytes(), b":", channel_data.as_bytes()]));
        send_json(&mut client, json!({"event": "pusher:subscribe", "data": {"channel": channel, "auth": auth, "channel_data": channel_data}}));
        assert!(next_event(&mut client, "pusher_internal:subscription_succeeded", Duration::from_secs(5)).is_some(), "{user} joined");
        client
    };
    let _ada_a = join(a.port, "ada");
    let _ada_b = join(b.port, "ada");
    let _bob = join(b.port, "bob");
    let mut ids = Vec::new();
    wait_until(Duration::from_secs(5), || {
        let (status, body) = cluster.get(a.port, &format!("channels/{channel}/users"), &[]);
        assert_eq!(status, 200, "{body}");
        ids = body["users"].as_array().unwrap().iter().map(|u| u["id"].as_str().unwrap().to_string()).collect();
        ids.sort();
        ids == ["ada", "bob"]
    });
    assert_eq!(ids, ["ada", "bob"], "distinct users of both nodes");
    assert_eq!(cluster.get(a.port, &format!("channels/{channel}"), &[("info", "user_count,subscription_count")]), (200, json!({"occupied": true, "user_count": 2, "subscription_count": 3})));
    assert_eq!(cluster.get(b.port, "channels", &[("filter_by_prefix", "presence-"), ("info", "user_count")]), (200, json!({"channels": {channel: {"user_count": 2}}})));
}

/// Without NATS (the embedded broker) there is one node: its shards answer directly, and
/// a close order goes straight to them.
#[test]
fn a_single_embedded_node_answers_from_its_shards() {
    let cluster = Cluster::new();
    let app = format!("{}:{KEY}:{SECRET}", cluster.app);
    let gateway = Gateway::start(&["--pusher-app", &app, "--shards", "2"]);
    let (mut x, socket_x) = pusher_client(gateway.port);
    let (mut y, socket_y) = pusher_client(gateway.port);
    subscribe(&mut x, &socket_x, "solo");
    subscribe(&mut y, &socket_y, "solo");
    assert_eq!(cluster.get(gateway.port, "channels/solo", &[("info", "subscription_count")]), (200, json!({"occupied": true, "subscription_count": 2})));
    assert_eq!(cluster.get(gateway.port, "channels", &[]), (200, json!({"channels": {"solo": {}}})));
    sign_in(&mut x, &socket_x, "solo-user");
    assert_eq!(cluster.terminate(gateway.port, "solo-user"), (200, json!({})));
    assert_eq!(close_code(&mut x), Some(4009));
    assert!(still_served(&mut y));
    let after = cluster.channel_until(gateway.port, "solo", |v| v["subscription_count"] == 1);
    assert_eq!(after, json!({"occupied": true, "subscription_count": 1}), "the terminated connection's subscription is gone");
    assert_eq!(metric(&scrape(gateway.port), "ringcast_cluster_peers", &[]), 1.0);
}
