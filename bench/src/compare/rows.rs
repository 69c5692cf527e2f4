//! The rows `compare --workloads` can pick, each a workload with fixed settings.

use crate::workload::delete::DeleteArgs;
use crate::workload::kube::KubeArgs;
use crate::workload::lease_keepalive::LeaseKeepaliveArgs;
use crate::workload::put::PutArgs;
use crate::workload::range::RangeArgs;
use crate::workload::txn_mixed::TxnMixedArgs;
use crate::workload::txn_put::TxnPutArgs;
use crate::workload::watch_latency::WatchLatencyArgs;
use crate::workload::{Consistency, WorkloadSpec};
use crate::BenchError;

/// Row names, in table order. `range` stands for `range-s,range-l`.
pub const ROW_NAMES: &[&str] = &[
    "put",
    "put-1",
    "range-s",
    "range-l",
    "txn-put",
    "txn-mixed",
    "delete",
    "watch-latency",
    "lease-keepalive",
    "kube",
];
/// `--workloads` default.
pub const DEFAULT_ROWS: &str = "put,range,txn-put";

/// etcd's published heavy-load shape: 1000 clients over 100 connections.
const HEAVY: (usize, usize) = (100, 1000);
/// Rows that fan out (every Put goes to 100 watchers) or mix in large lists:
/// 100 clients over 10 connections, so a 2-core machine is not saturated by
/// the load generator alone.
const MODEST: (usize, usize) = (10, 100);
/// Key and value sizes of etcd's published benchmark.
pub const KEY_SIZE: usize = 8;
pub const VAL_SIZE: usize = 256;

#[derive(Debug, Clone)]
pub struct Row {
    pub name: &'static str,
    pub conns: usize,
    pub clients: usize,
    pub spec: WorkloadSpec,
}

/// The rows named in `names` (`range` expands to `range-s,range-l`), in the
/// given order, each once.
pub fn resolve(names: &[String]) -> Result<Vec<Row>, BenchError> {
    let mut rows: Vec<Row> = Vec::new();
    for name in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        let expanded: &[&str] = if name == "range" {
            &["range-s", "range-l"]
        } else {
            &[name]
        };
        for name in expanded {
            let row = row(name).ok_or_else(|| {
                BenchError::Usage(format!(
                    "compare: no workload row {name:?}; rows are range, {}, scale, space",
                    ROW_NAMES.join(", ")
                ))
            })?;
            if !rows.iter().any(|r| r.name == row.name) {
                rows.push(row);
            }
        }
    }
    if rows.is_empty() {
        return Err(BenchError::Usage("compare: --workloads names no row".into()));
    }
    Ok(rows)
}

fn row(name: &str) -> Option<Row> {
    let (conns, clients) = HEAVY;
    let (name, conns, clients, spec) = match name {
        // etcd's published put benchmark: sequential keys, 8 B keys, 256 B values.
        "put" => ("put", conns, clients, WorkloadSpec::Put(put_args())),
        // One client: latency bound by one fdatasync per write.
        "put-1" => ("put-1", 1, 1, WorkloadSpec::Put(put_args())),
        "range-s" => (
            "range-s",
            conns,
            clients,
            WorkloadSpec::Range(range_args(Consistency::Serializable)),
        ),
        "range-l" => (
            "range-l",
            conns,
            clients,
            WorkloadSpec::Range(range_args(Consistency::Linearizable)),
        ),
        "txn-put" => ("txn-put", conns, clients, WorkloadSpec::TxnPut(txn_put_args())),
        "txn-mixed" => ("txn-mixed", conns, clients, WorkloadSpec::TxnMixed(txn_mixed_args())),
        "delete" => ("delete", conns, clients, WorkloadSpec::Delete(delete_args())),
        "watch-latency" => (
            "watch-latency",
            MODEST.0,
            MODEST.1,
            WorkloadSpec::WatchLatency(watch_latency_args()),
        ),
        "lease-keepalive" => (
            "lease-keepalive",
            conns,
            clients,
            WorkloadSpec::LeaseKeepalive(lease_keepalive_args()),
        ),
        "kube" => ("kube", MODEST.0, MODEST.1, WorkloadSpec::Kube(kube_args())),
        _ => return None,
    };
    Some(Row {
        name,
        conns,
        clients,
        spec,
    })
}

fn put_args() -> PutArgs {
    PutArgs {
        key_size: KEY_SIZE,
        val_size: VAL_SIZE,
        key_space_size: 100_000,
        sequential_keys: true,
    }
}

/// Single-key reads of 1000 keys written before the run.
fn range_args(consistency: Consistency) -> RangeArgs {
    RangeArgs {
        key_size: KEY_SIZE,
        val_size: VAL_SIZE,
        key_space_size: 1000,
        sequential_keys: false,
        consistency,
        prefix: None,
        limit: 0,
        no_populate: false,
    }
}

/// 1000 clients over 10,000 keys: some loops race on a key and conflict.
fn txn_put_args() -> TxnPutArgs {
    TxnPutArgs {
        key_size: KEY_SIZE,
        val_size: VAL_SIZE,
        key_space_size: 10_000,
        sequential_keys: false,
    }
}

/// Half reads (first 100 keys), half writes over 1000 keys.
fn txn_mixed_args() -> TxnMixedArgs {
    TxnMixedArgs {
        key_size: KEY_SIZE,
        val_size: VAL_SIZE,
        key_space_size: 1000,
        sequential_keys: false,
        consistency: Consistency::Linearizable,
        limit: 100,
        rw_ratio: 1.0,
    }
}

/// 50,000 keys written before each run, then deleted in shuffled order.
fn delete_args() -> DeleteArgs {
    DeleteArgs {
        key_size: KEY_SIZE,
        val_size: VAL_SIZE,
        key_space_size: 50_000,
        sequential_keys: false,
    }
}

/// 100 watchers, 10 per stream, on Puts of 256 B values over 100,000 keys.
fn watch_latency_args() -> WatchLatencyArgs {
    WatchLatencyArgs {
        key_size: KEY_SIZE,
        val_size: VAL_SIZE,
        key_space_size: 100_000,
        sequential_keys: false,
        watchers: 100,
        watchers_per_stream: 10,
    }
}

/// Keepalives over 1000 leases of 60 s.
fn lease_keepalive_args() -> LeaseKeepaliveArgs {
    LeaseKeepaliveArgs {
        leases: 1000,
        lease_ttl: 60,
    }
}

/// 10,000 pods of 1 KiB, 5% lists, 3 watchers (the workload's defaults).
fn kube_args() -> KubeArgs {
    KubeArgs {
        key_space_size: 10_000,
        val_size: 1024,
        kube_list_ratio: 0.05,
        watchers: 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn names(rows: &[Row]) -> Vec<&'static str> {
        rows.iter().map(|r| r.name).collect()
    }

    fn strings(list: &str) -> Vec<String> {
        list.split(',').map(str::to_string).collect()
    }

    #[test]
    fn default_rows_are_put_both_ranges_and_txn_put() {
        let rows = resolve(&strings(DEFAULT_ROWS)).unwrap();
        assert_eq!(names(&rows), vec!["put", "range-s", "range-l", "txn-put"]);
        assert!(rows.iter().all(|r| (r.conns, r.clients) == (100, 1000)));
    }

    #[test]
    fn every_row_name_resolves_and_builds() {
        for name in ROW_NAMES {
            let rows = resolve(&[name.to_string()]).unwrap();
            assert_eq!(names(&rows), vec![*name]);
            assert!(rows[0].spec.build(Duration::from_secs(1)).is_ok(), "{name}");
        }
    }

    #[test]
    fn rows_are_kept_in_the_given_order_once() {
        let rows = resolve(&strings("txn-put,put,range-l,range,put")).unwrap();
        assert_eq!(names(&rows), vec!["txn-put", "put", "range-l", "range-s"]);
    }

    #[test]
    fn unknown_rows_are_refused_with_the_list() {
        let error = resolve(&strings("put,watch")).unwrap_err().to_string();
        assert!(error.contains("\"watch\"") && error.contains("txn-put"), "{error}");
        assert!(resolve(&strings("")).is_err());
    }

    #[test]
    fn put_row_is_etcds_published_put() {
        let row = resolve(&strings("put")).unwrap().remove(0);
        match row.spec {
            WorkloadSpec::Put(args) => {
                assert_eq!((args.key_size, args.val_size, args.sequential_keys), (8, 256, true));
            }
            other => panic!("{other:?}"),
        }
        let single = resolve(&strings("put-1")).unwrap().remove(0);
        assert_eq!((single.conns, single.clients), (1, 1));
    }
}
