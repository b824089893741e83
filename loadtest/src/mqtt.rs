//! The MQTT 3.1.1 subset the harness speaks (QoS 0 only), as pure bytes (no sockets).
//!
//! Owns: encoding CONNECT / SUBSCRIBE / PUBLISH / PINGREQ, and an incremental
//! parser of server packets (CONNACK, SUBACK, PUBLISH, PINGRESP). Used by the `mqtt-ws`
//! subscriber adapter (inside binary WebSocket frames, subprotocol `mqtt`) and by the MQTT
//! publisher (plain TCP). Must not touch: sockets, clocks, counters.
//!
//! Hand-written for the same reason as `nats`: the subscriber lives in the epoll loop at a
//! few hundred bytes per connection, and QoS 0 needs five packet types.

pub const PINGREQ: [u8; 2] = [0xC0, 0x00];

/// Appends the MQTT "remaining length" variable-byte integer (1..=4 bytes).
fn push_varint(out: &mut Vec<u8>, mut n: usize) {
    assert!(n < 268_435_456, "MQTT remaining length over 256 MiB");
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            return;
        }
    }
}

/// Reads a remaining length: `Ok(Some((value, bytes used)))`, `Ok(None)` if incomplete.
fn read_varint(buf: &[u8]) -> Result<Option<(usize, usize)>, String> {
    let mut value = 0usize;
    for (i, &b) in buf.iter().enumerate().take(4) {
        value |= ((b & 0x7F) as usize) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= 4 {
        return Err("MQTT remaining length longer than 4 bytes".into());
    }
    Ok(None)
}

fn push_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// CONNECT with a clean session. `keepalive_s` 0 turns the keep-alive off (3.1.1 §3.1.2.10),
/// so idle clients need no PINGREQ timer.
pub fn connect(client_id: &str, keepalive_s: u16) -> Vec<u8> {
    let mut body = Vec::with_capacity(16 + client_id.len());
    push_str(&mut body, b"MQTT");
    body.push(4); // protocol level 4 = 3.1.1
    body.push(0x02); // clean session
    body.extend_from_slice(&keepalive_s.to_be_bytes());
    push_str(&mut body, client_id.as_bytes());
    packet(0x10, &body)
}

/// SUBSCRIBE to one filter at QoS 0.
pub fn subscribe(packet_id: u16, filter: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(5 + filter.len());
    body.extend_from_slice(&packet_id.to_be_bytes());
    push_str(&mut body, filter.as_bytes());
    body.push(0); // requested QoS 0
    packet(0x82, &body)
}

/// Appends a QoS 0 PUBLISH.
pub fn push_publish(out: &mut Vec<u8>, topic: &str, payload: &[u8]) {
    out.push(0x30);
    push_varint(out, 2 + topic.len() + payload.len());
    push_str(out, topic.as_bytes());
    out.extend_from_slice(payload);
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(first);
    push_varint(&mut out, body.len());
    out.extend_from_slice(body);
    out
}

/// One server packet; `Publish` borrows its payload from the input.
#[derive(Debug, PartialEq, Eq)]
pub enum ServerPacket<'a> {
    ConnAck { return_code: u8 },
    SubAck { packet_id: u16, granted: u8 },
    Publish { topic: &'a [u8], payload: &'a [u8] },
    PingResp,
    /// A packet type the harness does not act on (PUBACK for a QoS 1 publish, ...).
    Other(u8),
}

/// Parses one packet from the front of `buf`: `Ok(Some((packet, used)))`, `Ok(None)` when
/// more bytes are needed, `Err` for a malformed packet.
pub fn parse_packet(buf: &[u8]) -> Result<Option<(ServerPacket<'_>, usize)>, String> {
    if buf.is_empty() {
        return Ok(None);
    }
    let Some((len, varint_len)) = read_varint(&buf[1..])? else { return Ok(None) };
    if len > crate::limits::CARRY_BYTES_MAX {
        return Err(format!("MQTT packet of {len} bytes is over the harness's {} byte bound", crate::limits::CARRY_BYTES_MAX));
    }
    let start = 1 + varint_len;
    if buf.len() < start + len {
        return Ok(None);
    }
    let body = &buf[start..start + len];
    let kind = buf[0] >> 4;
    let packet = match kind {
        2 if len == 2 => ServerPacket::ConnAck { return_code: body[1] },
        9 if len >= 3 => ServerPacket::SubAck { packet_id: u16::from_be_bytes([body[0], body[1]]), granted: body[2] },
        3 => {
            if len < 2 {
                return Err("MQTT PUBLISH without a topic".into());
            }
            let topic_len = u16::from_be_bytes([body[0], body[1]]) as usize;
            let qos = (buf[0] >> 1) & 0x03;
            let id_len = if qos > 0 { 2 } else { 0 };
            if len < 2 + topic_len + id_len {
                return Err("MQTT PUBLISH shorter than its topic".into());
            }
            ServerPacket::Publish { topic: &body[2..2 + topic_len], payload: &body[2 + topic_len + id_len..] }
        }
        13 => ServerPacket::PingResp,
        2 | 9 => return Err(format!("malformed MQTT packet type {kind} of {len} bytes")),
        other => ServerPacket::Other(other),
    };
    Ok(Some((packet, start + len)))
}

/// A ringcast channel (NATS syntax, `.`-separated, `*` and `>` wildcards) as an MQTT topic
/// or filter (`/`-separated, `+` and `#`).
pub fn topic_of(channel: &str) -> String {
    channel
        .split('.')
        .map(|token| match token {
            "*" => "+",
            ">" => "#",
            t => t,
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_round_trip_and_spec_examples() {
        for (n, bytes) in [(0usize, vec![0x00]), (127, vec![0x7F]), (128, vec![0x80, 0x01]), (16_383, vec![0xFF, 0x7F]), (2_097_152, vec![0x80, 0x80, 0x80, 0x01])] {
            let mut out = Vec::new();
            push_varint(&mut out, n);
            assert_eq!(out, bytes, "{n}");
            assert_eq!(read_varint(&out).unwrap(), Some((n, bytes.len())));
        }
        assert_eq!(read_varint(&[0x80, 0x80]).unwrap(), None);
        assert!(read_varint(&[0x80, 0x80, 0x80, 0x80, 0x01]).is_err());
    }

    #[test]
    fn encodes_connect_and_subscribe_like_the_spec() {
        let c = connect("lt-1", 0);
        assert_eq!(c, [0x10, 16, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 0, 0, 4, b'l', b't', b'-', b'1']);
        let s = subscribe(1, "dev/+/temp");
        assert_eq!(&s[..2], &[0x82, 15]);
        assert_eq!(&s[2..4], &[0, 1]);
        assert_eq!(*s.last().unwrap(), 0);
    }

    #[test]
    fn parses_server_packets_from_any_split() {
        let mut stream = vec![0x20, 0x02, 0x00, 0x00, 0x90, 0x03, 0x00, 0x01, 0x00];
        let payload = vec![b'x'; 300]; // a two-byte remaining length
        push_publish(&mut stream, "dev/7/temp", &payload);
        stream.extend_from_slice(&[0xD0, 0x00]);
        for cut in 0..stream.len() {
            let mut carry = Vec::new();
            let mut seen = Vec::new();
            for chunk in [&stream[..cut], &stream[cut..]] {
                carry.extend_from_slice(chunk);
                let mut pos = 0;
                while let Some((p, used)) = parse_packet(&carry[pos..]).unwrap() {
                    seen.push(match p {
                        ServerPacket::ConnAck { return_code } => format!("connack {return_code}"),
                        ServerPacket::SubAck { packet_id, granted } => format!("suback {packet_id} {granted}"),
                        ServerPacket::Publish { topic, payload } => format!("publish {} {}", String::from_utf8_lossy(topic), payload.len()),
                        ServerPacket::PingResp => "pingresp".into(),
                        ServerPacket::Other(k) => format!("other {k}"),
                    });
                    pos += used;
                }
                carry.drain(..pos);
            }
            assert_eq!(seen, ["connack 0", "suback 1 0", "publish dev/7/temp 300", "pingresp"], "cut {cut}");
        }
    }

    #[test]
    fn channels_map_to_topics() {
        assert_eq!(topic_of("dev.*.temp"), "dev/+/temp");
        assert_eq!(topic_of("dev.>"), "dev/#");
        assert_eq!(topic_of("bench"), "bench");
    }
}
