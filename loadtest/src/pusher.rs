//! The Pusher Channels protocol 7 subset the harness speaks, as pure bytes (no sockets):
//! the app (`ID:KEY:SECRET`), the WebSocket path, the `pusher:subscribe` frame, what a
//! server frame is, and the signed HTTP API request (`POST /apps/{id}/events`).
//!
//! Every server event carries `"event":"<name>"` at the top level; inside the `data`
//! string the same key appears escaped (`\"event\":`), so a plain byte search for
//! `"event":` finds only the real one (a JSON string never holds a bare `"`).
//! Must not touch: sockets, clocks, counters (the worker and the publisher own those).

use crate::frame;
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;

/// The event name every published message carries (any name not starting with
/// `pusher:` / `pusher_internal:` / `client-` is a server-triggered event).
pub const EVENT_NAME: &str = "lt";

/// What a client answers to a server's `pusher:ping` (pusher-js sends the same).
pub const PONG: &[u8] = br#"{"event":"pusher:pong","data":{}}"#;

/// One Pusher app: `ID:KEY:SECRET`, as ringcast's `--pusher-app` takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct App {
    pub id: String,
    pub key: String,
    pub secret: String,
}

/// Parses `ID:KEY:SECRET` (the secret may hold `:`; the id and key may not).
pub fn parse_app(text: &str) -> Result<App, String> {
    let mut parts = text.splitn(3, ':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(id), Some(key), Some(secret)) if !id.is_empty() && !key.is_empty() && !secret.is_empty() => {
            Ok(App { id: id.to_string(), key: key.to_string(), secret: secret.to_string() })
        }
        _ => Err(format!("{text:?} is not ID:KEY:SECRET (e.g. 4242:app-key:app-secret, as given to the server)")),
    }
}

/// The WebSocket path a pusher-js 8 client asks for.
pub fn ws_path(key: &str) -> String {
    format!("/app/{key}?protocol=7&client=js&version=8.6.0&flash=false")
}

/// The masked `pusher:subscribe` frame for a public channel (`auth` is empty there).
pub fn subscribe_frame(channel: &str) -> Vec<u8> {
    let op = serde_json::json!({"event": "pusher:subscribe", "data": {"channel": channel, "auth": ""}});
    let mut out = Vec::new();
    frame::encode_client_frame(&mut out, frame::OPCODE_TEXT, op.to_string().as_bytes(), frame::MASK);
    out
}

/// What one server frame is.
#[derive(Debug, PartialEq, Eq)]
pub enum ServerEvent {
    /// `pusher:connection_established`: the connection is usable.
    Established,
    /// `pusher_internal:subscription_succeeded`.
    Subscribed,
    /// `pusher:ping`: answer with [`PONG`].
    Ping,
    /// `pusher:error`, with its code when `data` is the documented `{message, code}` object.
    Error(Option<u64>),
    /// `pusher:subscription_error` (an auth failure, or the peer's refusal).
    SubscriptionError,
    /// Any other `pusher:` / `pusher_internal:` event (pong, member_added, cache_miss, ...).
    Protocol,
    /// An application event: a delivery.
    Event,
    /// No top-level `event` at all.
    Unknown,
}

pub fn classify(payload: &[u8]) -> ServerEvent {
    let Some(name) = frame::raw_json_field(payload, b"\"event\":") else { return ServerEvent::Unknown };
    match name {
        b"\"pusher:connection_established\"" => ServerEvent::Established,
        b"\"pusher_internal:subscription_succeeded\"" => ServerEvent::Subscribed,
        b"\"pusher:ping\"" => ServerEvent::Ping,
        b"\"pusher:error\"" => ServerEvent::Error(frame::find_u64_field(payload, b"\"code\":")),
        b"\"pusher:subscription_error\"" => ServerEvent::SubscriptionError,
        n if n.starts_with(b"\"pusher:") || n.starts_with(b"\"pusher_internal:") => ServerEvent::Protocol,
        _ => ServerEvent::Event,
    }
}

/// The harness signs on its own (HMAC-SHA256, MD5 from the RustCrypto crates) rather than
/// linking the gateway: an independent client, held to the docs' vectors below.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

/// Hex HMAC-SHA256 of `text` under `secret`: the `auth_signature` of the HTTP API.
pub fn sign_hex(secret: &str, text: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(text.as_bytes());
    hex(&mac.finalize().into_bytes())
}

/// The query string of a signed API request: `auth_key`, `auth_timestamp`, `auth_version`,
/// `body_md5` (when there is a body), sorted, then `auth_signature` over
/// `METHOD\nPATH\n{the rest}` (keys sorted, `k=v` joined by `&`, nothing URL-escaped: the
/// values here need none).
pub fn signed_query(app: &App, method: &str, path: &str, body: &[u8], timestamp_s: u64) -> String {
    let mut query = format!("auth_key={}&auth_timestamp={timestamp_s}&auth_version=1.0", app.key);
    if !body.is_empty() {
        query.push_str("&body_md5=");
        query.push_str(&hex(&Md5::digest(body)));
    }
    let signature = sign_hex(&app.secret, &format!("{method}\n{path}\n{query}"));
    format!("{query}&auth_signature={signature}")
}

/// The path events are triggered on.
pub fn events_path(app: &App) -> String {
    format!("/apps/{}/events", app.id)
}

/// The body of a trigger on `channel` with `data` (a JSON text sent as a JSON string),
/// and the offset in it where `data`'s text starts (escaped: `"` became `\"`).
pub fn event_body(channel: &str, data: &str) -> (Vec<u8>, usize) {
    let prefix = format!("{{\"name\":\"{EVENT_NAME}\",\"channels\":[{}],\"data\":\"", serde_json::to_string(channel).expect("string serializes"));
    let quoted = serde_json::to_string(data).expect("string serializes");
    let mut body = prefix.clone().into_bytes();
    body.extend_from_slice(quoted[1..].as_bytes()); // the opening quote is the prefix's
    body.push(b'}');
    (body, prefix.len())
}

/// A whole HTTP/1.1 request for `body`, signed now.
pub fn trigger_request(out: &mut Vec<u8>, app: &App, host: &str, body: &[u8], timestamp_s: u64) {
    let path = events_path(app);
    let query = signed_query(app, "POST", &path, body, timestamp_s);
    out.clear();
    out.extend_from_slice(
        format!("POST {path}?{query} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes(),
    );
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_docs_vector() {
        // pusher/docs, library_auth_reference/rest-api: the worked example.
        let app = App { id: "3".into(), key: "278d425bdf160c739803".into(), secret: "7ad3773142a6692b25b8".into() };
        let body = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        assert_eq!(hex(&Md5::digest(body)), "ec365a775a4cd0599faeb73354201b6f");
        let query = signed_query(&app, "POST", "/apps/3/events", body, 1353088179);
        assert_eq!(
            query,
            "auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f\
             &auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
        );
        // The channel-auth vector from the same docs, through the same HMAC.
        assert_eq!(sign_hex(&app.secret, "1234.1234:private-foobar"), "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4");
        let mut request = Vec::new();
        trigger_request(&mut request, &app, "127.0.0.1:1", body, 1353088179);
        let text = String::from_utf8(request).unwrap();
        assert!(text.starts_with("POST /apps/3/events?auth_key=278d425bdf160c739803&"), "{text}");
        assert!(text.ends_with(&format!("Content-Length: {}\r\n\r\n{}", body.len(), std::str::from_utf8(body).unwrap())));
    }

    #[test]
    fn apps_parse_and_paths() {
        assert_eq!(parse_app("4242:k:s:with:colons").unwrap(), App { id: "4242".into(), key: "k".into(), secret: "s:with:colons".into() });
        assert!(parse_app("4242:k").is_err());
        assert!(parse_app("::").is_err());
        assert_eq!(ws_path("k"), "/app/k?protocol=7&client=js&version=8.6.0&flash=false");
        assert_eq!(events_path(&parse_app("7:k:s").unwrap()), "/apps/7/events");
    }

    #[test]
    fn subscribe_frame_is_a_masked_pusher_subscribe() {
        let frames = subscribe_frame("bench");
        let h = frame::parse_header(&frames).unwrap();
        assert_eq!(h.opcode, frame::OPCODE_TEXT);
        let mut body = frames[h.header_len..].to_vec();
        frame::unmask(&mut body, h.mask.unwrap());
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v, serde_json::json!({"event":"pusher:subscribe","data":{"channel":"bench","auth":""}}));
    }

    #[test]
    fn server_frames_are_classified_by_their_top_level_event() {
        let established = br#"{"event":"pusher:connection_established","data":"{\"socket_id\":\"1.2\",\"activity_timeout\":120}"}"#;
        assert_eq!(classify(established), ServerEvent::Established);
        assert_eq!(classify(br#"{"event":"pusher_internal:subscription_succeeded","channel":"c","data":"{}"}"#), ServerEvent::Subscribed);
        assert_eq!(classify(br#"{"event":"pusher:ping","data":"{}"}"#), ServerEvent::Ping);
        assert_eq!(classify(br#"{"event":"pusher:error","data":{"message":"no app","code":4001}}"#), ServerEvent::Error(Some(4001)));
        assert_eq!(classify(br#"{"event":"pusher:subscription_error","channel":"c","data":"{}"}"#), ServerEvent::SubscriptionError);
        assert_eq!(classify(br#"{"event":"pusher:pong","data":"{}"}"#), ServerEvent::Protocol);
        // Key order does not matter, and an `event` key inside the data string is escaped.
        let event = br#"{"channel":"c","data":"{\"event\":\"pusher:ping\",\"lt_ns\":1}","event":"lt"}"#;
        assert_eq!(classify(event), ServerEvent::Event);
        assert_eq!(classify(b"{}"), ServerEvent::Unknown);
    }

    #[test]
    fn event_body_carries_the_stamped_data_as_a_json_string() {
        let t = frame::payload_template(200);
        let (body, at) = event_body("bench", &t.text);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!((v["name"].as_str(), v["channels"][0].as_str()), (Some(EVENT_NAME), Some("bench")));
        assert_eq!(v["data"].as_str(), Some(t.text.as_str()), "data is the template, as a string");
        assert!(body[at..].starts_with(br#"{\"lt_ns\":"#));
    }
}
