//! Range: fetch from MVCC, then filter, sort and truncate exactly as etcd does.

use std::cmp::Ordering;

use prost::Message;
use ringkv_engine::mvcc::{Mvcc, MvccError, RangeCursor, RangeOptions, StepBudget};
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

/// What a Range answers with: a plain one's key-values as stored, any
/// other's decoded (see `is_plain`).
#[derive(Debug)]
pub enum RangeAnswer {
    Encoded(EncodedRangeResponse),
    Decoded(pb::RangeResponse),
}

/// A Range on the committed store answered in bounded steps (the store core
/// runs raft between them: see `store::stepped_read`), as `range` answers it
/// at the revision it began at. A plain Range (`is_plain`) copies each
/// key-value into the response as it is stored instead of decoding and
/// encoding it again: lists are most of kube-apiserver's read load.
///
/// The response is never built past its limit: once the key-values it will
/// hold pass it, they are only measured, and `finish` answers grpc-go's
/// "trying to send message larger than max" with the exact size.
pub struct RangeBuild {
    request: pb::RangeRequest,
    cursor: RangeCursor,
    collected: Collected,
    /// Bytes of the `kvs` fields the response holds so far (once final: see
    /// `Collected::Decoded::sorted`).
    kvs_bytes: usize,
    /// Over the limit: key-values are measured, not kept.
    discarded: bool,
    response_bytes_max: usize,
}

enum Collected {
    Encoded {
        response: EncodedRangeResponse,
        /// Key-values the cursor handed out (one past the limit tells `more`).
        fetched: usize,
    },
    Decoded {
        kvs: Vec<KeyValue>,
        /// Key-values that passed the revision filters.
        passed: usize,
        /// Sorting: `kvs` is cut to the limit only at times, so `kvs_bytes`
        /// is known only at the end.
        sorted: Option<(SortOrder, SortTarget)>,
    },
}

impl RangeBuild {
    /// Starts a Range; `encoded`: answer a plain one with its key-values as
    /// stored (a Range in a Txn is decoded, as the Txn response is).
    pub fn start(
        store: &Mvcc,
        request: pb::RangeRequest,
        encoded: bool,
        response_bytes_max: usize,
    ) -> Result<RangeBuild, ApplyError> {
        let order = SortOrder::from_i32(request.sort_order).ok_or(EtcdError::InvalidSortOption)?;
        let target = SortTarget::from_i32(request.sort_target).ok_or(EtcdError::InvalidSortOption)?;
        // Sorting and filtering need every key. As in etcd, a non-key target
        // with no order sorts only the page fetched in key order.
        let options = if order != SortOrder::None || is_filtered(&request) {
            fetch_options(&request, 0)
        } else {
            fetch_options(&request, requested_limit(&request))
        };
        // Results come in key order; a non-key target with no order means ascending.
        let order = if target != SortTarget::Key && order == SortOrder::None {
            SortOrder::Ascend
        } else {
            order
        };
        let sorted = (order != SortOrder::None).then_some((order, target));
        let cursor = store.begin_range(key_span(&request.key, &request.range_end), options)?;
        let collected = if encoded && is_plain(&request) {
            Collected::Encoded {
                response: EncodedRangeResponse::default(),
                fetched: 0,
            }
        } else {
            Collected::Decoded {
                kvs: Vec::new(),
                passed: 0,
                sorted,
            }
        };
        Ok(RangeBuild {
            request,
            cursor,
            collected,
            kvs_bytes: 0,
            discarded: false,
            response_bytes_max,
        })
    }

    /// True once every key the Range needs has been read.
    pub fn is_done(&self) -> bool {
        self.cursor.is_done()
    }

    /// Reads the next keys, at most `budget`.
    pub fn step(&mut self, store: &Mvcc, budget: StepBudget) -> Result<(), ApplyError> {
        let limit = requested_limit(&self.request);
        let RangeBuild {
            request,
            cursor,
            collected,
            kvs_bytes,
            discarded,
            ..
        } = self;
        let mut corrupt = None;
        store.range_step(cursor, budget, |body| match collected {
            Collected::Encoded { response, fetched } => {
                *fetched += 1;
                if limit == 0 || *fetched <= limit {
                    *kvs_bytes += field_bytes(body.len());
                    if !*discarded {
                        if *fetched == 1 {
                            // A limited Range is most often a list page of
                            // similar objects: the first tells their size.
                            response.expect(limit.saturating_sub(1), field_bytes(body.len()));
                        }
                        response.push_kv(body);
                    }
                }
            }
            Collected::Decoded { kvs, passed, sorted } => {
                let mut kv = match KeyValue::decode(body) {
                    Ok(kv) => kv,
                    Err(error) => {
                        let error = format!("a stored key-value does not decode: {error}");
                        corrupt.get_or_insert(MvccError::corrupt(error));
                        return;
                    }
                };
                if !passes_revision_filters(request, &kv) {
                    return;
                }
                *passed += 1;
                // etcd strips values after sorting: sorting by value needs them.
                let by_value = matches!(sorted, Some((_, SortTarget::Value)));
                if request.keys_only && !by_value {
                    kv.value.clear();
                }
                // Unsorted, the first `limit` are the response's; sorted, all
                // are with no limit, and which are is known only at the end.
                let in_response = match sorted {
                    None => limit == 0 || *passed <= limit,
                    Some(_) => limit == 0,
                };
                if in_response {
                    *kvs_bytes += field_bytes(sent_len(&kv, request.keys_only));
                    if !*discarded {
                        kvs.push(kv);
                    }
                } else if let (Some((order, target)), false) = (*sorted, *discarded) {
                    kvs.push(kv);
                    if kvs.len() > 2 * limit.max(SORTED_KEPT_MIN) {
                        // The sort is stable, so cutting a sorted prefix now
                        // and again later keeps what one sort at the end would.
                        sort(kvs, order, target);
                        kvs.truncate(limit);
                    }
                }
            }
        })?;
        if let Some(error) = corrupt {
            return Err(error.into());
        }
        self.discard_if_over(0);
        Ok(())
    }

    /// Bytes of the `kvs` fields known to be in the response so far.
    pub fn kvs_bytes(&self) -> usize {
        self.kvs_bytes
    }

    /// Keeps no more key-values once the response is over its limit with
    /// `others` bytes besides this Range's key-values (a Txn's other ranges).
    pub fn discard_if_over(&mut self, others: usize) {
        if self.discarded || others.saturating_add(self.kvs_bytes) <= self.response_bytes_max {
            return;
        }
        self.discarded = true;
        match &mut self.collected {
            Collected::Encoded { response, .. } => *response = EncodedRangeResponse::default(),
            Collected::Decoded { kvs, .. } => *kvs = Vec::new(),
        }
    }

    /// The answer, or grpc-go's error if it would be over the limit. The
    /// header is the Range's revision and, for a response that goes to the
    /// client as it is, `outer`'s cluster, member and term (what the store
    /// core fills in: the size counts them).
    pub fn finish(self, store: &Mvcc, outer: Option<&pb::ResponseHeader>) -> Result<RangeAnswer, ApplyError> {
        let max = self.response_bytes_max;
        let (answer, bytes) = self.finish_measured(store, outer);
        answer.ok_or(ApplyError::Client(EtcdError::ResponseTooLarge { bytes, max }))
    }

    /// The answer (None if over the limit) and the size of its message.
    pub fn finish_measured(self, store: &Mvcc, outer: Option<&pb::ResponseHeader>) -> (Option<RangeAnswer>, usize) {
        let limit = requested_limit(&self.request);
        let result = store.finish_range(self.cursor);
        let header = pb::ResponseHeader {
            revision: result.rev,
            ..outer.cloned().unwrap_or_default()
        };
        let count = i64::try_from(result.count).expect("key count fits i64");
        let mut kvs_bytes = self.kvs_bytes;
        let (answer, more) = match self.collected {
            Collected::Encoded { mut response, fetched } => {
                let more = limit > 0 && fetched > limit;
                response.header = revision_header(result.rev);
                response.more = more;
                response.count = count;
                (RangeAnswer::Encoded(response), more)
            }
            Collected::Decoded {
                mut kvs,
                passed,
                sorted,
            } => {
                if let Some((order, target)) = sorted {
                    sort(&mut kvs, order, target);
                    if limit > 0 {
                        kvs.truncate(limit);
                        kvs_bytes = kvs
                            .iter()
                            .map(|kv| field_bytes(sent_len(kv, self.request.keys_only)))
                            .sum();
                    }
                    if self.request.keys_only {
                        for kv in &mut kvs {
                            kv.value.clear();
                        }
                    }
                }
                let more = limit > 0 && passed > limit;
                let response = pb::RangeResponse {
                    header: revision_header(result.rev),
                    kvs,
                    more,
                    count,
                };
                (RangeAnswer::Decoded(response), more)
            }
        };
        let bytes = response_bytes(Some(header), kvs_bytes, more, count);
        if self.discarded || bytes > self.response_bytes_max {
            return (None, bytes);
        }
        (Some(answer), bytes)
    }
}

/// Sorted Ranges with a limit keep at most twice this or twice the limit
/// key-values between cuts.
const SORTED_KEPT_MIN: usize = 1024;

/// Bytes of a length-delimited field of `len` bytes whose tag takes one
/// byte (field numbers below 16: every field a Range or Txn response nests).
pub fn field_bytes(len: usize) -> usize {
    1 + prost::encoding::encoded_len_varint(len as u64) + len
}

/// Bytes of `kv` as sent: without its value for a keys_only Range.
fn sent_len(kv: &KeyValue, keys_only: bool) -> usize {
    let len = kv.encoded_len();
    if keys_only && !kv.value.is_empty() {
        len - field_bytes(kv.value.len())
    } else {
        len
    }
}

/// Bytes of a RangeResponse whose `kvs` fields take `kvs_bytes`.
pub fn response_bytes(header: Option<pb::ResponseHeader>, kvs_bytes: usize, more: bool, count: i64) -> usize {
    let rest = pb::RangeResponse {
        header,
        kvs: Vec::new(),
        more,
        count,
    };
    rest.encoded_len() + kvs_bytes
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

    /// Keys a..e, each written twice (created out of key order), then c
    /// deleted: live keys, overwritten ones and a tombstone, at several revisions.
    fn store() -> (tempfile::TempDir, Mvcc) {
        let dir = tempfile::tempdir().unwrap();
        let mut mvcc = Mvcc::open(&dir.path().join("store.db")).unwrap();
        for round in 0..2u8 {
            for key in [b"e", b"b", b"d", b"a", b"c"] {
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

    /// Runs `request` as a `RangeBuild` in steps of `keys` keys and decodes
    /// what it answers.
    fn stepped(
        mvcc: &Mvcc,
        request: &pb::RangeRequest,
        keys: usize,
        max: usize,
    ) -> Result<pb::RangeResponse, ApplyError> {
        let mut build = RangeBuild::start(mvcc, request.clone(), true, max)?;
        while !build.is_done() {
            build.step(
                mvcc,
                StepBudget {
                    keys,
                    bytes: usize::MAX,
                },
            )?;
        }
        Ok(match build.finish(mvcc, None)? {
            RangeAnswer::Encoded(response) => pb::RangeResponse::decode(response.into_prefixed(0)).unwrap(),
            RangeAnswer::Decoded(response) => response,
        })
    }

    fn requests(mvcc: &Mvcc) -> Vec<pb::RangeRequest> {
        let spans: [(&[u8], &[u8]); 4] = [(b"a", b""), (b"c", b""), (b"b", b"e"), (b"a", b"\0")];
        let mut requests = Vec::new();
        for (key, range_end) in spans {
            for limit in [-1, 0, 1, 2, 3, 10] {
                for revision in [0, 3, 7, mvcc.current_revision()] {
                    for count_only in [false, true] {
                        let plain = pb::RangeRequest {
                            key: key.to_vec(),
                            range_end: range_end.to_vec(),
                            limit,
                            revision,
                            count_only,
                            ..Default::default()
                        };
                        requests.push(pb::RangeRequest {
                            sort_order: SortOrder::Descend as i32,
                            sort_target: SortTarget::Mod as i32,
                            ..plain.clone()
                        });
                        requests.push(pb::RangeRequest {
                            sort_target: SortTarget::Value as i32,
                            keys_only: true,
                            ..plain.clone()
                        });
                        requests.push(pb::RangeRequest {
                            sort_target: SortTarget::Create as i32,
                            ..plain.clone()
                        });
                        requests.push(pb::RangeRequest {
                            min_mod_revision: 5,
                            ..plain.clone()
                        });
                        requests.push(pb::RangeRequest {
                            keys_only: true,
                            ..plain.clone()
                        });
                        requests.push(plain);
                    }
                }
            }
        }
        requests
    }

    #[test]
    fn a_range_in_steps_answers_as_the_one_shot_range_does() {
        let (_dir, mvcc) = store();
        for request in requests(&mvcc) {
            let whole = range(&mvcc, &request).unwrap();
            for keys in [1, 2, 3, usize::MAX] {
                let served = stepped(&mvcc, &request, keys, crate::status::RESPONSE_BYTES_MAX).unwrap();
                assert_eq!(served, whole, "{request:?} in steps of {keys} keys");
            }
        }
    }

    #[test]
    fn a_response_one_byte_over_the_limit_is_grpc_gos_error_with_its_exact_size() {
        let (_dir, mvcc) = store();
        let header = pb::ResponseHeader {
            cluster_id: u64::MAX,
            member_id: 7,
            raft_term: 300,
            revision: 0,
        };
        for request in requests(&mvcc) {
            let whole = range(&mvcc, &request).unwrap();
            let sent = pb::RangeResponse {
                header: Some(pb::ResponseHeader {
                    revision: whole.header.as_ref().unwrap().revision,
                    ..header.clone()
                }),
                ..whole.clone()
            };
            let bytes = sent.encoded_len();
            for keys in [1, usize::MAX] {
                let fits = RangeBuild::start(&mvcc, request.clone(), true, bytes).unwrap();
                assert!(finish_in_steps(fits, &mvcc, keys, &header).is_ok(), "{request:?}");
                let over = RangeBuild::start(&mvcc, request.clone(), true, bytes - 1).unwrap();
                let error = finish_in_steps(over, &mvcc, keys, &header).unwrap_err();
                assert!(
                    matches!(error, ApplyError::Client(EtcdError::ResponseTooLarge { bytes: b, max }) if b == bytes && max == bytes - 1),
                    "{request:?}: {error:?}"
                );
            }
        }
    }

    fn finish_in_steps(
        mut build: RangeBuild,
        mvcc: &Mvcc,
        keys: usize,
        header: &pb::ResponseHeader,
    ) -> Result<RangeAnswer, ApplyError> {
        while !build.is_done() {
            build.step(
                mvcc,
                StepBudget {
                    keys,
                    bytes: usize::MAX,
                },
            )?;
        }
        build.finish(mvcc, Some(header))
    }

    #[test]
    fn a_response_over_the_limit_keeps_nothing_once_it_is_past_it() {
        let (_dir, mvcc) = store();
        let request = pb::RangeRequest {
            key: b"a".to_vec(),
            range_end: b"\0".to_vec(),
            ..Default::default()
        };
        // Each key-value is over 40 bytes: past 50 after the second.
        let mut build = RangeBuild::start(&mvcc, request, true, 50).unwrap();
        build
            .step(
                &mvcc,
                StepBudget {
                    keys: 2,
                    bytes: usize::MAX,
                },
            )
            .unwrap();
        assert!(build.discarded);
        let Collected::Encoded { response, .. } = &build.collected else {
            panic!("a plain range");
        };
        assert!(format!("{response:?}").contains("kvs_bytes: 0"), "{response:?}");
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
