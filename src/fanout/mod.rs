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

mod mailbox;

pub use mailbox::{Full, Mailbox};

use bytes::Bytes;
use std::sync::Arc;

/// A published message, encoded once per node into a WebSocket frame. Every shard and
/// every subscriber's write shares the same `frame` buffer.
#[derive(Debug)]
pub struct Delivery {
    pub channel: Box<str>,
    pub frame: Bytes,
}

/// Bridge → shard.
#[derive(Debug)]
pub enum ToShard {
    Deliver(Arc<Delivery>),
    /// Stop accepting and close every connection with 1001.
    Shutdown,
}

/// Shard → bridge.
#[derive(Debug)]
pub enum ToBridge {
    /// The shard's first subscriber to `pattern` appeared (`add`) or its last left.
    Interest { shard: u16, pattern: Box<str>, add: bool },
    /// Publish `data` (one JSON value, bytes kept verbatim) on a concrete channel.
    Publish { channel: Box<str>, data: Bytes },
    /// Stop the bridge loop (sent by main after every shard has exited).
    Stop,
}
