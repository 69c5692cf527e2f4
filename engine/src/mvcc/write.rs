//! Write transactions: every change of one request at one new revision,
//! written to the revision table, the key index and the lease attachments
//! together, and captured for watchers when capture is on.

use std::ops::Bound;

use ringkv_proto::mvccpb::KeyValue;

use super::change::{Change, ChangeKind};
use super::key_index::KeyAt;
use super::lease::{lease_key, Leases};
use super::record::{encode_record, record_ends};
use super::revision::Revision;
use super::{KeySpan, Mvcc, MvccError, RangeEnd, RangeOptions, RangeResult};

impl Mvcc {
    /// Starts a write transaction at revision `current + 1`.
    pub fn write(&mut self) -> WriteTxn<'_> {
        let begin = self.current_revision;
        WriteTxn {
            store: self,
            begin,
            changes: 0,
        }
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
        let record = encode_record(false, &kv);
        self.store
            .tree
            .insert_with_ends(&self.store.keys.key(revision), &record, record_ends(&record, &kv))?;
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
        let record = encode_record(true, &tombstone);
        self.store.tree.insert_with_ends(
            &self.store.keys.key(revision),
            &record,
            record_ends(&record, &tombstone),
        )?;
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
