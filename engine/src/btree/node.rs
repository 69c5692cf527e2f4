//! B-tree nodes: owned (being modified in the open transaction) and as views over
//! committed page bytes (read without decoding). Layouts, after the page header
//! (little endian), as in docs/page-format.md:
//!
//! ```text
//! 24            u16 offset of entry i, for i in 0..count (entries in key order)
//! 24 + 2*count  entries, packed
//!
//! leaf entry:   u16 key length, u8 value kind (0 inline, 1 overflow,
//!               2 parted), u32 value length, key, then the value (inline),
//!               u64 first overflow page (overflow), or u64 first overflow
//!               page, u16 front bytes, u16 end bytes, the value's first
//!               `front` and last `end - front` bytes (parted: the chain holds
//!               the bytes between)
//! branch entry: u16 key length, u64 child page, key
//! ```
//! A branch's entry i leads to the keys >= its key (and < entry i+1's key); the
//! key of entry 0 is always empty (it bounds nothing from below).

use crate::page::{get_u16, get_u32, get_u64, new_page, PageId, PageKind, BODY_BYTES, HEADER_BYTES, PAGE_BYTES};

/// Keys are short in this engine (MVCC revision keys and meta names); the limit
/// keeps any node splittable in two that fit a page.
pub const KEY_BYTES_MAX: usize = 512;
/// Bytes of entries (offset slots included) a node page holds.
pub const NODE_BYTES_MAX: usize = BODY_BYTES;
/// A value is stored in its leaf when key and value together are at most this;
/// larger values go to a chain of overflow pages. Two largest entries fill a
/// page: values of a kilobyte or two share leaves instead of taking an
/// overflow page each.
pub const INLINE_ENTRY_BYTES_MAX: usize = NODE_BYTES_MAX / 2 - SLOT_BYTES - LEAF_ENTRY_HEADER;

const SLOT_BYTES: usize = 2;
/// A leaf entry's header: key length (u16), value kind, value length (u32).
const LEAF_ENTRY_HEADER: usize = 7;
/// A compact leaf entry's header, for an inline value under a key of at most
/// 15 bytes: the value length's low eight bits, then `COMPACT_MARK`, the key
/// length in the next four bits and the value length's top three. The second
/// byte of a full header is the top byte of a key length of at most 512 (0 to
/// 2), so the mark tells them apart.
const COMPACT_ENTRY_HEADER: usize = 2;
const COMPACT_MARK: u8 = 0x80;
/// Key lengths a compact header holds: below 2^4.
const COMPACT_KEY_BYTES_LIMIT: usize = 1 << 4;
/// Value lengths a compact header holds: below 2^11.
const COMPACT_VALUE_BYTES_LIMIT: usize = 1 << 11;
const BRANCH_ENTRY_HEADER: usize = 10;
const VALUE_INLINE: u8 = 0;
const VALUE_OVERFLOW: u8 = 1;
const VALUE_PARTED: u8 = 2;
/// A parted value's fields before its ends: first page, front and end lengths.
const PARTED_HEADER: usize = 12;

// An overfull node (a full page plus one largest entry) must split into two
// that each fit a page: a leaf's entries take at most half a page (see
// `split_off_upper`), a branch's at most a third, so that each half of a split
// branch keeps at least three children (the depth bound, `DEPTH_MAX`).
const _: () = assert!(2 * (SLOT_BYTES + LEAF_ENTRY_HEADER + INLINE_ENTRY_BYTES_MAX) <= NODE_BYTES_MAX);
const _: () = assert!(2 * (SLOT_BYTES + LEAF_ENTRY_HEADER + KEY_BYTES_MAX + 8) <= NODE_BYTES_MAX);
const _: () = assert!(3 * (SLOT_BYTES + BRANCH_ENTRY_HEADER + KEY_BYTES_MAX) <= NODE_BYTES_MAX);
// Every inline value the tree writes fits a compact header.
const _: () = assert!(INLINE_ENTRY_BYTES_MAX < COMPACT_VALUE_BYTES_LIMIT);

/// A leaf's value: inline bytes, or `len` bytes of which the overflow chain
/// from `head` holds all but `ends`: the value is `ends[..front]`, then the
/// chain's bytes, then `ends[front..]` (no ends: the chain holds it all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Inline(Box<[u8]>),
    Overflow {
        head: PageId,
        len: u32,
        ends: Box<[u8]>,
        front: u16,
    },
}

impl Value {
    pub fn as_ref(&self) -> ValueRef<'_> {
        match self {
            Value::Inline(bytes) => ValueRef::Inline(bytes),
            Value::Overflow { head, len, ends, front } => ValueRef::Overflow {
                head: *head,
                len: *len,
                ends,
                front: *front,
            },
        }
    }
}

/// A value as read from a node, borrowing inline bytes and ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueRef<'a> {
    Inline(&'a [u8]),
    Overflow {
        head: PageId,
        len: u32,
        ends: &'a [u8],
        front: u16,
    },
}

impl ValueRef<'_> {
    fn stored_bytes(&self) -> usize {
        match self {
            ValueRef::Inline(bytes) => bytes.len(),
            ValueRef::Overflow { ends, .. } => overflow_stored_bytes(ends.len()),
        }
    }

    pub fn to_value(self) -> Value {
        match self {
            ValueRef::Inline(bytes) => Value::Inline(bytes.into()),
            ValueRef::Overflow { head, len, ends, front } => Value::Overflow {
                head,
                len,
                ends: ends.into(),
                front,
            },
        }
    }
}

/// Bytes after the key of an overflow value with `ends` bytes kept in the leaf.
fn overflow_stored_bytes(ends: usize) -> usize {
    if ends == 0 {
        8
    } else {
        PARTED_HEADER + ends
    }
}

fn leaf_entry_bytes(key: &[u8], value: &Value) -> usize {
    entry_bytes(key, value.as_ref())
}

fn entry_bytes(key: &[u8], value: ValueRef<'_>) -> usize {
    SLOT_BYTES + leaf_entry_header(key, value) + key.len() + value.stored_bytes()
}

/// The header a leaf entry is written with: compact for an inline value under
/// a short key (revision and lease entries), full otherwise (an inline value
/// too long for it is only ever read from a damaged or forged page, and is
/// written back as read).
fn leaf_entry_header(key: &[u8], value: ValueRef<'_>) -> usize {
    match value {
        ValueRef::Inline(bytes) if key.len() < COMPACT_KEY_BYTES_LIMIT && bytes.len() < COMPACT_VALUE_BYTES_LIMIT => {
            COMPACT_ENTRY_HEADER
        }
        _ => LEAF_ENTRY_HEADER,
    }
}

/// A leaf entry's header as read from its page.
struct EntryHeader {
    bytes: usize,
    key_len: usize,
    kind: u8,
    /// The value's length (inline) or whole length (overflow, parted).
    value_len: u32,
}

/// Reads the header of the leaf entry at `at`; None if it runs past the page.
fn read_entry_header(page: &[u8], at: usize) -> Option<EntryHeader> {
    let second = *page.get(at + 1)?;
    if second & COMPACT_MARK != 0 {
        Some(EntryHeader {
            bytes: COMPACT_ENTRY_HEADER,
            key_len: usize::from(second >> 3 & 0x0f),
            kind: VALUE_INLINE,
            value_len: u32::from(second & 0x07) << 8 | u32::from(page[at]),
        })
    } else if at + LEAF_ENTRY_HEADER <= page.len() {
        Some(EntryHeader {
            bytes: LEAF_ENTRY_HEADER,
            key_len: get_u16(page, at) as usize,
            kind: page[at + 2],
            value_len: get_u32(page, at + 3),
        })
    } else {
        None
    }
}

fn branch_entry_bytes(key: &[u8]) -> usize {
    SLOT_BYTES + BRANCH_ENTRY_HEADER + key.len()
}

/// A node owned by the open transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Leaf(Vec<(Box<[u8]>, Value)>),
    Branch(Vec<(Box<[u8]>, PageId)>),
}

impl Node {
    pub fn len(&self) -> usize {
        match self {
            Node::Leaf(entries) => entries.len(),
            Node::Branch(entries) => entries.len(),
        }
    }

    /// Bytes the entries take in a page (offset slots included).
    pub fn bytes(&self) -> usize {
        match self {
            Node::Leaf(entries) => entries.iter().map(|(k, v)| leaf_entry_bytes(k, v)).sum(),
            Node::Branch(entries) => entries.iter().map(|(k, _)| branch_entry_bytes(k)).sum(),
        }
    }

    /// Moves the upper part of the entries into a new node so that both halves
    /// hold about the same bytes and fit a page; both keep at least one entry.
    ///
    /// The halves split at the middle byte fit when no entry takes more than
    /// a third of a page (branches). Leaf entries take up to half a page, and
    /// then the upper half can be too large: the split moves up until it fits.
    /// It does before the lower half stops fitting: the lower half past which
    /// the next entry would not fit holds more than a page less one entry, so
    /// what is above it, of a node of at most a page plus one entry, is less
    /// than two entries: at most a page.
    pub fn split_off_upper(&mut self) -> Node {
        let total = self.bytes();
        let sizes: Vec<usize> = match self {
            Node::Leaf(entries) => entries.iter().map(|(k, v)| leaf_entry_bytes(k, v)).collect(),
            Node::Branch(entries) => entries.iter().map(|(k, _)| branch_entry_bytes(k)).collect(),
        };
        assert!(sizes.len() >= 2, "only a node with two entries or more splits");
        let mut lower = 0;
        let mut at = 0;
        while at < sizes.len() - 1 && (at == 0 || lower + sizes[at] <= total / 2) {
            lower += sizes[at];
            at += 1;
        }
        while total - lower > NODE_BYTES_MAX && at < sizes.len() - 1 {
            lower += sizes[at];
            at += 1;
        }
        let upper = match self {
            Node::Leaf(entries) => Node::Leaf(entries.split_off(at)),
            Node::Branch(entries) => Node::Branch(entries.split_off(at)),
        };
        assert!(self.len() >= 1 && upper.len() >= 1);
        assert!(
            self.bytes() <= NODE_BYTES_MAX && upper.bytes() <= NODE_BYTES_MAX,
            "both halves of a split fit a page"
        );
        upper
    }

    /// Moves the last entry alone into a new node: for a leaf that grew past a
    /// page by a last entry, the rest is what it held before, which fit.
    pub fn split_off_last(&mut self) -> Node {
        let Node::Leaf(entries) = self else {
            panic!("only leaves split off their last entry");
        };
        assert!(entries.len() >= 2, "only a node with two entries or more splits");
        let upper = Node::Leaf(entries.split_off(entries.len() - 1));
        assert!(self.bytes() <= NODE_BYTES_MAX, "the entries before the last fit a page");
        upper
    }

    /// Takes a leaf's first entries, as many as fit in `bytes_max` bytes,
    /// leaving at least one.
    pub fn take_front(&mut self, bytes_max: usize) -> Vec<(Box<[u8]>, Value)> {
        let Node::Leaf(entries) = self else {
            panic!("only leaves give up their first entries");
        };
        let mut bytes = 0;
        let mut count = 0;
        while count + 1 < entries.len() {
            let (key, value) = &entries[count];
            bytes += leaf_entry_bytes(key, value);
            if bytes > bytes_max {
                break;
            }
            count += 1;
        }
        entries.drain(..count).collect()
    }

    /// The separator for this node as the new upper half of a split: a leaf's
    /// first key (copied: the leaf keeps it), or a branch's first key (moved
    /// out: a branch's first key is always empty, it bounds nothing).
    pub fn take_separator(&mut self) -> Box<[u8]> {
        match self {
            Node::Leaf(entries) => entries[0].0.clone(),
            Node::Branch(entries) => std::mem::take(&mut entries[0].0),
        }
    }

    /// Bytes this node would take after `absorb(right, separator)`.
    pub fn merged_bytes(&self, right: &Node, separator: &[u8]) -> usize {
        match right {
            Node::Leaf(_) => self.bytes() + right.bytes(),
            Node::Branch(_) => self.bytes() + right.bytes() + separator.len(),
        }
    }

    /// Appends `right`'s entries (the right sibling) to this node. For branches
    /// `separator` becomes the key of `right`'s first entry, which was empty (a
    /// branch's first key bounds nothing) but is a bound here.
    pub fn absorb(&mut self, right: Node, separator: &[u8]) {
        match (self, right) {
            (Node::Leaf(left), Node::Leaf(right)) => left.extend(right),
            (Node::Branch(left), Node::Branch(mut right)) => {
                assert!(right[0].0.is_empty(), "a branch's first key is empty");
                right[0].0 = separator.into();
                left.extend(right);
            }
            _ => panic!("siblings are at the same level"),
        }
    }

    /// The page image of this node as page `id` (checksum and txid come at seal).
    pub fn encode(&self, id: PageId) -> Box<[u8]> {
        assert!(
            self.bytes() <= NODE_BYTES_MAX,
            "node of {} bytes does not fit a page",
            self.bytes()
        );
        let count = self.len();
        let (kind, mut page) = match self {
            Node::Leaf(_) => (PageKind::Leaf, new_page(PageKind::Leaf, count as u16, id)),
            Node::Branch(_) => (PageKind::Branch, new_page(PageKind::Branch, count as u16, id)),
        };
        let mut at = HEADER_BYTES + SLOT_BYTES * count;
        for index in 0..count {
            let slot = HEADER_BYTES + SLOT_BYTES * index;
            page[slot..slot + 2].copy_from_slice(&(at as u16).to_le_bytes());
            match self {
                Node::Leaf(entries) => {
                    let (key, value) = &entries[index];
                    at = put_leaf_entry(&mut page, at, key, value);
                }
                Node::Branch(entries) => {
                    let (key, child) = &entries[index];
                    page[at..at + 2].copy_from_slice(&(key.len() as u16).to_le_bytes());
                    page[at + 2..at + 10].copy_from_slice(&child.to_le_bytes());
                    page[at + 10..at + 10 + key.len()].copy_from_slice(key);
                    at += BRANCH_ENTRY_HEADER + key.len();
                }
            }
        }
        assert_eq!(
            at,
            HEADER_BYTES + self.bytes(),
            "{kind:?} node encoded to its computed size"
        );
        page
    }
}

fn put_leaf_entry(page: &mut [u8], at: usize, key: &[u8], value: &Value) -> usize {
    let key_start = at + leaf_entry_header(key, value.as_ref());
    page[key_start..key_start + key.len()].copy_from_slice(key);
    let value_start = key_start + key.len();
    if key_start - at == COMPACT_ENTRY_HEADER {
        let Value::Inline(bytes) = value else {
            unreachable!("only inline values have compact headers")
        };
        page[at] = bytes.len() as u8;
        page[at + 1] = COMPACT_MARK | (key.len() << 3) as u8 | (bytes.len() >> 8) as u8;
        page[value_start..value_start + bytes.len()].copy_from_slice(bytes);
        return value_start + bytes.len();
    }
    page[at..at + 2].copy_from_slice(&(key.len() as u16).to_le_bytes());
    match value {
        Value::Inline(bytes) => {
            page[at + 2] = VALUE_INLINE;
            page[at + 3..at + 7].copy_from_slice(&(bytes.len() as u32).to_le_bytes());
            page[value_start..value_start + bytes.len()].copy_from_slice(bytes);
            value_start + bytes.len()
        }
        Value::Overflow { head, len, ends, .. } if ends.is_empty() => {
            page[at + 2] = VALUE_OVERFLOW;
            page[at + 3..at + 7].copy_from_slice(&len.to_le_bytes());
            page[value_start..value_start + 8].copy_from_slice(&head.to_le_bytes());
            value_start + 8
        }
        Value::Overflow { head, len, ends, front } => {
            page[at + 2] = VALUE_PARTED;
            page[at + 3..at + 7].copy_from_slice(&len.to_le_bytes());
            page[value_start..value_start + 8].copy_from_slice(&head.to_le_bytes());
            page[value_start + 8..value_start + 10].copy_from_slice(&front.to_le_bytes());
            page[value_start + 10..value_start + 12].copy_from_slice(&(ends.len() as u16).to_le_bytes());
            let ends_start = value_start + PARTED_HEADER;
            page[ends_start..ends_start + ends.len()].copy_from_slice(ends);
            ends_start + ends.len()
        }
    }
}

/// A node to read: a committed page or an owned node.
#[derive(Clone, Copy)]
pub enum NodeRef<'a> {
    Page(PageView<'a>),
    Owned(&'a Node),
}

impl<'a> NodeRef<'a> {
    pub fn is_leaf(&self) -> bool {
        match self {
            NodeRef::Page(view) => view.leaf,
            NodeRef::Owned(node) => matches!(node, Node::Leaf(_)),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            NodeRef::Page(view) => view.count,
            NodeRef::Owned(node) => node.len(),
        }
    }

    /// Bytes the entries take in a page (offset slots included).
    pub fn bytes(&self) -> usize {
        match self {
            NodeRef::Page(view) => view.bytes(),
            NodeRef::Owned(node) => node.bytes(),
        }
    }

    /// Bytes leaf entry `index` takes in a page (its offset slot included).
    /// (As it is written again: a page written before compact headers may
    /// hold it in more.)
    pub fn leaf_entry_bytes(&self, index: usize) -> usize {
        entry_bytes(self.key(index), self.value(index))
    }

    pub fn key(&self, index: usize) -> &'a [u8] {
        match *self {
            NodeRef::Page(view) => view.key(index),
            NodeRef::Owned(Node::Leaf(entries)) => &entries[index].0,
            NodeRef::Owned(Node::Branch(entries)) => &entries[index].0,
        }
    }

    pub fn child(&self, index: usize) -> PageId {
        match *self {
            NodeRef::Page(view) => view.child(index),
            NodeRef::Owned(Node::Branch(entries)) => entries[index].1,
            NodeRef::Owned(Node::Leaf(_)) => panic!("a leaf has no children"),
        }
    }

    pub fn value(&self, index: usize) -> ValueRef<'a> {
        match *self {
            NodeRef::Page(view) => view.value(index),
            NodeRef::Owned(Node::Leaf(entries)) => entries[index].1.as_ref(),
            NodeRef::Owned(Node::Branch(_)) => panic!("a branch has no values"),
        }
    }

    /// Leaf: `Ok(index)` of `key`, or `Err(index)` where it would go.
    pub fn search(&self, key: &[u8]) -> Result<usize, usize> {
        let (mut low, mut high) = (0, self.len());
        while low < high {
            let mid = (low + high) / 2;
            match self.key(mid).cmp(key) {
                std::cmp::Ordering::Less => low = mid + 1,
                std::cmp::Ordering::Greater => high = mid,
                std::cmp::Ordering::Equal => return Ok(mid),
            }
        }
        Err(low)
    }

    /// Branch: the entry whose subtree holds `key`.
    pub fn child_index(&self, key: &[u8]) -> usize {
        // Entries 1.. with key <= `key`; entry 0 takes everything below entry 1.
        let (mut low, mut high) = (1, self.len());
        while low < high {
            let mid = (low + high) / 2;
            if self.key(mid) <= key {
                low = mid + 1;
            } else {
                high = mid;
            }
        }
        low - 1
    }

    /// An owned copy, for copy-on-write.
    pub fn to_node(self) -> Node {
        match self {
            NodeRef::Owned(node) => node.clone(),
            NodeRef::Page(view) if view.leaf => Node::Leaf(
                (0..view.count)
                    .map(|i| (view.key(i).into(), view.value(i).to_value()))
                    .collect(),
            ),
            NodeRef::Page(view) => Node::Branch((0..view.count).map(|i| (view.key(i).into(), view.child(i))).collect()),
        }
    }
}

/// Why a checksummed node page's layout cannot be read: damage behind a
/// valid checksum, or a forged page.
#[derive(Debug, thiserror::Error)]
pub enum NodeLayoutError {
    #[error("expected a node page, found {kind:?}")]
    NotNode { kind: PageKind },
    #[error("node page with {count} entries")]
    EntryCount { count: usize },
    #[error("entry {index} at offset {at}, expected {expected}")]
    EntryOffset { index: usize, at: usize, expected: usize },
    #[error("entry {index} has value kind {kind}")]
    ValueKind { index: usize, kind: u8 },
    #[error("entry {index} runs past the page")]
    PastPage { index: usize },
    #[error("entry {index} keeps {ends} of its {len} bytes in the leaf, {front} of them in front")]
    Ends {
        index: usize,
        len: u32,
        ends: usize,
        front: usize,
    },
}

/// A committed node page, read in place. Built by [`PageView::new`], which
/// checks that every entry lies inside the page, or for a page that passed it
/// before and has not changed since, by [`PageView::checked_before`].
#[derive(Clone, Copy)]
pub struct PageView<'a> {
    page: &'a [u8],
    count: usize,
    leaf: bool,
}

impl<'a> PageView<'a> {
    /// Checks the layout of a checksummed node page; Err says what is wrong.
    pub fn new(page: &'a [u8], kind: PageKind, count: u16) -> Result<PageView<'a>, NodeLayoutError> {
        assert_eq!(page.len(), PAGE_BYTES);
        let leaf = match kind {
            PageKind::Leaf => true,
            PageKind::Branch => false,
            kind => return Err(NodeLayoutError::NotNode { kind }),
        };
        let count = count as usize;
        if count == 0 || HEADER_BYTES + SLOT_BYTES * count > PAGE_BYTES {
            return Err(NodeLayoutError::EntryCount { count });
        }
        let mut expected = HEADER_BYTES + SLOT_BYTES * count;
        for index in 0..count {
            let at = get_u16(page, HEADER_BYTES + SLOT_BYTES * index) as usize;
            let misplaced = NodeLayoutError::EntryOffset { index, at, expected };
            if at != expected {
                return Err(misplaced);
            }
            expected = if leaf {
                let header = read_entry_header(page, at).ok_or(misplaced)?;
                let key_len = header.key_len;
                let stored = match header.kind {
                    VALUE_INLINE => header.value_len as usize,
                    VALUE_OVERFLOW => 8,
                    VALUE_PARTED => {
                        let start = at + header.bytes + key_len;
                        if start + PARTED_HEADER > PAGE_BYTES {
                            return Err(NodeLayoutError::PastPage { index });
                        }
                        let len = header.value_len;
                        let front = get_u16(page, start + 8) as usize;
                        let ends = get_u16(page, start + 10) as usize;
                        // The chain holds at least one byte: a value with
                        // nothing between its ends is stored inline.
                        if front > ends || ends >= len as usize {
                            return Err(NodeLayoutError::Ends {
                                index,
                                len,
                                ends,
                                front,
                            });
                        }
                        PARTED_HEADER + ends
                    }
                    kind => return Err(NodeLayoutError::ValueKind { index, kind }),
                };
                at + header.bytes + key_len + stored
            } else {
                if at + BRANCH_ENTRY_HEADER > PAGE_BYTES {
                    return Err(misplaced);
                }
                at + BRANCH_ENTRY_HEADER + get_u16(page, at) as usize
            };
            if expected > PAGE_BYTES {
                return Err(NodeLayoutError::PastPage { index });
            }
        }
        Ok(PageView { page, count, leaf })
    }

    /// A node page whose layout `new` accepted on an earlier read, unchanged
    /// since (the page store verifies its checksum again once it is rewritten).
    pub fn checked_before(page: &'a [u8], kind: PageKind, count: u16) -> PageView<'a> {
        assert_eq!(page.len(), PAGE_BYTES);
        let leaf = match kind {
            PageKind::Leaf => true,
            PageKind::Branch => false,
            other => panic!("a checked node page became {other:?}"),
        };
        let count = count as usize;
        assert!(count >= 1 && HEADER_BYTES + SLOT_BYTES * count <= PAGE_BYTES);
        PageView { page, count, leaf }
    }

    /// Where the entries end, less the header: the packed entries run from the
    /// slot array to the end of the last one.
    fn bytes(&self) -> usize {
        let last = self.count - 1;
        let at = self.entry(last);
        let end = if self.leaf {
            let header = self.header(at);
            at + header.bytes + header.key_len + self.value(last).stored_bytes()
        } else {
            at + BRANCH_ENTRY_HEADER + self.key(last).len()
        };
        end - HEADER_BYTES
    }

    fn entry(&self, index: usize) -> usize {
        assert!(index < self.count);
        get_u16(self.page, HEADER_BYTES + SLOT_BYTES * index) as usize
    }

    /// The header of the leaf entry at `at`, which `new` checked.
    fn header(&self, at: usize) -> EntryHeader {
        read_entry_header(self.page, at).expect("a checked leaf entry's header is in its page")
    }

    fn key(&self, index: usize) -> &'a [u8] {
        let at = self.entry(index);
        let (start, len) = if self.leaf {
            let header = self.header(at);
            (at + header.bytes, header.key_len)
        } else {
            (at + BRANCH_ENTRY_HEADER, get_u16(self.page, at) as usize)
        };
        &self.page[start..start + len]
    }

    fn child(&self, index: usize) -> PageId {
        assert!(!self.leaf, "a leaf has no children");
        get_u64(self.page, self.entry(index) + 2)
    }

    fn value(&self, index: usize) -> ValueRef<'a> {
        assert!(self.leaf, "a branch has no values");
        let at = self.entry(index);
        let header = self.header(at);
        let start = at + header.bytes + header.key_len;
        let len = header.value_len;
        match header.kind {
            VALUE_INLINE => ValueRef::Inline(&self.page[start..start + len as usize]),
            VALUE_OVERFLOW => ValueRef::Overflow {
                head: get_u64(self.page, start),
                len,
                ends: &[],
                front: 0,
            },
            _ => {
                let ends = get_u16(self.page, start + 10) as usize;
                ValueRef::Overflow {
                    head: get_u64(self.page, start),
                    len,
                    ends: &self.page[start + PARTED_HEADER..start + PARTED_HEADER + ends],
                    front: get_u16(self.page, start + 8),
                }
            }
        }
    }
}

/// Whether a value of `value_len` bytes under `key` is stored in the leaf.
pub fn fits_inline(key: &[u8], value_len: usize) -> bool {
    key.len() + value_len <= INLINE_ENTRY_BYTES_MAX
}

/// The most bytes of a larger value under `key` its leaf keeps as ends: a
/// parted entry is bounded as an inline one is, so splits still fit.
pub fn ends_bytes_max(key: &[u8]) -> usize {
    INLINE_ENTRY_BYTES_MAX.saturating_sub(key.len() + PARTED_HEADER)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page::PAGE_BYTES;

    fn leaf(entries: &[(&str, &str)]) -> Node {
        Node::Leaf(
            entries
                .iter()
                .map(|(k, v)| (k.as_bytes().into(), Value::Inline(v.as_bytes().into())))
                .collect(),
        )
    }

    fn view(page: &[u8], node: &Node) -> NodeRef<'static> {
        let page: &'static [u8] = Box::leak(page.to_vec().into_boxed_slice());
        let kind = if matches!(node, Node::Leaf(_)) {
            PageKind::Leaf
        } else {
            PageKind::Branch
        };
        NodeRef::Page(PageView::new(page, kind, node.len() as u16).unwrap())
    }

    #[test]
    fn leaves_round_trip_through_their_page() {
        let mut node = leaf(&[("a", "1"), ("b", ""), ("c", "three")]);
        if let Node::Leaf(entries) = &mut node {
            entries.push((
                "d".as_bytes().into(),
                Value::Overflow {
                    head: 99,
                    len: 5000,
                    ends: Box::default(),
                    front: 0,
                },
            ));
            entries.push((
                "e".as_bytes().into(),
                Value::Overflow {
                    head: 98,
                    len: 4200,
                    ends: b"frontback".as_slice().into(),
                    front: 5,
                },
            ));
        }
        let page = node.encode(7);
        assert_eq!(page.len(), PAGE_BYTES);
        let read = view(&page, &node);
        assert_eq!(read.to_node(), node);
        assert_eq!(read.search(b"b"), Ok(1));
        assert_eq!(read.search(b"bb"), Err(2));
        assert_eq!(
            read.value(3),
            ValueRef::Overflow {
                head: 99,
                len: 5000,
                ends: &[],
                front: 0
            }
        );
        assert_eq!(
            read.value(4),
            ValueRef::Overflow {
                head: 98,
                len: 4200,
                ends: b"frontback",
                front: 5
            }
        );
    }

    #[test]
    fn inline_values_under_short_keys_take_a_two_byte_header() {
        let key_15 = "k".repeat(15);
        let key_16 = "k".repeat(16);
        let value = "v".repeat(INLINE_ENTRY_BYTES_MAX - 16);
        let node = leaf(&[("a", "1"), (&key_15, &value), (&key_16, "2")]);
        let page = node.encode(7);
        let at = HEADER_BYTES + 3 * SLOT_BYTES;
        assert_eq!(&page[at..at + 4], &[1, COMPACT_MARK | 1 << 3, b'a', b'1']);
        let at = at + 4;
        let len = value.len();
        assert_eq!(
            &page[at..at + 3],
            &[len as u8, COMPACT_MARK | 15 << 3 | (len >> 8) as u8, b'k']
        );
        // A key of 16 bytes or more keeps the full header.
        let at = at + COMPACT_ENTRY_HEADER + 15 + len;
        assert_eq!(&page[at..at + 7], &[16, 0, VALUE_INLINE, 1, 0, 0, 0]);
        assert_eq!(node.bytes(), 3 * SLOT_BYTES + 4 + 2 + 15 + len + 7 + 16 + 1);
        assert_eq!(view(&page, &node).to_node(), node);
    }

    /// A leaf as files from before compact headers hold it: every entry with
    /// the full seven-byte header.
    fn leaf_page_with_full_headers(entries: &[(&str, &str)]) -> Box<[u8]> {
        let mut page = new_page(PageKind::Leaf, entries.len() as u16, 5);
        let mut at = HEADER_BYTES + SLOT_BYTES * entries.len();
        for (index, (key, value)) in entries.iter().enumerate() {
            let slot = HEADER_BYTES + SLOT_BYTES * index;
            page[slot..slot + 2].copy_from_slice(&(at as u16).to_le_bytes());
            page[at..at + 2].copy_from_slice(&(key.len() as u16).to_le_bytes());
            page[at + 2] = VALUE_INLINE;
            page[at + 3..at + 7].copy_from_slice(&(value.len() as u32).to_le_bytes());
            at += LEAF_ENTRY_HEADER;
            page[at..at + key.len()].copy_from_slice(key.as_bytes());
            at += key.len();
            page[at..at + value.len()].copy_from_slice(value.as_bytes());
            at += value.len();
        }
        page
    }

    #[test]
    fn leaves_written_with_full_headers_read_and_are_written_again_compact() {
        let entries = [("a", "1"), ("bb", ""), ("c", "three")];
        let page = leaf_page_with_full_headers(&entries);
        let read = NodeRef::Page(PageView::new(&page, PageKind::Leaf, 3).unwrap());
        let node = leaf(&entries);
        assert_eq!(read.to_node(), node);
        assert_eq!(read.bytes(), 3 * (SLOT_BYTES + LEAF_ENTRY_HEADER) + 4 + 6);
        assert_eq!(read.leaf_entry_bytes(2), SLOT_BYTES + COMPACT_ENTRY_HEADER + 6);
        assert_eq!(node.bytes(), 3 * (SLOT_BYTES + COMPACT_ENTRY_HEADER) + 4 + 6);
        assert_eq!(read.search(b"bb"), Ok(1));
    }

    #[test]
    fn a_compact_entry_past_its_page_is_refused() {
        let first = "v".repeat(INLINE_ENTRY_BYTES_MAX - 1);
        let node = leaf(&[("a", &first), ("b", "2")]);
        let mut page = node.encode(1);
        assert!(PageView::new(&page, PageKind::Leaf, 2).is_ok());
        let second = HEADER_BYTES + 2 * SLOT_BYTES + COMPACT_ENTRY_HEADER + 1 + first.len();
        // The longest value a compact header can give, from past the middle.
        page[second] = 0xff;
        page[second + 1] |= 7;
        assert!(matches!(
            PageView::new(&page, PageKind::Leaf, 2),
            Err(NodeLayoutError::PastPage { index: 1 })
        ));
    }

    #[test]
    fn branches_route_keys_to_the_child_whose_bound_is_below() {
        let node = Node::Branch(vec![
            (b"".as_slice().into(), 10),
            (b"m".as_slice().into(), 11),
            (b"t".as_slice().into(), 12),
        ]);
        let page = node.encode(3);
        for read in [view(&page, &node), NodeRef::Owned(&node)] {
            assert_eq!(read.child(read.child_index(b"a")), 10);
            assert_eq!(read.child(read.child_index(b"m")), 11);
            assert_eq!(read.child(read.child_index(b"s")), 11);
            assert_eq!(read.child(read.child_index(b"zzz")), 12);
        }
    }

    #[test]
    fn an_overfull_node_splits_into_two_that_fit() {
        let value = "v".repeat(1000);
        let entries: Vec<(String, String)> = (0..5).map(|i| (format!("k{i}"), value.clone())).collect();
        let mut node = leaf(
            &entries
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect::<Vec<_>>(),
        );
        assert!(node.bytes() > NODE_BYTES_MAX);
        let mut upper = node.split_off_upper();
        assert!(node.bytes() <= NODE_BYTES_MAX && upper.bytes() <= NODE_BYTES_MAX);
        assert_eq!(node.len() + upper.len(), 5);
        let Node::Leaf(lower_entries) = &node else {
            unreachable!()
        };
        let separator = upper.take_separator();
        assert!(lower_entries.last().unwrap().0 < separator);
        let Node::Leaf(upper_entries) = &upper else {
            unreachable!()
        };
        assert_eq!(upper_entries[0].0, separator, "a leaf keeps its first key");
    }

    proptest::proptest! {
        /// A leaf of at most a page that takes one more entry, each entry
        /// of any size up to the largest, splits into two that fit.
        #[test]
        fn a_leaf_one_entry_past_a_page_splits_into_two_that_fit(
            sizes in proptest::collection::vec(0..=INLINE_ENTRY_BYTES_MAX - 4, 2..40),
            extra in 0..=INLINE_ENTRY_BYTES_MAX - 4,
            at in proptest::prelude::any::<proptest::sample::Index>(),
        ) {
            let entry = |i: usize, len: usize| -> (Box<[u8]>, Value) {
                ((i as u32).to_be_bytes().into(), Value::Inline(vec![0; len].into()))
            };
            let mut entries: Vec<(Box<[u8]>, Value)> = Vec::new();
            for (i, &len) in sizes.iter().enumerate() {
                if Node::Leaf(entries.clone()).bytes() + leaf_entry_bytes(&entry(i, len).0, &entry(i, len).1) > NODE_BYTES_MAX {
                    break;
                }
                entries.push(entry(i, len));
            }
            let position = at.index(entries.len() + 1);
            entries.insert(position, entry(1000, extra));
            let mut node = Node::Leaf(entries);
            proptest::prop_assume!(node.bytes() > NODE_BYTES_MAX);
            let upper = node.split_off_upper();
            proptest::prop_assert!(node.bytes() <= NODE_BYTES_MAX && upper.bytes() <= NODE_BYTES_MAX);
        }
    }

    #[test]
    fn a_branch_split_moves_its_first_key_out_as_the_separator() {
        let key = |i: usize| format!("key{i:04}").repeat(40).into_bytes().into_boxed_slice();
        let mut entries: Vec<(Box<[u8]>, PageId)> = (0..20).map(|i| (key(i), i as u64 + 10)).collect();
        entries[0].0 = Box::default();
        let mut node = Node::Branch(entries);
        assert!(node.bytes() > NODE_BYTES_MAX);
        let mut upper = node.split_off_upper();
        let separator = upper.take_separator();
        let Node::Branch(upper_entries) = &upper else {
            unreachable!()
        };
        assert!(upper_entries[0].0.is_empty(), "a branch's first key is empty");
        assert!(!separator.is_empty());
        assert_eq!(node.len() + upper.len(), 20);
    }

    #[test]
    fn a_parted_entry_whose_ends_hold_the_whole_value_is_refused() {
        let node = Node::Leaf(vec![(
            b"k".as_slice().into(),
            Value::Overflow {
                head: 9,
                len: 4,
                ends: b"abcd".as_slice().into(),
                front: 2,
            },
        )]);
        let page = node.encode(1);
        assert!(matches!(
            PageView::new(&page, PageKind::Leaf, 1),
            Err(NodeLayoutError::Ends { index: 0, .. })
        ));
    }

    #[test]
    fn a_page_with_an_entry_out_of_place_is_refused() {
        let node = leaf(&[("a", "1"), ("b", "2")]);
        let mut page = node.encode(1);
        page[HEADER_BYTES + 2] = 0xff;
        assert!(PageView::new(&page, PageKind::Leaf, 2).is_err());
    }
}
