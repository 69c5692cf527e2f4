//! Neighbours at start: a second process on the same data dir or address, a
//! data dir holding etcd's (or anyone's) files, and limits no record could
//! hold. Each is refused at once with a message naming what it found, and
//! the member already running keeps serving.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ringkv_proto::etcdserverpb as pb;

use super::{assert_serves, value_at};
use crate::support::{self, free_port, Ringkv};

/// How long a refused start may take to exit.
const REFUSAL: Duration = Duration::from_secs(20);

/// Starts `ringkv` with `data_dir` and `args`, expecting it to exit before it
/// serves: its exit code and what it logged.
fn refused(data_dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    let args: Vec<String> = args.iter().map(|arg| arg.to_string()).collect();
    let (status, log) = Ringkv::spawn(data_dir, &args).failed(REFUSAL);
    (status.code(), log)
}

fn client_url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_the_same_data_dir_exits_at_once_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let first = Ringkv::start(dir.path(), &[]);
    let other_port = client_url(free_port());
    let (code, log) = refused(dir.path(), &["--listen-client-urls", &other_port]);
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("is in use"), "{log}");
    assert!(log.contains(&dir.path().display().to_string()), "{log}");
    assert_serves(&first.endpoint()).await;
}

/// Starts etcd on `client_port` with `data_dir`; its log goes to a file beside it.
fn spawn_etcd(data_dir: &Path, client_port: u16) -> (std::process::Child, std::path::PathBuf) {
    let log_path = data_dir.with_extension("log");
    let log = std::fs::File::create(&log_path).unwrap();
    let url = client_url(client_port);
    let child = Command::new("etcd")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
        .args(["--listen-peer-urls", &client_url(free_port())])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("etcd is installed (Debian package etcd-server)");
    (child, log_path)
}

/// etcd on `client_port` with `data_dir`, once it serves.
fn serving_etcd(data_dir: &Path, client_port: u16) -> support::KillOnDrop {
    let (mut child, log_path) = spawn_etcd(data_dir, client_port);
    let deadline = Instant::now() + support::START_TIMEOUT;
    while std::net::TcpStream::connect(("127.0.0.1", client_port)).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "etcd exited ({status}): {}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "etcd did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    support::KillOnDrop(child)
}

/// What etcd logged on `client_port` with `data_dir`, expecting it to exit.
fn refused_etcd(data_dir: &Path, client_port: u16) -> String {
    let (child, log_path) = spawn_etcd(data_dir, client_port);
    let mut child = support::KillOnDrop(child);
    let deadline = Instant::now() + REFUSAL;
    while child.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "etcd did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::read_to_string(&log_path).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_client_address_fails_at_start_as_etcd_says_it() {
    let dir = tempfile::tempdir().unwrap();
    let first = Ringkv::start(dir.path(), &[]);
    let taken = client_url(first.addr.port());
    let expected = format!(
        "listen tcp 127.0.0.1:{}: bind: address already in use",
        first.addr.port()
    );

    let second = tempfile::tempdir().unwrap();
    let (code, log) = refused(second.path(), &["--listen-client-urls", &taken]);
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains(&expected), "{log}");

    // etcd on the same address says the same.
    let etcd_dir = tempfile::tempdir().unwrap();
    let etcd_log = tokio::task::block_in_place(|| refused_etcd(&etcd_dir.path().join("etcd"), first.addr.port()));
    assert!(etcd_log.contains(&expected), "{etcd_log}");

    assert_serves(&first.endpoint()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_data_dir_is_refused_and_left_as_etcd_left_it() {
    let parent = tempfile::tempdir().unwrap();
    let data_dir = parent.path().join("etcd");
    let port = free_port();
    let url = client_url(port);
    {
        let _etcd = tokio::task::block_in_place(|| serving_etcd(&data_dir, port));
        let mut client = support::kv_client(&url).await;
        client.put(support::put_request("kept", "by etcd")).await.unwrap();
    }
    let listing = |dir: &Path| {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let before = listing(&data_dir);
    assert_eq!(before, ["member"]);

    let (code, log) = refused(&data_dir, &["--listen-client-urls", &client_url(free_port())]);
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("holds an etcd member's data (member/)"), "{log}");
    assert!(log.contains("ringkvutl snapshot restore"), "{log}");
    assert_eq!(listing(&data_dir), before, "ringkv wrote nothing into etcd's directory");

    // etcd still finds its data there.
    let _etcd = tokio::task::block_in_place(|| serving_etcd(&data_dir, port));
    assert_eq!(value_at(&url, "kept").await.as_deref(), Some(&b"by etcd"[..]));
}

#[test]
fn a_directory_holding_anything_else_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("photos.tar"), b"not ours").unwrap();
    let (code, log) = refused(dir.path(), &["--listen-client-urls", &client_url(free_port())]);
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("is not a ringkv data directory: it holds photos.tar"),
        "{log}"
    );
}

/// `config::MAX_REQUEST_BYTES_MAX`: 31 MiB.
const MAX_REQUEST_BYTES_MAX: usize = 31 * 1024 * 1024;

#[test]
fn max_request_bytes_past_what_a_wal_record_holds_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let over = (MAX_REQUEST_BYTES_MAX + 1).to_string();
    let (code, log) = refused(
        dir.path(),
        &[
            "--listen-client-urls",
            &client_url(free_port()),
            "--max-request-bytes",
            &over,
        ],
    );
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("--max-request-bytes must be at most 32505856"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_as_large_as_the_largest_limit_is_written_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let most = MAX_REQUEST_BYTES_MAX.to_string();
    let server = Ringkv::start(dir.path(), &["--max-request-bytes", &most]);
    // The proposal (the put with its envelope) must stay within the limit.
    let value = vec![b'v'; MAX_REQUEST_BYTES_MAX - 1024];
    let channel = support::channel(&server.endpoint()).await;
    let mut client = pb::kv_client::KvClient::new(channel)
        .max_encoding_message_size(64 << 20)
        .max_decoding_message_size(64 << 20);
    let put = pb::PutRequest {
        key: b"large".to_vec(),
        value: value.clone(),
        ..Default::default()
    };
    client.put(put).await.expect("a put at the largest limit is written");
    let port = server.addr.port().to_string();
    server.kill();

    let url = client_url(port.parse().unwrap());
    let server = Ringkv::spawn(
        dir.path(),
        &["--listen-client-urls".into(), url, "--max-request-bytes".into(), most],
    )
    .ready();
    let channel = support::channel(&server.endpoint()).await;
    let mut client = pb::kv_client::KvClient::new(channel).max_decoding_message_size(64 << 20);
    let response = client
        .range(pb::RangeRequest {
            key: b"large".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.kvs.len(), 1);
    assert!(
        response.kvs[0].value == value,
        "the value read back after a restart is the one written"
    );
    assert_serves(&server.endpoint()).await;
}
