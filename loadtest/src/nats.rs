//! The NATS client protocol subset the harness speaks, as pure bytes (no sockets).
//!
//! Owns: encoding CONNECT / SUB / PUB / PING / PONG, and an incremental parser of what a
//! server sends (INFO, MSG, PING, PONG, +OK, -ERR). Used by the `nats-ws` subscriber
//! adapter (inside WebSocket frames) and by the NATS publisher (plain TCP).
//! Must not touch: sockets, clocks, counters.
//!
//! Why hand-written rather than a NATS client crate: the subscriber side runs inside the
//! harness's epoll loop with up to 19,000 connections per process at a few hundred bytes
//! each, which no async client allows; the five verbs used here are a stable text format,
//! and the publisher shares this encoder so both sides stamp the same payload.

/// The CONNECT line: no verbose `+OK` per op, no echo of our own publishes.
pub fn connect_line(name: &str) -> String {
    format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"name\":\"{name}\",\"lang\":\"rust\",\"version\":\"{}\",\"protocol\":1,\"echo\":false}}\r\n",
        env!("CARGO_PKG_VERSION")
    )
}

pub fn sub_line(subject: &str, sid: u32) -> String {
    format!("SUB {subject} {sid}\r\n")
}

/// Appends `PUB subject len\r\npayload\r\n`.
pub fn push_pub(out: &mut Vec<u8>, subject: &str, payload: &[u8]) {
    out.extend_from_slice(b"PUB ");
    out.extend_from_slice(subject.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

pub const PING: &[u8] = b"PING\r\n";
pub const PONG: &[u8] = b"PONG\r\n";

/// The longest control line accepted (INFO carries the server's JSON; 64 KiB is far above
/// what any nats-server sends, and bounds a confused peer).
pub const CONTROL_LINE_BYTES_MAX: usize = 64 * 1024;

/// One server operation. `Msg` borrows its payload from the input.
#[derive(Debug, PartialEq, Eq)]
pub enum ServerOp<'a> {
    Info,
    Msg { subject: &'a [u8], payload: &'a [u8] },
    Ping,
    Pong,
    Ok,
    Err(String),
}

/// Parses one operation from the front of `buf`: `Ok(Some((op, used)))`, `Ok(None)` when
/// more bytes are needed (a partial operation is not an error), `Err` for garbage.
pub fn parse_op(buf: &[u8]) -> Result<Option<(ServerOp<'_>, usize)>, String> {
    let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") else {
        if buf.len() > CONTROL_LINE_BYTES_MAX {
            return Err("NATS control line too long".into());
        }
        return Ok(None);
    };
    let line = &buf[..line_end];
    let after = line_end + 2;
    let verb_end = line.iter().position(|&b| b == b' ' || b == b'\t').unwrap_or(line.len());
    let verb = &line[..verb_end];
    let op = if verb.eq_ignore_ascii_case(b"MSG") {
        return parse_msg(line, after, buf);
    } else if verb.eq_ignore_ascii_case(b"PING") {
        ServerOp::Ping
    } else if verb.eq_ignore_ascii_case(b"PONG") {
        ServerOp::Pong
    } else if verb.eq_ignore_ascii_case(b"INFO") {
        ServerOp::Info
    } else if verb.eq_ignore_ascii_case(b"+OK") {
        ServerOp::Ok
    } else if verb.eq_ignore_ascii_case(b"-ERR") {
        ServerOp::Err(String::from_utf8_lossy(&line[verb_end..]).trim().to_string())
    } else {
        return Err(format!("unknown NATS operation {:?}", String::from_utf8_lossy(verb)));
    };
    Ok(Some((op, after)))
}

/// `MSG <subject> <sid> [reply-to] <#bytes>\r\n<payload>\r\n`
fn parse_msg<'a>(line: &'a [u8], after: usize, buf: &'a [u8]) -> Result<Option<(ServerOp<'a>, usize)>, String> {
    let fields: Vec<&[u8]> = line.split(|&b| b == b' ' || b == b'\t').filter(|f| !f.is_empty()).collect();
    if !(4..=5).contains(&fields.len()) {
        return Err(format!("malformed MSG line {:?}", String::from_utf8_lossy(line)));
    }
    let size: usize = std::str::from_utf8(fields[fields.len() - 1])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad MSG size in {:?}", String::from_utf8_lossy(line)))?;
    if size > crate::limits::CARRY_BYTES_MAX {
        return Err(format!("NATS message of {size} bytes is over the harness's {} byte bound", crate::limits::CARRY_BYTES_MAX));
    }
    if buf.len() < after + size + 2 {
        return Ok(None);
    }
    if &buf[after + size..after + size + 2] != b"\r\n" {
        return Err("MSG payload not followed by CRLF".into());
    }
    Ok(Some((ServerOp::Msg { subject: fields[1], payload: &buf[after..after + size] }, after + size + 2)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_server_op_and_waits_for_partials() {
        let stream = b"INFO {\"server_id\":\"x\",\"max_payload\":1048576}\r\n+OK\r\nPING\r\nMSG rc.a.b 1 5\r\nhello\r\nMSG x 2 reply.to 2\r\nhi\r\nPONG\r\n-ERR 'Authorization Violation'\r\n";
        let mut ops = Vec::new();
        let mut pos = 0;
        while let Some((op, used)) = parse_op(&stream[pos..]).unwrap() {
            ops.push(format!("{op:?}"));
            pos += used;
        }
        assert_eq!(pos, stream.len());
        assert_eq!(ops.len(), 7, "{ops:?}");
        let (op, _) = parse_op(b"MSG rc.a.b 1 5\r\nhello\r\n").unwrap().unwrap();
        assert_eq!(op, ServerOp::Msg { subject: b"rc.a.b", payload: b"hello" });
        let (op, _) = parse_op(b"-ERR 'Authorization Violation'\r\n").unwrap().unwrap();
        assert_eq!(op, ServerOp::Err("'Authorization Violation'".into()));
        // Every strict prefix of a MSG is "need more", never a wrong op.
        let msg = b"MSG subj 9 11\r\nhello world\r\n";
        for cut in 0..msg.len() {
            assert_eq!(parse_op(&msg[..cut]).unwrap(), None, "cut {cut}");
        }
        assert!(parse_op(b"BOGUS\r\n").is_err());
        assert!(parse_op(b"MSG a 1 3\r\nabcXY").is_err());
    }

    #[test]
    fn encodes_pub_and_control_lines() {
        let mut out = Vec::new();
        push_pub(&mut out, "rc.bench", b"{\"a\":1}");
        assert_eq!(out, b"PUB rc.bench 7\r\n{\"a\":1}\r\n");
        assert_eq!(sub_line("dev.*.temp", 3), "SUB dev.*.temp 3\r\n");
        let c = connect_line("t");
        assert!(c.starts_with("CONNECT {") && c.ends_with("}\r\n"));
        let json: serde_json::Value = serde_json::from_str(c.trim_start_matches("CONNECT ").trim_end()).unwrap();
        assert_eq!(json["verbose"], false);
    }
}
