//! Publishers: put stamped messages onto channels at a paced rate.
//!
//! Owns: the ways in — `POST /api/publish` (one keep-alive HTTP/1.1 connection, one
//! request in flight), the Pusher HTTP API (`POST /apps/{id}/events`, signed per request,
//! likewise one in flight), NATS (`PUB` over TCP, pipelined: every message due goes out in one
//! write), MQTT (QoS 0 `PUBLISH` over TCP, pipelined) — and the control line to the
//! built-in `limit` server (which publishes by itself). Every message carries the send
//! time and a per-channel message number (see `frame::payload_template`); a publisher
//! given several channels sends to them in turn. Runs on a publisher thread of the parent
//! while the main thread watches the workers.

use crate::adapter::{self, TargetKind};
use crate::{frame, mqtt, nats, pusher};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
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

    fn error(&mut self, kind: &str) {
        *self.errors.entry(kind.to_string()).or_insert(0) += 1;
    }
}

pub trait Publisher: Send {
    /// Publishes at `rate` msgs/s for `duration`; returns what was accepted.
    fn publish_for(&mut self, rate: f64, duration: Duration) -> Result<PublishResult>;
}

/// Consecutive failed requests after which publishing gives up (unless outages are expected).
pub(crate) const FAILURES_IN_ROW_MAX: u32 = 5;
/// A server answer slower than this is a failure. Servers answer in µs, except a gateway
/// whose core is busy writing a broadcast to its subscribers: in the 1M run (56 gateways
/// on one core) the second broadcast's `202` came more than 5 s after its request.
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// While an outage is expected (`reconnect`), a connect attempt waits at most this long,
/// so pacing goes on while the server is down.
const OUTAGE_CONNECT_TIMEOUT: Duration = Duration::from_millis(200);
/// Messages written per pipelined write (NATS, MQTT): bounds the batch buffer (~64 KiB at
/// 250 B) while a slow start catches up.
const PIPELINE_BATCH_MAX: usize = 256;
/// A pipelined publisher reads the server's side (PING, -ERR) this often.
const PIPELINE_READ_EVERY: Duration = Duration::from_millis(100);

/// How messages get onto the channels (`--publish`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// `POST /api/publish` on the ringcast node at `--url`.
    Http,
    /// The Pusher HTTP API, `POST /apps/{id}/events` (signed), on the node at `--url`.
    Pusher,
    /// NATS `PUB` to subject `{prefix}.{channel}` (no prefix: the channel itself).
    Nats { addr: SocketAddr, prefix: Option<String> },
    /// MQTT QoS 0 `PUBLISH` to the channel's topic (`.` → `/`), under `{prefix}/` when set
    /// (ringcast behind nats-server's MQTT listener: topic `rc/a/b` is channel `a.b`).
    Mqtt { addr: SocketAddr, prefix: Option<String> },
}

impl Via {
    pub fn describe(&self) -> String {
        match self {
            Via::Http => "http /api/publish".into(),
            Via::Pusher => "pusher http /apps/{id}/events".into(),
            Via::Nats { addr, prefix } => format!("nats://{addr} subject prefix {:?}", prefix.as_deref().unwrap_or("")),
            Via::Mqtt { addr, prefix: None } => format!("mqtt://{addr}"),
            Via::Mqtt { addr, prefix: Some(p) } => format!("mqtt://{addr}?prefix={p}"),
        }
    }
}

/// Parses `--publish`: `http`, `nats://host:port[?prefix=P]` or `mqtt://host:port[?prefix=P]`
/// (see [`broker_url`] for the prefix).
pub fn parse_via(text: Option<&str>, kind: TargetKind) -> Result<Via> {
    let via = match text {
        None | Some("http" | "pusher") if kind == TargetKind::Pusher => Via::Pusher,
        None | Some("http") => Via::Http,
        Some(url) if url.starts_with("nats://") => {
            let (addr, prefix) = broker_url(url, "nats://", kind)?;
            Via::Nats { addr, prefix }
        }
        // Ringcast hears MQTT through nats-server, whose subjects carry --nats-prefix.
        Some(url) if url.starts_with("mqtt://") => {
            let (addr, prefix) = broker_url(url, "mqtt://", kind)?;
            Via::Mqtt { addr, prefix }
        }
        Some(other) => bail!("--publish {other:?}: give http, nats://host:port[?prefix=rc] or mqtt://host:port[?prefix=rc]"),
    };
    match (kind, &via) {
        (TargetKind::Ringcast, Via::Http | Via::Nats { .. } | Via::Mqtt { .. }) | (TargetKind::NatsWs, Via::Nats { .. }) | (TargetKind::MqttWs, Via::Mqtt { .. }) => Ok(via),
        (TargetKind::NatsWs, _) => bail!("--target nats-ws publishes through NATS: add --publish nats://127.0.0.1:PORT (scripts/peers.sh prints it)"),
        (TargetKind::MqttWs, _) => bail!("--target mqtt-ws publishes through MQTT: add --publish mqtt://127.0.0.1:PORT (scripts/peers.sh prints it)"),
        (TargetKind::Pusher, Via::Pusher) => Ok(via),
        (TargetKind::Pusher, _) => bail!("--target pusher publishes through the server's signed HTTP API: drop --publish (or give --publish pusher)"),
        (_, Via::Pusher) => unreachable!("Via::Pusher is only chosen for --target pusher"),
    }
}

/// `SCHEME host:port[?prefix=P]`: the loopback address and the subject/topic prefix, which
/// defaults to `rc` (the gateway's `--nats-prefix` default) for the ringcast target and
/// to none for the peers, whose subscribers use the bare channel.
fn broker_url(url: &str, scheme: &str, kind: TargetKind) -> Result<(SocketAddr, Option<String>)> {
    let rest = &url[scheme.len()..];
    let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut prefix = (kind == TargetKind::Ringcast).then(|| "rc".to_string());
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("prefix", p)) => prefix = (!p.is_empty()).then(|| p.to_string()),
            _ => bail!("--publish {url}: unknown query {pair:?}; the only one is ?prefix=P"),
        }
    }
    Ok((loopback(authority.trim_end_matches('/'), url)?, prefix))
}

fn loopback(authority: &str, url: &str) -> Result<SocketAddr> {
    authority
        .to_socket_addrs()
        .with_context(|| format!("--publish {url}: resolving {authority:?} (give host:port)"))?
        .find(|a| a.ip().is_loopback())
        .with_context(|| format!("--publish {url}: {authority} is not a loopback address"))
}

/// One channel's pre-encoded wire message, patched in place per send.
struct Encoded {
    bytes: Vec<u8>,
    ts_at: usize,
    n_at: usize,
    /// Number of the next message on this channel (1-based); advances only once a message
    /// is accepted, so a failed HTTP attempt never looks like a gap to subscribers.
    next_n: u64,
}

impl Encoded {
    /// `prefix` + data + `suffix` around the payload template.
    fn new(prefix: &[u8], payload_bytes: usize, suffix: &[u8], wrap: impl FnOnce(&[u8]) -> (Vec<u8>, usize)) -> Encoded {
        let t = frame::payload_template(payload_bytes);
        let mut inner = prefix.to_vec();
        inner.extend_from_slice(t.text.as_bytes());
        inner.extend_from_slice(suffix);
        let (bytes, inner_at) = wrap(&inner);
        let base = inner_at + prefix.len();
        Encoded { bytes, ts_at: base + t.ts_at, n_at: base + t.n_at, next_n: 1 }
    }

    /// A Pusher trigger body: the data JSON travels escaped inside a string, so its stamp
    /// offsets are found in the escaped text (digits and spaces need no escaping).
    fn pusher(channel: &str, payload_bytes: usize) -> Encoded {
        let t = frame::payload_template(payload_bytes);
        let (bytes, at) = pusher::event_body(channel, &t.text);
        let find = |key: &[u8]| at + bytes[at..].windows(key.len()).position(|w| w == key).expect("the key is in the body") + key.len();
        let (ts_at, n_at) = (find(br#"\"lt_ns\":"#), find(br#"\"lt_n\":"#));
        Encoded { bytes, ts_at, n_at, next_n: 1 }
    }

    fn stamp(&mut self) -> &[u8] {
        frame::write_fixed(&mut self.bytes[self.ts_at..self.ts_at + frame::TIMESTAMP_DIGITS], crate::host::now_ns());
        frame::write_padded(&mut self.bytes[self.n_at..self.n_at + frame::COUNTER_DIGITS], self.next_n);
        &self.bytes
    }
}

/// The channels one publisher sends to, in turn.
struct RoundRobin {
    channels: Vec<Encoded>,
    next: usize,
}

impl RoundRobin {
    fn current(&mut self) -> &mut Encoded {
        &mut self.channels[self.next]
    }

    /// The current message was accepted: number the next one and move to the next channel.
    fn accepted(&mut self) {
        self.channels[self.next].next_n += 1;
        self.next = (self.next + 1) % self.channels.len();
    }
}

/// Paces `send` at `rate` for `duration`. `send(n)` tries to send `n` messages and says how
/// many were accepted; pacing follows attempts, so an outage does not cause a catch-up burst.
pub(crate) fn paced(rate: f64, duration: Duration, batch_max: usize, result: &mut PublishResult, mut send: impl FnMut(usize, &mut PublishResult) -> Result<u64>) -> Result<()> {
    if !(rate > 0.0 && rate.is_finite()) {
        bail!("publish rate must be above 0 msgs/s (got {rate})");
    }
    let start = Instant::now();
    let total = (rate * duration.as_secs_f64()).ceil().max(1.0) as u64;
    let mut attempted = 0u64;
    while attempted < total {
        let now = Instant::now();
        if now >= start + duration {
            break;
        }
        let due = (((now - start).as_secs_f64() * rate) as u64 + 1).min(total);
        if due <= attempted {
            let next = start + Duration::from_secs_f64(attempted as f64 / rate);
            std::thread::sleep(next.saturating_duration_since(now).min(Duration::from_millis(50)));
            continue;
        }
        let n = ((due - attempted) as usize).min(batch_max);
        attempted += n as u64;
        result.published += send(n, result)?;
    }
    result.elapsed = start.elapsed().max(duration);
    Ok(())
}

/// `POST /api/publish` (or the Pusher API's `POST /apps/{id}/events`) with one request in flight.
pub struct HttpPublisher {
    target: SocketAddr,
    stream: Option<TcpStream>,
    messages: RoundRobin,
    response: Vec<u8>,
    tolerate_outage: bool,
    /// Pusher: each message is a bare body, signed (timestamp, body_md5) into `request` per send.
    pusher: Option<PusherSigner>,
    request: Vec<u8>,
}

struct PusherSigner {
    app: pusher::App,
    host: String,
}

impl HttpPublisher {
    pub fn new(target: SocketAddr, host: &str, api_key: &str, channels: &[String], payload_bytes: usize, tolerate_outage: bool) -> Self {
        let channels = channels
            .iter()
            .map(|ch| {
                let prefix = format!("{{\"ch\":{},\"data\":", serde_json::to_string(ch).expect("string serializes"));
                Encoded::new(prefix.as_bytes(), payload_bytes, b"}", |body| {
                    let head = format!(
                        "POST /api/publish HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {api_key}\r\n\
                         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    let mut bytes = head.clone().into_bytes();
                    bytes.extend_from_slice(body);
                    (bytes, head.len())
                })
            })
            .collect();
        HttpPublisher { target, stream: None, messages: RoundRobin { channels, next: 0 }, response: Vec::with_capacity(1024), tolerate_outage, pusher: None, request: Vec::new() }
    }

    /// Triggers through the Pusher HTTP API of `app` (event `lt`, one channel per request).
    pub fn pusher(target: SocketAddr, host: &str, app: &pusher::App, channels: &[String], payload_bytes: usize, tolerate_outage: bool) -> Self {
        let channels = channels.iter().map(|ch| Encoded::pusher(ch, payload_bytes)).collect();
        HttpPublisher {
            target,
            stream: None,
            messages: RoundRobin { channels, next: 0 },
            response: Vec::with_capacity(1024),
            tolerate_outage,
            pusher: Some(PusherSigner { app: app.clone(), host: host.to_string() }),
            request: Vec::with_capacity(1024),
        }
    }

    /// The next request's bytes, stamped (and signed, for Pusher).
    fn next_request(&mut self) -> &[u8] {
        let stamped = self.messages.current().stamp();
        match &self.pusher {
            None => stamped,
            Some(signer) => {
                let now_s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
                pusher::trigger_request(&mut self.request, &signer.app, &signer.host, stamped, now_s);
                &self.request
            }
        }
    }

    fn connect(&mut self) -> Result<&mut TcpStream> {
        if self.stream.is_none() {
            let wait = if self.tolerate_outage { OUTAGE_CONNECT_TIMEOUT } else { IO_TIMEOUT };
            let s = TcpStream::connect_timeout(&self.target, wait).with_context(|| format!("connecting the publisher to {}", self.target))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(IO_TIMEOUT))?;
            self.stream = Some(s);
        }
        Ok(self.stream.as_mut().expect("just connected"))
    }

    /// One request/response; returns the HTTP status.
    fn publish_one(&mut self) -> Result<u16> {
        let mut response = std::mem::take(&mut self.response);
        response.clear();
        self.connect()?;
        let mut stream = self.stream.take().expect("connected above");
        let written = stream.write_all(self.next_request());
        self.stream = Some(stream);
        written?;
        let stream = self.stream.as_mut().expect("put back above");
        let status = read_http_response(stream, &mut response)?;
        // Sockudo answers every API call with `connection: close`: the next request then
        // goes on a new connection instead of failing on this one.
        let head = &response[..frame::http_head_end(&response).unwrap_or(response.len())];
        if frame::http_header(head, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close")) {
            self.stream = None;
        }
        self.response = response;
        Ok(status)
    }
}

impl Publisher for HttpPublisher {
    fn publish_for(&mut self, rate: f64, duration: Duration) -> Result<PublishResult> {
        let mut result = PublishResult::default();
        let mut failures_in_row = 0;
        paced(rate, duration, 1, &mut result, |_, result| match self.publish_one() {
            Ok(status) if (200..300).contains(&status) => {
                self.messages.accepted();
                failures_in_row = 0;
                Ok(1)
            }
            Ok(status) => {
                result.error(&format!("http_{status}"));
                if status == 401 || status == 403 {
                    let what = if self.pusher.is_some() { "--pusher-app (and the clocks: auth_timestamp must be within 600 s)" } else { "--api-key" };
                    bail!("publish refused with HTTP {status}: check {what}");
                }
                Ok(0)
            }
            Err(e) => {
                self.stream = None;
                result.error("io");
                failures_in_row += 1;
                if failures_in_row >= FAILURES_IN_ROW_MAX && !self.tolerate_outage {
                    return Err(e.context(format!("{FAILURES_IN_ROW_MAX} publish requests failed in a row")));
                }
                Ok(0)
            }
        })?;
        Ok(result)
    }
}

/// Reads one HTTP/1.1 response (head and a Content-Length body) into `response`; returns
/// its status. The body is `response[head_end..]`.
pub(crate) fn read_http_response(stream: &mut TcpStream, response: &mut Vec<u8>) -> Result<u16> {
    let mut chunk = [0u8; 2048];
    let (status, want) = loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            bail!("server closed the publish connection");
        }
        response.extend_from_slice(&chunk[..n]);
        if let Some(end) = frame::http_head_end(response) {
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
    Ok(status)
}

/// A pipelined publisher over plain TCP: NATS or MQTT. Everything due is written at once.
pub struct PipelinePublisher {
    proto: Pipeline,
    target: SocketAddr,
    client_name: String,
    stream: Option<TcpStream>,
    messages: RoundRobin,
    batch: Vec<u8>,
    inbound: Vec<u8>,
    tolerate_outage: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pipeline {
    Nats,
    Mqtt,
}

impl PipelinePublisher {
    pub fn nats(addr: SocketAddr, prefix: Option<&str>, channels: &[String], payload_bytes: usize, name: String, tolerate_outage: bool) -> Self {
        let messages = channels
            .iter()
            .map(|ch| {
                let subject = adapter::wire_name(TargetKind::NatsWs, ch, prefix);
                Encoded::new(b"", payload_bytes, b"", |payload| {
                    let mut bytes = Vec::new();
                    nats::push_pub(&mut bytes, &subject, payload);
                    let at = bytes.len() - payload.len() - 2;
                    (bytes, at)
                })
            })
            .collect();
        Self::new(Pipeline::Nats, addr, messages, name, tolerate_outage)
    }

    pub fn mqtt(addr: SocketAddr, prefix: Option<&str>, channels: &[String], payload_bytes: usize, name: String, tolerate_outage: bool) -> Self {
        let messages = channels
            .iter()
            .map(|ch| {
                let topic = match prefix {
                    Some(p) => format!("{p}/{}", mqtt::topic_of(ch)),
                    None => mqtt::topic_of(ch),
                };
                Encoded::new(b"", payload_bytes, b"", |payload| {
                    let mut bytes = Vec::new();
                    mqtt::push_publish(&mut bytes, &topic, payload);
                    let at = bytes.len() - payload.len();
                    (bytes, at)
                })
            })
            .collect();
        Self::new(Pipeline::Mqtt, addr, messages, name, tolerate_outage)
    }

    fn new(proto: Pipeline, target: SocketAddr, channels: Vec<Encoded>, client_name: String, tolerate_outage: bool) -> Self {
        PipelinePublisher {
            proto,
            target,
            client_name,
            stream: None,
            messages: RoundRobin { channels, next: 0 },
            batch: Vec::new(),
            inbound: Vec::new(),
            tolerate_outage,
        }
    }

    /// Connects and logs in: NATS INFO → CONNECT + PING → PONG; MQTT CONNECT → CONNACK.
    fn connect(&mut self) -> Result<()> {
        if self.stream.is_some() {
            return Ok(());
        }
        let wait = if self.tolerate_outage { OUTAGE_CONNECT_TIMEOUT } else { IO_TIMEOUT };
        let mut s = TcpStream::connect_timeout(&self.target, wait).with_context(|| format!("connecting the publisher to {}", self.target))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        self.inbound.clear();
        match self.proto {
            Pipeline::Nats => {
                let mut login = nats::connect_line(&self.client_name).into_bytes();
                login.extend_from_slice(nats::PING);
                s.write_all(&login)?;
            }
            Pipeline::Mqtt => s.write_all(&mqtt::connect(&self.client_name, 0))?,
        }
        self.stream = Some(s);
        self.await_answer(true).context("logging in")
    }

    /// Reads until the login answer (`login`) or the answer to our PING / PINGREQ arrives.
    fn await_answer(&mut self, login: bool) -> Result<()> {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            if self.consume_inbound(true, login)? {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("no answer from {} within {IO_TIMEOUT:?}", self.target);
            }
            let stream = self.stream.as_mut().expect("connected");
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                bail!("{} closed the publisher connection", self.target);
            }
            self.inbound.extend_from_slice(&chunk[..n]);
        }
    }

    /// Acts on what the server sent so far; true once the awaited answer is among it.
    fn consume_inbound(&mut self, awaiting: bool, login: bool) -> Result<bool> {
        let mut pos = 0;
        let mut answered = false;
        let mut reply: Vec<u8> = Vec::new();
        match self.proto {
            Pipeline::Nats => {
                while let Some((op, used)) = nats::parse_op(&self.inbound[pos..]).map_err(anyhow::Error::msg)? {
                    pos += used;
                    match op {
                        nats::ServerOp::Ping => reply.extend_from_slice(nats::PONG),
                        nats::ServerOp::Pong => answered = true,
                        nats::ServerOp::Err(e) => bail!("NATS server said -ERR {e}"),
                        _ => {}
                    }
                }
            }
            Pipeline::Mqtt => {
                while let Some((packet, used)) = mqtt::parse_packet(&self.inbound[pos..]).map_err(anyhow::Error::msg)? {
                    pos += used;
                    match packet {
                        mqtt::ServerPacket::ConnAck { return_code: 0 } if login => answered = true,
                        mqtt::ServerPacket::ConnAck { return_code } => bail!("MQTT broker refused the publisher: CONNACK return code {return_code}"),
                        mqtt::ServerPacket::PingResp => answered = true,
                        _ => {}
                    }
                }
            }
        }
        self.inbound.drain(..pos);
        if !reply.is_empty() {
            self.stream.as_mut().expect("connected").write_all(&reply)?;
        }
        Ok(awaiting && answered)
    }

    /// Non-blocking look at the server's side between batches (PING, -ERR).
    fn poll_inbound(&mut self) -> Result<()> {
        let stream = self.stream.as_mut().expect("connected");
        stream.set_nonblocking(true)?;
        let mut chunk = [0u8; 4096];
        let read = loop {
            match stream.read(&mut chunk) {
                Ok(0) => break Err(anyhow::anyhow!("{} closed the publisher connection", self.target)),
                Ok(n) => self.inbound.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break Ok(()),
                Err(e) => break Err(e.into()),
            }
        };
        let _ = stream.set_nonblocking(false);
        // What the server said before closing (a NATS -ERR) explains the close best.
        self.consume_inbound(false, false)?;
        read
    }

    /// After a failed write: the server's own reason (NATS `-ERR ...`), if it gave one. Such
    /// a refusal is a setup error (payload too big, permissions), never worth retrying.
    fn server_refusal(&mut self) -> Option<anyhow::Error> {
        self.stream.as_ref()?;
        match self.poll_inbound() {
            Err(e) if format!("{e:#}").contains("-ERR") || format!("{e:#}").contains("refused") => Some(e),
            _ => None,
        }
    }

    fn send_batch(&mut self, n: usize) -> Result<u64> {
        self.connect()?;
        self.batch.clear();
        for _ in 0..n {
            let bytes = self.messages.current().stamp();
            self.batch.extend_from_slice(bytes);
            self.messages.accepted();
        }
        self.stream.as_mut().expect("connected").write_all(&self.batch)?;
        Ok(n as u64)
    }

    /// Round trip after the last publish: the server has processed everything before it.
    fn flush(&mut self) -> Result<()> {
        let ping: &[u8] = match self.proto {
            Pipeline::Nats => nats::PING,
            Pipeline::Mqtt => &mqtt::PINGREQ,
        };
        self.stream.as_mut().expect("connected").write_all(ping)?;
        self.await_answer(false)
    }
}

impl Publisher for PipelinePublisher {
    fn publish_for(&mut self, rate: f64, duration: Duration) -> Result<PublishResult> {
        let mut result = PublishResult::default();
        let mut failures_in_row = 0;
        let mut last_read = Instant::now();
        self.connect()?;
        paced(rate, duration, PIPELINE_BATCH_MAX, &mut result, |n, result| {
            let sent = self.send_batch(n).and_then(|sent| {
                if last_read.elapsed() >= PIPELINE_READ_EVERY {
                    last_read = Instant::now();
                    self.poll_inbound()?;
                }
                Ok(sent)
            });
            match sent {
                Ok(sent) => {
                    failures_in_row = 0;
                    Ok(sent)
                }
                Err(e) => {
                    if let Some(refusal) = self.server_refusal() {
                        return Err(refusal.context("the server refused a publish"));
                    }
                    self.stream = None;
                    result.error("io");
                    failures_in_row += 1;
                    if failures_in_row >= FAILURES_IN_ROW_MAX && !self.tolerate_outage {
                        return Err(e.context(format!("{FAILURES_IN_ROW_MAX} publish writes failed in a row")));
                    }
                    Ok(0)
                }
            }
        })?;
        // A server still working through a backlog may take longer than IO_TIMEOUT to
        // answer; that is a finding (counted), not a reason to throw the run away.
        if self.stream.is_some() && self.flush().is_err() {
            result.error("unconfirmed_end");
            self.stream = None;
        }
        Ok(result)
    }
}

/// Several publishers on their own connections and threads, each with a share of the rate
/// in proportion to its weight (its number of channels, so every channel gets the same
/// rate); their results add up.
pub struct ParallelPublisher {
    publishers: Vec<Box<dyn Publisher>>,
    weights: Vec<f64>,
}

impl ParallelPublisher {
    pub fn new(publishers: Vec<Box<dyn Publisher>>, weights: Vec<f64>) -> Self {
        assert!(!publishers.is_empty() && publishers.len() == weights.len());
        ParallelPublisher { publishers, weights }
    }
}

impl Publisher for ParallelPublisher {
    fn publish_for(&mut self, rate: f64, duration: Duration) -> Result<PublishResult> {
        if self.publishers.len() == 1 {
            return self.publishers[0].publish_for(rate, duration);
        }
        let total_weight: f64 = self.weights.iter().sum();
        let results: Vec<Result<PublishResult>> = std::thread::scope(|scope| {
            let handles: Vec<_> = self
                .publishers
                .iter_mut()
                .zip(&self.weights)
                .map(|(p, w)| {
                    let share = rate * w / total_weight;
                    scope.spawn(move || p.publish_for(share, duration))
                })
                .collect();
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

/// What `build` needs to make the publishers of a run.
pub struct PublishPlan<'a> {
    pub via: &'a Via,
    /// The ringcast node for `Via::Http`.
    pub http_target: SocketAddr,
    pub http_host: &'a str,
    pub api_key: &'a str,
    /// The app for `Via::Pusher`.
    pub pusher_app: Option<&'a pusher::App>,
    /// One list of channels per publisher connection; each channel in exactly one list
    /// keeps its message numbers in order.
    pub channels: Vec<Vec<String>>,
    pub payload: usize,
    pub tolerate_outage: bool,
}

pub fn build(plan: PublishPlan) -> Box<dyn Publisher> {
    let pid = std::process::id();
    let publishers: Vec<Box<dyn Publisher>> = plan
        .channels
        .iter()
        .enumerate()
        .map(|(k, channels)| -> Box<dyn Publisher> {
            let name = format!("lt-pub-{pid}-{k}");
            match plan.via {
                Via::Http => Box::new(HttpPublisher::new(plan.http_target, plan.http_host, plan.api_key, channels, plan.payload, plan.tolerate_outage)),
                Via::Pusher => {
                    let app = plan.pusher_app.expect("Via::Pusher comes with its app (scenario::source)");
                    Box::new(HttpPublisher::pusher(plan.http_target, plan.http_host, app, channels, plan.payload, plan.tolerate_outage))
                }
                Via::Nats { addr, prefix } => Box::new(PipelinePublisher::nats(*addr, prefix.as_deref(), channels, plan.payload, name, plan.tolerate_outage)),
                Via::Mqtt { addr, prefix } => Box::new(PipelinePublisher::mqtt(*addr, prefix.as_deref(), channels, plan.payload, name, plan.tolerate_outage)),
            }
        })
        .collect();
    let weights = plan.channels.iter().map(|c| c.len() as f64).collect();
    Box::new(ParallelPublisher::new(publishers, weights))
}

/// Splits channels over `publishers` connections (channel k → publisher k % P), or gives
/// every publisher the one channel when there is a single channel (fan-out).
pub fn split_channels(channels: &[String], publishers: usize) -> Vec<Vec<String>> {
    if channels.len() == 1 {
        return vec![channels.to_vec(); publishers];
    }
    let p = publishers.min(channels.len()).max(1);
    let mut out = vec![Vec::new(); p];
    for (k, ch) in channels.iter().enumerate() {
        out[k % p].push(ch.clone());
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_urls() {
        assert_eq!(parse_via(None, TargetKind::Ringcast).unwrap(), Via::Http);
        let addr: SocketAddr = "127.0.0.1:4222".parse().unwrap();
        assert_eq!(parse_via(Some("nats://127.0.0.1:4222"), TargetKind::Ringcast).unwrap(), Via::Nats { addr, prefix: Some("rc".into()) });
        assert_eq!(parse_via(Some("nats://127.0.0.1:4222?prefix=x"), TargetKind::Ringcast).unwrap(), Via::Nats { addr, prefix: Some("x".into()) });
        assert_eq!(parse_via(Some("nats://127.0.0.1:4222"), TargetKind::NatsWs).unwrap(), Via::Nats { addr, prefix: None });
        assert!(parse_via(None, TargetKind::NatsWs).unwrap_err().to_string().contains("--publish nats://"));
        assert!(parse_via(None, TargetKind::MqttWs).is_err());
        assert!(parse_via(Some("nats://127.0.0.1:4222?bogus=1"), TargetKind::Ringcast).is_err());
        assert!(parse_via(Some("nats://8.8.8.8:4222"), TargetKind::Ringcast).is_err(), "loopback only");
        assert!(matches!(parse_via(Some("mqtt://127.0.0.1:1883"), TargetKind::MqttWs).unwrap(), Via::Mqtt { prefix: None, .. }));
        // Ringcast through nats-server's MQTT listener: topics under the NATS prefix.
        let via = parse_via(Some("mqtt://127.0.0.1:1883"), TargetKind::Ringcast).unwrap();
        assert!(matches!(&via, Via::Mqtt { prefix: Some(p), .. } if p == "rc"), "{via:?}");
        let via = parse_via(Some("mqtt://127.0.0.1:1883?prefix=acme"), TargetKind::Ringcast).unwrap();
        assert!(matches!(&via, Via::Mqtt { prefix: Some(p), .. } if p == "acme"), "{via:?}");
        assert!(parse_via(Some("mqtt://127.0.0.1:1883?qos=1"), TargetKind::Ringcast).is_err());
        assert_eq!(parse_via(None, TargetKind::Pusher).unwrap(), Via::Pusher);
        assert_eq!(parse_via(Some("pusher"), TargetKind::Pusher).unwrap(), Via::Pusher);
        assert!(parse_via(Some("nats://127.0.0.1:4222"), TargetKind::Pusher).is_err());
        assert_eq!(parse_via(Some("http"), TargetKind::Ringcast).unwrap(), Via::Http);
    }

    #[test]
    fn pusher_requests_are_signed_per_send_and_carry_the_stamp_in_the_data_string() {
        let app = pusher::parse_app("4242:key:secret").unwrap();
        let mut p = HttpPublisher::pusher("127.0.0.1:1".parse().unwrap(), "h:1", &app, &["a".into(), "b".into()], 200, false);
        p.messages.accepted();
        let request = String::from_utf8(p.next_request().to_vec()).unwrap();
        let (head, body) = request.split_once("\r\n\r\n").unwrap();
        let line = head.lines().next().unwrap();
        let target = line.strip_prefix("POST ").unwrap().strip_suffix(" HTTP/1.1").unwrap();
        let (path, query) = target.split_once('?').unwrap();
        assert_eq!(path, "/apps/4242/events");
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        // Checked the way the server checks it: md5 of the body, HMAC over the rest.
        let (unsigned, signature) = query.rsplit_once("&auth_signature=").unwrap();
        assert_eq!(signature, pusher::sign_hex("secret", &format!("POST\n{path}\n{unsigned}")));
        let md5 = unsigned.split('&').find_map(|kv| kv.strip_prefix("body_md5=")).unwrap();
        use md5::Digest;
        assert_eq!(md5, pusher::hex(&md5::Md5::digest(body.as_bytes())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["channels"][0], "b", "round robin");
        let data: serde_json::Value = serde_json::from_str(v["data"].as_str().unwrap()).unwrap();
        assert_eq!(data["lt_n"], 1, "numbered per channel");
        assert!(data["lt_ns"].as_u64().unwrap() > 1_600_000_000_000_000_000);
        assert_eq!(frame::find_counter(body.as_bytes()), Some(1));
    }

    #[test]
    fn encoded_messages_patch_time_and_number() {
        let mut nats = PipelinePublisher::nats("127.0.0.1:1".parse().unwrap(), Some("rc"), &["a.b".into()], 120, "t".into(), false);
        let first = nats.messages.current().stamp().to_vec();
        nats.messages.accepted();
        let second = nats.messages.current().stamp().to_vec();
        let text = String::from_utf8(second.clone()).unwrap();
        assert!(text.starts_with("PUB rc.a.b 120\r\n{\"lt_ns\":"), "{text}");
        assert!(text.ends_with("\"}\r\n"));
        let payload = &second[second.iter().position(|&b| b == b'{').unwrap()..second.len() - 2];
        assert_eq!(payload.len(), 120);
        assert_eq!(frame::find_counter(payload), Some(2));
        assert_eq!(frame::find_counter(&first), Some(1));
        assert!(frame::find_timestamp(payload).unwrap() > 1_600_000_000_000_000_000);

        let mut http = HttpPublisher::new("127.0.0.1:1".parse().unwrap(), "h", "k", &["x".into(), "y".into()], 100, false);
        http.messages.accepted();
        let req = String::from_utf8(http.messages.current().stamp().to_vec()).unwrap();
        let (head, body) = req.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!((v["ch"].as_str(), v["data"]["lt_n"].as_u64()), (Some("y"), Some(1)), "round robin, numbered per channel");

        for (prefix, want) in [(None, &b"dev/1/temp"[..]), (Some("rc"), &b"rc/dev/1/temp"[..])] {
            let mut mq = PipelinePublisher::mqtt("127.0.0.1:1".parse().unwrap(), prefix, &["dev.1.temp".into()], 150, "t".into(), false);
            let packet = mq.messages.current().stamp().to_vec();
            match mqtt::parse_packet(&packet).unwrap().unwrap().0 {
                mqtt::ServerPacket::Publish { topic, payload } => {
                    assert_eq!(topic, want);
                    assert_eq!(payload.len(), 150);
                    assert_eq!(frame::find_counter(payload), Some(1));
                }
                other => panic!("{other:?}"),
            }
        }
    }

    /// A server that closes after every answer (Sockudo's API does) costs a reconnect, not an error.
    #[test]
    fn a_connection_close_answer_moves_the_next_request_to_a_new_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            for _ in 0..3 {
                let (mut s, _) = listener.accept().unwrap();
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).unwrap();
                s.write_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 11\r\n\r\n{\"ok\":true}").unwrap();
            }
        });
        let app = pusher::parse_app("1:k:s").unwrap();
        let mut p = HttpPublisher::pusher(addr, "h", &app, &["a".into()], 100, false);
        let result = p.publish_for(30.0, Duration::from_millis(100)).unwrap();
        assert_eq!((result.published, result.errors.len()), (3, 0), "{result:?}");
        server.join().unwrap();
    }

    #[test]
    fn channel_split_keeps_each_channel_on_one_publisher() {
        let chans: Vec<String> = (0..5).map(|i| format!("dev.{i}.temp")).collect();
        let split = split_channels(&chans, 2);
        assert_eq!(split, vec![vec!["dev.0.temp", "dev.2.temp", "dev.4.temp"], vec!["dev.1.temp", "dev.3.temp"]]);
        assert_eq!(split_channels(&chans, 9).len(), 5);
        assert_eq!(split_channels(&["bench".to_string()], 3).len(), 3, "fan-out: every publisher on the one channel");
    }

    /// A private nats-server on a free port, killed on drop.
    struct PrivateNats {
        child: std::process::Child,
        addr: SocketAddr,
    }

    impl PrivateNats {
        fn start() -> PrivateNats {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let child = std::process::Command::new("nats-server")
                .args(["-a", "127.0.0.1", "-p", &port.to_string()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("nats-server on PATH (scripts/services.sh installs it)");
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            while TcpStream::connect(addr).is_err() {
                assert!(Instant::now() < deadline, "private nats-server did not listen on {addr}");
                std::thread::sleep(Duration::from_millis(50));
            }
            PrivateNats { child, addr }
        }
    }

    impl Drop for PrivateNats {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// A plain NATS subscriber written against the protocol text, sharing no code with the
    /// harness: returns (subject, payload) of every MSG until `want` arrived or 10 s passed.
    fn plain_subscriber(addr: SocketAddr, subject: &str) -> (TcpStream, BufReader<TcpStream>) {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut info = String::new();
        r.read_line(&mut info).unwrap();
        assert!(info.starts_with("INFO "), "{info}");
        write!(s, "CONNECT {{\"verbose\":false}}\r\nSUB {subject} 1\r\nPING\r\n").unwrap();
        let mut pong = String::new();
        r.read_line(&mut pong).unwrap();
        assert_eq!(pong, "PONG\r\n");
        (s, r)
    }

    fn read_msgs(r: &mut BufReader<TcpStream>, want: usize) -> Vec<(String, Vec<u8>)> {
        let mut got = Vec::new();
        while got.len() < want {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.first() != Some(&"MSG") {
                continue; // PING from the server is answered by nobody: the test is shorter than its interval
            }
            let size: usize = fields.last().unwrap().parse().unwrap();
            let mut payload = vec![0; size + 2];
            r.read_exact(&mut payload).unwrap();
            payload.truncate(size);
            got.push((fields[1].to_string(), payload));
        }
        got
    }

    #[test]
    fn nats_publisher_sends_prefixed_subjects_in_order_to_a_real_server() {
        let nats = PrivateNats::start();
        let (_keep, mut sub) = plain_subscriber(nats.addr, "rc.>");
        let via = parse_via(Some(&format!("nats://{}", nats.addr)), TargetKind::Ringcast).unwrap();
        let Via::Nats { addr, prefix } = via else { panic!("{via:?}") };
        let channels: Vec<String> = vec!["room.a".into(), "room.b".into()];
        let mut publisher = PipelinePublisher::nats(addr, prefix.as_deref(), &channels, 200, "test".into(), false);
        let result = publisher.publish_for(400.0, Duration::from_millis(500)).unwrap();
        assert!((150..=210).contains(&result.published), "400 msgs/s for 0.5 s published {}", result.published);
        assert!(result.errors.is_empty(), "{:?}", result.errors);
        // The PING round trip at the end means the server has every message already.
        let got = read_msgs(&mut sub, result.published as usize);
        assert_eq!(got.len() as u64, result.published, "every publish reached a plain subscriber");
        let mut next = BTreeMap::new();
        for (subject, payload) in &got {
            assert!(subject == "rc.room.a" || subject == "rc.room.b", "{subject}");
            assert_eq!(payload.len(), 200);
            let v: serde_json::Value = serde_json::from_slice(payload).expect("payload is the JSON data");
            let n = v["lt_n"].as_u64().unwrap();
            let expected = next.entry(subject.clone()).or_insert(1u64);
            assert_eq!(n, *expected, "numbers run 1, 2, 3.. per subject");
            *expected += 1;
            assert!(v["lt_ns"].as_u64().unwrap() <= crate::host::now_ns());
        }
        assert_eq!(next.len(), 2, "both channels were published to in turn");
    }

    #[test]
    fn nats_publisher_names_a_refusal() {
        let nats = PrivateNats::start();
        // A payload over the server's max_payload (1 MiB default) is refused with -ERR.
        let mut publisher = PipelinePublisher::nats(nats.addr, None, &["big".into()], 2 * 1024 * 1024, "test".into(), false);
        let err = publisher.publish_for(10.0, Duration::from_millis(300)).unwrap_err();
        assert!(format!("{err:#}").contains("-ERR 'Maximum Payload Violation'"), "{err:#}");
    }
}
