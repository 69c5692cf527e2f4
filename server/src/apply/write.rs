//! Put and DeleteRange inside a write transaction (standalone or part of a Txn).

use ringkv_engine::mvcc::{RangeEnd, RangeOptions};
use ringkv_proto::etcdserverpb as pb;

use super::{key_span, revision_header, ApplyError, ReadView, WriteView};
use crate::etcd_error::EtcdError;

/// etcd's Put. The lease was checked before (it must exist); `ignore_value` and
/// `ignore_lease` need the key to exist in this transaction's view.
pub fn put(view: &mut WriteView<'_>, request: &pb::PutRequest) -> Result<pb::PutResponse, ApplyError> {
    let needs_previous = request.ignore_value || request.ignore_lease || request.prev_kv;
    let previous = if needs_previous {
        let span = key_span(&request.key, &[]);
        assert!(matches!(span.end, RangeEnd::Key));
        view.range(span, RangeOptions::default())?.kvs.pop()
    } else {
        None
    };
    if (request.ignore_value || request.ignore_lease) && previous.is_none() {
        return Err(EtcdError::KeyNotFound.into());
    }
    let value = match (&previous, request.ignore_value) {
        (Some(previous), true) => previous.value.as_slice(),
        _ => request.value.as_slice(),
    };
    let lease = match (&previous, request.ignore_lease) {
        (Some(previous), true) => previous.lease,
        _ => request.lease,
    };
    view.txn.put(&request.key, value, lease)?;
    view.changed = true;
    Ok(pb::PutResponse {
        header: revision_header(view.reported_revision()),
        prev_kv: if request.prev_kv { previous } else { None },
    })
}

/// etcd's DeleteRange: one tombstone per live key in the span; deleting nothing
/// writes nothing (and so uses no revision).
pub fn delete_range(
    view: &mut WriteView<'_>,
    request: &pb::DeleteRangeRequest,
) -> Result<pb::DeleteRangeResponse, ApplyError> {
    let span = || key_span(&request.key, &request.range_end);
    let prev_kvs = if request.prev_kv {
        view.range(span(), RangeOptions::default())?.kvs
    } else {
        Vec::new()
    };
    let deleted = view.txn.delete_range(span())?;
    assert!(deleted >= 0);
    assert!(!request.prev_kv || prev_kvs.len() == deleted as usize);
    view.changed |= deleted > 0;
    Ok(pb::DeleteRangeResponse {
        header: revision_header(view.reported_revision()),
        deleted,
        prev_kvs,
    })
}
