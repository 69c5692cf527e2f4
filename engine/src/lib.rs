//! ringkv's storage engine. No networking and no raft here: the server drives it.
//!
//! Layers, each calling only the one below:
//! - [`mvcc`]: etcd's multi-version key-value model (revisions, key index, compaction)
//! - [`btree`]: a copy-on-write B-tree over fixed-size pages
//! - [`page`]: the page file: allocation, meta pages, freelist, mmap reads, commits
//!
//! and beside them [`wal`]: the write-ahead log that is also the raft log.
//! Both the WAL and the page file survive a full disk ([`no_space`]).

pub mod btree;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod mvcc;
pub mod no_space;
pub mod page;
mod prefetch;
pub mod wal;

/// Why stored bytes were refused as corrupt (the reason of `PageError::Corrupt`,
/// `WalError::Corrupt` and `MvccError::Corrupt`): the typed error of the
/// decoder that refused them, kept as the source, or the text of what a
/// check found.
pub type CorruptReason = Box<dyn std::error::Error + Send + Sync>;
