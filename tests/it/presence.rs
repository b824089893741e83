//! Presence: who is online and who is in a channel, in memory and in Redis, across
//! gateway processes. Real redis-server (the shared one with a unique key prefix, or a
//! private one for tests that kill it or count its commands), real gateway processes,
//! real WebSocket clients.


use crate::common::presence::*;
use crate::common::*;
use serde_json::json;
use std::time::Duration;

fn token(user: &str) -> String {
    jwt(json!({"sub": user, "exp": now_unix() + 3600}))
}

/// The worker's online check (a separate process reading Redis) follows a user's
/// connections on a gateway: online while one is open, offline once the last closes,
/// and offline within the TTL when the gateway is killed with -9.
#[test]
fn online_check_follows_connections_and_a_killed_node() {
    let prefix = redis_prefix();
    let args = ["--redis", SHARED_REDIS, "--redis-prefix", &prefix, "--presence-ttl", "1s", "--jwt-secret", SECRET];
    let mut gateway = Gateway::start(&args);
    let reader = Reader::new(SHARED_REDIS, &prefix);
    assert_eq!(reader.is_online("ann"), Ok(false));
    let (mut first, _) = connect(&gateway.url(&format!("?token={}", token("ann"))));
    let (mut second, _) = connect(&gateway.url(&format!("?token={}", token("ann"))));
    assert!(wait_until(Duration::from_secs(5), || reader.is_online("ann") == Ok(true)).is_some(), "ann never came online");
    first.close(None).unwrap();
    let _ = first.read();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(reader.is_online("ann"), Ok(true), "one connection is still open");
    second.close(None).unwrap();
    let _ = second.read();
    assert!(wait_until(Duration::from_secs(5), || reader.is_online("ann") == Ok(false)).is_some(), "ann never went offline");

    let (_bob, _) = connect(&gateway.url(&format!("?token={}", token("bob"))));
    assert!(wait_until(Duration::from_secs(5), || reader.is_online("bob") == Ok(true)).is_some());
    gateway.signal(libc::SIGKILL);
    gateway.wait_exit(Duration::from_secs(5));
    let gone = wait_until(Duration::from_secs(5), || reader.is_online("bob") == Ok(false));
    assert!(gone.is_some_and(|t| t <= Duration::from_millis(1_500)), "bob still online after the node died: {gone:?}");
    // Readers delete what they found dead: nothing is left under the prefix.
    let mut con = ::redis::Client::open(SHARED_REDIS).unwrap().get_connection().unwrap();
    let left: Vec<String> = ::redis::cmd("KEYS").arg(format!("{prefix}:online:*")).query(&mut con).unwrap();
    assert!(left.is_empty(), "{left:?}");
}

/// A gateway whose presence store is up (`/readyz` says ready: with `--redis`, the link
/// is made and this node registered).
fn presence_node(extra: &[&str]) -> Gateway {
    let mut args = vec!["--jwt-secret", SECRET, "--allow-anonymous"];
    args.extend_from_slice(extra);
    let gateway = Gateway::start(&args);
    let ready = wait_until(Duration::from_secs(10), || http(gateway.port, "GET", "/readyz", &[], b"").2.contains("\"ready\""));
    assert!(ready.is_some(), "gateway never ready: {}", http(gateway.port, "GET", "/readyz", &[], b"").2);
    gateway
}

/// A client with a token for `user`, and its (conn, node): connection ids are unique
/// per node only.
fn user_client(gateway: &Gateway, user: &str) -> (Client, (u64, String)) {
    let (client, welcome) = connect(&gateway.url(&format!("?token={}", token(user))));
    (client, who(&welcome))
}

fn who(frame: &serde_json::Value) -> (u64, String) {
    (frame["conn"].as_u64().unwrap(), frame["node"].as_str().unwrap().to_owned())
}

fn join(client: &mut Client, channel: &str, id: u32) {
    let answer = request(client, json!({"op": "sub", "ch": channel, "presence": true}), id);
    assert_eq!(answer["op"], "ok", "join {channel}: {answer}");
}

/// The members' `user` fields, sorted (`null` for anonymous members).
fn users(members: &serde_json::Value) -> Vec<String> {
    let mut out: Vec<String> = members.as_array().unwrap_or_else(|| panic!("members: {members}")).iter().map(|m| m["user"].as_str().unwrap_or("null").to_owned()).collect();
    out.sort();
    out
}

fn presence_op(client: &mut Client, channel: &str, id: u32) -> serde_json::Value {
    request(client, json!({"op": "presence", "ch": channel}), id)
}

fn presence_http(port: u16, channel: &str) -> (u16, serde_json::Value) {
    let (status, _, body) = http(port, "GET", &format!("/api/presence/{channel}"), &[("Authorization", &format!("Bearer {API_KEY}"))], b"");
    (status, serde_json::from_str(&body).unwrap_or(serde_json::Value::Null))
}

/// The next `join` or `leave` frame for `channel` about another connection than `own`
/// (whether a joiner sees its own `join` depends on timing; msg frames are skipped).
fn next_presence_frame(client: &mut Client, channel: &str, own: &(u64, String)) -> serde_json::Value {
    loop {
        let frame = recv_json(client);
        if (frame["op"] == "join" || frame["op"] == "leave") && frame["ch"] == channel {
            if who(&frame) == *own {
                continue;
            }
            return frame;
        }
        assert!(frame["op"] == "msg", "unexpected frame while waiting for join/leave on {channel}: {frame}");
    }
}

/// Subscriptions made before this on the connection are live on NATS once a probe
/// published there arrives (a node's SUBs reach nats-server in order).
fn wait_live(client: &mut Client, nats_prefix: &str, id: u32) {
    let probe = format!("probe.{}", unique());
    let answer = request(client, json!({"op": "sub", "ch": probe}), id);
    assert_eq!(answer["op"], "ok", "{answer}");
    crate::common::nats::wait_live(client, 4222, &format!("{nats_prefix}.{probe}"));
}

/// Two nodes on one NATS and one Redis: joins and leaves (by `unsub` and by disconnect)
/// reach presence subscribers on the other node, and both the `presence` op and
/// `GET /api/presence/{channel}` list the members of both nodes.
#[test]
fn join_and_leave_cross_nodes_and_both_nodes_list_every_member() {
    let nats_prefix = format!("t{}", unique());
    let redis_prefix = redis_prefix();
    let shared = ["--nats", crate::common::nats::SHARED_NATS, "--nats-prefix", &nats_prefix, "--redis", SHARED_REDIS, "--redis-prefix", &redis_prefix];
    let one = presence_node(&shared);
    let two = presence_node(&shared);
    let room = format!("room.{}", unique());

    let (mut alice, alice_conn) = user_client(&one, "alice");
    join(&mut alice, &room, 1);
    wait_live(&mut alice, &nats_prefix, 2);

    let (mut bob, bob_conn) = user_client(&two, "bob");
    join(&mut bob, &room, 1);
    let joined = next_presence_frame(&mut alice, &room, &alice_conn);
    assert_eq!((joined["op"].as_str(), joined["user"].as_str(), who(&joined)), (Some("join"), Some("bob"), bob_conn.clone()), "{joined}");

    // Each node answers for both (its own changes are written before it reads).
    let listed = presence_op(&mut bob, &room, 2);
    assert_eq!(listed["op"], "ok", "{listed}");
    assert_eq!(users(&listed["members"]), ["alice", "bob"], "{listed}");
    let alice_entry = listed["members"].as_array().unwrap().iter().find(|m| m["user"] == "alice").unwrap().clone();
    assert_eq!(who(&alice_entry), alice_conn, "{alice_entry}");
    assert!(alice_entry["node"].is_string() && alice_entry["joined"].as_u64().unwrap() > 1_600_000_000_000, "{alice_entry}");
    let (status, body) = presence_http(one.port, &room);
    assert_eq!(status, 200, "{body}");
    assert_eq!(users(&body["members"]), ["alice", "bob"]);

    // unsub leaves.
    let answer = request(&mut bob, json!({"op": "unsub", "ch": room}), 3);
    assert_eq!(answer["op"], "ok", "{answer}");
    let left = next_presence_frame(&mut alice, &room, &alice_conn);
    assert_eq!((left["op"].as_str(), left["user"].as_str(), who(&left)), (Some("leave"), Some("bob"), bob_conn), "{left}");
    // Another node's leave is readable a few ms after its frame (its batch is written
    // within --presence-flush); the node that made the change answers at once.
    assert_eq!(users(&presence_op(&mut bob, &room, 4)["members"]), ["alice"]);
    let mut id = 10;
    assert!(
        wait_until(Duration::from_secs(2), || {
            id += 1;
            users(&presence_op(&mut alice, &room, id)["members"]) == ["alice"]
        })
        .is_some(),
        "node one still lists bob"
    );

    // So does the end of the connection.
    let (mut carol, carol_conn) = user_client(&two, "carol");
    join(&mut carol, &room, 1);
    assert_eq!(next_presence_frame(&mut alice, &room, &alice_conn)["user"], "carol");
    carol.close(None).unwrap();
    let _ = carol.read();
    let left = next_presence_frame(&mut alice, &room, &alice_conn);
    assert_eq!((left["op"].as_str(), who(&left)), (Some("leave"), carol_conn), "{left}");
    let (_, body) = presence_http(two.port, &room);
    assert_eq!(users(&body["members"]), ["alice"], "{body}");
    assert!(wait_until(Duration::from_secs(2), || users(&presence_http(one.port, &room).1["members"]) == ["alice"]).is_some());
}

/// The in-memory store on one node: the same ops, anonymous members, and the rules that
/// keep `$pres` internal and presence on literal channels.
#[test]
fn in_memory_presence_and_its_rules() {
    let gw = presence_node(&[]);
    let room = format!("room.{}", unique());
    let (mut alice, alice_conn) = user_client(&gw, "alice");
    join(&mut alice, &room, 1);
    let (mut anon, anon_welcome) = connect(&gw.url(""));
    join(&mut anon, &room, 1);
    let joined = next_presence_frame(&mut alice, &room, &alice_conn);
    assert_eq!((joined["op"].as_str(), joined["user"].is_null(), joined["conn"].as_u64()), (Some("join"), true, anon_welcome["conn"].as_u64()), "{joined}");
    assert_eq!(joined["node"], anon_welcome["node"], "{joined}");
    assert_eq!(users(&presence_op(&mut alice, &room, 2)["members"]), ["alice", "null"]);

    // A presence subscription on a channel already subscribed without it joins.
    let lobby = format!("lobby.{}", unique());
    let (mut dan, _) = user_client(&gw, "dan");
    assert_eq!(request(&mut dan, json!({"op": "sub", "ch": lobby}), 1)["op"], "ok");
    assert_eq!(users(&presence_http(gw.port, &lobby).1["members"]), Vec::<String>::new());
    join(&mut dan, &lobby, 2);
    assert_eq!(users(&presence_http(gw.port, &lobby).1["members"]), ["dan"]);

    let wildcard = request(&mut alice, json!({"op": "sub", "ch": "room.*", "presence": true}), 3);
    assert_eq!((wildcard["op"].as_str(), wildcard["code"].as_u64()), (Some("err"), Some(400)), "{wildcard}");
    assert!(wildcard["msg"].as_str().unwrap().contains("literal channel"), "{wildcard}");
    let internal = request(&mut alice, json!({"op": "sub", "ch": format!("$pres.{room}")}), 4);
    assert_eq!((internal["op"].as_str(), internal["code"].as_u64()), (Some("err"), Some(403)), "{internal}");
    let (status, _, body) = http(gw.port, "POST", "/api/publish", &[("Authorization", &format!("Bearer {API_KEY}"))], json!({"ch": format!("$pres.{room}"), "data": 1}).to_string().as_bytes());
    assert_eq!(status, 403, "{body}");
    let (status, _, _) = http(gw.port, "GET", &format!("/api/presence/{room}"), &[], b"");
    assert_eq!(status, 401, "the presence API needs the API key");
    let (status, body) = presence_http(gw.port, "room.*");
    assert_eq!(status, 400, "{body}");
    // A `>` subscriber never sees the internal channel.
    let (mut everything, _) = user_client(&gw, "eve");
    assert_eq!(request(&mut everything, json!({"op": "sub", "ch": ">"}), 1)["op"], "ok");
    let (mut frank, _) = user_client(&gw, "frank");
    join(&mut frank, &room, 1);
    assert_eq!(next_presence_frame(&mut alice, &room, &alice_conn)["user"], "frank");
    publish(gw.port, &room, json!("sentinel"));
    let frame = recv_json(&mut everything);
    assert_eq!((frame["op"].as_str(), frame["data"].as_str()), (Some("msg"), Some("sentinel")), "a `>` subscriber got a presence frame: {frame}");
}

/// A connect burst is written to Redis in pipelines: `n` identified connections joining
/// one channel cost a small fraction of `n` Redis commands (counted by the server itself).
#[test]
fn a_connect_burst_is_batched_into_few_redis_commands() {
    const N: usize = 1_000;
    let redis = RedisServer::start();
    let url = redis.url();
    let gw = presence_node(&["--redis", &url, "--presence-flush", "20ms"]);
    let room = format!("burst.{}", unique());
    // Redis's own count of read events: a pipeline arrives in one (or a few, when large);
    // unbatched, every command would be one.
    let stat = |redis: &RedisServer, name: &str| -> u64 {
        let info: String = ::redis::cmd("INFO").arg("all").query(&mut redis.connection()).unwrap();
        info.lines().find_map(|l| l.strip_prefix(&format!("{name}:"))).unwrap_or_else(|| panic!("{name} in INFO")).trim().parse().unwrap()
    };
    std::thread::sleep(Duration::from_millis(300));
    let reads_before = stat(&redis, "total_reads_processed");
    let commands_before = stat(&redis, "total_commands_processed");
    let mut clients = Vec::with_capacity(N);
    let started = std::time::Instant::now();
    for i in 0..N {
        let (mut client, _) = user_client(&gw, &format!("u{i}"));
        send_json(&mut client, json!({"op": "sub", "ch": room, "presence": true, "id": 1}));
        clients.push(client);
    }
    let reader = Reader::new(&url, "rc");
    assert!(wait_until(Duration::from_secs(10), || reader.members(&room).is_ok_and(|m| m.len() == N)).is_some(), "all {N} members reached Redis");
    // The writer sends at most one pipeline per flush (20 ms) while changes keep coming:
    // a burst that a loaded host stretches over seconds takes more pipelines, but never
    // more than its duration allows (plus a few for batches that fill up).
    let flushes = started.elapsed().as_millis() as f64 / 20.0;
    // Also counted: this check's INFO calls, the reader's polls and heartbeats.
    let reads = stat(&redis, "total_reads_processed") - reads_before;
    let commands = stat(&redis, "total_commands_processed") - commands_before;
    // One HSET per user's online key (a key per user keeps `is_online` one read), and the
    // joins to one channel merged into few HSETs: about N commands, not 2N.
    assert!(commands < N as u64 + N as u64 / 4, "{N} connects + joins took {commands} Redis commands");
    assert!(reads < N as u64 / 5, "{N} connects + joins took {reads} Redis reads ({commands} commands): not pipelined");
    let metrics = http(gw.port, "GET", "/metrics", &[], b"").2;
    let pipelines: f64 = metrics.lines().find(|l| l.starts_with("ringcast_presence_pipelines_total")).and_then(|l| l.rsplit(' ').next()?.parse().ok()).expect("ringcast_presence_pipelines_total");
    let pipelines_max = (N as f64 / 10.0).max(flushes * 1.2 + 10.0).min(N as f64 / 2.0);
    assert!(pipelines >= 1.0 && pipelines < pipelines_max, "{pipelines} pipelines for {N} connects + joins over {flushes:.0} flush periods (max {pipelines_max:.0})");
    drop(clients);
}

/// Redis going away: connections and publishing keep working, presence answers 503,
/// readyz says degraded (503 when strict); when Redis is back (empty), the node writes
/// its live members again by itself.
#[test]
fn redis_down_degrades_presence_only_and_recovers_with_the_members() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let gw = presence_node(&["--redis", &url]);
    let room = format!("room.{}", unique());
    let (mut alice, _) = user_client(&gw, "alice");
    join(&mut alice, &room, 1);
    assert_eq!(users(&presence_op(&mut alice, &room, 2)["members"]), ["alice"]);

    redis.kill();
    let degraded = wait_until(Duration::from_secs(10), || {
        let (status, _, body) = http(gw.port, "GET", "/readyz", &[], b"");
        status == 200 && body.contains("\"presence\":\"unavailable\"")
    });
    assert!(degraded.is_some(), "readyz never said degraded");
    assert_eq!(http(gw.port, "GET", "/readyz?strict=1", &[], b"").0, 503);
    let answer = presence_op(&mut alice, &room, 3);
    assert_eq!((answer["op"].as_str(), answer["code"].as_u64()), (Some("err"), Some(503)), "{answer}");
    assert_eq!(presence_http(gw.port, &room).0, 503);
    publish(gw.port, &room, json!("still here"));
    let frame = recv_json(&mut alice);
    assert_eq!(frame["data"], "still here", "{frame}");

    redis.restart();
    let back = wait_until(Duration::from_secs(15), || http(gw.port, "GET", "/readyz", &[], b"").2.contains("\"ready\""));
    assert!(back.is_some(), "readyz never came back to ready");
    let reader = Reader::new(&url, "rc");
    assert!(wait_until(Duration::from_secs(5), || reader.members(&room).is_ok_and(|m| m.len() == 1 && m[0]["user"] == "alice")).is_some(), "alice was not written again after the restart");
    assert!(wait_until(Duration::from_secs(5), || reader.is_online("alice") == Ok(true)).is_some());
    let metrics = http(gw.port, "GET", "/metrics", &[], b"").2;
    assert!(metrics.lines().any(|l| l.starts_with("ringcast_presence_resyncs_total") && !l.ends_with(" 0")), "no resync counted");
}

/// A node killed with -9 leaves the member lists other nodes read within the TTL.
#[test]
fn a_killed_node_leaves_the_member_lists_within_the_ttl() {
    let redis_prefix = redis_prefix();
    let shared = ["--redis", SHARED_REDIS, "--redis-prefix", &redis_prefix, "--presence-ttl", "1s"];
    let survivor = presence_node(&shared);
    let mut doomed = presence_node(&shared);
    let room = format!("room.{}", unique());
    let (mut alice, _) = user_client(&survivor, "alice");
    join(&mut alice, &room, 1);
    let (mut bob, _) = user_client(&doomed, "bob");
    join(&mut bob, &room, 1);
    assert!(wait_until(Duration::from_secs(5), || users(&presence_http(survivor.port, &room).1["members"]) == ["alice", "bob"]).is_some());
    doomed.signal(libc::SIGKILL);
    doomed.wait_exit(Duration::from_secs(5));
    let gone = wait_until(Duration::from_secs(5), || users(&presence_http(survivor.port, &room).1["members"]) == ["alice"]);
    assert!(gone.is_some_and(|t| t <= Duration::from_millis(1_500)), "bob still listed after his node died: {gone:?}");
}

/// Past `--presence-events-max` members on a node, a channel's changes are counted, not
/// sent as frames (n members would get n frames per change); `presence` lists everyone.
#[test]
fn join_leave_frames_stop_past_the_events_bound_and_are_counted() {
    let gw = presence_node(&["--presence-events-max", "2"]);
    let room = format!("big.{}", unique());
    let (mut alice, alice_conn) = user_client(&gw, "alice");
    join(&mut alice, &room, 1);
    let (mut bob, _) = user_client(&gw, "bob");
    join(&mut bob, &room, 1);
    assert_eq!(next_presence_frame(&mut alice, &room, &alice_conn)["user"], "bob", "two members: frames flow");
    let (mut carol, _) = user_client(&gw, "carol");
    join(&mut carol, &room, 1);
    assert_eq!(users(&presence_op(&mut alice, &room, 2)["members"]), ["alice", "bob", "carol"]);
    // carol's join (3 members) and her leave (3 before it) are not sent: the next frame
    // alice sees is bob's leave, once the room is back to two.
    drop(carol);
    let metric = |name: &str| -> f64 {
        let text = http(gw.port, "GET", "/metrics", &[], b"").2;
        text.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{name}"))
    };
    assert!(wait_until(Duration::from_secs(5), || metric("ringcast_presence_events_suppressed_total") == 2.0).is_some(), "suppressed: {}", metric("ringcast_presence_events_suppressed_total"));
    assert_eq!(request(&mut bob, json!({"op": "unsub", "ch": room}), 2)["op"], "ok");
    let frame = next_presence_frame(&mut alice, &room, &alice_conn);
    assert_eq!((frame["op"].as_str(), frame["user"].as_str()), (Some("leave"), Some("bob")), "{frame}");
}
