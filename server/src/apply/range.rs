//! Range: fetch from MVCC, then filter, sort and truncate exactly as etcd does.

use std::cmp::Ordering;

use ringkv_engine::mvcc::{Mvcc, RangeOptions};
use ringkv_proto::etcdserverpb as pb;
use ringkv_proto::mvccpb::KeyValue;

use super::encoded_range::EncodedRangeResponse;
use super::{key_span, revision_header, ApplyError, ReadView};
use crate::etcd_error::EtcdError;

use pb::range_request::{SortOrder, SortTarget};

/// Answers a Range from `view`. `header.revision` is the view's current revision,
/// not the requested one (kube-apiserver uses it as the list resourceVersion).
pub fn range(view: &impl ReadView, request: &pb::RangeRequest) -> Result<pb::RangeResponse, ApplyError> {
    let order = SortOrder::from_i32(request.sort_order).ok_or(EtcdError::InvalidSortOption)?;
    let target = SortTarget::from_i32(request.sort_target).ok_or(EtcdError::InvalidSortOption)?;
    let filtered = is_filtered(request);
    let requested_limit = requested_limit(request);
    // Sorting and filtering need every key.
    let options = if order != SortOrder::None || filtered {
        fetch_options(request, 0)
    } else {
        fetch_options(request, requested_limit)
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

/// A Range with nothing to sort, filter or strip: its key-values go to the
/// client exactly as they are stored, so `range_encoded` can answer it.
pub fn is_plain(request: &pb::RangeRequest) -> bool {
    request.sort_order == SortOrder::None as i32
        && request.sort_target == SortTarget::Key as i32
        && !is_filtered(request)
        && !request.keys_only
}

/// `range` for a plain request (`is_plain`) on the committed store, with each
/// key-value copied into the response as it is stored instead of decoded and
/// encoded again: lists are most of kube-apiserver's read load.
pub fn range_encoded(store: &Mvcc, request: &pb::RangeRequest) -> Result<EncodedRangeResponse, ApplyError> {
    assert!(is_plain(request), "{request:?} needs sorting, filtering or stripping");
    let requested_limit = requested_limit(request);
    let options = fetch_options(request, requested_limit);
    let mut response = EncodedRangeResponse::default();
    let mut fetched = 0usize;
    let result = store.range_encoded(key_span(&request.key, &request.range_end), options, |kv| {
        fetched += 1;
        if requested_limit == 0 || fetched <= requested_limit {
            response.push_kv(kv);
        }
    })?;
    assert!(options.limit == 0 || fetched <= options.limit);
    response.header = revision_header(result.rev);
    response.more = requested_limit > 0 && fetched > requested_limit;
    response.count = i64::try_from(result.count).expect("key count fits i64");
    Ok(response)
}

fn is_filtered(request: &pb::RangeRequest) -> bool {
    request.min_mod_revision != 0
        || request.max_mod_revision != 0
        || request.min_create_revision != 0
        || request.max_create_revision != 0
}

/// The client's limit; 0 (or negative, as etcd reads it): none.
fn requested_limit(request: &pb::RangeRequest) -> usize {
    usize::try_from(request.limit).unwrap_or(0)
}

/// What to fetch for at most `limit` key-values (0: all): one more than the
/// limit tells whether there are `more`.
fn fetch_options(request: &pb::RangeRequest, limit: usize) -> RangeOptions {
    RangeOptions {
        limit: if limit == 0 { 0 } else { limit.saturating_add(1) },
        rev: request.revision,
        count_only: request.count_only,
    }
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

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    /// Keys a..e, each written twice, then c deleted: live keys, overwritten
    /// ones and a tombstone, at several revisions.
    fn store() -> (tempfile::TempDir, Mvcc) {
        let dir = tempfile::tempdir().unwrap();
        let mut mvcc = Mvcc::open(&dir.path().join("store.db")).unwrap();
        for round in 0..2u8 {
            for key in [b"a", b"b", b"c", b"d", b"e"] {
                let mut txn = mvcc.write();
                txn.put(key, &[round; 40], 0).unwrap();
                txn.end();
            }
        }
        let mut txn = mvcc.write();
        txn.delete_range(key_span(b"c", &[])).unwrap();
        txn.end();
        (dir, mvcc)
    }

    #[test]
    fn a_plain_range_answers_as_the_decoding_range_does() {
        let (_dir, mvcc) = store();
        let spans: [(&[u8], &[u8]); 4] = [(b"a", b""), (b"c", b""), (b"b", b"e"), (b"a", b"\0")];
        for (key, range_end) in spans {
            for limit in [-1, 0, 1, 2, 3, 10] {
                for revision in [0, 3, 7, mvcc.current_revision()] {
                    for count_only in [false, true] {
                        let request = pb::RangeRequest {
                            key: key.to_vec(),
                            range_end: range_end.to_vec(),
                            limit,
                            revision,
                            count_only,
                            ..Default::default()
                        };
                        assert!(is_plain(&request));
                        let decoded = range(&mvcc, &request).unwrap();
                        let encoded = range_encoded(&mvcc, &request).unwrap().into_encoded();
                        let served = pb::RangeResponse::decode(encoded.message()).unwrap();
                        assert_eq!(served, decoded, "{request:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn sorted_filtered_and_keys_only_ranges_are_not_plain() {
        let plain = pb::RangeRequest::default();
        assert!(is_plain(&plain));
        let not_plain = [
            pb::RangeRequest {
                sort_order: SortOrder::Ascend as i32,
                ..plain.clone()
            },
            pb::RangeRequest {
                sort_target: SortTarget::Mod as i32,
                ..plain.clone()
            },
            pb::RangeRequest {
                sort_order: 9,
                ..plain.clone()
            },
            pb::RangeRequest {
                min_mod_revision: 2,
                ..plain.clone()
            },
            pb::RangeRequest {
                max_create_revision: 2,
                ..plain.clone()
            },
            pb::RangeRequest {
                keys_only: true,
                ..plain.clone()
            },
        ];
        for request in not_plain {
            assert!(!is_plain(&request), "{request:?}");
        }
    }
}
