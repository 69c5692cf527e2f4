//! The MVCC store: every write at a new revision, reads at any revision since the
//! last compaction, all kept in the B-tree's revision table with the key index in
//! memory. Semantics follow etcd's mvcc package (kvstore.go, kvstore_txn.go).

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::path::Path;

use prost::Message;
use ringkv_proto::mvccpb::KeyValue;

use super::key_index::{KeyAt, KeyIndex};
use super::lease::{decode_lease, lease_key, Leases, LEASE_TABLE, NO_LEASE};
use super::revision::{Revision, REVISION_TABLE};
use super::{KeySpan, MvccError, RangeEnd, RangeOptions, RangeResult};
use crate::btree::Tree;
use crate::page::{CommitPlan, CommittedPlan, PageError};

/// Flag bit in a revision record: the revision deletes its key.
const FLAG_TOMBSTONE: u8 = 1;

/// Meta table keys (prefix `m`), each an 8-byte big-endian integer.
const META_APPLIED_INDEX: &[u8] = b"mapplied_index";
const META_CURRENT_REVISION: &[u8] = b"mcurrent_revision";
const META_COMPACT_REVISION: &[u8] = b"mcompact_revision";
const META_FINISHED_COMPACT_REVISION: &[u8] = b"mfinished_compact_revision";

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
    /// Revisions still to remove physically, oldest first.
    pending_removal: VecDeque<Revision>,
    applied_index: u64,
    leases: Leases,
}

impl Mvcc {
    pub fn open(path: &Path) -> Result<Mvcc, MvccError> {
        Mvcc::from_tree(Tree::open(path)?)
    }

    /// Rebuilds the key index by scanning the revision table in order, and
    /// resumes an unfinished physical compaction.
    fn from_tree(tree: Tree) -> Result<Mvcc, MvccError> {
        let current_revision = read_meta(&tree, META_CURRENT_REVISION)?.unwrap_or(EMPTY_STORE_REVISION);
        let compact_revision = read_meta(&tree, META_COMPACT_REVISION)?.unwrap_or(NEVER_COMPACTED);
        let finished_compact_revision = read_meta(&tree, META_FINISHED_COMPACT_REVISION)?.unwrap_or(NEVER_COMPACTED);
        let applied_index = read_meta(&tree, META_APPLIED_INDEX)?.unwrap_or(0);
        let applied_index = u64::try_from(applied_index)
            .map_err(|_| MvccError::Corrupt(format!("negative applied index {applied_index}")))?;
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
            pending_removal: VecDeque::new(),
            applied_index,
            leases,
        };
        if compact_revision > finished_compact_revision {
            store.schedule_removal(compact_revision, orphans);
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

    /// Number of keys that exist now or in retained history.
    pub fn key_count(&self) -> usize {
        self.index.len()
    }

    pub fn range(&self, span: KeySpan<'_>, options: RangeOptions) -> Result<RangeResult, MvccError> {
        self.range_at_view(span, options, self.current_revision)
    }

    /// Range as seen by a reader whose newest revision is `view`.
    fn range_at_view(&self, span: KeySpan<'_>, options: RangeOptions, view: i64) -> Result<RangeResult, MvccError> {
        let revision = if options.rev <= 0 { view } else { options.rev };
        if revision > view {
            return Err(MvccError::FutureRev);
        }
        if revision < self.compact_revision {
            return Err(MvccError::Compacted);
        }
        let mut found: Vec<KeyAt> = Vec::new();
        let mut count = 0usize;
        let mut visit = |_: &[u8], at: KeyAt| {
            count += 1;
            if !options.count_only && (options.limit == 0 || found.len() < options.limit) {
                found.push(at);
            }
            true
        };
        match span.end {
            RangeEnd::Key => {
                if let Some(at) = self.index.at(span.key, revision) {
                    visit(span.key, at);
                }
            }
            RangeEnd::Until(end) => {
                if span.key < end {
                    self.index
                        .visit_range(Bound::Included(span.key), Bound::Excluded(end), revision, visit);
                }
            }
            RangeEnd::ToEnd => {
                self.index
                    .visit_range(Bound::Included(span.key), Bound::Unbounded, revision, visit);
            }
        }
        let kvs = found
            .iter()
            .map(|at| self.load(at.modified))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RangeResult { kvs, count, rev: view })
    }

    /// The stored key-value of a live revision.
    fn load(&self, revision: Revision) -> Result<KeyValue, MvccError> {
        let value = self
            .tree
            .get(&revision.to_key())?
            .ok_or_else(|| MvccError::Corrupt(format!("revision {revision:?} is indexed but not stored")))?;
        let (tombstone, kv) = decode_record(&value)?;
        if tombstone || kv.mod_revision != revision.main {
            return Err(MvccError::Corrupt(format!(
                "revision {revision:?} does not hold a live key-value"
            )));
        }
        Ok(kv)
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
        self.schedule_removal(revision, Vec::new());
        Ok(())
    }

    fn schedule_removal(&mut self, revision: i64, extra: Vec<Revision>) {
        let mut removed = self.index.compact(revision);
        removed.extend(extra);
        removed.extend(self.pending_removal.drain(..));
        removed.sort_unstable();
        removed.dedup();
        assert!(
            removed.iter().all(|r| r.main <= revision),
            "only revisions at or below the point go"
        );
        self.pending_removal = removed.into();
    }

    pub fn compaction_pending(&self) -> bool {
        self.finished_compact_revision < self.compact_revision
    }

    /// Removes up to `max_revisions` compacted revisions; true once none are left.
    pub fn compact_step(&mut self, max_revisions: usize) -> Result<bool, MvccError> {
        assert!(max_revisions > 0);
        for _ in 0..max_revisions {
            let Some(revision) = self.pending_removal.pop_front() else {
                break;
            };
            let removed = self.tree.remove(&revision.to_key())?;
            assert!(removed, "a compacted revision {revision:?} was stored");
        }
        if self.pending_removal.is_empty() {
            self.finished_compact_revision = self.compact_revision;
        }
        Ok(!self.compaction_pending())
    }

    /// Writes the meta keys and seals the transaction for `CommitPlan::execute`.
    pub fn begin_commit(&mut self) -> Result<CommitPlan, MvccError> {
        self.write_meta()?;
        Ok(self.tree.begin_commit()?)
    }

    /// Takes back the outcome of the plan from `begin_commit`; an error is final.
    pub fn finish_commit(&mut self, result: Result<CommittedPlan, PageError>) -> Result<(), MvccError> {
        Ok(self.tree.finish_commit(result)?)
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
        Ok(())
    }
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
        self.store.range_at_view(span, options, view)
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

fn encode_record(tombstone: bool, kv: &KeyValue) -> Vec<u8> {
    let mut record = Vec::with_capacity(1 + kv.encoded_len());
    record.push(if tombstone { FLAG_TOMBSTONE } else { 0 });
    kv.encode(&mut record).expect("a Vec grows as needed");
    record
}

fn decode_record(record: &[u8]) -> Result<(bool, KeyValue), MvccError> {
    let (&flags, body) = record
        .split_first()
        .ok_or_else(|| MvccError::Corrupt("empty revision record".to_string()))?;
    if flags & !FLAG_TOMBSTONE != 0 {
        return Err(MvccError::Corrupt(format!("unknown record flags {flags:#x}")));
    }
    let kv = KeyValue::decode(body)
        .map_err(|error| MvccError::Corrupt(format!("revision record does not decode: {error}")))?;
    if kv.key.is_empty() {
        return Err(MvccError::Corrupt("revision record without a key".to_string()));
    }
    Ok((flags & FLAG_TOMBSTONE != 0, kv))
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
