//! Pusher Channels protocol 7 as a wire adapter (`../shared/PUSHER.md`): pusher-js,
//! Laravel Echo and the Pusher server libraries talk to the same shards, fan-out, NATS
//! and metrics as protocol v1. A Pusher frame is decoded into a session [`Op`] on the
//! app's namespaced channel (`$pusher.{app id}.{encoded name}`), and session answers are
//! encoded as Pusher events. Events reach subscribers as complete Pusher frames published
//! with `ToBridge::PublishFrame` (every node sends them verbatim, like `notify`).
//!
//! Owns: the Pusher WebSocket wire (greeting, subscribe and its auth, client events),
//! channel names and their mapping, the HTTP API (`api`), signatures (`sign`).
//! Must not touch: the rules of an op (session), sockets (shard). Runs on: the shard
//! that holds the connection.

pub mod api;
pub mod presence;
pub mod query;
pub mod sign;

use crate::config::pusher::{PusherApp, CHANNEL_NAME_CHARS_MAX, EVENT_NAME_BYTES_MAX};
use crate::fanout::ToBridge;
use crate::metrics::transport::PusherAppMetrics;
use crate::metrics::CloseReason;
use crate::protocol::ws;
use crate::session::presence::Join;
use crate::session::{self, Op, Reply};
use crate::shard::{Conn, Shard};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::rc::Rc;

/// The oldest protocol version served (pusher-js 8 speaks 7).
pub const PROTOCOL_MIN: u32 = 7;

/// Close codes pusher-js acts on (4000–4099: do not reconnect as is; 4100–4199: back off;
/// 4200–4299: reconnect now).
pub mod close_code {
    /// No app with this key.
    pub const APP_UNKNOWN: u16 = 4001;
    /// The protocol version is missing or too old.
    pub const PROTOCOL_UNSUPPORTED: u16 = 4007;
    /// The app's connection quota is used up (`max_connections` of its `[[pusher_apps]]`).
    pub const OVER_QUOTA: u16 = 4004;
    /// Unauthorized (bad sign-in).
    pub const UNAUTHORIZED: u16 = 4009;
    /// Over capacity (the node is full): back off, then reconnect.
    pub const OVER_CAPACITY: u16 = 4100;
    // The closes the shard decides (slow consumer 4100, heartbeat timeout 4201, drain and
    // shutdown 4200) are mapped in `shard::Wire::close_code`, below the transports.
    /// Client events over the rate limit.
    pub const CLIENT_EVENT_RATE: u16 = 4301;
    /// Closed by `terminate_connections`. Pusher's protocol docs name no code of its own
    /// for it; 4009 ("connection is unauthorized") is the documented one that fits, and
    /// the one the reference servers (soketi, Sockudo) send with "You got disconnected by
    /// the app.". In 4000–4099, so pusher-js does not reconnect unchanged.
    pub const TERMINATED: u16 = UNAUTHORIZED;
}

/// What kind of channel a name is, by its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Public,
    Private,
    /// `private-encrypted-`: relayed as is; client events refused.
    Encrypted,
    Presence,
    /// `#server-to-user-{id}`: needs `pusher:signin`.
    ServerToUser,
}

pub fn kind(name: &str) -> Kind {
    if name.starts_with("#server-to-user-") {
        Kind::ServerToUser
    } else if name.starts_with("private-encrypted-") {
        Kind::Encrypted
    } else if name.starts_with("private-") {
        Kind::Private
    } else if name.starts_with("presence-") {
        Kind::Presence
    } else {
        Kind::Public
    }
}

/// A Pusher channel name: 1 to 164 of `[A-Za-z0-9_\-=@,.;]` (`#server-to-user-` aside).
pub fn check_name(name: &str) -> Result<(), String> {
    let body = name.strip_prefix('#').unwrap_or(name);
    if name.is_empty() || name.len() > CHANNEL_NAME_CHARS_MAX {
        return Err(format!("channel name must be 1 to {CHANNEL_NAME_CHARS_MAX} characters, got {}", name.len()));
    }
    if name.starts_with('#') && !name.starts_with("#server-to-user-") {
        return Err(format!("{name:?}: only #server-to-user-{{id}} may start with #"));
    }
    match body.chars().find(|c| !(c.is_ascii_alphanumeric() || "_-=@,.;".contains(*c))) {
        Some(c) => Err(format!("channel name {name:?} has {c:?}; allowed are A-Z a-z 0-9 _ - = @ , . ;")),
        None => Ok(()),
    }
}

/// The ringcast channel of Pusher channel `name` of app `app_id`: `$pusher.{id}.{name}`
/// with the characters a ringcast token cannot hold escaped (`_` → `__`, `.` → `_d`,
/// `=` → `_e`, `@` → `_a`, `,` → `_c`, `;` → `_s`, `#` → `_h`). Err when the result
/// passes the ringcast channel bound (only for names full of escaped characters).
pub fn internal_channel(app_id: &str, name: &str) -> Result<String, String> {
    let mut out = String::with_capacity(crate::channel::PUSHER_TOKEN.len() + app_id.len() + 2 + name.len() + 8);
    out.push_str(crate::channel::PUSHER_TOKEN);
    out.push('.');
    out.push_str(app_id);
    out.push('.');
    for c in name.chars() {
        match c {
            '_' => out.push_str("__"),
            '.' => out.push_str("_d"),
            '=' => out.push_str("_e"),
            '@' => out.push_str("_a"),
            ',' => out.push_str("_c"),
            ';' => out.push_str("_s"),
            '#' => out.push_str("_h"),
            c => out.push(c),
        }
    }
    if out.len() > crate::channel::CHANNEL_BYTES_MAX {
        return Err(format!(
            "channel name {name:?} is {} bytes once its punctuation is escaped, over this server's {} (use fewer . = @ , ; _)",
            out.len(),
            crate::channel::CHANNEL_BYTES_MAX
        ));
    }
    Ok(out)
}

/// The Pusher channel name in an internal channel (the reverse of [`internal_channel`]).
pub fn channel_name(internal: &str) -> Option<String> {
    let rest = internal.strip_prefix(crate::channel::PUSHER_TOKEN)?.strip_prefix('.')?;
    let (_app, encoded) = rest.split_once('.')?;
    let mut out = String::with_capacity(encoded.len());
    let mut chars = encoded.chars();
    while let Some(c) = chars.next() {
        if c != '_' {
            out.push(c);
            continue;
        }
        out.push(match chars.next()? {
            '_' => '_',
            'd' => '.',
            'e' => '=',
            'a' => '@',
            'c' => ',',
            's' => ';',
            'h' => '#',
            _ => return None,
        });
    }
    Some(out)
}

/// The socket id pusher-js and the server libraries see: `^\d+\.\d+$`.
pub fn socket_id(shard: &Shard, conn: &Conn) -> String {
    format!("{}.{}", crate::fanout::node_number(&shard.node.config.node), conn.id)
}

fn app_of<'a>(shard: &'a Shard, app: u16) -> Option<&'a PusherApp> {
    shard.node.config.pusher.apps.get(app as usize)
}

fn metrics(shard: &Shard, app: u16) -> Option<&PusherAppMetrics> {
    shard.node.transport.pusher_metrics.get(shard.id as usize)?.get(app as usize)
}

/// Writes a JSON string literal (quotes included) of `text`.
fn json_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into())
}

/// A server event: `{"event":..,"channel"?:..,"data":"<JSON as a string>"}`.
pub fn event_frame(event: &str, channel: Option<&str>, data_json: &str) -> Vec<u8> {
    let mut out = String::with_capacity(event.len() + data_json.len() + 64);
    out.push_str("{\"event\":");
    out.push_str(&json_string(event));
    if let Some(channel) = channel {
        out.push_str(",\"channel\":");
        out.push_str(&json_string(channel));
    }
    out.push_str(",\"data\":");
    out.push_str(&json_string(data_json));
    out.push('}');
    out.into_bytes()
}

/// `pusher:error`, whose `data` is an object (not a string): `{"message","code"}`.
fn error_frame(code: Option<u16>, message: &str) -> Vec<u8> {
    let code = code.map_or("null".to_string(), |c| c.to_string());
    format!("{{\"event\":\"pusher:error\",\"data\":{{\"code\":{code},\"message\":{}}}}}", json_string(message)).into_bytes()
}

fn send(shard: &Shard, conn: &Conn, json: &[u8]) {
    shard.send(conn, ws::encode_text(json));
}

fn send_error(shard: &Shard, conn: &Conn, app: u16, code: Option<u16>, message: &str) {
    if let Some(m) = metrics(shard, app) {
        m.bad_frames.inc();
    }
    send(shard, conn, &error_frame(code, message));
}

/// `pusher:subscription_error` on `channel`: `{"type","error","status"}`.
fn subscription_error(shard: &Shard, conn: &Conn, channel: &str, kind: &str, error: &str, status: u16) {
    let data = format!("{{\"type\":{},\"error\":{},\"status\":{status}}}", json_string(kind), json_string(error));
    send(shard, conn, &event_frame("pusher:subscription_error", Some(channel), &data));
}

/// Why a Pusher upgrade is answered with an error and a close instead of
/// `connection_established`: the code and the message.
pub type Refusal = (u16, String);

/// Checks a `/app/{key}` upgrade: the app, and the protocol version. Ok(app index), or the
/// refusal that the connection gets once upgraded (pusher-js reads the close code).
pub fn admit(shard: &Shard, key: &str, protocol: Option<&str>) -> Result<u16, Refusal> {
    let Some((index, app)) = shard.node.config.pusher.by_key(key) else {
        return Err((close_code::APP_UNKNOWN, format!("App key {key} not in this cluster; check the key in your Pusher client config")));
    };
    match protocol.and_then(|p| p.parse::<u32>().ok()) {
        Some(version) if version >= PROTOCOL_MIN => {}
        _ => return Err((close_code::PROTOCOL_UNSUPPORTED, format!("Unsupported protocol version: use protocol={PROTOCOL_MIN} (pusher-js 7 and 8 do)"))),
    }
    if let Some(max) = app.max_connections {
        // This node's connections of the app, over every shard (each counts its own).
        let open: i64 = shard.node.transport.pusher_metrics.iter().filter_map(|apps| apps.get(index as usize)).map(|m| m.connections.get() as i64).sum();
        if open >= max as i64 {
            if let Some(m) = metrics(shard, index) {
                m.over_quota.inc();
            }
            return Err((close_code::OVER_QUOTA, format!("Over connection quota: app {} allows {max} connections per node (max_connections of its [[pusher_apps]])", app.id)));
        }
    }
    Ok(index)
}

/// The first frame on a Pusher connection: `connection_established`, or the refusal's
/// `pusher:error` (returned: the caller flushes it, then closes with its code, since a
/// close drops what is still queued).
pub fn greet(shard: &Shard, conn: &Conn, app: u16, refusal: Option<Refusal>) -> Option<Refusal> {
    if let Some((code, message)) = refusal {
        send(shard, conn, &error_frame(Some(code), &message));
        return Some((code, message));
    }
    if let Some(m) = metrics(shard, app) {
        m.connections.inc();
    }
    let timeout = shard.node.config.pusher.activity_timeout.as_secs();
    let data = format!("{{\"socket_id\":\"{}\",\"activity_timeout\":{timeout}}}", socket_id(shard, conn));
    send(shard, conn, &event_frame("pusher:connection_established", None, &data));
    None
}

/// Ends a refused connection (after its `pusher:error` went out).
pub fn refuse(shard: &Shard, conn: &Conn, (code, message): Refusal) {
    shard.close(conn, code, &message, CloseReason::Refused);
}

/// The connection ended (the shard unregisters it).
pub fn on_close(shard: &Shard, app: u16) {
    if let Some(m) = metrics(shard, app) {
        m.connections.sub(1);
    }
}

/// Encodes a session answer for a Pusher connection.
pub fn answer(shard: &Shard, conn: &Conn, app: u16, reply: Reply<'_>) {
    match reply {
        Reply::Subscribed { ch, .. } => {
            if let Some(m) = metrics(shard, app) {
                m.subscriptions.inc();
            }
            let name = channel_name(ch).unwrap_or_default();
            if kind(&name) == Kind::Presence {
                // Answered with the member list (now, or once this shard has fetched it).
                return presence::subscribed(shard, conn, app, ch);
            }
            send(shard, conn, &event_frame("pusher_internal:subscription_succeeded", Some(&name), "{}"));
        }
        Reply::Pong { .. } => send(shard, conn, b"{\"event\":\"pusher:pong\",\"data\":\"{}\"}"),
        // unsubscribe, client events: Pusher answers nothing.
        Reply::Ok { .. } | Reply::Members { .. } => {}
        Reply::Err { code, msg, .. } => {
            // Session errors in the ranges pusher-js acts on: a full node backs off.
            let code = match code {
                503 => Some(close_code::OVER_CAPACITY),
                _ => None,
            };
            send(shard, conn, &error_frame(code, msg));
        }
    }
}

/// A Pusher connection has no token to expire; kept for the `Handlers` contract.
pub fn token_expired(shard: &Shard, conn: &Conn) {
    shard.close(conn, close_code::UNAUTHORIZED, "authorization expired", CloseReason::TokenExpired);
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(borrow, default)]
    channel: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct SubscribeData {
    channel: String,
    #[serde(default)]
    auth: Option<String>,
    /// Presence channels: `{"user_id","user_info"?}` as a JSON string (signed as sent).
    #[serde(default)]
    channel_data: Option<String>,
}

#[derive(Deserialize)]
struct SigninData {
    auth: String,
    user_data: String,
}

pub use crate::config::pusher::USER_ID_BYTES_MAX;

/// `pusher:signin`: the backend signed `socket_id::user::user_data`; the connection is
/// that user from now on (it may subscribe to `#server-to-user-{id}`). A bad signature or
/// user_data is `pusher:error` 4009 and a close, as Pusher does.
fn signin(shard: &Rc<Shard>, conn: &Rc<Conn>, app: u16, data: SigninData) {
    let Some(app_config) = app_of(shard, app) else { return };
    let refuse = |message: &str| {
        if let Some(m) = metrics(shard, app) {
            m.auth_failures.inc();
        }
        send(shard, conn, &error_frame(Some(close_code::UNAUTHORIZED), message));
        shard.flush(conn);
        shard.close(conn, close_code::UNAUTHORIZED, message, CloseReason::Refused);
    };
    if let Err(refused) = sign::check_signin(&app_config.key, &app_config.secret, &data.auth, &socket_id(shard, conn), &data.user_data) {
        return refuse(&format!("sign-in refused: {}", refused.message()));
    }
    if data.user_data.len() > crate::config::pusher::USER_INFO_BYTES_MAX {
        return refuse(&format!("user_data is over {} bytes", crate::config::pusher::USER_INFO_BYTES_MAX));
    }
    let id = serde_json::from_str::<serde_json::Value>(&data.user_data).ok().and_then(|v| v.get("id").and_then(|id| id.as_str()).map(str::to_owned));
    let Some(id) = id.filter(|id| !id.is_empty() && id.len() <= USER_ID_BYTES_MAX) else {
        return refuse(&format!("user_data must be a JSON object with a string \"id\" of 1 to {USER_ID_BYTES_MAX} bytes"));
    };
    conn.state.borrow_mut().wire_state.get_or_insert_with(Default::default).signed_in = Some(id.into_boxed_str());
    let reply = format!("{{\"user_data\":{}}}", json_string(&data.user_data));
    send(shard, conn, &event_frame("pusher:signin_success", None, &reply));
}

/// `data` of a client frame: pusher-js sends objects, some clients a JSON string holding
/// the object; both are read.
fn parse_data<T: serde::de::DeserializeOwned>(data: Option<&RawValue>) -> Result<T, String> {
    let raw = data.ok_or("missing data")?.get();
    if raw.starts_with('"') {
        let inner: String = serde_json::from_str(raw).map_err(|e| e.to_string())?;
        serde_json::from_str(&inner).map_err(|e| e.to_string())
    } else {
        serde_json::from_str(raw).map_err(|e| e.to_string())
    }
}

/// One text frame from a Pusher client.
pub fn on_text(shard: &Rc<Shard>, conn: &Rc<Conn>, app: u16, text: &str) {
    if !session::take_token(shard, conn) {
        shard.metrics.rate_limited.inc();
        return send_error(shard, conn, app, None, "rate limited: too many messages per second (client_rate); slow down");
    }
    let frame: Frame = match serde_json::from_str(text) {
        Ok(frame) => frame,
        Err(e) => return send_error(shard, conn, app, None, &format!("bad frame: expected {{\"event\":..,\"data\":..}}: {e}")),
    };
    match frame.event.as_ref() {
        "pusher:ping" => session::handle(shard, conn, Op::Ping { id: None }),
        "pusher:pong" => {}
        "pusher:subscribe" => match parse_data::<SubscribeData>(frame.data) {
            Ok(data) => subscribe(shard, conn, app, data),
            Err(e) => send_error(shard, conn, app, None, &format!("pusher:subscribe needs data {{\"channel\",\"auth\"}}: {e}")),
        },
        "pusher:unsubscribe" => match parse_data::<SubscribeData>(frame.data) {
            Ok(data) => unsubscribe(shard, conn, app, &data.channel),
            Err(e) => send_error(shard, conn, app, None, &format!("pusher:unsubscribe needs data {{\"channel\"}}: {e}")),
        },
        "pusher:signin" => match parse_data::<SigninData>(frame.data) {
            Ok(data) => signin(shard, conn, app, data),
            Err(e) => send_error(shard, conn, app, None, &format!("pusher:signin needs data {{\"auth\",\"user_data\"}}: {e}")),
        },
        event if event.starts_with("client-") => client_event(shard, conn, app, event, frame.channel.as_deref(), frame.data),
        other => send_error(shard, conn, app, None, &format!("unknown event {other:?}")),
    }
}

fn subscribe(shard: &Rc<Shard>, conn: &Rc<Conn>, app: u16, data: SubscribeData) {
    let Some(app_config) = app_of(shard, app) else { return };
    let name = data.channel.as_str();
    if let Err(e) = check_name(name) {
        return subscription_error(shard, conn, name, "InvalidChannel", &e, 400);
    }
    let kind = kind(name);
    let auth = data.auth.as_deref().unwrap_or("");
    let checked = match kind {
        Kind::Public => Ok(()),
        Kind::Private | Kind::Encrypted => sign::check_channel_auth(&app_config.key, &app_config.secret, auth, &socket_id(shard, conn), name, None),
        Kind::ServerToUser => {
            let owner = &name["#server-to-user-".len()..];
            // Copied out: the refusals below queue frames (a state borrow held here would clash).
            let signed_in = conn.state.borrow().wire_state.as_ref().and_then(|w| w.signed_in.clone());
            match signed_in.as_deref() {
                Some(user) if user == owner => Ok(()),
                Some(_) => return subscription_error(shard, conn, name, "AuthError", "#server-to-user channels are for the signed-in user only", 403),
                None => return subscription_error(shard, conn, name, "AuthError", "sign in first (pusher:signin) to subscribe to your #server-to-user channel", 401),
            }
        }
        Kind::Presence => {
            let channel_data = data.channel_data.as_deref().unwrap_or("");
            sign::check_channel_auth(&app_config.key, &app_config.secret, auth, &socket_id(shard, conn), name, Some(channel_data))
        }
    };
    if let Err(refused) = checked {
        if let Some(m) = metrics(shard, app) {
            m.auth_failures.inc();
        }
        return subscription_error(shard, conn, name, "AuthError", refused.message(), 401);
    }
    let internal = match internal_channel(&app_config.id, name) {
        Ok(internal) => internal,
        Err(e) => return subscription_error(shard, conn, name, "InvalidChannel", &e, 400),
    };
    let join = if kind == Kind::Presence {
        let refused = |kind: &str, message: &str, status: u16| {
            if let Some(m) = metrics(shard, app) {
                m.presence_refused.inc();
            }
            subscription_error(shard, conn, name, kind, message, status);
        };
        let (user, info) = match presence::parse_member(data.channel_data.as_deref().unwrap_or("")) {
            Ok(member) => member,
            Err(e) => return refused("InvalidChannelData", &e, 400),
        };
        if let Err(e) = presence::admits(shard, &internal, &user) {
            return refused("LimitReached", &e, 403);
        }
        presence::remember(conn, &internal, user.clone(), info.clone());
        Join::Member { user, info }
    } else {
        Join::No
    };
    session::handle(shard, conn, Op::Sub { id: None, ch: &internal, since: None, presence: join });
}

fn unsubscribe(shard: &Rc<Shard>, conn: &Rc<Conn>, app: u16, name: &str) {
    let Some(app_config) = app_of(shard, app) else { return };
    let Ok(internal) = internal_channel(&app_config.id, name) else { return };
    // Pusher answers nothing, and nothing for a channel that was not subscribed either.
    if conn.state.borrow().subscriptions.iter().any(|s| **s == *internal) {
        if kind(name) == Kind::Presence {
            presence::leave(shard, conn, &internal);
        }
        session::handle(shard, conn, Op::Unsub { id: None, ch: &internal });
    }
}

/// `client-*`: relayed to the channel's other subscribers, on private and presence
/// channels the sender is subscribed to, when the app allows client events, within the
/// per-connection rate (past it the connection closes with 4301).
fn client_event(shard: &Rc<Shard>, conn: &Rc<Conn>, app: u16, event: &str, channel: Option<&str>, data: Option<&RawValue>) {
    let Some(app_config) = app_of(shard, app) else { return };
    let refuse = |msg: &str| {
        if let Some(m) = metrics(shard, app) {
            m.client_events_refused.inc();
        }
        send(shard, conn, &error_frame(None, msg));
    };
    if !app_config.client_events {
        return refuse("client events are not enabled for this app (--pusher-client-events)");
    }
    let Some(name) = channel else { return refuse("a client event needs a channel") };
    if event.len() > EVENT_NAME_BYTES_MAX {
        return refuse(&format!("event name is over {EVENT_NAME_BYTES_MAX} bytes"));
    }
    match kind(name) {
        Kind::Private | Kind::Presence => {}
        Kind::Encrypted => return refuse("client events are not allowed on private-encrypted channels"),
        _ => return refuse("client events are only allowed on private and presence channels"),
    }
    let Ok(internal) = internal_channel(&app_config.id, name) else { return refuse("bad channel name") };
    if !conn.state.borrow().subscriptions.iter().any(|s| **s == *internal) {
        return refuse(&format!("subscribe to {name} before sending client events on it"));
    }
    let data = data.map_or("null", |d| d.get());
    let max = shard.node.config.pusher.event_data_bytes_max;
    if data.len() > max {
        return refuse(&format!("client event data is {} bytes, over {max} (pusher_max_event_data)", data.len()));
    }
    if !client_event_allowed(shard, conn) {
        if let Some(m) = metrics(shard, app) {
            m.client_events_refused.inc();
        }
        let rate = shard.node.config.pusher.client_events_per_second;
        let message = format!("client event rate limit reached ({rate} per second, pusher_client_event_rate)");
        send(shard, conn, &error_frame(Some(close_code::CLIENT_EVENT_RATE), &message));
        return shard.close(conn, close_code::CLIENT_EVENT_RATE, &message, CloseReason::RateLimited);
    }
    // Relayed with `data` as the client sent it (an object stays an object).
    let mut frame = String::with_capacity(event.len() + name.len() + data.len() + 48);
    frame.push_str("{\"event\":");
    frame.push_str(&json_string(event));
    frame.push_str(",\"channel\":");
    frame.push_str(&json_string(name));
    frame.push_str(",\"data\":");
    frame.push_str(data);
    if let Some(user) = presence::user_in(conn, &internal) {
        // On presence channels the sender's user id comes along (pusher-js reads it).
        frame.push_str(",\"user_id\":");
        frame.push_str(&json_string(&user));
    }
    frame.push('}');
    let exclude = Some(socket_id(shard, conn).into_boxed_str());
    let message = ToBridge::PublishFrame { channel: internal.into(), frame: Bytes::from(frame.into_bytes()), exclude };
    if shard.node.bridge_inbox.push(message).is_err() {
        shard.metrics.bridge_full.inc();
        return send(shard, conn, &error_frame(Some(close_code::OVER_CAPACITY), "server is overloaded (bridge queue full); send again shortly"));
    }
    if let Some(m) = metrics(shard, app) {
        m.client_events.inc();
    }
}

/// One client event more within `pusher_client_event_rate` per second (a one-second
/// window kept in the connection's adapter counters).
fn client_event_allowed(shard: &Shard, conn: &Conn) -> bool {
    let rate = shard.node.config.pusher.client_events_per_second;
    let second = (shard.now_ms() / 1000) as u32;
    let mut st = conn.state.borrow_mut();
    let window = st.wire_state.get_or_insert_with(Default::default);
    if window.window != second {
        window.window = second;
        window.count = 0;
    }
    if u32::from(window.count) >= rate {
        return false;
    }
    window.count = window.count.saturating_add(1);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways() {
        for name in ["my-channel", "private-chat.room;1", "presence-a_b=c@d,e", "#server-to-user-42", "x"] {
            let internal = internal_channel("1001", name).unwrap();
            crate::channel::validate_channel(&internal).unwrap_or_else(|e| panic!("{internal}: {e}"));
            assert!(internal.starts_with("$pusher.1001."), "{internal}");
            assert_eq!(channel_name(&internal).as_deref(), Some(name));
        }
        assert_ne!(internal_channel("1", "a_d").unwrap(), internal_channel("1", "a.").unwrap());
        assert!(internal_channel("1", &".".repeat(164)).is_err(), "escaped past 200 bytes");
        assert!(channel_name("$pusher.1.bad_q").is_none());
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("private-ok_name-1=@,.;").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name(&"a".repeat(165)).is_err());
        assert!(check_name("a b").is_err());
        assert!(check_name("#other").is_err());
        assert_eq!(kind("private-encrypted-x"), Kind::Encrypted);
        assert_eq!(kind("private-x"), Kind::Private);
        assert_eq!(kind("presence-x"), Kind::Presence);
        assert_eq!(kind("#server-to-user-1"), Kind::ServerToUser);
        assert_eq!(kind("cache-x"), Kind::Public);
    }

    #[test]
    fn frames_have_the_shapes_pusher_js_reads() {
        let frame: serde_json::Value = serde_json::from_slice(&event_frame("pusher:connection_established", None, r#"{"socket_id":"1.2","activity_timeout":120}"#)).unwrap();
        assert_eq!(frame["event"], "pusher:connection_established");
        let data: serde_json::Value = serde_json::from_str(frame["data"].as_str().expect("data is a string")).unwrap();
        assert_eq!(data["activity_timeout"], 120);
        let error: serde_json::Value = serde_json::from_slice(&error_frame(Some(4001), "no \"app\"")).unwrap();
        assert_eq!(error["data"]["code"], 4001, "pusher:error data is an object");
        assert_eq!(error["data"]["message"], "no \"app\"");
        use crate::fanout::{local_socket, node_number};
        let socket = format!("{}.{}", node_number("node-a"), 1u64 << 48 | 7);
        assert!(socket.split('.').all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit())), "{socket}");
        assert_ne!(node_number("node-a"), node_number("node-b"));
        assert_eq!(local_socket(&socket, "node-a"), Some(1u64 << 48 | 7));
        assert_eq!(local_socket(&socket, "node-b"), None, "another node's socket is not excluded here");
        assert_eq!(local_socket("junk", "node-a"), None);
    }
}
