//! RFC 6455 WebSocket frames, server side, with no I/O and no allocation on the hot path.
//!
//! Owns: frame decoding (in place, from a caller-owned buffer), fragment reassembly,
//! UTF-8 validation, and frame encoding. Must not touch: sockets, threads. Runs on: any
//! thread; a [`WsReader`] belongs to one connection.
//!
//! The gateway reads socket bytes into a shared buffer and hands it to [`WsReader::feed`]:
//! complete frames are unmasked where they lie and passed out as borrowed slices; a
//! trailing partial frame is left unconsumed for the caller to keep. Only a fragmented
//! message is copied, into a buffer that exists while that message is in flight, so an
//! idle reader is one pointer.

use bytes::{BufMut, Bytes, BytesMut};

pub mod opcode {
    pub const CONTINUATION: u8 = 0;
    pub const TEXT: u8 = 1;
    pub const BINARY: u8 = 2;
    pub const CLOSE: u8 = 8;
    pub const PING: u8 = 9;
    pub const PONG: u8 = 10;
}

pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
    pub const SERVICE_RESTART: u16 = 1012;
    pub const TRY_AGAIN_LATER: u16 = 1013;
    pub const SLOW_CONSUMER: u16 = 4008;
}

/// Control frame payloads are at most 125 bytes (RFC 6455 §5.5).
pub const CONTROL_PAYLOAD_BYTES_MAX: usize = 125;
/// Largest header a client frame can have: 2 + 8 (length) + 4 (mask).
pub const CLIENT_HEADER_BYTES_MAX: usize = 14;

#[derive(Debug, Clone, Copy)]
pub struct WsLimits {
    pub max_frame_bytes: usize,
    pub max_message_bytes: usize,
}

#[derive(Debug, PartialEq, Eq)]
pub enum WsMessage<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
    Ping(&'a [u8]),
    Pong(&'a [u8]),
    Close { code: Option<u16>, reason: &'a str },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// Why the connection must close, and with which code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WsError {
    pub close_code: u16,
    pub reason: &'static str,
}

const fn protocol(reason: &'static str) -> WsError {
    WsError { close_code: close_code::PROTOCOL_ERROR, reason }
}
const INVALID_UTF8: WsError = WsError { close_code: close_code::INVALID_PAYLOAD, reason: "text is not valid UTF-8" };
const FRAME_TOO_BIG: WsError = WsError { close_code: close_code::TOO_BIG, reason: "frame larger than max_frame" };
const MESSAGE_TOO_BIG: WsError = WsError { close_code: close_code::TOO_BIG, reason: "message larger than max_message" };

/// A message arriving in fragments.
struct Fragments {
    opcode: u8,
    /// RSV1 on its first frame: permessage-deflate; inflated (and checked) once complete.
    compressed: bool,
    buf: Vec<u8>,
    /// Prefix of `buf` known to be valid UTF-8 (text only).
    valid_up_to: usize,
}

/// Inflates one whole compressed message (RFC 7692): the decoder hands the payload of a
/// message with RSV1 set to the negotiated extension, which is implemented in
/// `protocol::deflate` (the decoder knows only this interface). The output is bounded by
/// `max_bytes`: past it the answer is a 1009 error, before anything larger is allocated.
pub trait Inflate {
    fn inflate(&mut self, compressed: &[u8], max_bytes: usize) -> Result<&[u8], WsError>;
}

/// Per-connection decoder state: one pointer while no fragmented message is in flight.
#[derive(Default)]
pub struct WsReader {
    fragments: Option<Box<Fragments>>,
}

struct Header {
    fin: bool,
    rsv1: bool,
    opcode: u8,
    mask: [u8; 4],
    header_len: usize,
    payload_len: usize,
}

impl WsReader {
    pub fn in_fragmented_message(&self) -> bool {
        self.fragments.is_some()
    }

    /// Decodes every complete frame in `buf`, calling `on_message` for each complete data
    /// message (fragments reassembled) and each control frame. Returns the bytes consumed;
    /// a trailing partial frame is not consumed. `Flow::Stop` from the callback stops after
    /// that message.
    pub fn feed(
        &mut self,
        buf: &mut [u8],
        limits: &WsLimits,
        on_message: &mut dyn FnMut(WsMessage<'_>) -> Flow,
    ) -> Result<usize, WsError> {
        self.feed_with(buf, limits, None, on_message)
    }

    /// [`WsReader::feed`] on a connection that negotiated permessage-deflate: a data
    /// message with RSV1 set is inflated by `inflater` (shared by the shard; no context
    /// is kept between messages) within `max_message_bytes`. Without an inflater RSV1 is
    /// a protocol error, as before.
    pub fn feed_with<'i>(
        &mut self,
        buf: &mut [u8],
        limits: &WsLimits,
        mut inflater: Option<&mut (dyn Inflate + 'i)>,
        on_message: &mut dyn FnMut(WsMessage<'_>) -> Flow,
    ) -> Result<usize, WsError> {
        let mut position = 0;
        while let Some(header) = parse_header(&buf[position..], limits, inflater.is_some())? {
            let end = position + header.header_len + header.payload_len;
            if end > buf.len() {
                break;
            }
            let payload = &mut buf[position + header.header_len..end];
            unmask(payload, header.mask);
            position = end;
            if self.on_frame(&header, payload, limits, inflater.as_deref_mut(), on_message)? == Flow::Stop {
                break;
            }
        }
        Ok(position)
    }

    fn on_frame<'i>(
        &mut self,
        header: &Header,
        payload: &[u8],
        limits: &WsLimits,
        inflater: Option<&mut (dyn Inflate + 'i)>,
        on_message: &mut dyn FnMut(WsMessage<'_>) -> Flow,
    ) -> Result<Flow, WsError> {
        if header.rsv1 && !matches!(header.opcode, opcode::TEXT | opcode::BINARY) {
            return Err(protocol("RSV1 is only allowed on the first frame of a data message"));
        }
        match header.opcode {
            opcode::CLOSE => Ok(on_message(parse_close(payload)?)),
            opcode::PING => Ok(on_message(WsMessage::Ping(payload))),
            opcode::PONG => Ok(on_message(WsMessage::Pong(payload))),
            opcode::TEXT | opcode::BINARY => {
                if self.fragments.is_some() {
                    return Err(protocol("new message before the fragmented one finished"));
                }
                if header.fin {
                    if header.rsv1 {
                        let inflater = inflater.ok_or(protocol("reserved bits set without a negotiated extension"))?;
                        return Ok(on_message(whole_message(header.opcode, inflater.inflate(payload, limits.max_message_bytes)?)?));
                    }
                    return Ok(on_message(whole_message(header.opcode, payload)?));
                }
                let mut fragments = Box::new(Fragments { opcode: header.opcode, compressed: header.rsv1, buf: Vec::new(), valid_up_to: 0 });
                fragments.append(payload, limits)?;
                self.fragments = Some(fragments);
                Ok(Flow::Continue)
            }
            _ => {
                let Some(fragments) = self.fragments.as_mut() else {
                    return Err(protocol("continuation frame without a message to continue"));
                };
                fragments.append(payload, limits)?;
                if !header.fin {
                    return Ok(Flow::Continue);
                }
                let fragments = self.fragments.take().expect("checked above");
                if fragments.compressed {
                    let inflater = inflater.ok_or(protocol("reserved bits set without a negotiated extension"))?;
                    return Ok(on_message(whole_message(fragments.opcode, inflater.inflate(&fragments.buf, limits.max_message_bytes)?)?));
                }
                if fragments.opcode == opcode::TEXT && fragments.valid_up_to != fragments.buf.len() {
                    return Err(INVALID_UTF8);
                }
                Ok(on_message(whole_message(fragments.opcode, &fragments.buf)?))
            }
        }
    }
}

impl Fragments {
    fn append(&mut self, payload: &[u8], limits: &WsLimits) -> Result<(), WsError> {
        if self.buf.len() + payload.len() > limits.max_message_bytes {
            return Err(MESSAGE_TOO_BIG);
        }
        self.buf.extend_from_slice(payload);
        if self.opcode == opcode::TEXT && !self.compressed {
            // Validate only what is new; a code point cut at the fragment boundary is
            // fine until the final fragment, an invalid sequence fails at once.
            match std::str::from_utf8(&self.buf[self.valid_up_to..]) {
                Ok(_) => self.valid_up_to = self.buf.len(),
                Err(e) if e.error_len().is_none() => self.valid_up_to += e.valid_up_to(),
                Err(_) => return Err(INVALID_UTF8),
            }
        }
        Ok(())
    }
}

fn whole_message(opcode: u8, payload: &[u8]) -> Result<WsMessage<'_>, WsError> {
    if opcode == opcode::BINARY {
        return Ok(WsMessage::Binary(payload));
    }
    simdutf8::basic::from_utf8(payload).map(WsMessage::Text).map_err(|_| INVALID_UTF8)
}

fn parse_header(bytes: &[u8], limits: &WsLimits, deflate: bool) -> Result<Option<Header>, WsError> {
    if bytes.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (bytes[0], bytes[1]);
    // RSV1 means permessage-deflate, where negotiated; RSV2 and RSV3 mean nothing here.
    if b0 & if deflate { 0x30 } else { 0x70 } != 0 {
        return Err(protocol("reserved bits set without a negotiated extension"));
    }
    let rsv1 = b0 & 0x40 != 0;
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0f;
    let control = opcode >= opcode::CLOSE;
    if !matches!(opcode, 0..=2 | 8..=10) {
        return Err(protocol("reserved opcode"));
    }
    if b1 & 0x80 == 0 {
        return Err(protocol("client frames must be masked"));
    }
    let short = (b1 & 0x7f) as usize;
    if control && (!fin || short > CONTROL_PAYLOAD_BYTES_MAX) {
        return Err(protocol("control frames must be final and at most 125 bytes"));
    }
    let (payload_len, length_bytes) = match short {
        126 if bytes.len() >= 4 => (u16::from_be_bytes([bytes[2], bytes[3]]) as u64, 2),
        127 if bytes.len() >= 10 => (u64::from_be_bytes(bytes[2..10].try_into().expect("8 bytes")), 8),
        126 | 127 => return Ok(None),
        n => (n as u64, 0),
    };
    if payload_len >> 63 != 0 {
        return Err(protocol("frame length has its most significant bit set"));
    }
    // Decided from the header alone: a huge declared length never gets buffered.
    if payload_len > limits.max_frame_bytes as u64 {
        return Err(FRAME_TOO_BIG);
    }
    let header_len = 2 + length_bytes + 4;
    if bytes.len() < header_len {
        return Ok(None);
    }
    let mask = bytes[2 + length_bytes..header_len].try_into().expect("4 bytes");
    Ok(Some(Header { fin, rsv1, opcode, mask, header_len, payload_len: payload_len as usize }))
}

fn parse_close(payload: &[u8]) -> Result<WsMessage<'_>, WsError> {
    match payload.len() {
        0 => Ok(WsMessage::Close { code: None, reason: "" }),
        1 => Err(protocol("close frame with a one-byte payload")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !valid_close_code(code) {
                return Err(protocol("invalid close code"));
            }
            let reason = std::str::from_utf8(&payload[2..]).map_err(|_| INVALID_UTF8)?;
            Ok(WsMessage::Close { code: Some(code), reason })
        }
    }
}

/// Codes a peer may send (RFC 6455 §7.4 and the IANA registry).
pub fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// XORs `payload` with the mask, eight bytes at a time.
pub fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3]]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let word = u64::from_ne_bytes((&*chunk).try_into().expect("8 bytes")) ^ wide;
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    // Every chunk started at a multiple of 8, so the tail starts at mask index 0.
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

/// Writes a final, unmasked (server) frame header.
pub fn write_frame_header(out: &mut impl BufMut, opcode: u8, len: usize) {
    out.put_u8(0x80 | opcode);
    if len < 126 {
        out.put_u8(len as u8);
    } else if len <= u16::MAX as usize {
        out.put_u8(126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
}

/// The payload of one complete, unmasked frame as [`write_frame_header`] writes it (a
/// frame this server encoded, such as a delivery); None for anything else.
pub fn server_frame_payload(frame: &[u8]) -> Option<&[u8]> {
    let (&first, rest) = frame.split_first()?;
    let (&len7, rest) = rest.split_first()?;
    if first & 0x80 == 0 || len7 & 0x80 != 0 {
        return None;
    }
    let (len, rest) = match len7 {
        126 => (u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as usize, &rest[2..]),
        127 => (usize::try_from(u64::from_be_bytes(rest.get(..8)?.try_into().ok()?)).ok()?, &rest[8..]),
        n => (n as usize, rest),
    };
    (rest.len() == len).then_some(rest)
}

fn encode(opcode: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 10);
    write_frame_header(&mut out, opcode, payload.len());
    out.put_slice(payload);
    out.freeze()
}

pub fn encode_text(payload: &[u8]) -> Bytes {
    encode(opcode::TEXT, payload)
}

pub fn encode_binary(payload: &[u8]) -> Bytes {
    encode(opcode::BINARY, payload)
}

pub fn encode_ping(payload: &[u8]) -> Bytes {
    encode(opcode::PING, &payload[..payload.len().min(CONTROL_PAYLOAD_BYTES_MAX)])
}

pub fn encode_pong(payload: &[u8]) -> Bytes {
    encode(opcode::PONG, &payload[..payload.len().min(CONTROL_PAYLOAD_BYTES_MAX)])
}

/// A close frame; the reason is cut at a character boundary to fit 125 bytes.
pub fn encode_close(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(CONTROL_PAYLOAD_BYTES_MAX - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode(opcode::CLOSE, &payload)
}

/// A masked client frame, for tests, fuzzing and the load-test harness.
pub fn encode_client_frame(opcode: u8, fin: bool, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + CLIENT_HEADER_BYTES_MAX);
    out.push(if fin { 0x80 } else { 0 } | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    unmask(&mut out[start..], mask);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: WsLimits = WsLimits { max_frame_bytes: 1024, max_message_bytes: 4096 };
    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    #[derive(Debug, PartialEq)]
    enum Got {
        Text(String),
        Binary(Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close(Option<u16>, String),
    }

    fn collect(reader: &mut WsReader, buf: &mut [u8]) -> (Result<usize, WsError>, Vec<Got>) {
        let mut got = Vec::new();
        let result = reader.feed(buf, &LIMITS, &mut |m| {
            got.push(match m {
                WsMessage::Text(t) => Got::Text(t.to_string()),
                WsMessage::Binary(b) => Got::Binary(b.to_vec()),
                WsMessage::Ping(p) => Got::Ping(p.to_vec()),
                WsMessage::Pong(p) => Got::Pong(p.to_vec()),
                WsMessage::Close { code, reason } => Got::Close(code, reason.to_string()),
            });
            Flow::Continue
        });
        (result, got)
    }

    fn decode_all(bytes: &[u8]) -> Result<Vec<Got>, WsError> {
        let mut buf = bytes.to_vec();
        let (result, got) = collect(&mut WsReader::default(), &mut buf);
        let consumed = result?;
        assert_eq!(consumed, bytes.len(), "everything consumed");
        Ok(got)
    }

    fn frame(op: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        encode_client_frame(op, fin, payload, MASK)
    }

    #[test]
    fn server_frame_payload_reads_back_each_length_form() {
        for len in [0usize, 5, 125, 126, 300, 65_535, 65_536, 70_000] {
            let payload = vec![b'x'; len];
            let frame = encode_text(&payload);
            assert_eq!(server_frame_payload(&frame), Some(&payload[..]), "length {len}");
            assert_eq!(server_frame_payload(&frame[..frame.len() - 1]), None, "truncated {len}");
        }
        assert_eq!(server_frame_payload(&frame(1, true, b"masked")), None, "a client (masked) frame");
        assert_eq!(server_frame_payload(&[]), None);
    }

    #[test]
    fn single_frames_of_each_kind() {
        let mut bytes = frame(1, true, "héllo".as_bytes());
        bytes.extend(frame(2, true, &[0, 1, 2]));
        bytes.extend(frame(9, true, b"p"));
        bytes.extend(frame(10, true, b"q"));
        bytes.extend(frame(8, true, &[0x03, 0xe8, b'b', b'y', b'e']));
        assert_eq!(
            decode_all(&bytes).unwrap(),
            vec![
                Got::Text("héllo".into()),
                Got::Binary(vec![0, 1, 2]),
                Got::Ping(b"p".to_vec()),
                Got::Pong(b"q".to_vec()),
                Got::Close(Some(1000), "bye".into())
            ]
        );
        assert_eq!(decode_all(&frame(8, true, b"")).unwrap(), vec![Got::Close(None, String::new())]);
    }

    #[test]
    fn extended_lengths() {
        let limits = WsLimits { max_frame_bytes: 100_000, max_message_bytes: 100_000 };
        for len in [125usize, 126, 127, 65535, 65536, 70000] {
            let payload = vec![b'a'; len];
            let mut buf = frame(1, true, &payload);
            let mut texts = 0;
            let consumed = WsReader::default()
                .feed(&mut buf, &limits, &mut |m| {
                    assert_eq!(m, WsMessage::Text(std::str::from_utf8(&payload).unwrap()));
                    texts += 1;
                    Flow::Continue
                })
                .unwrap();
            assert_eq!((consumed, texts), (buf.len(), 1), "len {len}");
        }
    }

    #[test]
    fn protocol_violations_close_with_1002() {
        let unmasked = [0x81u8, 0x02, b'h', b'i'];
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("unmasked", unmasked.to_vec()),
            ("rsv1", { let mut f = frame(1, true, b"x"); f[0] |= 0x40; f }),
            ("rsv3", { let mut f = frame(1, true, b"x"); f[0] |= 0x10; f }),
            ("opcode 3", frame(3, true, b"x")),
            ("opcode 11", frame(11, true, b"x")),
            ("fragmented ping", frame(9, false, b"x")),
            ("long ping", frame(9, true, &[0; 126])),
            ("orphan continuation", frame(0, true, b"x")),
            ("text during fragments", [frame(1, false, b"a"), frame(1, true, b"b")].concat()),
            ("one-byte close", frame(8, true, &[3])),
            ("close 1005", frame(8, true, &1005u16.to_be_bytes())),
            ("close 999", frame(8, true, &999u16.to_be_bytes())),
            ("close 2000", frame(8, true, &2000u16.to_be_bytes())),
            ("close 1016", frame(8, true, &1016u16.to_be_bytes())),
        ];
        for (name, bytes) in cases {
            let error = decode_all(&bytes).expect_err(name);
            assert_eq!(error.close_code, 1002, "{name}");
        }
        for code in [1000u16, 1001, 1003, 1007, 1011, 1012, 1014, 3000, 4008, 4999] {
            assert!(decode_all(&frame(8, true, &code.to_be_bytes())).is_ok(), "{code}");
        }
    }

    #[test]
    fn top_bit_length_is_a_protocol_error() {
        let mut bytes = vec![0x81, 0x80 | 127];
        bytes.extend_from_slice(&(1u64 << 63).to_be_bytes());
        bytes.extend_from_slice(&MASK);
        assert_eq!(decode_all(&bytes).unwrap_err().close_code, 1002);
    }

    #[test]
    fn oversize_frame_is_refused_from_its_header() {
        // Only the header has arrived: the frame is refused before any payload.
        let bytes = frame(1, true, &vec![b'a'; 2000]);
        let mut header_only = bytes[..8].to_vec();
        let (result, _) = collect(&mut WsReader::default(), &mut header_only);
        assert_eq!(result.unwrap_err().close_code, 1009);
        let mut huge = vec![0x82, 0x80 | 127];
        huge.extend_from_slice(&(1u64 << 40).to_be_bytes());
        huge.extend_from_slice(&MASK);
        assert_eq!(decode_all(&huge).unwrap_err().close_code, 1009);
    }

    #[test]
    fn oversize_message_across_fragments() {
        let mut bytes = Vec::new();
        for _ in 0..5 {
            bytes.extend(frame(if bytes.is_empty() { 1 } else { 0 }, false, &[b'a'; 1000]));
        }
        assert_eq!(decode_all(&bytes).unwrap_err().close_code, 1009);
    }

    #[test]
    fn fragments_with_interleaved_control_frames() {
        let bytes = [frame(1, false, b"he"), frame(9, true, b"!"), frame(0, false, b"l"), frame(10, true, b""), frame(0, true, b"lo")].concat();
        assert_eq!(decode_all(&bytes).unwrap(), vec![Got::Ping(b"!".to_vec()), Got::Pong(vec![]), Got::Text("hello".into())]);
        let bytes = [frame(2, false, &[1]), frame(0, true, &[2])].concat();
        assert_eq!(decode_all(&bytes).unwrap(), vec![Got::Binary(vec![1, 2])]);
    }

    #[test]
    fn utf8_across_fragments() {
        // "€" is E2 82 AC, split over three fragments: valid.
        let bytes = [frame(1, false, &[b'a', 0xe2]), frame(0, false, &[0x82]), frame(0, true, &[0xac])].concat();
        assert_eq!(decode_all(&bytes).unwrap(), vec![Got::Text("a€".into())]);
        // Invalid sequence detected at the fragment that makes it invalid.
        let bytes = [frame(1, false, &[0xe2]), frame(0, false, &[b'x'])].concat();
        assert_eq!(decode_all(&bytes).unwrap_err().close_code, 1007);
        // Incomplete sequence at the final fragment.
        let bytes = [frame(1, false, b"ok"), frame(0, true, &[0xe2, 0x82])].concat();
        assert_eq!(decode_all(&bytes).unwrap_err().close_code, 1007);
        assert_eq!(decode_all(&frame(1, true, &[0xff])).unwrap_err().close_code, 1007);
        assert_eq!(decode_all(&frame(8, true, &[0x03, 0xe8, 0xff])).unwrap_err().close_code, 1007);
    }

    #[test]
    fn every_split_point_gives_the_same_messages() {
        let whole = [
            frame(1, true, b"{\"op\":\"ping\"}"),
            frame(1, false, "frag€".as_bytes()),
            frame(9, true, b"ping"),
            frame(0, true, b"ment"),
            frame(2, true, &vec![7u8; 300]),
            frame(8, true, &[0x03, 0xe8]),
        ]
        .concat();
        let expected = decode_all(&whole).unwrap();
        for split in 0..=whole.len() {
            let mut reader = WsReader::default();
            let mut first = whole[..split].to_vec();
            let (result, mut got) = collect(&mut reader, &mut first);
            let consumed = result.unwrap();
            // The caller keeps the unconsumed tail and prepends it to the next read.
            let mut rest = whole[consumed..].to_vec();
            let (result, more) = collect(&mut reader, &mut rest);
            assert_eq!(result.unwrap(), rest.len(), "split {split}");
            got.extend(more);
            assert_eq!(got, expected, "split {split}");
        }
    }

    #[test]
    fn stop_returns_what_was_consumed() {
        let one = frame(1, true, b"a");
        let mut bytes = [one.clone(), frame(1, true, b"b")].concat();
        let consumed = WsReader::default().feed(&mut bytes, &LIMITS, &mut |_| Flow::Stop).unwrap();
        assert_eq!(consumed, one.len());
    }

    #[test]
    fn unmask_matches_bytewise_for_every_length() {
        for len in 0..40 {
            let original: Vec<u8> = (0..len as u8).collect();
            let mut fast = original.clone();
            unmask(&mut fast, MASK);
            let slow: Vec<u8> = original.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]).collect();
            assert_eq!(fast, slow, "len {len}");
        }
    }

    #[test]
    fn server_frames_encode() {
        assert_eq!(&encode_text(b"hi")[..], &[0x81, 2, b'h', b'i']);
        let long = encode_text(&[b'x'; 300]);
        assert_eq!(&long[..4], &[0x81, 126, 1, 44]);
        let huge = encode_binary(&vec![0; 70_000]);
        assert_eq!(huge[1], 127);
        assert_eq!(&encode_close(4008, "slow")[..], &[0x88, 6, 0x0f, 0xa8, b's', b'l', b'o', b'w']);
        let long_reason = "é".repeat(100);
        let close = encode_close(1000, &long_reason);
        assert!(close.len() - 2 <= 125);
        assert!(std::str::from_utf8(&close[4..]).is_ok(), "cut at a char boundary");
        assert_eq!(&encode_ping(b"")[..], &[0x89, 0]);
        assert_eq!(&encode_pong(b"x")[..], &[0x8a, 1, b'x']);
    }
}
