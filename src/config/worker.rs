//! `ringcast worker` settings as data: the Lane, NATS and presence it needs, and the check
//! that a separate worker has what it needs.
//!
//! Owns: `SidecarConfig`, `requirements`. Must not touch: runtime modules.

use super::broker::NatsConfig;
use super::lane::LaneConfig;
use std::net::SocketAddr;

#[derive(Debug, Clone)]
pub struct SidecarConfig {
    pub lane: LaneConfig,
    /// `--redis`: who is online on any node (skips tries for offline users).
    pub presence: Option<super::presence::PresenceConfig>,
    pub nats: NatsConfig,
    pub metrics_addr: Option<SocketAddr>,
    pub log_filter: String,
    pub log_json: bool,
}

/// Checks what a separate worker needs; the message says what to add.
pub fn requirements(lane: &LaneConfig, nats: Option<&NatsConfig>) -> Result<(), (&'static str, String)> {
    if lane.amqp.is_none() {
        return Err(("amqp", "ringcast worker needs --amqp (RabbitMQ): the embedded queue belongs to one gateway, whose in-process worker serves it".into()));
    }
    if nats.is_none() {
        return Err(("nats", "ringcast worker needs --nats: it reaches users on every gateway through NATS (and hears their acks there)".into()));
    }
    Ok(())
}
