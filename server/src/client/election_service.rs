//! etcd's Election service (`v3electionpb.Election`) on a client core, as
//! etcd's `v3election` server runs clientv3's `concurrency.Election`: a
//! campaigner's key `name/<lease in hex>` holds its value; the key created
//! first leads. Campaign waits until every earlier key is deleted; Proclaim and
//! Resign act only while the leader key still has the create revision the
//! caller names; Leader reads the first key; Observe streams the leader's
//! value and every change to it, leader after leader.

use bytes::Bytes;
use ringkv_proto::etcdserverpb as pb;
use ringkv_proto::mvccpb;
use ringkv_proto::v3electionpb as epb;

use super::concurrency::{self, CallerKeys};
use super::watch::KeyWatchUpdate;
use crate::grpc::{self, Code, Encoded, MethodKind, RequestStream, ResponseSink, Status};
use crate::store::messages::Request;

/// The service's gRPC name.
pub const SERVICE: &str = "v3electionpb.Election";

/// etcd's `concurrency.ErrElectionNotLeader`.
const NOT_LEADER: &str = "election: not leader";
/// etcd's `concurrency.ErrElectionNoLeader`.
const NO_LEADER: &str = "election: no leader";
/// etcd's `v3election.ErrMissingLeaderKey`.
const MISSING_LEADER_KEY: &str = "\"leader\" field must be provided";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ElectionMethod {
    Campaign,
    Proclaim,
    Leader,
    Observe,
    Resign,
}

impl ElectionMethod {
    pub(crate) fn route(service: &str, method: &str) -> Option<ElectionMethod> {
        if service != SERVICE {
            return None;
        }
        match method {
            "Campaign" => Some(ElectionMethod::Campaign),
            "Proclaim" => Some(ElectionMethod::Proclaim),
            "Leader" => Some(ElectionMethod::Leader),
            "Observe" => Some(ElectionMethod::Observe),
            "Resign" => Some(ElectionMethod::Resign),
            _ => None,
        }
    }

    pub(crate) fn kind(self) -> MethodKind {
        match self {
            ElectionMethod::Observe => MethodKind::ServerStreaming,
            _ => MethodKind::Unary,
        }
    }
}

/// Decodes a request message of `method` (what the fuzz target runs).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn decode(method: ElectionMethod, request: Bytes) -> Result<(), Status> {
    match method {
        ElectionMethod::Campaign => grpc::decode::<epb::CampaignRequest>(request).map(drop),
        ElectionMethod::Proclaim => grpc::decode::<epb::ProclaimRequest>(request).map(drop),
        ElectionMethod::Leader | ElectionMethod::Observe => grpc::decode::<epb::LeaderRequest>(request).map(drop),
        ElectionMethod::Resign => grpc::decode::<epb::ResignRequest>(request).map(drop),
    }
}

pub(crate) async fn unary(keys: &CallerKeys<'_>, method: ElectionMethod, request: Bytes) -> Result<Encoded, Status> {
    Ok(match method {
        ElectionMethod::Campaign => grpc::encode(&campaign(keys, grpc::decode(request)?).await?),
        ElectionMethod::Proclaim => grpc::encode(&proclaim(keys, grpc::decode(request)?).await?),
        ElectionMethod::Leader => grpc::encode(&leader(keys, grpc::decode(request)?).await?),
        ElectionMethod::Resign => grpc::encode(&resign(keys, grpc::decode(request)?).await?),
        ElectionMethod::Observe => unreachable!("Observe is streaming"),
    })
}

/// etcd's `Election.Campaign`.
async fn campaign(keys: &CallerKeys<'_>, request: epb::CampaignRequest) -> Result<epb::CampaignResponse, Status> {
    let _slot = keys.waiter_slot()?;
    let lease = keys.session_lease(request.lease).await?;
    let prefix = concurrency::prefix_of(&request.name);
    let key = concurrency::owned_key(&prefix, lease);
    let txn = pb::TxnRequest {
        compare: vec![concurrency::compare_create(&key, 0)],
        success: vec![concurrency::put_op(&key, &request.value, lease)],
        failure: vec![concurrency::range_op(concurrency::get(&key))],
    };
    let response = keys.txn(txn).await?;
    let header = response.header.clone().unwrap_or_default();
    let mut leader = epb::LeaderKey {
        name: request.name,
        key,
        rev: header.revision,
        lease,
    };
    if !response.succeeded {
        // This lease campaigned before: its key stands, with a new value if asked.
        let existing = concurrency::txn_kvs(&response, 0).first();
        let existing =
            existing.ok_or_else(|| Status::new(Code::Internal, "the campaign key vanished inside its txn"))?;
        leader.rev = existing.create_revision;
        if existing.value != request.value {
            if let Err(error) = proclaim_value(keys, &leader, &request.value).await {
                let _ = resign_key(keys, &leader).await;
                return Err(error);
            }
        }
    }
    // Resigned if the caller gives up while waiting (etcd resigns only then:
    // after another failure the key is left to its lease).
    let undo = keys.undo(Request::Txn(resign_txn(&leader)));
    let waited = keys.wait_deletes(&prefix, leader.rev - 1).await;
    undo.disarm();
    waited?;
    Ok(epb::CampaignResponse {
        header: Some(header),
        leader: Some(leader),
    })
}

/// etcd's `Election.Proclaim`, resumed from the caller's leader key.
async fn proclaim(keys: &CallerKeys<'_>, request: epb::ProclaimRequest) -> Result<epb::ProclaimResponse, Status> {
    let mut leader = request
        .leader
        .ok_or_else(|| Status::new(Code::Unknown, MISSING_LEADER_KEY))?;
    leader.lease = keys.session_lease(leader.lease).await?;
    let header = proclaim_value(keys, &leader, &request.value).await?;
    Ok(epb::ProclaimResponse { header: Some(header) })
}

/// Puts `value` at the leader key if it still has the leader's create revision.
async fn proclaim_value(
    keys: &CallerKeys<'_>,
    leader: &epb::LeaderKey,
    value: &[u8],
) -> Result<pb::ResponseHeader, Status> {
    let txn = pb::TxnRequest {
        compare: vec![concurrency::compare_create(&leader.key, leader.rev)],
        success: vec![concurrency::put_op(&leader.key, value, leader.lease)],
        failure: Vec::new(),
    };
    let response = keys.txn(txn).await?;
    if !response.succeeded {
        return Err(Status::new(Code::Unknown, NOT_LEADER));
    }
    Ok(response.header.unwrap_or_default())
}

/// etcd's `Election.Resign`: deletes the leader key if it still has the
/// leader's create revision; no error if it does not.
async fn resign(keys: &CallerKeys<'_>, request: epb::ResignRequest) -> Result<epb::ResignResponse, Status> {
    let leader = request
        .leader
        .ok_or_else(|| Status::new(Code::Unknown, MISSING_LEADER_KEY))?;
    // etcd opens a session first, which grants a lease for lease 0.
    keys.session_lease(leader.lease).await?;
    let response = resign_key(keys, &leader).await?;
    Ok(epb::ResignResponse {
        header: response.header,
    })
}

fn resign_txn(leader: &epb::LeaderKey) -> pb::TxnRequest {
    pb::TxnRequest {
        compare: vec![concurrency::compare_create(&leader.key, leader.rev)],
        success: vec![concurrency::delete_op(&leader.key)],
        failure: Vec::new(),
    }
}

async fn resign_key(keys: &CallerKeys<'_>, leader: &epb::LeaderKey) -> Result<pb::TxnResponse, Status> {
    keys.txn(resign_txn(leader)).await
}

/// etcd's `Election.Leader`: the key created first under the name.
async fn leader(keys: &CallerKeys<'_>, request: epb::LeaderRequest) -> Result<epb::LeaderResponse, Status> {
    let prefix = concurrency::prefix_of(&request.name);
    let response = keys
        .range(concurrency::by_create(&prefix, pb::range_request::SortOrder::Ascend))
        .await?;
    let Some(kv) = response.kvs.into_iter().next() else {
        return Err(Status::new(Code::Unknown, NO_LEADER));
    };
    Ok(epb::LeaderResponse {
        header: response.header,
        kv: Some(kv),
    })
}

/// etcd's `Election.Observe`: the leader's key-value (once there is a
/// leader), then each put to it until it is deleted, then the next leader's,
/// until the client goes away. Like etcd, a failed read or a watch that ends
/// ends the stream with OK.
pub(crate) async fn observe(
    keys: &CallerKeys<'_>,
    mut requests: RequestStream,
    mut responses: ResponseSink,
) -> Result<(), Status> {
    let request: epb::LeaderRequest = match requests.next().await {
        Some(request) => grpc::decode(request?)?,
        None => return Err(Status::new(Code::Internal, "grpc: the client sent no request")),
    };
    let _slot = keys.waiter_slot()?;
    let prefix = concurrency::prefix_of(&request.name);
    loop {
        let Some((header, kv)) = current_leader(keys, &prefix).await else {
            return Ok(());
        };
        let start = header.revision + 1;
        let key = kv.key.clone();
        responses.send(grpc::encode(&leader_response(header, kv))).await?;
        let Ok(mut watch) = keys.watch(&key, false, start).await else {
            return Ok(());
        };
        loop {
            let KeyWatchUpdate::Events { header, events } = watch.next().await else {
                return Ok(());
            };
            let mut deleted = false;
            for event in events {
                if event.r#type == mvccpb::event::EventType::Delete as i32 {
                    deleted = true;
                    break;
                }
                let response = leader_response(header.clone(), event.kv.unwrap_or_default());
                responses.send(grpc::encode(&response)).await?;
            }
            if deleted {
                break;
            }
        }
    }
}

fn leader_response(header: pb::ResponseHeader, kv: mvccpb::KeyValue) -> epb::LeaderResponse {
    epb::LeaderResponse {
        header: Some(header),
        kv: Some(kv),
    }
}

/// The leader's key-value with the header to send it with: the first key
/// created under `prefix`, or if there is none the first one put there from
/// now on (its header's revision set to the put's, as etcd does). None when a
/// read or the watch fails.
async fn current_leader(keys: &CallerKeys<'_>, prefix: &[u8]) -> Option<(pb::ResponseHeader, mvccpb::KeyValue)> {
    let response = keys
        .range(concurrency::by_create(prefix, pb::range_request::SortOrder::Ascend))
        .await
        .ok()?;
    let header = response.header.unwrap_or_default();
    if let Some(kv) = response.kvs.into_iter().next() {
        return Some((header, kv));
    }
    let mut watch = keys.watch(prefix, true, header.revision).await.ok()?;
    loop {
        let KeyWatchUpdate::Events { header, events } = watch.next().await else {
            return None;
        };
        let put = events
            .into_iter()
            .find(|event| event.r#type == mvccpb::event::EventType::Put as i32);
        if let Some(kv) = put.and_then(|event| event.kv) {
            let header = pb::ResponseHeader {
                revision: kv.mod_revision,
                ..header
            };
            return Some((header, kv));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observe_alone_streams() {
        let kinds: Vec<_> = ["Campaign", "Proclaim", "Leader", "Observe", "Resign"]
            .into_iter()
            .map(|method| ElectionMethod::route(SERVICE, method).map(ElectionMethod::kind))
            .collect();
        assert_eq!(
            kinds,
            [
                Some(MethodKind::Unary),
                Some(MethodKind::Unary),
                Some(MethodKind::Unary),
                Some(MethodKind::ServerStreaming),
                Some(MethodKind::Unary)
            ]
        );
        assert_eq!(ElectionMethod::route(SERVICE, "Elect"), None);
        assert_eq!(ElectionMethod::route("v3lockpb.Lock", "Campaign"), None);
    }
}
