//! Arbitrary bytes through the WebSocket decoder, split at a point chosen by the input,
//! as the gateway feeds it (keeping the unconsumed tail). Must never panic, and must
//! consume no more than it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringcast_fuzz::protocol::ws::{Flow, WsLimits, WsMessage, WsReader};

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let limits = WsLimits { max_frame_bytes: 256, max_message_bytes: 1024 };
    let split = data[0] as usize % data.len();
    let mut reader = WsReader::default();
    let mut first = data[1..].to_vec();
    let cut = split.min(first.len());
    let mut head = first[..cut].to_vec();
    let mut on_message = |message: WsMessage<'_>| {
        if let WsMessage::Text(text) = message {
            assert!(std::str::from_utf8(text.as_bytes()).is_ok());
        }
        Flow::Continue
    };
    let Ok(consumed) = reader.feed(&mut head, &limits, &mut on_message) else { return };
    assert!(consumed <= head.len());
    let mut rest = head[consumed..].to_vec();
    rest.extend_from_slice(&first.split_off(cut));
    if let Ok(consumed) = reader.feed(&mut rest, &limits, &mut on_message) {
        assert!(consumed <= rest.len());
    }
});
