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

use raft::eraftpb::{Message as RaftMessage, MessageType, SnapshotMetadata};
use raft::SnapshotStatus;
use ringkv_engine::mvcc::SnapshotSource;

use super::super::appends::join_appends;
use super::super::bootstrap::RAFT_MAX_MESSAGE_BYTES;
use super::super::membership::Membership;
use super::Effect;
use super::{Install, PinnedIn, StoreCore};
use crate::fatal::fatal;

impl StoreCore {
    /// Sends raft's messages, each follower's appends joined (`appends`);
    /// MsgSnapshots wait for `start_snapshot_sends`.
    pub(super) fn send_messages(&mut self, messages: Vec<RaftMessage>) {
        let messages = join_appends(messages, RAFT_MAX_MESSAGE_BYTES as usize);
        let (snapshots, others): (Vec<_>, Vec<_>) = messages
            .into_iter()
            .partition(|message| message.get_msg_type() == MessageType::MsgSnapshot);
        if !others.is_empty() {
            self.metrics.peer_timing.sent(self.now, &others);
            self.outbox.push(Effect::Raft(others));
        }
        for snapshot in snapshots {
            self.snapshot_flow.queue(snapshot);
        }
    }

    /// Between page-store commits: pins the durable commit for each snapshot
    /// raft wants sent, one stream per peer at a time.
    pub(super) fn start_snapshot_sends(&mut self) {
        if self.commits.in_flight() || !self.snapshot_flow.has_due() {
            return;
        }
        for mut message in self.snapshot_flow.take_due() {
            let to = message.to;
            if self.snapshot_flow.sending_to(to) {
                // Raft waits for the report of the one in flight before asking again.
                continue;
            }
            let Some(point) = self.raw.store().snapshot_point().cloned() else {
                self.raw.report_snapshot(to, SnapshotStatus::Failure);
                continue;
            };
            assert_eq!(
                point.index,
                self.commits.durable_applied_index(),
                "between commits, the snapshot point is the durable commit that is pinned"
            );
            let source = self.pin_commit();
            let txid = source.txid();
            message.mut_snapshot().set_metadata(point);
            // A peer the transport cannot stream to answers `snapshot_sent` at once.
            self.snapshot_flow.started(to, txid);
            self.outbox.push(Effect::SendSnapshot { to, message, source });
        }
    }

    /// A snapshot stream ended: release its commit and tell raft.
    pub(super) fn snapshot_sent(&mut self, to: u64, txid: u64, delivered: bool) {
        self.snapshot_flow.ended(to, txid);
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
            self.files.discard_received(path);
        }
    }

    /// True from the moment raft takes a snapshot until it is installed: no
    /// page-store commit may start, since the store is about to be replaced.
    pub(super) fn snapshot_pending(&self) -> bool {
        self.snapshot_flow.installing() || self.raw.raft.raft_log.unstable().snapshot.is_some()
    }

    /// The first half of an install, in the Ready that carries the snapshot:
    /// the raft log starts over at the snapshot; the WAL record is on its way.
    pub(super) fn begin_install(&mut self, metadata: SnapshotMetadata) {
        assert!(!self.commits.in_flight(), "no commit runs while a snapshot is pending");
        tracing::info!(
            index = metadata.index,
            term = metadata.term,
            "installing a snapshot from the leader"
        );
        self.raw.mut_store().apply_snapshot(&metadata);
        self.snapshot_flow.begin_install(metadata);
    }

    /// The second half, once the WAL holds the snapshot record: the page store
    /// becomes the received file, and everything derived from it follows.
    pub(super) fn finish_install(&mut self, install: Install) {
        let index = install.metadata.index;
        let mut mvcc = self
            .files
            .install_received(index)
            .unwrap_or_else(|error| fatal(&error.to_string()));
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
        self.snapshot_flow.store_replaced();
        self.membership = self
            .mvcc
            .membership()
            .map(Membership::decode)
            .unwrap_or_else(|| Err("none stored".to_string()))
            .unwrap_or_else(|error| fatal(&format!("the installed snapshot's membership: {error}")));
        self.membership_changed();
        // Tokens stay: a follower's tokens are its own, as in etcd.
        self.auth = Self::stored_auth(&self.mvcc);
        self.watchers.store_replaced(old_revision);
        self.end_defragment();
        self.commits.store_replaced(index, self.mvcc.compaction_pending());
        self.raw.advance_apply_to(index);
        self.apply_committed(install.committed);
    }

    /// Pins the latest durable page-store commit (no commit may be in flight).
    pub(super) fn pin_commit(&mut self) -> SnapshotSource {
        let source = self
            .mvcc
            .pin_snapshot()
            .unwrap_or_else(|error| fatal(&format!("pinning a snapshot failed: {error}")));
        self.snapshot_flow.pinned(source.txid());
        source
    }

    /// Releases a pin (see `SnapshotFlow::release`).
    pub(super) fn unpin_commit(&mut self, txid: u64) {
        if self.snapshot_flow.release(txid) == PinnedIn::Current {
            self.mvcc.unpin_snapshot(txid);
        }
    }
}
