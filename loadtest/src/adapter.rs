//! Protocol adapters: what a client of each target says after the WebSocket upgrade, and
//! how it reads deliveries out of the frames it receives. Pure bytes (no sockets), so the
//! same worker loop measures ringcast and the peers a user would otherwise pick.
//!
//! - `ringcast`: JSON text frames, one op each (`sub` → `ok`, `msg` carries `data`).
//! - `nats-ws`: nats-server's WebSocket listener; the NATS text protocol inside binary
//!   frames, as one byte stream (an operation may span frames).
//! - `mqtt-ws`: mosquitto's WebSocket listener, subprotocol `mqtt`; MQTT 3.1.1 packets
//!   inside binary frames, as one byte stream.
//! - `pusher`: Pusher Channels protocol 7 (ringcast's `/app/{key}`, Sockudo): JSON text
//!   frames, one event each; a subscriber sends `pusher:subscribe` only once
//!   `pusher:connection_established` arrived, as pusher-js does.
//!
//! Must not touch: sockets, clocks, counters (the worker owns those).

use crate::{frame, mqtt, nats, pusher};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum TargetKind {
    /// The ringcast gateway (protocol v1, JSON text frames).
    Ringcast,
    /// nats-server's WebSocket listener (NATS protocol in binary frames).
    NatsWs,
    /// mosquitto's WebSocket listener (MQTT 3.1.1, subprotocol `mqtt`).
    MqttWs,
    /// A Pusher Channels protocol 7 server: ringcast's `/app/{key}` endpoint, Sockudo.
    Pusher,
}

impl TargetKind {
    pub fn name(self) -> &'static str {
        match self {
            TargetKind::Ringcast => "ringcast",
            TargetKind::NatsWs => "nats-ws",
            TargetKind::MqttWs => "mqtt-ws",
            TargetKind::Pusher => "pusher",
        }
    }

    /// The WebSocket subprotocol offered in the upgrade request.
    pub fn subprotocol(self) -> Option<&'static str> {
        match self {
            TargetKind::Ringcast => Some("ringcast.v1"),
            TargetKind::NatsWs => None,
            TargetKind::MqttWs => Some("mqtt"),
            TargetKind::Pusher => None,
        }
    }

    /// Whether a connection needs an application-level answer before it counts as ready.
    /// A ringcast client holding no subscription is ready at the upgrade; NATS and MQTT
    /// clients always log in first (CONNECT), so they wait for PONG / CONNACK; a Pusher
    /// client waits for `connection_established` (and then `subscription_succeeded`).
    pub fn needs_join(self, channel: Option<&str>) -> bool {
        !(self == TargetKind::Ringcast && channel.is_none())
    }

    /// Whether the application stream may split an operation across frames.
    pub fn is_stream(self) -> bool {
        matches!(self, TargetKind::NatsWs | TargetKind::MqttWs)
    }

    /// The opcode of an `Event::Reply` (NATS: binary; Pusher: a text `pusher:pong`).
    pub fn reply_opcode(self) -> u8 {
        if self == TargetKind::Pusher {
            frame::OPCODE_TEXT
        } else {
            frame::OPCODE_BINARY
        }
    }
}

pub use crate::frame::{raw_json_field, MASK};

/// How a ringcast channel is named on each target's wire.
pub fn wire_name(kind: TargetKind, channel: &str, nats_prefix: Option<&str>) -> String {
    match kind {
        TargetKind::Ringcast | TargetKind::Pusher => channel.to_string(),
        TargetKind::NatsWs => match nats_prefix {
            Some(p) if !p.is_empty() => format!("{p}.{channel}"),
            _ => channel.to_string(),
        },
        TargetKind::MqttWs => mqtt::topic_of(channel),
    }
}

/// Everything one connection needs to join: which channel, resume point, and its name.
pub struct Join<'a> {
    pub channel: Option<&'a str>,
    /// Resume after this stream sequence (ringcast `sub` with `since`).
    pub since: Option<u64>,
    pub nats_prefix: Option<&'a str>,
    /// A client id unique per connection (MQTT requires one; a duplicate kicks the other).
    pub client_id: &'a str,
    /// ringcast: subscribe with `"presence": true` (join the channel's presence set).
    pub presence: bool,
}

/// The masked frames a client sends right after the 101 (empty when nothing is needed).
pub fn join_frames(kind: TargetKind, join: &Join) -> Vec<u8> {
    let mut out = Vec::new();
    match kind {
        TargetKind::Ringcast => {
            if let Some(ch) = join.channel {
                let mut op = serde_json::json!({"op": "sub", "ch": ch, "id": 1});
                if let Some(since) = join.since {
                    op["since"] = since.into();
                }
                if join.presence {
                    op["presence"] = true.into();
                }
                frame::encode_client_frame(&mut out, frame::OPCODE_TEXT, op.to_string().as_bytes(), MASK);
            }
        }
        TargetKind::NatsWs => {
            let mut text = nats::connect_line(join.client_id);
            if let Some(ch) = join.channel {
                text.push_str(&nats::sub_line(&wire_name(kind, ch, join.nats_prefix), 1));
            }
            text.push_str("PING\r\n"); // its PONG says CONNECT and SUB were processed
            frame::encode_client_frame(&mut out, frame::OPCODE_BINARY, text.as_bytes(), MASK);
        }
        TargetKind::MqttWs => {
            let mut packets = mqtt::connect(join.client_id, 0);
            if let Some(ch) = join.channel {
                packets.extend_from_slice(&mqtt::subscribe(1, &wire_name(kind, ch, None)));
            }
            frame::encode_client_frame(&mut out, frame::OPCODE_BINARY, &packets, MASK);
        }
        // Nothing before `connection_established`: see `frames_after_established`.
        TargetKind::Pusher => {}
    }
    out
}

/// The frames a client sends once the server said hello (`Event::Established`).
pub fn frames_after_established(kind: TargetKind, channel: Option<&str>) -> Vec<u8> {
    match (kind, channel) {
        (TargetKind::Pusher, Some(ch)) => pusher::subscribe_frame(ch),
        _ => Vec::new(),
    }
}

/// What the application stream said.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A published message; the payload holds `data` (ringcast: the whole `msg` op).
    Delivery(&'a [u8]),
    /// A ringcast `notify` frame: `nid` is its raw JSON value (quotes included), to be
    /// echoed in the `ack`; `payload` is the whole frame (its `data` carries the stamp).
    Notify { nid: &'a [u8], payload: &'a [u8] },
    /// The join finished: subscribed (or logged in, for an idle NATS / MQTT client).
    Joined,
    /// Pusher: `connection_established` arrived and the client still has to subscribe
    /// (the worker sends `frames_after_established`).
    Established,
    /// ringcast answered a `sub` with `since` by 409: resume is past retention; resync.
    ResumeRefused,
    /// Send these application bytes back (a NATS PONG, a `pusher:pong`); the worker frames
    /// them with `TargetKind::reply_opcode`.
    Reply(&'static [u8]),
}

/// Parses application bytes (one whole ringcast frame, or the NATS/MQTT stream so far) and
/// hands each event to `sink`. Returns the bytes consumed; the rest waits for more.
/// `Err` names a failure kind (`sub_refused`, `nats_err`, ...).
pub fn on_app_bytes(kind: TargetKind, joining: bool, wants_channel: bool, data: &[u8], sink: &mut impl FnMut(Event)) -> Result<usize, String> {
    match kind {
        TargetKind::Ringcast => {
            ringcast_frame(joining, data, sink)?;
            Ok(data.len())
        }
        TargetKind::NatsWs => nats_stream(joining, data, sink),
        TargetKind::MqttWs => mqtt_stream(wants_channel, data, sink),
        TargetKind::Pusher => {
            pusher_frame(joining, wants_channel, data, sink)?;
            Ok(data.len())
        }
    }
}

fn pusher_frame(joining: bool, wants_channel: bool, payload: &[u8], sink: &mut impl FnMut(Event)) -> Result<(), String> {
    match pusher::classify(payload) {
        pusher::ServerEvent::Event => sink(Event::Delivery(payload)),
        pusher::ServerEvent::Established if joining && wants_channel => sink(Event::Established),
        pusher::ServerEvent::Established if joining => sink(Event::Joined),
        pusher::ServerEvent::Subscribed if joining => sink(Event::Joined),
        pusher::ServerEvent::Ping => sink(Event::Reply(pusher::PONG)),
        pusher::ServerEvent::Error(Some(code)) => return Err(format!("pusher_error_{code}")),
        pusher::ServerEvent::Error(None) => return Err("pusher_error".into()),
        pusher::ServerEvent::SubscriptionError => return Err("sub_refused".into()),
        _ => {}
    }
    Ok(())
}

fn ringcast_frame(joining: bool, payload: &[u8], sink: &mut impl FnMut(Event)) -> Result<(), String> {
    if payload.starts_with(NOTIFY_OP) {
        let nid = raw_json_field(payload, b"\"nid\":").ok_or("notify_without_nid")?;
        sink(Event::Notify { nid, payload });
    } else if frame::contains(payload, frame::TIMESTAMP_KEY) {
        sink(Event::Delivery(payload));
    } else if joining && frame::contains(payload, b"\"ok\"") {
        sink(Event::Joined);
    } else if joining && frame::contains(payload, b"\"err\"") {
        if frame::find_u64_field(payload, b"\"code\":") == Some(409) {
            sink(Event::ResumeRefused);
        } else {
            return Err("sub_refused".into());
        }
    }
    Ok(())
}

/// How the gateway starts every `notify` frame (it writes `op` first).
const NOTIFY_OP: &[u8] = b"{\"op\":\"notify\"";


fn nats_stream(joining: bool, data: &[u8], sink: &mut impl FnMut(Event)) -> Result<usize, String> {
    let mut pos = 0;
    while let Some((op, used)) = nats::parse_op(&data[pos..]).map_err(|_| "nats_protocol".to_string())? {
        pos += used;
        match op {
            nats::ServerOp::Msg { payload, .. } => sink(Event::Delivery(payload)),
            nats::ServerOp::Ping => sink(Event::Reply(nats::PONG)),
            nats::ServerOp::Pong if joining => sink(Event::Joined),
            nats::ServerOp::Err(_) => return Err("nats_err".into()),
            _ => {}
        }
    }
    Ok(pos)
}

fn mqtt_stream(wants_channel: bool, data: &[u8], sink: &mut impl FnMut(Event)) -> Result<usize, String> {
    let mut pos = 0;
    while let Some((packet, used)) = mqtt::parse_packet(&data[pos..]).map_err(|_| "mqtt_protocol".to_string())? {
        pos += used;
        match packet {
            mqtt::ServerPacket::ConnAck { return_code: 0 } if !wants_channel => sink(Event::Joined),
            mqtt::ServerPacket::ConnAck { return_code: 0 } => {}
            mqtt::ServerPacket::ConnAck { return_code } => return Err(format!("mqtt_connack_{return_code}")),
            mqtt::ServerPacket::SubAck { granted, .. } if granted >= 0x80 => return Err("sub_refused".into()),
            mqtt::ServerPacket::SubAck { .. } => sink(Event::Joined),
            mqtt::ServerPacket::Publish { payload, .. } => sink(Event::Delivery(payload)),
            _ => {}
        }
    }
    Ok(pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(kind: TargetKind, joining: bool, wants_channel: bool, data: &[u8]) -> (Vec<String>, usize) {
        let mut seen = Vec::new();
        let used = on_app_bytes(kind, joining, wants_channel, data, &mut |e| seen.push(format!("{e:?}"))).unwrap();
        (seen, used)
    }

    #[test]
    fn ringcast_join_resume_and_delivery() {
        let join = Join { channel: Some("dev.1.temp"), since: Some(41), nats_prefix: None, client_id: "c", presence: false };
        let frames = join_frames(TargetKind::Ringcast, &join);
        let h = frame::parse_header(&frames).unwrap();
        let mut body = frames[h.header_len..].to_vec();
        frame::unmask(&mut body, h.mask.unwrap());
        let op: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(op, serde_json::json!({"op":"sub","ch":"dev.1.temp","id":1,"since":41}));
        assert_eq!(events(TargetKind::Ringcast, true, true, br#"{"op":"ok","id":1}"#).0, ["Joined"]);
        assert_eq!(events(TargetKind::Ringcast, true, true, br#"{"op":"err","id":1,"code":409,"msg":"past retention"}"#).0, ["ResumeRefused"]);
        assert!(on_app_bytes(TargetKind::Ringcast, true, true, br#"{"op":"err","id":1,"code":403}"#, &mut |_| {}).is_err());
        let msg = br#"{"op":"msg","ch":"a","data":{"lt_ns":0000000000000000001,"lt_n":000000000007},"seq":8}"#;
        assert_eq!(events(TargetKind::Ringcast, false, true, msg).0.len(), 1);
        // An idle ringcast client needs no join at all.
        assert!(join_frames(TargetKind::Ringcast, &Join { channel: None, since: None, nats_prefix: None, client_id: "c", presence: false }).is_empty());
        assert!(!TargetKind::Ringcast.needs_join(None));
    }

    #[test]
    fn ringcast_notify_frames_carry_their_raw_nid() {
        let frame = br#"{"op":"notify","nid":"ab\"c-7","data":{"lt_ns":0000000000000000001,"lt_n":000000000007,"p":"nid"},"ts":5}"#;
        let mut seen = Vec::new();
        on_app_bytes(TargetKind::Ringcast, false, true, frame, &mut |e| {
            if let Event::Notify { nid, payload } = e {
                seen.push((nid.to_vec(), payload.len()));
            }
        })
        .unwrap();
        assert_eq!(seen, [(br#""ab\"c-7""#.to_vec(), frame.len())]);
        assert_eq!(raw_json_field(br#"{"nid": 42}"#, b"\"nid\":"), Some(&b"42"[..]));
        assert_eq!(raw_json_field(br#"{"nid":"cut"#, b"\"nid\":"), None);
        assert!(on_app_bytes(TargetKind::Ringcast, false, true, br#"{"op":"notify","data":{}}"#, &mut |_| {}).is_err());
        // A msg carrying a stamp is still a plain delivery.
        let msg = br#"{"op":"msg","ch":"a","data":{"lt_ns":0000000000000000001}}"#;
        assert_eq!(events(TargetKind::Ringcast, false, true, msg).0.len(), 1);
    }

    #[test]
    fn nats_join_is_connect_sub_ping_and_stream_is_split_safe() {
        let join = Join { channel: Some("bench"), since: None, nats_prefix: Some("rc"), client_id: "lt-1", presence: false };
        let frames = join_frames(TargetKind::NatsWs, &join);
        let h = frame::parse_header(&frames).unwrap();
        assert_eq!(h.opcode, frame::OPCODE_BINARY);
        let mut body = frames[h.header_len..].to_vec();
        frame::unmask(&mut body, h.mask.unwrap());
        let text = String::from_utf8(body).unwrap();
        assert!(text.starts_with("CONNECT {") && text.ends_with("SUB rc.bench 1\r\nPING\r\n"), "{text}");
        let stream = b"INFO {}\r\nPONG\r\nPING\r\nMSG rc.bench 1 9\r\n{\"a\":123}\r\n";
        let (seen, used) = events(TargetKind::NatsWs, true, true, stream);
        assert_eq!(used, stream.len());
        assert_eq!(seen, ["Joined", "Reply([80, 79, 78, 71, 13, 10])", "Delivery([123, 34, 97, 34, 58, 49, 50, 51, 125])"]);
        // A message cut mid-payload is left for the next frame.
        let (seen, used) = events(TargetKind::NatsWs, false, true, b"MSG rc.bench 1 9\r\n{\"a\"");
        assert_eq!((seen.len(), used), (0, 0));
    }

    #[test]
    fn mqtt_join_and_refusals() {
        let join = Join { channel: Some("dev.*.temp"), since: None, nats_prefix: None, client_id: "lt-2", presence: false };
        let frames = join_frames(TargetKind::MqttWs, &join);
        let h = frame::parse_header(&frames).unwrap();
        let mut body = frames[h.header_len..].to_vec();
        frame::unmask(&mut body, h.mask.unwrap());
        assert_eq!(body[0], 0x10, "CONNECT first");
        assert!(frame::contains(&body, b"dev/+/temp"), "SUBSCRIBE with the MQTT filter");
        assert_eq!(events(TargetKind::MqttWs, true, true, &[0x20, 2, 0, 0]).0.len(), 0, "subscriber waits for SUBACK");
        assert_eq!(events(TargetKind::MqttWs, true, false, &[0x20, 2, 0, 0]).0, ["Joined"], "idle client is ready at CONNACK");
        assert_eq!(events(TargetKind::MqttWs, true, true, &[0x90, 3, 0, 1, 0]).0, ["Joined"]);
        assert!(on_app_bytes(TargetKind::MqttWs, true, true, &[0x90, 3, 0, 1, 0x80], &mut |_| {}).is_err());
        assert!(on_app_bytes(TargetKind::MqttWs, true, true, &[0x20, 2, 0, 5], &mut |_| {}).is_err());
        assert_eq!(wire_name(TargetKind::MqttWs, "dev.>", None), "dev/#");
        assert_eq!(wire_name(TargetKind::NatsWs, "a.b", None), "a.b");
    }

    #[test]
    fn pusher_waits_for_established_then_subscribes_and_reads_events() {
        let join = Join { channel: Some("bench"), since: None, nats_prefix: None, client_id: "c", presence: false };
        assert!(join_frames(TargetKind::Pusher, &join).is_empty(), "nothing before connection_established");
        assert!(TargetKind::Pusher.needs_join(None), "even an idle client waits for the greeting");
        assert!(!TargetKind::Pusher.is_stream());
        let established = br#"{"event":"pusher:connection_established","data":"{\"socket_id\":\"12.34\",\"activity_timeout\":120}"}"#;
        assert_eq!(events(TargetKind::Pusher, true, true, established).0, ["Established"]);
        assert_eq!(events(TargetKind::Pusher, true, false, established).0, ["Joined"], "an idle client is ready at the greeting");
        let frames = frames_after_established(TargetKind::Pusher, Some("bench"));
        assert_eq!(frames, pusher::subscribe_frame("bench"));
        assert!(frames_after_established(TargetKind::Pusher, None).is_empty());
        let ok = br#"{"event":"pusher_internal:subscription_succeeded","channel":"bench","data":"{}"}"#;
        assert_eq!(events(TargetKind::Pusher, true, true, ok).0, ["Joined"]);
        assert!(events(TargetKind::Pusher, false, true, ok).0.is_empty(), "a late repeat is nothing");
        // A delivery: the stamp sits escaped inside the data string and is still found.
        let t = frame::payload_template(200);
        let mut data = t.text.into_bytes();
        frame::write_timestamp(&mut data[t.ts_at..t.ts_at + frame::TIMESTAMP_DIGITS], 1_700_000_000_123_456_789);
        frame::write_padded(&mut data[t.n_at..t.n_at + frame::COUNTER_DIGITS], 9);
        let data = String::from_utf8(data).unwrap();
        let event = serde_json::json!({"event": "lt", "channel": "bench", "data": data}).to_string();
        let mut payloads = Vec::new();
        on_app_bytes(TargetKind::Pusher, false, true, event.as_bytes(), &mut |e| {
            if let Event::Delivery(p) = e {
                payloads.push(p.to_vec());
            }
        })
        .unwrap();
        assert_eq!(payloads.len(), 1);
        assert_eq!(frame::find_timestamp(&payloads[0]), Some(1_700_000_000_123_456_789));
        assert_eq!(frame::find_counter(&payloads[0]), Some(9));
        // Ping is answered with a text pong; refusals are named.
        assert_eq!(events(TargetKind::Pusher, false, true, br#"{"event":"pusher:ping","data":"{}"}"#).0, [format!("Reply({:?})", pusher::PONG)]);
        assert_eq!(TargetKind::Pusher.reply_opcode(), frame::OPCODE_TEXT);
        assert_eq!(TargetKind::NatsWs.reply_opcode(), frame::OPCODE_BINARY);
        let error = br#"{"event":"pusher:error","data":{"message":"no app","code":4001}}"#;
        assert_eq!(on_app_bytes(TargetKind::Pusher, true, true, error, &mut |_| {}).unwrap_err(), "pusher_error_4001");
        let refused = br#"{"event":"pusher:subscription_error","channel":"bench","data":"{}"}"#;
        assert_eq!(on_app_bytes(TargetKind::Pusher, true, true, refused, &mut |_| {}).unwrap_err(), "sub_refused");
        assert!(events(TargetKind::Pusher, false, true, br#"{"event":"pusher:pong","data":"{}"}"#).0.is_empty());
    }
}
