//! `/metrics` as etcd's dashboards and alerts read it: the gRPC series beside
//! etcd 3.4's after the same calls, a scrape through `promtool check metrics`,
//! and the etcd mixin's alert rules in a real Prometheus scraping a 3-member
//! cluster (every series they read is there; stopped members make the
//! members-down, insufficient-members and no-leader expressions fire).
//!
//! Prometheus and promtool come from Debian's `prometheus` package, which
//! .ci/run installs; without them locally the tests that need them say so
//! and pass.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::cluster::Cluster;
use crate::support::{etcdctl_output, free_port, Etcd, KillOnDrop, Ringkv};

/// The etcd mixin's alerts, rendered (see the file's header).
const MIXIN_ALERTS: &str = include_str!("etcd-mixin-alerts.yaml");

/// Metric names promtool's lint flags that are etcd's own, kept for
/// compatibility (etcd 3.4's scrape gets the same complaints).
const ETCD_NAMES_PROMTOOL_FLAGS: &[&str] = &[
    "etcd_debugging_mvcc_keys_total",
    "etcd_network_snapshot_receive_success",
    "etcd_network_snapshot_send_failures",
    "etcd_network_snapshot_send_success",
    "etcd_server_proposals_applied_total",
    "etcd_server_proposals_committed_total",
];

/// How long Prometheus gets to see what a test waits for.
const PROMETHEUS_WAIT: Duration = Duration::from_secs(20);

fn installed(tool: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        eprintln!("{tool} is not installed (Debian package prometheus, which .ci/run installs): skipped");
    }
    found
}

fn etcdctl(endpoint: &str, args: &[&str]) {
    let (ok, out) = etcdctl_output(endpoint, "10s", args, None);
    assert!(ok, "etcdctl {args:?}: {out}");
}

/// The same calls, for etcd and ringkv alike.
fn some_calls(endpoint: &str) {
    etcdctl(endpoint, &["put", "k", "v"]);
    etcdctl(endpoint, &["put", "k", "w", "--prev-kv"]);
    etcdctl(endpoint, &["get", "k"]);
    etcdctl(endpoint, &["del", "k"]);
    etcdctl(endpoint, &["lease", "grant", "60"]);
    etcdctl(endpoint, &["member", "list"]);
    etcdctl(endpoint, &["endpoint", "status"]);
    let (ok, _) = etcdctl_output(endpoint, "10s", &["compact", "1000"], None);
    assert!(!ok, "a compaction past the revision fails, with a code");
}

/// Over HTTP/1.0: etcd answers HTTP/1.1 in chunks.
fn scrape(addr: SocketAddr) -> String {
    let (status, body) = get(addr, "/metrics");
    assert_eq!(status, 200);
    body
}

/// The `name{labels} value` lines of the families starting with `prefix`.
fn samples<'a>(scrape: &'a str, prefix: &str) -> BTreeSet<&'a str> {
    scrape.lines().filter(|line| line.starts_with(prefix)).collect()
}

#[test]
fn grpc_series_count_the_same_calls_as_etcd_34_with_the_same_labels() {
    let etcd = Etcd::start_with(&["--metrics", "extensive"]);
    let dir = tempfile::tempdir().unwrap();
    let ringkv = Ringkv::start(dir.path(), &["--metrics", "extensive"]);
    some_calls(&etcd.endpoint());
    some_calls(&ringkv.endpoint());
    let (theirs, ours) = (scrape(etcd.addr), scrape(ringkv.addr));
    for counter in [
        "grpc_server_started_total",
        "grpc_server_handled_total",
        "grpc_server_msg_received_total",
        "grpc_server_msg_sent_total",
    ] {
        assert_eq!(samples(&ours, counter), samples(&theirs, counter), "{counter}");
    }
    // Latencies differ; the series are the same.
    let series = |scrape: &str| -> BTreeSet<String> {
        samples(scrape, "grpc_server_handling_seconds")
            .into_iter()
            .map(|line| line.rsplit_once(' ').expect("name value").0.to_string())
            .collect()
    };
    assert_eq!(series(&ours), series(&theirs));
    assert!(ours.contains("# TYPE grpc_server_handling_seconds histogram\n"));
    let basic = Ringkv::start(tempfile::tempdir().unwrap().path(), &[]);
    assert!(
        !scrape(basic.addr).contains("grpc_server_handling_seconds"),
        "etcd's default, --metrics basic, has no histogram"
    );
}

#[test]
fn a_scrape_passes_promtool_with_only_etcds_own_names_flagged() {
    if !installed("promtool") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ringkv = Ringkv::start(dir.path(), &["--metrics", "extensive"]);
    some_calls(&ringkv.endpoint());
    let metrics = scrape(ringkv.addr);
    for family in [
        "etcd_mvcc_put_total 2",
        "etcd_mvcc_delete_total 1",
        "etcd_debugging_mvcc_keys_total 0",
        "etcd_server_slow_apply_total ",
        "etcd_server_slow_read_indexes_total ",
        "etcd_server_heartbeat_send_failures_total ",
        "process_cpu_seconds_total ",
        "process_resident_memory_bytes ",
        "process_open_fds ",
        "process_max_fds ",
        "process_start_time_seconds ",
    ] {
        assert!(metrics.contains(&format!("\n{family}")), "{family} missing:\n{metrics}");
    }
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    promtool.stdin.take().unwrap().write_all(metrics.as_bytes()).unwrap();
    let output = promtool.wait_with_output().unwrap();
    let findings = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
    // 0: clean; 3: lint findings only; 1: the text does not parse.
    assert!(
        matches!(output.status.code(), Some(0 | 3)),
        "promtool: {:?}\n{findings}",
        output.status
    );
    for finding in findings.lines() {
        let name = finding.split_whitespace().next().unwrap_or_default();
        assert!(
            ETCD_NAMES_PROMTOOL_FLAGS.contains(&name),
            "promtool flags a name that is not etcd's: {finding}"
        );
    }
}

/// A running Prometheus scraping a cluster's client ports every second, with
/// the mixin's alerts loaded.
struct Prometheus {
    addr: SocketAddr,
    _process: KillOnDrop,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(targets: &[u16]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let rules = dir.path().join("etcd-alerts.yaml");
        std::fs::write(&rules, MIXIN_ALERTS).unwrap();
        let targets: Vec<String> = targets.iter().map(|port| format!("'127.0.0.1:{port}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files: ['{}']\n\
             scrape_configs:\n  - job_name: etcd\n    static_configs:\n      - targets: [{}]\n",
            rules.display(),
            targets.join(", ")
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let process = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus runs");
        let prometheus = Prometheus {
            addr,
            _process: KillOnDrop(process),
            _dir: dir,
        };
        wait_for("Prometheus to be ready", || get(addr, "/-/ready").0 == 200);
        prometheus
    }

    /// An instant query's result vector; panics if the query fails.
    fn query(&self, query: &str) -> Vec<serde_json::Value> {
        let (status, body) = get(self.addr, &format!("/api/v1/query?query={}", percent_encoded(query)));
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{status}: {body}"));
        assert_eq!(answer["status"], "success", "{query}: {body}");
        answer["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// Every loaded rule: (name, expression).
    fn rules(&self) -> Vec<(String, String)> {
        let (_, body) = get(self.addr, "/api/v1/rules");
        let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        answer["data"]["groups"]
            .as_array()
            .expect("groups")
            .iter()
            .flat_map(|group| group["rules"].as_array().cloned().unwrap_or_default())
            .map(|rule| {
                let text = |key: &str| rule[key].as_str().expect("a string").to_string();
                (text("name"), text("query"))
            })
            .collect()
    }

    fn expression_of(&self, alert: &str) -> String {
        let rules = self.rules();
        let (_, expression) = rules
            .iter()
            .find(|(name, _)| name == alert)
            .expect("the alert is loaded");
        expression.clone()
    }
}

/// An HTTP/1.0 GET (Prometheus answers it without chunking): (status, body).
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return (0, String::new());
    };
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut response = String::new();
    if stream.read_to_string(&mut response).is_err() || response.len() < 12 {
        return (0, String::new());
    }
    let status = response[9..12].parse().unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_string());
    (status, body.unwrap_or_default())
}

fn percent_encoded(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (byte as char).to_string(),
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// Waits up to PROMETHEUS_WAIT for `done`.
fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PROMETHEUS_WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "waited {PROMETHEUS_WAIT:?} for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The series selectors (`name{...}`) an expression reads.
fn selectors(expression: &str) -> Vec<String> {
    let bytes = expression.as_bytes();
    let mut found = Vec::new();
    let mut start = None;
    for (at, &byte) in bytes.iter().enumerate() {
        let name_byte = byte.is_ascii_alphanumeric() || byte == b'_' || byte == b':';
        match (start, name_byte) {
            (None, true) => start = Some(at),
            (Some(from), false) => {
                start = None;
                if byte == b'{' && !bytes[from].is_ascii_digit() {
                    let end = expression[at..].find('}').expect("a closed selector") + at;
                    found.push(expression[from..=end].to_string());
                }
            }
            _ => {}
        }
    }
    found
}

#[test]
fn selectors_are_found_in_an_expression() {
    let expression = r#"max without (endpoint) (sum(rate(a_total{job=~".*etcd.*"}[120s])) or up{job="x"} == bool 0)"#;
    assert_eq!(selectors(expression), [r#"a_total{job=~".*etcd.*"}"#, r#"up{job="x"}"#]);
}

#[test]
fn the_etcd_mixins_alerts_read_series_a_cluster_has_and_fire_for_stopped_members() {
    if !installed("prometheus") {
        return;
    }
    let mut cluster = Cluster::start(3, &["--metrics", "extensive"]);
    let ports: Vec<u16> = cluster.members.iter().map(|member| member.client_port).collect();
    for index in 0..3 {
        etcdctl(&cluster.endpoint(index), &["put", &format!("k{index}"), "v"]);
    }
    let prometheus = Prometheus::start(&ports);
    // Two scrapes of every member: rates have two points.
    wait_for("two scrapes of each member", || {
        prometheus.query(r#"count_over_time(up{job="etcd"}[1m]) >= 2"#).len() == 3
    });
    let rules = prometheus.rules();
    assert_eq!(rules.len(), 15, "the mixin's alerts: {rules:?}");
    for (alert, expression) in &rules {
        prometheus.query(expression);
        for selector in selectors(expression) {
            assert!(
                !prometheus.query(&format!("count({selector})")).is_empty(),
                "{alert} reads {selector}, which no member has"
            );
        }
    }
    let members_down = prometheus.expression_of("etcdMembersDown");
    let insufficient = prometheus.expression_of("etcdInsufficientMembers");
    let no_leader = prometheus.expression_of("etcdNoLeader");
    assert!(prometheus.query(&members_down).is_empty(), "three members up");
    assert!(prometheus.query(&insufficient).is_empty(), "three members up");
    assert!(prometheus.query(&no_leader).is_empty(), "every member has a leader");

    cluster.kill(2);
    wait_for("members down with one member stopped", || {
        !prometheus.query(&members_down).is_empty()
    });
    assert_eq!(prometheus.query(&members_down)[0]["value"][1], "1", "one member down");
    assert!(prometheus.query(&insufficient).is_empty(), "two of three is a quorum");
    cluster.kill(1);
    wait_for("insufficient members with two stopped", || {
        !prometheus.query(&insufficient).is_empty()
    });
    wait_for("no leader on the last member", || {
        !prometheus.query(&no_leader).is_empty()
    });
}
