//! The one Prometheus text writer (exposition format 0.0.4): every scrape (the gateway's
//! `/metrics`, the worker's) and every part that adds families to it (shards, presence,
//! the Lane, the guard, TLS, long-poll) writes through these, so HELP/TYPE lines and
//! samples look the same everywhere.
//!
//! Owns: the text format. Must not touch: which metrics exist (each part owns its own).

use std::fmt::{Display, Write as _};

/// `# HELP` and `# TYPE` lines of a family; `kind` is `counter` or `gauge`.
pub fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// One sample without labels.
pub fn sample(out: &mut String, name: &str, value: impl Display) {
    let _ = writeln!(out, "{name} {value}");
}

/// One sample with labels, given as `key="value"` pairs joined by commas.
pub fn labeled(out: &mut String, name: &str, labels: impl Display, value: impl Display) {
    let _ = writeln!(out, "{name}{{{labels}}} {value}");
}

/// A family of one unlabeled sample.
pub fn single(out: &mut String, name: &str, kind: &str, help: &str, value: impl Display) {
    family(out, name, kind, help);
    sample(out, name, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_exposition_format() {
        let mut out = String::new();
        single(&mut out, "x_total", "counter", "Things.", 3);
        labeled(&mut out, "x_total", format_args!("shard=\"{}\"", 1), 2);
        assert_eq!(out, "# HELP x_total Things.\n# TYPE x_total counter\nx_total 3\nx_total{shard=\"1\"} 2\n");
    }
}
