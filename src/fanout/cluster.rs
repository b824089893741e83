//! Envelopes of the questions and orders that cover every connection of the node or of
//! the cluster: subscriber counts per channel (the Pusher channel queries) and "close
//! this user's connections" (Pusher `terminate_connections`). The bridge carries them
//! between nodes (`bridge::cluster`); shards answer them from their subscription index.
//!
//! Owns: the types and their bounds. Must not touch: sockets, engines. Runs on: any
//! thread (plain data; serialized as JSON between nodes).

use serde::{Deserialize, Serialize};

/// Channels one count may list (per shard, per node and merged): past it the answer is
/// marked `truncated` and the caller refuses it. One node's answer travels as one NATS
/// message, whose default bound is 1 MB: 4,096 names of at most 200 bytes with their
/// counts stay under it.
pub const COUNT_CHANNELS_MAX: usize = 4_096;

/// Which channels a count covers: every literal channel whose name starts with `prefix`,
/// or (`exact`) the one channel named `prefix`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountQuery {
    pub prefix: Box<str>,
    pub exact: bool,
}

/// Subscribers (connections) per channel with at least one, names without the query's
/// prefix (an exact count names its channel ""). `truncated`: more channels matched
/// than [`COUNT_CHANNELS_MAX`]; the list is incomplete.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub channels: Vec<(Box<str>, u64)>,
    #[serde(default)]
    pub truncated: bool,
}

impl Counts {
    /// The subscribers of all the listed channels (an exact count: of its channel).
    pub fn total(&self) -> u64 {
        self.channels.iter().map(|(_, n)| n).sum()
    }
}

/// Sums the counts of several shards or nodes, bounded by [`COUNT_CHANNELS_MAX`].
#[derive(Default)]
pub struct CountsMerge {
    channels: std::collections::HashMap<Box<str>, u64>,
    truncated: bool,
}

impl CountsMerge {
    pub fn add(&mut self, counts: Counts) {
        self.truncated |= counts.truncated;
        for (name, count) in counts.channels {
            if let Some(sum) = self.channels.get_mut(&name) {
                *sum += count;
            } else if self.channels.len() < COUNT_CHANNELS_MAX {
                self.channels.insert(name, count);
            } else {
                self.truncated = true;
            }
        }
    }

    pub fn finish(self) -> Counts {
        let mut channels: Vec<(Box<str>, u64)> = self.channels.into_iter().collect();
        channels.sort_unstable();
        Counts { channels, truncated: self.truncated }
    }
}

/// Close every connection in `scope` (a transport's namespace: a Pusher app id) whose
/// signed-in user is `user`. The shard asks its transport which connections match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloseUser {
    pub scope: Box<str>,
    pub user: Box<str>,
}

/// Where a shard sends its counts.
pub type CountsReply = tokio::sync::oneshot::Sender<Counts>;
/// Where the bridge sends a cluster-wide answer; Err says why the cluster could not
/// answer (the HTTP caller gets 503).
pub type ClusterCountsReply = tokio::sync::oneshot::Sender<Result<Counts, String>>;
/// Where the bridge says a close order was handed on (Err: it could not be).
pub type ClusterCloseReply = tokio::sync::oneshot::Sender<Result<(), String>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_sums_and_bounds() {
        let mut merge = CountsMerge::default();
        merge.add(Counts { channels: vec![("a".into(), 2), ("b".into(), 1)], truncated: false });
        merge.add(Counts { channels: vec![("a".into(), 3)], truncated: false });
        let merged = merge.finish();
        assert_eq!(merged.channels, vec![("a".into(), 5), ("b".into(), 1)]);
        assert_eq!(merged.total(), 6);
        assert!(!merged.truncated);
        let mut merge = CountsMerge::default();
        merge.add(Counts { channels: (0..COUNT_CHANNELS_MAX + 1).map(|i| (i.to_string().into(), 1)).collect(), truncated: false });
        let merged = merge.finish();
        assert_eq!(merged.channels.len(), COUNT_CHANNELS_MAX);
        assert!(merged.truncated, "past the bound the answer says it is incomplete");
        let json = serde_json::to_string(&CountQuery { prefix: "$pusher.1.".into(), exact: false }).unwrap();
        assert_eq!(serde_json::from_str::<CountQuery>(&json).unwrap().prefix.as_ref(), "$pusher.1.");
    }
}
