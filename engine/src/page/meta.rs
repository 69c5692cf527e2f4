//! The two meta pages (pages 0 and 1). Commit `txid` writes slot `txid % 2`, so
//! the meta page describing the last durable state is never overwritten by the
//! next commit. At open the valid meta page with the higher txid wins.
//!
//! Body (after the common page header, little endian):
//! ```text
//! 24  u64 magic "RKVPAGES"
//! 32  u32 format version: 1 (freelist as a chain of id lists) or 2 (as a
//!         free-page map); this build reads both and writes 2
//! 36  u32 page size in bytes
//! 40  u64 root page of the B-tree, 0 for an empty tree
//! 48  u64 first freelist page (version 1: of the chain; version 2: of the
//!         map's index), 0 for none
//! 56  u64 page count: pages 0..count are in use or free; later ones are not yet used
//! 64  zeros to the end of the page
//! ```

use super::layout::{get_u32, get_u64, new_page, seal_page, verify_page, HeaderError, PageId, PageKind, PAGE_BYTES};

const MAGIC: u64 = u64::from_le_bytes(*b"RKVPAGES");

/// How a commit's freelist is stored: the meta page's format version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreelistFormat {
    /// Version 1: a chain of pages listing free page ids (kind 5), rewritten
    /// whole by every commit. Files written before the map still hold it.
    Chain = 1,
    /// Version 2: a bitmap page per range of the file under a chain of index
    /// pages (kinds 6 and 7); a commit rewrites only the ranges it changed.
    Map = 2,
}

/// Why a meta slot holds no valid meta page (a torn or never-written slot is
/// expected after a crash or on a new file).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    #[error("file too short")]
    Missing,
    #[error(transparent)]
    Header(#[from] HeaderError),
    #[error("page {slot} is a {kind:?} page, not a meta page")]
    NotMeta { slot: PageId, kind: PageKind },
    #[error("not a ringkv page file (bad magic)")]
    Magic,
    #[error("page file format version {version}, this build reads 1 and 2")]
    Version { version: u32 },
    #[error("page size {page_bytes}, this build uses {PAGE_BYTES}")]
    PageSize { page_bytes: u32 },
    #[error("txid {txid} written to slot {slot}")]
    WrongSlot { txid: u64, slot: PageId },
}

/// Neither meta slot holds a valid meta page, in a file that is not all zeros.
#[derive(Debug, thiserror::Error)]
#[error("no valid meta page (page 0: {slot0}; page 1: {slot1})")]
pub struct NoMetaError {
    pub slot0: MetaError,
    pub slot1: MetaError,
}

/// What a commit made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub txid: u64,
    pub root: Option<PageId>,
    pub freelist_head: Option<PageId>,
    pub freelist_format: FreelistFormat,
    pub page_count: u64,
}

impl Meta {
    /// The slot (page id) this meta is written to.
    pub fn slot(&self) -> PageId {
        self.txid % 2
    }

    pub fn encode(&self) -> Box<[u8]> {
        let mut page = new_page(PageKind::Meta, 0, self.slot());
        page[24..32].copy_from_slice(&MAGIC.to_le_bytes());
        page[32..36].copy_from_slice(&(self.freelist_format as u32).to_le_bytes());
        page[36..40].copy_from_slice(&(PAGE_BYTES as u32).to_le_bytes());
        page[40..48].copy_from_slice(&self.root.unwrap_or(0).to_le_bytes());
        page[48..56].copy_from_slice(&self.freelist_head.unwrap_or(0).to_le_bytes());
        page[56..64].copy_from_slice(&self.page_count.to_le_bytes());
        seal_page(&mut page, self.txid);
        page
    }

    /// Decodes meta slot `slot`; Err says why it is not a valid meta page.
    pub fn decode(page: &[u8], slot: PageId) -> Result<Meta, MetaError> {
        let header = verify_page(page, slot)?;
        if header.kind != PageKind::Meta {
            return Err(MetaError::NotMeta {
                slot,
                kind: header.kind,
            });
        }
        if get_u64(page, 24) != MAGIC {
            return Err(MetaError::Magic);
        }
        let freelist_format = match get_u32(page, 32) {
            1 => FreelistFormat::Chain,
            2 => FreelistFormat::Map,
            version => return Err(MetaError::Version { version }),
        };
        let page_bytes = get_u32(page, 36);
        if page_bytes as usize != PAGE_BYTES {
            return Err(MetaError::PageSize { page_bytes });
        }
        let meta = Meta {
            txid: header.txid,
            root: non_zero(get_u64(page, 40)),
            freelist_head: non_zero(get_u64(page, 48)),
            freelist_format,
            page_count: get_u64(page, 56),
        };
        if meta.slot() != slot {
            return Err(MetaError::WrongSlot { txid: meta.txid, slot });
        }
        Ok(meta)
    }
}

fn non_zero(id: PageId) -> Option<PageId> {
    (id != 0).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_round_trips_in_its_slot() {
        let meta = Meta {
            txid: 7,
            root: Some(12),
            freelist_head: None,
            freelist_format: FreelistFormat::Map,
            page_count: 40,
        };
        let page = meta.encode();
        assert_eq!(Meta::decode(&page, 1), Ok(meta));
        assert!(Meta::decode(&page, 0).is_err(), "a meta page read from the other slot");
    }

    #[test]
    fn both_freelist_formats_round_trip_and_a_later_one_is_refused() {
        for freelist_format in [FreelistFormat::Chain, FreelistFormat::Map] {
            let meta = Meta {
                txid: 4,
                root: Some(5),
                freelist_head: Some(6),
                freelist_format,
                page_count: 7,
            };
            assert_eq!(Meta::decode(&meta.encode(), 0), Ok(meta));
        }
        let mut page = new_page(PageKind::Meta, 0, 0);
        page[24..32].copy_from_slice(&MAGIC.to_le_bytes());
        page[32..36].copy_from_slice(&3u32.to_le_bytes());
        seal_page(&mut page, 2);
        assert_eq!(Meta::decode(&page, 0), Err(MetaError::Version { version: 3 }));
    }

    #[test]
    fn a_torn_meta_page_is_invalid() {
        let meta = Meta {
            txid: 2,
            root: None,
            freelist_head: Some(3),
            freelist_format: FreelistFormat::Map,
            page_count: 4,
        };
        let mut page = meta.encode();
        // Only the first sectors reached the disk; the rest is older bytes.
        page[1024..].fill(0xee);
        assert!(Meta::decode(&page, 0).is_err());
    }
}
