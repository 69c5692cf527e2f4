//! etcd v3 wire-compatible protobuf messages for ringkv.
//!
//! Package and message names follow etcd v3.5 so that etcdctl, clientv3 and
//! kube-apiserver talk to ringkv unchanged. With the `client` feature each etcd
//! service also gets a tonic client (`etcdserverpb::kv_client::KvClient`, ...).
//! With the `json` feature, etcd's messages are serde types in protobuf's JSON
//! mapping with proto field names (the JSON gateway's). With the `proptest` feature, [`arbitrary`] has strategies for property tests.
// pbjson's generated serde code borrows where clippy would not.
#![cfg_attr(feature = "json", allow(clippy::needless_borrows_for_generic_args))]

/// etcd's `mvccpb` package: stored key-values and watch events.
pub mod mvccpb {
    include!(concat!(env!("OUT_DIR"), "/mvccpb.rs"));
    #[cfg(feature = "json")]
    include!(concat!(env!("OUT_DIR"), "/mvccpb.serde.rs"));
}

/// etcd's `authpb` package: users, roles and permissions.
pub mod authpb {
    include!(concat!(env!("OUT_DIR"), "/authpb.rs"));
    #[cfg(feature = "json")]
    include!(concat!(env!("OUT_DIR"), "/authpb.serde.rs"));
}

/// etcd's `etcdserverpb` package: the v3 API's services and messages.
pub mod etcdserverpb {
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));
    #[cfg(feature = "json")]
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.serde.rs"));
}

/// ringkv's own messages: what a raft log entry carries.
pub mod ringkvpb {
    include!(concat!(env!("OUT_DIR"), "/ringkvpb.rs"));
}

/// gRPC's health checking protocol (`grpc.health.v1`), which etcd serves on
/// its client port for load balancers and gRPC clients.
pub mod health {
    include!(concat!(env!("OUT_DIR"), "/grpc.health.v1.rs"));
}

/// etcd's `v3lockpb` package: the Lock service (server-side locks).
pub mod v3lockpb {
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.rs"));
    #[cfg(feature = "json")]
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.serde.rs"));
}

/// etcd's `v3electionpb` package: the Election service (server-side leader
/// election).
pub mod v3electionpb {
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.rs"));
    #[cfg(feature = "json")]
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.serde.rs"));
}

/// proptest strategies for these messages.
#[cfg(feature = "proptest")]
pub mod arbitrary {
    use std::ops::Range;

    use proptest::prelude::*;

    use super::mvccpb::KeyValue;

    /// Any key-value with a key of `key_bytes` and a value of `value_bytes`
    /// bytes; every integer field takes any value.
    pub fn key_value(key_bytes: Range<usize>, value_bytes: Range<usize>) -> impl Strategy<Value = KeyValue> {
        (
            prop::collection::vec(any::<u8>(), key_bytes),
            any::<i64>(),
            any::<i64>(),
            any::<i64>(),
            prop::collection::vec(any::<u8>(), value_bytes),
            any::<i64>(),
        )
            .prop_map(|(key, create_revision, mod_revision, version, value, lease)| KeyValue {
                key,
                create_revision,
                mod_revision,
                version,
                value,
                lease,
            })
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::etcdserverpb::{compare, request_op, Compare, PutRequest, RangeRequest, RequestOp, TxnRequest};

    /// The tag byte of field `number` with wire type `wire`.
    fn tag(number: u32, wire: u32) -> u8 {
        u8::try_from(number << 3 | wire).unwrap()
    }

    #[test]
    fn range_request_fields_carry_etcds_numbers() {
        let request = RangeRequest {
            key: b"k".to_vec(),
            limit: 5,
            count_only: true,
            max_create_revision: 7,
            ..Default::default()
        };
        let bytes = request.encode_to_vec();
        // key (1, bytes), limit (3, varint), count_only (9, varint), max_create_revision (13, varint)
        assert_eq!(
            bytes,
            vec![tag(1, 2), 1, b'k', tag(3, 0), 5, tag(9, 0), 1, tag(13, 0), 7]
        );
    }

    #[test]
    fn compare_range_end_is_field_64() {
        let compare = Compare {
            range_end: b"z".to_vec(),
            ..Default::default()
        };
        // Field 64 with wire type 2 needs a two-byte varint tag: 64 << 3 | 2 = 514.
        assert_eq!(compare.encode_to_vec(), vec![0x82, 0x04, 1, b'z']);
    }

    #[test]
    fn leader_key_fields_carry_etcds_numbers() {
        use super::v3electionpb::{LeaderKey, ProclaimRequest};

        let leader = LeaderKey {
            name: b"n".to_vec(),
            key: b"k".to_vec(),
            rev: 3,
            lease: 4,
        };
        // name (1, bytes), key (2, bytes), rev (3, varint), lease (4, varint)
        let bytes = leader.encode_to_vec();
        assert_eq!(
            bytes,
            vec![tag(1, 2), 1, b'n', tag(2, 2), 1, b'k', tag(3, 0), 3, tag(4, 0), 4]
        );
        // ProclaimRequest: leader (1, message), value (2, bytes).
        let proclaim = ProclaimRequest {
            leader: Some(leader),
            value: b"v".to_vec(),
        };
        let mut expected = vec![tag(1, 2), bytes.len() as u8];
        expected.extend(&bytes);
        expected.extend([tag(2, 2), 1, b'v']);
        assert_eq!(proclaim.encode_to_vec(), expected);
    }

    #[test]
    fn lock_request_fields_carry_etcds_numbers() {
        let request = super::v3lockpb::LockRequest {
            name: b"n".to_vec(),
            lease: 5,
        };
        assert_eq!(request.encode_to_vec(), vec![tag(1, 2), 1, b'n', tag(2, 0), 5]);
    }

    #[test]
    fn nested_txn_round_trips() {
        let inner = TxnRequest {
            compare: vec![Compare {
                target: compare::CompareTarget::Mod as i32,
                key: b"a".to_vec(),
                target_union: Some(compare::TargetUnion::ModRevision(3)),
                ..Default::default()
            }],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: b"a".to_vec(),
                    value: b"v".to_vec(),
                    ..Default::default()
                })),
            }],
            failure: vec![],
        };
        let outer = TxnRequest {
            compare: vec![],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestTxn(inner)),
            }],
            failure: vec![],
        };
        let decoded = TxnRequest::decode(outer.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded, outer);
        // request_txn is field 4 of RequestOp.
        let op_bytes = outer.success[0].encode_to_vec();
        assert_eq!(op_bytes[0], tag(4, 2));
    }

    /// etcd 3.4's gateway, asked `curl -d '{"key":"Zm9v","value":"YmFy"}' /v3/kv/put`
    /// then `/v3/kv/range` with `{"key":"Zm9v"}`, answered these bytes.
    #[cfg(feature = "json")]
    #[test]
    fn json_is_grpc_gateways_with_proto_field_names() {
        use super::etcdserverpb::{RangeResponse, ResponseHeader};
        use super::mvccpb::KeyValue;
        let response = RangeResponse {
            header: Some(ResponseHeader {
                cluster_id: 14841639068965178418,
                member_id: 10276657743932975437,
                revision: 2,
                raft_term: 2,
            }),
            kvs: vec![KeyValue {
                key: b"foo".to_vec(),
                create_revision: 2,
                mod_revision: 2,
                version: 1,
                value: b"bar".to_vec(),
                lease: 0,
            }],
            more: false,
            count: 1,
        };
        assert_eq!(
            serde_json::to_string(&response).unwrap(),
            r#"{"header":{"cluster_id":"14841639068965178418","member_id":"10276657743932975437","revision":"2","raft_term":"2"},"kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"2","version":"1","value":"YmFy"}],"count":"1"}"#
        );
        let request: RangeRequest =
            serde_json::from_str(r#"{"key":"Zm9v","range_end":"AA==","limit":"3","keysOnly":true}"#).unwrap();
        assert_eq!(
            (request.key, request.range_end, request.limit, request.keys_only),
            (b"foo".to_vec(), vec![0], 3, true)
        );
    }
}
