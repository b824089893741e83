//! The embedded broker: publishes never leave the node. It exists so one command runs a
//! complete gateway; the NATS backend replaces it for multi-node fan-out.

use bytes::Bytes;

#[derive(Default)]
pub struct EmbeddedBroker {
    _private: (),
}

impl EmbeddedBroker {
    pub fn new() -> Self {
        EmbeddedBroker::default()
    }

    /// An embedded publish comes straight back for local fan-out.
    pub fn publish(&mut self, channel: Box<str>, data: Bytes) -> (Box<str>, Bytes) {
        (channel, data)
    }
}
