//! The freelist on disk, and reading it back at open.
//!
//! Format 2 (what commits write): the file's pages are cut into ranges of
//! [`BITMAP_PAGE_IDS`] ids; each range has one bitmap page (kind 6), a bit per
//! page, set for a free one. A chain of index pages (kind 7) names the bitmap
//! page of every range in order; the meta page names the first index page. A
//! commit writes again only the bitmap pages of the ranges it changed (and the
//! index, one page per 63 GiB of file), so its cost follows what it allocated
//! and released, not how many pages are free.
//!
//! Format 1 (files written before the map): a chain of pages (kind 5) listing
//! every free page id, rewritten whole by every commit. `open` still reads it;
//! the next commit writes the map in its place.
//!
//! Bodies (after the common page header, little endian):
//! ```text
//! kind 6, bitmap   24  u64 first page id of the range (range number × 32,512)
//!                  32  u64 × 508: bit b of word w is page first + 64 w + b
//!                  header count: the bits set (free pages in the range)
//! kind 7, index    24  u64 next index page, 0 at the end of the chain
//!                  32  u64 × count: bitmap page of each range, in range order
//! kind 5, chain    24  u64 next chain page, 0 at the end of the chain
//!                  32  u64 × count: free page ids
//! ```

use std::collections::BTreeSet;

use super::freelist::MapPages;
use super::layout::{get_u64, new_page, PageId, PageKind, BODY_BYTES, HEADER_BYTES, META_PAGE_COUNT};
use super::meta::FreelistFormat;
use super::{PageError, PageStore};

/// u64 words of bits one bitmap page holds.
pub const BITMAP_WORDS: usize = (BODY_BYTES - 8) / 8;
/// Page ids one bitmap page covers (32,512: 127 MiB of file).
pub const BITMAP_PAGE_IDS: u64 = BITMAP_WORDS as u64 * 64;
/// Page ids one index page (bitmap pages: 508, 63.5 GiB of file) or format-1
/// chain page (free pages) lists.
pub const ID_LIST_ENTRIES_MAX: usize = (BODY_BYTES - 8) / 8;

/// Ranges (bitmap pages) a file of `page_count` pages has.
pub fn ranges_for(page_count: u64) -> usize {
    usize::try_from(page_count.div_ceil(BITMAP_PAGE_IDS)).expect("a page count that fits the file")
}

/// The range holding page `id`.
pub fn range_of(id: PageId) -> usize {
    usize::try_from(id / BITMAP_PAGE_IDS).expect("a page id that fits the file")
}

/// A freelist page whose body contradicts its header or its place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FreemapError {
    #[error("freelist page lists {count} ids, at most {max} fit")]
    TooManyIds { count: usize, max: usize },
    #[error("bitmap page covers pages from {found}, its place in the index says {expected}")]
    WrongRange { expected: PageId, found: PageId },
    #[error("bitmap page counts {count} free pages and has {bits} bits set")]
    WrongCount { count: u16, bits: u32 },
    #[error("bitmap page marks page {id} free, outside pages 2..{page_count}")]
    OutsideFile { id: PageId, page_count: u64 },
}

/// A bitmap page for range `range` holding `words` (at most [`BITMAP_WORDS`];
/// missing words are zero).
pub fn encode_bitmap_page(id: PageId, range: usize, words: &[u64]) -> Box<[u8]> {
    assert!(words.len() <= BITMAP_WORDS);
    let free: u32 = words.iter().map(|word| word.count_ones()).sum();
    let count = u16::try_from(free).expect("a range has fewer pages than a u16 counts");
    let mut page = new_page(PageKind::FreeBitmap, count, id);
    let first = range as u64 * BITMAP_PAGE_IDS;
    page[HEADER_BYTES..HEADER_BYTES + 8].copy_from_slice(&first.to_le_bytes());
    for (index, word) in words.iter().enumerate() {
        let at = HEADER_BYTES + 8 + index * 8;
        page[at..at + 8].copy_from_slice(&word.to_le_bytes());
    }
    page
}

/// The free pages a verified bitmap page of range `range` marks, in a file of
/// `page_count` pages.
pub fn decode_bitmap_page(page: &[u8], count: u16, range: usize, page_count: u64) -> Result<Vec<PageId>, FreemapError> {
    let expected = range as u64 * BITMAP_PAGE_IDS;
    let found = get_u64(page, HEADER_BYTES);
    if found != expected {
        return Err(FreemapError::WrongRange { expected, found });
    }
    let mut free = Vec::new();
    for index in 0..BITMAP_WORDS {
        let mut word = get_u64(page, HEADER_BYTES + 8 + index * 8);
        while word != 0 {
            let id = expected + index as u64 * 64 + u64::from(word.trailing_zeros());
            if !(META_PAGE_COUNT..page_count).contains(&id) {
                return Err(FreemapError::OutsideFile { id, page_count });
            }
            free.push(id);
            word &= word - 1;
        }
    }
    if free.len() != usize::from(count) {
        let bits = u32::try_from(free.len()).expect("at most 32,512 bits");
        return Err(FreemapError::WrongCount { count, bits });
    }
    Ok(free)
}

/// An index page naming `bitmaps` (at most [`ID_LIST_ENTRIES_MAX`]), then `next`.
pub fn encode_index_page(id: PageId, next: Option<PageId>, bitmaps: &[PageId]) -> Box<[u8]> {
    encode_id_list(PageKind::FreeIndex, id, next, bitmaps)
}

/// A format-1 chain page (tests build old files with it).
#[cfg(test)]
pub fn encode_chain_page(id: PageId, next: Option<PageId>, free: &[PageId]) -> Box<[u8]> {
    encode_id_list(PageKind::Freelist, id, next, free)
}

fn encode_id_list(kind: PageKind, id: PageId, next: Option<PageId>, ids: &[PageId]) -> Box<[u8]> {
    assert!(ids.len() <= ID_LIST_ENTRIES_MAX);
    let mut page = new_page(kind, ids.len() as u16, id);
    page[HEADER_BYTES..HEADER_BYTES + 8].copy_from_slice(&next.unwrap_or(0).to_le_bytes());
    for (slot, listed) in ids.iter().enumerate() {
        let at = HEADER_BYTES + 8 + slot * 8;
        page[at..at + 8].copy_from_slice(&listed.to_le_bytes());
    }
    page
}

/// Reads one verified index or chain page: (next page, the ids it lists).
pub fn decode_id_list(page: &[u8], count: u16) -> Result<(Option<PageId>, Vec<PageId>), FreemapError> {
    let count = usize::from(count);
    if count > ID_LIST_ENTRIES_MAX {
        return Err(FreemapError::TooManyIds {
            count,
            max: ID_LIST_ENTRIES_MAX,
        });
    }
    let next = get_u64(page, HEADER_BYTES);
    let ids = (0..count)
        .map(|slot| get_u64(page, HEADER_BYTES + 8 + slot * 8))
        .collect();
    Ok(((next != 0).then_some(next), ids))
}

impl PageStore {
    /// The durable commit's free pages and the pages holding its freelist.
    pub(super) fn read_free_pages(&self) -> Result<(BTreeSet<PageId>, MapPages), PageError> {
        match self.durable.freelist_format {
            FreelistFormat::Chain => self.read_chain(),
            FreelistFormat::Map => self.read_map(),
        }
    }

    /// A format-1 chain: every free id listed, once, on pages of the file.
    fn read_chain(&self) -> Result<(BTreeSet<PageId>, MapPages), PageError> {
        let page_count = self.durable.page_count;
        let mut free = BTreeSet::new();
        let mut chain = Vec::new();
        let mut next = self.durable.freelist_head;
        while let Some(id) = next {
            if chain.contains(&id) || chain.len() as u64 >= page_count {
                return Err(PageError::corrupt(id, "the freelist chain loops"));
            }
            let page = self.freelist_page(id, PageKind::Freelist)?;
            let (following, ids) =
                decode_id_list(page.bytes, page.count).map_err(|error| PageError::corrupt(id, error))?;
            for free_id in ids {
                if !(META_PAGE_COUNT..page_count).contains(&free_id) || !free.insert(free_id) {
                    return Err(PageError::corrupt(id, format!("bad or repeated free page {free_id}")));
                }
            }
            chain.push(id);
            next = following;
        }
        check_not_listed(&free, &chain)?;
        let bitmaps = vec![None; ranges_for(page_count)];
        Ok((free, MapPages { index: chain, bitmaps }))
    }

    /// A format-2 map: an index naming one bitmap page per range, every page
    /// of it distinct and none of them marked free.
    fn read_map(&self) -> Result<(BTreeSet<PageId>, MapPages), PageError> {
        let page_count = self.durable.page_count;
        let ranges = ranges_for(page_count);
        let Some(head) = self.durable.freelist_head else {
            // A new file's first meta page: nothing is free, no map written yet.
            return Ok((BTreeSet::new(), MapPages::none(page_count)));
        };
        let mut map_pages = BTreeSet::new();
        let mut index = Vec::new();
        let mut bitmap_ids = Vec::new();
        let mut next = Some(head);
        while let Some(id) = next {
            if bitmap_ids.len() >= ranges {
                return Err(PageError::corrupt(
                    id,
                    format!("the freelist index goes on past the file's {ranges} ranges"),
                ));
            }
            if !map_pages.insert(id) {
                return Err(PageError::corrupt(id, "the freelist index loops"));
            }
            let page = self.freelist_page(id, PageKind::FreeIndex)?;
            let (following, ids) =
                decode_id_list(page.bytes, page.count).map_err(|error| PageError::corrupt(id, error))?;
            index.push(id);
            bitmap_ids.extend(ids);
            next = following;
        }
        if bitmap_ids.len() != ranges {
            return Err(PageError::corrupt(
                head,
                format!(
                    "the freelist index names {} ranges, the file has {ranges}",
                    bitmap_ids.len()
                ),
            ));
        }
        let mut free = BTreeSet::new();
        for (range, &id) in bitmap_ids.iter().enumerate() {
            if !map_pages.insert(id) {
                return Err(PageError::corrupt(id, "a freelist page named twice"));
            }
            let page = self.freelist_page(id, PageKind::FreeBitmap)?;
            let ids = decode_bitmap_page(page.bytes, page.count, range, page_count)
                .map_err(|error| PageError::corrupt(id, error))?;
            free.extend(ids);
        }
        let map_pages: Vec<PageId> = map_pages.into_iter().collect();
        check_not_listed(&free, &map_pages)?;
        let bitmaps = bitmap_ids.into_iter().map(Some).collect();
        Ok((free, MapPages { index, bitmaps }))
    }

    /// Page `id` of the durable freelist: inside the file's count, verified,
    /// of kind `kind`.
    fn freelist_page(&self, id: PageId, kind: PageKind) -> Result<super::CommittedPage<'_>, PageError> {
        let page_count = self.durable.page_count;
        // A page past the count can still verify: the file grows ahead of it,
        // and a shrunk count leaves old pages behind.
        if !(META_PAGE_COUNT..page_count).contains(&id) {
            return Err(PageError::corrupt(
                id,
                format!("a freelist page outside pages 2..{page_count}"),
            ));
        }
        let page = self.page(id)?;
        if page.kind != kind {
            return Err(PageError::corrupt(
                id,
                format!("expected a {kind:?} page, found {:?}", page.kind),
            ));
        }
        Ok(page)
    }
}

fn check_not_listed(free: &BTreeSet<PageId>, map_pages: &[PageId]) -> Result<(), PageError> {
    match map_pages.iter().find(|id| free.contains(id)) {
        Some(&id) => Err(PageError::corrupt(id, "a freelist page lists itself as free")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page::layout::{seal_page, verify_page};

    fn sealed(mut page: Box<[u8]>, id: PageId) -> (Box<[u8]>, u16) {
        seal_page(&mut page, 1);
        let header = verify_page(&page, id).unwrap();
        (page, header.count)
    }

    #[test]
    fn a_bitmap_page_round_trips_its_free_pages() {
        let range = 1;
        let first = BITMAP_PAGE_IDS;
        let mut words = vec![0u64; BITMAP_WORDS];
        for id in [first, first + 63, first + 64, first + BITMAP_PAGE_IDS - 1] {
            let offset = (id - first) as usize;
            words[offset / 64] |= 1 << (offset % 64);
        }
        let (page, count) = sealed(encode_bitmap_page(9, range, &words), 9);
        assert_eq!(count, 4);
        let free = decode_bitmap_page(&page, count, range, 3 * BITMAP_PAGE_IDS).unwrap();
        assert_eq!(free, vec![first, first + 63, first + 64, first + BITMAP_PAGE_IDS - 1]);
    }

    #[test]
    fn a_bitmap_page_that_contradicts_its_place_or_count_is_refused() {
        let mut words = vec![0u64; 2];
        words[1] = 0b101;
        let (page, count) = sealed(encode_bitmap_page(9, 0, &words), 9);
        assert_eq!(
            decode_bitmap_page(&page, count, 1, 100),
            Err(FreemapError::WrongRange {
                expected: BITMAP_PAGE_IDS,
                found: 0
            })
        );
        assert_eq!(
            decode_bitmap_page(&page, count + 1, 0, 100),
            Err(FreemapError::WrongCount { count: 3, bits: 2 })
        );
        assert_eq!(
            decode_bitmap_page(&page, count, 0, 66),
            Err(FreemapError::OutsideFile { id: 66, page_count: 66 })
        );
        let (page, count) = sealed(encode_bitmap_page(9, 0, &[0b10]), 9);
        assert_eq!(
            decode_bitmap_page(&page, count, 0, 100),
            Err(FreemapError::OutsideFile { id: 1, page_count: 100 }),
            "a meta page is never free"
        );
    }

    #[test]
    fn an_index_page_round_trips_and_a_count_past_the_page_is_refused() {
        let (page, count) = sealed(encode_index_page(4, Some(8), &[5, 6, 7]), 4);
        assert_eq!(decode_id_list(&page, count), Ok((Some(8), vec![5, 6, 7])));
        assert!(matches!(
            decode_id_list(&page, ID_LIST_ENTRIES_MAX as u16 + 1),
            Err(FreemapError::TooManyIds { .. })
        ));
    }
}
