//! etcd's WAL (`member/wal/*.wal`), read only to learn whether a stopped
//! member's db holds everything the WAL committed: etcd writes its db behind
//! the WAL (a batch commit every 100 ms, and at a clean stop), so a db taken
//! from a data directory may lack writes its WAL holds. Facts from etcd's
//! `wal/encoder.go`, `decoder.go`, `wal.go` and `walpb/record.proto` (3.4).
//!
//! A file is a sequence of frames: a `u64` little-endian length word (the
//! low 56 bits the record's length; with the top bit set, bits 56..59 the
//! padding after it), then a `walpb.Record` (1 type, 2 crc, 3 data). Types: 1
//! metadata, 2 entry (a `raftpb.Entry`), 3 state (a `raftpb.HardState`), 4 crc
//! (the running checksum so far, at the start of each file), 5 snapshot. Each
//! record's crc is the CRC-32C of every record's data since the last crc
//! record, chained from that record's value. A zero length word ends a file
//! (preallocated space). Anything that does not read cleanly is an error:
//! the caller then refuses the directory rather than guess.

use std::collections::BTreeMap;
use std::path::Path;

use prost::Message;
use ringkv_engine::mvcc::Crc32c;

/// A record's length past this is damage: etcd's segments are 64 MiB and a
/// record never spans two.
pub const WAL_RECORD_BYTES_MAX: u64 = 64 << 20;

const ENTRY_TYPE: i64 = 2;
const STATE_TYPE: i64 = 3;
const CRC_TYPE: i64 = 4;
/// `raftpb.EntryNormal`: a client request (or the leader's empty entry).
const ENTRY_NORMAL: i32 = 0;
/// `InternalRaftRequest`'s header: every v3 request carries one; a v2
/// request (`pb.Request`, fields 1 to 17: a member publishing its
/// attributes, the cluster version) has none.
const REQUEST_HEADER_FIELD: u32 = 100;
/// `InternalRaftRequest` fields that change nothing a db holds for the key
/// space: the id, a v2 request, a range, the header, and etcd 3.5's cluster
/// version, member attributes and downgrade (membership is not imported).
const HARMLESS_REQUEST_FIELDS: [u32; 7] = [1, 2, 3, REQUEST_HEADER_FIELD, 1300, 1301, 1302];

#[derive(Clone, PartialEq, Message)]
struct Record {
    #[prost(int64, tag = "1")]
    r#type: i64,
    #[prost(uint32, tag = "2")]
    crc: u32,
    #[prost(bytes = "vec", tag = "3")]
    data: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
struct Entry {
    #[prost(int32, tag = "1")]
    r#type: i32,
    #[prost(uint64, tag = "2")]
    term: u64,
    #[prost(uint64, tag = "3")]
    index: u64,
    #[prost(bytes = "vec", tag = "4")]
    data: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
struct HardState {
    #[prost(uint64, tag = "1")]
    term: u64,
    #[prost(uint64, tag = "2")]
    vote: u64,
    #[prost(uint64, tag = "3")]
    commit: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum EtcdWalError {
    #[error("reading etcd's WAL: {0}")]
    Io(#[from] std::io::Error),
    #[error("etcd's WAL file {file} does not read cleanly at byte {offset}: {reason}")]
    Damaged { file: String, offset: u64, reason: String },
    #[error("no etcd WAL files in {0}")]
    Empty(String),
}

/// What the WAL committed past a db's consistent index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Beyond {
    /// The last committed index the WAL records.
    pub commit: u64,
    /// Committed client requests (normal entries with data) past the index:
    /// writes the db may lack.
    pub requests: u64,
}

/// Reads every WAL file in `dir`, in name order, and counts the committed
/// client requests past `consistent_index`.
pub fn beyond(dir: &Path, consistent_index: u64) -> Result<Beyond, EtcdWalError> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".wal"))
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(EtcdWalError::Empty(dir.display().to_string()));
    }
    // Index -> whether the entry is a client request; a later entry at an
    // index replaces it and everything after it (a new leader's log).
    let mut entries: BTreeMap<u64, bool> = BTreeMap::new();
    let mut commit = 0;
    let mut crc = Crc32c::default();
    for name in &names {
        let bytes = std::fs::read(dir.join(name))?;
        read_file(name, &bytes, &mut crc, |record| {
            match record.r#type {
                ENTRY_TYPE => {
                    let entry = Entry::decode(record.data.as_slice()).map_err(|error| error.to_string())?;
                    entries.split_off(&entry.index);
                    entries.insert(entry.index, entry.r#type == ENTRY_NORMAL && writes_v3(&entry.data));
                }
                STATE_TYPE => {
                    let state = HardState::decode(record.data.as_slice()).map_err(|error| error.to_string())?;
                    commit = commit.max(state.commit);
                }
                _ => {}
            }
            Ok(())
        })?;
    }
    let requests = entries
        .range(consistent_index.saturating_add(1)..)
        .take_while(|(&index, _)| index <= commit)
        .filter(|(_, &request)| request)
        .count() as u64;
    Ok(Beyond { commit, requests })
}

/// Whether a normal entry's data is a v3 request that may change what the
/// db holds: an `InternalRaftRequest` with a header and any field beyond the
/// harmless ones. Data that does not parse as one is a v2 request to etcd
/// too (`applyEntryNormal`), as is one without a header.
fn writes_v3(data: &[u8]) -> bool {
    use prost::encoding::{decode_key, skip_field, DecodeContext};
    let mut buf = data;
    let mut fields = Vec::new();
    while !buf.is_empty() {
        let Ok((tag, wire_type)) = decode_key(&mut buf) else {
            return false;
        };
        if skip_field(wire_type, tag, &mut buf, DecodeContext::default()).is_err() {
            return false;
        }
        fields.push(tag);
    }
    fields.contains(&REQUEST_HEADER_FIELD) && fields.iter().any(|tag| !HARMLESS_REQUEST_FIELDS.contains(tag))
}

/// Reads one file's records into `visit`, checking the chained checksum.
fn read_file(
    name: &str,
    bytes: &[u8],
    crc: &mut Crc32c,
    mut visit: impl FnMut(&Record) -> Result<(), String>,
) -> Result<(), EtcdWalError> {
    let mut offset = 0usize;
    let damaged = |offset: usize, reason: String| EtcdWalError::Damaged {
        file: name.to_string(),
        offset: offset as u64,
        reason,
    };
    while offset + 8 <= bytes.len() {
        let word = u64::from_le_bytes(bytes[offset..offset + 8].try_into().expect("8 bytes"));
        if word == 0 {
            break;
        }
        let length = word & !(0xff << 56);
        let padding = if word >> 63 == 1 { (word >> 56) & 0x7 } else { 0 };
        if length > WAL_RECORD_BYTES_MAX {
            return Err(damaged(offset, format!("a record of {length} bytes")));
        }
        let start = offset + 8;
        let end = start + length as usize;
        if end + padding as usize > bytes.len() {
            return Err(damaged(offset, "a record runs past the file (a torn write?)".into()));
        }
        let record = Record::decode(&bytes[start..end]).map_err(|error| damaged(offset, error.to_string()))?;
        if record.r#type == CRC_TYPE {
            let running = crc.finish();
            if running != 0 && running != record.crc {
                return Err(damaged(offset, "the chained checksum does not match".into()));
            }
            *crc = Crc32c::resume(record.crc);
        } else {
            crc.update(&record.data);
            if crc.finish() != record.crc {
                return Err(damaged(offset, "checksum mismatch".into()));
            }
        }
        visit(&record).map_err(|reason| damaged(offset, reason))?;
        offset = end + padding as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use ringkv_proto::etcdserverpb::PutRequest;

    use super::*;

    /// An `InternalRaftRequest` with a header (field 100) and `field` set to
    /// a message's bytes.
    fn request(field: u32, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        prost::encoding::bytes::encode(REQUEST_HEADER_FIELD, &vec![8, 1], &mut out);
        prost::encoding::bytes::encode(field, &body.to_vec(), &mut out);
        out
    }

    #[test]
    fn v3_writes_count_and_v2_requests_do_not() {
        let put = PutRequest {
            key: b"k".to_vec(),
            ..Default::default()
        }
        .encode_to_vec();
        assert!(writes_v3(&request(4, &put)), "a put");
        assert!(writes_v3(&request(1000, &[])), "auth enable");
        assert!(!writes_v3(&request(2, &[])), "a v2 request wrapped");
        assert!(!writes_v3(&request(1301, &[])), "3.5's member attributes");
        // etcd 3.4's publish: a bare v2 pb.Request (ID 1, Method 2, Path 3, Val 4).
        let mut v2 = Vec::new();
        prost::encoding::uint64::encode(1, &7, &mut v2);
        prost::encoding::string::encode(2, &"PUT".to_string(), &mut v2);
        prost::encoding::string::encode(3, &"/0/members/1/attributes".to_string(), &mut v2);
        prost::encoding::string::encode(4, &"{\"name\":\"a\"}".to_string(), &mut v2);
        assert!(!writes_v3(&v2), "no header: a v2 request");
        assert!(!writes_v3(&[0xff, 0xff]), "not protobuf: v2 to etcd as well");
    }
}
