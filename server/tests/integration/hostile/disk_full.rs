//! A full disk (issue 16, item 7): ENOSPC while the WAL prepares its next
//! segment or the page file grows raises NOSPACE; writes are refused with
//! etcd's "database space exceeded", reads go on, nothing acknowledged is
//! lost, no member crashes or fails to restart, and once there is room again
//! and the alarm is disarmed, writes work.
//!
//! Each test puts a member's data directory on a small ext4 file system of its
//! own: a file, loop-mounted (root only), filled by a filler file until less
//! than a WAL segment (64 MiB) is left. Deleting the filler gives the room back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringkv_proto::etcdserverpb as pb;
use ringkv_proto::etcdserverpb::kv_client::KvClient;
use tonic::transport::Channel;

use crate::support::cluster::Cluster;
use crate::support::{etcdctl_output, Ringkv};

/// The small file system: a WAL segment, the page file, and the filler.
const DISK_BYTES: u64 = 256 << 20;
/// What the filler leaves: less than a WAL segment, so the next one cannot be
/// prepared, and some for the page file to grow into.
const ROOM_LEFT_BYTES: u64 = 24 << 20;
/// Longest a member may take to notice room is back (it retries every second).
const ROOM_BACK_WAIT: Duration = Duration::from_secs(30);
/// Bounds every wait for the disk to fill.
const FILL_WAIT: Duration = Duration::from_secs(240);

/// etcd's answer to a write while NOSPACE is raised.
const NO_SPACE_MESSAGE: &str = "etcdserver: mvcc: database space exceeded";

/// What the server logs when each kind of allocation finds no room.
const WAL_SPARE_NO_SPACE_LOG: &str = "no space for the next WAL segment";
const WAL_STUCK_LOG: &str = "no space to persist a raft Ready";
const COMMIT_NO_SPACE_LOG: &str = "page-store commit waits for room";
const WAL_SPARE_BACK_LOG: &str = "the WAL's next segment is ready again";
const WAL_BACK_LOG: &str = "the WAL persists again";
const COMMIT_BACK_LOG: &str = "the page store commits again";

/// Held by each test for its whole run: they write hundreds of megabytes and
/// fsync a lot, and the machine's other tests share its disk and its CPUs.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A small ext4 file system, loop-mounted; unmounted when dropped.
struct SmallDisk {
    mount: PathBuf,
    filler: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount() -> SmallDisk {
        let dir = tempfile::tempdir_in(image_parent()).expect("a temporary directory");
        let image = dir.path().join("disk.img");
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).unwrap();
        run(Command::new("truncate")
            .arg("-s")
            .arg(DISK_BYTES.to_string())
            .arg(&image));
        // No blocks kept for root: ringkv runs as root here and would use them.
        run(Command::new("mkfs.ext4").args(["-q", "-m", "0"]).arg(&image));
        let output = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&mount)
            .output()
            .expect("mount runs");
        assert!(
            output.status.success(),
            "the disk-full tests loop-mount a small ext4 file system, which needs root \
             and a loop device: mount failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        SmallDisk {
            filler: mount.join("filler"),
            mount,
            _dir: dir,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.mount.join(name)
    }

    fn free_bytes(&self) -> u64 {
        available_bytes(&self.mount).expect("statvfs of the mount")
    }

    /// Fills the file system until `room` bytes are left.
    fn fill_leaving(&self, room: u64) {
        let free = self.free_bytes();
        assert!(free > room, "only {free} bytes free");
        run(Command::new("fallocate")
            .arg("-l")
            .arg((free - room).to_string())
            .arg(&self.filler));
    }

    /// Gives the filler's room back.
    fn free_filler(&self) {
        std::fs::remove_file(&self.filler).expect("the filler is there");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // The members using it were killed before (declared after the disk):
        // their files close as they exit, which may take a moment.
        for _ in 0..50 {
            let unmounted = Command::new("umount")
                .arg(&self.mount)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success());
            if unmounted {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
    }
}

/// Where the image goes: in memory (/dev/shm) when it has room, so that the
/// members' fsyncs on the small file system do not become fsyncs of a file on
/// the machine's disk, which other tests share; else the temporary directory.
fn image_parent() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if available_bytes(shm).is_some_and(|bytes| bytes >= 4 * DISK_BYTES) {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// Bytes an unprivileged writer could still take on the file system at `path`.
fn available_bytes(path: &Path) -> Option<u64> {
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs fills the zeroed struct it is given; the path is NUL-terminated.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statvfs(path.as_ptr(), &mut stat) } == 0).then(|| stat.f_bavail * stat.f_frsize)
}

fn run(command: &mut Command) {
    let output = command.output().expect("the command runs");
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Writes acknowledged so far, by key.
#[derive(Clone, Default)]
struct Acked(Arc<Mutex<BTreeMap<String, Vec<u8>>>>);

impl Acked {
    fn snapshot(&self) -> BTreeMap<String, Vec<u8>> {
        self.0.lock().unwrap().clone()
    }
}

async fn client(endpoint: &str) -> KvClient<Channel> {
    crate::support::kv_client(endpoint).await
}

fn is_no_space(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::ResourceExhausted && status.message() == NO_SPACE_MESSAGE
}

/// Puts `{prefix}{n}` with `value_bytes` values from `clients` clients at once
/// until one answers NoSpace; records every acknowledged put. Any other error
/// fails the test.
async fn put_until_no_space(endpoint: &str, prefix: &str, value_bytes: usize, clients: usize, acked: &Acked) {
    let refused = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + FILL_WAIT;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (mut kv, refused, next, acked) = (client(endpoint).await, refused.clone(), next.clone(), acked.clone());
        let prefix = prefix.to_string();
        tasks.push(tokio::spawn(async move {
            while !refused.load(Ordering::Relaxed) {
                assert!(Instant::now() < deadline, "the disk never filled");
                let n = next.fetch_add(1, Ordering::Relaxed);
                let key = format!("{prefix}{n:08}");
                let value = vec![(n % 251) as u8; value_bytes];
                let put = pb::PutRequest {
                    key: key.clone().into_bytes(),
                    value: value.clone(),
                    ..Default::default()
                };
                match kv.put(put).await {
                    Ok(_) => {
                        acked.0.lock().unwrap().insert(key, value);
                    }
                    Err(status) if is_no_space(&status) => refused.store(true, Ordering::Relaxed),
                    Err(status) => panic!("put {key}: {status}"),
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("a writer");
    }
}

/// Deletes of keys that do not exist, `key_bytes` long, from `clients` clients
/// at once, until `done` says so: they fill the WAL and nothing else. Returns
/// the first error each client met, if it stopped on one (`stop_on_error`).
async fn fill_wal_with_deletes(
    endpoint: &str,
    key_bytes: usize,
    clients: usize,
    stop_on_error: bool,
    done: impl Fn() -> bool + Send + Sync + 'static,
) -> Vec<tonic::Status> {
    let done = Arc::new(done);
    let deadline = Instant::now() + FILL_WAIT;
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (mut kv, done, stop, next) = (client(endpoint).await, done.clone(), stop.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) && !done() {
                assert!(Instant::now() < deadline, "the WAL never filled");
                let n = next.fetch_add(1, Ordering::Relaxed);
                let mut key = format!("absent/{n:08}/").into_bytes();
                key.resize(key_bytes, b'x');
                let delete = pb::DeleteRangeRequest {
                    key,
                    ..Default::default()
                };
                match kv.delete_range(delete).await {
                    Ok(response) => assert_eq!(response.into_inner().deleted, 0),
                    Err(status) if stop_on_error => {
                        stop.store(true, Ordering::Relaxed);
                        return Some(status);
                    }
                    Err(status) => panic!("a delete while the cluster serves: {status}"),
                }
            }
            None
        }));
    }
    let mut errors = Vec::new();
    for task in tasks {
        errors.extend(task.await.expect("a deleter"));
    }
    errors
}

/// A serializable read of every key under `prefix`.
async fn serializable_contents(endpoint: &str, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    let mut kv = client(endpoint).await;
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    let response = kv
        .range(pb::RangeRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: end,
            serializable: true,
            ..Default::default()
        })
        .await
        .expect("a serializable range")
        .into_inner();
    response
        .kvs
        .into_iter()
        .map(|kv| (String::from_utf8(kv.key).unwrap(), kv.value))
        .collect()
}

/// Every acknowledged write is there (other keys under the prefix may be:
/// writes whose answer was lost to a timeout).
async fn assert_holds(endpoint: &str, prefix: &str, acked: &Acked) {
    let stored = serializable_contents(endpoint, prefix).await;
    let acked = acked.snapshot();
    assert!(!acked.is_empty(), "some writes were acknowledged");
    for (key, value) in &acked {
        assert_eq!(stored.get(key), Some(value), "acknowledged {key} on {endpoint}");
    }
}

async fn put(endpoint: &str, key: &str) -> Result<(), tonic::Status> {
    let mut kv = client(endpoint).await;
    let put = pb::PutRequest {
        key: key.as_bytes().to_vec(),
        value: b"after".to_vec(),
        ..Default::default()
    };
    kv.put(put).await.map(|_| ())
}

fn assert_refused(result: Result<(), tonic::Status>, what: &str) {
    match result {
        Err(status) if is_no_space(&status) => {}
        other => panic!("{what}: expected etcd's NoSpace, got {other:?}"),
    }
}

fn alarms(endpoint: &str) -> String {
    let (ok, text) = etcdctl_output(endpoint, "10s", &["alarm", "list"], None);
    assert!(ok, "alarm list: {text}");
    text
}

fn disarm(endpoint: &str) {
    let (ok, text) = etcdctl_output(endpoint, "10s", &["alarm", "disarm"], None);
    assert!(ok, "alarm disarm: {text}");
}

/// Waits (bounded) until `log` holds `line`.
async fn wait_for_log(log: &crate::support::Log, line: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while !log.text().contains(line) {
        assert!(Instant::now() < deadline, "never logged {line:?}:\n{}", log.text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// No half-prepared segment is left behind to take the room.
fn assert_no_temporary_segment(data_dir: &Path) {
    let leftovers: Vec<_> = std::fs::read_dir(data_dir.join("wal"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().to_string())
        .filter(|name| name.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn start_on(disk: &SmallDisk) -> Ringkv {
    let ringkv = Ringkv::start(&disk.path("member"), &[]);
    disk.fill_leaving(ROOM_LEFT_BYTES);
    ringkv
}

/// Kill -9 and start again on the same data directory and client URL.
fn restart(ringkv: Ringkv) -> Ringkv {
    let data_dir = ringkv.data_dir.clone();
    let client_url = ringkv.endpoint();
    ringkv.kill();
    Ringkv::spawn(&data_dir, &["--listen-client-urls".to_string(), client_url]).ready()
}

/// Room back and the alarm disarmed: writes work again, and everything
/// acknowledged survives a crash.
async fn writes_work_after_disarm(ringkv: Ringkv, prefix: &str, acked: &Acked) {
    let endpoint = ringkv.endpoint();
    assert_refused(put(&endpoint, "after/1").await, "before the alarm is disarmed");
    disarm(&endpoint);
    put(&endpoint, "after/1").await.expect("a write after disarm");
    let ringkv = restart(ringkv);
    assert_holds(&ringkv.endpoint(), prefix, acked).await;
    assert!(alarms(&ringkv.endpoint()).trim().is_empty(), "the alarm stays disarmed");
    super::assert_serves(&ringkv.endpoint()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_file_that_cannot_grow_refuses_writes_serves_reads_and_recovers_after_disarm() {
    let _one = ONE_AT_A_TIME.lock().await;
    let disk = SmallDisk::mount();
    let ringkv = start_on(&disk);
    let endpoint = ringkv.endpoint();
    let acked = Acked::default();
    // Large values grow the page file well before the WAL is half used.
    put_until_no_space(&endpoint, "big/", 256 << 10, 4, &acked).await;
    wait_for_log(&ringkv.log, COMMIT_NO_SPACE_LOG, FILL_WAIT).await;
    assert!(alarms(&endpoint).contains("alarm:NOSPACE"), "{}", alarms(&endpoint));
    assert_refused(put(&endpoint, "big/more").await, "a write on the full disk");
    crate::support::get(&endpoint, "big/00000000").await;
    assert_holds(&endpoint, "big/", &acked).await;

    disk.free_filler();
    wait_for_log(&ringkv.log, COMMIT_BACK_LOG, ROOM_BACK_WAIT).await;
    writes_work_after_disarm(ringkv, "big/", &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wal_without_room_for_its_next_segment_refuses_writes_serves_reads_and_recovers_after_disarm() {
    let _one = ONE_AT_A_TIME.lock().await;
    let disk = SmallDisk::mount();
    let ringkv = start_on(&disk);
    let endpoint = ringkv.endpoint();
    let acked = Acked::default();
    // Small puts barely grow the page file; large deletes of absent keys fill
    // the WAL meanwhile, up to the half where its next segment is prepared.
    let log = ringkv.log.clone();
    let filling = {
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            fill_wal_with_deletes(&endpoint, 64 << 10, 4, false, move || {
                log.text().contains(WAL_SPARE_NO_SPACE_LOG)
            })
            .await
        })
    };
    put_until_no_space(&endpoint, "small/", 100, 2, &acked).await;
    filling.await.expect("the WAL filler");
    assert!(ringkv.log.text().contains(WAL_SPARE_NO_SPACE_LOG));
    assert_no_temporary_segment(&ringkv.data_dir);
    assert!(alarms(&endpoint).contains("alarm:NOSPACE"), "{}", alarms(&endpoint));
    assert_refused(put(&endpoint, "small/more").await, "a write on the full disk");
    // Linearizable and serializable reads are served.
    crate::support::get(&endpoint, "small/00000000").await;
    assert_holds(&endpoint, "small/", &acked).await;

    disk.free_filler();
    wait_for_log(&ringkv.log, WAL_SPARE_BACK_LOG, ROOM_BACK_WAIT).await;
    writes_work_after_disarm(ringkv, "small/", &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_killed_with_a_full_wal_restarts_serves_reads_and_resumes_when_room_returns() {
    let _one = ONE_AT_A_TIME.lock().await;
    let disk = SmallDisk::mount();
    let ringkv = start_on(&disk);
    let endpoint = ringkv.endpoint();
    let acked = Acked::default();
    put_some(&endpoint, &acked).await;
    // Fill the WAL to the last block: large deletes until it cannot persist,
    // then (after a restart) deletes of one block each, one at a time.
    let errors = fill_wal_with_deletes(&endpoint, 64 << 10, 4, true, || false).await;
    assert!(!errors.is_empty(), "the WAL filled");
    wait_for_log(&ringkv.log, WAL_STUCK_LOG, FILL_WAIT).await;
    assert_refused(put(&endpoint, "small/more").await, "a write with the WAL full");
    assert_holds(&endpoint, "small/", &acked).await;
    let ringkv = restart(ringkv);
    let endpoint = ringkv.endpoint();
    fill_wal_with_deletes(&endpoint, 3000, 1, true, || false).await;

    // With its last segment full to the end it cannot persist even the
    // first entry of its new term: it serves what it holds.
    let ringkv = restart(ringkv);
    let endpoint = ringkv.endpoint();
    wait_for_log(&ringkv.log, WAL_STUCK_LOG, FILL_WAIT).await;
    assert_holds(&endpoint, "small/", &acked).await;
    assert_refused(put(&endpoint, "small/more").await, "a write with the WAL full");
    let mut kv = client(&endpoint).await;
    let linearizable = kv
        .range(pb::RangeRequest {
            key: b"small/00000000".to_vec(),
            ..Default::default()
        })
        .await;
    assert!(
        linearizable.as_ref().is_err_and(is_no_space),
        "a linearizable read needs the WAL: {linearizable:?}"
    );

    disk.free_filler();
    wait_for_log(&ringkv.log, WAL_BACK_LOG, ROOM_BACK_WAIT).await;
    crate::support::get(&endpoint, "small/00000000").await;
    writes_work_after_disarm(ringkv, "small/", &acked).await;
}

/// A few hundred small puts, each acknowledged.
async fn put_some(endpoint: &str, acked: &Acked) {
    let mut kv = client(endpoint).await;
    for n in 0..300u32 {
        let key = format!("small/{n:08}");
        let value = n.to_be_bytes().to_vec();
        let put = pb::PutRequest {
            key: key.clone().into_bytes(),
            value: value.clone(),
            ..Default::default()
        };
        kv.put(put).await.expect("a put with room left");
        acked.0.lock().unwrap().insert(key, value);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_keeps_serving_while_one_members_disk_is_full_and_it_catches_up_after() {
    let _one = ONE_AT_A_TIME.lock().await;
    let disk = SmallDisk::mount();
    let mut cluster = Cluster::stopped(3, &[]);
    const FULL: usize = 2;
    cluster.members[FULL].data_dir = disk.path("m2");
    tokio::task::block_in_place(|| cluster.start_members(&[0, 1, 2]));
    let leader = cluster.wait_for_leader().await;
    if leader == FULL {
        // Writes go through the others; the full member is a follower.
        let target = cluster.status(0).await.unwrap().header.unwrap().member_id;
        let (ok, text) = etcdctl_output(
            &cluster.endpoint(FULL),
            "10s",
            &["move-leader", &format!("{target:x}")],
            None,
        );
        assert!(ok, "move-leader: {text}");
    }
    disk.fill_leaving(ROOM_LEFT_BYTES);
    let healthy = cluster.endpoint(0);
    let acked = Acked::default();
    put_some(&healthy, &acked).await;

    // The full member's WAL reaches the half where its next segment is
    // prepared: it raises NOSPACE, which refuses puts on every member.
    let full_log = cluster.members[FULL].process.as_ref().unwrap().log.clone();
    let log = full_log.clone();
    fill_wal_with_deletes(&healthy, 64 << 10, 4, false, move || {
        log.text().contains(WAL_SPARE_NO_SPACE_LOG)
    })
    .await;
    let deadline = Instant::now() + ROOM_BACK_WAIT;
    while put(&healthy, "small/more").await.is_ok() {
        assert!(Instant::now() < deadline, "the full member's NOSPACE never applied");
    }
    for index in 0..3 {
        assert_refused(put(&cluster.endpoint(index), "small/more").await, "a put while NOSPACE");
    }
    let full_id = cluster.status(FULL).await.unwrap().header.unwrap().member_id;
    assert!(
        alarms(&healthy).contains(&format!("memberID:{full_id} alarm:NOSPACE")),
        "{}",
        alarms(&healthy)
    );

    // Deletes still work: they fill the full member's WAL until it cannot
    // persist, and the other two go on without it.
    let log = full_log.clone();
    fill_wal_with_deletes(&healthy, 64 << 10, 4, false, move || log.text().contains(WAL_STUCK_LOG)).await;
    let sent = Arc::new(AtomicU64::new(0));
    fill_wal_with_deletes(&cluster.endpoint(1), 64 << 10, 2, false, move || {
        sent.fetch_add(1, Ordering::Relaxed) >= 40
    })
    .await;
    let behind = cluster
        .status(FULL)
        .await
        .expect("the full member answers")
        .raft_applied_index;
    let ahead = cluster.status(0).await.unwrap().raft_applied_index;
    assert!(behind < ahead, "the full member stopped applying: {behind} vs {ahead}");
    for index in 0..3 {
        assert_holds(&cluster.endpoint(index), "small/", &acked).await;
    }

    disk.free_filler();
    wait_for_log(&full_log, WAL_BACK_LOG, ROOM_BACK_WAIT).await;
    let target = cluster.status(0).await.unwrap().raft_applied_index;
    let deadline = Instant::now() + ROOM_BACK_WAIT;
    while cluster.status(FULL).await.map_or(0, |status| status.raft_applied_index) < target {
        assert!(Instant::now() < deadline, "the full member never caught up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for_log(&full_log, WAL_SPARE_BACK_LOG, ROOM_BACK_WAIT).await;
    disarm(&healthy);
    for index in 0..3 {
        put(&cluster.endpoint(index), &format!("after/{index}"))
            .await
            .expect("a put after disarm");
    }
    // What its WAL took in while stuck and after reads back whole.
    cluster.kill(FULL);
    tokio::task::block_in_place(|| cluster.start_members(&[FULL]));
    cluster.wait_converged(ROOM_BACK_WAIT).await;
    for index in 0..3 {
        assert_holds(&cluster.endpoint(index), "small/", &acked).await;
        super::assert_serves(&cluster.endpoint(index)).await;
    }
}
