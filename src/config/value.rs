//! Leaf: the one error type for settings and one parser per kind of value. Every part's
//! `build` reads its values through these, so a bad value always gives the same kind of
//! one-line error naming its key.
//!
//! Owns: `ConfigError`, `parse_size`, `parse_duration`, `parse_count`, `parse_bool`.
//! Must not touch: anything of the crate (it is a leaf).

use std::time::Duration;

/// A bad setting: which key, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub msg: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "config error: {}: {}", self.key, self.msg)
    }
}

impl std::error::Error for ConfigError {}

pub fn error(key: &str, msg: impl Into<String>) -> ConfigError {
    ConfigError { key: key.to_string(), msg: msg.into() }
}

/// `64KiB`, `1MiB`, `512`, `64KB` (KB = 1000, KiB = 1024; case-insensitive; a space allowed).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let bad = || format!("{text:?} is not a size (write it like 64KiB, 1MiB or 512)");
    let number: u64 = digits.parse().map_err(|_| bad())?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1000,
        "kib" => 1024,
        "mb" | "m" => 1000 * 1000,
        "mib" => 1024 * 1024,
        "gb" | "g" => 1000 * 1000 * 1000,
        "gib" => 1024 * 1024 * 1024,
        _ => return Err(bad()),
    };
    number.checked_mul(multiplier).and_then(|n| usize::try_from(n).ok()).ok_or_else(|| format!("{text:?} is too large"))
}

/// `250ms`, `30s`, `5m`, `1h`. A unit is required: a bare number is ambiguous.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let bad = || format!("{text:?} is not a duration (write it like 250ms, 30s, 5m or 1h)");
    let number: u64 = digits.parse().map_err(|_| bad())?;
    if matches!(unit.trim(), "us" | "µs") {
        return Ok(Duration::from_micros(number));
    }
    let ms = match unit.trim() {
        "ms" => Some(number),
        "s" => number.checked_mul(1000),
        "m" | "min" => number.checked_mul(60_000),
        "h" => number.checked_mul(3_600_000),
        "" => return Err(format!("{text:?} has no unit (write it like {number}s or {number}ms)")),
        _ => return Err(bad()),
    };
    ms.map(Duration::from_millis).ok_or_else(|| format!("{text:?} is too large"))
}

pub fn parse_count(text: &str) -> Result<usize, String> {
    let t = text.trim().replace('_', "");
    t.parse().map_err(|_| format!("{text:?} is not a whole number"))
}

pub fn parse_bool(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("{text:?} is not true or false")),
    }
}

