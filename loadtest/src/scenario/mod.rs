//! Scenarios. Each is bounded in count and time and ends by itself.
//!
//! Owns: the phases of a run (connect, measure, drain, stop), server and harness cost
//! sampling, and filling the `Report`. Runs on the parent's main thread; the publisher
//! gets a thread of its own per phase.
//! - `fanout`: fanout, limit (and the `--max` closed loop)
//! - `telemetry`: devices, device subscribers and wildcard dashboards
//! - `reconnect`: disruption and recovery
//! - `connect`: idle, burst
//! - `notify`: in-app notifications through the Lane
//! - `subscribe`: sub → ok latency

mod connect;
mod fanout;
mod notify;
mod reconnect;
mod subscribe;
mod telemetry;

pub use connect::{burst, idle};
pub use fanout::{fanout, limit};
pub use notify::notify;
pub use reconnect::reconnect;
pub use subscribe::subscribe;
pub use telemetry::telemetry;

use crate::adapter::TargetKind;
use crate::cli::{ClientArgs, SourceArgs};
use crate::client::{Endpoint, ReconnectPolicy, SubClass, WorkerConfig};
use crate::fleet::{self, Fleet, Totals};
use crate::limits;
use crate::publish::{self, PublishResult, Publisher, Via};
use crate::report::{ms, Point, Report};
use crate::stats::{self, ProcSample};
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::io::IsTerminal;
use std::net::ToSocketAddrs;
use std::time::{Duration, Instant};

/// Parses `ws://host:port/path[,ws://...]`, loopback only.
pub fn parse_urls(list: &str) -> Result<Vec<Endpoint>> {
    list.split(',').map(str::trim).filter(|u| !u.is_empty()).map(parse_url).collect::<Result<Vec<_>>>().and_then(|v| {
        if v.is_empty() {
            bail!("--url is empty");
        }
        Ok(v)
    })
}

pub fn parse_url(url: &str) -> Result<Endpoint> {
    let rest = url.strip_prefix("ws://").context("--url must start with ws:// (TLS is not measured here)")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/ws"),
    };
    let addr = authority
        .to_socket_addrs()
        .with_context(|| format!("resolving {authority:?} (give host:port)"))?
        .find(|a| a.ip().is_loopback())
        .with_context(|| format!("{authority} is not a loopback address: this harness only targets 127.0.0.0/8 or ::1"))?;
    Ok(Endpoint { addr, host: authority.to_string(), path: path.to_string() })
}

/// Pusher clients connect to `/app/{key}?protocol=7..`: a --url without a path (or with
/// the default `/ws`) gets that path; any other path is taken as given.
fn target_paths(client: &ClientArgs, mut endpoints: Vec<Endpoint>) -> Result<Vec<Endpoint>> {
    if client.target != TargetKind::Pusher {
        return Ok(endpoints);
    }
    let app = pusher_app(client)?;
    for e in &mut endpoints {
        if e.path == "/ws" || e.path == "/" {
            e.path = crate::pusher::ws_path(&app.key);
        }
    }
    Ok(endpoints)
}

fn pusher_app(client: &ClientArgs) -> Result<&crate::pusher::App> {
    client.pusher_app.as_ref().context("--target pusher needs --pusher-app ID:KEY:SECRET (the app the server is configured with)")
}

/// What a run connects and how.
struct RunSpec<'a> {
    client: &'a ClientArgs,
    conns: usize,
    endpoints: Vec<Endpoint>,
    nats_prefix: Option<String>,
    classes: Vec<SubClass>,
    connect_rate: f64,
    lifetime: Duration,
    reconnect: Option<ReconnectPolicy>,
}

/// A live run: the workers, the clock, the per-second series.
struct Run {
    fleet: Fleet,
    started: Instant,
    next_point: Instant,
    last_deliveries: u64,
    series: Vec<Point>,
    terminal: bool,
    /// Appended to the live line (`notify`: notifications accepted so far).
    extra: Option<Box<dyn Fn() -> String>>,
    /// How long `publish_phase` waits for the last deliveries (`fanout --drain`).
    drain: Duration,
}

impl Run {
    fn start(spec: RunSpec) -> Result<Run> {
        Run::start_with(spec, |_| {})
    }

    /// Like `start`, with a last word on the workers' configuration (`notify`'s users).
    fn start_with(spec: RunSpec, adjust: impl FnOnce(&mut WorkerConfig)) -> Result<Run> {
        let conns = spec.conns;
        if conns == 0 {
            bail!("--conns must be at least 1");
        }
        let client = spec.client;
        let workers = client.workers.unwrap_or_else(|| conns.div_ceil(limits::WORKER_CONNS_MAX));
        let source_ips = client.source_ips.unwrap_or_else(|| conns.div_ceil(limits::CONNS_PER_SOURCE_IP)).clamp(1, limits::SOURCE_IPS_MAX);
        if spec.classes.len() > u8::MAX as usize {
            bail!("at most 255 subscription classes");
        }
        let base = WorkerConfig {
            worker_index: 0,
            endpoints: target_paths(client, spec.endpoints)?,
            kind: client.target,
            nats_prefix: spec.nats_prefix,
            conns,
            first_conn_index: 0,
            source_ips,
            connect_rate: spec.connect_rate,
            inflight_max: client.inflight.max(1),
            classes: spec.classes,
            connect_timeout_ms: client.connect_timeout.as_millis() as u64,
            lifetime_ms: spec.lifetime.as_millis() as u64,
            reconnect: spec.reconnect,
            users: None,
            presence: false,
            held_from: None,
            heartbeat_timeout_ms: client.heartbeat_timeout.map_or(0, |d| d.as_millis().max(1) as u64),
            tracked_messages: 0,
            deflate: client.deflate,
        };
        let mut base = base;
        adjust(&mut base);
        let fleet = Fleet::spawn(fleet::plan(&base, conns, workers)?)?;
        let now = Instant::now();
        Ok(Run {
            fleet,
            started: now,
            next_point: now + limits::REPORT_INTERVAL,
            last_deliveries: 0,
            series: Vec::new(),
            terminal: std::io::stderr().is_terminal(),
            extra: None,
            drain: limits::DRAIN_MAX,
        })
    }

    /// Takes worker reports for `wait`, recording a point and a live line each second.
    fn pump_for(&mut self, wait: Duration) {
        let until = Instant::now() + wait;
        loop {
            let now = Instant::now();
            // The bound first: a loop of late points (each snap may wait for busy workers)
            // must never stretch a phase past its time.
            if now >= until {
                return;
            }
            if now >= self.next_point {
                self.record_point();
                continue;
            }
            self.fleet.pump(self.next_point.min(until) - now);
        }
    }

    fn record_point(&mut self) {
        self.next_point += limits::REPORT_INTERVAL;
        // A fresh answer from every worker keeps each point exactly one second wide.
        let t = self.fleet.snap();
        // Points missed while a snap waited on saturated workers are skipped, not caught up.
        let now = Instant::now();
        if self.next_point <= now {
            self.next_point = now + limits::REPORT_INTERVAL;
        }
        let p99 = stats::percentiles(&self.fleet.second).p99_ns;
        self.fleet.second.reset();
        let point = Point {
            t_s: self.started.elapsed().as_secs_f64().round(),
            connections: t.ready,
            deliveries_per_s: t.deliveries.saturating_sub(self.last_deliveries) as f64,
            p99_ns: p99,
        };
        self.last_deliveries = t.deliveries;
        self.series.push(point);
        let waiting = if t.waiting > 0 || t.reconnected > 0 { format!(" reconnecting {} back {}", t.waiting, t.reconnected) } else { String::new() };
        let held = if t.pings > 0 || t.dropped_after_ready > 0 { format!(" | dropped {} pings {}", t.dropped_after_ready, t.pings) } else { String::new() };
        let line = format!(
            "[{:>4}s] conns {}/{} ready {} failed {}{waiting} | deliveries/s {:>10} | p99 {:.3} ms{held}{}{}",
            point.t_s,
            t.open,
            t.attempted,
            t.ready,
            t.failed(),
            crate::report::group(point.deliveries_per_s as i64),
            p99 as f64 / 1e6,
            self.extra.as_ref().map(|f| f()).unwrap_or_default(),
            t.host_limits.first().map(|l| format!(" | stopped by {l}")).unwrap_or_default()
        );
        if self.terminal {
            eprint!("\r{line}\x1b[K");
        } else {
            eprintln!("{line}");
        }
    }

    /// Waits until every worker has opened (or failed) all it could, bounded by `limit`.
    fn wait_settled(&mut self, limit: Duration) -> (Totals, bool) {
        let deadline = Instant::now() + limit;
        loop {
            self.pump_for(Duration::from_millis(100));
            let t = self.fleet.totals();
            if t.settled && t.attempted > 0 {
                return (t, true);
            }
            if Instant::now() >= deadline || self.fleet.all_exited() {
                return (t, false);
            }
        }
    }

    fn finish(&mut self) -> Totals {
        if self.terminal {
            eprintln!();
        }
        self.fleet.stop()
    }
}

/// CPU and memory of the processes that matter: the server(s) and the harness itself.
struct CostSample {
    server: Option<ProcSample>,
    harness_ticks: u64,
    at: Instant,
}

/// Sums /proc samples of several processes; `None` if any is gone (a restarted server
/// must not look cheap).
fn sample_servers(pids: &[u32]) -> Option<ProcSample> {
    if pids.is_empty() {
        return None;
    }
    let mut sum = ProcSample::default();
    for &pid in pids {
        let s = stats::sample_process(pid)?;
        sum.cpu_ticks += s.cpu_ticks;
        sum.rss_kib += s.rss_kib;
    }
    Some(sum)
}

fn sample_costs(server_pids: &[u32], fleet: &Fleet) -> CostSample {
    let mut pids = fleet.pids();
    pids.push(std::process::id());
    let harness_ticks = pids.iter().filter_map(|&p| stats::sample_process(p)).map(|s| s.cpu_ticks).sum();
    CostSample { server: sample_servers(server_pids), harness_ticks, at: Instant::now() }
}

fn harness_cores() -> usize {
    // SAFETY: cpu_set_t is plain data filled by the kernel.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            return (libc::CPU_COUNT(&set) as usize).max(1);
        }
    }
    crate::host::online_cores()
}

fn round(v: f64, digits: i32) -> serde_json::Value {
    let f = 10f64.powi(digits);
    json!((v * f).round() / f)
}

/// Adds server cost and harness saturation figures; notes a likely client-bound result.
fn cost_figures(report: &mut Report, before: &CostSample, after: &CostSample, deliveries: u64, label_prefix: &str) {
    let hz = stats::clock_ticks_per_second();
    let wall = after.at.duration_since(before.at).as_secs_f64().max(1e-9);
    if let (Some(b), Some(a)) = (before.server, after.server) {
        if let Some(us) = stats::cpu_us_per_delivery(b, a, hz, deliveries) {
            report.figure("server_cpu_us_per_delivery", &format!("{label_prefix}server CPU-µs per delivery"), round(us, 3));
        }
        let share = a.cpu_ticks.saturating_sub(b.cpu_ticks) as f64 / hz as f64 / wall;
        report.figure("server_cpu_percent", "server CPU (% of one core)", round(share * 100.0, 1));
        report.figure("server_rss_mib", "server RSS (MiB)", round(a.rss_kib as f64 / 1024.0, 1));
    }
    let harness = after.harness_ticks.saturating_sub(before.harness_ticks) as f64 / hz as f64 / wall;
    let cores = harness_cores();
    report.figure("harness_cpu_percent", &format!("harness CPU (% of its {cores} core(s))"), round(harness / cores as f64 * 100.0, 1));
    if harness / cores as f64 >= 0.85 {
        report.notes.push(format!(
            "the harness used {:.0}% of its {cores} core(s): these figures are likely CLIENT-BOUND (give it more cores with --cpus)",
            harness / cores as f64 * 100.0
        ));
    }
}

fn connect_figures(report: &mut Report, run: &Run, t: &Totals, wanted: usize, settled: bool) {
    report.figure("connections_ready", "connections ready", t.ready);
    report.figure("connections_wanted", "connections wanted", wanted as u64);
    let secs = (t.last_ready_ms as f64 / 1000.0).max(1e-3);
    report.figure("connect_rate_per_s", "connect rate (ready/s)", json!((t.ready as f64 / secs).round()));
    let hs = stats::percentiles(&run.fleet.handshake);
    report.figure("handshake_p50_ms", "handshake p50 (ms)", ms(hs.p50_ns));
    report.figure("handshake_p99_ms", "handshake p99 (ms)", ms(hs.p99_ns));
    report.figure("connect_failures", "connect failures", t.failed());
    report.figure("failures_by_kind", "failures by kind", json!(t.failures));
    for limit in &t.host_limits {
        report.notes.push(format!("stopped opening connections: host limit on {limit}"));
    }
    if !settled {
        report.notes.push("the connect phase hit its time bound before every connection settled".into());
    }
    if t.ready < wanted as u64 && t.host_limits.is_empty() {
        report.notes.push(format!("only {} of {wanted} connections became ready; see failures by kind", t.ready));
    }
}

fn connect_bound(client: &ClientArgs, conns: usize, rate: f64) -> Duration {
    let pacing = if rate > 0.0 { conns as f64 / rate } else { 0.0 };
    Duration::from_secs_f64(pacing) + client.connect_timeout + Duration::from_secs(10)
}

/// One measured publishing phase.
struct Phase {
    rate: f64,
    result: PublishResult,
    /// Totals when publishing started (ready per class, deliveries so far).
    before: Totals,
    after: Totals,
    delivered: u64,
    /// From the start of publishing until the last delivery arrived (at least the
    /// publishing time): a server that queues shows its real rate over this span.
    span: Duration,
    latency: stats::Percentiles,
    class_latency: Vec<stats::Percentiles>,
}

impl Phase {
    fn subscribers(&self) -> u64 {
        self.before.ready
    }
}

/// Publishes for `duration` on a thread while pumping reports, then waits for stragglers
/// until `expected(result, before)` deliveries arrived or they stop coming.
fn publish_phase(
    run: &mut Run,
    publisher: Box<dyn Publisher>,
    rate: f64,
    duration: Duration,
    expected: impl Fn(&PublishResult, &Totals) -> u64,
) -> Result<(Box<dyn Publisher>, Phase)> {
    let before = run.fleet.snap();
    run.fleet.reset_window();
    let publish_started = Instant::now();
    let handle = std::thread::spawn(move || {
        let mut publisher = publisher;
        let result = publisher.publish_for(rate, duration);
        (publisher, result)
    });
    while !handle.is_finished() {
        run.pump_for(Duration::from_millis(50));
    }
    let (publisher, result) = handle.join().map_err(|_| anyhow::anyhow!("publisher thread panicked"))?;
    let result = result?;
    let want = expected(&result, &before);
    let drain_started = Instant::now();
    let mut last = before.deliveries;
    // A long drain (a big broadcast) also tolerates a longer pause between deliveries.
    let quiet = limits::DRAIN_QUIET.max(run.drain / 10);
    let mut quiet_since = Instant::now();
    let mut last_growth = Instant::now();
    loop {
        run.pump_for(Duration::from_millis(200));
        let t = run.fleet.snap();
        if t.deliveries != last {
            last_growth = Instant::now();
        }
        if t.deliveries - before.deliveries >= want {
            break;
        }
        if t.deliveries != last {
            last = t.deliveries;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= quiet {
            break;
        }
        if drain_started.elapsed() >= run.drain {
            break;
        }
    }
    let after = run.fleet.totals();
    let span = last_growth.duration_since(publish_started).max(result.elapsed);
    let phase = Phase {
        rate,
        span,
        delivered: after.deliveries - before.deliveries,
        latency: stats::percentiles(&run.fleet.window),
        class_latency: run.fleet.class_window.iter().map(stats::percentiles).collect(),
        result,
        before,
        after,
    };
    Ok((publisher, phase))
}

fn latency_figures(report: &mut Report, key: &str, label: &str, p: &stats::Percentiles) {
    report.figure(&format!("{key}latency_p50_ms"), &format!("{label}latency p50 (ms)"), ms(p.p50_ns));
    report.figure(&format!("{key}latency_p90_ms"), &format!("{label}latency p90 (ms)"), ms(p.p90_ns));
    report.figure(&format!("{key}latency_p99_ms"), &format!("{label}latency p99 (ms)"), ms(p.p99_ns));
    report.figure(&format!("{key}latency_p999_ms"), &format!("{label}latency p99.9 (ms)"), ms(p.p999_ns));
    report.figure(&format!("{key}latency_max_ms"), &format!("{label}latency max (ms)"), ms(p.max_ns));
}

fn publish_figures(report: &mut Report, p: &Phase) {
    report.figure("rate_asked", "publish rate asked (msgs/s)", json!(p.rate));
    report.figure("rate_achieved", "publish rate achieved (msgs/s)", round(p.result.achieved_rate(), 1));
    report.figure("published", "messages published", p.result.published);
    if !p.result.errors.is_empty() {
        report.figure("publish_errors", "publish errors", json!(p.result.errors));
    }
}

/// The publishing source of a run: how, and the NATS prefix subscribers use on nats-ws.
struct Source {
    via: Via,
    nats_prefix: Option<String>,
    /// --target pusher: the app whose HTTP API the publisher signs for.
    pusher_app: Option<crate::pusher::App>,
}

fn source(args: &SourceArgs, client: &ClientArgs) -> Result<Source> {
    let kind = client.target;
    if args.publishers == 0 || args.publishers > limits::PUBLISHERS_MAX {
        bail!("--publishers must be 1..={}", limits::PUBLISHERS_MAX);
    }
    let via = publish::parse_via(args.publish.as_deref(), kind)?;
    let pusher_app = match via {
        Via::Pusher => Some(pusher_app(client)?.clone()),
        _ => None,
    };
    if args.pad == "telemetry" {
        crate::frame::TELEMETRY_PAD.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let nats_prefix = match (&via, kind) {
        (Via::Nats { prefix, .. }, TargetKind::NatsWs) => prefix.clone(),
        _ => None,
    };
    Ok(Source { via, nats_prefix, pusher_app })
}

fn make_publisher(args: &SourceArgs, source: &Source, endpoint: &Endpoint, channels: &[String], tolerate_outage: bool) -> Box<dyn Publisher> {
    publish::build(publish::PublishPlan {
        via: &source.via,
        http_target: endpoint.addr,
        http_host: &endpoint.host,
        api_key: &args.api_key,
        pusher_app: source.pusher_app.as_ref(),
        channels: publish::split_channels(channels, args.publishers),
        payload: args.payload,
        tolerate_outage,
    })
}

fn common_parameters(client: &ClientArgs, conns: usize) -> serde_json::Value {
    json!({
        "url": client.url, "target": client.target.name(), "conns": conns, "workers": client.workers,
        "source_ips": client.source_ips, "connect_rate": client.connect_rate, "server_pid": client.server_pid,
        "cpus": client.cpus, "label": client.label,
        "heartbeat_timeout_s": client.heartbeat_timeout.map(|d| d.as_secs_f64()),
    })
}

fn merge(mut a: serde_json::Value, b: serde_json::Value) -> serde_json::Value {
    if let (Some(a), serde_json::Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}
