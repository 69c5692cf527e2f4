//! `ringkv-bench` runs against a real `ringkv` process (and `compare` against
//! real ringkv and etcd processes, and TLS against an etcd with a certificate
//! made by `openssl`), checked through its `--json` output.
//!
//! cargo builds `ringkv` into the same directory as `ringkv-bench`
//! (target/<profile>/) when it builds the workspace, as `cargo test --workspace`
//! does. Everything listens on 127.0.0.1; every wait is bounded.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long ringkv may take to say it serves.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one ringkv-bench invocation may take.
const BENCH_TIMEOUT: Duration = Duration::from_secs(180);

fn bench_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ringkv-bench"))
}

fn ringkv_binary() -> PathBuf {
    let ringkv = bench_binary().with_file_name("ringkv");
    assert!(
        ringkv.is_file(),
        "{} is missing: build the workspace first (cargo test --workspace --release builds it)",
        ringkv.display()
    );
    ringkv
}

/// A ringkv process on a free port with a fresh data dir; killed on drop.
struct Ringkv {
    child: Child,
    endpoint: String,
    _data_dir: tempfile::TempDir,
}

impl Ringkv {
    fn start() -> Ringkv {
        let data_dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(ringkv_binary())
            .arg("--data-dir")
            .arg(data_dir.path().join("data"))
            .args(["--listen-client-urls", "http://127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ringkv starts");
        let (ready_tx, ready_rx) = mpsc::channel();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        std::thread::spawn(move || {
            let mut log = Vec::new();
            for line in stderr.lines().map_while(Result::ok) {
                if let Some(rest) = line.split("serving client requests on ").nth(1) {
                    let endpoint = rest.split_whitespace().next().unwrap_or_default().to_string();
                    let _ = ready_tx.send(Ok(endpoint));
                }
                log.push(line);
            }
            let _ = ready_tx.send(Err(log.join("\n")));
        });
        match ready_rx.recv_timeout(START_TIMEOUT) {
            Ok(Ok(endpoint)) => Ringkv {
                child,
                endpoint,
                _data_dir: data_dir,
            },
            Ok(Err(log)) => panic!("ringkv exited before serving:\n{log}"),
            Err(_) => {
                let _ = child.kill();
                panic!("ringkv did not serve within {START_TIMEOUT:?}");
            }
        }
    }
}

impl Drop for Ringkv {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs ringkv-bench with `args` and returns its JSON report.
fn bench_json(args: &[&str]) -> Value {
    let mut child = Command::new(bench_binary())
        .args(args)
        .args(["--json", "--quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ringkv-bench starts");
    let deadline = Instant::now() + BENCH_TIMEOUT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ringkv-bench {args:?} did not finish within {BENCH_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "ringkv-bench {args:?} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not one JSON object ({e}):\n{stdout}"))
}

fn count(report: &Value, field: &str) -> u64 {
    report[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no {field} in {report}"))
}

#[test]
fn put_total_200_reports_200_writes_and_no_errors() {
    let ringkv = Ringkv::start();
    let report = bench_json(&["--endpoints", &ringkv.endpoint, "--total", "200", "put"]);
    assert_eq!(report["workload"], "put");
    assert_eq!(count(&report, "ops"), 200, "{report}");
    assert_eq!(count(&report, "errors"), 0, "{report}");
    assert_eq!(report["throughput_unit"], "writes/sec");
    assert!(report["throughput_per_sec"].as_f64().unwrap() > 0.0);
    assert!(report["latency_ms"]["p50"].as_f64().unwrap() > 0.0);
    assert!(report["latency_ms"]["max"].as_f64().unwrap() >= report["latency_ms"]["p99"].as_f64().unwrap());
}

#[test]
fn samples_cover_the_run_second_by_second_and_add_up_to_its_totals() {
    let ringkv = Ringkv::start();
    // Paced, so the run spans three seconds and ends inside the third.
    let args = ["--endpoints", &ringkv.endpoint, "--rate", "200", "--duration", "2500ms"];
    let report = bench_json(&[&args[..], &["--sample", "put"]].concat());
    let samples = report["samples"]
        .as_array()
        .unwrap_or_else(|| panic!("no samples: {report}"));
    let seconds: Vec<u64> = samples.iter().map(|s| s["second"].as_u64().unwrap()).collect();
    assert_eq!(
        seconds,
        (0..seconds.len() as u64).collect::<Vec<_>>(),
        "no second missing: {report}"
    );
    assert!(seconds.len() >= 3, "{report}");
    let sum = |field: &str| samples.iter().map(|s| s[field].as_u64().unwrap()).sum::<u64>();
    assert_eq!(sum("ops"), count(&report, "ops"), "{report}");
    assert_eq!(sum("errors"), count(&report, "errors"), "{report}");
    let lengths: Vec<f64> = samples.iter().map(|s| s["length_sec"].as_f64().unwrap()).collect();
    let (last, whole) = lengths.split_last().unwrap();
    assert!(
        whole.iter().all(|l| *l == 1.0) && *last > 0.0 && *last <= 1.0,
        "{lengths:?}"
    );
    let covered: f64 = lengths.iter().sum();
    assert!(
        (covered - report["duration_sec"].as_f64().unwrap()).abs() < 1e-6,
        "{report}"
    );
    let curve = report["latency_percentiles"].as_array().unwrap();
    assert_eq!(curve[0]["percentile"], 0.0, "{report}");
}

#[test]
fn many_clients_over_few_connections_all_succeed() {
    let ringkv = Ringkv::start();
    let endpoint = ringkv.endpoint.trim_start_matches("http://");
    let args = [
        "--endpoints",
        endpoint,
        "--conns",
        "3",
        "--clients",
        "50",
        "--total",
        "500",
    ];
    let report = bench_json(&[&args[..], &["put", "--val-size", "256"]].concat());
    assert_eq!((count(&report, "ops"), count(&report, "errors")), (500, 0), "{report}");
    assert_eq!((count(&report, "conns"), count(&report, "clients")), (3, 50));
}

#[test]
fn range_reads_populated_keys_both_ways() {
    let ringkv = Ringkv::start();
    for consistency in ["l", "s"] {
        let report = bench_json(&[
            "--endpoints",
            &ringkv.endpoint,
            "--clients",
            "4",
            "--total",
            "300",
            "range",
            "--key-space-size",
            "50",
            "--consistency",
            consistency,
        ]);
        assert_eq!(count(&report, "errors"), 0, "{report}");
        assert_eq!(
            report["outcomes"]["found"]["count"], 300,
            "every key was written first: {report}"
        );
        assert_eq!(report["throughput_unit"], "ops/sec");
    }
}

#[test]
fn txn_put_counts_every_attempt_as_success_or_conflict() {
    let ringkv = Ringkv::start();
    // 8 clients on 4 keys: races, so conflicts are likely but not certain.
    let args = ["--endpoints", &ringkv.endpoint, "--clients", "8", "--total", "400"];
    let report = bench_json(&[&args[..], &["txn-put", "--key-space-size", "4"]].concat());
    assert_eq!((count(&report, "ops"), count(&report, "errors")), (400, 0), "{report}");
    let outcome = |kind: &str| report["outcomes"][kind]["count"].as_u64().unwrap_or(0);
    assert!(outcome("success") > 0, "{report}");
    assert_eq!(outcome("success") + outcome("conflict"), 400, "{report}");
}

#[test]
fn delete_removes_each_populated_key_once_then_stops() {
    let ringkv = Ringkv::start();
    let args = ["--endpoints", &ringkv.endpoint, "--clients", "4", "--total", "1000"];
    let report = bench_json(&[&args[..], &["delete", "--key-space-size", "120"]].concat());
    assert_eq!((count(&report, "ops"), count(&report, "errors")), (120, 0), "{report}");
    assert_eq!(report["outcomes"]["deleted"]["count"], 120, "{report}");
    assert!(report["stopped_early"]
        .as_str()
        .unwrap()
        .contains("every pre-populated key"));
}

#[test]
fn txn_mixed_reads_and_writes() {
    let ringkv = Ringkv::start();
    let args = ["--endpoints", &ringkv.endpoint, "--clients", "4", "--total", "300"];
    let report = bench_json(&[&args[..], &["txn-mixed", "--rw-ratio", "1"]].concat());
    assert_eq!((count(&report, "ops"), count(&report, "errors")), (300, 0), "{report}");
    let outcome = |kind: &str| report["outcomes"][kind]["count"].as_u64().unwrap_or(0);
    assert!(outcome("read") > 0 && outcome("write") > 0, "{report}");
}

#[test]
fn compare_runs_each_server_each_round_on_fresh_data() {
    let ringkv = ringkv_binary();
    let plot_dir = tempfile::tempdir().unwrap();
    let plot = plot_dir.path().join("compare.svg");
    let report = bench_json(&[
        "--total",
        "100",
        "--clients",
        "4",
        "compare",
        "--workloads",
        "put",
        "--rounds",
        "2",
        "--ringkv-bin",
        ringkv.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
    ]);
    let row = &report["rows"][0];
    assert_eq!(row["workload"], "put", "{report}");
    assert_eq!(row["ringkv"]["runs"], 2, "{report}");
    assert_eq!(row["etcd"]["runs"], 2, "{report}");
    assert!(row["ratio"].as_f64().unwrap() > 0.0);
    let runs = report["runs"].as_array().unwrap();
    let servers: Vec<&str> = runs.iter().map(|r| r["server"].as_str().unwrap()).collect();
    assert_eq!(servers, vec!["ringkv", "etcd", "ringkv", "etcd"], "A B A B");
    for run in runs {
        assert_eq!(count(&run["summary"], "ops"), 100, "{run}");
        assert_eq!(count(&run["summary"], "errors"), 0, "{run}");
        let samples = run["summary"]["samples"].as_array().unwrap();
        let sampled: u64 = samples.iter().map(|s| s["ops"].as_u64().unwrap()).sum();
        assert_eq!(sampled, 100, "--plot samples every run: {run}");
    }
    assert!(report["notes"].as_array().unwrap().is_empty(), "{report}");

    let svg = std::fs::read_to_string(&plot).expect("--plot wrote its file");
    let document = roxmltree::Document::parse(&svg).expect("the plot is well-formed XML");
    assert!(document.root_element().has_tag_name("svg"));
    let texts: Vec<&str> = document
        .descendants()
        .filter(|node| node.has_tag_name("text"))
        .filter_map(|node| node.text())
        .map(str::trim)
        .collect();
    assert!(
        texts
            .iter()
            .any(|t| t.contains("put (4 conns / 4 clients): ringkv vs etcd")),
        "{texts:?}"
    );
    for server in ["ringkv", "etcd"] {
        assert!(
            texts.iter().any(|t| t.starts_with(&format!("{server} (round "))),
            "{server}: {texts:?}"
        );
    }
}

/// Processes whose command line mentions `needle`, other than this test's own.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().to_string_lossy().into_owned();
            let cmdline = std::fs::read(format!("/proc/{name}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (name != me && cmdline.contains(needle)).then(|| format!("{name}: {cmdline}"))
        })
        .collect()
}

#[test]
fn compare_members_3_runs_each_round_on_a_fresh_cluster_and_leaves_no_process() {
    let ringkv = ringkv_binary();
    let root = tempfile::tempdir().unwrap();
    let report = bench_json(&[
        "--total",
        "300",
        "--conns",
        "3",
        "--clients",
        "6",
        "compare",
        "--members",
        "3",
        "--workloads",
        "put",
        "--rounds",
        "1",
        "--ringkv-bin",
        ringkv.to_str().unwrap(),
        "--data-root",
        root.path().to_str().unwrap(),
        "--keep-data",
    ]);
    assert_eq!(count(&report, "members"), 3, "{report}");
    let runs = report["runs"].as_array().unwrap();
    let servers: Vec<&str> = runs.iter().map(|r| r["server"].as_str().unwrap()).collect();
    assert_eq!(servers, vec!["ringkv", "etcd"], "{report}");
    for run in runs {
        let summary = &run["summary"];
        assert_eq!((count(summary, "ops"), count(summary, "errors")), (300, 0), "{run}");
        let endpoints: Vec<&str> = summary["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap())
            .collect();
        assert_eq!(endpoints.len(), 3, "one client URL per member: {run}");
        assert!(endpoints.iter().all(|e| e.starts_with("http://127.0.0.1:")), "{run}");
        assert!(summary["server_cpu_sec"].as_f64().unwrap() > 0.0, "{run}");
    }
    let row = &report["rows"][0];
    assert!(row["per_cpu_ratio"].as_f64().unwrap() > 0.0, "{report}");
    assert!(
        row["ringkv"]["server_cpu_ms_per_1000"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert!(report["notes"].as_array().unwrap().is_empty(), "{report}");
    // Each member had a data dir of its own, and none runs any more.
    let data_root = std::fs::read_dir(root.path()).unwrap().next().unwrap().unwrap().path();
    for server in ["ringkv", "etcd"] {
        for member in ["m0", "m1", "m2"] {
            let data = data_root.join(format!("put-1-{server}")).join(member).join("data");
            assert!(data.is_dir(), "{} missing", data.display());
        }
    }
    let left = processes_mentioning(&data_root.display().to_string());
    assert!(left.is_empty(), "still running: {left:?}");
}

#[test]
fn compare_refuses_members_with_the_scale_row_and_with_ceiling() {
    for args in [
        &["compare", "--members", "3", "--workloads", "scale", "--quiet"][..],
        &["ceiling", "--members", "3", "--workloads", "put", "--quiet"][..],
        &["compare", "--members", "0", "--quiet"][..],
        &["compare", "--members", "8", "--quiet"][..],
    ] {
        let output = Command::new(bench_binary())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?} was accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("--members"), "{args:?}: {stderr}");
    }
}

#[test]
fn compare_scale_measures_memory_restart_and_compaction_on_both_servers() {
    let ringkv = ringkv_binary();
    let keys = 2000;
    let report = bench_json(&[
        "compare",
        "--workloads",
        "scale",
        "--scale-keys",
        &keys.to_string(),
        "--scale-phase",
        "2s",
        "--rounds",
        "1",
        "--ringkv-bin",
        ringkv.to_str().unwrap(),
    ]);
    assert!(report["rows"].as_array().unwrap().is_empty(), "{report}");
    let scale = &report["scale"];
    assert_eq!(count(scale, "keys"), keys, "{report}");
    let runs = scale["runs"].as_array().unwrap();
    let servers: Vec<&str> = runs.iter().map(|r| r["server"].as_str().unwrap()).collect();
    assert_eq!(servers, vec!["ringkv", "etcd"], "{report}");
    for run in runs {
        for phase in ["load", "overwrite"] {
            assert_eq!(count(&run[phase], "ops"), keys, "{phase}: {run}");
        }
        for phase in ["load", "overwrite", "quiet", "during_compaction"] {
            assert_eq!(count(&run[phase], "errors"), 0, "{phase}: {run}");
        }
        assert!(count(&run["memory_after_load"], "vm_rss_kib") > 0, "{run}");
        assert!(run["restart"]["first_read_sec"].as_f64().unwrap() > 0.0, "{run}");
        assert!(run["restart"]["error"].is_null(), "{run}");
        assert!(run["compaction"]["duration_sec"].as_f64().is_some(), "{run}");
        assert!(run["compaction"]["error"].is_null(), "{run}");
        // Both servers start at revision 1: two Puts per key make 2N + 1.
        assert_eq!(run["compaction"]["revision"], 2 * keys + 1, "{run}");
        assert!(
            run["during_compaction"]["duration_sec"].as_f64().unwrap() >= 1.9,
            "{run}"
        );
    }
    for server in ["ringkv", "etcd"] {
        assert_eq!(count(&scale[server], "runs"), 1, "{report}");
        assert_eq!(count(&scale[server], "errors"), 0, "{report}");
    }
    assert!(report["notes"].as_array().unwrap().is_empty(), "{report}");
}

#[test]
fn ceiling_refuses_the_scale_row() {
    let output = Command::new(bench_binary())
        .args(["ceiling", "--workloads", "scale", "--quiet"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("ringkv-ceiling stores nothing"), "{stderr}");
}

#[test]
fn watch_latency_every_watcher_sees_every_put_exactly_once() {
    let ringkv = Ringkv::start();
    // 12 watchers, 5 per stream: two full streams and one of 2.
    let args = [
        "--endpoints",
        &ringkv.endpoint,
        "--conns",
        "2",
        "--clients",
        "8",
        "--total",
        "300",
    ];
    let workload = ["watch-latency", "--watchers", "12", "--watchers-per-stream", "5"];
    let report = bench_json(&[&args[..], &workload[..]].concat());
    assert_eq!((count(&report, "ops"), count(&report, "errors")), (300, 0), "{report}");
    assert_eq!(report["throughput_unit"], "writes/sec");
    let watch = &report["watch"];
    assert_eq!((count(watch, "watchers"), count(watch, "streams")), (12, 3), "{report}");
    assert_eq!(
        count(watch, "events"),
        12 * 300,
        "one event per watcher per put: {report}"
    );
    assert_eq!(
        watch["problems"].as_object().unwrap().len(),
        0,
        "no missed, duplicate, unexpected or wrong-key event: {report}"
    );
    assert_eq!(count(watch, "errors"), 0, "{report}");
    let event_p50 = watch["latency_ms"]["p50"].as_f64().unwrap();
    assert!(event_p50 > 0.0, "{report}");
    assert!(
        report["latency_ms"]["p50"].as_f64().unwrap() > 0.0,
        "put latency is reported too"
    );
}

#[test]
fn lease_keepalive_answers_every_keepalive_and_revokes_the_leases() {
    let ringkv = Ringkv::start();
    let args = [
        "--endpoints",
        &ringkv.endpoint,
        "--conns",
        "2",
        "--clients",
        "4",
        "--total",
        "400",
    ];
    let report = bench_json(&[&args[..], &["lease-keepalive", "--leases", "10"]].concat());
    assert_eq!((count(&report, "ops"), count(&report, "errors")), (400, 0), "{report}");
    assert_eq!(report["throughput_unit"], "ops/sec");
    let notes: Vec<&str> = report["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert_eq!(notes, vec!["revoked 10 of 10 leases after the run"], "{report}");
}

#[test]
fn kube_writes_lists_and_watch_events_add_up() {
    let ringkv = Ringkv::start();
    // 600 objects: a list takes two pages of 500.
    let args = [
        "--endpoints",
        &ringkv.endpoint,
        "--conns",
        "2",
        "--clients",
        "6",
        "--total",
        "400",
    ];
    let workload = [
        "kube",
        "--key-space-size",
        "600",
        "--val-size",
        "100",
        "--kube-list-ratio",
        "0.1",
        "--watchers",
        "2",
    ];
    let report = bench_json(&[&args[..], &workload[..]].concat());
    assert_eq!((count(&report, "ops"), count(&report, "errors")), (400, 0), "{report}");
    let outcomes = report["outcomes"].as_object().unwrap();
    let kind = |name: &str| outcomes.get(name).map_or(0, |o| o["count"].as_u64().unwrap());
    assert_eq!(
        outcomes.values().map(|o| o["count"].as_u64().unwrap()).sum::<u64>(),
        400
    );
    assert!(kind("list") > 0 && kind("update") > 0, "{report}");
    let writes = kind("update") + kind("update retried") + kind("create") + kind("delete") + kind("delete retried");
    assert_eq!(count(&report["writes"], "count"), writes, "{report}");
    assert!(report["writes"]["per_sec"].as_f64().unwrap() > 0.0);
    let watch = &report["watch"];
    assert_eq!(
        count(watch, "events"),
        2 * writes,
        "each watcher sees each write once: {report}"
    );
    assert_eq!(watch["problems"].as_object().unwrap().len(), 0, "{report}");
    assert_eq!(count(watch, "errors"), 0, "{report}");
    let lists = report["notes"][0].as_str().unwrap();
    assert!(lists.contains("lists of 2.0 pages"), "{report}");
}

/// Runs `openssl` with `args` in `dir`; fails the test if it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs (Debian: apt-get install openssl)");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A CA, and a server certificate it signed for 127.0.0.1, in `dir`.
fn make_certificates(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=ringkv-bench test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.pem",
        ],
    );
}

#[test]
fn tls_endpoints_are_measured_with_the_ca_given() {
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let port = |listener: std::net::TcpListener| listener.local_addr().unwrap().port();
    let client_port = port(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let peer_port = port(std::net::TcpListener::bind("127.0.0.1:0").unwrap());
    let endpoint = format!("https://127.0.0.1:{client_port}");
    let peer = format!("http://127.0.0.1:{peer_port}");
    let path = |name: &str| dir.path().join(name).display().to_string();
    let mut etcd = Command::new("etcd")
        .args(["--data-dir", &path("etcd"), "--listen-client-urls", &endpoint])
        .args(["--advertise-client-urls", &endpoint, "--listen-peer-urls", &peer])
        .args([
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &format!("default={peer}"),
        ])
        .args(["--cert-file", &path("server.pem"), "--key-file", &path("server.key")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd starts (Debian: apt-get install etcd-server)");
    let deadline = Instant::now() + START_TIMEOUT;
    while std::net::TcpStream::connect(("127.0.0.1", client_port)).is_err() {
        assert!(Instant::now() < deadline, "etcd did not listen");
        std::thread::sleep(Duration::from_millis(100));
    }
    let cacert = path("ca.pem");
    let report = bench_json(&["--endpoints", &endpoint, "--cacert", &cacert, "--total", "100", "put"]);
    // Without a scheme, --cacert means https.
    let plain_name = format!("127.0.0.1:{client_port}");
    let again = bench_json(&["--endpoints", &plain_name, "--cacert", &cacert, "--total", "50", "put"]);
    let _ = etcd.kill();
    let _ = etcd.wait();
    assert_eq!((count(&report, "ops"), count(&report, "errors")), (100, 0), "{report}");
    assert_eq!((count(&again, "ops"), count(&again, "errors")), (50, 0), "{again}");
}
