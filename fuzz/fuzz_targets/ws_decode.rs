//! Arbitrary bytes through the WebSocket decoder, split at a point chosen by the input,
//! as the gateway feeds it (keeping the unconsumed tail). When the first byte's high bit
//! is set the connection has negotiated permessage-deflate: RSV1 frames go through the
//! shard's inflater (arbitrary bytes as deflate data). Must never panic, must consume no
//! more than it was given, and an inflated message stays within max_message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringcast_fuzz::protocol::deflate::Inflater;
use ringcast_fuzz::protocol::ws::{Flow, Inflate, WsError, WsLimits, WsMessage, WsReader};

fn feed(reader: &mut WsReader, buf: &mut [u8], limits: &WsLimits, inflater: &mut Option<Inflater>, on_message: &mut dyn FnMut(WsMessage<'_>) -> Flow) -> Result<usize, WsError> {
    reader.feed_with(buf, limits, inflater.as_mut().map(|i| i as &mut dyn Inflate), on_message)
}

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let limits = WsLimits { max_frame_bytes: 256, max_message_bytes: 1024 };
    let split = data[0] as usize % data.len();
    let mut inflater = (data[0] & 0x80 != 0).then(Inflater::default);
    let mut reader = WsReader::default();
    let mut first = data[1..].to_vec();
    let cut = split.min(first.len());
    let mut head = first[..cut].to_vec();
    let mut on_message = |message: WsMessage<'_>| {
        match message {
            WsMessage::Text(text) => {
                assert!(std::str::from_utf8(text.as_bytes()).is_ok());
                assert!(text.len() <= limits.max_message_bytes);
            }
            WsMessage::Binary(bytes) => assert!(bytes.len() <= limits.max_message_bytes),
            _ => {}
        }
        Flow::Continue
    };
    let Ok(consumed) = feed(&mut reader, &mut head, &limits, &mut inflater, &mut on_message) else { return };
    assert!(consumed <= head.len());
    let mut rest = head[consumed..].to_vec();
    rest.extend_from_slice(&first.split_off(cut));
    if let Ok(consumed) = feed(&mut reader, &mut rest, &limits, &mut inflater, &mut on_message) {
        assert!(consumed <= rest.len());
    }
});
