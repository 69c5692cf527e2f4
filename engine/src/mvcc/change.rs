//! What a write did: one [`Change`] per key a revision touched, in (main, sub)
//! order. Watchers are fed from these, live (captured as writes happen) and from
//! history (read back from the revision table), so every writer (Put, DeleteRange,
//! Txn, lease expiry) produces them without hooks of its own.

use std::ops::Bound;

use ringkv_proto::mvccpb::KeyValue;

use super::record::decode_record;
use super::revision::Revision;
use super::{Mvcc, MvccError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Put,
    Delete,
}

/// One key's change at one revision. A delete's `kv` holds only the key and the
/// deleting revision as `mod_revision` (etcd's DELETE event shape).
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub kind: ChangeKind,
    pub kv: KeyValue,
}

impl Change {
    pub fn revision(&self) -> i64 {
        self.kv.mod_revision
    }
}

/// A bounded read of history: whole revisions only, so a revision's changes are
/// never split between two reads.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryChunk {
    pub changes: Vec<Change>,
    /// The first revision not covered by this read.
    pub next_revision: i64,
}

impl Mvcc {
    /// Starts keeping every change written from now on for `take_changes`. The
    /// owner must take them after each write or they accumulate.
    pub fn capture_changes(&mut self) {
        self.captured.get_or_insert_with(Vec::new);
    }

    /// The changes written since the last call, in revision order.
    pub fn take_changes(&mut self) -> Vec<Change> {
        self.captured.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Reads the changes of revisions `from..=to` back from the revision table, in
    /// revision order, stopping after the first whole revision at which at least
    /// `max_changes` were read. A revision at or below the compaction point is
    /// refused; at the compaction point itself only puts are returned, because its
    /// tombstones are removed by compaction (etcd's watchers see the same).
    pub fn history(&self, from: i64, to: i64, max_changes: usize) -> Result<HistoryChunk, MvccError> {
        assert!(max_changes > 0);
        if from < self.compact_revision {
            return Err(MvccError::Compacted);
        }
        let to = to.min(self.current_revision);
        let mut changes = Vec::new();
        if from > to {
            return Ok(HistoryChunk {
                changes,
                next_revision: from,
            });
        }
        let start = self.keys.key(Revision::new(from.max(0), 0));
        let end = self.keys.key(Revision::new(to + 1, 0));
        let mut last_main = from - 1;
        for entry in self.tree.range(Bound::Included(&start[..]), Bound::Excluded(&end[..])) {
            let (key, value) = entry?;
            let revision =
                Revision::from_key(&key).ok_or_else(|| MvccError::corrupt(format!("bad revision key {key:?}")))?;
            if revision.main != last_main && changes.len() >= max_changes {
                return Ok(HistoryChunk {
                    changes,
                    next_revision: revision.main,
                });
            }
            last_main = revision.main;
            let (tombstone, kv) = decode_record(&value)?;
            if tombstone && revision.main == self.compact_revision {
                continue;
            }
            let kind = if tombstone { ChangeKind::Delete } else { ChangeKind::Put };
            changes.push(Change { kind, kv });
        }
        Ok(HistoryChunk {
            changes,
            next_revision: to + 1,
        })
    }
}
