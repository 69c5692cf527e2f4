//! The commit a snapshot pins, read as MVCC data off the store core: the
//! meta integers, the leases and every stored revision in order. An
//! etcd-format snapshot (`ringkv-etcdfile`) is written from it.

use std::ops::Bound;

use ringkv_proto::mvccpb::KeyValue;

use super::alarm::{read_alarms, Alarm};
use super::lease::{decode_lease, LEASE_TABLE};
use super::meta::{
    read_meta, META_APPLIED_INDEX, META_COMPACT_REVISION, META_CURRENT_REVISION, META_FINISHED_COMPACT_REVISION,
};
use super::open::{EMPTY_STORE_REVISION, NEVER_COMPACTED};
use super::record::decode_record;
use super::revision::{Revision, REVISION_TABLE};
use super::server_record::{META_AUTH, META_MEMBERSHIP};
use super::MvccError;
use crate::btree::Tree;
use crate::page::SnapshotSource;

/// The integers and records of the meta table, as stored (absent ones as
/// `Mvcc::open` reads them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMeta {
    pub current_revision: i64,
    pub compact_revision: i64,
    pub finished_compact_revision: i64,
    pub applied_index: u64,
    pub alarms: Vec<Alarm>,
    /// The server's membership record (`mmembership`), if any.
    pub membership: Option<Vec<u8>>,
    /// The server's auth record (`mauth`), if any.
    pub auth: Option<Vec<u8>>,
}

/// One stored revision: its tree key, whether it deletes its key, and the record.
pub type StoredRevision = (Revision, bool, KeyValue);

pub struct SnapshotView {
    tree: Tree,
    meta: StoredMeta,
}

impl SnapshotView {
    /// Reads the commit `source` pins (blocking reads: call it off the
    /// executor, and keep the pin until the view is dropped).
    pub fn open(source: &SnapshotSource) -> Result<SnapshotView, MvccError> {
        let tree = Tree::open_pinned(source)?;
        let applied_index = read_meta(&tree, META_APPLIED_INDEX)?.unwrap_or(0);
        let meta = StoredMeta {
            current_revision: read_meta(&tree, META_CURRENT_REVISION)?.unwrap_or(EMPTY_STORE_REVISION),
            compact_revision: read_meta(&tree, META_COMPACT_REVISION)?.unwrap_or(NEVER_COMPACTED),
            finished_compact_revision: read_meta(&tree, META_FINISHED_COMPACT_REVISION)?.unwrap_or(NEVER_COMPACTED),
            applied_index: u64::try_from(applied_index)
                .map_err(|_| MvccError::corrupt(format!("negative applied index {applied_index}")))?,
            alarms: read_alarms(&tree)?.into_iter().collect(),
            membership: tree.get(META_MEMBERSHIP)?,
            auth: tree.get(META_AUTH)?,
        };
        Ok(SnapshotView { tree, meta })
    }

    pub fn meta(&self) -> &StoredMeta {
        &self.meta
    }

    /// Every lease as (id, granted TTL in seconds), in the table's order.
    pub fn leases(&self) -> impl Iterator<Item = Result<(i64, i64), MvccError>> + '_ {
        self.table(LEASE_TABLE).map(|entry| {
            let (key, value) = entry?;
            decode_lease(&key, &value)
        })
    }

    /// Every stored revision, oldest first.
    pub fn revisions(&self) -> impl Iterator<Item = Result<StoredRevision, MvccError>> + '_ {
        self.table(REVISION_TABLE).map(|entry| {
            let (key, value) = entry?;
            let revision =
                Revision::from_key(&key).ok_or_else(|| MvccError::corrupt(format!("bad revision key {key:?}")))?;
            let (tombstone, kv) = decode_record(&value)?;
            Ok((revision, tombstone, kv))
        })
    }

    fn table(&self, table: u8) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>), MvccError>> + '_ {
        let (start, end) = ([table], [table + 1]);
        self.tree
            .range(Bound::Included(&start[..]), Bound::Excluded(&end[..]))
            .map(|entry| entry.map_err(MvccError::from))
    }
}
