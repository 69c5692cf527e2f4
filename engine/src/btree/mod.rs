//! A copy-on-write B-tree over the page file: an ordered map from byte keys to
//! byte values.
//!
//! The open transaction owns its modified nodes ([`Node`], by page id); every
//! other node is a committed page read in place. Modifying a committed node copies
//! it to a newly allocated page and releases the old one, up to the root, so the
//! last committed tree is never touched. Writes are visible to reads at once and
//! become durable with a commit: [`Tree::begin_commit`] encodes the modified nodes
//! and seals them ([`CommitPlan`]), the plan's blocking I/O runs elsewhere, and
//! [`Tree::finish_commit`] takes the result back; meanwhile the next transaction
//! carries on.

mod check;
mod lookahead;
mod mutate;
mod node;
mod overflow;
mod range;
mod relocate;

#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};

use crate::page::{
    CommitPlan, CommittedPlan, PageError, PageId, PageImage, PageIo, PageKind, PageStore, SnapshotSource,
    META_PAGE_COUNT,
};

pub use check::CheckReport;
pub use lookahead::{LeafFinder, LeafOf};
pub use mutate::EndsWanted;
pub use node::KEY_BYTES_MAX;
pub use range::{EndsRange, Range, StoredEnds};

use node::{Node, NodeRef, PageView, ValueRef};
use overflow::OVERFLOW_DATA_BYTES;

/// A key and its value, as iteration yields them.
pub type Entry = (Vec<u8>, Vec<u8>);

/// Levels a path from the root passes at most. Depth grows only when the root
/// splits, and a split leaves each half of a branch at least three children,
/// so a tree first got to depth d holding 2 * 3^(d - 2) leaves or more: the
/// 2^52 pages a file can have give depth 35. A longer path goes round a cycle
/// of damaged (or forged) pages, which is corruption, not a walk without end.
pub const DEPTH_MAX: usize = 64;

/// The error for a path from the root that reached `DEPTH_MAX` levels at `page`.
fn too_deep(page: PageId) -> PageError {
    PageError::corrupt(
        page,
        format!("a path from the root runs past {DEPTH_MAX} levels (the tree loops)"),
    )
}

pub struct Tree {
    store: PageStore,
    root: Option<PageId>,
    /// Nodes allocated by the open transaction. Every node visit looks here
    /// first, so the hash is Fx, not SipHash (page ids come from the store,
    /// never from clients; SipHash showed in the store core's profile serving
    /// lists: docs/benchmarks.md).
    nodes: FxHashMap<PageId, Node>,
    /// Overflow pages allocated by the open transaction, encoded.
    overflow: FxHashMap<PageId, Box<[u8]>>,
}

impl Tree {
    /// Opens (or creates) the tree stored in the file at `path`.
    pub fn open(path: &Path) -> Result<Tree, PageError> {
        Ok(Tree::from_store(PageStore::open_path(path)?))
    }

    /// Opens the tree behind an I/O seam (tests inject faults this way).
    pub fn open_with(io: Arc<dyn PageIo>) -> Result<Tree, PageError> {
        Ok(Tree::from_store(PageStore::open(io)?))
    }

    /// The tree of the commit `source` pins, read-only (see
    /// `PageStore::open_pinned`): read it on any thread while the pin holds.
    pub fn open_pinned(source: &SnapshotSource) -> Result<Tree, PageError> {
        Ok(Tree::from_store(PageStore::open_pinned(source)?))
    }

    fn from_store(store: PageStore) -> Tree {
        Tree {
            root: store.committed_root(),
            store,
            nodes: FxHashMap::default(),
            overflow: FxHashMap::default(),
        }
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, PageError> {
        Ok(self.get_in_place(key)?.map(Cow::into_owned))
    }

    /// As `get`, but a value that lies in one page (inline, or an overflow
    /// chain of one page) is borrowed from it, not copied: reads that decode
    /// the value at once skip an allocation and a copy.
    pub fn get_in_place(&self, key: &[u8]) -> Result<Option<Cow<'_, [u8]>>, PageError> {
        let Some(mut id) = self.root else {
            return Ok(None);
        };
        for _ in 0..DEPTH_MAX {
            let node = self.node(id)?;
            if node.is_leaf() {
                return self.get_in_node(&node, key);
            }
            id = node.child(node.child_index(key));
        }
        Err(too_deep(id))
    }

    /// `key`'s value in `leaf`, as `get_in_place` returns it.
    fn get_in_node<'a>(&'a self, leaf: &NodeRef<'a>, key: &[u8]) -> Result<Option<Cow<'a, [u8]>>, PageError> {
        match leaf.search(key) {
            Ok(index) => self.read_value(leaf.value(index)).map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Ascending iteration over the keys in `(start, end)`.
    pub fn range(&self, start: Bound<&[u8]>, end: Bound<&[u8]>) -> Range<'_> {
        Range::new(self, start, end)
    }

    /// As `range`, but of a value whose leaf keeps its ends only those are
    /// read, not its overflow pages: what a scan of every value's first and
    /// last bytes (opening a store) reads.
    pub fn range_ends(&self, start: Bound<&[u8]>, end: Bound<&[u8]>) -> EndsRange<'_> {
        EndsRange::new(self, start, end)
    }

    /// Seals the open transaction for `CommitPlan::execute` (blocking I/O: run it
    /// off the executor). Only one commit may be in flight.
    pub fn begin_commit(&mut self) -> Result<CommitPlan, PageError> {
        let mut pages: Vec<PageImage> = Vec::with_capacity(self.nodes.len() + self.overflow.len());
        pages.extend(self.nodes.drain().map(|(id, node)| (id, node.encode(id))));
        pages.extend(self.overflow.drain());
        self.store.seal(self.root, pages)
    }

    /// Takes back the outcome of the plan from `begin_commit`. `NoSpace`
    /// leaves the commit sealed for `retry_commit`; any other error leaves the
    /// tree unusable for commits: it is never retried.
    pub fn finish_commit(&mut self, result: Result<CommittedPlan, PageError>) -> Result<(), PageError> {
        self.store.finish(result)
    }

    /// The plan of the sealed commit again, after it found no room (see
    /// `PageStore::retry_commit`). The open transaction goes on meanwhile.
    pub fn retry_commit(&mut self) -> CommitPlan {
        self.store.retry_commit()
    }

    /// Commits synchronously (tools and tests).
    pub fn commit(&mut self) -> Result<(), PageError> {
        let plan = self.begin_commit()?;
        let result = plan.execute();
        self.finish_commit(result)
    }

    /// Pins the last durable commit for a copy read elsewhere (no commit may be
    /// in flight); see `PageStore::pin_snapshot`.
    pub fn pin_snapshot(&mut self) -> Result<SnapshotSource, PageError> {
        self.store.pin_snapshot()
    }

    pub fn unpin_snapshot(&mut self, txid: u64) {
        self.store.unpin_snapshot(txid);
    }

    /// The next commit gives back the free pages at the end of the file.
    pub fn request_trim(&mut self) {
        self.store.request_trim();
    }

    /// Bytes the page file takes on disk.
    pub fn file_bytes(&self) -> u64 {
        self.store.file_bytes()
    }

    /// Bytes of the page file holding live pages.
    pub fn in_use_bytes(&self) -> u64 {
        self.store.in_use_bytes()
    }

    /// Bytes of every page in use or free (the file's used part).
    pub fn allocated_bytes(&self) -> u64 {
        self.store.page_count() * crate::page::PAGE_BYTES as u64
    }

    /// The node at `id`: owned by the open transaction, or a committed page.
    fn node(&self, id: PageId) -> Result<NodeRef<'_>, PageError> {
        if let Some(node) = self.nodes.get(&id) {
            return Ok(NodeRef::Owned(node));
        }
        let page = self.store.page(id)?;
        // The whole layout is checked once, with the checksum: walking every
        // entry on each visit showed in the store core's profile serving lists
        // (docs/benchmarks.md).
        let view = if page.verified_now {
            PageView::new(page.bytes, page.kind, page.count).map_err(|error| {
                self.store.forget_verified(id);
                PageError::corrupt(id, error)
            })?
        } else {
            PageView::checked_before(page.bytes, page.kind, page.count)
        };
        Ok(NodeRef::Page(view))
    }

    fn read_value<'a>(&'a self, value: ValueRef<'a>) -> Result<Cow<'a, [u8]>, PageError> {
        let (head, len, ends, front) = match value {
            ValueRef::Inline(bytes) => return Ok(Cow::Borrowed(bytes)),
            ValueRef::Overflow { head, len, ends, front } => (head, len, ends, usize::from(front)),
        };
        let chain_len = chain_bytes(len, ends);
        let pages = self.overflow_pages(head, chain_len)?;
        let (mut next, first) = self.chain_page(head, 0, pages, chain_len)?;
        let mut out = if ends.is_empty() {
            Cow::Borrowed(first)
        } else {
            let mut out = Vec::with_capacity(len as usize);
            out.extend_from_slice(&ends[..front]);
            out.extend_from_slice(first);
            Cow::Owned(out)
        };
        for index in 1..pages {
            let id = next.expect("every page but the last has a next");
            let (following, bytes) = self.chain_page(id, index, pages, chain_len)?;
            out.to_mut().extend_from_slice(bytes);
            next = following;
        }
        if !ends.is_empty() {
            out.to_mut().extend_from_slice(&ends[front..]);
        }
        Ok(out)
    }

    /// The pages of a chain of `len` bytes: as `overflow::encode_chain`
    /// writes it, every one full but the last. More than the file holds is
    /// corruption (before anything is read or allocated for it).
    fn overflow_pages(&self, head: PageId, len: u32) -> Result<usize, PageError> {
        let pages = (len as usize).div_ceil(OVERFLOW_DATA_BYTES).max(1);
        let data_pages = self.store.page_count().saturating_sub(META_PAGE_COUNT);
        if pages as u64 > data_pages {
            return Err(PageError::corrupt(
                head,
                format!("a chain of {len} bytes needs more overflow pages than the file has"),
            ));
        }
        Ok(pages)
    }

    /// Page `index` of the `pages` of a chain of `len` bytes, checked for
    /// its place in it: a page before the last is full and has a next one,
    /// the last holds the rest and ends the chain.
    fn chain_page(
        &self,
        id: PageId,
        index: usize,
        pages: usize,
        len: u32,
    ) -> Result<(Option<PageId>, &[u8]), PageError> {
        let (next, bytes) = self.overflow_page(id)?;
        let last = index + 1 == pages;
        let expected = if last {
            len as usize - (pages - 1) * OVERFLOW_DATA_BYTES
        } else {
            OVERFLOW_DATA_BYTES
        };
        if bytes.len() != expected || next.is_some() == last {
            return Err(PageError::corrupt(
                id,
                format!(
                    "overflow page {index} of {pages} of a {len}-byte chain holds {} bytes{}",
                    bytes.len(),
                    if next.is_some() {
                        " and a next page"
                    } else {
                        " and ends the chain"
                    }
                ),
            ));
        }
        Ok((next, bytes))
    }

    /// Every page of a chain of `len` bytes, none twice: what releasing
    /// or moving the chain touches (a page released twice would be handed
    /// out twice).
    fn overflow_chain(&self, head: PageId, len: u32) -> Result<Vec<PageId>, PageError> {
        let pages = self.overflow_pages(head, len)?;
        let mut ids = Vec::with_capacity(pages);
        let mut seen = FxHashSet::default();
        let mut next = Some(head);
        for index in 0..pages {
            let id = next.expect("every page but the last has a next");
            if !seen.insert(id) {
                return Err(PageError::corrupt(
                    id,
                    "an overflow chain comes back to one of its pages",
                ));
            }
            next = self.chain_page(id, index, pages, len)?.0;
            ids.push(id);
        }
        Ok(ids)
    }

    /// One page of an overflow chain: (next page, value bytes).
    fn overflow_page(&self, id: PageId) -> Result<(Option<PageId>, &[u8]), PageError> {
        let page = match self.overflow.get(&id) {
            Some(page) => page,
            None => {
                let page = self.store.page(id)?;
                if page.kind != PageKind::Overflow {
                    return Err(PageError::corrupt(
                        id,
                        format!("expected an overflow page, found {:?}", page.kind),
                    ));
                }
                page.bytes
            }
        };
        overflow::decode_page(page).map_err(|error| PageError::corrupt(id, error))
    }
}

/// The bytes of a `len`-byte overflow value that its chain holds: all but the
/// ends its leaf keeps (the leaf's check makes that at least one).
fn chain_bytes(len: u32, ends: &[u8]) -> u32 {
    len - ends.len() as u32
}
