//! The envelope of a long-poll request that reached a shard other than the one owning
//! its session (SO_REUSEPORT spreads HTTP requests over the shards): it travels to the
//! owner in that shard's mailbox and the answer comes back in a oneshot.

/// What the client asked of its session.
#[derive(Debug)]
pub enum PollOp {
    /// `GET /poll/{sid}?ack=n`: confirm frames below `ack`, wait for frames.
    Get { ack: u64 },
    /// `POST /poll/{sid}`: one client frame or a JSON array of them.
    Post { body: Vec<u8> },
}

/// The owner's answer: HTTP status and JSON body (the receiving shard adds the headers).
#[derive(Debug)]
pub struct PollAnswer {
    pub status: u16,
    pub body: Vec<u8>,
}

#[derive(Debug)]
pub struct PollForward {
    pub slot: u32,
    pub secret: u128,
    pub op: PollOp,
    pub reply: tokio::sync::oneshot::Sender<PollAnswer>,
}
