//! What client cores and the store core say to each other.
//!
//! Each client core has one bounded channel to the store core (calls) and one back
//! (replies). `id` is chosen by the client core and only means something there.

use ringkv_engine::mvcc::SnapshotSource;
use ringkv_proto::etcdserverpb as pb;

use crate::apply::EncodedRangeResponse;
use crate::etcd_error::EtcdError;
use crate::metrics::MetricsSnapshot;

/// A request for the store core. Reads (`Range`, read-only `Txn`), the
/// leader-answered lease calls (KeepAlive, TimeToLive, Leases) and maintenance
/// queries never enter the raft log; writes, lease grants and revokes, and alarm
/// changes are proposed.
#[derive(Debug)]
pub enum Request {
    Range(pb::RangeRequest),
    Put(pb::PutRequest),
    DeleteRange(pb::DeleteRangeRequest),
    Txn(pb::TxnRequest),
    Compact(pb::CompactionRequest),
    LeaseGrant(pb::LeaseGrantRequest),
    LeaseRevoke(pb::LeaseRevokeRequest),
    /// One request of a LeaseKeepAlive stream; answered by the leader (a follower forwards it).
    LeaseKeepAlive(pb::LeaseKeepAliveRequest),
    LeaseTimeToLive(pb::LeaseTimeToLiveRequest),
    LeaseLeases(pb::LeaseLeasesRequest),
    Status,
    MemberList,
    /// Membership changes: proposed (strict reconfiguration check first),
    /// answered once applied.
    MemberAdd(pb::MemberAddRequest),
    MemberRemove(pb::MemberRemoveRequest),
    MemberUpdate(pb::MemberUpdateRequest),
    MemberPromote(pb::MemberPromoteRequest),
    Alarm(pb::AlarmRequest),
    Hash,
    HashKv(pb::HashKvRequest),
    MoveLeader(pb::MoveLeaderRequest),
    /// Answered when the defragmentation it starts (or joins) is done.
    Defragment,
    /// A pinned copy of the store, as of a commit holding every write applied
    /// before the call; release it with `SnapshotRelease`.
    Snapshot,
    /// The copy with this txid (`SnapshotSource::txid`) is no longer read.
    SnapshotRelease(u64),
    /// Counters and sizes for `/metrics`.
    Metrics,
}

/// The store core's answer to a [`Request`] of the same kind.
#[derive(Debug)]
pub enum Response {
    Range(pb::RangeResponse),
    /// A Range whose key-values were copied into the message as stored.
    RangeEncoded(EncodedRangeResponse),
    Put(pb::PutResponse),
    DeleteRange(pb::DeleteRangeResponse),
    Txn(pb::TxnResponse),
    Compact(pb::CompactionResponse),
    LeaseGrant(pb::LeaseGrantResponse),
    LeaseRevoke(pb::LeaseRevokeResponse),
    LeaseKeepAlive(pb::LeaseKeepAliveResponse),
    LeaseTimeToLive(pb::LeaseTimeToLiveResponse),
    LeaseLeases(pb::LeaseLeasesResponse),
    Status(pb::StatusResponse),
    MemberList(pb::MemberListResponse),
    MemberAdd(pb::MemberAddResponse),
    MemberRemove(pb::MemberRemoveResponse),
    MemberUpdate(pb::MemberUpdateResponse),
    MemberPromote(pb::MemberPromoteResponse),
    Alarm(pb::AlarmResponse),
    Hash(pb::HashResponse),
    HashKv(pb::HashKvResponse),
    MoveLeader(pb::MoveLeaderResponse),
    Defragment(pb::DefragmentResponse),
    Snapshot(Box<ClientSnapshot>),
    SnapshotReleased,
    Metrics(Box<MetricsSnapshot>),
}

/// A Maintenance.Snapshot's pinned commit and what the client core needs to
/// write it in etcd's format.
#[derive(Debug)]
pub struct ClientSnapshot {
    pub source: SnapshotSource,
    /// Where the etcd-format file is spooled (unnamed: nothing to clean up).
    pub spool_dir: std::path::PathBuf,
    /// The raft term now (etcd 3.5 records one in its meta bucket).
    pub term: u64,
}

/// A request in flight from one client core.
#[derive(Debug)]
pub struct Call {
    pub id: u64,
    pub request: Request,
    /// The client asked for a leader (`hasleader` metadata): with none known,
    /// the call fails with etcd's "no leader" instead of being served.
    pub require_leader: bool,
    /// A client's etcd RPC (not the server's own call, e.g. for `/health`): on
    /// a learner only Status and serializable Range are served, as etcd's
    /// gRPC interceptor allows.
    pub client_rpc: bool,
}

/// The answer to the `Call` with the same `id`.
#[derive(Debug)]
pub struct Reply {
    pub id: u64,
    pub result: Result<Response, EtcdError>,
}
