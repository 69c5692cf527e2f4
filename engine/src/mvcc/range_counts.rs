//! Counts a paginated Range leaves for its next page.
//!
//! A Range reports `count`, the number of keys of its span that exist at its
//! revision, whatever its limit. So every page of a paginated list walked the
//! key index from its start to the span's end: kube-apiserver lists a resource
//! in pages of 500, each page starting just after the last key of the one
//! before and pinned at the first page's revision, and a list of n keys cost
//! n²/1000 key visits (10,000 pods: 21 pages, 110,000 visits where 10,000 do).
//!
//! The keys that exist at a revision no later than the store's current one
//! never change: writes go to later revisions, and a compaction keeps every
//! key's state at each revision from its point on (reads below it fail). So a
//! page that counted its span can leave behind a [`CountedRun`]: a few
//! consecutive keys that exist at its revision, with no key of the span
//! existing between them, and how many keys exist from the first of them to
//! the span's end. A next page that starts within the run knows its count
//! without walking past its own limit.
//!
//! Only `Mvcc::range` uses this, never a read inside a write transaction:
//! that one reads at the revision being written, whose keys still change.

use std::collections::VecDeque;

/// Keys a run holds: the last two a page fetched and the one after them.
/// A client continues after the last key it got; the server fetches one key
/// more than the client's limit to learn whether more follow, so that is the
/// second-to-last key fetched (or the last, for a caller that fetches exactly
/// its limit). Either way the next page starts within the run.
pub const RUN_KEYS: usize = 3;

/// Runs kept at most: one per paginated list in progress (a page takes its
/// run and leaves a new one). Past this the oldest is dropped, which costs
/// its list one full count, nothing else.
const RUNS_MAX: usize = 256;

/// Consecutive keys of a span that exist at a revision.
#[derive(Debug)]
pub struct CountedRun {
    /// The span's end, None for the end of the keyspace.
    end: Option<Box<[u8]>>,
    revision: i64,
    /// Ascending; no key of the span exists at `revision` between two of them.
    keys: Vec<Box<[u8]>>,
    /// Keys of the span existing at `revision` from `keys[0]` on.
    count_from_first: usize,
}

/// Collects the run of one page as its keys are visited in order.
#[derive(Debug)]
pub struct RunCollector {
    /// The visit position (0-based) of the run's first key.
    first_position: usize,
    /// The position of its last key: the first key past the page's limit.
    last_position: usize,
    keys: Vec<Box<[u8]>>,
}

impl RunCollector {
    /// For a page of at most `limit` (>= 1) keys.
    pub fn new(limit: usize) -> RunCollector {
        assert!(limit >= 1, "only a limited page continues");
        RunCollector {
            first_position: (limit + 1).saturating_sub(RUN_KEYS),
            last_position: limit,
            keys: Vec::with_capacity(RUN_KEYS),
        }
    }

    /// The key at visit position `position` exists at the page's revision.
    pub fn visited(&mut self, position: usize, key: &[u8]) {
        if (self.first_position..=self.last_position).contains(&position) {
            assert_eq!(position, self.first_position + self.keys.len(), "keys come in order");
            self.keys.push(key.into());
        }
    }

    /// Whether the page has seen every key its run needs.
    pub fn complete(&self) -> bool {
        self.first_position + self.keys.len() > self.last_position
    }
}

#[derive(Debug, Default)]
pub struct RangeCounts {
    runs: VecDeque<CountedRun>,
}

impl RangeCounts {
    /// The number of keys in `[start, end)` existing at `revision`, if a run
    /// of that span and revision covers `start`. The run is used up: the page
    /// that asks leaves the next one.
    pub fn take(&mut self, start: &[u8], end: Option<&[u8]>, revision: i64) -> Option<usize> {
        let at = self.runs.iter().position(|run| {
            run.revision == revision
                && run.end.as_deref() == end
                && run.keys[0].as_ref() <= start
                && start <= run.keys[run.keys.len() - 1].as_ref()
        })?;
        let run = self.runs.remove(at).expect("position is in range");
        // No key exists between two keys of the run, so the keys from `start`
        // on are those from the first run key at or after it.
        let before = run.keys.iter().take_while(|key| key.as_ref() < start).count();
        assert!(before < run.keys.len() && before < run.count_from_first);
        Some(run.count_from_first - before)
    }

    /// A page of `[.., end)` at `revision` counted `count` keys from its start
    /// and collected `collector`'s run on the way.
    pub fn remember(&mut self, end: Option<&[u8]>, revision: i64, collector: RunCollector, count: usize) {
        assert!(collector.complete(), "a run ends at the first key past the page");
        assert!(count > collector.last_position, "the run's keys were counted");
        assert!(collector.keys.windows(2).all(|pair| pair[0] < pair[1]));
        if self.runs.len() == RUNS_MAX {
            self.runs.pop_front();
        }
        self.runs.push_back(CountedRun {
            end: end.map(Box::from),
            revision,
            keys: collector.keys,
            count_from_first: count - collector.first_position,
        });
    }

    /// Runs held, for tests.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.runs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A page of `limit` over `keys` (all existing), counted in full.
    fn page(counts: &mut RangeCounts, keys: &[&[u8]], limit: usize, end: Option<&[u8]>, revision: i64) {
        let mut collector = RunCollector::new(limit);
        for (position, key) in keys.iter().enumerate() {
            collector.visited(position, key);
        }
        counts.remember(end, revision, collector, keys.len());
    }

    #[test]
    fn a_page_starting_within_the_run_knows_its_count() {
        let keys: [&[u8]; 6] = [b"a", b"b", b"c", b"d", b"e", b"f"];
        let mut counts = RangeCounts::default();
        // Fetched a, b, c (limit 3); the run is b, c, d; 5 keys from b on.
        page(&mut counts, &keys, 3, Some(b"z"), 7);
        assert_eq!(
            counts.take(b"c\0", Some(b"z"), 7),
            Some(3),
            "after the last key fetched: d, e, f"
        );
        page(&mut counts, &keys, 3, Some(b"z"), 7);
        assert_eq!(
            counts.take(b"b\0", Some(b"z"), 7),
            Some(4),
            "after the second-to-last: c, d, e, f"
        );
        page(&mut counts, &keys, 3, Some(b"z"), 7);
        assert_eq!(counts.take(b"b", Some(b"z"), 7), Some(5), "at a run key");
        assert_eq!(counts.len(), 0, "each take uses its run up");
    }

    #[test]
    fn a_run_answers_only_its_own_span_revision_and_keys() {
        let keys: [&[u8]; 6] = [b"a", b"b", b"c", b"d", b"e", b"f"];
        let mut counts = RangeCounts::default();
        page(&mut counts, &keys, 3, None, 7);
        assert_eq!(counts.take(b"c\0", Some(b"z"), 7), None, "another end");
        assert_eq!(counts.take(b"c\0", None, 8), None, "another revision");
        assert_eq!(
            counts.take(b"a\0", None, 7),
            None,
            "before the run: a key may exist there"
        );
        assert_eq!(counts.take(b"d\0", None, 7), None, "after the run");
        assert_eq!(counts.take(b"c\0", None, 7), Some(3));
    }

    #[test]
    fn a_page_of_one_leaves_a_run_of_two() {
        let keys: [&[u8]; 3] = [b"a", b"b", b"c"];
        let mut counts = RangeCounts::default();
        page(&mut counts, &keys, 1, None, 2);
        assert_eq!(counts.take(b"a\0", None, 2), Some(2));
    }

    #[test]
    fn the_oldest_run_goes_first() {
        let keys: [&[u8]; 3] = [b"a", b"b", b"c"];
        let mut counts = RangeCounts::default();
        for revision in 0..=RUNS_MAX as i64 {
            page(&mut counts, &keys, 1, None, revision);
        }
        assert_eq!(counts.len(), RUNS_MAX);
        assert_eq!(counts.take(b"a\0", None, 0), None);
        assert_eq!(counts.take(b"a\0", None, 1), Some(2));
    }
}
