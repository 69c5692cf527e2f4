//! A data directory from a snapshot file, as `etcdutl snapshot restore` makes
//! one for etcd. A snapshot file (what `etcdctl snapshot save` writes) is a
//! database followed by the 32-byte sha256 of it. The database is told by
//! its content: etcd's backend file (bbolt), as etcd and ringkv's
//! `Maintenance.Snapshot` stream it, or ringkv's own page file (what ringkv
//! streamed before, and a copy of a member's `store.db`). A stopped etcd
//! member's data directory (or its `member/snap/db`) is imported too when its
//! db holds every write its WAL committed, and refused otherwise.
//!
//! Restoring checks the trailer; an etcd file is imported with its whole
//! history into `store.db` of a new data directory (`ringkv_etcdfile::import`:
//! every revision, the compaction, leases, alarms and auth (users, roles, the flag and the revision)),
//! a page file is copied there. Then it checks the tree whole, replaces the membership and raft
//! configuration it holds with the new cluster's (`--initial-cluster`, every
//! member a voter; this member alone by default), and creates a WAL whose first
//! snapshot record sits at the store's applied raft index with that
//! configuration. As with etcdutl, each member of a new cluster is restored from
//! the same snapshot with its own `--name` and `--initial-advertise-peer-urls`;
//! started with the same flags, they form a cluster holding the data, with
//! revisions, leases and alarms as they were. The new directory is built
//! under a temporary name and renamed into place, so a crash leaves either no
//! data directory or a whole one. The WAL is written through io_uring: a
//! restore runs on a glommio executor of its own.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use glommio::GlommioError;
use prost::Message;
use raft_proto::eraftpb::ConfState;
use ringkv_engine::mvcc::{Mvcc, MvccError};
use ringkv_engine::page::{PageError, PAGE_BYTES};
use ringkv_engine::wal::{sync_directory, sync_parent_directory, WalError};
use ringkv_etcdfile::bbolt::read::{BboltError, Reader};
use ringkv_etcdfile::etcd_wal::{self, EtcdWalError};
use ringkv_etcdfile::import::{consistent_index, import, ImportError};
use ringkv_etcdfile::snapshot::{self as etcd_snapshot, Format, TrailerError};
use ringkv_proto::ringkvpb::Membership;
use sha2::{Digest, Sha256};

use crate::cluster::{self, InitialClusterError};
use crate::ids;
use crate::layout;
use crate::wal::{self, Identity};

/// Bytes copied per read and write.
const COPY_CHUNK_BYTES: usize = 1 << 20;

/// Bytes of the sha256 trailer.
pub const TRAILER_BYTES: u64 = 32;
/// The raft term the restored log starts in (etcdutl starts at 1 too).
const RESTORED_TERM: u64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a ringkv snapshot: {reason}")]
    NotASnapshot { path: PathBuf, reason: String },
    #[error("{path}: the sha256 trailer does not match the contents (a torn or altered file)")]
    HashMismatch { path: PathBuf },
    #[error("data directory {0} already exists")]
    Exists(PathBuf),
    #[error("the snapshot's page store is damaged: {0}")]
    Pages(#[from] PageError),
    #[error("the snapshot's store does not open: {0}")]
    Store(#[from] MvccError),
    #[error("{path}: {source}")]
    Trailer { path: PathBuf, source: TrailerError },
    #[error("{path} is not an etcd snapshot: {source}")]
    Bbolt { path: PathBuf, source: BboltError },
    #[error("{path}: {source}")]
    Import { path: PathBuf, source: ImportError },
    #[error(
        "{path}: the etcd member's db holds raft entries up to {consistent_index}, but its WAL has {requests} \
         committed requests more (up to {commit}) that etcd had not written into the db when it stopped; \
         nothing was imported. Start etcd on the directory and take a snapshot (`etcdctl snapshot save FILE`), \
         then `ringkvutl snapshot restore FILE`"
    )]
    EtcdDbBehind {
        path: PathBuf,
        consistent_index: u64,
        requests: u64,
        commit: u64,
    },
    #[error(
        "{path}: etcd is running on this data directory (it holds the db's lock); stop it first, or take a \
         snapshot from it (`etcdctl snapshot save FILE`) and restore that"
    )]
    EtcdRunning { path: PathBuf },
    #[error("{path}: {source}; nothing was imported: take a snapshot with `etcdctl snapshot save` instead")]
    EtcdWal { path: PathBuf, source: EtcdWalError },
    #[error("creating the WAL: {0}")]
    Wal(#[from] WalError),
    #[error("cannot start an executor (io_uring, locked memory): {0}")]
    Executor(GlommioError<()>),
    #[error("the restore thread failed: {0:?}")]
    Thread(GlommioError<()>),
}

/// What a snapshot holds, as `snapshot status` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotSummary {
    /// Bytes of the page file (the snapshot file without its trailer).
    pub store_bytes: u64,
    pub revision: i64,
    pub compact_revision: i64,
    /// The raft index the copy holds every entry up to.
    pub applied_index: u64,
    /// Keys live at `revision` or in the history kept since the compaction.
    pub keys: usize,
    /// Whether the trailer was checked (false when asked to skip the check).
    pub hash_checked: bool,
    /// The snapshot was etcd's format (bbolt), imported; else a page file.
    pub etcd_format: bool,
}

/// Copies the page file in `snapshot` to `to` (fsynced), checking the trailer
/// unless `skip_hash_check` (a copy made by other means may have none).
pub fn extract(snapshot: &Path, to: &Path, skip_hash_check: bool) -> Result<bool, RestoreError> {
    let mut input = File::open(snapshot).map_err(io(snapshot))?;
    let len = input.metadata().map_err(io(snapshot))?.len();
    let has_trailer = len % PAGE_BYTES as u64 == TRAILER_BYTES;
    // Without the check, a bare page file (whole pages, no trailer) is accepted too.
    let bare_page_file = skip_hash_check && len.is_multiple_of(PAGE_BYTES as u64);
    if !has_trailer && !bare_page_file {
        return Err(RestoreError::NotASnapshot {
            path: snapshot.to_path_buf(),
            reason: format!("{len} bytes is not whole {PAGE_BYTES}-byte pages plus a {TRAILER_BYTES}-byte sha256"),
        });
    }
    let store_bytes = if has_trailer { len - TRAILER_BYTES } else { len };
    let mut output = File::create(to).map_err(io(to))?;
    let mut digest = Sha256::new();
    let mut buf = vec![0; COPY_CHUNK_BYTES];
    let mut left = store_bytes;
    while left > 0 {
        let chunk = &mut buf[..left.min(COPY_CHUNK_BYTES as u64) as usize];
        input.read_exact(chunk).map_err(io(snapshot))?;
        digest.update(&*chunk);
        output.write_all(chunk).map_err(io(to))?;
        left -= chunk.len() as u64;
    }
    output.sync_all().map_err(io(to))?;
    if !has_trailer || skip_hash_check {
        return Ok(false);
    }
    let mut trailer = [0; TRAILER_BYTES as usize];
    input.read_exact(&mut trailer).map_err(io(snapshot))?;
    if digest.finalize().as_slice() != trailer {
        return Err(RestoreError::HashMismatch {
            path: snapshot.to_path_buf(),
        });
    }
    Ok(true)
}

/// Checks the opened store's tree whole and summarizes it.
fn summarize(mvcc: &Mvcc, hash_checked: bool, etcd_format: bool) -> Result<SnapshotSummary, RestoreError> {
    mvcc.check_tree()?;
    Ok(SnapshotSummary {
        store_bytes: mvcc.file_bytes(),
        revision: mvcc.current_revision(),
        compact_revision: mvcc.compact_revision(),
        applied_index: mvcc.applied_index(),
        keys: mvcc.key_count(),
        hash_checked,
        etcd_format,
    })
}

/// Fills the new page store `store` from `snapshot`, whatever its format,
/// and summarizes it. Answers the store open: opening rebuilds the key index
/// from every revision, the longest step of a large restore, so it is done once.
fn fill_store(snapshot: &Path, store: &Path, skip_hash_check: bool) -> Result<(Mvcc, SnapshotSummary), RestoreError> {
    if let Some(member) = etcd_member_dir(snapshot) {
        return import_member(snapshot, &member, store);
    }
    let file = File::open(snapshot).map_err(io(snapshot))?;
    if etcd_snapshot::detect(&file).map_err(io(snapshot))? == Format::Other {
        drop(file);
        let checked = extract(snapshot, store, skip_hash_check)?;
        let mvcc = Mvcc::open(store)?;
        let summary = summarize(&mvcc, checked, false)?;
        return Ok((mvcc, summary));
    }
    let len = file.metadata().map_err(io(snapshot))?.len();
    let (db_len, checked) =
        etcd_snapshot::check_trailer(&file, len, skip_hash_check).map_err(|source| match source {
            TrailerError::Mismatch => RestoreError::HashMismatch {
                path: snapshot.to_path_buf(),
            },
            source => RestoreError::Trailer {
                path: snapshot.to_path_buf(),
                source,
            },
        })?;
    let db = Reader::open(file, db_len).map_err(|source| RestoreError::Bbolt {
        path: snapshot.to_path_buf(),
        source,
    })?;
    let (mvcc, _) = import(&db, store).map_err(|source| RestoreError::Import {
        path: snapshot.to_path_buf(),
        source,
    })?;
    let summary = summarize(&mvcc, checked, true)?;
    Ok((mvcc, summary))
}

/// The `member/` directory of an etcd data directory, if `path` is one or
/// is the db file in one (`member/snap/db`, beside `member/wal/`).
fn etcd_member_dir(path: &Path) -> Option<PathBuf> {
    if path.join("member").join("wal").is_dir() {
        return Some(path.join("member"));
    }
    let member = path.parent()?.parent()?;
    let is_member_db = path.file_name()? == "db" && member.join("wal").is_dir() && member.join("snap").is_dir();
    is_member_db.then(|| member.to_path_buf())
}

/// Imports a stopped etcd member's `snap/db`, if it holds every request its
/// WAL committed (etcd writes the db behind the WAL: after a crash it lags);
/// else refuses, as it refuses a running member's. The db has no trailer.
fn import_member(path: &Path, member: &Path, store: &Path) -> Result<(Mvcc, SnapshotSummary), RestoreError> {
    let db_path = member.join("snap").join("db");
    let file = File::open(&db_path).map_err(io(&db_path))?;
    // bbolt holds an exclusive flock on the db while etcd runs.
    // SAFETY: flock on an open descriptor we own; no memory is passed.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_SH | libc::LOCK_NB) } != 0 {
        return Err(RestoreError::EtcdRunning {
            path: path.to_path_buf(),
        });
    }
    let len = file.metadata().map_err(io(&db_path))?.len();
    let bbolt = |source| RestoreError::Bbolt {
        path: db_path.clone(),
        source,
    };
    let db = Reader::open(file, len).map_err(bbolt)?;
    let importing = |source| RestoreError::Import {
        path: db_path.clone(),
        source,
    };
    let consistent_index = consistent_index(&db).map_err(importing)?;
    let wal = etcd_wal::beyond(&member.join("wal"), consistent_index).map_err(|source| RestoreError::EtcdWal {
        path: path.to_path_buf(),
        source,
    })?;
    if wal.requests > 0 {
        return Err(RestoreError::EtcdDbBehind {
            path: path.to_path_buf(),
            consistent_index,
            requests: wal.requests,
            commit: wal.commit,
        });
    }
    let (mvcc, _) = import(&db, store).map_err(importing)?;
    let summary = summarize(&mvcc, false, true)?;
    Ok((mvcc, summary))
}

/// Checks a snapshot file (trailer, then every page of the tree) and says what
/// it holds. Works on a scratch copy in `scratch_dir`, removed afterwards.
pub fn status(snapshot: &Path, scratch_dir: &Path, skip_hash_check: bool) -> Result<SnapshotSummary, RestoreError> {
    let scratch = scratch_dir.join(layout::STORE_FILE);
    let result = fill_store(snapshot, &scratch, skip_hash_check).map(|(_, summary)| summary);
    let _ = std::fs::remove_file(&scratch);
    result
}

/// The identity and cluster of a restored member, from the flags `ringkv`
/// would start it with (`--name`, `--initial-advertise-peer-urls`,
/// `--initial-cluster`, `--initial-cluster-token`): ids derived as etcd does.
pub fn restored_member(
    name: &str,
    peer_urls: &[String],
    initial_cluster: Option<&str>,
    cluster_token: &str,
) -> Result<(Identity, Membership), InitialClusterError> {
    let cluster = cluster::initial_cluster(name, peer_urls, initial_cluster)?;
    let membership = cluster::initial_membership(&cluster, cluster_token);
    let identity = Identity {
        member_id: ids::member_id(peer_urls, cluster_token),
        cluster_id: membership.cluster_id,
    };
    Ok((identity, membership))
}

/// Makes `data_dir` (which must not exist) from `snapshot`, for member
/// `identity` of the cluster `membership` (see [`restored_member`]), on an
/// executor of its own; returns once it is done.
pub fn restore(
    snapshot: &Path,
    data_dir: &Path,
    identity: Identity,
    membership: &Membership,
    skip_hash_check: bool,
) -> Result<SnapshotSummary, RestoreError> {
    let (snapshot, data_dir, membership) = (snapshot.to_path_buf(), data_dir.to_path_buf(), membership.clone());
    glommio::LocalExecutorBuilder::default()
        .name("restore")
        .spawn(move || async move { restore_here(&snapshot, &data_dir, identity, &membership, skip_hash_check).await })
        .map_err(RestoreError::Executor)?
        .join()
        .map_err(RestoreError::Thread)?
}

async fn restore_here(
    snapshot: &Path,
    data_dir: &Path,
    identity: Identity,
    membership: &Membership,
    skip_hash_check: bool,
) -> Result<SnapshotSummary, RestoreError> {
    assert_eq!(identity.cluster_id, membership.cluster_id, "the member's cluster");
    assert!(voter_ids(membership).contains(&identity.member_id), "a member of it");
    if data_dir.exists() {
        return Err(RestoreError::Exists(data_dir.to_path_buf()));
    }
    let staging = staging_path(data_dir);
    // A staging directory is what an interrupted restore left behind.
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io(&staging))?;
    }
    std::fs::create_dir_all(&staging).map_err(io(&staging))?;
    let built = build(snapshot, &staging, identity, membership, skip_hash_check).await;
    let summary = match built {
        Ok(summary) => summary,
        Err(error) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(error);
        }
    };
    std::fs::rename(&staging, data_dir).map_err(io(data_dir))?;
    sync_parent_directory(data_dir).await.map_err(io(data_dir))?;
    Ok(summary)
}

async fn build(
    snapshot: &Path,
    dir: &Path,
    identity: Identity,
    membership: &Membership,
    skip_hash_check: bool,
) -> Result<SnapshotSummary, RestoreError> {
    let store = dir.join(layout::STORE_FILE);
    let (mut mvcc, summary) = fill_store(snapshot, &store, skip_hash_check)?;
    // The snapshot holds the membership and configuration of the cluster it
    // was taken from: the new cluster's replace them.
    let voters = voter_ids(membership);
    mvcc.set_membership(membership.encode_to_vec());
    let conf_state = ConfState {
        voters: voters.clone(),
        ..Default::default()
    };
    mvcc.set_conf_state(conf_state.encode_to_vec());
    mvcc.commit()?;
    drop(mvcc);
    let (wal, _) = wal::create(
        &dir.join(layout::WAL_DIR),
        identity,
        &voters,
        summary.applied_index,
        RESTORED_TERM,
    )
    .await?;
    drop(wal);
    sync_directory(dir).await.map_err(io(dir))?;
    Ok(summary)
}

/// The ids of `membership`'s voters, in id order.
fn voter_ids(membership: &Membership) -> Vec<u64> {
    let mut voters: Vec<u64> = membership
        .members
        .iter()
        .filter(|member| !member.is_learner)
        .map(|member| member.id)
        .collect();
    voters.sort_unstable();
    voters
}

/// Maps an I/O error to one that names `path`.
fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RestoreError {
    let path = path.to_path_buf();
    move |source| RestoreError::Io { path, source }
}

fn staging_path(data_dir: &Path) -> PathBuf {
    let mut name = data_dir.file_name().unwrap_or_default().to_os_string();
    name.push(".restoring");
    data_dir.with_file_name(name)
}
