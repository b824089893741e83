//! `notify`: in-app notifications through the ringcast Lane. N users, one WebSocket each
//! with its own HS256 token (`sub` = `{prefix}{i}`), subscribed to `user.{sub}`; the first
//! half online from the start, the second half held back and released --offline-for after
//! sending starts (the users who come back later). Notifications go in through
//! `POST /api/notify` at --rate, round-robin over all users; every `notify` frame is acked.
//! Figures: accepted/s and accept latency, online delivery latency (from the send stamp),
//! delay after reconnect (from the connection's ready to the delivery of what waited),
//! duplicates (same nid twice on one user) and notifications missing after --settle.

use super::*;
use crate::cli::NotifyArgs;
use crate::client::UserSpec;
use crate::notify_api::{self, NotifyPlan, NotifyResult};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const ONLINE: usize = 0;
const OFFLINE: usize = 1;
/// Tokens stay valid this long past the run's own time bound.
const TOKEN_SLACK: Duration = Duration::from_secs(3600);
/// The bound on delivering what waited for a user once they are back.
const PENDING_TARGET: Duration = Duration::from_secs(1);

fn valid_prefix(p: &str) -> bool {
    p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A short id unique to this run (time and pid), for user ids and nids.
fn run_id() -> String {
    format!("{:x}{:x}", (crate::host::now_ns() / 1_000_000) % 0x100_0000, std::process::id() % 0x1_0000)
}

pub fn notify(args: &NotifyArgs) -> Result<Report> {
    let client = &args.client;
    if client.conns.is_some() {
        bail!("notify opens one connection per user: use --users, drop --conns");
    }
    if client.target != TargetKind::Ringcast {
        bail!("notify measures the ringcast Lane: drop --target");
    }
    if args.users == 0 {
        bail!("--users must be at least 1");
    }
    if !(args.rate >= 0.0 && args.rate.is_finite()) {
        bail!("--rate must be 0 (closed loop) or above");
    }
    if args.jwt_secret.is_empty() {
        bail!("--jwt-secret is required: users connect with tokens (start the gateway with the same --jwt-secret)");
    }
    if args.senders == 0 || args.senders > limits::SENDERS_MAX {
        bail!("--senders must be 1..={}", limits::SENDERS_MAX);
    }
    let id = run_id();
    let sub_prefix = args.user_prefix.clone().unwrap_or_else(|| format!("lt{id}u"));
    if !valid_prefix(&sub_prefix) {
        bail!("--user-prefix {sub_prefix:?}: user ids are channel tokens, only A-Z a-z 0-9 _ - allowed");
    }
    let nid_prefix = format!("lt{id}-");
    let users = args.users;
    let online = users - users / 2;
    let offline = users / 2;
    let endpoints = parse_urls(&client.url)?;
    let http = endpoints[0].clone();
    let mut report = Report::new(
        "notify",
        merge(
            common_parameters(client, users),
            json!({
                "users": users, "online_users": online, "offline_users": offline, "rate": args.rate,
                "duration_s": args.duration.as_secs_f64(), "offline_for_s": args.offline_for.as_secs_f64(),
                "settle_s": args.settle.as_secs_f64(), "senders": args.senders, "payload": args.payload,
                "ttl": args.ttl, "user_prefix": sub_prefix,
            }),
        ),
    );
    let channel = format!("user.{sub_prefix}{{g}}");
    let classes = vec![
        SubClass { name: "online users".into(), conns: online, channel: channel.clone(), channel_count: 1, track_order: false },
        SubClass { name: "users back later".into(), conns: offline, channel, channel_count: 1, track_order: false },
    ];
    let connect_rate = client.connect_rate.unwrap_or(20_000.0);
    let bound = connect_bound(client, users, connect_rate);
    let lifetime = bound * 2 + args.offline_for.max(args.duration) + args.settle + Duration::from_secs(60);
    let exp = crate::host::now_ns() / 1_000_000_000 + (lifetime + TOKEN_SLACK).as_secs();
    let user_spec = UserSpec { jwt_secret: args.jwt_secret.clone(), sub_prefix: sub_prefix.clone(), exp, nid_prefix: nid_prefix.clone() };
    let spec = RunSpec { client, conns: users, endpoints, nats_prefix: None, classes, connect_rate, lifetime, reconnect: None };
    let mut run = Run::start_with(spec, |cfg| {
        cfg.users = Some(user_spec);
        cfg.held_from = Some(online);
    })?;

    // Phase 1: the online half connects (the other half is held).
    let deadline = Instant::now() + bound;
    let connected = loop {
        run.pump_for(Duration::from_millis(100));
        let t = run.fleet.totals();
        if (t.attempted >= online as u64 && t.open == t.ready) || Instant::now() >= deadline || run.fleet.all_exited() {
            break t;
        }
    };
    let online_ready = connected.classes.get(ONLINE).map_or(0, |c| c.ready);
    report.figure("users", "users", users as u64);
    report.figure("online_users_ready", "online users ready at the start", online_ready);
    if online_ready == 0 {
        run.finish();
        report.notes.push("no user connection became ready: is the gateway running at --url with the same --jwt-secret?".into());
        report.figure("failures_by_kind", "failures by kind", json!(connected.failures));
        return Ok(report);
    }

    // Phase 2: send for --duration; release the second half --offline-for after the start.
    let accepted_now = Arc::new(AtomicU64::new(0));
    let counter = accepted_now.clone();
    run.extra = Some(Box::new(move || format!(" | accepted {}", counter.load(Ordering::Relaxed))));
    let plan = NotifyPlan {
        target: http.addr,
        host: http.host.clone(),
        api_key: args.api_key.clone(),
        users,
        sub_prefix: sub_prefix.clone(),
        nid_prefix,
        payload: args.payload,
        ttl: args.ttl.clone(),
        connections: args.senders,
    };
    let cost_before = sample_costs(&client.server_pid, &run.fleet);
    run.fleet.snap();
    run.fleet.reset_window();
    let started = Instant::now();
    let (rate, duration, sent_counter) = (args.rate, args.duration, accepted_now.clone());
    let sender = std::thread::spawn(move || notify_api::send_for(&plan, rate, duration, &sent_counter));
    let mut released = offline == 0;
    let mut sender = Some(sender);
    let mut result: Option<NotifyResult> = None;
    while !released || sender.is_some() {
        run.pump_for(Duration::from_millis(50));
        if !released && started.elapsed() >= args.offline_for {
            run.fleet.release();
            released = true;
        }
        if sender.as_ref().is_some_and(|h| h.is_finished()) {
            let joined = sender.take().expect("checked").join().map_err(|_| anyhow::anyhow!("notify sender thread panicked"))?;
            match joined {
                Ok(r) => result = Some(r),
                Err(e) => {
                    run.finish();
                    return Err(e.context("sending notifications"));
                }
            }
        }
    }
    let sent = result.expect("the sender finished");

    // Phase 3: every user online; wait for every accepted notification, at most --settle.
    let settle_started = Instant::now();
    let mut all_arrived = false;
    loop {
        run.pump_for(Duration::from_millis(200));
        let t = run.fleet.snap();
        let everyone = t.attempted >= users as u64 && t.open == t.ready;
        if everyone && t.notify.unique >= sent.accepted.len() as u64 {
            all_arrived = true;
            break;
        }
        if settle_started.elapsed() >= args.settle || run.fleet.all_exited() {
            break;
        }
    }
    let settled_in = settle_started.elapsed();
    let before_stop = run.fleet.snap();
    let cost_after = sample_costs(&client.server_pid, &run.fleet);
    let end = run.finish();
    let seen: HashSet<u64> = run.fleet.notify_seen().collect();
    let accepted: HashSet<u64> = sent.accepted.iter().copied().collect();
    let missing = accepted.iter().filter(|k| !seen.contains(k)).count() as u64;
    let unconfirmed = seen.iter().filter(|k| !accepted.contains(k)).count() as u64;

    let n = &end.notify;
    report.figure("offline_users_ready", "users back later, ready", before_stop.classes.get(OFFLINE).map_or(0, |c| c.ready));
    report.figure("rate_asked", "notifications/s asked (0: closed loop)", json!(args.rate));
    report.figure("sent", "notifications sent (requests)", sent.attempted);
    report.figure("accepted", "notifications accepted (2xx)", sent.accepted.len() as u64);
    report.figure("accepted_per_s", "accepted/s", round(sent.accepted_per_s(), 1));
    report.figure("refusals", "refusals by status", json!(sent.refusals));
    let acc = stats::percentiles(&sent.accept_latency);
    report.figure("accept_latency_p50_ms", "accept latency p50 (ms)", ms(acc.p50_ns));
    report.figure("accept_latency_p99_ms", "accept latency p99 (ms)", ms(acc.p99_ns));
    report.figure("accept_latency_max_ms", "accept latency max (ms)", ms(acc.max_ns));
    report.figure("delivered", "delivered (distinct)", n.unique);
    report.figure("duplicates", "duplicates (same nid again on its user)", n.duplicates);
    report.figure("missing", "missing (accepted, never delivered)", missing);
    report.figure("acks_sent", "acks sent", n.acks);
    let online_lat = stats::percentiles(&run.fleet.window);
    report.figure("online_deliveries", "online deliveries (sent while the user was connected)", n.unique.saturating_sub(n.pending));
    report.figure("online_latency_p50_ms", "online delivery latency p50 (ms)", ms(online_lat.p50_ns));
    report.figure("online_latency_p90_ms", "online delivery latency p90 (ms)", ms(online_lat.p90_ns));
    report.figure("online_latency_p99_ms", "online delivery latency p99 (ms)", ms(online_lat.p99_ns));
    report.figure("online_latency_max_ms", "online delivery latency max (ms)", ms(online_lat.max_ns));
    let pending = stats::percentiles(&run.fleet.pending_delay);
    let over = run.fleet.pending_delay.count_between(PENDING_TARGET.as_nanos() as u64 + 1, u64::MAX);
    report.figure("pending_deliveries", "pending deliveries (sent before the user connected)", n.pending);
    report.figure("pending_delay_p50_ms", "delay after reconnect p50 (ms)", ms(pending.p50_ns));
    report.figure("pending_delay_p99_ms", "delay after reconnect p99 (ms)", ms(pending.p99_ns));
    report.figure("pending_delay_max_ms", "delay after reconnect max (ms)", ms(pending.max_ns));
    report.figure("pending_over_1s", "pending deliveries later than 1 s after reconnect", over);
    report.figure("settle_s", "waited after sending (s)", round(settled_in.as_secs_f64(), 2));
    let hs = stats::percentiles(&run.fleet.handshake);
    report.figure("handshake_p50_ms", "handshake p50 (ms)", ms(hs.p50_ns));
    report.figure("handshake_p99_ms", "handshake p99 (ms)", ms(hs.p99_ns));
    report.figure("connect_failures", "connect failures", end.failed());
    report.figure("failures_by_kind", "failures by kind", json!(end.failures));
    report.figure("dropped_after_ready", "connections dropped during the run", end.dropped_after_ready);
    cost_figures(&mut report, &cost_before, &cost_after, n.unique, "");
    if unconfirmed > 0 {
        report.figure("delivered_unconfirmed", "delivered though the send was not answered 2xx", unconfirmed);
    }
    if n.foreign > 0 {
        report.notes.push(format!("{} notify frames carried another run's nid (acked, not counted)", n.foreign));
    }
    if !all_arrived {
        report.notes.push(format!("{missing} accepted notifications had not arrived {:.0} s after sending ended (--settle)", args.settle.as_secs_f64()));
    }
    for limit in &end.host_limits {
        report.notes.push(format!("stopped opening connections: host limit on {limit}"));
    }
    if args.rate > 0.0 && sent.accepted_per_s() < args.rate * 0.95 {
        report.notes.push(format!(
            "accepted {:.0}/s of {:.0}/s asked: the Lane answered slower than --senders {} connections allow (raise --senders)",
            sent.accepted_per_s(),
            args.rate,
            args.senders
        ));
    }
    report.series = std::mem::take(&mut run.series);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_make_valid_distinct_prefixes() {
        let a = format!("lt{}u", run_id());
        assert!(valid_prefix(&a), "{a}");
        assert!(!valid_prefix("a.b") && !valid_prefix("a b"));
    }
}
