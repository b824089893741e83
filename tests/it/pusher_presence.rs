//! Pusher presence channels (issue 16) with a raw WebSocket client: members are users,
//! `member_added` / `member_removed` on a user's first and last socket across two nodes
//! (NATS + Redis), the member bound, channel_data checks, and the metrics.

use crate::common::edge_a::{metric, scrape};
use crate::common::presence::{redis_prefix, SHARED_REDIS};
use crate::common::*;
use crate::pusher::{event_data, next_event, node, pusher_client, APP_ID, KEY, SECRET};
use ringcast::transport::pusher::sign;
use serde_json::{json, Value};
use std::time::Duration;

const QUIET: Duration = Duration::from_millis(700);
const WAIT: Duration = Duration::from_secs(5);

/// Sends a presence subscribe signed over `channel_data` as given.
fn join_as(client: &mut Client, socket: &str, channel: &str, channel_data: &str) {
    let auth = format!("{KEY}:{}", sign::sign_hex(SECRET, &[socket.as_bytes(), b":", channel.as_bytes(), b":", channel_data.as_bytes()]));
    send_json(client, json!({"event": "pusher:subscribe", "data": {"channel": channel, "auth": auth, "channel_data": channel_data}}));
}

/// Joins and returns `subscription_succeeded`'s presence data.
fn join(client: &mut Client, socket: &str, channel: &str, user: &str, name: &str) -> Value {
    let data = json!({"user_id": user, "user_info": {"name": name}}).to_string();
    join_as(client, socket, channel, &data);
    let frame = next_event(client, "pusher_internal:subscription_succeeded", WAIT).unwrap_or_else(|| panic!("{user} joined {channel}"));
    assert_eq!(frame["channel"], channel);
    event_data(&frame)["presence"].clone()
}

fn ids(presence: &Value) -> Vec<String> {
    let mut ids: Vec<String> = presence["ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    ids.sort();
    ids
}

fn two_nodes(extra: &[&str]) -> (Gateway, Gateway) {
    let nats_prefix = format!("t{}", unique());
    let redis = redis_prefix();
    let mut args = vec!["--redis", SHARED_REDIS, "--redis-prefix", redis.as_str()];
    args.extend_from_slice(extra);
    (node(Some(&nats_prefix), &args), node(Some(&nats_prefix), &args))
}

#[test]
fn members_are_users_across_two_nodes() {
    let (node_a, node_b) = two_nodes(&[]);
    let channel = format!("presence-room-{}", unique());
    let (mut ann, ann_socket) = pusher_client(node_a.port);
    let presence = join(&mut ann, &ann_socket, &channel, "ann", "Ann");
    assert_eq!((presence["count"].clone(), ids(&presence)), (json!(1), vec!["ann".to_string()]));
    assert_eq!(presence["hash"]["ann"], json!({"name": "Ann"}));

    // Bob joins on node B: he sees both; Ann (node A) gets member_added with his info.
    let (mut bob, bob_socket) = pusher_client(node_b.port);
    let presence = join(&mut bob, &bob_socket, &channel, "bob", "Bob");
    assert_eq!(ids(&presence), ["ann", "bob"], "{presence}");
    assert_eq!(presence["count"], 2);
    assert_eq!(presence["hash"]["ann"]["name"], "Ann", "the other node's member comes with its info");
    let added = next_event(&mut ann, "pusher_internal:member_added", WAIT).expect("member_added for bob");
    assert_eq!(added["channel"], channel.as_str());
    assert_eq!(event_data(&added), json!({"user_id": "bob", "user_info": {"name": "Bob"}}));
    assert!(next_event(&mut bob, "pusher_internal:member_added", QUIET).is_none(), "no member_added for oneself");

    // Bob's second socket (node A): no event, and the list still has two users.
    let (mut bob2, bob2_socket) = pusher_client(node_a.port);
    let presence = join(&mut bob2, &bob2_socket, &channel, "bob", "Bob");
    assert_eq!((presence["count"].clone(), ids(&presence)), (json!(2), vec!["ann".to_string(), "bob".to_string()]));
    assert!(next_event(&mut ann, "pusher_internal:member_added", QUIET).is_none(), "a user's second socket is not a new member");

    // Bob's first socket unsubscribes: he is still in (second socket), nobody hears a thing.
    send_json(&mut bob, json!({"event": "pusher:unsubscribe", "data": {"channel": channel}}));
    assert!(next_event(&mut ann, "pusher_internal:member_removed", QUIET).is_none(), "bob still has a socket in the channel");

    // A client event on a presence channel carries the sender's user_id.
    send_json(&mut bob2, json!({"event": "client-typing", "channel": channel, "data": {"t": 1}}));
    let typing = next_event(&mut ann, "client-typing", WAIT).expect("client event");
    assert_eq!((typing["user_id"].clone(), typing["data"].clone()), (json!("bob"), json!({"t": 1})));

    // His last socket goes (a dropped connection): member_removed on both nodes.
    let (mut cat, cat_socket) = pusher_client(node_b.port);
    join(&mut cat, &cat_socket, &channel, "cat", "Cat");
    assert_eq!(event_data(&next_event(&mut ann, "pusher_internal:member_added", WAIT).expect("cat added"))["user_id"], "cat");
    drop(bob2);
    for (who, client) in [("ann", &mut ann), ("cat", &mut cat)] {
        let removed = next_event(client, "pusher_internal:member_removed", WAIT).unwrap_or_else(|| panic!("{who} hears bob leave"));
        assert_eq!(event_data(&removed), json!({"user_id": "bob"}), "{who}");
    }

    // Late joiners on either node converge on the same list: the list they are answered
    // with, then the member events after it (a join on the other node a few ms earlier
    // may reach this node's list just after the answer, as member_added).
    let mut expected = vec!["ann".to_string(), "cat".to_string()];
    let mut late_ones = Vec::new();
    for port in [node_a.port, node_b.port] {
        let (mut late, late_socket) = pusher_client(port);
        let presence = join(&mut late, &late_socket, &channel, &format!("late-{port}"), "Late");
        expected.push(format!("late-{port}"));
        expected.sort();
        let mut seen = ids(&presence);
        let deadline = std::time::Instant::now() + WAIT;
        while seen != expected && std::time::Instant::now() < deadline {
            let Some(added) = next_event(&mut late, "pusher_internal:member_added", Duration::from_millis(200)) else { continue };
            seen.push(event_data(&added)["user_id"].as_str().unwrap().to_string());
            seen.sort();
        }
        assert_eq!(seen, expected, "node on port {port}");
        late_ones.push(late);
    }
    let body = scrape(node_a.port);
    assert!(metric(&body, "ringcast_pusher_member_events_total", &[&format!("app=\"{APP_ID}\"")]) >= 3.0, "member events counted");
    assert!(metric(&body, "ringcast_pusher_presence_queries_total", &[&format!("app=\"{APP_ID}\"")]) >= 1.0, "member list fetches counted");
}

#[test]
fn channel_data_is_checked_and_the_member_bound_holds() {
    let nats_prefix = format!("t{}", unique());
    let redis = redis_prefix();
    let gateway = node(Some(&nats_prefix), &["--redis", SHARED_REDIS, "--redis-prefix", &redis, "--pusher-max-presence-members", "2"]);
    let channel = format!("presence-full-{}", unique());
    let (mut a, socket_a) = pusher_client(gateway.port);

    // The signature covers channel_data: a changed user_id is refused.
    let signed = r#"{"user_id":"u1"}"#;
    let auth = format!("{KEY}:{}", sign::sign_hex(SECRET, &[socket_a.as_bytes(), b":", channel.as_bytes(), b":", signed.as_bytes()]));
    send_json(&mut a, json!({"event": "pusher:subscribe", "data": {"channel": channel, "auth": auth, "channel_data": r#"{"user_id":"admin"}"#}}));
    let error = next_event(&mut a, "pusher:subscription_error", WAIT).expect("forged channel_data refused");
    assert_eq!(event_data(&error)["status"], 401);
    // No channel_data, or no user_id in it: refused with a reason.
    join_as(&mut a, &socket_a, &channel, r#"{"user_info":{}}"#);
    let error = event_data(&next_event(&mut a, "pusher:subscription_error", WAIT).expect("user_id missing"));
    assert_eq!((error["status"].clone(), error["type"].clone()), (json!(400), json!("InvalidChannelData")), "{error}");
    let info = format!(r#"{{"user_id":"u1","user_info":"{}"}}"#, "x".repeat(1100));
    join_as(&mut a, &socket_a, &channel, &info);
    let error = event_data(&next_event(&mut a, "pusher:subscription_error", WAIT).expect("user_info too big"));
    assert!(error["error"].as_str().unwrap().contains("1024"), "{error}");

    // Two users fit; a third is refused (403), a known user's second socket is not.
    join(&mut a, &socket_a, &channel, "u1", "One");
    let (mut b, socket_b) = pusher_client(gateway.port);
    assert_eq!(join(&mut b, &socket_b, &channel, "u2", "Two")["count"], 2);
    assert_eq!(event_data(&next_event(&mut a, "pusher_internal:member_added", WAIT).expect("u2 announced"))["user_id"], "u2");
    let (mut c, socket_c) = pusher_client(gateway.port);
    join_as(&mut c, &socket_c, &channel, r#"{"user_id":"u3"}"#);
    let error = event_data(&next_event(&mut c, "pusher:subscription_error", WAIT).expect("third user refused"));
    assert_eq!((error["status"].clone(), error["type"].clone()), (json!(403), json!("LimitReached")), "{error}");
    assert!(next_event(&mut a, "pusher_internal:member_added", QUIET).is_none(), "a refused user is never announced");
    let (mut d, socket_d) = pusher_client(gateway.port);
    assert_eq!(join(&mut d, &socket_d, &channel, "u2", "Two")["count"], 2, "u2's second socket");
    // A refused client can still use its connection.
    send_json(&mut c, json!({"event": "pusher:ping", "data": {}}));
    assert!(next_event(&mut c, "pusher:pong", WAIT).is_some());
    let body = scrape(gateway.port);
    assert!(metric(&body, "ringcast_pusher_presence_refused_total", &[&format!("app=\"{APP_ID}\"")]) >= 3.0, "refusals counted");
}

/// With one node and no Redis (in-memory presence), presence works the same.
#[test]
fn presence_on_one_node_in_memory() {
    let gateway = node(None, &[]);
    let channel = format!("presence-solo-{}", unique());
    let (mut a, socket_a) = pusher_client(gateway.port);
    join(&mut a, &socket_a, &channel, "1", "One");
    let (mut b, socket_b) = pusher_client(gateway.port);
    // Laravel sends integer user ids: kept as their digits.
    let data = r#"{"user_id":2,"user_info":{"name":"Two"}}"#;
    join_as(&mut b, &socket_b, &channel, data);
    let presence = event_data(&next_event(&mut b, "pusher_internal:subscription_succeeded", WAIT).expect("joined"))["presence"].clone();
    assert_eq!(ids(&presence), ["1", "2"]);
    assert_eq!(event_data(&next_event(&mut a, "pusher_internal:member_added", WAIT).expect("2 added"))["user_id"], "2");
    let lists = |port: u16| metric(&scrape(port), "ringcast_pusher_presence_lists", &[&format!("app=\"{APP_ID}\"")]);
    assert!((1.0..=2.0).contains(&lists(gateway.port)), "one list per shard with a subscriber");
    send_json(&mut b, json!({"event": "pusher:unsubscribe", "data": {"channel": channel}}));
    assert_eq!(event_data(&next_event(&mut a, "pusher_internal:member_removed", WAIT).expect("2 removed"))["user_id"], "2");
    // The lists go with their last local subscriber.
    drop(a);
    let gone = crate::common::presence::wait_until(WAIT, || lists(gateway.port) == 0.0);
    assert!(gone.is_some(), "lists left: {}", lists(gateway.port));
}

/// A node that dies sends no leaves: its members go once Redis drops its entries
/// (presence_ttl) and the periodic check (pusher_presence_recheck) sees it.
#[test]
fn a_dead_nodes_members_are_removed_by_the_check() {
    let (node_a, node_b) = two_nodes(&["--presence-ttl", "1s", "--pusher-presence-recheck", "300ms"]);
    let channel = format!("presence-crash-{}", unique());
    let (mut ann, ann_socket) = pusher_client(node_a.port);
    join(&mut ann, &ann_socket, &channel, "ann", "Ann");
    let (mut bob, bob_socket) = pusher_client(node_b.port);
    join(&mut bob, &bob_socket, &channel, "bob", "Bob");
    assert_eq!(event_data(&next_event(&mut ann, "pusher_internal:member_added", WAIT).expect("bob added"))["user_id"], "bob");
    // Nothing changes while both nodes live (checks agree with the frames).
    assert!(next_event(&mut ann, "pusher_internal:member_removed", Duration::from_millis(1200)).is_none(), "no correction while nothing changed");
    drop(node_b); // SIGKILL: no leave frame is ever sent
    let removed = next_event(&mut ann, "pusher_internal:member_removed", Duration::from_secs(8)).expect("bob removed after node B died");
    assert_eq!(event_data(&removed), json!({"user_id": "bob"}));
    let body = scrape(node_a.port);
    assert!(metric(&body, "ringcast_pusher_presence_corrections_total", &[&format!("app=\"{APP_ID}\"")]) >= 1.0, "the correction is counted");
    drop(bob);
}
