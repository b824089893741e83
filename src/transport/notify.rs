//! The Lane's HTTP routes, served by any shard: `POST /api/notify` and
//! `GET /api/notifications/dead` (API key). Input is validated here, on the shard, so bad
//! requests never reach the bridge; accepted ones wait (bounded) for the bridge's answer
//! that the notification is persisted.
//!
//! Runs on: a shard thread (monoio). The answer comes back in a tokio oneshot, which any
//! executor can await.

use crate::lane::{Accepted, DeadAnswer, DeadOp, Notification, DEAD_LIST_MAX, LANE_REPLY_TIMEOUT};
use crate::fanout::ToBridge;
use crate::protocol::http::{self as h, Method, Request};
use crate::shard::Shard;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::time::Duration;
use tokio::sync::oneshot;

/// `Some(response bytes)` for the Lane's routes, `None` for every other path.
pub async fn handle(shard: &Shard, request: &Request) -> Option<Vec<u8>> {
    let response = match (request.path.as_str(), &request.method) {
        ("/api/notify", Method::Post) => notify(shard, request).await,
        ("/api/notifications/dead", Method::Get) => dead(shard, request).await,
        ("/api/notify", _) => h::json_error(405, "method not allowed; use POST", &[("Allow", "POST")], true),
        ("/api/notifications/dead", _) => h::json_error(405, "method not allowed; use GET", &[("Allow", "GET")], true),
        _ => return None,
    };
    Some(response)
}

fn error(status: u16, msg: &str) -> Vec<u8> {
    h::json_error(status, msg, &[], true)
}

fn unavailable(msg: &str) -> Vec<u8> {
    h::json_error(503, msg, &[("Retry-After", "1")], true)
}

fn check_api_key(shard: &Shard, request: &Request) -> Option<Vec<u8>> {
    let Some(configured) = shard.node.config.api_key.as_deref() else {
        return Some(error(403, "the server API is disabled: start the gateway with --api-key (or RINGCAST_API_KEY)"));
    };
    match request.bearer_token() {
        Some(presented) if crate::auth::api_key_matches(presented, configured) => None,
        Some(_) => Some(h::json_error(401, "wrong API key", &[("WWW-Authenticate", "Bearer")], true)),
        None => Some(h::json_error(401, "missing API key: send Authorization: Bearer <api key>", &[("WWW-Authenticate", "Bearer")], true)),
    }
}

#[derive(Deserialize)]
struct NotifyBody<'a> {
    #[serde(borrow, default)]
    user: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    nid: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    ttl: Option<std::borrow::Cow<'a, str>>,
}

/// Checks a request body and builds the notification, or says what is wrong (status, msg).
pub fn parse_notify(body: &[u8], config: &crate::lane::LaneConfig, now_ms: u64) -> Result<Notification, (u16, String)> {
    parse_notify_body(body, config, now_ms).map(|(notification, _)| notification)
}

/// As [`parse_notify`], and whether the body named its own `nid` (false: generated here).
fn parse_notify_body(body: &[u8], config: &crate::lane::LaneConfig, now_ms: u64) -> Result<(Notification, bool), (u16, String)> {
    const SHAPE: &str = "body must be {\"user\":\"<user id>\",\"data\":<json>,\"nid\"?:\"<id>\",\"ttl\"?:\"1h\"}";
    let body: NotifyBody = serde_json::from_slice(body).map_err(|e| (400, format!("{SHAPE}: {e}")))?;
    let user = body.user.ok_or_else(|| (400, format!("user is required; {SHAPE}")))?;
    if !crate::channel::is_valid_token(&user) {
        return Err((400, format!("user {user:?} is not a user id: one channel token ([A-Za-z0-9_-], the token's sub), as it names user.{{id}}")));
    }
    let data = body.data.ok_or_else(|| (400, format!("data is required; {SHAPE}")))?;
    if data.get().len() > config.notify_bytes_max {
        return Err((413, format!("data is {} bytes, more than notify_max ({} bytes)", data.get().len(), config.notify_bytes_max)));
    }
    let caller_nid = body.nid.is_some();
    let nid = match body.nid {
        Some(nid) => {
            crate::lane::validate_nid(&nid).map_err(|e| (400, e))?;
            nid.into_owned()
        }
        None => crate::lane::new_nid(),
    };
    let ttl = match body.ttl {
        Some(ttl) => {
            let ttl = crate::config::parse_duration(&ttl).map_err(|e| (400, format!("ttl: {e}")))?;
            if ttl.is_zero() || ttl > Duration::from_millis(crate::config::lane::NOTIFY_TTL_MAX_MS) {
                return Err((400, "ttl must be above zero and at most 30 days (720h)".into()));
            }
            ttl
        }
        None => config.ttl,
    };
    let notification = Notification {
        nid,
        user: user.into_owned(),
        data: data.to_owned(),
        ts: now_ms,
        expires: now_ms + ttl.as_millis() as u64,
        attempts: 0,
        parked: 0,
    };
    Ok((notification, caller_nid))
}

async fn notify(shard: &Shard, request: &Request) -> Vec<u8> {
    if let Some(rejected) = check_api_key(shard, request) {
        return rejected;
    }
    let metrics = &shard.node.lane_metrics;
    let (notification, caller_nid) = match parse_notify_body(&request.body, &shard.node.config.lane, crate::clock::now_ms()) {
        Ok(parsed) => parsed,
        Err((status, msg)) => {
            crate::lane::metrics::LaneMetrics::inc(&metrics.rejected);
            return error(status, &msg);
        }
    };
    let nid = notification.nid.clone();
    let (reply, answer) = oneshot::channel();
    if shard.node.bridge_inbox.push(ToBridge::Notify { notification: Box::new(notification), caller_nid, reply }).is_err() {
        crate::lane::metrics::LaneMetrics::inc(&metrics.unavailable);
        return unavailable("the bridge queue is full; retry shortly");
    }
    match monoio::time::timeout(LANE_REPLY_TIMEOUT, answer).await {
        Ok(Ok(Ok(Accepted::InProgress))) => {
            crate::lane::metrics::LaneMetrics::inc(&metrics.in_progress);
            let msg = format!("nid {nid:?} is being accepted by another request right now; resend it after Retry-After (the same nid is safe to resend)");
            h::json_error(409, &msg, &[("Retry-After", "1")], true)
        }
        Ok(Ok(Ok(accepted))) => {
            let counter = if accepted == Accepted::New { &metrics.accepted } else { &metrics.duplicates };
            crate::lane::metrics::LaneMetrics::inc(counter);
            let body = format!("{{\"nid\":{}}}", serde_json::to_string(&nid).expect("string"));
            h::response(202, "application/json", body.as_bytes(), &[], true)
        }
        Ok(Ok(Err(msg))) => {
            crate::lane::metrics::LaneMetrics::inc(&metrics.unavailable);
            unavailable(&format!("not persisted: {msg}"))
        }
        Ok(Err(_)) | Err(_) => {
            crate::lane::metrics::LaneMetrics::inc(&metrics.unavailable);
            unavailable("the Lane did not confirm in time; retry (the same nid is safe to resend)")
        }
    }
}

async fn dead(shard: &Shard, request: &Request) -> Vec<u8> {
    if let Some(rejected) = check_api_key(shard, request) {
        return rejected;
    }
    let limit = match request.query_param("limit") {
        None => DEAD_LIST_MAX,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=DEAD_LIST_MAX).contains(&n) => n,
            _ => return error(400, &format!("limit must be a number from 1 to {DEAD_LIST_MAX}")),
        },
    };
    let (reply, answer) = oneshot::channel();
    if shard.node.bridge_inbox.push(ToBridge::NotifyDead { op: DeadOp::List { limit }, reply }).is_err() {
        return unavailable("the bridge queue is full; retry shortly");
    }
    match monoio::time::timeout(LANE_REPLY_TIMEOUT, answer).await {
        Ok(Ok(Ok(DeadAnswer::List(list)))) => {
            let entries: Vec<serde_json::Value> = list
                .iter()
                .map(|d| {
                    serde_json::json!({
                        "nid": d.notification.nid,
                        "user": d.notification.user,
                        "attempts": d.notification.attempts,
                        "reason": d.reason,
                        "ts": d.notification.ts,
                    })
                })
                .collect();
            let body = serde_json::to_vec(&serde_json::json!({ "dead": entries })).expect("json");
            h::response(200, "application/json", &body, &[], true)
        }
        Ok(Ok(Ok(DeadAnswer::Count(_)))) => unreachable!("a listing answers with a list"),
        Ok(Ok(Err(msg))) => unavailable(&msg),
        Ok(Err(_)) | Err(_) => unavailable("the Lane did not answer in time; retry"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> crate::lane::LaneConfig {
        crate::config::lane::build(&Default::default()).unwrap()
    }

    #[test]
    fn good_bodies() {
        let n = parse_notify(br#"{"user":"alice","data":{"x":1}}"#, &config(), 1000).unwrap();
        assert_eq!((n.user.as_str(), n.data.get(), n.ts, n.attempts), ("alice", "{\"x\":1}", 1000, 0));
        assert_eq!(n.expires, 1000 + 86_400_000);
        assert_eq!(n.nid.len(), 32);
        assert!(!parse_notify_body(br#"{"user":"alice","data":{"x":1}}"#, &config(), 0).unwrap().1);
        assert!(parse_notify_body(br#"{"user":"bob","data":"hi","nid":"order-1"}"#, &config(), 0).unwrap().1);
        let n = parse_notify(br#"{"user":"bob","data":"hi","nid":"order-1","ttl":"2s"}"#, &config(), 0).unwrap();
        assert_eq!((n.nid.as_str(), n.expires), ("order-1", 2000));
    }

    #[test]
    fn bad_bodies_say_what_is_wrong() {
        let cases: &[(&[u8], u16, &str)] = &[
            (br#"{"data":1}"#, 400, "user is required"),
            (br#"{"user":"a.b","data":1}"#, 400, "is not a user id"),
            (br#"{"user":"a"}"#, 400, "data is required"),
            (br#"{"user":"a","data":1,"nid":"a b"}"#, 400, "nid may contain"),
            (br#"{"user":"a","data":1,"ttl":"soon"}"#, 400, "ttl:"),
            (br#"{"user":"a","data":1,"ttl":"0s"}"#, 400, "ttl must be"),
            (b"not json", 400, "body must be"),
        ];
        for (body, status, needle) in cases {
            let (got, msg) = parse_notify(body, &config(), 0).unwrap_err();
            assert_eq!(got, *status, "{msg}");
            assert!(msg.contains(needle), "{msg:?} should mention {needle:?}");
        }
        let big = format!(r#"{{"user":"a","data":"{}"}}"#, "x".repeat(70_000));
        assert_eq!(parse_notify(big.as_bytes(), &config(), 0).unwrap_err().0, 413);
    }
}
