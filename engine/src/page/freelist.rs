//! Page allocation and the freelist.
//!
//! The rule that keeps a crash safe: a page released by commit N may be written
//! again only by a later commit. Commits execute strictly one after another, so
//! when commit N+1's pages are written, commit N is durable and no longer needs
//! what it released; if N+1 then tears, recovery finds N, which does not reference
//! those pages. A page freed by the transaction still being built is therefore
//! kept in `released` until that transaction is sealed.
//!
//! Readers on the store core cannot see a reused page: they read the newest
//! state, where a released page is unreachable. A reader elsewhere (a snapshot
//! being streamed) reads an older commit: it *pins* that commit, and pages
//! released after it are *held* (listed free on disk, but not allocatable) until
//! no pin needs them. After a crash no reader remains, so held pages are simply
//! free again.
//!
//! Trimming gives back the free pages at the end of the file (defragmentation):
//! only pages in `free`, which no durable commit, pin or open transaction uses.
//!
//! On disk the freelist is a chain of pages (body, little endian):
//! ```text
//! 24  u64 next freelist page, 0 at the end of the chain
//! 32  u64 page ids, `count` of them (the header's count field)
//! ```

use std::collections::{BTreeMap, BTreeSet};

use super::layout::{get_u64, new_page, PageId, PageImage, PageKind, BODY_BYTES, HEADER_BYTES, META_PAGE_COUNT};

/// Page ids one freelist page holds.
pub const FREELIST_PAGE_IDS_MAX: usize = (BODY_BYTES - 8) / 8;

#[derive(Debug)]
pub struct Freelist {
    /// Allocatable now, lowest first (keeps the file dense).
    free: FreePages,
    /// Released by the transaction being built: allocatable once it is sealed.
    released: Vec<PageId>,
    /// Pages 0..page_count exist; new pages are taken from here on.
    page_count: u64,
    /// The pages holding the freelist of the last sealed commit.
    chain: Vec<PageId>,
    /// Commits (by txid) that readers still read, with the number of readers.
    pins: BTreeMap<u64, usize>,
    /// Pages released by commit `txid` while an older commit was pinned.
    held: Vec<(u64, Vec<PageId>)>,
}

impl Freelist {
    /// The freelist of a durable commit: `free` as listed in `chain`'s pages.
    pub fn new(free: BTreeSet<PageId>, chain: Vec<PageId>, page_count: u64) -> Freelist {
        assert!(page_count >= META_PAGE_COUNT);
        assert!(free
            .iter()
            .chain(&chain)
            .all(|&id| (META_PAGE_COUNT..page_count).contains(&id)));
        Freelist {
            free: FreePages::from_set(free),
            released: Vec::new(),
            page_count,
            chain,
            pins: BTreeMap::new(),
            held: Vec::new(),
        }
    }

    pub fn page_count(&self) -> u64 {
        self.page_count
    }

    /// Pages not holding live data: free now, after the next seal, or once the
    /// pins holding them go.
    pub fn unused_pages(&self) -> u64 {
        (self.free.len() + self.released.len() + self.held_pages().count()) as u64
    }

    /// Every page that holds no live data of the open transaction: free,
    /// released by it, held for a pinned commit, or holding the last sealed
    /// freelist.
    pub fn unreachable_pages(&self) -> impl Iterator<Item = PageId> + '_ {
        self.free
            .iter()
            .chain(&self.released)
            .chain(self.held_pages())
            .chain(&self.chain)
            .copied()
    }

    fn held_pages(&self) -> impl Iterator<Item = &PageId> + '_ {
        self.held.iter().flat_map(|(_, ids)| ids)
    }

    /// Commit `txid` (the last durable one) is read by a reader off the store
    /// core: none of its pages may be reused until [`Freelist::unpin`].
    pub fn pin(&mut self, txid: u64) {
        *self.pins.entry(txid).or_default() += 1;
    }

    pub fn unpin(&mut self, txid: u64) {
        let count = self.pins.get_mut(&txid).expect("unpinned a commit that was pinned");
        *count -= 1;
        if *count == 0 {
            self.pins.remove(&txid);
        }
        // Pages released by commit R were reachable in commits before R only.
        let oldest_pin = self.pins.keys().next().copied();
        let (needed, unneeded): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|(released_by, _)| oldest_pin.is_some_and(|pin| pin < *released_by));
        self.held = needed;
        self.free.add(unneeded.into_iter().flat_map(|(_, ids)| ids));
    }

    /// Gives back the free pages at the end of the file; returns how many.
    pub fn trim_tail(&mut self) -> u64 {
        let trimmed = self.free.take_tail(self.page_count);
        self.page_count -= trimmed;
        assert!(self.page_count >= META_PAGE_COUNT);
        trimmed
    }

    pub fn lowest_free(&self) -> Option<PageId> {
        self.free.lowest()
    }

    pub fn allocate(&mut self) -> PageId {
        if let Some(id) = self.free.take_lowest() {
            return id;
        }
        let id = self.page_count;
        self.page_count += 1;
        id
    }

    /// `id` is no longer part of the state being built.
    pub fn release(&mut self, id: PageId) {
        assert!(
            (META_PAGE_COUNT..self.page_count).contains(&id),
            "released page {id} outside 2..{}",
            self.page_count
        );
        debug_assert!(
            !self.free.contains(id) && !self.released.contains(&id),
            "page {id} released twice"
        );
        self.released.push(id);
    }

    /// Seals the freelist of commit `txid`: returns the first page of the new
    /// chain and its pages (unsealed). What the transaction released becomes
    /// allocatable for the next one, or is held while an older commit is pinned.
    pub fn seal(&mut self, txid: u64) -> (Option<PageId>, Vec<PageImage>) {
        assert!(
            self.pins.keys().all(|&pin| pin < txid),
            "only durable commits are pinned"
        );
        // The previous chain belongs to the previous commit's state.
        self.released.append(&mut self.chain);
        let listed = self.free.len() + self.released.len() + self.held_pages().count();
        let chain_len = listed.div_ceil(FREELIST_PAGE_IDS_MAX);
        // Chain pages come from `free` (released by earlier, sealed commits: safe
        // to overwrite) or from the end of the file, never from `released`.
        let chain: Vec<PageId> = (0..chain_len).map(|_| self.allocate()).collect();
        // Held pages are free on disk: after a crash no reader pins anything.
        // (Not `held_pages()`: its opaque type would hold all of `self` borrowed
        // until the end of the function.)
        let mut ids = self
            .free
            .iter()
            .chain(&self.released)
            .chain(self.held.iter().flat_map(|(_, ids)| ids))
            .copied();
        let mut pages = Vec::with_capacity(chain_len);
        for (index, &id) in chain.iter().enumerate() {
            let batch: Vec<PageId> = ids.by_ref().take(FREELIST_PAGE_IDS_MAX).collect();
            let mut page = new_page(PageKind::Freelist, batch.len() as u16, id);
            let next = chain.get(index + 1).copied().unwrap_or(0);
            page[HEADER_BYTES..HEADER_BYTES + 8].copy_from_slice(&next.to_le_bytes());
            for (slot, free_id) in batch.iter().enumerate() {
                let at = HEADER_BYTES + 8 + slot * 8;
                page[at..at + 8].copy_from_slice(&free_id.to_le_bytes());
            }
            pages.push((id, page));
        }
        assert!(ids.next().is_none(), "the chain holds every free page");
        drop(ids); // an opaque iterator: its borrow of `free` ends here
        if self.pins.is_empty() {
            self.free.add(self.released.drain(..));
        } else {
            self.held.push((txid, std::mem::take(&mut self.released)));
        }
        self.chain = chain;
        (self.chain.first().copied(), pages)
    }
}

/// The allocatable pages: a Vec sorted highest first, so the lowest is taken
/// from the end. Every seal lists them all, and a scan of a contiguous Vec
/// stays fast when the list is long and cold in cache, where a `BTreeSet`'s
/// walk held up each seal on the store core after a large compaction
/// (measured: docs/benchmarks.md, "Measurements behind the engine's code").
#[derive(Debug)]
struct FreePages {
    descending: Vec<PageId>,
}

impl FreePages {
    fn from_set(set: BTreeSet<PageId>) -> FreePages {
        FreePages {
            descending: set.into_iter().rev().collect(),
        }
    }

    fn len(&self) -> usize {
        self.descending.len()
    }

    /// Lowest first.
    fn iter(&self) -> impl Iterator<Item = &PageId> + '_ {
        self.descending.iter().rev()
    }

    fn contains(&self, id: PageId) -> bool {
        self.descending.binary_search_by(|probe| id.cmp(probe)).is_ok()
    }

    fn lowest(&self) -> Option<PageId> {
        self.descending.last().copied()
    }

    fn take_lowest(&mut self) -> Option<PageId> {
        self.descending.pop()
    }

    /// Adds pages that are not free yet.
    fn add(&mut self, ids: impl IntoIterator<Item = PageId>) {
        self.descending.extend(ids);
        // A stable sort finds the long sorted run and merges the new ids in.
        self.descending.sort_by(|a, b| b.cmp(a));
        assert!(
            self.descending.windows(2).all(|pair| pair[0] > pair[1]),
            "a page was freed twice"
        );
    }

    /// Removes the free pages at the end of a file of `page_count` pages (the
    /// run `page_count - 1`, `page_count - 2`, ...); returns how many.
    fn take_tail(&mut self, page_count: u64) -> u64 {
        let run = self
            .descending
            .iter()
            .zip((0..page_count).rev())
            .take_while(|(&id, expected)| id == *expected && id >= META_PAGE_COUNT)
            .count();
        self.descending.drain(..run);
        run as u64
    }
}

/// A freelist page whose header counts more ids than its body holds.
#[derive(Debug, thiserror::Error)]
#[error("freelist page lists {count} ids, at most {FREELIST_PAGE_IDS_MAX} fit")]
pub struct FreelistPageError {
    count: usize,
}

/// Reads one verified freelist page: (next page, free ids).
pub fn decode_freelist_page(page: &[u8], count: u16) -> Result<(Option<PageId>, Vec<PageId>), FreelistPageError> {
    let count = count as usize;
    if count > FREELIST_PAGE_IDS_MAX {
        return Err(FreelistPageError { count });
    }
    let next = get_u64(page, HEADER_BYTES);
    let ids = (0..count)
        .map(|slot| get_u64(page, HEADER_BYTES + 8 + slot * 8))
        .collect();
    Ok(((next != 0).then_some(next), ids))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page::layout::{seal_page, verify_page};

    fn decode_chain(pages: &[PageImage]) -> Vec<PageId> {
        let mut ids = Vec::new();
        for (id, page) in pages {
            let mut page = page.clone();
            seal_page(&mut page, 1);
            let header = verify_page(&page, *id).unwrap();
            ids.extend(decode_freelist_page(&page, header.count).unwrap().1);
        }
        ids
    }

    #[test]
    fn released_pages_are_reused_only_after_the_seal() {
        let mut list = Freelist::new(BTreeSet::new(), Vec::new(), 2);
        let a = list.allocate();
        let b = list.allocate();
        assert_eq!((a, b), (2, 3));
        list.release(a);
        assert_eq!(list.allocate(), 4, "a page released by this transaction waits");
        let (head, pages) = list.seal(1);
        assert_eq!(head, Some(5), "the chain page comes from the end of the file");
        assert_eq!(decode_chain(&pages), vec![a]);
        assert_eq!(list.allocate(), a, "after the seal it is reused, lowest first");
    }

    #[test]
    fn the_previous_chain_is_released_by_the_next_seal() {
        let mut list = Freelist::new(BTreeSet::from([7]), vec![8], 9);
        let (head, pages) = list.seal(1);
        assert_eq!(head, Some(7), "the new chain reuses a free page");
        assert_eq!(decode_chain(&pages), vec![8]);
        let (_, pages) = list.seal(2);
        assert_eq!(decode_chain(&pages), vec![7]);
    }

    #[test]
    fn free_pages_go_lowest_first_and_the_tail_of_the_file_is_trimmed() {
        let mut free = FreePages::from_set(BTreeSet::from([3, 9, 5]));
        free.add([8, 2]);
        assert_eq!(free.iter().copied().collect::<Vec<_>>(), vec![2, 3, 5, 8, 9]);
        assert!(free.contains(8) && !free.contains(7));
        assert_eq!(free.take_tail(10), 2, "9 and 8 end a file of 10 pages");
        assert_eq!(free.take_tail(8), 0, "page 7 is in use");
        assert_eq!(free.take_lowest(), Some(2));
        assert_eq!(free.lowest(), Some(3));
        assert_eq!(free.len(), 2);
    }

    #[test]
    #[should_panic(expected = "a page was freed twice")]
    fn a_page_freed_twice_stops_everything() {
        let mut free = FreePages::from_set(BTreeSet::from([3, 5]));
        free.add([5]);
    }

    #[test]
    fn long_freelists_span_pages() {
        let free: BTreeSet<PageId> = (2..2 + 3 * FREELIST_PAGE_IDS_MAX as u64).collect();
        let count = 2 + free.len() as u64;
        let mut list = Freelist::new(free.clone(), Vec::new(), count);
        let (_, pages) = list.seal(1);
        assert_eq!(pages.len(), 3);
        let listed = decode_chain(&pages);
        assert_eq!(listed.len(), free.len() - 3, "three free pages now hold the list");
        assert_eq!(list.unused_pages() as usize, listed.len());
    }

    #[test]
    fn pages_released_after_a_pinned_commit_wait_for_the_unpin() {
        let mut list = Freelist::new(BTreeSet::new(), Vec::new(), 2);
        let old = list.allocate();
        list.seal(1);
        list.pin(1);
        list.release(old);
        let (_, pages) = list.seal(2);
        assert_eq!(decode_chain(&pages), vec![old], "listed free on disk");
        assert_ne!(list.allocate(), old, "but not reused while commit 1 is read");
        assert_eq!(list.unreachable_pages().filter(|&id| id == old).count(), 1);
        list.seal(3);
        list.unpin(1);
        assert_eq!(list.allocate(), old, "reusable once the reader is gone");
    }

    #[test]
    fn a_later_pin_does_not_keep_pages_an_earlier_commit_released() {
        let mut list = Freelist::new(BTreeSet::new(), Vec::new(), 2);
        let (a, b) = (list.allocate(), list.allocate());
        list.seal(1);
        list.pin(1);
        list.release(a);
        list.seal(2);
        list.pin(2);
        list.release(b);
        list.seal(3);
        list.unpin(1);
        // `a` was reachable in commit 1 only; `b` is still reachable in pinned commit 2.
        let mut reused = vec![list.allocate(), list.allocate()];
        reused.sort();
        assert!(reused.contains(&a) && !reused.contains(&b), "{reused:?}");
        list.unpin(2);
        assert!(list.free.contains(b));
    }

    #[test]
    fn trimming_gives_back_only_the_free_tail() {
        let mut list = Freelist::new(BTreeSet::from([3, 5, 6]), Vec::new(), 7);
        assert_eq!(list.trim_tail(), 2);
        assert_eq!(list.page_count(), 5);
        assert_eq!(list.trim_tail(), 0, "page 4 is in use");
        assert_eq!(list.allocate(), 3);
    }
}
