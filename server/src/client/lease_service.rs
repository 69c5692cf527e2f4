//! etcd's Lease service on a client core: decode, hand to the store core, encode.
//! KeepAlive is a bidirectional stream answered one request at a time, in order,
//! as etcd's `leaseKeepAlive` loop does.

use bytes::Bytes;
use ringkv_proto::etcdserverpb as pb;

use super::store_client::StoreClient;
use crate::grpc::{self, Encoded, MethodKind, RequestStream, ResponseSink, Status};
use crate::store::messages::{CallAuth, Request, Response};

/// The methods of `etcdserverpb.Lease`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseMethod {
    Grant,
    Revoke,
    KeepAlive,
    TimeToLive,
    Leases,
}

impl LeaseMethod {
    /// The Lease method `method` of service `service`, if it is one.
    pub fn route(service: &str, method: &str) -> Option<LeaseMethod> {
        if service != "etcdserverpb.Lease" {
            return None;
        }
        match method {
            "LeaseGrant" => Some(LeaseMethod::Grant),
            "LeaseRevoke" => Some(LeaseMethod::Revoke),
            "LeaseKeepAlive" => Some(LeaseMethod::KeepAlive),
            "LeaseTimeToLive" => Some(LeaseMethod::TimeToLive),
            "LeaseLeases" => Some(LeaseMethod::Leases),
            _ => None,
        }
    }

    pub fn kind(self) -> MethodKind {
        match self {
            LeaseMethod::KeepAlive => MethodKind::BidiStreaming,
            _ => MethodKind::Unary,
        }
    }
}

/// Handles a unary Lease call; `require_leader` as for every unary call.
pub async fn unary(
    store: &StoreClient,
    method: LeaseMethod,
    request: Bytes,
    require_leader: bool,
    auth: CallAuth,
) -> Result<Encoded, Status> {
    let request = unary_request(method, request)?;
    Ok(match store.call_rpc_as(request, require_leader, auth).await? {
        Response::LeaseGrant(response) => grpc::encode(&response),
        Response::LeaseRevoke(response) => grpc::encode(&response),
        Response::LeaseTimeToLive(response) => grpc::encode(&response),
        Response::LeaseLeases(response) => grpc::encode(&response),
        other => unreachable!("the store core answers a lease call in kind, not with {other:?}"),
    })
}

/// Decodes a unary Lease call's request message: what the store core is asked.
pub(crate) fn unary_request(method: LeaseMethod, request: Bytes) -> Result<Request, Status> {
    Ok(match method {
        LeaseMethod::Grant => Request::LeaseGrant(grpc::decode(request)?),
        LeaseMethod::Revoke => Request::LeaseRevoke(grpc::decode(request)?),
        LeaseMethod::TimeToLive => Request::LeaseTimeToLive(grpc::decode(request)?),
        LeaseMethod::Leases => Request::LeaseLeases(grpc::decode(request)?),
        LeaseMethod::KeepAlive => unreachable!("KeepAlive is streaming"),
    })
}

/// Serves one LeaseKeepAlive stream until the client closes its side. An error
/// (e.g. no leader) ends the stream with that status, as in etcd.
pub async fn keep_alive(
    store: &StoreClient,
    mut requests: RequestStream,
    mut responses: ResponseSink,
) -> Result<(), Status> {
    while let Some(request) = requests.next().await {
        let request: pb::LeaseKeepAliveRequest = grpc::decode(request?)?;
        let response = match store.call_rpc(Request::LeaseKeepAlive(request), false).await? {
            Response::LeaseKeepAlive(response) => response,
            other => unreachable!("a KeepAlive is answered in kind, not with {other:?}"),
        };
        responses.send(grpc::encode(&response)).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_alone_streams() {
        let keep_alive = LeaseMethod::route("etcdserverpb.Lease", "LeaseKeepAlive").unwrap();
        assert_eq!(keep_alive.kind(), MethodKind::BidiStreaming);
        let grant = LeaseMethod::route("etcdserverpb.Lease", "LeaseGrant").unwrap();
        assert_eq!(grant.kind(), MethodKind::Unary);
        assert_eq!(LeaseMethod::route("etcdserverpb.KV", "LeaseGrant"), None);
    }
}
