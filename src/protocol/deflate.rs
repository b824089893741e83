//! RFC 7692 permessage-deflate, as the server runs it: every message compressed on its own
//! (`server_no_context_takeover`) and every client message inflated on its own
//! (`client_no_context_takeover`, which the server always asks for), so no connection
//! carries deflate state: one [`Deflater`] and one [`Inflater`] per shard serve them all.
//!
//! Owns: negotiation (reading `Sec-WebSocket-Extensions` offers, the answer), compressing a
//! server text frame into an RSV1 frame, inflating a client message within a byte bound.
//! Must not touch: sockets, threads, configuration. Runs on: any thread; one deflater and
//! one inflater per shard.

use super::ws::{self, opcode, WsError};
use bytes::{BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The `Sec-WebSocket-Extensions` value the server answers with when it accepts an offer.
pub const RESPONSE: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// The four bytes a sync flush ends with; RFC 7692 §7.2.1 removes them from the wire.
const SYNC_TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Whether any `permessage-deflate` offer among the client's `Sec-WebSocket-Extensions`
/// values is one the server can accept: parameters it understands, and no demand for a
/// server window below 15 bits (the compressor always uses 32 KiB). Offers are tried in
/// order; other extensions are ignored.
pub fn accepts_offer<'a>(values: impl IntoIterator<Item = &'a str>) -> bool {
    values.into_iter().flat_map(|v| v.split(',')).any(|offer| {
        let mut parts = offer.split(';').map(str::trim);
        if !parts.next().is_some_and(|name| name.eq_ignore_ascii_case("permessage-deflate")) {
            return false;
        }
        parts.filter(|p| !p.is_empty()).all(|param| {
            let (name, value) = match param.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
                None => (param, None),
            };
            match name.to_ascii_lowercase().as_str() {
                "server_no_context_takeover" | "client_no_context_takeover" => value.is_none(),
                // The client can take any window we send with (we inflate with 15 bits).
                "client_max_window_bits" => value.is_none_or(|v| v.parse::<u8>().is_ok_and(|b| (8..=15).contains(&b))),
                "server_max_window_bits" => value.is_some_and(|v| v == "15"),
                _ => false,
            }
        })
    })
}

/// Compresses server frames, one message at a time (the stream is reset before each).
pub struct Deflater {
    compress: Compress,
    scratch: Vec<u8>,
}

impl Deflater {
    /// `level`: 1 (fastest) ..= 9 (smallest).
    pub fn new(level: u32) -> Deflater {
        Deflater { compress: Compress::new(Compression::new(level), false), scratch: Vec::new() }
    }

    /// The RSV1 (compressed) form of an unfragmented server text or binary `frame`, or
    /// `None` when its payload is below `threshold` bytes or would not get smaller.
    pub fn compress_frame(&mut self, frame: &[u8], threshold: usize) -> Option<Bytes> {
        let (first, payload) = split_server_frame(frame)?;
        if payload.len() < threshold || !matches!(first & 0x0f, opcode::TEXT | opcode::BINARY) || first & 0x70 != 0 {
            return None;
        }
        self.compress.reset();
        self.scratch.clear();
        // Deflate's worst case is a few bytes per 16 KiB block over the input: one call.
        self.scratch.reserve(payload.len() + payload.len() / 64 + 64);
        let mut input = payload;
        loop {
            let before_in = self.compress.total_in();
            let status = self.compress.compress_vec(input, &mut self.scratch, FlushCompress::Sync).ok()?;
            input = &input[(self.compress.total_in() - before_in) as usize..];
            // Done once the input is used up and the sync flush fit (room was left over).
            if input.is_empty() && self.scratch.len() < self.scratch.capacity() {
                break;
            }
            if status == Status::BufError && self.scratch.len() < self.scratch.capacity() {
                return None;
            }
            self.scratch.reserve(self.scratch.capacity().max(64));
        }
        if !self.scratch.ends_with(&SYNC_TAIL) {
            return None;
        }
        let body = &self.scratch[..self.scratch.len() - SYNC_TAIL.len()];
        if body.len() >= payload.len() {
            return None;
        }
        let mut out = BytesMut::with_capacity(body.len() + 10);
        ws::write_frame_header(&mut out, first & 0x0f, body.len());
        out[0] |= 0x40; // RSV1: this message is compressed
        out.put_slice(body);
        Some(out.freeze())
    }
}

/// Inflates client messages, one at a time, into one reused buffer.
pub struct Inflater {
    decompress: Decompress,
    input: Vec<u8>,
    out: Vec<u8>,
    /// Messages inflated so far.
    pub inflated: u64,
}

const INFLATED_TOO_BIG: WsError = WsError { close_code: ws::close_code::TOO_BIG, reason: "message larger than max_message once inflated" };
const BAD_DEFLATE: WsError = WsError { close_code: ws::close_code::INVALID_PAYLOAD, reason: "compressed message is not valid deflate data" };

/// Buffers a shard keeps between messages; a larger one is given back after use.
const KEEP_BYTES: usize = 64 * 1024;

impl Default for Inflater {
    fn default() -> Self {
        Inflater { decompress: Decompress::new(false), input: Vec::new(), out: Vec::new(), inflated: 0 }
    }
}

impl ws::Inflate for Inflater {
    fn inflate(&mut self, compressed: &[u8], max_bytes: usize) -> Result<&[u8], WsError> {
        Inflater::inflate(self, compressed, max_bytes)
    }
}

impl Inflater {
    /// Inflates one whole compressed message. Output past `max_bytes` stops inflation at
    /// once and fails with 1009: the buffer grows in steps and never past about twice
    /// `max_bytes`, so a small frame that would inflate to gigabytes (a zip bomb) is
    /// refused without being allocated.
    pub fn inflate(&mut self, compressed: &[u8], max_bytes: usize) -> Result<&[u8], WsError> {
        self.decompress.reset(false);
        self.out.clear();
        self.input.clear();
        self.input.extend_from_slice(compressed);
        self.input.extend_from_slice(&SYNC_TAIL);
        let mut consumed = 0;
        let result = loop {
            if self.out.len() == self.out.capacity() {
                let room = (max_bytes + 1 - self.out.len().min(max_bytes)).min(self.out.capacity().max(4096));
                self.out.reserve_exact(room);
            }
            let (before_in, before_out) = (self.decompress.total_in(), self.out.len());
            let status = match self.decompress.decompress_vec(&self.input[consumed..], &mut self.out, FlushDecompress::Sync) {
                Ok(status) => status,
                Err(_) => break Err(BAD_DEFLATE),
            };
            consumed += (self.decompress.total_in() - before_in) as usize;
            if self.out.len() > max_bytes {
                break Err(INFLATED_TOO_BIG);
            }
            let room_left = self.out.len() < self.out.capacity();
            if status == Status::StreamEnd || (consumed == self.input.len() && room_left) {
                break Ok(());
            }
            if room_left && self.decompress.total_in() == before_in && self.out.len() == before_out {
                break Err(BAD_DEFLATE);
            }
        };
        if self.input.capacity() > KEEP_BYTES {
            self.input = Vec::new();
        }
        if let Err(e) = result {
            self.out = Vec::new();
            return Err(e);
        }
        if self.out.capacity() > 4 * KEEP_BYTES && self.out.len() <= KEEP_BYTES {
            self.out.shrink_to(KEEP_BYTES);
        }
        self.inflated += 1;
        Ok(&self.out)
    }

    /// Bytes this inflater holds now (for the shard's memory accounting).
    pub fn held_bytes(&self) -> usize {
        self.out.capacity() + self.input.capacity()
    }
}

/// A server frame's first byte and payload (server frames are unmasked and unfragmented).
fn split_server_frame(frame: &[u8]) -> Option<(u8, &[u8])> {
    let (&first, rest) = frame.split_first()?;
    let (&second, rest) = rest.split_first()?;
    let (len, rest) = match second & 0x7f {
        126 => (u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as usize, &rest[2..]),
        127 => (u64::from_be_bytes(rest.get(..8)?.try_into().ok()?) as usize, &rest[8..]),
        n => (n as usize, rest),
    };
    (rest.len() == len && first & 0x80 != 0).then_some((first, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn telemetry(n: usize) -> Vec<u8> {
        let mut s = String::from("{\"readings\":[");
        for i in 0..n {
            s.push_str(&format!("{{\"device\":\"dev-{i}\",\"temperature\":{}.{},\"humidity\":{},\"status\":\"ok\"}},", 20 + i % 5, i % 10, 40 + i % 7));
        }
        s.push_str("{}]}");
        s.into_bytes()
    }

    #[test]
    fn compressed_frames_inflate_to_the_original_and_are_smaller() {
        let mut deflater = Deflater::new(6);
        let mut inflater = Inflater::default();
        for n in [3, 20, 400] {
            let payload = telemetry(n);
            let frame = ws::encode_text(&payload);
            let compressed = deflater.compress_frame(&frame, 64).expect("telemetry compresses");
            assert_eq!(compressed[0], 0x80 | 0x40 | opcode::TEXT, "FIN, RSV1, text");
            let (_, body) = split_server_frame(&compressed).unwrap();
            // Typical telemetry (a kilobyte and up) shrinks at least 3x; a tiny one at least 2x.
            let ratio = if n >= 20 { 3 } else { 2 };
            assert!(body.len() * ratio <= payload.len(), "{n} readings: {} -> {} bytes", payload.len(), body.len());
            assert_eq!(inflater.inflate(body, 1 << 20).unwrap(), &payload[..]);
            // No context carried between messages: the same payload compresses the same.
            assert_eq!(deflater.compress_frame(&frame, 64).unwrap(), compressed);
        }
    }

    #[test]
    fn below_the_threshold_or_incompressible_stays_plain() {
        let mut deflater = Deflater::new(6);
        assert!(deflater.compress_frame(&ws::encode_text(b"{\"t\":1}"), 64).is_none());
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let noise: Vec<u8> = (0..2000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        assert!(deflater.compress_frame(&ws::encode_binary(&noise), 64).is_none(), "random bytes do not shrink");
        assert!(deflater.compress_frame(&ws::encode_close(1000, ""), 0).is_none(), "control frames are never compressed");
    }

    #[test]
    fn a_zip_bomb_fails_with_1009_without_allocating_it() {
        // 16 MiB of zeros deflates to ~16 KiB.
        let mut deflater = Deflater::new(9);
        let zeros = vec![0u8; 16 << 20];
        let frame = ws::encode_binary(&zeros);
        let bomb = deflater.compress_frame(&frame, 0).unwrap();
        let (_, body) = split_server_frame(&bomb).unwrap();
        assert!(body.len() < 64 * 1024);
        let mut inflater = Inflater::default();
        let err = inflater.inflate(body, 128 * 1024).unwrap_err();
        assert_eq!(err.close_code, 1009);
        assert_eq!(inflater.out.capacity(), 0, "a refused message's output buffer is given back");
        // The inflater is reusable after a failure.
        let ok = deflater.compress_frame(&ws::encode_text(&telemetry(5)), 0).unwrap();
        assert_eq!(inflater.inflate(split_server_frame(&ok).unwrap().1, 1 << 20).unwrap(), &telemetry(5)[..]);
        assert_eq!(inflater.inflate(b"\xff\xff\xff garbage", 1 << 20).unwrap_err().close_code, 1007);
    }

    #[test]
    fn offers() {
        assert!(accepts_offer(["permessage-deflate; client_max_window_bits"]), "what browsers send");
        assert!(accepts_offer(["permessage-deflate"]));
        assert!(accepts_offer(["x-webkit-deflate-frame, permessage-deflate; server_no_context_takeover; client_no_context_takeover"]));
        assert!(accepts_offer(["permessage-deflate; server_max_window_bits=10", "permessage-deflate"]), "a later offer can be taken");
        assert!(accepts_offer(["permessage-deflate; client_max_window_bits=12"]));
        assert!(accepts_offer(["permessage-deflate; server_max_window_bits=\"15\""]));
        assert!(!accepts_offer(["permessage-deflate; server_max_window_bits=10"]), "we compress with a 15-bit window");
        assert!(!accepts_offer(["permessage-deflate; mystery"]));
        assert!(!accepts_offer(["x-webkit-deflate-frame"]));
        assert!(!accepts_offer(std::iter::empty()));
    }
}
