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


/// One Pusher app's counters on one shard (written by that shard only; the scrape sums
/// the shards per app).
#[derive(Default)]
pub struct PusherAppMetrics {
    /// Open Pusher connections of the app (a gauge kept as a counter: +1 / -1).
    pub connections: Counter,
    pub subscriptions: Counter,
    /// Channel auth refused (`pusher:subscription_error`, bad sign-in).
    pub auth_failures: Counter,
    /// Events accepted by the HTTP API (`events`, `batch_events`), one per channel.
    pub api_events: Counter,
    /// HTTP API calls refused (bad signature 401, bad body 400, too big 413, ...).
    pub api_refused: Counter,
    /// Client events (`client-*`) relayed.
    pub client_events: Counter,
    /// Client events refused (disabled, not subscribed, too big) or over the rate (4301).
    pub client_events_refused: Counter,
    /// `pusher:error` frames sent for malformed or unknown client frames.
    pub bad_frames: Counter,
    /// Member lists fetched from the presence store to start a shard's list of a
    /// presence channel (one per channel per shard, not per subscriber).
    pub presence_queries: Counter,
    /// Presence subscriptions refused: bad `channel_data`, over
    /// `pusher_max_presence_members`, or the presence store unavailable.
    pub presence_refused: Counter,
    /// `pusher_internal:member_added` / `member_removed` frames queued to subscribers.
    pub member_events: Counter,
    /// Users added to or removed from a shard's member list by a periodic check against
    /// the store (a missed frame, or a node that died without sending its leaves).
    pub presence_corrections: Counter,
    /// Presence member lists this shard keeps (one per presence channel with a local
    /// subscriber; each holds at most twice `pusher_max_presence_members` users). A gauge
    /// kept as a counter: +1 / -1.
    pub presence_lists: Counter,
    /// Connections refused with 4004: the app's `max_connections` on this node was reached.
    pub over_quota: Counter,
    /// Channel queries answered by the HTTP API (`GET /channels`, `/channels/{c}`,
    /// `/channels/{c}/users`); refusals and 503s count in `api_refused`.
    pub api_queries: Counter,
    /// `terminate_connections` calls accepted (the order went to every node).
    pub api_terminations: Counter,
    /// Connections closed on this shard by a `terminate_connections` order (any node's).
    pub terminated: Counter,
}
