//! The Pusher HTTP API on the gateway's port, signed with the app secret (what the npm,
//! PyPI, PHP, … `pusher` server libraries call): `POST /apps/{id}/events` and
//! `POST /apps/{id}/batch_events`. Events become complete Pusher frames published on the
//! app's namespaced channels, so every node's subscribers get them (NATS).
//!
//! Owns: routing, checking and answering `/apps/…`. Must not touch: sockets, the session.
//! Runs on: the shard that accepted the request.

use super::{check_name, event_frame, internal_channel, sign};
use crate::config::pusher::{PusherApp, EVENT_NAME_BYTES_MAX};
use crate::fanout::ToBridge;
use crate::protocol::http::{self as h, Method, Request};
use crate::shard::Shard;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

/// Answers a request under `/apps/`; None for any other path (or with no apps).
pub fn handle(shard: &Shard, request: &Request) -> Option<Vec<u8>> {
    let rest = request.path.strip_prefix("/apps/")?;
    if shard.node.config.pusher.apps.is_empty() {
        return None;
    }
    let (id, route) = rest.split_once('/').unwrap_or((rest, ""));
    let Some((index, app)) = shard.node.config.pusher.by_id(id) else {
        return Some(error(404, &format!("no Pusher app {id} on this server (--pusher-app ID:KEY:SECRET)")));
    };
    let metrics = shard.node.transport.pusher_metrics.get(shard.id as usize).and_then(|apps| apps.get(index as usize));
    let answer = route_app(shard, request, app, route);
    if let Some(m) = metrics {
        match &answer {
            Ok(events) => m.api_events.add(*events),
            Err(_) => m.api_refused.inc(),
        }
    }
    Some(match answer {
        Ok(_) => h::response(200, "application/json", b"{}", &[], true),
        Err((status, msg)) => error(status, &msg),
    })
}

fn error(status: u16, msg: &str) -> Vec<u8> {
    h::json_error(status, msg, &[], true)
}

type Refused = (u16, String);

/// Ok(events published).
fn route_app(shard: &Shard, request: &Request, app: &PusherApp, route: &str) -> Result<u64, Refused> {
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
            publish_all(shard, events)
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
            publish_all(shard, events)
        }
        (_, "events" | "batch_events") => Err((405, "use POST".into())),
        _ => Err((501, format!("/apps/{}/{route} is not served by this ringcast version: events and batch_events are (channel queries, users and terminate_connections are planned)", app.id))),
    }
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
