//! Page-store commits on the store core: sealing one when the pipeline says it
//! is due (`commit_pipeline`), and what follows when it is durable: the raft log
//! and the WAL let go of what the commit holds, physical compactions are answered.

use ringkv_datadir::wal;
use ringkv_engine::mvcc::{CommittedPlan, MvccError, PageError};
use ringkv_proto::etcdserverpb as pb;

use super::super::messages::Response;
use super::super::wal_io::WalJob;
use super::commit_pipeline::CommitInFlight;
use super::{Effect, StoreCore, Waiter};
use crate::apply;
use crate::etcd_error::EtcdError;
use crate::fatal::fatal;

impl StoreCore {
    /// Starts a page-store commit when enough was applied or enough time passed.
    /// Snapshot and Defragment need commits now, applied writes or not.
    pub(super) fn maybe_commit(&mut self, interval_elapsed: bool) {
        if self.commits.in_flight() || self.snapshot_pending() {
            return;
        }
        let forced = self.space_needs_commit();
        if !self.commits.due(self.now, interval_elapsed, forced) {
            return;
        }
        self.space_before_commit();
        let applied_index = self.mvcc.applied_index();
        let plan = self
            .mvcc
            .begin_commit()
            .unwrap_or_else(|error| fatal(&format!("page-store commit failed: {error}")));
        let conf_state = self.raw.store().conf_state().clone();
        let commit = CommitInFlight {
            applied_index,
            conf_state,
        };
        self.commits.begin(self.now, commit);
        self.outbox.push(Effect::Commit(plan));
    }

    pub(super) fn finish_commit(&mut self, result: Result<CommittedPlan, PageError>) {
        match self.mvcc.finish_commit(result) {
            Ok(()) => self.committed_after_no_space(),
            // Nothing was written: the commit stays in flight, and is retried.
            Err(MvccError::Storage(error @ PageError::NoSpace { .. })) => {
                self.commit_found_no_space(&error);
                return;
            }
            Err(error) => fatal(&format!("page-store commit failed: {error}")),
        }
        let (committed, physical_waiters) = self.commits.finish();
        self.space_after_commit();
        // The page store now holds every entry up to `applied_index`: the WAL and
        // the in-memory raft log can let go of them.
        // Followers and learners that lag catch up from the entries kept behind
        // that point; a member alone keeps none.
        let keep = if !self.membership.peers_of(self.settings.member_id).is_empty() {
            self.settings.catch_up_entries
        } else {
            0
        };
        let store = self.raw.mut_store();
        let durable_term = store
            .term_of(committed.applied_index)
            .expect("the log keeps what the page store has not made durable");
        store.set_snapshot_point(committed.applied_index, durable_term, committed.conf_state.clone());
        let index = committed
            .applied_index
            .saturating_sub(keep)
            .max(store.compacted_index());
        if index > store.compacted_index() {
            let term = store.term_of(index).expect("applied entries are in the log");
            let snapshot = wal::snapshot_record(index, term, &committed.conf_state);
            store.compact_to(index);
            self.outbox.push(Effect::Wal(WalJob::Release(snapshot)));
        }
        for waiter in physical_waiters {
            let response = pb::CompactionResponse {
                header: apply::revision_header(self.mvcc.current_revision()),
            };
            self.reply(waiter.client, waiter.call_id, Ok(Response::Compact(response)));
        }
    }

    pub(super) fn wait_for_physical_compaction(&mut self, waiter: Waiter, result: Result<Response, EtcdError>) {
        // The response is rebuilt when the wait ends (the revision is unchanged by
        // compaction); only success waits.
        assert!(result.is_ok());
        self.commits.wait_physical(waiter, self.mvcc.compaction_pending());
    }
}
