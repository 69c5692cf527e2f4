//! Raft snapshots on the store core: the page store is the snapshot.
//!
//! **Sending** (leader): raft asks `RaftLog::snapshot` for metadata only and
//! emits a MsgSnapshot. That message waits here until no page-store commit is
//! in flight, then the latest durable commit is pinned (so its pages are not
//! reused while read) and streamed by the peer transport; the message's
//! metadata is set to that commit (never older than what raft chose). Raft
//! hears how it went (`report_snapshot`) once the follower has acknowledged the
//! durable file, and the pin is released.
//!
//! **Installing** (follower): the transport hands over a MsgSnapshot only
//! once its file is durable in `snap/`. Raft decides whether to restore; if it
//! does, the Ready carrying the snapshot is persisted as a WAL snapshot record
//! (the commit point: replay drops the superseded log, see docs/wal-format.md),
//! and only after that record is durable is the file renamed over the page
//! store and reopened. A crash in between is finished at the next start
//! (`bootstrap::install_interrupted`). Committed entries that came with the
//! Ready are applied after the install, on the new store.

use std::path::Path;

use raft::eraftpb::{Entry, Message as RaftMessage, MessageType, SnapshotMetadata};
use raft::SnapshotStatus;
use ringkv_datadir::layout::{self, SNAP_DIR, STORE_FILE};
use ringkv_engine::mvcc::{Mvcc, SnapshotSource};

use super::super::membership::Membership;
use super::StoreCore;
use crate::fatal::fatal;

/// A snapshot from the leader whose WAL record is being made durable.
pub(super) struct Install {
    metadata: SnapshotMetadata,
    /// Committed entries after the snapshot that came with its Ready.
    pub(super) committed: Vec<Entry>,
}

impl StoreCore {
    /// Sends raft's messages; MsgSnapshots wait for `start_snapshot_sends`.
    pub(super) fn send_messages(&mut self, messages: Vec<RaftMessage>) {
        let (snapshots, others): (Vec<_>, Vec<_>) = messages
            .into_iter()
            .partition(|message| message.get_msg_type() == MessageType::MsgSnapshot);
        self.transport.send(others);
        self.snapshots_due.extend(snapshots);
    }

    /// Between page-store commits: pins the durable commit for each snapshot
    /// raft wants sent, one stream per peer at a time.
    pub(super) fn start_snapshot_sends(&mut self) {
        if self.commit.is_some() || self.snapshots_due.is_empty() {
            return;
        }
        for mut message in std::mem::take(&mut self.snapshots_due) {
            let to = message.to;
            if self.snapshots_sending.contains_key(&to) {
                // Raft waits for the report of the one in flight before asking again.
                continue;
            }
            let Some(point) = self.raw.store().snapshot_point().cloned() else {
                self.raw.report_snapshot(to, SnapshotStatus::Failure);
                continue;
            };
            assert_eq!(
                point.index, self.durable_applied_index,
                "between commits, the snapshot point is the durable commit that is pinned"
            );
            let source = self.pin_commit();
            let txid = source.txid();
            message.mut_snapshot().set_metadata(point);
            match self.transport.send_snapshot(to, message, source) {
                Ok(()) => {
                    self.snapshots_sending.insert(to, txid);
                }
                Err(source) => {
                    self.unpin_commit(source.txid());
                    self.raw.report_snapshot(to, SnapshotStatus::Failure);
                }
            }
        }
    }

    /// A snapshot stream ended: release its commit and tell raft.
    pub(super) fn snapshot_sent(&mut self, to: u64, txid: u64, delivered: bool) {
        assert_eq!(self.snapshots_sending.remove(&to), Some(txid), "one stream per peer");
        self.unpin_commit(txid);
        if delivered {
            self.metrics.snapshots_sent += 1;
            self.raw.report_snapshot(to, SnapshotStatus::Finish);
        } else {
            self.metrics.snapshots_send_failed += 1;
            self.raw.report_snapshot(to, SnapshotStatus::Failure);
        }
    }

    /// A snapshot's file is durable: raft decides whether to restore it. A file
    /// raft does not take is removed (newer ones stay: one may be pending).
    pub(super) fn snapshot_received(&mut self, message: RaftMessage, path: &Path) {
        let index = message.get_snapshot().get_metadata().index;
        self.metrics.snapshots_received += 1;
        if let Err(error) = self.raw.step(message) {
            tracing::debug!(%error, "snapshot message not stepped");
        }
        let pending = self.raw.raft.raft_log.unstable().snapshot.as_ref();
        if pending.map(|snapshot| snapshot.get_metadata().index) != Some(index) {
            tracing::info!(index, "raft did not take the snapshot; removing it");
            if let Err(error) = std::fs::remove_file(path) {
                tracing::warn!(%error, path = %path.display(), "cannot remove an unused snapshot");
            }
        }
    }

    /// True from the moment raft takes a snapshot until it is installed: no
    /// page-store commit may start, since the store is about to be replaced.
    pub(super) fn snapshot_pending(&self) -> bool {
        self.installing.is_some() || self.raw.raft.raft_log.unstable().snapshot.is_some()
    }

    /// The first half of an install, in the Ready that carries the snapshot:
    /// the raft log starts over at the snapshot; the WAL record is on its way.
    pub(super) fn begin_install(&mut self, metadata: SnapshotMetadata) {
        assert!(self.commit.is_none(), "no commit runs while a snapshot is pending");
        assert!(self.installing.is_none());
        tracing::info!(
            index = metadata.index,
            term = metadata.term,
            "installing a snapshot from the leader"
        );
        self.raw.mut_store().apply_snapshot(&metadata);
        self.installing = Some(Install {
            metadata,
            committed: Vec::new(),
        });
    }

    /// The second half, once the WAL holds the snapshot record: the page store
    /// becomes the received file, and everything derived from it follows.
    pub(super) fn finish_install(&mut self, install: Install) {
        let index = install.metadata.index;
        let data_dir = &self.settings.data_dir;
        let snap_dir = data_dir.join(SNAP_DIR);
        let received = layout::received_path(&snap_dir, index);
        let store_path = data_dir.join(STORE_FILE);
        layout::replace_store(&received, &store_path)
            .unwrap_or_else(|error| fatal(&format!("installing snapshot {}: {error}", received.display())));
        let mut mvcc =
            Mvcc::open(&store_path).unwrap_or_else(|error| fatal(&format!("opening the installed snapshot: {error}")));
        if mvcc.applied_index() != index {
            fatal(&format!(
                "the installed snapshot holds raft index {}, not {index}",
                mvcc.applied_index()
            ));
        }
        mvcc.capture_changes();
        let old_revision = self.mvcc.current_revision();
        self.mvcc = mvcc;
        // Pins of the old store are released by their holders later.
        self.orphaned_pins.append(&mut self.pinned);
        self.membership = self
            .mvcc
            .membership()
            .map(Membership::decode)
            .unwrap_or_else(|| Err("none stored".to_string()))
            .unwrap_or_else(|error| fatal(&format!("the installed snapshot's membership: {error}")));
        self.membership_changed();
        self.watchers.store_replaced(old_revision);
        self.durable_applied_index = index;
        self.applied_since_commit = 0;
        self.after_store_replaced();
        remove_older_snapshots(&snap_dir, index);
        self.raw.advance_apply_to(index);
        self.apply_committed(install.committed);
    }

    /// Local jobs on the old store end: a defragmentation is answered (the new
    /// store is a fresh copy), physical compaction waits on the new store's.
    fn after_store_replaced(&mut self) {
        self.end_defragment();
        let mut waiters = std::mem::take(&mut self.physical_waiters_committing);
        waiters.append(&mut self.physical_waiters_pending);
        if self.mvcc.compaction_pending() {
            self.physical_waiters_running.append(&mut waiters);
        } else {
            self.physical_waiters_pending = waiters;
            self.physical_waiters_pending.append(&mut self.physical_waiters_running);
        }
    }

    /// Pins the latest durable page-store commit (no commit may be in flight).
    pub(super) fn pin_commit(&mut self) -> SnapshotSource {
        let source = self
            .mvcc
            .pin_snapshot()
            .unwrap_or_else(|error| fatal(&format!("pinning a snapshot failed: {error}")));
        self.pinned.push(source.txid());
        source
    }

    /// Releases a pin. A pin of a store an install replaced is only forgotten;
    /// when a txid is pinned in both stores, the old one is released first,
    /// which holds the new store's pages longer, never shorter.
    pub(super) fn unpin_commit(&mut self, txid: u64) {
        if let Some(at) = self.orphaned_pins.iter().position(|&pin| pin == txid) {
            self.orphaned_pins.swap_remove(at);
            return;
        }
        let at = self
            .pinned
            .iter()
            .position(|&pin| pin == txid)
            .unwrap_or_else(|| panic!("commit {txid} released but not pinned"));
        self.pinned.swap_remove(at);
        self.mvcc.unpin_snapshot(txid);
    }
}

/// Removes received snapshots up to `index` (the installed one was renamed).
fn remove_older_snapshots(snap_dir: &Path, index: u64) {
    let Ok(entries) = std::fs::read_dir(snap_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Some(older) = entry.file_name().to_str().and_then(layout::received_index) else {
            continue;
        };
        if older <= index {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
