//! WebSocket framing and the HTTP upgrade, as pure byte functions (no sockets).
//!
//! Owns: frame header parsing/encoding (RFC 6455), the client handshake request, the
//! server's accept key, and finding the send timestamp inside a `msg` payload.
//! Must not touch: sockets, clocks, or counters. Used by both the client workers and
//! the `limit` ceiling server.

pub const OPCODE_CONTINUATION: u8 = 0x0;
pub const OPCODE_TEXT: u8 = 0x1;
pub const OPCODE_BINARY: u8 = 0x2;
pub const OPCODE_CLOSE: u8 = 0x8;
pub const OPCODE_PING: u8 = 0x9;
pub const OPCODE_PONG: u8 = 0xA;

/// The JSON key carrying the publisher's send time, ns since the Unix epoch
/// (CLOCK_REALTIME: shared by every process on the host, so no base instant is passed).
pub const TIMESTAMP_KEY: &[u8] = b"\"lt_ns\":";
/// Timestamps are written with a fixed width so a pre-encoded frame can be patched in place.
pub const TIMESTAMP_DIGITS: usize = 19;
/// The JSON key carrying the publisher's per-channel message number (1, 2, 3, ...): a
/// subscriber that sees a number skip has missed a message, one that sees it repeat got a
/// duplicate. Fixed width like the timestamp.
pub const COUNTER_KEY: &[u8] = b"\"lt_n\":";
pub const COUNTER_DIGITS: usize = 12;
/// The ringcast `msg` field carrying the stream sequence on history-enabled channels.
pub const SEQ_KEY: &[u8] = b"\"seq\":";

/// A parsed frame header. `header_len + payload_len` bytes make the whole frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    pub opcode: u8,
    pub mask: Option<[u8; 4]>,
    pub header_len: usize,
    pub payload_len: u64,
}

impl Header {
    pub fn frame_len(&self) -> u64 {
        self.header_len as u64 + self.payload_len
    }
}

/// Parses a frame header; `None` when more bytes are needed (a partial header is not an error).
pub fn parse_header(buf: &[u8]) -> Option<Header> {
    if buf.len() < 2 {
        return None;
    }
    let fin = buf[0] & 0x80 != 0;
    let opcode = buf[0] & 0x0F;
    let masked = buf[1] & 0x80 != 0;
    let (payload_len, mut header_len) = match buf[1] & 0x7F {
        126 => {
            if buf.len() < 4 {
                return None;
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4)
        }
        127 => {
            if buf.len() < 10 {
                return None;
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b), 10)
        }
        n => (n as u64, 2),
    };
    let mask = if masked {
        if buf.len() < header_len + 4 {
            return None;
        }
        let m = [buf[header_len], buf[header_len + 1], buf[header_len + 2], buf[header_len + 3]];
        header_len += 4;
        Some(m)
    } else {
        None
    };
    Some(Header { fin, opcode, mask, header_len, payload_len })
}

fn push_header(out: &mut Vec<u8>, opcode: u8, len: usize, masked: bool) {
    out.push(0x80 | opcode);
    let mask_bit = if masked { 0x80 } else { 0 };
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// Appends a masked (client → server) frame.
pub fn encode_client_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    push_header(out, opcode, payload.len(), true);
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
}

/// Appends an unmasked (server → client) frame.
pub fn encode_server_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    push_header(out, opcode, payload.len(), false);
    out.extend_from_slice(payload);
}

/// Unmasks a client frame's payload in place.
pub fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// The client's upgrade request, offering `subprotocol` when given.
pub fn handshake_request(host: &str, path: &str, key: &str, subprotocol: Option<&str>) -> String {
    let protocol = subprotocol.map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n")).unwrap_or_default();
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{protocol}\r\n"
    )
}

/// Adds a permessage-deflate offer (what browsers send) to a handshake request when `on`.
pub fn offer_deflate(request: String, on: bool) -> String {
    if !on {
        return request;
    }
    let head = request.strip_suffix("\r\n\r\n").unwrap_or(&request);
    format!("{head}\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n")
}

/// Inflates one permessage-deflate message (no context kept between messages) into `out`.
pub fn inflate(inflater: &mut flate2::Decompress, compressed: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    inflater.reset(false);
    out.clear();
    out.reserve(compressed.len() * 8 + 256);
    for chunk in [compressed, &[0u8, 0, 0xff, 0xff][..]] {
        let mut input = chunk;
        loop {
            let (before, before_out) = (inflater.total_in(), out.len());
            inflater.decompress_vec(input, out, flate2::FlushDecompress::Sync).map_err(|_| "bad_deflate".to_string())?;
            input = &input[(inflater.total_in() - before) as usize..];
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
            if inflater.total_in() == before && out.len() == before_out && out.len() < out.capacity() {
                return Err("bad_deflate".into());
            }
            if out.len() > crate::limits::CARRY_BYTES_MAX {
                return Err("inflated_too_big".into());
            }
            out.reserve(out.capacity());
        }
    }
    Ok(())
}

/// `Sec-WebSocket-Accept` for a key (RFC 6455 §4.2.2).
pub fn accept_key(key: &str) -> String {
    use base64::Engine;
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key.trim().as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes())
}

/// Position just past the blank line ending an HTTP head, if it has arrived.
pub fn http_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Status code of an HTTP response head (`HTTP/1.1 101 ...`).
pub fn http_status(head: &[u8]) -> Option<u16> {
    let line_end = head.iter().position(|&b| b == b'\r')?;
    let line = std::str::from_utf8(&head[..line_end]).ok()?;
    line.split(' ').nth(1)?.parse().ok()
}

/// Value of a header (case-insensitive name) in an HTTP head.
pub fn http_header<'a>(head: &'a [u8], name: &str) -> Option<&'a str> {
    let text = std::str::from_utf8(head).ok()?;
    text.split("\r\n").skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The stamp keys as they read when the data JSON travels inside a JSON string (Pusher's
/// `data` is a string: `"data":"{\"lt_ns\":..`); the digits after them are unchanged.
const ESCAPED_TIMESTAMP_KEY: &[u8] = b"\\\"lt_ns\\\":";
const ESCAPED_COUNTER_KEY: &[u8] = b"\\\"lt_n\\\":";

/// The send timestamp in a payload, if present (as JSON, or escaped inside a string).
pub fn find_timestamp(payload: &[u8]) -> Option<u64> {
    find_digits_after(payload, TIMESTAMP_KEY).or_else(|| find_digits_after(payload, ESCAPED_TIMESTAMP_KEY))
}

/// The publisher's message number in a payload, if present (as JSON, or escaped).
pub fn find_counter(payload: &[u8]) -> Option<u64> {
    find_digits_after(payload, COUNTER_KEY).or_else(|| find_digits_after(payload, ESCAPED_COUNTER_KEY))
}

fn find_digits_after(payload: &[u8], key: &[u8]) -> Option<u64> {
    let at = find(payload, key)? + key.len();
    let digits = payload[at..].iter().take_while(|b| b.is_ascii_digit());
    let mut value: u64 = 0;
    let mut count = 0;
    for d in digits {
        value = value.checked_mul(10)?.checked_add((d - b'0') as u64)?;
        count += 1;
    }
    (count > 0).then_some(value)
}

/// Writes `value` as exactly `dst.len()` zero-padded digits.
pub fn write_fixed(dst: &mut [u8], value: u64) {
    let mut v = value;
    for slot in dst.iter_mut().rev() {
        *slot = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// Writes `value` left-aligned in `dst`, padded with spaces: still a valid JSON number
/// (whitespace may follow a value; leading zeros may not precede one).
pub fn write_padded(dst: &mut [u8], value: u64) {
    let digits = value.to_string();
    assert!(digits.len() <= dst.len(), "{value} does not fit in {} digits", dst.len());
    dst[..digits.len()].copy_from_slice(digits.as_bytes());
    dst[digits.len()..].fill(b' ');
}

/// Writes `ns` as exactly TIMESTAMP_DIGITS zero-padded digits (ns since 2001 have 19
/// digits, so no leading zero appears and the JSON stays valid).
pub fn write_timestamp(dst: &mut [u8], ns: u64) {
    debug_assert_eq!(dst.len(), TIMESTAMP_DIGITS);
    write_fixed(dst, ns);
}

/// A message's `data` JSON with its two patchable fields.
#[derive(Debug, Clone)]
pub struct PayloadTemplate {
    pub text: String,
    /// Offset of the TIMESTAMP_DIGITS timestamp digits.
    pub ts_at: usize,
    /// Offset of the COUNTER_DIGITS message-number digits.
    pub n_at: usize,
}

/// The `data` JSON for a `payload_bytes`-byte message:
/// `{"lt_ns":<19 digits>,"lt_n":<12 digits>,"pad":"xx.."}` (longer when asked for less);
/// with `--pad telemetry`, `{"lt_ns":..,"lt_n":..,"readings":[..],"pad":"<digits>"}` of
/// the same length (see [`telemetry_members`]).
pub fn payload_template(payload_bytes: usize) -> PayloadTemplate {
    payload_template_with(payload_bytes, TELEMETRY_PAD.load(std::sync::atomic::Ordering::Relaxed))
}

/// [`payload_template`] with the padding chosen by the caller (`telemetry`: readings).
pub fn payload_template_with(payload_bytes: usize, telemetry: bool) -> PayloadTemplate {
    let fixed = TIMESTAMP_KEY.len() + TIMESTAMP_DIGITS + 1 + COUNTER_KEY.len() + COUNTER_DIGITS + r#"{,"pad":""}"#.len();
    let pad = payload_bytes.saturating_sub(fixed);
    let members = if telemetry {
        telemetry_members(pad + r#""pad":"""#.len())
    } else {
        format!("\"pad\":\"{}\"", "x".repeat(pad))
    };
    let text = format!(
        "{{\"lt_ns\":{},\"lt_n\":{},{}}}",
        "1".repeat(TIMESTAMP_DIGITS),
        format!("0{}", " ".repeat(COUNTER_DIGITS - 1)),
        members
    );
    let ts_at = 1 + TIMESTAMP_KEY.len();
    let n_at = ts_at + TIMESTAMP_DIGITS + 1 + COUNTER_KEY.len();
    PayloadTemplate { text, ts_at, n_at }
}

/// `--pad telemetry` (set once at start-up by `main`): the payload reads like a device's
/// batch of readings instead of `xxx..`, so compression ratios are those of telemetry, not
/// of a run of one letter (which deflates ~100x and would flatter compression).
pub static TELEMETRY_PAD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The seed of the readings' random walks: fixed, so every run (and every harness) sends
/// the same bytes and compression figures compare across runs.
pub const TELEMETRY_SEED: u64 = 0x9E37_79B9_7F4A_7C15;

/// One sensor of the simulated device: name, unit, start value and walk step in units of
/// its precision (`decimals` digits after the point), as real firmware reports them.
struct Sensor {
    name: &'static str,
    unit: &'static str,
    start: i64,
    step_max: i64,
    decimals: u32,
}

const SENSORS: [Sensor; 4] = [
    Sensor { name: "temp", unit: "C", start: 215, step_max: 2, decimals: 1 },
    Sensor { name: "humidity", unit: "%", start: 450, step_max: 5, decimals: 1 },
    Sensor { name: "pressure", unit: "hPa", start: 101_325, step_max: 8, decimals: 2 },
    Sensor { name: "battery", unit: "V", start: 330, step_max: 1, decimals: 2 },
];

/// Exactly `n` bytes of JSON object members: `"readings":[..]`, an array of readings like
/// `{"device":"dev-0042","sensor":"temp","ts":1733450000123,"value":21.5,"unit":"C"}` —
/// every sensor sampled once per second (timestamps increase, with a few ms of jitter),
/// each value a small random walk at its fixed precision (seed [`TELEMETRY_SEED`]) — then
/// `,"pad":"<digits>"` for the bytes left over (less than one reading; random digits, so
/// they rather understate the ratio). Below one reading: `"pad":"<digits>"` alone.
pub fn telemetry_members(n: usize) -> String {
    let mut x = TELEMETRY_SEED;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut values: Vec<i64> = SENSORS.iter().map(|s| s.start).collect();
    let mut ts: u64 = 1_733_450_000_123;
    let mut readings: Vec<String> = Vec::new();
    let mut used = r#""readings":[]"#.len();
    let pad_min = r#","pad":"""#.len();
    'rounds: loop {
        for (k, s) in SENSORS.iter().enumerate() {
            let r = next();
            values[k] += (r % (2 * s.step_max as u64 + 1)) as i64 - s.step_max;
            let scale = 10i64.pow(s.decimals);
            let v = values[k];
            let value = format!("{}{}.{:0width$}", if v < 0 { "-" } else { "" }, v.abs() / scale, v.abs() % scale, width = s.decimals as usize);
            let reading = format!(
                r#"{{"device":"dev-0042","sensor":"{}","ts":{},"value":{},"unit":"{}"}}"#,
                s.name,
                ts + (r >> 32) % 7,
                value,
                s.unit
            );
            let cost = reading.len() + usize::from(!readings.is_empty());
            // Stop while the rest still fits a (possibly empty) pad field or is exactly 0.
            let left = n.saturating_sub(used + cost);
            if used + cost > n || (left > 0 && left < pad_min) {
                break 'rounds;
            }
            used += cost;
            readings.push(reading);
        }
        ts += 1000;
    }
    let digits = |len: usize, next: &mut dyn FnMut() -> u64| -> String { (0..len).map(|_| char::from(b'0' + (next() % 10) as u8)).collect() };
    if readings.is_empty() {
        return format!(r#""pad":"{}""#, digits(n.saturating_sub(r#""pad":"""#.len()), &mut next));
    }
    let mut out = format!(r#""readings":[{}]"#, readings.join(","));
    if out.len() < n {
        let fill = digits(n - out.len() - pad_min, &mut next);
        out.push_str(&format!(r#","pad":"{fill}""#));
    }
    debug_assert_eq!(out.len(), n);
    out
}

/// The template's text and timestamp offset (the `limit` server patches only that).
pub fn payload_json(payload_bytes: usize) -> (String, usize) {
    let t = payload_template(payload_bytes);
    (t.text, t.ts_at)
}

/// Finds a small unsigned integer field (`"id":17`) in a JSON text.
pub fn find_u64_field(text: &[u8], key: &[u8]) -> Option<u64> {
    let at = find(text, key)? + key.len();
    let rest = &text[at..];
    let start = rest.iter().position(|b| !b.is_ascii_whitespace())?;
    let digits: Vec<u8> = rest[start..].iter().take_while(|b| b.is_ascii_digit()).copied().collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    find(haystack, needle).is_some()
}

/// Mask for client frames. A fixed mask is allowed by RFC 6455 in practice (servers only
/// unmask); a random one per frame would cost a syscall or an RNG in the hot loop.
pub const MASK: [u8; 4] = [0x5a, 0x17, 0xc3, 0x2e];

/// The raw JSON value after `key` (a string with its quotes, or a bare scalar), without
/// parsing the whole frame. `None` when absent or cut short.
pub fn raw_json_field<'a>(text: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let at = text.windows(key.len()).position(|w| w == key)? + key.len();
    let rest = &text[at..];
    let start = rest.iter().position(|b| !b.is_ascii_whitespace())?;
    let rest = &rest[start..];
    if rest.first() == Some(&b'"') {
        let mut escaped = false;
        for (i, &b) in rest.iter().enumerate().skip(1) {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => return Some(&rest[..=i]),
                _ => {}
            }
        }
        None
    } else {
        let end = rest.iter().position(|&b| b == b',' || b == b'}' || b.is_ascii_whitespace())?;
        (end > 0).then(|| &rest[..end])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lengths_round_trip() {
        for len in [0usize, 1, 125, 126, 200, 65535, 65536, 100_000] {
            let payload = vec![b'a'; len];
            let mut out = Vec::new();
            encode_server_frame(&mut out, OPCODE_TEXT, &payload);
            let h = parse_header(&out).unwrap();
            assert_eq!((h.fin, h.opcode, h.mask, h.payload_len), (true, OPCODE_TEXT, None, len as u64));
            assert_eq!(h.frame_len() as usize, out.len());
            // Every strict prefix of the header is "need more", never a wrong header.
            for cut in 0..h.header_len {
                assert_eq!(parse_header(&out[..cut]), None, "len {len} cut {cut}");
            }
        }
    }

    #[test]
    fn masked_client_frame_unmasks() {
        let mut out = Vec::new();
        encode_client_frame(&mut out, OPCODE_TEXT, br#"{"op":"sub","ch":"bench","id":1}"#, [1, 2, 3, 4]);
        let h = parse_header(&out).unwrap();
        assert_eq!(h.mask, Some([1, 2, 3, 4]));
        assert_eq!(h.header_len, 6);
        let mut body = out[h.header_len..].to_vec();
        unmask(&mut body, h.mask.unwrap());
        assert_eq!(body, br#"{"op":"sub","ch":"bench","id":1}"#);
        assert_eq!(find_u64_field(&body, b"\"id\":"), Some(1));
    }

    #[test]
    fn rfc_accept_key() {
        assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn http_head_parsing() {
        let head = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: abc\r\n\r\nrest";
        let end = http_head_end(head).unwrap();
        assert_eq!(&head[end..], b"rest");
        assert_eq!(http_status(head), Some(101));
        assert_eq!(http_header(&head[..end], "sec-websocket-accept"), Some("abc"));
        assert_eq!(http_head_end(b"HTTP/1.1 101 OK\r\n"), None);
    }

    #[test]
    fn timestamp_patch_and_find() {
        let (text, at) = payload_json(200);
        assert_eq!(text.len(), 200);
        let mut bytes = text.into_bytes();
        write_timestamp(&mut bytes[at..at + TIMESTAMP_DIGITS], 1_700_000_000_123_456_789);
        let frame = format!(r#"{{"op":"msg","ch":"bench","data":{}}}"#, String::from_utf8(bytes).unwrap());
        assert_eq!(find_timestamp(frame.as_bytes()), Some(1_700_000_000_123_456_789));
        assert_eq!(find_timestamp(b"{\"op\":\"ok\"}"), None);
        // Small payloads still carry the timestamp.
        assert!(payload_json(10).0.contains("lt_ns"));
        let t = payload_template(200);
        assert_eq!(t.text.len(), 200);
        let mut b = t.text.into_bytes();
        write_padded(&mut b[t.n_at..t.n_at + COUNTER_DIGITS], 42);
        write_timestamp(&mut b[t.ts_at..t.ts_at + TIMESTAMP_DIGITS], 1_700_000_000_123_456_789);
        let v: serde_json::Value = serde_json::from_slice(&b).expect("the stamped payload is valid JSON");
        assert_eq!((v["lt_n"].as_u64(), v["lt_ns"].as_u64()), (Some(42), Some(1_700_000_000_123_456_789)));
        assert_eq!(find_counter(&b), Some(42));
        assert!(serde_json::from_str::<serde_json::Value>(&payload_template(10).text).is_ok(), "the unstamped template is valid JSON too");
        assert_eq!(find_counter(b"{\"lt_ns\":5}"), None, "lt_ns is not lt_n");
        // Inside a JSON string (Pusher's `data`), escaped.
        let wrapped = serde_json::json!({"event": "lt", "data": String::from_utf8(b).unwrap()}).to_string();
        assert_eq!(find_timestamp(wrapped.as_bytes()), Some(1_700_000_000_123_456_789), "{wrapped}");
        assert_eq!(find_counter(wrapped.as_bytes()), Some(42));
        assert_eq!(find_counter(br#"{"data":"{\"lt_ns\":5}"}"#), None, "escaped lt_ns is not lt_n");
    }

    /// Raw deflate (as permessage-deflate sends it) of one message on its own, at zlib's
    /// default level (the gateway's default `compression_level`).
    fn deflated_len(data: &[u8]) -> usize {
        let mut c = flate2::Compress::new(flate2::Compression::default(), false);
        let mut out = Vec::with_capacity(data.len() + 64);
        c.compress_vec(data, &mut out, flate2::FlushCompress::Finish).unwrap();
        out.len()
    }

    #[test]
    fn telemetry_payload_is_readings_of_the_asked_length() {
        for len in [60usize, 100, 150, 200, 333, 1000, 4096] {
            let t = payload_template_with(len, true);
            assert_eq!(t.text.len(), len.max(payload_template_with(0, true).text.len()), "length {len}");
            let v: serde_json::Value = serde_json::from_str(&t.text).unwrap_or_else(|e| panic!("length {len}: {e}: {}", t.text));
            assert!(v["lt_ns"].is_u64(), "length {len}");
        }
        let v: serde_json::Value = serde_json::from_str(&payload_template_with(1000, true).text).unwrap();
        let readings = v["readings"].as_array().expect("a readings array");
        assert!(readings.len() >= 8, "1000 bytes hold several readings: {}", readings.len());
        let mut last: std::collections::HashMap<String, (u64, f64)> = Default::default();
        for r in readings {
            assert_eq!(r["device"], "dev-0042");
            let sensor = r["sensor"].as_str().unwrap().to_string();
            let (ts, value) = (r["ts"].as_u64().unwrap(), r["value"].as_f64().unwrap());
            if let Some((ts0, v0)) = last.insert(sensor.clone(), (ts, value)) {
                assert!(ts > ts0, "{sensor}: timestamps increase ({ts0} then {ts})");
                assert!((value - v0).abs() <= 0.5 + 1e-9, "{sensor}: a small step ({v0} then {value})");
            }
        }
        assert!(last.len() >= 4, "several sensors: {last:?}");
        assert_eq!(payload_template_with(1000, true).text, payload_template_with(1000, true).text, "a fixed seed: the same bytes every run");
    }

    #[test]
    fn telemetry_payload_deflates_like_telemetry_not_like_one_letter() {
        // Measured, not assumed: the issue's target (>= 3x for typical telemetry JSON) must
        // be reachable on the benchmark's 1000-byte payload, and it must not flatter like
        // `xxx..` does.
        for len in [500usize, 1000, 4000] {
            let telemetry = payload_template_with(len, true).text;
            let letters = payload_template_with(len, false).text;
            let ratio = telemetry.len() as f64 / deflated_len(telemetry.as_bytes()) as f64;
            let letters_ratio = letters.len() as f64 / deflated_len(letters.as_bytes()) as f64;
            println!("{len} B: telemetry deflates {ratio:.2}x, x-padding {letters_ratio:.2}x");
            // A short batch shares less between its readings: ~2.7x at 500 B.
            let target = if len >= 1000 { 3.0 } else { 2.0 };
            assert!(ratio >= target, "{len} B of readings deflate only {ratio:.2}x");
            assert!(ratio < letters_ratio / 2.0, "{len} B of readings deflate {ratio:.2}x, as flattering as one letter ({letters_ratio:.2}x)");
        }
    }
}
