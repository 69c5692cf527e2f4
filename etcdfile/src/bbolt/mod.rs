//! bbolt's file format, the subset etcd uses: meta pages, branch and leaf
//! pages (with overflow), buckets (inline or not) and an array freelist. The
//! layout is written down byte by byte in docs/bbolt-format.md; the facts come
//! from bbolt's source (page.go, db.go, bucket.go, freelist.go). Integers are
//! little endian, as bbolt writes them on every platform etcd ships for.
//!
//! [`read`] walks an existing file page by page (pread, bounds checked, never
//! trusting a length or a page id it read); [`write`] lays out a new file in
//! one pass, each bucket a B+tree built bottom-up from keys in order.

pub mod read;
pub mod write;

#[cfg(test)]
mod tests;

/// Bytes of a page header: id u64, flags u16, count u16, overflow u32.
pub const PAGE_HEADER_BYTES: usize = 16;
/// Bytes of a branch element: pos u32, ksize u32, pgid u64.
pub const BRANCH_ELEMENT_BYTES: usize = 16;
/// Bytes of a leaf element: flags u32, pos u32, ksize u32, vsize u32.
pub const LEAF_ELEMENT_BYTES: usize = 16;
/// Bytes of a bucket header (a bucket's value): root pgid u64, sequence u64.
pub const BUCKET_HEADER_BYTES: usize = 16;
/// Bytes of the meta struct after the page header, checksum included.
pub const META_BYTES: usize = 64;
/// Bytes the meta checksum (FNV-1a 64) covers: the fields before it.
pub const META_CHECKSUMMED_BYTES: usize = 56;

pub const BRANCH_PAGE_FLAG: u16 = 0x01;
pub const LEAF_PAGE_FLAG: u16 = 0x02;
pub const META_PAGE_FLAG: u16 = 0x04;
pub const FREELIST_PAGE_FLAG: u16 = 0x10;
/// A leaf element whose value is a bucket header (a bucket in a bucket).
pub const BUCKET_LEAF_FLAG: u32 = 0x01;

/// bbolt's magic number, at the start of the meta struct.
pub const MAGIC: u32 = 0xED0C_DAED;
/// The data file version bbolt 1.3 and later write.
pub const VERSION: u32 = 2;
/// The meta's freelist page id when the freelist is not stored (etcd sets
/// bbolt's NoFreelistSync on Linux: the freelist is rebuilt at open).
pub const NO_FREELIST: u64 = u64::MAX;
/// A freelist page whose count field holds this keeps its real count in its
/// first 8-byte slot.
pub const FREELIST_COUNT_OVERFLOW: u16 = 0xFFFF;

/// The page size written: etcd's (the OS page size on amd64 and arm64 Linux).
pub const PAGE_BYTES: usize = 4096;
/// Smallest and largest page sizes read (bbolt takes the OS page size; 64 KiB
/// on ppc64le). A power of two in between.
pub const READ_PAGE_BYTES_MIN: u32 = 512;
pub const READ_PAGE_BYTES_MAX: u32 = 64 * 1024;
/// bbolt's limits on a key and a value.
pub const KEY_BYTES_MAX: usize = 32768;
pub const VALUE_BYTES_MAX: usize = (1 << 31) - 2;

/// FNV-1a, 64 bits: bbolt's meta checksum.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

pub(crate) fn get_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(bytes[at..at + 2].try_into().expect("2 bytes"))
}

pub(crate) fn get_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

pub(crate) fn get_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// The meta struct of a meta page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub page_bytes: u32,
    /// The root bucket's root page.
    pub root: u64,
    /// The freelist page, or [`NO_FREELIST`].
    pub freelist: u64,
    /// Pages in the file (the high-water mark): every page id is below it.
    pub page_count: u64,
    pub txid: u64,
}

impl Meta {
    /// The meta struct's bytes (written at offset 16 of a meta page).
    pub fn encode(&self) -> [u8; META_BYTES] {
        let mut out = [0u8; META_BYTES];
        out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        out[4..8].copy_from_slice(&VERSION.to_le_bytes());
        out[8..12].copy_from_slice(&self.page_bytes.to_le_bytes());
        // 12..16 flags: zero. 24..32 the root bucket's sequence: zero.
        out[16..24].copy_from_slice(&self.root.to_le_bytes());
        out[32..40].copy_from_slice(&self.freelist.to_le_bytes());
        out[40..48].copy_from_slice(&self.page_count.to_le_bytes());
        out[48..56].copy_from_slice(&self.txid.to_le_bytes());
        let checksum = fnv1a64(&out[..META_CHECKSUMMED_BYTES]);
        out[56..64].copy_from_slice(&checksum.to_le_bytes());
        out
    }
}
