//! etcd's multi-version key-value model on the copy-on-write B-tree.
//!
//! Every write request gets the next revision; the revision table in the tree maps
//! each (main, sub) revision to the key-value it wrote (or a tombstone), and an
//! in-memory key index maps user keys to their revisions. Reads can ask for any
//! revision since the last compaction. The byte layout is in docs/mvcc-format.md.

mod change;
mod cursor;
mod hash;
mod key_index;
mod lease;
mod range_counts;
mod record;
mod revision;
mod store;

#[cfg(test)]
mod tests;

pub use crate::page::{CommitPlan, CommittedPlan, PageError, SnapshotSource};
pub use change::{Change, ChangeKind, HistoryChunk};
pub use cursor::RangeCursor;
pub use hash::{Crc32c, KvHash};
pub use lease::{Leases, NO_LEASE};
pub use revision::Revision;
pub use store::{Alarm, Mvcc, WriteTxn};

use ringkv_proto::mvccpb::KeyValue;

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
    Corrupt(String),
}
