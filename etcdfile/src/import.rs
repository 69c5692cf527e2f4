//! An etcd backend file into a new ringkv page store, history and all: every
//! revision in the key bucket (puts and tombstones, at their revisions, with
//! their create revisions, versions and leases), the compaction point, the
//! leases with their TTLs, the alarms and the consistent index (the store's
//! applied raft index). The store is then opened as any store is, so its
//! checks judge what was read. Members are not imported: as with
//! `etcdutl snapshot restore`, the restored member's cluster comes from its
//! flags. Auth (users, roles, the enabled flag and the auth revision) is
//! imported into the server's auth record ([`read_auth`]).

use std::collections::BTreeMap;
use std::path::Path;

use prost::Message;
use ringkv_engine::mvcc::{Alarm, LoadedMeta, Loader, Mvcc, MvccError, Revision};
use ringkv_proto::authpb;
use ringkv_proto::etcdserverpb::AlarmMember;
use ringkv_proto::mvccpb::KeyValue;
use ringkv_proto::ringkvpb::AuthRecord;

use crate::bbolt::read::{BboltError, BucketRoot, Element, Reader};
use crate::etcd::{
    parse_revision_key, Lease, ALARM_BUCKET, AUTH_BUCKET, AUTH_ENABLED_KEY, AUTH_REVISION_KEY, AUTH_ROLES_BUCKET,
    AUTH_USERS_BUCKET, CONSISTENT_INDEX_KEY, FINISHED_COMPACT_KEY, KEY_BUCKET, LEASE_BUCKET, META_BUCKET,
    SCHEDULED_COMPACT_KEY,
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
    let auth = read_auth(db, &buckets)?;
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
        auth: auth.map(|record| record.encode_to_vec()),
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

/// etcd's auth state in `db` as the server's auth record (ringkvpb.AuthRecord,
/// as docs/mvcc-format.md's `mauth`), or None for a file with no auth bucket.
/// Users and roles keep etcd's encodings (`authpb.User`, `authpb.Role`), the
/// bcrypt hashes included, so every password works after the import.
fn read_auth(db: &Reader, buckets: &BTreeMap<Vec<u8>, BucketRoot>) -> Result<Option<AuthRecord>, ImportError> {
    let Some(auth) = buckets.get(AUTH_BUCKET) else {
        return Ok(None);
    };
    let values = read_small(db, auth, "auth")?;
    let enabled = values.get(AUTH_ENABLED_KEY).is_some_and(|flag| flag.as_slice() == [1]);
    // etcd writes revision 1 into a new auth bucket.
    let revision = match values.get(AUTH_REVISION_KEY) {
        Some(value) => u64::from_be_bytes(fixed(value, "auth", AUTH_REVISION_KEY)?),
        None => 1,
    };
    let mut record = AuthRecord {
        enabled,
        revision,
        users: Vec::new(),
        roles: Vec::new(),
    };
    if let Some(root) = buckets.get(AUTH_USERS_BUCKET) {
        for (name, value) in read_small(db, root, "authUsers")? {
            let mut user: authpb::User = named_entry("authUsers", name, &value, |user: &authpb::User| &user.name)?;
            user.roles.sort();
            record.users.push(user);
        }
    }
    if let Some(root) = buckets.get(AUTH_ROLES_BUCKET) {
        for (name, value) in read_small(db, root, "authRoles")? {
            let mut role: authpb::Role = named_entry("authRoles", name, &value, |role: &authpb::Role| &role.name)?;
            role.key_permission.sort_by(|a, b| a.key.cmp(&b.key));
            record.roles.push(role);
        }
    }
    Ok(Some(record))
}

/// A user or role entry: its protobuf, whose name must be the entry's key.
fn named_entry<T: Message + Default>(
    bucket: &'static str,
    key: Vec<u8>,
    value: &[u8],
    name: impl Fn(&T) -> &Vec<u8>,
) -> Result<T, ImportError> {
    let bad = |key: Vec<u8>, reason: String| ImportError::BadEntry { bucket, key, reason };
    let entry = T::decode(value).map_err(|error| bad(key.clone(), error.to_string()))?;
    if *name(&entry) != key {
        return Err(bad(key, "the entry's name is not its key".into()));
    }
    Ok(entry)
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

    /// A bucket's name and its entries.
    type TestBucket<'a> = (&'a [u8], Vec<(Vec<u8>, Vec<u8>)>);

    /// A file of `buckets`, each with its entries.
    fn bbolt_file(buckets: Vec<TestBucket<'_>>) -> Reader {
        let mut writer = Writer::new(tempfile::tempfile().unwrap()).unwrap();
        let mut roots = Vec::new();
        for (name, entries) in buckets {
            let mut bucket = BucketWriter::new();
            for (key, value) in entries {
                bucket.put(&mut writer, &key, &value).unwrap();
            }
            roots.push((name.to_vec(), bucket.finish(&mut writer).unwrap()));
        }
        let file = writer.finish(roots).unwrap();
        let len = file.metadata().unwrap().len();
        Reader::open(file, len).unwrap()
    }

    #[test]
    fn auth_imports_with_hashes_roles_and_revision() {
        let root = authpb::User {
            name: b"root".to_vec(),
            password: b"$2a$10$hash".to_vec(),
            roles: vec!["root".into(), "app".into()],
            options: None,
        };
        let app = authpb::Role {
            name: b"app".to_vec(),
            key_permission: vec![
                authpb::Permission {
                    perm_type: authpb::permission::Type::Write as i32,
                    key: b"z".to_vec(),
                    range_end: Vec::new(),
                },
                authpb::Permission {
                    perm_type: authpb::permission::Type::Read as i32,
                    key: b"a".to_vec(),
                    range_end: b"b".to_vec(),
                },
            ],
        };
        let db = bbolt_file(vec![
            (KEY_BUCKET, vec![]),
            (META_BUCKET, vec![]),
            (
                AUTH_BUCKET,
                vec![
                    (AUTH_ENABLED_KEY.to_vec(), vec![1]),
                    (AUTH_REVISION_KEY.to_vec(), 7u64.to_be_bytes().to_vec()),
                ],
            ),
            (AUTH_USERS_BUCKET, vec![(b"root".to_vec(), root.encode_to_vec())]),
            (AUTH_ROLES_BUCKET, vec![(b"app".to_vec(), app.encode_to_vec())]),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store.db");
        drop(import(&db, &store).unwrap());
        // Read back from the file: the import's own commit holds the record.
        let mvcc = Mvcc::open(&store).unwrap();
        let record = AuthRecord::decode(mvcc.auth().expect("an auth record")).unwrap();
        assert!(record.enabled);
        assert_eq!(record.revision, 7);
        assert_eq!(record.users.len(), 1);
        assert_eq!(record.users[0].password, root.password, "the hash is kept");
        assert_eq!(record.users[0].roles, ["app", "root"], "roles sorted");
        assert_eq!(record.roles.len(), 1);
        let keys: Vec<&[u8]> = record.roles[0]
            .key_permission
            .iter()
            .map(|p| p.key.as_slice())
            .collect();
        assert_eq!(keys, [&b"a"[..], b"z"], "permissions sorted by key, as etcd keeps them");
    }

    /// A user whose entry names another user is refused before anything is written.
    #[test]
    fn a_user_entry_under_another_name_is_refused() {
        let user = authpb::User {
            name: b"alice".to_vec(),
            ..authpb::User::default()
        };
        let db = bbolt_file(vec![
            (KEY_BUCKET, vec![]),
            (META_BUCKET, vec![]),
            (AUTH_BUCKET, vec![]),
            (AUTH_USERS_BUCKET, vec![(b"root".to_vec(), user.encode_to_vec())]),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store.db");
        let Err(error) = import(&db, &store) else {
            panic!("imported");
        };
        assert!(
            matches!(error, ImportError::BadEntry { bucket: "authUsers", ref key, .. } if key == b"root"),
            "{error}"
        );
        assert!(!store.exists());
    }
}
