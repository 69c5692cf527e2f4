//! What a write did: one [`Change`] per key a revision touched, in (main, sub)
//! order. Watchers are fed from these, live (captured as writes happen) and from
//! history (read back from the revision table), so every writer (Put, DeleteRange,
//! Txn, lease expiry) produces them without hooks of its own.

use ringkv_proto::mvccpb::KeyValue;

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
