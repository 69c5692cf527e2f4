//! Opening a store: the key index and the lease attachments rebuilt from the
//! revision table, every stored put checked before the key index takes it, and
//! an interrupted compaction resumed.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use ringkv_proto::mvccpb::KeyValue;

use super::alarm::read_alarms;
use super::compact::IndexPass;
use super::cursor::ReadHolds;
use super::key_index::KeyIndex;
use super::lease::{decode_lease, Leases, LEASE_TABLE, NO_LEASE};
use super::meta::{
    read_meta, META_APPLIED_INDEX, META_COMPACT_REVISION, META_CURRENT_REVISION, META_FINISHED_COMPACT_REVISION,
};
use super::record::{decode_record, decode_record_ends};
use super::revision::{is_wide, Revision, RevisionKeys, REVISION_TABLE};
use super::server_record::{ServerRecord, META_AUTH, META_CONF_STATE, META_MEMBERSHIP};
use super::{Mvcc, MvccError};
use crate::btree::{StoredEnds, Tree};
use crate::page::PageIo;

/// An empty store is at revision 1, so the first write gets 2 (as in etcd).
pub(super) const EMPTY_STORE_REVISION: i64 = 1;
/// No compaction yet (etcd's initial compactMainRev).
pub(super) const NEVER_COMPACTED: i64 = -1;

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
    pub(super) fn from_tree(tree: Tree) -> Result<Mvcc, MvccError> {
        let current_revision = read_meta(&tree, META_CURRENT_REVISION)?.unwrap_or(EMPTY_STORE_REVISION);
        // The next write takes current + 1.
        if !(EMPTY_STORE_REVISION..i64::MAX).contains(&current_revision) {
            return Err(MvccError::corrupt(format!(
                "stored current revision {current_revision}"
            )));
        }
        let compact_revision = read_meta(&tree, META_COMPACT_REVISION)?.unwrap_or(NEVER_COMPACTED);
        let finished_compact_revision = read_meta(&tree, META_FINISHED_COMPACT_REVISION)?.unwrap_or(NEVER_COMPACTED);
        let applied_index = read_meta(&tree, META_APPLIED_INDEX)?.unwrap_or(0);
        let applied_index = u64::try_from(applied_index)
            .map_err(|_| MvccError::corrupt(format!("negative applied index {applied_index}")))?;
        let alarms = read_alarms(&tree)?;
        let membership = ServerRecord::load(&tree, META_MEMBERSHIP)?;
        let conf_state = ServerRecord::load(&tree, META_CONF_STATE)?;
        let auth = ServerRecord::load(&tree, META_AUTH)?;
        let mut index = KeyIndex::default();
        // Tombstones whose key's earlier revisions were already removed by an
        // interrupted compaction: they only wait to be removed too.
        let mut orphans = Vec::new();
        // The lease of each live key's newest revision.
        let mut lease_of: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
        let start = [REVISION_TABLE];
        let end = [REVISION_TABLE + 1];
        let mut previous: Option<Revision> = None;
        let mut last_wide = None;
        // A large record's value is not read: its leaf keeps the rest
        // (`record_ends`), and the overflow pages are most of the file.
        for entry in tree.range_ends(Bound::Included(&start[..]), Bound::Excluded(&end[..])) {
            let (key, value) = entry?;
            let revision =
                Revision::from_key(&key).ok_or_else(|| MvccError::corrupt(format!("bad revision key {key:?}")))?;
            // A tree scan yields its keys in order unless its pages are
            // damaged or forged (a branch whose children are out of order,
            // a key in two leaves): the key index takes only a key's later
            // revisions.
            if previous.is_some_and(|previous| revision <= previous) {
                return Err(MvccError::corrupt(format!(
                    "revision {revision:?} comes after {:?} in the revision table",
                    previous
                )));
            }
            previous = Some(revision);
            if is_wide(&key) {
                // Wide keys sort before narrow ones, so a wide revision above
                // a narrow one comes out of revision order, refused above.
                last_wide = Some(revision);
            }
            let (tombstone, kv) = match value {
                StoredEnds::Whole(record) => decode_record(&record)?,
                StoredEnds::Parted { len, front, back } => match decode_record_ends(&front, &back, len) {
                    Some(decoded) => decoded,
                    None => decode_record(&tree.get(&key)?.expect("the key was just read"))?,
                },
            };
            if revision.main > current_revision {
                return Err(MvccError::corrupt(format!(
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
            keys: RevisionKeys::with_last_wide(last_wide),
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
            auth,
            range_counts: RefCell::default(),
            read_holds: ReadHolds::default(),
        };
        if compact_revision > finished_compact_revision {
            store.index_pass = Some(IndexPass { after: None });
            store.pending_removal.extend(orphans);
        } else if let Some(orphan) = orphans.first() {
            return Err(MvccError::corrupt(format!(
                "tombstone at revision {} deletes a key that does not exist",
                orphan.main
            )));
        }
        Ok(store)
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
            return Err(MvccError::corrupt(format!(
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
        return Err(MvccError::corrupt(format!(
            "revision {} puts version {} of a key at version {:?}",
            revision.main,
            kv.version,
            index.latest(&kv.key).map(|at| at.version)
        )));
    }
    Ok(())
}
