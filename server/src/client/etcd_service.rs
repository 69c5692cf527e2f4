//! etcd's gRPC API on a client core: route a method, decode, check, hand to the
//! store core, encode the answer. RPCs of etcd's API that ringkv does not serve yet
//! answer UNIMPLEMENTED, as grpc-go's generated stubs do.

use std::rc::Rc;

use bytes::Bytes;
use futures_lite::future;
use ringkv_proto::etcdserverpb as pb;

use super::auth_service::{AuthMethod, ClientAuth};
use super::concurrency::Keys;
use super::election_service::{self, ElectionMethod};
use super::health::{self, HealthMethod};
use super::leader_monitor::LeaderMonitor;
use super::lease_service::{self, LeaseMethod};
use super::lock_service::{self, LockMethod};
use super::snapshot;
use super::store_client::StoreClient;
use super::watch::{self, WatchRouter};
use crate::apply::{self, check, EncodedRangeResponse};
use crate::etcd_error::EtcdError;
use crate::grpc::{self, CallContext, Code, Encoded, GrpcService, MethodKind, RequestStream, ResponseSink, Status};
use crate::store::messages::{CallAuth, Request, Response};

/// The methods ringkv serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    Unary(UnaryMethod),
    Lease(LeaseMethod),
    /// Watch.Watch, bidi-streaming.
    Watch,
    /// Maintenance.Snapshot, server-streaming.
    Snapshot,
    /// grpc.health.v1.Health, which etcd serves beside its own API.
    Health(HealthMethod),
    /// etcd's Auth service, unary.
    Auth(AuthMethod),
    /// v3lockpb.Lock.
    Lock(LockMethod),
    /// v3electionpb.Election.
    Election(ElectionMethod),
}

impl Method {
    /// How the method streams, as declared in etcd's `.proto`.
    pub(crate) fn kind(self) -> MethodKind {
        match self {
            Method::Unary(_) => MethodKind::Unary,
            Method::Lease(lease) => lease.kind(),
            Method::Watch => MethodKind::BidiStreaming,
            Method::Snapshot => MethodKind::ServerStreaming,
            Method::Health(health) => health.kind(),
            Method::Auth(_) => MethodKind::Unary,
            Method::Lock(lock) => lock.kind(),
            Method::Election(election) => election.kind(),
        }
    }
}

/// The unary methods of KV, Maintenance and Cluster ringkv serves: one request
/// to the store core, one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UnaryMethod {
    Range,
    Put,
    DeleteRange,
    Txn,
    Compact,
    Status,
    Alarm,
    Hash,
    HashKv,
    MoveLeader,
    Defragment,
    MemberList,
    MemberAdd,
    MemberRemove,
    MemberUpdate,
    MemberPromote,
}

/// Every service and method of etcd's v3 API (`etcdserverpb`, `v3lockpb`,
/// `v3electionpb`), for honest UNIMPLEMENTED answers to the ones not served yet.
pub(crate) const ETCD_SERVICES: &[(&str, &[&str])] = &[
    ("etcdserverpb.KV", &["Range", "Put", "DeleteRange", "Txn", "Compact"]),
    ("etcdserverpb.Watch", &["Watch"]),
    (
        "etcdserverpb.Lease",
        &[
            "LeaseGrant",
            "LeaseRevoke",
            "LeaseKeepAlive",
            "LeaseTimeToLive",
            "LeaseLeases",
        ],
    ),
    (
        "etcdserverpb.Cluster",
        &[
            "MemberAdd",
            "MemberRemove",
            "MemberUpdate",
            "MemberList",
            "MemberPromote",
        ],
    ),
    (
        "etcdserverpb.Maintenance",
        &[
            "Alarm",
            "Status",
            "Defragment",
            "Hash",
            "HashKV",
            "Snapshot",
            "MoveLeader",
            "Downgrade",
        ],
    ),
    (
        "etcdserverpb.Auth",
        &[
            "AuthEnable",
            "AuthDisable",
            "AuthStatus",
            "Authenticate",
            "UserAdd",
            "UserGet",
            "UserList",
            "UserDelete",
            "UserChangePassword",
            "UserGrantRole",
            "UserRevokeRole",
            "RoleAdd",
            "RoleGet",
            "RoleList",
            "RoleDelete",
            "RoleGrantPermission",
            "RoleRevokePermission",
        ],
    ),
    (lock_service::SERVICE, &["Lock", "Unlock"]),
    (
        election_service::SERVICE,
        &["Campaign", "Proclaim", "Leader", "Observe", "Resign"],
    ),
];

pub(crate) fn route(path: &str) -> Result<Method, Status> {
    // grpc-go splits `/service/method` at the last slash.
    let name = path.strip_prefix('/').unwrap_or(path);
    let (service, method) = name.rsplit_once('/').ok_or_else(|| {
        // etcd 3.4's grpc-go said RESOURCE_EXHAUSTED here, fixed to UNIMPLEMENTED
        // in grpc-go 1.39 (grpc/grpc-go#4464), which etcd 3.5 uses.
        let quoted = grpc::go_quoted(path.as_bytes());
        Status::new(Code::Unimplemented, format!("malformed method name: {quoted}"))
    })?;
    let unary = match (service, method) {
        ("etcdserverpb.KV", "Range") => Some(UnaryMethod::Range),
        ("etcdserverpb.KV", "Put") => Some(UnaryMethod::Put),
        ("etcdserverpb.KV", "DeleteRange") => Some(UnaryMethod::DeleteRange),
        ("etcdserverpb.KV", "Txn") => Some(UnaryMethod::Txn),
        ("etcdserverpb.KV", "Compact") => Some(UnaryMethod::Compact),
        ("etcdserverpb.Maintenance", "Status") => Some(UnaryMethod::Status),
        ("etcdserverpb.Maintenance", "Alarm") => Some(UnaryMethod::Alarm),
        ("etcdserverpb.Maintenance", "Hash") => Some(UnaryMethod::Hash),
        ("etcdserverpb.Maintenance", "HashKV") => Some(UnaryMethod::HashKv),
        ("etcdserverpb.Maintenance", "MoveLeader") => Some(UnaryMethod::MoveLeader),
        ("etcdserverpb.Maintenance", "Defragment") => Some(UnaryMethod::Defragment),
        ("etcdserverpb.Cluster", "MemberList") => Some(UnaryMethod::MemberList),
        ("etcdserverpb.Cluster", "MemberAdd") => Some(UnaryMethod::MemberAdd),
        ("etcdserverpb.Cluster", "MemberRemove") => Some(UnaryMethod::MemberRemove),
        ("etcdserverpb.Cluster", "MemberUpdate") => Some(UnaryMethod::MemberUpdate),
        ("etcdserverpb.Cluster", "MemberPromote") => Some(UnaryMethod::MemberPromote),
        _ => None,
    };
    if let Some(unary) = unary {
        return Ok(Method::Unary(unary));
    }
    match (service, method) {
        ("etcdserverpb.Watch", "Watch") => return Ok(Method::Watch),
        ("etcdserverpb.Maintenance", "Snapshot") => return Ok(Method::Snapshot),
        _ => {}
    }
    if let Some(lease) = LeaseMethod::route(service, method) {
        return Ok(Method::Lease(lease));
    }
    if let Some(health) = HealthMethod::route(service, method) {
        return Ok(Method::Health(health));
    }
    if let Some(auth) = AuthMethod::route(service, method) {
        return Ok(Method::Auth(auth));
    }
    if let Some(lock) = LockMethod::route(service, method) {
        return Ok(Method::Lock(lock));
    }
    if let Some(election) = ElectionMethod::route(service, method) {
        return Ok(Method::Election(election));
    }
    let Some((_, methods)) = ETCD_SERVICES.iter().find(|(name, _)| *name == service) else {
        return Err(Status::new(Code::Unimplemented, format!("unknown service {service}")));
    };
    if methods.contains(&method) {
        return Err(Status::new(
            Code::Unimplemented,
            format!("method {method} not implemented"),
        ));
    }
    Err(Status::new(
        Code::Unimplemented,
        format!("unknown method {method} for service {service}"),
    ))
}

pub struct EtcdService {
    store: Rc<StoreClient>,
    watches: Rc<WatchRouter>,
    leader_monitor: Rc<LeaderMonitor>,
    /// The Lock and Election services' keys, leases and waits.
    keys: Keys,
    max_txn_ops: usize,
    auth: ClientAuth,
}

impl EtcdService {
    pub fn new(
        store: Rc<StoreClient>,
        watches: Rc<WatchRouter>,
        leader_monitor: Rc<LeaderMonitor>,
        max_txn_ops: usize,
        auth: ClientAuth,
    ) -> EtcdService {
        EtcdService {
            keys: Keys::new(Rc::clone(&store), Rc::clone(&watches)),
            store,
            watches,
            leader_monitor,
            max_txn_ops,
            auth,
        }
    }

    async fn serve_stream(
        &self,
        method: Method,
        requests: RequestStream,
        responses: ResponseSink,
        caller: CallAuth,
    ) -> Result<(), Status> {
        match method {
            Method::Lease(LeaseMethod::KeepAlive) => lease_service::keep_alive(&self.store, requests, responses).await,
            Method::Watch => watch::serve(Rc::clone(&self.watches), requests, responses, caller).await,
            Method::Snapshot => snapshot::serve(&self.store, requests, responses, caller).await,
            Method::Health(HealthMethod::Watch) => health::watch(requests, responses).await,
            Method::Election(ElectionMethod::Observe) => {
                election_service::observe(&self.keys.as_caller(caller), requests, responses).await
            }
            method => unreachable!("{method:?} is unary"),
        }
    }

    /// etcd's interceptors, for a call the store core does not check itself:
    /// a learner refuses it unless `learner_serves`, and with
    /// `require_leader` it needs a leader.
    async fn interceptor_checks(&self, learner_serves: bool, require_leader: bool) -> Result<(), Status> {
        let status = match self.store.call(Request::Status).await.map_err(Status::from)? {
            Response::Status(status) => status,
            other => unreachable!("Status is answered in kind, not with {other:?}"),
        };
        if status.is_learner && !learner_serves {
            return Err(Status::from(EtcdError::NotSupportedForLearner));
        }
        if require_leader && status.leader == 0 {
            return Err(Status::from(EtcdError::NoLeader));
        }
        Ok(())
    }

    /// `require_leader`: the client sent gRPC metadata `hasleader: true`
    /// (clientv3's `WithRequireLeader`): with no leader, etcd's "no leader".
    async fn call(&self, request: Request, require_leader: bool, caller: CallAuth) -> Result<Response, Status> {
        self.store
            .call_rpc_as(request, require_leader, caller)
            .await
            .map_err(Status::from)
    }
}

impl GrpcService for EtcdService {
    fn method_kind(&self, path: &str) -> Result<MethodKind, Status> {
        route(path).map(Method::kind)
    }

    async fn unary(&self, path: &str, request: Bytes, ctx: CallContext) -> Result<Encoded, Status> {
        let require_leader = requires_leader(&ctx);
        let method = route(path)?;
        let caller = self.auth.caller(&ctx)?;
        let unary = match method {
            Method::Unary(unary) => unary,
            // Boxed, as the streaming calls are (`grpc::server`): every unary
            // call's task would otherwise be as large as these rarer ones'.
            Method::Lease(lease) => {
                return Box::pin(lease_service::unary(
                    &self.store,
                    lease,
                    request,
                    require_leader,
                    caller,
                ))
                .await
            }
            Method::Auth(auth) => {
                return Box::pin(self.auth.unary(&self.store, auth, request, caller, require_leader)).await;
            }
            Method::Health(HealthMethod::Check) => {
                // etcd's unary interceptor: a learner answers no Check, and
                // with `hasleader` there must be a leader.
                self.interceptor_checks(false, require_leader).await?;
                return health::check(request);
            }
            // Their calls to the store core are the caller's, as etcd's
            // in-process client's carry the caller's context; the interceptor
            // checks learner and leader once for the whole call.
            Method::Lock(lock) => {
                self.interceptor_checks(false, require_leader).await?;
                return Box::pin(lock_service::unary(&self.keys.as_caller(caller), lock, request)).await;
            }
            Method::Watch
            | Method::Snapshot
            | Method::Health(HealthMethod::Watch)
            | Method::Election(ElectionMethod::Observe) => {
                unreachable!("{path} is streaming")
            }
            Method::Election(election) => {
                self.interceptor_checks(false, require_leader).await?;
                return Box::pin(election_service::unary(&self.keys.as_caller(caller), election, request)).await;
            }
        };
        let request = unary_request(unary, request, self.max_txn_ops)?;
        let response = self.call(request, require_leader, caller).await?;
        Ok(match response {
            Response::Range(response) => grpc::encode(&response),
            Response::RangeEncoded(response) => framed_range(response),
            Response::Put(response) => grpc::encode(&response),
            Response::DeleteRange(response) => grpc::encode(&response),
            Response::Txn(response) => grpc::encode(&response),
            Response::Compact(response) => grpc::encode(&response),
            Response::Status(response) => grpc::encode(&response),
            Response::MemberList(response) => grpc::encode(&response),
            Response::MemberAdd(response) => grpc::encode(&response),
            Response::MemberRemove(response) => grpc::encode(&response),
            Response::MemberUpdate(response) => grpc::encode(&response),
            Response::MemberPromote(response) => grpc::encode(&response),
            Response::Alarm(response) => grpc::encode(&response),
            Response::Hash(response) => grpc::encode(&response),
            Response::HashKv(response) => grpc::encode(&response),
            Response::MoveLeader(response) => grpc::encode(&response),
            Response::Defragment(response) => grpc::encode(&response),
            other => unreachable!("a unary call is answered in kind, not with {other:?}"),
        })
    }

    async fn streaming(
        &self,
        path: &str,
        requests: RequestStream,
        responses: ResponseSink,
        ctx: CallContext,
    ) -> Result<(), Status> {
        let method = route(path)?;
        let caller = self.auth.caller(&ctx)?;
        // etcd's stream interceptor: a learner serves no stream but Snapshot;
        // with `hasleader`, no stream without a leader, and the stream ends once
        // the leader has been gone for a while (`LeaderMonitor`).
        let require_leader = requires_leader(&ctx);
        self.interceptor_checks(method == Method::Snapshot, require_leader)
            .await?;
        if !require_leader {
            return self.serve_stream(method, requests, responses, caller).await;
        }
        future::or(self.serve_stream(method, requests, responses, caller), async {
            self.leader_monitor.lost().await;
            Err(Status::from(EtcdError::NoLeader))
        })
        .await
    }
}

/// Decodes a unary call's request message and makes the checks etcd's gRPC
/// layer makes (`validate`): what the store core is asked, or the status to
/// answer.
pub(crate) fn unary_request(unary: UnaryMethod, request: Bytes, max_txn_ops: usize) -> Result<Request, Status> {
    Ok(match unary {
        UnaryMethod::Range => {
            let request: pb::RangeRequest = grpc::decode(request)?;
            check::check_range(&request)?;
            Request::Range(request)
        }
        UnaryMethod::Put => {
            let request: pb::PutRequest = grpc::decode(request)?;
            check::check_put(&request)?;
            Request::Put(request)
        }
        UnaryMethod::DeleteRange => {
            let request: pb::DeleteRangeRequest = grpc::decode(request)?;
            check::check_delete(&request)?;
            Request::DeleteRange(request)
        }
        UnaryMethod::Txn => {
            let request: pb::TxnRequest = grpc::decode(request)?;
            check::check_txn(&request, max_txn_ops)?;
            Request::Txn(request)
        }
        UnaryMethod::Compact => {
            let request: pb::CompactionRequest = grpc::decode(request)?;
            Request::Compact(request)
        }
        UnaryMethod::Status => {
            let _: pb::StatusRequest = grpc::decode(request)?;
            Request::Status
        }
        UnaryMethod::Alarm => {
            let request: pb::AlarmRequest = grpc::decode(request)?;
            Request::Alarm(request)
        }
        UnaryMethod::Hash => {
            let _: pb::HashRequest = grpc::decode(request)?;
            Request::Hash
        }
        UnaryMethod::HashKv => {
            let request: pb::HashKvRequest = grpc::decode(request)?;
            Request::HashKv(request)
        }
        UnaryMethod::MoveLeader => {
            let request: pb::MoveLeaderRequest = grpc::decode(request)?;
            Request::MoveLeader(request)
        }
        UnaryMethod::Defragment => {
            let _: pb::DefragmentRequest = grpc::decode(request)?;
            Request::Defragment
        }
        UnaryMethod::MemberList => {
            let _: pb::MemberListRequest = grpc::decode(request)?;
            Request::MemberList
        }
        UnaryMethod::MemberAdd => {
            let mut request: pb::MemberAddRequest = grpc::decode(request)?;
            request.peer_ur_ls = check::member_peer_urls(&request.peer_ur_ls)?;
            Request::MemberAdd(request)
        }
        UnaryMethod::MemberRemove => {
            let request: pb::MemberRemoveRequest = grpc::decode(request)?;
            Request::MemberRemove(request)
        }
        UnaryMethod::MemberUpdate => {
            let mut request: pb::MemberUpdateRequest = grpc::decode(request)?;
            request.peer_ur_ls = check::member_peer_urls(&request.peer_ur_ls)?;
            Request::MemberUpdate(request)
        }
        UnaryMethod::MemberPromote => {
            let request: pb::MemberPromoteRequest = grpc::decode(request)?;
            Request::MemberPromote(request)
        }
    })
}

/// The client sent gRPC metadata `hasleader: true` (clientv3's `WithRequireLeader`).
fn requires_leader(ctx: &CallContext) -> bool {
    ctx.metadata
        .get("hasleader")
        .is_some_and(|value| value.as_bytes() == b"true")
}

/// A Range answer assembled from encoded key-values on the store core, framed
/// in the room it kept for the prefix (no copy).
fn framed_range(response: EncodedRangeResponse) -> Encoded {
    const _: () = assert!(grpc::PREFIX_BYTES <= apply::PREFIX_BYTES_MAX);
    Encoded::from_prefixed(response.into_prefixed(grpc::PREFIX_BYTES))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_methods_route() {
        assert_eq!(route("/etcdserverpb.KV/Txn").unwrap(), Method::Unary(UnaryMethod::Txn));
        assert_eq!(
            route("/etcdserverpb.Lease/LeaseLeases").unwrap(),
            Method::Lease(LeaseMethod::Leases)
        );
        assert_eq!(
            route("/etcdserverpb.Maintenance/HashKV").unwrap(),
            Method::Unary(UnaryMethod::HashKv)
        );
        assert_eq!(route("/etcdserverpb.Watch/Watch").unwrap(), Method::Watch);
        assert_eq!(
            route("/etcdserverpb.Cluster/MemberPromote").unwrap(),
            Method::Unary(UnaryMethod::MemberPromote)
        );
        assert_eq!(route("/etcdserverpb.Maintenance/Snapshot").unwrap(), Method::Snapshot);
        assert_eq!(
            route("/etcdserverpb.Maintenance/Defragment").unwrap(),
            Method::Unary(UnaryMethod::Defragment)
        );
    }

    #[test]
    fn lock_and_election_route() {
        assert_eq!(
            route("/v3lockpb.Lock/Unlock").unwrap(),
            Method::Lock(LockMethod::Unlock)
        );
        assert_eq!(
            route("/v3electionpb.Election/Observe").unwrap().kind(),
            MethodKind::ServerStreaming
        );
        assert_eq!(
            route("/v3electionpb.Election/Nope").unwrap_err().message,
            "unknown method Nope for service v3electionpb.Election"
        );
    }

    #[test]
    fn unserved_etcd_rpcs_are_honestly_unimplemented() {
        assert_eq!(
            route("/etcdserverpb.Auth/UserAdd").unwrap(),
            Method::Auth(AuthMethod::UserAdd)
        );
        let status = route("/etcdserverpb.Maintenance/Downgrade").unwrap_err();
        assert_eq!(status.code, Code::Unimplemented);
        assert_eq!(status.message, "method Downgrade not implemented");
    }

    #[test]
    fn names_split_at_the_last_slash_as_grpc_go_does() {
        assert_eq!(
            route("/etcdserverpb.KV/Range/x").unwrap_err().message,
            "unknown service etcdserverpb.KV/Range"
        );
        assert_eq!(
            route("/nothing").unwrap_err().message,
            "malformed method name: \"/nothing\""
        );
    }

    #[test]
    fn unknown_names_get_grpc_gos_texts() {
        assert_eq!(route("/foo.Bar/Baz").unwrap_err().message, "unknown service foo.Bar");
        assert_eq!(
            route("/etcdserverpb.KV/Nope").unwrap_err().message,
            "unknown method Nope for service etcdserverpb.KV"
        );
    }

    fn header() -> impl proptest::strategy::Strategy<Value = Option<pb::ResponseHeader>> {
        use proptest::prelude::*;
        prop::option::of((any::<u64>(), any::<u64>(), any::<i64>(), any::<u64>()).prop_map(
            |(cluster_id, member_id, revision, raft_term)| pb::ResponseHeader {
                cluster_id,
                member_id,
                revision,
                raft_term,
            },
        ))
    }

    proptest::proptest! {
        /// The same frame as prost's encoding of the decoded response, for any
        /// header (the largest included), key-values, `more` and `count`.
        #[test]
        fn a_range_from_encoded_key_values_is_framed_as_prosts_encoding(
            header in header(),
            kvs in proptest::collection::vec(ringkv_proto::arbitrary::key_value(1..20, 0..200), 0..8),
            more in proptest::prelude::any::<bool>(),
            count in proptest::prelude::any::<i64>(),
        ) {
            use prost::Message;

            let mut encoded = EncodedRangeResponse::default();
            for kv in &kvs {
                encoded.push_kv(&kv.encode_to_vec());
            }
            encoded.header = header.clone();
            encoded.more = more;
            encoded.count = count;
            let decoded = pb::RangeResponse { header, kvs, more, count };
            proptest::prop_assert_eq!(framed_range(encoded).into_frame(), grpc::encode(&decoded).into_frame());
        }
    }
}
