//! A server's resident memory, read from `/proc/<pid>/status`.
//!
//! VmRSS is what `top` and an operator's dashboards show; it is the sum of
//! RssAnon (heap, the process's own caches), RssFile (mapped files: etcd's bbolt
//! database is mmapped, so its pages count here) and RssShmem.

use serde::Serialize;

use crate::BenchError;

/// Resident memory in KiB (the kernel writes "kB" and means KiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Memory {
    pub vm_rss_kib: u64,
    pub rss_anon_kib: u64,
    pub rss_file_kib: u64,
}

impl Memory {
    /// The memory of process `pid` now.
    pub fn of_pid(pid: u32) -> Result<Memory, BenchError> {
        let path = format!("/proc/{pid}/status");
        let status = std::fs::read_to_string(&path).map_err(|e| BenchError::Server(format!("reading {path}: {e}")))?;
        Memory::parse(&status).ok_or_else(|| BenchError::Server(format!("{path} has no VmRSS, RssAnon or RssFile")))
    }

    /// The fields of a `/proc/<pid>/status` text; None if one is missing.
    pub fn parse(status: &str) -> Option<Memory> {
        let memory = Memory {
            vm_rss_kib: field_kib(status, "VmRSS:")?,
            rss_anon_kib: field_kib(status, "RssAnon:")?,
            rss_file_kib: field_kib(status, "RssFile:")?,
        };
        // VmRSS also holds RssShmem, so it is never below the other two.
        assert!(
            memory.vm_rss_kib >= memory.rss_anon_kib + memory.rss_file_kib,
            "VmRSS is RssAnon + RssFile + RssShmem: {memory:?}"
        );
        Some(memory)
    }
}

/// `VmRSS:\t  123456 kB` -> 123456.
fn field_kib(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with(field))?;
    let value = line[field.len()..].trim().strip_suffix("kB")?;
    value.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tetcd\nUmask:\t0022\nState:\tS (sleeping)\nVmPeak:\t11873712 kB\n\
        VmRSS:\t  412380 kB\nRssAnon:\t  150000 kB\nRssFile:\t  262000 kB\nRssShmem:\t     380 kB\n\
        Threads:\t12\n";

    #[test]
    fn resident_memory_is_read_in_kib() {
        assert_eq!(
            Memory::parse(STATUS),
            Some(Memory {
                vm_rss_kib: 412_380,
                rss_anon_kib: 150_000,
                rss_file_kib: 262_000,
            })
        );
    }

    #[test]
    fn a_missing_field_or_unit_gives_nothing() {
        assert_eq!(Memory::parse(&STATUS.replace("RssFile", "RssFoo")), None);
        assert_eq!(Memory::parse(&STATUS.replace("412380 kB", "412380")), None);
        // A kernel thread has no memory lines at all.
        assert_eq!(Memory::parse("Name:\tkthreadd\nState:\tS (sleeping)\n"), None);
    }

    #[test]
    fn this_process_has_resident_memory() {
        let memory = Memory::of_pid(std::process::id()).unwrap();
        assert!(memory.vm_rss_kib > 0 && memory.rss_anon_kib > 0, "{memory:?}");
    }
}
