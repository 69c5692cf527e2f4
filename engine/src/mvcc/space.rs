//! The page file under the store: snapshot pins, defragmentation, and the byte
//! counts that Status and the quota report, and the whole-tree check.

use super::{Mvcc, MvccError};
use crate::btree::CheckReport;
use crate::page::{PageError, SnapshotSource};

impl Mvcc {
    /// Pins the last durable commit for a snapshot read off the store core. No
    /// commit may be in flight. The copy holds what was durable then: commit
    /// first to include everything applied.
    pub fn pin_snapshot(&mut self) -> Result<SnapshotSource, MvccError> {
        Ok(self.tree.pin_snapshot()?)
    }

    pub fn unpin_snapshot(&mut self, txid: u64) {
        self.tree.unpin_snapshot(txid);
    }

    /// The page below which a defragmentation pass starting now gathers the
    /// live pages (see `btree::relocate`).
    pub fn defragment_target(&self) -> u64 {
        self.tree.relocation_target()
    }

    /// One bounded step of a defragmentation pass: visits up to `leaves_max`
    /// leaves from `from`; returns where the next step starts, None after the
    /// last leaf. Commit after each step; after the last, commit once more
    /// (the last step's freelist page may sit at the end of the file), then
    /// call [`Mvcc::request_trim`] and commit to give the space back.
    pub fn defragment_step(
        &mut self,
        from: &[u8],
        target: u64,
        leaves_max: usize,
    ) -> Result<Option<Vec<u8>>, MvccError> {
        Ok(self.tree.relocate_step(from, target, leaves_max)?)
    }

    /// The next commit gives back the free pages at the end of the file.
    pub fn request_trim(&mut self) {
        self.tree.request_trim();
    }

    /// Walks the whole tree, every page read and checked (`Tree::check`).
    pub fn check_tree(&self) -> Result<CheckReport, PageError> {
        self.tree.check()
    }

    /// Bytes the page file takes on disk, preallocated space included.
    pub fn file_bytes(&self) -> u64 {
        self.tree.file_bytes()
    }

    /// Bytes of pages holding live data (etcd's dbSizeInUse).
    pub fn in_use_bytes(&self) -> u64 {
        self.tree.in_use_bytes()
    }

    /// Bytes of every page the store has used, live or free: the high-water mark
    /// that `--quota-backend-bytes` is checked against, and etcd's dbSize (bbolt's
    /// `Tx.Size`, its high-water page times the page size, not the file's length,
    /// which runs ahead of it by what was preallocated).
    pub fn allocated_bytes(&self) -> u64 {
        self.tree.allocated_bytes()
    }
}
