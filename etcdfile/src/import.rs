//! An etcd backend file into a new ringkv page store, history and all: every
//! revision in the key bucket (puts and tombstones, at their revisions, with
//! their create revisions, versions and leases), the compaction point, the
//! leases with their TTLs, the alarms and the consistent index (the store's
//! applied raft index). The store is then opened as any store is, so its
//! checks judge what was read. Members are not imported: as with
//! `etcdutl snapshot restore`, the restored member's cluster comes from its
//! flags. Auth data is refused until ringkv stores it ([`check_auth`]).

use std::collections::BTreeMap;
use std::path::Path;

use prost::Message;
use ringkv_engine::mvcc::{Alarm, LoadedMeta, Loader, Mvcc, MvccError, Revision};
use ringkv_proto::etcdserverpb::AlarmMember;
use ringkv_proto::mvccpb::KeyValue;

use crate::bbolt::read::{BboltError, BucketRoot, Element, Reader};
use crate::etcd::{
    parse_revision_key, Lease, ALARM_BUCKET, AUTH_BUCKET, AUTH_ENABLED_KEY, AUTH_ROLES_BUCKET, AUTH_USERS_BUCKET,
    CONSISTENT_INDEX_KEY, FINISHED_COMPACT_KEY, KEY_BUCKET, LEASE_BUCKET, META_BUCKET, SCHEDULED_COMPACT_KEY,
};

/// An empty store's revision (etcd's and ringkv's).
const EMPTY_STORE_REVISION: i64 = 1;
/// No compaction yet.
const NEVER_COMPACTED: i64 = -1;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Bbolt(#[from] BboltError),
    #[error("not an etcd backend file: {0}")]
    NotEtcd(String),
    #[error("the etcd file's {bucket} bucket holds a bad entry (key {key:?}): {reason}")]
    BadEntry {
        bucket: &'static str,
        key: Vec<u8>,
        reason: String,
    },
    #[error(
        "the etcd snapshot holds auth data ({0}); ringkv cannot import users, roles or an enabled auth yet, and \
         does not drop them: disable auth and delete the users and roles in etcd (`etcdctl auth disable`, \
         `user delete`, `role delete`), take a new snapshot, and set them up again on ringkv"
    )]
    Auth(String),
    #[error("the imported history does not hold together: {0}")]
    Store(#[from] MvccError),
}

/// What an import brought in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportSummary {
    pub revision: i64,
    pub compact_revision: i64,
    /// Revisions imported (puts and tombstones).
    pub revisions: u64,
    pub leases: u64,
    /// etcd's consistent index, kept as the store's applied raft index.
    pub applied_index: u64,
}

/// Imports the etcd database `db` into a new page store at `store` (which
/// must not exist), returning the opened store.
pub fn import(db: &Reader, store: &Path) -> Result<(Mvcc, ImportSummary), ImportError> {
    let buckets: BTreeMap<Vec<u8>, BucketRoot> = db.buckets()?.into_iter().collect();
    let bucket = |name: &[u8]| buckets.get(name);
    let (Some(key_bucket), Some(meta_bucket)) = (bucket(KEY_BUCKET), bucket(META_BUCKET)) else {
        return Err(ImportError::NotEtcd("it has no key or no meta bucket".into()));
    };
    check_auth(db, &buckets)?;
    let meta = read_small(db, meta_bucket, "meta")?;
    let applied_index = match meta.get(CONSISTENT_INDEX_KEY) {
        Some(value) => u64::from_be_bytes(fixed(value, "meta", CONSISTENT_INDEX_KEY)?),
        None => 0,
    };
    let compact_revision = compact_mark(&meta, SCHEDULED_COMPACT_KEY)?;
    let finished_compact_revision = compact_mark(&meta, FINISHED_COMPACT_KEY)?;

    let mut loader = Loader::create(store)?;
    let mut summary = ImportSummary {
        revision: EMPTY_STORE_REVISION,
        compact_revision,
        revisions: 0,
        leases: 0,
        applied_index,
    };
    db.for_each(key_bucket, |element| -> Result<(), ImportError> {
        let (revision, tombstone, kv) = revision_entry(element)?;
        loader.revision(revision, tombstone, &kv)?;
        summary.revision = summary.revision.max(revision.main);
        summary.revisions += 1;
        Ok(())
    })?;
    if let Some(lease_bucket) = bucket(LEASE_BUCKET) {
        db.for_each(lease_bucket, |element| -> Result<(), ImportError> {
            let (id, ttl) = lease_entry(element)?;
            loader.lease(id, ttl)?;
            summary.leases += 1;
            Ok(())
        })?;
    }
    let alarms = match bucket(ALARM_BUCKET) {
        Some(alarm_bucket) => read_alarms(db, alarm_bucket)?,
        None => Vec::new(),
    };
    // etcd's restore: keys up to the compaction may all be gone, and then the
    // compaction's revision is the store's (kvstore.go).
    summary.revision = summary.revision.max(compact_revision);
    let loaded = LoadedMeta {
        current_revision: summary.revision,
        compact_revision,
        finished_compact_revision,
        applied_index,
        alarms,
    };
    let mvcc = loader.finish(&loaded)?;
    Ok((mvcc, summary))
}

/// etcd's consistent index in `db` (the last raft entry its data holds).
pub fn consistent_index(db: &Reader) -> Result<u64, ImportError> {
    let buckets: BTreeMap<Vec<u8>, BucketRoot> = db.buckets()?.into_iter().collect();
    let meta = buckets
        .get(META_BUCKET)
        .ok_or_else(|| ImportError::NotEtcd("it has no meta bucket".into()))?;
    match read_small(db, meta, "meta")?.get(CONSISTENT_INDEX_KEY) {
        Some(value) => Ok(u64::from_be_bytes(fixed(value, "meta", CONSISTENT_INDEX_KEY)?)),
        None => Ok(0),
    }
}

/// Where ringkv's auth state plugs in (issue 18): until it stores users,
/// roles and the enabled flag, a file holding any of them is refused, never
/// imported without them. A cluster that never enabled auth has an auth
/// bucket without `authEnabled` = 1 and empty user and role buckets.
fn check_auth(db: &Reader, buckets: &BTreeMap<Vec<u8>, BucketRoot>) -> Result<(), ImportError> {
    let mut found = Vec::new();
    if let Some(auth) = buckets.get(AUTH_BUCKET) {
        let values = read_small(db, auth, "auth")?;
        if values
            .get(AUTH_ENABLED_KEY)
            .is_some_and(|enabled| enabled.as_slice() == [1])
        {
            found.push("auth is enabled".to_string());
        }
    }
    for (name, what) in [(AUTH_USERS_BUCKET, "users"), (AUTH_ROLES_BUCKET, "roles")] {
        if let Some(root) = buckets.get(name) {
            let count = read_small(db, root, what)?.len();
            if count > 0 {
                found.push(format!("{count} {what}"));
            }
        }
    }
    if found.is_empty() {
        Ok(())
    } else {
        Err(ImportError::Auth(found.join(", ")))
    }
}

fn revision_entry(element: Element<'_>) -> Result<(Revision, bool, KeyValue), ImportError> {
    let bad = |reason: String| ImportError::BadEntry {
        bucket: "key",
        key: element.key.to_vec(),
        reason,
    };
    if element.is_bucket {
        return Err(bad("a nested bucket".into()));
    }
    let (main, sub, tombstone) = parse_revision_key(element.key).ok_or_else(|| bad("not a revision key".into()))?;
    if main < 0 || sub < 0 {
        return Err(bad(format!("negative revision {main}_{sub}")));
    }
    let mut kv = KeyValue::decode(element.value).map_err(|error| bad(error.to_string()))?;
    if tombstone {
        // etcd keeps only the key of a deletion (kvstore_txn.go).
        kv.mod_revision = main;
    }
    Ok((Revision::new(main, sub), tombstone, kv))
}

fn lease_entry(element: Element<'_>) -> Result<(i64, i64), ImportError> {
    let bad = |reason: String| ImportError::BadEntry {
        bucket: "lease",
        key: element.key.to_vec(),
        reason,
    };
    let id = i64::from_be_bytes(element.key.try_into().map_err(|_| bad("not an 8-byte id".into()))?);
    let lease = Lease::decode(element.value).map_err(|error| bad(error.to_string()))?;
    if lease.id != id || lease.ttl <= 0 {
        return Err(bad(format!("holds lease {} with TTL {}", lease.id, lease.ttl)));
    }
    Ok((id, lease.ttl))
}

fn read_alarms(db: &Reader, root: &BucketRoot) -> Result<Vec<Alarm>, ImportError> {
    let entries = read_small(db, root, "alarm")?;
    entries
        .keys()
        .map(|key| {
            let member = AlarmMember::decode(key.as_slice()).map_err(|error| ImportError::BadEntry {
                bucket: "alarm",
                key: key.clone(),
                reason: error.to_string(),
            })?;
            Ok(Alarm {
                member_id: member.member_id,
                kind: member.alarm,
            })
        })
        .collect()
}

/// The entries of a bucket read whole: the small ones (meta, auth, alarm, users, roles).
fn read_small(db: &Reader, root: &BucketRoot, name: &'static str) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, ImportError> {
    let mut entries = BTreeMap::new();
    db.for_each(root, |element| -> Result<(), ImportError> {
        if element.is_bucket {
            return Err(ImportError::BadEntry {
                bucket: name,
                key: element.key.to_vec(),
                reason: "a nested bucket".into(),
            });
        }
        entries.insert(element.key.to_vec(), element.value.to_vec());
        Ok(())
    })?;
    Ok(entries)
}

/// A compaction mark of the meta bucket: a revision key's main, or -1 if absent.
fn compact_mark(meta: &BTreeMap<Vec<u8>, Vec<u8>>, name: &'static [u8]) -> Result<i64, ImportError> {
    let Some(value) = meta.get(name) else {
        return Ok(NEVER_COMPACTED);
    };
    match parse_revision_key(value) {
        Some((main, _, false)) if main >= 0 => Ok(main),
        _ => Err(ImportError::BadEntry {
            bucket: "meta",
            key: name.to_vec(),
            reason: format!("{value:?} is not a revision"),
        }),
    }
}

fn fixed<const N: usize>(value: &[u8], bucket: &'static str, key: &[u8]) -> Result<[u8; N], ImportError> {
    value.try_into().map_err(|_| ImportError::BadEntry {
        bucket,
        key: key.to_vec(),
        reason: format!("{} bytes, not {N}", value.len()),
    })
}

#[cfg(test)]
mod tests {
    use ringkv_engine::mvcc::{KeySpan, RangeEnd, RangeOptions};

    use super::*;
    use crate::bbolt::write::{BucketWriter, Writer};

    /// Made by etcd 3.4.23 (`etcdctl snapshot save`) after: put a 1, put a 2,
    /// put b x, del a, lease grant 600, put c withlease --lease, txn (put t1
    /// v1, put t2 v2), compact 4, put a 3.
    const ETCD_SNAPSHOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/etcd-3.4.23-history.db");

    fn open_fixture() -> Reader {
        let file = std::fs::File::open(ETCD_SNAPSHOT).unwrap();
        let len = file.metadata().unwrap().len();
        let (db_len, checked) = crate::snapshot::check_trailer(&file, len, false).unwrap();
        assert!(checked);
        Reader::open(file, db_len).unwrap()
    }

    #[test]
    fn an_etcd_snapshot_imports_with_every_retained_revision() {
        let dir = tempfile::tempdir().unwrap();
        let (mvcc, summary) = import(&open_fixture(), &dir.path().join("store.db")).unwrap();
        let expected = ImportSummary {
            revision: 8,
            compact_revision: 4,
            revisions: 7,
            leases: 1,
            applied_index: 13,
        };
        assert_eq!(summary, expected);
        assert_eq!((mvcc.current_revision(), mvcc.compact_revision()), (8, 4));
        let get = |key: &[u8], rev: i64| {
            let span = KeySpan {
                key,
                end: RangeEnd::Key,
            };
            let options = RangeOptions {
                rev,
                ..RangeOptions::default()
            };
            mvcc.range(span, options).unwrap().kvs.into_iter().next()
        };
        let a_at_4 = get(b"a", 4).unwrap();
        assert_eq!(
            (
                a_at_4.value.as_slice(),
                a_at_4.create_revision,
                a_at_4.mod_revision,
                a_at_4.version
            ),
            (&b"2"[..], 2, 3, 2)
        );
        assert_eq!(get(b"a", 5), None, "deleted at 5");
        let a_now = get(b"a", 0).unwrap();
        assert_eq!((a_now.create_revision, a_now.version), (8, 1));
        let c = get(b"c", 0).unwrap();
        assert_eq!(c.lease, 0x0568_a245_14c4_3909);
        assert_eq!(mvcc.leases().ttl(c.lease), Some(600));
        assert_eq!(mvcc.leases().keys(c.lease).collect::<Vec<_>>(), [&b"c"[..]]);
        assert!(matches!(
            mvcc.range(
                KeySpan {
                    key: b"a",
                    end: RangeEnd::Key
                },
                RangeOptions {
                    rev: 3,
                    ..RangeOptions::default()
                }
            ),
            Err(MvccError::Compacted)
        ));
        assert_eq!(mvcc.applied_index(), 13);
    }

    /// A file with users is refused before anything is written.
    #[test]
    fn auth_data_is_refused_not_dropped() {
        let mut writer = Writer::new(tempfile::tempfile().unwrap()).unwrap();
        let mut buckets = Vec::new();
        for (name, entries) in [
            (KEY_BUCKET, vec![]),
            (META_BUCKET, vec![]),
            (AUTH_USERS_BUCKET, vec![(b"root".to_vec(), b"x".to_vec())]),
        ] {
            let mut bucket = BucketWriter::new();
            for (key, value) in entries {
                bucket.put(&mut writer, &key, &value).unwrap();
            }
            buckets.push((name.to_vec(), bucket.finish(&mut writer).unwrap()));
        }
        let file = writer.finish(buckets).unwrap();
        let len = file.metadata().unwrap().len();
        let db = Reader::open(file, len).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store.db");
        let Err(error) = import(&db, &store) else {
            panic!("imported");
        };
        assert!(
            matches!(error, ImportError::Auth(ref found) if found == "1 users"),
            "{error}"
        );
        assert!(!store.exists());
    }
}
