//! The Lane: durable notifications (`POST /api/notify`), delivered at least once by a
//! worker that retries with backoff and dead-letters what cannot be delivered.
//!
//! Owns: the notification record, the two queue backends behind one enum ([`Lane`]:
//! embedded redb file | RabbitMQ), the retry schedule ([`backoff`]), the delivery
//! [`worker`], the dead-letter queue ([`dlq`]) and the push fallback ([`webhook`]). Must
//! not touch: sockets of clients or shards (frames go out through the bridge or NATS).
//! Runs on: the bridge thread of a gateway (tokio current-thread + LocalSet), or the
//! `ringcast worker` process's own runtime; the embedded store has a thread of its own
//! because redb's commits block on fsync.

pub mod embedded;
pub mod inbox;
pub mod metrics;
pub mod nids;
pub mod rabbitmq;
pub mod webhook;
pub mod worker;

pub use crate::clock::now_ms;
pub use crate::config::lane::LaneConfig;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::time::Duration;

/// How long an HTTP request waits for the Lane to persist a notification (or list the dead
/// ones) before answering 503: longer than a healthy fsync or publisher confirm by orders
/// of magnitude, short enough that a backend's caller can retry elsewhere.
pub const LANE_REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest `nid` a caller may choose (it is a map key and a header value).
pub const NID_BYTES_MAX: usize = 128;
/// Entries one dead-letter listing returns at most (HTTP and `ringcast dlq list`).
pub const DEAD_LIST_MAX: usize = 1000;

/// One accepted notification, as both backends store it (JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Notification {
    pub nid: String,
    pub user: String,
    pub data: Box<RawValue>,
    /// Accepted at, unix milliseconds (the `ts` of the `notify` frame).
    pub ts: u64,
    /// Give up (dead-letter) after this, unix milliseconds.
    pub expires: u64,
    /// Failed delivery tries so far: online tries (the frame went out to a subscriber of
    /// `user.{id}`, or could have) that got no ack within `ack_timeout`.
    #[serde(default)]
    pub attempts: u32,
    /// Times it was parked because its user was offline (not attempts: time offline costs
    /// none). Non-zero also tells the worker a copy may sit in the fast path's inbox.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub parked: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Notification {
    /// The `notify` frame's JSON: `{"op":"notify","nid":..,"data":..,"ts":..}`.
    pub fn frame_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.data.get().len() + self.nid.len() + 48);
        out.extend_from_slice(b"{\"op\":\"notify\",\"nid\":");
        out.extend_from_slice(serde_json::to_string(&self.nid).expect("a string serializes").as_bytes());
        out.extend_from_slice(b",\"data\":");
        out.extend_from_slice(self.data.get().as_bytes());
        out.extend_from_slice(format!(",\"ts\":{}}}", self.ts).as_bytes());
        out
    }

    pub fn channel(&self) -> String {
        format!("user.{}", self.user)
    }
}

/// A notification in the dead-letter queue and why it is there. (Nested, not
/// `serde(flatten)`: a flattened `RawValue` cannot be read back.)
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadRecord {
    pub notification: Notification,
    pub reason: String,
}

/// What the worker decided about one try.
#[derive(Debug)]
pub enum Outcome {
    /// Acked by the client (or found acked already): remove it.
    Delivered,
    /// Not acked: schedule another try after `delay` (attempts already counted in it).
    Retry { notification: Notification, delay: Duration },
    /// The user is offline: keep it, no attempt counted, until the user comes back (the
    /// online fast path) or `delay` passes (at most `lane_park_max` and never past its
    /// `expires`), when the worker looks at it again.
    Park { notification: Notification, delay: Duration },
    /// Attempts or TTL exhausted: move it to the dead-letter queue.
    Dead { record: DeadRecord },
}

/// The answer to an accepted `POST /api/notify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    New,
    /// The `nid` was accepted before (within its TTL): nothing was enqueued again.
    Duplicate,
    /// Another request (on any node sharing `--redis`) is persisting this `nid` right now:
    /// answered 409, resend after Retry-After.
    InProgress,
}

/// Dead-letter operations (HTTP list, `ringcast dlq`).
#[derive(Debug)]
pub enum DeadOp {
    List { limit: usize },
    /// Move back to the work queue with a fresh attempt count and TTL (`nid` None = all).
    Replay { nid: Option<String> },
    Purge,
}

#[derive(Debug)]
pub enum DeadAnswer {
    List(Vec<DeadRecord>),
    Count(u64),
}

/// The gateway side of the Lane: where `/api/notify` puts notifications.
pub enum Lane {
    Embedded(embedded::EmbeddedLane),
    Rabbit(rabbitmq::RabbitLane),
}

impl Lane {
    /// The configured queue for an administrative command (`ringcast dlq`): RabbitMQ
    /// when `amqp` is set (waiting up to `connect_timeout` for it), else the embedded
    /// store file, which a running gateway holds (the error says so).
    pub async fn open_admin(config: &LaneConfig, connect_timeout: Duration) -> Result<Lane, String> {
        match &config.amqp {
            None => Ok(Lane::Embedded(embedded::EmbeddedLane::open(&config.dir).map_err(|e| {
                format!("{e}. A running gateway holds the embedded queue: stop it, or use GET /api/notifications/dead")
            })?)),
            Some(url) => {
                let lane = rabbitmq::RabbitLane::start(url, &config.prefix, &config.backoff, Default::default(), None, Default::default());
                let deadline = std::time::Instant::now() + connect_timeout;
                while !lane.connected.get() {
                    if std::time::Instant::now() > deadline {
                        return Err(format!("RabbitMQ did not answer within {connect_timeout:?}"));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(Lane::Rabbit(lane))
            }
        }
    }

    pub async fn enqueue(&self, notification: Notification) -> Result<Accepted, String> {
        match self {
            Lane::Embedded(lane) => lane.enqueue(notification).await,
            Lane::Rabbit(lane) => lane.enqueue(notification).await,
        }
    }

    /// As [`Lane::enqueue`]; `caller_nid` false (a nid the gateway made) skips the
    /// cross-node idempotency check, which such a nid cannot need.
    pub async fn enqueue_from(&self, notification: Notification, caller_nid: bool) -> Result<Accepted, String> {
        match self {
            Lane::Embedded(lane) => lane.enqueue(notification).await,
            Lane::Rabbit(lane) => lane.enqueue_checked(notification, caller_nid).await,
        }
    }

    pub async fn dead(&self, op: DeadOp) -> Result<DeadAnswer, String> {
        match self {
            Lane::Embedded(lane) => lane.dead(op).await,
            Lane::Rabbit(lane) => lane.dead(op).await,
        }
    }
}

/// A fresh notification id: 16 hex digits of time and 16 of randomness.
pub fn new_nid() -> String {
    format!("{:016x}{:016x}", now_ms(), fastrand::u64(..))
}

/// A caller's `nid`: 1..=128 bytes of `[A-Za-z0-9_.:-]`.
pub fn validate_nid(nid: &str) -> Result<(), String> {
    if nid.is_empty() || nid.len() > NID_BYTES_MAX {
        return Err(format!("nid must be 1 to {NID_BYTES_MAX} bytes"));
    }
    if !nid.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':')) {
        return Err("nid may contain only letters, digits, _ - . and :".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_frame_is_one_json_object() {
        let n = Notification {
            nid: "n\"1".into(),
            user: "alice".into(),
            data: RawValue::from_string("{\"a\":[1,2]}".into()).unwrap(),
            ts: 42,
            expires: 100,
            attempts: 0,
            parked: 0,
        };
        let v: serde_json::Value = serde_json::from_slice(&n.frame_json()).unwrap();
        assert_eq!(v, serde_json::json!({"op":"notify","nid":"n\"1","data":{"a":[1,2]},"ts":42}));
        assert_eq!(n.channel(), "user.alice");
        let round: Notification = serde_json::from_slice(&serde_json::to_vec(&n).unwrap()).unwrap();
        assert_eq!(round.data.get(), "{\"a\":[1,2]}");
    }

    #[test]
    fn nids() {
        assert!(validate_nid("order-17:paid.v2").is_ok());
        assert!(validate_nid("").is_err());
        assert!(validate_nid("a b").is_err());
        assert!(validate_nid(&"x".repeat(129)).is_err());
        assert_eq!(new_nid().len(), 32);
        assert_ne!(new_nid(), new_nid());
    }
}
