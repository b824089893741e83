//! Publishers: put timestamped messages onto the channel at a paced rate.
//!
//! Owns: `POST /api/publish` over one keep-alive HTTP/1.1 connection, and the control
//! line to the built-in `limit` server (which publishes by itself). Runs on a publisher
//! thread of the parent while the main thread watches the workers.

use crate::frame;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Default)]
pub struct PublishResult {
    pub published: u64,
    pub errors: BTreeMap<String, u64>,
    pub elapsed: Duration,
}

impl PublishResult {
    pub fn achieved_rate(&self) -> f64 {
        self.published as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

pub trait Publisher: Send {
    /// Publishes at `rate` msgs/s for `duration`; returns what was accepted.
    fn publish_for(&mut self, rate: f64, duration: Duration) -> Result<PublishResult>;
}

/// Consecutive failed requests after which publishing gives up.
const HTTP_FAILURES_MAX: u32 = 5;
/// A publish answer slower than this is a failure (the gateway should answer in µs).
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

pub struct HttpPublisher {
    target: SocketAddr,
    stream: Option<TcpStream>,
    head: Vec<u8>,
    body: Vec<u8>,
    ts_at: usize,
    response: Vec<u8>,
}

impl HttpPublisher {
    pub fn new(target: SocketAddr, host: &str, api_key: &str, channel: &str, payload_bytes: usize) -> Self {
        let (data, data_ts_at) = frame::payload_json(payload_bytes);
        let prefix = format!("{{\"ch\":{},\"data\":", serde_json::to_string(channel).expect("string serializes"));
        let body = format!("{prefix}{data}}}").into_bytes();
        let head = format!(
            "POST /api/publish HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {api_key}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        HttpPublisher { target, stream: None, head, body, ts_at: prefix.len() + data_ts_at, response: Vec::with_capacity(1024) }
    }

    fn connect(&mut self) -> Result<&mut TcpStream> {
        if self.stream.is_none() {
            let s = TcpStream::connect_timeout(&self.target, HTTP_TIMEOUT)
                .with_context(|| format!("connecting the publisher to {}", self.target))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(HTTP_TIMEOUT))?;
            self.stream = Some(s);
        }
        Ok(self.stream.as_mut().expect("just connected"))
    }

    /// One request/response; returns the HTTP status.
    fn publish_one(&mut self) -> Result<u16> {
        frame::write_timestamp(&mut self.body[self.ts_at..self.ts_at + frame::TIMESTAMP_DIGITS], crate::host::now_ns());
        let mut request = Vec::with_capacity(self.head.len() + self.body.len());
        request.extend_from_slice(&self.head);
        request.extend_from_slice(&self.body);
        let mut response = std::mem::take(&mut self.response);
        response.clear();
        let stream = self.connect()?;
        stream.write_all(&request)?;
        let mut chunk = [0u8; 2048];
        let (status, want) = loop {
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                bail!("server closed the publish connection");
            }
            response.extend_from_slice(&chunk[..n]);
            if let Some(end) = frame::http_head_end(&response) {
                let status = frame::http_status(&response[..end]).context("bad HTTP status line")?;
                let len: usize = frame::http_header(&response[..end], "content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
                break (status, end + len);
            }
        };
        while response.len() < want {
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                bail!("server closed the publish connection mid-body");
            }
            response.extend_from_slice(&chunk[..n]);
        }
        self.response = response;
        Ok(status)
    }
}

impl Publisher for HttpPublisher {
    fn publish_for(&mut self, rate: f64, duration: Duration) -> Result<PublishResult> {
        let mut result = PublishResult::default();
        let start = Instant::now();
        let mut failures_in_row = 0;
        for i in 0u64.. {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            let now = Instant::now();
            if due >= start + duration {
                break;
            }
            if due > now {
                std::thread::sleep(due - now);
            }
            match self.publish_one() {
                Ok(status) if (200..300).contains(&status) => {
                    result.published += 1;
                    failures_in_row = 0;
                }
                Ok(status) => {
                    *result.errors.entry(format!("http_{status}")).or_insert(0) += 1;
                    if status == 401 || status == 403 {
                        bail!("publish refused with HTTP {status}: check --api-key");
                    }
                }
                Err(e) => {
                    self.stream = None;
                    *result.errors.entry("io".into()).or_insert(0) += 1;
                    failures_in_row += 1;
                    if failures_in_row >= HTTP_FAILURES_MAX {
                        return Err(e.context(format!("{HTTP_FAILURES_MAX} publish requests failed in a row")));
                    }
                }
            }
        }
        result.elapsed = start.elapsed().max(duration);
        Ok(result)
    }
}

/// Several HTTP publishers on their own connections and threads, each at an equal share
/// of the rate; their results add up.
pub struct ParallelPublisher {
    publishers: Vec<HttpPublisher>,
}

impl ParallelPublisher {
    pub fn new(publishers: Vec<HttpPublisher>) -> Self {
        assert!(!publishers.is_empty());
        ParallelPublisher { publishers }
    }
}

impl Publisher for ParallelPublisher {
    fn publish_for(&mut self, rate: f64, duration: Duration) -> Result<PublishResult> {
        let share = rate / self.publishers.len() as f64;
        let results: Vec<Result<PublishResult>> = std::thread::scope(|scope| {
            let handles: Vec<_> = self.publishers.iter_mut().map(|p| scope.spawn(move || p.publish_for(share, duration))).collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("publisher thread panicked")))).collect()
        });
        let mut total = PublishResult::default();
        for result in results {
            let result = result?;
            total.published += result.published;
            total.elapsed = total.elapsed.max(result.elapsed);
            for (kind, count) in result.errors {
                *total.errors.entry(kind).or_insert(0) += count;
            }
        }
        Ok(total)
    }
}

/// Drives the `limit` server child, which paces and stamps messages itself.
pub struct LimitPublisher {
    pub stdin: std::process::ChildStdin,
    pub stdout: BufReader<std::process::ChildStdout>,
}

impl Publisher for LimitPublisher {
    fn publish_for(&mut self, rate: f64, duration: Duration) -> Result<PublishResult> {
        let start = Instant::now();
        writeln!(self.stdin, "publish {rate} {}", duration.as_millis()).context("talking to the limit server")?;
        let mut line = String::new();
        self.stdout.read_line(&mut line).context("reading from the limit server")?;
        let mut words = line.split_whitespace();
        let mut result = PublishResult { elapsed: start.elapsed().max(duration), ..Default::default() };
        match (words.next(), words.next().and_then(|n| n.parse().ok()), words.nth(1).and_then(|n| n.parse::<u64>().ok())) {
            (Some("published"), Some(n), dropped) => {
                result.published = n;
                if let Some(d) = dropped.filter(|&d| d > 0) {
                    result.errors.insert("server_dropped_deliveries".into(), d);
                }
            }
            _ => bail!("limit server answered {line:?}"),
        }
        Ok(result)
    }
}
