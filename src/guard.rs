//! Node-wide bounds against hostile clients (issue 18, items 1-3): what one anonymous
//! client, or one API key, can make a node hold.
//!
//! - Subscriptions: a node-wide count (`max_node_subscriptions`) and an estimate of the
//!   index memory they cost (`max_subscription_bytes`), both answered `err` 503 past
//!   them; per connection, a byte budget for its patterns (`max_pattern_bytes`) and a
//!   lower count for anonymous connections on a node that issues tokens
//!   (`max_anonymous_subscriptions`), both `err` 413.
//! - Long-poll: a session never polled expires after `poll_open_timeout`; sessions per
//!   client (token `sub`, else address) are bounded by `poll_sessions_per_client` (429).
//! - HTTP: responses are written within `http_write_timeout` (else the socket is reset,
//!   releasing its kernel buffers); sockets in the HTTP phase are bounded node-wide by
//!   `max_http_connections` (503 at accept, not EMFILE); at most `max_pipelined_requests`
//!   requests are answered back to back from one socket's buffered input (429, closed).
//!
//! Owns: the node-wide counters behind these bounds and their metrics (the settings are
//! data in `config::guard`). Must not
//! touch: sockets. Runs on: any shard (atomics and one mutex touched on open/close only,
//! never per message).

use crate::config::guard::GuardConfig;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Why a subscription was refused by a node-wide bound (or the bridge queue).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubRefused {
    BridgeFull,
    NodeSubscriptions,
    NodeBytes,
}

/// Subscription refusals, by reason: the `reason` label of
/// `ringcast_subscriptions_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubRefusal {
    NodeSubscriptions = 0,
    NodeBytes = 1,
    PatternBytes = 2,
    Anonymous = 3,
}

impl SubRefusal {
    const ALL: [SubRefusal; 4] = [SubRefusal::NodeSubscriptions, SubRefusal::NodeBytes, SubRefusal::PatternBytes, SubRefusal::Anonymous];
    fn label(self) -> &'static str {
        match self {
            SubRefusal::NodeSubscriptions => "node_subscriptions",
            SubRefusal::NodeBytes => "node_bytes",
            SubRefusal::PatternBytes => "pattern_bytes",
            SubRefusal::Anonymous => "anonymous",
        }
    }
}

/// Who a long-poll session belongs to, for `poll_sessions_per_client`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClientKey {
    User(Box<str>),
    Addr(IpAddr),
}

/// Bytes charged per (connection, pattern) pair beyond the pattern's own bytes: the
/// connection's boxed copy and its slot in the connection's list, the key in the
/// pattern's key set, allocator headers.
pub const SUBSCRIPTION_ENTRY_BYTES: usize = 64;

/// The node's counters for these bounds.
pub struct NodeGuard {
    pub config: GuardConfig,
    /// Subscription indexes that hold a copy of each pattern: the shard's and the
    /// bridge's, plus the NATS client's core index behind NATS.
    index_copies: usize,
    subscriptions: AtomicUsize,
    subscription_bytes: AtomicUsize,
    sub_refused: [AtomicU64; 4],
    poll_clients: Mutex<HashMap<ClientKey, usize>>,
    pub poll_per_client_refused: AtomicU64,
    pub poll_unclaimed_expired: AtomicU64,
    http_connections: AtomicUsize,
    pub http_refused: AtomicU64,
    pub http_write_timeouts: AtomicU64,
    pub http_pipeline_refused: AtomicU64,
    pub accept_errors: AtomicU64,
}

impl NodeGuard {
    pub fn new(config: GuardConfig, nats: bool) -> NodeGuard {
        NodeGuard {
            config,
            index_copies: if nats { 3 } else { 2 },
            subscriptions: AtomicUsize::new(0),
            subscription_bytes: AtomicUsize::new(0),
            sub_refused: Default::default(),
            poll_clients: Mutex::new(HashMap::new()),
            poll_per_client_refused: AtomicU64::new(0),
            poll_unclaimed_expired: AtomicU64::new(0),
            http_connections: AtomicUsize::new(0),
            http_refused: AtomicU64::new(0),
            http_write_timeouts: AtomicU64::new(0),
            http_pipeline_refused: AtomicU64::new(0),
            accept_errors: AtomicU64::new(0),
        }
    }

    /// What one (connection, pattern) pair is charged, not counting the pattern's index entries.
    pub fn entry_bytes(&self, pattern: &str) -> usize {
        pattern.len() + SUBSCRIPTION_ENTRY_BYTES
    }

    /// What a pattern new to a shard is charged: its entry in each index copy.
    pub fn pattern_bytes(&self, pattern: &str) -> usize {
        self.index_copies * crate::channel::pattern_index_bytes(pattern)
    }

    /// Reserves one subscription of `bytes`; Err when a node-wide bound would be passed
    /// (counted).
    pub fn reserve_subscription(&self, bytes: usize) -> Result<(), SubRefused> {
        let max = self.config.node_subscriptions_max;
        if self.subscriptions.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).is_err() {
            self.count_sub_refusal(SubRefusal::NodeSubscriptions);
            return Err(SubRefused::NodeSubscriptions);
        }
        let max = self.config.subscription_bytes_max;
        if self.subscription_bytes.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n + bytes <= max).then_some(n + bytes)).is_err() {
            self.subscriptions.fetch_sub(1, Ordering::AcqRel);
            self.count_sub_refusal(SubRefusal::NodeBytes);
            return Err(SubRefused::NodeBytes);
        }
        Ok(())
    }

    /// Gives back `bytes` of a reservation that turned out smaller (the pattern was not new).
    pub fn release_bytes(&self, bytes: usize) {
        self.subscription_bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    pub fn release_subscription(&self, bytes: usize) {
        self.subscriptions.fetch_sub(1, Ordering::AcqRel);
        self.subscription_bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    pub fn count_sub_refusal(&self, why: SubRefusal) {
        self.sub_refused[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The `err` message of a node-wide refusal.
    pub fn refusal_message(&self, why: SubRefused) -> String {
        match why {
            SubRefused::BridgeFull => "server is overloaded (bridge queue full); retry shortly".to_owned(),
            SubRefused::NodeSubscriptions => format!(
                "the node holds its maximum of {} subscriptions (max_node_subscriptions); retry later or connect to another node",
                self.config.node_subscriptions_max
            ),
            SubRefused::NodeBytes => format!(
                "the node's subscriptions use their maximum of {} bytes (max_subscription_bytes); retry later or connect to another node",
                self.config.subscription_bytes_max
            ),
        }
    }

    /// Counts a new long-poll session of `client`; false when it already has
    /// `poll_sessions_per_client` (counted).
    pub fn poll_client_enter(&self, client: &ClientKey) -> bool {
        let max = self.config.poll_sessions_per_client;
        if max == 0 {
            return true;
        }
        let mut clients = self.poll_clients.lock().unwrap_or_else(|e| e.into_inner());
        let held = clients.entry(client.clone()).or_insert(0);
        if *held >= max {
            self.poll_per_client_refused.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        *held += 1;
        true
    }

    pub fn poll_client_leave(&self, client: &ClientKey) {
        if self.config.poll_sessions_per_client == 0 {
            return;
        }
        let mut clients = self.poll_clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = clients.get_mut(client) {
            *held -= 1;
            if *held == 0 {
                clients.remove(client);
            }
        }
    }

    /// Counts a socket entering the HTTP phase; false (counted) when the node has
    /// `max_http_connections` already. Pair a true with [`NodeGuard::http_leave`].
    pub fn http_enter(&self) -> bool {
        let max = self.config.http_connections_max;
        let entered = self.http_connections.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).is_ok();
        if !entered {
            self.http_refused.fetch_add(1, Ordering::Relaxed);
        }
        entered
    }

    pub fn http_leave(&self) {
        self.http_connections.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn render(&self, out: &mut String) {
        use crate::metrics::prometheus::family;
        let load = |a: &AtomicUsize| a.load(Ordering::Relaxed);
        family(out, "ringcast_node_subscriptions", "gauge", "Subscriptions held on the node (bound: max_node_subscriptions).");
        let _ = writeln!(out, "ringcast_node_subscriptions {}", load(&self.subscriptions));
        family(out, "ringcast_node_subscriptions_max", "gauge", "max_node_subscriptions.");
        let _ = writeln!(out, "ringcast_node_subscriptions_max {}", self.config.node_subscriptions_max);
        family(out, "ringcast_node_subscription_bytes", "gauge", "Estimated memory of the node's subscription indexes (bound: max_subscription_bytes).");
        let _ = writeln!(out, "ringcast_node_subscription_bytes {}", load(&self.subscription_bytes));
        family(out, "ringcast_node_subscription_bytes_max", "gauge", "max_subscription_bytes.");
        let _ = writeln!(out, "ringcast_node_subscription_bytes_max {}", self.config.subscription_bytes_max);
        family(out, "ringcast_subscriptions_refused_total", "counter", "Subs refused by a bound: node_subscriptions and node_bytes (503), pattern_bytes and anonymous (413).");
        for why in SubRefusal::ALL {
            let _ = writeln!(out, "ringcast_subscriptions_refused_total{{reason=\"{}\"}} {}", why.label(), self.sub_refused[why as usize].load(Ordering::Relaxed));
        }
        let counters: [(&str, &str, &AtomicU64); 5] = [
            ("ringcast_poll_sessions_per_client_refused_total", "POST /poll refused with 429: the client holds poll_sessions_per_client sessions.", &self.poll_per_client_refused),
            ("ringcast_poll_sessions_unpolled_expired_total", "Long-poll sessions expired because no GET came within poll_open_timeout of the open.", &self.poll_unclaimed_expired),
            ("ringcast_http_connections_refused_total", "Sockets answered 503 and closed at accept: max_http_connections in the HTTP phase.", &self.http_refused),
            ("ringcast_http_write_timeouts_total", "HTTP responses not written within http_write_timeout (socket reset).", &self.http_write_timeouts),
            ("ringcast_http_pipeline_refused_total", "Sockets closed with 429 for more than max_pipelined_requests pipelined requests.", &self.http_pipeline_refused),
        ];
        for (name, help, value) in counters {
            family(out, name, "counter", help);
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }
        family(out, "ringcast_accept_errors_total", "counter", "accept() failures (EMFILE/ENFILE: out of descriptors); logged at most once a second per shard.");
        let _ = writeln!(out, "ringcast_accept_errors_total {}", self.accept_errors.load(Ordering::Relaxed));
        family(out, "ringcast_http_connections", "gauge", "Sockets in the HTTP phase (bound: max_http_connections).");
        let _ = writeln!(out, "ringcast_http_connections {}", load(&self.http_connections));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::guard::build;
    use crate::limits;
    use std::collections::BTreeMap;
    use std::time::Duration;

    fn values(pairs: &[(&'static str, &str)]) -> BTreeMap<&'static str, String> {
        pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
    }

    #[test]
    fn settings_parse_and_name_their_key() {
        let c = build(&values(&[("max_subscription_bytes", "1MiB"), ("poll_open_timeout", "2s"), ("max_http_connections", "5")])).unwrap();
        assert_eq!((c.subscription_bytes_max, c.poll_open_timeout, c.http_connections_max), (1 << 20, Duration::from_secs(2), 5));
        assert_eq!(build(&values(&[])).unwrap().http_write_timeout, Duration::from_millis(limits::HTTP_WRITE_TIMEOUT_MS));
        assert_eq!(build(&values(&[("max_node_subscriptions", "0")])).unwrap_err().key, "max_node_subscriptions");
        assert_eq!(build(&values(&[("max_pattern_bytes", "100")])).unwrap_err().key, "max_pattern_bytes");
        assert_eq!(build(&values(&[("http_write_timeout", "2h")])).unwrap_err().key, "http_write_timeout");
        assert_eq!(build(&values(&[("poll_open_timeout", "0s")])).unwrap_err().key, "poll_open_timeout");
    }

    #[test]
    fn reservations_are_bounded_and_given_back() {
        let config = GuardConfig { node_subscriptions_max: 2, subscription_bytes_max: 1000, ..GuardConfig::default() };
        let guard = NodeGuard::new(config, false);
        assert_eq!(guard.reserve_subscription(600), Ok(()));
        assert_eq!(guard.reserve_subscription(600), Err(SubRefused::NodeBytes));
        assert_eq!(guard.reserve_subscription(300), Ok(()));
        assert_eq!(guard.reserve_subscription(1), Err(SubRefused::NodeSubscriptions));
        guard.release_subscription(600);
        guard.release_subscription(300);
        assert_eq!((guard.subscriptions.load(Ordering::Relaxed), guard.subscription_bytes.load(Ordering::Relaxed)), (0, 0));
        let client = ClientKey::Addr(IpAddr::from([10, 0, 0, 1]));
        let guard = NodeGuard::new(GuardConfig { poll_sessions_per_client: 2, ..GuardConfig::default() }, false);
        assert!(guard.poll_client_enter(&client) && guard.poll_client_enter(&client));
        assert!(!guard.poll_client_enter(&client));
        guard.poll_client_leave(&client);
        assert!(guard.poll_client_enter(&client));
    }
}
