//! Insert and remove, copy-on-write: the path from the root to the leaf becomes
//! owned by the open transaction, the leaf changes, then nodes that grew past a
//! page split upwards, and nodes that shrank below a quarter page merge with a
//! sibling when the two fit one page.

use rustc_hash::FxHashMap;

use crate::page::{PageError, PageId};

use super::node::{ends_bytes_max, fits_inline, Node, NodeRef, Value, KEY_BYTES_MAX, NODE_BYTES_MAX};
use super::overflow::{self, OVERFLOW_DATA_BYTES};
use super::{too_deep, Tree, DEPTH_MAX};

/// A node below this many bytes tries to merge with a sibling.
const UNDERFULL_BYTES: usize = NODE_BYTES_MAX / 4;

/// One step of a path from the root: a node owned by the open transaction and,
/// for branches, the entry followed.
pub(super) type Path = Vec<(PageId, usize)>;

/// Which bytes of a value too large for its leaf a reader wants without its
/// overflow pages: the first `front` and the last `back` (see `Tree::range_ends`).
/// The leaf keeps them when they fit, and with them the value's bytes past
/// whole overflow pages, which would otherwise take a page of their own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndsWanted {
    pub front: usize,
    pub back: usize,
}

impl Tree {
    pub fn insert(&mut self, key: &[u8], value: &[u8]) -> Result<(), PageError> {
        self.insert_with_ends(key, value, EndsWanted::default())
    }

    /// `insert`, keeping `ends` of a large value in its leaf where they fit.
    pub fn insert_with_ends(&mut self, key: &[u8], value: &[u8], ends: EndsWanted) -> Result<(), PageError> {
        assert!(
            key.len() <= KEY_BYTES_MAX,
            "tree keys are at most {KEY_BYTES_MAX} bytes"
        );
        let value = self.store_value(key, value, ends);
        let Some(root) = self.root else {
            let id = self.store.allocate();
            self.nodes.insert(id, Node::Leaf(vec![(key.into(), value)]));
            self.root = Some(id);
            return Ok(());
        };
        let path = self.own_path(root, key)?;
        let (leaf_id, _) = *path.last().expect("a path ends at a leaf");
        let Some(Node::Leaf(entries)) = self.nodes.get_mut(&leaf_id) else {
            unreachable!("a path ends at an owned leaf");
        };
        let (replaced, appended) = match entries.binary_search_by(|(k, _)| k.as_ref().cmp(key)) {
            Ok(index) => (Some(std::mem::replace(&mut entries[index].1, value)), false),
            Err(index) => {
                entries.insert(index, (key.into(), value));
                (None, index + 1 == entries.len())
            }
        };
        if let Some(old) = replaced {
            self.release_value(&old)?;
        }
        let at_right_edge = appended && self.rightmost(&path);
        self.split_upwards(&path, at_right_edge);
        Ok(())
    }

    /// Removes `key`; true if it was there.
    pub fn remove(&mut self, key: &[u8]) -> Result<bool, PageError> {
        let Some(root) = self.root else {
            return Ok(false);
        };
        // Look first, so a miss copies nothing.
        if !self.contains(key)? {
            return Ok(false);
        }
        let path = self.own_path(root, key)?;
        let (leaf_id, _) = *path.last().expect("a path ends at a leaf");
        let Some(Node::Leaf(entries)) = self.nodes.get_mut(&leaf_id) else {
            unreachable!("a path ends at an owned leaf");
        };
        let index = entries
            .binary_search_by(|(k, _)| k.as_ref().cmp(key))
            .expect("the key was found before");
        let (_, old) = entries.remove(index);
        self.release_value(&old)?;
        self.merge_upwards(&path)?;
        self.shrink_root();
        Ok(true)
    }

    fn contains(&self, key: &[u8]) -> Result<bool, PageError> {
        let Some(mut id) = self.root else {
            return Ok(false);
        };
        for _ in 0..DEPTH_MAX {
            let node = self.node(id)?;
            if node.is_leaf() {
                return Ok(node.search(key).is_ok());
            }
            id = node.child(node.child_index(key));
        }
        Err(too_deep(id))
    }

    /// Makes node `id` owned by the open transaction: a committed node is copied
    /// to a new page and its page released. Returns the (possibly new) id.
    fn own(&mut self, id: PageId) -> Result<PageId, PageError> {
        if self.nodes.contains_key(&id) {
            return Ok(id);
        }
        let node = self.node(id)?.to_node();
        let copy = self.store.allocate();
        self.store.release(id);
        self.nodes.insert(copy, node);
        Ok(copy)
    }

    /// Owns every node from the root to the leaf where `key` belongs.
    pub(super) fn own_path(&mut self, root: PageId, key: &[u8]) -> Result<Path, PageError> {
        let mut id = self.own(root)?;
        self.root = Some(id);
        let mut path = Path::new();
        loop {
            if path.len() == DEPTH_MAX {
                return Err(too_deep(id));
            }
            let child_index = match &self.nodes[&id] {
                Node::Leaf(_) => {
                    path.push((id, 0));
                    return Ok(path);
                }
                node => NodeRef::Owned(node).child_index(key),
            };
            let child = self.own_child(id, child_index)?;
            path.push((id, child_index));
            id = child;
        }
    }

    /// Owns entry `index`'s child of the owned branch `parent`, repointing it.
    fn own_child(&mut self, parent: PageId, index: usize) -> Result<PageId, PageError> {
        let child = branch(&self.nodes, parent)[index].1;
        let owned = self.own(child)?;
        if owned != child {
            branch_mut(&mut self.nodes, parent)[index].1 = owned;
        }
        Ok(owned)
    }

    /// Whether `path` ends at the last leaf of the tree: every branch on it
    /// was followed through its last entry.
    fn rightmost(&self, path: &Path) -> bool {
        path[..path.len() - 1]
            .iter()
            .all(|&(id, index)| index + 1 == branch(&self.nodes, id).len())
    }

    /// Splits, from the leaf up, every node on `path` that no longer fits a page.
    ///
    /// `appended`: the leaf grew by a new last key of the whole tree. Then it
    /// splits off that key alone and stays as full as it was: keys that arrive
    /// in order (revision keys are) would otherwise leave every leaf behind
    /// them half full for good, since nothing is ever inserted below them
    /// again. (etcd's bbolt fills such buckets to 90%, PostgreSQL its
    /// rightmost pages likewise.) Branches split in halves either way, so
    /// each half keeps at least three children (the depth bound, `DEPTH_MAX`).
    fn split_upwards(&mut self, path: &[(PageId, usize)], appended: bool) {
        for level in (0..path.len()).rev() {
            let (id, _) = path[level];
            if self.nodes[&id].bytes() <= NODE_BYTES_MAX {
                return;
            }
            let node = self.nodes.get_mut(&id).expect("owned");
            let mut upper = if appended && level + 1 == path.len() {
                node.split_off_last()
            } else {
                node.split_off_upper()
            };
            let separator = upper.take_separator();
            let upper_id = self.store.allocate();
            self.nodes.insert(upper_id, upper);
            if level == 0 {
                let root = self.store.allocate();
                self.nodes
                    .insert(root, Node::Branch(vec![(Box::default(), id), (separator, upper_id)]));
                self.root = Some(root);
            } else {
                let (parent, index) = path[level - 1];
                branch_mut(&mut self.nodes, parent).insert(index + 1, (separator, upper_id));
            }
        }
    }

    /// From the leaf up: removes empty nodes and merges underfull ones with a
    /// sibling when both fit one page. Stops at the first node left as it was.
    fn merge_upwards(&mut self, path: &Path) -> Result<(), PageError> {
        for level in (1..path.len()).rev() {
            let (id, _) = path[level];
            let (parent, index) = path[level - 1];
            let node = &self.nodes[&id];
            if node.len() == 0 {
                let siblings = branch_mut(&mut self.nodes, parent);
                siblings.remove(index);
                if index == 0 {
                    if let Some(first) = siblings.first_mut() {
                        // Now the first entry: its key bounds nothing any more.
                        first.0 = Box::default();
                    }
                }
                self.nodes.remove(&id);
                self.store.release(id);
                continue;
            }
            if node.bytes() >= UNDERFULL_BYTES || branch(&self.nodes, parent).len() < 2 {
                return Ok(());
            }
            let left_index = if index + 1 < branch(&self.nodes, parent).len() {
                index
            } else {
                index - 1
            };
            let right_index = left_index + 1;
            let left = self.own_child(parent, left_index)?;
            let right = self.own_child(parent, right_index)?;
            let separator = branch(&self.nodes, parent)[right_index].0.clone();
            if self.nodes[&left].merged_bytes(&self.nodes[&right], &separator) > NODE_BYTES_MAX {
                return Ok(());
            }
            let right_node = self.nodes.remove(&right).expect("owned");
            self.nodes.get_mut(&left).expect("owned").absorb(right_node, &separator);
            self.store.release(right);
            branch_mut(&mut self.nodes, parent).remove(right_index);
        }
        Ok(())
    }

    /// Fills the owned nodes on `path` from the nodes after them under the same
    /// parent, from the top down: each branch below the root takes whole
    /// branches while they fit (the parent's separator becomes the first key
    /// of what it takes), then the leaf packs (`pack_leaf`). Taking only whole
    /// branches changes no separator, so no ancestor grows and `path` stays
    /// right below; a branch taken brings its leaves under the leaf's parent,
    /// so the leaf packs on past where its parent ended.
    pub(super) fn pack_path(&mut self, path: &Path) -> Result<(), PageError> {
        for level in 1..path.len().saturating_sub(1) {
            let (parent, index) = path[level - 1];
            let (node, _) = path[level];
            while index + 1 < branch(&self.nodes, parent).len() {
                let (separator, right) = &branch(&self.nodes, parent)[index + 1];
                let (separator, right) = (separator.clone(), *right);
                let merged = self.nodes[&node].bytes() + self.node(right)?.bytes() + separator.len();
                if merged > NODE_BYTES_MAX {
                    break;
                }
                let right_node = match self.nodes.remove(&right) {
                    Some(node) => node,
                    None => self.node(right)?.to_node(),
                };
                self.nodes.get_mut(&node).expect("owned").absorb(right_node, &separator);
                self.store.release(right);
                branch_mut(&mut self.nodes, parent).remove(index + 1);
            }
        }
        self.pack_leaf(path)
    }

    /// Fills the owned leaf at the end of `path` from the leaves after it under
    /// the same parent: whole leaves while they fit (their pages go back), then
    /// the first entries of the next one that fit (its separator becomes its
    /// new first key). Defragmentation does this, as etcd's defrag rewrites its
    /// buckets full: a compaction leaves its leaves as empty as a quarter page.
    fn pack_leaf(&mut self, path: &Path) -> Result<(), PageError> {
        let [.., (parent, index), (leaf, _)] = path[..] else {
            return Ok(());
        };
        while index + 1 < branch(&self.nodes, parent).len() {
            let room = NODE_BYTES_MAX - self.nodes[&leaf].bytes();
            let right = branch(&self.nodes, parent)[index + 1].1;
            if self.node(right)?.bytes() <= room {
                let right_node = match self.nodes.remove(&right) {
                    Some(node) => node,
                    None => self.node(right)?.to_node(),
                };
                self.nodes.get_mut(&leaf).expect("owned").absorb(right_node, &[]);
                self.store.release(right);
                branch_mut(&mut self.nodes, parent).remove(index + 1);
                continue;
            }
            let right = self.own_child(parent, index + 1)?;
            let moved = self.nodes.get_mut(&right).expect("owned").take_front(room);
            if moved.is_empty() {
                break;
            }
            let Some(Node::Leaf(entries)) = self.nodes.get_mut(&leaf) else {
                unreachable!("a path ends at an owned leaf");
            };
            entries.extend(moved);
            let separator = NodeRef::Owned(&self.nodes[&right]).key(0).into();
            branch_mut(&mut self.nodes, parent)[index + 1].0 = separator;
            // A longer separator can take the parent past a page: it splits
            // as after an insert.
            self.split_upwards(&path[..path.len() - 1], false);
            break;
        }
        self.shrink_root();
        Ok(())
    }

    /// A root branch with one child gives way to the child; an empty root leaf
    /// leaves an empty tree.
    fn shrink_root(&mut self) {
        while let Some(root) = self.root {
            let Some(node) = self.nodes.get(&root) else {
                return;
            };
            let next = match node {
                Node::Branch(entries) if entries.len() == 1 => Some(entries[0].1),
                Node::Leaf(entries) if entries.is_empty() => None,
                Node::Branch(entries) => {
                    assert!(
                        entries.len() >= 2,
                        "a root branch never loses its last two children at once"
                    );
                    return;
                }
                Node::Leaf(_) => return,
            };
            self.nodes.remove(&root);
            self.store.release(root);
            self.root = next;
        }
    }

    /// The value as stored in a leaf: inline, or written to a new overflow
    /// chain with the ends the leaf keeps (`parted_ends`).
    pub(super) fn store_value(&mut self, key: &[u8], value: &[u8], wanted: EndsWanted) -> Value {
        if fits_inline(key, value.len()) {
            return Value::Inline(value.into());
        }
        let len = u32::try_from(value.len()).expect("values are far below 4 GiB");
        let (front, back) = parted_ends(value.len(), wanted, ends_bytes_max(key));
        let head = self.store_chain(&value[front..value.len() - back]);
        let mut ends = Vec::with_capacity(front + back);
        ends.extend_from_slice(&value[..front]);
        ends.extend_from_slice(&value[value.len() - back..]);
        Value::Overflow {
            head,
            len,
            ends: ends.into(),
            front: u16::try_from(front).expect("ends fit a leaf entry"),
        }
    }

    /// Writes `chain` to new overflow pages; the first one's id.
    pub(super) fn store_chain(&mut self, chain: &[u8]) -> PageId {
        let ids: Vec<PageId> = (0..chain.len().div_ceil(OVERFLOW_DATA_BYTES))
            .map(|_| self.store.allocate())
            .collect();
        self.overflow.extend(overflow::encode_chain(chain, &ids));
        ids[0]
    }

    /// Releases the overflow chain of a value no longer stored.
    pub(super) fn release_value(&mut self, value: &Value) -> Result<(), PageError> {
        let Value::Overflow { head, len, ends, .. } = value else {
            return Ok(());
        };
        self.release_chain(*head, super::chain_bytes(*len, ends))
    }

    /// Releases the pages of the chain of `len` bytes from `head`.
    pub(super) fn release_chain(&mut self, head: PageId, len: u32) -> Result<(), PageError> {
        for id in self.overflow_chain(head, len)? {
            self.overflow.remove(&id);
            self.store.release(id);
        }
        Ok(())
    }
}

/// (front, back) bytes a leaf keeps of a `len`-byte value too large for it,
/// given at most `bytes_max` of ends: the wanted ends plus what is left past
/// whole overflow pages (kept in back, before the wanted back) when all that
/// fits, else the wanted ends alone when they fit (the chain's last page then
/// holds the rest), else nothing. The chain always keeps at least one byte.
fn parted_ends(len: usize, wanted: EndsWanted, bytes_max: usize) -> (usize, usize) {
    let front = wanted.front.min(len);
    let back = wanted.back.min(len - front);
    let rest = (len - front - back) % OVERFLOW_DATA_BYTES;
    let whole_pages = (len - front - back) / OVERFLOW_DATA_BYTES;
    if whole_pages >= 1 && front + back + rest <= bytes_max {
        return (front, back + rest);
    }
    if front + back <= bytes_max && front + back < len {
        return (front, back);
    }
    (0, 0)
}

fn branch(nodes: &FxHashMap<PageId, Node>, id: PageId) -> &Vec<(Box<[u8]>, PageId)> {
    match &nodes[&id] {
        Node::Branch(entries) => entries,
        Node::Leaf(_) => panic!("page {id} is a leaf, not a branch"),
    }
}

fn branch_mut(nodes: &mut FxHashMap<PageId, Node>, id: PageId) -> &mut Vec<(Box<[u8]>, PageId)> {
    match nodes.get_mut(&id) {
        Some(Node::Branch(entries)) => entries,
        _ => panic!("page {id} is not an owned branch"),
    }
}
