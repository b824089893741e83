//! Scenarios: fanout, limit, idle, burst. Each is bounded in count and time and ends by itself.
//!
//! Owns: the phases of a run (connect, measure, drain, stop), server and harness cost
//! sampling, and filling the `Report`. Runs on the parent's main thread; the publisher
//! gets a thread of its own per phase.

use crate::cli::{BurstArgs, ClientArgs, FanoutArgs, IdleArgs, LimitArgs, PublishArgs};
use crate::client::WorkerConfig;
use crate::fleet::{self, Fleet, Totals};
use crate::limits;
use crate::publish::{HttpPublisher, LimitPublisher, ParallelPublisher, PublishResult, Publisher};
use crate::report::{ms, Point, Report};
use crate::stats::{self, ProcSample};
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

/// A parsed `ws://host:port/path` on loopback.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
}

pub fn parse_url(url: &str) -> Result<Target> {
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
    Ok(Target { addr, host: authority.to_string(), path: path.to_string() })
}

/// A live run: the workers, the clock, the per-second series.
struct Run {
    fleet: Fleet,
    started: Instant,
    next_point: Instant,
    last_deliveries: u64,
    series: Vec<Point>,
    terminal: bool,
}

impl Run {
    fn start(client: &ClientArgs, target: &Target, channel: Option<String>, connect_rate_default: f64, lifetime: Duration) -> Result<Run> {
        let conns = client.conns;
        if conns == 0 {
            bail!("--conns must be at least 1");
        }
        let workers = client.workers.unwrap_or_else(|| conns.div_ceil(limits::WORKER_CONNS_MAX));
        let source_ips = client.source_ips.unwrap_or_else(|| conns.div_ceil(limits::CONNS_PER_SOURCE_IP)).clamp(1, limits::SOURCE_IPS_MAX);
        let base = WorkerConfig {
            worker_index: 0,
            target: target.addr,
            host_header: target.host.clone(),
            path: target.path.clone(),
            conns,
            first_conn_index: 0,
            source_ips,
            connect_rate: client.connect_rate.unwrap_or(connect_rate_default),
            inflight_max: client.inflight.max(1),
            channel,
            connect_timeout_ms: client.connect_timeout.as_millis() as u64,
            lifetime_ms: lifetime.as_millis() as u64,
        };
        let fleet = Fleet::spawn(fleet::plan(&base, conns, workers)?)?;
        let now = Instant::now();
        Ok(Run {
            fleet,
            started: now,
            next_point: now + limits::REPORT_INTERVAL,
            last_deliveries: 0,
            series: Vec::new(),
            terminal: std::io::stderr().is_terminal(),
        })
    }

    /// Takes worker reports for `wait`, recording a point and a live line each second.
    fn pump_for(&mut self, wait: Duration) {
        let until = Instant::now() + wait;
        loop {
            let now = Instant::now();
            if now >= self.next_point {
                self.record_point();
                continue;
            }
            if now >= until {
                return;
            }
            self.fleet.pump(self.next_point.min(until) - now);
        }
    }

    fn record_point(&mut self) {
        self.next_point += limits::REPORT_INTERVAL;
        // A fresh answer from every worker keeps each point exactly one second wide.
        let t = self.fleet.snap();
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
        let line = format!(
            "[{:>4}s] conns {}/{} ready {} failed {} | deliveries/s {:>10} | p99 {:.3} ms{}",
            point.t_s,
            t.open,
            t.attempted,
            t.ready,
            t.failed(),
            crate::report::group(point.deliveries_per_s as i64),
            p99 as f64 / 1e6,
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

/// CPU and memory of the processes that matter: the server and the harness itself.
struct CostSample {
    server: Option<ProcSample>,
    harness_ticks: u64,
    at: Instant,
}

fn sample_costs(server_pid: Option<u32>, fleet: &Fleet) -> CostSample {
    let mut pids = fleet.pids();
    pids.push(std::process::id());
    let harness_ticks = pids.iter().filter_map(|&p| stats::sample_process(p)).map(|s| s.cpu_ticks).sum();
    CostSample { server: server_pid.and_then(stats::sample_process), harness_ticks, at: Instant::now() }
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

/// Adds server cost and harness saturation figures; notes a likely client-bound result.
fn cost_figures(report: &mut Report, before: &CostSample, after: &CostSample, deliveries: u64, label_prefix: &str) {
    let hz = stats::clock_ticks_per_second();
    if let (Some(b), Some(a)) = (before.server, after.server) {
        if let Some(us) = stats::cpu_us_per_delivery(b, a, hz, deliveries) {
            report.figure("server_cpu_us_per_delivery", &format!("{label_prefix}server CPU-µs per delivery"), json!((us * 1000.0).round() / 1000.0));
        }
        let wall = after.at.duration_since(before.at).as_secs_f64().max(1e-9);
        let share = a.cpu_ticks.saturating_sub(b.cpu_ticks) as f64 / hz as f64 / wall;
        report.figure("server_cpu_percent", "server CPU (% of one core)", json!((share * 1000.0).round() / 10.0));
        report.figure("server_rss_mib", "server RSS (MiB)", json!((a.rss_kib as f64 / 1024.0 * 10.0).round() / 10.0));
    }
    let wall = after.at.duration_since(before.at).as_secs_f64().max(1e-9);
    let harness = after.harness_ticks.saturating_sub(before.harness_ticks) as f64 / hz as f64 / wall;
    let cores = harness_cores();
    report.figure("harness_cpu_percent", &format!("harness CPU (% of its {cores} core(s))"), json!((harness / cores as f64 * 1000.0).round() / 10.0));
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

fn connect_bound(client: &ClientArgs, rate: f64) -> Duration {
    let pacing = if rate > 0.0 { client.conns as f64 / rate } else { 0.0 };
    Duration::from_secs_f64(pacing) + client.connect_timeout + Duration::from_secs(10)
}

/// One measured publishing phase.
struct Phase {
    rate: f64,
    result: PublishResult,
    subscribers: u64,
    delivered: u64,
    latency: stats::Percentiles,
}

fn publish_phase(run: &mut Run, publisher: Box<dyn Publisher>, rate: f64, duration: Duration) -> Result<(Box<dyn Publisher>, Phase)> {
    let before = run.fleet.snap();
    run.fleet.window.reset();
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
    let expected = result.published * before.ready;
    let drain_started = Instant::now();
    let mut last = before.deliveries;
    let mut quiet_since = Instant::now();
    loop {
        run.pump_for(Duration::from_millis(200));
        let t = run.fleet.snap();
        if t.deliveries - before.deliveries >= expected {
            break;
        }
        if t.deliveries != last {
            last = t.deliveries;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= limits::DRAIN_QUIET {
            break;
        }
        if drain_started.elapsed() >= limits::DRAIN_MAX {
            break;
        }
    }
    let after = run.fleet.totals();
    let phase = Phase {
        rate,
        subscribers: before.ready,
        delivered: after.deliveries - before.deliveries,
        latency: stats::percentiles(&run.fleet.window),
        result,
    };
    Ok((publisher, phase))
}

fn phase_figures(report: &mut Report, p: &Phase) {
    let loss = stats::loss(p.result.published, p.subscribers, p.delivered);
    let secs = p.result.elapsed.as_secs_f64().max(1e-9);
    report.figure("subscribers", "subscribers", p.subscribers);
    report.figure("rate_asked", "publish rate asked (msgs/s)", json!(p.rate));
    report.figure("rate_achieved", "publish rate achieved (msgs/s)", json!((p.result.achieved_rate() * 10.0).round() / 10.0));
    report.figure("published", "messages published", p.result.published);
    if !p.result.errors.is_empty() {
        report.figure("publish_errors", "publish errors", json!(p.result.errors));
    }
    report.figure("deliveries", "deliveries", p.delivered);
    report.figure("deliveries_per_s", "deliveries/s", json!((p.delivered as f64 / secs).round()));
    report.figure("expected", "deliveries expected", loss.expected);
    report.figure("lost", "deliveries lost", loss.lost);
    report.figure("lost_percent", "lost (%)", json!((loss.lost_ratio * 1e6).round() / 1e4));
    report.figure("latency_p50_ms", "latency p50 (ms)", ms(p.latency.p50_ns));
    report.figure("latency_p90_ms", "latency p90 (ms)", ms(p.latency.p90_ns));
    report.figure("latency_p99_ms", "latency p99 (ms)", ms(p.latency.p99_ns));
    report.figure("latency_p999_ms", "latency p99.9 (ms)", ms(p.latency.p999_ns));
    report.figure("latency_max_ms", "latency max (ms)", ms(p.latency.max_ns));
}

fn fanout_parameters(client: &ClientArgs, publish: &PublishArgs, url: &str) -> serde_json::Value {
    json!({
        "url": url, "conns": client.conns, "workers": client.workers, "source_ips": client.source_ips,
        "connect_rate": client.connect_rate, "rate": publish.rate, "max": publish.max,
        "duration_s": publish.duration.map(|d| d.as_secs_f64()), "payload": publish.payload,
        "channel": publish.channel, "server_pid": client.server_pid, "cpus": client.cpus,
    })
}

/// The shared body of `fanout` and `limit`: connect, subscribe, publish, measure.
fn run_fanout(scenario: &'static str, client: &ClientArgs, publish: &PublishArgs, target: &Target, publisher: Box<dyn Publisher>, server_pid: Option<u32>) -> Result<Report> {
    if publish.rate.is_none() && !publish.max {
        bail!("give --rate R (msgs/s) or --max");
    }
    let mut report = Report::new(scenario, fanout_parameters(client, publish, &format!("ws://{}{}", target.host, target.path)));
    let step = publish.duration.unwrap_or(if publish.max { Duration::from_secs(5) } else { Duration::from_secs(30) });
    let connect_rate = client.connect_rate.unwrap_or(20_000.0);
    let phases = if publish.max { limits::MAX_STEPS } else { 1 };
    let lifetime = connect_bound(client, connect_rate) + (step + limits::DRAIN_MAX + Duration::from_secs(3)) * phases as u32 + Duration::from_secs(30);
    let mut run = Run::start(client, target, Some(publish.channel.clone()), connect_rate, lifetime)?;
    let (connected, settled) = run.wait_settled(connect_bound(client, connect_rate));
    connect_figures(&mut report, &run, &connected, client.conns, settled);
    if connected.ready == 0 {
        run.finish();
        report.notes.push("no connection became ready: is the server running at --url?".into());
        return Ok(report);
    }
    let before = sample_costs(server_pid, &run.fleet);
    let mut publisher = publisher;
    if let Some(rate) = publish.rate.filter(|_| !publish.max) {
        let (returned, phase) = publish_phase(&mut run, publisher, rate, step)?;
        publisher = returned;
        let after = sample_costs(server_pid, &run.fleet);
        phase_figures(&mut report, &phase);
        cost_figures(&mut report, &before, &after, phase.delivered, "");
    } else {
        let (best, delivered_total) = closed_loop(&mut run, &mut publisher, publish, step, &mut report)?;
        let after = sample_costs(server_pid, &run.fleet);
        match best {
            Some(p) => {
                report.figure("max_sustained_rate", "highest rate without loss, p99 within --max-p99 (msgs/s)", json!(p.rate));
                phase_figures(&mut report, &p);
            }
            None => report.notes.push(format!("even {} msgs/s failed (loss or p99 over --max-p99); lower --max-start", publish.max_start)),
        }
        cost_figures(&mut report, &before, &after, delivered_total, "(all steps) ");
    }
    let end = run.finish();
    // Only now: dropping the limit server's control pipe ends that server.
    drop(publisher);
    report.figure("dropped_after_ready", "connections dropped during the run", end.dropped_after_ready);
    report.figure("harness_rss_bytes_per_conn", "harness RSS growth per connection (bytes)", end.harness_bytes_per_conn(connected.ready));
    report.figure("failures_at_end", "failures by kind at the end", json!(end.failures));
    report.series = std::mem::take(&mut run.series);
    Ok(report)
}

/// `--max`: doubles the rate while a step loses nothing, then bisects; returns the best step.
fn closed_loop(run: &mut Run, publisher: &mut Box<dyn Publisher>, publish: &PublishArgs, step: Duration, report: &mut Report) -> Result<(Option<Phase>, u64)> {
    let mut good: Option<Phase> = None;
    let mut bad_rate: Option<f64> = None;
    let mut rate = publish.max_start.max(1.0);
    let mut delivered_total = 0;
    let initial_subscribers = run.fleet.totals().ready;
    for _ in 0..limits::MAX_STEPS {
        let owned = std::mem::replace(publisher, Box::new(NullPublisher));
        let (returned, phase) = publish_phase(run, owned, rate, step)?;
        *publisher = returned;
        delivered_total += phase.delivered;
        let loss = stats::loss(phase.result.published, phase.subscribers, phase.delivered);
        let achieved = phase.result.achieved_rate() >= rate * limits::MAX_PUBLISH_ACHIEVED_MIN;
        let timely = phase.latency.p99_ns <= publish.max_p99.as_nanos() as u64;
        let pass = loss.lost == 0 && achieved && timely && phase.result.errors.is_empty();
        report.steps.push(json!({
            "rate": rate, "published": phase.result.published, "achieved_rate": phase.result.achieved_rate(),
            "deliveries_per_s": (phase.delivered as f64 / phase.result.elapsed.as_secs_f64()).round(),
            "lost": loss.lost, "p99_ns": phase.latency.p99_ns, "timely": timely, "pass": pass,
        }));
        if !achieved {
            report.notes.push(format!(
                "step {rate} msgs/s: publishing reached only {:.0} msgs/s (publisher- or server-bound); counted as a failed step",
                phase.result.achieved_rate()
            ));
        }
        if pass {
            good = Some(phase);
        } else {
            bad_rate = Some(bad_rate.map_or(rate, |b| b.min(rate)));
        }
        let good_rate = good.as_ref().map(|g| g.rate);
        rate = match (good_rate, bad_rate) {
            (Some(g), None) => g * 2.0,
            (Some(g), Some(b)) if (b - g) / g > limits::MAX_RESOLUTION => ((g + b) / 2.0).round(),
            (None, Some(b)) if b > 2.0 => (b / 2.0).round(),
            _ => break,
        };
        if run.fleet.totals().ready < initial_subscribers * 9 / 10 {
            report.notes.push("more than 10% of subscribers were dropped: the search stops".into());
            break;
        }
    }
    Ok((good, delivered_total))
}

struct NullPublisher;
impl Publisher for NullPublisher {
    fn publish_for(&mut self, _: f64, _: Duration) -> Result<PublishResult> {
        bail!("publisher in use")
    }
}

pub fn fanout(args: &FanoutArgs) -> Result<Report> {
    let target = parse_url(&args.client.url)?;
    let p = &args.publish;
    if args.publishers == 0 || args.publishers > crate::limits::PUBLISHERS_MAX {
        anyhow::bail!("--publishers must be 1..={}", crate::limits::PUBLISHERS_MAX);
    }
    let publishers = (0..args.publishers).map(|_| HttpPublisher::new(target.addr, &target.host, &p.api_key, &p.channel, p.payload)).collect();
    let publisher = Box::new(ParallelPublisher::new(publishers));
    run_fanout("fanout", &args.client, p, &target, publisher, args.client.server_pid)
}

pub fn limit(args: &LimitArgs) -> Result<Report> {
    let exe = std::env::current_exe()?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["limit-server", "--listen", &args.listen, "--channel", &args.publish.channel, "--payload", &args.publish.payload.to_string(), "--lifetime", "2h"]);
    if let Some(cpu) = &args.server_cpu {
        cmd.args(["--cpu", cpu]);
    }
    let mut child = cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn().context("starting the limit server")?;
    let stdin = child.stdin.take().expect("piped");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
    let mut line = String::new();
    stdout.read_line(&mut line)?;
    let addr: SocketAddr = match line.strip_prefix("listening ").map(|a| a.trim().parse()) {
        Some(Ok(a)) => a,
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the limit server did not start (said {line:?})");
        }
    };
    let target = Target { addr, host: addr.to_string(), path: "/ws".into() };
    let publisher = Box::new(LimitPublisher { stdin, stdout });
    let result = run_fanout("limit", &args.client, &args.publish, &target, publisher, Some(child.id()));
    let _ = child.kill();
    let _ = child.wait();
    let mut report = result?;
    report.notes.push(format!("ceiling server: one thread, epoll + plain write(), pid {} on {addr}", child.id()));
    Ok(report)
}

pub fn idle(args: &IdleArgs) -> Result<Report> {
    let client = &args.client;
    let target = parse_url(&client.url)?;
    let mut report = Report::new("idle", json!({"url": client.url, "conns": client.conns, "duration_s": args.duration.as_secs_f64(), "server_pid": client.server_pid}));
    let baseline = client.server_pid.and_then(stats::sample_process);
    let rate = client.connect_rate.unwrap_or(20_000.0);
    let bound = connect_bound(client, rate);
    let mut run = Run::start(client, &target, None, rate, bound + args.duration + Duration::from_secs(30))?;
    let (connected, settled) = run.wait_settled(bound);
    connect_figures(&mut report, &run, &connected, client.conns, settled);
    run.pump_for(args.duration);
    let held = run.fleet.snap();
    let loaded = client.server_pid.and_then(stats::sample_process);
    report.figure("connections_held_at_end", "connections held at the end", held.ready);
    if let (Some(b), Some(l)) = (baseline, loaded) {
        report.figure("server_rss_baseline_mib", "server RSS before (MiB)", json!((b.rss_kib as f64 / 102.4).round() / 10.0));
        report.figure("server_rss_loaded_mib", "server RSS held (MiB)", json!((l.rss_kib as f64 / 102.4).round() / 10.0));
        if let Some(per) = stats::rss_bytes_per_connection(b, l, held.ready) {
            report.figure("server_rss_bytes_per_conn", "server RSS per connection (bytes)", json!(per.round()));
        }
    }
    report.figure("harness_rss_bytes_per_conn", "harness RSS growth per connection (bytes)", held.harness_bytes_per_conn(held.ready));
    let end = run.finish();
    report.figure("dropped_after_ready", "connections dropped while held", end.dropped_after_ready);
    report.series = std::mem::take(&mut run.series);
    Ok(report)
}

pub fn burst(args: &BurstArgs) -> Result<Report> {
    let client = &args.client;
    let target = parse_url(&client.url)?;
    let mut report = Report::new("burst", json!({"url": client.url, "conns": client.conns, "connect_rate": client.connect_rate, "inflight": client.inflight}));
    let rate = client.connect_rate.unwrap_or(0.0);
    let bound = connect_bound(client, rate);
    let mut run = Run::start(client, &target, None, rate, bound + Duration::from_secs(30))?;
    let (connected, settled) = run.wait_settled(bound);
    connect_figures(&mut report, &run, &connected, client.conns, settled);
    report.figure("handshakes_per_s", "handshakes/s", json!((connected.upgraded as f64 / (connected.last_ready_ms.max(1) as f64 / 1000.0)).round()));
    let end = run.finish();
    report.figure("dropped_after_ready", "connections dropped before the end", end.dropped_after_ready);
    report.series = std::mem::take(&mut run.series);
    let _ = std::io::stderr().flush();
    Ok(report)
}
