//! Test support: real `ringkv` and `etcd` processes on 127.0.0.1, and clients.
//!
//! Every wait here is bounded; processes are killed when their handle drops.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

pub mod cluster;
pub use ringkv_server::sim::lincheck;
pub mod proxy;

use ringkv_proto::etcdserverpb::kv_client::KvClient;
use tonic::transport::Channel;

/// How long a server may take to start serving.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The log a server wrote so far, kept for failure messages.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    pub fn text(&self) -> String {
        self.0.lock().unwrap().join("\n")
    }
}

/// A `ringkv` process serving one client URL.
pub struct Ringkv {
    child: Child,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    pub log: Log,
}

impl Ringkv {
    /// Starts `ringkv` on a fresh port with `data_dir`, plus any extra flags, and
    /// waits until it serves clients.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Ringkv {
        // Not port 0: the kernel would pick from the ephemeral range, and a
        // test that restarts the server on its old port would race other
        // tests' connections for it (see `free_port`).
        let client_url = format!("http://127.0.0.1:{}", free_port());
        let mut args: Vec<String> = vec!["--listen-client-urls".to_string(), client_url];
        args.extend(extra.iter().map(|arg| arg.to_string()));
        Ringkv::spawn(data_dir, &args).ready()
    }

    /// Starts `ringkv` with `data_dir` and exactly `args` otherwise; the caller
    /// waits for it with [`Starting::ready`] (members of a cluster start together).
    pub fn spawn(data_dir: &Path, args: &[String]) -> Starting {
        Ringkv::spawn_with_env(data_dir, args, &[])
    }

    /// `spawn` with extra environment variables (the fault suite's hooks).
    pub fn spawn_with_env(data_dir: &Path, args: &[String], env: &[(&str, &Path)]) -> Starting {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ringkv"));
        command
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("ringkv starts");
        let (addr_tx, addr_rx) = mpsc::channel();
        let log = Log::default();
        let lines = BufReader::new(child.stderr.take().expect("stderr is piped"));
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in lines.lines().map_while(Result::ok) {
                if let Some(rest) = line.split("serving client requests on ").nth(1) {
                    // Text lines end the URL with a space, zap's JSON with a quote.
                    let url = rest
                        .split(|c: char| c.is_whitespace() || c == '"')
                        .next()
                        .unwrap_or_default();
                    let addr = url
                        .trim_start_matches("http://")
                        .trim_start_matches("https://")
                        .to_string();
                    let _ = addr_tx.send(addr);
                }
                kept.0.lock().unwrap().push(line);
            }
        });
        Starting {
            child: Some(child),
            addr_rx,
            data_dir: data_dir.to_path_buf(),
            log,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// SIGKILL, as a crash: nothing gets a chance to flush.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's exit status if it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("wait on ringkv")
    }

    /// Waits up to `within` for the process to exit by itself.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A `ringkv` process that has not said it serves clients yet.
pub struct Starting {
    child: Option<Child>,
    addr_rx: mpsc::Receiver<String>,
    data_dir: PathBuf,
    pub log: Log,
}

impl Starting {
    /// Waits (bounded) until the process serves clients.
    pub fn ready(self) -> Ringkv {
        self.try_ready().unwrap_or_else(|failure| panic!("{failure}"))
    }

    /// `ready`, or (the process killed) what it logged and its threads.
    pub fn try_ready(mut self) -> Result<Ringkv, String> {
        let mut child = self.child.take().expect("ready is called once");
        let addr = match self.addr_rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => addr.parse().expect("a socket address in the ready line"),
            Err(_) => {
                let threads = backtraces(child.id());
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("ringkv did not become ready:\n{}\n{threads}", self.log.text()));
            }
        };
        Ok(Ringkv {
            child,
            addr,
            data_dir: self.data_dir.clone(),
            log: self.log.clone(),
        })
    }

    /// What the process logged so far.
    pub fn log_text(&self) -> String {
        self.log.text()
    }
}

/// Every thread's stack of process `pid`, from gdb if this machine has it: what
/// a server that did not become ready was doing (a stall seen only under load).
fn backtraces(pid: u32) -> String {
    let output = Command::new("timeout")
        .args([
            "60",
            "gdb",
            "-p",
            &pid.to_string(),
            "-batch",
            "-ex",
            "thread apply all bt 40",
        ])
        .stdin(Stdio::null())
        .output();
    match output {
        Ok(output) if output.status.success() => format!("threads:\n{}", String::from_utf8_lossy(&output.stdout)),
        Ok(output) => format!(
            "no backtraces (gdb: {})",
            String::from_utf8_lossy(&output.stderr).trim()
        ),
        Err(error) => format!("no backtraces (gdb: {error})"),
    }
}

impl Starting {
    /// Waits (bounded) for a process expected to fail before it serves: its
    /// exit status and what it logged.
    pub fn failed(mut self, within: Duration) -> (std::process::ExitStatus, String) {
        let mut child = self.child.take().expect("failed is called once");
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait on ringkv") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("ringkv did not exit:\n{}", self.log.text());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // The log reader gets the last lines once the pipe closes.
        std::thread::sleep(Duration::from_millis(100));
        (status, self.log.text())
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Ringkv {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One etcdctl run: its exit status (-1 if a signal ended it), stdout, and
/// stderr without etcdctl's JSON client log lines (timestamps, ports).
#[derive(Debug, PartialEq)]
pub struct EtcdctlRun {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs etcdctl (API v3) against `endpoint` with `--command-timeout
/// command_timeout`, `stdin` piped in.
pub fn etcdctl_run(endpoint: &str, command_timeout: &str, args: &[&str], stdin: Option<&str>) -> EtcdctlRun {
    let mut child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoint, "--command-timeout", command_timeout])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("etcdctl is installed (Debian package etcd-client); .ci/run installs it");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.unwrap_or("").as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    EtcdctlRun {
        status: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr)
            .lines()
            .filter(|line| !line.starts_with('{'))
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

/// [`etcdctl_run`]'s success and its stdout followed by its stderr.
pub fn etcdctl_output(endpoint: &str, command_timeout: &str, args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let run = etcdctl_run(endpoint, command_timeout, args, stdin);
    (run.status == 0, run.stdout + &run.stderr)
}

/// A child process killed (SIGKILL) when dropped, so a failing test leaves none behind.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One HTTP/1.1 GET over a fresh connection: (status code, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("a response, then close");
    let status = response[9..12].parse().expect("a status code");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A free port on 127.0.0.1 (bound and released; the caller binds it next).
///
/// Ports come from below the kernel's ephemeral range, which outgoing
/// connections take their local ports from: a port from that range, released
/// here and bound again by a server (or by a server restarted on its old
/// port), could be taken in between by any test's connection, and clean-clone
/// CI runs failed so. Each test process walks the range from its own offset,
/// never handing out a port twice, and skips ports something else holds.
pub fn free_port() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(usize::MAX);
    let ports = test_ports();
    let span = usize::from(ports.end - ports.start);
    // The first caller picks this process's offset.
    let offset = (std::process::id() as usize).wrapping_mul(7919) % span;
    let _ = NEXT.compare_exchange(usize::MAX, offset, Ordering::Relaxed, Ordering::Relaxed);
    for _ in 0..span {
        let port = ports.start + (NEXT.fetch_add(1, Ordering::Relaxed) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {ports:?}");
}

/// Ports below the ephemeral range (`ip_local_port_range`, 32768-60999 by
/// default), down to 10000.
fn test_ports() -> std::ops::Range<u16> {
    const LOWEST: u16 = 10_000;
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    assert!(
        ephemeral_start >= LOWEST + 1_000,
        "the ephemeral range starts at {ephemeral_start}: no room for test ports below it"
    );
    LOWEST..ephemeral_start
}

/// A real etcd (Debian's `etcd-server`) as the oracle. Its identity flags are
/// etcd's defaults, as ringkv's are, so member and cluster ids match.
pub struct Etcd {
    child: Child,
    pub addr: SocketAddr,
    _data_dir: tempfile::TempDir,
}

impl Etcd {
    pub fn start() -> Etcd {
        Etcd::start_with(&[])
    }

    /// Starts etcd with `extra` flags after the ones every test needs; an
    /// early exit fails with etcd's log.
    pub fn start_with(extra: &[&str]) -> Etcd {
        let data_dir = tempfile::tempdir().expect("temp dir");
        let client_port = free_port();
        let peer_port = free_port();
        let client_url = format!("http://127.0.0.1:{client_port}");
        // Beside the data dir, not in it: etcd wants an empty or absent one.
        let log_path = data_dir.path().with_extension("etcd.log");
        let log = std::fs::File::create(&log_path).expect("etcd log file");
        let mut child = Command::new("etcd")
            .arg("--data-dir")
            .arg(data_dir.path())
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer_port}")])
            .args(["--log-level", "error"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd is installed (Debian package etcd-server); .ci/run installs it");
        let addr: SocketAddr = format!("127.0.0.1:{client_port}").parse().unwrap();
        let deadline = Instant::now() + START_TIMEOUT;
        while std::net::TcpStream::connect(addr).is_err() {
            if let Some(status) = child.try_wait().expect("wait on etcd") {
                let text = std::fs::read_to_string(&log_path).unwrap_or_default();
                let _ = std::fs::remove_file(&log_path);
                panic!("etcd exited before serving: {status}\n{text}");
            }
            assert!(Instant::now() < deadline, "etcd did not start serving");
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_file(&log_path);
        Etcd {
            child,
            addr,
            _data_dir: data_dir,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops etcd as an operator does (SIGTERM: it commits its db and exits)
    /// and waits for it to exit; dropping it instead is a kill -9.
    pub fn stop(mut self) {
        // SAFETY: a signal to the child this struct owns and has not reaped.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) }, 0);
        let deadline = Instant::now() + START_TIMEOUT;
        while self.child.try_wait().expect("wait on etcd").is_none() {
            assert!(Instant::now() < deadline, "etcd did not exit on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A channel to a running member's `endpoint`; its calls give up after 10 s.
pub async fn channel(endpoint: &str) -> Channel {
    Channel::from_shared(endpoint.to_string())
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .expect("connects")
}

/// A Put of `value` at `key`.
pub fn put_request(key: &str, value: &str) -> ringkv_proto::etcdserverpb::PutRequest {
    ringkv_proto::etcdserverpb::PutRequest {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        ..Default::default()
    }
}

/// Linearizable single-key get on `endpoint`: the value, or None if absent.
pub async fn get(endpoint: &str, key: &str) -> Option<Vec<u8>> {
    let mut kv = kv_client(endpoint).await;
    let response = kv
        .range(ringkv_proto::etcdserverpb::RangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        })
        .await
        .expect("linearizable get")
        .into_inner();
    response.kvs.first().map(|kv| kv.value.clone())
}

/// A gRPC KV client for `endpoint`, retrying the connection for a bounded time.
pub async fn kv_client(endpoint: &str) -> KvClient<Channel> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match Channel::from_shared(endpoint.to_string())
            .expect("a valid endpoint")
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .connect()
            .await
        {
            Ok(channel) => return KvClient::new(channel).max_decoding_message_size(64 << 20),
            Err(error) => {
                assert!(Instant::now() < deadline, "cannot connect to {endpoint}: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A gRPC KV client for `endpoint`, or None if it cannot connect right now.
pub async fn kv_client_once(endpoint: &str) -> Option<KvClient<Channel>> {
    let channel = Channel::from_shared(endpoint.to_string())
        .expect("a valid endpoint")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .ok()?;
    Some(KvClient::new(channel).max_decoding_message_size(64 << 20))
}

/// One Watch stream: requests go in through a channel, responses are read with a
/// bounded wait. The call starts at the first read: grpc-go (etcd) sends the
/// response headers only with the first response, so awaiting them before
/// sending a create would wait forever.
pub struct WatchSession {
    requests: tokio::sync::mpsc::Sender<ringkv_proto::etcdserverpb::WatchRequest>,
    client: ringkv_proto::etcdserverpb::watch_client::WatchClient<Channel>,
    queue: Option<tokio::sync::mpsc::Receiver<ringkv_proto::etcdserverpb::WatchRequest>>,
    responses: Option<tonic::Streaming<ringkv_proto::etcdserverpb::WatchResponse>>,
    /// Sends gRPC metadata `hasleader: true` (clientv3's `WithRequireLeader`).
    require_leader: bool,
}

/// How long a watch response may take to arrive before the test fails.
pub const WATCH_RESPONSE_TIMEOUT: Duration = Duration::from_secs(20);

impl WatchSession {
    pub async fn open(endpoint: &str) -> WatchSession {
        use ringkv_proto::etcdserverpb::watch_client::WatchClient;
        let channel = Channel::from_shared(endpoint.to_string())
            .expect("a valid endpoint")
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .expect("connect");
        let client = WatchClient::new(channel).max_decoding_message_size(64 << 20);
        let (requests, queue) = tokio::sync::mpsc::channel(64);
        WatchSession {
            requests,
            client,
            queue: Some(queue),
            responses: None,
            require_leader: false,
        }
    }

    /// A session whose stream requires a leader (`hasleader: true`).
    pub async fn open_requiring_leader(endpoint: &str) -> WatchSession {
        WatchSession {
            require_leader: true,
            ..WatchSession::open(endpoint).await
        }
    }

    /// Starts the call (once); a stream refused at once gives its status.
    async fn start(&mut self) -> Result<(), tonic::Status> {
        if self.responses.is_none() {
            let queue = self.queue.take().expect("the call starts once");
            let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(queue));
            if self.require_leader {
                request.metadata_mut().insert("hasleader", "true".parse().unwrap());
            }
            let call = tokio::time::timeout(WATCH_RESPONSE_TIMEOUT, self.client.watch(request));
            let responses = call.await.expect("the watch call starts in time")?;
            self.responses = Some(responses.into_inner());
        }
        Ok(())
    }

    async fn responses(&mut self) -> &mut tonic::Streaming<ringkv_proto::etcdserverpb::WatchResponse> {
        self.start().await.expect("watch stream");
        self.responses.as_mut().unwrap()
    }

    /// The status the stream ends with, reading past any responses; fails the
    /// test if it has not ended within `wait` or ends without an error.
    pub async fn ended_with(&mut self, wait: Duration) -> tonic::Status {
        let deadline = tokio::time::Instant::now() + wait;
        if let Err(status) = self.start().await {
            return status;
        }
        let responses = self.responses.as_mut().unwrap();
        loop {
            match tokio::time::timeout_at(deadline, responses.message()).await {
                Ok(Ok(Some(_))) => continue,
                Ok(Ok(None)) => panic!("the watch stream ended without an error"),
                Ok(Err(status)) => return status,
                Err(_) => panic!("the watch stream did not end within {wait:?}"),
            }
        }
    }

    pub async fn send(&self, request: ringkv_proto::etcdserverpb::watch_request::RequestUnion) {
        let request = ringkv_proto::etcdserverpb::WatchRequest {
            request_union: Some(request),
        };
        self.requests.send(request).await.expect("the stream is open");
    }

    pub async fn create(&self, create: ringkv_proto::etcdserverpb::WatchCreateRequest) {
        use ringkv_proto::etcdserverpb::watch_request::RequestUnion;
        self.send(RequestUnion::CreateRequest(create)).await;
    }

    /// The next response; fails the test after `WATCH_RESPONSE_TIMEOUT`.
    pub async fn next(&mut self) -> ringkv_proto::etcdserverpb::WatchResponse {
        let responses = self.responses().await;
        match tokio::time::timeout(WATCH_RESPONSE_TIMEOUT, responses.message()).await {
            Ok(Ok(Some(response))) => response,
            Ok(other) => panic!("the watch stream ended: {other:?}"),
            Err(_) => panic!("no watch response within {WATCH_RESPONSE_TIMEOUT:?}"),
        }
    }

    /// The next response if one arrives within `wait` (for "nothing is sent").
    pub async fn next_within(&mut self, wait: Duration) -> Option<ringkv_proto::etcdserverpb::WatchResponse> {
        let responses = self.responses().await;
        match tokio::time::timeout(wait, responses.message()).await {
            Ok(Ok(Some(response))) => Some(response),
            Ok(other) => panic!("the watch stream ended: {other:?}"),
            Err(_) => None,
        }
    }
}

/// etcd's prefix end: increment the last byte that is not 0xff, dropping 0xff bytes after it.
pub fn prefix_end(key: &[u8]) -> Vec<u8> {
    let mut end = key.to_vec();
    while let Some(&last) = end.last() {
        if last < 0xff {
            *end.last_mut().unwrap() += 1;
            return end;
        }
        end.pop();
    }
    vec![0]
}
