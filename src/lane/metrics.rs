//! The Lane's counters (`ringcast_lane_*`): written by the bridge thread, the worker and
//! the shards that serve `/api/notify` (so plain atomic adds, not the single-writer
//! counters of `crate::metrics`), rendered into the gateway's `/metrics` and by
//! `ringcast worker --metrics-addr`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[derive(Default, Debug)]
pub struct LaneMetrics {
    /// Notifications persisted and answered 202 (duplicates not counted).
    pub accepted: AtomicU64,
    /// `nid`s answered 202 without enqueueing again.
    pub duplicates: AtomicU64,
    /// Requests refused for bad input (400/413).
    pub rejected: AtomicU64,
    /// Requests answered 503 (Lane unreachable, queue full, timeout).
    pub unavailable: AtomicU64,
    /// Notifications acked by their user.
    pub delivered: AtomicU64,
    /// Online tries that ended without an ack and were scheduled again (an attempt each).
    pub retried: AtomicU64,
    /// Times a notification was parked because its user was offline (each re-park after
    /// `lane_park_max` too); no attempt is counted for them.
    pub parked_total: AtomicU64,
    /// Notifications parked for an offline user right now (gauge: the embedded store's
    /// count, or RabbitMQ's count of the park queues).
    pub parked: AtomicU64,
    /// Notifications moved to the dead-letter queue.
    pub dead_lettered: AtomicU64,
    /// `notify` frames sent (first tries, retries and fast-path re-sends).
    pub frames_sent: AtomicU64,
    /// Client acks received.
    pub acks: AtomicU64,
    /// Deliveries waiting for an ack right now (gauge).
    pub in_flight: AtomicU64,
    /// Notifications not yet delivered, dead or expired (gauge; embedded store, or the
    /// worker's own view with RabbitMQ).
    pub pending: AtomicU64,
    /// Accepted-at time of the oldest pending notification, unix ms (0 = none).
    pub oldest_pending_ms: AtomicU64,
    /// Webhook POSTs answered 2xx, and those that failed (each try).
    pub webhook_sent: AtomicU64,
    pub webhook_failed: AtomicU64,
    /// Fast-path re-sends dropped because the worker's inbox was full.
    pub inbox_full: AtomicU64,
    /// 409s: the `nid` was being persisted by another request (any node).
    pub in_progress: AtomicU64,
    /// Accepted while Redis was unreachable, so with node-local `nid` idempotency only.
    pub dedupe_unshared: AtomicU64,
    /// RabbitMQ work-queue messages the gateway published (confirmed): accepted divided by
    /// this is the notifications per envelope.
    pub work_messages: AtomicU64,
    /// This node was configured with RabbitMQ (`--amqp`): readiness reports its link.
    pub amqp_configured: AtomicBool,
    /// The RabbitMQ link (the gateway's publishing connection) is up.
    pub amqp_up: AtomicBool,
}

impl LaneMetrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Configured with RabbitMQ and its link is down (readiness: degraded).
    pub fn amqp_down(&self) -> bool {
        self.amqp_configured.load(Ordering::Relaxed) && !self.amqp_up.load(Ordering::Relaxed)
    }

    pub fn render_into(&self, out: &mut String, now_ms: u64) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let counters: [(&str, &str, &AtomicU64); 15] = [
            ("accepted", "Notifications persisted and answered 202.", &self.accepted),
            ("duplicates", "Notifications whose nid was already accepted (202, not enqueued again).", &self.duplicates),
            ("rejected", "POST /api/notify refused for bad input (400/413).", &self.rejected),
            ("unavailable", "POST /api/notify answered 503 (Lane unreachable or full).", &self.unavailable),
            ("delivered", "Notifications acked by their user.", &self.delivered),
            ("retried", "Online tries without an ack, scheduled again with backoff (attempts).", &self.retried),
            ("parked", "Notifications parked because their user was offline (no attempt counted; re-parks too).", &self.parked_total),
            ("dead_lettered", "Notifications moved to the dead-letter queue.", &self.dead_lettered),
            ("frames_sent", "notify frames sent to users.", &self.frames_sent),
            ("acks", "ack ops received from clients.", &self.acks),
            ("webhook_sent", "Webhook POSTs answered 2xx.", &self.webhook_sent),
            ("webhook_failed", "Webhook POSTs that failed (each try).", &self.webhook_failed),
            ("in_progress", "POST /api/notify answered 409: another request was persisting the same nid.", &self.in_progress),
            ("dedupe_unshared", "Notifications accepted while Redis was unreachable (nid idempotency node-local only).", &self.dedupe_unshared),
            ("work_messages", "RabbitMQ work messages published (an envelope carries up to lane_envelope notifications).", &self.work_messages),
        ];
        for (name, help, counter) in counters {
            crate::metrics::prometheus::single(out, &format!("ringcast_lane_{name}_total"), "counter", help, get(counter));
        }
        let oldest = get(&self.oldest_pending_ms);
        let age = if oldest == 0 { 0.0 } else { now_ms.saturating_sub(oldest) as f64 / 1000.0 };
        let gauges: [(&str, &str, String); 5] = [
            ("in_flight", "Deliveries waiting for a client ack.", get(&self.in_flight).to_string()),
            ("pending", "Notifications accepted and not yet delivered or dead.", get(&self.pending).to_string()),
            ("waiting_offline", "Notifications parked for an offline user right now.", get(&self.parked).to_string()),
            ("oldest_pending_age_seconds", "Age of the oldest pending notification.", format!("{age:.3}")),
            ("inbox_full_total", "Fast-path re-sends skipped because the worker's inbox was full.", get(&self.inbox_full).to_string()),
        ];
        for (name, help, value) in gauges {
            let kind = if name.ends_with("_total") { "counter" } else { "gauge" };
            crate::metrics::prometheus::single(out, &format!("ringcast_lane_{name}"), kind, help, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family() {
        let m = LaneMetrics::default();
        LaneMetrics::inc(&m.accepted);
        m.oldest_pending_ms.store(1000, Ordering::Relaxed);
        let mut out = String::new();
        m.render_into(&mut out, 3500);
        assert!(out.contains("ringcast_lane_accepted_total 1\n"));
        assert!(out.contains("ringcast_lane_oldest_pending_age_seconds 2.500\n"));
        assert!(out.contains("# TYPE ringcast_lane_in_flight gauge"));
    }
}
