//! A Range read in bounded steps at one revision, so a read of millions of
//! keys never holds its caller (the store core, which also runs raft) for
//! long. See `Mvcc::begin_range`, `range_step` and `finish_range`.
//!
//! Between steps the store goes on: writes add revisions above the read's,
//! which it never sees; a compaction at or below the read's revision keeps
//! every key's state at it. Only the physical removal of a compaction above
//! it could take away what the read still needs, so each cursor holds its
//! revision in the store ([`ReadHold`]) and `Mvcc::compact_step` waits while
//! a hold is below the compaction point. The cursor borrows nothing between
//! steps: each step looks its keys up afresh from the key index and the tree.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use super::range_counts::RunCollector;

/// Revisions that reads in progress still read at, each with its count.
pub type ReadHolds = Rc<RefCell<BTreeMap<i64, usize>>>;

/// One read's hold on its revision, given back when dropped.
#[derive(Debug)]
pub struct ReadHold {
    holds: ReadHolds,
    revision: i64,
}

impl ReadHold {
    pub(super) fn new(holds: &ReadHolds, revision: i64) -> ReadHold {
        *holds.borrow_mut().entry(revision).or_default() += 1;
        ReadHold {
            holds: Rc::clone(holds),
            revision,
        }
    }

    /// True if the hold is in `holds` (the store it was taken in is the one
    /// read now, not one a snapshot replaced).
    pub(super) fn is_in(&self, holds: &ReadHolds) -> bool {
        Rc::ptr_eq(&self.holds, holds)
    }
}

impl Drop for ReadHold {
    fn drop(&mut self) {
        let mut holds = self.holds.borrow_mut();
        let count = holds.get_mut(&self.revision).expect("a hold is counted");
        *count -= 1;
        if *count == 0 {
            holds.remove(&self.revision);
        }
    }
}

/// The oldest revision a read in progress reads at.
pub(super) fn oldest_held(holds: &ReadHolds) -> Option<i64> {
    holds.borrow().keys().next().copied()
}

/// Where a cursor's span ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum CursorEnd {
    Key,
    Until(Vec<u8>),
    ToEnd,
}

/// A Range in progress (from `Mvcc::begin_range`).
#[derive(Debug)]
pub struct RangeCursor {
    pub(super) start: Vec<u8>,
    pub(super) end: CursorEnd,
    /// The revision read at.
    pub(super) revision: i64,
    /// The store's current revision when the read began: what it reports.
    pub(super) view: i64,
    pub(super) limit: usize,
    pub(super) count_only: bool,
    /// The last key visited; the next step starts after it.
    pub(super) after: Option<Vec<u8>>,
    /// Keys visited so far: the count, unless `known`.
    pub(super) visited: usize,
    /// Key-values handed out so far.
    pub(super) handed_out: usize,
    /// The span's count, from the page before (see `range_counts`).
    pub(super) known: Option<usize>,
    /// The run this page leaves for the next (limited pages only).
    pub(super) run: Option<RunCollector>,
    pub(super) done: bool,
    pub(super) hold: ReadHold,
}

impl RangeCursor {
    /// True once every key the read needs has been visited.
    pub fn is_done(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::{KeySpan, Mvcc, RangeEnd, RangeOptions, StepBudget};

    /// Keys k000..k059, each written a few times, some deleted.
    fn store(dir: &tempfile::TempDir) -> Mvcc {
        let mut mvcc = Mvcc::open(&dir.path().join("store.db")).unwrap();
        for round in 0..3u8 {
            for key in 0..60u32 {
                let mut txn = mvcc.write();
                if round == 2 && key % 7 == 0 {
                    txn.delete_range(KeySpan {
                        key: format!("k{key:03}").as_bytes(),
                        end: RangeEnd::Key,
                    })
                    .unwrap();
                } else {
                    txn.put(format!("k{key:03}").as_bytes(), &[round; 20], 0).unwrap();
                }
                txn.end();
            }
        }
        mvcc
    }

    fn read_in_steps(
        mvcc: &mut Mvcc,
        span: KeySpan<'_>,
        options: RangeOptions,
        keys: usize,
        churn: bool,
    ) -> (Vec<Vec<u8>>, usize, i64) {
        let mut cursor = mvcc.begin_range(span, options).unwrap();
        let mut kvs = Vec::new();
        let mut round = 0u8;
        while !cursor.is_done() {
            let budget = StepBudget {
                keys,
                bytes: usize::MAX,
            };
            mvcc.range_step(&mut cursor, budget, |body| kvs.push(body.to_vec()))
                .unwrap();
            if churn {
                // Between steps: overwrite and delete keys, compact at the
                // newest revision, and run the compaction as far as it goes.
                round = round.wrapping_add(1);
                let mut txn = mvcc.write();
                txn.put(format!("k{:03}", round % 60).as_bytes(), b"later", 0).unwrap();
                txn.end();
                let mut txn = mvcc.write();
                txn.delete_range(KeySpan {
                    key: format!("k{:03}", round.wrapping_mul(7) % 60).as_bytes(),
                    end: RangeEnd::Key,
                })
                .unwrap();
                txn.end();
                mvcc.compact(mvcc.current_revision()).unwrap();
                for _ in 0..4 {
                    mvcc.compact_step(16).unwrap();
                }
            }
        }
        let result = mvcc.finish_range(cursor);
        (kvs, result.count, result.rev)
    }

    proptest! {
        /// Whatever happens between its steps, a stepped read answers what
        /// one read at its start would have.
        #[test]
        fn a_stepped_read_answers_as_a_read_at_its_start(
            start in 0u32..60,
            end in prop::option::of(0u32..61),
            limit in prop_oneof![Just(0usize), 1usize..70],
            count_only in any::<bool>(),
            keys in 1usize..20,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut mvcc = store(&dir);
            let start = format!("k{start:03}");
            let end_key = end.map(|end| format!("k{end:03}"));
            let span = KeySpan {
                key: start.as_bytes(),
                end: end_key.as_deref().map_or(RangeEnd::ToEnd, |end| RangeEnd::Until(end.as_bytes())),
            };
            let options = RangeOptions { limit, rev: 0, count_only };
            let mut expected = Vec::new();
            let whole = mvcc.range_encoded(span, options, |body| expected.push(body.to_vec())).unwrap();
            let (kvs, count, rev) = read_in_steps(&mut mvcc, span, options, keys, true);
            prop_assert_eq!(kvs, expected);
            prop_assert_eq!(count, whole.count);
            prop_assert_eq!(rev, whole.rev);
        }
    }

    #[test]
    fn compaction_above_a_read_in_progress_waits_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut mvcc = store(&dir);
        let span = KeySpan {
            key: b"k",
            end: RangeEnd::ToEnd,
        };
        let mut cursor = mvcc.begin_range(span, RangeOptions::default()).unwrap();
        let mut txn = mvcc.write();
        txn.put(b"k001", b"new", 0).unwrap();
        txn.end();
        mvcc.compact(mvcc.current_revision()).unwrap();
        for _ in 0..100 {
            assert!(!mvcc.compact_step(1000).unwrap(), "held by the read");
        }
        let budget = StepBudget {
            keys: usize::MAX,
            bytes: usize::MAX,
        };
        let mut kvs = 0;
        mvcc.range_step(&mut cursor, budget, |_| kvs += 1).unwrap();
        drop(mvcc.finish_range(cursor));
        assert_eq!(kvs, 60 - 9, "every key live at the read's revision");
        assert!(mvcc.compact_step(1000).unwrap() || mvcc.compact_step(1000).unwrap());
    }

    #[test]
    fn a_stepped_read_of_a_store_replaced_past_its_revision_is_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let mut mvcc = store(&dir);
        let span = KeySpan {
            key: b"k",
            end: RangeEnd::ToEnd,
        };
        let mut cursor = mvcc.begin_range(span, RangeOptions::default()).unwrap();
        let budget = StepBudget {
            keys: 5,
            bytes: usize::MAX,
        };
        mvcc.range_step(&mut cursor, budget, |_| {}).unwrap();
        let mut txn = mvcc.write();
        txn.put(b"k001", b"new", 0).unwrap();
        txn.end();
        mvcc.compact(mvcc.current_revision()).unwrap();
        mvcc.commit().unwrap();
        drop(mvcc);
        // As after a snapshot install: another store, compacted past the read.
        let mut reopened = Mvcc::open(&dir.path().join("store.db")).unwrap();
        let error = reopened.range_step(&mut cursor, budget, |_| {}).unwrap_err();
        assert!(matches!(error, super::super::MvccError::Compacted), "{error:?}");
        let _ = &mut reopened;
    }
}
