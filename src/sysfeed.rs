//! The `$sys.metrics` feed: once a second, a JSON snapshot of this node's metric blocks,
//! published on channel `$sys.metrics` through the bridge inbox like any other publish,
//! so the live dashboard (`GET /`) and any subscriber see it over ringcast's own protocol.
//!
//! Owns: the snapshot format (version 1, documented in docs/protocol-notes.md) and the
//! per-second rates computed between two consecutive samples. Must not touch: sockets,
//! shard state (it reads only the relaxed-atomic metric blocks and mailbox lengths, the
//! same things a `/metrics` scrape reads). Runs on: its own small thread,
//! `ringcast-sysfeed`, started by the gateway only when `sys_subscribe` is on (without
//! it no client may subscribe, so the feed would be work for nobody).
//!
//! Rate and size: one snapshot per node per [`SYS_METRICS_INTERVAL_MS`]; its size grows
//! only with the shard count (bounded by `limits::SHARD_COUNT_MAX`), and a test keeps
//! the largest one under [`SNAPSHOT_BYTES_MAX`]. A snapshot the full bridge inbox
//! refuses is dropped and counted (`ringcast_sys_snapshots_dropped_total`); the next one
//! carries the same cumulative totals, so a dashboard loses one point, never a count.

use crate::fanout::ToBridge;
use crate::metrics::{BridgeMetrics, CloseReason, ShardMetrics};
use crate::node::Node;
use bytes::Bytes;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The channel the snapshots are published on.
pub const SYS_METRICS_CHANNEL: &str = "$sys.metrics";
/// One snapshot per second per node: the dashboard's charts move once a second, and a
/// 16-node cluster costs each dashboard 16 small messages a second.
pub const SYS_METRICS_INTERVAL_MS: u64 = 1000;
/// Largest snapshot, at `limits::SHARD_COUNT_MAX` shards with every counter at its
/// widest (checked by a unit test; a typical 2-shard snapshot is ~750 bytes). Far below
/// `max_message`, so it is never refused.
pub const SNAPSHOT_BYTES_MAX: usize = 64 * 1024;
/// The snapshot format's version, `v` in the JSON; bumped only on an incompatible change.
pub const SNAPSHOT_VERSION: u32 = 1;

/// Cumulative counters of one shard at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ShardSample {
    pub connections: u64,
    pub frames_in: u64,
    pub frames_out: u64,
    pub deliveries: u64,
    pub queue_depth: u64,
    pub drops: u64,
    pub slow_consumer_closes: u64,
    /// Queued messages of `--conflate` channels replaced by newer ones.
    pub conflated: u64,
    /// Frame bytes of permessage-deflate messages before and after compression.
    pub compress_bytes_in: u64,
    pub compress_bytes_out: u64,
}

/// Cumulative counters of the node at one instant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    pub shards: Vec<ShardSample>,
    /// Messages published through this node, not counting this feed's own snapshots.
    pub published: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Publishes the full bridge inbox refused.
    pub bridge_drops: u64,
    /// p99 of the fan-out latency (broker receipt → socket write) over the last interval,
    /// in milliseconds; `None` when nothing was delivered in it (or in the first sample).
    pub fanout_p99_ms: Option<f64>,
    /// The fan-out latency histograms of every shard, summed (cumulative).
    pub fanout_latency: crate::metrics::histogram::HistogramSnapshot,
    /// Pusher apps served, their open connections (part of `connections`) and the
    /// events they took in (HTTP API and client events), cumulative.
    pub pusher_apps: usize,
    pub pusher_connections: u64,
    pub pusher_events: u64,
}

impl Sample {
    /// Reads every metric block of `node` (relaxed loads: a snapshot is a best-effort
    /// picture, exactly like a scrape).
    pub fn read(node: &Node) -> Sample {
        let shards = node
            .shard_metrics
            .iter()
            .zip(&node.shard_inboxes)
            .map(|(metrics, inbox)| shard_sample(metrics, inbox.len() as u64, inbox.dropped()))
            .collect();
        Sample {
            shards,
            published: published_by_clients(&node.bridge_metrics),
            bytes_in: node.shard_metrics.iter().map(|m| m.bytes_in.get()).sum(),
            bytes_out: node.shard_metrics.iter().map(|m| m.bytes_out.get()).sum(),
            bridge_drops: node.bridge_inbox.dropped(),
            fanout_p99_ms: None,
            fanout_latency: node.shard_metrics.iter().fold(Default::default(), |mut sum, m| {
                sum.add(&m.fanout_latency.snapshot());
                sum
            }),
            pusher_apps: node.config.pusher.apps.len(),
            // Connections are +1/-1 on different shards: summed as signed.
            pusher_connections: node.transport.pusher_metrics.iter().flatten().map(|m| m.connections.get() as i64).sum::<i64>().max(0) as u64,
            pusher_events: node.transport.pusher_metrics.iter().flatten().map(|m| m.api_events.get() + m.client_events.get()).sum(),
        }
    }
}

fn shard_sample(metrics: &ShardMetrics, queue_depth: u64, drops: u64) -> ShardSample {
    ShardSample {
        connections: metrics.connections.get(),
        frames_in: metrics.frames_in.get(),
        frames_out: metrics.frames_out.get(),
        deliveries: metrics.deliveries.get(),
        queue_depth,
        drops,
        slow_consumer_closes: metrics.closes[CloseReason::SlowConsumer as usize].get(),
        conflated: metrics.conflated.get(),
        compress_bytes_in: metrics.compress_bytes_in.get(),
        compress_bytes_out: metrics.compress_bytes_out.get(),
    }
}

fn published_by_clients(bridge: &BridgeMetrics) -> u64 {
    // The bridge counts every publish, ours included; the feed should not show itself.
    bridge.published.get().saturating_sub(bridge.sys_snapshots.get())
}

/// Facts about the node that do not change between samples (or change rarely).
pub struct NodeFacts<'a> {
    pub node: &'a str,
    pub io_mode: &'a str,
    pub connections_max: usize,
    pub uptime_seconds: u64,
    pub unix_ms: u64,
}

#[derive(Serialize)]
struct ShardJson {
    id: usize,
    connections: u64,
    in_per_s: f64,
    out_per_s: f64,
    deliveries_per_s: f64,
    queue_depth: u64,
    drops_total: u64,
}

/// The wire shape of one snapshot (docs/protocol-notes.md, "$sys.metrics").
#[derive(Serialize)]
struct SnapshotJson<'a> {
    v: u32,
    node: &'a str,
    ts: u64,
    interval_ms: u64,
    io: &'a str,
    uptime_s: u64,
    connections: u64,
    connections_max: usize,
    capacity_ratio: f64,
    in_per_s: f64,
    out_per_s: f64,
    published_per_s: f64,
    deliveries_per_s: f64,
    bytes_in_per_s: f64,
    bytes_out_per_s: f64,
    fanout_p99_ms: Option<f64>,
    drops_per_s: f64,
    drops_total: u64,
    slow_consumer_closes_total: u64,
    conflated_per_s: f64,
    conflated_total: u64,
    compress_bytes_in_per_s: f64,
    compress_bytes_out_per_s: f64,
    compress_bytes_in_total: u64,
    compress_bytes_out_total: u64,
    /// Connections by wire protocol (v1 = WebSocket and long-poll), Pusher apps served,
    /// and Pusher events in (HTTP API + client events) per second.
    v1_connections: u64,
    pusher_connections: u64,
    pusher_apps: usize,
    pusher_events_per_s: f64,
    shards: Vec<ShardJson>,
}

/// Per-second rate of a cumulative counter; a counter that went backwards (never, but a
/// wrapped or reset block must not produce a huge number) counts as zero.
fn rate(now: u64, before: u64, seconds: f64) -> f64 {
    round2(now.saturating_sub(before) as f64 / seconds)
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Builds one snapshot from two samples `elapsed` apart. Pure: the unit tests feed it
/// hand-made samples. With no previous sample (the first tick) every rate is 0.
pub fn render(facts: &NodeFacts, previous: Option<&Sample>, current: &Sample, elapsed: Duration) -> Vec<u8> {
    // Never divide by (nearly) zero: a tick that came early still counts as 1 ms.
    let seconds = elapsed.as_secs_f64().max(0.001);
    let empty = Sample { shards: vec![ShardSample::default(); current.shards.len()], ..Sample::default() };
    let before = previous.filter(|p| p.shards.len() == current.shards.len()).unwrap_or(&empty);
    let first = previous.is_none();
    let r = |now: u64, then: u64| if first { 0.0 } else { rate(now, then, seconds) };
    let shards: Vec<ShardJson> = current
        .shards
        .iter()
        .zip(&before.shards)
        .enumerate()
        .map(|(id, (now, then))| ShardJson {
            id,
            connections: now.connections,
            in_per_s: r(now.frames_in, then.frames_in),
            out_per_s: r(now.frames_out, then.frames_out),
            deliveries_per_s: r(now.deliveries, then.deliveries),
            queue_depth: now.queue_depth,
            drops_total: now.drops,
        })
        .collect();
    let sum = |sample: &Sample, get: fn(&ShardSample) -> u64| sample.shards.iter().map(get).sum::<u64>();
    let connections = sum(current, |s| s.connections);
    let drops_now = sum(current, |s| s.drops) + current.bridge_drops;
    let drops_then = sum(before, |s| s.drops) + before.bridge_drops;
    let snapshot = SnapshotJson {
        v: SNAPSHOT_VERSION,
        node: facts.node,
        ts: facts.unix_ms,
        interval_ms: SYS_METRICS_INTERVAL_MS,
        io: facts.io_mode,
        uptime_s: facts.uptime_seconds,
        connections,
        connections_max: facts.connections_max,
        capacity_ratio: (connections as f64 / facts.connections_max.max(1) as f64 * 10_000.0).round() / 10_000.0,
        in_per_s: r(sum(current, |s| s.frames_in), sum(before, |s| s.frames_in)),
        out_per_s: r(sum(current, |s| s.frames_out), sum(before, |s| s.frames_out)),
        published_per_s: r(current.published, before.published),
        deliveries_per_s: r(sum(current, |s| s.deliveries), sum(before, |s| s.deliveries)),
        bytes_in_per_s: r(current.bytes_in, before.bytes_in),
        bytes_out_per_s: r(current.bytes_out, before.bytes_out),
        fanout_p99_ms: current.fanout_p99_ms.map(round2),
        drops_per_s: r(drops_now, drops_then),
        drops_total: drops_now,
        slow_consumer_closes_total: sum(current, |s| s.slow_consumer_closes),
        conflated_per_s: r(sum(current, |s| s.conflated), sum(before, |s| s.conflated)),
        conflated_total: sum(current, |s| s.conflated),
        compress_bytes_in_per_s: r(sum(current, |s| s.compress_bytes_in), sum(before, |s| s.compress_bytes_in)),
        compress_bytes_out_per_s: r(sum(current, |s| s.compress_bytes_out), sum(before, |s| s.compress_bytes_out)),
        compress_bytes_in_total: sum(current, |s| s.compress_bytes_in),
        compress_bytes_out_total: sum(current, |s| s.compress_bytes_out),
        v1_connections: connections.saturating_sub(current.pusher_connections),
        pusher_connections: current.pusher_connections,
        pusher_apps: current.pusher_apps,
        pusher_events_per_s: r(current.pusher_events, before.pusher_events),
        shards,
    };
    serde_json::to_vec(&snapshot).expect("a snapshot of plain numbers and strings always serializes")
}

/// Keeps the previous sample between ticks.
pub struct Feed {
    node: Arc<Node>,
    previous: Option<(Instant, Sample)>,
}

impl Feed {
    pub fn new(node: Arc<Node>) -> Feed {
        Feed { node, previous: None }
    }

    /// Samples the node and returns the snapshot's JSON bytes.
    pub fn tick(&mut self, now: Instant) -> Vec<u8> {
        let mut current = Sample::read(&self.node);
        if let Some((_, previous)) = &self.previous {
            let interval = current.fanout_latency.since(&previous.fanout_latency);
            current.fanout_p99_ms = interval.quantile_us(0.99).map(|us| us / 1000.0);
        }
        let facts = NodeFacts {
            node: &self.node.config.node,
            io_mode: self.node.io_mode.get().copied().unwrap_or("starting"),
            connections_max: self.node.config.max_connections,
            uptime_seconds: self.node.started.elapsed().as_secs(),
            unix_ms: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
        };
        let (previous, elapsed) = match &self.previous {
            Some((at, sample)) => (Some(sample), now.saturating_duration_since(*at)),
            None => (None, Duration::ZERO),
        };
        let bytes = render(&facts, previous, &current, elapsed);
        self.previous = Some((now, current));
        bytes
    }

    /// Publishes one snapshot through the bridge inbox; a full inbox drops it (counted).
    pub fn publish(&mut self, now: Instant) -> bool {
        let data = Bytes::from(self.tick(now));
        let message = ToBridge::Publish { channel: SYS_METRICS_CHANNEL.into(), data };
        let metrics = &self.node.bridge_metrics;
        match self.node.bridge_inbox.push(message) {
            Ok(()) => {
                metrics.sys_snapshots.inc();
                true
            }
            Err(_) => {
                metrics.sys_snapshots_dropped.inc();
                false
            }
        }
    }
}

/// The feed thread's loop (`cmd::gateway` starts the thread): one snapshot per interval on
/// a fixed schedule (no drift from the time a snapshot takes), until the node starts
/// shutting down.
pub fn run(node: Arc<Node>) {
    {
        let interval = Duration::from_millis(SYS_METRICS_INTERVAL_MS);
        let mut feed = Feed::new(node.clone());
        let mut next = Instant::now();
        while !node.is_shutting_down() {
            feed.publish(Instant::now());
            next += interval;
            let now = Instant::now();
            if next <= now {
                // Suspended or starved for longer than an interval: skip the missed ticks
                // instead of publishing a burst of them.
                next = now + interval;
            }
            std::thread::sleep(next - now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> NodeFacts<'static> {
        NodeFacts { node: "n1", io_mode: "io_uring", connections_max: 1000, uptime_seconds: 7, unix_ms: 1_700_000_000_000 }
    }

    fn shard(connections: u64, frames_in: u64, frames_out: u64, deliveries: u64, drops: u64) -> ShardSample {
        ShardSample { connections, frames_in, frames_out, deliveries, queue_depth: 3, drops, slow_consumer_closes: 1, conflated: 2, compress_bytes_in: 1000 * deliveries, compress_bytes_out: 250 * deliveries }
    }

    #[test]
    fn rates_are_per_second_between_two_samples() {
        let before = Sample { shards: vec![shard(1, 10, 100, 90, 0), shard(2, 0, 0, 0, 0)], published: 5, bytes_in: 0, bytes_out: 0, bridge_drops: 0, fanout_p99_ms: None, ..Sample::default() };
        let after = Sample {
            shards: vec![shard(3, 30, 500, 490, 4), shard(4, 10, 100, 100, 0)],
            published: 25,
            bytes_in: 2000,
            bytes_out: 4000,
            bridge_drops: 2,
            fanout_p99_ms: Some(1.234),
            pusher_apps: 1,
            pusher_connections: 5,
            pusher_events: 8,
            ..Sample::default()
        };
        let json: serde_json::Value = serde_json::from_slice(&render(&facts(), Some(&before), &after, Duration::from_secs(2))).unwrap();
        assert_eq!(json["v"], 1);
        assert_eq!(json["node"], "n1");
        assert_eq!(json["io"], "io_uring");
        assert_eq!(json["connections"], 7);
        assert_eq!(json["connections_max"], 1000);
        assert_eq!(json["capacity_ratio"], 0.007);
        assert_eq!(json["in_per_s"], 15.0, "(30-10 + 10-0) / 2 s");
        assert_eq!(json["out_per_s"], 250.0);
        assert_eq!(json["deliveries_per_s"], 250.0);
        assert_eq!(json["published_per_s"], 10.0);
        assert_eq!(json["bytes_out_per_s"], 2000.0);
        assert_eq!(json["drops_total"], 6, "shard queue drops plus bridge inbox drops");
        assert_eq!(json["drops_per_s"], 3.0);
        assert_eq!(json["fanout_p99_ms"], 1.23);
        assert_eq!(json["slow_consumer_closes_total"], 2);
        assert_eq!(json["conflated_total"], 4, "summed over the shards");
        assert_eq!(json["compress_bytes_in_total"], 590_000, "summed over the shards");
        assert_eq!(json["compress_bytes_out_total"], 147_500);
        assert_eq!(json["compress_bytes_in_per_s"], 250_000.0, "(490-90 + 100-0) x 1000 B / 2 s");
        assert_eq!(json["compress_bytes_out_per_s"], 62_500.0);
        assert_eq!((json["v1_connections"].clone(), json["pusher_connections"].clone()), (serde_json::json!(2), serde_json::json!(5)), "7 connections, 5 of them Pusher");
        assert_eq!((json["pusher_apps"].clone(), json["pusher_events_per_s"].clone()), (serde_json::json!(1), serde_json::json!(4.0)));
        assert_eq!(json["shards"][0]["connections"], 3);
        assert_eq!(json["shards"][0]["in_per_s"], 10.0);
        assert_eq!(json["shards"][1]["id"], 1);
        assert_eq!(json["shards"][1]["out_per_s"], 50.0);
        assert_eq!(json["shards"][1]["queue_depth"], 3);
    }

    #[test]
    fn the_first_snapshot_has_zero_rates_and_no_p99_is_null() {
        let sample = Sample { shards: vec![shard(2, 50, 50, 50, 1)], published: 9, ..Sample::default() };
        let json: serde_json::Value = serde_json::from_slice(&render(&facts(), None, &sample, Duration::ZERO)).unwrap();
        assert_eq!(json["connections"], 2);
        assert_eq!(json["in_per_s"], 0.0);
        assert_eq!(json["published_per_s"], 0.0);
        assert_eq!(json["drops_total"], 1);
        assert!(json["fanout_p99_ms"].is_null());
    }

    #[test]
    fn a_counter_going_backwards_is_not_a_huge_rate() {
        let before = Sample { shards: vec![shard(0, 100, 0, 0, 0)], ..Sample::default() };
        let after = Sample { shards: vec![shard(0, 50, 0, 0, 0)], ..Sample::default() };
        let json: serde_json::Value = serde_json::from_slice(&render(&facts(), Some(&before), &after, Duration::from_secs(1))).unwrap();
        assert_eq!(json["in_per_s"], 0.0);
    }

    #[test]
    fn the_largest_snapshot_fits_its_bound() {
        let widest = ShardSample { connections: u64::MAX / 2, frames_in: u64::MAX, frames_out: u64::MAX, deliveries: u64::MAX, queue_depth: u64::MAX, drops: u64::MAX / 1024, slow_consumer_closes: 0, conflated: u64::MAX / 1024, compress_bytes_in: u64::MAX / 1024, compress_bytes_out: u64::MAX / 1024 };
        let sample = Sample { shards: vec![widest; crate::limits::SHARD_COUNT_MAX], published: u64::MAX, bytes_in: u64::MAX, bytes_out: u64::MAX, bridge_drops: 0, fanout_p99_ms: Some(123456.789), ..Sample::default() };
        let node = "n".repeat(255);
        let facts = NodeFacts { node: &node, io_mode: "io_uring", connections_max: usize::MAX, uptime_seconds: u64::MAX, unix_ms: u64::MAX };
        let bytes = render(&facts, Some(&Sample { shards: vec![ShardSample::default(); crate::limits::SHARD_COUNT_MAX], ..Sample::default() }), &sample, Duration::from_millis(1));
        assert!(bytes.len() <= SNAPSHOT_BYTES_MAX, "{} bytes", bytes.len());
        assert!(SNAPSHOT_BYTES_MAX <= crate::limits::MESSAGE_BYTES_MAX);
    }
}
