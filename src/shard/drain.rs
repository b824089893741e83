//! Drain: take a node out of service without a thundering herd. Upgrades are refused
//! (503, readyz `draining`) from the moment it starts; each shard closes its open
//! connections with 1012 (service restart) in even slices over `drain_seconds`, waits for
//! the close handshakes, then stops, and the process exits 0.
//!
//! Owns: the drain request (from SIGTERM or `POST /admin/drain`) and each shard's
//! slicing task. Must not touch: other shards (each drains its own). Runs on: the caller
//! for [`start`], then each shard thread.
//!
//! Long-poll sessions and any other kind of connection a shard owns are ended by the
//! same slices: [`drain_step`] is the one place to add them.

use super::{Shard, CLOSE_TIMEOUT_MS};
use crate::fanout::ToShard;
use crate::metrics::CloseReason;
use crate::node::Node;
use crate::protocol::ws;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One slice every 100 ms: 300 slices over the default 30 s, so even a shard with 100k
/// connections closes ~330 at a time, and reconnects arrive elsewhere as a steady stream.
pub const DRAIN_TICK_MS: u64 = 100;
/// How often the shard checks whether the last close handshakes finished.
const DRAIN_POLL_MS: u64 = 20;

/// Starts a drain of the node. False when it was already draining or shutting down
/// (the call changes nothing then). Never blocks: the shards are told from a short-lived
/// thread, which retries while an inbox is full, so this is safe on a shard thread.
pub fn start(node: &Arc<Node>) -> bool {
    if node.shutting_down.swap(true, Ordering::AcqRel) {
        return false;
    }
    node.draining.store(true, Ordering::Release);
    tracing::info!(drain_seconds = node.config.admission.drain.as_secs_f64(), "draining: refusing new connections, closing open ones with 1012");
    let node = node.clone();
    let told = std::thread::Builder::new().name("ringcast-drain".into()).spawn(move || {
        for inbox in &node.shard_inboxes {
            // A drain must not be lost to a full inbox: retry until it fits.
            while inbox.push(ToShard::Drain).is_err() {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    });
    if let Err(error) = told {
        tracing::error!(%error, "cannot start the drain thread; stop the process with SIGINT");
    }
    true
}

/// On the shard: runs the slicing task once.
pub fn begin(shard: &Rc<Shard>) {
    if shard.stop.is_set() || shard.admission.draining.replace(true) {
        return;
    }
    monoio::spawn(run(shard.clone()));
}

async fn run(shard: Rc<Shard>) {
    let window_ms = shard.node.config.admission.drain.as_millis() as u64;
    let ticks = (window_ms / DRAIN_TICK_MS).max(1);
    let started = Instant::now();
    let mut owed = 0.0;
    for tick in 1..=ticks {
        // Nothing left (no new ones can arrive: upgrades are refused): stop now rather
        // than sit out the window.
        if shard.live_connections() == 0 {
            break;
        }
        if window_ms > 0 {
            let due = Duration::from_millis(window_ms * tick / ticks);
            let wait = due.saturating_sub(started.elapsed());
            if !wait.is_zero() {
                monoio::time::sleep(wait).await;
            }
        }
        drain_step(&shard, ticks - tick + 1, &mut owed);
    }
    // Every connection now has its 1012; give the close handshakes their timeout (the
    // wheel shuts sockets that do not answer), then stop the shard.
    let deadline = Instant::now() + Duration::from_millis(CLOSE_TIMEOUT_MS + DRAIN_TICK_MS);
    while shard.live_connections() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(DRAIN_POLL_MS)).await;
    }
    tracing::info!(shard = shard.id, "drain finished");
    shard.stop.set();
}

/// Closes an even share of what is still open: with `slices_left` slices to go, one in
/// `slices_left` of the open connections (all of them in the last slice). `owed` carries
/// the fractions, so 10 connections over 20 slices close one every other slice rather
/// than all in the first ten. Counting what is open at each slice keeps the spread even
/// when clients leave by themselves.
pub fn drain_step(shard: &Rc<Shard>, slices_left: u64, owed: &mut f64) {
    let open: Vec<_> = shard
        .conns
        .borrow()
        .iter()
        .flatten()
        .filter(|conn| {
            let st = conn.state.borrow();
            st.closing.is_none() && st.finished.is_none()
        })
        .cloned()
        .collect();
    *owed += open.len() as f64 / slices_left.max(1) as f64;
    let share = if slices_left <= 1 { open.len() } else { (*owed as usize).min(open.len()) };
    *owed -= share as f64;
    for conn in open.iter().take(share) {
        shard.close(conn, ws::close_code::SERVICE_RESTART, "server draining; reconnect", CloseReason::Drain);
    }
    shard.flush_dirty();
}
