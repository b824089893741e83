//! Counters: one block per shard, written only by that shard (relaxed atomics on
//! their own cache lines, so no contention), summed and rendered on scrape.
//!
//! Owns: [`ShardMetrics`], [`BridgeMetrics`], [`CloseReason`] and the Prometheus text
//! rendering. Must not touch: sockets. Runs on: written by its owner thread, read by
//! whichever shard serves `/metrics`.

pub mod counter;
pub mod histogram;
pub mod prometheus;
pub mod transport;

pub use counter::Counter;
use prometheus::family;
use std::fmt::Write as _;

/// Why a connection ended. Every close has exactly one, and each is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CloseReason {
    /// The client sent a close frame or closed its socket.
    ClientClosed = 0,
    /// The server closed it during shutdown (1001).
    Shutdown,
    /// WebSocket protocol violation by the client (1002).
    ProtocolError,
    /// Text that is not UTF-8 (1007).
    InvalidUtf8,
    /// Frame or message over its bound (1009).
    TooBig,
    /// Outbound backlog over its byte bound (4008).
    SlowConsumer,
    /// No traffic, not even a pong, within the heartbeat timeout.
    HeartbeatTimeout,
    /// Socket error (reset, broken pipe).
    IoError,
    /// The token's `exp` passed during the session (1008).
    TokenExpired,
    /// Closed with 1012 by a drain (SIGTERM or `POST /admin/drain`).
    Drain,
    /// Refused right after the upgrade (Pusher: unknown app key 4001, old protocol 4007).
    Refused,
    /// Over a per-connection event rate that closes (Pusher client events: 4301).
    RateLimited,
    /// Closed on the application's order (Pusher `terminate_connections`).
    Terminated,
}

impl CloseReason {
    pub const ALL: [CloseReason; 13] = [
        CloseReason::ClientClosed,
        CloseReason::Shutdown,
        CloseReason::ProtocolError,
        CloseReason::InvalidUtf8,
        CloseReason::TooBig,
        CloseReason::SlowConsumer,
        CloseReason::HeartbeatTimeout,
        CloseReason::IoError,
        CloseReason::TokenExpired,
        CloseReason::Drain,
        CloseReason::Refused,
        CloseReason::RateLimited,
        CloseReason::Terminated,
    ];

    pub fn label(self) -> &'static str {
        match self {
            CloseReason::ClientClosed => "client_closed",
            CloseReason::Shutdown => "shutdown",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::InvalidUtf8 => "invalid_utf8",
            CloseReason::TooBig => "too_big",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::HeartbeatTimeout => "heartbeat_timeout",
            CloseReason::IoError => "io_error",
            CloseReason::TokenExpired => "token_expired",
            CloseReason::Drain => "drain",
            CloseReason::Refused => "refused",
            CloseReason::RateLimited => "rate_limited",
            CloseReason::Terminated => "terminated",
        }
    }

    /// The reason a WebSocket close code stands for, when the server sends it.
    pub fn from_close_code(code: u16) -> CloseReason {
        match code {
            1001 => CloseReason::Shutdown,
            1012 => CloseReason::Drain,
            1007 => CloseReason::InvalidUtf8,
            1009 => CloseReason::TooBig,
            4008 => CloseReason::SlowConsumer,
            _ => CloseReason::ProtocolError,
        }
    }
}

/// Handshake and HTTP outcomes that are not connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Refusal {
    /// Malformed HTTP or a bad upgrade request.
    BadRequest = 0,
    /// Missing, bad or expired token (401).
    Unauthorized,
    /// Node at `max_connections` (503).
    Full,
    /// Shutting down (503).
    Draining,
    /// Request head not complete within the handshake timeout.
    HandshakeTimeout,
    /// Over the shard's accept rate (503).
    RateLimited,
}

impl Refusal {
    pub const ALL: [Refusal; 6] = [
        Refusal::BadRequest,
        Refusal::Unauthorized,
        Refusal::Full,
        Refusal::Draining,
        Refusal::HandshakeTimeout,
        Refusal::RateLimited,
    ];
    pub fn label(self) -> &'static str {
        match self {
            Refusal::BadRequest => "bad_request",
            Refusal::Unauthorized => "unauthorized",
            Refusal::Full => "full",
            Refusal::Draining => "draining",
            Refusal::HandshakeTimeout => "handshake_timeout",
            Refusal::RateLimited => "rate_limited",
        }
    }
}

/// One shard's counters. Aligned so two shards never share a cache line.
#[repr(align(128))]
#[derive(Default)]
pub struct ShardMetrics {
    pub connections: Counter,
    pub accepted: Counter,
    pub http_requests: Counter,
    pub frames_in: Counter,
    pub frames_out: Counter,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub deliveries: Counter,
    /// Published messages that went out inside a run (several consecutive messages on one
    /// channel sent to each subscriber as one buffer).
    pub coalesced: Counter,
    pub writes: Counter,
    pub subscriptions: Counter,
    pub client_errors: Counter,
    pub rate_limited: Counter,
    pub bridge_full: Counter,
    /// History frames sent to resuming connections.
    pub replayed: Counter,
    /// Publishes answered 503 because the broker link was down.
    pub publish_refused: Counter,
    /// Live messages dropped at a resume's seam because the replay already carried them.
    pub resume_duplicates: Counter,
    /// Server-started closes whose handshake did not finish within `CLOSE_TIMEOUT_MS` (the
    /// socket was shut; the close is counted under its cause in `closes`).
    pub close_handshake_timeouts: Counter,
    /// Publishes answered 413: `data` over max_message, or a `msg` frame over outbound_limit.
    pub publish_too_large: Counter,
    /// Queued messages of `--conflate` channels replaced by a newer one (or skipped in a
    /// run for its newest) on a subscriber's backlog past the conflation threshold.
    pub conflated: Counter,
    /// Messages of `--conflate` channels queued whole because the connection already
    /// conflated `conflate_channels` other channels (the bound on its per-channel list).
    pub conflate_channels_full: Counter,
    /// WebSocket connections that negotiated permessage-deflate.
    pub deflate_negotiated: Counter,
    /// Published messages compressed (once per shard, whatever the subscriber count).
    pub compressed_messages: Counter,
    /// Payload bytes of those messages before and after compression.
    pub compress_bytes_in: Counter,
    pub compress_bytes_out: Counter,
    /// Copies of messages queued compressed (subscribers sharing one compressed buffer).
    pub compressed_deliveries: Counter,
    /// Client messages inflated (RSV1 frames) with the shard's one inflater.
    pub inflated_messages: Counter,
    pub closes: [Counter; CloseReason::ALL.len()],
    pub refusals: [Counter; Refusal::ALL.len()],
    /// Broker receipt → socket write, per delivered copy.
    pub fanout_latency: crate::metrics::histogram::LatencyHistogram,
}

impl ShardMetrics {
    pub fn closed(&self, reason: CloseReason) {
        self.closes[reason as usize].inc();
    }
    pub fn refused(&self, refusal: Refusal) {
        self.refusals[refusal as usize].inc();
    }
}

/// The bridge thread's counters (every writer runs on the bridge thread).
#[derive(Default)]
pub struct BridgeMetrics {
    pub published: Counter,
    pub patterns: Counter,
    pub deliveries_queued: Counter,
    pub deliveries_dropped: Counter,
    /// NATS: successful (re)connections.
    pub nats_connects: Counter,
    /// NATS: subscriptions that fell behind and lost messages inside the client.
    pub nats_slow_consumer: Counter,
    pub nats_published: Counter,
    /// Publishes refused: NATS link down, publish queue full, or a failed send.
    pub publish_refused: Counter,
    /// Core NATS subscriptions held (one per interest pattern outside history).
    pub nats_subscriptions: Counter,
    /// Live JetStream consumers (one per history pattern with local interest).
    pub history_consumers: Counter,
    pub nats_messages_in: Counter,
    /// Copies of one message dropped because an older overlapping subscription delivers it.
    pub nats_overlap_duplicates: Counter,
    pub replays: Counter,
    pub replayed_messages: Counter,
    /// Resumes answered 409 (history no longer covers `since`, or too many to replay).
    pub replays_gone: Counter,
    /// Resumes answered 503 because REPLAYS_CONCURRENT_MAX were running.
    pub replays_refused: Counter,
    pub replays_running: Counter,
    /// Embedded broker: channels with a history ring.
    pub history_channels: Counter,
    /// `$sys.metrics` snapshots handed to the bridge, and refused by its full inbox
    /// (written by the sysfeed thread, its only writer).
    pub sys_snapshots: Counter,
    pub sys_snapshots_dropped: Counter,
    /// NATS: round trips that confirmed a batch of subscribes, and failed tries of one.
    pub sub_confirm_round_trips: Counter,
    pub sub_confirm_retries: Counter,
    /// `sub`s waiting for their subscription to be confirmed live (bound:
    /// `nats_sub_confirms_waiting`), and those answered 503: timed out or refused.
    pub sub_confirms_waiting: Counter,
    pub sub_confirm_failures: Counter,
    /// Messages reaching the bridge (from NATS, or server frames) whose frame is larger
    /// than outbound_limit: dropped, since queueing one would close every subscriber.
    pub oversize_dropped: Counter,
    /// Cluster-wide queries this node asked (`bridge::cluster`), and those answered 503:
    /// a node did not answer within `nats_cluster_query_timeout`, or NATS was down.
    pub cluster_queries: Counter,
    pub cluster_query_failures: Counter,
    /// Other nodes' queries this node answered.
    pub cluster_answers: Counter,
    /// Nodes this one hears (heartbeats on NATS, itself included; 1 when embedded).
    pub cluster_peers: Counter,
    /// Close-user orders (terminate_connections) this node carried out.
    pub cluster_close_orders: Counter,
}

/// What a scrape needs to see of one shard besides its counters.
pub struct ShardView<'a> {
    pub metrics: &'a ShardMetrics,
    pub inbox_depth: usize,
    pub inbox_capacity: usize,
    pub inbox_dropped: u64,
}

pub struct NodeView<'a> {
    pub node: &'a str,
    /// "embedded" or "nats".
    pub broker: &'a str,
    pub broker_connected: bool,
    pub io_mode: &'a str,
    pub connections_max: usize,
    /// Draining (SIGTERM or /admin/drain) or shutting down.
    pub draining: bool,
    pub accept_rate_per_shard: u32,
    pub shards: Vec<ShardView<'a>>,
    pub bridge: &'a BridgeMetrics,
    pub bridge_inbox_depth: usize,
    pub bridge_inbox_capacity: usize,
    pub bridge_inbox_dropped: u64,
    pub uptime_seconds: u64,
}

fn per_shard(out: &mut String, view: &NodeView, name: &str, kind: &str, help: &str, get: impl Fn(&ShardView) -> u64) {
    family(out, name, kind, help);
    for (shard, s) in view.shards.iter().enumerate() {
        let _ = writeln!(out, "{name}{{shard=\"{shard}\"}} {}", get(s));
    }
}

/// Prometheus text exposition format 0.0.4.
pub fn render(view: &NodeView) -> String {
    let mut out = String::with_capacity(8 * 1024);
    let total: u64 = view.shards.iter().map(|s| s.metrics.connections.get()).sum();
    family(&mut out, "ringcast_connections", "gauge", "Open WebSocket connections on this node.");
    let _ = writeln!(out, "ringcast_connections {total}");
    family(&mut out, "ringcast_connections_max", "gauge", "Configured max_connections for this node.");
    let _ = writeln!(out, "ringcast_connections_max {}", view.connections_max);
    family(&mut out, "ringcast_capacity_ratio", "gauge", "connections / connections_max (autoscale at 0.7).");
    let ratio = total as f64 / view.connections_max.max(1) as f64;
    let _ = writeln!(out, "ringcast_capacity_ratio {ratio:.4}");
    family(&mut out, "ringcast_info", "gauge", "Node facts as labels.");
    let _ = writeln!(out, "ringcast_info{{node=\"{}\",io=\"{}\",version=\"{}\"}} 1", view.node, view.io_mode, env!("CARGO_PKG_VERSION"));
    family(&mut out, "ringcast_uptime_seconds", "gauge", "Seconds since the node started.");
    let _ = writeln!(out, "ringcast_uptime_seconds {}", view.uptime_seconds);
    let counters: [(&str, &str, fn(&ShardMetrics) -> u64); 27] = [
        ("ringcast_shard_connections", "Open connections per shard.", |m| m.connections.get()),
        ("ringcast_accepted_total", "TCP connections accepted.", |m| m.accepted.get()),
        ("ringcast_http_requests_total", "HTTP requests served (not upgrades).", |m| m.http_requests.get()),
        ("ringcast_frames_in_total", "WebSocket frames received.", |m| m.frames_in.get()),
        ("ringcast_frames_out_total", "WebSocket frames queued for sending.", |m| m.frames_out.get()),
        ("ringcast_bytes_in_total", "Bytes read from sockets.", |m| m.bytes_in.get()),
        ("ringcast_bytes_out_total", "Bytes written to sockets.", |m| m.bytes_out.get()),
        ("ringcast_deliveries_total", "Published messages queued to a subscriber.", |m| m.deliveries.get()),
        ("ringcast_coalesced_messages_total", "Published messages a shard sent inside a run: consecutive messages on one channel, one buffer per subscriber (--coalesce-bytes).", |m| m.coalesced.get()),
        ("ringcast_writes_total", "Vectored send calls (deliveries / writes = coalescing).", |m| m.writes.get()),
        ("ringcast_subscriptions", "Active (connection, pattern) subscriptions.", |m| m.subscriptions.get()),
        ("ringcast_client_errors_total", "err frames sent to clients.", |m| m.client_errors.get()),
        ("ringcast_rate_limited_total", "Client ops refused with 429.", |m| m.rate_limited.get()),
        ("ringcast_bridge_full_total", "Publishes or interest changes refused because the bridge inbox was full.", |m| m.bridge_full.get()),
        ("ringcast_replayed_frames_total", "History frames sent to resuming connections (sub with since).", |m| m.replayed.get()),
        ("ringcast_publish_refused_total", "Publishes (pub op or /api/publish) answered 503 because the broker link was down.", |m| m.publish_refused.get()),
        ("ringcast_resume_duplicates_dropped_total", "Live messages dropped at a resume's seam because the replay already carried them.", |m| m.resume_duplicates.get()),
        ("ringcast_close_handshake_timeouts_total", "Server-started closes whose handshake did not finish in 5 s, so the socket was shut (each is also counted under its cause in ringcast_closes_total).", |m| m.close_handshake_timeouts.get()),
        ("ringcast_publish_too_large_total", "Publishes (pub op, long-poll or /api/publish) answered 413: data over max_message, or a message frame over outbound_limit.", |m| m.publish_too_large.get()),
        ("ringcast_deflate_connections_total", "WebSocket connections that negotiated permessage-deflate (RFC 7692; --compression).", |m| m.deflate_negotiated.get()),
        ("ringcast_compressed_messages_total", "Published messages compressed for permessage-deflate subscribers: once per shard, shared by every such subscriber.", |m| m.compressed_messages.get()),
        ("ringcast_compress_bytes_in_total", "Frame bytes of compressed messages before compression.", |m| m.compress_bytes_in.get()),
        ("ringcast_compress_bytes_out_total", "Frame bytes of compressed messages after compression (in / out = the ratio).", |m| m.compress_bytes_out.get()),
        ("ringcast_compressed_deliveries_total", "Message copies queued compressed (RSV1) to permessage-deflate subscribers.", |m| m.compressed_deliveries.get()),
        ("ringcast_inflated_messages_total", "Compressed client messages inflated by the shard's one inflater (no connection keeps an inflate window: client_no_context_takeover).", |m| m.inflated_messages.get()),
        ("ringcast_conflated_total", "Queued messages of --conflate channels replaced by a newer one on a slow subscriber's backlog (instead of a 4008 close).", |m| m.conflated.get()),
        ("ringcast_conflate_channels_full_total", "Messages of --conflate channels queued whole (not conflatable later) because the slow subscriber already conflated conflate_channels other channels.", |m| m.conflate_channels_full.get()),
    ];
    for (name, help, get) in counters {
        let kind = if name.ends_with("_total") { "counter" } else { "gauge" };
        per_shard(&mut out, view, name, kind, help, |s| get(s.metrics));
    }
    family(&mut out, "ringcast_closes_total", "counter", "Closed connections by the cause of the close (a server-started close keeps its cause whatever happens to its handshake).");
    for (shard, s) in view.shards.iter().enumerate() {
        for reason in CloseReason::ALL {
            let _ = writeln!(out, "ringcast_closes_total{{shard=\"{shard}\",reason=\"{}\"}} {}", reason.label(), s.metrics.closes[reason as usize].get());
        }
    }
    family(&mut out, "ringcast_slow_consumer_closes_total", "counter", "Connections closed with 4008 (outbound backlog over outbound_limit).");
    let slow: u64 = view.shards.iter().map(|s| s.metrics.closes[CloseReason::SlowConsumer as usize].get()).sum();
    let _ = writeln!(out, "ringcast_slow_consumer_closes_total {slow}");
    family(&mut out, "ringcast_fanout_latency_seconds", "histogram", "Fan-out latency per delivered copy: broker receipt on the bridge to the shard's socket writes of the loop turn that queued it.");
    for (shard, s) in view.shards.iter().enumerate() {
        s.metrics.fanout_latency.snapshot().render(&mut out, "ringcast_fanout_latency_seconds", &format!("shard=\"{shard}\""));
    }
    family(&mut out, "ringcast_draining", "gauge", "1 while the node drains or shuts down (readyz 503, upgrades refused).");
    let _ = writeln!(out, "ringcast_draining {}", view.draining as u8);
    family(&mut out, "ringcast_accept_rate_per_shard", "gauge", "Configured accept_rate: new sessions per second each shard admits.");
    let _ = writeln!(out, "ringcast_accept_rate_per_shard {}", view.accept_rate_per_shard);
    family(&mut out, "ringcast_refusals_total", "counter", "Connections or upgrades refused before becoming WebSockets, by reason.");
    for (shard, s) in view.shards.iter().enumerate() {
        for refusal in Refusal::ALL {
            let _ = writeln!(out, "ringcast_refusals_total{{shard=\"{shard}\",reason=\"{}\"}} {}", refusal.label(), s.metrics.refusals[refusal as usize].get());
        }
    }
    per_shard(&mut out, view, "ringcast_fanout_queue_depth", "gauge", "Messages waiting in the bridge → shard queue.", |s| s.inbox_depth as u64);
    per_shard(&mut out, view, "ringcast_fanout_queue_capacity", "gauge", "Bound of the bridge → shard queue (shard_inbox).", |s| s.inbox_capacity as u64);
    per_shard(&mut out, view, "ringcast_fanout_queue_drops_total", "counter", "Messages dropped because a shard queue was full.", |s| s.inbox_dropped);
    family(&mut out, "ringcast_broker_connected", "gauge", "1 when the broker link is up (always 1 for the embedded broker).");
    let _ = writeln!(out, "ringcast_broker_connected{{broker=\"{}\"}} {}", view.broker, view.broker_connected as u8);
    let b = view.bridge;
    let bridge: [(&str, &str, &str, u64); 33] = [
        ("ringcast_bridge_queue_depth", "gauge", "Messages waiting in the shard → bridge queue.", view.bridge_inbox_depth as u64),
        ("ringcast_bridge_queue_capacity", "gauge", "Bound of the shard → bridge queue (bridge_inbox).", view.bridge_inbox_capacity as u64),
        ("ringcast_bridge_queue_drops_total", "counter", "Messages refused because the bridge queue was full.", view.bridge_inbox_dropped),
        ("ringcast_published_total", "counter", "Messages published through this node.", view.bridge.published.get()),
        ("ringcast_broker_patterns", "gauge", "Distinct subscription patterns with local interest.", view.bridge.patterns.get()),
        ("ringcast_fanout_queued_total", "counter", "Message copies queued to shards.", view.bridge.deliveries_queued.get()),
        ("ringcast_fanout_dropped_total", "counter", "Message copies dropped because a shard queue was full.", view.bridge.deliveries_dropped.get()),
        ("ringcast_nats_connects_total", "counter", "NATS connections made (1 + reconnects).", b.nats_connects.get()),
        ("ringcast_nats_slow_consumer_total", "counter", "NATS subscriptions that dropped messages because the bridge fell behind.", b.nats_slow_consumer.get()),
        ("ringcast_nats_published_total", "counter", "Messages handed to NATS.", b.nats_published.get()),
        ("ringcast_nats_publish_refused_total", "counter", "Publishes the bridge could not hand to NATS: link down, publish queue full (nats_publish_queue), or send failed.", b.publish_refused.get()),
        ("ringcast_nats_subscriptions", "gauge", "Core NATS subscriptions held (one per interest pattern).", b.nats_subscriptions.get()),
        ("ringcast_history_consumers", "gauge", "Live JetStream consumers (one per history pattern with local interest).", b.history_consumers.get()),
        ("ringcast_nats_messages_in_total", "counter", "Messages received from NATS (core and JetStream).", b.nats_messages_in.get()),
        ("ringcast_nats_overlap_duplicates_total", "counter", "NATS copies dropped because an older overlapping subscription delivers the same message.", b.nats_overlap_duplicates.get()),
        ("ringcast_replays_total", "counter", "Resumes (sub with since) answered.", b.replays.get()),
        ("ringcast_replayed_messages_total", "counter", "Messages replayed to resuming clients.", b.replayed_messages.get()),
        ("ringcast_replays_gone_total", "counter", "Resumes answered 409: history no longer covers since, or more than history_replay_max missed.", b.replays_gone.get()),
        ("ringcast_replays_refused_total", "counter", "Resumes answered 503: too many running at once.", b.replays_refused.get()),
        ("ringcast_replays_running", "gauge", "Resumes being served now.", b.replays_running.get()),
        ("ringcast_history_channels", "gauge", "Embedded broker: channels with a history ring (history_channels bound).", b.history_channels.get()),
        ("ringcast_sys_snapshots_total", "counter", "$sys.metrics snapshots published (one a second with sys_subscribe).", view.bridge.sys_snapshots.get()),
        ("ringcast_sys_snapshots_dropped_total", "counter", "$sys.metrics snapshots refused by the full bridge queue.", view.bridge.sys_snapshots_dropped.get()),
        ("ringcast_sub_confirm_round_trips_total", "counter", "NATS round trips that confirmed a batch of new subscriptions live on the server (sub is answered ok after one).", b.sub_confirm_round_trips.get()),
        ("ringcast_sub_confirm_retries_total", "counter", "Confirming round trips that failed or timed out and were tried again (NATS unreachable).", b.sub_confirm_retries.get()),
        ("ringcast_sub_confirms_waiting", "gauge", "sub requests waiting for NATS to confirm their subscription (bound: nats_sub_confirms_waiting, default 65536).", b.sub_confirms_waiting.get()),
        ("ringcast_sub_confirm_failures_total", "counter", "sub requests answered 503 because NATS did not confirm the subscription in time, or too many were waiting.", b.sub_confirm_failures.get()),
        ("ringcast_oversize_dropped_total", "counter", "Messages from NATS (or server frames) dropped because their frame is larger than outbound_limit: delivering one would close every subscriber with 4008.", b.oversize_dropped.get()),
        ("ringcast_cluster_queries_total", "counter", "Cluster-wide queries asked by this node (Pusher channel queries): every node's subscriber counts.", b.cluster_queries.get()),
        ("ringcast_cluster_query_failures_total", "counter", "Cluster-wide queries answered 503: a node did not answer within nats_cluster_query_timeout, NATS was down, or a shard queue stayed full.", b.cluster_query_failures.get()),
        ("ringcast_cluster_answers_total", "counter", "Cluster-wide queries this node answered (its own included).", b.cluster_answers.get()),
        ("ringcast_cluster_peers", "gauge", "Gateway nodes this node hears on NATS (itself included; 1 with the embedded broker).", b.cluster_peers.get()),
        ("ringcast_cluster_close_orders_total", "counter", "Orders to close a user's connections (Pusher terminate_connections) carried out on this node.", b.cluster_close_orders.get()),
    ];
    for (name, kind, help, value) in bridge {
        family(&mut out, name, kind, help);
        let _ = writeln!(out, "{name} {value}");
    }
    out
}
