//! A new store filled with another store's history as it is (an etcd
//! snapshot's, for `ringkvutl snapshot restore`): every revision with its
//! record, the leases and the meta integers, written straight into the tree
//! and then opened as any store is, so the rebuild's checks (versions, lease
//! attachments, tombstones, revisions past the current one) judge all of it.

use std::collections::BTreeSet;
use std::path::Path;

use ringkv_proto::mvccpb::KeyValue;

use super::alarm::{write_alarms, Alarm};
use super::lease::{lease_key, NO_LEASE};
use super::meta::{META_APPLIED_INDEX, META_COMPACT_REVISION, META_CURRENT_REVISION, META_FINISHED_COMPACT_REVISION};
use super::record::{encode_record, record_ends};
use super::revision::{Revision, RevisionKeys};
use super::server_record::META_AUTH;
use super::{Mvcc, MvccError};
use crate::btree::{EndsWanted, Tree};

/// Entries inserted between two commits: what the open transaction holds in
/// memory is bounded by this many entries' pages, whatever the history's size.
const LOAD_COMMIT_ENTRIES: usize = 4096;

/// The meta integers of the history loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedMeta {
    pub current_revision: i64,
    /// -1: never compacted.
    pub compact_revision: i64,
    pub finished_compact_revision: i64,
    pub applied_index: u64,
    pub alarms: Vec<Alarm>,
    /// The server's auth record (`mauth`), if the source had auth state.
    pub auth: Option<Vec<u8>>,
}

pub struct Loader {
    tree: Tree,
    uncommitted: usize,
    last_revision: Option<Revision>,
}

impl Loader {
    /// Starts a new store in the file at `path`, which must not exist yet.
    pub fn create(path: &Path) -> Result<Loader, MvccError> {
        assert!(!path.exists(), "a load starts a new store");
        Ok(Loader {
            tree: Tree::open(path)?,
            uncommitted: 0,
            last_revision: None,
        })
    }

    /// Stores one revision: `tombstone` or a put of `kv`. Revisions must come
    /// in increasing order (a history read in order); a tombstone's record
    /// keeps only the key and the revision, as `WriteTxn` writes it.
    pub fn revision(&mut self, revision: Revision, tombstone: bool, kv: &KeyValue) -> Result<(), MvccError> {
        if self.last_revision.is_some_and(|last| last >= revision) {
            return Err(MvccError::corrupt(format!(
                "revision {revision:?} comes after {:?}",
                self.last_revision
            )));
        }
        if kv.key.is_empty() || kv.mod_revision != revision.main {
            return Err(MvccError::corrupt(format!(
                "revision {} holds a record of key {:?} at mod revision {}",
                revision.main, kv.key, kv.mod_revision
            )));
        }
        self.last_revision = Some(revision);
        let deletion;
        let stored = if tombstone {
            deletion = KeyValue {
                key: kv.key.clone(),
                mod_revision: revision.main,
                ..KeyValue::default()
            };
            &deletion
        } else {
            kv
        };
        let record = encode_record(tombstone, stored);
        // A new store: every key narrow.
        self.insert(
            &RevisionKeys::default().key(revision),
            &record,
            record_ends(&record, stored),
        )
    }

    /// Stores a lease with its granted TTL in seconds.
    pub fn lease(&mut self, id: i64, ttl: i64) -> Result<(), MvccError> {
        if id == NO_LEASE || ttl <= 0 {
            return Err(MvccError::corrupt(format!("lease {id} with TTL {ttl}")));
        }
        self.insert(&lease_key(id), &ttl.to_be_bytes(), EndsWanted::default())
    }

    /// Writes the meta integers, commits, and opens the store (which checks
    /// everything loaded).
    pub fn finish(mut self, meta: &LoadedMeta) -> Result<Mvcc, MvccError> {
        let applied = i64::try_from(meta.applied_index)
            .map_err(|_| MvccError::corrupt(format!("applied index {} past i64", meta.applied_index)))?;
        self.tree.insert(META_APPLIED_INDEX, &applied.to_be_bytes())?;
        self.tree
            .insert(META_CURRENT_REVISION, &meta.current_revision.to_be_bytes())?;
        self.tree
            .insert(META_COMPACT_REVISION, &meta.compact_revision.to_be_bytes())?;
        self.tree.insert(
            META_FINISHED_COMPACT_REVISION,
            &meta.finished_compact_revision.to_be_bytes(),
        )?;
        let alarms: BTreeSet<Alarm> = meta.alarms.iter().copied().collect();
        write_alarms(&mut self.tree, &alarms)?;
        if let Some(auth) = &meta.auth {
            self.tree.insert(META_AUTH, auth)?;
        }
        self.tree.commit()?;
        Mvcc::from_tree(self.tree)
    }

    fn insert(&mut self, key: &[u8], value: &[u8], ends: EndsWanted) -> Result<(), MvccError> {
        self.tree.insert_with_ends(key, value, ends)?;
        self.uncommitted += 1;
        if self.uncommitted == LOAD_COMMIT_ENTRIES {
            self.tree.commit()?;
            self.uncommitted = 0;
        }
        Ok(())
    }
}
