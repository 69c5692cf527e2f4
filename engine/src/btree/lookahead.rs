//! Lookups in two halves, for a reader that knows its next keys a few reads
//! ahead (a list page's records): find the leaf first and ask the CPU for its
//! first cache line, then search it once that line has had time to arrive. A
//! list page's records lie at scattered revisions, and each lookup otherwise
//! waits for its leaf.

use std::borrow::Cow;

use super::{Tree, DEPTH_MAX};
use crate::page::{PageError, PageId};

/// The leaf a lookup ends in, as `LeafFinder::find` found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeafOf(PageId);

/// Finds leaves in a tree as it is now.
pub struct LeafFinder<'a> {
    tree: &'a Tree,
    /// Every leaf is this many branches below the root, as the first is.
    branch_levels: usize,
}

impl Tree {
    /// A `LeafFinder` for this tree as it is now: valid while it is borrowed.
    pub fn leaf_finder(&self) -> LeafFinder<'_> {
        let mut branch_levels = 0;
        if let Some(mut id) = self.root {
            while branch_levels < DEPTH_MAX {
                match self.node(id) {
                    Ok(node) if !node.is_leaf() => id = node.child(0),
                    _ => break,
                }
                branch_levels += 1;
            }
        }
        LeafFinder {
            tree: self,
            branch_levels,
        }
    }

    /// `get_in_place(key)`, from the leaf `LeafFinder::find(key)` returned.
    pub fn get_in_leaf(&self, leaf: LeafOf, key: &[u8]) -> Result<Option<Cow<'_, [u8]>>, PageError> {
        let node = self.node(leaf.0)?;
        if !node.is_leaf() {
            // Leaves of unequal depth: a damaged file. The whole lookup
            // finds whatever it finds, and reports it.
            return self.get_in_place(key);
        }
        self.get_in_node(&node, key)
    }
}

impl LeafFinder<'_> {
    /// The leaf a lookup of `key` ends in, its first cache line asked for;
    /// reads the branches above it, not the leaf. None for an empty tree or
    /// a branch that cannot be read (the lookup reports why).
    pub fn find(&self, key: &[u8]) -> Option<LeafOf> {
        let mut id = self.tree.root?;
        for _ in 0..self.branch_levels {
            let node = self.tree.node(id).ok()?;
            if node.is_leaf() {
                return Some(LeafOf(id));
            }
            id = node.child(node.child_index(key));
        }
        self.tree.store.prefetch(id);
        Some(LeafOf(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page::sim::SimPageIo;

    fn key(n: u32) -> Vec<u8> {
        format!("key-{n:06}").into_bytes()
    }

    #[test]
    fn a_lookup_from_the_leaf_found_finds_what_a_whole_lookup_does() {
        let mut tree = Tree::open_with(SimPageIo::new()).unwrap();
        assert_eq!(tree.leaf_finder().find(b"any"), None, "an empty tree");
        // Enough keys for branches above the leaves; every third key absent.
        for n in (0..3_000).filter(|n| n % 3 != 0) {
            tree.insert(&key(n), &[n as u8; 200]).unwrap();
        }
        let check = |tree: &Tree| {
            let finder = tree.leaf_finder();
            assert!(finder.branch_levels >= 1);
            for n in 0..3_001 {
                let leaf = finder.find(&key(n)).expect("a non-empty tree");
                assert_eq!(
                    tree.get_in_leaf(leaf, &key(n)).unwrap(),
                    tree.get_in_place(&key(n)).unwrap(),
                    "key {n}"
                );
            }
        };
        check(&tree);
        tree.commit().unwrap();
        check(&tree);
        // Nodes of the open transaction, next to committed ones.
        for n in (0..3_000).step_by(7) {
            tree.insert(&key(n), b"changed").unwrap();
        }
        check(&tree);
    }
}
