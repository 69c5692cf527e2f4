//! The simulation's clients: each calls one member at a time with a random
//! operation on a few keys, as etcd's clients would (Put, linearizable Range,
//! DeleteRange, a compare-and-swap Txn), and records what it saw as the
//! linearizability checker's history.

use prost::Message;
use rand::rngs::StdRng;
use rand::Rng;
use ringkv_proto::etcdserverpb as pb;

use super::lincheck::{Event, Op, Outcome};
use crate::store::messages::{Request, Response};

/// Keys the clients share: few, so operations on one key overlap.
const KEYS: [&str; 3] = ["a", "b", "c"];

/// A call a client is waiting on.
pub struct InFlight {
    pub op: Op,
    pub invoke_us: u64,
}

/// A random operation and the request that carries it; `value` makes a
/// written value unique in the run.
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
        (Op::Put { .. }, Response::Put(_)) => Outcome::Put,
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

/// The history event of a call answered at `complete_us`.
pub fn completed(client: u32, call: InFlight, complete_us: u64, outcome: Outcome) -> Event {
    let (complete, outcome) = match outcome {
        Outcome::Unknown => (None, Outcome::Unknown),
        known => (Some(complete_us * 1000), known),
    };
    Event {
        client,
        op: call.op,
        invoke: call.invoke_us * 1000,
        complete,
        outcome,
    }
}
