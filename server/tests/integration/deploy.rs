//! The operators' files in `deploy/`, checked where a test can check them:
//! the systemd unit by `systemd-analyze verify`; the environment file by
//! starting ringkv with exactly its variables (and every commented one named
//! by a ringkv flag); the kubeadm static pod by comparing its command line
//! with kubeadm's, starting ringkv with it and asking its probes.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;

use clap::CommandFactory;

use crate::support::{free_port, http_get, KillOnDrop, START_TIMEOUT};
use crate::tls::{kubeadm_flags, path, Ca, Pair};

fn deploy_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(name)
}

fn read(name: &str) -> String {
    std::fs::read_to_string(deploy_file(name)).unwrap_or_else(|error| panic!("deploy/{name}: {error}"))
}

/// A started ringkv that said it serves, and what it logged until then.
struct Served {
    _process: KillOnDrop,
    log: String,
}

/// Starts the test build of ringkv with `args` and exactly the environment
/// `env` (nothing inherited), and waits (bounded) until it serves clients.
fn start(args: &[String], env: &[(String, String)]) -> Served {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringkv"))
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(name, value)| (name, value)))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ringkv starts");
    let lines = BufReader::new(child.stderr.take().expect("stderr is piped"));
    let process = KillOnDrop(child);
    let (line_tx, line_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.lines().map_while(Result::ok) {
            if line_tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = std::time::Instant::now() + START_TIMEOUT;
    let mut log = String::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match line_rx.recv_timeout(left) {
            Ok(line) => {
                log.push_str(&line);
                log.push('\n');
                if line.contains("serving client requests on") {
                    return Served { _process: process, log };
                }
            }
            Err(_) => panic!("ringkv did not serve:\n{log}"),
        }
    }
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        eprintln!("skipped: systemd-analyze is not installed (Debian package systemd; .ci/run installs it)");
        return;
    }
    let unit = read("ringkv.service");
    for setting in [
        "Type=exec",
        "ExecStart=/usr/local/bin/ringkv",
        "EnvironmentFile=-/etc/default/ringkv",
        "Restart=on-failure",
        "LimitMEMLOCK=infinity",
        "StateDirectory=ringkv",
    ] {
        assert!(unit.lines().any(|line| line == setting), "no {setting} in the unit");
    }
    // verify wants the binary there: the test build in its place.
    let dir = tempfile::tempdir().unwrap();
    let installed = dir.path().join("ringkv.service");
    let binary = format!("ExecStart={}", env!("CARGO_BIN_EXE_ringkv"));
    std::fs::write(&installed, unit.replace("ExecStart=/usr/local/bin/ringkv", &binary)).unwrap();
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&installed)
        .output()
        .expect("systemd-analyze runs");
    // A setting it cannot parse is only a warning: none is wanted either.
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && stderr.trim().is_empty(), "{stderr}");
}

/// An environment file's `NAME=value` lines, and the names of its
/// commented-out `#NAME=value` lines.
fn environment(text: &str) -> (Vec<(String, String)>, Vec<String>) {
    let mut set = Vec::new();
    let mut commented = Vec::new();
    for line in text.lines() {
        let (is_commented, line) = match line.strip_prefix('#') {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        if !name.starts_with("ETCD_") || name.contains(' ') {
            continue; // prose
        }
        if is_commented {
            commented.push(name.to_string());
        } else {
            set.push((name.to_string(), value.to_string()));
        }
    }
    (set, commented)
}

/// The variables ringkv's flags read.
fn flag_variables() -> BTreeSet<String> {
    ringkv_server::config::Flags::command()
        .get_arguments()
        .filter_map(|argument| argument.get_env())
        .map(|name| name.to_string_lossy().to_string())
        .collect()
}

/// `text` with each of etcd's ports `from` on 127.0.0.1 (or `ip`) moved to `to`.
fn move_ports(text: &str, ports: &[(u16, u16)]) -> String {
    ports.iter().fold(text.to_string(), |text, (from, to)| {
        text.replace(&format!(":{from}"), &format!(":{to}"))
    })
}

#[test]
fn the_environment_file_sets_only_ringkvs_variables_and_starts_a_member_as_written() {
    let (set, commented) = environment(&read("ringkv.env"));
    let read_by_ringkv = flag_variables();
    for name in set.iter().map(|(name, _)| name).chain(&commented) {
        assert!(read_by_ringkv.contains(name), "ringkv reads no {name}");
    }
    assert!(set.len() >= 10 && commented.len() >= 4, "{set:?} {commented:?}");

    // Exactly these variables, its ports and directory swapped for the test's.
    let dir = tempfile::tempdir().unwrap();
    let metrics_port = free_port();
    let ports = [(2379, free_port()), (2380, free_port()), (2381, metrics_port)];
    let env: Vec<(String, String)> = set
        .into_iter()
        .map(|(name, value)| match name.as_str() {
            "ETCD_DATA_DIR" => (name, path(&dir.path().join("default")).to_string()),
            _ => (name, move_ports(&value, &ports)),
        })
        .collect();
    let served = start(&[], &env);
    assert!(
        !served.log.contains(" ignored: "),
        "a variable was ignored:\n{}",
        served.log
    );
    let metrics = format!("127.0.0.1:{metrics_port}").parse().unwrap();
    assert_eq!(http_get(metrics, "/health").0, 200, "{}", served.log);
}

/// The items of the block sequence under the manifest's `command:` key (the
/// container's command line, one plain scalar a line).
fn pod_command(manifest: &str) -> Vec<String> {
    let mut lines = manifest.lines().skip_while(|line| line.trim_start() != "- command:");
    let start = lines.next().expect("a command: list");
    let indent = start.len() - start.trim_start().len() + 2;
    lines
        .map_while(|line| {
            let item = line.strip_prefix(&" ".repeat(indent))?.strip_prefix("- ")?;
            Some(item.to_string())
        })
        .collect()
}

/// Each `httpGet` probe's path and port.
fn probes(manifest: &str) -> Vec<(String, u16)> {
    let lines: Vec<&str> = manifest.lines().map(str::trim).collect();
    let field = |from: usize, name: &str| {
        lines[from..]
            .iter()
            .take(5)
            .find_map(|line| line.strip_prefix(name))
            .map(|value| value.trim().to_string())
            .unwrap_or_else(|| panic!("no {name} in the probe at line {from}"))
    };
    lines
        .iter()
        .enumerate()
        .filter(|(_, line)| **line == "httpGet:")
        .map(|(at, _)| (field(at, "path:"), field(at, "port:").parse().expect("a port")))
        .collect()
}

#[test]
fn the_kubeadm_static_pod_runs_kubeadms_command_line_and_answers_its_probes() {
    let manifest = read("kubeadm/etcd.yaml");
    let command = pod_command(&manifest);
    assert_eq!(command.first().map(String::as_str), Some("ringkv"), "{command:?}");
    // kubeadm's etcd command line as the tls suite knows it, with kubeadm's
    // paths and the manifest's node name and address.
    let pki = Path::new("/etc/kubernetes/pki/etcd");
    let pair = |name: &str| Pair {
        cert: pki.join(format!("{name}.crt")),
        key: pki.join(format!("{name}.key")),
    };
    let kubeadm = kubeadm_flags(
        "node-a",
        "192.168.0.10",
        (2379, 2380, 2381),
        Path::new("/var/lib/etcd"),
        &pair("server"),
        &pair("peer"),
        &pki.join("ca.crt"),
    );
    assert_eq!(command[1..], kubeadm[..]);
    let probes = probes(&manifest);
    assert_eq!(probes.len(), 2, "{probes:?}");

    // The same line with the test's certificates, directory, address and ports.
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    ca.issue("server", "kube-etcd");
    ca.issue("peer", "kube-etcd-peer");
    let metrics_port = free_port();
    let ports = [(2379, free_port()), (2380, free_port()), (2381, metrics_port)];
    let args: Vec<String> = command[1..]
        .iter()
        .map(|arg| {
            let arg = arg
                .replace("/etc/kubernetes/pki/etcd", path(dir.path()))
                .replace("/var/lib/etcd", path(&dir.path().join("data")))
                .replace("192.168.0.10", "127.0.0.2");
            move_ports(&arg, &ports)
        })
        .collect();
    let served = start(&args, &[]);
    assert!(
        !served.log.contains(" ignored: "),
        "a flag was ignored:\n{}",
        served.log
    );
    let metrics = format!("127.0.0.1:{metrics_port}").parse().unwrap();
    for (probe, port) in probes {
        assert_eq!(port, 2381, "{probe} on the metrics port");
        assert_eq!(http_get(metrics, &probe).0, 200, "{probe}: {}", served.log);
    }
}
