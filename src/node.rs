//! What every thread of one gateway node shares, read-mostly: the validated config, the
//! mailboxes, the metric blocks, the token verifier and the admission counters.
//!
//! Owns: node-wide state. Must not touch: sockets. Runs on: created by main, shared by
//! every shard and the bridge through an `Arc`.

use crate::auth::JwtVerifier;
use crate::config::GatewayConfig;
use crate::fanout::{Mailbox, ToBridge, ToShard};
use crate::metrics::{BridgeMetrics, NodeView, ShardMetrics, ShardView};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use crate::certificate::{HandshakeFailure, LoadError, TlsMetrics, TlsState};
use crate::metrics::transport::PollMetrics;
use std::fmt::Write as _;

pub struct Node {
    pub config: GatewayConfig,
    pub shard_inboxes: Vec<Arc<Mailbox<ToShard>>>,
    pub bridge_inbox: Arc<Mailbox<ToBridge>>,
    pub shard_metrics: Vec<Arc<ShardMetrics>>,
    pub bridge_metrics: Arc<BridgeMetrics>,
    /// Presence counters and the presence store's link state (`/metrics`, `/readyz`).
    pub presence: Arc<crate::presence::PresenceShared>,
    pub lane_metrics: Arc<crate::lane::metrics::LaneMetrics>,
    pub jwt: Option<JwtVerifier>,
    /// WebSocket connections on the node, for `max_connections`. Touched on connect and
    /// disconnect only, never per message.
    pub connections: AtomicUsize,
    pub shutting_down: AtomicBool,
    /// Set with `shutting_down` when the stop is a drain (SIGTERM, `POST /admin/drain`):
    /// readyz says `draining`, and connections close with 1012 over `drain_seconds`.
    pub draining: AtomicBool,
    /// The broker link: always up for the embedded broker; NATS's connection state.
    /// Publishes are refused (503) while it is down.
    pub broker_link: Arc<AtomicBool>,
    /// "io_uring" or "epoll", set by the first shard that starts its runtime.
    pub io_mode: OnceLock<&'static str>,
    pub started: Instant,
    /// TLS certificate and transport counters (TLS, long-poll).
    pub transport: NodeTransport,
    /// Node-wide bounds against hostile clients: subscriptions, long-poll sessions per
    /// client, HTTP-phase sockets (`guard`).
    pub guard: crate::guard::NodeGuard,
}

impl Node {
    /// The node's shared state; an error when the TLS certificate cannot be loaded.
    pub fn new(config: GatewayConfig) -> Result<Arc<Node>, LoadError> {
        let shards = config.shards;
        let jwt = config
            .jwt_secret
            .as_ref()
            .map(|secret| JwtVerifier::with_claims(secret.as_bytes(), config.jwt_audience.as_deref(), config.jwt_issuer.as_deref()));
        let transport = NodeTransport::new(&config)?;
        Ok(Arc::new(Node {
            shard_inboxes: (0..shards).map(|_| Arc::new(Mailbox::new(config.shard_inbox_messages))).collect(),
            bridge_inbox: Arc::new(Mailbox::new(config.bridge_inbox_messages)),
            shard_metrics: (0..shards).map(|_| Arc::new(ShardMetrics::default())).collect(),
            bridge_metrics: Arc::new(BridgeMetrics::default()),
            presence: crate::presence::PresenceShared::new(&config.presence),
            lane_metrics: Arc::default(),
            jwt,
            connections: AtomicUsize::new(0),
            shutting_down: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            broker_link: Arc::new(AtomicBool::new(false)),
            io_mode: OnceLock::new(),
            started: Instant::now(),
            transport,
            guard: crate::guard::NodeGuard::new(config.guard.clone(), config.broker.mirrors_interest()),
            config,
        }))
    }

    /// Reserves a connection slot; false when the node is full.
    pub fn admit(&self) -> bool {
        let max = self.config.max_connections;
        self.connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .is_ok()
    }

    pub fn release(&self) {
        self.connections.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn ready(&self) -> bool {
        !self.is_shutting_down() && self.connections.load(Ordering::Acquire) < self.config.max_connections
    }

    pub fn broker_up(&self) -> bool {
        self.broker_link.load(Ordering::Acquire)
    }

    pub fn broker_name(&self) -> &'static str {
        self.config.broker.name()
    }

    pub fn render_metrics(&self) -> String {
        let shards = self
            .shard_metrics
            .iter()
            .zip(&self.shard_inboxes)
            .map(|(metrics, inbox)| ShardView {
                metrics,
                inbox_depth: inbox.len(),
                inbox_capacity: inbox.capacity(),
                inbox_dropped: inbox.dropped(),
            })
            .collect();
        let mut out = crate::metrics::render(&NodeView {
            node: &self.config.node,
            broker: self.broker_name(),
            broker_connected: self.broker_up(),
            io_mode: self.io_mode.get().copied().unwrap_or("starting"),
            connections_max: self.config.max_connections,
            draining: self.is_shutting_down(),
            accept_rate_per_shard: self.config.admission.accept_rate_per_second,
            shards,
            bridge: &self.bridge_metrics,
            bridge_inbox_depth: self.bridge_inbox.len(),
            bridge_inbox_capacity: self.bridge_inbox.capacity(),
            bridge_inbox_dropped: self.bridge_inbox.dropped(),
            uptime_seconds: self.started.elapsed().as_secs(),
        });
        self.transport.render_metrics(&mut out);
        self.guard.render(&mut out);
        self.presence.render(&mut out);
        self.lane_metrics.render_into(&mut out, crate::clock::now_ms());
        out
    }
}

/// What the transports share node-wide: the TLS certificate and the per-shard counters.
pub struct NodeTransport {
    pub tls: Option<TlsState>,
    pub tls_metrics: Vec<TlsMetrics>,
    pub poll_metrics: Vec<PollMetrics>,
    /// `[shard][app]`: Pusher counters per app (`config.pusher.apps` order).
    pub pusher_metrics: Vec<Vec<crate::metrics::transport::PusherAppMetrics>>,
    /// The app ids, for the `app` label.
    pusher_apps: Vec<String>,
}

impl NodeTransport {
    pub fn new(config: &GatewayConfig) -> Result<NodeTransport, LoadError> {
        let tls = config.transport.tls.as_ref().map(TlsState::new).transpose()?;
        Ok(NodeTransport {
            tls,
            tls_metrics: (0..config.shards).map(|_| TlsMetrics::default()).collect(),
            poll_metrics: (0..config.shards).map(|_| PollMetrics::default()).collect(),
            pusher_metrics: (0..config.shards).map(|_| config.pusher.apps.iter().map(|_| Default::default()).collect()).collect(),
            pusher_apps: config.pusher.apps.iter().map(|app| app.id.clone()).collect(),
        })
    }

    /// Appends the transport families to a Prometheus scrape.
    pub fn render_metrics(&self, out: &mut String) {
        use crate::metrics::prometheus::family;
        family(out, "ringcast_tls_enabled", "gauge", "1 when the listener terminates TLS (--tls-cert).");
        let _ = writeln!(out, "ringcast_tls_enabled {}", self.tls.is_some() as u8);
        family(out, "ringcast_tls_handshakes_total", "counter", "TLS handshakes completed.");
        for (shard, m) in self.tls_metrics.iter().enumerate() {
            let _ = writeln!(out, "ringcast_tls_handshakes_total{{shard=\"{shard}\"}} {}", m.handshakes.get());
        }
        family(out, "ringcast_tls_handshake_failures_total", "counter", "TLS handshakes that failed, by reason.");
        for (shard, m) in self.tls_metrics.iter().enumerate() {
            for why in HandshakeFailure::ALL {
                let _ = writeln!(out, "ringcast_tls_handshake_failures_total{{shard=\"{shard}\",reason=\"{}\"}} {}", why.label(), m.failures[why as usize].get());
            }
        }
        let (reloads, failures) = self.tls.as_ref().map_or((0, 0), |t| (t.reloads.get(), t.reload_failures.get()));
        family(out, "ringcast_tls_reloads_total", "counter", "Certificate reloads on SIGHUP that took effect.");
        let _ = writeln!(out, "ringcast_tls_reloads_total {reloads}");
        family(out, "ringcast_tls_reload_failures_total", "counter", "SIGHUP reloads refused (bad PEM); the previous certificate stays.");
        let _ = writeln!(out, "ringcast_tls_reload_failures_total {failures}");
        let poll: [(&str, &str, fn(&PollMetrics) -> u64); 8] = [
            ("ringcast_poll_sessions", "Open long-poll sessions (also counted in ringcast_shard_connections).", |m| m.sessions.get()),
            ("ringcast_poll_sessions_opened_total", "Long-poll sessions opened (POST /poll).", |m| m.opened.get()),
            ("ringcast_poll_sessions_expired_total", "Long-poll sessions nobody polled for poll_timeout (a disconnect).", |m| m.expired.get()),
            ("ringcast_poll_gets_total", "GET /poll/{sid} answered by the owning shard.", |m| m.gets.get()),
            ("ringcast_poll_posts_total", "POST /poll/{sid} handled by the owning shard.", |m| m.posts.get()),
            ("ringcast_poll_forwarded_total", "Long-poll requests forwarded to the shard owning the session.", |m| m.forwarded.get()),
            ("ringcast_poll_forward_refused_total", "Forwards refused because the owner's mailbox was full (503).", |m| m.forward_refused.get()),
            ("ringcast_poll_posts_too_many_frames_total", "POST /poll/{sid} refused with 413: more frames than twice client_rate.", |m| m.posts_too_many_frames.get()),
        ];
        for (name, help, get) in poll {
            family(out, name, if name.ends_with("_total") { "counter" } else { "gauge" }, help);
            for (shard, m) in self.poll_metrics.iter().enumerate() {
                let _ = writeln!(out, "{name}{{shard=\"{shard}\"}} {}", get(m));
            }
        }
        type PusherGet = fn(&crate::metrics::transport::PusherAppMetrics) -> u64;
        let pusher: [(&str, &str, PusherGet); 17] = [
            ("ringcast_pusher_connections", "Open Pusher protocol connections, by app.", |m| m.connections.get()),
            ("ringcast_pusher_subscriptions_total", "Pusher channel subscriptions made, by app.", |m| m.subscriptions.get()),
            ("ringcast_pusher_auth_failures_total", "Pusher channel auth or sign-in refused (bad signature), by app.", |m| m.auth_failures.get()),
            ("ringcast_pusher_api_events_total", "Events accepted by the Pusher HTTP API (one per channel), by app.", |m| m.api_events.get()),
            ("ringcast_pusher_api_refused_total", "Pusher HTTP API calls refused (401 signature, 400 body, 413 size), by app.", |m| m.api_refused.get()),
            ("ringcast_pusher_client_events_total", "Pusher client events (client-*) relayed, by app.", |m| m.client_events.get()),
            ("ringcast_pusher_client_events_refused_total", "Pusher client events refused (disabled, not subscribed, too big, over the rate: 4301), by app.", |m| m.client_events_refused.get()),
            ("ringcast_pusher_bad_frames_total", "Malformed or unknown Pusher client frames answered with pusher:error, by app.", |m| m.bad_frames.get()),
            ("ringcast_pusher_presence_queries_total", "Presence member lists fetched to start a shard's list of a Pusher presence channel, by app.", |m| m.presence_queries.get()),
            ("ringcast_pusher_presence_refused_total", "Pusher presence subscriptions refused (bad channel_data, over pusher_max_presence_members, store unavailable), by app.", |m| m.presence_refused.get()),
            ("ringcast_pusher_member_events_total", "pusher_internal:member_added/member_removed frames queued to subscribers, by app.", |m| m.member_events.get()),
            ("ringcast_pusher_presence_lists", "Presence member lists kept by this node's shards (one per presence channel with a local subscriber, per shard), by app.", |m| m.presence_lists.get()),
            ("ringcast_pusher_over_quota_total", "Pusher connections refused with 4004: the app's max_connections on this node was reached, by app.", |m| m.over_quota.get()),
            ("ringcast_pusher_presence_corrections_total", "Users added to or removed from a shard's presence member list by the periodic check against Redis (missed frame, dead node), by app.", |m| m.presence_corrections.get()),
            ("ringcast_pusher_api_queries_total", "Pusher HTTP API channel queries answered (channels, channel info, users), by app.", |m| m.api_queries.get()),
            ("ringcast_pusher_api_terminations_total", "Pusher terminate_connections calls accepted (sent to every node), by app.", |m| m.api_terminations.get()),
            ("ringcast_pusher_terminated_connections_total", "Pusher connections closed on this node by terminate_connections (4009), by app.", |m| m.terminated.get()),
        ];
        for (name, help, get) in pusher {
            family(out, name, if name.ends_with("_total") { "counter" } else { "gauge" }, help);
            for (index, app) in self.pusher_apps.iter().enumerate() {
                // Connections are +1/-1 on different shards: sum as signed.
                let sum: i64 = self.pusher_metrics.iter().map(|apps| get(&apps[index]) as i64).sum();
                let _ = writeln!(out, "{name}{{app=\"{app}\"}} {sum}");
            }
        }
    }
}
