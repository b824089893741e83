//! `reconnect`: N subscribers on one channel while one publisher keeps publishing; mid-run
//! the server is killed (`--kill-pid`), drained (`--drain-url`, the gateway closes clients
//! with 1012 over its drain window) and/or restarted (`--restart-cmd`). Every lost client
//! reconnects with jittered exponential backoff and resubscribes, with `since` = the last
//! `seq` it saw when the channel has history. Reports the time until every client is back,
//! per-client reconnect times, and whether any resumed subscription missed a message
//! (message numbers from the publisher, plus `seq` gaps).

use super::*;
use crate::cli::{KillSignal, ReconnectArgs};
use std::io::{Read, Write};
use std::net::TcpStream;

/// The restart command must return within this (it should start the server in the
/// background and exit).
const RESTART_CMD_TIMEOUT: Duration = Duration::from_secs(30);
/// The drain request's connect and answer bound.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

pub fn reconnect(args: &ReconnectArgs) -> Result<Report> {
    let client = &args.client;
    if args.kill_pid.is_none() && args.restart_cmd.is_none() && args.drain_url.is_none() {
        bail!("give a disruption: --kill-pid PID, --drain-url URL and/or --restart-cmd CMD");
    }
    if args.source.publishers != 1 {
        bail!("reconnect checks message order on one channel: it needs exactly one publisher (drop --publishers)");
    }
    let disrupt_at = args.disrupt_at.unwrap_or(args.duration / 3);
    if disrupt_at >= args.duration {
        bail!("--disrupt-at must fall inside --duration");
    }
    let conns = client.conns();
    let endpoints = parse_urls(&client.url)?;
    let src = source(&args.source, client)?;
    let mut report = Report::new(
        "reconnect",
        merge(
            common_parameters(client, conns),
            json!({
                "rate": args.rate, "duration_s": args.duration.as_secs_f64(), "channel": args.channel,
                "disrupt_at_s": disrupt_at.as_secs_f64(), "kill_pid": args.kill_pid, "kill_signal": format!("{:?}", args.kill_signal),
                "restart_cmd": args.restart_cmd, "drain_url": args.drain_url, "publish": src.via.describe(),
                "reconnect_base_ms": args.reconnect_base.as_millis() as u64, "reconnect_cap_ms": args.reconnect_cap.as_millis() as u64,
                "reconnect_attempts": args.reconnect_attempts,
            }),
        ),
    );
    let policy = ReconnectPolicy {
        base_ms: args.reconnect_base.as_millis().max(1) as u64,
        cap_ms: args.reconnect_cap.as_millis().max(1) as u64,
        attempts_max: args.reconnect_attempts.max(1),
    };
    let classes = vec![SubClass { name: "subscribers".into(), conns, channel: args.channel.clone(), channel_count: 1, track_order: true }];
    let connect_rate = client.connect_rate.unwrap_or(20_000.0);
    let bound = connect_bound(client, conns, connect_rate);
    let lifetime = bound + args.duration + args.back_within + RESTART_CMD_TIMEOUT + limits::DRAIN_MAX + Duration::from_secs(30);
    let publisher = make_publisher(&args.source, &src, &endpoints[0], std::slice::from_ref(&args.channel), true);
    let spec = RunSpec { client, conns, endpoints, nats_prefix: src.nats_prefix.clone(), classes, connect_rate, lifetime, reconnect: Some(policy) };
    let mut run = Run::start(spec)?;
    let (connected, settled) = run.wait_settled(bound);
    connect_figures(&mut report, &run, &connected, conns, settled);
    if connected.ready == 0 {
        run.finish();
        report.notes.push("no connection became ready: is the server running at --url?".into());
        return Ok(report);
    }
    let rate = args.rate;
    let duration = args.duration;
    let published_from = Instant::now();
    let handle = std::thread::spawn(move || {
        let mut publisher = publisher;
        publisher.publish_for(rate, duration)
    });
    run.pump_for(disrupt_at.saturating_sub(published_from.elapsed()));
    let disrupted_ns = crate::host::now_ns();
    let disrupted = Instant::now();
    disrupt(args, &mut report);
    // Publishing goes on through the outage; then every client gets --back-within to return.
    while !handle.is_finished() {
        run.pump_for(Duration::from_millis(100));
    }
    let result = handle.join().map_err(|_| anyhow::anyhow!("publisher thread panicked"))??;
    loop {
        // Settled: nobody waiting to reconnect or mid-handshake (all back, or given up).
        let t = run.fleet.snap();
        let settled = t.waiting == 0 && t.open == t.ready;
        if settled || disrupted.elapsed() >= args.back_within {
            break;
        }
        run.pump_for(Duration::from_millis(100));
    }
    wait_for_stragglers(&mut run, result.published * conns as u64);
    let end = run.fleet.snap();
    recovery_figures(&mut report, &run, &end, conns, disrupted_ns);
    delivery_figures(&mut report, &result, &end, connected.deliveries, conns);
    run.finish();
    report.series = std::mem::take(&mut run.series);
    Ok(report)
}

fn wait_for_stragglers(run: &mut Run, want: u64) {
    let started = Instant::now();
    let mut last = run.fleet.totals().deliveries;
    let mut quiet = Instant::now();
    while started.elapsed() < limits::DRAIN_MAX && run.fleet.totals().deliveries < want {
        run.pump_for(Duration::from_millis(200));
        let d = run.fleet.snap().deliveries;
        if d != last {
            last = d;
            quiet = Instant::now();
        } else if quiet.elapsed() >= limits::DRAIN_QUIET {
            return;
        }
    }
}

/// Kill, drain, restart, in that order; each outcome becomes a note.
fn disrupt(args: &ReconnectArgs, report: &mut Report) {
    if let Some(pid) = args.kill_pid {
        let signal = match args.kill_signal {
            KillSignal::Kill => libc::SIGKILL,
            KillSignal::Term => libc::SIGTERM,
        };
        // SAFETY: kill(2) with a pid and a signal number has no memory effects.
        let rc = unsafe { libc::kill(pid as libc::pid_t, signal) };
        let outcome = if rc == 0 { "sent".to_string() } else { format!("failed: {}", std::io::Error::last_os_error()) };
        report.notes.push(format!("disruption: {:?} to pid {pid}: {outcome}", args.kill_signal));
    }
    if let Some(url) = &args.drain_url {
        match http_post(url, &args.source.api_key) {
            Ok(status) => report.notes.push(format!("disruption: POST {url} answered HTTP {status}")),
            Err(e) => report.notes.push(format!("disruption: POST {url} failed: {e:#}")),
        }
    }
    if let Some(cmd) = &args.restart_cmd {
        match run_restart(cmd) {
            Ok(()) => report.notes.push(format!("restart command ran: {cmd}")),
            Err(e) => report.notes.push(format!("restart command failed: {e:#}")),
        }
    }
}

/// Runs `sh -c CMD` (stdout to our stderr, so --json stays clean), bounded in time.
fn run_restart(cmd: &str) -> Result<()> {
    let mut child = std::process::Command::new("sh")
        .args(["-c", cmd])
        .stdin(std::process::Stdio::null())
        .stdout(std::io::stderr())
        .spawn()
        .context("starting sh")?;
    let deadline = Instant::now() + RESTART_CMD_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!("exited with {status}");
            }
            return Ok(());
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("did not return within {RESTART_CMD_TIMEOUT:?}; start the server in the background (`... &`)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// POSTs an empty body with the API key; returns the status.
pub fn http_post(url: &str, api_key: &str) -> Result<u16> {
    let rest = url.strip_prefix("http://").context("--drain-url must start with http://")?;
    let (authority, path) = rest.find('/').map_or((rest, "/"), |i| (&rest[..i], &rest[i..]));
    let addr = authority
        .to_socket_addrs()
        .with_context(|| format!("resolving {authority:?}"))?
        .find(|a| a.ip().is_loopback())
        .with_context(|| format!("{authority} is not a loopback address"))?;
    let mut s = TcpStream::connect_timeout(&addr, DRAIN_TIMEOUT)?;
    s.set_read_timeout(Some(DRAIN_TIMEOUT))?;
    write!(s, "POST {path} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {api_key}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while crate::frame::http_head_end(&head).is_none() {
        let n = s.read(&mut chunk)?;
        if n == 0 || head.len() > limits::HTTP_HEAD_BYTES_MAX {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    crate::frame::http_status(&head).context("no HTTP status line in the answer")
}

fn recovery_figures(report: &mut Report, run: &Run, end: &Totals, conns: usize, disrupted_ns: u64) {
    report.figure("disrupted", "ready connections lost", end.dropped_after_ready);
    report.figure("reconnected", "lost connections ready again", end.reconnected);
    report.figure("still_waiting", "lost connections still waiting to reconnect", end.waiting);
    report.figure("gave_up", "clients that gave up (--reconnect-attempts)", end.gave_up);
    report.figure("ready_at_end", "connections ready at the end", end.ready);
    let all_back = end.ready == conns as u64 && end.all_ready_at_ns >= disrupted_ns && end.dropped_after_ready > 0;
    let back_ms = all_back.then(|| round((end.all_ready_at_ns - disrupted_ns) as f64 / 1e6, 1));
    report.figure("time_until_all_back_ms", "time from disruption until every client is back (ms)", back_ms.clone().unwrap_or(serde_json::Value::Null));
    let r = stats::percentiles(&run.fleet.reconnect);
    report.figure("reconnect_p50_ms", "per-client reconnect time p50 (ms)", ms(r.p50_ns));
    report.figure("reconnect_p99_ms", "per-client reconnect time p99 (ms)", ms(r.p99_ns));
    report.figure("reconnect_max_ms", "per-client reconnect time max (ms)", ms(r.max_ns));
    let reasons: std::collections::BTreeMap<_, _> = end.failures.iter().filter(|(k, _)| k.starts_with("dropped_")).map(|(k, v)| (k.trim_start_matches("dropped_").to_string(), *v)).collect();
    report.figure("loss_reasons", "why connections were lost", json!(reasons));
    let retries: std::collections::BTreeMap<_, _> = end.failures.iter().filter(|(k, _)| k.starts_with("retry_")).map(|(k, v)| (k.clone(), *v)).collect();
    report.figure("failed_retries", "failed reconnect attempts by kind", json!(retries));
    if end.dropped_after_ready == 0 {
        report.notes.push("the disruption dropped no connection: check --kill-pid / --drain-url".into());
    } else if !all_back {
        report.notes.push(format!("not every client came back: {} of {conns} ready at the end", end.ready));
    }
}

fn delivery_figures(report: &mut Report, result: &PublishResult, end: &Totals, deliveries_before: u64, conns: usize) {
    report.figure("published", "messages published", result.published);
    if !result.errors.is_empty() {
        report.figure("publish_errors", "publish attempts refused or failed (the outage, if publishing goes through the server)", json!(result.errors));
    }
    let delivered = end.deliveries - deliveries_before;
    let distinct = delivered.saturating_sub(end.order.duplicates);
    let expected = result.published * conns as u64;
    report.figure("deliveries", "deliveries", delivered);
    report.figure("expected", "deliveries expected (every client, every message)", expected);
    report.figure("lost", "deliveries lost", expected.saturating_sub(distinct));
    let o = end.order;
    report.figure("gaps", "gaps in message numbers (all clients)", o.gaps);
    report.figure("missed_in_gaps", "messages skipped in those gaps", o.missed);
    report.figure("duplicates", "duplicates", o.duplicates);
    report.figure("seq_gaps", "gaps in `seq`", o.seq_gaps);
    report.figure("resumed", "subscriptions resumed with `since`", o.resumed);
    report.figure("resumed_with_gap", "resumed subscriptions that missed a message", o.resumed_with_gap);
    report.figure("resume_refused", "resumes refused (409, past retention)", o.resume_refused);
    if end.reconnected > 0 && o.resumed == 0 {
        report.notes.push(
            "no `seq` arrived in `msg` frames, so clients resubscribed without `since`: enable history on the channel to resume; \
             without it, messages published while a client was away are missed (at-most-once)"
                .into(),
        );
    }
}
