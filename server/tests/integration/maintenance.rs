//! Maintenance, Cluster and the HTTP endpoints against a real `ringkv` process:
//! etcdctl's endpoint status / health / hashkv, member list, alarm list / disarm;
//! `/health`, `/livez`, `/readyz`, `/version`, `/metrics` with a plain TCP client;
//! the NOSPACE alarm; HashKV compared with a real etcd after the same history.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{etcdctl_output, free_port, http_get, Etcd, Ringkv};

/// etcdctl's exit status and output (see `support::etcdctl_output`).
fn etcdctl(endpoint: &str, args: &[&str], stdin: Option<&str>) -> (bool, String) {
    etcdctl_output(endpoint, "10s", args, stdin)
}

#[test]
fn status_member_list_and_http_endpoints_answer_as_etcd_does() {
    let dir = tempfile::tempdir().unwrap();
    let metrics_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let metrics_url = format!("http://{metrics_addr}");
    let server = Ringkv::start(dir.path(), &["--listen-metrics-urls", &metrics_url]);
    let endpoint = server.addr.to_string();

    let (ok, out) = etcdctl(&endpoint, &["put", "k", "v"], None);
    assert!(ok, "{out}");
    let (ok, status) = etcdctl(&endpoint, &["endpoint", "status", "-w", "json"], None);
    assert!(ok, "{status}");
    assert!(status.contains("\"version\":\"3.5.16\""), "{status}");
    assert!(status.contains("\"leader\":10276657743932975437"), "{status}");
    assert!(status.contains("\"raftAppliedIndex\":"), "{status}");
    assert!(!status.contains("errors"), "no alarms, a leader: {status}");

    let (ok, members) = etcdctl(&endpoint, &["member", "list"], None);
    assert!(ok, "{members}");
    assert_eq!(
        members.trim(),
        format!("8e9e05c52164694d, started, default, http://localhost:2380, http://127.0.0.1:2379, false")
    );
    let (ok, health) = etcdctl(&endpoint, &["endpoint", "health"], None);
    assert!(ok && health.contains("is healthy"), "{health}");

    for addr in [server.addr, metrics_addr] {
        assert_eq!(
            http_get(addr, "/health"),
            (200, "{\"health\":\"true\",\"reason\":\"\"}".to_string())
        );
        assert_eq!(http_get(addr, "/livez"), (200, "ok\n".to_string()));
        assert_eq!(http_get(addr, "/readyz"), (200, "ok\n".to_string()));
        let (code, version) = http_get(addr, "/version");
        assert_eq!(code, 200);
        assert!(
            version.starts_with("{\"etcdserver\":\"3.5.16\",\"etcdcluster\":\"3.5.0\""),
            "{version}"
        );
        let (code, metrics) = http_get(addr, "/metrics");
        assert_eq!(code, 200);
        for line in [
            "etcd_server_has_leader 1",
            "etcd_server_leader_changes_seen_total 1",
            "etcd_disk_wal_fsync_duration_seconds_bucket{le=\"+Inf\"}",
            "etcd_disk_backend_commit_duration_seconds_count",
            "etcd_mvcc_db_total_size_in_bytes ",
            "etcd_mvcc_db_total_size_in_use_in_bytes ",
            "etcd_server_proposals_committed_total ",
            "etcd_server_proposals_applied_total ",
            "etcd_server_proposals_pending 0",
            "etcd_server_proposals_failed_total 0",
        ] {
            assert!(metrics.contains(line), "{line} missing from\n{metrics}");
        }
        assert_eq!(http_get(addr, "/nothing").0, 404);
    }
}

#[test]
fn over_quota_raises_nospace_then_only_reads_and_deletes_work_until_disarmed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Ringkv::start(dir.path(), &["--quota-backend-bytes", "300000"]);
    let endpoint = server.addr.to_string();
    let value = "x".repeat(20_000);
    let mut refused = 0;
    for i in 0..40 {
        let (ok, out) = etcdctl(&endpoint, &["put", &format!("k{i}"), &value], None);
        if !ok {
            assert!(out.contains("etcdserver: mvcc: database space exceeded"), "{out}");
            refused += 1;
        }
    }
    assert!(refused > 0, "a 300 kB quota cannot hold 800 kB of values");
    let (_, alarms) = etcdctl(&endpoint, &["alarm", "list"], None);
    assert_eq!(alarms.trim(), "memberID:10276657743932975437 alarm:NOSPACE");

    // With the alarm raised, even a small put, a txn with a put or a lease grant is refused...
    let (ok, out) = etcdctl(&endpoint, &["put", "small", "v"], None);
    assert!(!ok && out.contains("database space exceeded"), "{out}");
    let (ok, out) = etcdctl(&endpoint, &["txn"], Some("\n\nput small v\n\n\n"));
    assert!(!ok && out.contains("database space exceeded"), "{out}");
    let (ok, out) = etcdctl(&endpoint, &["lease", "grant", "60"], None);
    assert!(!ok && out.contains("database space exceeded"), "{out}");
    // ...while reads, deletes and txns without puts work.
    let (ok, out) = etcdctl(&endpoint, &["get", "k0", "--keys-only"], None);
    assert!(ok && out.trim() == "k0", "{out}");
    let (ok, out) = etcdctl(&endpoint, &["del", "k0"], None);
    assert!(ok && out.trim() == "1", "{out}");
    let (ok, out) = etcdctl(&endpoint, &["txn"], Some("\n\nget k1 --keys-only\n\n\n"));
    assert!(ok, "{out}");
    assert_eq!(
        http_get(server.addr, "/health"),
        (503, "{\"health\":\"false\",\"reason\":\"ALARM NOSPACE\"}".to_string())
    );
    assert_eq!(http_get(server.addr, "/health?exclude=NOSPACE").0, 200);
    let (_, status) = etcdctl(&endpoint, &["endpoint", "status", "-w", "json"], None);
    assert!(
        status.contains("\"errors\":[\"memberID:10276657743932975437 alarm:NOSPACE \"]"),
        "{status}"
    );

    let (ok, out) = etcdctl(&endpoint, &["alarm", "disarm"], None);
    assert!(ok && out.contains("alarm:NOSPACE"), "{out}");
    let (_, alarms) = etcdctl(&endpoint, &["alarm", "list"], None);
    assert_eq!(alarms.trim(), "");
    // Disarmed, a write fits again only if the store has room: compaction of the
    // big values is what frees it. A small put within the quota goes through.
    let (ok, out) = etcdctl(&endpoint, &["del", "k", "--prefix"], None);
    assert!(ok, "{out}");
    let (ok, out) = etcdctl(&endpoint, &["put", "small", "v"], None);
    assert!(ok, "{out}");
}

#[test]
fn the_nospace_alarm_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = Ringkv::start(dir.path(), &["--quota-backend-bytes", "200000"]);
    let endpoint = server.addr.to_string();
    let value = "x".repeat(20_000);
    for i in 0..20 {
        etcdctl(&endpoint, &["put", &format!("k{i}"), &value], None);
    }
    // The alarm is part of the page store's state: wait for a commit, then kill.
    std::thread::sleep(Duration::from_millis(500));
    server.kill();
    let server = Ringkv::start(dir.path(), &[]);
    let (_, alarms) = etcdctl(&server.addr.to_string(), &["alarm", "list"], None);
    assert_eq!(alarms.trim(), "memberID:10276657743932975437 alarm:NOSPACE");
}

#[test]
fn hashkv_equals_etcds_after_the_same_history() {
    let dir = tempfile::tempdir().unwrap();
    let ringkv = Ringkv::start(dir.path(), &[]);
    let etcd = Etcd::start();
    let history: &[&[&str]] = &[
        &["put", "a", "1"],
        &["put", "a", "2"],
        &["put", "b", "3"],
        &["del", "a"],
        &["compaction", "3"],
        &["put", "k1", "x"],
        &["put", "k1", "y"],
        &["put", "k2", "z"],
        &["del", "k1"],
        &["compaction", "8"],
        &["put", "k3", "w"],
    ];
    let mut hashes = Vec::new();
    for endpoint in [ringkv.addr.to_string(), etcd.addr.to_string()] {
        let mut seen = Vec::new();
        for step in history {
            let (ok, out) = etcdctl(&endpoint, step, None);
            assert!(ok, "{step:?}: {out}");
            // Hash after every step, at the current and at one older revision.
            let (ok, now) = etcdctl(&endpoint, &["endpoint", "hashkv"], None);
            assert!(ok, "{now}");
            seen.push(now.split(", ").nth(1).unwrap().trim().to_string());
        }
        let (ok, old) = etcdctl(&endpoint, &["endpoint", "hashkv", "--rev", "9"], None);
        assert!(ok, "{old}");
        seen.push(old.split(", ").nth(1).unwrap().trim().to_string());
        let (ok, out) = etcdctl(&endpoint, &["endpoint", "hashkv", "--rev", "8"], None);
        assert!(!ok && out.contains("required revision has been compacted"), "{out}");
        hashes.push(seen);
    }
    assert_eq!(hashes[0], hashes[1], "ringkv's HashKV values equal etcd's");
}

#[test]
fn periodic_auto_compaction_drops_history_older_than_the_retention() {
    let dir = tempfile::tempdir().unwrap();
    let server = Ringkv::start(
        dir.path(),
        &[
            "--auto-compaction-mode",
            "periodic",
            "--auto-compaction-retention",
            "1s",
        ],
    );
    let endpoint = server.addr.to_string();
    let (ok, out) = etcdctl(&endpoint, &["put", "k", "first"], None);
    assert!(ok, "{out}");
    // The history at revision 2 goes once a compaction covers it: the first one
    // comes a retention after start, to the revision of a retention earlier.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut writes = 0;
    loop {
        let (ok, out) = etcdctl(&endpoint, &["get", "k", "--rev", "2"], None);
        if !ok {
            assert!(
                out.contains("etcdserver: mvcc: required revision has been compacted"),
                "{out}"
            );
            break;
        }
        assert_eq!(out.trim(), "k\nfirst");
        assert!(
            Instant::now() < deadline,
            "no auto-compaction within 20 s\n{}",
            server.log.text()
        );
        let (ok, out) = etcdctl(&endpoint, &["put", "k", &format!("v{writes}")], None);
        assert!(ok, "{out}");
        writes += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    // The latest value is kept.
    let (ok, out) = etcdctl(&endpoint, &["get", "k", "--print-value-only"], None);
    assert!(ok && out.trim() == format!("v{}", writes - 1), "{out}");
    assert!(server.log.text().contains("auto-compaction: compacting"));
}

#[test]
fn a_bad_auto_compaction_retention_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_ringkv"))
        .arg("--data-dir")
        .arg(dir.path())
        .args([
            "--auto-compaction-mode",
            "revision",
            "--auto-compaction-retention",
            "1h",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--auto-compaction-retention: invalid revision retention"),
        "{stderr}"
    );
}
