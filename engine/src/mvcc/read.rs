//! Reads: Range at any revision since the compaction point, whole or in
//! bounded steps (see `cursor`), decoded or as stored. Every record the key
//! index points a reader at is checked to be a put at that revision.

use std::borrow::Cow;
use std::cell::RefCell;
use std::ops::Bound;

use ringkv_proto::mvccpb::KeyValue;

use crate::btree::LeafOf;

use super::cursor::{CursorEnd, RangeCursor, ReadHold};
use super::key_index::KeyAt;
use super::range_counts::{RangeCounts, RunCollector};
use super::record::{decode_record, serve_record};
use super::revision::Revision;
use super::{KeySpan, Mvcc, MvccError, RangeEnd, RangeOptions, RangeResult, StepBudget};

impl Mvcc {
    /// Number of keys that exist now or in retained history.
    pub fn key_count(&self) -> usize {
        self.index.len()
    }

    /// Number of keys that exist now (etcd's `etcd_debugging_mvcc_keys_total`).
    pub fn live_key_count(&self) -> usize {
        self.index.live()
    }

    pub fn range(&self, span: KeySpan<'_>, options: RangeOptions) -> Result<RangeResult, MvccError> {
        self.range_at_view(span, options, self.current_revision, Some(&self.range_counts))
    }

    /// `range` without decoding: each key-value, in key order, is handed to
    /// `each` as its `mvccpb.KeyValue` encoding, borrowed from the page where
    /// it can be (see `record::serve_record`). `RangeResult::kvs` is empty.
    pub fn range_encoded(
        &self,
        span: KeySpan<'_>,
        options: RangeOptions,
        each: impl FnMut(&[u8]),
    ) -> Result<RangeResult, MvccError> {
        let mut cursor = self.begin_range(span, options)?;
        let whole = StepBudget {
            keys: usize::MAX,
            bytes: usize::MAX,
        };
        if !cursor.is_done() {
            self.range_step(&mut cursor, whole, each)?;
        }
        Ok(self.finish_range(cursor))
    }

    /// Starts `range_encoded` as a read in steps (`range_step`) at the
    /// revision `options` asks for, as of now: writes and compactions may run
    /// between its steps without changing what it returns.
    pub fn begin_range(&self, span: KeySpan<'_>, options: RangeOptions) -> Result<RangeCursor, MvccError> {
        let view = self.current_revision;
        let revision = if options.rev <= 0 { view } else { options.rev };
        if revision > view {
            return Err(MvccError::FutureRev);
        }
        if revision < self.compact_revision {
            return Err(MvccError::Compacted);
        }
        let (end, empty) = match span.end {
            RangeEnd::Key => (CursorEnd::Key, false),
            RangeEnd::Until(end) => (CursorEnd::Until(end.to_vec()), span.key >= end),
            RangeEnd::ToEnd => (CursorEnd::ToEnd, false),
        };
        // As `select`: a limited page of a span may know its count from the
        // page before, and leaves a run for the next.
        let counted = !empty && end != CursorEnd::Key && options.limit > 0 && !options.count_only;
        let end_key = match &end {
            CursorEnd::Until(end) => Some(&end[..]),
            _ => None,
        };
        let known = counted
            .then(|| self.range_counts.borrow_mut().take(span.key, end_key, revision))
            .flatten();
        Ok(RangeCursor {
            start: span.key.to_vec(),
            end,
            revision,
            view,
            limit: options.limit,
            count_only: options.count_only,
            after: None,
            visited: 0,
            handed_out: 0,
            known,
            run: counted.then(|| RunCollector::new(options.limit)),
            done: empty,
            hold: ReadHold::new(&self.read_holds, revision),
        })
    }

    /// The next step of `cursor`'s read: visits keys in order until the read
    /// is done or `budget` is spent, handing each key-value it returns to
    /// `each` as `range_encoded` does.
    pub fn range_step(
        &self,
        cursor: &mut RangeCursor,
        budget: StepBudget,
        mut each: impl FnMut(&[u8]),
    ) -> Result<(), MvccError> {
        assert!(!cursor.done, "a finished read takes no more steps");
        assert!(budget.keys > 0 && budget.bytes > 0);
        if !cursor.hold.is_in(&self.read_holds) {
            // A snapshot replaced the store. It holds the read's revision
            // unless it was compacted past it.
            if cursor.revision < self.compact_revision {
                return Err(MvccError::Compacted);
            }
            cursor.hold = ReadHold::new(&self.read_holds, cursor.revision);
        }
        if cursor.end == CursorEnd::Key {
            if let Some(at) = self.index.at(&cursor.start, cursor.revision) {
                cursor.visited = 1;
                if !cursor.count_only {
                    self.hand_out(at, None, &mut each)?;
                    cursor.handed_out = 1;
                }
            }
            cursor.done = true;
            return Ok(());
        }
        let from = match &cursor.after {
            Some(after) => Bound::Excluded(&after[..]),
            None => Bound::Included(&cursor.start[..]),
        };
        let end = match &cursor.end {
            CursorEnd::Until(end) => Bound::Excluded(&end[..]),
            _ => Bound::Unbounded,
        };
        let (mut keys, mut bytes) = (0usize, 0usize);
        let mut walked_on = true;
        let mut failed = None;
        let mut last = None;
        let (revision, limit, count_only, known) = (cursor.revision, cursor.limit, cursor.count_only, cursor.known);
        let (visited, handed_out, run) = (&mut cursor.visited, &mut cursor.handed_out, &mut cursor.run);
        // The records handed out lie at scattered revisions, each lookup
        // waiting for its leaf: the leaves of the next few are found (and
        // asked for) while this one is read.
        let to_hand_out = match (count_only, limit) {
            (true, _) => 0,
            (false, 0) => usize::MAX,
            (false, limit) => limit.saturating_sub(*handed_out),
        };
        let leaves = (to_hand_out > 0).then(|| self.tree.leaf_finder());
        let find = |at: KeyAt| leaves.as_ref()?.find(&self.keys.key(at.modified));
        self.index
            .visit_range_looking_ahead(from, end, revision, to_hand_out, find, |key, at, leaf| {
                let position = *visited;
                *visited += 1;
                keys += 1;
                if !count_only && (limit == 0 || *handed_out < limit) {
                    let handed = self.hand_out(at, leaf, |body| {
                        bytes += body.len();
                        each(body);
                    });
                    if let Err(error) = handed {
                        failed = Some(error);
                        return false;
                    }
                    *handed_out += 1;
                }
                if let Some(run) = run.as_mut() {
                    run.visited(position, key);
                }
                // With the count known, walk only as far as the run needs.
                if known.is_some() && run.as_ref().is_some_and(RunCollector::complete) {
                    return false;
                }
                if keys >= budget.keys || bytes >= budget.bytes {
                    walked_on = false;
                    last = Some(key.to_vec());
                    return false;
                }
                true
            });
        if let Some(error) = failed {
            return Err(error);
        }
        match last {
            Some(key) if !walked_on => cursor.after = Some(key),
            _ => cursor.done = true,
        }
        Ok(())
    }

    /// The count and reported revision of a finished read (its key-values
    /// went to `each`); leaves the run a next page can count from.
    pub fn finish_range(&self, cursor: RangeCursor) -> RangeResult {
        assert!(cursor.done, "the read has visited every key it needs");
        let mut count = cursor.visited;
        if let Some(known) = cursor.known {
            assert!(count <= known, "{count} keys visited, {known} remembered");
            assert!(
                count == known || cursor.run.as_ref().is_some_and(RunCollector::complete),
                "a walk to the end found {count} keys, {known} remembered"
            );
            count = known;
        }
        if let Some(run) = cursor.run {
            if count > cursor.limit {
                let end = match &cursor.end {
                    CursorEnd::Until(end) => Some(&end[..]),
                    _ => None,
                };
                self.range_counts
                    .borrow_mut()
                    .remember(end, cursor.revision, run, count);
            }
        }
        RangeResult {
            kvs: Vec::new(),
            count,
            rev: cursor.view,
        }
    }

    /// Hands the stored key-value of a live revision to `each`, as stored;
    /// from `leaf`, if its leaf was found ahead.
    fn hand_out(&self, at: KeyAt, leaf: Option<LeafOf>, each: impl FnOnce(&[u8])) -> Result<(), MvccError> {
        let record = self.stored_record(at.modified, leaf)?;
        let served = serve_record(&record)?;
        check_live(at.modified, served.tombstone, served.mod_revision)?;
        each(&served.body);
        Ok(())
    }

    /// Range as seen by a reader whose newest revision is `view`.
    pub(super) fn range_at_view(
        &self,
        span: KeySpan<'_>,
        options: RangeOptions,
        view: i64,
        counts: Option<&RefCell<RangeCounts>>,
    ) -> Result<RangeResult, MvccError> {
        let selected = self.select(span, options, view, counts)?;
        let kvs = selected
            .found
            .iter()
            .map(|at| self.load(at.modified))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RangeResult {
            kvs,
            count: selected.count,
            rev: view,
        })
    }

    /// The keys a range returns, from the key index. With `counts`, a limited
    /// page of a span may take its count from the page before and leaves one
    /// for the next (only for reads at committed revisions: see `range_counts`).
    fn select(
        &self,
        span: KeySpan<'_>,
        options: RangeOptions,
        view: i64,
        counts: Option<&RefCell<RangeCounts>>,
    ) -> Result<Selection, MvccError> {
        let revision = if options.rev <= 0 { view } else { options.rev };
        if revision > view {
            return Err(MvccError::FutureRev);
        }
        if revision < self.compact_revision {
            return Err(MvccError::Compacted);
        }
        let mut found: Vec<KeyAt> = Vec::new();
        let mut count = 0usize;
        match span.end {
            RangeEnd::Key => {
                if let Some(at) = self.index.at(span.key, revision) {
                    count = 1;
                    if !options.count_only {
                        found.push(at);
                    }
                }
            }
            RangeEnd::Until(end) if span.key >= end => {}
            RangeEnd::Until(_) | RangeEnd::ToEnd => {
                let end = match span.end {
                    RangeEnd::Until(end) => Some(end),
                    _ => None,
                };
                let counts = counts.filter(|_| options.limit > 0 && !options.count_only);
                let known = counts.and_then(|counts| counts.borrow_mut().take(span.key, end, revision));
                let mut run = counts.map(|_| RunCollector::new(options.limit));
                let visit = |key: &[u8], at: KeyAt| {
                    let position = count;
                    count += 1;
                    if !options.count_only && (options.limit == 0 || found.len() < options.limit) {
                        found.push(at);
                    }
                    if let Some(run) = &mut run {
                        run.visited(position, key);
                    }
                    // With the count known, walk only as far as the run needs.
                    known.is_none() || !run.as_ref().is_some_and(RunCollector::complete)
                };
                let end_bound = end.map_or(Bound::Unbounded, Bound::Excluded);
                self.index
                    .visit_range(Bound::Included(span.key), end_bound, revision, visit);
                if let Some(known) = known {
                    assert!(count <= known, "{count} keys visited, {known} remembered");
                    assert!(
                        count == known || run.as_ref().is_some_and(RunCollector::complete),
                        "a walk to the end found {count} keys, {known} remembered"
                    );
                    count = known;
                }
                if let (Some(counts), Some(run)) = (counts, run) {
                    if count > options.limit {
                        counts.borrow_mut().remember(end, revision, run, count);
                    }
                }
            }
        }
        Ok(Selection { found, count })
    }

    /// The stored key-value of a live revision.
    fn load(&self, revision: Revision) -> Result<KeyValue, MvccError> {
        let record = self.stored_record(revision, None)?;
        let (tombstone, kv) = decode_record(&record)?;
        check_live(revision, tombstone, kv.mod_revision)?;
        Ok(kv)
    }

    /// The record of a revision the key index holds; looked up from `leaf`,
    /// if its leaf was found ahead.
    fn stored_record(&self, revision: Revision, leaf: Option<LeafOf>) -> Result<Cow<'_, [u8]>, MvccError> {
        let key = self.keys.key(revision);
        let record = match leaf {
            Some(leaf) => self.tree.get_in_leaf(leaf, &key)?,
            None => self.tree.get_in_place(&key)?,
        };
        record.ok_or_else(|| MvccError::corrupt(format!("revision {revision:?} is indexed but not stored")))
    }
}

/// What a range selected from the key index, before any record is read.
struct Selection {
    found: Vec<KeyAt>,
    count: usize,
}

/// A record the key index points a reader at must be a put at that revision.
fn check_live(revision: Revision, tombstone: bool, mod_revision: i64) -> Result<(), MvccError> {
    if tombstone || mod_revision != revision.main {
        return Err(MvccError::corrupt(format!(
            "revision {revision:?} does not hold a live key-value"
        )));
    }
    Ok(())
}
