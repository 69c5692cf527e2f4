//! Watchers indexed by what they watch: single keys in a hash map, ranges in an
//! interval tree. Finding the watchers of a changed key costs one hash lookup plus
//! one stabbing query, however many watchers exist.

use std::collections::{BTreeSet, HashMap};

use crate::watch::range_index::RangeIndex;
use crate::watch::span::WatchSpan;

/// A watcher's number on the store core; increasing in creation order, so sets
/// of them iterate oldest first.
pub type WatcherId = u64;

#[derive(Default)]
pub struct WatcherGroup {
    keys: HashMap<Box<[u8]>, BTreeSet<WatcherId>>,
    ranges: RangeIndex<BTreeSet<WatcherId>>,
    len: usize,
}

impl WatcherGroup {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn add(&mut self, id: WatcherId, span: &WatchSpan) {
        let added = match span {
            WatchSpan::Key(key) => self.keys.entry(key.clone()).or_default().insert(id),
            WatchSpan::Range { start, end } => match self.ranges.get_mut(start, end) {
                Some(set) => set.insert(id),
                None => {
                    self.ranges.insert(start, end.clone(), BTreeSet::from([id]));
                    true
                }
            },
        };
        assert!(added, "a watcher is added to a group once");
        self.len += 1;
    }

    pub fn remove(&mut self, id: WatcherId, span: &WatchSpan) {
        let removed = match span {
            WatchSpan::Key(key) => {
                let set = self.keys.get_mut(key).expect("the watcher's key is indexed");
                let removed = set.remove(&id);
                if set.is_empty() {
                    self.keys.remove(key);
                }
                removed
            }
            WatchSpan::Range { start, end } => {
                let set = self.ranges.get_mut(start, end).expect("the watcher's range is indexed");
                let removed = set.remove(&id);
                if set.is_empty() {
                    self.ranges.remove(start, end);
                }
                removed
            }
        };
        assert!(removed, "only members are removed");
        self.len -= 1;
    }

    /// Visits every watcher whose span contains `key` (each once).
    pub fn visit_matching(&self, key: &[u8], mut visit: impl FnMut(WatcherId)) {
        if let Some(set) = self.keys.get(key) {
            set.iter().copied().for_each(&mut visit);
        }
        self.ranges.stab(key, |set| set.iter().copied().for_each(&mut visit));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_ranges_are_found_and_forgotten() {
        let mut group = WatcherGroup::default();
        let key = WatchSpan::from_request(b"a", b"").unwrap();
        let prefix = WatchSpan::from_request(b"a", b"b").unwrap();
        group.add(1, &key);
        group.add(2, &prefix);
        group.add(3, &prefix);
        let mut found = Vec::new();
        group.visit_matching(b"a", |id| found.push(id));
        found.sort_unstable();
        assert_eq!(found, vec![1, 2, 3]);
        group.remove(2, &prefix);
        group.remove(1, &key);
        let mut found = Vec::new();
        group.visit_matching(b"a", |id| found.push(id));
        assert_eq!(found, vec![3]);
        assert_eq!(group.len(), 1);
    }
}
