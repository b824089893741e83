//! `telemetry`: the IoT case. M devices each publish to their own channel (`dev.{i}.temp`)
//! at r msgs/s; S subscribers follow each device channel and D dashboards follow the
//! wildcard over all of them (`dev.*.temp`). Delivery rate, latency and loss are reported
//! per class, and device subscribers check message numbers (gaps, duplicates), since each
//! device channel has exactly one ordered publisher.

use super::*;
use crate::cli::TelemetryArgs;

const DEVICE: usize = 0;
const DASHBOARD: usize = 1;

pub fn telemetry(args: &TelemetryArgs) -> Result<Report> {
    let client = &args.client;
    if client.conns.is_some() {
        bail!("telemetry sets the connection count itself (devices × subs-per-device + dashboards); drop --conns");
    }
    if args.devices == 0 || !(args.device_rate > 0.0) {
        bail!("--devices and --device-rate must be above 0");
    }
    if !args.device_channel.contains("{i}") {
        bail!("--device-channel must contain {{i}} (the device number), e.g. dev.{{i}}.temp");
    }
    let device_subs = args.devices * args.subs_per_device;
    let conns = device_subs + args.dashboards;
    if conns == 0 {
        bail!("no subscribers: raise --subs-per-device or --dashboards");
    }
    if client.target == TargetKind::Pusher && args.dashboards > 0 {
        bail!("Pusher channels have no wildcards, so a dashboard cannot subscribe to every device: add --dashboards 0 for --target pusher");
    }
    let endpoints = parse_urls(&client.url)?;
    let src = source(&args.source, client)?;
    let channels: Vec<String> = (0..args.devices).map(|i| args.device_channel.replace("{i}", &i.to_string())).collect();
    let wildcard = args.device_channel.replace("{i}", "*");
    let rate = args.devices as f64 * args.device_rate;
    let mut report = Report::new(
        "telemetry",
        merge(
            common_parameters(client, conns),
            json!({
                "devices": args.devices, "device_rate": args.device_rate, "subs_per_device": args.subs_per_device,
                "dashboards": args.dashboards, "device_channel": args.device_channel, "dashboard_channel": wildcard,
                "duration_s": args.duration.as_secs_f64(), "payload": args.source.payload, "publish": src.via.describe(),
                "publishers": args.source.publishers,
            }),
        ),
    );
    let classes = vec![
        SubClass { name: "device subscribers".into(), conns: device_subs, channel: args.device_channel.clone(), channel_count: args.devices, track_order: true },
        SubClass { name: "dashboards".into(), conns: args.dashboards, channel: wildcard, channel_count: 1, track_order: false },
    ];
    let connect_rate = client.connect_rate.unwrap_or(20_000.0);
    let bound = connect_bound(client, conns, connect_rate);
    let lifetime = bound + args.duration + limits::DRAIN_MAX + Duration::from_secs(30);
    let publisher = make_publisher(&args.source, &src, &endpoints[0], &channels, false);
    let spec = RunSpec { client, conns, endpoints, nats_prefix: src.nats_prefix.clone(), classes, connect_rate, lifetime, reconnect: None };
    let mut run = Run::start(spec)?;
    let (connected, settled) = run.wait_settled(bound);
    connect_figures(&mut report, &run, &connected, conns, settled);
    if connected.ready == 0 {
        run.finish();
        report.notes.push("no connection became ready: is the server running at --url?".into());
        return Ok(report);
    }
    let devices = args.devices as f64;
    let expected = move |r: &PublishResult, t: &Totals| class_expected(r.published, t, devices).iter().sum();
    let before = sample_costs(&client.server_pid, &run.fleet);
    let (_publisher, phase) = publish_phase(&mut run, publisher, rate, args.duration, expected)?;
    let after = sample_costs(&client.server_pid, &run.fleet);
    publish_figures(&mut report, &phase);
    class_figures(&mut report, &phase, devices);
    cost_figures(&mut report, &before, &after, phase.delivered, "");
    let end = run.finish();
    if client.deflate {
        report.figure("inflated_frames", "compressed (permessage-deflate) frames received and inflated", end.inflated);
    }
    report.figure("dropped_after_ready", "connections dropped during the run", end.dropped_after_ready);
    report.figure("harness_rss_bytes_per_conn", "harness RSS growth per connection (bytes)", end.harness_bytes_per_conn(connected.ready));
    if connected.ready < conns as u64 {
        report.notes.push("not every subscriber was ready: expected deliveries assume the ready ones spread evenly over devices".into());
    }
    report.series = std::mem::take(&mut run.series);
    Ok(report)
}

/// Expected deliveries per class: every device subscriber gets its device's messages (the
/// publishers go round the devices, so each gets published / devices), every dashboard
/// gets all of them.
fn class_expected(published: u64, t: &Totals, devices: f64) -> [u64; 2] {
    let ready = |c: usize| t.classes.get(c).map_or(0, |c| c.ready);
    [(published as f64 * ready(DEVICE) as f64 / devices).round() as u64, published * ready(DASHBOARD)]
}

fn class_figures(report: &mut Report, p: &Phase, devices: f64) {
    let expected = class_expected(p.result.published, &p.before, devices);
    let secs = p.result.elapsed.as_secs_f64().max(1e-9);
    for (class, (key, label)) in [(DEVICE, ("device_", "device subscribers: ")), (DASHBOARD, ("dashboard_", "dashboards: "))] {
        let ready = p.before.classes.get(class).map_or(0, |c| c.ready);
        let delivered = p.after.classes.get(class).map_or(0, |c| c.deliveries) - p.before.classes.get(class).map_or(0, |c| c.deliveries);
        let lost = expected[class].saturating_sub(delivered);
        report.figure(&format!("{key}subscribers"), &format!("{label}subscribers"), ready);
        report.figure(&format!("{key}deliveries"), &format!("{label}deliveries"), delivered);
        report.figure(&format!("{key}deliveries_per_s"), &format!("{label}deliveries/s"), json!((delivered as f64 / secs).round()));
        report.figure(&format!("{key}expected"), &format!("{label}deliveries expected"), expected[class]);
        report.figure(&format!("{key}lost"), &format!("{label}lost"), lost);
        let ratio = if expected[class] == 0 { 0.0 } else { lost as f64 / expected[class] as f64 };
        report.figure(&format!("{key}lost_percent"), &format!("{label}lost (%)"), round(ratio * 100.0, 4));
        if let Some(lat) = p.class_latency.get(class) {
            latency_figures(report, key, label, lat);
        }
    }
    let o = p.after.order;
    report.figure("device_gaps", "device subscribers: message-number gaps", o.gaps);
    report.figure("device_missed", "device subscribers: messages skipped in gaps", o.missed);
    report.figure("device_duplicates", "device subscribers: duplicates", o.duplicates);
    let total = expected.iter().sum::<u64>();
    report.figure("deliveries_per_s", "all deliveries/s", json!((p.delivered as f64 / secs).round()));
    report.figure("lost", "all lost", total.saturating_sub(p.delivered));
    latency_figures(report, "", "all: ", &p.latency);
}
