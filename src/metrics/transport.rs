//! The long-poll transport's per-shard counters. Data only: the transport writes them,
//! the node holds them, the scrape renders them.
//!
//! Owns: `PollMetrics`. Must not touch: sockets. Runs on: shards (write),
//! the scrape (read).

use super::counter::Counter;

/// One shard's long-poll counters (written by that shard only).
#[repr(align(128))]
#[derive(Default)]
pub struct PollMetrics {
    /// Open sessions owned by this shard (also counted in `ringcast_shard_connections`).
    pub sessions: Counter,
    pub opened: Counter,
    /// Sessions nobody polled for `poll_timeout`.
    pub expired: Counter,
    pub gets: Counter,
    pub posts: Counter,
    /// Requests this shard forwarded to the owning shard.
    pub forwarded: Counter,
    /// Forwards refused because the owner's mailbox was full (answered 503).
    pub forward_refused: Counter,
    /// POSTs refused with 413 for carrying more frames than `transport::longpoll::frames_per_post_max`.
    pub posts_too_many_frames: Counter,
}

