//! Transports on top of a shard: the HTTP/1.1 front door (routes, upgrade, server API),
//! TLS termination, and the WebSocket session that follows an upgrade.
//!
//! Owns: one accepted socket from accept to close. Must not touch: other shards,
//! engines (publishes go to the bridge inbox). Runs on: the shard that accepted it.

mod assets;
pub mod config;
mod http;
pub mod longpoll;
mod presence;
pub mod tls;
pub(crate) mod websocket;

pub use http::serve;

use crate::config::GatewayConfig;
use std::fmt::Write as _;

/// What the transports share node-wide: the TLS certificate and the per-shard counters.
pub struct NodeTransport {
    pub tls: Option<tls::TlsState>,
    pub tls_metrics: Vec<tls::TlsMetrics>,
    pub poll_metrics: Vec<longpoll::PollMetrics>,
}

impl NodeTransport {
    pub fn new(config: &GatewayConfig) -> Result<NodeTransport, tls::LoadError> {
        let tls = config.transport.tls.as_ref().map(tls::TlsState::new).transpose()?;
        Ok(NodeTransport {
            tls,
            tls_metrics: (0..config.shards).map(|_| tls::TlsMetrics::default()).collect(),
            poll_metrics: (0..config.shards).map(|_| longpoll::PollMetrics::default()).collect(),
        })
    }

    /// Appends the transport families to a Prometheus scrape.
    pub fn render_metrics(&self, out: &mut String) {
        let family = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        family(out, "ringcast_tls_enabled", "gauge", "1 when the listener terminates TLS (--tls-cert).");
        let _ = writeln!(out, "ringcast_tls_enabled {}", self.tls.is_some() as u8);
        family(out, "ringcast_tls_handshakes_total", "counter", "TLS handshakes completed.");
        for (shard, m) in self.tls_metrics.iter().enumerate() {
            let _ = writeln!(out, "ringcast_tls_handshakes_total{{shard=\"{shard}\"}} {}", m.handshakes.get());
        }
        family(out, "ringcast_tls_handshake_failures_total", "counter", "TLS handshakes that failed, by reason.");
        for (shard, m) in self.tls_metrics.iter().enumerate() {
            for why in tls::HandshakeFailure::ALL {
                let _ = writeln!(out, "ringcast_tls_handshake_failures_total{{shard=\"{shard}\",reason=\"{}\"}} {}", why.label(), m.failures[why as usize].get());
            }
        }
        let (reloads, failures) = self.tls.as_ref().map_or((0, 0), |t| (t.reloads.get(), t.reload_failures.get()));
        family(out, "ringcast_tls_reloads_total", "counter", "Certificate reloads on SIGHUP that took effect.");
        let _ = writeln!(out, "ringcast_tls_reloads_total {reloads}");
        family(out, "ringcast_tls_reload_failures_total", "counter", "SIGHUP reloads refused (bad PEM); the previous certificate stays.");
        let _ = writeln!(out, "ringcast_tls_reload_failures_total {failures}");
        let poll: [(&str, &str, fn(&longpoll::PollMetrics) -> u64); 8] = [
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
    }
}
