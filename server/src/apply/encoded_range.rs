//! A RangeResponse assembled from key-values that are already encoded.
//!
//! A revision record's body is the `mvccpb.KeyValue` encoding (see
//! docs/mvcc-format.md), so a Range with nothing to sort, filter or strip can
//! copy each record's body into the response as field 2 (`kvs`), instead of
//! decoding it into a `KeyValue` on the store core and encoding it again on the
//! client core. The fields come out in field-number order (header, kvs, more,
//! count), so the message is byte for byte what prost makes of the same
//! response. The transport's frame prefix goes in front of it without a copy:
//! room for it is kept, its size given by the caller.

use std::fmt;

use bytes::{Buf, BufMut, BytesMut};
use prost::encoding::{encode_key, encode_varint, WireType};
use prost::Message;
use ringkv_proto::etcdserverpb as pb;

/// `RangeResponse.kvs`.
const KVS_FIELD: u32 = 2;

/// Room kept at the front of the buffer for the frame prefix and the header
/// field, which is written last (the store core fills the header after the
/// key-values are in).
const HEAD_ROOM: usize = 64;
/// The largest header field: at most 4 fields of 1 tag byte and a 10-byte
/// varint, plus its own tag and length bytes: 2 + 44.
const HEADER_FIELD_BYTES_MAX: usize = 46;
/// The longest frame prefix the head room leaves space for (gRPC's is 5 bytes).
pub const PREFIX_BYTES_MAX: usize = HEAD_ROOM - HEADER_FIELD_BYTES_MAX;
/// The most `expect` reserves at once: a list page of a few thousand objects.
/// A larger response grows as it fills, as it would without the estimate.
const EXPECTED_BYTES_MAX: usize = 4 * 1024 * 1024;

/// A Range's answer with its key-values encoded.
pub struct EncodedRangeResponse {
    /// `HEAD_ROOM` bytes, then one `kvs` field per key-value.
    buffer: BytesMut,
    pub header: Option<pb::ResponseHeader>,
    pub more: bool,
    pub count: i64,
}

impl Default for EncodedRangeResponse {
    fn default() -> EncodedRangeResponse {
        let mut buffer = BytesMut::with_capacity(HEAD_ROOM);
        buffer.put_bytes(0, HEAD_ROOM);
        EncodedRangeResponse {
            buffer,
            header: None,
            more: false,
            count: 0,
        }
    }
}

impl EncodedRangeResponse {
    /// Appends a key-value, given as its `mvccpb.KeyValue` encoding.
    pub fn push_kv(&mut self, kv: &[u8]) {
        encode_key(KVS_FIELD, WireType::LengthDelimited, &mut self.buffer);
        encode_varint(kv.len() as u64, &mut self.buffer);
        self.buffer.put_slice(kv);
    }

    /// Makes room for about `kvs` more key-values of about `kv_bytes` each
    /// (their fields, as `push_kv` writes them), up to `EXPECTED_BYTES_MAX`:
    /// a list page grown from nothing doubled its buffer a dozen times, each
    /// time copying what it held. An eighth more than that, since a list's
    /// later keys and revisions are often a few bytes longer than its first
    /// (`pod-9` then `pod-10`), and one byte past the room copies the page.
    pub fn expect(&mut self, kvs: usize, kv_bytes: usize) {
        let kv_bytes = kv_bytes.saturating_add(kv_bytes / 8);
        self.buffer
            .reserve(kvs.saturating_mul(kv_bytes).min(EXPECTED_BYTES_MAX));
    }

    /// The encoded message after `prefix_bytes` (at most [`PREFIX_BYTES_MAX`])
    /// of room for the caller's frame prefix, written around the key-values in
    /// place.
    pub fn into_prefixed(self, prefix_bytes: usize) -> BytesMut {
        assert!(prefix_bytes <= PREFIX_BYTES_MAX, "a prefix of {prefix_bytes} bytes");
        let head = pb::RangeResponse {
            header: self.header,
            ..Default::default()
        };
        let tail = pb::RangeResponse {
            more: self.more,
            count: self.count,
            ..Default::default()
        };
        let head_len = head.encoded_len();
        assert!(head_len <= HEADER_FIELD_BYTES_MAX, "a header of {head_len} bytes");
        let mut buffer = self.buffer;
        assert!(buffer.len() >= HEAD_ROOM);
        head.encode(&mut &mut buffer[HEAD_ROOM - head_len..HEAD_ROOM])
            .expect("the slice is the header's length");
        tail.encode(&mut buffer).expect("a BytesMut grows as needed");
        buffer.advance(HEAD_ROOM - head_len - prefix_bytes);
        buffer
    }
}

impl fmt::Debug for EncodedRangeResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncodedRangeResponse")
            .field("header", &self.header)
            .field("kvs_bytes", &(self.buffer.len() - HEAD_ROOM))
            .field("more", &self.more)
            .field("count", &self.count)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use ringkv_proto::mvccpb::KeyValue;

    use super::*;

    fn key_value() -> impl Strategy<Value = KeyValue> {
        ringkv_proto::arbitrary::key_value(1..20, 0..200)
    }

    fn header() -> impl Strategy<Value = Option<pb::ResponseHeader>> {
        prop::option::of((any::<u64>(), any::<u64>(), any::<i64>(), any::<u64>()).prop_map(
            |(cluster_id, member_id, revision, raft_term)| pb::ResponseHeader {
                cluster_id,
                member_id,
                revision,
                raft_term,
            },
        ))
    }

    proptest! {
        /// After the prefix's room, prost's encoding of the decoded response,
        /// for any prefix that fits, header (the largest included), key-values,
        /// `more` and `count`.
        #[test]
        fn the_message_is_prosts_encoding_of_the_same_response(
            prefix_bytes in 0..=PREFIX_BYTES_MAX,
            header in header(),
            kvs in prop::collection::vec(key_value(), 0..8),
            more in any::<bool>(),
            count in any::<i64>(),
            expected in (0..1000usize, 0..2000usize),
        ) {
            let mut encoded = EncodedRangeResponse::default();
            for (i, kv) in kvs.iter().enumerate() {
                if i == 1 {
                    encoded.expect(expected.0, expected.1);
                }
                encoded.push_kv(&kv.encode_to_vec());
            }
            encoded.header = header.clone();
            encoded.more = more;
            encoded.count = count;
            let decoded = pb::RangeResponse { header, kvs, more, count };
            let prefixed = encoded.into_prefixed(prefix_bytes);
            prop_assert_eq!(&prefixed[prefix_bytes..], &decoded.encode_to_vec()[..]);
        }
    }

    #[test]
    fn a_page_of_expected_key_values_fills_without_growing_and_the_estimate_is_bounded() {
        let pod = |number: i64| {
            KeyValue {
                key: format!("/registry/pods/default/pod-{number}").into_bytes(),
                value: vec![7; 1024],
                create_revision: number,
                mod_revision: number * 1000,
                version: number,
                ..Default::default()
            }
            .encode_to_vec()
        };
        let mut page = EncodedRangeResponse::default();
        page.push_kv(&pod(1));
        let field_bytes = page.buffer.len() - HEAD_ROOM;
        page.expect(499, field_bytes);
        let capacity = page.buffer.capacity();
        // The later ones are longer: their keys by up to 4 bytes, their
        // revisions and version by up to 5.
        for number in 9_501..10_000 {
            page.push_kv(&pod(number));
        }
        assert_eq!(page.buffer.capacity(), capacity, "no growth, so no copy");
        let mut huge = EncodedRangeResponse::default();
        huge.expect(usize::MAX, usize::MAX);
        assert!(huge.buffer.capacity() <= HEAD_ROOM + EXPECTED_BYTES_MAX);
    }

    #[test]
    fn the_largest_header_fits_the_head_room() {
        let header = pb::ResponseHeader {
            cluster_id: u64::MAX,
            member_id: u64::MAX,
            revision: -1,
            raft_term: u64::MAX,
        };
        let head = pb::RangeResponse {
            header: Some(header),
            ..Default::default()
        };
        assert_eq!(head.encoded_len(), HEADER_FIELD_BYTES_MAX, "the sum in its comment");
        assert!(PREFIX_BYTES_MAX + head.encoded_len() <= HEAD_ROOM);
    }
}
