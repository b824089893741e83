//! The HTTP/1.1 phase of a connection: read a request head within the handshake
//! timeout, route it, answer, and either keep the connection alive for the next request
//! or hand it over to the WebSocket session.

use super::websocket;
use crate::channel;
use crate::fanout::ToBridge;
use crate::metrics::Refusal;
use crate::protocol::http::{self as h, HttpLimits, Method, Parsed, Request};
use crate::shard::{sys, Identity, Shard, Wire};
use bytes::Bytes;
use monoio::net::TcpStream;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::os::fd::AsRawFd;
use std::rc::Rc;

/// What readyz tells a load balancer to wait before asking again, in seconds.
const RETRY_AFTER_SECONDS: &str = crate::admission::RETRY_AFTER_FULL_SECONDS;

thread_local! {
    static SESSION_FUTURE_SIZE_LOGGED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

enum Routed {
    Respond { bytes: Vec<u8>, keep_alive: bool },
    /// `deflate`: permessage-deflate was negotiated in `response`. `wire`: the adapter
    /// that speaks on it; `refusal`: a Pusher error the connection gets instead of a
    /// greeting, then a close (pusher-js reads close codes, not HTTP statuses).
    Upgrade { response: Vec<u8>, identity: Option<Box<Identity>>, deflate: bool, wire: Wire, refusal: Option<super::pusher::Refusal> },
}

/// A socket counted in the HTTP phase (`max_http_connections`) until dropped.
struct HttpPhase(std::sync::Arc<crate::node::Node>);

impl Drop for HttpPhase {
    fn drop(&mut self) {
        self.0.guard.http_leave();
    }
}

/// Serves one accepted socket until it closes or becomes a WebSocket.
pub async fn serve(shard: Rc<Shard>, stream: TcpStream) {
    if !shard.node.guard.http_enter() {
        // The node holds max_http_connections sockets in the HTTP phase: say so in one
        // non-blocking send (plain TCP; a TLS client just sees the close) and close, so
        // the answer is a 503 and not a descriptor shortage.
        if shard.node.config.transport.tls.is_none() {
            let msg = "too many HTTP connections on this node (max_http_connections); retry shortly or elsewhere";
            let _ = sys::send(stream.as_raw_fd(), &h::json_error(503, msg, &[("Retry-After", RETRY_AFTER_SECONDS)], false));
        }
        return;
    }
    let _phase = HttpPhase(shard.node.clone());
    let _ = stream.set_nodelay(true);
    let peer = stream.peer_addr().ok().map(|address| address.ip());
    // TLS (when configured) is negotiated here, on the shard that accepted the socket.
    let Ok(mut tls) = super::tls::accept(&shard, &stream).await else { return };
    let limits = http_limits(&shard);
    let timeout = shard.node.config.handshake_timeout;
    let pipelined_max = shard.node.config.guard.pipelined_requests_max;
    let mut buf: Vec<u8> = Vec::new();
    // Requests in a row that had already arrived when the previous answer was written.
    let mut pipelined = 0usize;
    loop {
        let buffered = !buf.is_empty();
        let read = monoio::time::timeout(timeout, read_request(&shard, &stream, &mut tls, &mut buf, &limits)).await;
        let (request, consumed) = match read {
            Err(_elapsed) => {
                if !buf.is_empty() {
                    shard.metrics.refused(Refusal::HandshakeTimeout);
                    let body = h::json_error(408, "request head not complete within the handshake timeout", &[], false);
                    let _ = write_response(&shard, &stream, &mut tls, &body).await;
                }
                return;
            }
            Ok(Err(ReadError::Closed)) => return,
            Ok(Err(ReadError::Http(error))) => {
                shard.metrics.refused(Refusal::BadRequest);
                let _ = write_response(&shard, &stream, &mut tls, &h::json_error(error.status, error.msg, &[], false)).await;
                return;
            }
            Ok(Ok(parsed)) => parsed,
        };
        buf.drain(..consumed);
        pipelined = if buffered { pipelined + 1 } else { 0 };
        if pipelined > pipelined_max {
            shard.node.guard.http_pipeline_refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let msg = format!("more than {pipelined_max} pipelined requests on one connection (max_pipelined_requests); read each answer before sending more");
            let _ = write_response(&shard, &stream, &mut tls, &h::json_error(429, &msg, &[], false)).await;
            return;
        }
        let routed = match super::longpoll::route(&shard, &request, peer).await {
            Some(bytes) => Routed::Respond { bytes, keep_alive: true },
            None => match super::notify::handle(&shard, &request).await {
                Some(bytes) => Routed::Respond { bytes, keep_alive: true },
                None => match request.path.strip_prefix("/api/presence/") {
                    Some(channel) => presence_api(&shard, &request, channel).await,
                    None => match super::pusher::api::handle(&shard, &request).await {
                        Some(bytes) => Routed::Respond { bytes, keep_alive: true },
                        None => route(&shard, &request),
                    },
                },
            },
        };
        match routed {
            Routed::Respond { mut bytes, keep_alive } => {
                shard.metrics.http_requests.inc();
                if !request.keep_alive {
                    // The client asked to close: say so, then close (below).
                    h::set_connection_close(&mut bytes);
                }
                if matches!(request.method, Method::Head) {
                    // Same head as GET, no body (RFC 9110 §9.3.2).
                    let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n").map_or(bytes.len(), |i| i + 4);
                    bytes.truncate(head_end);
                }
                if write_response(&shard, &stream, &mut tls, &bytes).await.is_err() || !keep_alive || !request.keep_alive {
                    return;
                }
            }
            Routed::Upgrade { response, identity, deflate, wire, refusal } => {
                if write_response(&shard, &stream, &mut tls, &response).await.is_err() {
                    shard.node.release();
                    return;
                }
                let leftover = if buf.is_empty() { None } else { Some(std::mem::take(&mut buf)) };
                // A task of its own: the session lives for hours, and its future should
                // not carry the HTTP phase's state (this one is several times larger).
                let conn = websocket::start(&shard, stream, identity, leftover, tls, deflate, wire, refusal);
                let session = websocket::session(shard, conn);
                if SESSION_FUTURE_SIZE_LOGGED.with(|logged| !logged.replace(true)) {
                    tracing::debug!(bytes = std::mem::size_of_val(&session), "WebSocket session task size");
                }
                monoio::spawn(session);
                return;
            }
        }
    }
}

fn http_limits(shard: &Shard) -> HttpLimits {
    HttpLimits {
        body_bytes_max: shard.node.config.max_message_bytes.max(HttpLimits::default().body_bytes_max),
        ..HttpLimits::default()
    }
}

enum ReadError {
    Closed,
    Http(h::HttpError),
}

/// Reads into the shard's shared buffer and appends to `buf`: no read buffer lives in a
/// connection's future across an await (a stack array would, making every idle
/// connection's task that much bigger).
fn recv_into(fd: std::os::fd::RawFd, tls: &mut Tls, buf: &mut Vec<u8>, shard: &Shard) -> std::io::Result<sys::ReadOutcome> {
    let mut shared = shard.read_buf.borrow_mut();
    let outcome = match tls.as_mut() {
        Some(session) => {
            let mut ciphertext = 0;
            crate::shard::tls::read_plain(session, fd, &mut shared, &mut ciphertext)?
        }
        None => sys::recv(fd, &mut shared)?,
    };
    if let sys::ReadOutcome::Data(n) = outcome {
        buf.extend_from_slice(&shared[..n]);
    }
    Ok(outcome)
}

async fn read_request(shard: &Shard, stream: &TcpStream, tls: &mut Tls, buf: &mut Vec<u8>, limits: &HttpLimits) -> Result<(Request, usize), ReadError> {
    let fd = stream.as_raw_fd();
    loop {
        if !buf.is_empty() {
            match h::parse_request(buf, limits) {
                Ok(Parsed::Complete { request, consumed }) => return Ok((request, consumed)),
                Ok(Parsed::Incomplete) => {}
                Err(error) => return Err(ReadError::Http(error)),
            }
        }
        match recv_into(fd, tls, buf, shard) {
            Ok(sys::ReadOutcome::Data(_)) => {}
            Ok(sys::ReadOutcome::WouldBlock) => {
                if stream.readable(false).await.is_err() {
                    return Err(ReadError::Closed);
                }
            }
            Ok(sys::ReadOutcome::Eof) => return Err(ReadError::Closed),
            Err(_) => {
                if let Some(session) = tls.as_mut() {
                    // A TLS error: send the alert rustls queued, then close.
                    let _ = super::tls::write_pending(session, stream).await;
                }
                return Err(ReadError::Closed);
            }
        }
    }
}

/// The connection's TLS session, when the listener terminates TLS.
pub type Tls = Option<Box<rustls::ServerConnection>>;

pub async fn write_all(stream: &TcpStream, tls: &mut Tls, mut bytes: &[u8]) -> std::io::Result<()> {
    if let Some(session) = tls.as_mut() {
        return super::tls::write_all(session, stream, bytes).await;
    }
    let fd = stream.as_raw_fd();
    while !bytes.is_empty() {
        let n = sys::send(fd, bytes)?;
        if n == 0 {
            stream.writable(false).await?;
        }
        bytes = &bytes[n..];
    }
    Ok(())
}

/// Writes an HTTP-phase answer within `http_write_timeout`. Past it the socket is set to
/// reset on close (SO_LINGER 0: the close discards what the kernel still queues, instead
/// of holding it for a client that does not read) and counted; Err either way, and the
/// caller drops the socket.
async fn write_response(shard: &Shard, stream: &TcpStream, tls: &mut Tls, bytes: &[u8]) -> std::io::Result<()> {
    match monoio::time::timeout(shard.node.config.guard.http_write_timeout, write_all(stream, tls, bytes)).await {
        Ok(written) => written,
        Err(_elapsed) => {
            shard.node.guard.http_write_timeouts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            reset_on_close(stream.as_raw_fd());
            Err(std::io::ErrorKind::TimedOut.into())
        }
    }
}

/// SO_LINGER 0: closing the socket resets it and frees its kernel buffers at once.
fn reset_on_close(fd: std::os::fd::RawFd) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a valid option struct of the size passed, on a descriptor we own.
    unsafe {
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_LINGER, (&linger as *const libc::linger).cast(), std::mem::size_of::<libc::linger>() as libc::socklen_t);
    }
}

fn respond(status: u16, content_type: &str, body: &[u8], keep_alive: bool) -> Routed {
    Routed::Respond { bytes: h::response(status, content_type, body, &[], keep_alive), keep_alive }
}

fn error(status: u16, msg: &str, extra: &[(&str, &str)]) -> Routed {
    Routed::Respond { bytes: h::json_error(status, msg, extra, true), keep_alive: true }
}

fn route(shard: &Rc<Shard>, request: &Request) -> Routed {
    let get = matches!(request.method, Method::Get | Method::Head);
    let post = matches!(request.method, Method::Post);
    match request.path.as_str() {
        "/ws" if get => upgrade(shard, request),
        path if get && path.starts_with("/app/") && !shard.node.config.pusher.apps.is_empty() => pusher_upgrade(shard, request, &path["/app/".len()..]),
        "/api/publish" if post => publish(shard, request),
        "/admin/drain" if post => drain(shard, request),
        "/healthz" if get => respond(200, "application/json", b"{\"status\":\"ok\"}", true),
        "/readyz" if get => {
            let strict = request.query_param("strict").is_some_and(|v| v == "1" || v == "true");
            let presence_down = !shard.node.presence.is_up();
            let lane_down = shard.node.lane_metrics.amqp_down();
            if shard.node.ready() && (!shard.node.broker_up() || presence_down || lane_down) {
                // Local connections still work; only cross-node fan-out and publishing
                // wait for the broker, presence for its store, notifications for RabbitMQ
                // (`lane`). `?strict=1` makes a degraded node not ready.
                let mut body = String::from("{\"status\":\"degraded\"");
                if !shard.node.broker_up() {
                    body.push_str(",\"broker\":\"disconnected\"");
                }
                if presence_down {
                    body.push_str(",\"presence\":\"unavailable\"");
                }
                if lane_down {
                    body.push_str(",\"lane\":\"disconnected\"");
                }
                body.push('}');
                respond(if strict { 503 } else { 200 }, "application/json", body.as_bytes(), true)
            } else if shard.node.ready() {
                respond(200, "application/json", b"{\"status\":\"ready\"}", true)
            } else if shard.node.is_draining() {
                Routed::Respond { bytes: h::response(503, "application/json", b"{\"status\":\"draining\"}", &[("Retry-After", RETRY_AFTER_SECONDS)], true), keep_alive: true }
            } else if shard.node.is_shutting_down() {
                error(503, "shutting down", &[("Retry-After", RETRY_AFTER_SECONDS)])
            } else {
                error(503, "node is at max_connections", &[("Retry-After", RETRY_AFTER_SECONDS)])
            }
        }
        "/metrics" if get => respond(200, "text/plain; version=0.0.4", shard.node.render_metrics().as_bytes(), true),
        path if get && super::assets::serves(path) => Routed::Respond { bytes: super::assets::respond(request), keep_alive: true },
        path if super::assets::serves(path) => error(405, "method not allowed; use GET", &[("Allow", "GET")]),
        "/ws" | "/healthz" | "/readyz" | "/metrics" => error(405, "method not allowed; use GET", &[("Allow", "GET")]),
        "/api/publish" | "/admin/drain" => error(405, "method not allowed; use POST", &[("Allow", "POST")]),
        _ => error(404, "no such route; see the README for /, /ringcast.js, /ws, /poll, /api/publish, /admin/drain, /healthz, /readyz, /metrics", &[]),
    }
}

/// The WebSocket handshake checks every route shares: 405/400/426 (counted as bad requests).
fn websocket_upgrade(shard: &Shard, request: &Request) -> Result<h::Upgrade, Routed> {
    h::websocket_upgrade(request).map_err(|e| {
        shard.metrics.refused(Refusal::BadRequest);
        let extra: &[(&str, &str)] = if e.status == 426 { &[("Sec-WebSocket-Version", "13")] } else { &[] };
        error(e.status, e.msg, extra)
    })
}

/// Admission (`max_connections`, accept rate, drain): None when admitted, else the 503.
fn admit(shard: &Shard) -> Option<Routed> {
    let refusal = crate::admission::admit(&shard.node, &shard.admission, shard.now_ms()).err()?;
    shard.metrics.refused(refusal);
    let (msg, retry_after) = crate::admission::explain(refusal);
    // Closed after the answer: a refused client in a burst must not keep a socket.
    Some(Routed::Respond { bytes: h::json_error(503, msg, &[("Retry-After", retry_after)], false), keep_alive: false })
}

fn upgrade(shard: &Rc<Shard>, request: &Request) -> Routed {
    let mut upgrade = match websocket_upgrade(shard, request) {
        Ok(upgrade) => upgrade,
        Err(refused) => return refused,
    };
    let identity = match super::identity::authenticate(shard, request) {
        Ok(identity) => identity,
        Err(e) => {
            shard.metrics.refused(Refusal::Unauthorized);
            return error(401, &e.to_string(), &[("WWW-Authenticate", "Bearer")]);
        }
    };
    if let Some(refused) = admit(shard) {
        return refused;
    }
    upgrade.deflate &= shard.node.config.compression.enabled;
    Routed::Upgrade { response: h::upgrade_response(&upgrade), identity, deflate: upgrade.deflate, wire: Wire::V1, refusal: None }
}

/// `GET /app/{key}?protocol=7…`: a Pusher client. An unknown key or an old protocol is
/// still upgraded, then told why in `pusher:error` and closed with its code (4001, 4007),
/// which is what pusher-js acts on.
fn pusher_upgrade(shard: &Rc<Shard>, request: &Request, key: &str) -> Routed {
    let mut upgrade = match websocket_upgrade(shard, request) {
        Ok(upgrade) => upgrade,
        Err(refused) => return refused,
    };
    // Pusher clients never offer the ringcast subprotocol; answer none.
    upgrade.protocol = None;
    let (app, refusal) = match super::pusher::admit(shard, key, request.query_param("protocol").as_deref()) {
        Ok(app) => (app, None),
        Err(refusal) => (u16::MAX, Some(refusal)),
    };
    if let Some(refused) = admit(shard) {
        return refused;
    }
    upgrade.deflate &= shard.node.config.compression.enabled;
    Routed::Upgrade { response: h::upgrade_response(&upgrade), identity: None, deflate: upgrade.deflate, wire: Wire::Pusher { app }, refusal }
}

#[derive(Deserialize)]
struct PublishBody<'a> {
    #[serde(borrow)]
    ch: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
}

fn publish(shard: &Rc<Shard>, request: &Request) -> Routed {
    if let Some(rejected) = check_api_key(shard, request) {
        return rejected;
    }
    let body: PublishBody = match serde_json::from_slice(&request.body) {
        Ok(body) => body,
        Err(e) => return error(400, &format!("body must be {{\"ch\":\"a.b\",\"data\":<json>}}: {e}"), &[]),
    };
    if let Err(e) = channel::validate_channel(&body.ch) {
        return error(400, &format!("bad channel: {e}"), &[]);
    }
    if body.ch.starts_with('$') {
        return error(403, crate::session::SERVER_CHANNEL_REFUSAL, &[]);
    }
    if let Err(msg) = crate::session::check_publish_size(&shard.node.config, &body.ch, body.data.get().len()) {
        shard.metrics.publish_too_large.inc();
        return error(413, &msg, &[]);
    }
    if !shard.node.broker_up() {
        shard.metrics.publish_refused.inc();
        return error(503, "the broker (NATS) is unreachable; retry shortly", &[("Retry-After", "1")]);
    }
    let message = ToBridge::Publish { channel: body.ch.as_ref().into(), data: Bytes::copy_from_slice(body.data.get().as_bytes()) };
    if shard.node.bridge_inbox.push(message).is_err() {
        shard.metrics.bridge_full.inc();
        return error(503, "publish queue is full; retry shortly", &[("Retry-After", "1")]);
    }
    respond(202, "application/json", b"{}", true)
}

/// `POST /admin/drain` (API key): the same drain as SIGTERM. Repeating it changes nothing.
fn drain(shard: &Rc<Shard>, request: &Request) -> Routed {
    if let Some(rejected) = check_api_key(shard, request) {
        return rejected;
    }
    if !crate::shard::drain::start(&shard.node) && !shard.node.is_draining() {
        return error(409, "the node is already shutting down (SIGINT); it cannot drain as well", &[]);
    }
    let body = format!("{{\"status\":\"draining\",\"drain_seconds\":{}}}", shard.node.config.admission.drain.as_secs_f64());
    respond(202, "application/json", body.as_bytes(), true)
}

/// `GET /api/presence/{channel}` → 200 `{"members":[..]}` (API key), 503 while the
/// presence store is unavailable.
async fn presence_api(shard: &Rc<Shard>, request: &Request, channel_name: &str) -> Routed {
    if !matches!(request.method, Method::Get | Method::Head) {
        return error(405, "method not allowed; use GET", &[("Allow", "GET")]);
    }
    if let Some(rejected) = check_api_key(shard, request) {
        return rejected;
    }
    let channel_name = h::percent_decode(channel_name);
    if let Err(e) = channel::validate_channel(&channel_name) {
        return error(400, &format!("bad channel in /api/presence/{{channel}}: {e}"), &[]);
    }
    if channel::is_server_token(channel_name.split('.').next().unwrap_or("")) {
        return error(400, "server channels ($sys, $pres) have no presence", &[]);
    }
    match crate::session::presence::members(shard, &channel_name).await {
        Ok(members) => {
            let body = format!("{{{}}}", super::v1::members_field(&members));
            respond(200, "application/json", body.as_bytes(), true)
        }
        Err(e) => error(e.code(), e.message(), &[("Retry-After", "1")]),
    }
}

fn check_api_key(shard: &Shard, request: &Request) -> Option<Routed> {
    let Some(configured) = shard.node.config.api_key.as_deref() else {
        return Some(error(403, "the server API is disabled: start the gateway with --api-key (or RINGCAST_API_KEY)", &[]));
    };
    match request.bearer_token() {
        Some(presented) if crate::auth::api_key_matches(presented, configured) => None,
        Some(_) => Some(error(401, "wrong API key", &[("WWW-Authenticate", "Bearer")])),
        None => Some(error(401, "missing API key: send Authorization: Bearer <api key>", &[("WWW-Authenticate", "Bearer")])),
    }
}
