//! `ringcast doctor`: can this host hold N connections, and if not, what to change.
//!
//! Owns: reading host facts (/proc, rlimits, io_uring probe) and the per-connection
//! budget. Must not touch: anything it inspects (it only reads). Runs on: main thread.

use std::path::Path;

/// Descriptors a gateway needs besides its connections: listeners, eventfds, the ring,
/// logs, engine connections.
const FDS_SPARE: u64 = 1_000;
/// Kernel memory of an idle TCP socket (socket, inode, dentry, file, tcp_sock slabs; no
/// buffers while idle), rounded up: measured here as Slab growth of ~10.5 KB per loopback
/// connection, which is two sockets and one conntrack entry (BENCHMARKS.md, 150k and 1M).
const KERNEL_BYTES_PER_IDLE_SOCKET: u64 = 5 * 1024;
/// One conntrack entry (the `nf_conntrack` slab object), where netfilter tracks connections.
const CONNTRACK_BYTES_PER_CONNECTION: u64 = 320;
/// Gateway RSS per idle connection, measured (BENCHMARKS.md: 797-822 B), rounded up.
const GATEWAY_BYTES_PER_IDLE_CONNECTION: u64 = 1024;
/// RSS of one gateway process before its first connection (one shard), rounded up.
const GATEWAY_PROCESS_BASELINE_BYTES: u64 = 12 << 20;
/// Listen backlog a connect storm needs so SYNs are not dropped.
const SOMAXCONN_MIN: u64 = 4096;
/// TCP buffer memory (`tcp_mem`, counted in pages) a broadcast needs per connection: one
/// message queued on every socket at once (an skb of ~1-2 KiB truesize) with room to spare.
/// Past tcp_mem's maximum the kernel refuses to queue (sends stall, "out of memory" in dmesg).
const TCP_BUFFER_BYTES_PER_CONNECTION: u64 = 4 * 1024;
/// Conntrack entries beyond the connections: the host's own traffic, engines, churn.
const CONNTRACK_HEADROOM: u64 = 65_536;
/// SO_REUSEPORT spreads connections over processes by a hash, not evenly: processes are
/// planned at this share of their cap (measured: at 1M over 19,000-connection processes,
/// the fullest got ~2% more than the mean).
const REUSEPORT_FILL_PERCENT: u64 = 95;
/// A load generator keeps this many connections per source address (the harness's
/// default; past ~14,000 to one destination Linux's port search slows connect()).
const CONNS_PER_SOURCE_ADDRESS: u64 = 10_000;
/// Gateway CPU per server heartbeat (a ping written, its pong read), measured at 300,000
/// subscribed connections on this 2-core host with other builds on the cores
/// (BENCHMARKS.md, *One million*: 0.023 CPU-s per 1,000), in µs.
const HEARTBEAT_CPU_US: f64 = 23.0;

pub struct Check {
    pub name: &'static str,
    pub have: String,
    pub need: String,
    pub ok: bool,
    pub advice: String,
}

fn read_number(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.split_whitespace().next()?.parse().ok()
}

fn mem_available_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kib| kib * 1024)
}

fn nofile() -> (u64, u64) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (limit.rlim_cur as u64, limit.rlim_max as u64)
}

/// Every check for `connections`, in the order an operator should fix them.
/// `http_connections`: each gateway's `--max-http-connections` (sockets in the HTTP phase
/// besides its connections), which need descriptors too: past the limit accepts fail with
/// EMFILE instead of the 503 the bound exists to give.
pub fn checks(connections: u64, http_connections: u64) -> Vec<Check> {
    let (_, hard) = nofile();
    let http = http_per_process(http_connections, hard);
    let fds = connections + http + FDS_SPARE;
    let mut checks = Vec::new();
    let uring = monoio::utils::detect_uring();
    let disabled = read_number("/proc/sys/kernel/io_uring_disabled");
    checks.push(Check {
        name: "io_uring",
        have: if uring { "usable".into() } else { format!("not usable (kernel.io_uring_disabled = {})", disabled.map_or("n/a".into(), |d| d.to_string())) },
        need: "usable (epoll works, with more syscalls)".into(),
        ok: uring,
        advice: "sysctl kernel.io_uring_disabled=0; in containers allow io_uring_setup/enter/register in the seccomp profile".into(),
    });
    let (soft, _) = nofile();
    let processes = gateway_processes(connections, hard, http);
    checks.push(Check {
        name: "open files (hard limit)",
        have: format!("soft {soft}, hard {hard}"),
        need: format!("{fds} ({connections} connections + {http} HTTP-phase sockets + {FDS_SPARE} spare)"),
        ok: hard >= fds,
        advice: format!(
            "raise the hard limit (systemd LimitNOFILE={fds}, or `ulimit -Hn {fds}` as root); where it cannot be raised, run {processes} gateway processes on the same --listen port (--share-port, SO_REUSEPORT; {REUSEPORT_FILL_PERCENT}% fill, as the kernel spreads by hash), each with --max-connections + --max-http-connections + {FDS_SPARE} within the limit"
        ),
    });
    for (name, path, need, advice) in [
        ("fs.nr_open", "/proc/sys/fs/nr_open", fds, "the per-process ceiling for the hard limit: sysctl fs.nr_open (tuning/sysctl.conf)"),
        ("fs.file-max", "/proc/sys/fs/file-max", fds, "system-wide descriptors: sysctl fs.file-max (tuning/sysctl.conf)"),
        ("net.core.somaxconn", "/proc/sys/net/core/somaxconn", SOMAXCONN_MIN, "accept queue per listener for connect storms: sysctl net.core.somaxconn"),
        ("net.ipv4.tcp_max_syn_backlog", "/proc/sys/net/ipv4/tcp_max_syn_backlog", SOMAXCONN_MIN, "half-open connections during a storm: sysctl net.ipv4.tcp_max_syn_backlog"),
    ] {
        // A queue longer than the connections it would ever hold buys nothing.
        let need = need.min(connections.max(1));
        let have = read_number(path);
        checks.push(Check {
            name,
            have: have.map_or("unreadable".into(), |v| v.to_string()),
            need: format!("≥ {need}"),
            ok: have.is_some_and(|v| v >= need),
            advice: advice.into(),
        });
    }
    // Conntrack only where netfilter loaded it; every connection is one entry.
    if let Some(have) = read_number("/proc/sys/net/netfilter/nf_conntrack_max") {
        let need = connections + CONNTRACK_HEADROOM.min(connections);
        checks.push(Check {
            name: "net.netfilter.nf_conntrack_max",
            have: have.to_string(),
            need: format!("≥ {need} (one entry per connection)"),
            ok: have >= need,
            advice: "past it new connections' SYNs are dropped (\"nf_conntrack: table full\" in dmesg): sysctl net.netfilter.nf_conntrack_max (tuning/sysctl.conf), or NOTRACK the gateway's port in the raw table".into(),
        });
    }
    let tcp_mem_max = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_mem").ok().and_then(|t| t.split_whitespace().nth(2)?.parse::<u64>().ok());
    let tcp_need = (connections * TCP_BUFFER_BYTES_PER_CONNECTION).div_ceil(4096);
    checks.push(Check {
        name: "net.ipv4.tcp_mem (max)",
        have: tcp_mem_max.map_or("unreadable".into(), |p| format!("{p} pages ({} MiB)", p * 4096 >> 20)),
        need: format!("≥ {tcp_need} pages: one broadcast queued on every socket ({} KiB each)", TCP_BUFFER_BYTES_PER_CONNECTION / 1024),
        ok: tcp_mem_max.is_some_and(|p| p >= tcp_need),
        advice: "past it the kernel refuses to queue data on any socket (sends stall; \"TCP: out of memory\" in dmesg): sysctl net.ipv4.tcp_mem (tuning/sysctl.conf)".into(),
    });
    let memory_need = memory_needed(connections, processes);
    let available = mem_available_bytes();
    checks.push(Check {
        name: "memory available",
        have: available.map_or("unknown".into(), |b| format!("{} MiB", b >> 20)),
        need: format!(
            "≥ {} MiB for idle connections (≈ {:.1} KiB each: kernel socket, conntrack, gateway; {processes} process baselines), plus traffic buffers",
            memory_need >> 20,
            per_connection_bytes() as f64 / 1024.0
        ),
        ok: available.is_some_and(|b| b >= memory_need),
        advice: "more memory, or fewer connections per node (autoscale at 70% of max_connections)".into(),
    });
    checks
}

/// The HTTP-phase bound to plan each gateway with: the one asked for, but at most a tenth
/// of the descriptor limit where that limit is what decides the process count (a
/// handshake takes milliseconds: a tenth of the limit is a very large connect burst).
fn http_per_process(http_connections: u64, hard: u64) -> u64 {
    http_connections.min(hard / 10)
}

/// Gateway processes needed when one process may hold at most `hard - http - FDS_SPARE`
/// connections, filled to REUSEPORT_FILL_PERCENT.
fn gateway_processes(connections: u64, hard: u64, http: u64) -> u64 {
    let per_process = hard.saturating_sub(FDS_SPARE + http).max(1);
    if per_process >= connections {
        return 1;
    }
    connections.div_ceil((per_process * REUSEPORT_FILL_PERCENT / 100).max(1))
}

fn per_connection_bytes() -> u64 {
    KERNEL_BYTES_PER_IDLE_SOCKET + CONNTRACK_BYTES_PER_CONNECTION + GATEWAY_BYTES_PER_IDLE_CONNECTION
}

fn memory_needed(connections: u64, processes: u64) -> u64 {
    connections * per_connection_bytes() + processes * GATEWAY_PROCESS_BASELINE_BYTES
}

/// What the checks imply, in numbers: processes, memory, heartbeat load, and what a load
/// generator on this same host adds.
pub fn plan(connections: u64, http_connections: u64) -> Vec<String> {
    let (_, hard) = nofile();
    let http = http_per_process(http_connections, hard);
    let processes = gateway_processes(connections, hard, http);
    let per_process = connections.div_ceil(processes);
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let mut lines = Vec::new();
    if processes > 1 {
        lines.push(format!(
            "descriptors: the hard limit is {hard} per process, so {processes} gateway processes × ~{per_process} connections on one --listen port (--share-port, each --max-connections {} --max-http-connections {http}); SO_REUSEPORT spreads by hash, hence {REUSEPORT_FILL_PERCENT}% fill",
            hard.saturating_sub(FDS_SPARE + http)
        ));
    } else {
        lines.push(format!("descriptors: one gateway process holds them all, with --max-http-connections {http} (hard limit {hard})"));
    }
    lines.push(format!(
        "memory: ~{:.1} GiB kernel ({} KiB per socket + {CONNTRACK_BYTES_PER_CONNECTION} B conntrack), ~{:.1} GiB gateways ({} B per connection + {} MiB per process)",
        gib(connections * (KERNEL_BYTES_PER_IDLE_SOCKET + CONNTRACK_BYTES_PER_CONNECTION)),
        KERNEL_BYTES_PER_IDLE_SOCKET / 1024,
        gib(connections * GATEWAY_BYTES_PER_IDLE_CONNECTION + processes * GATEWAY_PROCESS_BASELINE_BYTES),
        GATEWAY_BYTES_PER_IDLE_CONNECTION,
        GATEWAY_PROCESS_BASELINE_BYTES >> 20
    ));
    let pings = connections as f64 / (crate::limits::HEARTBEAT_MS as f64 / 1000.0);
    lines.push(format!(
        "heartbeats: {pings:.0} pings/s at the default --heartbeat {} s, each answered with a pong: ~{:.0}% of one core at the measured {HEARTBEAT_CPU_US} µs each (a longer --heartbeat lowers it)",
        crate::limits::HEARTBEAT_MS / 1000,
        pings * HEARTBEAT_CPU_US / 1e4
    ));
    lines.push(format!(
        "a load generator on this host (loopback, loadtest/million.sh) doubles the sockets: ~{:.1} GiB of kernel memory in all, {} descriptors (fs.file-max), and {} source addresses 127.0.0.x at {CONNS_PER_SOURCE_ADDRESS} connections each",
        gib(connections * (2 * KERNEL_BYTES_PER_IDLE_SOCKET + CONNTRACK_BYTES_PER_CONNECTION)),
        2 * connections + 2 * processes * FDS_SPARE,
        connections.div_ceil(CONNS_PER_SOURCE_ADDRESS)
    ));
    lines
}

/// Prints the report; returns the exit code (0: ready, 1: something to change).
pub fn run(connections: usize, http_connections: usize) -> i32 {
    let checks = checks(connections as u64, http_connections as u64);
    println!("ringcast doctor: can this host hold {connections} connections?\n");
    for check in &checks {
        let mark = if check.ok { "ok    " } else { "CHANGE" };
        println!("{mark} {:<30} have {:<34} need {}", check.name, check.have, check.need);
        if !check.ok {
            println!("       → {}", check.advice);
        }
    }
    println!("\nplan for {connections} connections:");
    for line in plan(connections as u64, http_connections as u64) {
        println!("  {line}");
    }
    let port_range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    println!("\nnote: ip_local_port_range is {} — it limits load generators (ports per source address), not the gateway", port_range.trim());
    if Path::new("tuning/apply.sh").exists() {
        println!("note: tuning/apply.sh applies tuning/sysctl.conf (run with --dry-run first)");
    }
    let failing = checks.iter().filter(|c| !c.ok).count();
    if failing == 0 {
        println!("\nready for {connections} connections");
        0
    } else {
        println!("\n{failing} setting(s) to change for {connections} connections");
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_leave_room_for_the_uneven_reuseport_spread() {
        // This host: hard limit 20,000, so 19,000 per process at 95% fill: 56 for a million.
        assert_eq!(gateway_processes(1_000_000, 20_000, 0), 56);
        assert!(1_000_000u64.div_ceil(56) <= 19_000 * REUSEPORT_FILL_PERCENT / 100);
        assert_eq!(gateway_processes(1_000, 20_000, 0), 1);
        assert_eq!(gateway_processes(1_000_000, 2_000_000, 0), 1);
        assert_eq!(gateway_processes(19_000, 20_000, 0), 1);
        // HTTP-phase sockets take descriptors too: the default 10,000 is planned as a
        // tenth of the limit (2,000), leaving 17,000 connections per process.
        let http = http_per_process(crate::limits::HTTP_CONNECTIONS_MAX as u64, 20_000);
        assert_eq!(http, 2_000);
        assert_eq!(gateway_processes(1_000_000, 20_000, http), 62);
        assert_eq!(gateway_processes(19_000, 20_000, http), 2, "19,000 connections + 2,000 HTTP sockets do not fit one process");
    }

    #[test]
    fn plan_names_processes_memory_heartbeats_and_the_load_generator() {
        let plan = plan(1_000_000, 10_000).join("\n");
        assert!(plan.contains("--max-http-connections"), "{plan}");
        for word in ["descriptors:", "memory:", "heartbeats: 40000 pings/s", "source addresses"] {
            assert!(plan.contains(word), "{word}: {plan}");
        }
        // A million idle connections need several GiB: never a silly figure.
        let need = memory_needed(1_000_000, 56);
        assert!((5u64 << 30..10u64 << 30).contains(&need), "{need}");
    }
}
