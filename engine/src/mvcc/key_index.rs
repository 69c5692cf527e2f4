//! The in-memory key index: for every user key, the revisions that touched it,
//! grouped in generations (a generation runs from a creation to a deletion).
//! Rebuilt from the revision table at open, as etcd's treeIndex is.
//!
//! It is the biggest thing ringkv holds in memory (one entry per key that is
//! live or not yet compacted away), so a key costs one small allocation: the
//! key and its history encoded together in an [`Entry`], kept in a B-tree set
//! ordered by key. A key of 8 bytes with one revision takes about 20 bytes
//! plus its slot in the set. (A struct per generation with a `Vec` of
//! revisions, as this was first written, was most of the server's memory at
//! 1M keys: docs/benchmarks.md, "Measurements behind the engine's code".)
//!
//! An entry, every integer a LEB128 varint (protobuf's encoding):
//!
//! ```text
//! key length, key bytes,
//! generation count (>= 1),
//! per generation, oldest first:
//!     created    main revision of the put that created the key
//!     changes    changes in the generation, compacted ones included
//!                (the version of its newest revision; a tombstone counts)
//!     closed     1 if its newest revision is the tombstone, else 0
//!     count      revisions still stored (>= 1)
//!     revisions  oldest first: main, sub; each later one: main minus the
//!                previous main (revisions of a key only grow), sub
//! ```

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::ops::Bound;

use prost::encoding::{decode_varint, encode_varint};

use super::revision::Revision;
use crate::prefetch::prefetch;

/// Longest LEB128 encoding of a u64.
const VARINT_BYTES_MAX: usize = 10;

/// What a key looked like at some revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyAt {
    pub modified: Revision,
    pub created: i64,
    pub version: i64,
}

/// A range walk asks for the entry this many keys ahead of the one it reads:
/// each entry is an allocation of its own, a cache miss in a large index.
const ENTRIES_PREFETCHED_AHEAD: usize = 8;
/// `visit_range_looking_ahead` shows a key to `ahead` this many keys before
/// `visit` gets it (fewer than `ENTRIES_PREFETCHED_AHEAD`: its entry has been
/// asked for by then).
const KEYS_SHOWN_AHEAD: usize = 4;

/// A history that reaches this many revisions moves out of its packed entry
/// (see `KeyIndex::long`).
const PACKED_REVISIONS_MAX: usize = 16;

/// User key -> history.
#[derive(Debug)]
pub struct KeyIndex {
    keys: BTreeSet<Entry>,
    /// Histories of PACKED_REVISIONS_MAX revisions or more, by key; their
    /// entry in `keys` holds a generation count of 0. A put to a packed entry
    /// copies it, so a key written over and over without compaction made
    /// every put, and the rebuild at open, quadratic in its history (a
    /// follower installing snapshots of a few such keys never caught up:
    /// docs/benchmarks.md). Here a put appends in place. Few keys get here.
    long: HashMap<Box<[u8]>, Vec<LongGeneration>>,
    packed_revisions_max: usize,
    /// Keys whose newest generation is open (etcd's `keysGauge`): a put
    /// that opens a generation adds one, a tombstone takes one.
    live: usize,
}

impl Default for KeyIndex {
    fn default() -> KeyIndex {
        KeyIndex {
            keys: BTreeSet::new(),
            long: HashMap::new(),
            packed_revisions_max: PACKED_REVISIONS_MAX,
            live: 0,
        }
    }
}

impl KeyIndex {
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Keys that exist now (not deleted).
    pub fn live(&self) -> usize {
        self.live
    }

    /// The key's newest live state, if it exists now.
    pub fn latest(&self, key: &[u8]) -> Option<KeyAt> {
        let entry = self.keys.get(key)?;
        if entry.is_long() {
            return long_latest(&self.long[key]);
        }
        let live = entry.generations().last().filter(|g| !g.closed)?;
        Some(KeyAt {
            modified: live.newest,
            created: live.created,
            version: live.changes,
        })
    }

    /// The key as of `revision`.
    pub fn at(&self, key: &[u8], revision: i64) -> Option<KeyAt> {
        self.entry_at(self.keys.get(key)?, revision)
    }

    fn entry_at(&self, entry: &Entry, revision: i64) -> Option<KeyAt> {
        if entry.is_long() {
            long_at(&self.long[entry.key()], revision)
        } else {
            entry.at(revision)
        }
    }

    /// Visits, in key order, every key in `[start, end)` that exists at `revision`.
    pub fn visit_range(
        &self,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        revision: i64,
        mut visit: impl FnMut(&[u8], KeyAt) -> bool,
    ) {
        let no_look = |_| None::<()>;
        self.visit_range_looking_ahead(start, end, revision, 0, no_look, |key, at, _| visit(key, at));
    }

    /// As `visit_range`, and shows `ahead` each of the first `shown_max`
    /// keys up to `KEYS_SHOWN_AHEAD` keys before `visit` gets it, with what
    /// `ahead` made of it (None for the keys after those): time for what
    /// `visit` will read of the key to be asked for.
    pub fn visit_range_looking_ahead<H>(
        &self,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        revision: i64,
        mut shown_max: usize,
        mut ahead: impl FnMut(KeyAt) -> Option<H>,
        mut visit: impl FnMut(&[u8], KeyAt, Option<H>) -> bool,
    ) {
        let mut fetched = self.keys.range::<[u8], _>((start, end));
        for entry in fetched.by_ref().take(ENTRIES_PREFETCHED_AHEAD) {
            prefetch(&entry.0);
        }
        let mut entries = self.keys.range::<[u8], _>((start, end));
        let mut next_entry = || {
            let entry = entries.next()?;
            if let Some(next) = fetched.next() {
                prefetch(&next.0);
            }
            Some(entry)
        };
        let mut shown = VecDeque::with_capacity(KEYS_SHOWN_AHEAD + 1);
        loop {
            while shown_max > 0 && shown.len() <= KEYS_SHOWN_AHEAD {
                let Some(entry) = next_entry() else {
                    break;
                };
                if let Some(at) = self.entry_at(entry, revision) {
                    shown_max -= 1;
                    shown.push_back((entry, at, ahead(at)));
                }
            }
            let Some((entry, at, made)) = shown.pop_front() else {
                break;
            };
            if !visit(entry.key(), at, made) {
                return;
            }
        }
        // The keys after the first `shown_max` (or all of them), as they come.
        while let Some(entry) = next_entry() {
            if let Some(at) = self.entry_at(entry, revision) {
                if !visit(entry.key(), at, None) {
                    return;
                }
            }
        }
    }

    /// Records a put at `revision`. `created`/`version` come from the stored value
    /// when the index is rebuilt (earlier revisions may be compacted away).
    pub fn put(&mut self, key: &[u8], revision: Revision, created: i64, version: i64) {
        // One descent to find the entry and one to replace it (each misses
        // the cache at every level of a large index); long histories, rare,
        // take their own path.
        let entry = self.keys.get(key);
        if entry.is_some_and(|entry| self.goes_long(entry)) {
            if long_put(self.long_history(key), revision, created, version) {
                self.live += 1;
            }
            return;
        }
        let updated = match entry {
            None => {
                self.live += 1;
                Entry::build(key, |out| {
                    write(1, out);
                    write_generation(out, created, version, false, 1);
                    write_revision(out, 0, revision);
                })
            }
            Some(entry) => {
                let last = entry.generations().last().expect("entries hold a generation");
                assert!(revision > last.newest, "revisions of a key only grow");
                if last.closed {
                    self.live += 1;
                    entry.with_generation(created, version, revision)
                } else {
                    assert_eq!(version, last.changes + 1, "a put bumps the version by one");
                    entry.with_newest(&last, revision, false)
                }
            }
        };
        self.keys.replace(updated);
    }

    /// Records a deletion at `revision`; the key must exist.
    pub fn tombstone(&mut self, key: &[u8], revision: Revision) {
        let entry = self.keys.get(key).expect("only live keys are deleted");
        self.live -= 1;
        if self.goes_long(entry) {
            long_tombstone(self.long_history(key), revision);
            return;
        }
        let live = entry
            .generations()
            .last()
            .filter(|g| !g.closed)
            .expect("only live keys are deleted");
        assert!(revision > live.newest, "revisions of a key only grow");
        let updated = entry.with_newest(&live, revision, true);
        self.keys.replace(updated);
    }

    /// Whether `entry`'s history is, or is due to be, in `long`.
    fn goes_long(&self, entry: &Entry) -> bool {
        entry.is_long() || entry.generations().map(|g| g.count).sum::<usize>() >= self.packed_revisions_max
    }

    /// `key`'s history in `long` (its entry `goes_long`), moved out of its
    /// packed entry first if it is still there.
    fn long_history(&mut self, key: &[u8]) -> &mut Vec<LongGeneration> {
        let entry = self.keys.get(key).expect("only indexed keys go long");
        if !entry.is_long() {
            let generations = entry.generations().map(|g| g.to_long()).collect();
            assert!(self.long.insert(key.into(), generations).is_none());
            self.keys.replace(Entry::build(key, |out| write(0, out)));
        }
        self.long.get_mut(key).expect("a long history is in `long`")
    }

    /// Rebuilding from a tombstone of a key whose earlier revisions are all
    /// compacted away: nothing is known to delete, so nothing is recorded.
    pub fn has_live(&self, key: &[u8]) -> bool {
        self.latest(key).is_some()
    }

    /// One bounded step of compacting every key at `revision` (etcd's
    /// keyIndex.compact): keeps each key's newest revision at or below it
    /// unless that is a tombstone, and everything above it. Compacts up to
    /// `max_keys` keys in key order after `after` (None: from the first), adds
    /// the revisions no longer needed to `removed`, and returns the last key
    /// it compacted, where the next step goes on; None once every key is done.
    ///
    /// Steps may interleave with puts and tombstones: those add revisions
    /// above `revision`, which compaction keeps, so a key compacted before or
    /// after them ends the same. Reads at `revision` or later get the same
    /// answers from a compacted key as from an uncompacted one.
    pub fn compact_keys(
        &mut self,
        revision: i64,
        after: Option<&[u8]>,
        max_keys: usize,
        removed: &mut impl Extend<Revision>,
    ) -> Option<Vec<u8>> {
        assert!(max_keys > 0);
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut visited = 0;
        let mut last_key = None;
        let mut changed = Vec::new();
        for entry in self.keys.range::<[u8], _>((from, Bound::Unbounded)).take(max_keys) {
            visited += 1;
            last_key = Some(entry.key());
            if entry.is_long() {
                let generations = self.long.get_mut(entry.key()).expect("long entries have a history");
                if long_compact(generations, revision, removed) {
                    changed.push(Compacted::Gone(entry.key().to_vec()));
                }
                continue;
            }
            match entry.compacted(revision, removed) {
                Compacted::Unchanged => {}
                other => changed.push(other),
            }
        }
        let next = (visited == max_keys).then(|| last_key.expect("visited a key").to_vec());
        for change in changed {
            match change {
                Compacted::Unchanged => unreachable!("only changes are kept"),
                Compacted::Gone(key) => {
                    assert!(self.keys.remove(&key[..]));
                    self.long.remove(&key[..]);
                }
                Compacted::Replaced(entry) => {
                    assert!(self.keys.replace(entry).is_some());
                }
            }
        }
        next
    }
}

/// What compaction does to one key's entry.
enum Compacted {
    Unchanged,
    /// Nothing of the key is left: every life ended at or below the point.
    Gone(Vec<u8>),
    Replaced(Entry),
}

/// One key and its history, encoded as the module comment says; ordered and
/// looked up by the key alone.
#[derive(Debug)]
struct Entry(Box<[u8]>);

impl Entry {
    /// `key`, then the history `write_history` appends.
    fn build(key: &[u8], write_history: impl FnOnce(&mut Vec<u8>)) -> Entry {
        let mut bytes = Vec::with_capacity(VARINT_BYTES_MAX + key.len() + 4 * VARINT_BYTES_MAX);
        encode_varint(key.len() as u64, &mut bytes);
        bytes.extend_from_slice(key);
        write_history(&mut bytes);
        Entry(bytes.into_boxed_slice())
    }

    fn key(&self) -> &[u8] {
        let (start, len) = self.key_bounds();
        &self.0[start..start + len]
    }

    /// The encoded history, after the key.
    fn history(&self) -> &[u8] {
        let (start, len) = self.key_bounds();
        &self.0[start + len..]
    }

    /// Where the key starts and its length. Every comparison in the index's
    /// B-tree asks: keys under 128 bytes (a one-byte length) skip the varint
    /// decoder.
    fn key_bounds(&self) -> (usize, usize) {
        match self.0[0] {
            len @ 0..0x80 => (1, len as usize),
            _ => {
                let mut rest = &self.0[..];
                let len = read(&mut rest) as usize;
                (self.0.len() - rest.len(), len)
            }
        }
    }

    /// Whether the history lives in `KeyIndex::long` (generation count 0).
    fn is_long(&self) -> bool {
        self.history()[0] == 0
    }

    /// The generations, oldest first (not for a long entry).
    fn generations(&self) -> impl Iterator<Item = GenerationView<'_>> {
        let history = self.history();
        let mut rest = history;
        let count = read(&mut rest);
        assert!(count >= 1, "entries hold a generation");
        (0..count).map(move |_| {
            let offset = history.len() - rest.len();
            let header = read_generation(&mut rest);
            let count = header.count;
            let encoded = rest;
            let mut revisions = Revisions::new(encoded, count);
            let newest = revisions.by_ref().last().expect("count >= 1");
            rest = revisions.rest;
            GenerationView {
                offset,
                created: header.created,
                changes: header.changes,
                closed: header.closed,
                count,
                revisions: &encoded[..encoded.len() - rest.len()],
                newest,
            }
        })
    }

    /// One pass over the history, each revision decoded once, stopping at the
    /// first revision above `revision` (every later one is above it too: a
    /// list at the current revision reads every key's whole history).
    fn at(&self, revision: i64) -> Option<KeyAt> {
        let mut rest = self.history();
        let generations = read(&mut rest);
        assert!(generations >= 1, "entries hold a generation");
        // The newest revision at or below `revision` so far: it, whether it
        // is its generation's tombstone, and the key as of it.
        let mut found: Option<(bool, KeyAt)> = None;
        'history: for _ in 0..generations {
            let header = read_generation(&mut rest);
            let count = header.count;
            let mut revisions = Revisions::new(rest, count);
            for index in 0..count {
                let modified = revisions.next().expect("a generation holds `count` revisions");
                if modified.main > revision {
                    break 'history;
                }
                let at = KeyAt {
                    modified,
                    created: header.created,
                    version: header.changes - (count - 1 - index) as i64,
                };
                found = Some((header.closed && index == count - 1, at));
            }
            rest = revisions.rest;
        }
        found.and_then(|(tombstone, at)| (!tombstone).then_some(at))
    }

    /// This entry with `revision` added to its last generation `last` (a put,
    /// or with `closes` the tombstone).
    fn with_newest(&self, last: &GenerationView<'_>, revision: Revision, closes: bool) -> Entry {
        assert!(!last.closed && revision > last.newest);
        let history = self.history();
        Entry::build(self.key(), |out| {
            out.extend_from_slice(&history[..last.offset]);
            write_generation(out, last.created, last.changes + 1, closes, last.count + 1);
            out.extend_from_slice(last.revisions);
            write_revision(out, last.newest.main, revision);
        })
    }

    /// This entry with a new generation starting at `revision`.
    fn with_generation(&self, created: i64, version: i64, revision: Revision) -> Entry {
        let mut generations = self.history();
        let count = read(&mut generations);
        Entry::build(self.key(), |out| {
            write(count + 1, out);
            out.extend_from_slice(generations);
            write_generation(out, created, version, false, 1);
            write_revision(out, 0, revision);
        })
    }

    /// The entry compacted at `revision` (see `KeyIndex::compact_keys`),
    /// adding the revisions it drops to `removed`.
    fn compacted(&self, revision: i64, removed: &mut impl Extend<Revision>) -> Compacted {
        // How many of a generation's oldest revisions go.
        let dropped = |g: &GenerationView<'_>| {
            let at_or_below = Revisions::new(g.revisions, g.count)
                .take_while(|r| r.main <= revision)
                .count();
            if g.closed && at_or_below == g.count {
                g.count // deleted at or below the point: the whole life goes
            } else {
                at_or_below.saturating_sub(1) // the newest at or below stays
            }
        };
        // Most keys have nothing to drop: find out without allocating.
        if self.generations().all(|g| dropped(&g) == 0) {
            return Compacted::Unchanged;
        }
        let kept = self.generations().filter(|g| dropped(g) < g.count).count();
        let mut survivors = Vec::with_capacity(kept);
        for g in self.generations() {
            let mut revisions = Revisions::new(g.revisions, g.count);
            let drop = dropped(&g);
            removed.extend(revisions.by_ref().take(drop));
            if drop < g.count {
                survivors.push((g, revisions));
            }
        }
        if survivors.is_empty() {
            return Compacted::Gone(self.key().to_vec());
        }
        Compacted::Replaced(Entry::build(self.key(), |out| {
            write(survivors.len() as u64, out);
            for (g, revisions) in survivors {
                write_generation(out, g.created, g.changes, g.closed, revisions.left);
                let mut previous_main = 0;
                for r in revisions {
                    write_revision(out, previous_main, r);
                    previous_main = r.main;
                }
            }
        }))
    }
}

impl Borrow<[u8]> for Entry {
    fn borrow(&self) -> &[u8] {
        self.key()
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Entry) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Entry) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Entry) -> Ordering {
        self.key().cmp(other.key())
    }
}

/// A generation as stored: its header decoded, its revisions still encoded.
struct GenerationView<'a> {
    /// Where it starts in the entry's history.
    offset: usize,
    created: i64,
    changes: i64,
    closed: bool,
    count: usize,
    /// The encoded revisions (`count` of them).
    revisions: &'a [u8],
    newest: Revision,
}

impl GenerationView<'_> {
    fn to_long(&self) -> LongGeneration {
        LongGeneration {
            created: self.created,
            changes: self.changes,
            closed: self.closed,
            revisions: Revisions::new(self.revisions, self.count).collect(),
        }
    }
}

/// A generation of a long history: the same fields, unpacked.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LongGeneration {
    created: i64,
    changes: i64,
    closed: bool,
    /// Oldest first; never empty.
    revisions: Vec<Revision>,
}

fn long_latest(generations: &[LongGeneration]) -> Option<KeyAt> {
    let live = generations.last().filter(|g| !g.closed)?;
    Some(KeyAt {
        modified: *live.revisions.last().expect("generations hold revisions"),
        created: live.created,
        version: live.changes,
    })
}

fn long_at(generations: &[LongGeneration], revision: i64) -> Option<KeyAt> {
    let generation = generations.iter().rev().find(|g| g.revisions[0].main <= revision)?;
    let index = generation.revisions.partition_point(|r| r.main <= revision) - 1;
    let count = generation.revisions.len();
    if generation.closed && index == count - 1 {
        return None; // deleted at or before `revision`
    }
    Some(KeyAt {
        modified: generation.revisions[index],
        created: generation.created,
        version: generation.changes - (count - 1 - index) as i64,
    })
}

/// Appends a put to a long history; true if it opened a generation.
fn long_put(generations: &mut Vec<LongGeneration>, revision: Revision, created: i64, version: i64) -> bool {
    let last = generations.last_mut().expect("long histories hold a generation");
    assert!(revision > *last.revisions.last().expect("generations hold revisions"));
    if last.closed {
        generations.push(LongGeneration {
            created,
            changes: version,
            closed: false,
            revisions: vec![revision],
        });
        return true;
    }
    assert_eq!(version, last.changes + 1, "a put bumps the version by one");
    last.revisions.push(revision);
    last.changes = version;
    false
}

fn long_tombstone(generations: &mut [LongGeneration], revision: Revision) {
    let live = generations
        .last_mut()
        .filter(|g| !g.closed)
        .expect("only live keys are deleted");
    assert!(revision > *live.revisions.last().expect("generations hold revisions"));
    live.revisions.push(revision);
    live.changes += 1;
    live.closed = true;
}

/// `KeyIndex::compact_keys` for a long history; true if nothing is left.
fn long_compact(generations: &mut Vec<LongGeneration>, revision: i64, removed: &mut impl Extend<Revision>) -> bool {
    generations.retain_mut(|g| {
        let at_or_below = g.revisions.partition_point(|r| r.main <= revision);
        if at_or_below == 0 {
            return true;
        }
        if g.closed && at_or_below == g.revisions.len() {
            removed.extend(g.revisions.iter().copied());
            return false;
        }
        removed.extend(g.revisions.drain(..at_or_below - 1));
        true
    });
    generations.is_empty()
}

/// Decodes a generation's revisions, oldest first.
struct Revisions<'a> {
    rest: &'a [u8],
    left: usize,
    previous_main: i64,
}

impl<'a> Revisions<'a> {
    fn new(encoded: &'a [u8], count: usize) -> Revisions<'a> {
        Revisions {
            rest: encoded,
            left: count,
            previous_main: 0,
        }
    }
}

impl Iterator for Revisions<'_> {
    type Item = Revision;

    fn next(&mut self) -> Option<Revision> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let main = self.previous_main + read_i64(&mut self.rest);
        let sub = read_i64(&mut self.rest);
        self.previous_main = main;
        Some(Revision::new(main, sub))
    }
}

/// A generation's header, as `write_generation` writes it.
struct GenerationHeader {
    created: i64,
    changes: i64,
    closed: bool,
    count: usize,
}

fn read_generation(rest: &mut &[u8]) -> GenerationHeader {
    let created = read_i64(rest);
    let changes = read_i64(rest);
    let closed = match read(rest) {
        0 => false,
        1 => true,
        other => panic!("key index: closed flag {other}"),
    };
    let count = read(rest) as usize;
    assert!(count >= 1 && count as i64 <= changes, "a generation holds revisions");
    GenerationHeader {
        created,
        changes,
        closed,
        count,
    }
}

fn write_generation(out: &mut Vec<u8>, created: i64, changes: i64, closed: bool, count: usize) {
    assert!(count >= 1 && count as i64 <= changes);
    write_i64(created, out);
    write_i64(changes, out);
    write(u64::from(closed), out);
    write(count as u64, out);
}

/// `revision`, as a delta from the generation's previous main revision (0
/// for its first).
fn write_revision(out: &mut Vec<u8>, previous_main: i64, revision: Revision) {
    assert!(revision.main >= previous_main, "revisions of a key only grow");
    write_i64(revision.main - previous_main, out);
    write_i64(revision.sub, out);
}

fn write(value: u64, out: &mut Vec<u8>) {
    encode_varint(value, out);
}

fn write_i64(value: i64, out: &mut Vec<u8>) {
    write(
        u64::try_from(value).expect("revisions and versions are never negative"),
        out,
    );
}

/// Entries are only ever written by this module: a bad one is a bug.
fn read(rest: &mut &[u8]) -> u64 {
    decode_varint(rest).expect("key index entries are well formed")
}

fn read_i64(rest: &mut &[u8]) -> i64 {
    i64::try_from(read(rest)).expect("key index entries are well formed")
}
#[cfg(test)]
mod tests {
    use super::*;

    fn rev(main: i64) -> Revision {
        Revision::new(main, 0)
    }

    #[test]
    fn a_walk_shows_each_of_its_first_keys_ahead_and_hands_back_what_was_made_of_it() {
        let mut index = KeyIndex::default();
        for n in 1..=40i64 {
            index.put(format!("k{n:02}").as_bytes(), rev(n), n, 1);
        }
        // Deleted before the walk's revision: not visited, not shown.
        index.tombstone(b"k05", rev(41));
        let walk = |shown_max: usize, stop_after: usize| {
            let (mut shown, mut visited) = (Vec::new(), Vec::new());
            let ahead = |at: KeyAt| {
                shown.push(at.modified.main);
                Some(at.modified.main * 100)
            };
            index.visit_range_looking_ahead(
                Bound::Unbounded,
                Bound::Unbounded,
                41,
                shown_max,
                ahead,
                |_, at, made| {
                    visited.push((at.modified.main, made));
                    visited.len() < stop_after
                },
            );
            (shown, visited)
        };
        let (shown, visited) = walk(10, usize::MAX);
        let expected: Vec<i64> = (1..=40).filter(|n| *n != 5).collect();
        assert_eq!(shown, expected[..10], "the first ten keys that exist");
        assert_eq!(visited.iter().map(|(main, _)| *main).collect::<Vec<_>>(), expected);
        assert!(visited[..10].iter().all(|(main, made)| *made == Some(main * 100)));
        assert!(visited[10..].iter().all(|(_, made)| made.is_none()));
        let (shown, visited) = walk(usize::MAX, 3);
        assert_eq!(visited.len(), 3, "stops when told");
        assert!(
            shown.len() <= 3 + KEYS_SHOWN_AHEAD,
            "looks a few keys ahead, no further"
        );
        assert_eq!(walk(0, usize::MAX).0, Vec::<i64>::new());
    }

    /// Compacts every key at `revision`, `max_keys` keys a step; what goes, sorted.
    fn compact_all(index: &mut KeyIndex, revision: i64, max_keys: usize) -> Vec<Revision> {
        let mut removed = Vec::new();
        let mut after = None;
        loop {
            after = index.compact_keys(revision, after.as_deref(), max_keys, &mut removed);
            if after.is_none() {
                removed.sort();
                return removed;
            }
        }
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
        let removed = compact_all(&mut index, 5, 1);
        assert_eq!(removed, vec![rev(2), rev(4), rev(5)]);
        assert_eq!(index.at(b"a", 5).unwrap().modified, rev(3));
        assert_eq!(index.at(b"a", 5).unwrap().version, 2, "versions survive compaction");
        assert_eq!(index.latest(b"a").unwrap().version, 3);
        assert_eq!(index.len(), 1, "a key deleted below the point is gone");
    }

    #[test]
    fn a_key_written_over_and_over_moves_out_of_its_packed_entry() {
        let mut index = KeyIndex::default();
        for version in 1..=PACKED_REVISIONS_MAX as i64 + 1 {
            index.put(b"hot", rev(version + 1), 2, version);
        }
        assert!(index.long.contains_key(&b"hot"[..]), "appends go in place now");
        assert_eq!(index.latest(b"hot").unwrap().version, PACKED_REVISIONS_MAX as i64 + 1);
        assert_eq!(index.at(b"hot", 3).unwrap().version, 2);
        let removed = compact_all(&mut index, i64::MAX / 2, 1);
        assert_eq!(removed.len(), PACKED_REVISIONS_MAX, "all but the newest go");
        index.tombstone(b"hot", rev(1000));
        compact_all(&mut index, 1000, 1);
        assert!(
            index.long.is_empty() && index.len() == 0,
            "a deleted key goes from both"
        );
    }

    #[test]
    fn a_key_with_one_revision_fits_the_smallest_heap_chunk() {
        let mut index = KeyIndex::default();
        index.put(b"00999999", Revision::new(1_000_001, 0), 1_000_001, 1);
        let entry = index.keys.get(&b"00999999"[..]).unwrap();
        // glibc's smallest chunk holds 24 bytes.
        assert!(entry.0.len() <= 24, "{} bytes", entry.0.len());
    }

    // The model keeps each history unpacked (`LongGeneration`, read with
    // `long_at`: the index as first written, before packing).

    #[derive(Debug, Clone)]
    enum Op {
        /// Put key, with a sub revision.
        Put(usize, i64),
        /// Delete the key if it is live.
        Delete(usize),
        /// Compact this far back from the current revision, so many keys a step.
        Compact(i64, usize),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (0..5usize, 0..3i64).prop_map(|(k, sub)| Op::Put(k, sub)),
            2 => (0..5usize).prop_map(Op::Delete),
            1 => (0..6i64, 1..4usize).prop_map(|(back, step)| Op::Compact(back, step)),
        ]
    }

    proptest::proptest! {
        #[test]
        fn the_encoded_index_answers_as_the_model(
            ops in proptest::collection::vec(op(), 1..80),
            packed_revisions_max in 1usize..20,
        ) {
            // The last key's length takes a two-byte varint.
            const KEYS: [&[u8]; 5] = [b"a", b"b", b"bb", b"longer-key-0001", &[b'k'; 130]];
            // Small maxima move histories to `long` early; large ones keep them packed.
            let mut index = KeyIndex { packed_revisions_max, ..KeyIndex::default() };
            let mut model: std::collections::BTreeMap<&[u8], Vec<LongGeneration>> = Default::default();
            let mut current = 1i64;
            let mut compacted = 0i64;
            for op in ops {
                match op {
                    Op::Put(k, sub) => {
                        current += 1;
                        let revision = Revision::new(current, sub);
                        let generations = model.entry(KEYS[k]).or_default();
                        let (created, version) = match generations.last_mut().filter(|g| !g.closed) {
                            Some(live) => {
                                live.changes += 1;
                                live.revisions.push(revision);
                                (live.created, live.changes)
                            }
                            None => {
                                generations.push(LongGeneration { created: current, changes: 1, revisions: vec![revision], closed: false });
                                (current, 1)
                            }
                        };
                        index.put(KEYS[k], revision, created, version);
                    }
                    Op::Delete(k) => {
                        let Some(live) = model.get_mut(KEYS[k]).and_then(|g| g.last_mut()).filter(|g| !g.closed) else {
                            proptest::prop_assert!(!index.has_live(KEYS[k]));
                            continue;
                        };
                        current += 1;
                        live.changes += 1;
                        live.revisions.push(Revision::new(current, 0));
                        live.closed = true;
                        index.tombstone(KEYS[k], Revision::new(current, 0));
                    }
                    Op::Compact(back, step) => {
                        let point = (current - back).max(compacted);
                        compacted = point;
                        let mut expected = Vec::new();
                        for generations in model.values_mut() {
                            generations.retain_mut(|g| {
                                let kept_from = g.revisions.partition_point(|r| r.main <= point);
                                if kept_from == 0 {
                                    return true;
                                }
                                if g.closed && kept_from == g.revisions.len() {
                                    expected.extend_from_slice(&g.revisions);
                                    return false;
                                }
                                expected.extend(g.revisions.drain(..kept_from - 1));
                                true
                            });
                        }
                        model.retain(|_, g| !g.is_empty());
                        let removed = compact_all(&mut index, point, step);
                        expected.sort();
                        proptest::prop_assert_eq!(removed, expected);
                    }
                }
                proptest::prop_assert_eq!(index.len(), model.len());
                let live = model.values().filter(|g| g.last().is_some_and(|g| !g.closed)).count();
                proptest::prop_assert_eq!(index.live(), live);
                for key in KEYS {
                    let generations = model.get(key).map(Vec::as_slice).unwrap_or_default();
                    for revision in compacted..=current + 1 {
                        proptest::prop_assert_eq!(index.at(key, revision), long_at(generations, revision));
                    }
                    proptest::prop_assert_eq!(index.latest(key), long_at(generations, i64::MAX));
                }
                let mut visited = Vec::new();
                index.visit_range(Bound::Included(&b"b"[..]), Bound::Unbounded, current, |key, at| {
                    visited.push((key.to_vec(), at));
                    true
                });
                let expected: Vec<_> = model
                    .iter()
                    .filter(|(key, _)| **key >= &b"b"[..])
                    .filter_map(|(key, g)| long_at(g, current).map(|at| (key.to_vec(), at)))
                    .collect();
                proptest::prop_assert_eq!(visited, expected);
            }
        }
    }
}
