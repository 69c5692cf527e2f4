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
//! What a commit writes of the freelist follows what it changed: the pages
//! listed free on disk are kept as a bitmap in memory (`listed`), and a seal
//! writes again only the bitmap pages of the ranges whose bits changed, copied
//! on write like the tree's nodes, plus the small index naming them (layout:
//! `freemap`). The pages of the map are not listed in it: a seal takes new ones
//! from `free` (which changes their range's bits, so that range is written as
//! well) and releases the ones it replaces, until no range is left unwritten.

use std::collections::{BTreeMap, BTreeSet};

use super::freemap::{encode_bitmap_page, encode_index_page, range_of, ranges_for, BITMAP_WORDS, ID_LIST_ENTRIES_MAX};
use super::layout::{PageId, PageImage, META_PAGE_COUNT};

/// The pages holding the freelist of the last sealed (or the durable) commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapPages {
    /// Pages the next seal replaces whole: the map's index chain (or a
    /// format-1 chain read at open).
    pub index: Vec<PageId>,
    /// The bitmap page of each range of the file; None where none is written
    /// yet (a new range, or a file read in format 1).
    pub bitmaps: Vec<Option<PageId>>,
}

impl MapPages {
    /// No freelist written yet, for a file of `page_count` pages.
    pub fn none(page_count: u64) -> MapPages {
        MapPages {
            index: Vec::new(),
            bitmaps: vec![None; ranges_for(page_count)],
        }
    }

    fn pages(&self) -> impl Iterator<Item = &PageId> + '_ {
        self.index.iter().chain(self.bitmaps.iter().flatten())
    }
}

#[derive(Debug)]
pub struct Freelist {
    /// Allocatable now; the lowest goes first (keeps the file dense).
    free: BTreeSet<PageId>,
    /// Released by the transaction being built: allocatable once it is sealed.
    released: Vec<PageId>,
    /// Pages 0..page_count exist; new pages are taken from here on.
    page_count: u64,
    /// The freelist pages of the last sealed commit.
    map: MapPages,
    /// A bit per page, set for the pages the next seal lists free: `free`,
    /// `released` and `held`. [`BITMAP_WORDS`] words per range.
    listed: Vec<u64>,
    /// Ranges whose bits changed since the last seal, or that have no page.
    dirty: BTreeSet<usize>,
    /// Commits (by txid) that readers still read, with the number of readers.
    pins: BTreeMap<u64, usize>,
    /// Pages released by commit `txid` while an older commit was pinned.
    held: Vec<(u64, Vec<PageId>)>,
    /// A page released while already free: the next seal stops the server.
    /// (Not at once: a walk of a corrupt tree may release a page twice before
    /// it finds the corruption and fails the transaction.)
    freed_twice: Option<PageId>,
}

impl Freelist {
    /// The freelist of a durable commit: `free`, as listed on `map`'s pages.
    pub fn new(free: BTreeSet<PageId>, map: MapPages, page_count: u64) -> Freelist {
        assert!(page_count >= META_PAGE_COUNT);
        assert_eq!(map.bitmaps.len(), ranges_for(page_count));
        assert!(free
            .iter()
            .chain(map.pages())
            .all(|&id| (META_PAGE_COUNT..page_count).contains(&id)));
        let dirty = (0..map.bitmaps.len())
            .filter(|&range| map.bitmaps[range].is_none())
            .collect();
        let mut list = Freelist {
            free: BTreeSet::new(),
            released: Vec::new(),
            page_count,
            listed: vec![0; map.bitmaps.len() * BITMAP_WORDS],
            map,
            dirty,
            pins: BTreeMap::new(),
            held: Vec::new(),
            freed_twice: None,
        };
        for &id in &free {
            list.set_listed(id, true);
        }
        // Reading a bitmap back changes nothing in it.
        list.dirty.retain(|&range| list.map.bitmaps[range].is_none());
        list.free = free;
        list
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
            .chain(self.map.pages())
            .copied()
    }

    fn held_pages(&self) -> impl Iterator<Item = &PageId> + '_ {
        self.held.iter().flat_map(|(_, ids)| ids)
    }

    fn is_listed(&self, id: PageId) -> bool {
        self.listed
            .get(id as usize / 64)
            .is_some_and(|word| word & (1 << (id % 64)) != 0)
    }

    /// Marks `id` listed free (or not) for the next seal.
    fn set_listed(&mut self, id: PageId, listed: bool) {
        assert!(
            self.is_listed(id) != listed,
            "page {id} listed free already, or taken while in use"
        );
        let word = id as usize / 64;
        if self.listed.len() <= word {
            self.listed.resize(ranges_for(id + 1) * BITMAP_WORDS, 0);
        }
        self.listed[word] ^= 1 << (id % 64);
        self.dirty.insert(range_of(id));
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
        // Listed free on disk already: only allocatable now.
        self.free.extend(unneeded.into_iter().flat_map(|(_, ids)| ids));
    }

    /// Gives back the free pages at the end of the file; returns how many.
    pub fn trim_tail(&mut self) -> u64 {
        let mut trimmed = 0;
        while let Some(&last) = self.free.last() {
            if last + 1 != self.page_count || last < META_PAGE_COUNT {
                break;
            }
            self.free.pop_last();
            self.set_listed(last, false);
            self.page_count -= 1;
            trimmed += 1;
        }
        assert!(self.page_count >= META_PAGE_COUNT);
        trimmed
    }

    /// The next seal writes anew every bitmap page at or above `target`, so
    /// that it moves to the lowest free page (defragmentation moves every page
    /// above its target down, and the trim after it stops at a page in use).
    pub fn move_map_below(&mut self, target: PageId) {
        for (range, page) in self.map.bitmaps.iter().enumerate() {
            if page.is_some_and(|id| id >= target) {
                self.dirty.insert(range);
            }
        }
    }

    pub fn lowest_free(&self) -> Option<PageId> {
        self.free.first().copied()
    }

    pub fn allocate(&mut self) -> PageId {
        if let Some(id) = self.free.pop_first() {
            self.set_listed(id, false);
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
        if self.is_listed(id) {
            self.freed_twice.get_or_insert(id);
            return;
        }
        self.set_listed(id, true);
        self.released.push(id);
    }

    /// Seals the freelist of commit `txid`: returns the first page of its map's
    /// index and the map pages written anew (unsealed). What the transaction
    /// released becomes allocatable for the next one, or is held while an
    /// older commit is pinned.
    pub fn seal(&mut self, txid: u64) -> (Option<PageId>, Vec<PageImage>) {
        assert!(
            self.pins.keys().all(|&pin| pin < txid),
            "only durable commits are pinned"
        );
        if let Some(id) = self.freed_twice {
            panic!("page {id} freed twice");
        }
        self.drop_trimmed_ranges();
        // The previous index belongs to the previous commit's state.
        for id in std::mem::take(&mut self.map.index) {
            self.release(id);
        }
        let (written, index) = self.allocate_map_pages();
        let mut pages = Vec::with_capacity(written.len() + index.len());
        for (range, id) in written {
            self.map.bitmaps[range] = Some(id);
            let words = &self.listed[range * BITMAP_WORDS..(range + 1) * BITMAP_WORDS];
            pages.push((id, encode_bitmap_page(id, range, words)));
        }
        let bitmaps: Vec<PageId> = self
            .map
            .bitmaps
            .iter()
            .map(|page| page.expect("every range has a bitmap page"))
            .collect();
        for (number, entries) in bitmaps.chunks(ID_LIST_ENTRIES_MAX).enumerate() {
            let next = index.get(number + 1).copied();
            pages.push((index[number], encode_index_page(index[number], next, entries)));
        }
        self.dirty.clear();
        if self.pins.is_empty() {
            self.free.extend(self.released.drain(..));
        } else {
            self.held.push((txid, std::mem::take(&mut self.released)));
        }
        self.map.index = index;
        (self.map.index.first().copied(), pages)
    }

    /// Ranges past a trimmed end of the file go, and their pages with them
    /// (pages of the map are never free, so never trimmed: they lie below the
    /// end).
    fn drop_trimmed_ranges(&mut self) {
        let ranges = ranges_for(self.page_count);
        // The bits past the end were cleared as their pages went.
        self.dirty.split_off(&ranges);
        self.listed.truncate(ranges * BITMAP_WORDS);
        let gone: Vec<PageId> = self
            .map
            .bitmaps
            .drain(ranges.min(self.map.bitmaps.len())..)
            .flatten()
            .collect();
        for id in gone {
            self.release(id);
        }
    }

    /// New pages for every changed range's bitmap and for the index: (range,
    /// page) and the index chain. Each page taken changes the bits of its own
    /// range and each page replaced those of its range, so this goes on until
    /// every changed range has its new page; it ends, as each range is
    /// written once.
    fn allocate_map_pages(&mut self) -> (BTreeMap<usize, PageId>, Vec<PageId>) {
        let mut written = BTreeMap::new();
        let mut index = Vec::new();
        loop {
            // Pages taken from the end of the file may open a new range.
            let ranges = ranges_for(self.page_count);
            if self.map.bitmaps.len() < ranges {
                self.dirty.extend(self.map.bitmaps.len()..ranges);
                self.map.bitmaps.resize(ranges, None);
                self.listed.resize(ranges * BITMAP_WORDS, 0);
            }
            let pending: Vec<usize> = self
                .dirty
                .iter()
                .copied()
                .filter(|range| !written.contains_key(range))
                .collect();
            let index_len = ranges.div_ceil(ID_LIST_ENTRIES_MAX);
            if pending.is_empty() && index.len() == index_len {
                return (written, index);
            }
            for range in pending {
                if let Some(old) = self.map.bitmaps[range].take() {
                    self.release(old);
                }
                written.insert(range, self.allocate());
            }
            while index.len() < index_len {
                index.push(self.allocate());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page::freemap::{decode_bitmap_page, decode_id_list, BITMAP_PAGE_IDS};
    use crate::page::layout::{seal_page, verify_page, PageKind};

    fn new_list(free: impl IntoIterator<Item = PageId>, page_count: u64) -> Freelist {
        Freelist::new(free.into_iter().collect(), MapPages::none(page_count), page_count)
    }

    /// The free pages the sealed map pages list, and how many map pages there were.
    fn decode_map(pages: &[PageImage], page_count: u64) -> BTreeSet<PageId> {
        let mut free = BTreeSet::new();
        for (id, page) in pages {
            let mut page = page.clone();
            seal_page(&mut page, 1);
            let header = verify_page(&page, *id).unwrap();
            if header.kind == PageKind::FreeBitmap {
                let range = (crate::page::get_u64(&page, 24) / BITMAP_PAGE_IDS) as usize;
                free.extend(decode_bitmap_page(&page, header.count, range, page_count).unwrap());
            } else {
                assert_eq!(header.kind, PageKind::FreeIndex);
                decode_id_list(&page, header.count).unwrap();
            }
        }
        free
    }

    #[test]
    fn released_pages_are_reused_only_after_the_seal() {
        let mut list = new_list([], 2);
        let a = list.allocate();
        let b = list.allocate();
        assert_eq!((a, b), (2, 3));
        list.release(a);
        assert_eq!(list.allocate(), 4, "a page released by this transaction waits");
        let (head, pages) = list.seal(1);
        assert_eq!(pages.len(), 2, "a bitmap page and an index page");
        assert!(
            head.is_some_and(|head| head >= 5),
            "map pages come from the end of the file"
        );
        assert_eq!(decode_map(&pages, list.page_count()), BTreeSet::from([a]));
        assert_eq!(list.allocate(), a, "after the seal it is reused, lowest first");
    }

    #[test]
    fn the_previous_index_and_replaced_bitmaps_are_released_by_the_next_seal() {
        let mut list = new_list([7], 9);
        let (_, first) = list.seal(1);
        let first_pages: BTreeSet<PageId> = first.iter().map(|(id, _)| *id).collect();
        assert!(first_pages.contains(&7), "the map reuses a free page");
        let (_, second) = list.seal(2);
        let listed = decode_map(&second, list.page_count());
        assert_eq!(listed, first_pages, "the first map's pages are free in the second");
    }

    #[test]
    fn a_small_commit_writes_a_bounded_number_of_freelist_pages_however_many_are_free() {
        // 32 ranges (4 GiB of file), every other page free: a format-1 chain
        // of these 524,287 ids took 1,033 pages, written by every commit.
        let page_count = 32 * BITMAP_PAGE_IDS;
        let mut list = new_list((2..page_count).step_by(2), page_count);
        let (_, pages) = list.seal(1);
        assert_eq!(pages.len(), 33, "the first seal writes every range and the index");
        let mut live: Vec<PageId> = (3..page_count).step_by(2).collect();
        let mut random = 1u64;
        for txid in 2..50 {
            // A put's copy-on-write: three pages of a path anywhere in the file
            // released, three new ones allocated (the lowest free).
            let mut changed = BTreeSet::new();
            for _ in 0..3 {
                random = random.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let slot = (random >> 33) as usize % live.len();
                let old = std::mem::replace(&mut live[slot], list.allocate());
                list.release(old);
                changed.insert(range_of(old));
            }
            let (_, pages) = list.seal(txid);
            // The released pages' ranges, range 0 (the allocations, and the
            // map pages it took and replaced: all lowest free), the index.
            let bound = changed.len() + usize::from(!changed.contains(&0)) + 1;
            assert!(
                pages.len() <= bound,
                "seal {txid} wrote {} pages, bound {bound}",
                pages.len()
            );
        }
    }

    #[test]
    fn the_map_lists_exactly_the_free_released_and_held_pages() {
        let mut list = new_list([3, 5, 8], 10);
        list.pin(0);
        list.release(4);
        let a = list.allocate();
        let (_, pages) = list.seal(1);
        let mut expected: BTreeSet<PageId> = [3, 4, 5, 8].into();
        expected.remove(&a);
        for (id, _) in &pages {
            expected.remove(id);
        }
        assert_eq!(decode_map(&pages, list.page_count()), expected);
    }

    #[test]
    #[should_panic(expected = "page 5 freed twice")]
    fn a_page_freed_twice_stops_everything() {
        let mut list = new_list([3, 5], 8);
        list.release(5);
        list.seal(1);
    }

    #[test]
    fn a_file_growing_into_a_new_range_gets_its_bitmap_page() {
        let mut list = new_list([], BITMAP_PAGE_IDS - 10);
        list.seal(1);
        assert_eq!(list.map.bitmaps.len(), 1);
        let mut last = list.allocate();
        while last < BITMAP_PAGE_IDS {
            last = list.allocate();
        }
        assert_eq!(last, BITMAP_PAGE_IDS, "the first page of the second range");
        list.release(last - 1);
        let (_, pages) = list.seal(2);
        assert_eq!(list.map.bitmaps.len(), 2);
        assert!(decode_map(&pages, list.page_count()).contains(&(last - 1)));
    }

    #[test]
    fn pages_released_after_a_pinned_commit_wait_for_the_unpin() {
        let mut list = new_list([], 2);
        let old = list.allocate();
        list.seal(1);
        list.pin(1);
        list.release(old);
        let (_, pages) = list.seal(2);
        assert!(
            decode_map(&pages, list.page_count()).contains(&old),
            "listed free on disk"
        );
        for _ in 0..4 {
            assert_ne!(list.allocate(), old, "but not reused while commit 1 is read");
        }
        assert_eq!(list.unreachable_pages().filter(|&id| id == old).count(), 1);
        list.seal(3);
        list.unpin(1);
        assert_eq!(list.lowest_free(), Some(old), "reusable once the reader is gone");
    }

    #[test]
    fn a_later_pin_does_not_keep_pages_an_earlier_commit_released() {
        let mut list = new_list([], 2);
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
        assert!(list.free.contains(&a) && !list.free.contains(&b));
        list.unpin(2);
        assert!(list.free.contains(&b));
    }

    #[test]
    fn trimming_gives_back_only_the_free_tail() {
        let mut list = new_list([3, 5, 6], 7);
        assert_eq!(list.trim_tail(), 2);
        assert_eq!(list.page_count(), 5);
        assert_eq!(list.trim_tail(), 0, "page 4 is in use");
        assert_eq!(list.allocate(), 3);
    }

    #[test]
    fn trimming_a_whole_range_releases_its_bitmap_page() {
        let page_count = BITMAP_PAGE_IDS + 10;
        let mut list = new_list(BITMAP_PAGE_IDS - 20..page_count, page_count);
        list.seal(1);
        assert_eq!(list.map.bitmaps.len(), 2);
        let second = list.map.bitmaps[1].unwrap();
        assert!(second < BITMAP_PAGE_IDS, "map pages go to the lowest free pages");
        list.trim_tail();
        let (_, pages) = list.seal(2);
        assert_eq!(list.map.bitmaps.len(), 1);
        assert!(list.page_count() < BITMAP_PAGE_IDS);
        assert!(decode_map(&pages, list.page_count()).contains(&second));
    }
}
