//! A pinned ringkv commit written as etcd 3.5's backend file: the buckets
//! etcd writes, with etcd's encodings ([`crate::etcd`]), so that etcd's tools
//! (`etcdctl snapshot status` and `restore`, etcdutl) read it and an etcd
//! started on the restore serves the same keys at the same revisions. The
//! file is laid out in one pass into `out` (a spool: the metas are written
//! last); memory holds one page per tree level and the small buckets.

use std::collections::BTreeMap;
use std::io::{Seek, Write};

use prost::Message;
use ringkv_engine::mvcc::{MvccError, SnapshotView};
use ringkv_proto::etcdserverpb::AlarmMember;
use ringkv_proto::mvccpb::KeyValue;
use ringkv_proto::ringkvpb::{AuthRecord, Membership};

use crate::bbolt::write::{BucketWriter, PutError, Writer};
use crate::etcd::{
    member_key, revision_key, ConfState, Lease, Member, ALARM_BUCKET, AUTH_BUCKET, AUTH_ENABLED_KEY, AUTH_REVISION_KEY,
    AUTH_ROLES_BUCKET, AUTH_USERS_BUCKET, CLUSTER_BUCKET, CLUSTER_VERSION_KEY, CONF_STATE_KEY, CONSISTENT_INDEX_KEY,
    FINISHED_COMPACT_KEY, KEY_BUCKET, LEASE_BUCKET, MEMBERS_BUCKET, MEMBERS_REMOVED_BUCKET, META_BUCKET, REMOVED_VALUE,
    SCHEDULED_COMPACT_KEY, TERM_KEY,
};

/// What the server adds that the page store does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    /// The raft term to record (etcd 3.5 keeps the term of the applied
    /// entry; etcd 3.6 needs a non-zero one to tell a 3.5 file).
    pub term: u64,
    /// The cluster version the server reports ("3.5.0").
    pub cluster_version: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("reading the store: {0}")]
    Store(#[from] MvccError),
    #[error("writing the snapshot: {0}")]
    Write(#[from] PutError),
    #[error("writing the snapshot: {0}")]
    Io(#[from] std::io::Error),
    #[error("the store's membership record does not decode: {0}")]
    Membership(prost::DecodeError),
    #[error("the store's auth record does not decode: {0}")]
    Auth(prost::DecodeError),
}

/// Writes the commit `view` reads as an etcd backend file into `out`.
pub fn export<F: Write + Seek>(view: &SnapshotView, out: F, info: &ExportInfo) -> Result<F, ExportError> {
    let mut writer = Writer::new(out)?;
    let mut buckets = Vec::new();

    let mut keys = BucketWriter::new();
    for entry in view.revisions() {
        let (revision, tombstone, kv) = entry?;
        let value = if tombstone {
            KeyValue {
                key: kv.key,
                ..KeyValue::default()
            }
            .encode_to_vec()
        } else {
            kv.encode_to_vec()
        };
        keys.put(
            &mut writer,
            &revision_key(revision.main, revision.sub, tombstone),
            &value,
        )?;
    }
    buckets.push((KEY_BUCKET.to_vec(), keys.finish(&mut writer)?));

    // The lease table's keys are the ids big endian, as etcd's: the same order.
    let mut leases = BucketWriter::new();
    for entry in view.leases() {
        let (id, ttl) = entry?;
        let lease = Lease {
            id,
            ttl,
            remaining_ttl: 0,
        };
        leases.put(&mut writer, &id.to_be_bytes(), &lease.encode_to_vec())?;
    }
    buckets.push((LEASE_BUCKET.to_vec(), leases.finish(&mut writer)?));

    let membership = match &view.meta().membership {
        Some(record) => Membership::decode(record.as_slice()).map_err(ExportError::Membership)?,
        None => Membership::default(),
    };
    let auth = match &view.meta().auth {
        Some(record) => Some(AuthRecord::decode(record.as_slice()).map_err(ExportError::Auth)?),
        None => None,
    };
    for (name, entries) in small_buckets(view, &membership, auth.as_ref(), info) {
        let mut bucket = BucketWriter::new();
        for (key, value) in entries {
            bucket.put(&mut writer, &key, &value)?;
        }
        buckets.push((name.to_vec(), bucket.finish(&mut writer)?));
    }
    Ok(writer.finish(buckets)?)
}

type Entries = BTreeMap<Vec<u8>, Vec<u8>>;

/// Every bucket but key and lease, with its entries in key order.
fn small_buckets(
    view: &SnapshotView,
    membership: &Membership,
    auth: Option<&AuthRecord>,
    info: &ExportInfo,
) -> Vec<(&'static [u8], Entries)> {
    let meta = view.meta();
    let mut meta_bucket = Entries::new();
    meta_bucket.insert(CONSISTENT_INDEX_KEY.to_vec(), meta.applied_index.to_be_bytes().to_vec());
    meta_bucket.insert(TERM_KEY.to_vec(), info.term.to_be_bytes().to_vec());
    let conf_state = ConfState {
        voters: membership
            .members
            .iter()
            .filter(|m| !m.is_learner)
            .map(|m| m.id)
            .collect(),
        learners: membership
            .members
            .iter()
            .filter(|m| m.is_learner)
            .map(|m| m.id)
            .collect(),
        auto_leave: false,
    };
    meta_bucket.insert(
        CONF_STATE_KEY.to_vec(),
        serde_json::to_vec(&conf_state).expect("a ConfState serializes"),
    );
    // etcd writes the compaction marks only once it has compacted.
    if meta.compact_revision >= 0 {
        meta_bucket.insert(
            SCHEDULED_COMPACT_KEY.to_vec(),
            revision_key(meta.compact_revision, 0, false),
        );
    }
    if meta.finished_compact_revision >= 0 {
        meta_bucket.insert(
            FINISHED_COMPACT_KEY.to_vec(),
            revision_key(meta.finished_compact_revision, 0, false),
        );
    }

    let members: Entries = membership
        .members
        .iter()
        .map(|member| {
            let json = Member {
                id: member.id,
                peer_urls: member.peer_urls.clone(),
                is_learner: member.is_learner,
                name: member.name.clone(),
                client_urls: member.client_urls.clone(),
            };
            (
                member_key(member.id),
                serde_json::to_vec(&json).expect("a member serializes"),
            )
        })
        .collect();
    let removed: Entries = membership
        .removed_ids
        .iter()
        .map(|&id| (member_key(id), REMOVED_VALUE.to_vec()))
        .collect();
    let alarms: Entries = meta
        .alarms
        .iter()
        .map(|alarm| {
            let key = AlarmMember {
                member_id: alarm.member_id,
                alarm: alarm.kind,
            };
            (key.encode_to_vec(), Vec::new())
        })
        .collect();
    let cluster = Entries::from([(CLUSTER_VERSION_KEY.to_vec(), info.cluster_version.clone().into_bytes())]);
    let (auth, users, roles) = auth_buckets(auth);
    vec![
        (META_BUCKET, meta_bucket),
        (MEMBERS_BUCKET, members),
        (MEMBERS_REMOVED_BUCKET, removed),
        (CLUSTER_BUCKET, cluster),
        (ALARM_BUCKET, alarms),
        (AUTH_BUCKET, auth),
        (AUTH_USERS_BUCKET, users),
        (AUTH_ROLES_BUCKET, roles),
    ]
}

/// The auth, authUsers and authRoles buckets as etcd keeps them: the
/// enabled flag (`[1]`; etcd writes `[0]` after a disable, which reads the
/// same as none) and the revision, users and roles by name in their `authpb`
/// encodings, bcrypt hashes included. A store that never had auth state has
/// what etcd writes in a new cluster: revision 1 and nothing else.
fn auth_buckets(auth: Option<&AuthRecord>) -> (Entries, Entries, Entries) {
    let Some(auth) = auth else {
        return (
            Entries::from([(AUTH_REVISION_KEY.to_vec(), 1u64.to_be_bytes().to_vec())]),
            Entries::new(),
            Entries::new(),
        );
    };
    let mut flags = Entries::from([(AUTH_REVISION_KEY.to_vec(), auth.revision.to_be_bytes().to_vec())]);
    if auth.enabled {
        flags.insert(AUTH_ENABLED_KEY.to_vec(), vec![1]);
    }
    let users = auth
        .users
        .iter()
        .map(|user| (user.name.clone(), user.encode_to_vec()))
        .collect();
    let roles = auth
        .roles
        .iter()
        .map(|role| (role.name.clone(), role.encode_to_vec()))
        .collect();
    (flags, users, roles)
}
