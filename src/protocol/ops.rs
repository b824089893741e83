//! Protocol v1 JSON frames (PROTOCOL.md, "Frames"): client text → [`ClientOp`], and the
//! server frames as ready-to-send JSON bytes.
//!
//! Owns: the shape of every frame and the JSON string escaping used for them. Does not
//! own: channel-name syntax and permissions (`channel`), WebSocket framing (the caller wraps
//! these bytes), any I/O, clock or state. Pure functions, called on the shard thread that
//! owns the connection (and by the bridge when it encodes a broadcast once).
//!
//! Parsing is on the hot path: one serde pass into a flat struct that borrows from the
//! input (strings without escapes and `data` stay zero-copy), then a per-op check. Only
//! the error path parses a second time, to recover the `id` for the `err` reply.
//! Building is hand-written (no `serde_json::Value`) so a `msg` costs one `Vec` append.

use std::borrow::Cow;
use std::fmt;

use base64::Engine as _;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

/// Code of every frame-level error: PROTOCOL.md "400 bad frame/op".
pub const OP_ERROR_CODE: u16 = 400;

/// Longest piece of client input (an unknown op name) echoed back in an `err` message.
/// The echo helps a developer spot a typo; more than this only inflates error frames
/// that an abusive client can make us send.
const ERROR_ECHO_BYTES_MAX: usize = 64;

/// One parsed client frame. Strings borrow from the frame text unless they contained
/// JSON escapes; `data` is always the exact bytes the client sent.
#[derive(Debug)]
pub enum ClientOp<'a> {
    Sub {
        id: Option<u32>,
        ch: Cow<'a, str>,
        since: Option<u64>,
        presence: bool,
    },
    Unsub {
        id: Option<u32>,
        ch: Cow<'a, str>,
    },
    Pub {
        id: Option<u32>,
        ch: Cow<'a, str>,
        data: &'a RawValue,
    },
    Ack {
        nid: Cow<'a, str>,
    },
    Presence {
        id: Option<u32>,
        ch: Cow<'a, str>,
    },
    Ping {
        id: Option<u32>,
    },
}

impl ClientOp<'_> {
    /// The correlation id the reply must carry (`ack` has none in protocol v1).
    pub fn id(&self) -> Option<u32> {
        match self {
            ClientOp::Sub { id, .. }
            | ClientOp::Unsub { id, .. }
            | ClientOp::Pub { id, .. }
            | ClientOp::Presence { id, .. }
            | ClientOp::Ping { id } => *id,
            ClientOp::Ack { .. } => None,
        }
    }
}

/// A frame the server answers with `err` (the connection stays open).
#[derive(Debug)]
pub struct OpError {
    /// The frame's `id` when it could be recovered, so the client can correlate.
    pub id: Option<u32>,
    pub code: u16,
    pub msg: String,
}

impl OpError {
    fn bad_frame(id: Option<u32>, msg: String) -> Self {
        OpError {
            id,
            code: OP_ERROR_CODE,
            msg,
        }
    }

    /// The `err` frame answering this error.
    pub fn frame(&self) -> Vec<u8> {
        err(self.id, self.code, &self.msg)
    }
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.msg)
    }
}

impl std::error::Error for OpError {}

/// A JSON string that borrows from the input when it has no escapes.
/// (`Option<Cow<str>>` with `#[serde(borrow)]` always allocates — serde#1497.)
struct JsonStr<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for JsonStr<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StrVisitor;
        impl<'de> Visitor<'de> for StrVisitor {
            type Value = JsonStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(JsonStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(JsonStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(JsonStr(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(StrVisitor)
    }
}

/// `data` present (even as `null`) is `Some`: `null` is a JSON value a client may publish.
fn present_raw_value<'de: 'a, 'a, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<&'a RawValue>, D::Error> {
    <&'de RawValue>::deserialize(deserializer).map(Some)
}

/// Every field any client op uses; unknown fields are ignored (forward compatibility).
#[derive(Deserialize)]
#[serde(expecting = "a JSON object frame")]
struct RawOp<'a> {
    #[serde(borrow, default)]
    op: Option<JsonStr<'a>>,
    #[serde(default)]
    id: Option<u32>,
    #[serde(borrow, default)]
    ch: Option<JsonStr<'a>>,
    #[serde(borrow, default, deserialize_with = "present_raw_value")]
    data: Option<&'a RawValue>,
    #[serde(default)]
    since: Option<u64>,
    #[serde(default)]
    presence: Option<bool>,
    #[serde(borrow, default)]
    nid: Option<JsonStr<'a>>,
}

/// Error path only: the frame's `id`, if the frame is JSON with a valid u32 `id`.
fn recover_id(text: &str) -> Option<u32> {
    #[derive(Deserialize)]
    struct IdOnly {
        #[serde(default)]
        id: Option<u32>,
    }
    serde_json::from_str::<IdOnly>(text)
        .ok()
        .and_then(|frame| frame.id)
}

fn required<'a>(
    field: Option<JsonStr<'a>>,
    id: Option<u32>,
    name: &str,
    op: &str,
) -> Result<Cow<'a, str>, OpError> {
    field
        .map(|value| value.0)
        .ok_or_else(|| OpError::bad_frame(id, format!("missing field '{name}' for op '{op}'")))
}

/// Parses one client text frame. Channel syntax and permissions are checked by the caller.
pub fn parse_client_op(text: &str) -> Result<ClientOp<'_>, OpError> {
    // serde's derived struct also accepts a JSON array (fields by position); frames are
    // objects only, so `["sub",1,"a"]` is not an op.
    if !text.trim_start().starts_with('{') {
        return Err(OpError::bad_frame(
            None,
            "frame must be a JSON object".to_owned(),
        ));
    }
    let raw: RawOp<'_> = serde_json::from_str(text)
        .map_err(|error| OpError::bad_frame(recover_id(text), error.to_string()))?;
    let id = raw.id;
    let Some(op) = raw.op else {
        return Err(OpError::bad_frame(id, "missing field 'op'".to_owned()));
    };
    let op = op.0;
    match &*op {
        "sub" => Ok(ClientOp::Sub {
            id,
            ch: required(raw.ch, id, "ch", "sub")?,
            since: raw.since,
            presence: raw.presence.unwrap_or(false),
        }),
        "unsub" => Ok(ClientOp::Unsub {
            id,
            ch: required(raw.ch, id, "ch", "unsub")?,
        }),
        "pub" => {
            let ch = required(raw.ch, id, "ch", "pub")?;
            let data = raw.data.ok_or_else(|| {
                OpError::bad_frame(id, "missing field 'data' for op 'pub'".to_owned())
            })?;
            Ok(ClientOp::Pub { id, ch, data })
        }
        "ack" => Ok(ClientOp::Ack {
            nid: required(raw.nid, id, "nid", "ack")?,
        }),
        "presence" => Ok(ClientOp::Presence {
            id,
            ch: required(raw.ch, id, "ch", "presence")?,
        }),
        "ping" => Ok(ClientOp::Ping { id }),
        unknown => {
            let mut echo = String::with_capacity(ERROR_ECHO_BYTES_MAX + 8);
            push_truncated_echo(&mut echo, unknown);
            Err(OpError::bad_frame(id, format!("unknown op '{echo}'")))
        }
    }
}

/// Up to `ERROR_ECHO_BYTES_MAX` bytes of `s`, cut on a char boundary.
fn push_truncated_echo(out: &mut String, s: &str) {
    if s.len() <= ERROR_ECHO_BYTES_MAX {
        out.push_str(s);
        return;
    }
    let mut end = ERROR_ECHO_BYTES_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.push_str(&s[..end]);
    out.push_str("...");
}

// ---------------------------------------------------------------------------------------
// Server frames.

/// Room for the fixed part of a small frame, so building it never reallocates.
const FRAME_OVERHEAD_BYTES: usize = 64;

/// `{"op":"welcome","conn":..,"node":"..","hb":..}` — the first frame after connect.
pub fn welcome(conn: u64, node: &str, hb_secs: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_OVERHEAD_BYTES + node.len());
    out.extend_from_slice(b"{\"op\":\"welcome\",\"conn\":");
    push_u64(&mut out, conn);
    out.extend_from_slice(b",\"node\":\"");
    escape_json_str_into(&mut out, node);
    out.extend_from_slice(b"\",\"hb\":");
    push_u64(&mut out, hb_secs);
    out.push(b'}');
    out
}

/// `{"op":"ok","id":1}` (no `id` when the op had none).
pub fn ok(id: Option<u32>) -> Vec<u8> {
    ok_with(id, "")
}

/// `ok` with result fields: `extra_fields_json` is a comma-separated list of complete JSON
/// members such as `"members":[..]`, inserted verbatim (the caller builds it as JSON).
pub fn ok_with(id: Option<u32>, extra_fields_json: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_OVERHEAD_BYTES + extra_fields_json.len());
    out.extend_from_slice(b"{\"op\":\"ok\"");
    push_id(&mut out, id);
    if !extra_fields_json.is_empty() {
        out.push(b',');
        out.extend_from_slice(extra_fields_json.as_bytes());
    }
    out.push(b'}');
    out
}

/// `{"op":"err","id":1,"code":400,"msg":".."}`.
pub fn err(id: Option<u32>, code: u16, msg: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_OVERHEAD_BYTES + msg.len());
    out.extend_from_slice(b"{\"op\":\"err\"");
    push_id(&mut out, id);
    out.extend_from_slice(b",\"code\":");
    push_u64(&mut out, u64::from(code));
    out.extend_from_slice(b",\"msg\":\"");
    escape_json_str_into(&mut out, msg);
    out.extend_from_slice(b"\"}");
    out
}

/// `{"op":"pong","id":1}` (no `id` when the ping had none).
pub fn pong(id: Option<u32>) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_OVERHEAD_BYTES);
    out.extend_from_slice(b"{\"op\":\"pong\"");
    push_id(&mut out, id);
    out.push(b'}');
    out
}

/// Appends `{"op":"msg","ch":"a.b","data":<data_json verbatim>,"seq":N}` to `out`
/// (`seq` only on history-enabled channels). `data_json` must be one valid JSON value —
/// use [`data_from_payload`] for bytes of unknown shape.
pub fn msg_into(out: &mut Vec<u8>, ch: &str, data_json: &[u8], seq: Option<u64>) {
    debug_assert!(is_json_value(data_json), "msg data must be a JSON value");
    out.reserve(FRAME_OVERHEAD_BYTES + ch.len() + data_json.len());
    out.extend_from_slice(b"{\"op\":\"msg\",\"ch\":\"");
    escape_json_str_into(out, ch);
    out.extend_from_slice(b"\",\"data\":");
    out.extend_from_slice(data_json);
    if let Some(seq) = seq {
        out.extend_from_slice(b",\"seq\":");
        push_u64(out, seq);
    }
    out.push(b'}');
}

/// Appends `{"op":"join"|"leave","ch":..,"user":..,"conn":..,"node":..}` to `out` (`user`
/// null for an anonymous connection; connection ids are unique per node only, so the
/// node that holds the connection comes with it, as in the member list). `info`: the
/// member's info JSON, appended verbatim as `"info"` (the Pusher adapter's joins carry
/// `user_info` for `member_added`; protocol v1 frames are sent without).
pub fn presence_change_into(out: &mut Vec<u8>, joined: bool, ch: &str, user: Option<&str>, conn: u64, node: &str, info: Option<&str>) {
    out.reserve(FRAME_OVERHEAD_BYTES + ch.len() + user.map_or(0, str::len) + node.len() + info.map_or(0, str::len));
    out.extend_from_slice(if joined {
        b"{\"op\":\"join\",\"ch\":\""
    } else {
        b"{\"op\":\"leave\",\"ch\":\""
    });
    escape_json_str_into(out, ch);
    match user {
        Some(user) => {
            out.extend_from_slice(b"\",\"user\":\"");
            escape_json_str_into(out, user);
            out.extend_from_slice(b"\"");
        }
        None => out.extend_from_slice(b"\",\"user\":null"),
    }
    out.extend_from_slice(b",\"conn\":");
    push_u64(out, conn);
    out.extend_from_slice(b",\"node\":\"");
    escape_json_str_into(out, node);
    out.extend_from_slice(b"\"");
    if let Some(info) = info {
        // Verbatim: a JSON value the presence change already carries.
        out.extend_from_slice(b",\"info\":");
        out.extend_from_slice(info.as_bytes());
    }
    out.push(b'}');
}

/// Appends `{"op":"notify","nid":"..","data":<data_json verbatim>,"ts":N}` to `out`.
/// The unit of `ts` is the caller's (the notification lane's) choice.
pub fn notify_into(out: &mut Vec<u8>, nid: &str, data_json: &[u8], ts: u64) {
    debug_assert!(is_json_value(data_json), "notify data must be a JSON value");
    out.reserve(FRAME_OVERHEAD_BYTES + nid.len() + data_json.len());
    out.extend_from_slice(b"{\"op\":\"notify\",\"nid\":\"");
    escape_json_str_into(out, nid);
    out.extend_from_slice(b"\",\"data\":");
    out.extend_from_slice(data_json);
    out.extend_from_slice(b",\"ts\":");
    push_u64(out, ts);
    out.push(b'}');
}

/// A broker payload as a frame's `data`: valid UTF-8 JSON is used verbatim (borrowed);
/// anything else becomes `{"b64":"<standard base64>"}` (PROTOCOL.md, non-JSON payloads).
/// (Validation skips values without recursion, so deep nesting cannot overflow the stack.)
pub fn data_from_payload(payload: &[u8]) -> Cow<'_, [u8]> {
    if is_json_value(payload) {
        return Cow::Borrowed(payload);
    }
    let engine = &base64::engine::general_purpose::STANDARD;
    let mut out = Vec::with_capacity(payload.len() * 4 / 3 + 16);
    out.extend_from_slice(b"{\"b64\":\"");
    // Base64 output is ASCII without quotes or backslashes: no escaping needed.
    out.extend_from_slice(engine.encode(payload).as_bytes());
    out.extend_from_slice(b"\"}");
    Cow::Owned(out)
}

/// True when `bytes` is exactly one JSON value (surrounding whitespace allowed).
fn is_json_value(bytes: &[u8]) -> bool {
    match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::from_str::<de::IgnoredAny>(text).is_ok(),
        Err(_) => false,
    }
}

/// What a byte turns into inside a JSON string: 0 = itself, else the escape letter
/// (`u` = `\u00XX`). Quote, backslash and control characters only; everything else,
/// including non-ASCII UTF-8, is copied as is.
const ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut byte = 0;
    while byte < 0x20 {
        table[byte] = b'u';
        byte += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0a] = b'n';
    table[0x0c] = b'f';
    table[0x0d] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

/// Appends the JSON-escaped *contents* of `s` to `out` — without the surrounding quotes
/// (the caller writes them). Runs that need no escape are copied in one slice.
pub fn escape_json_str_into(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    let mut run_start = 0;
    for (index, &byte) in bytes.iter().enumerate() {
        let escape = ESCAPE[byte as usize];
        if escape == 0 {
            continue;
        }
        out.extend_from_slice(&bytes[run_start..index]);
        run_start = index + 1;
        if escape == b'u' {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[(byte >> 4) as usize]);
            out.push(HEX[(byte & 0xf) as usize]);
        } else {
            out.push(b'\\');
            out.push(escape);
        }
    }
    out.extend_from_slice(&bytes[run_start..]);
}

/// Appends `"<escaped s>"` (with quotes) to `out`.
pub fn json_str_into(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    escape_json_str_into(out, s);
    out.push(b'"');
}

fn push_id(out: &mut Vec<u8>, id: Option<u32>) {
    if let Some(id) = id {
        out.extend_from_slice(b",\"id\":");
        push_u64(out, u64::from(id));
    }
}

/// Decimal without going through `fmt` (this runs once per outbound frame).
fn push_u64(out: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20]; // u64::MAX has 20 decimal digits.
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn parse_ok(text: &str) -> ClientOp<'_> {
        parse_client_op(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn parse_err(text: &str) -> OpError {
        match parse_client_op(text) {
            Ok(op) => panic!("{text} parsed as {op:?}"),
            Err(error) => {
                assert_eq!(error.code, 400, "{text}");
                error
            }
        }
    }

    fn as_json(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes)
            .unwrap_or_else(|e| panic!("{}: {e}", String::from_utf8_lossy(bytes)))
    }

    #[test]
    fn sub_happy_paths() {
        match parse_ok(r#"{"op":"sub","ch":"a.b"}"#) {
            ClientOp::Sub {
                id: None,
                ch,
                since: None,
                presence: false,
            } => {
                assert_eq!(ch, "a.b");
                assert!(matches!(ch, Cow::Borrowed(_)), "no escapes: borrowed");
            }
            other => panic!("{other:?}"),
        }
        match parse_ok(
            r#"{"id":7,"since":18446744073709551615,"presence":true,"op":"sub","ch":"x.*"}"#,
        ) {
            ClientOp::Sub {
                id: Some(7),
                ch,
                since: Some(u64::MAX),
                presence: true,
            } => assert_eq!(ch, "x.*"),
            other => panic!("{other:?}"),
        }
        // null optional fields mean absent.
        assert!(matches!(
            parse_ok(r#"{"op":"sub","ch":"a","id":null,"since":null,"presence":null}"#),
            ClientOp::Sub {
                id: None,
                since: None,
                presence: false,
                ..
            }
        ));
    }

    #[test]
    fn other_ops_happy_paths() {
        match parse_ok(r#"{"op":"unsub","ch":"a.b","id":2}"#) {
            ClientOp::Unsub { id: Some(2), ch } => assert_eq!(ch, "a.b"),
            other => panic!("{other:?}"),
        }
        match parse_ok(r#"{"op":"ack","nid":"n-1"}"#) {
            ClientOp::Ack { nid } => assert_eq!(nid, "n-1"),
            other => panic!("{other:?}"),
        }
        match parse_ok(r#"{"op":"presence","ch":"room.1","id":3}"#) {
            ClientOp::Presence { id: Some(3), ch } => assert_eq!(ch, "room.1"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_ok(r#"{"op":"ping"}"#),
            ClientOp::Ping { id: None }
        ));
        assert!(matches!(
            parse_ok(r#"{"op":"ping","id":4294967295}"#),
            ClientOp::Ping { id: Some(u32::MAX) }
        ));
        assert_eq!(parse_ok(r#"{"op":"ping","id":9}"#).id(), Some(9));
    }

    #[test]
    fn pub_keeps_data_byte_for_byte() {
        let data = r#"{ "k" : [1, 2.50, "\u00e9\n"], "z":null }"#;
        let text = format!(r#"{{"op":"pub","ch":"a.b","id":5,"data":{data}}}"#);
        match parse_ok(&text) {
            ClientOp::Pub {
                id: Some(5),
                ch,
                data: raw,
            } => {
                assert_eq!(ch, "a.b");
                assert_eq!(raw.get(), data);
            }
            other => panic!("{other:?}"),
        }
        for data in ["null", "0", "\"s\"", "[]", "-1.5e3", "true"] {
            let text = format!(r#"{{"op":"pub","ch":"c","data":{data}}}"#);
            match parse_ok(&text) {
                ClientOp::Pub { data: raw, .. } => assert_eq!(raw.get(), data),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn escaped_strings_are_decoded() {
        match parse_ok(r#"{"op":"s\u0075b","ch":"a\u002eb"}"#) {
            ClientOp::Sub { ch, .. } => {
                assert_eq!(ch, "a.b");
                assert!(matches!(ch, Cow::Owned(_)));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_extra_fields_are_ignored() {
        let op = parse_ok(r#"{"op":"ping","id":1,"future":{"nested":[1,2]},"v":2}"#);
        assert!(matches!(op, ClientOp::Ping { id: Some(1) }));
    }

    #[test]
    fn deep_nesting_does_not_overflow() {
        let deep = "[".repeat(100_000) + &"]".repeat(100_000);
        let text = format!(r#"{{"op":"pub","ch":"a","data":{deep}}}"#);
        assert!(matches!(parse_ok(&text), ClientOp::Pub { .. }));
        let text = format!(r#"{{"op":"ping","ext":{deep}}}"#);
        assert!(matches!(parse_ok(&text), ClientOp::Ping { .. }));
    }

    #[test]
    fn unknown_op_echoes_name_and_id() {
        let error = parse_err(r#"{"op":"subscribe","id":11,"ch":"a"}"#);
        assert_eq!(error.msg, "unknown op 'subscribe'");
        assert_eq!(error.id, Some(11));
        let long = "x".repeat(1000);
        let error = parse_err(&format!(r#"{{"op":"{long}"}}"#));
        assert!(error.msg.len() < 100, "{}", error.msg);
    }

    #[test]
    fn missing_fields_are_named() {
        let cases = [
            (r#"{"id":1,"ch":"a"}"#, "missing field 'op'"),
            (r#"{"op":"sub","id":1}"#, "missing field 'ch' for op 'sub'"),
            (
                r#"{"op":"unsub","id":1}"#,
                "missing field 'ch' for op 'unsub'",
            ),
            (
                r#"{"op":"pub","id":1,"data":1}"#,
                "missing field 'ch' for op 'pub'",
            ),
            (
                r#"{"op":"pub","id":1,"ch":"a"}"#,
                "missing field 'data' for op 'pub'",
            ),
            (r#"{"op":"ack","id":1}"#, "missing field 'nid' for op 'ack'"),
            (
                r#"{"op":"presence","id":1}"#,
                "missing field 'ch' for op 'presence'",
            ),
        ];
        for (text, msg) in cases {
            let error = parse_err(text);
            assert_eq!(error.msg, msg, "{text}");
            assert_eq!(error.id, Some(1), "{text}");
        }
    }

    #[test]
    fn malformed_json_reports_serde_message() {
        let error = parse_err(r#"{"op":"sub","ch":"a""#);
        assert!(error.msg.contains("EOF"), "{}", error.msg);
        assert_eq!(error.id, None);
        for text in [
            "",
            "[]",
            "5",
            "\"sub\"",
            "null",
            "{op:sub}",
            "{\"op\":\"ping\"} x",
        ] {
            let error = parse_err(text);
            assert!(!error.msg.is_empty());
            assert_eq!(error.id, None, "{text}");
        }
        assert!(parse_err("[1]").msg.contains("JSON object"));
    }

    #[test]
    fn bad_id_is_rejected() {
        for id in ["-1", "4294967296", "1.5", "\"7\"", "true", "{}"] {
            let text = format!(r#"{{"op":"ping","id":{id}}}"#);
            let error = parse_err(&text);
            assert_eq!(error.id, None, "{text}");
        }
    }

    #[test]
    fn wrong_field_types_still_echo_the_id() {
        for text in [
            r#"{"op":"sub","id":42,"ch":5}"#,
            r#"{"op":"sub","id":42,"ch":"a","since":-1}"#,
            r#"{"op":"sub","id":42,"ch":"a","presence":"yes"}"#,
            r#"{"op":7,"id":42}"#,
            r#"{"op":"ack","id":42,"nid":1}"#,
        ] {
            let error = parse_err(text);
            assert_eq!(error.id, Some(42), "{text}: {}", error.msg);
        }
    }

    #[test]
    fn op_error_frame_is_an_err() {
        let frame = parse_err(r#"{"op":"nope","id":3}"#).frame();
        assert_eq!(
            as_json(&frame),
            json!({"op":"err","id":3,"code":400,"msg":"unknown op 'nope'"})
        );
    }

    #[test]
    fn server_frames_are_valid_json() {
        assert_eq!(
            as_json(&welcome(12, "node-\"1\"", 25)),
            json!({"op":"welcome","conn":12,"node":"node-\"1\"","hb":25})
        );
        assert_eq!(
            as_json(&welcome(u64::MAX, "", 0)),
            json!({"op":"welcome","conn":u64::MAX,"node":"","hb":0})
        );
        assert_eq!(as_json(&ok(Some(1))), json!({"op":"ok","id":1}));
        assert_eq!(as_json(&ok(None)), json!({"op":"ok"}));
        assert_eq!(
            as_json(&ok_with(
                Some(2),
                r#""members":[{"user":"u","conn":1,"info":null}]"#
            )),
            json!({"op":"ok","id":2,"members":[{"user":"u","conn":1,"info":null}]})
        );
        assert_eq!(
            as_json(&ok_with(None, r#""a":1"#)),
            json!({"op":"ok","a":1})
        );
        assert_eq!(
            as_json(&err(Some(9), 403, "not \"permitted\"\n")),
            json!({"op":"err","id":9,"code":403,"msg":"not \"permitted\"\n"})
        );
        assert_eq!(
            as_json(&err(None, 429, "slow")),
            json!({"op":"err","code":429,"msg":"slow"})
        );
        assert_eq!(as_json(&pong(Some(0))), json!({"op":"pong","id":0}));
        assert_eq!(as_json(&pong(None)), json!({"op":"pong"}));

        let mut out = Vec::new();
        msg_into(&mut out, "a.b", br#"{"x":[1,2]}"#, Some(77));
        assert_eq!(
            as_json(&out),
            json!({"op":"msg","ch":"a.b","data":{"x":[1,2]},"seq":77})
        );
        let start = out.len();
        msg_into(&mut out, "c", b"null", None);
        assert_eq!(
            &out[start..],
            br#"{"op":"msg","ch":"c","data":null}"#,
            "appends"
        );

        let mut out = Vec::new();
        presence_change_into(&mut out, true, "room", Some("al\"ice"), 3, "n1", None);
        assert_eq!(
            as_json(&out),
            json!({"op":"join","ch":"room","user":"al\"ice","conn":3,"node":"n1"})
        );
        let mut out = Vec::new();
        presence_change_into(&mut out, false, "room", Some("bob"), 4, "n1", None);
        assert_eq!(
            as_json(&out),
            json!({"op":"leave","ch":"room","user":"bob","conn":4,"node":"n1"})
        );
        let mut out = Vec::new();
        presence_change_into(&mut out, false, "room", None, 5, "n\"2", None);
        assert_eq!(as_json(&out), json!({"op":"leave","ch":"room","user":null,"conn":5,"node":"n\"2"}));
        let mut out = Vec::new();
        presence_change_into(&mut out, true, "room", Some("u1"), 6, "n1", Some(r#"{"name":"Ann"}"#));
        assert_eq!(as_json(&out), json!({"op":"join","ch":"room","user":"u1","conn":6,"node":"n1","info":{"name":"Ann"}}));
        let mut out = Vec::new();
        notify_into(&mut out, "n1", br#"{"a":1}"#, 1700000000000);
        assert_eq!(
            as_json(&out),
            json!({"op":"notify","nid":"n1","data":{"a":1},"ts":1700000000000u64})
        );
    }

    #[test]
    fn msg_data_is_verbatim() {
        let data = br#"{ "spaced" : 1.50 }"#;
        let mut out = Vec::new();
        msg_into(&mut out, "a", data, None);
        let text = std::str::from_utf8(&out).unwrap();
        assert!(text.contains(r#""data":{ "spaced" : 1.50 }"#), "{text}");
    }

    #[test]
    fn escaping_round_trips_every_control_and_special() {
        let mut s: String = (0u8..0x20).map(char::from).collect();
        s.push_str("\"\\/ plain é ✓ 😀 \u{7f} \u{2028}");
        let mut out = Vec::new();
        json_str_into(&mut out, &s);
        let back: String = serde_json::from_slice(&out).unwrap();
        assert_eq!(back, s);

        let mut out = Vec::new();
        escape_json_str_into(&mut out, "a\"b\\c\nd\u{1}");
        assert_eq!(out, br#"a\"b\\c\nd\u0001"#);
        let mut out = Vec::new();
        escape_json_str_into(&mut out, "");
        assert!(out.is_empty());
    }

    #[test]
    fn payload_to_data() {
        assert!(matches!(data_from_payload(br#"{"a":1}"#), Cow::Borrowed(_)));
        assert_eq!(&*data_from_payload(b" 42 "), b" 42 ");
        assert_eq!(&*data_from_payload(b"\"s\""), b"\"s\"");
        let cases: [(&[u8], &str); 4] = [
            (b"hello", "aGVsbG8="),
            (b"", ""),
            (b"\xff\xfe", "//4="),
            (b"{\"a\":1} x", "eyJhIjoxfSB4"),
        ];
        for (payload, b64) in cases {
            let data = data_from_payload(payload);
            assert_eq!(as_json(&data), json!({ "b64": b64 }));
        }
        let deep = "[".repeat(100_000) + &"]".repeat(100_000);
        assert!(matches!(
            data_from_payload(deep.as_bytes()),
            Cow::Borrowed(_)
        ));
        let unbalanced = "[".repeat(100_000);
        assert!(matches!(
            data_from_payload(unbalanced.as_bytes()),
            Cow::Owned(_)
        ));
        // Whatever the payload, the msg frame built from it is valid JSON.
        let mut out = Vec::new();
        msg_into(&mut out, "a", &data_from_payload(b"\x00\x01binary"), None);
        as_json(&out);
    }

    #[test]
    fn push_u64_edges() {
        for value in [0, 9, 10, 99, 100, 12345, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            push_u64(&mut out, value);
            assert_eq!(out, value.to_string().as_bytes());
        }
    }
}
