//! The store core's background work between events: reads too large for one
//! step, and physical compaction in bounded steps with a rest after each.

use std::time::{Duration, Instant};

use super::StoreCore;
use crate::fatal::fatal;

/// A compaction step compacts at most this many keys of the index, or removes
/// at most this many revisions: about half a millisecond, the longest a write
/// can wait on one step. (Half etcd's `--compaction-batch-limit` default: at
/// 1000 the p99 of puts during a compaction was a step higher.)
pub const COMPACTION_BATCH_REVISIONS: usize = 500;
/// The store core's rest after each compaction step: the next starts no
/// sooner, so a compaction of millions of revisions takes about a fifth of
/// the core and writes meanwhile find it free (etcd sleeps 10 ms between its
/// batches of 1000). Events do not cut the rest short: under load an event
/// comes every few hundred microseconds. Measured with puts at 2,000/s during
/// a compaction of 1M revisions on a 2-CPU machine: with no rest, p99 9x the
/// quiet one; with 2 ms after steps of 500, 1.8x, and the compaction takes
/// 12 s (etcd 3.4: about 30 s).
pub const COMPACTION_STEP_REST: Duration = Duration::from_millis(2);

impl StoreCore {
    /// True while physical compaction has revisions left to remove, or a
    /// read is in progress.
    pub fn has_background_work(&self) -> bool {
        self.mvcc.compaction_pending() || self.watchers.has_catch_up_work() || self.stepped_reads.pending()
    }

    /// How much longer background work rests at `now`; None: a step may run now.
    pub fn background_rest(&self, now: Instant) -> Option<Duration> {
        if self.stepped_reads.pending() {
            return self.stepped_reads.rest();
        }
        let rest = self.compaction_rest_until?.checked_duration_since(now)?;
        (self.mvcc.compaction_pending() && !rest.is_zero()).then_some(rest)
    }

    /// One bounded step of a read in progress, or else of the running compaction.
    pub fn background_step(&mut self, now: Instant) {
        self.now = now;
        if self.stepped_reads.pending() {
            let header = self.outer_header();
            if let Some((reader, result)) = self.stepped_reads.step(&self.mvcc, &header) {
                self.deliver_read(reader, result);
            }
            return;
        }
        if !self.mvcc.compaction_pending() {
            return; // only watchers to catch up: `drive` does that
        }
        let done = self
            .mvcc
            .compact_step(COMPACTION_BATCH_REVISIONS)
            .unwrap_or_else(|error| fatal(&format!("compaction failed: {error}")));
        self.compaction_rest_until = Some(self.now + COMPACTION_STEP_REST);
        if done {
            self.commits.compaction_done();
        }
    }
}
