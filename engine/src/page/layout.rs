//! The header every page starts with, and its checksum. Byte layout (all integers
//! little endian), as documented in docs/page-format.md:
//! ```text
//! 0   u32 crc32 of bytes 4..PAGE_BYTES
//! 4   u8  kind (PageKind)
//! 5   u8  reserved, zero
//! 6   u16 count: entries (branch, leaf), page ids (freelist chain, freelist
//!         index) or free pages (free-page bitmap); zero otherwise
//! 8   u64 txid of the commit that wrote the page
//! 16  u64 the page's own id (catches misdirected writes and reads)
//! 24  body
//! ```

/// Every page, meta pages included, is this large.
pub const PAGE_BYTES: usize = 4096;
pub const HEADER_BYTES: usize = 24;
/// Bytes after the header.
pub const BODY_BYTES: usize = PAGE_BYTES - HEADER_BYTES;

/// A page's number; its byte offset in the file is `id * PAGE_BYTES`.
pub type PageId = u64;

/// A page to be written: its id and its bytes.
pub type PageImage = (PageId, Box<[u8]>);

/// Pages 0 and 1 are the two meta pages; data pages start after them.
pub const META_PAGE_COUNT: u64 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PageKind {
    Meta = 1,
    Branch = 2,
    Leaf = 3,
    Overflow = 4,
    /// A page of a format-1 freelist chain (read at open, no longer written).
    Freelist = 5,
    /// A range of the file's pages, one bit each: set for a free page.
    FreeBitmap = 6,
    /// A page of the freelist's index: the bitmap page of each range.
    FreeIndex = 7,
}

impl PageKind {
    fn from_u8(byte: u8) -> Option<PageKind> {
        Some(match byte {
            1 => PageKind::Meta,
            2 => PageKind::Branch,
            3 => PageKind::Leaf,
            4 => PageKind::Overflow,
            5 => PageKind::Freelist,
            6 => PageKind::FreeBitmap,
            7 => PageKind::FreeIndex,
            _ => return None,
        })
    }
}

/// Why a page read back is not the page it should be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("page is {bytes} bytes, not {PAGE_BYTES}")]
    WrongSize { bytes: usize },
    #[error("page checksum mismatch")]
    Checksum,
    #[error("unknown page kind {kind}")]
    UnknownKind { kind: u8 },
    #[error("reserved header byte is not zero")]
    Reserved,
    /// A page written to, or read from, the wrong place.
    #[error("page claims to be page {claimed}")]
    WrongId { claimed: PageId },
}

/// A verified page header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageHeader {
    pub kind: PageKind,
    pub count: u16,
    pub txid: u64,
    pub id: PageId,
}

/// A zeroed page buffer with its header written (checksum and txid come at seal).
pub fn new_page(kind: PageKind, count: u16, id: PageId) -> Box<[u8]> {
    let mut page = vec![0u8; PAGE_BYTES].into_boxed_slice();
    page[4] = kind as u8;
    page[6..8].copy_from_slice(&count.to_le_bytes());
    page[16..24].copy_from_slice(&id.to_le_bytes());
    page
}

/// Stamps the committing txid and the checksum: the last thing done to a page
/// before it is written.
pub fn seal_page(page: &mut [u8], txid: u64) {
    assert_eq!(page.len(), PAGE_BYTES);
    page[8..16].copy_from_slice(&txid.to_le_bytes());
    let crc = crc32fast::hash(&page[4..]);
    page[0..4].copy_from_slice(&crc.to_le_bytes());
}

/// The header fields of a page, without checking the checksum (for pages
/// verified before, or built in memory).
pub fn parse_header(page: &[u8]) -> Result<PageHeader, HeaderError> {
    let kind = PageKind::from_u8(page[4]).ok_or(HeaderError::UnknownKind { kind: page[4] })?;
    if page[5] != 0 {
        return Err(HeaderError::Reserved);
    }
    Ok(PageHeader {
        kind,
        count: u16::from_le_bytes(page[6..8].try_into().expect("2 bytes")),
        txid: u64::from_le_bytes(page[8..16].try_into().expect("8 bytes")),
        id: u64::from_le_bytes(page[16..24].try_into().expect("8 bytes")),
    })
}

/// Checks a page read back: checksum, known kind, reserved byte, and that it is
/// the page `id` (a page written to the wrong place fails here).
pub fn verify_page(page: &[u8], id: PageId) -> Result<PageHeader, HeaderError> {
    if page.len() != PAGE_BYTES {
        return Err(HeaderError::WrongSize { bytes: page.len() });
    }
    let stored = u32::from_le_bytes(page[0..4].try_into().expect("4 bytes"));
    if stored != crc32fast::hash(&page[4..]) {
        return Err(HeaderError::Checksum);
    }
    let header = parse_header(page)?;
    if header.id != id {
        return Err(HeaderError::WrongId { claimed: header.id });
    }
    Ok(header)
}

pub fn get_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(bytes[at..at + 2].try_into().expect("2 bytes"))
}

pub fn get_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

pub fn get_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_page_verifies_and_any_flipped_bit_does_not() {
        let mut page = new_page(PageKind::Leaf, 3, 42);
        page[100] = 7;
        seal_page(&mut page, 9);
        let header = verify_page(&page, 42).unwrap();
        assert_eq!(
            header,
            PageHeader {
                kind: PageKind::Leaf,
                count: 3,
                txid: 9,
                id: 42
            }
        );
        for at in (0..PAGE_BYTES).step_by(211) {
            let mut damaged = page.clone();
            damaged[at] ^= 0x10;
            assert!(verify_page(&damaged, 42).is_err(), "flip at {at} went unnoticed");
        }
    }

    #[test]
    fn a_page_read_from_the_wrong_place_is_refused() {
        let mut page = new_page(PageKind::Branch, 0, 5);
        seal_page(&mut page, 1);
        assert!(verify_page(&page, 6)
            .unwrap_err()
            .to_string()
            .contains("claims to be page 5"));
    }

    #[test]
    fn zeros_are_not_a_page() {
        assert!(verify_page(&[0; PAGE_BYTES], 0).is_err());
    }
}
