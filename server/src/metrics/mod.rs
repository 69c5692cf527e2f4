//! Metrics in Prometheus text format, under etcd's names for what dashboards and
//! alerts use. The store core owns its counters (no shared state, no locks) and
//! hands a [`MetricsSnapshot`] to a client core that asks; the client core renders
//! it, with the gRPC series every client core counts ([`grpc`]) and the
//! process's ([`process`]).

pub mod grpc;
pub mod process;

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

    pub fn sum_seconds(&self) -> f64 {
        self.sum_seconds
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        self.render_series(out, name, "");
    }

    /// The buckets, sum and count, with `labels` (`To="a"`, or empty) on each.
    fn render_series(&self, out: &mut String, name: &str, labels: &str) {
        let comma = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, count) in self.bounds_seconds.iter().zip(&self.counts) {
            cumulative += count;
            let _ = writeln!(out, "{name}_bucket{{{labels}{comma}le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{comma}le=\"+Inf\"}} {}", self.count());
        let braced = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braced} {}", self.sum_seconds);
        let _ = writeln!(out, "{name}_count{braced} {}", self.count());
    }
}

/// The leader's heartbeat round trips to one peer.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerRoundTrip {
    pub peer: u64,
    pub histogram: Histogram,
}

/// What went over the peer links with one peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerTraffic {
    pub peer: u64,
    pub sent_bytes: u64,
    pub received_bytes: u64,
    /// Raft messages for the peer that were not sent: dropped from a full
    /// queue, or lost with a connection that failed or could not be made.
    pub sent_failures: u64,
}

/// etcd's mvcc operation counters (see `crate::apply::OpCounts`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MvccOps {
    pub ranges: u64,
    pub puts: u64,
    pub deletes: u64,
    pub txns: u64,
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
    /// Keys that exist now.
    pub keys: u64,
    pub mvcc_ops: MvccOps,
    pub slow_applies: u64,
    /// ReadIndex grants that came after their request was asked again.
    pub slow_read_indexes: u64,
    pub heartbeat_send_failures: u64,
    pub peer_round_trips: Vec<PeerRoundTrip>,
    /// The peer port's own counts: the store core's shell fills them in.
    pub peer_traffic: Vec<PeerTraffic>,
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
        gauge(
            "etcd_debugging_mvcc_keys_total",
            "Total number of keys.",
            "gauge",
            self.keys.to_string(),
        );
        let ops = self.mvcc_ops;
        gauge(
            "etcd_mvcc_range_total",
            "Total number of ranges seen by this member.",
            "counter",
            ops.ranges.to_string(),
        );
        gauge(
            "etcd_mvcc_put_total",
            "Total number of puts seen by this member.",
            "counter",
            ops.puts.to_string(),
        );
        gauge(
            "etcd_mvcc_delete_total",
            "Total number of deletes seen by this member.",
            "counter",
            ops.deletes.to_string(),
        );
        gauge(
            "etcd_mvcc_txn_total",
            "Total number of txns seen by this member.",
            "counter",
            ops.txns.to_string(),
        );
        gauge(
            "etcd_server_slow_apply_total",
            "The total number of slow apply requests (likely overloaded from slow disk).",
            "counter",
            self.slow_applies.to_string(),
        );
        gauge(
            "etcd_server_slow_read_indexes_total",
            "The total number of pending read indexes not in sync with leader's or timed out read index requests.",
            "counter",
            self.slow_read_indexes.to_string(),
        );
        gauge(
            "etcd_server_heartbeat_send_failures_total",
            "The total number of leader heartbeat send failures (likely overloaded from slow disk).",
            "counter",
            self.heartbeat_send_failures.to_string(),
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
        self.render_peers(&mut out);
        out
    }

    /// The per-peer series, labelled with the peer's id in hex as etcd's are.
    fn render_peers(&self, out: &mut String) {
        type Value = fn(&PeerTraffic) -> u64;
        let traffic: [(&str, &str, &str, Value); 3] = [
            (
                "etcd_network_peer_sent_bytes_total",
                "The total number of bytes sent to peers.",
                "To",
                |traffic| traffic.sent_bytes,
            ),
            (
                "etcd_network_peer_received_bytes_total",
                "The total number of bytes received from peers.",
                "From",
                |traffic| traffic.received_bytes,
            ),
            (
                "etcd_network_peer_sent_failures_total",
                "The total number of send failures from peers.",
                "To",
                |traffic| traffic.sent_failures,
            ),
        ];
        // As a Go metric vector, a family with no peer yet is left out.
        let families = if self.peer_traffic.is_empty() {
            &traffic[..0]
        } else {
            &traffic[..]
        };
        for &(name, help, label, value) in families {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            for peer in &self.peer_traffic {
                let _ = writeln!(out, "{name}{{{label}=\"{:x}\"}} {}", peer.peer, value(peer));
            }
        }
        let name = "etcd_network_peer_round_trip_time_seconds";
        if self.peer_round_trips.is_empty() {
            return;
        }
        let _ = writeln!(out, "# HELP {name} Round-Trip-Time histogram between peers");
        let _ = writeln!(out, "# TYPE {name} histogram");
        for trip in &self.peer_round_trips {
            trip.histogram
                .render_series(out, name, &format!("To=\"{:x}\"", trip.peer));
        }
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
