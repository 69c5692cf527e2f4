//! etcd's Lock service (`v3lockpb.Lock`) on a client core, as etcd's
//! `v3lock` server runs clientv3's `concurrency.Mutex`: Lock puts the key
//! `name/<lease in hex>` with the caller's lease if absent and waits until every
//! key under `name/` created before it is deleted; Unlock deletes the key.

use bytes::Bytes;
use ringkv_proto::etcdserverpb as pb;
use ringkv_proto::v3lockpb;

use super::concurrency::{self, CallerKeys};
use crate::apply::check;
use crate::grpc::{self, Code, Encoded, MethodKind, Status};
use crate::store::messages::Request;

/// The service's gRPC name.
pub const SERVICE: &str = "v3lockpb.Lock";

/// etcd's `concurrency.ErrSessionExpired`: the lease ran out while the call
/// waited, so the key that would hold the lock is gone.
const SESSION_EXPIRED: &str = "mutex: session is expired";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LockMethod {
    Lock,
    Unlock,
}

impl LockMethod {
    pub(crate) fn route(service: &str, method: &str) -> Option<LockMethod> {
        match (service, method) {
            (SERVICE, "Lock") => Some(LockMethod::Lock),
            (SERVICE, "Unlock") => Some(LockMethod::Unlock),
            _ => None,
        }
    }

    pub(crate) fn kind(self) -> MethodKind {
        MethodKind::Unary
    }
}

/// Decodes a request message of `method` (what the fuzz target runs).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn decode(method: LockMethod, request: Bytes) -> Result<(), Status> {
    match method {
        LockMethod::Lock => grpc::decode::<v3lockpb::LockRequest>(request).map(drop),
        LockMethod::Unlock => grpc::decode::<v3lockpb::UnlockRequest>(request).map(drop),
    }
}

pub(crate) async fn unary(keys: &CallerKeys<'_>, method: LockMethod, request: Bytes) -> Result<Encoded, Status> {
    match method {
        LockMethod::Lock => Ok(grpc::encode(&lock(keys, grpc::decode(request)?).await?)),
        LockMethod::Unlock => Ok(grpc::encode(&unlock(keys, grpc::decode(request)?).await?)),
    }
}

/// etcd's `Mutex.Lock`, with etcd 3.5's check that the key still exists once
/// the wait is over (etcd#11408: 3.4 answered success to a caller whose lease
/// had expired while it waited, so two callers could both believe they held
/// the lock).
async fn lock(keys: &CallerKeys<'_>, request: v3lockpb::LockRequest) -> Result<v3lockpb::LockResponse, Status> {
    let _slot = keys.waiter_slot()?;
    let lease = keys.session_lease(request.lease).await?;
    let prefix = concurrency::prefix_of(&request.name);
    let key = concurrency::owned_key(&prefix, lease);
    let first_created = concurrency::by_create(&prefix, pb::range_request::SortOrder::Ascend);
    // Put the key if absent (if present, this lease already waits or holds:
    // the same key serves), and read the holder, in one txn.
    let txn = pb::TxnRequest {
        compare: vec![concurrency::compare_create(&key, 0)],
        success: vec![
            concurrency::put_op(&key, b"", lease),
            concurrency::range_op(first_created.clone()),
        ],
        failure: vec![
            concurrency::range_op(concurrency::get(&key)),
            concurrency::range_op(first_created),
        ],
    };
    let response = keys.txn(txn).await?;
    let header = response.header.clone().unwrap_or_default();
    let my_revision = if response.succeeded {
        header.revision
    } else {
        let existing = concurrency::txn_kvs(&response, 0).first();
        existing
            .ok_or_else(|| Status::new(Code::Internal, "the lock key vanished inside its txn"))?
            .create_revision
    };
    let holder = concurrency::txn_kvs(&response, 1).first();
    if holder.is_none_or(|holder| holder.create_revision == my_revision) {
        return Ok(v3lockpb::LockResponse {
            header: Some(header),
            key,
        });
    }
    // Removed again if the wait fails or the caller gives up, as etcd does.
    let undo = keys.undo(Request::DeleteRange(pb::DeleteRangeRequest {
        key: key.clone(),
        ..Default::default()
    }));
    keys.wait_deletes(&prefix, my_revision - 1).await?;
    let mine = keys.range(concurrency::get(&key)).await?;
    undo.disarm();
    if mine.kvs.is_empty() {
        return Err(Status::new(Code::Unknown, SESSION_EXPIRED));
    }
    Ok(v3lockpb::LockResponse {
        header: mine.header,
        key,
    })
}

/// Deletes the key, whatever it is (etcd does not check it is a lock's).
async fn unlock(keys: &CallerKeys<'_>, request: v3lockpb::UnlockRequest) -> Result<v3lockpb::UnlockResponse, Status> {
    let delete = pb::DeleteRangeRequest {
        key: request.key,
        ..Default::default()
    };
    check::check_delete(&delete).map_err(concurrency::inner)?;
    let response = keys.delete(delete).await?;
    Ok(v3lockpb::UnlockResponse {
        header: response.header,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_methods_route_and_are_unary() {
        assert_eq!(LockMethod::route(SERVICE, "Lock"), Some(LockMethod::Lock));
        assert_eq!(
            LockMethod::route(SERVICE, "Unlock").map(LockMethod::kind),
            Some(MethodKind::Unary)
        );
        assert_eq!(LockMethod::route(SERVICE, "TryLock"), None);
        assert_eq!(LockMethod::route("etcdserverpb.KV", "Lock"), None);
    }
}
