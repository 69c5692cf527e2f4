//! Writing a new bbolt file in one pass. Pages 0 and 1 (the metas) are
//! written last, so the output must seek (a spooled file); every other page is
//! written once, in the order it fills, and never read back.
//!
//! Each bucket is a B+tree built bottom-up from keys given in increasing
//! order ([`BucketWriter`]): a leaf is written when the next element would
//! not fit its page, and its first key goes up into the pending branch above,
//! which is written the same way. Memory holds one pending page per level.
//! A bucket that ends as one leaf of at most a quarter page is stored inline
//! in the root bucket, as bbolt stores it. The file ends with the root
//! bucket's leaf and an empty freelist page: every page is in use.

use std::io::{Seek, SeekFrom, Write};

use super::{
    Meta, BRANCH_ELEMENT_BYTES, BRANCH_PAGE_FLAG, BUCKET_HEADER_BYTES, BUCKET_LEAF_FLAG, FREELIST_PAGE_FLAG,
    KEY_BYTES_MAX, LEAF_ELEMENT_BYTES, LEAF_PAGE_FLAG, META_PAGE_FLAG, PAGE_BYTES, PAGE_HEADER_BYTES, VALUE_BYTES_MAX,
};

/// The first page after the two metas.
const FIRST_DATA_PAGE: u64 = 2;

/// The output file and the next page id to write.
pub struct Writer<F: Write + Seek> {
    out: F,
    next_page: u64,
}

/// A bucket once all its keys are written: where its tree is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishedBucket {
    Page(u64),
    /// The bucket's leaf page bytes, stored after its header in the parent.
    Inline(Vec<u8>),
}

impl<F: Write + Seek> Writer<F> {
    pub fn new(mut out: F) -> std::io::Result<Writer<F>> {
        out.seek(SeekFrom::Start(FIRST_DATA_PAGE * PAGE_BYTES as u64))?;
        Ok(Writer {
            out,
            next_page: FIRST_DATA_PAGE,
        })
    }

    /// Writes `page` (whole pages, header not yet stamped) at the next id.
    fn write_page(&mut self, mut page: Vec<u8>) -> std::io::Result<u64> {
        assert!(!page.is_empty() && page.len().is_multiple_of(PAGE_BYTES));
        let id = self.next_page;
        let overflow = (page.len() / PAGE_BYTES - 1) as u32;
        page[0..8].copy_from_slice(&id.to_le_bytes());
        page[12..16].copy_from_slice(&overflow.to_le_bytes());
        self.out.write_all(&page)?;
        self.next_page += u64::from(overflow) + 1;
        Ok(id)
    }

    /// Writes the root bucket holding `buckets` (any order), the freelist and
    /// both metas, and hands the output back.
    pub fn finish(mut self, mut buckets: Vec<(Vec<u8>, FinishedBucket)>) -> std::io::Result<F> {
        buckets.sort_by(|a, b| a.0.cmp(&b.0));
        assert!(
            buckets.windows(2).all(|pair| pair[0].0 != pair[1].0),
            "bucket names are unique"
        );
        let elements: Vec<LeafElement> = buckets
            .into_iter()
            .map(|(name, bucket)| {
                let mut header = vec![0u8; BUCKET_HEADER_BYTES];
                match bucket {
                    FinishedBucket::Page(root) => header[0..8].copy_from_slice(&root.to_le_bytes()),
                    FinishedBucket::Inline(page) => header.extend_from_slice(&page),
                }
                LeafElement {
                    key: name,
                    value: header,
                    flags: BUCKET_LEAF_FLAG,
                }
            })
            .collect();
        let root = self.write_page(encode_leaf(&elements, true))?;
        let freelist = self.write_page(page_with_header(FREELIST_PAGE_FLAG, 0, PAGE_BYTES))?;
        let page_count = self.next_page;
        // bbolt's own first two metas: txids 0 and 1, the same tree.
        for txid in 0..2u64 {
            let meta = Meta {
                page_bytes: PAGE_BYTES as u32,
                root,
                freelist,
                page_count,
                txid,
            };
            let mut page = page_with_header(META_PAGE_FLAG, 0, PAGE_BYTES);
            page[0..8].copy_from_slice(&txid.to_le_bytes());
            page[PAGE_HEADER_BYTES..PAGE_HEADER_BYTES + super::META_BYTES].copy_from_slice(&meta.encode());
            self.out.seek(SeekFrom::Start(txid * PAGE_BYTES as u64))?;
            self.out.write_all(&page)?;
        }
        self.out.seek(SeekFrom::Start(page_count * PAGE_BYTES as u64))?;
        Ok(self.out)
    }
}

struct LeafElement {
    key: Vec<u8>,
    value: Vec<u8>,
    flags: u32,
}

struct BranchElement {
    key: Vec<u8>,
    child: u64,
}

/// One level's page being filled.
struct Level<T> {
    elements: Vec<T>,
    /// Bytes the page takes with these elements (header included).
    bytes: usize,
    /// Pages this level has written.
    written: u64,
}

impl<T> Default for Level<T> {
    fn default() -> Level<T> {
        Level {
            elements: Vec::new(),
            bytes: 0,
            written: 0,
        }
    }
}

/// A bucket's tree, built from keys in increasing order.
#[derive(Default)]
pub struct BucketWriter {
    leaves: Level<LeafElement>,
    branches: Vec<Level<BranchElement>>,
    last_key: Option<Vec<u8>>,
}

/// A key or value past bbolt's limits, or keys out of order: the caller's
/// input cannot be stored as given.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    #[error("a key of {key_bytes} bytes or a value of {value_bytes} bytes is past bbolt's limits")]
    TooLarge { key_bytes: usize, value_bytes: usize },
    #[error("keys must be put in increasing order")]
    OutOfOrder,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl BucketWriter {
    pub fn new() -> BucketWriter {
        BucketWriter::default()
    }

    /// Adds `key` = `value`; keys must come in strictly increasing order.
    pub fn put<F: Write + Seek>(&mut self, out: &mut Writer<F>, key: &[u8], value: &[u8]) -> Result<(), PutError> {
        if key.is_empty() || key.len() > KEY_BYTES_MAX || value.len() > VALUE_BYTES_MAX {
            return Err(PutError::TooLarge {
                key_bytes: key.len(),
                value_bytes: value.len(),
            });
        }
        if self.last_key.as_deref().is_some_and(|last| last >= key) {
            return Err(PutError::OutOfOrder);
        }
        self.last_key = Some(key.to_vec());
        let bytes = LEAF_ELEMENT_BYTES + key.len() + value.len();
        if !self.leaves.elements.is_empty() && self.leaves.bytes + bytes > PAGE_BYTES {
            self.flush_leaf(out)?;
        }
        if self.leaves.elements.is_empty() {
            self.leaves.bytes = PAGE_HEADER_BYTES;
        }
        self.leaves.bytes += bytes;
        self.leaves.elements.push(LeafElement {
            key: key.to_vec(),
            value: value.to_vec(),
            flags: 0,
        });
        Ok(())
    }

    /// Writes what is pending and says where the tree is.
    pub fn finish<F: Write + Seek>(mut self, out: &mut Writer<F>) -> std::io::Result<FinishedBucket> {
        if self.branches.is_empty() {
            let page = encode_leaf(&self.leaves.elements, false);
            // bbolt's inlineable(): one leaf, at most a quarter page.
            if page.len() <= PAGE_BYTES / 4 {
                return Ok(FinishedBucket::Inline(page));
            }
            return Ok(FinishedBucket::Page(out.write_page(pad(page))?));
        }
        if !self.leaves.elements.is_empty() {
            self.flush_leaf(out)?;
        }
        let mut level = 0;
        while level + 1 < self.branches.len() {
            if !self.branches[level].elements.is_empty() {
                self.flush_branch(out, level)?;
            }
            level += 1;
        }
        let top = self.branches.pop().expect("a branch level");
        // A top level of one child: that child is the root.
        if top.elements.len() == 1 && top.written == 0 {
            return Ok(FinishedBucket::Page(top.elements[0].child));
        }
        Ok(FinishedBucket::Page(out.write_page(encode_branch(&top.elements))?))
    }

    fn flush_leaf<F: Write + Seek>(&mut self, out: &mut Writer<F>) -> std::io::Result<()> {
        let elements = std::mem::take(&mut self.leaves.elements);
        let key = elements[0].key.clone();
        let child = out.write_page(encode_leaf(&elements, true))?;
        self.leaves.written += 1;
        self.push_branch(out, 0, BranchElement { key, child })
    }

    fn flush_branch<F: Write + Seek>(&mut self, out: &mut Writer<F>, level: usize) -> std::io::Result<()> {
        let elements = std::mem::take(&mut self.branches[level].elements);
        let key = elements[0].key.clone();
        let child = out.write_page(encode_branch(&elements))?;
        self.branches[level].written += 1;
        self.push_branch(out, level + 1, BranchElement { key, child })
    }

    /// Adds a child to the branch page pending at `level`, writing that page
    /// first if the child would not fit.
    fn push_branch<F: Write + Seek>(
        &mut self,
        out: &mut Writer<F>,
        level: usize,
        element: BranchElement,
    ) -> std::io::Result<()> {
        if self.branches.len() == level {
            self.branches.push(Level::default());
        }
        let bytes = BRANCH_ELEMENT_BYTES + element.key.len();
        let pending = &self.branches[level];
        if !pending.elements.is_empty() && pending.bytes + bytes > PAGE_BYTES {
            self.flush_branch(out, level)?;
        }
        let pending = &mut self.branches[level];
        if pending.elements.is_empty() {
            pending.bytes = PAGE_HEADER_BYTES;
        }
        pending.bytes += bytes;
        pending.elements.push(element);
        Ok(())
    }
}

/// A page of `bytes` with its flags and count set (id and overflow are
/// stamped when it is written).
fn page_with_header(flags: u16, count: usize, bytes: usize) -> Vec<u8> {
    let mut page = vec![0u8; bytes];
    page[8..10].copy_from_slice(&flags.to_le_bytes());
    page[10..12].copy_from_slice(
        &u16::try_from(count)
            .expect("a page holds fewer than 65536 elements")
            .to_le_bytes(),
    );
    page
}

/// Rounds a page's bytes up to whole pages.
fn pad(mut page: Vec<u8>) -> Vec<u8> {
    page.resize(page.len().div_ceil(PAGE_BYTES).max(1) * PAGE_BYTES, 0);
    page
}

/// A leaf page: the elements, then each key and value in element order. Each
/// element's pos is the distance from the element to its key. `padded`:
/// whole pages (an inline page is stored at its exact length).
fn encode_leaf(elements: &[LeafElement], padded: bool) -> Vec<u8> {
    let data: usize = elements.iter().map(|e| e.key.len() + e.value.len()).sum();
    let bytes = PAGE_HEADER_BYTES + elements.len() * LEAF_ELEMENT_BYTES + data;
    let mut page = page_with_header(LEAF_PAGE_FLAG, elements.len(), bytes);
    let mut data_at = PAGE_HEADER_BYTES + elements.len() * LEAF_ELEMENT_BYTES;
    for (index, element) in elements.iter().enumerate() {
        let at = PAGE_HEADER_BYTES + index * LEAF_ELEMENT_BYTES;
        page[at..at + 4].copy_from_slice(&element.flags.to_le_bytes());
        page[at + 4..at + 8].copy_from_slice(&((data_at - at) as u32).to_le_bytes());
        page[at + 8..at + 12].copy_from_slice(&(element.key.len() as u32).to_le_bytes());
        page[at + 12..at + 16].copy_from_slice(&(element.value.len() as u32).to_le_bytes());
        page[data_at..data_at + element.key.len()].copy_from_slice(&element.key);
        data_at += element.key.len();
        page[data_at..data_at + element.value.len()].copy_from_slice(&element.value);
        data_at += element.value.len();
    }
    if padded {
        pad(page)
    } else {
        page
    }
}

/// A branch page: the elements (pos, key size, child), then the keys.
fn encode_branch(elements: &[BranchElement]) -> Vec<u8> {
    let data: usize = elements.iter().map(|e| e.key.len()).sum();
    let bytes = PAGE_HEADER_BYTES + elements.len() * BRANCH_ELEMENT_BYTES + data;
    let mut page = page_with_header(BRANCH_PAGE_FLAG, elements.len(), bytes);
    let mut data_at = PAGE_HEADER_BYTES + elements.len() * BRANCH_ELEMENT_BYTES;
    for (index, element) in elements.iter().enumerate() {
        let at = PAGE_HEADER_BYTES + index * BRANCH_ELEMENT_BYTES;
        page[at..at + 4].copy_from_slice(&((data_at - at) as u32).to_le_bytes());
        page[at + 4..at + 8].copy_from_slice(&(element.key.len() as u32).to_le_bytes());
        page[at + 8..at + 16].copy_from_slice(&element.child.to_le_bytes());
        page[data_at..data_at + element.key.len()].copy_from_slice(&element.key);
        data_at += element.key.len();
    }
    pad(page)
}
