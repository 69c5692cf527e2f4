//! Turning a store core notice into etcd `WatchResponse` messages, split into
//! fragments when the watcher asked for them and the response is too big.

use bytes::{Bytes, BytesMut};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
use prost::Message;
use ringkv_proto::etcdserverpb as pb;

use crate::grpc::Encoded;
use crate::watch::{Notice, NoticeBody};

/// `WatchResponse.events` field number.
const EVENTS_FIELD: u32 = 11;

/// The messages to write for `notice`, in order (none for `Nothing`).
pub fn responses(header: &pb::ResponseHeader, notice: Notice, max_request_bytes: usize) -> Vec<Encoded> {
    let header = |revision: i64| {
        Some(pb::ResponseHeader {
            revision,
            ..header.clone()
        })
    };
    let response = match notice.body {
        NoticeBody::Nothing => return Vec::new(),
        NoticeBody::Created {
            watch_id,
            revision,
            cancel_reason,
        } => pb::WatchResponse {
            header: header(revision),
            watch_id,
            created: true,
            canceled: cancel_reason.is_some(),
            cancel_reason: cancel_reason.unwrap_or_default().to_string(),
            ..Default::default()
        },
        NoticeBody::Canceled { watch_id, revision } => pb::WatchResponse {
            header: header(revision),
            watch_id,
            canceled: true,
            ..Default::default()
        },
        NoticeBody::Progress { watch_id, revision } => pb::WatchResponse {
            header: header(revision),
            watch_id,
            ..Default::default()
        },
        // etcd sends this with a header revision of 0, canceled only if the store
        // was ever compacted.
        NoticeBody::Compacted {
            watch_id,
            compact_revision,
        } => pb::WatchResponse {
            header: header(0),
            watch_id,
            compact_revision,
            canceled: compact_revision != 0,
            ..Default::default()
        },
        NoticeBody::Events {
            watch_id,
            revision,
            events,
            fragment,
        } => {
            let head = pb::WatchResponse {
                header: header(revision),
                watch_id,
                ..Default::default()
            };
            let limit = fragment.then_some(max_request_bytes);
            return event_responses(head, &events, limit);
        }
    };
    vec![Encoded::new(&response)]
}

/// Bytes an event takes inside a WatchResponse.
fn event_field_len(event: &Bytes) -> usize {
    1 + encoded_len_varint(event.len() as u64) + event.len()
}

/// etcd's `sendFragments`: with a fragment limit, a response of at least that many
/// bytes and two or more events is cut into responses of fewer bytes (each holds at
/// least one event); all but the last carry `fragment = true`.
fn event_responses(head: pb::WatchResponse, events: &[Bytes], fragment_limit: Option<usize>) -> Vec<Encoded> {
    let whole = head.encoded_len() + events.iter().map(event_field_len).sum::<usize>();
    let Some(limit) = fragment_limit.filter(|&limit| whole >= limit && events.len() >= 2) else {
        return vec![with_events(&head, events)];
    };
    let fragment_head = pb::WatchResponse {
        fragment: true,
        ..head.clone()
    };
    let mut responses = Vec::new();
    let mut next = 0;
    while next < events.len() {
        let mut size = fragment_head.encoded_len();
        let mut end = next;
        while end < events.len() {
            let grown = size + event_field_len(&events[end]);
            if end > next && grown >= limit {
                break;
            }
            size = grown;
            end += 1;
        }
        let last = end == events.len();
        let head = if last { &head } else { &fragment_head };
        responses.push(with_events(head, &events[next..end]));
        next = end;
    }
    responses
}

fn with_events(head: &pb::WatchResponse, events: &[Bytes]) -> Encoded {
    let head = head.encode_to_vec();
    let mut fields = BytesMut::with_capacity(events.len() * 6);
    let mut parts: Vec<&[u8]> = Vec::with_capacity(2 * events.len() + 1);
    let mut offsets = Vec::with_capacity(events.len());
    for event in events {
        let start = fields.len();
        encode_key(EVENTS_FIELD, WireType::LengthDelimited, &mut fields);
        encode_varint(event.len() as u64, &mut fields);
        offsets.push((start, fields.len()));
    }
    parts.push(&head);
    for ((start, end), event) in offsets.into_iter().zip(events) {
        parts.push(&fields[start..end]);
        parts.push(event);
    }
    Encoded::from_parts(&parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringkv_proto::mvccpb;

    fn event(key: &str, value_bytes: usize) -> Bytes {
        let event = mvccpb::Event {
            kv: Some(mvccpb::KeyValue {
                key: key.as_bytes().to_vec(),
                value: vec![b'v'; value_bytes],
                mod_revision: 5,
                ..Default::default()
            }),
            ..Default::default()
        };
        Bytes::from(event.encode_to_vec())
    }

    fn decoded(responses: Vec<Encoded>) -> Vec<pb::WatchResponse> {
        responses
            .iter()
            .map(|r| pb::WatchResponse::decode(r.message()).unwrap())
            .collect()
    }

    fn events_notice(events: Vec<Bytes>, fragment: bool) -> Notice {
        Notice {
            stream: 1,
            credit_bytes: 0,
            answers_command: false,
            body: NoticeBody::Events {
                watch_id: 3,
                revision: 9,
                events,
                fragment,
            },
        }
    }

    #[test]
    fn shared_event_bytes_decode_as_a_normal_response() {
        let header = pb::ResponseHeader {
            cluster_id: 1,
            member_id: 2,
            raft_term: 3,
            revision: 0,
        };
        let out = decoded(responses(
            &header,
            events_notice(vec![event("a", 1), event("b", 2)], false),
            100,
        ));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].header.as_ref().unwrap().revision, 9);
        assert_eq!(out[0].header.as_ref().unwrap().member_id, 2);
        assert_eq!(out[0].watch_id, 3);
        let keys: Vec<_> = out[0]
            .events
            .iter()
            .map(|e| e.kv.as_ref().unwrap().key.clone())
            .collect();
        assert_eq!(keys, vec![b"a".to_vec(), b"b".to_vec()]);
    }

    #[test]
    fn big_responses_fragment_only_when_asked() {
        let events: Vec<_> = (0..10).map(|i| event(&format!("k{i}"), 300)).collect();
        let header = pb::ResponseHeader::default();
        let whole = decoded(responses(&header, events_notice(events.clone(), false), 1000));
        assert_eq!(whole.len(), 1, "no fragment flag: one response however big");
        let parts = decoded(responses(&header, events_notice(events, true), 1000));
        assert!(parts.len() > 1);
        assert!(parts[..parts.len() - 1].iter().all(|p| p.fragment));
        assert!(!parts.last().unwrap().fragment);
        assert_eq!(parts.iter().map(|p| p.events.len()).sum::<usize>(), 10);
        assert!(parts.iter().all(|p| p.encoded_len() < 1000 || p.events.len() == 1));
    }

    #[test]
    fn a_single_huge_event_is_never_split() {
        let header = pb::ResponseHeader::default();
        let out = decoded(responses(&header, events_notice(vec![event("k", 5000)], true), 1000));
        assert_eq!(out.len(), 1);
        assert!(!out[0].fragment);
    }
}
