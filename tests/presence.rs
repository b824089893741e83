//! Presence: who is online and who is in a channel, in memory and in Redis, across
//! gateway processes. Real redis-server (the shared one with a unique key prefix, or a
//! private one for tests that kill it or count its commands), real gateway processes,
//! real WebSocket clients.

mod common;

use common::presence::*;
use common::*;
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
