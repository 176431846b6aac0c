//! The standard `process_*` metrics, read from procfs at scrape time.
//!
//! prometheus-client has no process collector. What we need is six numbers from
//! `/proc/self/stat`, `/proc/self/statm`, `/proc/self/fd` and `/proc/stat`, so they are parsed here
//! rather than pulling in a general procfs crate for them.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use crate::Emit;

/// CPU, memory, threads and file descriptors of this process.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessStats {
    /// User + system CPU time, seconds.
    pub cpu_seconds: f64,
    pub resident_memory_bytes: u64,
    pub virtual_memory_bytes: u64,
    pub threads: u64,
    pub open_fds: u64,
    /// Unix time the process started, seconds.
    pub start_time_seconds: f64,
}

impl ProcessStats {
    /// Reads this process's figures; `None` where procfs is missing or unreadable.
    pub fn read_self() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| parse_boot_time(&s));
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .map(|d| d.count() as u64)
            .unwrap_or(0);
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        // SAFETY: as above.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let mut stats = parse(&stat, &statm, ticks.max(1) as u64, page.max(1) as u64)?;
        stats.open_fds = open_fds;
        if let Some(boot) = boot_time {
            stats.start_time_seconds += boot as f64;
        }
        Some(stats)
    }
}

/// Parses `/proc/<pid>/stat` and `/proc/<pid>/statm`. The start time is relative to boot.
fn parse(stat: &str, statm: &str, ticks_per_second: u64, page_bytes: u64) -> Option<ProcessStats> {
    // The command name (field 2) is in parentheses and may itself contain spaces or ')'.
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // Fields from 3 (state) on; utime is field 14, so index 11 here.
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
    let utime = field(14)?;
    let stime = field(15)?;
    let threads = field(20)?;
    let start_ticks = field(22)?;
    let vsize = field(23)?;
    let resident_pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let ticks = ticks_per_second as f64;
    Some(ProcessStats {
        cpu_seconds: (utime + stime) as f64 / ticks,
        resident_memory_bytes: resident_pages.saturating_mul(page_bytes),
        virtual_memory_bytes: vsize,
        threads,
        open_fds: 0,
        start_time_seconds: start_ticks as f64 / ticks,
    })
}

fn parse_boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// Registers as a collector: reads procfs on every scrape.
#[derive(Debug, Default)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(s) = ProcessStats::read_self() else {
            return Ok(());
        };
        let mut emit = Emit::new(encoder);
        emit.counter_f64(
            "process_cpu_seconds",
            "User and system CPU time spent, seconds.",
            s.cpu_seconds,
        )?;
        emit.gauge(
            "process_resident_memory_bytes",
            "Resident memory size, bytes.",
            s.resident_memory_bytes as f64,
        )?;
        emit.gauge(
            "process_virtual_memory_bytes",
            "Virtual memory size, bytes.",
            s.virtual_memory_bytes as f64,
        )?;
        emit.gauge("process_threads", "OS threads.", s.threads as f64)?;
        emit.gauge(
            "process_open_fds",
            "Open file descriptors.",
            s.open_fds as f64,
        )?;
        emit.gauge(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch, seconds.",
            s.start_time_seconds,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_and_parentheses_in_the_name_parses() {
        // A real line from /proc/<pid>/stat of a process renamed "my (odd) app".
        let stat = "4242 (my (odd) app) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 50 0 0 20 0 7 0 \
                    123456 987654321 2048 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let statm = "241127 2048 1024 100 0 5000 0\n";
        let s = parse(stat, statm, 100, 4096).expect("parses");
        assert_eq!(s.cpu_seconds, 3.0);
        assert_eq!(s.threads, 7);
        assert_eq!(s.start_time_seconds, 1234.56);
        assert_eq!(s.virtual_memory_bytes, 987_654_321);
        assert_eq!(s.resident_memory_bytes, 2048 * 4096);
    }

    #[test]
    fn truncated_stat_is_refused_not_misread() {
        assert_eq!(parse("4242 (x) S 1 2 3", "1 2", 100, 4096), None);
        assert_eq!(parse("no parenthesis", "1 2", 100, 4096), None);
    }

    #[test]
    fn this_process_reads_and_grows_with_its_work() {
        let before = ProcessStats::read_self().expect("procfs readable");
        assert!(before.resident_memory_bytes > 0);
        assert!(before.threads >= 1);
        assert!(before.open_fds >= 3, "{before:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        assert!(
            before.start_time_seconds > now - 3600.0 && before.start_time_seconds <= now + 1.0,
            "{before:?}"
        );
        // Burn some CPU: the counter must move.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(300) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let after = ProcessStats::read_self().expect("procfs readable");
        assert!(
            after.cpu_seconds > before.cpu_seconds,
            "{before:?} {after:?}"
        );
    }

    #[test]
    fn boot_time_line_is_found() {
        assert_eq!(
            parse_boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 5\n"),
            Some(1_700_000_000)
        );
        assert_eq!(parse_boot_time("cpu 1\n"), None);
    }
}
