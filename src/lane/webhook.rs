//! Push fallback: a notification still undelivered after its first try is POSTed as JSON
//! (`{"nid","user","data","ts"}`) to `--webhook` (a push provider's endpoint or a relay
//! in front of one), retried with the Lane's backoff until a 2xx or `max_attempts`.
//!
//! Runs as its own task beside the in-app tries: its failures never block or delay
//! in-app delivery. Plain HTTP/1.1 on a tokio socket (one request per connection) —
//! a TLS-terminating proxy fronts an https endpoint. Runs on: the worker's runtime.

use crate::backoff::Backoff;
use crate::config::lane::Webhook;
use super::metrics::LaneMetrics;
use super::Notification;
use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One POST (connect, send, read the status line) may take this long.
pub const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);
/// Webhook deliveries (with their retries) running at once per worker; past it new ones
/// are skipped and counted as failed, so a dead endpoint cannot pile up tasks.
pub const WEBHOOK_IN_FLIGHT_MAX: usize = 1024;
/// Bytes of the response read to find its status line.
const RESPONSE_HEAD_BYTES_MAX: usize = 1024;

thread_local! {
    static RUNNING: Cell<usize> = const { Cell::new(0) };
}

pub async fn post(webhook: Webhook, notification: Notification, backoff: Backoff, max_attempts: u32, metrics: Arc<LaneMetrics>) {
    if RUNNING.with(|r| r.get()) >= WEBHOOK_IN_FLIGHT_MAX {
        LaneMetrics::inc(&metrics.webhook_failed);
        tracing::warn!(nid = %notification.nid, "webhook skipped: {WEBHOOK_IN_FLIGHT_MAX} already in flight");
        return;
    }
    RUNNING.with(|r| r.set(r.get() + 1));
    let body = format!(
        "{{\"nid\":{},\"user\":{},\"data\":{},\"ts\":{}}}",
        serde_json::to_string(&notification.nid).expect("string"),
        serde_json::to_string(&notification.user).expect("string"),
        notification.data.get(),
        notification.ts
    );
    for attempt in 1..=max_attempts {
        match tokio::time::timeout(WEBHOOK_TIMEOUT, send(&webhook, &body)).await {
            Ok(Ok(status)) if (200..300).contains(&status) => {
                LaneMetrics::inc(&metrics.webhook_sent);
                break;
            }
            outcome => {
                LaneMetrics::inc(&metrics.webhook_failed);
                let why = match outcome {
                    Ok(Ok(status)) => format!("HTTP {status}"),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => format!("no answer within {WEBHOOK_TIMEOUT:?}"),
                };
                tracing::warn!(nid = %notification.nid, attempt, url = %webhook.url, %why, "webhook POST failed");
                if attempt < max_attempts {
                    tokio::time::sleep(backoff.delay(attempt, fastrand::f64())).await;
                }
            }
        }
    }
    RUNNING.with(|r| r.set(r.get() - 1));
}

async fn send(webhook: &Webhook, body: &str) -> std::io::Result<u16> {
    let mut stream = tokio::net::TcpStream::connect((webhook.host.as_str(), webhook.port)).await?;
    let request = format!(
        "POST {} HTTP/1.1\r\nHost: {}:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nUser-Agent: ringcast\r\n\r\n{body}",
        webhook.path,
        webhook.host,
        webhook.port,
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < RESPONSE_HEAD_BYTES_MAX {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no HTTP status line in the answer"))
}
