//! The page-store commit pipeline: when the next commit is due, the one in
//! flight, what the last durable one holds, and the physical compactions
//! waiting for a commit to make their removal durable. Bookkeeping only: the
//! store core seals and runs commits (`maybe_commit`, `finish_commit`).
//!
//! A physical compaction's caller moves through three lists: `running` while
//! revisions are still being removed, `pending` once the removal is done in
//! the writer's view, `committing` once a commit holding it is in flight; it
//! is answered when that commit is durable.

use std::time::{Duration, Instant};

use raft::eraftpb::ConfState;

use super::Waiter;

/// A page-store commit in flight: the applied index it makes durable.
pub(super) struct CommitInFlight {
    pub applied_index: u64,
    /// The raft configuration as of `applied_index`: applying goes on while the
    /// commit runs, and may change it.
    pub conf_state: ConfState,
}

pub(super) struct CommitPipeline {
    /// `--backend-batch-limit`: applied entries that make a commit due.
    batch_limit: usize,
    /// `--backend-batch-interval`: time since the last commit that makes one due.
    batch_interval: Duration,
    in_flight: Option<CommitInFlight>,
    /// Changes to the store since the last commit began (applied entries, and
    /// records such as the membership stored with the data).
    changes_since_commit: usize,
    last_commit: Instant,
    /// The applied index the last durable commit holds.
    durable_applied_index: u64,
    physical_running: Vec<Waiter>,
    physical_pending: Vec<Waiter>,
    physical_committing: Vec<Waiter>,
}

impl CommitPipeline {
    /// A pipeline over a page store whose durable commit holds `durable_applied_index`.
    pub fn new(durable_applied_index: u64, now: Instant, batch_limit: usize, batch_interval: Duration) -> Self {
        CommitPipeline {
            batch_limit,
            batch_interval,
            in_flight: None,
            changes_since_commit: 0,
            last_commit: now,
            durable_applied_index,
            physical_running: Vec::new(),
            physical_pending: Vec::new(),
            physical_committing: Vec::new(),
        }
    }

    pub fn in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    pub fn durable_applied_index(&self) -> u64 {
        self.durable_applied_index
    }

    /// The store changed (an entry applied, a record stored with the data):
    /// the next commit has something to make durable.
    pub fn note_change(&mut self) {
        self.changes_since_commit += 1;
    }

    /// Whether a commit should start now: none is in flight, and something
    /// waits to be durable and the batch is full or old enough (`interval_elapsed`:
    /// the batch timer fired), or `forced` (a space job needs a commit now).
    pub fn due(&self, now: Instant, interval_elapsed: bool, forced: bool) -> bool {
        if self.in_flight.is_some() {
            return false;
        }
        if forced {
            return true;
        }
        if self.changes_since_commit == 0 && self.physical_pending.is_empty() {
            return false;
        }
        interval_elapsed
            || self.changes_since_commit >= self.batch_limit
            || now.saturating_duration_since(self.last_commit) >= self.batch_interval
    }

    /// A commit of everything applied up to `commit.applied_index` is in flight.
    pub fn begin(&mut self, now: Instant, commit: CommitInFlight) {
        assert!(self.in_flight.is_none(), "one commit at a time");
        self.in_flight = Some(commit);
        self.changes_since_commit = 0;
        self.last_commit = now;
        self.physical_committing.append(&mut self.physical_pending);
    }

    /// The commit in flight is durable: it, and the physical compactions it
    /// made durable (to be answered).
    pub fn finish(&mut self) -> (CommitInFlight, Vec<Waiter>) {
        let committed = self.in_flight.take().expect("a commit was in flight");
        self.durable_applied_index = committed.applied_index;
        (committed, std::mem::take(&mut self.physical_committing))
    }

    /// A physical compaction's entry is applied: its caller waits for the
    /// removal (`compaction_running`) and then for a commit.
    pub fn wait_physical(&mut self, waiter: Waiter, compaction_running: bool) {
        if compaction_running {
            self.physical_running.push(waiter);
        } else {
            self.physical_pending.push(waiter);
        }
    }

    /// The running compaction removed its last revision.
    pub fn compaction_done(&mut self) {
        self.physical_pending.append(&mut self.physical_running);
    }

    /// The page store was replaced by a snapshot holding `applied_index`: that
    /// is durable, and every physical compaction waits on the new store's
    /// compaction (`compaction_running`) or its next commit.
    pub fn store_replaced(&mut self, applied_index: u64, compaction_running: bool) {
        assert!(self.in_flight.is_none(), "no commit runs while a snapshot is installed");
        self.durable_applied_index = applied_index;
        self.changes_since_commit = 0;
        let mut waiters = std::mem::take(&mut self.physical_committing);
        waiters.append(&mut self.physical_pending);
        waiters.append(&mut self.physical_running);
        if compaction_running {
            self.physical_running = waiters;
        } else {
            self.physical_pending = waiters;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 3;
    const INTERVAL: Duration = Duration::from_millis(100);

    fn pipeline(now: Instant) -> CommitPipeline {
        CommitPipeline::new(10, now, LIMIT, INTERVAL)
    }

    fn commit(applied_index: u64) -> CommitInFlight {
        CommitInFlight {
            applied_index,
            conf_state: ConfState::default(),
        }
    }

    fn waiter(call_id: u64) -> Waiter {
        Waiter { client: 0, call_id }
    }

    fn call_ids(waiters: &[Waiter]) -> Vec<u64> {
        waiters.iter().map(|waiter| waiter.call_id).collect()
    }

    #[test]
    fn nothing_changed_is_never_due_unless_forced() {
        let now = Instant::now();
        let pipeline = pipeline(now);
        assert!(!pipeline.due(now + INTERVAL * 10, true, false));
        assert!(pipeline.due(now, false, true));
    }

    #[test]
    fn a_commit_is_due_when_the_batch_is_full_or_old() {
        let now = Instant::now();
        let mut pipeline = pipeline(now);
        pipeline.note_change();
        assert!(!pipeline.due(now, false, false));
        assert!(pipeline.due(now, true, false), "the batch timer fired");
        assert!(pipeline.due(now + INTERVAL, false, false), "the batch is old");
        pipeline.note_change();
        pipeline.note_change();
        assert!(pipeline.due(now, false, false), "the batch is full");
    }

    #[test]
    fn one_commit_at_a_time_and_finishing_makes_its_index_durable() {
        let now = Instant::now();
        let mut pipeline = pipeline(now);
        pipeline.note_change();
        pipeline.begin(now, commit(12));
        assert!(pipeline.in_flight());
        assert!(!pipeline.due(now + INTERVAL, true, true));
        pipeline.note_change();
        let (committed, answered) = pipeline.finish();
        assert_eq!(committed.applied_index, 12);
        assert!(answered.is_empty());
        assert_eq!(pipeline.durable_applied_index(), 12);
        assert!(pipeline.due(now, true, false), "a change came during the commit");
    }

    #[test]
    fn a_physical_compaction_is_answered_by_the_commit_after_its_removal() {
        let now = Instant::now();
        let mut pipeline = pipeline(now);
        pipeline.wait_physical(waiter(1), true);
        pipeline.wait_physical(waiter(2), false);
        assert!(pipeline.due(now, true, false), "a finished removal waits to be durable");
        pipeline.begin(now, commit(10));
        pipeline.compaction_done();
        let (_, answered) = pipeline.finish();
        assert_eq!(
            call_ids(&answered),
            vec![2],
            "1 was still removing when the commit began"
        );
        pipeline.begin(now, commit(10));
        let (_, answered) = pipeline.finish();
        assert_eq!(call_ids(&answered), vec![1]);
    }

    #[test]
    fn a_replaced_store_makes_every_physical_compaction_wait_on_the_new_one() {
        let now = Instant::now();
        let mut pipeline = pipeline(now);
        pipeline.wait_physical(waiter(1), true);
        pipeline.wait_physical(waiter(2), false);
        pipeline.begin(now, commit(10));
        pipeline.wait_physical(waiter(3), false);
        let (_, answered) = pipeline.finish();
        assert_eq!(call_ids(&answered), vec![2]);
        pipeline.note_change();
        pipeline.store_replaced(40, true);
        assert_eq!(pipeline.durable_applied_index(), 40);
        assert!(
            !pipeline.due(now + INTERVAL, true, false),
            "running waits need no commit yet"
        );
        pipeline.compaction_done();
        pipeline.begin(now, commit(41));
        let (_, answered) = pipeline.finish();
        let mut ids = call_ids(&answered);
        ids.sort_unstable();
        assert_eq!(ids, vec![1, 3]);
    }
}
