//! The MVCC store: every write at a new revision, reads at any revision since the
//! last compaction, all kept in the B-tree's revision table with the key index in
//! memory. Semantics follow etcd's mvcc package (kvstore.go, kvstore_txn.go).

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use ringkv_proto::mvccpb::KeyValue;

use super::change::{Change, ChangeKind, HistoryChunk};
use super::cursor::{oldest_held, CursorEnd, RangeCursor, ReadHold, ReadHolds};
use super::hash::{Crc32c, KvHash, KvHasher};
use super::key_index::{KeyAt, KeyIndex};
use super::lease::{decode_lease, lease_key, Leases, LEASE_TABLE, NO_LEASE};
use super::range_counts::{RangeCounts, RunCollector};
use super::record::{decode_record, encode_record, serve_record};
use super::revision::{Revision, REVISION_TABLE};
use super::{KeySpan, MvccError, RangeEnd, RangeOptions, RangeResult, StepBudget};
use crate::btree::Tree;
use crate::page::{CommitPlan, CommittedPlan, PageError, PageIo, SnapshotSource};

/// Meta table keys (prefix `m`), each an 8-byte big-endian integer.
const META_APPLIED_INDEX: &[u8] = b"mapplied_index";
const META_CURRENT_REVISION: &[u8] = b"mcurrent_revision";
const META_COMPACT_REVISION: &[u8] = b"mcompact_revision";
const META_FINISHED_COMPACT_REVISION: &[u8] = b"mfinished_compact_revision";
/// Active alarms: 12 bytes each (member id u64, alarm type i32, both big endian).
const META_ALARMS: &[u8] = b"malarms";
const ALARM_RECORD_BYTES: usize = 12;
/// Records the server encodes and decodes (see [`ServerRecord`]): the cluster's
/// membership and the raft configuration, as of the applied index.
const META_MEMBERSHIP: &[u8] = b"mmembership";
const META_CONF_STATE: &[u8] = b"mconf_state";

/// An empty store is at revision 1, so the first write gets 2 (as in etcd).
const EMPTY_STORE_REVISION: i64 = 1;
/// No compaction yet (etcd's initial compactMainRev).
const NEVER_COMPACTED: i64 = -1;

pub struct Mvcc {
    tree: Tree,
    index: KeyIndex,
    current_revision: i64,
    compact_revision: i64,
    /// The compaction whose physical removal finished last.
    finished_compact_revision: i64,
    /// While a compaction runs: the key index is compacted a bounded number
    /// of keys per step (this is where the pass goes on); the revisions it
    /// gives up are then removed from the tree, oldest first.
    index_pass: Option<IndexPass>,
    /// Revisions the index has given up, still to remove physically.
    pending_removal: BTreeSet<Revision>,
    applied_index: u64,
    /// Changes made since the last `take_changes`, when capture is on (the
    /// server's watchers need them; tools and tests leave it off so nothing grows).
    captured: Option<Vec<Change>>,
    leases: Leases,
    /// Active alarms, applied through raft and stored with the data.
    alarms: BTreeSet<Alarm>,
    membership: ServerRecord,
    conf_state: ServerRecord,
    /// What paginated Ranges leave for their next page (reads take `&self`).
    range_counts: RefCell<RangeCounts>,
    /// Revisions stepped Ranges still read at (see `cursor`).
    read_holds: ReadHolds,
}

/// Bytes the server encodes and decodes; the engine only stores them, in the
/// same commits as the data they were applied with. Rarely changed, so written
/// only in a commit after they changed.
struct ServerRecord {
    key: &'static [u8],
    value: Option<Vec<u8>>,
    changed: bool,
}

impl ServerRecord {
    fn load(tree: &Tree, key: &'static [u8]) -> Result<ServerRecord, MvccError> {
        Ok(ServerRecord {
            key,
            value: tree.get(key)?,
            changed: false,
        })
    }

    fn set(&mut self, value: Vec<u8>) {
        self.value = Some(value);
        self.changed = true;
    }

    fn write(&mut self, tree: &mut Tree) -> Result<(), MvccError> {
        if self.changed {
            let value = self.value.as_deref().expect("a changed record is set");
            tree.insert(self.key, value)?;
            self.changed = false;
        }
        Ok(())
    }
}

/// An active alarm: a member and etcd's `AlarmType` number (1 NOSPACE, 2 CORRUPT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Alarm {
    pub member_id: u64,
    pub kind: i32,
}

/// Where a compaction's pass over the key index goes on.
struct IndexPass {
    /// The last key compacted; None: the pass starts at the first key.
    after: Option<Vec<u8>>,
}

impl Mvcc {
    pub fn open(path: &Path) -> Result<Mvcc, MvccError> {
        Mvcc::from_tree(Tree::open(path)?)
    }

    /// Opens the store behind an I/O seam (tests and fuzz targets).
    pub fn open_with(io: Arc<dyn PageIo>) -> Result<Mvcc, MvccError> {
        Mvcc::from_tree(Tree::open_with(io)?)
    }

    /// Rebuilds the key index by scanning the revision table in order, and
    /// resumes an unfinished physical compaction.
    fn from_tree(tree: Tree) -> Result<Mvcc, MvccError> {
        let current_revision = read_meta(&tree, META_CURRENT_REVISION)?.unwrap_or(EMPTY_STORE_REVISION);
        // The next write takes current + 1.
        if !(EMPTY_STORE_REVISION..i64::MAX).contains(&current_revision) {
            return Err(MvccError::Corrupt(format!(
                "stored current revision {current_revision}"
            )));
        }
        let compact_revision = read_meta(&tree, META_COMPACT_REVISION)?.unwrap_or(NEVER_COMPACTED);
        let finished_compact_revision = read_meta(&tree, META_FINISHED_COMPACT_REVISION)?.unwrap_or(NEVER_COMPACTED);
        let applied_index = read_meta(&tree, META_APPLIED_INDEX)?.unwrap_or(0);
        let applied_index = u64::try_from(applied_index)
            .map_err(|_| MvccError::Corrupt(format!("negative applied index {applied_index}")))?;
        let alarms = read_alarms(&tree)?;
        let membership = ServerRecord::load(&tree, META_MEMBERSHIP)?;
        let conf_state = ServerRecord::load(&tree, META_CONF_STATE)?;
        let mut index = KeyIndex::default();
        // Tombstones whose key's earlier revisions were already removed by an
        // interrupted compaction: they only wait to be removed too.
        let mut orphans = Vec::new();
        // The lease of each live key's newest revision.
        let mut lease_of: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
        let start = [REVISION_TABLE];
        let end = [REVISION_TABLE + 1];
        for entry in tree.range(Bound::Included(&start[..]), Bound::Excluded(&end[..])) {
            let (key, value) = entry?;
            let revision =
                Revision::from_key(&key).ok_or_else(|| MvccError::Corrupt(format!("bad revision key {key:?}")))?;
            let (tombstone, kv) = decode_record(&value)?;
            if revision.main > current_revision {
                return Err(MvccError::Corrupt(format!(
                    "revision {} is past the stored current revision {current_revision}",
                    revision.main
                )));
            }
            if tombstone || kv.lease == NO_LEASE {
                lease_of.remove(&kv.key);
            } else {
                lease_of.insert(kv.key.clone(), kv.lease);
            }
            if tombstone {
                if index.has_live(&kv.key) {
                    index.tombstone(&kv.key, revision);
                } else {
                    orphans.push(revision);
                }
            } else {
                check_version(&index, revision, &kv)?;
                index.put(&kv.key, revision, kv.create_revision, kv.version);
            }
        }
        let leases = rebuild_leases(&tree, lease_of)?;
        let mut store = Mvcc {
            tree,
            index,
            current_revision,
            compact_revision,
            finished_compact_revision,
            index_pass: None,
            pending_removal: BTreeSet::new(),
            applied_index,
            captured: None,
            leases,
            alarms,
            membership,
            conf_state,
            range_counts: RefCell::default(),
            read_holds: ReadHolds::default(),
        };
        if compact_revision > finished_compact_revision {
            store.index_pass = Some(IndexPass { after: None });
            store.pending_removal.extend(orphans);
        } else if let Some(orphan) = orphans.first() {
            return Err(MvccError::Corrupt(format!(
                "tombstone at revision {} deletes a key that does not exist",
                orphan.main
            )));
        }
        Ok(store)
    }

    pub fn current_revision(&self) -> i64 {
        self.current_revision
    }

    /// The revision of the last compaction; -1 before any (as etcd reports it).
    pub fn compact_revision(&self) -> i64 {
        self.compact_revision
    }

    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// The raft index whose effects the store holds; stored by the next commit.
    pub fn set_applied_index(&mut self, index: u64) {
        assert!(index >= self.applied_index, "the applied index never goes back");
        self.applied_index = index;
    }

    /// The leases that exist and the keys attached to them.
    pub fn leases(&self) -> &Leases {
        &self.leases
    }

    /// Creates lease `id` with `ttl` seconds; stored by the next commit. The
    /// caller has checked that it does not exist (etcd's ErrLeaseExist).
    pub fn grant_lease(&mut self, id: i64, ttl: i64) -> Result<(), MvccError> {
        self.leases.insert(id, ttl);
        self.tree.insert(&lease_key(id), &ttl.to_be_bytes())?;
        Ok(())
    }

    /// Starts keeping every change written from now on for `take_changes`. The
    /// owner must take them after each write or they accumulate.
    pub fn capture_changes(&mut self) {
        self.captured.get_or_insert_with(Vec::new);
    }

    /// The changes written since the last call, in revision order.
    pub fn take_changes(&mut self) -> Vec<Change> {
        self.captured.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Reads the changes of revisions `from..=to` back from the revision table, in
    /// revision order, stopping after the first whole revision at which at least
    /// `max_changes` were read. A revision at or below the compaction point is
    /// refused; at the compaction point itself only puts are returned, because its
    /// tombstones are removed by compaction (etcd's watchers see the same).
    pub fn history(&self, from: i64, to: i64, max_changes: usize) -> Result<HistoryChunk, MvccError> {
        assert!(max_changes > 0);
        if from < self.compact_revision {
            return Err(MvccError::Compacted);
        }
        let to = to.min(self.current_revision);
        let mut changes = Vec::new();
        if from > to {
            return Ok(HistoryChunk {
                changes,
                next_revision: from,
            });
        }
        let start = Revision::new(from.max(0), 0).to_key();
        let end = Revision::new(to + 1, 0).to_key();
        let mut last_main = from - 1;
        for entry in self.tree.range(Bound::Included(&start[..]), Bound::Excluded(&end[..])) {
            let (key, value) = entry?;
            let revision =
                Revision::from_key(&key).ok_or_else(|| MvccError::Corrupt(format!("bad revision key {key:?}")))?;
            if revision.main != last_main && changes.len() >= max_changes {
                return Ok(HistoryChunk {
                    changes,
                    next_revision: revision.main,
                });
            }
            last_main = revision.main;
            let (tombstone, kv) = decode_record(&value)?;
            if tombstone && revision.main == self.compact_revision {
                continue;
            }
            let kind = if tombstone { ChangeKind::Delete } else { ChangeKind::Put };
            changes.push(Change { kind, kv });
        }
        Ok(HistoryChunk {
            changes,
            next_revision: to + 1,
        })
    }

    /// Number of keys that exist now or in retained history.
    pub fn key_count(&self) -> usize {
        self.index.len()
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
                    self.hand_out(at, &mut each)?;
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
        self.index.visit_range(from, end, revision, |key, at| {
            let position = *visited;
            *visited += 1;
            keys += 1;
            if !count_only && (limit == 0 || *handed_out < limit) {
                let handed = self.hand_out(at, |body| {
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

    /// Hands the stored key-value of a live revision to `each`, as stored.
    fn hand_out(&self, at: KeyAt, each: impl FnOnce(&[u8])) -> Result<(), MvccError> {
        let record = self.stored_record(at.modified)?;
        let served = serve_record(&record)?;
        check_live(at.modified, served.tombstone, served.mod_revision)?;
        each(&served.body);
        Ok(())
    }

    /// Range as seen by a reader whose newest revision is `view`.
    fn range_at_view(
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
        let record = self.stored_record(revision)?;
        let (tombstone, kv) = decode_record(&record)?;
        check_live(revision, tombstone, kv.mod_revision)?;
        Ok(kv)
    }

    /// The record of a revision the key index holds.
    fn stored_record(&self, revision: Revision) -> Result<Cow<'_, [u8]>, MvccError> {
        self.tree
            .get_in_place(&revision.to_key())?
            .ok_or_else(|| MvccError::Corrupt(format!("revision {revision:?} is indexed but not stored")))
    }

    /// Starts a write transaction at revision `current + 1`.
    pub fn write(&mut self) -> WriteTxn<'_> {
        let begin = self.current_revision;
        WriteTxn {
            store: self,
            begin,
            changes: 0,
        }
    }

    /// Compacts at `revision`: reads below it fail from now on; the superseded
    /// revisions are removed later, in bounded steps (`compact_step`).
    pub fn compact(&mut self, revision: i64) -> Result<(), MvccError> {
        if revision <= self.compact_revision {
            return Err(MvccError::Compacted);
        }
        if revision > self.current_revision {
            return Err(MvccError::FutureRev);
        }
        self.compact_revision = revision;
        // A pass at an earlier point may be under way: this one starts over from
        // the first key, and drops everything that one would have and more.
        self.index_pass = Some(IndexPass { after: None });
        Ok(())
    }

    pub fn compaction_pending(&self) -> bool {
        self.finished_compact_revision < self.compact_revision
    }

    /// One bounded step of the running compaction: compacts up to `max_items`
    /// keys of the index, or once the index is done, removes up to that many
    /// revisions from the tree. True once the compaction has finished.
    ///
    /// Bounded because it runs on the store core between client requests: a
    /// whole pass over a million keys at once stalled every write for a second.
    ///
    /// While a stepped read below the compaction point is in progress, a step
    /// does nothing: what it would remove, that read still needs.
    pub fn compact_step(&mut self, max_items: usize) -> Result<bool, MvccError> {
        assert!(max_items > 0);
        if oldest_held(&self.read_holds).is_some_and(|held| held < self.compact_revision) {
            return Ok(false);
        }
        if let Some(pass) = self.index_pass.take() {
            let after = self.index.compact_keys(
                self.compact_revision,
                pass.after.as_deref(),
                max_items,
                &mut self.pending_removal,
            );
            self.index_pass = after.map(|key| IndexPass { after: Some(key) });
        } else {
            for _ in 0..max_items {
                let Some(revision) = self.pending_removal.pop_first() else {
                    break;
                };
                assert!(
                    revision.main <= self.compact_revision,
                    "only revisions at or below the point go"
                );
                let removed = self.tree.remove(&revision.to_key())?;
                assert!(removed, "a compacted revision {revision:?} was stored");
            }
        }
        if self.index_pass.is_none() && self.pending_removal.is_empty() {
            self.finished_compact_revision = self.compact_revision;
        }
        Ok(!self.compaction_pending())
    }

    /// Writes the meta keys and seals the transaction for `CommitPlan::execute`.
    pub fn begin_commit(&mut self) -> Result<CommitPlan, MvccError> {
        self.write_meta()?;
        Ok(self.tree.begin_commit()?)
    }

    /// Takes back the outcome of the plan from `begin_commit`. An error is
    /// final, except `PageError::NoSpace`: then the commit was not made, and
    /// [`Mvcc::retry_commit`] runs it again later.
    pub fn finish_commit(&mut self, result: Result<CommittedPlan, PageError>) -> Result<(), MvccError> {
        Ok(self.tree.finish_commit(result)?)
    }

    /// The plan of the commit that found no room to grow the file, to execute
    /// again: the same state (applied index, revisions, alarms) as sealed.
    pub fn retry_commit(&mut self) -> CommitPlan {
        self.tree.retry_commit()
    }

    /// Commits synchronously (tools and tests).
    pub fn commit(&mut self) -> Result<(), MvccError> {
        self.write_meta()?;
        Ok(self.tree.commit()?)
    }

    fn write_meta(&mut self) -> Result<(), MvccError> {
        let applied = i64::try_from(self.applied_index).expect("raft indexes fit i64");
        self.tree.insert(META_APPLIED_INDEX, &applied.to_be_bytes())?;
        self.tree
            .insert(META_CURRENT_REVISION, &self.current_revision.to_be_bytes())?;
        self.tree
            .insert(META_COMPACT_REVISION, &self.compact_revision.to_be_bytes())?;
        self.tree.insert(
            META_FINISHED_COMPACT_REVISION,
            &self.finished_compact_revision.to_be_bytes(),
        )?;
        let mut alarms = Vec::with_capacity(self.alarms.len() * ALARM_RECORD_BYTES);
        for alarm in &self.alarms {
            alarms.extend_from_slice(&alarm.member_id.to_be_bytes());
            alarms.extend_from_slice(&alarm.kind.to_be_bytes());
        }
        if alarms.is_empty() {
            self.tree.remove(META_ALARMS)?;
        } else {
            self.tree.insert(META_ALARMS, &alarms)?;
        }
        self.membership.write(&mut self.tree)?;
        self.conf_state.write(&mut self.tree)
    }

    /// The membership record last set (see `set_membership`), if any.
    pub fn membership(&self) -> Option<&[u8]> {
        self.membership.value.as_deref()
    }

    /// Replaces the membership record; stored by the next commit.
    pub fn set_membership(&mut self, record: Vec<u8>) {
        self.membership.set(record);
    }

    /// The raft configuration record last set (see `set_conf_state`), if any.
    pub fn conf_state(&self) -> Option<&[u8]> {
        self.conf_state.value.as_deref()
    }

    /// Replaces the raft configuration record: the configuration as of the
    /// applied index, stored by the next commit with that index.
    pub fn set_conf_state(&mut self, record: Vec<u8>) {
        self.conf_state.set(record);
    }

    /// Active alarms, in (member, kind) order.
    pub fn alarms(&self) -> impl Iterator<Item = Alarm> + '_ {
        self.alarms.iter().copied()
    }

    /// Raises `alarm`; false if it was already active. Stored by the next commit.
    pub fn activate_alarm(&mut self, alarm: Alarm) -> bool {
        self.alarms.insert(alarm)
    }

    /// Clears `alarm`; false if it was not active.
    pub fn deactivate_alarm(&mut self, alarm: Alarm) -> bool {
        self.alarms.remove(&alarm)
    }

    /// etcd's HashKV at `revision` (0 or less: the current one), as etcd 3.4 and
    /// 3.5 compute it (`HashByRev`): every stored revision up to it, except that a
    /// revision at or below the compaction point counts only if it is its key's
    /// live state at the hashed revision (etcd's `kvindex.Keep(rev)`), unless no
    /// key is live then. Revisions a running compaction will remove never count.
    pub fn hash_kv(&self, revision: i64) -> Result<KvHash, MvccError> {
        if revision > 0 && revision <= self.compact_revision {
            return Err(MvccError::Compacted);
        }
        if revision > self.current_revision {
            return Err(MvccError::FutureRev);
        }
        let hash_revision = if revision <= 0 { self.current_revision } else { revision };
        let mut any_live = false;
        self.index
            .visit_range(Bound::Unbounded, Bound::Unbounded, hash_revision, |_, _| {
                any_live = true;
                false
            });
        let mut hasher = KvHasher::new();
        let start = [REVISION_TABLE];
        let end = Revision::new(hash_revision + 1, 0).to_key();
        for entry in self.tree.range(Bound::Included(&start[..]), Bound::Excluded(&end[..])) {
            let (key, value) = entry?;
            let revision =
                Revision::from_key(&key).ok_or_else(|| MvccError::Corrupt(format!("bad revision key {key:?}")))?;
            let (tombstone, kv) = decode_record(&value)?;
            // Revisions the running compaction will remove, however far it has
            // got: at or below the point and not the key's state there.
            let compacted_away = revision.main <= self.compact_revision
                && self.index.at(&kv.key, self.compact_revision).map(|at| at.modified) != Some(revision);
            if compacted_away {
                continue;
            }
            let kept = |key: &[u8]| {
                self.index
                    .at(key, hash_revision)
                    .is_some_and(|at| at.modified == revision)
            };
            if revision.main <= self.compact_revision && any_live && !kept(&kv.key) {
                continue;
            }
            hasher.write(revision, tombstone, &kv);
        }
        Ok(KvHash {
            hash: hasher.finish(),
            compact_revision: self.compact_revision,
            hash_revision,
        })
    }

    /// ringkv's Hash: a CRC-32C over every key and value of the committed and
    /// open state of the tree (meta and revision tables), in key order. Not
    /// etcd's value (etcd hashes its bbolt file's buckets), but equal on members
    /// holding the same state.
    pub fn hash_all(&self) -> Result<u32, MvccError> {
        let mut crc = Crc32c::default();
        for entry in self.tree.range(Bound::Unbounded, Bound::Unbounded) {
            let (key, value) = entry?;
            crc.update(&key);
            crc.update(&value);
        }
        Ok(crc.finish())
    }

    /// Pins the last durable commit for a snapshot read off the store core. No
    /// commit may be in flight. The copy holds what was durable then: commit
    /// first to include everything applied.
    pub fn pin_snapshot(&mut self) -> Result<SnapshotSource, MvccError> {
        Ok(self.tree.pin_snapshot()?)
    }

    pub fn unpin_snapshot(&mut self, txid: u64) {
        self.tree.unpin_snapshot(txid);
    }

    /// The page below which a defragmentation pass starting now gathers the
    /// live pages (see `btree::relocate`).
    pub fn defragment_target(&self) -> u64 {
        self.tree.relocation_target()
    }

    /// One bounded step of a defragmentation pass: visits up to `leaves_max`
    /// leaves from `from`; returns where the next step starts, None after the
    /// last leaf. Commit after each step; after the last, commit once more
    /// (the last step's freelist page may sit at the end of the file), then
    /// call [`Mvcc::request_trim`] and commit to give the space back.
    pub fn defragment_step(
        &mut self,
        from: &[u8],
        target: u64,
        leaves_max: usize,
    ) -> Result<Option<Vec<u8>>, MvccError> {
        Ok(self.tree.relocate_step(from, target, leaves_max)?)
    }

    /// The next commit gives back the free pages at the end of the file.
    pub fn request_trim(&mut self) {
        self.tree.request_trim();
    }

    /// Bytes the page file takes on disk (etcd's dbSize).
    pub fn file_bytes(&self) -> u64 {
        self.tree.file_bytes()
    }

    /// Bytes of pages holding live data (etcd's dbSizeInUse).
    pub fn in_use_bytes(&self) -> u64 {
        self.tree.in_use_bytes()
    }

    /// Bytes of every page the store has used, live or free: the high-water mark
    /// that `--quota-backend-bytes` is checked against.
    pub fn allocated_bytes(&self) -> u64 {
        self.tree.allocated_bytes()
    }
}

fn read_alarms(tree: &Tree) -> Result<BTreeSet<Alarm>, MvccError> {
    let Some(value) = tree.get(META_ALARMS)? else {
        return Ok(BTreeSet::new());
    };
    if value.len() % ALARM_RECORD_BYTES != 0 {
        return Err(MvccError::Corrupt(format!("alarm list of {} bytes", value.len())));
    }
    Ok(value
        .chunks_exact(ALARM_RECORD_BYTES)
        .map(|record| Alarm {
            member_id: u64::from_be_bytes(record[..8].try_into().expect("8 bytes")),
            kind: i32::from_be_bytes(record[8..].try_into().expect("4 bytes")),
        })
        .collect())
}

/// What a range selected from the key index, before any record is read.
struct Selection {
    found: Vec<KeyAt>,
    count: usize,
}

/// A record the key index points a reader at must be a put at that revision.
fn check_live(revision: Revision, tombstone: bool, mod_revision: i64) -> Result<(), MvccError> {
    if tombstone || mod_revision != revision.main {
        return Err(MvccError::Corrupt(format!(
            "revision {revision:?} does not hold a live key-value"
        )));
    }
    Ok(())
}

/// One write request's changes, all at revision `begin + 1`.
pub struct WriteTxn<'a> {
    store: &'a mut Mvcc,
    begin: i64,
    changes: i64,
}

impl WriteTxn<'_> {
    /// The revision this transaction writes at.
    pub fn revision(&self) -> i64 {
        self.begin + 1
    }

    /// The leases as of this transaction's changes so far.
    pub fn leases(&self) -> &Leases {
        &self.store.leases
    }

    /// Reads see this transaction's earlier writes.
    pub fn range(&self, span: KeySpan<'_>, options: RangeOptions) -> Result<RangeResult, MvccError> {
        let view = if self.changes > 0 { self.begin + 1 } else { self.begin };
        // No counts: the keys at `begin + 1` change until the transaction ends.
        self.store.range_at_view(span, options, view, None)
    }

    pub fn put(&mut self, key: &[u8], value: &[u8], lease: i64) -> Result<(), MvccError> {
        assert!(!key.is_empty(), "keys are never empty");
        let revision = Revision::new(self.revision(), self.changes);
        let (created, version) = match self.store.index.latest(key) {
            Some(at) => {
                assert!(at.modified < revision, "changes of a key are ordered");
                (at.created, at.version + 1)
            }
            None => (revision.main, 1),
        };
        let kv = KeyValue {
            key: key.to_vec(),
            create_revision: created,
            mod_revision: revision.main,
            version,
            value: value.to_vec(),
            lease,
        };
        self.store.tree.insert(&revision.to_key(), &encode_record(false, &kv))?;
        self.store.index.put(key, revision, created, version);
        self.store.leases.set_lease_of(key, lease);
        self.changes += 1;
        if let Some(captured) = &mut self.store.captured {
            captured.push(Change {
                kind: ChangeKind::Put,
                kv,
            });
        }
        Ok(())
    }

    /// Revokes lease `id` (which must exist): deletes every key attached to it, in
    /// key order, as ordinary deletions of this transaction, then the lease.
    /// Returns how many keys were deleted.
    pub fn revoke_lease(&mut self, id: i64) -> Result<i64, MvccError> {
        assert!(self.store.leases.contains(id), "revoking unknown lease {id}");
        let keys: Vec<Vec<u8>> = self.store.leases.keys(id).map(<[u8]>::to_vec).collect();
        for key in &keys {
            assert!(self.store.index.latest(key).is_some(), "attached keys are live");
            self.tombstone(key)?;
        }
        self.store.leases.remove(id);
        let removed = self.store.tree.remove(&lease_key(id))?;
        assert!(removed, "lease {id} was stored");
        Ok(keys.len() as i64)
    }

    /// Deletes every live key in `span`; returns how many.
    pub fn delete_range(&mut self, span: KeySpan<'_>) -> Result<i64, MvccError> {
        let view = if self.changes > 0 { self.begin + 1 } else { self.begin };
        let mut keys: Vec<Vec<u8>> = Vec::new();
        let collect = |key: &[u8], _: KeyAt| {
            keys.push(key.to_vec());
            true
        };
        match span.end {
            RangeEnd::Key => {
                if self.store.index.latest(span.key).is_some() {
                    keys.push(span.key.to_vec());
                }
            }
            RangeEnd::Until(end) => {
                if span.key < end {
                    self.store
                        .index
                        .visit_range(Bound::Included(span.key), Bound::Excluded(end), view, collect);
                }
            }
            RangeEnd::ToEnd => {
                self.store
                    .index
                    .visit_range(Bound::Included(span.key), Bound::Unbounded, view, collect);
            }
        }
        for key in &keys {
            self.tombstone(key)?;
        }
        Ok(keys.len() as i64)
    }

    /// Deletes one live key: a tombstone at the next sub revision.
    fn tombstone(&mut self, key: &[u8]) -> Result<(), MvccError> {
        let revision = Revision::new(self.revision(), self.changes);
        let tombstone = KeyValue {
            key: key.to_vec(),
            mod_revision: revision.main,
            ..Default::default()
        };
        self.store
            .tree
            .insert(&revision.to_key(), &encode_record(true, &tombstone))?;
        self.store.index.tombstone(key, revision);
        self.store.leases.detach(key);
        self.changes += 1;
        if let Some(captured) = &mut self.store.captured {
            captured.push(Change {
                kind: ChangeKind::Delete,
                kv: tombstone,
            });
        }
        Ok(())
    }

    /// Ends the transaction; returns the store's revision after it.
    pub fn end(self) -> i64 {
        if self.changes > 0 {
            self.store.current_revision = self.begin + 1;
        }
        assert!(self.store.current_revision >= self.begin);
        self.store.current_revision
    }
}

/// Loads the lease table and attaches each live key to the lease of its newest
/// revision.
fn rebuild_leases(tree: &Tree, lease_of: BTreeMap<Vec<u8>, i64>) -> Result<Leases, MvccError> {
    let mut leases = Leases::default();
    let start = [LEASE_TABLE];
    let end = [LEASE_TABLE + 1];
    for entry in tree.range(Bound::Included(&start[..]), Bound::Excluded(&end[..])) {
        let (key, value) = entry?;
        let (id, ttl) = decode_lease(&key, &value)?;
        leases.insert(id, ttl);
    }
    for (key, lease) in lease_of {
        if !leases.contains(lease) {
            return Err(MvccError::Corrupt(format!(
                "key {key:?} is attached to lease {lease}, which is not stored"
            )));
        }
        leases.set_lease_of(&key, lease);
    }
    Ok(leases)
}

/// A stored put's version, checked before the key index takes it (which
/// asserts what its own writes always hold): at least 1, below `i64::MAX` (so
/// the next put's version exists), and one past the key's version before it
/// while the key is live. A version is not bounded by its main revision: one
/// transaction may put a key many times (the server refuses that, the engine
/// does not), each put a version at the same main revision.
fn check_version(index: &KeyIndex, revision: Revision, kv: &KeyValue) -> Result<(), MvccError> {
    let follows = index.latest(&kv.key).map(|at| at.version.checked_add(1));
    if !(1..i64::MAX).contains(&kv.version) || follows.is_some_and(|next| next != Some(kv.version)) {
        return Err(MvccError::Corrupt(format!(
            "revision {} puts version {} of a key at version {:?}",
            revision.main,
            kv.version,
            index.latest(&kv.key).map(|at| at.version)
        )));
    }
    Ok(())
}

fn read_meta(tree: &Tree, name: &[u8]) -> Result<Option<i64>, MvccError> {
    let Some(value) = tree.get(name)? else {
        return Ok(None);
    };
    let bytes: [u8; 8] = value
        .as_slice()
        .try_into()
        .map_err(|_| MvccError::Corrupt(format!("meta value {name:?} is not 8 bytes")))?;
    Ok(Some(i64::from_be_bytes(bytes)))
}
