//! What a connection is answered, in no wire's format: the session core produces these,
//! the shard produces them for answers that complete later (a resume), and the
//! connection's wire adapter encodes them (`Handlers::answer`).
//!
//! Owns: `Reply`. Must not touch: anything (data only).

use std::sync::Arc;

/// One answer to a client operation, for the wire adapter to encode.
pub enum Reply<'a> {
    Ok { id: Option<u32> },
    /// A `sub` of `ch` is live (protocol v1 says `ok`; Pusher names the channel).
    Subscribed { id: Option<u32>, ch: &'a str },
    /// `ok` carrying a channel's members (the `presence` op).
    Members { id: Option<u32>, members: &'a [Arc<str>] },
    Pong { id: Option<u32> },
    Err { id: Option<u32>, code: u16, msg: &'a str },
}

