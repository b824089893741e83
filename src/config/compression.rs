//! permessage-deflate settings as data: on or off, the size threshold, the level.
//!
//! Owns: `--compression`, `--compression-threshold`, `--compression-level`. Must not
//! touch: runtime modules. Runs on: the main thread at start-up; cloned into every shard.

use super::value::{error, parse_count, parse_size, ConfigError};
use crate::limits;
use clap::Args;
use std::collections::BTreeMap;

/// Compression flags, flattened into `ringcast gateway`.
#[derive(Args, Debug, Default)]
#[command(next_help_heading = "Compression (permessage-deflate, RFC 7692)")]
pub struct CompressionArgs {
    /// Negotiate permessage-deflate with clients that offer it (browsers do): `on` or
    /// `off`. Each published message is compressed once per shard and every compressing
    /// subscriber's write shares those bytes; no connection keeps deflate state. [default: on]
    #[arg(long, env = "RINGCAST_COMPRESSION", value_name = "on|off")]
    pub compression: Option<String>,
    /// Messages smaller than this go out uncompressed (RSV1 clear) even to compressing
    /// clients: below it deflate saves little and costs a call. [default: 256B]
    #[arg(long, env = "RINGCAST_COMPRESSION_THRESHOLD", value_name = "SIZE")]
    pub compression_threshold: Option<String>,
    /// Deflate level, 1 (fastest) to 9 (smallest). Paid once per message per shard, not
    /// per subscriber. [default: 6]
    #[arg(long, env = "RINGCAST_COMPRESSION_LEVEL", value_name = "1-9")]
    pub compression_level: Option<String>,
}

impl CompressionArgs {
    pub fn given(&self) -> Vec<(&'static str, Option<String>)> {
        vec![
            ("compression", self.compression.clone()),
            ("compression_threshold", self.compression_threshold.clone()),
            ("compression_level", self.compression_level.clone()),
        ]
    }
}

#[derive(Clone, Debug)]
pub struct CompressionConfig {
    pub enabled: bool,
    pub threshold_bytes: usize,
    pub level: u32,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        CompressionConfig { enabled: true, threshold_bytes: limits::COMPRESSION_THRESHOLD_BYTES, level: limits::COMPRESSION_LEVEL }
    }
}

pub fn build(values: &BTreeMap<&str, String>) -> Result<CompressionConfig, ConfigError> {
    let mut c = CompressionConfig::default();
    if let Some(text) = values.get("compression") {
        c.enabled = match text.trim().to_ascii_lowercase().as_str() {
            "on" | "true" | "1" | "yes" => true,
            "off" | "false" | "0" | "no" => false,
            other => return Err(error("compression", format!("{other:?}: write on or off"))),
        };
    }
    if let Some(text) = values.get("compression_threshold") {
        c.threshold_bytes = parse_size(text).map_err(|m| error("compression_threshold", m))?;
    }
    if let Some(text) = values.get("compression_level") {
        let level = parse_count(text).map_err(|m| error("compression_level", m))?;
        if !(1..=9).contains(&level) {
            return Err(error("compression_level", format!("{level} is not a deflate level; give 1 (fastest) to 9 (smallest)")));
        }
        c.level = level as u32;
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
        let c = build(&values(&[])).unwrap();
        assert!(c.enabled);
        assert_eq!((c.threshold_bytes, c.level), (256, 6));
        let c = build(&values(&[("compression", "off"), ("compression_threshold", "1KiB"), ("compression_level", "1")])).unwrap();
        assert!(!c.enabled);
        assert_eq!((c.threshold_bytes, c.level), (1024, 1));
        assert_eq!(build(&values(&[("compression", "maybe")])).unwrap_err().key, "compression");
        assert_eq!(build(&values(&[("compression_level", "0")])).unwrap_err().key, "compression_level");
        assert_eq!(build(&values(&[("compression_level", "10")])).unwrap_err().key, "compression_level");
        assert_eq!(build(&values(&[("compression_threshold", "lots")])).unwrap_err().key, "compression_threshold");
    }
}
