//! `fanout` (N subscribers on one channel, any target) and `limit` (the same against the
//! built-in ceiling server), each at a fixed --rate or the --max closed loop.

use super::*;
use crate::cli::{FanoutArgs, LimitArgs, PublishArgs};
use crate::publish::LimitPublisher;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;

/// `fanout`-only settings; `limit` runs with `Extra::default()`.
struct Extra {
    hold: Duration,
    drain: Duration,
}

impl Default for Extra {
    fn default() -> Self {
        Extra { hold: Duration::ZERO, drain: limits::DRAIN_MAX }
    }
}

fn fanout_parameters(client: &ClientArgs, publish: &PublishArgs, via: &str, extra: &Extra) -> serde_json::Value {
    merge(
        common_parameters(client, client.conns()),
        json!({
            "hold_s": extra.hold.as_secs_f64(), "drain_s": extra.drain.as_secs_f64(),
            "rate": publish.rate, "max": publish.max, "duration_s": publish.duration.map(|d| d.as_secs_f64()),
            "payload": publish.source.payload, "channel": publish.channel, "publish": via,
            "publishers": publish.source.publishers,
            "max_p99": publish.max_p99.to_string(),
        }),
    )
}

fn phase_figures(report: &mut Report, p: &Phase) {
    let loss = stats::loss(p.result.published, p.subscribers(), p.delivered);
    let secs = p.result.elapsed.as_secs_f64().max(1e-9);
    report.figure("subscribers", "subscribers", p.subscribers());
    publish_figures(report, p);
    report.figure("deliveries", "deliveries", p.delivered);
    report.figure("deliveries_per_s", "deliveries/s", json!((p.delivered as f64 / secs).round()));
    // Deliveries that arrive after publishing ended (a server working off a queue) count
    // over the time they really took.
    report.figure("deliveries_per_s_until_last", "deliveries/s until the last delivery", json!((p.delivered as f64 / p.span.as_secs_f64().max(1e-9)).round()));
    report.figure("delivery_span_s", "publishing start to last delivery (s)", round(p.span.as_secs_f64(), 2));
    report.figure("expected", "deliveries expected", loss.expected);
    report.figure("lost", "deliveries lost", loss.lost);
    report.figure("lost_percent", "lost (%)", json!((loss.lost_ratio * 1e6).round() / 1e4));
    latency_figures(report, "", "", &p.latency);
}

/// The shared body of `fanout` and `limit`: connect, subscribe, publish, measure.
fn run_fanout(
    scenario: &'static str,
    client: &ClientArgs,
    publish: &PublishArgs,
    endpoints: Vec<Endpoint>,
    nats_prefix: Option<String>,
    publisher: Box<dyn Publisher>,
    server_pids: &[u32],
    via: &str,
    extra: Extra,
) -> Result<Report> {
    if publish.rate.is_none() && !publish.max {
        bail!("give --rate R (msgs/s) or --max");
    }
    if extra.hold > limits::HOLD_LIMIT {
        bail!("--hold {:?} is above its bound of {:?}", extra.hold, limits::HOLD_LIMIT);
    }
    if extra.drain.is_zero() || extra.drain > limits::DRAIN_LIMIT {
        bail!("--drain must be above 0 and at most {:?} (got {:?})", limits::DRAIN_LIMIT, extra.drain);
    }
    let mut report = Report::new(scenario, fanout_parameters(client, publish, via, &extra));
    let conns = client.conns();
    let step = publish.duration.unwrap_or(if publish.max { Duration::from_secs(5) } else { Duration::from_secs(30) });
    let connect_rate = client.connect_rate.unwrap_or(20_000.0);
    let phases = if publish.max { limits::MAX_STEPS } else { 1 };
    let lifetime = connect_bound(client, conns, connect_rate) + extra.hold + (step + extra.drain + Duration::from_secs(3)) * phases as u32 + Duration::from_secs(30);
    // A fixed-rate run of a few messages is a run of broadcasts: each is tallied on its own.
    let planned = publish.rate.filter(|_| !publish.max).map(|r| (r * step.as_secs_f64()).ceil().max(1.0) as usize);
    let tracked = planned.filter(|&n| n <= limits::TRACKED_MESSAGES_MAX).unwrap_or(0);
    let classes = vec![SubClass { name: "subscribers".into(), conns, channel: publish.channel.clone(), channel_count: 1, track_order: false }];
    let baseline = sample_servers(server_pids);
    let spec = RunSpec { client, conns, endpoints, nats_prefix, classes, connect_rate, lifetime, reconnect: None };
    let mut run = Run::start_with(spec, |cfg| cfg.tracked_messages = tracked)?;
    run.drain = extra.drain;
    let (connected, settled) = run.wait_settled(connect_bound(client, conns, connect_rate));
    connect_figures(&mut report, &run, &connected, conns, settled);
    if connected.ready == 0 {
        run.finish();
        report.notes.push("no connection became ready: is the server running at --url?".into());
        return Ok(report);
    }
    server_memory_figures(&mut report, baseline, server_pids, connected.ready);
    if !extra.hold.is_zero() {
        hold_phase(&mut run, &mut report, server_pids, extra.hold);
    }
    let before = sample_costs(server_pids, &run.fleet);
    let mut publisher = publisher;
    let every_subscriber = |r: &PublishResult, t: &Totals| r.published * t.ready;
    if let Some(rate) = publish.rate.filter(|_| !publish.max) {
        let (returned, phase) = publish_phase(&mut run, publisher, rate, step, every_subscriber)?;
        publisher = returned;
        let after = sample_costs(server_pids, &run.fleet);
        phase_figures(&mut report, &phase);
        cost_figures(&mut report, &before, &after, phase.delivered, "");
        if tracked > 0 {
            broadcast_figures(&mut report, &run, &phase);
        }
    } else {
        let (best, delivered_total) = closed_loop(&mut run, &mut publisher, publish, step, &mut report)?;
        let after = sample_costs(server_pids, &run.fleet);
        match best {
            Some(p) => {
                report.figure("max_sustained_rate", "highest rate without loss, p99 within --max-p99 (msgs/s)", json!(p.rate));
                phase_figures(&mut report, &p);
            }
            None => report.notes.push(format!(
                "even {} msgs/s failed (loss or p99 over {:?}); lower --max-start or raise --max-p99",
                publish.max_start,
                publish.max_p99.bound(client.conns())
            )),
        }
        cost_figures(&mut report, &before, &after, delivered_total, "(all steps) ");
    }
    let end = run.finish();
    if client.deflate {
        report.figure("inflated_frames", "compressed (permessage-deflate) frames received and inflated", end.inflated);
    }
    // Only now: dropping the limit server's control pipe ends that server.
    drop(publisher);
    report.figure("dropped_after_ready", "connections dropped during the run", end.dropped_after_ready);
    if client.heartbeat_timeout.is_some() {
        report.figure("client_heartbeat_timeouts_total", "client-side heartbeat timeouts in the whole run", end.heartbeat_timeouts);
    }
    report.figure("harness_rss_bytes_per_conn", "harness RSS growth per connection (bytes)", end.harness_bytes_per_conn(connected.ready));
    report.figure("failures_at_end", "failures by kind at the end", json!(end.failures));
    report.series = std::mem::take(&mut run.series);
    Ok(report)
}

/// Server RSS once every subscriber is connected, against the RSS before the first
/// connection, summed over the server processes.
fn server_memory_figures(report: &mut Report, baseline: Option<ProcSample>, server_pids: &[u32], ready: u64) {
    let (Some(b), Some(l)) = (baseline, sample_servers(server_pids)) else { return };
    report.figure("server_rss_baseline_mib", "server RSS before connecting (MiB)", round(b.rss_kib as f64 / 1024.0, 1));
    report.figure("server_rss_connected_mib", "server RSS with every subscriber connected (MiB)", round(l.rss_kib as f64 / 1024.0, 1));
    if let Some(per) = stats::rss_bytes_per_connection(b, l, ready) {
        report.figure("server_rss_bytes_per_conn", "server RSS per connection (bytes)", json!(per.round()));
    }
    if server_pids.len() > 1 {
        report.notes.push(format!("server RSS and CPU are sums over {} processes", server_pids.len()));
    }
}

/// `--hold`: every subscriber connected, nothing published, only the server's heartbeats
/// (a ping per quiet connection per heartbeat interval, each answered with a pong).
fn hold_phase(run: &mut Run, report: &mut Report, server_pids: &[u32], hold: Duration) {
    let t0 = run.fleet.snap();
    let before = sample_costs(server_pids, &run.fleet);
    run.pump_for(hold);
    let t1 = run.fleet.snap();
    let after = sample_costs(server_pids, &run.fleet);
    let wall = after.at.duration_since(before.at).as_secs_f64().max(1e-9);
    let heartbeats = t1.pings.saturating_sub(t0.pings);
    report.figure("hold_s", "held with heartbeats only (s)", round(wall, 1));
    report.figure("ready_at_hold_end", "connections ready at the end of the hold", t1.ready);
    report.figure("dropped_during_hold", "connections dropped during the hold", t1.dropped_after_ready.saturating_sub(t0.dropped_after_ready));
    report.figure("client_heartbeat_timeouts_during_hold", "client-side heartbeat timeouts during the hold", t1.heartbeat_timeouts.saturating_sub(t0.heartbeat_timeouts));
    report.figure("heartbeats_during_hold", "heartbeats during the hold (pings received and answered)", heartbeats);
    report.figure("heartbeats_per_s", "heartbeats per second during the hold", json!((heartbeats as f64 / wall).round()));
    let hz = stats::clock_ticks_per_second() as f64;
    if let (Some(b), Some(a)) = (before.server, after.server) {
        let cpu = a.cpu_ticks.saturating_sub(b.cpu_ticks) as f64 / hz;
        report.figure("hold_server_cpu_percent", "server CPU during the hold (% of one core)", round(cpu / wall * 100.0, 1));
        if heartbeats > 0 {
            report.figure("server_cpu_s_per_1000_heartbeats", "server CPU seconds per 1,000 heartbeats (ping out, pong in)", round(cpu * 1000.0 / heartbeats as f64, 5));
        }
    }
    let harness = after.harness_ticks.saturating_sub(before.harness_ticks) as f64 / hz;
    report.figure("hold_harness_cpu_percent", "harness CPU during the hold (% of one core)", round(harness / wall * 100.0, 1));
    if heartbeats > 0 {
        report.figure("harness_cpu_s_per_1000_heartbeats", "harness CPU seconds per 1,000 heartbeats (ping in, pong out)", round(harness * 1000.0 / heartbeats as f64, 5));
    }
}

/// One line and figures per broadcast (tracked message number): delivered of expected,
/// publish → last delivery, publish → receive percentiles; and whether the second was
/// published while the first was still being written.
fn broadcast_figures(report: &mut Report, run: &Run, phase: &Phase) {
    let subscribers = phase.subscribers();
    let messages = &phase.after.messages;
    for (i, m) in messages.iter().enumerate().take(phase.result.published as usize) {
        let k = i + 1;
        let p = run.fleet.messages.get(i).map(stats::percentiles).unwrap_or_default();
        let span = m.last_arrival_ns.saturating_sub(m.sent_ns) as f64 / 1e9;
        report.figure(&format!("broadcast{k}_delivered"), &format!("broadcast {k}: delivered"), m.deliveries);
        report.figure(&format!("broadcast{k}_subscribers"), &format!("broadcast {k}: subscribers"), subscribers);
        report.figure(&format!("broadcast{k}_s"), &format!("broadcast {k}: publish to last delivery (s)"), round(span, 3));
        latency_figures(report, &format!("broadcast{k}_"), &format!("broadcast {k}: "), &p);
        report.notes.push(format!(
            "broadcast {k} delivered {} of {subscribers} in {span:.2} s (publish → receive p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms)",
            m.deliveries,
            p.p50_ns as f64 / 1e6,
            p.p99_ns as f64 / 1e6,
            p.max_ns as f64 / 1e6
        ));
    }
    if let [first, second, ..] = messages.as_slice() {
        if first.sent_ns > 0 && second.sent_ns > 0 {
            let gap_ms = second.sent_ns.saturating_sub(first.sent_ns) as f64 / 1e6;
            let overlapped = second.sent_ns < first.last_arrival_ns;
            report.figure("broadcast2_published_after_ms", "broadcast 2 published after broadcast 1 (ms)", round(gap_ms, 1));
            report.figure("broadcast2_during_broadcast1", "broadcast 2 published while broadcast 1 was still being delivered", overlapped);
        }
    }
}

/// `--max`: doubles the rate while a step loses nothing, then bisects; returns the best step.
fn closed_loop(run: &mut Run, publisher: &mut Box<dyn Publisher>, publish: &PublishArgs, step: Duration, report: &mut Report) -> Result<(Option<Phase>, u64)> {
    let mut good: Option<Phase> = None;
    let mut bad_rate: Option<f64> = None;
    let mut rate = publish.max_start.max(1.0);
    let mut delivered_total = 0;
    let initial_subscribers = run.fleet.totals().ready;
    let p99_bound = publish.max_p99.bound(initial_subscribers as usize);
    report.figure("max_p99_bound_ms", "p99 bound of each step (ms)", json!(p99_bound.as_secs_f64() * 1e3));
    for _ in 0..limits::MAX_STEPS {
        let owned = std::mem::replace(publisher, Box::new(NullPublisher));
        let (returned, phase) = publish_phase(run, owned, rate, step, |r, t| r.published * t.ready)?;
        *publisher = returned;
        delivered_total += phase.delivered;
        let loss = stats::loss(phase.result.published, phase.subscribers(), phase.delivered);
        let achieved = phase.result.achieved_rate() >= rate * limits::MAX_PUBLISH_ACHIEVED_MIN;
        let timely = phase.latency.p99_ns <= p99_bound.as_nanos() as u64;
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
        let Some(next) = next_rate(good.as_ref().map(|g| g.rate), bad_rate) else { break };
        rate = next;
        if run.fleet.totals().ready < initial_subscribers * 9 / 10 {
            report.notes.push("more than 10% of subscribers were dropped: the search stops".into());
            break;
        }
    }
    Ok((good, delivered_total))
}

/// The `--max` search's next rate: double while nothing failed, halve while nothing passed,
/// else bisect between the best passing rate `good` and the lowest failing rate `bad`.
/// Rates stay whole msgs/s, so the search ends when it is within MAX_RESOLUTION or no
/// whole rate lies strictly between the two: a rate is never measured twice (re-measuring
/// a failed rate until noise lets one step pass would report a rate that mostly fails).
fn next_rate(good: Option<f64>, bad: Option<f64>) -> Option<f64> {
    match (good, bad) {
        (Some(g), None) => Some(g * 2.0),
        (None, Some(b)) if b >= 2.0 => Some((b / 2.0).round()),
        (Some(g), Some(b)) if (b - g) / g > limits::MAX_RESOLUTION => {
            let mid = ((g + b) / 2.0).round();
            (mid > g && mid < b).then_some(mid)
        }
        _ => None,
    }
}

struct NullPublisher;
impl Publisher for NullPublisher {
    fn publish_for(&mut self, _: f64, _: Duration) -> Result<PublishResult> {
        bail!("publisher in use")
    }
}

pub fn fanout(args: &FanoutArgs) -> Result<Report> {
    let client = &args.client;
    let endpoints = parse_urls(&client.url)?;
    let src = source(&args.publish.source, client)?;
    let publisher = make_publisher(&args.publish.source, &src, &endpoints[0], std::slice::from_ref(&args.publish.channel), false);
    let via = src.via.describe();
    let extra = Extra { hold: args.hold, drain: args.drain };
    run_fanout("fanout", client, &args.publish, endpoints, src.nats_prefix, publisher, &client.server_pid, &via, extra)
}

pub fn limit(args: &LimitArgs) -> Result<Report> {
    if args.client.target != TargetKind::Ringcast {
        bail!("`limit` speaks ringcast's protocol; drop --target");
    }
    let exe = std::env::current_exe()?;
    let mut cmd = std::process::Command::new(exe);
    let p = &args.publish;
    cmd.args(["limit-server", "--listen", &args.listen, "--channel", &p.channel, "--payload", &p.source.payload.to_string(), "--lifetime", "2h"]);
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
    let endpoints = vec![Endpoint { addr, host: addr.to_string(), path: "/ws".into() }];
    let publisher = Box::new(LimitPublisher { stdin, stdout });
    let result = run_fanout("limit", &args.client, p, endpoints, None, publisher, &[child.id()], "limit server (self-paced)", Extra::default());
    let _ = child.kill();
    let _ = child.wait();
    let mut report = result?;
    report.notes.push(format!("ceiling server: one thread, epoll + plain write(), pid {} on {addr}", child.id()));
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the search against a server that sustains up to `ceiling` msgs/s; returns the
    /// rates measured and the reported best.
    fn search(start: f64, ceiling: f64) -> (Vec<f64>, Option<f64>) {
        let (mut good, mut bad, mut rate) = (None::<f64>, None::<f64>, start);
        let mut measured = Vec::new();
        for _ in 0..limits::MAX_STEPS {
            measured.push(rate);
            if rate <= ceiling {
                good = Some(rate);
            } else {
                bad = Some(bad.map_or(rate, |b: f64| b.min(rate)));
            }
            match next_rate(good, bad) {
                Some(next) => rate = next,
                None => break,
            }
        }
        (measured, good)
    }

    #[test]
    fn closed_loop_never_measures_a_rate_twice_and_ends_on_the_ceiling() {
        // The 2026-11-27 nats-ws run: 2 passed, 3 failed, and the old bisection rounded
        // (2 + 3) / 2 up to 3 again, three times, until one noisy step passed.
        assert_eq!(next_rate(Some(2.0), Some(3.0)), None);
        assert_eq!(next_rate(Some(2.0), Some(4.0)), Some(3.0));
        assert_eq!(next_rate(None, Some(2.0)), Some(1.0));
        assert_eq!(next_rate(None, Some(1.0)), None);
        assert_eq!(next_rate(Some(800.0), Some(1600.0)), Some(1200.0));
        for (start, ceiling) in [(50.0, 2.4), (50.0, 3.0), (50.0, 0.5), (50.0, 1_550.0), (50.0, 875.0), (1.0, 6.0), (50.0, 49.0)] {
            let (measured, best) = search(start, ceiling);
            let mut seen = measured.clone();
            seen.sort_by(f64::total_cmp);
            seen.dedup();
            assert_eq!(seen.len(), measured.len(), "ceiling {ceiling}: a rate was measured twice: {measured:?}");
            let best = best.unwrap_or(0.0);
            assert!(best <= ceiling, "ceiling {ceiling}: reported {best}");
            assert!(best >= (ceiling * (1.0 - limits::MAX_RESOLUTION)).floor().min(ceiling.floor()), "ceiling {ceiling}: reported only {best} after {measured:?}");
        }
    }
}
