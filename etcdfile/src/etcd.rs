//! etcd's buckets in its backend file and how it encodes their keys and
//! values (etcd 3.5: server/mvcc/buckets, kvstore.go, lease/lessor.go,
//! membership/store.go, auth/store.go; 3.4 writes the same but `term` and
//! `confState`).

use prost::Message;

pub const KEY_BUCKET: &[u8] = b"key";
pub const META_BUCKET: &[u8] = b"meta";
pub const LEASE_BUCKET: &[u8] = b"lease";
pub const ALARM_BUCKET: &[u8] = b"alarm";
pub const CLUSTER_BUCKET: &[u8] = b"cluster";
pub const MEMBERS_BUCKET: &[u8] = b"members";
pub const MEMBERS_REMOVED_BUCKET: &[u8] = b"members_removed";
pub const AUTH_BUCKET: &[u8] = b"auth";
pub const AUTH_USERS_BUCKET: &[u8] = b"authUsers";
pub const AUTH_ROLES_BUCKET: &[u8] = b"authRoles";

/// Meta bucket keys.
pub const CONSISTENT_INDEX_KEY: &[u8] = b"consistent_index";
pub const TERM_KEY: &[u8] = b"term";
pub const CONF_STATE_KEY: &[u8] = b"confState";
pub const SCHEDULED_COMPACT_KEY: &[u8] = b"scheduledCompactRev";
pub const FINISHED_COMPACT_KEY: &[u8] = b"finishedCompactRev";
/// Cluster bucket key: the cluster version as text ("3.5.0").
pub const CLUSTER_VERSION_KEY: &[u8] = b"clusterVersion";
/// Auth bucket keys: enabled is one byte (1: on), the revision 8 bytes big endian.
pub const AUTH_ENABLED_KEY: &[u8] = b"authEnabled";
pub const AUTH_REVISION_KEY: &[u8] = b"authRevision";
/// A removed member's value in `members_removed`.
pub const REMOVED_VALUE: &[u8] = b"removed";

/// A revision key: 8-byte big-endian main, `_`, 8-byte big-endian sub.
pub const REVISION_KEY_BYTES: usize = 17;
/// What ends a tombstone's revision key (one byte more).
pub const TOMBSTONE_MARK: u8 = b't';

/// A revision as etcd keys it: (main, sub), and `t` after it for a deletion.
pub fn revision_key(main: i64, sub: i64, tombstone: bool) -> Vec<u8> {
    let mut key = Vec::with_capacity(REVISION_KEY_BYTES + 1);
    key.extend_from_slice(&main.to_be_bytes());
    key.push(b'_');
    key.extend_from_slice(&sub.to_be_bytes());
    if tombstone {
        key.push(TOMBSTONE_MARK);
    }
    key
}

/// (main, sub, tombstone) of an etcd revision key; None if it is not one.
pub fn parse_revision_key(key: &[u8]) -> Option<(i64, i64, bool)> {
    let tombstone = match key.len() {
        REVISION_KEY_BYTES => false,
        len if len == REVISION_KEY_BYTES + 1 && key[REVISION_KEY_BYTES] == TOMBSTONE_MARK => true,
        _ => return None,
    };
    if key[8] != b'_' {
        return None;
    }
    let main = i64::from_be_bytes(key[..8].try_into().expect("8 bytes"));
    let sub = i64::from_be_bytes(key[9..17].try_into().expect("8 bytes"));
    Some((main, sub, tombstone))
}

/// etcd's `leasepb.Lease`, the lease bucket's value (key: the id, 8 bytes
/// big endian). `remaining_ttl` is 3.5's checkpoint, 0 when never checkpointed.
#[derive(Clone, PartialEq, Message)]
pub struct Lease {
    #[prost(int64, tag = "1")]
    pub id: i64,
    #[prost(int64, tag = "2")]
    pub ttl: i64,
    #[prost(int64, tag = "3")]
    pub remaining_ttl: i64,
}

/// A member as etcd keeps it in the members bucket: JSON of membership.Member
/// (key: the id in hex, no padding).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    pub id: u64,
    #[serde(rename = "peerURLs")]
    pub peer_urls: Vec<String>,
    #[serde(rename = "isLearner", default, skip_serializing_if = "std::ops::Not::not")]
    pub is_learner: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(rename = "clientURLs", default, skip_serializing_if = "Vec::is_empty")]
    pub client_urls: Vec<String>,
}

/// A member's key in the members and members_removed buckets.
pub fn member_key(id: u64) -> Vec<u8> {
    format!("{id:x}").into_bytes()
}

/// raftpb.ConfState as etcd 3.5 stores it in the meta bucket (JSON).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConfState {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub voters: Vec<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub learners: Vec<u64>,
    pub auto_leave: bool,
}
