//! `ringcast dlq list|replay|purge`: the dead-letter queue from the command line, with
//! the same `--amqp`/`--lane-prefix`/`--lane-dir` flags as the gateway and the worker.
//!
//! RabbitMQ: works beside running gateways and workers. Embedded: the store file is
//! held by its gateway while it runs, so stop it first (or use `GET
//! /api/notifications/dead`). Runs on: its own short-lived tokio runtime.

use crate::lane::{DeadAnswer, DeadOp, Lane, LaneConfig};
use crate::config::lane::DlqAction;
use std::time::Duration;

/// How long the command waits for RabbitMQ before giving up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs one action and prints its result; returns the exit code.
pub fn run(config: LaneConfig, action: DlqAction) -> i32 {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    let local = tokio::task::LocalSet::new();
    match local.block_on(&runtime, execute(&config, action)) {
        Ok(text) => {
            println!("{text}");
            0
        }
        Err(e) => {
            eprintln!("ringcast dlq: {e}");
            1
        }
    }
}

async fn execute(config: &LaneConfig, action: DlqAction) -> Result<String, String> {
    let lane = Lane::open_admin(config, CONNECT_TIMEOUT).await?;
    let op = match action {
        DlqAction::List => DeadOp::List { limit: crate::lane::DEAD_LIST_MAX },
        DlqAction::Replay { nid } => DeadOp::Replay { nid },
        DlqAction::Purge => DeadOp::Purge,
    };
    let verb = match &op {
        DeadOp::Replay { .. } => "replayed",
        _ => "purged",
    };
    match lane.dead(op).await? {
        DeadAnswer::List(list) => Ok(list
            .iter()
            .map(|d| {
                serde_json::json!({"nid": d.notification.nid, "user": d.notification.user, "attempts": d.notification.attempts, "reason": d.reason, "ts": d.notification.ts})
                    .to_string()
            })
            .collect::<Vec<_>>()
            .join("\n")),
        DeadAnswer::Count(n) => Ok(format!("{verb} {n}")),
    }
}
