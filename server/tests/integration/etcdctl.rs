//! etcdctl end to end: the same etcdctl command lines run against real etcd and
//! against ringkv must print the same output and exit the same way. Also checks
//! the outputs themselves, so a bug both servers shared would still show.
//! (Debian's etcdctl is 3.4, which has no `get --count-only`; count-only reads are
//! covered by the differential gRPC test. Its `lease("k")` txn compare panics in
//! etcdctl itself, so lease compares are covered there too.)

use std::process::{Command, Stdio};

use crate::support::{self, EtcdctlRun as Run};

/// One etcdctl run ([`support::etcdctl_run`]), the raft term, which may
/// legitimately differ, masked in JSON output.
fn etcdctl(endpoint: &str, args: &[&str], stdin: Option<&str>) -> Run {
    let run = support::etcdctl_run(endpoint, "10s", args, stdin);
    Run {
        stdout: mask_raft_term(&run.stdout),
        ..run
    }
}

/// Masks the raft term in JSON (`"raft_term":2`) and fields (`"RaftTerm" : 2`) output.
fn mask_raft_term(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let found = ["\"raft_term\":", "\"RaftTerm\" : "]
            .iter()
            .filter_map(|label| rest.find(label).map(|at| at + label.len()))
            .min();
        let Some(value_start) = found else {
            break;
        };
        out.push_str(&rest[..value_start]);
        out.push('T');
        rest = rest[value_start..].trim_start_matches(|c: char| c.is_ascii_digit());
    }
    out.push_str(rest);
    out
}

/// A transaction for `etcdctl txn -i`: compares, blank line, success ops, blank
/// line, failure ops, blank line.
const TXN_SWAP: &str = "mod(\"foo\") > \"0\"\nvalue(\"foo\") = \"bar\"\n\nput foo baz\nget foo\n\nput foo nope\n\n";
const TXN_TARGETS: &str =
    "create(\"foo\") > \"0\"\nmod(\"foo\") < \"1000\"\nver(\"nothing\") = \"0\"\n\nget foo --prefix --limit=1\ndel fop\n\nput x y\n\n";
const TXN_FAILS: &str = "version(\"foo\") = \"99\"\n\nput foo never\n\nget foo/a\ndel fop\n\n";

/// The scenario: every command with the flags the issue names.
fn scenario() -> Vec<(Vec<&'static str>, Option<&'static str>)> {
    let commands: Vec<(&[&str], Option<&str>)> = vec![
        (&["put", "foo", "bar"], None),
        (&["put", "foo/a", "1"], None),
        (&["put", "foo/b", "2"], None),
        (&["put", "fop", "x"], None),
        (&["put", "foo/a", "11", "--prev-kv"], None),
        (&["get", "foo"], None),
        (&["get", "foo", "--prefix"], None),
        (&["get", "foo", "--prefix", "--keys-only"], None),
        (&["get", "foo", "--prefix", "--limit", "2"], None),
        (
            &["get", "foo", "--prefix", "--sort-by", "MODIFY", "--order", "DESCEND"],
            None,
        ),
        (&["get", "foo", "--prefix", "--sort-by", "VALUE"], None),
        (&["get", "foo", "--prefix", "--consistency", "s"], None),
        (&["get", "foo/a", "--rev", "3"], None),
        (&["get", "f", "--from-key"], None),
        (&["get", "foo", "-w", "json"], None),
        (&["txn", "-i"], Some(TXN_SWAP)),
        (&["txn", "-i"], Some(TXN_FAILS)),
        (&["del", "foo", "--prefix", "--prev-kv"], None),
        (&["del", "nothing-here"], None),
        (&["get", "", "--prefix", "--keys-only"], None),
        (&["compaction", "4"], None),
        (&["get", "foo/a", "--rev", "3"], None),
        (&["get", "foo/a", "--rev", "999"], None),
        (&["compaction", "2"], None),
        (&["put", "k", "v", "--lease", "1234"], None),
        // Output formats, the remaining put flags, stdin values, txn targets.
        (&["put", "foo", "again", "-w", "json"], None),
        (&["put", "foo", "--ignore-value", "--prev-kv"], None),
        (&["put", "foo", "kept-lease", "--ignore-lease"], None),
        (&["put", "missing", "--ignore-value"], None),
        (&["put", "from-stdin"], Some("value from stdin\n")),
        (&["get", "from-stdin", "--print-value-only", "--hex"], None),
        (&["get", "foo", "-w", "fields"], None),
        (&["get", "", "--from-key", "--limit", "1", "-w", "json"], None),
        (
            &[
                "get",
                "",
                "--from-key",
                "--sort-by",
                "VERSION",
                "--order",
                "DESCEND",
                "--keys-only",
            ],
            None,
        ),
        (&["get", "foo", "--rev", "0", "--consistency", "s"], None),
        (&["txn", "-i", "-w", "json"], Some(TXN_TARGETS)),
        (&["del", "f", "--from-key", "--prev-kv", "-w", "json"], None),
        // Compaction: of the future, physical, and what it leaves readable.
        (&["compaction", "99999"], None),
        (&["put", "after", "1"], None),
        (&["put", "after", "2"], None),
        (&["compaction", "16", "--physical"], None),
        (&["get", "after", "--rev", "15"], None),
        (&["get", "after", "--rev", "16"], None),
        (&["compaction", "16", "--physical"], None),
    ];
    commands
        .into_iter()
        .map(|(args, input)| (args.to_vec(), input))
        .collect()
}

#[test]
fn etcdctl_sees_the_same_answers_from_ringkv_as_from_etcd() {
    let etcd = support::Etcd::start();
    let data_dir = tempfile::tempdir().unwrap();
    let ringkv = support::Ringkv::start(data_dir.path(), &[]);
    let mut runs = Vec::new();
    for (args, input) in scenario() {
        let expected = etcdctl(&etcd.endpoint(), &args, input);
        let actual = etcdctl(&ringkv.endpoint(), &args, input);
        assert_eq!(actual, expected, "etcdctl {args:?}: ringkv (left) vs etcd (right)");
        runs.push((args, actual));
    }
    // The outputs themselves, for the cases the issue names.
    let output = |wanted: &[&str]| {
        &runs
            .iter()
            .find(|(args, _)| args.as_slice() == wanted)
            .expect("command ran")
            .1
    };
    assert_eq!(output(&["put", "foo", "bar"]).stdout, "OK\n");
    assert_eq!(
        output(&["get", "foo", "--prefix", "--keys-only"]).stdout,
        "foo\n\nfoo/a\n\nfoo/b\n\n"
    );
    assert!(output(&["txn", "-i"]).stdout.ends_with("SUCCESS\n\nOK\n\nfoo\nbaz\n"));
    let compacted = output(&["get", "foo/a", "--rev", "3"]);
    assert_eq!(compacted.status, 0, "before compaction the old revision reads");
    let after = runs
        .iter()
        .filter(|(args, _)| args.as_slice() == ["get", "foo/a", "--rev", "3"])
        .nth(1)
        .expect("second read at revision 3")
        .1
        .stderr
        .clone();
    assert!(
        after.contains("etcdserver: mvcc: required revision has been compacted"),
        "{after}"
    );
    assert!(output(&["put", "k", "v", "--lease", "1234"])
        .stderr
        .contains("etcdserver: requested lease not found"));
    assert_eq!(
        output(&["put", "foo", "--ignore-value", "--prev-kv"]).stdout,
        "OK\nfoo\nagain\n"
    );
    assert_eq!(
        output(&["put", "missing", "--ignore-value"]).stderr,
        "Error: etcdserver: key not found"
    );
    assert!(output(&["get", "", "--from-key", "--limit", "1", "-w", "json"])
        .stdout
        .contains("\"more\":true,\"count\":2"));
    assert!(output(&["txn", "-i", "-w", "json"])
        .stdout
        .contains("\"succeeded\":true"));
    assert_eq!(
        output(&["compaction", "16", "--physical"]).stdout,
        "compacted revision 16\n"
    );
    assert_eq!(
        output(&["get", "after", "--rev", "15"]).stderr,
        "Error: etcdserver: mvcc: required revision has been compacted"
    );
    assert_eq!(output(&["get", "after", "--rev", "16"]).stdout, "after\n2\n");
}

/// Lease ids are the server's choice (etcdctl 3.4 cannot choose one), and the
/// remaining TTL and the order of attached keys (a Go map in etcd) may differ:
/// masks all three.
fn mask_lease(text: &str, id_hex: &str) -> String {
    let text = text.replace(id_hex, "ID");
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(start) = rest.find("remaining(") {
        let after = &rest[start + "remaining(".len()..];
        out.push_str(&rest[..start]);
        out.push_str("remaining(R");
        rest = after.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    out.push_str(rest);
    if let (Some(start), Some(end)) = (out.find("attached keys(["), out.rfind("])")) {
        let inner = start + "attached keys([".len();
        let mut keys: Vec<&str> = out[inner..end].split(' ').collect();
        keys.sort_unstable();
        out = format!("{}{}{}", &out[..inner], keys.join(" "), &out[end..]);
    }
    out
}

/// The id in `lease 694d77aa9e38260f granted with TTL(60s)`.
fn granted_id(run: &Run) -> String {
    let id = run
        .stdout
        .strip_prefix("lease ")
        .and_then(|rest| rest.split(' ').next());
    id.unwrap_or_else(|| panic!("not a grant: {run:?}")).to_string()
}

#[test]
fn etcdctl_lease_commands_see_the_same_answers_from_ringkv_as_from_etcd() {
    let etcd = support::Etcd::start();
    let data_dir = tempfile::tempdir().unwrap();
    let ringkv = support::Ringkv::start(data_dir.path(), &[]);
    let servers = [etcd.endpoint(), ringkv.endpoint()];
    let ids: Vec<String> = servers
        .iter()
        .map(|endpoint| granted_id(&etcdctl(endpoint, &["lease", "grant", "60"], None)))
        .collect();
    let scenario: Vec<Vec<&str>> = vec![
        vec!["put", "k1", "v1", "--lease", "ID"],
        vec!["put", "k2", "v2", "--lease", "ID"],
        vec!["put", "other", "v"],
        vec!["lease", "keep-alive", "--once", "ID"],
        vec!["lease", "timetolive", "ID", "--keys"],
        vec!["lease", "timetolive", "ID"],
        vec!["lease", "list"],
        vec!["lease", "revoke", "ID"],
        vec!["get", "", "--from-key"],
        vec!["lease", "timetolive", "ID", "--keys"],
        vec!["lease", "keep-alive", "--once", "ID"],
        vec!["lease", "revoke", "ID"],
        vec!["lease", "list"],
        vec!["lease", "grant", "1"],
    ];
    let mut runs = Vec::new();
    for args in scenario {
        let mut outputs = Vec::new();
        for (endpoint, id) in servers.iter().zip(&ids) {
            let args: Vec<&str> = args
                .iter()
                .map(|&arg| if arg == "ID" { id.as_str() } else { arg })
                .collect();
            let mut run = etcdctl(endpoint, &args, None);
            if args[..2] == ["lease", "grant"] {
                let new_id = granted_id(&run);
                run.stdout = run.stdout.replace(&new_id, "NEW");
            }
            run.stdout = mask_lease(&run.stdout, id);
            run.stderr = mask_lease(&run.stderr, id);
            outputs.push(run);
        }
        let actual = outputs.pop().unwrap();
        let expected = outputs.pop().unwrap();
        assert_eq!(actual, expected, "etcdctl {args:?}: ringkv (left) vs etcd (right)");
        runs.push((args, actual));
    }
    let output = |index: usize| &runs[index].1;
    assert_eq!(output(3).stdout, "lease ID keepalived with TTL(60)\n");
    assert_eq!(
        output(4).stdout,
        "lease ID granted with TTL(60s), remaining(Rs), attached keys([k1 k2])\n"
    );
    assert_eq!(output(6).stdout, "found 1 leases\nID\n");
    assert_eq!(output(7).stdout, "lease ID revoked\n");
    assert_eq!(output(8).stdout, "other\nv\n");
    assert_eq!(
        output(11).stderr,
        "Error: failed to revoke lease (etcdserver: requested lease not found)"
    );
    assert_eq!(output(13).stdout, "lease NEW granted with TTL(2s)\n");
}

/// Runs `etcdctl watch` until its stdout has `lines` lines (or a bounded wait
/// passes), then stops it; returns what it printed.
fn etcdctl_watch(endpoint: &str, args: &[&str], lines: usize) -> String {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoint, "watch"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcdctl is installed");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while out.len() < lines {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => out.push(line),
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    out.join("\n")
}

#[test]
fn etcdctl_watch_replays_the_same_history_from_ringkv_as_from_etcd() {
    let etcd = support::Etcd::start();
    let data_dir = tempfile::tempdir().unwrap();
    let ringkv = support::Ringkv::start(data_dir.path(), &[]);
    let writes: &[&[&str]] = &[
        &["put", "w/a", "1"],
        &["put", "w/b", "2"],
        &["put", "w/a", "3"],
        &["del", "w/b"],
        &["put", "x", "outside"],
        &["del", "w/", "--prefix"],
    ];
    for endpoint in [etcd.endpoint(), ringkv.endpoint()] {
        for args in writes {
            assert_eq!(etcdctl(&endpoint, args, None).status, 0);
        }
    }
    // Each event prints its type, then (with --prev-kv, when there is one) the
    // previous key and value, then the key and value: 21 lines for these 5 events.
    let args = ["--prefix", "--prev-kv", "--rev", "2", "w/"];
    let expected = etcdctl_watch(&etcd.endpoint(), &args, 21);
    let actual = etcdctl_watch(&ringkv.endpoint(), &args, 21);
    assert_eq!(actual, expected, "ringkv (left) vs etcd (right)");
    assert_eq!(
        expected,
        "PUT\nw/a\n1\nPUT\nw/b\n2\nPUT\nw/a\n1\nw/a\n3\nDELETE\nw/b\n2\nw/b\n\nDELETE\nw/a\n3\nw/a\n"
    );
}

/// The JSON `value` with every number and string replaced by its kind: what two
/// servers' answers share when sizes, indexes and versions legitimately differ.
fn json_shape(value: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Number(_) => Value::from("number"),
        Value::String(_) => Value::from("string"),
        Value::Array(items) => items.iter().map(json_shape).collect(),
        Value::Object(fields) => fields
            .iter()
            .map(|(name, field)| (name.clone(), json_shape(field)))
            .collect(),
        other => other.clone(),
    }
}

/// `took = 1.62ms` in `endpoint health` output becomes `took = D`.
fn mask_took(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("took = ") {
            Some(at) => format!("{}took = D", &line[..at]),
            None => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// etcdctl 3.4's `endpoint status` and `endpoint hashkv` dial the endpoint exactly
/// as written, so grpc-go sends `http://127.0.0.1:PORT`, scheme included, as the
/// HTTP/2 `:authority`. etcd accepts that; so must ringkv (every endpoint here is
/// written with `http://`). `endpoint health` dials through a full client, which
/// strips the scheme; it is here because it is the third per-endpoint command.
#[test]
fn etcdctl_endpoint_commands_work_with_an_endpoint_written_as_a_url() {
    let etcd = support::Etcd::start();
    let data_dir = tempfile::tempdir().unwrap();
    let ringkv = support::Ringkv::start(data_dir.path(), &[]);
    let servers = [etcd.endpoint(), ringkv.endpoint()];
    for endpoint in &servers {
        assert!(endpoint.starts_with("http://"), "{endpoint}");
        for args in [["put", "a", "1"], ["put", "b", "2"], ["put", "a", "3"]] {
            assert_eq!(etcdctl(endpoint, &args, None).status, 0);
        }
    }
    let scenario: [&[&str]; 4] = [
        &["endpoint", "status", "-w", "json"],
        &["endpoint", "health"],
        &["endpoint", "hashkv"],
        &["endpoint", "hashkv", "-w", "json"],
    ];
    for args in scenario {
        let runs: Vec<Run> = servers
            .iter()
            .map(|endpoint| {
                let run = etcdctl(endpoint, args, None);
                assert_eq!(run.status, 0, "etcdctl {args:?} against {endpoint}: {run:?}");
                Run {
                    stdout: mask_took(&run.stdout.replace(endpoint.as_str(), "ENDPOINT")),
                    stderr: mask_took(&run.stderr.replace(endpoint.as_str(), "ENDPOINT")),
                    ..run
                }
            })
            .collect();
        let (expected, actual) = (&runs[0], &runs[1]);
        if args[1] == "status" {
            // Versions, sizes and raft indexes differ; the fields and their kinds do not.
            // `etcdctl` masked the raft term as `T`; a number again, for the parser.
            let status = |run: &Run| {
                let json = run.stdout.replace("\"raft_term\":T", "\"raft_term\":0");
                serde_json::from_str::<serde_json::Value>(&json).unwrap()
            };
            let (expected, actual) = (status(expected), status(actual));
            assert_eq!(
                json_shape(&actual),
                json_shape(&expected),
                "ringkv (left) vs etcd (right)"
            );
            let actual = &actual[0];
            assert_eq!(actual["Endpoint"], "ENDPOINT");
            assert_eq!(actual["Status"]["version"], "3.5.16");
            assert_eq!(actual["Status"]["leader"], actual["Status"]["header"]["member_id"]);
            assert_eq!(actual["Status"]["header"]["revision"], 4);
        } else {
            assert_eq!(actual, expected, "etcdctl {args:?}: ringkv (left) vs etcd (right)");
        }
    }
}

/// `etcdctl check perf --load=s`: one minute of 1 KiB puts under random keys of
/// its prefix, 150 a second from 50 clients, then a delete of the prefix. It
/// passes (exit 0) only with no failed request and etcdctl's own bounds met:
/// over 90% of the target rate, slowest put under 500 ms, deviation under 100 ms.
/// Those bounds make it a timing check by etcdctl's design, and timings do not
/// belong in the suite (a loaded CI machine would fail it, not ringkv): run it
/// with `cargo test --release -p ringkv-server --test integration etcdctl:: -- --ignored`.
#[test]
#[ignore = "a timing check by etcdctl's design; run with --ignored"]
fn etcdctl_check_perf_small_load_passes_and_cleans_up_its_prefix() {
    let data_dir = tempfile::tempdir().unwrap();
    let ringkv = support::Ringkv::start(data_dir.path(), &[]);
    let run = etcdctl(&ringkv.endpoint(), &["check", "perf", "--load=s"], None);
    let report: Vec<&str> = run
        .stdout
        .lines()
        .filter(|line| line.starts_with("PASS") || line.starts_with("FAIL") || line.contains("too"))
        .collect();
    assert_eq!(run.status, 0, "{report:?}\n{}", run.stderr);
    for check in [
        "PASS: Throughput is ",
        "PASS: Slowest request took ",
        "PASS: Stddev is ",
    ] {
        assert!(report.iter().any(|line| line.starts_with(check)), "{check}: {report:?}");
    }
    assert_eq!(report.last(), Some(&"PASS"), "{report:?}");
    let left = etcdctl(
        &ringkv.endpoint(),
        &["get", "/etcdctl-check-perf/", "--prefix", "--keys-only"],
        None,
    );
    assert_eq!((left.status, left.stdout.as_str()), (0, ""), "the prefix is empty");
}
