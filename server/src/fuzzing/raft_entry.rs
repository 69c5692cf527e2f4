//! The raft-entry target: arbitrary bytes as the payload of a committed raft
//! entry, read as apply reads it: a normal entry through `store::entry::decode`
//! (which decodes and checks it, or says why the entry is skipped), a
//! `ConfChangeV2` with its `ConfChangeContext`. Reading must end (prost's
//! recursion limit bounds the nesting), and what apply takes must be taken
//! again once encoded, as a restart replaying the entry would.

use prost::Message;
use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2};
use ringkv_proto::etcdserverpb as pb;
use ringkv_proto::ringkvpb::{self, raft_request, ConfChangeContext};

use crate::apply::check;
use crate::store::entry;

/// Input: a kind byte (even: a normal entry, odd: a ConfChangeV2 entry),
/// then the entry's data.
pub fn raft_entry(data: &[u8]) {
    let Some((&kind, payload)) = data.split_first() else {
        return;
    };
    if kind % 2 == 0 {
        let Ok(decoded) = entry::decode(payload) else {
            return;
        };
        let encoded = entry::encode_as(decoded.id, decoded.auth.clone(), decoded.request.clone());
        let again = entry::decode(&encoded).expect("an applied request, encoded, is applied");
        assert!(again == decoded, "an applied request encodes back to itself");
    } else {
        let Ok(change) = decodes_to_itself::<ConfChangeV2>(payload) else {
            return;
        };
        let Ok(context) = decodes_to_itself::<ConfChangeContext>(&change.context) else {
            return;
        };
        if let Some(member) = context.member {
            let _ = check::member_peer_urls(&member.peer_urls);
        }
    }
}

/// The message `bytes` decode to, which must encode to bytes that decode to
/// it again.
fn decodes_to_itself<M: Message + Default + PartialEq>(bytes: &[u8]) -> Result<M, prost::DecodeError> {
    let message = M::decode(bytes)?;
    let again = M::decode(message.encode_to_vec().as_slice()).expect("an encoded message decodes");
    assert!(again == message, "a decoded message encodes back to itself");
    Ok(message)
}

fn normal(request: raft_request::Request) -> Vec<u8> {
    [vec![0], entry::encode(0x1234_0000_0001, request)].concat()
}

/// A Txn nested `depth` levels, a put innermost.
fn nested_txn(depth: usize) -> pb::TxnRequest {
    let mut txn = pb::TxnRequest {
        compare: Vec::new(),
        success: vec![pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                ..Default::default()
            })),
        }],
        failure: Vec::new(),
    };
    for _ in 1..depth {
        txn = pb::TxnRequest {
            compare: Vec::new(),
            success: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::RequestTxn(txn)),
            }],
            failure: Vec::new(),
        };
    }
    txn
}

pub(super) fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let member = ringkvpb::Member {
        id: 0x42,
        name: "m3".to_string(),
        peer_urls: vec!["http://127.0.0.1:32380".to_string()],
        client_urls: Vec::new(),
        is_learner: true,
    };
    let change = ConfChangeV2 {
        changes: vec![ConfChangeSingle {
            change_type: ConfChangeType::AddLearnerNode as i32,
            node_id: 0x42,
        }],
        context: ConfChangeContext {
            request_id: 7,
            member: Some(member),
            promote: false,
        }
        .encode_to_vec(),
        ..Default::default()
    };
    vec![
        (
            "put",
            normal(raft_request::Request::Put(pb::PutRequest {
                key: b"greeting".to_vec(),
                value: b"hello".to_vec(),
                lease: 7,
                ..Default::default()
            })),
        ),
        (
            "delete-range",
            normal(raft_request::Request::DeleteRange(pb::DeleteRangeRequest {
                key: b"a".to_vec(),
                range_end: b"b".to_vec(),
                prev_kv: true,
            })),
        ),
        (
            "txn-nested-32",
            normal(raft_request::Request::Txn(nested_txn(check::TXN_DEPTH_MAX))),
        ),
        (
            "lease-grant",
            normal(raft_request::Request::LeaseGrant(pb::LeaseGrantRequest {
                ttl: 60,
                id: 9,
            })),
        ),
        (
            "member-update",
            normal(raft_request::Request::MemberUpdate(pb::MemberUpdateRequest {
                id: 0x42,
                peer_ur_ls: vec!["http://127.0.0.1:2380".to_string()],
            })),
        ),
        (
            "alarm",
            normal(raft_request::Request::Alarm(pb::AlarmRequest {
                action: 1,
                member_id: 0x42,
                alarm: 1,
            })),
        ),
        ("conf-change-add-learner", [vec![1], change.encode_to_vec()].concat()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_takes_the_normal_seeds() {
        for (name, seed) in seeds().into_iter().filter(|(_, seed)| seed[0] == 0) {
            entry::decode(&seed[1..])
                .map(|decoded| decoded.request)
                .unwrap_or_else(|skipped| panic!("{name}: {skipped}"));
        }
    }
}
