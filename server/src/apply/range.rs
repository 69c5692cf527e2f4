//! Range: fetch from MVCC, then filter, sort and truncate exactly as etcd does.

use std::cmp::Ordering;

use ringkv_engine::mvcc::RangeOptions;
use ringkv_proto::etcdserverpb as pb;
use ringkv_proto::mvccpb::KeyValue;

use super::{key_span, revision_header, ApplyError, ReadView};
use crate::etcd_error::EtcdError;

use pb::range_request::{SortOrder, SortTarget};

/// Answers a Range from `view`. `header.revision` is the view's current revision,
/// not the requested one (kube-apiserver uses it as the list resourceVersion).
pub fn range(view: &impl ReadView, request: &pb::RangeRequest) -> Result<pb::RangeResponse, ApplyError> {
    let order = SortOrder::from_i32(request.sort_order).ok_or(EtcdError::InvalidSortOption)?;
    let target = SortTarget::from_i32(request.sort_target).ok_or(EtcdError::InvalidSortOption)?;
    let filtered = request.min_mod_revision != 0
        || request.max_mod_revision != 0
        || request.min_create_revision != 0
        || request.max_create_revision != 0;
    let requested_limit = usize::try_from(request.limit).unwrap_or(0);
    // Sorting and filtering need every key; otherwise one extra tells us `more`.
    let fetch_limit = if order != SortOrder::None || filtered || requested_limit == 0 {
        0
    } else {
        requested_limit.saturating_add(1)
    };
    let options = RangeOptions {
        limit: fetch_limit,
        rev: request.revision,
        count_only: request.count_only,
    };
    let result = view.range(key_span(&request.key, &request.range_end), options)?;
    let mut kvs = result.kvs;
    if filtered {
        kvs.retain(|kv| passes_revision_filters(request, kv));
    }
    // Results come in key order; a non-key target with no order means ascending.
    let order = if target != SortTarget::Key && order == SortOrder::None {
        SortOrder::Ascend
    } else {
        order
    };
    sort(&mut kvs, order, target);
    let more = requested_limit > 0 && kvs.len() > requested_limit;
    if more {
        kvs.truncate(requested_limit);
    }
    if request.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    Ok(pb::RangeResponse {
        header: revision_header(result.rev),
        kvs,
        more,
        count: i64::try_from(result.count).expect("key count fits i64"),
    })
}

fn passes_revision_filters(request: &pb::RangeRequest, kv: &KeyValue) -> bool {
    !(request.max_mod_revision != 0 && kv.mod_revision > request.max_mod_revision
        || request.min_mod_revision != 0 && kv.mod_revision < request.min_mod_revision
        || request.max_create_revision != 0 && kv.create_revision > request.max_create_revision
        || request.min_create_revision != 0 && kv.create_revision < request.min_create_revision)
}

/// Stable sort. etcd uses Go's `sort.Sort`, which is stable up to 12 elements
/// (insertion sort) and unspecified for ties beyond; ties keep key order here.
fn sort(kvs: &mut [KeyValue], order: SortOrder, target: SortTarget) {
    let compare = |a: &KeyValue, b: &KeyValue| -> Ordering {
        match target {
            SortTarget::Key => a.key.cmp(&b.key),
            SortTarget::Version => a.version.cmp(&b.version),
            SortTarget::Create => a.create_revision.cmp(&b.create_revision),
            SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
            SortTarget::Value => a.value.cmp(&b.value),
        }
    };
    match order {
        SortOrder::None => {}
        SortOrder::Ascend => kvs.sort_by(compare),
        SortOrder::Descend => kvs.sort_by(|a, b| compare(b, a)),
    }
}
