//! Admission control and drain settings: who may become a connection, how fast, and how a
//! node leaves service.
//!
//! - `--max-connections` (per node, `Node::admit`) and `--accept-rate` (per shard, a
//!   token bucket here) decide each upgrade; a refused one is answered HTTP 503 with
//!   `Retry-After` on the socket it came on (never accepted and then dropped), counted in
//!   `ringcast_refusals_total{reason}`.
//! - `--drain-seconds`: how long a drain (SIGTERM or `POST /admin/drain`) spreads its
//!   1012 closes over (the shard side lives in `shard::drain`).
//! - `--share-port`: allow starting on a port another live process already listens on.
//!
//! Owns: the per-shard [`TokenBucket`] and the admission decision (the settings are data
//! in `config::admission`). Must not touch: sockets. Runs on: each shard thread for its
//! own bucket.

use crate::metrics::Refusal;
use crate::node::Node;
use std::cell::Cell;
use std::time::Duration;

/// What a refused upgrade tells the client to wait before retrying, in seconds, per
/// reason. Rate: the bucket refills within a second. Full or draining: capacity comes
/// back when the autoscaler adds a node or clients move, which takes longer.
pub const RETRY_AFTER_RATE_SECONDS: &str = "1";
pub const RETRY_AFTER_FULL_SECONDS: &str = "5";

/// A token bucket in thousandths of a token, so any rate up to the maximum refills
/// exactly with integer math on a millisecond clock. Burst: one second's worth.
#[derive(Debug)]
pub struct TokenBucket {
    rate_per_second: u64,
    milli_tokens: Cell<u64>,
    at_ms: Cell<u64>,
}

impl TokenBucket {
    /// Starts full: a fresh node takes a full second's burst at once.
    pub fn new(rate_per_second: u32, now_ms: u64) -> TokenBucket {
        let rate = rate_per_second.max(1) as u64;
        TokenBucket { rate_per_second: rate, milli_tokens: Cell::new(rate * 1000), at_ms: Cell::new(now_ms) }
    }

    /// Takes one token; false when the bucket is empty.
    pub fn take(&self, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.at_ms.get());
        // rate tokens/s = rate milli-tokens/ms.
        let refilled = (self.milli_tokens.get() + elapsed.saturating_mul(self.rate_per_second)).min(self.rate_per_second * 1000);
        self.at_ms.set(now_ms.max(self.at_ms.get()));
        if refilled < 1000 {
            self.milli_tokens.set(refilled);
            return false;
        }
        self.milli_tokens.set(refilled - 1000);
        true
    }
}

/// One shard's admission state (lives in its `Shard`, touched only on its thread).
pub struct ShardAdmission {
    pub bucket: TokenBucket,
    /// This shard's drain task has started (`shard::drain`).
    pub draining: Cell<bool>,
}

impl ShardAdmission {
    pub fn new(node: &Node) -> ShardAdmission {
        ShardAdmission {
            bucket: TokenBucket::new(node.config.admission.accept_rate_per_second, node.started.elapsed().as_millis() as u64),
            draining: Cell::new(false),
        }
    }
}

/// Decides one upgrade (WebSocket, or a new long-poll session): draining or shutting
/// down, over this shard's rate, or the node full. On `Ok` a connection slot is reserved
/// (give it back with `Node::release` if the upgrade then fails).
pub fn admit(node: &Node, admission: &ShardAdmission, now_ms: u64) -> Result<(), Refusal> {
    if node.is_shutting_down() {
        return Err(Refusal::Draining);
    }
    if !admission.bucket.take(now_ms) {
        return Err(Refusal::RateLimited);
    }
    if !node.admit() {
        return Err(Refusal::Full);
    }
    Ok(())
}

/// The 503 a refusal is answered with: message and `Retry-After` seconds.
pub fn explain(refusal: Refusal) -> (&'static str, &'static str) {
    match refusal {
        Refusal::Draining => ("server is draining or shutting down; reconnect to another node", RETRY_AFTER_FULL_SECONDS),
        Refusal::RateLimited => ("too many new connections on this node right now (accept_rate); retry shortly", RETRY_AFTER_RATE_SECONDS),
        _ => ("node is at max_connections; retry later or elsewhere", RETRY_AFTER_FULL_SECONDS),
    }
}

/// A live listener already on `address`? Connecting first is the only way to tell:
/// SO_REUSEPORT lets our bind succeed and then silently splits new connections with it.
pub fn port_in_use(address: std::net::SocketAddr) -> bool {
    if address.port() == 0 {
        return false;
    }
    let mut target = address;
    if target.ip().is_unspecified() {
        target.set_ip(match target {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    std::net::TcpStream::connect_timeout(&target, Duration::from_millis(PORT_PROBE_TIMEOUT_MS)).is_ok()
}

/// How long the start-up probe waits for a connect: loopback answers in microseconds, a
/// remote address bound locally as well; past this nobody is listening.
const PORT_PROBE_TIMEOUT_MS: u64 = 300;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::admission::build;
    use crate::limits;
    use std::collections::BTreeMap;
    use std::time::Duration;

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let bucket = TokenBucket::new(10, 0);
        assert_eq!((0..20).filter(|_| bucket.take(0)).count(), 10, "burst is one second's worth");
        assert!(!bucket.take(50), "half a token after 50 ms");
        assert!(bucket.take(100), "one token after 100 ms");
        assert!(!bucket.take(100));
        // A long pause refills to the burst, not beyond.
        assert_eq!((0..30).filter(|_| bucket.take(10_000)).count(), 10);
    }

    #[test]
    fn bucket_handles_high_rates_and_a_clock_that_stalls() {
        let bucket = TokenBucket::new(1_000_000, 5);
        assert_eq!((0..1_500_000).filter(|_| bucket.take(5)).count(), 1_000_000);
        assert_eq!((0..2_000).filter(|_| bucket.take(6)).count(), 1_000, "1000 per ms");
        assert!(!bucket.take(3), "an earlier clock reading refills nothing");
    }

    #[test]
    fn settings_parse_and_name_their_key() {
        let values = |pairs: &[(&'static str, &str)]| pairs.iter().map(|(k, v)| (*k, v.to_string())).collect::<BTreeMap<_, _>>();
        let config = build(&values(&[("accept_rate", "1_000_000"), ("drain_seconds", "2"), ("share_port", "true")])).unwrap();
        assert_eq!(config.accept_rate_per_second, 1_000_000);
        assert_eq!(config.drain, Duration::from_secs(2));
        assert!(config.share_port);
        assert_eq!(build(&values(&[("drain_seconds", "1500ms")])).unwrap().drain, Duration::from_millis(1500));
        assert_eq!(build(&values(&[])).unwrap().accept_rate_per_second, limits::ACCEPT_RATE_PER_SHARD);
        assert_eq!(build(&values(&[("accept_rate", "0")])).unwrap_err().key, "accept_rate");
        assert_eq!(build(&values(&[("accept_rate", "fast")])).unwrap_err().key, "accept_rate");
        assert_eq!(build(&values(&[("drain_seconds", "soon")])).unwrap_err().key, "drain_seconds");
        assert_eq!(build(&values(&[("drain_seconds", "2h")])).unwrap_err().key, "drain_seconds");
    }
}
