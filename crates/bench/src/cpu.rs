//! What processes used, read from `/proc`: CPU time from `/proc/<pid>/stat` (the
//! user and system time of all their threads) — how busy each part of a topology
//! was during a run, to say which one was the limit — and peak memory from
//! `/proc/<pid>/status`.

use std::time::Duration;

/// CPU time process `pid` has used so far (zero once it is gone).
pub fn used(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // The command name may hold spaces and parentheses: fields count from the last ')'.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3 of the full line, utime 14 and stime 15.
    let ticks = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_secs_f64((ticks(14) + ticks(15)) as f64 / USER_HZ)
}

/// The unit of those times: the kernel reports them in USER_HZ, 100 on every
/// Linux architecture in use (sysconf(_SC_CLK_TCK)).
const USER_HZ: f64 = 100.0;

/// CPU time of several processes together.
pub fn used_by(pids: &[u32]) -> Duration {
    pids.iter().map(|&pid| used(pid)).sum()
}

/// CPU time so far of every process whose command name is one of `names` (a
/// database server's processes: PostgreSQL forks one for each connection). A
/// process that ended takes its time with it, so compare two readings taken while
/// the same connections stay open.
pub fn used_by_named(names: &[&str]) -> Duration {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Duration::ZERO;
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| names.contains(&comm.trim_end()))
        })
        .map(used)
        .sum()
}

/// The most resident memory process `pid` has held (`VmHWM`), in bytes; zero once
/// it is gone.
pub fn peak_memory(pid: u32) -> u64 {
    status_bytes(pid, "VmHWM:")
}

/// The memory process `pid` holds resident now (`VmRSS`), in bytes.
pub fn resident_memory(pid: u32) -> u64 {
    status_bytes(pid, "VmRSS:")
}

/// A size from `/proc/{pid}/status` (given there in KiB), in bytes.
fn status_bytes(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with(field))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(0)
}

/// The machine's cores.
pub fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

/// The machine's CPU time so far: (busy, total), in USER_HZ ticks, from `/proc/stat`.
pub fn machine() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().next() else {
        return (0, 0);
    };
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    let total: u64 = ticks.iter().take(8).sum();
    (total.saturating_sub(idle), total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_process_shows_its_cpu_time() {
        let me = std::process::id();
        let before = used(me);
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < Duration::from_millis(300) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let spent = used(me) - before;
        assert!(spent >= Duration::from_millis(150), "{spent:?}");
        assert_eq!(used(u32::MAX), Duration::ZERO);
    }

    #[test]
    fn processes_are_found_by_their_command_name() {
        let me = std::process::id();
        let comm = std::fs::read_to_string(format!("/proc/{me}/comm")).unwrap();
        let mine = used(me);
        // Every process of that name (this one at least, and any test binary alike).
        assert!(used_by_named(&[comm.trim_end()]) >= mine, "{comm:?}");
        assert_eq!(used_by_named(&["no-such-process-name"]), Duration::ZERO);
    }
}
