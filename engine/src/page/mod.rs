//! The page file: fixed-size checksummed pages, two alternating meta pages, a
//! freelist, reads through a memory map, and commits that run off the executor.
//!
//! A commit is sealed on the store core ([`PageStore::seal`]): the caller hands
//! over the encoded pages of its transaction, the freelist is written, and the
//! result is a [`CommitPlan`]. The plan's `execute` does the blocking I/O (grow,
//! write pages, fdatasync, write the meta page, fdatasync) on another thread
//! while the store core builds the next transaction; [`PageStore::finish`] takes
//! the result back. Until then the sealed pages are read from memory. A plan
//! that cannot grow the file for want of room writes nothing and fails with
//! [`PageError::NoSpace`]; the commit stays sealed and is retried
//! ([`PageStore::retry_commit`]). Layouts and the crash argument are in
//! docs/page-format.md.

mod freelist;
mod freemap;
mod io;
mod layout;
mod meta;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
mod snapshot;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

pub use io::{FilePageIo, Mapping, PageIo};
pub use layout::{
    get_u16, get_u32, get_u64, new_page, PageId, PageImage, PageKind, BODY_BYTES, HEADER_BYTES, META_PAGE_COUNT,
    PAGE_BYTES,
};

use freelist::{Freelist, MapPages};
// Tests and fuzz targets re-stamp damaged pages, so their layouts get past the checksum.
pub(crate) use layout::seal_page;
use layout::{parse_header, verify_page};
use meta::{FreelistFormat, Meta, MetaError, NoMetaError};
pub use snapshot::SnapshotSource;

use crate::no_space::is_no_space;
use crate::CorruptReason;

/// The file grows in steps of at least this much, so commits rarely extend it.
const GROW_STEP_BYTES_MIN: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PageError {
    #[error("page store I/O error while {context}: {source}")]
    Io {
        context: &'static str,
        source: std::io::Error,
    },
    /// The file is damaged: the server must stop, never skip.
    #[error("page store corrupt at page {page}: {reason}")]
    Corrupt {
        page: PageId,
        #[source]
        reason: CorruptReason,
    },
    #[error("page store is unusable after an earlier I/O error")]
    Poisoned,
    /// The file could not grow for want of room, before the commit wrote
    /// anything: it is not made, and not lost (see `PageStore::retry_commit`).
    #[error("no space left to grow the page file to {bytes} bytes: {source}")]
    NoSpace { bytes: u64, source: std::io::Error },
}

impl PageError {
    pub fn corrupt(page: PageId, reason: impl Into<CorruptReason>) -> PageError {
        PageError::Corrupt {
            page,
            reason: reason.into(),
        }
    }
}

fn io_error(context: &'static str) -> impl FnOnce(std::io::Error) -> PageError {
    move |source| PageError::Io { context, source }
}

/// Pages of a sealed commit, by id, with txid and checksum stamped.
type SealedPages = BTreeMap<PageId, Box<[u8]>>;

/// The commit sealed and not yet durable: what its plan writes.
struct Sealed {
    meta: Meta,
    pages: Arc<SealedPages>,
    grow_to: Option<u64>,
    shrink_to: Option<u64>,
    /// Its plan found no room to grow the file and wrote nothing; no plan is
    /// out until `retry_commit` hands out the next one.
    stalled: bool,
}

/// A committed page, as [`PageStore::page`] reads it.
#[derive(Debug, Clone, Copy)]
pub struct CommittedPage<'a> {
    pub bytes: &'a [u8],
    pub kind: PageKind,
    pub count: u16,
    /// This read verified its checksum: the first read since the store opened
    /// or the page was last written. A page does not change until it is
    /// written again, so what a reader checked in its layout then holds on
    /// every later read (pages a commit seals are ringkv's own encoding).
    pub verified_now: bool,
}

pub struct PageStore {
    io: Arc<dyn PageIo>,
    mapping: Mapping,
    file_bytes: u64,
    /// The last durable commit.
    durable: Meta,
    /// The commit being written (or waiting to be retried), if any: its pages
    /// are read from here until it is durable.
    sealed: Option<Sealed>,
    freelist: Freelist,
    /// The next seal gives back the free pages at the end of the file.
    trim_requested: bool,
    /// One bit per page: checksum verified since the page was last written.
    verified: RefCell<Vec<u64>>,
    poisoned: bool,
}

impl PageStore {
    /// Opens (or creates) the page file at `path`.
    pub fn open_path(path: &Path) -> Result<PageStore, PageError> {
        let io = FilePageIo::open(path).map_err(io_error("opening the page file"))?;
        PageStore::open(Arc::new(io))
    }

    /// Opens the page file behind `io`: the newest valid meta page wins; a file
    /// that was never initialized (empty or all zeros) becomes an empty store.
    pub fn open(io: Arc<dyn PageIo>) -> Result<PageStore, PageError> {
        let mapping = io.map().map_err(io_error("mapping the page file"))?;
        let durable = match newest_meta(&mapping)? {
            Some(meta) => meta,
            None => {
                drop(mapping);
                initialize(&*io)?
            }
        };
        let mapping = io.map().map_err(io_error("mapping the page file"))?;
        let file_bytes = mapping.len() as u64;
        // The count comes from disk: a product past u64 would wrap to a small one.
        let counted_bytes = durable.page_count.checked_mul(PAGE_BYTES as u64);
        if durable.page_count < META_PAGE_COUNT || counted_bytes.is_none_or(|bytes| bytes > file_bytes) {
            return Err(PageError::corrupt(
                durable.slot(),
                format!(
                    "meta page counts {} pages in a {file_bytes}-byte file",
                    durable.page_count
                ),
            ));
        }
        let mut store = PageStore::at_commit(io, mapping, durable, false);
        store.freelist = store.read_freelist()?;
        Ok(store)
    }

    /// A read-only store over the commit `source` pins, for reading its tree
    /// off the store core while commits go on (an etcd-format snapshot is
    /// written from it). The pin keeps every page that commit uses as it is;
    /// its freelist is not read (nothing is allocated here), and a commit is
    /// refused as from a poisoned store.
    pub fn open_pinned(source: &SnapshotSource) -> Result<PageStore, PageError> {
        let io = source.io();
        let mapping = io.map().map_err(io_error("mapping the page file"))?;
        let durable = *source.meta();
        // The pinned commit is durable, so the file holds all of its pages.
        assert!(
            durable.page_count * PAGE_BYTES as u64 <= mapping.len() as u64,
            "a durable commit lies in the file"
        );
        Ok(PageStore::at_commit(io, mapping, durable, true))
    }

    /// A store whose file `mapping` holds commit `durable`, with an empty
    /// freelist (`open` reads the commit's in) and no page verified yet.
    fn at_commit(io: Arc<dyn PageIo>, mapping: Mapping, durable: Meta, poisoned: bool) -> PageStore {
        PageStore {
            io,
            file_bytes: mapping.len() as u64,
            mapping,
            durable,
            sealed: None,
            freelist: Freelist::new(BTreeSet::new(), MapPages::none(durable.page_count), durable.page_count),
            trim_requested: false,
            verified: RefCell::new(vec![0; (durable.page_count as usize).div_ceil(64)]),
            poisoned,
        }
    }

    fn read_freelist(&self) -> Result<Freelist, PageError> {
        let (free, map) = self.read_free_pages()?;
        Ok(Freelist::new(free, map, self.durable.page_count))
    }

    /// The root of the last sealed (or durable) commit.
    pub fn committed_root(&self) -> Option<PageId> {
        self.sealed
            .as_ref()
            .map_or(self.durable.root, |sealed| sealed.meta.root)
    }

    /// A committed page (durable, or sealed and being written), checksum verified.
    pub fn page(&self, id: PageId) -> Result<CommittedPage<'_>, PageError> {
        let (bytes, header, verified_now) = self.verified_page(id)?;
        Ok(CommittedPage {
            bytes,
            kind: header.kind,
            count: header.count,
            verified_now,
        })
    }

    /// Asks the CPU to load the first cache line of committed page `id` (its
    /// header, and a node's first slots) ahead of a read; nothing for a page
    /// past the file or one a sealed commit holds.
    pub fn prefetch(&self, id: PageId) {
        if self
            .sealed
            .as_ref()
            .is_some_and(|sealed| sealed.pages.contains_key(&id))
        {
            return;
        }
        if let Some(page) = self.mapped(id) {
            crate::prefetch::prefetch(page);
        }
    }

    /// Page `id` in the mapping; None past the end of the file (the id comes
    /// from disk, a branch or a freelist: its offset may be past usize).
    fn mapped(&self, id: PageId) -> Option<&[u8]> {
        let start = usize::try_from(id).ok()?.checked_mul(PAGE_BYTES)?;
        self.mapping.get(start..start.checked_add(PAGE_BYTES)?)
    }

    /// The page, its header, and whether this read verified its checksum.
    fn verified_page(&self, id: PageId) -> Result<(&[u8], layout::PageHeader, bool), PageError> {
        if let Some(sealed) = &self.sealed {
            if let Some(page) = sealed.pages.get(&id) {
                return Ok((page, trusted_header(page), false));
            }
        }
        let page = self.mapped(id).ok_or_else(|| {
            PageError::corrupt(
                id,
                format!("page is past the end of the {}-byte file", self.mapping.len()),
            )
        })?;
        if self.is_verified(id) {
            return Ok((page, trusted_header(page), false));
        }
        let header = verify_page(page, id).map_err(|error| PageError::corrupt(id, error))?;
        self.mark_verified(id);
        Ok((page, header, true))
    }

    fn is_verified(&self, id: PageId) -> bool {
        let verified = self.verified.borrow();
        let (word, bit) = (id as usize / 64, id % 64);
        verified.get(word).is_some_and(|w| w & (1 << bit) != 0)
    }

    fn mark_verified(&self, id: PageId) {
        let mut verified = self.verified.borrow_mut();
        let word = id as usize / 64;
        if verified.len() <= word {
            verified.resize(word + 1, 0);
        }
        verified[word] |= 1 << (id % 64);
    }

    /// The page must be verified again on its next read: it is being
    /// rewritten, or a reader above found its layout bad (so it stays reported
    /// as corrupt, not trusted, on every later read).
    pub(crate) fn forget_verified(&self, id: PageId) {
        if let Some(word) = self.verified.borrow_mut().get_mut(id as usize / 64) {
            *word &= !(1 << (id % 64));
        }
    }

    /// A page id for the transaction being built.
    pub fn allocate(&mut self) -> PageId {
        let id = self.freelist.allocate();
        // It will hold new bytes: verify it again when next read from the file.
        self.forget_verified(id);
        id
    }

    /// `id` is not part of the transaction's state any more.
    pub fn release(&mut self, id: PageId) {
        self.freelist.release(id);
    }

    /// Seals the transaction whose tree starts at `root`, with its new `pages`
    /// (encoded, unsealed). Only one commit may be in flight.
    pub fn seal(&mut self, root: Option<PageId>, pages: Vec<PageImage>) -> Result<CommitPlan, PageError> {
        if self.poisoned {
            return Err(PageError::Poisoned);
        }
        assert!(self.sealed.is_none(), "one commit in flight at a time");
        let txid = self.durable.txid + 1;
        let trim = std::mem::take(&mut self.trim_requested);
        if trim {
            self.freelist.trim_tail();
        }
        let (freelist_head, freelist_pages) = self.freelist.seal(txid);
        for (id, _) in &freelist_pages {
            // Taken inside the freelist, not through `allocate`: new bytes too.
            self.forget_verified(*id);
        }
        let mut sealed = SealedPages::new();
        for (id, mut page) in pages.into_iter().chain(freelist_pages) {
            assert!(
                (META_PAGE_COUNT..self.freelist.page_count()).contains(&id),
                "page {id} was allocated"
            );
            seal_page(&mut page, txid);
            assert!(
                sealed.insert(id, page).is_none(),
                "page {id} written twice in one commit"
            );
        }
        let meta = Meta {
            txid,
            root,
            freelist_head,
            freelist_format: FreelistFormat::Map,
            page_count: self.freelist.page_count(),
        };
        let needed = meta.page_count * PAGE_BYTES as u64;
        let grow_to = (needed > self.file_bytes).then(|| {
            let step = (self.file_bytes / 4).max(GROW_STEP_BYTES_MIN);
            (needed.max(self.file_bytes + step)).div_ceil(GROW_STEP_BYTES_MIN) * GROW_STEP_BYTES_MIN
        });
        // A trimmed file is cut back (to whole grow steps) only after the meta
        // page that stops using the tail is durable; see `CommitPlan::execute`.
        let shrink_to = trim
            .then(|| needed.div_ceil(GROW_STEP_BYTES_MIN) * GROW_STEP_BYTES_MIN)
            .filter(|&len| len < self.file_bytes);
        self.sealed = Some(Sealed {
            meta,
            pages: Arc::new(sealed),
            grow_to,
            shrink_to,
            stalled: false,
        });
        Ok(self.plan())
    }

    /// The plan that writes the sealed commit.
    fn plan(&self) -> CommitPlan {
        let sealed = self.sealed.as_ref().expect("a commit is sealed");
        CommitPlan {
            io: Arc::clone(&self.io),
            pages: Arc::clone(&sealed.pages),
            meta: sealed.meta,
            grow_to: sealed.grow_to,
            shrink_to: sealed.shrink_to,
        }
    }

    /// Takes back an executed plan: its meta is the durable state now. On
    /// `NoSpace` the commit stays sealed, its pages readable from memory, for
    /// [`PageStore::retry_commit`]; any other error is final.
    pub fn finish(&mut self, result: Result<CommittedPlan, PageError>) -> Result<(), PageError> {
        let sealed = self.sealed.as_mut().expect("a commit was in flight");
        assert!(!sealed.stalled, "a stalled commit has no plan out");
        let done = match result {
            Ok(done) => done,
            Err(error @ PageError::NoSpace { .. }) => {
                // Nothing was written: the same plan can run again.
                sealed.stalled = true;
                return Err(error);
            }
            Err(error) => {
                // An fsync error is not retried: the kernel may have dropped the pages.
                self.sealed = None;
                self.poisoned = true;
                return Err(error);
            }
        };
        let meta = self.sealed.take().expect("checked above").meta;
        assert_eq!(done.meta, meta, "the plan that finished is the one sealed");
        self.durable = meta;
        let file_bytes = self.io.size().map_err(io_error("sizing the page file"))?;
        // The real mapping sees writes as they happen; it is renewed only to cover
        // a grown file. A simulated file's mapping is a snapshot: always renew.
        if file_bytes != self.file_bytes || matches!(self.mapping, Mapping::Memory(_)) {
            self.mapping = self.io.map().map_err(io_error("mapping the page file"))?;
            self.file_bytes = file_bytes;
        }
        Ok(())
    }

    /// The plan of the sealed commit again, after its last run found no room
    /// to grow the file (`finish` returned `NoSpace`): the same pages and meta
    /// page, written once there is room.
    pub fn retry_commit(&mut self) -> CommitPlan {
        let sealed = self.sealed.as_mut().expect("a commit is sealed");
        assert!(sealed.stalled, "only a commit that found no room is retried");
        sealed.stalled = false;
        self.plan()
    }

    /// Pins the last durable commit for a copy read off the store core: its
    /// pages stay as they are until [`PageStore::unpin_snapshot`]. No commit
    /// may be in flight (the copy is of a durable state).
    pub fn pin_snapshot(&mut self) -> Result<SnapshotSource, PageError> {
        assert!(self.sealed.is_none(), "a snapshot pins a durable commit");
        let (free, _) = self.read_free_pages()?;
        self.freelist.pin(self.durable.txid);
        Ok(SnapshotSource::new(Arc::clone(&self.io), self.durable, free))
    }

    pub fn unpin_snapshot(&mut self, txid: u64) {
        self.freelist.unpin(txid);
    }

    /// The next seal gives back the free pages at the end of the file, and its
    /// commit cuts the file short (defragmentation's last step).
    pub fn request_trim(&mut self) {
        self.trim_requested = true;
    }

    /// The next seal writes anew the freelist's pages at or above `target`,
    /// taking the lowest free pages (defragmentation moves everything above
    /// its target down).
    pub fn move_freelist_below(&mut self, target: PageId) {
        self.freelist.move_map_below(target);
    }

    /// The lowest page an allocation would take now, if any is free below the
    /// end of the file (defragmentation moves pages above it down).
    pub fn lowest_free(&self) -> Option<PageId> {
        self.freelist.lowest_free()
    }

    /// Seals, executes on this thread and finishes: for tools and tests.
    pub fn commit(&mut self, root: Option<PageId>, pages: Vec<PageImage>) -> Result<(), PageError> {
        let plan = self.seal(root, pages)?;
        let result = plan.execute();
        self.finish(result)
    }

    /// Pages 0..page_count are meta, reachable from the open transaction's
    /// root, or [`PageStore::unreachable_pages`]: each exactly one of these.
    pub fn page_count(&self) -> u64 {
        self.freelist.page_count()
    }

    pub fn unreachable_pages(&self) -> impl Iterator<Item = PageId> + '_ {
        self.freelist.unreachable_pages()
    }

    /// Bytes the file takes (including preallocated, unused space).
    pub fn file_bytes(&self) -> u64 {
        self.file_bytes
    }

    /// Bytes of pages holding live data.
    pub fn in_use_bytes(&self) -> u64 {
        (self.freelist.page_count() - self.freelist.unused_pages()) * PAGE_BYTES as u64
    }
}

/// The header of a page whose bytes passed `verify_page` before (or were built
/// here): they have not changed since, so this cannot fail.
fn trusted_header(page: &[u8]) -> layout::PageHeader {
    parse_header(page).unwrap_or_else(|reason| panic!("a verified page changed: {reason}"))
}

/// The valid meta page with the highest txid; None for a never-initialized file.
fn newest_meta(mapping: &[u8]) -> Result<Option<Meta>, PageError> {
    let slot = |id: PageId| {
        let start = id as usize * PAGE_BYTES;
        mapping
            .get(start..start + PAGE_BYTES)
            .map_or(Err(MetaError::Missing), |page| Meta::decode(page, id))
    };
    match (slot(0), slot(1)) {
        (Ok(a), Ok(b)) => Ok(Some(if a.txid > b.txid { a } else { b })),
        (Ok(meta), Err(_)) | (Err(_), Ok(meta)) => Ok(Some(meta)),
        (Err(_), Err(_)) if mapping.iter().all(|&b| b == 0) => Ok(None),
        (Err(slot0), Err(slot1)) => Err(PageError::corrupt(0, NoMetaError { slot0, slot1 })),
    }
}

/// Writes the first meta page of a new file: an empty tree at txid 0.
fn initialize(io: &dyn PageIo) -> Result<Meta, PageError> {
    let meta = Meta {
        txid: 0,
        root: None,
        freelist_head: None,
        freelist_format: FreelistFormat::Map,
        page_count: META_PAGE_COUNT,
    };
    io.grow(GROW_STEP_BYTES_MIN)
        .map_err(io_error("growing the new page file"))?;
    io.write_at(0, &meta.encode())
        .map_err(io_error("writing the first meta page"))?;
    io.sync().map_err(io_error("syncing the new page file"))?;
    Ok(meta)
}

/// A sealed commit ready to be written. `execute` blocks: run it off the executor.
pub struct CommitPlan {
    io: Arc<dyn PageIo>,
    pages: Arc<SealedPages>,
    meta: Meta,
    grow_to: Option<u64>,
    shrink_to: Option<u64>,
}

/// Proof that a plan's pages and meta page are durable.
pub struct CommittedPlan {
    meta: Meta,
}

impl CommitPlan {
    /// Grows the file if needed, writes the pages (contiguous runs in one write),
    /// fdatasync, writes the meta page, fdatasync. The first sync orders the pages
    /// before the meta page that makes them reachable. Growth comes first, so
    /// `NoSpace` means nothing was written.
    pub fn execute(self) -> Result<CommittedPlan, PageError> {
        if let Some(len) = self.grow_to {
            self.io.grow(len).map_err(|source| {
                if is_no_space(&source) {
                    PageError::NoSpace { bytes: len, source }
                } else {
                    PageError::Io {
                        context: "growing the page file",
                        source,
                    }
                }
            })?;
        }
        let mut run: Vec<u8> = Vec::new();
        let mut run_start: PageId = 0;
        for (&id, page) in self.pages.iter() {
            if !run.is_empty() && id != run_start + (run.len() / PAGE_BYTES) as u64 {
                self.write_run(run_start, &run)?;
                run.clear();
            }
            if run.is_empty() {
                run_start = id;
            }
            run.extend_from_slice(page);
        }
        if !run.is_empty() {
            self.write_run(run_start, &run)?;
        }
        self.io.sync().map_err(io_error("syncing page writes"))?;
        self.io
            .write_at(self.meta.slot() * PAGE_BYTES as u64, &self.meta.encode())
            .map_err(io_error("writing the meta page"))?;
        self.io.sync().map_err(io_error("syncing the meta page"))?;
        if let Some(len) = self.shrink_to {
            // Nothing reachable lies past `len`: the durable meta says so, and
            // trimmed pages were free (no pin, no open transaction uses them). A
            // crash before the truncation is durable leaves a longer file, which
            // is fine.
            assert!(len >= self.meta.page_count * PAGE_BYTES as u64);
            self.io.truncate(len).map_err(io_error("truncating the page file"))?;
        }
        Ok(CommittedPlan { meta: self.meta })
    }

    fn write_run(&self, first: PageId, bytes: &[u8]) -> Result<(), PageError> {
        self.io
            .write_at(first * PAGE_BYTES as u64, bytes)
            .map_err(io_error("writing pages"))
    }
}

#[cfg(test)]
mod tests;
