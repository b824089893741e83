//! The parent's view of its worker processes.
//!
//! Owns: spawning `ringcast-loadtest worker` children (the binary re-executes itself),
//! the JSON-lines pipe protocol (config and `snap N` / `stop` down stdin, reports up
//! stdout), merging their reports into totals and histograms, and killing them on drop.
//! Runs on the parent's main thread; one small reader thread per worker pipe.

use crate::client::{NotifyCounters, OrderCounters, WorkerConfig, WorkerReport};
use crate::stats;
use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub struct Fleet {
    children: Vec<Child>,
    stdins: Vec<ChildStdin>,
    reports: mpsc::Receiver<(usize, Option<WorkerReport>)>,
    pub latest: Vec<WorkerReport>,
    pub conns_per_worker: Vec<usize>,
    exited: Vec<bool>,
    snap_seq: u64,
    /// Latency since the last `reset_window` (a measurement phase).
    pub window: Histogram<u64>,
    /// Latency since the last `take_second` (the live line and the chart).
    pub second: Histogram<u64>,
    /// Handshake (connect → 101) latency over the whole run.
    pub handshake: Histogram<u64>,
    /// Per subscription class, latency since the last `reset_window`.
    pub class_window: Vec<Histogram<u64>>,
    /// Lost → ready again, over the whole run (`reconnect`).
    pub reconnect: Histogram<u64>,
    /// `notify`: connection ready → delivery of a pending notification, over the whole run.
    pub pending_delay: Histogram<u64>,
    /// Per tracked message number (a broadcast): publish → receive, over the whole run.
    pub messages: Vec<Histogram<u64>>,
}

/// One tracked message number (a broadcast) summed over the workers.
#[derive(Debug, Default, Clone, Copy)]
pub struct MessageTotals {
    pub deliveries: u64,
    /// The publisher's stamp (CLOCK_REALTIME ns; 0: no delivery seen).
    pub sent_ns: u64,
    /// The last arrival on any worker (CLOCK_REALTIME ns).
    pub last_arrival_ns: u64,
}

/// Sums for one subscription class.
#[derive(Debug, Default, Clone, Copy)]
pub struct ClassTotals {
    pub ready: u64,
    pub deliveries: u64,
}

/// Sums over all workers' latest reports.
#[derive(Debug, Default, Clone)]
pub struct Totals {
    pub attempted: u64,
    pub upgraded: u64,
    /// Compressed (RSV1) frames the workers inflated (`--deflate`).
    pub inflated: u64,
    pub ready: u64,
    pub open: u64,
    pub dropped_after_ready: u64,
    pub failures: BTreeMap<String, u64>,
    pub host_limits: Vec<String>,
    pub deliveries: u64,
    pub rss_kib: u64,
    pub rss_start_kib: u64,
    pub last_ready_ms: u64,
    pub classes: Vec<ClassTotals>,
    pub order: OrderCounters,
    pub reconnected: u64,
    pub waiting: u64,
    pub gave_up: u64,
    /// When the last worker got all its connections ready (0 while any is short).
    pub all_ready_at_ns: u64,
    /// `notify` counters summed (`seen` stays empty here: see `Fleet::notify_seen`).
    pub notify: NotifyCounters,
    /// Every worker has finished connecting: all attempted or stopped by a host limit, none in flight.
    pub settled: bool,
    /// Server pings received (and answered) by the clients.
    pub pings: u64,
    /// Ready connections the clients closed because the server went silent.
    pub heartbeat_timeouts: u64,
    /// Tracked message numbers 1..=k, index n - 1.
    pub messages: Vec<MessageTotals>,
}

impl Totals {
    /// Worker memory grown since start per ready connection: what one idle client costs.
    pub fn harness_bytes_per_conn(&self, conns: u64) -> u64 {
        self.rss_kib.saturating_sub(self.rss_start_kib) * 1024 / conns.max(1)
    }

    pub fn failed(&self) -> u64 {
        // Losing a ready connection, and a reconnecting client's failed attempts, are
        // reported apart (dropped_after_ready, `reconnect`'s figures), not as connect failures.
        self.failures.iter().filter(|(k, _)| !k.starts_with("dropped_") && !k.starts_with("retry_")).map(|(_, v)| v).sum()
    }
}

impl Fleet {
    pub fn spawn(configs: Vec<WorkerConfig>) -> Result<Fleet> {
        let exe = std::env::current_exe().context("finding own executable to start workers")?;
        let (tx, rx) = mpsc::channel();
        let mut fleet = Fleet {
            children: Vec::new(),
            stdins: Vec::new(),
            reports: rx,
            latest: vec![WorkerReport::default(); configs.len()],
            conns_per_worker: configs.iter().map(|c| c.conns).collect(),
            exited: vec![false; configs.len()],
            snap_seq: 0,
            window: stats::new_histogram(),
            second: stats::new_histogram(),
            handshake: stats::new_histogram(),
            class_window: Vec::new(),
            reconnect: stats::new_histogram(),
            pending_delay: stats::new_histogram(),
            messages: Vec::new(),
        };
        for (i, cfg) in configs.iter().enumerate() {
            let mut child = Command::new(&exe)
                .arg("worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .with_context(|| format!("starting worker {i}"))?;
            let mut stdin = child.stdin.take().expect("piped stdin");
            writeln!(stdin, "{}", serde_json::to_string(cfg)?)?;
            let stdout = child.stdout.take().expect("piped stdout");
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    match serde_json::from_str::<WorkerReport>(&line) {
                        Ok(r) => {
                            if tx.send((i, Some(r))).is_err() {
                                return;
                            }
                        }
                        Err(e) => eprintln!("worker {i}: unreadable report ({e}): {line}"),
                    }
                }
                let _ = tx.send((i, None));
            });
            fleet.children.push(child);
            fleet.stdins.push(stdin);
        }
        Ok(fleet)
    }

    /// Starts a measurement phase: latency windows (total and per class) from now on.
    pub fn reset_window(&mut self) {
        self.window.reset();
        for h in &mut self.class_window {
            h.reset();
        }
    }

    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|c| c.id()).collect()
    }

    fn absorb(&mut self, i: usize, report: Option<WorkerReport>) {
        let Some(r) = report else {
            self.exited[i] = true;
            return;
        };
        let mut latency = stats::new_histogram();
        stats::add_pairs(&mut latency, &r.latency);
        self.window.add(&latency).expect("same histogram shape");
        self.second.add(&latency).expect("same histogram shape");
        stats::add_pairs(&mut self.handshake, &r.handshake);
        stats::add_pairs(&mut self.reconnect, &r.reconnect_ms);
        stats::add_pairs(&mut self.pending_delay, &r.notify.pending_delay);
        if self.class_window.len() < r.classes.len() {
            self.class_window.resize_with(r.classes.len(), stats::new_histogram);
        }
        for (h, c) in self.class_window.iter_mut().zip(&r.classes) {
            stats::add_pairs(h, &c.latency);
        }
        if self.messages.len() < r.messages.len() {
            self.messages.resize_with(r.messages.len(), stats::new_histogram);
        }
        for (h, m) in self.messages.iter_mut().zip(&r.messages) {
            stats::add_pairs(h, &m.latency);
        }
        self.latest[i] = r;
    }

    /// Takes reports for up to `wait`.
    pub fn pump(&mut self, wait: Duration) {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.reports.recv_timeout(left) {
                Ok((i, r)) => self.absorb(i, r),
                Err(_) => return,
            }
        }
    }

    /// Asks every live worker for a fresh report and waits (≤ 2 s) for all answers.
    pub fn snap(&mut self) -> Totals {
        self.snap_seq += 1;
        let seq = self.snap_seq;
        for (i, stdin) in self.stdins.iter_mut().enumerate() {
            if !self.exited[i] && writeln!(stdin, "snap {seq}").is_err() {
                self.exited[i] = true;
            }
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            let answered = (0..self.latest.len()).all(|i| self.exited[i] || self.latest[i].snap == seq);
            if answered {
                break;
            }
            match self.reports.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok((i, r)) => self.absorb(i, r),
                Err(_) => break,
            }
        }
        self.totals()
    }

    pub fn totals(&self) -> Totals {
        let mut t = Totals { settled: true, ..Default::default() };
        let mut all_ready = true;
        for (i, r) in self.latest.iter().enumerate() {
            if t.classes.len() < r.classes.len() {
                t.classes.resize(r.classes.len(), ClassTotals::default());
            }
            for (sum, c) in t.classes.iter_mut().zip(&r.classes) {
                sum.ready += c.ready;
                sum.deliveries += c.deliveries;
            }
            let o = &mut t.order;
            o.gaps += r.order.gaps;
            o.missed += r.order.missed;
            o.duplicates += r.order.duplicates;
            o.seq_gaps += r.order.seq_gaps;
            o.resumed += r.order.resumed;
            o.resumed_with_gap += r.order.resumed_with_gap;
            o.resume_refused += r.order.resume_refused;
            let n = &mut t.notify;
            n.unique += r.notify.unique;
            n.duplicates += r.notify.duplicates;
            n.foreign += r.notify.foreign;
            n.acks += r.notify.acks;
            n.pending += r.notify.pending;
            if t.messages.len() < r.messages.len() {
                t.messages.resize(r.messages.len(), MessageTotals::default());
            }
            for (sum, m) in t.messages.iter_mut().zip(&r.messages) {
                sum.deliveries += m.deliveries;
                if m.sent_ns > 0 {
                    sum.sent_ns = if sum.sent_ns == 0 { m.sent_ns } else { sum.sent_ns.min(m.sent_ns) };
                }
                sum.last_arrival_ns = sum.last_arrival_ns.max(m.last_arrival_ns);
            }
            t.pings += r.pings;
            t.heartbeat_timeouts += r.heartbeat_timeouts;
            t.reconnected += r.reconnected;
            t.waiting += r.waiting;
            t.gave_up += r.gave_up;
            if r.ready as usize == self.conns_per_worker[i] {
                t.all_ready_at_ns = t.all_ready_at_ns.max(r.all_ready_at_ns);
            } else {
                all_ready = false;
            }
            t.attempted += r.attempted;
            t.upgraded += r.upgraded;
            t.inflated += r.inflated;
            t.ready += r.ready;
            t.open += r.open;
            t.dropped_after_ready += r.dropped_after_ready;
            t.deliveries += r.deliveries;
            t.rss_kib += r.rss_kib;
            t.rss_start_kib += r.rss_start_kib;
            t.last_ready_ms = t.last_ready_ms.max(r.last_ready_ms);
            for (k, v) in &r.failures {
                *t.failures.entry(k.clone()).or_insert(0) += v;
            }
            if let Some(l) = &r.host_limit {
                if !t.host_limits.contains(l) {
                    t.host_limits.push(l.clone());
                }
            }
            let done_opening = r.attempted as usize >= self.conns_per_worker[i] || r.host_limit.is_some();
            if !self.exited[i] && !(done_opening && r.open == r.ready) {
                t.settled = false;
            }
        }
        if !all_ready {
            t.all_ready_at_ns = 0;
        }
        t
    }

    /// Lets every worker open its held connections (`WorkerConfig::held_from`).
    pub fn release(&mut self) {
        for (i, stdin) in self.stdins.iter_mut().enumerate() {
            if !self.exited[i] && writeln!(stdin, "release").is_err() {
                self.exited[i] = true;
            }
        }
    }

    /// After `stop`: every notification number the workers received (their final reports).
    pub fn notify_seen(&self) -> impl Iterator<Item = u64> + '_ {
        self.latest.iter().flat_map(|r| r.notify.seen.iter().copied())
    }

    pub fn all_exited(&self) -> bool {
        self.exited.iter().all(|&e| e)
    }

    /// Ends the workers: `stop`, a final report each (≤ 5 s), then reap (kill stragglers).
    pub fn stop(&mut self) -> Totals {
        for stdin in self.stdins.iter_mut() {
            let _ = writeln!(stdin, "stop");
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.all_exited() && Instant::now() < deadline {
            self.pump(Duration::from_millis(50));
        }
        self.reap();
        self.totals()
    }

    fn reap(&mut self) {
        for child in self.children.iter_mut() {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.reap();
    }
}

/// Splits `conns` over workers and source addresses.
pub fn plan(base: &WorkerConfig, conns: usize, workers: usize) -> Result<Vec<WorkerConfig>> {
    if workers == 0 {
        bail!("--workers must be at least 1");
    }
    let per = conns.div_ceil(workers);
    if per > crate::limits::WORKER_CONNS_MAX {
        bail!(
            "{conns} connections over {workers} workers is {per} each, above the {} a process may hold here; use --workers {}",
            crate::limits::WORKER_CONNS_MAX,
            conns.div_ceil(crate::limits::WORKER_CONNS_MAX)
        );
    }
    let mut out = Vec::new();
    let mut first = 0;
    for w in 0..workers {
        let n = per.min(conns - first);
        let mut cfg = base.clone();
        cfg.worker_index = w;
        cfg.conns = n;
        cfg.first_conn_index = first;
        cfg.connect_rate = base.connect_rate / workers as f64;
        out.push(cfg);
        first += n;
    }
    Ok(out)
}
