//! etcd's multi-version key-value model on the copy-on-write B-tree.
//!
//! Every write request gets the next revision; the revision table in the tree maps
//! each (main, sub) revision to the key-value it wrote (or a tombstone), and an
//! in-memory key index maps user keys to their revisions. Reads can ask for any
//! revision since the last compaction. The byte layout is in docs/mvcc-format.md.

mod alarm;
mod change;
mod compact;
mod cursor;
mod hash;
mod key_index;
mod lease;
mod load;
mod meta;
mod open;
mod range_counts;
mod read;
mod record;
mod revision;
mod server_record;
mod snapshot_view;
mod space;
mod write;

#[cfg(test)]
mod tests;

pub use crate::page::{CommitPlan, CommittedPlan, PageError, SnapshotSource};
pub use alarm::Alarm;
pub use change::{Change, ChangeKind, HistoryChunk};
pub use cursor::RangeCursor;
pub use hash::{Crc32c, HashKvCursor, KvHash};
pub use lease::{AttachmentError, Leases, NO_LEASE};
pub use load::{LoadedMeta, Loader};
pub use revision::{Revision, RevisionKey, RevisionKeys};
pub use snapshot_view::{SnapshotView, StoredMeta, StoredRevision};
pub use write::WriteTxn;

use std::cell::RefCell;
use std::collections::BTreeSet;

use ringkv_proto::mvccpb::KeyValue;

use crate::btree::Tree;
use crate::CorruptReason;
use compact::IndexPass;
use cursor::ReadHolds;
use key_index::KeyIndex;
use range_counts::RangeCounts;
use server_record::ServerRecord;

/// Where a key span ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeEnd<'a> {
    /// Only the key itself.
    Key,
    /// Keys up to, not including, this one.
    Until(&'a [u8]),
    /// Every key from the start key on.
    ToEnd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySpan<'a> {
    pub key: &'a [u8],
    pub end: RangeEnd<'a>,
}

/// What one step of a stepped Range (`Mvcc::range_step`) may do at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepBudget {
    /// Keys visited in the key index.
    pub keys: usize,
    /// Bytes of key-values handed out.
    pub bytes: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RangeOptions {
    /// At most this many key-values (0: no limit). `count` is not limited.
    pub limit: usize,
    /// Read at this revision; 0 or less: the newest.
    pub rev: i64,
    /// Count only, return no key-values.
    pub count_only: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    /// Keys in the span at that revision, regardless of `limit`.
    pub count: usize,
    /// The reader's current revision (not the one read at), as etcd reports it.
    pub rev: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum MvccError {
    #[error("mvcc: required revision has been compacted")]
    Compacted,
    #[error("mvcc: required revision is a future revision")]
    FutureRev,
    #[error(transparent)]
    Storage(#[from] PageError),
    #[error("mvcc store is corrupt: {0}")]
    Corrupt(#[source] CorruptReason),
}

impl MvccError {
    pub fn corrupt(reason: impl Into<CorruptReason>) -> MvccError {
        MvccError::Corrupt(reason.into())
    }
}

/// The MVCC store: every write at a new revision, reads at any revision since the
/// last compaction, all kept in the B-tree's revision table with the key index in
/// memory. Semantics follow etcd's mvcc package (kvstore.go, kvstore_txn.go).
///
/// Its methods are split by job: `open` (the rebuild), `read`, `write`
/// (`WriteTxn`), `compact`, `meta` (commits), `change` (what watchers read),
/// `lease`, `alarm`, `server_record`, `hash`, `space` (snapshot pins,
/// defragmentation, sizes).
pub struct Mvcc {
    tree: Tree,
    /// How this store's revisions become tree keys.
    keys: RevisionKeys,
    index: KeyIndex,
    current_revision: i64,
    compact_revision: i64,
    /// The compaction whose physical removal finished last.
    finished_compact_revision: i64,
    /// While a compaction runs: the key index is compacted a bounded number
    /// of keys per step (this is where the pass goes on); the revisions it
    /// gives up are then removed from the tree, oldest first.
    index_pass: Option<IndexPass>,
    /// Revisions the index has given up, still to remove physically.
    pending_removal: BTreeSet<Revision>,
    applied_index: u64,
    /// Changes made since the last `take_changes`, when capture is on (the
    /// server's watchers need them; tools and tests leave it off so nothing grows).
    captured: Option<Vec<Change>>,
    leases: Leases,
    /// Active alarms, applied through raft and stored with the data.
    alarms: BTreeSet<Alarm>,
    membership: ServerRecord,
    conf_state: ServerRecord,
    auth: ServerRecord,
    /// What paginated Ranges leave for their next page (reads take `&self`).
    range_counts: RefCell<RangeCounts>,
    /// Revisions stepped Ranges still read at (see `cursor`).
    read_holds: ReadHolds,
}

impl Mvcc {
    pub fn current_revision(&self) -> i64 {
        self.current_revision
    }

    /// The revision of the last compaction; -1 before any (as etcd reports it).
    pub fn compact_revision(&self) -> i64 {
        self.compact_revision
    }
}
