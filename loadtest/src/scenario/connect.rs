//! `idle` (connect N and hold them: server memory per connection) and `burst` (a
//! connection storm: handshakes/s and failures). Both work on every target; NATS and MQTT
//! clients log in (CONNECT → PONG / CONNACK), Pusher clients wait for
//! `connection_established`; they subscribe to nothing unless `idle --channel` asks.

use super::*;
use crate::cli::{BurstArgs, IdleArgs};
use crate::client::UserSpec;

pub fn idle(args: &IdleArgs) -> Result<Report> {
    let client = &args.client;
    let conns = client.conns();
    let endpoints = parse_urls(&client.url)?;
    let mut report = Report::new("idle", merge(common_parameters(client, conns), json!({"duration_s": args.duration.as_secs_f64(), "channel": args.channel})));
    let baseline = sample_servers(&client.server_pid);
    let rate = client.connect_rate.unwrap_or(20_000.0);
    let bound = connect_bound(client, conns, rate);
    let spec = RunSpec {
        client,
        conns,
        endpoints,
        nats_prefix: None,
        classes: args
            .channel
            .iter()
            .map(|channel| SubClass { name: "subscribers".into(), conns, channel: channel.clone(), channel_count: 1, track_order: false })
            .collect(),
        connect_rate: rate,
        lifetime: bound + args.duration + Duration::from_secs(30),
        reconnect: None,
    };
    let mut run = Run::start(spec)?;
    let (connected, settled) = run.wait_settled(bound);
    connect_figures(&mut report, &run, &connected, conns, settled);
    run.pump_for(args.duration);
    let held = run.fleet.snap();
    let loaded = sample_servers(&client.server_pid);
    report.figure("connections_held_at_end", "connections held at the end", held.ready);
    if let (Some(b), Some(l)) = (baseline, loaded) {
        report.figure("server_rss_baseline_mib", "server RSS before (MiB)", round(b.rss_kib as f64 / 1024.0, 1));
        report.figure("server_rss_loaded_mib", "server RSS held (MiB)", round(l.rss_kib as f64 / 1024.0, 1));
        if let Some(per) = stats::rss_bytes_per_connection(b, l, held.ready) {
            report.figure("server_rss_bytes_per_conn", "server RSS per connection (bytes)", json!(per.round()));
        }
        if client.server_pid.len() > 1 {
            report.notes.push(format!("server RSS is the sum over {} processes", client.server_pid.len()));
        }
    } else if !client.server_pid.is_empty() {
        report.notes.push("a --server-pid process was gone before or after the hold: no server memory figure".into());
    }
    report.figure("harness_rss_bytes_per_conn", "harness RSS growth per connection (bytes)", held.harness_bytes_per_conn(held.ready));
    let end = run.finish();
    report.figure("dropped_after_ready", "connections dropped while held", end.dropped_after_ready);
    report.figure("failures_at_end", "failures by kind at the end (dropped_*: lost after ready)", json!(end.failures));
    report.series = std::mem::take(&mut run.series);
    Ok(report)
}

pub fn burst(args: &BurstArgs) -> Result<Report> {
    let client = &args.client;
    let conns = client.conns();
    let endpoints = parse_urls(&client.url)?;
    let mut report = Report::new("burst", merge(common_parameters(client, conns), json!({"inflight": client.inflight})));
    let rate = client.connect_rate.unwrap_or(0.0);
    let bound = connect_bound(client, conns, rate);
    if args.presence.is_some() && client.target != TargetKind::Ringcast {
        bail!("--presence is a ringcast feature: drop it for --target {:?}", client.target);
    }
    let classes = match &args.presence {
        Some(channel) if args.rooms > 1 => vec![SubClass { name: "presence".into(), conns, channel: format!("{channel}.{{i}}"), channel_count: args.rooms, track_order: false }],
        Some(channel) => vec![SubClass { name: "presence".into(), conns, channel: channel.clone(), channel_count: 1, track_order: false }],
        None => Vec::new(),
    };
    let spec = RunSpec { client, conns, endpoints, nats_prefix: None, classes, connect_rate: rate, lifetime: bound + Duration::from_secs(30), reconnect: None };
    let users = args.jwt_secret.as_ref().map(|secret| UserSpec {
        jwt_secret: secret.clone(),
        sub_prefix: format!("lt{}u", std::process::id()),
        exp: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) + 3600,
        nid_prefix: format!("lt{}n", std::process::id()),
    });
    let presence = args.presence.is_some();
    let mut run = Run::start_with(spec, |cfg| {
        cfg.users = users;
        cfg.presence = presence;
    })?;
    let (connected, settled) = run.wait_settled(bound);
    connect_figures(&mut report, &run, &connected, conns, settled);
    report.figure("handshakes_per_s", "handshakes/s", json!((connected.upgraded as f64 / (connected.last_ready_ms.max(1) as f64 / 1000.0)).round()));
    let end = run.finish();
    report.figure("dropped_after_ready", "connections dropped before the end", end.dropped_after_ready);
    report.series = std::mem::take(&mut run.series);
    Ok(report)
}
