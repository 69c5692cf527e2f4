//! A full integrity check of the tree and its page file: every node's checksum
//! and layout, key order and bounds, equal leaf depth, node sizes, overflow
//! chain lengths, and the page accounting (every page is meta, reachable, or
//! unreachable-and-accounted for: exactly one of these).

use std::collections::HashSet;

use crate::page::{PageError, PageId};

use super::node::{ValueRef, NODE_BYTES_MAX};
use super::{Tree, DEPTH_MAX};

/// What a successful check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckReport {
    pub entries: u64,
    /// Levels from the root to the leaves (0 for an empty tree).
    pub depth: u32,
    /// Pages reachable from the root, overflow pages included.
    pub reachable_pages: u64,
    pub unreachable_pages: u64,
    pub branch_pages: u64,
    pub leaf_pages: u64,
    pub overflow_pages: u64,
    /// Bytes the leaves' entries take (offset slots included): against
    /// `leaf_pages * NODE_BYTES_MAX`, how full the leaves are.
    pub leaf_entry_bytes: u64,
}

impl CheckReport {
    /// The leaves' entry bytes as a share of what their pages hold (0 for no leaf).
    pub fn leaf_fill(&self) -> f64 {
        if self.leaf_pages == 0 {
            return 0.0;
        }
        self.leaf_entry_bytes as f64 / (self.leaf_pages * NODE_BYTES_MAX as u64) as f64
    }
}

struct Walk {
    seen: HashSet<PageId>,
    entries: u64,
    leaf_depth: Option<u32>,
    branch_pages: u64,
    leaf_pages: u64,
    overflow_pages: u64,
    leaf_entry_bytes: u64,
}

impl Tree {
    /// Walks the whole tree; the first problem found is returned as corruption.
    pub fn check(&self) -> Result<CheckReport, PageError> {
        let mut walk = Walk {
            seen: HashSet::new(),
            entries: 0,
            leaf_depth: None,
            branch_pages: 0,
            leaf_pages: 0,
            overflow_pages: 0,
            leaf_entry_bytes: 0,
        };
        if let Some(root) = self.root {
            self.check_node(root, None, None, 1, &mut walk)?;
        }
        let mut unreachable = 0u64;
        for id in self.store.unreachable_pages() {
            if !walk.seen.insert(id) {
                return Err(PageError::corrupt(
                    id,
                    "page is both in use and accounted unreachable (or listed twice)",
                ));
            }
            unreachable += 1;
        }
        let data_pages = self.store.page_count() - 2;
        if walk.seen.len() as u64 != data_pages {
            let missing = (2..self.store.page_count())
                .find(|id| !walk.seen.contains(id))
                .unwrap_or(0);
            return Err(PageError::corrupt(
                missing,
                format!("page leaked: {} of {data_pages} pages accounted", walk.seen.len()),
            ));
        }
        Ok(CheckReport {
            entries: walk.entries,
            depth: walk.leaf_depth.unwrap_or(0),
            reachable_pages: data_pages - unreachable,
            unreachable_pages: unreachable,
            branch_pages: walk.branch_pages,
            leaf_pages: walk.leaf_pages,
            overflow_pages: walk.overflow_pages,
            leaf_entry_bytes: walk.leaf_entry_bytes,
        })
    }

    /// Checks the subtree at `id`, whose keys must lie in `[low, high)`.
    fn check_node(
        &self,
        id: PageId,
        low: Option<&[u8]>,
        high: Option<&[u8]>,
        depth: u32,
        walk: &mut Walk,
    ) -> Result<(), PageError> {
        if !walk.seen.insert(id) {
            return Err(PageError::corrupt(id, "page reachable twice"));
        }
        if depth as usize > DEPTH_MAX {
            return Err(super::too_deep(id));
        }
        let node = self.node(id)?;
        if let super::node::NodeRef::Owned(owned) = node {
            if owned.bytes() > NODE_BYTES_MAX || owned.len() == 0 {
                return Err(PageError::corrupt(
                    id,
                    format!("node of {} entries, {} bytes", owned.len(), owned.bytes()),
                ));
            }
        }
        if !node.is_leaf() && !node.key(0).is_empty() {
            return Err(PageError::corrupt(id, "a branch's first key is not empty"));
        }
        for index in 0..node.len() {
            let key = node.key(index);
            let ordered = index == 0 || node.key(index - 1) < key;
            // A branch's first key is empty and bounds nothing; every other key is checked.
            let checked = node.is_leaf() || index > 0;
            let in_bounds = low.is_none_or(|low| key >= low) && high.is_none_or(|high| key < high);
            if !ordered || checked && !in_bounds {
                return Err(PageError::corrupt(
                    id,
                    format!("key {index} out of order or out of its parent's bounds"),
                ));
            }
        }
        if node.is_leaf() {
            match walk.leaf_depth {
                Some(expected) if expected != depth => {
                    return Err(PageError::corrupt(
                        id,
                        format!("leaf at depth {depth}, others at {expected}"),
                    ));
                }
                _ => walk.leaf_depth = Some(depth),
            }
            walk.entries += node.len() as u64;
            walk.leaf_pages += 1;
            walk.leaf_entry_bytes += node.bytes() as u64;
            for index in 0..node.len() {
                if let ValueRef::Overflow { head, len, ends, .. } = node.value(index) {
                    self.check_overflow(head, super::chain_bytes(len, ends), walk)?;
                }
            }
            return Ok(());
        }
        walk.branch_pages += 1;
        for index in 0..node.len() {
            let child_low = if index == 0 { low } else { Some(node.key(index)) };
            let child_high = if index + 1 < node.len() {
                Some(node.key(index + 1))
            } else {
                high
            };
            self.check_node(node.child(index), child_low, child_high, depth + 1, walk)?;
        }
        Ok(())
    }

    fn check_overflow(&self, head: PageId, len: u32, walk: &mut Walk) -> Result<(), PageError> {
        for id in self.overflow_chain(head, len)? {
            if !walk.seen.insert(id) {
                return Err(PageError::corrupt(id, "overflow page reachable twice"));
            }
            walk.overflow_pages += 1;
        }
        Ok(())
    }
}
