//! The store core's side of Snapshot and Defragment: both work on the page
//! store's commits, so both are driven from `maybe_commit` and `finish_commit`.
//!
//! Snapshot: the call waits until everything applied when it arrived is in a
//! durable page-store commit (etcd forces a backend commit the same way), then
//! that commit is pinned and handed to the client core, which streams the copy
//! off this core and releases the pin when done (see `client::snapshot`).
//!
//! Defragment: one bounded relocation step before each commit, commits back to
//! back until the pass is done (a second pass if the first packed leaves and
//! so lowered the target), then a settling commit and one that trims the
//! file. Writers go on
//! between steps; no step holds them for longer than one commit. Like etcd's, it
//! is local to this member, not replicated.

use ringkv_engine::mvcc::MvccError;
use ringkv_proto::etcdserverpb as pb;

use super::StoreCore;
use crate::fatal::fatal;
use crate::store::messages::{ClientSnapshot, Response};

/// Leaves one defragmentation step visits: bounds the work (and the pages
/// written) between two commits.
const DEFRAG_LEAVES_PER_STEP: usize = 256;

/// Relocation passes one defragmentation makes at most. A pass packs the
/// leaves it visits (see `btree::relocate`), which frees pages below its
/// target, set before it started: a second pass gathers the live pages below
/// the lower target that leaves, so the trim gives those pages back too.
const DEFRAG_PASSES_MAX: u32 = 2;

/// A defragmentation in progress and who waits for it.
pub(super) struct DefragJob {
    /// Live pages gather below this page (see `btree::relocate`).
    target: u64,
    /// Relocation passes begun, the one running included.
    passes: u32,
    phase: DefragPhase,
    waiters: Vec<(usize, u64)>,
}

enum DefragPhase {
    /// Relocation steps remain; the next starts at this key.
    Relocating(Vec<u8>),
    /// The pass is done. One more commit first: the last step's commit may have
    /// put its freelist page at the very end of the file (when it had no free
    /// page below), and a commit can only give back pages the previous one no
    /// longer uses.
    Settling,
    /// The next commit trims the file.
    TrimDue,
    /// The commit in flight trims the file; its end answers the waiters.
    Trimming,
}

/// A Snapshot call waiting for the page store to hold `applied_index`.
pub(super) struct SnapshotWait {
    client: usize,
    call_id: u64,
    applied_index: u64,
}

impl StoreCore {
    pub(super) fn defragment(&mut self, client: usize, call_id: u64) {
        match &mut self.defrag {
            // One pass serves every caller that asked while it runs.
            Some(job) => job.waiters.push((client, call_id)),
            None => {
                self.defrag = Some(DefragJob {
                    target: self.mvcc.defragment_target(),
                    passes: 1,
                    phase: DefragPhase::Relocating(Vec::new()),
                    waiters: vec![(client, call_id)],
                });
            }
        }
    }

    pub(super) fn snapshot(&mut self, client: usize, call_id: u64) {
        self.snapshot_waits.push(SnapshotWait {
            client,
            call_id,
            applied_index: self.mvcc.applied_index(),
        });
    }

    pub(super) fn release_snapshot(&mut self, txid: u64) -> Response {
        self.unpin_commit(txid);
        Response::SnapshotReleased
    }

    /// True if a space job needs a commit now, even with nothing applied.
    pub(super) fn space_needs_commit(&self) -> bool {
        self.defrag.is_some()
            || self
                .snapshot_waits
                .iter()
                .any(|wait| wait.applied_index > self.commits.durable_applied_index())
    }

    /// Runs just before a commit is sealed: the next step of a defragmentation.
    pub(super) fn space_before_commit(&mut self) {
        let Some(job) = &mut self.defrag else {
            return;
        };
        job.phase = match std::mem::replace(&mut job.phase, DefragPhase::TrimDue) {
            DefragPhase::Relocating(from) => {
                match self.mvcc.defragment_step(&from, job.target, DEFRAG_LEAVES_PER_STEP) {
                    Ok(Some(next)) => DefragPhase::Relocating(next),
                    Ok(None) if job.passes < DEFRAG_PASSES_MAX && self.mvcc.defragment_target() < job.target => {
                        job.passes += 1;
                        job.target = self.mvcc.defragment_target();
                        DefragPhase::Relocating(Vec::new())
                    }
                    Ok(None) => DefragPhase::Settling,
                    Err(error) => space_failure("defragmenting", error),
                }
            }
            DefragPhase::Settling => DefragPhase::TrimDue,
            DefragPhase::TrimDue => {
                self.mvcc.request_trim();
                DefragPhase::Trimming
            }
            DefragPhase::Trimming => unreachable!("the trimming commit is still in flight"),
        };
    }

    /// Runs after a commit is durable: answers a finished defragmentation.
    pub(super) fn space_after_commit(&mut self) {
        let Some(job) = self.defrag.take_if(|job| matches!(job.phase, DefragPhase::Trimming)) else {
            return;
        };
        for (client, call_id) in job.waiters {
            let response = pb::DefragmentResponse { header: None };
            self.reply(client, call_id, Ok(Response::Defragment(response)));
        }
    }

    /// Answers a defragmentation in progress now: the store it worked on was
    /// replaced by a snapshot from the leader, a fresh copy.
    pub(super) fn end_defragment(&mut self) {
        if let Some(job) = self.defrag.take() {
            for (client, call_id) in job.waiters {
                let response = pb::DefragmentResponse { header: None };
                self.reply(client, call_id, Ok(Response::Defragment(response)));
            }
        }
    }

    /// Between commits: pins the durable commit for every Snapshot call it
    /// satisfies.
    pub(super) fn serve_snapshots(&mut self) {
        if self.commits.in_flight() || self.snapshot_waits.is_empty() {
            return;
        }
        let durable = self.commits.durable_applied_index();
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.snapshot_waits)
            .into_iter()
            .partition(|wait| wait.applied_index <= durable);
        self.snapshot_waits = waiting;
        for wait in ready {
            let snapshot = ClientSnapshot {
                source: self.pin_commit(),
                spool_dir: self.files.spool_dir(),
                term: self.raw.raft.term,
            };
            self.reply(wait.client, wait.call_id, Ok(Response::Snapshot(Box::new(snapshot))));
        }
    }
}

/// The page store failed under a space job: the server stops, as for any
/// storage failure.
fn space_failure(doing: &str, error: MvccError) -> ! {
    fatal(&format!("{doing} failed: {error}"))
}
