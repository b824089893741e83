//! Client messages compressed as a permessage-deflate client sends them (raw deflate, sync
//! flush, the 4-byte tail removed: RFC 7692), framed with RSV1 on the first frame, cut into
//! masked fragments of a size chosen by the input (a ping between them), and fed to the
//! decoder with the shard's inflater in two pieces. Checks the round trip: the decoder
//! hands back exactly the bytes compressed; a message over max_message fails with 1009,
//! invalid UTF-8 text with 1007; corrupted deflate data fails or decodes, never panics.
//!
//! Input: byte 0 = level (0-9) and flags (0x10 binary, 0x20 corrupt one byte, 0x40 ping
//! between fragments), byte 1 = fragment size - 1, byte 2 = mask seed and corrupted
//! offset, byte 3 = where the stream is split; the rest is the message.
#![no_main]

use flate2::{Compress, Compression, FlushCompress};
use libfuzzer_sys::fuzz_target;
use ringcast_fuzz::protocol::deflate::Inflater;
use ringcast_fuzz::protocol::ws::{Flow, Inflate, WsLimits, WsMessage, WsReader};

const LIMITS: WsLimits = WsLimits { max_frame_bytes: 256, max_message_bytes: 1024 };

/// Raw deflate with a sync flush, the tail 00 00 ff ff removed.
fn deflate(message: &[u8], level: u32) -> Vec<u8> {
    let mut compress = Compress::new(Compression::new(level), false);
    let mut out = Vec::with_capacity(message.len() * 2 + 64);
    compress.compress_vec(message, &mut out, FlushCompress::Sync).expect("room for the worst case");
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]), "a sync flush ends with the empty stored block");
    out.truncate(out.len() - 4);
    out
}

/// One masked client frame.
fn frame(out: &mut Vec<u8>, first: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(first);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let (control, message) = (&data[..4], &data[4..]);
    let binary = control[0] & 0x10 != 0;
    let corrupt = control[0] & 0x20 != 0;
    let ping = control[0] & 0x40 != 0;
    let fragment = 1 + control[1] as usize; // 1..=256 = max_frame_bytes
    let mask = [control[2], control[2].wrapping_mul(7), 0x5a, control[2] ^ 0xa5];
    let mut compressed = deflate(message, u32::from(control[0] % 10));
    if corrupt && !compressed.is_empty() {
        let at = control[2] as usize % compressed.len();
        compressed[at] ^= 0x55;
    }
    let mut wire = Vec::new();
    let chunks: Vec<&[u8]> = if compressed.is_empty() { vec![&[][..]] } else { compressed.chunks(fragment).collect() };
    for (i, chunk) in chunks.iter().enumerate() {
        let opcode = if i > 0 { 0x0 } else if binary { 0x2 } else { 0x1 };
        let rsv1 = if i == 0 { 0x40 } else { 0 };
        let fin = if i + 1 == chunks.len() { 0x80 } else { 0 };
        frame(&mut wire, fin | rsv1 | opcode, chunk, mask);
        if ping && fin == 0 {
            frame(&mut wire, 0x89, b"p", mask);
        }
    }
    let mut reader = WsReader::default();
    let mut inflater = Inflater::default();
    let mut got: Option<Vec<u8>> = None;
    let mut on_message = |m: WsMessage<'_>| {
        match m {
            WsMessage::Text(text) => got = Some(text.as_bytes().to_vec()),
            WsMessage::Binary(bytes) => got = Some(bytes.to_vec()),
            WsMessage::Ping(p) => assert_eq!(p, b"p"),
            other => panic!("a message the input never sent: {other:?}"),
        }
        Flow::Continue
    };
    let cut = control[3] as usize * wire.len() / 256;
    let mut head = wire[..cut].to_vec();
    let outcome = reader.feed_with(&mut head, &LIMITS, Some(&mut inflater as &mut dyn Inflate), &mut on_message).and_then(|consumed| {
        assert!(consumed <= head.len());
        let mut rest = head[consumed..].to_vec();
        rest.extend_from_slice(&wire[cut..]);
        let consumed = reader.feed_with(&mut rest, &LIMITS, Some(&mut inflater as &mut dyn Inflate), &mut on_message)?;
        assert_eq!(consumed, rest.len(), "every frame was whole");
        Ok(())
    });
    if corrupt {
        if let Some(out) = &got {
            assert!(out.len() <= LIMITS.max_message_bytes);
        }
        return;
    }
    let too_big = message.len() > LIMITS.max_message_bytes || compressed.len() > LIMITS.max_message_bytes;
    match outcome {
        Ok(()) => {
            assert!(!too_big, "{} bytes ({} compressed) passed a {}-byte bound", message.len(), compressed.len(), LIMITS.max_message_bytes);
            assert_eq!(got.as_deref(), Some(message), "the round trip changed the message");
        }
        Err(e) if too_big => assert_eq!(e.close_code, 1009, "{}", e.reason),
        Err(e) => {
            assert!(!binary && std::str::from_utf8(message).is_err(), "a valid message refused: {}", e.reason);
            assert_eq!(e.close_code, 1007, "{}", e.reason);
        }
    }
});
