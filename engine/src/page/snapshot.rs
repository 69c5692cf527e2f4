//! A consistent copy of one durable commit, read off the store core while
//! commits go on.
//!
//! The commit is pinned in the freelist for as long as the copy is read, so none
//! of its pages is overwritten meanwhile (see `freelist`). The copy is itself a
//! page file that `PageStore::open` accepts: the pinned commit's meta page in its
//! slot, the other meta slot zeroed, every page the commit uses copied (and its
//! checksum verified on the way), and the pages free in that commit zeroed, since
//! later commits may be rewriting them while the copy is read.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use super::io::PageIo;
use super::layout::{verify_page, PageId, META_PAGE_COUNT, PAGE_BYTES};
use super::meta::Meta;
use super::PageError;

pub struct SnapshotSource {
    io: Arc<dyn PageIo>,
    meta: Meta,
    /// Pages free in the pinned commit.
    free: BTreeSet<PageId>,
    next_page: PageId,
}

impl fmt::Debug for SnapshotSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotSource")
            .field("txid", &self.meta.txid)
            .field("page_count", &self.meta.page_count)
            .field("next_page", &self.next_page)
            .finish()
    }
}

impl SnapshotSource {
    pub(super) fn new(io: Arc<dyn PageIo>, meta: Meta, free: BTreeSet<PageId>) -> SnapshotSource {
        assert!(free.iter().all(|&id| (META_PAGE_COUNT..meta.page_count).contains(&id)));
        SnapshotSource {
            io,
            meta,
            free,
            next_page: 0,
        }
    }

    /// The pinned commit; hand it back to `PageStore::unpin_snapshot` when done.
    pub fn txid(&self) -> u64 {
        self.meta.txid
    }

    pub(super) fn io(&self) -> Arc<dyn PageIo> {
        Arc::clone(&self.io)
    }

    pub(super) fn meta(&self) -> &Meta {
        &self.meta
    }

    /// Length of the whole copy in bytes.
    pub fn total_bytes(&self) -> u64 {
        self.meta.page_count * PAGE_BYTES as u64
    }

    /// Fills `buf` (a whole number of pages) with the next pages of the copy and
    /// returns how many bytes it filled: less than `buf.len()` only at the end.
    /// Blocking reads: call it off the executor.
    pub fn read(&mut self, buf: &mut [u8]) -> Result<usize, PageError> {
        assert!(buf.len().is_multiple_of(PAGE_BYTES) && !buf.is_empty(), "whole pages");
        let first = self.next_page;
        let count = ((buf.len() / PAGE_BYTES) as u64).min(self.meta.page_count - first);
        let buf = &mut buf[..count as usize * PAGE_BYTES];
        buf.fill(0);
        // Pages the commit uses are read in contiguous runs. Free ones are never
        // read: a trimmed file may not even hold them any more.
        let mut run_start = None;
        for id in first..=first + count {
            let used = id < first + count && id >= META_PAGE_COUNT && !self.free.contains(&id);
            match (used, run_start) {
                (true, None) => run_start = Some(id),
                (false, Some(start)) => {
                    self.read_run(start, id, &mut buf[((start - first) as usize * PAGE_BYTES)..])?;
                    run_start = None;
                }
                _ => {}
            }
        }
        let slot = self.meta.slot();
        if (first..first + count).contains(&slot) {
            let at = (slot - first) as usize * PAGE_BYTES;
            buf[at..at + PAGE_BYTES].copy_from_slice(&self.meta.encode());
        }
        self.next_page = first + count;
        Ok(buf.len())
    }

    /// Reads pages `start..end` into the front of `out` and verifies each.
    fn read_run(&self, start: PageId, end: PageId, out: &mut [u8]) -> Result<(), PageError> {
        let bytes = &mut out[..(end - start) as usize * PAGE_BYTES];
        self.io
            .read_at(start * PAGE_BYTES as u64, bytes)
            .map_err(|source| PageError::Io {
                context: "reading pages for a snapshot",
                source,
            })?;
        for (index, page) in bytes.chunks(PAGE_BYTES).enumerate() {
            let id = start + index as u64;
            verify_page(page, id).map_err(|error| PageError::corrupt(id, error))?;
        }
        Ok(())
    }
}
