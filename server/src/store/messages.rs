//! What client cores and the store core say to each other.
//!
//! Each client core has one bounded channel to the store core (calls) and one back
//! (replies). `id` is chosen by the client core and only means something there.

use ringkv_engine::mvcc::SnapshotSource;
use ringkv_proto::etcdserverpb as pb;
use ringkv_proto::ringkvpb::AuthRequest;

use crate::apply::EncodedRangeResponse;
pub use crate::auth::CallAuth;
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
    Auth(AuthCall),
}

/// A call of etcd's Auth service, as the store core takes it.
#[derive(Debug)]
pub enum AuthCall {
    /// Applied through raft, as etcd applies every Auth RPC but AuthStatus.
    Propose(AuthRequest),
    /// AuthStatus, from the applied state.
    Status,
    /// Authenticate's first half: the hash to check the password against,
    /// off the store core.
    PasswordHash(String),
}

/// The store core's answer to an [`AuthCall`].
#[derive(Debug)]
pub enum AuthResponse {
    Enable(pb::AuthEnableResponse),
    Disable(pb::AuthDisableResponse),
    Status(pb::AuthStatusResponse),
    Authenticate(pb::AuthenticateResponse),
    UserAdd(pb::AuthUserAddResponse),
    UserGet(pb::AuthUserGetResponse),
    UserList(pb::AuthUserListResponse),
    UserDelete(pb::AuthUserDeleteResponse),
    UserChangePassword(pb::AuthUserChangePasswordResponse),
    UserGrantRole(pb::AuthUserGrantRoleResponse),
    UserRevokeRole(pb::AuthUserRevokeRoleResponse),
    RoleAdd(pb::AuthRoleAddResponse),
    RoleGet(pb::AuthRoleGetResponse),
    RoleList(pb::AuthRoleListResponse),
    RoleDelete(pb::AuthRoleDeleteResponse),
    RoleGrantPermission(pb::AuthRoleGrantPermissionResponse),
    RoleRevokePermission(pb::AuthRoleRevokePermissionResponse),
    /// The bcrypt hash of a user's password and the auth revision it is
    /// current at (never sent to a client).
    PasswordHash {
        hash: Vec<u8>,
        revision: u64,
    },
}

impl AuthResponse {
    /// The header to fill, if the response goes to a client.
    pub fn header_mut(&mut self) -> Option<&mut Option<pb::ResponseHeader>> {
        use AuthResponse::*;
        Some(match self {
            Enable(r) => &mut r.header,
            Disable(r) => &mut r.header,
            Status(r) => &mut r.header,
            Authenticate(r) => &mut r.header,
            UserAdd(r) => &mut r.header,
            UserGet(r) => &mut r.header,
            UserList(r) => &mut r.header,
            UserDelete(r) => &mut r.header,
            UserChangePassword(r) => &mut r.header,
            UserGrantRole(r) => &mut r.header,
            UserRevokeRole(r) => &mut r.header,
            RoleAdd(r) => &mut r.header,
            RoleGet(r) => &mut r.header,
            RoleList(r) => &mut r.header,
            RoleDelete(r) => &mut r.header,
            RoleGrantPermission(r) => &mut r.header,
            RoleRevokePermission(r) => &mut r.header,
            PasswordHash { .. } => return None,
        })
    }
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
    Auth(AuthResponse),
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
    /// Who the call comes from (checked only for a `client_rpc`).
    pub auth: CallAuth,
}

/// The answer to the `Call` with the same `id`.
#[derive(Debug)]
pub struct Reply {
    pub id: u64,
    pub result: Result<Response, EtcdError>,
}
