//! What a committed normal raft entry asks for, read as apply reads it: any
//! bytes at all give a checked request or the reason the entry is skipped,
//! never a panic. The reason depends on the bytes alone, so every member skips
//! the same entries, and a restart replaying them skips them again.

use prost::Message;
use ringkv_proto::etcdserverpb as pb;
use ringkv_proto::ringkvpb::raft_request::Request;
use ringkv_proto::ringkvpb::raft_request_encoded::Request as Encoded;
use ringkv_proto::ringkvpb::{AuthHeader, AuthRequest, MemberAttributes, RaftRequest, RaftRequestEncoded};

use crate::apply::check;
use crate::etcd_error::EtcdError;

/// Why an entry is not applied.
#[derive(Debug, thiserror::Error)]
pub enum SkippedEntry {
    #[error("does not decode as a request: {0}")]
    Envelope(prost::DecodeError),
    #[error("request {id:x} holds no request")]
    Empty { id: u64 },
    #[error("request {id:x}: its {kind} does not decode: {error}")]
    Request {
        id: u64,
        kind: &'static str,
        error: prost::DecodeError,
    },
    #[error("request {id:x} is refused: {error}")]
    Refused { id: u64, error: EtcdError },
}

impl SkippedEntry {
    /// The call waiting on this entry, if its id is known, and etcd's error
    /// for it where there is one (a request refused by a check).
    pub fn answer(&self) -> Option<(u64, EtcdError)> {
        match self {
            SkippedEntry::Refused { id, error } => Some((*id, *error)),
            _ => None,
        }
    }
}

/// The entry bytes of `request` with id `id`, as proposals carry them.
#[cfg(any(test, feature = "fuzzing"))]
pub fn encode(id: u64, request: Request) -> Vec<u8> {
    encode_as(id, None, request)
}

/// The entry bytes of `request` made by the user `auth` names.
pub fn encode_as(id: u64, auth: Option<AuthHeader>, request: Request) -> Vec<u8> {
    RaftRequest {
        id,
        request: Some(request),
        auth_header: auth,
    }
    .encode_to_vec()
}

/// What a committed normal entry asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// Routes the result to the waiting call (see `RaftRequest.id`).
    pub id: u64,
    /// The user the request runs as, if the call came with one.
    pub auth: Option<AuthHeader>,
    pub request: Request,
}

/// The id, user and checked request an entry carries. The request is decoded
/// from its own bytes, as deep as the client core decoded it, and checked as
/// the client core checks it (without the member's own limits, which may
/// differ between members).
pub fn decode(data: &[u8]) -> Result<Decoded, SkippedEntry> {
    let envelope = RaftRequestEncoded::decode(data).map_err(SkippedEntry::Envelope)?;
    let id = envelope.id;
    let encoded = envelope.request.ok_or(SkippedEntry::Empty { id })?;
    let request = decode_request(encoded).map_err(|(kind, error)| SkippedEntry::Request { id, kind, error })?;
    check_request(&request).map_err(|error| SkippedEntry::Refused { id, error })?;
    Ok(Decoded {
        id,
        auth: envelope.auth_header,
        request,
    })
}

fn decode_request(encoded: Encoded) -> Result<Request, (&'static str, prost::DecodeError)> {
    fn read<M: Message + Default>(kind: &'static str, bytes: &[u8]) -> Result<M, (&'static str, prost::DecodeError)> {
        M::decode(bytes).map_err(|error| (kind, error))
    }
    Ok(match encoded {
        Encoded::Put(bytes) => Request::Put(read("put", &bytes)?),
        Encoded::DeleteRange(bytes) => Request::DeleteRange(read("delete_range", &bytes)?),
        Encoded::Txn(bytes) => Request::Txn(read("txn", &bytes)?),
        Encoded::Compaction(bytes) => Request::Compaction(read("compaction", &bytes)?),
        Encoded::LeaseGrant(bytes) => Request::LeaseGrant(read("lease_grant", &bytes)?),
        Encoded::LeaseRevoke(bytes) => Request::LeaseRevoke(read("lease_revoke", &bytes)?),
        Encoded::MemberAttributes(bytes) => {
            Request::MemberAttributes(read::<MemberAttributes>("member_attributes", &bytes)?)
        }
        Encoded::MemberUpdate(bytes) => Request::MemberUpdate(read("member_update", &bytes)?),
        Encoded::Alarm(bytes) => Request::Alarm(read::<pb::AlarmRequest>("alarm", &bytes)?),
        Encoded::Auth(bytes) => Request::Auth(read::<AuthRequest>("auth", &bytes)?),
    })
}

/// The client core's checks, for requests that have them.
fn check_request(request: &Request) -> Result<(), EtcdError> {
    match request {
        Request::Put(put) => check::check_put(put),
        Request::DeleteRange(delete) => check::check_delete(delete),
        Request::Txn(txn) => check::check_txn(txn, usize::MAX),
        // The client core stores URLs checked, trimmed and sorted.
        Request::MemberUpdate(update) => match check::member_peer_urls(&update.peer_ur_ls) {
            Ok(urls) if urls == update.peer_ur_ls => Ok(()),
            _ => Err(EtcdError::MemberBadUrls),
        },
        Request::Compaction(_)
        | Request::LeaseGrant(_)
        | Request::LeaseRevoke(_)
        | Request::MemberAttributes(_)
        | Request::Alarm(_)
        // Checked against the auth state when applied.
        | Request::Auth(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::request_op::Request as Op;
    use proptest::prelude::*;

    /// A Txn `depth` levels deep (the outermost included), a Put innermost.
    fn nested_txn(depth: usize) -> pb::TxnRequest {
        let mut op = Op::RequestPut(pb::PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            ..Default::default()
        });
        for _ in 1..depth {
            op = Op::RequestTxn(pb::TxnRequest {
                success: vec![pb::RequestOp { request: Some(op) }],
                ..Default::default()
            });
        }
        pb::TxnRequest {
            success: vec![pb::RequestOp { request: Some(op) }],
            ..Default::default()
        }
    }

    fn every_kind() -> Vec<Request> {
        vec![
            Request::Put(pb::PutRequest {
                key: b"a".to_vec(),
                value: b"1".to_vec(),
                lease: 7,
                ..Default::default()
            }),
            Request::DeleteRange(pb::DeleteRangeRequest {
                key: b"a".to_vec(),
                range_end: b"b".to_vec(),
                prev_kv: true,
            }),
            Request::Txn(nested_txn(3)),
            Request::Compaction(pb::CompactionRequest {
                revision: 5,
                physical: true,
            }),
            Request::LeaseGrant(pb::LeaseGrantRequest { ttl: 10, id: 3 }),
            Request::LeaseRevoke(pb::LeaseRevokeRequest { id: 3 }),
            Request::MemberAttributes(MemberAttributes {
                member_id: 9,
                name: "m".to_string(),
                client_urls: vec!["http://127.0.0.1:2379".to_string()],
            }),
            Request::MemberUpdate(pb::MemberUpdateRequest {
                id: 9,
                peer_ur_ls: vec!["http://127.0.0.1:2380".to_string()],
            }),
            Request::Alarm(pb::AlarmRequest {
                action: 1,
                member_id: 9,
                alarm: 1,
            }),
            Request::Auth(AuthRequest {
                request: Some(ringkv_proto::ringkvpb::auth_request::Request::RoleGrantPermission(
                    pb::AuthRoleGrantPermissionRequest {
                        name: "r".to_string(),
                        perm: Some(ringkv_proto::authpb::Permission {
                            perm_type: 2,
                            key: b"a".to_vec(),
                            range_end: b"b".to_vec(),
                        }),
                    },
                )),
            }),
        ]
    }

    #[test]
    fn every_kind_of_request_reads_back_as_proposed() {
        for request in every_kind() {
            let data = encode(77, request.clone());
            let decoded = decode(&data).unwrap();
            assert_eq!((decoded.id, decoded.auth, decoded.request), (77, None, request));
        }
    }

    #[test]
    fn the_user_a_request_runs_as_reads_back() {
        let header = AuthHeader {
            username: "alice".to_string(),
            revision: 9,
        };
        let data = encode_as(5, Some(header.clone()), every_kind()[0].clone());
        assert_eq!(decode(&data).unwrap().auth, Some(header));
    }

    #[test]
    fn the_deepest_txn_the_client_core_accepts_is_applied() {
        let txn = nested_txn(check::TXN_DEPTH_MAX);
        assert_eq!(check::check_txn(&txn, 128), Ok(()));
        let decoded = decode(&encode(1, Request::Txn(txn.clone()))).unwrap();
        assert_eq!(decoded.request, Request::Txn(txn));
    }

    #[test]
    fn a_txn_too_deep_to_check_is_refused_not_fatal() {
        // As deep as prost decodes from a gRPC message: inside a RaftRequest,
        // one level deeper, it is past prost's recursion limit.
        let txn = nested_txn(50);
        assert!(pb::TxnRequest::decode(txn.encode_to_vec().as_slice()).is_ok());
        assert!(RaftRequest::decode(encode(5, Request::Txn(txn.clone())).as_slice()).is_err());
        let skipped = decode(&encode(5, Request::Txn(txn))).unwrap_err();
        assert_eq!(skipped.answer(), Some((5, EtcdError::TxnTooDeep)));
        // Deeper than prost decodes at all.
        let txn = nested_txn(51);
        assert!(pb::TxnRequest::decode(txn.encode_to_vec().as_slice()).is_err());
        let skipped = decode(&encode(6, Request::Txn(txn))).unwrap_err();
        assert!(
            matches!(skipped, SkippedEntry::Request { id: 6, kind: "txn", .. }),
            "{skipped}"
        );
    }

    #[test]
    fn a_request_the_client_core_refuses_is_refused_at_apply() {
        let duplicate = pb::TxnRequest {
            success: vec![
                pb::RequestOp {
                    request: Some(Op::RequestPut(pb::PutRequest {
                        key: b"k".to_vec(),
                        ..Default::default()
                    })),
                },
                pb::RequestOp {
                    request: Some(Op::RequestDeleteRange(pb::DeleteRangeRequest {
                        key: b"k".to_vec(),
                        ..Default::default()
                    })),
                },
            ],
            ..Default::default()
        };
        let cases = [
            (Request::Put(pb::PutRequest::default()), EtcdError::EmptyKey),
            (Request::Txn(duplicate), EtcdError::DuplicateKey),
            (
                Request::MemberUpdate(pb::MemberUpdateRequest {
                    id: 1,
                    peer_ur_ls: vec!["not a url".to_string()],
                }),
                EtcdError::MemberBadUrls,
            ),
        ];
        for (request, error) in cases {
            assert_eq!(decode(&encode(3, request)).unwrap_err().answer(), Some((3, error)));
        }
    }

    #[test]
    fn an_entry_without_a_request_is_skipped() {
        let data = RaftRequest {
            id: 4,
            request: None,
            auth_header: None,
        }
        .encode_to_vec();
        assert!(matches!(decode(&data), Err(SkippedEntry::Empty { id: 4 })));
    }

    proptest! {
        /// Any bytes: a request or a reason, never a panic.
        #[test]
        fn any_bytes_decode_or_are_skipped(data in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&data);
        }

        /// A valid entry with bytes flipped: still a request or a reason.
        #[test]
        fn damaged_entries_decode_or_are_skipped(
            which in 0..10usize,
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        ) {
            let mut data = encode(11, every_kind()[which].clone());
            for (at, byte) in flips {
                let at = at.index(data.len());
                data[at] = byte;
            }
            let _ = decode(&data);
        }
    }
}
