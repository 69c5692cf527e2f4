//! Reading a bbolt file: the newer valid meta page, then each bucket walked
//! depth first in key order. Every number read from the file is checked
//! before it is used (page ids below the meta's page count, pages inside the
//! file, elements inside their page, keys in strictly increasing order, a
//! bounded depth), so a damaged or forged file is an error, never a panic or
//! an endless walk.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::{
    fnv1a64, get_u16, get_u32, get_u64, Meta, BRANCH_ELEMENT_BYTES, BRANCH_PAGE_FLAG, BUCKET_HEADER_BYTES,
    BUCKET_LEAF_FLAG, LEAF_ELEMENT_BYTES, LEAF_PAGE_FLAG, MAGIC, META_BYTES, META_CHECKSUMMED_BYTES, META_PAGE_FLAG,
    NO_FREELIST, PAGE_BYTES, PAGE_HEADER_BYTES, READ_PAGE_BYTES_MAX, READ_PAGE_BYTES_MIN, VERSION,
};

/// Levels a path from a bucket's root passes at most; deeper is a loop of
/// damaged pages (a 4 KiB-page tree holding 2^64 bytes is far shallower).
pub const DEPTH_MAX: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum BboltError {
    #[error("reading the file: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a bbolt file: {0}")]
    NotBbolt(String),
    #[error("damaged bbolt file: page {page}: {reason}")]
    Corrupt { page: u64, reason: String },
}

fn corrupt(page: u64, reason: impl Into<String>) -> BboltError {
    BboltError::Corrupt {
        page,
        reason: reason.into(),
    }
}

/// Where a bucket's tree is: its root page, or inline in its parent's leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BucketRoot {
    Page(u64),
    /// The bucket's leaf page bytes (header and elements), as stored after
    /// the bucket header.
    Inline(Vec<u8>),
}

/// One leaf element as a walk hands it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Element<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    /// The value is a bucket header (a nested bucket).
    pub is_bucket: bool,
}

pub struct Reader {
    file: File,
    /// Bytes of the file that belong to the database (a snapshot's sha256
    /// trailer excluded).
    len: u64,
    meta: Meta,
}

impl Reader {
    /// Opens the database in the first `len` bytes of `file`.
    pub fn open(file: File, len: u64) -> Result<Reader, BboltError> {
        let first = read_meta_page(&file, len, 0, None);
        let page_bytes = first.as_ref().map_or(PAGE_BYTES as u32, |meta| meta.page_bytes);
        let second = read_meta_page(&file, len, 1, Some(page_bytes));
        let meta = match (first, second) {
            (Ok(a), Ok(b)) => {
                if a.txid >= b.txid {
                    a
                } else {
                    b
                }
            }
            (Ok(meta), Err(_)) | (Err(_), Ok(meta)) => meta,
            (Err(first), Err(_)) => return Err(first),
        };
        let file_pages = len / u64::from(meta.page_bytes);
        if meta.page_count > file_pages {
            return Err(BboltError::NotBbolt(format!(
                "its meta page counts {} pages, the file holds {file_pages} (truncated?)",
                meta.page_count
            )));
        }
        Ok(Reader { file, len, meta })
    }

    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// The top-level buckets, in name order.
    pub fn buckets(&self) -> Result<Vec<(Vec<u8>, BucketRoot)>, BboltError> {
        let mut buckets = Vec::new();
        self.for_each(&BucketRoot::Page(self.meta.root), |element| {
            if !element.is_bucket {
                return Err(corrupt(self.meta.root, "a plain value at the top level"));
            }
            buckets.push((element.key.to_vec(), self.bucket_root(element.value)?));
            Ok(())
        })?;
        Ok(buckets)
    }

    /// Where the bucket whose header is `value` keeps its tree.
    pub fn bucket_root(&self, value: &[u8]) -> Result<BucketRoot, BboltError> {
        if value.len() < BUCKET_HEADER_BYTES {
            return Err(corrupt(
                self.meta.root,
                format!("a bucket header of {} bytes", value.len()),
            ));
        }
        match get_u64(value, 0) {
            0 => Ok(BucketRoot::Inline(value[BUCKET_HEADER_BYTES..].to_vec())),
            root => Ok(BucketRoot::Page(root)),
        }
    }

    /// Calls `visit` for every element of the bucket, in key order.
    pub fn for_each<E: From<BboltError>>(
        &self,
        bucket: &BucketRoot,
        mut visit: impl FnMut(Element<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut last_key: Option<Vec<u8>> = None;
        match bucket {
            BucketRoot::Page(root) => self.walk(*root, 0, &mut last_key, &mut visit),
            BucketRoot::Inline(page) => {
                // An inline page's id field is zero and its elements end its bytes.
                let node = Node::parse(page, 0, LEAF_PAGE_FLAG)?;
                visit_leaf(&node, 0, &mut last_key, &mut visit)
            }
        }
    }

    fn walk<E: From<BboltError>>(
        &self,
        id: u64,
        depth: usize,
        last_key: &mut Option<Vec<u8>>,
        visit: &mut impl FnMut(Element<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        if depth == DEPTH_MAX {
            return Err(corrupt(id, format!("a path from a bucket's root runs past {DEPTH_MAX} levels")).into());
        }
        let page = self.page(id)?;
        let flags = get_u16(&page, 8);
        let node = Node::parse(&page, id, flags)?;
        if node.leaf {
            return visit_leaf(&node, id, last_key, visit);
        }
        for index in 0..node.count {
            let (key, child) = node.branch(index);
            // A branch key is its child's first key: nothing before it may follow.
            if last_key.as_deref().is_some_and(|last| last >= key) {
                return Err(corrupt(id, "branch keys out of order").into());
            }
            self.walk(child, depth + 1, last_key, visit)?;
        }
        Ok(())
    }

    /// The page `id` with its overflow pages.
    fn page(&self, id: u64) -> Result<Vec<u8>, BboltError> {
        let page_bytes = u64::from(self.meta.page_bytes);
        if id < 2 || id >= self.meta.page_count {
            return Err(corrupt(id, format!("outside pages 2..{}", self.meta.page_count)));
        }
        let mut header = [0u8; PAGE_HEADER_BYTES];
        self.file.read_exact_at(&mut header, id * page_bytes)?;
        if get_u64(&header, 0) != id {
            return Err(corrupt(id, format!("claims to be page {}", get_u64(&header, 0))));
        }
        let overflow = u64::from(get_u32(&header, 12));
        if id + overflow >= self.meta.page_count {
            return Err(corrupt(
                id,
                format!("{overflow} overflow pages run past the page count"),
            ));
        }
        let bytes = (overflow + 1) * page_bytes;
        debug_assert!(id * page_bytes + bytes <= self.len);
        let mut page = vec![0u8; bytes as usize];
        self.file.read_exact_at(&mut page, id * page_bytes)?;
        Ok(page)
    }
}

fn visit_leaf<E: From<BboltError>>(
    node: &Node<'_>,
    id: u64,
    last_key: &mut Option<Vec<u8>>,
    visit: &mut impl FnMut(Element<'_>) -> Result<(), E>,
) -> Result<(), E> {
    for index in 0..node.count {
        let element = node.leaf(index);
        if last_key.as_deref().is_some_and(|last| last >= element.key) {
            return Err(corrupt(id, "keys out of order").into());
        }
        *last_key = Some(element.key.to_vec());
        visit(element)?;
    }
    Ok(())
}

/// A branch or leaf page whose elements were all checked to lie inside it.
struct Node<'a> {
    page: &'a [u8],
    leaf: bool,
    count: usize,
}

impl<'a> Node<'a> {
    fn parse(page: &'a [u8], id: u64, flags: u16) -> Result<Node<'a>, BboltError> {
        if page.len() < PAGE_HEADER_BYTES {
            return Err(corrupt(id, "an inline page shorter than its header"));
        }
        let leaf = match get_u16(page, 8) {
            LEAF_PAGE_FLAG => true,
            BRANCH_PAGE_FLAG => false,
            other => return Err(corrupt(id, format!("page flags {other:#x}, expected a branch or leaf"))),
        };
        if get_u16(page, 8) != flags {
            return Err(corrupt(
                id,
                format!("page flags {:#x}, expected {flags:#x}", get_u16(page, 8)),
            ));
        }
        let count = get_u16(page, 10) as usize;
        let element_bytes = if leaf { LEAF_ELEMENT_BYTES } else { BRANCH_ELEMENT_BYTES };
        if !leaf && count == 0 {
            return Err(corrupt(id, "a branch page without elements"));
        }
        if PAGE_HEADER_BYTES + count * element_bytes > page.len() {
            return Err(corrupt(id, format!("{count} elements do not fit the page")));
        }
        for index in 0..count {
            let at = PAGE_HEADER_BYTES + index * element_bytes;
            let pos = get_u32(page, at + if leaf { 4 } else { 0 }) as usize;
            let key_len = get_u32(page, at + if leaf { 8 } else { 4 }) as usize;
            let value_len = if leaf { get_u32(page, at + 12) as usize } else { 0 };
            let end = (at + pos)
                .checked_add(key_len)
                .and_then(|end| end.checked_add(value_len));
            if pos < element_bytes || end.is_none_or(|end| end > page.len()) {
                return Err(corrupt(id, format!("element {index} lies outside its page")));
            }
            if leaf && get_u32(page, at) & !BUCKET_LEAF_FLAG != 0 {
                return Err(corrupt(
                    id,
                    format!("element {index} has flags {:#x}", get_u32(page, at)),
                ));
            }
        }
        Ok(Node { page, leaf, count })
    }

    fn branch(&self, index: usize) -> (&'a [u8], u64) {
        let at = PAGE_HEADER_BYTES + index * BRANCH_ELEMENT_BYTES;
        let start = at + get_u32(self.page, at) as usize;
        let key_len = get_u32(self.page, at + 4) as usize;
        (&self.page[start..start + key_len], get_u64(self.page, at + 8))
    }

    fn leaf(&self, index: usize) -> Element<'a> {
        let at = PAGE_HEADER_BYTES + index * LEAF_ELEMENT_BYTES;
        let start = at + get_u32(self.page, at + 4) as usize;
        let key_len = get_u32(self.page, at + 8) as usize;
        let value_len = get_u32(self.page, at + 12) as usize;
        Element {
            key: &self.page[start..start + key_len],
            value: &self.page[start + key_len..start + key_len + value_len],
            is_bucket: get_u32(self.page, at) & BUCKET_LEAF_FLAG != 0,
        }
    }
}

/// The meta page in slot `slot`, checked; `page_bytes` is the page size the
/// first meta gave (slot 1 lies one page in).
fn read_meta_page(file: &File, len: u64, slot: u64, page_bytes: Option<u32>) -> Result<Meta, BboltError> {
    let offset = slot * u64::from(page_bytes.unwrap_or(0));
    let mut bytes = [0u8; PAGE_HEADER_BYTES + META_BYTES];
    if offset + bytes.len() as u64 > len {
        return Err(BboltError::NotBbolt(format!(
            "{len} bytes is too short for meta page {slot}"
        )));
    }
    file.read_exact_at(&mut bytes, offset)?;
    let meta = &bytes[PAGE_HEADER_BYTES..];
    if get_u32(meta, 0) != MAGIC {
        return Err(BboltError::NotBbolt(format!("meta page {slot} has no bbolt magic")));
    }
    if get_u16(&bytes, 8) != META_PAGE_FLAG {
        return Err(corrupt(slot, "a meta page without the meta flag"));
    }
    if get_u32(meta, 4) != VERSION {
        return Err(BboltError::NotBbolt(format!(
            "data file version {}, not {VERSION}",
            get_u32(meta, 4)
        )));
    }
    if fnv1a64(&meta[..META_CHECKSUMMED_BYTES]) != get_u64(meta, META_CHECKSUMMED_BYTES) {
        return Err(corrupt(slot, "meta checksum mismatch"));
    }
    let page_bytes_read = get_u32(meta, 8);
    if !page_bytes_read.is_power_of_two() || !(READ_PAGE_BYTES_MIN..=READ_PAGE_BYTES_MAX).contains(&page_bytes_read) {
        return Err(corrupt(slot, format!("page size {page_bytes_read}")));
    }
    let parsed = Meta {
        page_bytes: page_bytes_read,
        root: get_u64(meta, 16),
        freelist: get_u64(meta, 32),
        page_count: get_u64(meta, 40),
        txid: get_u64(meta, 48),
    };
    let root_ok = (2..parsed.page_count).contains(&parsed.root);
    let freelist_ok = parsed.freelist == NO_FREELIST || (2..parsed.page_count).contains(&parsed.freelist);
    if !root_ok || !freelist_ok || page_bytes.is_some_and(|first| first != page_bytes_read) {
        return Err(corrupt(slot, format!("meta {parsed:?} does not fit together")));
    }
    Ok(parsed)
}
