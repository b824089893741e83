//! Admission and drain settings as data: accept rate, drain time, port sharing (the
//! decisions that use them live in `admission`).
//!
//! Owns: `AdmissionArgs`, `AdmissionConfig`, `build`. Must not touch: runtime modules.
use super::value::{error, parse_bool, parse_count, parse_duration, ConfigError};
use crate::limits;
use clap::Args;
use std::collections::BTreeMap;
use std::time::Duration;

/// Admission and drain flags, flattened into `ringcast gateway`.
#[derive(Args, Debug, Default)]
#[command(next_help_heading = "Admission and drain")]
pub struct AdmissionArgs {
    /// New WebSocket (and long-poll) sessions each shard admits per second (token bucket,
    /// burst one second's worth); past it upgrades get 503 with `Retry-After: 1`. The
    /// default lets a 2-shard node take back 100k clients in ~25 s while handshakes stay
    /// a small share of each core. Load tests that connect fast raise it. [default: 2000]
    #[arg(long, env = "RINGCAST_ACCEPT_RATE", value_name = "PER_SECOND")]
    pub accept_rate: Option<String>,
    /// On SIGTERM or `POST /admin/drain`: readyz turns 503 and open connections are closed
    /// with 1012 spread evenly over this long (seconds, or a duration like `1500ms`), then
    /// the process exits 0. [default: 30]
    #[arg(long, env = "RINGCAST_DRAIN_SECONDS", value_name = "SECONDS")]
    pub drain_seconds: Option<String>,
    /// Start even when another live process already listens on the port (SO_REUSEPORT
    /// would silently split connections with it, e.g. a stale gateway). Only for
    /// deliberate multi-process setups. [default: false]
    #[arg(long, env = "RINGCAST_SHARE_PORT", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub share_port: Option<String>,
}

impl AdmissionArgs {
    pub fn given(&self) -> Vec<(&'static str, Option<String>)> {
        vec![
            ("accept_rate", self.accept_rate.clone()),
            ("drain_seconds", self.drain_seconds.clone()),
            ("share_port", self.share_port.clone()),
        ]
    }
}

#[derive(Clone, Debug)]
pub struct AdmissionConfig {
    pub accept_rate_per_second: u32,
    pub drain: Duration,
    pub share_port: bool,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            accept_rate_per_second: limits::ACCEPT_RATE_PER_SHARD,
            drain: Duration::from_millis(limits::DRAIN_MS),
            share_port: false,
        }
    }
}


pub fn build(values: &BTreeMap<&str, String>) -> Result<AdmissionConfig, ConfigError> {
    let mut config = AdmissionConfig::default();
    if let Some(text) = values.get("accept_rate") {
        let rate = parse_count(text).map_err(|m| error("accept_rate", m))?;
        if rate == 0 || rate > limits::ACCEPT_RATE_PER_SHARD_MAX as usize {
            return Err(error("accept_rate", format!("{rate} must be from 1 to {} per second per shard", limits::ACCEPT_RATE_PER_SHARD_MAX)));
        }
        config.accept_rate_per_second = rate as u32;
    }
    if let Some(text) = values.get("drain_seconds") {
        config.drain = parse_seconds(text).map_err(|m| error("drain_seconds", m))?;
        if config.drain > Duration::from_millis(limits::DRAIN_MS_MAX) {
            return Err(error("drain_seconds", format!("{text:?} is longer than the maximum {} s", limits::DRAIN_MS_MAX / 1000)));
        }
    }
    if let Some(text) = values.get("share_port") {
        config.share_port = parse_bool(text).map_err(|m| error("share_port", m))?;
    }
    Ok(config)
}

/// Whole seconds (`30`), or a duration with its unit (`1500ms`, `2m`).
fn parse_seconds(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse::<u64>().map(Duration::from_secs).map_err(|_| format!("{text:?} is too large"));
    }
    parse_duration(t)
}
