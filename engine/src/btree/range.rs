//! Ascending iteration over a key range: a stack of (node, entry) from the root
//! to the current leaf position. `Range` yields whole values; `EndsRange` only
//! what a leaf holds of each (a parted value's ends, not its overflow pages).

use std::ops::Bound;

use crate::page::{PageError, PageId};

use super::node::ValueRef;
use super::{too_deep, Entry, Tree, DEPTH_MAX};

pub struct Range<'a> {
    tree: &'a Tree,
    /// Where to start; taken by the first `next`, which positions the stack.
    start: Option<Bound<Vec<u8>>>,
    end: Bound<Vec<u8>>,
    /// Branches: the child being visited. Leaf (on top): the next entry.
    stack: Vec<(PageId, usize)>,
    done: bool,
}

impl<'a> Range<'a> {
    pub(super) fn new(tree: &'a Tree, start: Bound<&[u8]>, end: Bound<&[u8]>) -> Range<'a> {
        Range {
            tree,
            start: Some(start.map(<[u8]>::to_vec)),
            end: end.map(<[u8]>::to_vec),
            stack: Vec::new(),
            done: false,
        }
    }

    /// Descends from the root to the first entry at or after `start`.
    fn seek(&mut self, start: &Bound<Vec<u8>>) -> Result<(), PageError> {
        let Some(mut id) = self.tree.root else {
            return Ok(());
        };
        loop {
            if self.stack.len() == DEPTH_MAX {
                return Err(too_deep(id));
            }
            let node = self.tree.node(id)?;
            if node.is_leaf() {
                let index = match start {
                    Bound::Unbounded => 0,
                    Bound::Included(key) => node.search(key).unwrap_or_else(|at| at),
                    Bound::Excluded(key) => node.search(key).map_or_else(|at| at, |at| at + 1),
                };
                self.stack.push((id, index));
                return Ok(());
            }
            let index = match start {
                Bound::Unbounded => 0,
                Bound::Included(key) | Bound::Excluded(key) => node.child_index(key),
            };
            self.stack.push((id, index));
            id = node.child(index);
        }
    }

    fn past_end(&self, key: &[u8]) -> bool {
        match &self.end {
            Bound::Unbounded => false,
            Bound::Included(end) => key > end.as_slice(),
            Bound::Excluded(end) => key >= end.as_slice(),
        }
    }

    /// The next key and `read` of its value; after an error or the end, None.
    fn next_with<T>(
        &mut self,
        read: impl FnMut(ValueRef<'a>) -> Result<T, PageError>,
    ) -> Option<Result<(Vec<u8>, T), PageError>> {
        if self.done {
            return None;
        }
        let item = self.step_with(read).transpose();
        if !matches!(item, Some(Ok(_))) {
            self.done = true;
        }
        item
    }

    fn step_with<T>(
        &mut self,
        mut read: impl FnMut(ValueRef<'a>) -> Result<T, PageError>,
    ) -> Result<Option<(Vec<u8>, T)>, PageError> {
        if let Some(start) = self.start.take() {
            self.seek(&start)?;
        }
        while let Some(&(id, index)) = self.stack.last() {
            let node = self.tree.node(id)?;
            if index >= node.len() {
                // This node is done: move the parent to its next child.
                self.stack.pop();
                if let Some(parent) = self.stack.last_mut() {
                    parent.1 += 1;
                }
                continue;
            }
            if !node.is_leaf() {
                if self.stack.len() == DEPTH_MAX {
                    return Err(too_deep(id));
                }
                self.stack.push((node.child(index), 0));
                continue;
            }
            let key = node.key(index);
            if self.past_end(key) {
                return Ok(None);
            }
            let value = read(node.value(index))?;
            self.stack.last_mut().expect("the leaf is on top").1 += 1;
            return Ok(Some((key.to_vec(), value)));
        }
        Ok(None)
    }
}

impl Iterator for Range<'_> {
    type Item = Result<Entry, PageError>;

    fn next(&mut self) -> Option<Self::Item> {
        let tree = self.tree;
        self.next_with(|value| Ok(tree.read_value(value)?.into_owned()))
    }
}

/// A value as `EndsRange` yields it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredEnds {
    /// The whole value: inline, or in overflow pages with no ends kept.
    Whole(Vec<u8>),
    /// A `len`-byte value of which only its first `front.len()` and last
    /// `back.len()` bytes were read: the rest lies in overflow pages.
    Parted { len: usize, front: Vec<u8>, back: Vec<u8> },
}

/// Ascending iteration that reads no overflow page of a value whose leaf
/// keeps its ends (`Tree::insert_with_ends`).
pub struct EndsRange<'a> {
    range: Range<'a>,
}

impl<'a> EndsRange<'a> {
    pub(super) fn new(tree: &'a Tree, start: Bound<&[u8]>, end: Bound<&[u8]>) -> EndsRange<'a> {
        EndsRange {
            range: Range::new(tree, start, end),
        }
    }
}

impl Iterator for EndsRange<'_> {
    type Item = Result<(Vec<u8>, StoredEnds), PageError>;

    fn next(&mut self) -> Option<Self::Item> {
        let tree = self.range.tree;
        self.range.next_with(|value| match value {
            ValueRef::Overflow { len, ends, front, .. } if !ends.is_empty() => {
                let (front, back) = ends.split_at(usize::from(front));
                Ok(StoredEnds::Parted {
                    len: len as usize,
                    front: front.to_vec(),
                    back: back.to_vec(),
                })
            }
            value => Ok(StoredEnds::Whole(tree.read_value(value)?.into_owned())),
        })
    }
}
