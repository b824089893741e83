//! Retry delays, in one place: the notification retry schedule (exponential backoff with
//! full jitter, rounded up to a fixed set of delay buckets) and [`Reconnect`], the delay
//! between attempts to reach an engine again (NATS, Redis, RabbitMQ). Pure functions (the
//! random draw is passed in) plus one small stateful helper; used on any thread.
//!
//! Why buckets: RabbitMQ expires messages only at the head of a queue, so one retry queue
//! with per-message TTLs would hold a short delay behind a long one. Each bucket is its own
//! queue with one `x-message-ttl`, and a chosen delay is rounded UP to the nearest bucket,
//! so a retry never comes earlier than full jitter asked for and at most one bucket step
//! (`BUCKET_STEPS_PER_DOUBLING`, ~19%) later. The embedded store uses the same rounding so
//! both backends schedule alike.
//!
//! Attempt `k` (1-based) that fails waits `round_up(uniform(0, min(retry_max, base·2^(k-1))))`.

use std::time::Duration;

/// Buckets per doubling of the delay: 4 gives steps of 2^(1/4) ≈ 1.19, so rounding up
/// adds at most 19% to a jittered delay while a 100 ms..5 min range needs ~47 queues.
pub const BUCKET_STEPS_PER_DOUBLING: u32 = 4;
/// Upper bound on retry queues (and so on `retry_max / retry_base`): 64 buckets cover a
/// ratio of 2^16 (e.g. 100 ms → 109 min) and keep the RabbitMQ topology small.
pub const BUCKETS_MAX: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
    /// Ascending delays in milliseconds; the first is `base / 4` (so a jitter draw near
    /// zero still waits a little), the last is `max`.
    buckets: Vec<u64>,
}

impl Backoff {
    /// `base` > 0, `max` ≥ `base`; the caller (config) validates and names the keys.
    pub fn new(base: Duration, max: Duration) -> Result<Backoff, String> {
        let base_ms = base.as_millis() as u64;
        let max_ms = max.as_millis() as u64;
        if base_ms == 0 {
            return Err("retry_base must be at least 1ms".into());
        }
        if max_ms < base_ms {
            return Err(format!("retry_max ({max:?}) must be at least retry_base ({base:?})"));
        }
        let mut buckets = Vec::new();
        let first = (base_ms / 4).max(1);
        let mut step = 0u32;
        loop {
            let ms = (first as f64 * 2f64.powf(step as f64 / BUCKET_STEPS_PER_DOUBLING as f64)).round() as u64;
            if ms >= max_ms {
                break;
            }
            if buckets.last() != Some(&ms) {
                buckets.push(ms);
            }
            step += 1;
        }
        buckets.push(max_ms);
        if buckets.len() > BUCKETS_MAX {
            return Err(format!(
                "retry_max / retry_base is too large ({} delay buckets, at most {BUCKETS_MAX}); raise retry_base or lower retry_max",
                buckets.len()
            ));
        }
        Ok(Backoff { base, max, buckets })
    }

    /// Every delay a retry can get, ascending (one RabbitMQ retry queue each).
    pub fn buckets(&self) -> &[u64] {
        &self.buckets
    }

    /// The jitter ceiling after failed attempt `attempt` (1-based): `min(max, base·2^(attempt-1))`.
    pub fn cap(&self, attempt: u32) -> Duration {
        let shift = attempt.saturating_sub(1).min(40);
        let ms = (self.base.as_millis() as u64).saturating_mul(1u64 << shift);
        Duration::from_millis(ms.min(self.max.as_millis() as u64))
    }

    /// The delay after failed attempt `attempt`, from a uniform draw `unit` in [0, 1):
    /// full jitter under the cap, rounded up to a bucket.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let cap = self.cap(attempt).as_millis() as f64;
        let jittered = (cap * unit.clamp(0.0, 1.0)).ceil() as u64;
        Duration::from_millis(self.round_up(jittered))
    }

    /// The smallest bucket ≥ `ms` (the largest bucket for anything above it).
    pub fn round_up(&self, ms: u64) -> u64 {
        let i = self.buckets.partition_point(|b| *b < ms);
        self.buckets[i.min(self.buckets.len() - 1)]
    }

    /// The longest a retry after `attempt` can wait: the cap rounded up to its bucket.
    pub fn delay_max(&self, attempt: u32) -> Duration {
        Duration::from_millis(self.round_up(self.cap(attempt).as_millis() as u64))
    }

    /// The shortest wait any retry gets (the first bucket).
    pub fn delay_min(&self) -> Duration {
        Duration::from_millis(self.buckets[0])
    }
}

/// Full jitter under a doubling cap: attempt `n` (0-based) waits uniformly between 0 and
/// `min(cap, base·2^n)`, so a fleet that lost its engine together does not come back in
/// step. `random` is any uniformly drawn number.
pub fn reconnect_delay(attempts: usize, base: Duration, cap: Duration, random: u64) -> Duration {
    let base_ms = base.as_millis() as u64;
    let ceiling = base_ms.saturating_mul(1u64 << attempts.min(20)).min(cap.as_millis() as u64);
    Duration::from_millis(random % (ceiling + 1))
}

/// The delays of one link's reconnect loop: [`reconnect_delay`] with a fresh random draw,
/// starting over after a success.
#[derive(Debug, Clone)]
pub struct Reconnect {
    base: Duration,
    cap: Duration,
    attempts: usize,
}

impl Reconnect {
    pub const fn new(base: Duration, cap: Duration) -> Reconnect {
        Reconnect { base, cap, attempts: 0 }
    }

    /// How long to wait before the next attempt; each call counts one failed attempt.
    pub fn next_delay(&mut self) -> Duration {
        let delay = reconnect_delay(self.attempts, self.base, self.cap, fastrand::u64(..));
        self.attempts = self.attempts.saturating_add(1);
        delay
    }

    /// The link is up again: the next failure starts from `base`.
    pub fn reset(&mut self) {
        self.attempts = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn caps_double_up_to_the_max() {
        let b = Backoff::new(ms(100), ms(1000)).unwrap();
        assert_eq!(b.cap(1), ms(100));
        assert_eq!(b.cap(2), ms(200));
        assert_eq!(b.cap(4), ms(800));
        assert_eq!(b.cap(5), ms(1000));
        assert_eq!(b.cap(1000), ms(1000), "no overflow on huge attempt numbers");
    }

    #[test]
    fn buckets_are_ascending_and_end_at_the_max() {
        let b = Backoff::new(ms(100), ms(300_000)).unwrap();
        assert!(b.buckets().windows(2).all(|w| w[0] < w[1]));
        assert_eq!(b.buckets()[0], 25);
        assert_eq!(*b.buckets().last().unwrap(), 300_000);
        for w in b.buckets().windows(2) {
            assert!(w[1] as f64 <= w[0] as f64 * 1.2 + 1.0, "step {w:?} too coarse");
        }
        assert!(Backoff::new(ms(1), ms(86_400_000)).unwrap_err().contains("too large"));
        assert!(Backoff::new(ms(0), ms(10)).is_err());
        assert!(Backoff::new(ms(10), ms(5)).is_err());
    }

    #[test]
    fn delay_is_rounded_up_within_the_jitter_bounds() {
        let b = Backoff::new(ms(100), ms(5000)).unwrap();
        for attempt in 1..10 {
            for i in 0..100 {
                let unit = i as f64 / 100.0;
                let d = b.delay(attempt, unit);
                let wanted = (b.cap(attempt).as_millis() as f64 * unit).ceil() as u64;
                assert!(d.as_millis() as u64 >= wanted.min(5000), "never earlier than the draw");
                assert!(d <= b.delay_max(attempt));
                assert!(d >= b.delay_min());
                assert!(b.buckets().contains(&(d.as_millis() as u64)));
            }
        }
        assert!(b.delay_max(1) <= ms(120), "the cap's own bucket is at most ~19% above it");
    }

    #[test]
    fn reconnect_delay_is_full_jitter_under_a_doubling_cap() {
        let (base, cap) = (Duration::from_millis(100), Duration::from_millis(5_000));
        assert_eq!(reconnect_delay(0, base, cap, 0), Duration::ZERO);
        for attempts in 0..30 {
            let ceiling = (100u64 << attempts.min(20)).min(5_000);
            for random in [0, 1, 99, 12_345, u64::MAX] {
                assert!(reconnect_delay(attempts, base, cap, random) <= Duration::from_millis(ceiling));
            }
            assert_eq!(reconnect_delay(attempts, base, cap, ceiling), Duration::from_millis(ceiling));
        }
        let mut link = Reconnect::new(base, cap);
        for _ in 0..10 {
            assert!(link.next_delay() <= cap);
        }
        link.reset();
        assert!(link.next_delay() <= base);
    }
}
