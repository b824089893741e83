//! The embedded broker: publishes never leave the node. It exists so one command runs a
//! complete gateway; the NATS backend replaces it for multi-node fan-out. History
//! channels keep their messages in memory rings ([`HistoryRings`]) so resume works the
//! same way as with JetStream.

use super::history::{HistoryRings, Replayed};
use crate::config::HistoryConfig;
use crate::fanout::ReplayError;
use bytes::Bytes;

pub struct EmbeddedBroker {
    history: Option<HistoryRings>,
    started: std::time::Instant,
}

impl EmbeddedBroker {
    pub fn new(history: HistoryConfig) -> Self {
        let start_unix_us = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_micros() as u64);
        let history = history.is_enabled().then(|| HistoryRings::new(history, start_unix_us));
        EmbeddedBroker { history, started: std::time::Instant::now() }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// An embedded publish comes straight back for local fan-out, with its sequence when
    /// the channel keeps history.
    pub fn publish(&mut self, channel: &str, data: &Bytes) -> Option<u64> {
        let now = self.now_ms();
        let history = self.history.as_mut()?;
        history.is_history_channel(channel).then(|| history.append(channel, data.clone(), now))
    }

    pub fn replay(&mut self, channel: &str, since: u64) -> Result<Replayed, ReplayError> {
        let now = self.now_ms();
        match self.history.as_mut() {
            Some(history) if history.is_history_channel(channel) => history.replay(channel, since, now),
            _ => Err(ReplayError { code: 400, msg: format!("{channel} has no history (see --history)") }),
        }
    }

    pub fn history_channels(&self) -> usize {
        self.history.as_ref().map_or(0, HistoryRings::channels)
    }
}
