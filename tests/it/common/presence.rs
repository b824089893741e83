//! Presence plumbing for tests: private redis-server processes (for tests that kill the
//! server or count its commands), a unique key prefix per test, and the library's own
//! presence reader driven from a synchronous test.

use super::nats::{free_port, wait_for_port};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The machine's shared Redis (scripts/services.sh starts it); tests that do not kill it
/// or count its commands use it with a unique `--redis-prefix`.
pub const SHARED_REDIS: &str = "redis://127.0.0.1:6379";

pub fn redis_prefix() -> String {
    format!("t{}x{}", std::process::id(), super::unique())
}

/// A private `redis-server --save ''` on its own port.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let mut server = RedisServer { child: None, port: free_port() };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/services.sh installs it)");
        self.child = Some(child);
        assert!(wait_for_port(self.port, Duration::from_secs(10)), "private redis-server did not listen on {}", self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// kill -9, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same port (empty: nothing was saved).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Calls of `command` so far (`INFO commandstats`).
    pub fn command_calls(&self, command: &str) -> u64 {
        let info: String = ::redis::cmd("INFO").arg("commandstats").query(&mut self.connection()).unwrap();
        let needle = format!("cmdstat_{}:calls=", command.to_ascii_lowercase());
        info.lines()
            .find_map(|line| line.strip_prefix(&needle))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    pub fn connection(&self) -> ::redis::Connection {
        ::redis::Client::open(self.url()).unwrap().get_connection().unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The library's presence reader (what the Lane worker uses), on its own small runtime.
pub struct Reader {
    runtime: tokio::runtime::Runtime,
    presence: ringcast::presence::Presence,
}

impl Reader {
    pub fn new(url: &str, prefix: &str) -> Reader {
        let mut values = std::collections::BTreeMap::new();
        values.insert("redis", url.to_owned());
        values.insert("redis_prefix", prefix.to_owned());
        let config = ringcast::presence::PresenceConfig::from_values(&values).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        Reader { runtime, presence: ringcast::presence::Presence::reader(&config).unwrap() }
    }

    pub fn is_online(&self, user: &str) -> Result<bool, ringcast::presence::PresenceError> {
        self.runtime.block_on(self.presence.is_online(user))
    }

    pub fn members(&self, channel: &str) -> Result<Vec<serde_json::Value>, ringcast::presence::PresenceError> {
        let members = self.runtime.block_on(self.presence.members(channel))?;
        Ok(members.iter().map(|m| serde_json::from_str(m).unwrap()).collect())
    }
}

/// Polls `check` every 20 ms until it is true or `within` passes; returns how long it took.
pub fn wait_until(within: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        if check() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}
