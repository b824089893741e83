//! Fan-out settings as data: conflation (latest values instead of a disconnect for slow
//! subscribers of chosen channels).
//!
//! Owns: `--conflate`, `--conflate-threshold`, `--conflate-channels`. Must not touch:
//! runtime modules. Runs on: the main thread at start-up; cloned into every shard.

use super::value::{error, parse_count, parse_size, ConfigError};
use crate::limits;
use clap::Args;
use std::collections::BTreeMap;

/// Conflation flags, flattened into `ringcast gateway`.
#[derive(Args, Debug, Default)]
#[command(next_help_heading = "Conflation (slow subscribers get the latest value)")]
pub struct FanoutArgs {
    /// Channel pattern whose messages may be conflated (repeatable, or comma-separated),
    /// e.g. `--conflate 'tele.>'`. When a subscriber's backlog passes
    /// --conflate-threshold, a queued message of the same channel that has not started
    /// to go out is replaced by the newest one instead of the backlog growing to
    /// --outbound-limit and the connection being closed with 4008. Fast subscribers still
    /// get every message. [default: none]
    #[arg(long, env = "RINGCAST_CONFLATE", value_name = "PATTERN", action = clap::ArgAction::Append, value_delimiter = ',')]
    pub conflate: Vec<String>,
    /// Backlog (bytes queued for one subscriber) from which conflation starts; below
    /// --outbound-limit. [default: 64KiB]
    #[arg(long, env = "RINGCAST_CONFLATE_THRESHOLD", value_name = "SIZE")]
    pub conflate_threshold: Option<String>,
    /// Conflated channels one subscriber's backlog tracks at once (a wildcard can match
    /// many); past it a message is queued as usual and the byte bound applies. [default: 1024]
    #[arg(long, env = "RINGCAST_CONFLATE_CHANNELS", value_name = "N")]
    pub conflate_channels: Option<String>,
}

impl FanoutArgs {
    pub fn given(&self) -> Vec<(&'static str, Option<String>)> {
        vec![
            ("conflate", (!self.conflate.is_empty()).then(|| self.conflate.join(","))),
            ("conflate_threshold", self.conflate_threshold.clone()),
            ("conflate_channels", self.conflate_channels.clone()),
        ]
    }
}

#[derive(Clone, Debug)]
pub struct FanoutConfig {
    /// Patterns of conflated channels (empty: conflation off).
    pub conflate: Vec<String>,
    pub conflate_threshold_bytes: usize,
    pub conflate_channels_max: usize,
}

impl Default for FanoutConfig {
    fn default() -> Self {
        FanoutConfig { conflate: Vec::new(), conflate_threshold_bytes: limits::CONFLATE_THRESHOLD_BYTES, conflate_channels_max: limits::CONFLATE_CHANNELS_MAX }
    }
}

impl FanoutConfig {
    /// Whether messages of `channel` may be conflated.
    pub fn conflates(&self, channel: &str) -> bool {
        self.conflate.iter().any(|pattern| crate::channel::matches(pattern, channel))
    }
}

/// `outbound_bytes_max`: the per-subscriber bound the threshold must stay under.
pub fn build(values: &BTreeMap<&str, String>, outbound_bytes_max: usize) -> Result<FanoutConfig, ConfigError> {
    let mut c = FanoutConfig::default();
    if let Some(text) = values.get("conflate") {
        for pattern in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if let Err(e) = crate::channel::validate_pattern(pattern) {
                return Err(error("conflate", format!("{pattern:?} is not a channel pattern: {e}")));
            }
            if pattern.starts_with('$') {
                return Err(error("conflate", format!("{pattern:?}: server channels ($…) are not conflated")));
            }
            c.conflate.push(pattern.to_owned());
        }
    }
    if let Some(text) = values.get("conflate_threshold") {
        c.conflate_threshold_bytes = parse_size(text).map_err(|m| error("conflate_threshold", m))?;
    }
    // Checked only where conflation is on: without it the threshold is never used.
    if !c.conflate.is_empty() && (c.conflate_threshold_bytes == 0 || c.conflate_threshold_bytes >= outbound_bytes_max) {
        return Err(error(
            "conflate_threshold",
            format!("{} bytes must be above 0 and below outbound_limit ({outbound_bytes_max} bytes): conflation must start before the 4008 bound", c.conflate_threshold_bytes),
        ));
    }
    if let Some(text) = values.get("conflate_channels") {
        c.conflate_channels_max = parse_count(text).map_err(|m| error("conflate_channels", m))?;
        if c.conflate_channels_max == 0 || c.conflate_channels_max > limits::CONFLATE_CHANNELS_MAX_MAX {
            return Err(error("conflate_channels", format!("must be 1..={}", limits::CONFLATE_CHANNELS_MAX_MAX)));
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(pairs: &[(&'static str, &str)]) -> BTreeMap<&'static str, String> {
        pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
    }

    #[test]
    fn settings_parse_and_name_their_key() {
        let c = build(&values(&[("conflate", "tele.>, dash.*.kpi"), ("conflate_threshold", "32KiB")]), 256 * 1024).unwrap();
        assert_eq!(c.conflate, ["tele.>", "dash.*.kpi"]);
        assert_eq!(c.conflate_threshold_bytes, 32 * 1024);
        assert!(c.conflates("tele.dev1.temp") && c.conflates("dash.a.kpi") && !c.conflates("chat.room"));
        assert!(build(&values(&[]), 256 * 1024).unwrap().conflate.is_empty());
        assert_eq!(build(&values(&[("conflate", "a..b")]), 256 * 1024).unwrap_err().key, "conflate");
        assert_eq!(build(&values(&[("conflate", "$sys.>")]), 256 * 1024).unwrap_err().key, "conflate");
        assert_eq!(build(&values(&[("conflate", "a.>"), ("conflate_threshold", "1MiB")]), 256 * 1024).unwrap_err().key, "conflate_threshold");
        assert!(build(&values(&[("conflate_threshold", "1MiB")]), 256 * 1024).is_ok(), "unused without --conflate");
        assert_eq!(build(&values(&[("conflate_channels", "0")]), 256 * 1024).unwrap_err().key, "conflate_channels");
    }
}
