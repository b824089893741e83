//! `ringcast worker`: the delivery worker as its own process (the sidecar), for gateways
//! that use RabbitMQ. It consumes `{lane_prefix}.work`, sends `notify` frames through NATS
//! (subject `{nats_prefix}.user.{id}` with `Ringcast-Frame: 1`, so every gateway delivers
//! them to its own subscribers of `user.{id}`), and hears acks and reachable users on the
//! Lane's NATS event subjects. Any number of workers may share a queue (competing
//! consumers); RabbitMQ hands a dead worker's unacked messages to the others.
//!
//! Runs on: a tokio current-thread runtime with a `LocalSet`, like the gateway's bridge.

use super::metrics::LaneMetrics;
use super::worker::{FrameSink, OnlineCheck, Source, Worker, WORKER_EVENTS_MAX};
use super::LaneConfig;
use crate::config::NatsConfig;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Clone)]
pub struct SidecarConfig {
    pub lane: LaneConfig,
    /// `--redis`: who is online on any node (skips tries for offline users).
    pub presence: Option<crate::presence::PresenceConfig>,
    pub nats: NatsConfig,
    pub metrics_addr: Option<SocketAddr>,
    pub log_filter: String,
    pub log_json: bool,
}

/// Checks what a separate worker needs; the message says what to add.
pub fn requirements(lane: &LaneConfig, nats: Option<&NatsConfig>) -> Result<(), (&'static str, String)> {
    if lane.amqp.is_none() {
        return Err(("amqp", "ringcast worker needs --amqp (RabbitMQ): the embedded queue belongs to one gateway, whose in-process worker serves it".into()));
    }
    if nats.is_none() {
        return Err(("nats", "ringcast worker needs --nats: it reaches users on every gateway through NATS (and hears their acks there)".into()));
    }
    Ok(())
}

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
    tokio::task::spawn_local(super::bridge::forward_nats_events(client.clone(), lane.prefix.clone(), events_tx));
    let metrics = Arc::new(LaneMetrics::default());
    if let Some(addr) = config.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("metrics_addr {addr}: {e}"))?;
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        tokio::task::spawn_local(serve_metrics(listener, metrics.clone()));
        println!("ringcast worker metrics on http://{local}/metrics");
    }
    let source = Source::Rabbit(super::rabbitmq::RabbitSource::start(&url, &lane.prefix, &lane.backoff, lane.in_flight, lane.into()));
    let frames = FrameSink::Nats { client, prefix: config.nats.prefix.clone() };
    println!("ringcast worker consuming {}.work (in flight ≤ {})", lane.prefix, lane.in_flight);
    let online = match &config.presence {
        Some(presence) => OnlineCheck::Presence(crate::presence::Presence::reader(presence)?),
        None => OnlineCheck::Unknown,
    };
    let mut worker = Worker::new(lane.clone(), source, frames, online, events, metrics);
    if let Some(redis) = config.presence.as_ref().and_then(|p| p.redis.as_ref()) {
        worker = worker.with_shared_inbox(super::inbox::RedisInbox::new(&redis.url, &lane.prefix, lane.inbox_per_user)?);
    }
    worker.run().await;
    Ok(())
}

/// A minimal `/metrics` endpoint (one request per connection).
async fn serve_metrics(listener: tokio::net::TcpListener, metrics: Arc<LaneMetrics>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        let metrics = metrics.clone();
        tokio::task::spawn_local(async move {
            let mut buf = [0u8; 1024];
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf)).await;
            let mut body = String::new();
            metrics.render_into(&mut body, super::now_ms());
            let head = format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
        });
    }
}
