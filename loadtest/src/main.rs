//! ringcast-loadtest: the load-test harness for the ringcast WebSocket gateway.
//!
//! Layout (one job each):
//! - `cli`          flags, parsed once
//! - `limits`       every bound, with its unit and why
//! - `frame`        WebSocket frames, the upgrade, the payload stamps (pure bytes)
//! - `nats`, `mqtt` the NATS and MQTT 3.1.1 subsets the harness speaks (pure bytes)
//! - `pusher`       Pusher protocol 7: app, subscribe frame, server events, API signing (pure bytes)
//! - `adapter`      per target (ringcast, nats-ws, mqtt-ws, pusher): join frames, reading deliveries
//! - `stats`        histograms, percentiles, loss, CPU-µs per delivery from /proc
//! - `host`         fd limit, pinning, io_uring probe, host facts
//! - `client`       the worker process: one epoll loop holding ≤ 19,000 WebSockets
//! - `fleet`        the parent's side of the workers (spawn, pipes, merge, stop)
//! - `publish`      paced publishing: HTTP `/api/publish`, NATS, MQTT, or the `limit` server
//! - `limit_server` the machine's ceiling: a minimal one-thread fan-out server
//! - `jwt`          HS256 tokens for per-user connections (`notify`)
//! - `notify_api`   paced `POST /api/notify` senders (`notify`)
//! - `scenario`     fanout, telemetry, reconnect, notify, limit, idle, burst, subscribe: phases and figures
//! - `report`       table, JSON and SVG output

mod adapter;
mod cli;
mod client;
mod fleet;
mod frame;
mod host;
mod jwt;
mod limit_server;
mod limits;
mod mqtt;
mod nats;
mod notify_api;
mod publish;
mod pusher;
mod report;
mod scenario;
mod stats;

use anyhow::{Context, Result};
use clap::Parser;
use cli::{ClientArgs, Scenario};

fn main() {
    let cli = cli::Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("ringcast-loadtest: {e:#}");
        std::process::exit(1);
    }
}

fn prepare(client: &ClientArgs) -> Result<()> {
    if let Some(cpus) = &client.cpus {
        host::pin_to(&host::parse_cpu_list(cpus)?)?;
    }
    host::raise_fd_limit();
    Ok(())
}

fn output(report: report::Report, client: &ClientArgs) -> Result<()> {
    if let Some(path) = &client.svg {
        let target = report.parameters["target"].as_str().unwrap_or("ringcast").to_string();
        let conns = report.parameters["conns"].as_u64().unwrap_or(0);
        let title = format!("ringcast-loadtest {} — {target}, {conns} connections", report.scenario);
        std::fs::write(path, report::svg(&title, &report.series)).with_context(|| format!("writing {}", path.display()))?;
    }
    if client.json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else {
        print!("{}", report.to_table());
    }
    Ok(())
}

fn run(cli: cli::Cli) -> Result<()> {
    match cli.command {
        Scenario::Worker => client::run_worker(),
        Scenario::LimitServer(a) => {
            if let Some(cpu) = &a.cpu {
                host::pin_to(&host::parse_cpu_list(cpu)?)?;
            }
            let listen = a.listen.parse().with_context(|| format!("--listen {:?} is not ip:port", a.listen))?;
            limit_server::run(listen, &a.channel, a.payload, a.lifetime)
        }
        Scenario::Fanout(a) => {
            prepare(&a.client)?;
            output(scenario::fanout(&a)?, &a.client)
        }
        Scenario::Notify(a) => {
            prepare(&a.client)?;
            output(scenario::notify(&a)?, &a.client)
        }
        Scenario::Limit(a) => {
            prepare(&a.client)?;
            output(scenario::limit(&a)?, &a.client)
        }
        Scenario::Idle(a) => {
            prepare(&a.client)?;
            output(scenario::idle(&a)?, &a.client)
        }
        Scenario::Burst(a) => {
            prepare(&a.client)?;
            output(scenario::burst(&a)?, &a.client)
        }
        Scenario::Subscribe(a) => {
            prepare(&a.client)?;
            output(scenario::subscribe(&a)?, &a.client)
        }
        Scenario::Telemetry(a) => {
            prepare(&a.client)?;
            output(scenario::telemetry(&a)?, &a.client)
        }
        Scenario::Reconnect(a) => {
            prepare(&a.client)?;
            output(scenario::reconnect(&a)?, &a.client)
        }
        Scenario::Summarize(a) => {
            let mut runs = Vec::new();
            for file in &a.files {
                let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
                runs.extend(report::parse_json_stream(&text).with_context(|| format!("{} holds something other than --json results", file.display()))?);
            }
            print!("{}", report::summarize(&runs, &a.figures));
            Ok(())
        }
    }
}
