//! Apply never stops the process for what a request holds: any request that
//! passes the client core's checks, whatever its numbers (revisions, limits,
//! leases, enums), answers or fails with an etcd error; only storage failures
//! are fatal, and `PartlyWritten` (a transaction refused half-written) never
//! happens.

use proptest::prelude::*;
use ringkv_engine::mvcc::Mvcc;
use ringkv_proto::etcdserverpb as pb;

use super::{check, compact, delete_range, lease, put, txn, ApplyError, RangeBuild, WriteView};
use pb::request_op::Request as Op;

/// Keys from a small alphabet, so requests meet each other's keys.
fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(vec![b'a', b'b', b'c', 0, 0xff]), 0..3)
}

/// Numbers clients send: small ones near the store's revisions, and extremes.
fn number() -> impl Strategy<Value = i64> {
    prop_oneof![-3i64..12, Just(i64::MIN), Just(i64::MAX), any::<i64>()]
}

fn range_request() -> impl Strategy<Value = pb::RangeRequest> {
    (
        (key(), key(), number(), number(), -1i32..4, -1i32..6),
        (any::<bool>(), any::<bool>(), any::<bool>()),
        (number(), number(), number(), number()),
    )
        .prop_map(
            |(
                (key, range_end, limit, revision, sort_order, sort_target),
                (serializable, keys_only, count_only),
                (min_mod_revision, max_mod_revision, min_create_revision, max_create_revision),
            )| pb::RangeRequest {
                key,
                range_end,
                limit,
                revision,
                sort_order,
                sort_target,
                serializable,
                keys_only,
                count_only,
                min_mod_revision,
                max_mod_revision,
                min_create_revision,
                max_create_revision,
            },
        )
}

fn put_request() -> impl Strategy<Value = pb::PutRequest> {
    (
        key(),
        prop::collection::vec(any::<u8>(), 0..8),
        prop_oneof![Just(0i64), Just(1), number()],
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(key, value, lease, prev_kv, ignore_value, ignore_lease)| pb::PutRequest {
                key,
                value,
                lease,
                prev_kv,
                ignore_value,
                ignore_lease,
            },
        )
}

fn delete_request() -> impl Strategy<Value = pb::DeleteRangeRequest> {
    (key(), key(), any::<bool>()).prop_map(|(key, range_end, prev_kv)| pb::DeleteRangeRequest {
        key,
        range_end,
        prev_kv,
    })
}

fn compare() -> impl Strategy<Value = pb::Compare> {
    use pb::compare::TargetUnion;
    let union = prop_oneof![
        Just(None),
        number().prop_map(|n| Some(TargetUnion::Version(n))),
        number().prop_map(|n| Some(TargetUnion::CreateRevision(n))),
        number().prop_map(|n| Some(TargetUnion::ModRevision(n))),
        number().prop_map(|n| Some(TargetUnion::Lease(n))),
        prop::collection::vec(any::<u8>(), 0..4).prop_map(|v| Some(TargetUnion::Value(v))),
    ];
    (-1i32..5, -1i32..6, key(), key(), union).prop_map(|(result, target, key, range_end, target_union)| pb::Compare {
        result,
        target,
        key,
        range_end,
        target_union,
    })
}

fn txn_request() -> impl Strategy<Value = pb::TxnRequest> {
    let op = prop_oneof![
        range_request().prop_map(Op::RequestRange),
        put_request().prop_map(Op::RequestPut),
        delete_request().prop_map(Op::RequestDeleteRange),
    ];
    let leaf = (
        prop::collection::vec(compare(), 0..3),
        prop::collection::vec(op.clone(), 0..3),
        prop::collection::vec(op, 0..3),
    );
    let leaf = leaf.prop_map(|(compare, success, failure)| pb::TxnRequest {
        compare,
        success: success
            .into_iter()
            .map(|op| pb::RequestOp { request: Some(op) })
            .collect(),
        failure: failure
            .into_iter()
            .map(|op| pb::RequestOp { request: Some(op) })
            .collect(),
    });
    leaf.prop_recursive(3, 24, 3, |inner| {
        (prop::collection::vec(compare(), 0..3), inner.clone(), inner).prop_map(|(compare, then, otherwise)| {
            pb::TxnRequest {
                compare,
                success: vec![pb::RequestOp {
                    request: Some(Op::RequestTxn(then)),
                }],
                failure: vec![pb::RequestOp {
                    request: Some(Op::RequestTxn(otherwise)),
                }],
            }
        })
    })
}

#[derive(Debug, Clone)]
enum Step {
    Range(pb::RangeRequest),
    Put(pb::PutRequest),
    Delete(pb::DeleteRangeRequest),
    Txn(pb::TxnRequest),
    Compact(pb::CompactionRequest),
    Grant(pb::LeaseGrantRequest),
    Revoke(pb::LeaseRevokeRequest),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        1 => range_request().prop_map(Step::Range),
        3 => put_request().prop_map(Step::Put),
        1 => delete_request().prop_map(Step::Delete),
        2 => txn_request().prop_map(Step::Txn),
        1 => (number(), any::<bool>()).prop_map(|(revision, physical)| Step::Compact(pb::CompactionRequest { revision, physical })),
        1 => (number(), prop_oneof![Just(1i64), number()]).prop_map(|(ttl, id)| Step::Grant(pb::LeaseGrantRequest { ttl, id })),
        1 => prop_oneof![Just(1i64), number()].prop_map(|id| Step::Revoke(pb::LeaseRevokeRequest { id })),
    ]
}

/// What the client core lets through to the store core.
fn accepted(step: &Step) -> bool {
    match step {
        Step::Range(request) => check::check_range(request).is_ok(),
        Step::Put(request) => check::check_put(request).is_ok(),
        Step::Delete(request) => check::check_delete(request).is_ok(),
        Step::Txn(request) => check::check_txn(request, 128).is_ok(),
        Step::Compact(_) | Step::Grant(_) | Step::Revoke(_) => true,
    }
}

/// A Range as the store core serves it: in steps (of two keys here).
fn serve_range(mvcc: &Mvcc, request: &pb::RangeRequest) -> Result<(), ApplyError> {
    let mut build = RangeBuild::start(mvcc, request.clone(), true, crate::status::RESPONSE_BYTES_MAX)?;
    let budget = ringkv_engine::mvcc::StepBudget {
        keys: 2,
        bytes: usize::MAX,
    };
    while !build.is_done() {
        build.step(mvcc, budget)?;
    }
    build.finish(mvcc, None).map(drop)
}

fn apply(mvcc: &mut Mvcc, step: &Step) -> Result<(), ApplyError> {
    fn write<T>(
        mvcc: &mut Mvcc,
        body: impl FnOnce(&mut WriteView<'_>) -> Result<T, ApplyError>,
    ) -> Result<(), ApplyError> {
        let mut view = WriteView::new(mvcc.write());
        let result = body(&mut view);
        view.end();
        result.map(drop)
    }
    match step {
        Step::Range(request) => serve_range(mvcc, request),
        Step::Put(request) => write(mvcc, |view| {
            super::check_put_lease(view, request)?;
            put(view, request)
        }),
        Step::Delete(request) => write(mvcc, |view| delete_range(view, request)),
        Step::Txn(request) => txn(mvcc, request).map(drop),
        Step::Compact(request) => {
            compact(mvcc, request)?;
            while !mvcc.compact_step(64)? {}
            Ok(())
        }
        Step::Grant(request) => lease::grant(mvcc, request, 2).map(drop),
        Step::Revoke(request) => write(mvcc, |view| lease::revoke(view, request)),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn accepted_requests_answer_or_fail_with_an_etcd_error(steps in prop::collection::vec(step(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let mut mvcc = Mvcc::open(&dir.path().join("store.db")).unwrap();
        for step in steps.iter().filter(|step| accepted(step)) {
            match apply(&mut mvcc, step) {
                Ok(()) | Err(ApplyError::Client(_)) => {}
                Err(other) => prop_assert!(false, "{step:?} failed with {other:?}"),
            }
        }
    }
}
