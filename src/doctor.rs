//! `ringcast doctor`: can this host hold N connections, and if not, what to change.
//!
//! Owns: reading host facts (/proc, rlimits, io_uring probe) and the per-connection
//! budget. Must not touch: anything it inspects (it only reads). Runs on: main thread.

use std::path::Path;

/// Descriptors a gateway needs besides its connections: listeners, eventfds, the ring,
/// logs, engine connections.
const FDS_SPARE: u64 = 1_000;
/// Kernel memory of an idle TCP socket on loopback (socket, inode, dentry, file, tcp_sock
/// slabs; no buffers while idle), rounded up.
const KERNEL_BYTES_PER_IDLE_SOCKET: u64 = 4 * 1024;
/// Gateway RSS per idle connection, measured (BENCHMARKS.md: 822 B), rounded up.
const GATEWAY_BYTES_PER_IDLE_CONNECTION: u64 = 1024;
/// Listen backlog a connect storm needs so SYNs are not dropped.
const SOMAXCONN_MIN: u64 = 4096;

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
pub fn checks(connections: u64) -> Vec<Check> {
    let fds = connections + FDS_SPARE;
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
    let (soft, hard) = nofile();
    let processes = connections.div_ceil(hard.saturating_sub(FDS_SPARE).max(1));
    checks.push(Check {
        name: "open files (hard limit)",
        have: format!("soft {soft}, hard {hard}"),
        need: format!("{fds}"),
        ok: hard >= fds,
        advice: format!(
            "raise the hard limit (systemd LimitNOFILE={fds}, or `ulimit -Hn {fds}` as root); where it cannot be raised, run {processes} gateway processes on the same --listen port (SO_REUSEPORT)"
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
    let memory_need = connections * (KERNEL_BYTES_PER_IDLE_SOCKET + GATEWAY_BYTES_PER_IDLE_CONNECTION);
    let available = mem_available_bytes();
    checks.push(Check {
        name: "memory available",
        have: available.map_or("unknown".into(), |b| format!("{} MiB", b >> 20)),
        need: format!("≥ {} MiB for idle connections (≈ {} KiB each, kernel + gateway), plus traffic buffers", memory_need >> 20, (KERNEL_BYTES_PER_IDLE_SOCKET + GATEWAY_BYTES_PER_IDLE_CONNECTION) / 1024),
        ok: available.is_some_and(|b| b >= memory_need),
        advice: "more memory, or fewer connections per node (autoscale at 70% of max_connections)".into(),
    });
    checks
}

/// Prints the report; returns the exit code (0: ready, 1: something to change).
pub fn run(connections: usize) -> i32 {
    let checks = checks(connections as u64);
    println!("ringcast doctor: can this host hold {connections} connections?\n");
    for check in &checks {
        let mark = if check.ok { "ok    " } else { "CHANGE" };
        println!("{mark} {:<30} have {:<34} need {}", check.name, check.have, check.need);
        if !check.ok {
            println!("       → {}", check.advice);
        }
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
