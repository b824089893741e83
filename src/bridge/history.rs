//! History for the embedded broker: an in-memory ring per history-enabled channel, so
//! `sub … since` behaves the same without NATS as with JetStream.
//!
//! Owns: the rings, the node-wide sequence, and the rule that decides whether a resume
//! is gap-free or must answer 409. Must not touch: sockets, shards, clocks (callers pass
//! `now_ms`). Runs on: the bridge thread.
//!
//! Sequences: one counter for the whole node (like a JetStream stream sequence), starting
//! at the process's start time in microseconds, so numbers from an earlier process are
//! always lower than this one's. A resume from before this process started is then
//! recognised as "history lost" (409) instead of silently replaying nothing.
//!
//! Bounds: `messages_per_channel` per ring, `age` per message, `channels_max` rings (the
//! least recently published ring is dropped whole past it).

use crate::config::HistoryConfig;
use crate::fanout::ReplayError;
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap, VecDeque};

struct Ring {
    /// (seq, published at ms, data), oldest first.
    messages: VecDeque<(u64, u64, Bytes)>,
    /// Every message of this channel with a sequence ≤ this may be gone.
    evicted_upto: u64,
    /// Key of this ring in `by_recency`.
    last_seq: u64,
}

pub struct HistoryRings {
    config: HistoryConfig,
    rings: HashMap<Box<str>, Ring>,
    /// last published seq → channel: the oldest entry is the ring to drop when full.
    by_recency: BTreeMap<u64, Box<str>>,
    /// The sequence the next message gets.
    next_seq: u64,
    /// Highest sequence that may have been lost outside any live ring: messages from before
    /// this process started, and rings dropped whole.
    lost_floor: u64,
}

/// What a resume gets: the frames' (seq, data), oldest first, and the sequence up to
/// which the node's history is now covered.
#[derive(Debug)]
pub struct Replayed {
    pub messages: Vec<(u64, Bytes)>,
    pub upto: u64,
}

impl HistoryRings {
    pub fn new(config: HistoryConfig, start_unix_us: u64) -> HistoryRings {
        let first = start_unix_us.max(1);
        HistoryRings { config, rings: HashMap::new(), by_recency: BTreeMap::new(), next_seq: first, lost_floor: first - 1 }
    }

    pub fn is_history_channel(&self, channel: &str) -> bool {
        self.config.patterns.iter().any(|p| crate::channel::matches(p, channel))
    }

    pub fn channels(&self) -> usize {
        self.rings.len()
    }

    /// The last sequence handed out (the floor before this process's first message).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Keeps `data` in `channel`'s ring; returns its sequence.
    pub fn append(&mut self, channel: &str, data: Bytes, now_ms: u64) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        if !self.rings.contains_key(channel) {
            if self.rings.len() >= self.config.channels_max {
                self.drop_least_recent();
            }
            let ring = Ring { messages: VecDeque::new(), evicted_upto: self.lost_floor, last_seq: 0 };
            self.rings.insert(channel.into(), ring);
        }
        let ring = self.rings.get_mut(channel).expect("inserted above");
        if ring.last_seq != 0 {
            self.by_recency.remove(&ring.last_seq);
        }
        ring.last_seq = seq;
        self.by_recency.insert(seq, channel.into());
        ring.messages.push_back((seq, now_ms, data));
        while ring.messages.len() > self.config.messages_per_channel {
            let (old, _, _) = ring.messages.pop_front().expect("over the bound, so not empty");
            ring.evicted_upto = old;
        }
        Self::expire(ring, now_ms, self.config.age.as_millis() as u64);
        seq
    }

    fn drop_least_recent(&mut self) {
        let Some((seq, channel)) = self.by_recency.pop_first() else { return };
        self.rings.remove(&channel);
        self.lost_floor = self.lost_floor.max(seq);
    }

    fn expire(ring: &mut Ring, now_ms: u64, age_ms: u64) {
        while let Some(&(seq, at, _)) = ring.messages.front() {
            if now_ms.saturating_sub(at) <= age_ms {
                break;
            }
            ring.messages.pop_front();
            ring.evicted_upto = seq;
        }
    }

    /// Messages of `channel` after `since`, or why not: 409 when some message after
    /// `since` is no longer kept (the client must resync), or when more than
    /// `replay_messages_max` would be replayed. `since == 0` means "everything kept".
    pub fn replay(&mut self, channel: &str, since: u64, now_ms: u64) -> Result<Replayed, ReplayError> {
        let upto = self.last_seq();
        let age_ms = self.config.age.as_millis() as u64;
        let evicted_upto = match self.rings.get_mut(channel) {
            Some(ring) => {
                Self::expire(ring, now_ms, age_ms);
                ring.evicted_upto
            }
            None => self.lost_floor,
        };
        if since != 0 && since < evicted_upto {
            return Err(gone(channel, since));
        }
        let Some(ring) = self.rings.get(channel) else { return Ok(Replayed { messages: Vec::new(), upto }) };
        let start = ring.messages.partition_point(|(seq, _, _)| *seq <= since);
        let count = ring.messages.len() - start;
        if count > self.config.replay_messages_max {
            return Err(too_many(count, self.config.replay_messages_max));
        }
        let messages = ring.messages.range(start..).map(|(seq, _, data)| (*seq, data.clone())).collect();
        Ok(Replayed { messages, upto })
    }
}

pub fn gone(channel: &str, since: u64) -> ReplayError {
    ReplayError {
        code: 409,
        msg: format!("history of {channel} after seq {since} is no longer kept; resync and subscribe again without since"),
    }
}

pub fn too_many(count: usize, max: usize) -> ReplayError {
    ReplayError {
        code: 409,
        msg: format!("{count} messages missed, more than history_replay_max ({max}) replays; resync and subscribe again without since"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn rings(per_channel: usize, channels_max: usize) -> HistoryRings {
        let config = HistoryConfig {
            patterns: vec!["chat.>".into()],
            messages_per_channel: per_channel,
            age: Duration::from_secs(60),
            replay_messages_max: 5,
            stream: "S".into(),
            replicas: 1,
            channels_max,
        };
        HistoryRings::new(config, 1000)
    }

    fn seqs(r: &Replayed) -> Vec<u64> {
        r.messages.iter().map(|(s, _)| *s).collect()
    }

    #[test]
    fn replays_after_since_and_reports_upto() {
        let mut h = rings(10, 10);
        assert!(h.is_history_channel("chat.a") && !h.is_history_channel("news.a"));
        let a1 = h.append("chat.a", Bytes::from_static(b"1"), 0);
        let _b = h.append("chat.b", Bytes::from_static(b"x"), 0);
        let a2 = h.append("chat.a", Bytes::from_static(b"2"), 0);
        assert_eq!(a1, 1000);
        let r = h.replay("chat.a", a1, 0).unwrap();
        assert_eq!(seqs(&r), vec![a2]);
        assert_eq!(r.upto, a2);
        assert_eq!(r.messages[0].1, Bytes::from_static(b"2"));
        assert_eq!(seqs(&h.replay("chat.a", 0, 0).unwrap()), vec![a1, a2]);
        assert!(h.replay("chat.a", a2, 0).unwrap().messages.is_empty());
        // A channel with no history yet: nothing to replay, no gap (since is from this process).
        assert!(h.replay("chat.c", a2, 0).unwrap().messages.is_empty());
    }

    #[test]
    fn eviction_by_count_means_409_only_when_a_missed_message_is_gone() {
        let mut h = rings(2, 10);
        let s: Vec<u64> = (0..4).map(|i| h.append("chat.a", Bytes::from(vec![b'0' + i]), 0)).collect();
        // kept: s[2], s[3]; evicted up to s[1].
        assert_eq!(seqs(&h.replay("chat.a", s[1], 0).unwrap()), vec![s[2], s[3]]);
        assert_eq!(h.replay("chat.a", s[0], 0).unwrap_err().code, 409);
        assert_eq!(seqs(&h.replay("chat.a", 0, 0).unwrap()), vec![s[2], s[3]], "since 0: all kept");
    }

    #[test]
    fn eviction_by_age() {
        let mut h = rings(10, 10);
        let old = h.append("chat.a", Bytes::from_static(b"1"), 0);
        let newer = h.append("chat.a", Bytes::from_static(b"2"), 50_000);
        assert_eq!(seqs(&h.replay("chat.a", old, 70_000).unwrap()), vec![newer], "old expired, but the client had it");
        assert_eq!(h.replay("chat.a", old - 1, 70_000).unwrap_err().code, 409);
    }

    #[test]
    fn a_resume_from_before_this_process_is_a_gap() {
        let mut h = rings(10, 10);
        h.append("chat.a", Bytes::from_static(b"1"), 0);
        assert_eq!(h.replay("chat.a", 5, 0).unwrap_err().code, 409, "seq 5 is from an earlier process");
        assert_eq!(h.replay("chat.z", 5, 0).unwrap_err().code, 409);
    }

    #[test]
    fn dropping_a_ring_raises_the_floor() {
        let mut h = rings(10, 2);
        let a = h.append("chat.a", Bytes::from_static(b"1"), 0);
        let b = h.append("chat.b", Bytes::from_static(b"1"), 0);
        h.append("chat.c", Bytes::from_static(b"1"), 0); // drops chat.a, the least recent
        assert_eq!(h.channels(), 2);
        assert_eq!(h.replay("chat.a", a - 1, 0).unwrap_err().code, 409, "chat.a's history is gone");
        assert!(h.replay("chat.b", b, 0).is_ok());
        // A ring created after a drop cannot vouch for anything up to the dropped rings'
        // last messages (creating this one dropped chat.b, last seq b); after that, nothing
        // was lost.
        let a2 = h.append("chat.a", Bytes::from_static(b"2"), 0);
        assert_eq!(h.replay("chat.a", a, 0).unwrap_err().code, 409, "conservative: chat.b's drop raised the floor to b");
        assert_eq!(seqs(&h.replay("chat.a", b, 0).unwrap()), vec![a2]);
    }

    #[test]
    fn replay_bound() {
        let mut h = rings(10, 10);
        let first = h.append("chat.a", Bytes::from_static(b"0"), 0);
        for _ in 0..6 {
            h.append("chat.a", Bytes::from_static(b"1"), 0);
        }
        let e = h.replay("chat.a", first, 0).unwrap_err();
        assert_eq!(e.code, 409);
        assert!(e.msg.contains("history_replay_max"), "{}", e.msg);
        assert_eq!(h.replay("chat.a", first + 1, 0).unwrap().messages.len(), 5);
    }
}
