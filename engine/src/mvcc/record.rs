//! Revision records: the value stored under each revision key in the tree
//! (layout in docs/mvcc-format.md): a flags byte, then etcd's `mvccpb.KeyValue`
//! in protobuf.

use std::borrow::Cow;

use prost::encoding::{decode_key, decode_varint, WireType};
use prost::Message;
use ringkv_proto::mvccpb::KeyValue;

use super::MvccError;
use crate::btree::EndsWanted;

/// Flag bit in a revision record: the revision deletes its key.
const FLAG_TOMBSTONE: u8 = 1;

/// Why a revision record cannot be read.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum RecordError {
    #[error("empty revision record")]
    Empty,
    #[error("unknown record flags {flags:#x}")]
    Flags { flags: u8 },
    #[error("revision record does not decode: {0}")]
    Decode(#[source] prost::DecodeError),
    #[error("revision record without a key")]
    NoKey,
}

impl From<RecordError> for MvccError {
    fn from(error: RecordError) -> MvccError {
        MvccError::corrupt(error)
    }
}

pub fn encode_record(tombstone: bool, kv: &KeyValue) -> Vec<u8> {
    let mut record = Vec::with_capacity(1 + kv.encoded_len());
    record.push(if tombstone { FLAG_TOMBSTONE } else { 0 });
    kv.encode(&mut record).expect("a Vec grows as needed");
    record
}

/// What of a record its leaf should keep when the record is too large for it:
/// everything but the value's bytes (the flags, the fields before the value
/// and its length in front; the lease after it in back), so opening the store
/// reads each revision's key, versions and lease from the leaves alone
/// (`decode_record_ends`).
pub fn record_ends(record: &[u8], kv: &KeyValue) -> EndsWanted {
    let back = if kv.lease != 0 {
        prost::encoding::int64::encoded_len(6, &kv.lease)
    } else {
        0
    };
    EndsWanted {
        front: record.len() - kv.value.len() - back,
        back,
    }
}

/// `decode_record` of a `len`-byte record of which only the first bytes
/// (`front`) and the last (`back`) were read, with the key-value's value left
/// empty. None when the ends do not hold every field but the value's bytes,
/// as ringkv writes them (`record_ends`): then the whole record must be read,
/// and `decode_record` says what it holds.
pub fn decode_record_ends(front: &[u8], back: &[u8], len: usize) -> Option<(bool, KeyValue)> {
    let (&flags, mut rest) = front.split_first()?;
    if flags & !FLAG_TOMBSTONE != 0 || front.len() + back.len() > len {
        return None;
    }
    let mut kv = KeyValue::default();
    loop {
        let mut peek = rest;
        if decode_key(&mut peek).ok()? == (5, WireType::LengthDelimited) {
            let value_len = usize::try_from(decode_varint(&mut peek).ok()?).ok()?;
            let value_start = front.len() - peek.len();
            let value_end = value_start.checked_add(value_len)?;
            // The front ends inside the value, and the back holds everything after it.
            let after = len.checked_sub(value_end)?;
            if value_end < front.len() || after > back.len() {
                return None;
            }
            let mut tail = &back[back.len() - after..];
            while !tail.is_empty() {
                match next_field(&mut tail)? {
                    // A second value (ringkv writes one): the whole record decides.
                    Field::Value(_) => return None,
                    field => set_field(&mut kv, field),
                }
            }
            break;
        }
        set_field(&mut kv, next_field(&mut rest)?);
    }
    if kv.key.is_empty() {
        return None;
    }
    Some((flags & FLAG_TOMBSTONE != 0, kv))
}

/// (tombstone, key-value) of a record.
pub fn decode_record(record: &[u8]) -> Result<(bool, KeyValue), RecordError> {
    let (&flags, body) = record.split_first().ok_or(RecordError::Empty)?;
    if flags & !FLAG_TOMBSTONE != 0 {
        return Err(RecordError::Flags { flags });
    }
    let kv = decode_key_value(body).map_err(RecordError::Decode)?;
    if kv.key.is_empty() {
        return Err(RecordError::NoKey);
    }
    Ok((flags & FLAG_TOMBSTONE != 0, kv))
}

/// `KeyValue::decode`, with one copy of each bytes field instead of two.
///
/// prost 0.11 (the version raft 0.7's `prost-codec` pins for the workspace)
/// decodes a bytes field into a `Bytes` and then copies that into the `Vec`:
/// two allocations and two copies of every key and value a Range returns, a
/// share of the store core's time serving kube-apiserver's lists that shows
/// in its profile (docs/benchmarks.md). This reads the fields
/// ringkv writes, as prost would (a repeated field: the last one wins), and
/// hands anything else (an unknown field, an unexpected wire type, a
/// malformed record) to prost, so what decodes, and every error, stays prost's.
fn decode_key_value(body: &[u8]) -> Result<KeyValue, prost::DecodeError> {
    decode_fields_ringkv_writes(body).map_or_else(|| KeyValue::decode(body), Ok)
}

/// None: the body holds something else, or is malformed.
fn decode_fields_ringkv_writes(body: &[u8]) -> Option<KeyValue> {
    let mut kv = KeyValue::default();
    scan_fields_ringkv_writes(body, |field| set_field(&mut kv, field))?;
    Some(kv)
}

/// Stores one field in `kv`, as prost does (a repeated field: the last one wins).
fn set_field(kv: &mut KeyValue, field: Field<'_>) {
    match field {
        Field::Key(bytes) => {
            kv.key.clear();
            kv.key.extend_from_slice(bytes);
        }
        Field::Value(bytes) => {
            kv.value.clear();
            kv.value.extend_from_slice(bytes);
        }
        Field::CreateRevision(value) => kv.create_revision = value,
        Field::ModRevision(value) => kv.mod_revision = value,
        Field::Version(value) => kv.version = value,
        Field::Lease(value) => kv.lease = value,
    }
}

/// One `mvccpb.KeyValue` field as it appears in a record body.
#[derive(Clone, Copy)]
enum Field<'a> {
    Key(&'a [u8]),
    CreateRevision(i64),
    ModRevision(i64),
    Version(i64),
    Value(&'a [u8]),
    Lease(i64),
}

/// Hands each field of `body` to `each`, in order, borrowed from the body.
/// None: the body holds something ringkv does not write (an unknown field, an
/// unexpected wire type) or is malformed; prost then decides what it means.
fn scan_fields_ringkv_writes<'a>(body: &'a [u8], mut each: impl FnMut(Field<'a>)) -> Option<()> {
    let mut rest = body;
    while !rest.is_empty() {
        each(next_field(&mut rest)?);
    }
    Some(())
}

/// The field at the start of `rest`, which moves past it. None: something
/// ringkv does not write, or malformed.
fn next_field<'a>(rest: &mut &'a [u8]) -> Option<Field<'a>> {
    let (tag, wire_type) = decode_key(rest).ok()?;
    let field = match (tag, wire_type) {
        (1 | 5, WireType::LengthDelimited) => {
            let len = usize::try_from(decode_varint(rest).ok()?).ok()?;
            if len > rest.len() {
                return None;
            }
            let (bytes, after) = rest.split_at(len);
            *rest = after;
            if tag == 1 {
                Field::Key(bytes)
            } else {
                Field::Value(bytes)
            }
        }
        (2 | 3 | 4 | 6, WireType::Varint) => {
            // int64: the varint's bits, as prost reads them.
            let value = decode_varint(rest).ok()? as i64;
            match tag {
                2 => Field::CreateRevision(value),
                3 => Field::ModRevision(value),
                4 => Field::Version(value),
                _ => Field::Lease(value),
            }
        }
        _ => return None,
    };
    Some(field)
}

/// A record as a Range serves it without decoding: its key-value's encoding.
#[derive(Debug, PartialEq)]
pub struct ServedRecord<'a> {
    pub tombstone: bool,
    pub mod_revision: i64,
    /// The `mvccpb.KeyValue` encoding: the record's own bytes when it holds
    /// only the fields ringkv writes, otherwise prost's encoding of what
    /// `decode_record` reads from it. Either way it decodes to the same
    /// key-value as `decode_record` gives.
    pub body: Cow<'a, [u8]>,
}

/// `decode_record`'s checks and outcome, without copying the key-value out:
/// what a Range with nothing to sort, filter or strip sends as it is stored.
pub fn serve_record(record: &[u8]) -> Result<ServedRecord<'_>, RecordError> {
    let (&flags, body) = record.split_first().ok_or(RecordError::Empty)?;
    let mut key_len = 0;
    let mut mod_revision = 0;
    let scanned = scan_fields_ringkv_writes(body, |field| match field {
        Field::Key(key) => key_len = key.len(),
        Field::ModRevision(value) => mod_revision = value,
        _ => {}
    });
    if scanned.is_some() && flags & !FLAG_TOMBSTONE == 0 && key_len > 0 {
        return Ok(ServedRecord {
            tombstone: flags & FLAG_TOMBSTONE != 0,
            mod_revision,
            body: Cow::Borrowed(body),
        });
    }
    // Anything else: prost's reading, or `decode_record`'s error.
    let (tombstone, kv) = decode_record(record)?;
    Ok(ServedRecord {
        tombstone,
        mod_revision: kv.mod_revision,
        body: Cow::Owned(kv.encode_to_vec()),
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn key_value() -> impl Strategy<Value = KeyValue> {
        ringkv_proto::arbitrary::key_value(0..40, 0..300)
    }

    proptest! {
        #[test]
        fn records_decode_to_what_was_encoded(kv in key_value(), tombstone in any::<bool>()) {
            prop_assume!(!kv.key.is_empty());
            let record = encode_record(tombstone, &kv);
            prop_assert!(decode_fields_ringkv_writes(&record[1..]).is_some(), "the fast path takes it");
            prop_assert_eq!(decode_record(&record).unwrap(), (tombstone, kv));
        }

        /// Any bytes at all (truncated, repeated or unknown fields, other wire
        /// types): the same key-value or the same error as prost.
        #[test]
        fn any_body_decodes_as_prost_decodes_it(
            kv in key_value(),
            cut in any::<prop::sample::Index>(),
            noise in prop::collection::vec(any::<u8>(), 0..24),
        ) {
            let mut body = kv.encode_to_vec();
            body.truncate(cut.index(body.len() + 1));
            body.extend_from_slice(&noise);
            prop_assert_eq!(decode_key_value(&body), KeyValue::decode(&body[..]));
        }
    }

    proptest! {
        /// Ends cut as `record_ends` asks, or any other way: the record's
        /// key-value without its value, or None (the whole record is read).
        #[test]
        fn a_record_decodes_from_its_ends_as_from_the_whole(
            kv in ringkv_proto::arbitrary::key_value(1..40, 0..3000),
            tombstone in any::<bool>(),
            extra_front in 0usize..64,
            extra_back in 0usize..64,
            wanted in any::<bool>(),
            cut in any::<(prop::sample::Index, prop::sample::Index)>(),
        ) {
            prop_assume!(!kv.key.is_empty());
            let record = encode_record(tombstone, &kv);
            let (front, back) = if wanted {
                let ends = record_ends(&record, &kv);
                let front = (ends.front + extra_front).min(record.len());
                (front, (ends.back + extra_back).min(record.len() - front))
            } else {
                let front = cut.0.index(record.len() + 1);
                (front, cut.1.index(record.len() - front + 1))
            };
            let decoded = decode_record_ends(&record[..front], &record[record.len() - back..], record.len());
            let mut expected = decode_record(&record).unwrap();
            expected.1.value.clear();
            // The front may take some of the value's bytes, not what follows it.
            if wanted && !kv.value.is_empty() && extra_front <= kv.value.len() {
                prop_assert_eq!(decoded, Some(expected));
            } else if let Some(decoded) = decoded {
                prop_assert_eq!(decoded, expected);
            }
        }
    }

    proptest! {
        /// A served record is `decode_record`'s key-value, encoded: the same
        /// checks, the same errors, the same key-value for the client.
        #[test]
        fn a_served_record_decodes_to_the_decoded_record(
            kv in key_value(),
            flags in prop_oneof![Just(0u8), Just(FLAG_TOMBSTONE), any::<u8>()],
            cut in any::<prop::sample::Index>(),
            noise in prop::collection::vec(any::<u8>(), 0..24),
        ) {
            let mut record = vec![flags];
            record.extend(kv.encode_to_vec());
            record.truncate(1 + cut.index(record.len()));
            record.extend_from_slice(&noise);
            match (decode_record(&record), serve_record(&record)) {
                (Ok((tombstone, decoded)), Ok(served)) => {
                    prop_assert_eq!(served.tombstone, tombstone);
                    prop_assert_eq!(served.mod_revision, decoded.mod_revision);
                    prop_assert_eq!(KeyValue::decode(&served.body[..]).unwrap(), decoded);
                }
                (Err(decoded), Err(served)) => prop_assert_eq!(served, decoded),
                (decoded, served) => prop_assert!(false, "decoded {:?}, served {:?}", decoded, served),
            }
        }

        /// What ringkv writes is served as stored, with no copy.
        #[test]
        fn a_record_ringkv_wrote_is_served_as_it_is_stored(kv in key_value(), tombstone in any::<bool>()) {
            prop_assume!(!kv.key.is_empty());
            let record = encode_record(tombstone, &kv);
            let served = serve_record(&record).unwrap();
            prop_assert!(matches!(served.body, Cow::Borrowed(_)));
            prop_assert_eq!(&served.body[..], &record[1..]);
        }
    }

    #[test]
    fn a_repeated_field_keeps_its_last_value_and_unknown_fields_are_skipped() {
        let mut body = KeyValue {
            key: b"a".to_vec(),
            version: 3,
            ..Default::default()
        }
        .encode_to_vec();
        body.extend(
            KeyValue {
                key: b"b".to_vec(),
                ..Default::default()
            }
            .encode_to_vec(),
        );
        body.extend([0x38, 0x07]); // field 7, varint 7: not a KeyValue field
        let kv = decode_key_value(&body).unwrap();
        assert_eq!((kv.key.as_slice(), kv.version), (&b"b"[..], 3));
    }
}
