//! The only code that crosses threads: bounded lock-free mailboxes and the envelopes
//! that travel in them.
//!
//! Owns: [`Mailbox`] (a bounded MPSC queue with a wake-up on empty → non-empty) and the
//! message types shards and the bridge exchange. Must not touch: sockets, connection
//! state, engines. Runs on: every thread (producers anywhere, one consumer per mailbox).
//!
//! Shards run monoio and the bridge runs tokio; both accept a plain `Waker`, and monoio's
//! `sync` feature turns a cross-thread wake into a write to the ring's eventfd, so one
//! primitive serves both directions.

pub mod cluster;
mod mailbox;
pub mod poll;

pub use mailbox::{Full, Mailbox};

use bytes::Bytes;
use std::sync::Arc;

/// A published message, encoded once per node into a WebSocket frame. Every shard and
/// every subscriber's write shares the same `frame` buffer.
#[derive(Debug)]
pub struct Delivery {
    pub channel: Box<str>,
    pub frame: Bytes,
    /// Stream sequence on history channels (JetStream, or the embedded rings); a shard
    /// uses it to stitch a connection's replay to live messages without gap or duplicate.
    pub seq: Option<u64>,
    /// When the bridge received it from the broker, in µs since the node started: the
    /// shard observes receipt → socket write in `ringcast_fanout_latency_seconds`.
    pub received_us: u64,
    /// A connection of this node that must not get it (its id): the sender of a Pusher
    /// client event, or the `socket_id` an API publish excludes.
    pub exclude: Option<u64>,
}

/// This node's number in socket ids (`{node}.{connection id}`, Pusher's `socket_id`): a
/// hash of the node name, so socket ids of two nodes differ and an exclusion that crosses
/// NATS is applied only by the node holding the socket.
pub fn node_number(node: &str) -> u32 {
    // FNV-1a: stable across builds and processes (the number travels between nodes).
    let mut hash: u32 = 0x811c_9dc5;
    for b in node.bytes() {
        hash ^= b as u32;
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// The local connection id a socket id names, when it is one of this node's.
pub fn local_socket(socket_id: &str, node: &str) -> Option<u64> {
    let (number, conn) = socket_id.split_once('.')?;
    (number.parse::<u32>().ok()? == node_number(node)).then(|| conn.parse().ok()).flatten()
}

/// One connection on one shard: its slot, and its id so a reused slot is never mistaken
/// for the connection that asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnRef {
    pub slot: u32,
    pub conn: u64,
}

/// Why a resume (`sub` with `since`) could not be served; becomes the `err` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayError {
    pub code: u16,
    pub msg: String,
}

/// A `sub` whose `ok` waits until the node's interest in its pattern is live on the
/// broker's server (NATS: the SUB confirmed by a round trip), so whatever is published
/// after the client reads `ok`, on any node, reaches it.
#[derive(Debug)]
pub struct SubConfirm {
    pub target: ConnRef,
    /// The `sub`'s id, echoed on its `ok`/`err`.
    pub id: Option<u32>,
    /// The subscribed pattern: undone when the broker cannot confirm it (`undo`).
    pub pattern: Box<str>,
    /// The `sub` added the pattern (false: the connection already held it, and an
    /// unconfirmed repeat leaves it as it was).
    pub undo: bool,
}

/// Bridge → shard.
#[derive(Debug)]
pub enum ToShard {
    Deliver(Arc<Delivery>),
    /// Stop accepting and close every connection with 1001.
    Shutdown,
    /// Close every connection with 1012, spread over the drain window, then stop.
    Drain,
    /// History frames for one connection's resume, in sequence order (a chunk of them).
    Replay { target: ConnRef, replay: u32, frames: Vec<Bytes> },
    /// The resume of `channel` is complete: every message up to `Ok(upto)` was replayed,
    /// so live messages with `seq <= upto` are duplicates. `Err`: the resume failed and
    /// the subscription is undone.
    ReplayDone { target: ConnRef, replay: u32, outcome: Result<u64, ReplayError> },
    /// A long-poll request for a session this shard owns, from the shard that received it.
    Poll(Box<poll::PollForward>),
    /// The answer to [`ToBridge::ConfirmLive`]: `live` false when the broker did not confirm
    /// within `limits::SUB_CONFIRM_TIMEOUT` (the `sub` is answered 503 and undone).
    Confirmed { confirm: Box<SubConfirm>, live: bool },
    /// Count this shard's subscribers of the channels `query` covers (answered on `reply`
    /// at once, from the shard's subscription index).
    Count { query: Arc<cluster::CountQuery>, reply: cluster::CountsReply },
    /// Close the connections the transport says belong to the user (`Handlers::close_user`).
    CloseUser(Arc<cluster::CloseUser>),
}

/// Shard → bridge.
#[derive(Debug)]
pub enum ToBridge {
    /// The shard's first subscriber to `pattern` appeared (`add`) or its last left.
    Interest { shard: u16, pattern: Box<str>, add: bool },
    /// Answer `confirm` once every interest this shard sent before it is live on the
    /// broker's server (sent right after the `Interest` it depends on, so the bridge
    /// has seen that first: a mailbox keeps one producer's order).
    ConfirmLive { shard: u16, confirm: Box<SubConfirm> },
    /// Publish `data` (one JSON value, bytes kept verbatim) on a concrete channel.
    Publish { channel: Box<str>, data: Bytes },
    /// Publish a complete server frame (one JSON object such as a `join` or `notify`) on
    /// a concrete channel: subscribers receive `frame` verbatim, not wrapped in a `msg`.
    /// On NATS it travels with the `Ringcast-Frame: 1` header so every node does the same.
    /// `exclude`: a socket id (`{node}.{conn}`) that must not receive it (Pusher).
    PublishFrame { channel: Box<str>, frame: Bytes, exclude: Option<Box<str>> },
    /// Replay history of `channel` after `since` to one connection (it is already
    /// subscribed, so live messages queue behind the replay on its shard).
    /// `replay` is the shard's id for this resume, echoed on every answer.
    Replay { shard: u16, target: ConnRef, replay: u32, channel: Box<str>, since: u64 },
    /// A presence change (connect of an identified user, disconnect, join, leave). Never
    /// dropped by a shard for a full inbox: it parks and retries (bounded, counted).
    Presence(crate::presence::Change),
    /// Members of `channel` (`presence` op, `GET /api/presence/{channel}`), answered on
    /// `reply`; the shard waits a bounded time for it.
    PresenceQuery { channel: Arc<str>, reply: crate::presence::MembersReply },
    /// Persist a notification (`POST /api/notify`); the answer says once it is durable.
    /// `caller_nid`: the request named the `nid` (else the gateway made a fresh one, which
    /// no other request can repeat, so no cross-node check is needed).
    Notify { notification: Box<crate::lane::Notification>, caller_nid: bool, reply: tokio::sync::oneshot::Sender<Result<crate::lane::Accepted, String>> },
    /// A dead-letter queue operation (`GET /api/notifications/dead`).
    NotifyDead { op: crate::lane::DeadOp, reply: tokio::sync::oneshot::Sender<Result<crate::lane::DeadAnswer, String>> },
    /// A client acked notification `nid` (its user from the token).
    Ack { user: Box<str>, nid: Box<str> },
    /// Subscriber counts of the channels `query` covers on every node (this one alone
    /// with the embedded broker), within `nats_cluster_query_timeout`; Err when some node
    /// could not answer (see `bridge::cluster`).
    ClusterCount { query: cluster::CountQuery, reply: cluster::ClusterCountsReply },
    /// Close a user's connections on every node; answered once the order is handed on.
    ClusterCloseUser { close: cluster::CloseUser, reply: cluster::ClusterCloseReply },
    /// Stop the bridge loop (sent by main after every shard has exited).
    Stop,
}
