//! The Pusher HTTP API's queries and orders (pusher/docs, `rest-api.md`):
//! `GET /apps/{id}/channels`, `GET /apps/{id}/channels/{channel}`,
//! `GET /apps/{id}/channels/{channel}/users` and
//! `POST /apps/{id}/users/{user_id}/terminate_connections`.
//!
//! Occupancy and `subscription_count` are cluster-wide: the bridge asks every node's
//! shards (`bridge::cluster`). `user_count` and `users` come from presence, which reads
//! every node's members (Redis with several nodes). Cache channels are not served yet, so
//! `info=cache` is refused with a 400 that says so.
//!
//! Owns: the answers' shapes, which attributes a channel kind allows, and which
//! connections a close order means. Must not touch: sockets, engines (questions and
//! orders go to the bridge). Runs on: the shard that took the request; `close_if_user`
//! on every shard.

use super::{app_of, channel_name, check_name, close_code, internal_channel, kind, metrics, Kind, USER_ID_BYTES_MAX};
use crate::config::pusher::PusherApp;
use crate::fanout::cluster::{CloseUser, CountQuery, Counts, COUNT_CHANNELS_MAX};
use crate::fanout::ToBridge;
use crate::metrics::CloseReason;
use crate::protocol::http::Request;
use crate::shard::{Conn, Shard};
use serde_json::{json, Map, Value};
use std::time::Duration;

/// A refused call: the HTTP status and what to tell the caller (the API answers it as
/// `{"error":..}`).
pub type Refused = (u16, String);

/// Presence lookups (`user_count` of a channel list) in flight at once for one request:
/// each is a bridge round trip (and a Redis read), so a long list neither floods the
/// bridge inbox nor waits for them one by one.
const USER_COUNTS_CONCURRENT_MAX: usize = 16;

/// The `info` attributes asked for (comma-separated).
fn info_attributes(request: &Request) -> Vec<String> {
    request.query_param("info").map_or_else(Vec::new, |list| list.split(',').map(|a| a.trim().to_owned()).filter(|a| !a.is_empty()).collect())
}

/// `GET /apps/{id}/channels`: occupied channels, cluster-wide, by `filter_by_prefix`;
/// `info=user_count` only with a `presence-` prefix.
pub async fn channels(shard: &Shard, app: &PusherApp, request: &Request) -> Result<String, Refused> {
    let filter = request.query_param("filter_by_prefix").unwrap_or_default();
    let mut user_count = false;
    for attribute in info_attributes(request) {
        match attribute.as_str() {
            "user_count" if filter.starts_with("presence-") => user_count = true,
            "user_count" => return Err((400, "info=user_count needs filter_by_prefix=presence- (only presence channels have users)".into())),
            other => return Err((400, format!("info={other} is not available for GET /channels (user_count is, for presence channels)"))),
        }
    }
    if !filter.is_empty() {
        check_name(&filter).map_err(|e| (400, format!("filter_by_prefix: {e}")))?;
    }
    let prefix = internal_channel(&app.id, &filter).map_err(|e| (400, e))?;
    let counts = count(shard, CountQuery { prefix: prefix.as_str().into(), exact: false }).await?;
    if counts.truncated {
        return Err((400, format!("more than {COUNT_CHANNELS_MAX} channels match; narrow the query with filter_by_prefix")));
    }
    let names: Vec<(String, String)> = counts
        .channels
        .iter()
        .filter_map(|(suffix, _)| {
            let internal = format!("{prefix}{suffix}");
            channel_name(&internal).filter(|name| name.starts_with(&filter)).map(|name| (name, internal))
        })
        .collect();
    let mut channels = Map::new();
    for chunk in names.chunks(USER_COUNTS_CONCURRENT_MAX) {
        let users: Vec<Option<usize>> = if user_count {
            let lookups = chunk.iter().map(|(_, internal)| user_ids(shard, internal));
            futures_util::future::join_all(lookups).await.into_iter().map(|r| r.map(|ids| Some(ids.len()))).collect::<Result<_, _>>()?
        } else {
            vec![None; chunk.len()]
        };
        for ((name, _), users) in chunk.iter().zip(users) {
            let attributes = match users {
                Some(n) => json!({ "user_count": n }),
                None => json!({}),
            };
            channels.insert(name.clone(), attributes);
        }
    }
    Ok(json!({ "channels": channels }).to_string())
}

/// `GET /apps/{id}/channels/{channel}`: `occupied`, and `user_count` (presence only) and
/// `subscription_count` when asked for.
pub async fn channel(shard: &Shard, app: &PusherApp, request: &Request, name: &str) -> Result<String, Refused> {
    check_name(name).map_err(|e| (400, e))?;
    let presence = kind(name) == Kind::Presence;
    let (mut user_count, mut subscription_count) = (false, false);
    for attribute in info_attributes(request) {
        match attribute.as_str() {
            "user_count" if presence => user_count = true,
            "user_count" => return Err((400, format!("info=user_count is only available for presence channels, and {name} is not one"))),
            "subscription_count" => subscription_count = true,
            "cache" => return Err((400, "info=cache: cache channels are not served by this ringcast version".into())),
            other => return Err((400, format!("info={other} is not a channel attribute (user_count, subscription_count)"))),
        }
    }
    let internal = internal_channel(&app.id, name).map_err(|e| (400, e))?;
    let subscriptions = count(shard, CountQuery { prefix: internal.as_str().into(), exact: true }).await?.total();
    let mut answer = Map::new();
    answer.insert("occupied".into(), Value::Bool(subscriptions > 0));
    if user_count {
        answer.insert("user_count".into(), user_ids(shard, &internal).await?.len().into());
    }
    if subscription_count {
        answer.insert("subscription_count".into(), subscriptions.into());
    }
    Ok(Value::Object(answer).to_string())
}

/// `GET /apps/{id}/channels/{channel}/users`: the presence channel's user ids.
pub async fn users(shard: &Shard, app: &PusherApp, name: &str) -> Result<String, Refused> {
    check_name(name).map_err(|e| (400, e))?;
    if kind(name) != Kind::Presence {
        return Err((400, format!("{name} is not a presence channel; only presence channels have users")));
    }
    let internal = internal_channel(&app.id, name).map_err(|e| (400, e))?;
    let users: Vec<Value> = user_ids(shard, &internal).await?.into_iter().map(|id| json!({ "id": id })).collect();
    Ok(json!({ "users": users }).to_string())
}

/// `POST /apps/{id}/users/{user_id}/terminate_connections`: every node closes the
/// connections signed in as `user` (`pusher:signin`) with `close_code::TERMINATED`.
/// Answered once the order is on its way to every node, as Pusher does (asynchronously).
pub async fn terminate(shard: &Shard, app: &PusherApp, user: &str) -> Result<String, Refused> {
    if user.is_empty() || user.len() > USER_ID_BYTES_MAX {
        return Err((400, format!("user id must be 1 to {USER_ID_BYTES_MAX} bytes")));
    }
    let (reply, answer) = tokio::sync::oneshot::channel();
    let order = ToBridge::ClusterCloseUser { close: CloseUser { scope: app.id.as_str().into(), user: user.into() }, reply };
    push_to_bridge(shard, order)?;
    match monoio::time::timeout(bridge_wait(shard), answer).await {
        Ok(Ok(Ok(()))) => Ok("{}".into()),
        Ok(Ok(Err(why))) => Err((503, format!("terminate_connections could not reach every node: {why}"))),
        Ok(Err(_dropped)) => Err((503, "the order was dropped (the server is stopping); retry".into())),
        Err(_elapsed) => Err((503, "the bridge did not take the order in time; retry shortly".into())),
    }
}

/// A close order reached this shard: closes `conn` if it is signed in as `user` in the
/// app `scope` names. Only the close code and reason: since protocol 6 Pusher sends no
/// `pusher:error` before a close (clients read the close code), and a close drops what
/// is still queued anyway.
pub fn close_if_user(shard: &Shard, conn: &Conn, app: u16, scope: &str, user: &str) {
    let Some(app_config) = app_of(shard, app) else { return };
    if app_config.id != scope {
        return;
    }
    let matches = {
        let st = conn.state.borrow();
        st.closing.is_none() && st.wire_state.as_ref().and_then(|w| w.signed_in.as_deref()) == Some(user)
    };
    if !matches {
        return;
    }
    if let Some(m) = metrics(shard, app) {
        m.terminated.inc();
    }
    shard.close(conn, close_code::TERMINATED, "You got disconnected by the app (terminate_connections).", CloseReason::Terminated);
}

/// How long a shard waits for the bridge's answer: the bridge bounds its own wait by the
/// query timeout (plus a quarter); this only catches a bridge that stopped answering.
fn bridge_wait(shard: &Shard) -> Duration {
    shard.node.config.broker.cluster_query_timeout() * 2
}

fn push_to_bridge(shard: &Shard, message: ToBridge) -> Result<(), Refused> {
    if shard.node.bridge_inbox.push(message).is_err() {
        shard.metrics.bridge_full.inc();
        return Err((503, "server is overloaded (bridge queue full); retry shortly".into()));
    }
    Ok(())
}

/// Subscriber counts from every node.
async fn count(shard: &Shard, query: CountQuery) -> Result<Counts, Refused> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    push_to_bridge(shard, ToBridge::ClusterCount { query, reply })?;
    match monoio::time::timeout(bridge_wait(shard), answer).await {
        Ok(Ok(Ok(counts))) => Ok(counts),
        Ok(Ok(Err(why))) => Err((503, format!("cluster-wide channel counts are unavailable: {why}"))),
        Ok(Err(_dropped)) => Err((503, "the query was dropped (the server is stopping); retry".into())),
        Err(_elapsed) => Err((503, "the bridge did not answer in time; retry shortly".into())),
    }
}

/// The distinct user ids among a presence channel's members (every node's), in the order
/// first seen. Members are `{"user","conn","node","joined","info"?}` (`presence`).
async fn user_ids(shard: &Shard, internal: &str) -> Result<Vec<String>, Refused> {
    let members = crate::session::presence::members(shard, internal).await.map_err(|e| (e.code(), e.message().to_owned()))?;
    Ok(distinct_users(&members))
}

fn distinct_users(members: &[std::sync::Arc<str>]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    let mut ids: Vec<String> = Vec::new();
    for member in members {
        let user = serde_json::from_str::<Value>(member).ok().and_then(|m| m.get("user").and_then(Value::as_str).map(str::to_owned));
        if let Some(user) = user {
            if seen.insert(user.clone()) {
                ids.push(user);
            }
        }
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_distinct_and_in_order() {
        let members: Vec<std::sync::Arc<str>> = [
            r#"{"user":"b","conn":1,"node":"n1","joined":1}"#,
            r#"{"user":"a","conn":2,"node":"n1","joined":2}"#,
            r#"{"user":"b","conn":3,"node":"n2","joined":3,"info":{"x":1}}"#,
            r#"{"user":null,"conn":4,"node":"n2","joined":4}"#,
            "not json",
        ]
        .into_iter()
        .map(Into::into)
        .collect();
        assert_eq!(distinct_users(&members), vec!["b".to_string(), "a".to_string()]);
    }
}
