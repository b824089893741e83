//! Host facts and process setup: fd limit, CPU pinning, io_uring probe, sysctl reads.
//!
//! Owns: everything the harness asks of the kernel about itself. Runs in the parent,
//! the workers and the `limit` server alike.

use anyhow::{bail, Context, Result};

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns (soft, hard) in force after.
pub fn raise_fd_limit() -> (u64, u64) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: valid pointer to an rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return (0, 0);
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    (lim.rlim_cur as u64, lim.rlim_max as u64)
}

/// Parses a CPU list: "1", "0,2", "0-3", "0-1,3".
pub fn parse_cpu_list(text: &str) -> Result<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse()?, b.parse()?);
                if a > b {
                    bail!("cpu range {part} runs backwards");
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().with_context(|| format!("cpu {part:?} is not a number"))?),
        }
    }
    if cpus.is_empty() {
        bail!("empty cpu list");
    }
    Ok(cpus)
}

/// Pins the calling thread (and the children it spawns later) to `cpus`.
pub fn pin_to(cpus: &[usize]) -> Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET bounds are checked below.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            if c >= libc::CPU_SETSIZE as usize {
                bail!("cpu {c} out of range");
            }
            libc::CPU_SET(c, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!("sched_setaffinity({cpus:?}): {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether io_uring_setup works here (it may be compiled out or blocked by seccomp).
pub fn io_uring_usable() -> bool {
    let mut params = [0u8; 120]; // struct io_uring_params is 120 bytes
    // SAFETY: io_uring_setup writes at most sizeof(io_uring_params) into params.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, params.as_mut_ptr()) };
    if fd >= 0 {
        // SAFETY: fd was just returned to us.
        unsafe { libc::close(fd as i32) };
        true
    } else {
        false
    }
}

pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// Cores online on the host (not just those this process is pinned to).
pub fn online_cores() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n > 0 { n as usize } else { 1 }
}

pub fn sysctl(name: &str) -> Option<String> {
    let path = format!("/proc/sys/{}", name.replace('.', "/"));
    std::fs::read_to_string(path).ok().map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// Host facts for `--json` and the report header.
pub fn facts() -> serde_json::Value {
    let (soft, hard) = raise_fd_limit();
    serde_json::json!({
        "cores": online_cores(),
        "kernel": kernel_release(),
        "io_uring": if io_uring_usable() { "yes" } else { "no" },
        "nofile_soft": soft,
        "nofile_hard": hard,
        "ip_local_port_range": sysctl("net.ipv4.ip_local_port_range"),
        "somaxconn": sysctl("net.core.somaxconn"),
    })
}

/// Nanoseconds since the Unix epoch (CLOCK_REALTIME): the clock all processes share.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// Parses "30s", "500ms", "2m", "1h" or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| format!("{text:?} is not a duration like 30s, 500ms, 2m"))?;
    let secs = match unit {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("unknown unit {unit:?} in {text:?}; use ms, s, m or h")),
    };
    if !(secs.is_finite() && secs >= 0.0) {
        return Err(format!("{text:?} is not a non-negative duration"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_cpu_lists() {
        assert_eq!(parse_duration("30s").unwrap().as_secs(), 30);
        assert_eq!(parse_duration("500ms").unwrap().as_millis(), 500);
        assert_eq!(parse_duration("2m").unwrap().as_secs(), 120);
        assert_eq!(parse_duration("7").unwrap().as_secs(), 7);
        assert!(parse_duration("7 parsecs").is_err());
        assert_eq!(parse_cpu_list("0-2,5").unwrap(), vec![0, 1, 2, 5]);
        assert!(parse_cpu_list("3-1").is_err());
    }
}
