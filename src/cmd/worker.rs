//! `ringcast worker`: the delivery worker as its own process (the sidecar), for gateways
//! that use RabbitMQ. It consumes `{lane_prefix}.work`, sends `notify` frames through NATS
//! (subject `{nats_prefix}.user.{id}` with `Ringcast-Frame: 1`, so every gateway delivers
//! them to its own subscribers of `user.{id}`), and hears acks and reachable users on the
//! Lane's NATS event subjects. Any number of workers may share a queue (competing
//! consumers); RabbitMQ hands a dead worker's unacked messages to the others.
//!
//! Its `--metrics-addr` also answers `/readyz` like a gateway: degraded (503 with
//! `?strict=1`) while its RabbitMQ (`lane`), NATS (`broker`) or Redis (`presence`) link is
//! down.
//!
//! Runs on: a tokio current-thread runtime with a `LocalSet`, like the gateway's bridge.

use crate::lane::metrics::LaneMetrics;
use crate::lane::worker::{FrameSink, OnlineCheck, Source, Worker, WORKER_EVENTS_MAX};
use crate::config::worker::SidecarConfig;
use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A user id no one has, asked of presence to see that Redis answers (`/readyz`).
const READYZ_PROBE_USER: &str = "_ringcast_readyz";

pub fn run(config: SidecarConfig) -> i32 {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if config.log_json { builder.json().try_init() } else { builder.try_init() };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    let local = tokio::task::LocalSet::new();
    match local.block_on(&runtime, serve(config)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ringcast worker: {e}");
            1
        }
    }
}

async fn serve(config: SidecarConfig) -> Result<(), String> {
    let lane = &config.lane;
    let url = lane.amqp.clone().expect("checked by requirements()");
    let client = crate::bridge::nats::client(&config.nats, "worker").await?;
    let (events_tx, events) = tokio::sync::mpsc::channel(WORKER_EVENTS_MAX);
    tokio::task::spawn_local(crate::bridge::lane::forward_nats_events(client.clone(), lane.prefix.clone(), events_tx));
    let metrics = Arc::new(LaneMetrics::default());
    let source = crate::lane::rabbitmq::RabbitSource::start(&url, &lane.prefix, &lane.backoff, lane.in_flight, lane.into());
    let online = match &config.presence {
        Some(presence) => OnlineCheck::Presence(crate::presence::Presence::reader(presence)?),
        None => OnlineCheck::Unknown,
    };
    if let Some(addr) = config.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("metrics_addr {addr}: {e}"))?;
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        let presence = match &online {
            OnlineCheck::Presence(presence) => Some(presence.clone()),
            _ => None,
        };
        let links = Rc::new(Links { lane: source.connected.clone(), nats: client.clone(), presence });
        tokio::task::spawn_local(serve_metrics(listener, metrics.clone(), links));
        println!("ringcast worker metrics on http://{local}/metrics");
    }
    let source = Source::Rabbit(source);
    let prefix = config.nats.prefix.clone();
    // Frames go to `{prefix}.user.{id}` marked `Ringcast-Frame: 1`: every gateway's bridge
    // passes them to the user's connections as they are.
    let frames = FrameSink::new(move |channel, frame| {
        let (client, subject) = (client.clone(), format!("{prefix}.{channel}"));
        Box::pin(async move {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(crate::bridge::nats::FRAME_HEADER, "1");
            client.publish_with_headers(subject, headers, frame).await.is_ok()
        })
    });
    println!("ringcast worker consuming {}.work (in flight ≤ {})", lane.prefix, lane.in_flight);
    let mut worker = Worker::new(lane.clone(), source, frames, online, events, metrics);
    if let Some(redis) = config.presence.as_ref().and_then(|p| p.redis.as_ref()) {
        worker = worker.with_shared_inbox(crate::lane::inbox::RedisInbox::new(&redis.url, &lane.prefix, lane.inbox_per_user)?);
    }
    worker.run().await;
    Ok(())
}

/// The engine links a worker uses, for its `/readyz`.
struct Links {
    /// The consuming RabbitMQ connection.
    lane: Rc<Cell<bool>>,
    nats: async_nats::Client,
    /// `--redis`: presence (and the fast path's inbox) on the same server.
    presence: Option<crate::presence::Presence>,
}

impl Links {
    /// `/readyz` as the gateway answers it: 200 ready, or degraded naming each link that
    /// is down (200, or 503 with `?strict=1`).
    async fn readyz(&self, strict: bool) -> (u16, String) {
        let mut down = String::new();
        if !self.lane.get() {
            down.push_str(",\"lane\":\"disconnected\"");
        }
        if self.nats.connection_state() != async_nats::connection::State::Connected {
            down.push_str(",\"broker\":\"disconnected\"");
        }
        if let Some(presence) = &self.presence {
            if presence.is_online(READYZ_PROBE_USER).await.is_err() {
                down.push_str(",\"presence\":\"unavailable\"");
            }
        }
        if down.is_empty() {
            return (200, "{\"status\":\"ready\"}".into());
        }
        (if strict { 503 } else { 200 }, format!("{{\"status\":\"degraded\"{down}}}"))
    }
}

/// A minimal HTTP endpoint (one request per connection): `/readyz` (see [`Links::readyz`])
/// and anything else `/metrics`.
async fn serve_metrics(listener: tokio::net::TcpListener, metrics: Arc<LaneMetrics>, links: Rc<Links>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        let metrics = metrics.clone();
        let links = links.clone();
        tokio::task::spawn_local(async move {
            let mut buf = [0u8; 1024];
            let read = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf)).await;
            let n = read.ok().and_then(Result::ok).unwrap_or(0);
            let target = std::str::from_utf8(&buf[..n]).ok().and_then(|head| head.split(' ').nth(1)).unwrap_or("/metrics");
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            let (status, kind, body) = if path == "/readyz" {
                let strict = query.split('&').any(|kv| kv == "strict=1" || kv == "strict=true");
                let (status, body) = links.readyz(strict).await;
                (status, "application/json", body)
            } else {
                let mut body = String::new();
                metrics.render_into(&mut body, crate::clock::now_ms());
                (200, "text/plain; version=0.0.4", body)
            };
            let reason = if status == 200 { "OK" } else { "Service Unavailable" };
            let head = format!("HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
        });
    }
}
