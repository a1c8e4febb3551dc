//! CPU time and memory of a process, from `/proc`.

use serde::Serialize;

/// CPU (user + system) seconds `pid` has used so far; 0 when it is gone.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The command name may hold spaces; the fields after its closing parenthesis do not.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); `rest` starts at field 3.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / hz
}

/// Resident memory of `pid` now, in bytes; 0 when it is gone.
pub fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// What one node process used during a measured window.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Usage {
    pub pid: u32,
    pub cpu_s: f64,
    /// The highest resident size sampled (every 100 ms) during the window.
    pub peak_rss_mib: f64,
}

impl Usage {
    /// CPU seconds so far of each of `pids`, as the start of a window.
    pub fn sample_all(pids: &[u32]) -> Vec<Usage> {
        pids.iter()
            .map(|&pid| Usage {
                pid,
                cpu_s: cpu_seconds(pid),
                peak_rss_mib: 0.0,
            })
            .collect()
    }

    /// The window from `before` to now, with the peak resident sizes observed in it.
    pub fn since(before: &[Usage], peaks: &[u64]) -> Vec<Usage> {
        before
            .iter()
            .zip(peaks)
            .map(|(b, &peak)| Usage {
                pid: b.pid,
                cpu_s: cpu_seconds(b.pid) - b.cpu_s,
                peak_rss_mib: peak as f64 / (1024.0 * 1024.0),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_uses_cpu_and_memory() {
        let pid = std::process::id();
        let before = cpu_seconds(pid);
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_millis(300) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        assert!(
            cpu_seconds(pid) - before >= 0.1,
            "300 ms of spinning shows as CPU time"
        );
        assert!(rss_bytes(pid) > 1 << 20);
        assert_eq!(cpu_seconds(u32::MAX), 0.0);
        assert_eq!(rss_bytes(u32::MAX), 0);
    }
}
