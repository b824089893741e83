//! The `notify` scenario's sender: `POST /api/notify` (API key) at a paced rate over
//! several keep-alive connections, each with one request in flight (a Lane answers 202
//! only once the notification is persisted, so one connection alone measures the store's
//! round trip, not its throughput).
//!
//! Owns: numbering (notification k, 1-based, goes to user (k-1) % users, id
//! `{nid_prefix}{k}`; connection c sends k = c+1, c+1+C, ...), the stamped `data`
//! (`frame::payload_template`: send time and k), accept latency and refusals by status.
//! Runs on a thread of the parent (one more per connection) while the main thread watches
//! the workers.

use crate::publish::{paced, read_http_response, PublishResult, FAILURES_IN_ROW_MAX, IO_TIMEOUT};
use crate::{frame, stats};
use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What to send and where.
#[derive(Debug, Clone)]
pub struct NotifyPlan {
    pub target: SocketAddr,
    pub host: String,
    pub api_key: String,
    pub users: usize,
    pub sub_prefix: String,
    pub nid_prefix: String,
    /// Bytes of each notification's `data` JSON.
    pub payload: usize,
    /// `ttl` field of each notification (e.g. "10m"); none: the server's default.
    pub ttl: Option<String>,
    /// Sender connections, each with its share of the rate.
    pub connections: usize,
}

/// What the sender saw.
#[derive(Debug)]
pub struct NotifyResult {
    /// Requests attempted (answered or not).
    pub attempted: u64,
    /// Numbers of the notifications answered 2xx (accepted, persisted), unsorted.
    pub accepted: Vec<u64>,
    /// Non-2xx answers by status (`http_503`), and `io` for failed requests.
    pub refusals: BTreeMap<String, u64>,
    /// Request written → whole answer read, for accepted notifications (ns).
    pub accept_latency: Histogram<u64>,
    pub elapsed: Duration,
}

impl NotifyResult {
    pub fn accepted_per_s(&self) -> f64 {
        self.accepted.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl NotifyPlan {
    pub fn user_of(&self, k: u64) -> usize {
        ((k - 1) % self.users as u64) as usize
    }

    /// The request for notification `k`, stamped now.
    fn request(&self, k: u64, template: &frame::PayloadTemplate, data: &mut Vec<u8>) -> Vec<u8> {
        data.clear();
        data.extend_from_slice(template.text.as_bytes());
        frame::write_fixed(&mut data[template.ts_at..template.ts_at + frame::TIMESTAMP_DIGITS], crate::host::now_ns());
        frame::write_padded(&mut data[template.n_at..template.n_at + frame::COUNTER_DIGITS], k);
        let ttl = self.ttl.as_ref().map(|t| format!(",\"ttl\":{}", serde_json::to_string(t).expect("string serializes"))).unwrap_or_default();
        let head = format!("{{\"user\":\"{}{}\",\"nid\":\"{}{k}\"{ttl},\"data\":", self.sub_prefix, self.user_of(k), self.nid_prefix);
        let body_len = head.len() + data.len() + 1;
        let mut out = format!(
            "POST /api/notify HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {body_len}\r\n\r\n{head}",
            self.host, self.api_key
        )
        .into_bytes();
        out.extend_from_slice(data);
        out.push(b'}');
        out
    }
}

/// A refusal that no retry fixes: the run is misconfigured.
fn fatal_status(status: u16, body: &[u8]) -> Option<String> {
    let why = String::from_utf8_lossy(body);
    match status {
        401 | 403 => Some(format!("POST /api/notify refused with HTTP {status}: check --api-key ({why})")),
        404 => Some("POST /api/notify answered 404: this server has no notifications (Lane) endpoint".into()),
        400 | 413 => Some(format!("POST /api/notify refused the notification with HTTP {status}: {why}")),
        _ => None,
    }
}

/// One sender connection: notifications `first`, `first + step`, ... at `rate` for `duration`.
fn send_one(plan: &NotifyPlan, first: u64, step: u64, rate: f64, duration: Duration, accepted_now: &AtomicU64) -> Result<NotifyResult> {
    let template = frame::payload_template(plan.payload);
    let mut data = Vec::with_capacity(template.text.len());
    let mut stream: Option<TcpStream> = None;
    let mut response = Vec::with_capacity(1024);
    let mut out = NotifyResult { attempted: 0, accepted: Vec::new(), refusals: BTreeMap::new(), accept_latency: stats::new_histogram(), elapsed: Duration::ZERO };
    let mut next = first;
    let mut failures_in_row = 0;
    let mut publish = PublishResult::default();
    let mut attempt = |_: usize, _: &mut PublishResult| -> Result<u64> {
        let k = next;
        next += step;
        out.attempted += 1;
        let request = plan.request(k, &template, &mut data);
        let started = Instant::now();
        let answer = (|| -> Result<u16> {
            if stream.is_none() {
                let s = TcpStream::connect_timeout(&plan.target, IO_TIMEOUT).with_context(|| format!("connecting to {}", plan.target))?;
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(IO_TIMEOUT))?;
                s.set_write_timeout(Some(IO_TIMEOUT))?;
                stream = Some(s);
            }
            let s = stream.as_mut().expect("connected above");
            s.write_all(&request)?;
            response.clear();
            read_http_response(s, &mut response)
        })();
        match answer {
            Ok(status) if (200..300).contains(&status) => {
                out.accept_latency.saturating_record(started.elapsed().as_nanos() as u64);
                out.accepted.push(k);
                accepted_now.fetch_add(1, Ordering::Relaxed);
                failures_in_row = 0;
                Ok(1)
            }
            Ok(status) => {
                let body = frame::http_head_end(&response).map_or(&response[..0], |end| &response[end..]);
                if let Some(fatal) = fatal_status(status, body) {
                    bail!(fatal);
                }
                *out.refusals.entry(format!("http_{status}")).or_insert(0) += 1;
                Ok(0)
            }
            Err(e) => {
                stream = None;
                *out.refusals.entry("io".into()).or_insert(0) += 1;
                failures_in_row += 1;
                if failures_in_row >= FAILURES_IN_ROW_MAX {
                    return Err(e.context(format!("{FAILURES_IN_ROW_MAX} notify requests failed in a row")));
                }
                Ok(0)
            }
        }
    };
    if rate > 0.0 {
        paced(rate, duration, 1, &mut publish, &mut attempt)?;
    } else {
        // Closed loop: each connection sends its next notification as soon as the last is answered.
        let start = Instant::now();
        while start.elapsed() < duration {
            attempt(1, &mut publish)?;
        }
        publish.elapsed = start.elapsed();
    }
    out.elapsed = publish.elapsed;
    Ok(out)
}

/// Sends at `rate` notifications/s (0: as fast as answers come, one in flight per
/// connection) for `duration` over `plan.connections` connections; `accepted_now` counts
/// acceptances as they happen (for the live line).
pub fn send_for(plan: &NotifyPlan, rate: f64, duration: Duration, accepted_now: &AtomicU64) -> Result<NotifyResult> {
    if plan.users == 0 || plan.connections == 0 {
        bail!("notify needs at least one user and one sender connection");
    }
    let c = plan.connections as u64;
    let results: Vec<Result<NotifyResult>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..c).map(|i| scope.spawn(move || send_one(plan, i + 1, c, (rate / c as f64).max(0.0), duration, accepted_now))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("notify sender thread panicked")))).collect()
    });
    let mut total = NotifyResult { attempted: 0, accepted: Vec::new(), refusals: BTreeMap::new(), accept_latency: stats::new_histogram(), elapsed: Duration::ZERO };
    for r in results {
        let r = r?;
        total.attempted += r.attempted;
        total.accepted.extend(r.accepted);
        for (k, v) in r.refusals {
            *total.refusals.entry(k).or_insert(0) += v;
        }
        total.accept_latency.add(&r.accept_latency).expect("same histogram shape");
        total.elapsed = total.elapsed.max(r.elapsed);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(connections: usize) -> NotifyPlan {
        NotifyPlan {
            target: "127.0.0.1:9".parse().unwrap(),
            host: "127.0.0.1:9".into(),
            api_key: "k".into(),
            users: 4,
            sub_prefix: "u".into(),
            nid_prefix: "r1-".into(),
            payload: 200,
            ttl: Some("10m".into()),
            connections,
        }
    }

    #[test]
    fn requests_are_round_robin_stamped_and_valid_json() {
        let p = plan(1);
        let t = frame::payload_template(p.payload);
        let mut data = Vec::new();
        let before = crate::host::now_ns();
        for k in 1..=9u64 {
            let req = p.request(k, &t, &mut data);
            let end = frame::http_head_end(&req).unwrap();
            let len: usize = frame::http_header(&req[..end], "content-length").unwrap().parse().unwrap();
            assert_eq!(req.len() - end, len, "Content-Length matches the body");
            assert!(req.starts_with(b"POST /api/notify HTTP/1.1\r\n") && frame::contains(&req[..end], b"Authorization: Bearer k\r\n"));
            let body: serde_json::Value = serde_json::from_slice(&req[end..]).unwrap();
            assert_eq!(body["user"], format!("u{}", (k - 1) % 4));
            assert_eq!(body["nid"], format!("r1-{k}"));
            assert_eq!(body["ttl"], "10m");
            let raw = serde_json::to_vec(&body["data"]).unwrap();
            assert!(frame::find_timestamp(&req[end..]).unwrap() >= before, "{}", String::from_utf8_lossy(&raw));
            assert_eq!(frame::find_counter(&req[end..]), Some(k));
        }
    }

    #[test]
    fn misconfiguration_is_fatal_and_overload_is_counted() {
        assert!(fatal_status(401, b"").unwrap().contains("--api-key"));
        assert!(fatal_status(404, b"").unwrap().contains("no notifications"));
        assert!(fatal_status(400, br#"{"error":{"code":400,"msg":"bad user"}}"#).unwrap().contains("bad user"));
        assert_eq!(fatal_status(503, b""), None);
        assert_eq!(fatal_status(429, b""), None);
    }

    #[test]
    fn a_dead_server_ends_the_sender_with_a_clear_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut p = plan(2);
        p.target = format!("127.0.0.1:{port}").parse().unwrap();
        let counter = AtomicU64::new(0);
        let err = send_for(&p, 1000.0, Duration::from_secs(2), &counter).unwrap_err();
        assert!(format!("{err:#}").contains("failed in a row"), "{err:#}");
        assert_eq!(counter.load(Ordering::Relaxed), 0);
    }
}
