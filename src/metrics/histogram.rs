//! The fan-out latency histogram: from the moment the bridge receives a message from the
//! broker (stamped on the `Delivery`) to the shard's socket writes of the loop turn that
//! queued it. Fixed buckets, one block per shard written only by that shard (plain
//! relaxed stores, like every other counter), summed on scrape.
//!
//! Owns: [`LatencyHistogram`], [`HistogramSnapshot`] (quantiles, deltas, Prometheus
//! rendering) and [`PendingLatency`] (a shard's per-turn list of what to observe).
//! Must not touch: sockets. Runs on: written by its shard, read by whoever scrapes.

use super::counter::Counter;
use std::fmt::Write as _;

/// Bucket upper bounds in microseconds: 50 µs (an idle shard) up to 1 s (a shard that
/// fell far behind); Prometheus adds `+Inf`. Fixed, so every node's histograms can be
/// summed by `histogram_quantile` across a fleet.
pub const FANOUT_LATENCY_BUCKETS_US: [u64; 14] =
    [50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000];
const BUCKETS: usize = FANOUT_LATENCY_BUCKETS_US.len() + 1;

/// One shard's histogram: per-bucket counts (not cumulative) and the sum.
#[derive(Default)]
pub struct LatencyHistogram {
    buckets: [Counter; BUCKETS],
    sum_us: Counter,
}

impl LatencyHistogram {
    /// Records `copies` deliveries that each took `latency_us`.
    #[inline]
    pub fn observe(&self, latency_us: u64, copies: u64) {
        let bucket = FANOUT_LATENCY_BUCKETS_US.partition_point(|bound| *bound < latency_us);
        self.buckets[bucket].add(copies);
        self.sum_us.add(latency_us.saturating_mul(copies));
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut counts = [0u64; BUCKETS];
        for (count, bucket) in counts.iter_mut().zip(&self.buckets) {
            *count = bucket.get();
        }
        HistogramSnapshot { counts, sum_us: self.sum_us.get() }
    }
}

/// A copy of one or more histograms at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    pub counts: [u64; BUCKETS],
    pub sum_us: u64,
}

impl HistogramSnapshot {
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn add(&mut self, other: &HistogramSnapshot) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.sum_us += other.sum_us;
    }

    /// What was observed between `before` and `self` (counters never go back; a reset
    /// block counts as nothing rather than a negative number).
    pub fn since(&self, before: &HistogramSnapshot) -> HistogramSnapshot {
        let mut delta = HistogramSnapshot { sum_us: self.sum_us.saturating_sub(before.sum_us), ..Default::default() };
        for ((d, now), then) in delta.counts.iter_mut().zip(&self.counts).zip(&before.counts) {
            *d = now.saturating_sub(*then);
        }
        delta
    }

    /// The `q` quantile in microseconds, interpolated linearly inside its bucket as
    /// Prometheus' `histogram_quantile` does; the open top bucket answers its lower
    /// bound. None when nothing was observed.
    pub fn quantile_us(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut below = 0u64;
        for (i, count) in self.counts.iter().enumerate() {
            if *count > 0 && (below + count) as f64 >= rank {
                let lower = if i == 0 { 0 } else { FANOUT_LATENCY_BUCKETS_US[i - 1] } as f64;
                let Some(upper) = FANOUT_LATENCY_BUCKETS_US.get(i) else { return Some(lower) };
                let within = ((rank - below as f64) / *count as f64).clamp(0.0, 1.0);
                return Some(lower + (*upper as f64 - lower) * within);
            }
            below += count;
        }
        None
    }

    /// Prometheus lines `{name}_bucket`, `_sum` (seconds) and `_count` with `labels`
    /// (e.g. `shard="0"`) before `le`.
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, count) in self.counts.iter().enumerate() {
            cumulative += count;
            let le = match FANOUT_LATENCY_BUCKETS_US.get(i) {
                Some(us) => format!("{}", *us as f64 / 1e6),
                None => "+Inf".to_string(),
            };
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum_us as f64 / 1e6);
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
}

/// What one shard loop turn delivered: (broker receipt in µs since node start, copies),
/// observed once the turn's writes are done. A fixed array on the stack: no allocation
/// per turn, and a turn never takes more than `N` inbox messages.
pub struct PendingLatency<const N: usize> {
    items: [(u64, u32); N],
    len: usize,
}

impl<const N: usize> PendingLatency<N> {
    pub fn new() -> Self {
        PendingLatency { items: [(0, 0); N], len: 0 }
    }

    #[inline]
    pub fn push(&mut self, received_us: u64, copies: u32) {
        if copies > 0 && self.len < N {
            self.items[self.len] = (received_us, copies);
            self.len += 1;
        }
    }

    /// Observes everything pushed this turn as written at `now_us`.
    pub fn observe(&mut self, histogram: &LatencyHistogram, now_us: u64) {
        for (received_us, copies) in &self.items[..self.len] {
            histogram.observe(now_us.saturating_sub(*received_us), *copies as u64);
        }
        self.len = 0;
    }
}

impl<const N: usize> Default for PendingLatency<N> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_their_bucket_and_render_cumulatively() {
        let h = LatencyHistogram::default();
        h.observe(40, 1); // ≤ 50 µs
        h.observe(50, 1); // le is inclusive
        h.observe(700, 3); // ≤ 1 ms
        h.observe(5_000_000, 1); // +Inf
        let snap = h.snapshot();
        assert_eq!(snap.count(), 6);
        assert_eq!(snap.counts[0], 2);
        assert_eq!(snap.counts[4], 3);
        assert_eq!(snap.counts[BUCKETS - 1], 1);
        assert_eq!(snap.sum_us, 40 + 50 + 2100 + 5_000_000);
        let mut out = String::new();
        snap.render(&mut out, "x", "shard=\"0\"");
        assert!(out.contains("x_bucket{shard=\"0\",le=\"0.00005\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{shard=\"0\",le=\"0.001\"} 5\n"), "{out}");
        assert!(out.contains("x_bucket{shard=\"0\",le=\"1\"} 5\n"), "{out}");
        assert!(out.contains("x_bucket{shard=\"0\",le=\"+Inf\"} 6\n"), "{out}");
        assert!(out.contains("x_count{shard=\"0\"} 6\n"), "{out}");
        assert!(out.contains("x_sum{shard=\"0\"} 5.00219\n"), "{out}");
    }

    #[test]
    fn quantiles_interpolate_like_prometheus() {
        let h = LatencyHistogram::default();
        assert_eq!(h.snapshot().quantile_us(0.99), None);
        // 100 observations between 500 µs and 1 ms: p99 is near the top of that bucket.
        h.observe(800, 100);
        let p99 = h.snapshot().quantile_us(0.99).unwrap();
        assert!((p99 - 995.0).abs() < 0.01, "{p99}");
        // A slow tail moves p99 into the tail's bucket.
        h.observe(200_000, 5);
        let p99 = h.snapshot().quantile_us(0.99).unwrap();
        assert!(p99 > 100_000.0 && p99 <= 250_000.0, "{p99}");
    }

    #[test]
    fn deltas_cover_only_the_interval() {
        let h = LatencyHistogram::default();
        h.observe(20_000, 10);
        let before = h.snapshot();
        h.observe(80, 10);
        let delta = h.snapshot().since(&before);
        assert_eq!(delta.count(), 10);
        assert!(delta.quantile_us(0.99).unwrap() <= 100.0);
        assert_eq!(before.since(&h.snapshot()).count(), 0, "never negative");
    }

    #[test]
    fn pending_observes_each_delivery_with_its_copies() {
        let h = LatencyHistogram::default();
        let mut pending = PendingLatency::<4>::new();
        pending.push(1_000, 3);
        pending.push(1_500, 0); // no local subscriber: nothing to observe
        pending.push(1_900, 1);
        pending.observe(&h, 2_000);
        let snap = h.snapshot();
        assert_eq!(snap.count(), 4);
        assert_eq!(snap.sum_us, 3 * 1_000 + 100);
        pending.observe(&h, 3_000);
        assert_eq!(h.snapshot().count(), 4, "observed once");
    }
}
