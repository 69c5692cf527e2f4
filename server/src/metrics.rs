//! Metrics in Prometheus text format, under etcd's names for what dashboards and
//! alerts use. The store core owns its counters (no shared state, no locks) and
//! hands a [`MetricsSnapshot`] to a client core that asks; the client core renders it.

use std::fmt::Write;
use std::time::Duration;

/// A Prometheus histogram with fixed upper bounds in seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// Upper bounds, ascending; the `+Inf` bucket is implicit.
    bounds_seconds: Vec<f64>,
    /// Observations per bucket (not cumulative); one more than `bounds_seconds`.
    counts: Vec<u64>,
    sum_seconds: f64,
}

impl Histogram {
    /// Go's `prometheus.ExponentialBuckets(start, factor, count)`.
    pub fn exponential(start_seconds: f64, factor: f64, count: usize) -> Histogram {
        assert!(start_seconds > 0.0 && factor > 1.0 && count > 0);
        let bounds_seconds: Vec<f64> = (0..count).map(|i| start_seconds * factor.powi(i as i32)).collect();
        Histogram {
            counts: vec![0; bounds_seconds.len() + 1],
            bounds_seconds,
            sum_seconds: 0.0,
        }
    }

    /// etcd's buckets for `etcd_disk_wal_fsync_duration_seconds` and
    /// `etcd_disk_backend_commit_duration_seconds`: 1 ms doubling to about 8 s.
    pub fn etcd_disk() -> Histogram {
        Histogram::exponential(0.001, 2.0, 14)
    }

    pub fn observe(&mut self, duration: Duration) {
        let seconds = duration.as_secs_f64();
        let bucket = self
            .bounds_seconds
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(self.bounds_seconds.len());
        self.counts[bucket] += 1;
        self.sum_seconds += seconds;
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, count) in self.bounds_seconds.iter().zip(&self.counts) {
            cumulative += count;
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count());
        let _ = writeln!(out, "{name}_sum {}", self.sum_seconds);
        let _ = writeln!(out, "{name}_count {}", self.count());
    }
}

/// What the store core reports for `/metrics`.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsSnapshot {
    pub has_leader: bool,
    pub is_leader: bool,
    pub leader_changes: u64,
    /// The raft commit index (etcd reports it as `proposals_committed_total`).
    pub proposals_committed: u64,
    /// The applied index.
    pub proposals_applied: u64,
    /// Proposals waiting to be applied.
    pub proposals_pending: u64,
    pub proposals_failed: u64,
    /// Committed entries not applied because of what they hold.
    pub entries_skipped: u64,
    /// Raft snapshots sent and acknowledged, failed to send, and received.
    pub snapshots_sent: u64,
    pub snapshots_send_failed: u64,
    pub snapshots_received: u64,
    /// Peer connections closed by this member, and raft messages from peers
    /// dropped unstepped (see `peer`): hostile or broken peers.
    pub peer_connections_rejected: u64,
    pub peer_raft_messages_dropped: u64,
    pub db_total_bytes: u64,
    pub db_in_use_bytes: u64,
    pub quota_backend_bytes: i64,
    pub current_revision: i64,
    pub compact_revision: i64,
    pub wal_fsync: Histogram,
    pub backend_commit: Histogram,
}

impl MetricsSnapshot {
    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self, ringkv_version: &str, etcd_version: &str) -> String {
        let mut out = String::with_capacity(4096);
        let mut gauge = |name: &str, help: &str, kind: &str, value: String| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {value}");
        };
        gauge(
            "etcd_server_has_leader",
            "Whether or not a leader exists. 1 is existence, 0 is not.",
            "gauge",
            u8::from(self.has_leader).to_string(),
        );
        gauge(
            "etcd_server_is_leader",
            "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            "gauge",
            u8::from(self.is_leader).to_string(),
        );
        gauge(
            "etcd_server_leader_changes_seen_total",
            "The number of leader changes seen.",
            "counter",
            self.leader_changes.to_string(),
        );
        gauge(
            "etcd_server_proposals_committed_total",
            "The total number of consensus proposals committed.",
            "gauge",
            self.proposals_committed.to_string(),
        );
        gauge(
            "etcd_server_proposals_applied_total",
            "The total number of consensus proposals applied.",
            "gauge",
            self.proposals_applied.to_string(),
        );
        gauge(
            "etcd_server_proposals_pending",
            "The current number of pending proposals to commit.",
            "gauge",
            self.proposals_pending.to_string(),
        );
        gauge(
            "etcd_server_proposals_failed_total",
            "The total number of failed proposals seen.",
            "counter",
            self.proposals_failed.to_string(),
        );
        gauge(
            "ringkv_raft_entries_skipped_total",
            "Committed raft entries not applied because they do not decode or fail the request checks.",
            "counter",
            self.entries_skipped.to_string(),
        );
        // etcd labels these by peer (To / From); ringkv counts all peers together.
        gauge(
            "etcd_network_snapshot_send_success",
            "Total number of successful snapshot sends",
            "counter",
            self.snapshots_sent.to_string(),
        );
        gauge(
            "etcd_network_snapshot_send_failures",
            "Total number of snapshot send failures",
            "counter",
            self.snapshots_send_failed.to_string(),
        );
        gauge(
            "etcd_network_snapshot_receive_success",
            "Total number of successful snapshot receives",
            "counter",
            self.snapshots_received.to_string(),
        );
        gauge(
            "ringkv_peer_connections_rejected_total",
            "Peer connections closed by this member: over a limit, silent past a timeout, a bad frame or a refused hello.",
            "counter",
            self.peer_connections_rejected.to_string(),
        );
        gauge(
            "ringkv_peer_raft_messages_dropped_total",
            "Raft messages from peers dropped because stepping them could stop this member.",
            "counter",
            self.peer_raft_messages_dropped.to_string(),
        );
        gauge(
            "etcd_server_quota_backend_bytes",
            "Current backend storage quota size in bytes.",
            "gauge",
            self.quota_backend_bytes.to_string(),
        );
        gauge(
            "etcd_mvcc_db_total_size_in_bytes",
            "Total size of the underlying database physically allocated in bytes.",
            "gauge",
            self.db_total_bytes.to_string(),
        );
        gauge(
            "etcd_mvcc_db_total_size_in_use_in_bytes",
            "Total size of the underlying database logically in use in bytes.",
            "gauge",
            self.db_in_use_bytes.to_string(),
        );
        gauge(
            "etcd_debugging_mvcc_current_revision",
            "The current revision of store.",
            "gauge",
            self.current_revision.to_string(),
        );
        gauge(
            "etcd_debugging_mvcc_compact_revision",
            "The revision of the last compaction in store.",
            "gauge",
            self.compact_revision.to_string(),
        );
        let _ = writeln!(
            out,
            "# HELP etcd_server_version Which version is running. 1 for 'server_version' label with current version."
        );
        let _ = writeln!(out, "# TYPE etcd_server_version gauge");
        let _ = writeln!(out, "etcd_server_version{{server_version=\"{etcd_version}\"}} 1");
        let _ = writeln!(out, "# HELP ringkv_version ringkv's own version, as a label.");
        let _ = writeln!(out, "# TYPE ringkv_version gauge");
        let _ = writeln!(out, "ringkv_version{{version=\"{ringkv_version}\"}} 1");
        self.wal_fsync.render(
            &mut out,
            "etcd_disk_wal_fsync_duration_seconds",
            "The latency distributions of fsync called by WAL (ringkv: one batch's write and fdatasync).",
        );
        self.backend_commit.render(
            &mut out,
            "etcd_disk_backend_commit_duration_seconds",
            "The latency distributions of commit called by backend.",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_with_etcds_bounds() {
        let mut histogram = Histogram::etcd_disk();
        histogram.observe(Duration::from_micros(500));
        histogram.observe(Duration::from_millis(3));
        histogram.observe(Duration::from_secs(60));
        let mut out = String::new();
        histogram.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"0.001\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.004\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"8.192\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count 3\n"), "{out}");
    }
}
