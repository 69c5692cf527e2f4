//! etcd's JSON gateway (grpc-gateway v1, as etcd 3.4 serves it on the client
//! port): a POST of a JSON request to `/v3/...` (or `/v3beta/...`) is the
//! gRPC call its path names, made on this client core as a gRPC client's
//! would be; the answer is the response in JSON, streams as one
//! `{"result":...}` line per message. JSON is protobuf's mapping with proto
//! field names (jsonpb's `OrigName`): 64-bit integers as strings, bytes as
//! base64, defaults left out.

use std::rc::Rc;

use bytes::Bytes;
use prost::Message;
use ringkv_proto::etcdserverpb as pb;
use ringkv_proto::{v3electionpb, v3lockpb};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::etcd_service::EtcdService;
use crate::grpc::{CallContext, Code, GrpcService, RequestStream, ResponseSink, Status, PREFIX_BYTES};
use crate::net::{Chunks, HttpRequest, HttpResponse};

/// Response messages of a gateway stream waiting to be written out at most:
/// the call waits for room as for an HTTP/2 window.
const STREAM_MESSAGES_WAITING_MAX: usize = 16;

/// Request messages one gateway stream's body may hold (a watch's creates
/// and cancels, a keepalive's pings): a body of the largest size could hold
/// about a million tiny JSON objects, each a request decoded and handled
/// before the stream could answer. A body with more is refused before any is
/// handled. grpc-gateway (etcd) has no limit.
const STREAM_REQUEST_MESSAGES_MAX: usize = 1024;

/// One gateway path: the gRPC method it calls, and how its messages turn
/// from and into JSON.
struct Route {
    grpc_path: &'static str,
    shape: Shape,
}

#[derive(Clone, Copy)]
enum Shape {
    Unary {
        request: fn(&[u8]) -> Result<Bytes, Status>,
        response: fn(&[u8]) -> Result<Vec<u8>, Status>,
    },
    /// Every request message the body holds, one JSON object after another;
    /// then the client half-closes.
    Stream {
        requests: fn(&[u8]) -> Result<Vec<Bytes>, Status>,
        response: fn(&[u8]) -> Result<Vec<u8>, Status>,
    },
}

fn unary<Q, R>(grpc_path: &'static str) -> Route
where
    Q: DeserializeOwned + Message + Default,
    R: Serialize + Message + Default,
{
    Route {
        grpc_path,
        shape: Shape::Unary {
            request: from_json::<Q>,
            response: to_json::<R>,
        },
    }
}

fn stream<Q, R>(grpc_path: &'static str) -> Route
where
    Q: DeserializeOwned + Message + Default,
    R: Serialize + Message + Default,
{
    Route {
        grpc_path,
        shape: Shape::Stream {
            requests: from_json_objects::<Q>,
            response: to_json::<R>,
        },
    }
}

/// The route of `path`, with `/v3beta/` read as `/v3/` (etcd 3.4 serves both).
fn route(path: &str) -> Option<Route> {
    let path = match path.strip_prefix("/v3beta/") {
        Some(rest) => format!("/v3/{rest}"),
        None => path.to_string(),
    };
    let route = match path.as_str() {
        "/v3/kv/range" => unary::<pb::RangeRequest, pb::RangeResponse>("/etcdserverpb.KV/Range"),
        "/v3/kv/put" => unary::<pb::PutRequest, pb::PutResponse>("/etcdserverpb.KV/Put"),
        "/v3/kv/deleterange" => {
            unary::<pb::DeleteRangeRequest, pb::DeleteRangeResponse>("/etcdserverpb.KV/DeleteRange")
        }
        "/v3/kv/txn" => unary::<pb::TxnRequest, pb::TxnResponse>("/etcdserverpb.KV/Txn"),
        "/v3/kv/compaction" => unary::<pb::CompactionRequest, pb::CompactionResponse>("/etcdserverpb.KV/Compact"),
        "/v3/watch" => stream::<pb::WatchRequest, pb::WatchResponse>("/etcdserverpb.Watch/Watch"),
        "/v3/lease/grant" => unary::<pb::LeaseGrantRequest, pb::LeaseGrantResponse>("/etcdserverpb.Lease/LeaseGrant"),
        "/v3/lease/revoke" | "/v3/kv/lease/revoke" => {
            unary::<pb::LeaseRevokeRequest, pb::LeaseRevokeResponse>("/etcdserverpb.Lease/LeaseRevoke")
        }
        "/v3/lease/keepalive" => {
            stream::<pb::LeaseKeepAliveRequest, pb::LeaseKeepAliveResponse>("/etcdserverpb.Lease/LeaseKeepAlive")
        }
        "/v3/lease/timetolive" | "/v3/kv/lease/timetolive" => {
            unary::<pb::LeaseTimeToLiveRequest, pb::LeaseTimeToLiveResponse>("/etcdserverpb.Lease/LeaseTimeToLive")
        }
        "/v3/lease/leases" | "/v3/kv/lease/leases" => {
            unary::<pb::LeaseLeasesRequest, pb::LeaseLeasesResponse>("/etcdserverpb.Lease/LeaseLeases")
        }
        "/v3/cluster/member/add" => {
            unary::<pb::MemberAddRequest, pb::MemberAddResponse>("/etcdserverpb.Cluster/MemberAdd")
        }
        "/v3/cluster/member/remove" => {
            unary::<pb::MemberRemoveRequest, pb::MemberRemoveResponse>("/etcdserverpb.Cluster/MemberRemove")
        }
        "/v3/cluster/member/update" => {
            unary::<pb::MemberUpdateRequest, pb::MemberUpdateResponse>("/etcdserverpb.Cluster/MemberUpdate")
        }
        "/v3/cluster/member/list" => {
            unary::<pb::MemberListRequest, pb::MemberListResponse>("/etcdserverpb.Cluster/MemberList")
        }
        "/v3/cluster/member/promote" => {
            unary::<pb::MemberPromoteRequest, pb::MemberPromoteResponse>("/etcdserverpb.Cluster/MemberPromote")
        }
        "/v3/maintenance/alarm" => unary::<pb::AlarmRequest, pb::AlarmResponse>("/etcdserverpb.Maintenance/Alarm"),
        "/v3/maintenance/status" => unary::<pb::StatusRequest, pb::StatusResponse>("/etcdserverpb.Maintenance/Status"),
        "/v3/maintenance/defragment" => {
            unary::<pb::DefragmentRequest, pb::DefragmentResponse>("/etcdserverpb.Maintenance/Defragment")
        }
        // etcd's rpc.proto gives Hash and HashKV this one path; the gateway
        // registers Hash's first, and it is Hash that answers.
        "/v3/maintenance/hash" => unary::<pb::HashRequest, pb::HashResponse>("/etcdserverpb.Maintenance/Hash"),
        "/v3/maintenance/snapshot" => {
            stream::<pb::SnapshotRequest, pb::SnapshotResponse>("/etcdserverpb.Maintenance/Snapshot")
        }
        "/v3/maintenance/transfer-leadership" => {
            unary::<pb::MoveLeaderRequest, pb::MoveLeaderResponse>("/etcdserverpb.Maintenance/MoveLeader")
        }
        "/v3/auth/enable" => unary::<pb::AuthEnableRequest, pb::AuthEnableResponse>("/etcdserverpb.Auth/AuthEnable"),
        "/v3/auth/disable" => {
            unary::<pb::AuthDisableRequest, pb::AuthDisableResponse>("/etcdserverpb.Auth/AuthDisable")
        }
        "/v3/auth/authenticate" => {
            unary::<pb::AuthenticateRequest, pb::AuthenticateResponse>("/etcdserverpb.Auth/Authenticate")
        }
        "/v3/auth/user/add" => unary::<pb::AuthUserAddRequest, pb::AuthUserAddResponse>("/etcdserverpb.Auth/UserAdd"),
        "/v3/auth/user/get" => unary::<pb::AuthUserGetRequest, pb::AuthUserGetResponse>("/etcdserverpb.Auth/UserGet"),
        "/v3/auth/user/list" => {
            unary::<pb::AuthUserListRequest, pb::AuthUserListResponse>("/etcdserverpb.Auth/UserList")
        }
        "/v3/auth/user/delete" => {
            unary::<pb::AuthUserDeleteRequest, pb::AuthUserDeleteResponse>("/etcdserverpb.Auth/UserDelete")
        }
        "/v3/auth/user/changepw" => unary::<pb::AuthUserChangePasswordRequest, pb::AuthUserChangePasswordResponse>(
            "/etcdserverpb.Auth/UserChangePassword",
        ),
        "/v3/auth/user/grant" => {
            unary::<pb::AuthUserGrantRoleRequest, pb::AuthUserGrantRoleResponse>("/etcdserverpb.Auth/UserGrantRole")
        }
        "/v3/auth/user/revoke" => {
            unary::<pb::AuthUserRevokeRoleRequest, pb::AuthUserRevokeRoleResponse>("/etcdserverpb.Auth/UserRevokeRole")
        }
        "/v3/auth/role/add" => unary::<pb::AuthRoleAddRequest, pb::AuthRoleAddResponse>("/etcdserverpb.Auth/RoleAdd"),
        "/v3/auth/role/get" => unary::<pb::AuthRoleGetRequest, pb::AuthRoleGetResponse>("/etcdserverpb.Auth/RoleGet"),
        "/v3/auth/role/list" => {
            unary::<pb::AuthRoleListRequest, pb::AuthRoleListResponse>("/etcdserverpb.Auth/RoleList")
        }
        "/v3/auth/role/delete" => {
            unary::<pb::AuthRoleDeleteRequest, pb::AuthRoleDeleteResponse>("/etcdserverpb.Auth/RoleDelete")
        }
        "/v3/auth/role/grant" => unary::<pb::AuthRoleGrantPermissionRequest, pb::AuthRoleGrantPermissionResponse>(
            "/etcdserverpb.Auth/RoleGrantPermission",
        ),
        "/v3/auth/role/revoke" => unary::<pb::AuthRoleRevokePermissionRequest, pb::AuthRoleRevokePermissionResponse>(
            "/etcdserverpb.Auth/RoleRevokePermission",
        ),
        "/v3/lock/lock" => unary::<v3lockpb::LockRequest, v3lockpb::LockResponse>("/v3lockpb.Lock/Lock"),
        "/v3/lock/unlock" => unary::<v3lockpb::UnlockRequest, v3lockpb::UnlockResponse>("/v3lockpb.Lock/Unlock"),
        "/v3/election/campaign" => {
            unary::<v3electionpb::CampaignRequest, v3electionpb::CampaignResponse>("/v3electionpb.Election/Campaign")
        }
        "/v3/election/proclaim" => {
            unary::<v3electionpb::ProclaimRequest, v3electionpb::ProclaimResponse>("/v3electionpb.Election/Proclaim")
        }
        "/v3/election/leader" => {
            unary::<v3electionpb::LeaderRequest, v3electionpb::LeaderResponse>("/v3electionpb.Election/Leader")
        }
        "/v3/election/observe" => {
            stream::<v3electionpb::LeaderRequest, v3electionpb::LeaderResponse>("/v3electionpb.Election/Observe")
        }
        "/v3/election/resign" => {
            unary::<v3electionpb::ResignRequest, v3electionpb::ResignResponse>("/v3electionpb.Election/Resign")
        }
        _ => return None,
    };
    Some(route)
}

/// A request message from its JSON; an empty body is the empty message, as
/// grpc-gateway reads one.
fn from_json<Q: DeserializeOwned + Message + Default>(body: &[u8]) -> Result<Bytes, Status> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Bytes::new());
    }
    let request: Q =
        serde_json::from_slice(body).map_err(|error| Status::new(Code::InvalidArgument, error.to_string()))?;
    Ok(request.encode_to_vec().into())
}

/// Every request message of a stream's body, JSON objects one after another,
/// at most `STREAM_REQUEST_MESSAGES_MAX` of them.
fn from_json_objects<Q: DeserializeOwned + Message + Default>(body: &[u8]) -> Result<Vec<Bytes>, Status> {
    let requests: Vec<Bytes> = serde_json::Deserializer::from_slice(body)
        .into_iter::<Q>()
        .take(STREAM_REQUEST_MESSAGES_MAX + 1)
        .map(|request| {
            request
                .map(|request| Bytes::from(request.encode_to_vec()))
                .map_err(|error| Status::new(Code::Unknown, error.to_string()))
        })
        .collect::<Result<_, _>>()?;
    if requests.len() > STREAM_REQUEST_MESSAGES_MAX {
        return Err(Status::new(
            Code::InvalidArgument,
            format!("ringkv: a gateway stream's body holds more than {STREAM_REQUEST_MESSAGES_MAX} request messages"),
        ));
    }
    Ok(requests)
}

/// A response message's JSON, from its protobuf encoding.
fn to_json<R: Serialize + Message + Default>(message: &[u8]) -> Result<Vec<u8>, Status> {
    let response = R::decode(message).map_err(|error| Status::new(Code::Internal, error.to_string()))?;
    serde_json::to_vec(&response).map_err(|error| Status::new(Code::Internal, error.to_string()))
}

/// The JSON gateway of one client core.
pub struct Gateway {
    service: Rc<EtcdService>,
}

impl Gateway {
    pub fn new(service: Rc<EtcdService>) -> Gateway {
        Gateway { service }
    }

    /// The answer to `request` if its path is the gateway's (`/v3/...`,
    /// `/v3beta/...`); None for any other path.
    pub async fn handle(&self, request: &HttpRequest) -> Option<HttpResponse> {
        if !(request.path.starts_with("/v3/") || request.path.starts_with("/v3beta/")) {
            return None;
        }
        // grpc-gateway's own answers, from Go's net/http.
        let Some(route) = route(&request.path) else {
            return Some(HttpResponse::text(404, "Not Found\n"));
        };
        if request.method != "POST" {
            return Some(HttpResponse::text(405, "Method Not Allowed\n"));
        }
        let ctx = call_context(request);
        Some(match route.shape {
            Shape::Unary {
                request: decode,
                response,
            } => {
                let answer = self.unary(route.grpc_path, decode(&request.body), response, ctx).await;
                match answer {
                    Ok(json) => HttpResponse::json(200, String::from_utf8(json).expect("serde_json writes UTF-8")),
                    Err(status) => error_response(&status),
                }
            }
            Shape::Stream { requests, response } => match requests(&request.body) {
                Ok(requests) => self.stream(route.grpc_path, requests, response, ctx).await,
                Err(status) => error_response(&status),
            },
        })
    }

    async fn unary(
        &self,
        grpc_path: &str,
        request: Result<Bytes, Status>,
        response: fn(&[u8]) -> Result<Vec<u8>, Status>,
        ctx: CallContext,
    ) -> Result<Vec<u8>, Status> {
        let answer = self.service.unary(grpc_path, request?, ctx).await?;
        response(&answer.into_frame()?[PREFIX_BYTES..])
    }

    /// Makes the streaming call; its response messages are written out as
    /// they come, each `{"result":...}` and a newline, and an error that
    /// ends the call as grpc-gateway writes one mid-stream. The HTTP status
    /// comes with the first message, or is the error's if that came first.
    async fn stream(
        &self,
        grpc_path: &'static str,
        requests: Vec<Bytes>,
        response: fn(&[u8]) -> Result<Vec<u8>, Status>,
        ctx: CallContext,
    ) -> HttpResponse {
        let (sink, frames) = ResponseSink::channel(STREAM_MESSAGES_WAITING_MAX);
        let service = Rc::clone(&self.service);
        // Ends when the service returns, or when its client (the writer
        // below) goes away and its sends fail.
        let call = glommio::spawn_local(async move {
            service
                .streaming(grpc_path, RequestStream::given(requests), sink, ctx)
                .await
        });
        let line = move |frame: Bytes| match response(&frame[PREFIX_BYTES..]) {
            Ok(json) => result_line(&json),
            Err(status) => stream_error_line(&status),
        };
        // The sink is dropped when the call returns: no first frame means
        // it returned without a message.
        let (status, first, call) = match frames.recv().await {
            Some(frame) => (200, line(frame), Some(call)),
            None => match call.await {
                Ok(()) => (200, Vec::new(), None),
                Err(error) => (http_status(error.code), stream_error_line(&error), None),
            },
        };
        let (chunks, out) = glommio::channels::local_channel::new_bounded(STREAM_MESSAGES_WAITING_MAX);
        glommio::spawn_local(async move {
            if chunks.send(first).await.is_err() {
                return;
            }
            while let Some(frame) = frames.recv().await {
                if chunks.send(line(frame)).await.is_err() {
                    return; // the client went away: dropping `frames` ends the call
                }
            }
            if let Some(call) = call {
                if let Err(error) = call.await {
                    let _ = chunks.send(stream_error_line(&error)).await;
                }
            }
        })
        .detach();
        HttpResponse {
            chunks: Some(Chunks(out)),
            ..HttpResponse::json(status, String::new())
        }
    }
}

/// What the gateway passes on from the HTTP request as gRPC metadata:
/// `Authorization`, which etcd reads as a token (its swagger clients').
fn call_context(request: &HttpRequest) -> CallContext {
    let mut metadata = http::HeaderMap::new();
    if let Some(value) = request
        .authorization
        .as_deref()
        .and_then(|token| http::HeaderValue::from_str(token).ok())
    {
        metadata.insert(http::header::AUTHORIZATION, value);
    }
    CallContext {
        deadline: None,
        metadata,
        client_common_name: None,
    }
}

fn result_line(json: &[u8]) -> Vec<u8> {
    let mut line = Vec::with_capacity(json.len() + 12);
    line.extend_from_slice(b"{\"result\":");
    line.extend_from_slice(json);
    line.extend_from_slice(b"}\n");
    line
}

/// grpc-gateway v1's error body: `{"error","message","code"}`.
fn error_response(status: &Status) -> HttpResponse {
    let message = serde_json::to_string(&status.message).expect("a string serializes");
    let body = format!(
        "{{\"error\":{message},\"message\":{message},\"code\":{}}}",
        status.code as i32
    );
    HttpResponse::json(http_status(status.code), body)
}

/// grpc-gateway v1's error line in a stream that has begun.
fn stream_error_line(status: &Status) -> Vec<u8> {
    let message = serde_json::to_string(&status.message).expect("a string serializes");
    let http_code = http_status(status.code);
    let reason = http::StatusCode::from_u16(http_code)
        .ok()
        .and_then(|code| code.canonical_reason())
        .unwrap_or("");
    format!(
        "{{\"error\":{{\"grpc_code\":{},\"http_code\":{http_code},\"message\":{message},\"http_status\":\"{reason}\"}}}}\n",
        status.code as i32
    )
    .into_bytes()
}

/// grpc-gateway v1's `HTTPStatusFromCode`.
fn http_status(code: Code) -> u16 {
    match code {
        Code::Ok => 200,
        Code::Canceled => 408,
        Code::Unknown | Code::Internal | Code::DataLoss => 500,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 400,
        Code::DeadlineExceeded => 504,
        Code::NotFound => 404,
        Code::AlreadyExists | Code::Aborted => 409,
        Code::PermissionDenied => 403,
        Code::Unauthenticated => 401,
        Code::ResourceExhausted => 429,
        Code::Unimplemented => 501,
        Code::Unavailable => 503,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v3beta_paths_are_v3s_and_hash_is_hash_not_hash_kv() {
        assert_eq!(route("/v3beta/kv/range").unwrap().grpc_path, "/etcdserverpb.KV/Range");
        assert_eq!(
            route("/v3/kv/lease/revoke").unwrap().grpc_path,
            "/etcdserverpb.Lease/LeaseRevoke"
        );
        assert_eq!(
            route("/v3/maintenance/hash").unwrap().grpc_path,
            "/etcdserverpb.Maintenance/Hash"
        );
        assert!(route("/v3/kv/nothing").is_none());
        assert!(route("/v3alpha/kv/range").is_none(), "etcd 3.4 dropped v3alpha");
    }

    #[test]
    fn requests_read_as_jsonpb_reads_them() {
        let empty = from_json::<pb::RangeRequest>(b" \n").unwrap();
        assert!(empty.is_empty(), "an empty body is the empty message");
        let bytes = from_json::<pb::LeaseGrantRequest>(br#"{"TTL":"5","ID":7,"unknown":true}"#).unwrap();
        let grant = pb::LeaseGrantRequest::decode(bytes).unwrap();
        assert_eq!((grant.ttl, grant.id), (5, 7));
        let error = from_json::<pb::RangeRequest>(b"{bad").unwrap_err();
        assert_eq!(error.code, Code::InvalidArgument);
        let watches =
            from_json_objects::<pb::WatchRequest>(br#"{"create_request":{"key":"Zm9v"}} {"progress_request":{}}"#)
                .unwrap();
        assert_eq!(watches.len(), 2);
    }

    #[test]
    fn a_stream_body_holds_at_most_its_count_of_request_messages() {
        let body = |count: usize| "{} ".repeat(count);
        let most = from_json_objects::<pb::LeaseKeepAliveRequest>(body(STREAM_REQUEST_MESSAGES_MAX).as_bytes());
        assert_eq!(most.unwrap().len(), STREAM_REQUEST_MESSAGES_MAX);
        // About the most a body of the largest size holds: refused at the first past the count.
        for count in [STREAM_REQUEST_MESSAGES_MAX + 1, 1_000_000] {
            let refused = from_json_objects::<pb::LeaseKeepAliveRequest>(body(count).as_bytes()).unwrap_err();
            assert_eq!(refused.code, Code::InvalidArgument, "{count}");
            assert_eq!(
                refused.message,
                "ringkv: a gateway stream's body holds more than 1024 request messages"
            );
        }
    }

    #[test]
    fn errors_read_as_grpc_gateways() {
        let status = Status::new(
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision",
        );
        let response = error_response(&status);
        assert_eq!(response.status, 400);
        assert_eq!(
            String::from_utf8(response.body).unwrap(),
            r#"{"error":"etcdserver: mvcc: required revision is a future revision","message":"etcdserver: mvcc: required revision is a future revision","code":11}"#
        );
        assert_eq!(
            String::from_utf8(stream_error_line(&Status::new(Code::NotFound, "gone"))).unwrap(),
            "{\"error\":{\"grpc_code\":5,\"http_code\":404,\"message\":\"gone\",\"http_status\":\"Not Found\"}}\n"
        );
    }
}
