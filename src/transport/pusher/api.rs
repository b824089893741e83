//! The Pusher HTTP API on the gateway's port, signed with the app secret (what the npm,
//! PyPI, PHP, … `pusher` server libraries call): `POST /apps/{id}/events` and
//! `POST /apps/{id}/batch_events`. Events become complete Pusher frames published on the
//! app's namespaced channels, so every node's subscribers get them (NATS). The channel
//! queries and `terminate_connections` are answered by `query`.
//!
//! Owns: routing, checking and answering `/apps/…`. Must not touch: sockets, the session.
//! Runs on: the shard that accepted the request.

use super::query::Refused;
use super::{check_name, event_frame, internal_channel, sign};
use crate::config::pusher::{PusherApp, EVENT_NAME_BYTES_MAX};
use crate::fanout::ToBridge;
use crate::protocol::http::{self as h, Method, Request};
use crate::shard::Shard;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

/// Answers a request under `/apps/` (and `/users/{id}/terminate_connections`); None for
/// any other path (or with no apps).
pub async fn handle(shard: &Shard, request: &Request) -> Option<Vec<u8>> {
    if shard.node.config.pusher.apps.is_empty() {
        return None;
    }
    let (found, route) = if let Some(rest) = request.path.strip_prefix("/apps/") {
        let (id, route) = rest.split_once('/').unwrap_or((rest, ""));
        (shard.node.config.pusher.by_id(id).ok_or_else(|| format!("no Pusher app {id} on this server (--pusher-app ID:KEY:SECRET)")), route)
    } else if request.path.starts_with("/users/") && request.path.ends_with("/terminate_connections") {
        // The PyPI library (3.x) posts this one without `/apps/{id}`: the app is the one
        // whose key signed it (the signature check below still decides).
        let key = request.query_param("auth_key").unwrap_or_default();
        (shard.node.config.pusher.by_key(&key).ok_or_else(|| format!("no Pusher app with auth_key {key:?} on this server")), &request.path[1..])
    } else {
        return None;
    };
    let (index, app) = match found {
        Ok(found) => found,
        Err(message) => return Some(error(404, &message)),
    };
    let answer = route_app(shard, request, app, route).await;
    if let Some(m) = shard.node.transport.pusher_metrics.get(shard.id as usize).and_then(|apps| apps.get(index as usize)) {
        match &answer {
            Ok(Answered::Published(events)) => m.api_events.add(*events),
            Ok(Answered::Query(_)) => m.api_queries.inc(),
            Ok(Answered::Terminated) => m.api_terminations.inc(),
            Err(_) => m.api_refused.inc(),
        }
    }
    Some(match answer {
        Ok(Answered::Query(body)) => h::response(200, "application/json", body.as_bytes(), &[], true),
        Ok(Answered::Published(_) | Answered::Terminated) => h::response(200, "application/json", b"{}", &[], true),
        Err((status, msg)) => error(status, &msg),
    })
}

fn error(status: u16, msg: &str) -> Vec<u8> {
    h::json_error(status, msg, &[], true)
}

/// What a served call did (for its answer and its counter).
enum Answered {
    /// Events published (`{}`).
    Published(u64),
    /// A channel query's JSON answer.
    Query(String),
    /// A terminate_connections order sent (`{}`).
    Terminated,
}

async fn route_app(shard: &Shard, request: &Request, app: &PusherApp, route: &str) -> Result<Answered, Refused> {
    let method = match request.method {
        Method::Get | Method::Head => "GET",
        Method::Post => "POST",
        _ => return Err((405, "method not allowed; the Pusher API uses GET and POST".into())),
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let query = request.query.as_deref().unwrap_or("");
    sign::check_api_request(&app.key, &app.secret, method, &request.path, query, &request.body, now).map_err(|r| (r.status, r.msg))?;
    match (method, route) {
        ("POST", "events") => {
            let body: Trigger = serde_json::from_slice(&request.body).map_err(|e| (400, format!("body must be {{\"name\",\"data\",\"channels\":[..]}}: {e}")))?;
            let events = check_trigger(shard, app, body)?;
            publish_all(shard, events).map(Answered::Published)
        }
        ("POST", "batch_events") => {
            let body: Batch = serde_json::from_slice(&request.body).map_err(|e| (400, format!("body must be {{\"batch\":[{{\"name\",\"data\",\"channel\"}}..]}}: {e}")))?;
            let max = shard.node.config.pusher.batch_events_max;
            if body.batch.len() > max {
                return Err((400, format!("batch of {} events, over {max} (pusher_max_batch_events)", body.batch.len())));
            }
            let mut events = Vec::new();
            for one in body.batch {
                events.extend(check_trigger(shard, app, one)?);
            }
            publish_all(shard, events).map(Answered::Published)
        }
        (_, "events" | "batch_events") => Err((405, "use POST".into())),
        ("GET", "channels") => super::query::channels(shard, app, request).await.map(Answered::Query),
        (method, route) => route_channel_or_user(shard, request, app, method, route).await,
    }
}

/// `channels/{channel}`, `channels/{channel}/users`, `users/{id}/terminate_connections`.
async fn route_channel_or_user(shard: &Shard, request: &Request, app: &PusherApp, method: &str, route: &str) -> Result<Answered, Refused> {
    if let Some(rest) = route.strip_prefix("channels/") {
        if method != "GET" {
            return Err((405, "channel queries use GET".into()));
        }
        return match rest.strip_suffix("/users") {
            Some(channel) => super::query::users(shard, app, &h::percent_decode(channel)).await,
            None => super::query::channel(shard, app, request, &h::percent_decode(rest)).await,
        }
        .map(Answered::Query);
    }
    if let Some(user) = route.strip_prefix("users/").and_then(|r| r.strip_suffix("/terminate_connections")) {
        if method != "POST" {
            return Err((405, "terminate_connections uses POST".into()));
        }
        return super::query::terminate(shard, app, &h::percent_decode(user)).await.map(|_| Answered::Terminated);
    }
    Err((404, format!("/apps/{}/{route} is not a Pusher API route: events, batch_events, channels, channels/{{channel}}, channels/{{channel}}/users and users/{{id}}/terminate_connections are", app.id)))
}

#[derive(Deserialize)]
struct Trigger<'a> {
    name: String,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    socket_id: Option<String>,
}

#[derive(Deserialize)]
struct Batch<'a> {
    #[serde(borrow)]
    batch: Vec<Trigger<'a>>,
}

/// One event for one channel, ready to publish.
struct Outgoing {
    channel: String,
    frame: Vec<u8>,
    exclude: Option<Box<str>>,
}

fn check_trigger(shard: &Shard, app: &PusherApp, body: Trigger<'_>) -> Result<Vec<Outgoing>, Refused> {
    let config = &shard.node.config.pusher;
    if body.name.is_empty() || body.name.len() > EVENT_NAME_BYTES_MAX {
        return Err((400, format!("event name must be 1 to {EVENT_NAME_BYTES_MAX} bytes")));
    }
    // `data` is a string (the libraries serialize objects); anything else is sent as its JSON.
    let data: String = match serde_json::from_str::<String>(body.data.get()) {
        Ok(text) => text,
        Err(_) => body.data.get().to_string(),
    };
    if data.len() > config.event_data_bytes_max {
        return Err((413, format!("data is {} bytes, over {} (pusher_max_event_data)", data.len(), config.event_data_bytes_max)));
    }
    let channels: Vec<String> = match (body.channels, body.channel) {
        (Some(list), _) if !list.is_empty() => list,
        (_, Some(one)) => vec![one],
        _ => return Err((400, "name the channels: \"channels\":[..] or \"channel\"".into())),
    };
    if channels.len() > config.trigger_channels_max {
        return Err((400, format!("{} channels, over {} per event (pusher_max_trigger_channels)", channels.len(), config.trigger_channels_max)));
    }
    if let Some(socket) = body.socket_id.as_deref() {
        let valid = socket.split_once('.').is_some_and(|(a, b)| !a.is_empty() && !b.is_empty() && a.bytes().chain(b.bytes()).all(|c| c.is_ascii_digit()));
        if !valid {
            return Err((400, format!("socket_id {socket:?} is not a Pusher socket id (digits.digits)")));
        }
    }
    channels
        .into_iter()
        .map(|name| {
            check_name(&name).map_err(|e| (400, e))?;
            let internal = internal_channel(&app.id, &name).map_err(|e| (400, e))?;
            let frame = event_frame(&body.name, Some(&name), &data);
            let frame_max = shard.node.config.outbound_bytes_max.saturating_sub(crate::limits::FRAME_HEADER_BYTES_MAX);
            if frame.len() > frame_max {
                return Err((413, format!("the event frame would be {} bytes, over a subscriber's outbound_limit", frame.len())));
            }
            Ok(Outgoing { channel: internal, frame, exclude: body.socket_id.as_deref().map(Into::into) })
        })
        .collect()
}

/// All or nothing for the checks (done above); each publish is handed to the bridge.
fn publish_all(shard: &Shard, events: Vec<Outgoing>) -> Result<u64, Refused> {
    if !shard.node.broker_up() {
        shard.metrics.publish_refused.inc();
        return Err((503, "the broker (NATS) is unreachable; retry shortly".into()));
    }
    let count = events.len() as u64;
    for event in events {
        let message = ToBridge::PublishFrame { channel: event.channel.into(), frame: Bytes::from(event.frame), exclude: event.exclude };
        if shard.node.bridge_inbox.push(message).is_err() {
            shard.metrics.bridge_full.inc();
            return Err((503, "publish queue is full; retry shortly".into()));
        }
    }
    Ok(count)
}
