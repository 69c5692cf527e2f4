//! A server process's CPU time (user + system) from `/proc/<pid>/stat`, so a
//! run can report its work per server CPU-second: a ratio between two servers
//! that the load generator, sharing the machine, moves far less than it moves
//! throughput. A cluster's CPU is the sum over its members' processes.

use crate::BenchError;

/// CPU seconds process `pid` has used so far.
pub fn cpu_seconds(pid: u32) -> Result<f64, BenchError> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).map_err(|e| BenchError::Server(format!("reading {path}: {e}")))?;
    let ticks = cpu_ticks(&stat).ok_or_else(|| BenchError::Server(format!("{path} has no utime and stime")))?;
    // SAFETY: sysconf reads a constant of the running system.
    let ticks_per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks_per_sec <= 0 {
        return Err(BenchError::Server("sysconf(_SC_CLK_TCK) failed".into()));
    }
    Ok(ticks as f64 / ticks_per_sec as f64)
}

/// CPU seconds the processes `pids` (a cluster's members) have used so far,
/// together; None for no process.
pub fn total_cpu_seconds(pids: &[u32]) -> Result<Option<f64>, BenchError> {
    if pids.is_empty() {
        return Ok(None);
    }
    let mut total = 0.0;
    for &pid in pids {
        total += cpu_seconds(pid)?;
    }
    Ok(Some(total))
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line. The
/// command name (field 2) is in parentheses and may hold spaces and
/// parentheses itself, so fields are counted after its last `)`.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // Field 3 (state) is the first after the name.
    let mut fields = after_name.split_whitespace().skip(14 - 3);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_and_system_ticks_are_fields_14_and_15_counted_after_the_name() {
        let stat = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1500 250 0 0 20 0 9 0 5 0 0";
        assert_eq!(cpu_ticks(stat), Some(1750));
        assert_eq!(cpu_ticks("4242 (short) S 1"), None);
    }

    #[test]
    fn this_process_has_used_some_cpu() {
        let mut spin = 0u64;
        for i in 0..5_000_000u64 {
            spin = spin.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(spin);
        assert!(cpu_seconds(std::process::id()).unwrap() > 0.0);
    }

    #[test]
    fn a_clusters_cpu_is_the_sum_over_its_members() {
        let me = std::process::id();
        assert_eq!(total_cpu_seconds(&[]).unwrap(), None);
        let once = total_cpu_seconds(&[me]).unwrap().unwrap();
        let thrice = total_cpu_seconds(&[me, me, me]).unwrap().unwrap();
        // This process keeps running between the reads, so only bounds hold.
        assert!(thrice >= 3.0 * once && thrice < 3.0 * once + 1.0, "{once} {thrice}");
        assert!(
            total_cpu_seconds(&[me, u32::MAX]).is_err(),
            "a member that is gone fails the reading"
        );
    }
}
