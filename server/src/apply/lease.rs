//! What LeaseGrant and LeaseRevoke do to the store, and the answers of the
//! leader-local lease calls built from it (etcd's lessor.go and v3rpc/lease.go).

use ringkv_engine::mvcc::{Mvcc, NO_LEASE};
use ringkv_proto::etcdserverpb as pb;

use super::{revision_header, ApplyError, WriteView};
use crate::etcd_error::EtcdError;

/// etcd's `MaxLeaseTTL`: a larger grant is ErrLeaseTTLTooLarge.
pub const MAX_LEASE_TTL_SECONDS: i64 = 9_000_000_000;

/// etcd's lease check for a Put (standalone or in a Txn): the lease must exist.
pub fn check_lease(mvcc: &Mvcc, lease: i64) -> Result<(), ApplyError> {
    if lease != NO_LEASE && !mvcc.leases().contains(lease) {
        return Err(EtcdError::LeaseNotFound.into());
    }
    Ok(())
}

/// etcd's `lessor.Grant`: a TTL below `min_ttl_seconds` is raised to it. The id was
/// chosen before proposing, so it is never 0 here.
pub fn grant(
    mvcc: &mut Mvcc,
    request: &pb::LeaseGrantRequest,
    min_ttl_seconds: i64,
) -> Result<pb::LeaseGrantResponse, ApplyError> {
    assert!(min_ttl_seconds > 0);
    if request.id == NO_LEASE {
        return Err(EtcdError::LeaseNotFound.into());
    }
    if request.ttl > MAX_LEASE_TTL_SECONDS {
        return Err(EtcdError::LeaseTtlTooLarge.into());
    }
    if mvcc.leases().contains(request.id) {
        return Err(EtcdError::LeaseExist.into());
    }
    let ttl = request.ttl.max(min_ttl_seconds);
    mvcc.grant_lease(request.id, ttl)?;
    Ok(pb::LeaseGrantResponse {
        header: revision_header(mvcc.current_revision()),
        id: request.id,
        ttl,
        error: String::new(),
    })
}

/// etcd's `lessor.Revoke`: every attached key is deleted in this one write
/// transaction (one revision, one deletion each, in key order), then the lease.
pub fn revoke(
    view: &mut WriteView<'_>,
    request: &pb::LeaseRevokeRequest,
) -> Result<pb::LeaseRevokeResponse, ApplyError> {
    if !view.txn.leases().contains(request.id) {
        return Err(EtcdError::LeaseNotFound.into());
    }
    let deleted = view.txn.revoke_lease(request.id)?;
    view.changed |= deleted > 0;
    Ok(pb::LeaseRevokeResponse {
        header: revision_header(view.reported_revision()),
    })
}

/// LeaseTimeToLive for an existing lease with `remaining_seconds` left.
pub fn time_to_live(
    mvcc: &Mvcc,
    request: &pb::LeaseTimeToLiveRequest,
    remaining_seconds: i64,
) -> pb::LeaseTimeToLiveResponse {
    let granted_ttl = mvcc.leases().ttl(request.id).expect("the caller found the lease");
    let keys = if request.keys {
        mvcc.leases().keys(request.id).map(<[u8]>::to_vec).collect()
    } else {
        Vec::new()
    };
    pb::LeaseTimeToLiveResponse {
        header: revision_header(mvcc.current_revision()),
        id: request.id,
        ttl: remaining_seconds,
        granted_ttl,
        keys,
    }
}

/// etcd's v3rpc answer for an unknown lease: TTL -1, not an error.
pub fn time_to_live_unknown(request: &pb::LeaseTimeToLiveRequest) -> pb::LeaseTimeToLiveResponse {
    pb::LeaseTimeToLiveResponse {
        header: None,
        id: request.id,
        ttl: -1,
        granted_ttl: 0,
        keys: Vec::new(),
    }
}
