//! The in-memory key index: for every user key, the revisions that touched it,
//! grouped in generations (a generation runs from a creation to a deletion).
//! Rebuilt from the revision table at open, as etcd's treeIndex is.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::revision::Revision;

/// One life of a key: created, modified some times, possibly deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Generation {
    /// Main revision of the put that created the key.
    created: i64,
    /// Number of changes in this generation, including compacted ones (the
    /// version of the newest revision; a tombstone counts too).
    changes: i64,
    /// The revisions still stored, oldest first. For a closed generation the last
    /// one is the tombstone.
    revs: Vec<Revision>,
    closed: bool,
}

impl Generation {
    /// Version of `revs[index]`.
    fn version_at(&self, index: usize) -> i64 {
        let newer = (self.revs.len() - 1 - index) as i64;
        self.changes - newer
    }
}

/// What a key looked like at some revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyAt {
    pub modified: Revision,
    pub created: i64,
    pub version: i64,
}

#[derive(Debug, Default)]
struct KeyHistory {
    /// Oldest first; never empty in the index.
    generations: Vec<Generation>,
}

impl KeyHistory {
    fn live(&self) -> Option<&Generation> {
        self.generations.last().filter(|g| !g.closed)
    }

    fn at(&self, revision: i64) -> Option<KeyAt> {
        for generation in self.generations.iter().rev() {
            let first = generation.revs.first().expect("generations hold revisions");
            if first.main > revision {
                continue;
            }
            let index = generation.revs.partition_point(|r| r.main <= revision) - 1;
            if generation.closed && index == generation.revs.len() - 1 {
                return None; // deleted at or before `revision`
            }
            return Some(KeyAt {
                modified: generation.revs[index],
                created: generation.created,
                version: generation.version_at(index),
            });
        }
        None
    }
}

/// User key -> history.
#[derive(Debug, Default)]
pub struct KeyIndex {
    keys: BTreeMap<Box<[u8]>, KeyHistory>,
}

impl KeyIndex {
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// The key's newest live state, if it exists now.
    pub fn latest(&self, key: &[u8]) -> Option<KeyAt> {
        let history = self.keys.get(key)?;
        let live = history.live()?;
        let index = live.revs.len() - 1;
        Some(KeyAt {
            modified: live.revs[index],
            created: live.created,
            version: live.version_at(index),
        })
    }

    /// The key as of `revision`.
    pub fn at(&self, key: &[u8], revision: i64) -> Option<KeyAt> {
        self.keys.get(key)?.at(revision)
    }

    /// Visits, in key order, every key in `[start, end)` that exists at `revision`.
    pub fn visit_range(
        &self,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        revision: i64,
        mut visit: impl FnMut(&[u8], KeyAt) -> bool,
    ) {
        for (key, history) in self.keys.range::<[u8], _>((start, end)) {
            if let Some(at) = history.at(revision) {
                if !visit(key, at) {
                    return;
                }
            }
        }
    }

    /// Records a put at `revision`. `created`/`version` come from the stored value
    /// when the index is rebuilt (earlier revisions may be compacted away).
    pub fn put(&mut self, key: &[u8], revision: Revision, created: i64, version: i64) {
        let history = self.keys.entry(key.into()).or_default();
        match history.generations.last_mut() {
            Some(live) if !live.closed => {
                let last = *live.revs.last().expect("generations hold revisions");
                assert!(revision > last, "revisions of a key only grow");
                assert_eq!(version, live.changes + 1, "a put bumps the version by one");
                live.revs.push(revision);
                live.changes = version;
            }
            _ => history.generations.push(Generation {
                created,
                changes: version,
                revs: vec![revision],
                closed: false,
            }),
        }
    }

    /// Records a deletion at `revision`; the key must exist.
    pub fn tombstone(&mut self, key: &[u8], revision: Revision) {
        let history = self.keys.get_mut(key).expect("only live keys are deleted");
        let live = history
            .generations
            .last_mut()
            .filter(|g| !g.closed)
            .expect("only live keys are deleted");
        assert!(revision > *live.revs.last().expect("generations hold revisions"));
        live.revs.push(revision);
        live.changes += 1;
        live.closed = true;
    }

    /// Rebuilding from a tombstone of a key whose earlier revisions are all
    /// compacted away: nothing is known to delete, so nothing is recorded.
    pub fn has_live(&self, key: &[u8]) -> bool {
        self.keys.get(key).is_some_and(|h| h.live().is_some())
    }

    /// Compacts every key at `revision` (etcd's keyIndex.compact): keeps each key's
    /// newest revision at or below it unless that is a tombstone, and everything
    /// above it. Returns the revisions no longer needed, in no particular order.
    pub fn compact(&mut self, revision: i64) -> Vec<Revision> {
        let mut removed = Vec::new();
        self.keys.retain(|_, history| {
            history.generations.retain_mut(|generation| {
                let kept_from = generation.revs.partition_point(|r| r.main <= revision);
                if kept_from == 0 {
                    return true; // entirely above the compaction point
                }
                if generation.closed && kept_from == generation.revs.len() {
                    // Deleted at or below the compaction point: the whole life goes.
                    removed.extend_from_slice(&generation.revs);
                    return false;
                }
                // Keep the newest revision at or below the point, drop the older.
                removed.extend(generation.revs.drain(..kept_from - 1));
                true
            });
            !history.generations.is_empty()
        });
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(main: i64) -> Revision {
        Revision::new(main, 0)
    }

    #[test]
    fn reads_at_past_revisions_follow_generations() {
        let mut index = KeyIndex::default();
        index.put(b"k", rev(2), 2, 1);
        index.put(b"k", rev(4), 2, 2);
        index.tombstone(b"k", rev(6));
        index.put(b"k", rev(8), 8, 1);
        assert_eq!(index.at(b"k", 1), None);
        assert_eq!(index.at(b"k", 3).unwrap().modified, rev(2));
        assert_eq!(index.at(b"k", 5).unwrap().version, 2);
        assert_eq!(index.at(b"k", 6), None);
        assert_eq!(index.at(b"k", 7), None);
        let now = index.latest(b"k").unwrap();
        assert_eq!((now.created, now.version), (8, 1));
    }

    #[test]
    fn compaction_keeps_the_newest_live_revision_below_the_point() {
        let mut index = KeyIndex::default();
        index.put(b"a", rev(2), 2, 1);
        index.put(b"a", rev(3), 2, 2);
        index.put(b"b", rev(4), 4, 1);
        index.tombstone(b"b", rev(5));
        index.put(b"a", rev(6), 2, 3);
        let mut removed = index.compact(5);
        removed.sort();
        assert_eq!(removed, vec![rev(2), rev(4), rev(5)]);
        assert_eq!(index.at(b"a", 5).unwrap().modified, rev(3));
        assert_eq!(index.at(b"a", 5).unwrap().version, 2, "versions survive compaction");
        assert_eq!(index.latest(b"a").unwrap().version, 3);
        assert_eq!(index.len(), 1, "a key deleted below the point is gone");
    }
}
