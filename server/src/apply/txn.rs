//! Txn: compares, the branch path, etcd's pre-execution checks, and execution.
//!
//! As in etcd, every compare of the whole (nested) transaction is evaluated first,
//! against the store as it was before the transaction, giving a path of branch
//! choices in pre-order. The ops on that path are then checked (puts: key exists for
//! ignore_value/lease, lease exists; ranges: revision readable) and only then
//! executed, so a refused transaction writes nothing.

use std::cmp::Ordering;

use prost::Message;

use ringkv_engine::mvcc::{Mvcc, RangeEnd, RangeOptions};
use ringkv_proto::etcdserverpb as pb;
use ringkv_proto::mvccpb::KeyValue;

use super::lease::check_lease;
use super::range::{field_bytes, RangeAnswer, RangeBuild};
use super::{delete_range, key_span, put, range, revision_header, ApplyError, ReadView, WriteView};
use crate::etcd_error::EtcdError;
use ringkv_engine::mvcc::StepBudget;

use pb::compare::{CompareResult, CompareTarget, TargetUnion};
use pb::request_op::Request as Op;
use pb::response_op::Response as OpResponse;

/// True when no branch (at the top level) holds anything but ranges: such a
/// transaction is a read and never enters the raft log (etcd's `isTxnReadonly`).
pub fn is_read_only(request: &pb::TxnRequest) -> bool {
    request
        .success
        .iter()
        .chain(&request.failure)
        .all(|op| matches!(op.request, Some(Op::RequestRange(_))))
}

/// True when a read-only transaction may be served without a ReadIndex.
pub fn is_serializable(request: &pb::TxnRequest) -> bool {
    request
        .success
        .iter()
        .chain(&request.failure)
        .all(|op| matches!(&op.request, Some(Op::RequestRange(range)) if range.serializable))
}

/// Applies a Txn. Read-only transactions run against the store directly.
pub fn txn(mvcc: &mut Mvcc, request: &pb::TxnRequest) -> Result<pb::TxnResponse, ApplyError> {
    let mut path = Vec::new();
    branch_path(mvcc, request, &mut path)?;
    let writes = !is_read_only(request);
    if writes {
        let mut earlier = Vec::new();
        check_ops(request, &mut path.iter().copied(), &mut |op| {
            check_put(mvcc, &earlier, op)?;
            earlier.push(op.clone());
            Ok(())
        })?;
    }
    check_ops(request, &mut path.iter().copied(), &mut |op| check_range(mvcc, op))?;
    if !writes {
        let succeeded = path[0];
        let mut build = TxnBuild::begin(mvcc, request, succeeded, crate::status::RESPONSE_BYTES_MAX)?;
        let whole = StepBudget {
            keys: usize::MAX,
            bytes: usize::MAX,
        };
        while !build.is_done() {
            build.step(mvcc, whole)?;
        }
        return build.finish(mvcc, None);
    }
    let mut view = WriteView::new(mvcc.write());
    let mut response = match execute(&mut view, request, &mut path.iter().copied()) {
        Ok(response) => response,
        // The checks above refuse every transaction that could fail part way.
        Err(ApplyError::Client(error)) if view.changed => return Err(ApplyError::PartlyWritten(error)),
        Err(error) => {
            view.end();
            return Err(error);
        }
    };
    response.header = revision_header(view.reported_revision());
    view.end();
    Ok(response)
}

/// Appends this transaction's branch choice, then its taken branch's nested ones.
fn branch_path(view: &impl ReadView, request: &pb::TxnRequest, path: &mut Vec<bool>) -> Result<(), ApplyError> {
    let mut succeeded = true;
    for compare in &request.compare {
        if !compare_holds(view, compare)? {
            succeeded = false;
            break;
        }
    }
    path.push(succeeded);
    for op in branch(request, succeeded) {
        if let Some(Op::RequestTxn(nested)) = &op.request {
            branch_path(view, nested, path)?;
        }
    }
    Ok(())
}

fn branch(request: &pb::TxnRequest, succeeded: bool) -> &[pb::RequestOp] {
    if succeeded {
        &request.success
    } else {
        &request.failure
    }
}

/// A compare holds when every key in its span satisfies it; an empty span compares
/// as one all-zero key-value, except that a VALUE compare on nothing fails.
fn compare_holds(view: &impl ReadView, compare: &pb::Compare) -> Result<bool, ApplyError> {
    let span = key_span(&compare.key, &compare.range_end);
    let kvs = match view.range(span, RangeOptions::default()) {
        Ok(result) => result.kvs,
        // etcd treats a failed compare read as a failed compare.
        Err(error) => match ApplyError::from(error) {
            ApplyError::Client(_) => return Ok(false),
            fatal => return Err(fatal),
        },
    };
    if kvs.is_empty() {
        if compare.target == CompareTarget::Value as i32 {
            return Ok(false);
        }
        return Ok(compare_kv(compare, &KeyValue::default()));
    }
    Ok(kvs.iter().all(|kv| compare_kv(compare, kv)))
}

fn compare_kv(compare: &pb::Compare, kv: &KeyValue) -> bool {
    let ordering = match CompareTarget::from_i32(compare.target) {
        Some(CompareTarget::Value) => {
            let wanted: &[u8] = match &compare.target_union {
                Some(TargetUnion::Value(value)) => value,
                _ => &[],
            };
            kv.value.as_slice().cmp(wanted)
        }
        Some(CompareTarget::Create) => kv.create_revision.cmp(&match compare.target_union {
            Some(TargetUnion::CreateRevision(revision)) => revision,
            _ => 0,
        }),
        Some(CompareTarget::Mod) => kv.mod_revision.cmp(&match compare.target_union {
            Some(TargetUnion::ModRevision(revision)) => revision,
            _ => 0,
        }),
        Some(CompareTarget::Version) => kv.version.cmp(&match compare.target_union {
            Some(TargetUnion::Version(version)) => version,
            _ => 0,
        }),
        Some(CompareTarget::Lease) => kv.lease.cmp(&match compare.target_union {
            Some(TargetUnion::Lease(lease)) => lease,
            _ => 0,
        }),
        // etcd leaves the result at "equal" for a target it does not know.
        None => Ordering::Equal,
    };
    match CompareResult::from_i32(compare.result) {
        Some(CompareResult::Equal) => ordering == Ordering::Equal,
        Some(CompareResult::NotEqual) => ordering != Ordering::Equal,
        Some(CompareResult::Greater) => ordering == Ordering::Greater,
        Some(CompareResult::Less) => ordering == Ordering::Less,
        None => true,
    }
}

/// Runs `check` on every non-txn op along the taken path (etcd's `checkRequests`).
fn check_ops(
    request: &pb::TxnRequest,
    path: &mut impl Iterator<Item = bool>,
    check: &mut impl FnMut(&Op) -> Result<(), ApplyError>,
) -> Result<(), ApplyError> {
    let succeeded = path.next().expect("the path covers every taken txn");
    for op in branch(request, succeeded) {
        match &op.request {
            Some(Op::RequestTxn(nested)) => check_ops(nested, path, check)?,
            Some(op) => check(op)?,
            None => unreachable!("empty ops are refused before apply"),
        }
    }
    Ok(())
}

/// etcd's `checkRequestPut`, against the store before the transaction; then, as
/// etcd does not, whether an `earlier` op of the transaction deletes the key first.
///
/// etcd's duplicate-key check misses a delete whose `range_end` is `"\0"` (it
/// compares the bytes, not "to the end"), so `del k --from-key; put k
/// --ignore-value` passes every etcd check, fails at execution and panics etcd
/// (`unexpected error during txn`). ringkv refuses it before writing anything.
fn check_put(mvcc: &Mvcc, earlier: &[Op], op: &Op) -> Result<(), ApplyError> {
    let Op::RequestPut(request) = op else {
        return Ok(());
    };
    if request.ignore_value || request.ignore_lease {
        let existing = mvcc.range(key_span(&request.key, &[]), RangeOptions::default())?;
        if existing.kvs.is_empty() || deleted_before(earlier, &request.key) {
            return Err(EtcdError::KeyNotFound.into());
        }
    }
    check_lease(mvcc, request.lease)
}

/// True when the last of the `earlier` ops that touches `key` deletes it.
fn deleted_before(earlier: &[Op], key: &[u8]) -> bool {
    for op in earlier.iter().rev() {
        match op {
            Op::RequestPut(put) if put.key == key => return false,
            Op::RequestDeleteRange(delete) if span_covers(&delete.key, &delete.range_end, key) => return true,
            _ => {}
        }
    }
    false
}

fn span_covers(start: &[u8], range_end: &[u8], key: &[u8]) -> bool {
    match key_span(start, range_end).end {
        RangeEnd::Key => key == start,
        RangeEnd::ToEnd => key >= start,
        RangeEnd::Until(end) => start <= key && key < end,
    }
}

/// etcd's `checkRequestRange`: a txn range at a revision must be readable.
fn check_range(mvcc: &Mvcc, op: &Op) -> Result<(), ApplyError> {
    let Op::RequestRange(request) = op else {
        return Ok(());
    };
    if request.revision == 0 {
        return Ok(());
    }
    if request.revision > mvcc.current_revision() {
        return Err(EtcdError::FutureRev.into());
    }
    // etcd's `FirstRev` is the compact revision, -1 before any compaction: a
    // negative revision fails once anything (even revision 0) was compacted.
    if request.revision < mvcc.compact_revision() {
        return Err(EtcdError::Compacted.into());
    }
    Ok(())
}

fn execute(
    view: &mut WriteView<'_>,
    request: &pb::TxnRequest,
    path: &mut impl Iterator<Item = bool>,
) -> Result<pb::TxnResponse, ApplyError> {
    let succeeded = path.next().expect("the path covers every taken txn");
    let ops = branch(request, succeeded);
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let response = match op.request.as_ref().expect("empty ops are refused before apply") {
            Op::RequestRange(r) => OpResponse::ResponseRange(range(view, r)?),
            Op::RequestPut(r) => OpResponse::ResponsePut(put(view, r)?),
            Op::RequestDeleteRange(r) => OpResponse::ResponseDeleteRange(delete_range(view, r)?),
            Op::RequestTxn(nested) => {
                let mut response = execute(view, nested, path)?;
                // etcd leaves a nested txn's header with its zero value.
                response.header = Some(pb::ResponseHeader::default());
                OpResponse::ResponseTxn(response)
            }
        };
        responses.push(pb::ResponseOp {
            response: Some(response),
        });
    }
    Ok(pb::TxnResponse {
        header: None,
        succeeded,
        responses,
    })
}

/// A read-only Txn answered in bounded steps (see `store::stepped_read`):
/// its compares are evaluated at once, as etcd's are, then the taken
/// branch's ranges are read a step at a time, each a `RangeBuild` begun at
/// the start so that all read one revision.
pub struct TxnBuild {
    succeeded: bool,
    ranges: Vec<RangeBuild>,
    /// The store's revision at the start: the response header's.
    revision: i64,
    response_bytes_max: usize,
}

impl TxnBuild {
    /// Evaluates the compares and etcd's checks, and begins the ranges.
    pub fn start(mvcc: &Mvcc, request: &pb::TxnRequest, response_bytes_max: usize) -> Result<TxnBuild, ApplyError> {
        assert!(is_read_only(request), "a Txn that writes goes through raft");
        let mut path = Vec::new();
        branch_path(mvcc, request, &mut path)?;
        check_ops(request, &mut path.iter().copied(), &mut |op| check_range(mvcc, op))?;
        TxnBuild::begin(mvcc, request, path[0], response_bytes_max)
    }

    fn begin(
        mvcc: &Mvcc,
        request: &pb::TxnRequest,
        succeeded: bool,
        response_bytes_max: usize,
    ) -> Result<TxnBuild, ApplyError> {
        let ranges = branch(request, succeeded)
            .iter()
            .map(|op| match &op.request {
                Some(Op::RequestRange(r)) => RangeBuild::start(mvcc, r.clone(), false, response_bytes_max),
                _ => unreachable!("a read-only txn holds only ranges"),
            })
            .collect::<Result<_, _>>()?;
        Ok(TxnBuild {
            succeeded,
            ranges,
            revision: mvcc.current_revision(),
            response_bytes_max,
        })
    }

    /// True once every range has been read.
    pub fn is_done(&self) -> bool {
        self.ranges.iter().all(RangeBuild::is_done)
    }

    /// Reads the next keys of the first range not done, at most `budget`.
    pub fn step(&mut self, mvcc: &Mvcc, budget: StepBudget) -> Result<(), ApplyError> {
        let Some(range) = self.ranges.iter_mut().find(|range| !range.is_done()) else {
            return Ok(());
        };
        range.step(mvcc, budget)?;
        // Past the limit together, none keeps its key-values.
        let total: usize = self.ranges.iter().map(RangeBuild::kvs_bytes).sum();
        for range in &mut self.ranges {
            range.discard_if_over(total - range.kvs_bytes());
        }
        Ok(())
    }

    /// The answer, or grpc-go's error if it would be over the limit with the
    /// `outer` header the store core sends it with.
    pub fn finish(self, mvcc: &Mvcc, outer: Option<&pb::ResponseHeader>) -> Result<pb::TxnResponse, ApplyError> {
        let mut responses = Vec::with_capacity(self.ranges.len());
        let mut responses_bytes = 0usize;
        let mut over = false;
        for range in self.ranges {
            let (answer, bytes) = range.finish_measured(mvcc, None);
            // TxnResponse.responses holds a ResponseOp holding the RangeResponse.
            responses_bytes += field_bytes(field_bytes(bytes));
            match answer {
                Some(RangeAnswer::Decoded(response)) => responses.push(pb::ResponseOp {
                    response: Some(OpResponse::ResponseRange(response)),
                }),
                Some(RangeAnswer::Encoded(_)) => unreachable!("ranges in a txn are decoded"),
                None => over = true,
            }
        }
        let header = pb::ResponseHeader {
            revision: self.revision,
            ..outer.cloned().unwrap_or_default()
        };
        let head = pb::TxnResponse {
            header: Some(header),
            succeeded: self.succeeded,
            responses: Vec::new(),
        };
        let bytes = head.encoded_len() + responses_bytes;
        if over || bytes > self.response_bytes_max {
            return Err(EtcdError::ResponseTooLarge {
                bytes,
                max: self.response_bytes_max,
            }
            .into());
        }
        Ok(pb::TxnResponse {
            header: revision_header(self.revision),
            succeeded: self.succeeded,
            responses,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::compact;

    fn store() -> (tempfile::TempDir, Mvcc) {
        let dir = tempfile::tempdir().unwrap();
        let mvcc = Mvcc::open(&dir.path().join("store.db")).unwrap();
        (dir, mvcc)
    }

    fn op(request: Op) -> pb::RequestOp {
        pb::RequestOp { request: Some(request) }
    }

    fn put(key: &str, value: &str) -> Op {
        Op::RequestPut(pb::PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        })
    }

    fn get(mvcc: &Mvcc, key: &str) -> Vec<KeyValue> {
        mvcc.range(key_span(key.as_bytes(), &[]), RangeOptions::default())
            .unwrap()
            .kvs
    }

    #[test]
    fn a_put_ignoring_the_value_of_a_key_deleted_earlier_in_the_txn_writes_nothing() {
        let (_dir, mut mvcc) = store();
        let setup = pb::TxnRequest {
            success: vec![op(put("abd", "old"))],
            ..Default::default()
        };
        txn(&mut mvcc, &setup).unwrap();
        let revision = mvcc.current_revision();
        // `range_end` "\0" deletes from "abd" to the end, which etcd's duplicate
        // check does not see; the put then finds no key to keep the value of.
        let request = pb::TxnRequest {
            success: vec![
                op(Op::RequestDeleteRange(pb::DeleteRangeRequest {
                    key: b"abd".to_vec(),
                    range_end: vec![0],
                    ..Default::default()
                })),
                op(Op::RequestPut(pb::PutRequest {
                    key: b"abd".to_vec(),
                    ignore_lease: true,
                    ..Default::default()
                })),
            ],
            ..Default::default()
        };
        let error = txn(&mut mvcc, &request).unwrap_err();
        assert!(matches!(error, ApplyError::Client(EtcdError::KeyNotFound)), "{error:?}");
        assert_eq!(mvcc.current_revision(), revision, "no revision was used");
        assert_eq!(get(&mvcc, "abd")[0].value, b"old", "the delete was not applied");
        // The store still takes writes at the next revision.
        txn(&mut mvcc, &setup).unwrap();
        assert_eq!(mvcc.current_revision(), revision + 1);
    }

    #[test]
    fn a_put_ignoring_the_value_after_an_unrelated_delete_succeeds() {
        let (_dir, mut mvcc) = store();
        let setup = pb::TxnRequest {
            success: vec![op(put("a", "1")), op(put("b", "2"))],
            ..Default::default()
        };
        txn(&mut mvcc, &setup).unwrap();
        let request = pb::TxnRequest {
            success: vec![
                op(Op::RequestDeleteRange(pb::DeleteRangeRequest {
                    key: b"b".to_vec(),
                    ..Default::default()
                })),
                op(Op::RequestPut(pb::PutRequest {
                    key: b"a".to_vec(),
                    ignore_value: true,
                    ..Default::default()
                })),
            ],
            ..Default::default()
        };
        txn(&mut mvcc, &request).unwrap();
        assert_eq!(get(&mvcc, "a")[0].value, b"1");
        assert!(get(&mvcc, "b").is_empty());
    }

    #[test]
    fn a_negative_range_revision_in_a_write_txn_is_compacted_once_revision_0_was_compacted() {
        let (_dir, mut mvcc) = store();
        let request = pb::TxnRequest {
            success: vec![
                op(Op::RequestRange(pb::RangeRequest {
                    key: b"a".to_vec(),
                    revision: -1,
                    ..Default::default()
                })),
                op(put("a", "1")),
            ],
            ..Default::default()
        };
        txn(&mut mvcc, &request).unwrap();
        compact(
            &mut mvcc,
            &pb::CompactionRequest {
                revision: 0,
                physical: false,
            },
        )
        .unwrap();
        let error = txn(&mut mvcc, &request).unwrap_err();
        assert!(matches!(error, ApplyError::Client(EtcdError::Compacted)), "{error:?}");
    }

    fn range_op(key: &str, range_end: &str, limit: i64) -> pb::RequestOp {
        op(Op::RequestRange(pb::RangeRequest {
            key: key.into(),
            range_end: range_end.into(),
            limit,
            ..Default::default()
        }))
    }

    /// k0..k9 written, then a read-only txn of two ranges over them.
    fn read_only_txn(mvcc: &mut Mvcc) -> pb::TxnRequest {
        for key in 0..10 {
            let setup = pb::TxnRequest {
                success: vec![op(put(&format!("k{key}"), "value"))],
                ..Default::default()
            };
            txn(mvcc, &setup).unwrap();
        }
        pb::TxnRequest {
            compare: vec![pb::Compare {
                key: b"k1".to_vec(),
                target: CompareTarget::Version as i32,
                result: CompareResult::Equal as i32,
                target_union: Some(TargetUnion::Version(1)),
                ..Default::default()
            }],
            success: vec![range_op("k", "l", 0), range_op("k3", "k7", 2)],
            failure: vec![range_op("k1", "", 0)],
        }
    }

    fn in_steps(
        mvcc: &mut Mvcc,
        request: &pb::TxnRequest,
        max: usize,
        header: &pb::ResponseHeader,
    ) -> Result<pb::TxnResponse, ApplyError> {
        let mut build = TxnBuild::start(mvcc, request, max)?;
        let mut round = 0;
        while !build.is_done() {
            build.step(
                mvcc,
                StepBudget {
                    keys: 1,
                    bytes: usize::MAX,
                },
            )?;
            // Writes between steps are not seen.
            round += 1;
            let later = pb::TxnRequest {
                success: vec![op(put(&format!("k{}", round % 10), "later"))],
                ..Default::default()
            };
            txn(mvcc, &later).unwrap();
        }
        build.finish(mvcc, Some(header))
    }

    #[test]
    fn a_read_only_txn_in_steps_answers_as_at_its_start() {
        let (_dir, mut mvcc) = store();
        let request = read_only_txn(&mut mvcc);
        let whole = txn(&mut mvcc, &request).unwrap();
        assert!(whole.succeeded);
        let header = pb::ResponseHeader::default();
        let stepped = in_steps(&mut mvcc, &request, crate::status::RESPONSE_BYTES_MAX, &header).unwrap();
        assert_eq!(stepped, whole);
    }

    #[test]
    fn a_read_only_txn_over_the_limit_is_grpc_gos_error_with_its_exact_size() {
        let (_dir, mut mvcc) = store();
        let request = read_only_txn(&mut mvcc);
        let header = pb::ResponseHeader {
            cluster_id: 11,
            member_id: u64::MAX,
            raft_term: 2,
            revision: 0,
        };
        let whole = txn(&mut mvcc, &request).unwrap();
        let sent = pb::TxnResponse {
            header: Some(pb::ResponseHeader {
                revision: whole.header.as_ref().unwrap().revision,
                ..header.clone()
            }),
            ..whole
        };
        let bytes = sent.encoded_len();
        let (_dir, mut mvcc) = store();
        let request = read_only_txn(&mut mvcc);
        assert!(in_steps(&mut mvcc, &request, bytes, &header).is_ok());
        let (_dir, mut mvcc) = store();
        let request = read_only_txn(&mut mvcc);
        let error = in_steps(&mut mvcc, &request, bytes - 1, &header).unwrap_err();
        assert!(
            matches!(error, ApplyError::Client(EtcdError::ResponseTooLarge { bytes: b, max }) if b == bytes && max == bytes - 1),
            "{error:?}"
        );
    }
}
