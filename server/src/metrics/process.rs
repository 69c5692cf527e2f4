//! The process series under Go's process collector names (`process_*`), read
//! from /proc/self at each scrape: CPU time, memory, file descriptors, start
//! time. A few fields of three files, parsed here rather than through the
//! `procfs` crate, which would bring a dozen dependencies for them.

use std::fmt::Write;

/// What a scrape reports about the process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub open_fds: u64,
    /// The soft limit on open files; None when unlimited.
    pub max_fds: Option<u64>,
    pub start_time_seconds: f64,
}

/// Why /proc/self could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProcessStatsError {
    #[error("reading {path}: {source}")]
    Read { path: &'static str, source: std::io::Error },
    #[error("{path} has no field {field}")]
    Field { path: &'static str, field: &'static str },
}

impl ProcessStats {
    /// The process's numbers now.
    pub fn read() -> Result<ProcessStats, ProcessStatsError> {
        let stat = read("/proc/self/stat")?;
        let boot = read("/proc/stat")?;
        let limits = read("/proc/self/limits")?;
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .map_err(|source| ProcessStatsError::Read {
                path: "/proc/self/fd",
                source,
            })?
            .count() as u64;
        // SAFETY: sysconf reads a constant of the system; no memory is shared.
        let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        // SAFETY: as above.
        let page_bytes = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
        parse(&stat, &boot, &limits, open_fds, ticks_per_second, page_bytes)
    }

    pub fn render(&self, out: &mut String) {
        let mut series = |name: &str, help: &str, kind: &str, value: f64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {value}");
        };
        series(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
            "counter",
            self.cpu_seconds,
        );
        // Go reports an unlimited soft limit as its value, RLIM_INFINITY.
        let max_fds = self.max_fds.unwrap_or(u64::MAX);
        series(
            "process_max_fds",
            "Maximum number of open file descriptors.",
            "gauge",
            max_fds as f64,
        );
        series(
            "process_open_fds",
            "Number of open file descriptors.",
            "gauge",
            self.open_fds as f64,
        );
        series(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            "gauge",
            self.resident_bytes as f64,
        );
        series(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            "gauge",
            self.start_time_seconds,
        );
        series(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            "gauge",
            self.virtual_bytes as f64,
        );
    }
}

fn read(path: &'static str) -> Result<String, ProcessStatsError> {
    std::fs::read_to_string(path).map_err(|source| ProcessStatsError::Read { path, source })
}

/// `stat`: /proc/self/stat; `boot`: /proc/stat; `limits`: /proc/self/limits.
fn parse(
    stat: &str,
    boot: &str,
    limits: &str,
    open_fds: u64,
    ticks_per_second: f64,
    page_bytes: u64,
) -> Result<ProcessStats, ProcessStatsError> {
    const STAT: &str = "/proc/self/stat";
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // proc(5) numbers fields from 1 with the pid; `fields[0]` is field 3, state.
    let field = |number: usize, name: &'static str| -> Result<u64, ProcessStatsError> {
        fields
            .get(number - 3)
            .and_then(|text| text.parse().ok())
            .ok_or(ProcessStatsError::Field {
                path: STAT,
                field: name,
            })
    };
    let cpu_ticks = field(14, "utime")? + field(15, "stime")?;
    let start_ticks = field(22, "starttime")?;
    let virtual_bytes = field(23, "vsize")?;
    let resident_bytes = field(24, "rss")? * page_bytes;
    let boot_seconds: u64 = boot
        .lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|text| text.trim().parse().ok())
        .ok_or(ProcessStatsError::Field {
            path: "/proc/stat",
            field: "btime",
        })?;
    let max_fds = limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .ok_or(ProcessStatsError::Field {
            path: "/proc/self/limits",
            field: "Max open files",
        })?;
    Ok(ProcessStats {
        cpu_seconds: cpu_ticks as f64 / ticks_per_second,
        resident_bytes,
        virtual_bytes,
        open_fds,
        max_fds: max_fds.parse().ok(),
        start_time_seconds: boot_seconds as f64 + start_ticks as f64 / ticks_per_second,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (ringkv (x) y) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 \
                        3 0 12345 104857600 2560 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
    const BOOT: &str = "cpu  1 2 3\nbtime 1700000000\nprocesses 9\n";
    const LIMITS: &str = "Limit                     Soft Limit           Hard Limit           Units\n\
                          Max open files            1024                 4096                 files\n";

    #[test]
    fn fields_are_read_past_a_command_name_with_spaces_and_parentheses() {
        let stats = parse(STAT, BOOT, LIMITS, 7, 100.0, 4096).unwrap();
        assert_eq!(stats.cpu_seconds, 3.0);
        assert_eq!(stats.start_time_seconds, 1_700_000_123.45);
        assert_eq!(stats.virtual_bytes, 104_857_600);
        assert_eq!(stats.resident_bytes, 2560 * 4096);
        assert_eq!(stats.open_fds, 7);
        assert_eq!(stats.max_fds, Some(1024));
    }

    #[test]
    fn an_unlimited_soft_limit_is_reported_as_gos_infinity() {
        let limits = "Max open files            unlimited            unlimited            files\n";
        let stats = parse(STAT, BOOT, limits, 7, 100.0, 4096).unwrap();
        assert_eq!(stats.max_fds, None);
        let mut out = String::new();
        stats.render(&mut out);
        assert!(out.contains("process_max_fds 18446744073709552000\n"), "{out}");
    }

    #[test]
    fn a_truncated_stat_is_an_error_naming_the_field() {
        let error = parse("1 (x) S 1 2", BOOT, LIMITS, 1, 100.0, 4096).unwrap_err();
        assert_eq!(error.to_string(), "/proc/self/stat has no field utime");
    }

    #[test]
    fn this_process_reads() {
        let stats = ProcessStats::read().unwrap();
        assert!(stats.open_fds > 0 && stats.resident_bytes > 0, "{stats:?}");
        let mut out = String::new();
        stats.render(&mut out);
        assert!(out.contains("# TYPE process_cpu_seconds_total counter\n"), "{out}");
    }
}
