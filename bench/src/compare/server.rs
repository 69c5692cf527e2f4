//! The servers `compare` and `ceiling` start: a fresh ringkv, etcd or
//! ringkv-ceiling on free 127.0.0.1 ports, with its own empty data dir, fsync
//! on (etcd's default; ringkv always fsyncs; ringkv-ceiling stores nothing),
//! logging to a file next to the data dir.

use std::fs::File;
use std::future::Future;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use ringkv_proto::etcdserverpb::RangeRequest;
use serde::Serialize;

use super::certs::TlsFiles;
use crate::connect::{connect, Tls};
use crate::workload::kv_client;
use crate::BenchError;

/// Pause between readiness probes.
pub const PROBE_PAUSE: Duration = Duration::from_millis(100);
/// How long one readiness probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a server may take to exit after SIGTERM before it is killed.
pub const RESTART_STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between checks whether a stopping server has exited.
const EXIT_POLL: Duration = Duration::from_millis(20);
/// Pause between probes for the first read after a restart: the restart time
/// is measured to within this.
const RESTART_PROBE_PAUSE: Duration = Duration::from_millis(20);
/// How long one probe after a restart may take (connect and Range).
const RESTART_PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Log lines quoted when a server fails.
pub const LOG_TAIL_LINES: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerKind {
    Ringkv,
    Etcd,
    /// A do-nothing KV endpoint on ringkv's gRPC layer (`ringkv-ceiling`).
    Ceiling,
}

impl ServerKind {
    pub fn name(self) -> &'static str {
        match self {
            ServerKind::Ringkv => "ringkv",
            ServerKind::Etcd => "etcd",
            ServerKind::Ceiling => "ringkv-ceiling",
        }
    }

    /// Flags for a single member with data in `data_dir`, serving clients on
    /// `client_port` (over mutual TLS with `tls`; and, for etcd, peers on
    /// `peer_port`); everything else is the server's default.
    pub fn args(self, data_dir: &Path, client_port: u16, peer_port: u16, tls: Option<&TlsFiles>) -> Vec<String> {
        let client_url = client_url(client_port, tls.is_some());
        if self == ServerKind::Ceiling {
            return vec!["--listen-client-urls".to_string(), client_url];
        }
        let mut args = vec![
            "--data-dir".to_string(),
            data_dir.display().to_string(),
            "--listen-client-urls".to_string(),
            client_url.clone(),
            "--advertise-client-urls".to_string(),
            client_url,
        ];
        if self == ServerKind::Etcd {
            let peer_url = format!("http://127.0.0.1:{peer_port}");
            args.extend([
                "--listen-peer-urls".to_string(),
                peer_url.clone(),
                "--initial-advertise-peer-urls".to_string(),
                peer_url.clone(),
                "--initial-cluster".to_string(),
                format!("default={peer_url}"),
            ]);
        }
        if let Some(tls) = tls {
            args.extend(tls.server_flags());
        }
        args
    }
}

pub fn client_url(port: u16, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://127.0.0.1:{port}")
}

/// A running server; killed when dropped.
pub struct Server {
    kind: ServerKind,
    bin: PathBuf,
    /// Flags and ports of the first start, kept so a restart finds its data
    /// and serves where the clients expect it.
    args: Vec<String>,
    child: Child,
    endpoint: String,
    /// What clients trust and present when the server runs mutual TLS.
    client_tls: Option<Tls>,
    log_path: PathBuf,
}

/// How a server went down for a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// Exited within RESTART_STOP_TIMEOUT of SIGTERM.
    Terminated,
    /// Still running RESTART_STOP_TIMEOUT after SIGTERM, so killed.
    Killed,
}

impl Server {
    /// Starts `bin` with data in `run_dir/data` and its output in
    /// `run_dir/server.log`, serving clients over mutual TLS with `tls`.
    pub fn spawn(kind: ServerKind, bin: &Path, run_dir: &Path, tls: Option<&TlsFiles>) -> Result<Server, BenchError> {
        let client_port = free_port()?;
        let peer_port = free_port()?;
        let args = kind.args(&run_dir.join("data"), client_port, peer_port, tls);
        Server::spawn_with_args(kind, bin, args, client_port, &run_dir.join("server.log"), tls)
    }

    /// Starts `bin args`, which serve clients on `client_port` (over mutual
    /// TLS with `tls`), its output in `log_path`: for a caller that chose the
    /// flags itself (a cluster's member).
    pub fn spawn_with_args(
        kind: ServerKind,
        bin: &Path,
        args: Vec<String>,
        client_port: u16,
        log_path: &Path,
        tls: Option<&TlsFiles>,
    ) -> Result<Server, BenchError> {
        let child = start(kind, bin, &args, log_path)?;
        Ok(Server {
            kind,
            bin: bin.to_path_buf(),
            args,
            child,
            endpoint: client_url(client_port, tls.is_some()),
            client_tls: tls.map(|tls| tls.client().clone()),
            log_path: log_path.to_path_buf(),
        })
    }

    /// Stops the server with SIGTERM (SIGKILL after RESTART_STOP_TIMEOUT) and
    /// starts the same binary with the same flags, data dir and ports; returns
    /// how it went down and when the new process was spawned.
    /// Fails if the server had already exited: a crash is not a restart.
    pub async fn restart(&mut self) -> Result<(Shutdown, Instant), BenchError> {
        if let Some(status) = self.exited() {
            return Err(BenchError::Server(format!(
                "{} had exited before the restart ({status}); {}",
                self.kind.name(),
                self.log_tail()
            )));
        }
        let shutdown = self.terminate().await;
        let spawned = Instant::now();
        self.child = start(self.kind, &self.bin, &self.args, &self.log_path)?;
        Ok((shutdown, spawned))
    }

    async fn terminate(&mut self) -> Shutdown {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pids fit in pid_t");
        // SAFETY: kill only sends a signal; `pid` is our own child, not yet reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + RESTART_STOP_TIMEOUT;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return Shutdown::Terminated;
            }
            tokio::time::sleep(EXIT_POLL).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        Shutdown::Killed
    }

    /// The server's process id, for /proc.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// What a client of this server trusts and presents (None: plain text).
    pub fn client_tls(&self) -> Option<&Tls> {
        self.client_tls.as_ref()
    }

    /// Waits until a linearizable Range succeeds (so a leader is elected),
    /// at most `timeout`; returns how long that took.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<Duration, BenchError> {
        let start = Instant::now();
        let served = self
            .wait_until(timeout, PROBE_PAUSE, "serve", |endpoint, tls| async move {
                probe(&endpoint, tls.as_ref()).await
            })
            .await?;
        Ok(served.duration_since(start))
    }

    /// Whether one linearizable Range through this server succeeds now.
    pub async fn answers_linearizable_read(&self) -> bool {
        probe(&self.endpoint, self.client_tls.as_ref()).await
    }

    /// Waits until a serializable Range of `key` returns it (the server has
    /// loaded its data and serves it), probing every RESTART_PROBE_PAUSE, at
    /// most `timeout`; returns when the first such reply came.
    pub async fn wait_serves_key(&mut self, key: &[u8], timeout: Duration) -> Result<Instant, BenchError> {
        let what = format!("serve key {:?}", String::from_utf8_lossy(key));
        self.wait_until(timeout, RESTART_PROBE_PAUSE, &what, |endpoint, tls| {
            let request = RangeRequest {
                key: key.to_vec(),
                serializable: true,
                ..Default::default()
            };
            async move {
                match tokio::time::timeout(RESTART_PROBE_TIMEOUT, range_once(&endpoint, tls.as_ref(), request)).await {
                    Ok(Some(kvs)) => {
                        assert!(kvs <= 1, "a Range of one key returns at most one kv");
                        kvs == 1
                    }
                    _ => false,
                }
            }
        })
        .await
    }

    /// Calls `serves` with the endpoint and its TLS every `pause` until it answers true
    /// (returns when it did), the server exits, or `timeout` has passed;
    /// `what` says in the error what the server did not do in time.
    async fn wait_until<Fut: Future<Output = bool>>(
        &mut self,
        timeout: Duration,
        pause: Duration,
        what: &str,
        mut serves: impl FnMut(String, Option<Tls>) -> Fut,
    ) -> Result<Instant, BenchError> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.exited() {
                return Err(BenchError::Server(format!(
                    "{} exited before serving ({status}); {}",
                    self.kind.name(),
                    self.log_tail()
                )));
            }
            if serves(self.endpoint.clone(), self.client_tls.clone()).await {
                return Ok(Instant::now());
            }
            if start.elapsed() >= timeout {
                return Err(BenchError::Server(format!(
                    "{} did not {what} within {}; {}",
                    self.kind.name(),
                    humantime::format_duration(timeout),
                    self.log_tail()
                )));
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// The exit status if the server has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Kills the server; returns its exit status if it had exited on its own.
    pub fn stop(mut self) -> Option<ExitStatus> {
        let exited = self.exited();
        let _ = self.child.kill();
        let _ = self.child.wait();
        exited
    }

    /// The last lines of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
        format!("last lines of {}:\n{tail}", self.log_path.display())
    }
}

/// Spawns `bin args`, appending its output to `log_path`.
fn start(kind: ServerKind, bin: &Path, args: &[String], log_path: &Path) -> Result<Child, BenchError> {
    let log = File::options()
        .create(true)
        .append(true)
        .open(log_path)
        .map_err(|e| server_error(kind, &format!("opening {log_path:?}"), e))?;
    let log_err = log.try_clone().map_err(|e| server_error(kind, "log file", e))?;
    let mut command = Command::new(bin);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        // Ctrl-C in the terminal reaches ringkv-bench only, which then
        // finishes the run and stops the servers itself.
        .process_group(0);
    // Both servers run with their defaults, not whatever ETCD_* variables
    // the operator's shell has.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("ETCD_") {
            command.env_remove(name);
        }
    }
    // SAFETY: prctl is async-signal-safe; the closure allocates nothing.
    // The server is killed if ringkv-bench dies without cleaning up.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
        .spawn()
        .map_err(|e| server_error(kind, &format!("starting {}", bin.display()), e))
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How many kvs one Range on a fresh connection returned; None if it failed.
async fn range_once(endpoint: &str, tls: Option<&Tls>, request: RangeRequest) -> Option<usize> {
    let channel = connect(endpoint, RESTART_PROBE_TIMEOUT, tls).await.ok()?;
    let reply = kv_client(channel).range(request).await.ok()?;
    Some(reply.into_inner().kvs.len())
}

async fn probe(endpoint: &str, tls: Option<&Tls>) -> bool {
    let Ok(channel) = connect(endpoint, PROBE_TIMEOUT, tls).await else {
        return false;
    };
    let mut kv = kv_client(channel);
    let request = RangeRequest {
        key: b"ringkv-bench-ready".to_vec(),
        ..Default::default()
    };
    kv.range(request).await.is_ok()
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> Result<u16, BenchError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|e| BenchError::Server(format!("no free port on 127.0.0.1: {e}")))
}

fn server_error(kind: ServerKind, what: &str, error: std::io::Error) -> BenchError {
    BenchError::Server(format!("{}: {what}: {error}", kind.name()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_gets_a_single_member_cluster_on_its_own_peer_port() {
        let args = ServerKind::Etcd.args(Path::new("/d"), 1000, 1001, None).join(" ");
        assert_eq!(
            args,
            "--data-dir /d --listen-client-urls http://127.0.0.1:1000 --advertise-client-urls http://127.0.0.1:1000 \
             --listen-peer-urls http://127.0.0.1:1001 --initial-advertise-peer-urls http://127.0.0.1:1001 \
             --initial-cluster default=http://127.0.0.1:1001"
        );
    }

    #[test]
    fn ringkv_gets_only_data_dir_and_client_url() {
        let args = ServerKind::Ringkv.args(Path::new("/d"), 1000, 1001, None).join(" ");
        assert_eq!(
            args,
            "--data-dir /d --listen-client-urls http://127.0.0.1:1000 --advertise-client-urls http://127.0.0.1:1000"
        );
    }

    #[test]
    fn the_ceiling_gets_only_its_client_url() {
        let args = ServerKind::Ceiling.args(Path::new("/d"), 1000, 1001, None).join(" ");
        assert_eq!(args, "--listen-client-urls http://127.0.0.1:1000");
    }

    #[test]
    fn no_flag_turns_fsync_off() {
        for kind in [ServerKind::Ringkv, ServerKind::Etcd] {
            let args = kind.args(Path::new("/d"), 1, 2, None);
            assert!(
                !args.iter().any(|a| a.contains("unsafe") || a.contains("fsync")),
                "{args:?}"
            );
        }
    }

    #[test]
    fn with_tls_both_servers_get_https_urls_and_the_same_certificate_flags() {
        let dir = tempfile::tempdir().unwrap();
        let tls = TlsFiles::make(dir.path()).unwrap();
        for kind in [ServerKind::Ringkv, ServerKind::Etcd] {
            let args = kind.args(Path::new("/d"), 1000, 1001, Some(&tls));
            let joined = args.join(" ");
            assert!(
                joined.contains(
                    "--listen-client-urls https://127.0.0.1:1000 --advertise-client-urls https://127.0.0.1:1000"
                ),
                "{joined}"
            );
            assert!(args.ends_with(&tls.server_flags()), "{joined}");
        }
    }
}
