//! Opening the store at start: page store and MVCC, the WAL (created on first
//! start), the raft log rebuilt from the WAL, and a `RawNode` over it.
//!
//! The data directory's layout is `ringkv_datadir::layout`'s; `snap/` holds
//! raft snapshots received from the leader, see `install_interrupted`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use prost::Message;
use raft::eraftpb::{ConfState, Entry, EntryType};
use raft::{Config as RaftConfig, RawNode};
use ringkv_datadir::layout::{self, SNAP_DIR, STORE_FILE, WAL_DIR};
use ringkv_datadir::wal::{self, Identity};
use ringkv_engine::mvcc::{Mvcc, MvccError};
use ringkv_engine::wal::{DmaDir, Recovered, Wal, WalDir, WalError, WalOptions};

use super::membership::Membership;
use super::raft_log::RaftLog;
use super::raft_logger;

/// raft ticks per heartbeat: one tick is `--heartbeat-interval`.
const HEARTBEAT_TICKS: usize = 1;
/// Bytes of entries per append message and messages in flight per follower.
pub(crate) const RAFT_MAX_MESSAGE_BYTES: u64 = 1024 * 1024;
const RAFT_MAX_INFLIGHT_MESSAGES: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("page store {path}: {source}")]
    Store { path: PathBuf, source: MvccError },
    #[error("WAL in {path}: {source}")]
    Wal { path: PathBuf, source: WalError },
    #[error("WAL in {path} is inconsistent: {reason}")]
    Inconsistent { path: PathBuf, reason: String },
    #[error("raft refused the recovered state: {0}")]
    Raft(#[from] raft::Error),
}

/// Everything the store core starts with.
pub struct Opened<D: WalDir = DmaDir> {
    pub identity: Identity,
    /// The member ran before: its WAL was there (etcd's `memberInitialized`).
    pub initialized: bool,
    pub raw: RawNode<RaftLog>,
    pub mvcc: Mvcc,
    pub wal: Wal<D>,
    pub membership: Membership,
}

/// How a new data directory starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// `--initial-cluster-state new`: `initial` is `--initial-cluster`, every
    /// member a voter of the first configuration.
    New,
    /// `--initial-cluster-state existing`: this member was added to a running
    /// cluster; `initial` is that cluster's membership at raft index 0, which
    /// does not hold this member (it replays its own addition).
    Join,
}

/// Where a member's state lives at start: a data directory on disk
/// ([`DataDir`]), or a simulation's memory.
pub trait MemberStorage {
    type WalDir: WalDir + Clone + 'static;
    /// Creates what must exist before anything is opened (the directory).
    fn prepare(&self) -> Result<(), BootstrapError>;
    /// The page store's name in messages.
    fn store_path(&self) -> PathBuf;
    /// Opens (or creates) the page store.
    fn open_store(&self) -> Result<Mvcc, MvccError>;
    /// The WAL's name in messages.
    fn wal_path(&self) -> PathBuf;
    fn wal_exists(&self) -> bool;
    async fn open_wal(&self) -> Result<(Wal<Self::WalDir>, Recovered), WalError>;
    /// Creates the WAL of a new member, starting from `voters`.
    async fn create_wal(&self, identity: Identity, voters: &[u64]) -> Result<(Wal<Self::WalDir>, Recovered), WalError>;
    /// Finishes installing the snapshot the WAL's last snapshot record names,
    /// if a crash interrupted it (see [`DataDir`]).
    fn finish_interrupted_install(&self, index: u64) -> Result<(), String>;
    /// Removes what earlier runs left of received snapshots.
    fn clear_received(&self) -> Result<(), BootstrapError>;
}

/// A data directory on disk; its layout is `ringkv_datadir::layout`'s.
pub struct DataDir<'a>(pub &'a Path);

impl MemberStorage for DataDir<'_> {
    type WalDir = DmaDir;

    fn prepare(&self) -> Result<(), BootstrapError> {
        std::fs::create_dir_all(self.0).map_err(|source| BootstrapError::DataDir {
            path: self.0.to_path_buf(),
            source,
        })
    }

    fn store_path(&self) -> PathBuf {
        self.0.join(STORE_FILE)
    }

    fn open_store(&self) -> Result<Mvcc, MvccError> {
        Mvcc::open(&self.store_path())
    }

    fn wal_path(&self) -> PathBuf {
        self.0.join(WAL_DIR)
    }

    fn wal_exists(&self) -> bool {
        Wal::exists(&self.wal_path())
    }

    async fn open_wal(&self) -> Result<(Wal, Recovered), WalError> {
        Wal::open(&self.wal_path(), WalOptions::default()).await
    }

    async fn create_wal(&self, identity: Identity, voters: &[u64]) -> Result<(Wal, Recovered), WalError> {
        wal::create(&self.wal_path(), identity, voters, 0, 0).await
    }

    fn finish_interrupted_install(&self, index: u64) -> Result<(), String> {
        install_interrupted(self.0, index)
    }

    fn clear_received(&self) -> Result<(), BootstrapError> {
        let snap_dir = self.0.join(SNAP_DIR);
        clear_snap_dir(&snap_dir).map_err(|source| BootstrapError::DataDir { path: snap_dir, source })
    }
}

/// Opens (or creates) the member in `storage`. `initial` is used for a new
/// member (see [`Start`]); `election_ticks` raft ticks make an election timeout.
pub async fn open<S: MemberStorage>(
    storage: &S,
    configured: Identity,
    initial: Membership,
    start: Start,
    election_ticks: usize,
) -> Result<Opened<S::WalDir>, BootstrapError> {
    storage.prepare()?;
    let store_path = storage.store_path();
    let store_error = |source| BootstrapError::Store {
        path: store_path.clone(),
        source,
    };
    let opening = Instant::now();
    let mut mvcc = storage.open_store().map_err(store_error)?;
    tracing::info!(
        path = %store_path.display(),
        applied_index = mvcc.applied_index(),
        took = ?opening.elapsed(),
        "opened the page store"
    );
    let wal_dir = storage.wal_path();
    let wal_error = |source| BootstrapError::Wal {
        path: wal_dir.clone(),
        source,
    };
    let inconsistent = |reason: String| BootstrapError::Inconsistent {
        path: wal_dir.clone(),
        reason,
    };
    let opened_wal = if storage.wal_exists() {
        let opening = Instant::now();
        let opened = storage.open_wal().await.map_err(wal_error)?;
        let (_, recovered) = &opened;
        tracing::info!(
            path = %wal_dir.display(),
            took = ?opening.elapsed(),
            released_to = recovered.snapshot.as_ref().map_or(0, |snapshot| snapshot.index),
            entries = recovered.entries.len(),
            "opened the WAL"
        );
        Some(opened)
    } else if mvcc.applied_index() != 0 {
        return Err(inconsistent(format!(
            "the WAL is missing but {} holds data up to raft index {}",
            store_path.display(),
            mvcc.applied_index()
        )));
    } else {
        None
    };
    if let Some((_, recovered)) = &opened_wal {
        let snapshot_index = recovered.snapshot.as_ref().map_or(0, |snapshot| snapshot.index);
        if snapshot_index > mvcc.applied_index() {
            drop(mvcc);
            storage
                .finish_interrupted_install(snapshot_index)
                .map_err(inconsistent)?;
            mvcc = storage.open_store().map_err(store_error)?;
        }
    }
    storage.clear_received()?;
    let initialized = opened_wal.is_some();
    let identity = match &opened_wal {
        Some((_, recovered)) => Identity::decode(&recovered.metadata)
            .ok_or_else(|| inconsistent("WAL metadata is not a member identity".to_string()))?,
        None => configured,
    };
    // The membership is committed to the page store before a new WAL exists, so
    // a WAL always comes with the membership its configuration was made from.
    // A joiner without a WAL starts over from what its peers said.
    let stored = match (start, &opened_wal) {
        (Start::Join, None) => None,
        _ => stored_membership(&mvcc, identity, opened_wal.is_some()).map_err(inconsistent)?,
    };
    let membership = match stored {
        Some(membership) => membership,
        None => {
            let membership = match start {
                Start::New => membership_for(identity, configured, initial),
                Start::Join => initial,
            };
            mvcc.set_membership(membership.encode());
            mvcc.commit().map_err(store_error)?;
            membership
        }
    };
    let (wal, recovered) = match opened_wal {
        Some(opened) => opened,
        None => {
            // The log starts from the cluster's first configuration; a joiner
            // is not in it (its own addition is in the log it will receive).
            let voters = membership.initial_voter_ids();
            assert_eq!(
                voters.contains(&identity.member_id),
                start == Start::New,
                "a new cluster's member votes from the start; a joiner does not"
            );
            storage.create_wal(identity, &voters).await.map_err(wal_error)?
        }
    };
    if identity != configured {
        tracing::info!(
            member_id = format_args!("{:x}", identity.member_id),
            "using the member id stored in the WAL; identity flags apply only to a new member"
        );
    }
    // Raft resumes applying after the page store's applied index, so it must
    // start from the configuration as of that index: the page store's, once a
    // configuration change was applied (the WAL's snapshot record may be older).
    let stored_conf_state = mvcc
        .conf_state()
        .map(ConfState::decode)
        .transpose()
        .map_err(|error| inconsistent(format!("the page store's raft configuration: {error}")))?;
    let raft_log = rebuild_raft_log(recovered, mvcc.applied_index(), stored_conf_state, identity.member_id)
        .map_err(inconsistent)?;
    let config = RaftConfig {
        id: identity.member_id,
        election_tick: election_ticks,
        heartbeat_tick: HEARTBEAT_TICKS,
        applied: mvcc.applied_index(),
        max_size_per_msg: RAFT_MAX_MESSAGE_BYTES,
        max_inflight_msgs: RAFT_MAX_INFLIGHT_MESSAGES,
        pre_vote: true,
        check_quorum: true,
        ..Default::default()
    };
    config.validate()?;
    let mut raw = RawNode::new(&config, raft_log, &raft_logger::logger())?;
    // A sole voter need not wait an election timeout to lead: start at once.
    if raw.store().conf_state().voters == [identity.member_id] {
        raw.campaign()?;
    }
    Ok(Opened {
        identity,
        initialized,
        raw,
        mvcc,
        wal,
        membership,
    })
}

/// Finishes installing the snapshot the WAL's last snapshot record names.
///
/// Installing a snapshot from the leader is: the file is complete and durable
/// in `snap/`; the WAL records the snapshot (the commit point); the file is
/// renamed over `store.db`. A crash between the last two leaves a page store
/// behind the WAL's snapshot record and the file still in `snap/`: rename it now.
fn install_interrupted(data_dir: &Path, index: u64) -> Result<(), String> {
    let snapshot = layout::received_path(&data_dir.join(SNAP_DIR), index);
    if !snapshot.exists() {
        // Not an interrupted install: `rebuild_raft_log` names the inconsistency.
        return Ok(());
    }
    tracing::info!(index, "finishing the install of a snapshot received before a restart");
    layout::replace_store(&snapshot, &data_dir.join(STORE_FILE))
        .map_err(|error| format!("installing snapshot {}: {error}", snapshot.display()))
}

/// Creates `snap/` and removes what earlier runs left in it: partial files and
/// snapshots raft never installed (an installed one was renamed away).
fn clear_snap_dir(snap_dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(snap_dir)?;
    for entry in std::fs::read_dir(snap_dir)? {
        std::fs::remove_file(entry?.path())?;
    }
    Ok(())
}

/// The membership the page store holds, if it is this member's cluster's.
/// A restored snapshot holds the membership of the cluster it was taken from:
/// that one is replaced. With a WAL, a membership without this member is ours
/// too: a joiner's before it replays its own addition, or a removed member's.
fn stored_membership(mvcc: &Mvcc, identity: Identity, wal_exists: bool) -> Result<Option<Membership>, String> {
    let Some(bytes) = mvcc.membership() else {
        return Ok(None);
    };
    let membership = Membership::decode(bytes).map_err(|error| format!("stored membership: {error}"))?;
    let ours =
        membership.cluster_id() == identity.cluster_id && (membership.contains(identity.member_id) || wal_exists);
    Ok(ours.then_some(membership))
}

/// The membership to start with when the page store has none of this cluster:
/// `--initial-cluster`, or, when the identity in the WAL is not what the flags
/// make (a restored member, or flags changed since), this member alone.
fn membership_for(identity: Identity, configured: Identity, initial: Membership) -> Membership {
    if initial.cluster_id() == identity.cluster_id && initial.contains(identity.member_id) {
        return initial;
    }
    let mut member = initial
        .member(configured.member_id)
        .cloned()
        .expect("the flags' membership holds the configured member");
    member.id = identity.member_id;
    Membership::single(member, identity.cluster_id)
}

/// The raft log after a restart: entries after the WAL's last release point,
/// the last hard state, and the configuration as of the applied index: the
/// page store's (`stored_conf_state`), or else the last snapshot record's.
fn rebuild_raft_log(
    recovered: Recovered,
    applied_index: u64,
    stored_conf_state: Option<ConfState>,
    member_id: u64,
) -> Result<RaftLog, String> {
    let snapshot = recovered
        .snapshot
        .ok_or("no snapshot record: the WAL was never fully created")?;
    let conf_state = match stored_conf_state {
        Some(conf_state) => conf_state,
        None => ConfState::decode(snapshot.conf_state.as_slice())
            .map_err(|error| format!("snapshot record's configuration does not decode: {error}"))?,
    };
    // The WAL is only released up to what the page store made durable.
    if applied_index < snapshot.index {
        return Err(format!(
            "the page store is at raft index {applied_index}, behind the WAL's release point {}",
            snapshot.index
        ));
    }
    let entries: Vec<_> = recovered.entries.into_iter().map(wal::entry_from_record).collect();
    let last_index = entries.last().map_or(snapshot.index, |entry| entry.index);
    if applied_index > last_index {
        return Err(format!(
            "the page store is at raft index {applied_index}, past the WAL's last entry {last_index}"
        ));
    }
    let mut hard_state = recovered
        .hard_state
        .as_ref()
        .map(wal::hard_state_from_record)
        .unwrap_or_default();
    // Only committed entries are applied, so the commit index is at least the
    // applied one even when a commit-only hard state was never synced.
    hard_state.commit = hard_state.commit.max(applied_index);
    if conf_state.voters == [member_id] && conf_state.voters_outgoing.is_empty() {
        hard_state.commit = hard_state.commit.max(sole_voter_commit(&entries, applied_index));
    }
    if hard_state.commit > last_index {
        return Err(format!(
            "hard state commit {} is past the last entry {last_index}",
            hard_state.commit
        ));
    }
    Ok(RaftLog::new(
        hard_state,
        conf_state,
        snapshot.index,
        snapshot.term,
        entries,
    ))
}

/// How far a sole voter's log is committed: to its end, since its own
/// persistence is the quorum, but no further than its first configuration
/// change after `applied_index` (once applied, that change may have added
/// voters whose acknowledgement the entries after it needed). Raft would
/// commit them too, once this term's first entry is persisted: known now, they
/// are applied at start without writing anything, also on a full disk.
fn sole_voter_commit(entries: &[Entry], applied_index: u64) -> u64 {
    let unapplied = entries.iter().filter(|entry| entry.index > applied_index);
    let mut commit = applied_index;
    for entry in unapplied {
        commit = entry.index;
        if entry.get_entry_type() != EntryType::EntryNormal {
            break;
        }
    }
    commit
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, entry_type: EntryType) -> Entry {
        let mut entry = Entry {
            index,
            term: 1,
            ..Default::default()
        };
        entry.set_entry_type(entry_type);
        entry
    }

    #[test]
    fn a_sole_voters_log_is_committed_up_to_its_first_configuration_change() {
        let normal = |index| entry(index, EntryType::EntryNormal);
        let log = [normal(4), normal(5), normal(6)];
        assert_eq!(sole_voter_commit(&log, 3), 6, "everything it persisted");
        assert_eq!(sole_voter_commit(&log, 6), 6);
        assert_eq!(sole_voter_commit(&[], 3), 3);
        let with_change = [normal(4), entry(5, EntryType::EntryConfChangeV2), normal(6)];
        assert_eq!(
            sole_voter_commit(&with_change, 3),
            5,
            "the change itself, not what follows"
        );
        assert_eq!(
            sole_voter_commit(&with_change, 5),
            6,
            "a change applied already is in force"
        );
    }
}
