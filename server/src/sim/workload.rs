//! The simulation's clients: each calls one member at a time with a random
//! operation on a few keys, as etcd's clients would (Put, linearizable Range,
//! DeleteRange, a compare-and-swap Txn), and records what it saw as the
//! linearizability checker's history. Some calls are about leases: grants
//! with TTLs of a few election timeouts, puts attached to a lease, KeepAlives
//! (each one request of a KeepAlive stream, as the store core receives it)
//! while the clients keep a lease, then none, so that it expires; and revokes.

use std::time::Duration;

use prost::Message;
use rand::rngs::StdRng;
use rand::Rng;
use ringkv_proto::etcdserverpb as pb;

use super::leases::LeaseBook;
use super::lincheck::{Event, Op, Outcome};
use crate::store::messages::{Request, Response};

/// Keys the clients share: few, so operations on one key overlap.
const KEYS: [&str; 3] = ["a", "b", "c"];
/// The share of calls about leases.
const LEASE_CALLS: f64 = 0.3;
/// Leases the clients keep alive at once, at most: more are not granted.
const KEPT_LEASES_MAX: usize = 3;
/// Granted TTLs (seconds): the simulated members' minimum (1.5 election
/// timeouts, rounded up), and one more.
const LEASE_TTL_SECONDS: std::ops::RangeInclusive<i64> = 2..=3;
/// How long the clients keep a lease alive after its grant, at most.
const KEEP_ALIVE_FOR_MAX: Duration = Duration::from_secs(3);

/// What a client calls.
#[derive(Debug, Clone)]
pub enum ClientOp {
    /// An operation on one key, for the linearizability history.
    Kv(Op),
    Grant,
    KeepAlive {
        lease: i64,
    },
    Revoke {
        lease: i64,
    },
}

/// A call a client is waiting on.
pub struct InFlight {
    pub op: ClientOp,
    pub invoke_us: u64,
}

/// A random call and the request that carries it; `value` makes a written
/// value unique in the run. Lease calls only if `leases` is given.
pub fn random_call(rng: &mut StdRng, value: u64, leases: Option<(&LeaseBook, u64)>) -> (ClientOp, Request) {
    if let Some((book, now_us)) = leases {
        if rng.gen_bool(LEASE_CALLS) {
            return lease_call(rng, value, book, now_us);
        }
    }
    let (op, request) = random_op(rng, value);
    (ClientOp::Kv(op), request)
}

/// A grant while the clients keep few leases; else a KeepAlive of a kept
/// lease, a put with a known lease (ended or not), or a revoke.
fn lease_call(rng: &mut StdRng, value: u64, book: &LeaseBook, now_us: u64) -> (ClientOp, Request) {
    let grant = |rng: &mut StdRng| {
        let ttl_seconds = rng.gen_range(LEASE_TTL_SECONDS);
        let request = pb::LeaseGrantRequest {
            ttl: ttl_seconds,
            id: 0,
        };
        (ClientOp::Grant, Request::LeaseGrant(request))
    };
    if book.kept_count(now_us) < KEPT_LEASES_MAX && rng.gen_bool(0.3) {
        return grant(rng);
    }
    match rng.gen_range(0..20) {
        0..=9 => match book.pick_kept(rng, now_us) {
            Some(lease) => {
                let request = pb::LeaseKeepAliveRequest { id: lease };
                (ClientOp::KeepAlive { lease }, Request::LeaseKeepAlive(request))
            }
            None => grant(rng),
        },
        10..=16 => match book.pick_known(rng) {
            Some(lease) => {
                let key = KEYS[rng.gen_range(0..KEYS.len())].to_string();
                let value = format!("v{value}");
                let request = pb::PutRequest {
                    key: key.clone().into_bytes(),
                    value: value.clone().into_bytes(),
                    lease,
                    ..Default::default()
                };
                let op = Op::PutWithLease { key, value, lease };
                (ClientOp::Kv(op), Request::Put(request))
            }
            None => grant(rng),
        },
        _ => match book.pick_known(rng) {
            Some(lease) => {
                let request = pb::LeaseRevokeRequest { id: lease };
                (ClientOp::Revoke { lease }, Request::LeaseRevoke(request))
            }
            None => grant(rng),
        },
    }
}

/// How long the clients keep a newly granted lease alive.
pub fn keep_alive_for(rng: &mut StdRng) -> Duration {
    Duration::from_micros(rng.gen_range(0..KEEP_ALIVE_FOR_MAX.as_micros() as u64))
}

/// A random operation on one key and the request that carries it.
pub fn random_op(rng: &mut StdRng, value: u64) -> (Op, Request) {
    let key = KEYS[rng.gen_range(0..KEYS.len())].to_string();
    match rng.gen_range(0..10) {
        0..=3 => (Op::Get { key: key.clone() }, Request::Range(range(&key))),
        4..=6 => {
            let value = format!("v{value}");
            let request = pb::PutRequest {
                key: key.clone().into_bytes(),
                value: value.clone().into_bytes(),
                ..Default::default()
            };
            (Op::Put { key, value }, Request::Put(request))
        }
        7 => {
            let request = pb::DeleteRangeRequest {
                key: key.clone().into_bytes(),
                ..Default::default()
            };
            (Op::Delete { key }, Request::DeleteRange(request))
        }
        _ => {
            let expected = rng
                .gen_bool(0.3)
                .then(|| format!("v{}", rng.gen_range(0..value.max(1))));
            let new = format!("v{value}");
            let request = cas(&key, expected.as_deref(), &new);
            (Op::Cas { key, expected, new }, Request::Txn(request))
        }
    }
}

/// A linearizable Range of one key.
pub fn range(key: &str) -> pb::RangeRequest {
    pb::RangeRequest {
        key: key.as_bytes().to_vec(),
        ..Default::default()
    }
}

/// If `key`'s value is `expected` (None: the key is absent), put `new`.
fn cas(key: &str, expected: Option<&str>, new: &str) -> pb::TxnRequest {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    let compare = match expected {
        Some(value) => pb::Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Value as i32,
            key: key.as_bytes().to_vec(),
            target_union: Some(TargetUnion::Value(value.as_bytes().to_vec())),
            ..Default::default()
        },
        None => pb::Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Create as i32,
            key: key.as_bytes().to_vec(),
            target_union: Some(TargetUnion::CreateRevision(0)),
            ..Default::default()
        },
    };
    let put = pb::PutRequest {
        key: key.as_bytes().to_vec(),
        value: new.as_bytes().to_vec(),
        ..Default::default()
    };
    pb::TxnRequest {
        compare: vec![compare],
        success: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(put)),
        }],
        failure: Vec::new(),
    }
}

/// What the client saw of `op`, from the member's answer. An error is an
/// unknown outcome: a write may still have been applied (a timeout), and a
/// read that failed constrains nothing.
pub fn outcome(op: &Op, response: Response) -> Outcome {
    match (op, response) {
        (Op::Get { .. }, Response::Range(range)) => Outcome::Get(first_value(&range)),
        (Op::Get { .. }, Response::RangeEncoded(encoded)) => {
            let range = pb::RangeResponse::decode(encoded.into_prefixed(0)).expect("the core encodes a RangeResponse");
            Outcome::Get(first_value(&range))
        }
        (Op::Put { .. } | Op::PutWithLease { .. }, Response::Put(_)) => Outcome::Put,
        (Op::Delete { .. }, Response::DeleteRange(delete)) => Outcome::Delete {
            deleted: delete.deleted > 0,
        },
        (Op::Cas { .. }, Response::Txn(txn)) => Outcome::Cas {
            succeeded: txn.succeeded,
        },
        (op, response) => panic!("{op:?} answered with {response:?}"),
    }
}

fn first_value(range: &pb::RangeResponse) -> Option<String> {
    let kv = range.kvs.first()?;
    Some(String::from_utf8(kv.value.clone()).expect("the clients write UTF-8 values"))
}

/// The history event of operation `op`, invoked at `invoke_us` and answered
/// at `complete_us`.
pub fn completed(client: u32, op: Op, invoke_us: u64, complete_us: u64, outcome: Outcome) -> Event {
    let (complete, outcome) = match outcome {
        Outcome::Unknown => (None, Outcome::Unknown),
        known => (Some(complete_us * 1000), known),
    };
    Event {
        client,
        op,
        invoke: invoke_us * 1000,
        complete,
        outcome,
    }
}
