//! Compaction: reads below the point fail at once; the key index is then
//! compacted and the superseded revisions are removed from the tree, in
//! bounded steps between client requests.

use super::cursor::oldest_held;
use super::{Mvcc, MvccError};

/// Where a compaction's pass over the key index goes on.
pub(super) struct IndexPass {
    /// The last key compacted; None: the pass starts at the first key.
    pub(super) after: Option<Vec<u8>>,
}

impl Mvcc {
    /// Compacts at `revision`: reads below it fail from now on; the superseded
    /// revisions are removed later, in bounded steps (`compact_step`).
    pub fn compact(&mut self, revision: i64) -> Result<(), MvccError> {
        if revision <= self.compact_revision {
            return Err(MvccError::Compacted);
        }
        if revision > self.current_revision {
            return Err(MvccError::FutureRev);
        }
        self.compact_revision = revision;
        // A pass at an earlier point may be under way: this one starts over from
        // the first key, and drops everything that one would have and more.
        self.index_pass = Some(IndexPass { after: None });
        Ok(())
    }

    pub fn compaction_pending(&self) -> bool {
        self.finished_compact_revision < self.compact_revision
    }

    /// One bounded step of the running compaction: compacts up to `max_items`
    /// keys of the index, or once the index is done, removes up to that many
    /// revisions from the tree. True once the compaction has finished.
    ///
    /// Bounded because it runs on the store core between client requests: a
    /// whole pass over a large index at once stalls every write meanwhile
    /// (measured: docs/benchmarks.md, "Measurements behind the engine's code").
    ///
    /// While a stepped read below the compaction point is in progress, a step
    /// does nothing: what it would remove, that read still needs.
    pub fn compact_step(&mut self, max_items: usize) -> Result<bool, MvccError> {
        assert!(max_items > 0);
        if oldest_held(&self.read_holds).is_some_and(|held| held < self.compact_revision) {
            return Ok(false);
        }
        if let Some(pass) = self.index_pass.take() {
            let after = self.index.compact_keys(
                self.compact_revision,
                pass.after.as_deref(),
                max_items,
                &mut self.pending_removal,
            );
            self.index_pass = after.map(|key| IndexPass { after: Some(key) });
        } else {
            for _ in 0..max_items {
                let Some(revision) = self.pending_removal.pop_first() else {
                    break;
                };
                assert!(
                    revision.main <= self.compact_revision,
                    "only revisions at or below the point go"
                );
                let removed = self.tree.remove(&self.keys.key(revision))?;
                assert!(removed, "a compacted revision {revision:?} was stored");
            }
        }
        if self.index_pass.is_none() && self.pending_removal.is_empty() {
            self.finished_compact_revision = self.compact_revision;
        }
        Ok(!self.compaction_pending())
    }
}
