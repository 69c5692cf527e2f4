//! Defragmentation, one bounded step at a time, inside ordinary transactions.
//!
//! Copy-on-write already moves a node whenever it changes: a node is copied to
//! the lowest free page. A pass picks a *target*: the pages in use now plus some
//! slack. It walks the leaves in key order and, for each leaf whose path from the
//! root (or whose overflow chains) has a page at or above the target, makes that
//! path owned, which copies it below the target, and rewrites the high overflow
//! chains. Pages below the target stay where they are (except the few branch
//! nodes on a moved path), so moving never opens new holes below the target:
//! the free pages below it always outnumber the live pages above it by the
//! slack. After the pass the pages above the target are free, and a trim gives
//! them back (`PageStore::request_trim`). Each step is a bounded amount of work
//! followed by a normal commit, so writers never wait for more than one step.
//!
//! A pass also packs: each leaf it visits takes the leaves after it under the
//! same parent while they fit, and each branch above it the branches after it
//! (`Tree::pack_path`), as etcd's defrag rewrites its buckets full, since a
//! compaction leaves leaves as empty as a quarter page, and packing leaves
//! leaves their parents as empty. Packing only frees pages, but below a target
//! set before it: the caller makes a second pass when the target fell
//! (`store::core::space`).

use crate::page::{PageError, PageId};

use super::node::{Node, Value, ValueRef, NODE_BYTES_MAX};
use super::{chain_bytes, too_deep, Tree, DEPTH_MAX};

/// Pages of slack a pass's target leaves above the pages in use, at least: the
/// pages the transactions running during the pass allocate come from here.
const TARGET_SLACK_PAGES_MIN: u64 = 64;

impl Tree {
    /// The target for a defragmentation pass starting now.
    pub fn relocation_target(&self) -> PageId {
        let in_use = self.store.page_count() - self.store.unreachable_pages().count() as u64;
        in_use + (in_use / 32).max(TARGET_SLACK_PAGES_MIN)
    }

    /// Visits up to `leaves_max` leaves in key order, starting with the one where
    /// `from` belongs, moving their pages at or above `target` below it.
    /// Returns where the next step starts (the first key of the next leaf), or
    /// None when the last leaf was visited.
    pub fn relocate_step(
        &mut self,
        from: &[u8],
        target: PageId,
        leaves_max: usize,
    ) -> Result<Option<Vec<u8>>, PageError> {
        assert!(leaves_max > 0);
        self.store.move_freelist_below(target);
        let mut from = from.to_vec();
        for _ in 0..leaves_max {
            let Some(root) = self.root else {
                return Ok(None);
            };
            let (path, _) = self.leaf_path(root, &from)?;
            let leaf = *path.last().expect("a path ends at a leaf");
            let pack = self.packable(&path, &from, target)?;
            if pack
                || path.iter().any(|&id| self.movable(id, target))
                || self.leaf_has_movable_overflow(leaf, target)?
            {
                let owned = self.own_path(root, &from)?;
                if pack {
                    self.pack_path(&owned)?;
                }
                let (leaf, _) = *owned.last().expect("a path ends at a leaf");
                self.move_overflow_down(leaf, target)?;
            }
            // Packing changed where the next leaf starts.
            let root = self.root.expect("packing leaves a leaf");
            match self.leaf_path(root, &from)?.1 {
                Some(key) => from = key,
                None => return Ok(None),
            }
        }
        Ok(Some(from))
    }

    /// The page ids from the root to the leaf where `key` belongs, and the first
    /// key of the leaf after it (None for the last leaf).
    fn leaf_path(&self, root: PageId, key: &[u8]) -> Result<(Vec<PageId>, Option<Vec<u8>>), PageError> {
        let mut path = vec![root];
        let mut next = None;
        let mut id = root;
        loop {
            if path.len() > DEPTH_MAX {
                return Err(too_deep(id));
            }
            let node = self.node(id)?;
            if node.is_leaf() {
                return Ok((path, next));
            }
            let index = node.child_index(key);
            if index + 1 < node.len() {
                // The deepest bound is the tightest one.
                next = Some(node.key(index + 1).to_vec());
            }
            id = node.child(index);
            path.push(id);
        }
    }

    /// Whether a node on `path` (where `key` belongs) can take from the node
    /// after it under the same parent (a branch that node whole, the leaf the
    /// next one's first entry: see `Tree::pack_path`), and there is a free
    /// page below `target` to copy it to.
    fn packable(&self, path: &[PageId], key: &[u8], target: PageId) -> Result<bool, PageError> {
        if self.store.lowest_free().is_none_or(|free| free >= target) {
            return Ok(false);
        }
        for level in 1..path.len() {
            let parent = self.node(path[level - 1])?;
            let index = parent.child_index(key);
            if index + 1 == parent.len() {
                continue;
            }
            let node = self.node(path[level])?;
            let right = self.node(parent.child(index + 1))?;
            let room = NODE_BYTES_MAX - node.bytes();
            let wanted = if node.is_leaf() {
                right.leaf_entry_bytes(0)
            } else {
                right.bytes() + parent.key(index + 1).len()
            };
            if wanted <= room {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// A committed page at or above `target`, with a free page below it to move
    /// to (owned pages were placed by this transaction and stay where they are).
    fn movable(&self, id: PageId, target: PageId) -> bool {
        id >= target
            && !self.nodes.contains_key(&id)
            && !self.overflow.contains_key(&id)
            && self.store.lowest_free().is_some_and(|free| free < target)
    }

    fn leaf_has_movable_overflow(&self, leaf: PageId, target: PageId) -> Result<bool, PageError> {
        let node = self.node(leaf)?;
        for index in 0..node.len() {
            if let ValueRef::Overflow { head, len, ends, .. } = node.value(index) {
                if self.chain_movable(head, chain_bytes(len, ends), target)? {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    fn chain_movable(&self, head: PageId, len: u32, target: PageId) -> Result<bool, PageError> {
        Ok(self
            .overflow_chain(head, len)?
            .into_iter()
            .any(|id| self.movable(id, target)))
    }

    /// Rewrites the overflow chains of owned leaf `leaf` that sit high.
    fn move_overflow_down(&mut self, leaf: PageId, target: PageId) -> Result<(), PageError> {
        let Some(Node::Leaf(entries)) = self.nodes.get(&leaf) else {
            unreachable!("an owned path ends at an owned leaf");
        };
        let chains: Vec<(usize, PageId, u32)> = entries
            .iter()
            .enumerate()
            .filter_map(|(index, (_, value))| match value {
                Value::Overflow { head, len, ends, .. } => Some((index, *head, chain_bytes(*len, ends))),
                Value::Inline(_) => None,
            })
            .collect();
        for (index, head, chain_len) in chains {
            if !self.chain_movable(head, chain_len, target)? {
                continue;
            }
            // Only the chain moves; the ends stay in the leaf. The new chain is
            // allocated before the old one is released, and a released page is
            // not reused by the same transaction.
            let chain = ValueRef::Overflow {
                head,
                len: chain_len,
                ends: &[],
                front: 0,
            };
            let bytes = self.read_value(chain)?.into_owned();
            let moved_head = self.store_chain(&bytes);
            let Some(Node::Leaf(entries)) = self.nodes.get_mut(&leaf) else {
                unreachable!("checked above");
            };
            let Value::Overflow { head: old_head, .. } = &mut entries[index].1 else {
                unreachable!("an overflow value above");
            };
            let old = std::mem::replace(old_head, moved_head);
            self.release_chain(old, chain_len)?;
        }
        Ok(())
    }
}
