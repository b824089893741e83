//! Statistics: latency histograms, loss math, and server cost from /proc samples.
//!
//! Owns: the HDR histogram shape every process agrees on, the wire form of a histogram
//! between worker and parent, percentiles, loss, CPU-µs per delivery, /proc parsing.
//! Must not touch: sockets. Pure except the two `/proc` readers at the bottom.

use hdrhistogram::Histogram;

/// Highest latency recorded: 100 s in ns; anything slower is clamped (and is a failure anyway).
pub const LATENCY_NS_MAX: u64 = 100_000_000_000;
/// 3 significant figures: 0.1% value resolution, the usual HDR choice.
pub const LATENCY_SIGFIG: u8 = 3;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_NS_MAX, LATENCY_SIGFIG).expect("static histogram bounds are valid")
}

/// A histogram as (value, count) pairs: compact for the 1 s worker → parent reports.
pub fn histogram_to_pairs(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded().map(|v| (v.value_iterated_to(), v.count_at_value())).collect()
}

pub fn add_pairs(h: &mut Histogram<u64>, pairs: &[(u64, u64)]) {
    for &(value, count) in pairs {
        h.saturating_record_n(value, count);
    }
}

/// Latency summary in ns.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
}

pub fn percentiles(h: &Histogram<u64>) -> Percentiles {
    if h.len() == 0 {
        return Percentiles::default();
    }
    Percentiles {
        count: h.len(),
        p50_ns: h.value_at_quantile(0.50),
        p90_ns: h.value_at_quantile(0.90),
        p99_ns: h.value_at_quantile(0.99),
        p999_ns: h.value_at_quantile(0.999),
        max_ns: h.max(),
    }
}

/// Loss accounting for a fan-out run: every published message should reach every subscriber.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Loss {
    pub published: u64,
    pub subscribers: u64,
    pub expected: u64,
    pub delivered: u64,
    /// Deliveries missing (expected − delivered, never negative).
    pub lost: u64,
    /// Deliveries beyond the expected count (duplicates or stragglers from an earlier step).
    pub extra: u64,
    pub lost_ratio: f64,
}

pub fn loss(published: u64, subscribers: u64, delivered: u64) -> Loss {
    let expected = published.saturating_mul(subscribers);
    let lost = expected.saturating_sub(delivered);
    let extra = delivered.saturating_sub(expected);
    let lost_ratio = if expected == 0 { 0.0 } else { lost as f64 / expected as f64 };
    Loss { published, subscribers, expected, delivered, lost, extra, lost_ratio }
}

/// One sample of a process's cost: CPU ticks (utime + stime) and resident memory.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcSample {
    pub cpu_ticks: u64,
    pub rss_kib: u64,
}

/// utime + stime from the text of /proc/PID/stat. The command name (field 2) may
/// contain spaces and parentheses, so fields are counted after the last ')'.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    // After ')' the fields start at field 3 (state); utime is field 14, stime 15.
    let utime: u64 = fields.nth(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// VmRSS in KiB from the text of /proc/PID/status.
pub fn parse_status_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU-µs the server spent per delivery between two samples.
pub fn cpu_us_per_delivery(before: ProcSample, after: ProcSample, ticks_per_second: u64, deliveries: u64) -> Option<f64> {
    if deliveries == 0 || ticks_per_second == 0 {
        return None;
    }
    let ticks = after.cpu_ticks.checked_sub(before.cpu_ticks)?;
    Some(ticks as f64 * 1e6 / ticks_per_second as f64 / deliveries as f64)
}

/// Server RSS per connection: growth over the baseline divided by connections held.
pub fn rss_bytes_per_connection(baseline: ProcSample, loaded: ProcSample, connections: u64) -> Option<f64> {
    if connections == 0 {
        return None;
    }
    Some(loaded.rss_kib.saturating_sub(baseline.rss_kib) as f64 * 1024.0 / connections as f64)
}

pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// Samples /proc/PID; `None` when the process is gone.
pub fn sample_process(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(ProcSample { cpu_ticks: parse_stat_cpu_ticks(&stat)?, rss_kib: parse_status_rss_kib(&status)? })
}

pub fn self_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status").ok().and_then(|s| parse_status_rss_kib(&s)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_uniform_values() {
        let mut h = new_histogram();
        for v in 1..=10_000u64 {
            h.record(v * 1000).unwrap(); // 1 µs .. 10 ms
        }
        let p = percentiles(&h);
        assert_eq!(p.count, 10_000);
        let close = |got: u64, want: u64| (got as f64 - want as f64).abs() / want as f64 <= 0.002;
        assert!(close(p.p50_ns, 5_000_000), "{p:?}");
        assert!(close(p.p90_ns, 9_000_000), "{p:?}");
        assert!(close(p.p99_ns, 9_900_000), "{p:?}");
        assert!(close(p.p999_ns, 9_990_000), "{p:?}");
        assert!(close(p.max_ns, 10_000_000), "{p:?}");
        assert_eq!(percentiles(&new_histogram()), Percentiles::default());
    }

    #[test]
    fn pairs_round_trip_and_merge() {
        let mut a = new_histogram();
        let mut b = new_histogram();
        for v in [10, 20, 20, 5_000_000] {
            a.record(v).unwrap();
        }
        b.record(7).unwrap();
        let mut merged = new_histogram();
        add_pairs(&mut merged, &histogram_to_pairs(&a));
        add_pairs(&mut merged, &histogram_to_pairs(&b));
        assert_eq!(merged.len(), 5);
        assert_eq!(merged.max(), a.max());
        // Out-of-range values from a confused peer are clamped, not a panic.
        add_pairs(&mut merged, &[(0, 1), (u64::MAX, 1)]);
        assert_eq!(merged.len(), 7);
    }

    #[test]
    fn loss_math() {
        let l = loss(100, 2000, 199_990);
        assert_eq!((l.expected, l.lost, l.extra), (200_000, 10, 0));
        assert!((l.lost_ratio - 0.00005).abs() < 1e-12);
        let l = loss(10, 3, 31);
        assert_eq!((l.lost, l.extra), (0, 1));
        assert_eq!(loss(0, 0, 0).lost_ratio, 0.0);
    }

    #[test]
    fn proc_parsing_and_cpu_per_delivery() {
        // Field 2 with spaces and a ')' inside, as a thread could name itself.
        let stat = "4242 (ring cast) x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 150 50 0 0 20 0 3 0 100 1000000 500";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(200));
        let status = "Name:\tringcast\nVmPeak:\t 9000 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_status_rss_kib(status), Some(12345));
        let before = ProcSample { cpu_ticks: 200, rss_kib: 10_000 };
        let after = ProcSample { cpu_ticks: 300, rss_kib: 30_000 };
        // 100 ticks at 100 Hz = 1 s = 1e6 µs over 2e6 deliveries.
        assert_eq!(cpu_us_per_delivery(before, after, 100, 2_000_000), Some(0.5));
        assert_eq!(cpu_us_per_delivery(before, after, 100, 0), None);
        assert_eq!(cpu_us_per_delivery(after, before, 100, 1), None, "a restarted server is not negative cost");
        assert_eq!(rss_bytes_per_connection(before, after, 20_480), Some(1000.0));
    }

    #[test]
    fn sampling_this_process_works() {
        let s = sample_process(std::process::id()).expect("own /proc entry");
        assert!(s.rss_kib > 0);
    }
}
