//! An interval tree over key ranges `[start, end)`: which ranges contain a key.
//!
//! A treap ordered by (start, end), each node also holding the largest `end` in its
//! subtree, so a stabbing query skips every subtree that ends at or before the key:
//! O(log n + matches) expected, never a scan of all ranges. Watchers of the same
//! range share one entry (the value), so k8s-style "thousands of watchers on one
//! prefix" is one node.

use std::cmp::Ordering;

/// Where a range ends. `Unbounded` sorts after every key (derive order).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RangeEndKey {
    Before(Box<[u8]>),
    Unbounded,
}

impl RangeEndKey {
    fn is_after(&self, key: &[u8]) -> bool {
        match self {
            RangeEndKey::Before(end) => &**end > key,
            RangeEndKey::Unbounded => true,
        }
    }
}

struct Node<V> {
    start: Box<[u8]>,
    end: RangeEndKey,
    priority: u64,
    /// The largest `end` in this subtree.
    max_end: RangeEndKey,
    value: V,
    left: Option<Box<Node<V>>>,
    right: Option<Box<Node<V>>>,
}

impl<V> Node<V> {
    fn order(&self, start: &[u8], end: &RangeEndKey) -> Ordering {
        (&*self.start, &self.end).cmp(&(start, end))
    }

    fn update(&mut self) {
        let mut max_end = self.end.clone();
        for child in [&self.left, &self.right].into_iter().flatten() {
            if child.max_end > max_end {
                max_end = child.max_end.clone();
            }
        }
        self.max_end = max_end;
    }
}

type Link<V> = Option<Box<Node<V>>>;

pub struct RangeIndex<V> {
    root: Link<V>,
    /// splitmix64 state: priorities need only be well spread, not secret.
    seed: u64,
}

impl<V> Default for RangeIndex<V> {
    fn default() -> Self {
        RangeIndex {
            root: None,
            seed: 0x9e37_79b9_7f4a_7c15,
        }
    }
}

impl<V> RangeIndex<V> {
    pub fn get_mut(&mut self, start: &[u8], end: &RangeEndKey) -> Option<&mut V> {
        let mut link = &mut self.root;
        while let Some(node) = link {
            match node.order(start, end) {
                Ordering::Equal => return Some(&mut node.value),
                Ordering::Greater => link = &mut node.left,
                Ordering::Less => link = &mut node.right,
            }
        }
        None
    }

    /// Adds a range that is not in the index yet.
    pub fn insert(&mut self, start: &[u8], end: RangeEndKey, value: V) {
        assert!(self.get_mut(start, &end).is_none(), "each range is inserted once");
        if let RangeEndKey::Before(before) = &end {
            assert!(start < &**before, "ranges are never empty");
        }
        let node = Box::new(Node {
            start: start.into(),
            max_end: end.clone(),
            end,
            priority: self.next_priority(),
            value,
            left: None,
            right: None,
        });
        let (less, greater) = split(self.root.take(), &node.start, &node.end, false);
        self.root = merge(merge(less, Some(node)), greater);
    }

    /// Removes a range; returns its value.
    pub fn remove(&mut self, start: &[u8], end: &RangeEndKey) -> Option<V> {
        let (less, rest) = split(self.root.take(), start, end, false);
        let (found, greater) = split(rest, start, end, true);
        self.root = merge(less, greater);
        let found = found?;
        assert!(found.left.is_none() && found.right.is_none(), "ranges are unique");
        Some(found.value)
    }

    /// Visits the value of every range containing `key`.
    pub fn stab(&self, key: &[u8], mut visit: impl FnMut(&V)) {
        stab(&self.root, key, &mut visit);
    }

    fn next_priority(&mut self) -> u64 {
        self.seed = self.seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Splits into (nodes before (start, end), the rest); with `inclusive` the node
/// equal to (start, end) goes left.
fn split<V>(link: Link<V>, start: &[u8], end: &RangeEndKey, inclusive: bool) -> (Link<V>, Link<V>) {
    let Some(mut node) = link else {
        return (None, None);
    };
    let order = node.order(start, end);
    let goes_left = order == Ordering::Less || inclusive && order == Ordering::Equal;
    if goes_left {
        let (less, greater) = split(node.right.take(), start, end, inclusive);
        node.right = less;
        node.update();
        (Some(node), greater)
    } else {
        let (less, greater) = split(node.left.take(), start, end, inclusive);
        node.left = greater;
        node.update();
        (less, Some(node))
    }
}

/// Joins two treaps where every node of `left` sorts before every node of `right`.
fn merge<V>(left: Link<V>, right: Link<V>) -> Link<V> {
    match (left, right) {
        (None, right) => right,
        (left, None) => left,
        (Some(mut left), Some(mut right)) => {
            if left.priority >= right.priority {
                left.right = merge(left.right.take(), Some(right));
                left.update();
                Some(left)
            } else {
                right.left = merge(Some(left), right.left.take());
                right.update();
                Some(right)
            }
        }
    }
}

fn stab<V>(link: &Link<V>, key: &[u8], visit: &mut impl FnMut(&V)) {
    let Some(node) = link else {
        return;
    };
    if !node.max_end.is_after(key) {
        return; // everything below ends at or before `key`
    }
    stab(&node.left, key, visit);
    if &*node.start > key {
        return; // this node and its right subtree start after `key`
    }
    if node.end.is_after(key) {
        visit(&node.value);
    }
    stab(&node.right, key, visit);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(key: &[u8]) -> RangeEndKey {
        RangeEndKey::Before(key.into())
    }

    fn stabbed(index: &RangeIndex<u32>, key: &[u8]) -> Vec<u32> {
        let mut found = Vec::new();
        index.stab(key, |v| found.push(*v));
        found.sort_unstable();
        found
    }

    #[test]
    fn a_key_finds_exactly_the_ranges_containing_it() {
        let mut index = RangeIndex::default();
        index.insert(b"a", end(b"c"), 1);
        index.insert(b"b", end(b"d"), 2);
        index.insert(b"b", RangeEndKey::Unbounded, 3);
        index.insert(b"x", end(b"y"), 4);
        assert_eq!(stabbed(&index, b"a"), vec![1]);
        assert_eq!(stabbed(&index, b"b"), vec![1, 2, 3]);
        assert_eq!(stabbed(&index, b"c"), vec![2, 3], "ends are exclusive");
        assert_eq!(stabbed(&index, b"x\xff"), vec![3, 4]);
        assert_eq!(stabbed(&index, b"0"), Vec::<u32>::new());
        assert_eq!(index.remove(b"b", &end(b"d")), Some(2));
        assert_eq!(index.remove(b"b", &end(b"d")), None);
        assert_eq!(stabbed(&index, b"b"), vec![1, 3]);
    }

    #[test]
    fn matches_a_linear_scan_over_many_random_ranges() {
        let mut index = RangeIndex::default();
        let mut model: Vec<(Vec<u8>, RangeEndKey, u32)> = Vec::new();
        let mut state = 7u32;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state % 200) as u8
        };
        for value in 0..2000u32 {
            let (a, b) = (next(), next());
            let (start, stop) = (a.min(b), a.max(b));
            let end = if stop == start {
                RangeEndKey::Unbounded
            } else {
                end(&[stop])
            };
            if index.get_mut(&[start], &end).is_some() {
                index.remove(&[start], &end);
                model.retain(|(s, e, _)| !(s.as_slice() == [start] && *e == end));
            } else {
                index.insert(&[start], end.clone(), value);
                model.push((vec![start], end, value));
            }
        }
        for key in 0..=200u8 {
            let mut expected: Vec<u32> = model
                .iter()
                .filter(|(s, e, _)| s.as_slice() <= [key].as_slice() && e.is_after(&[key]))
                .map(|(_, _, v)| *v)
                .collect();
            expected.sort_unstable();
            assert_eq!(stabbed(&index, &[key]), expected, "key {key}");
        }
    }
}
