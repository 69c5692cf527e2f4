//! WAL records and the frames (batches) that carry them, byte by byte as
//! documented in docs/wal-format.md.
//!
//! A frame starts on a block boundary and is padded to one:
//! ```text
//! 0   u32 magic "RKVF"
//! 4   u32 crc32 of bytes 8..40 of the frame header
//! 8   u64 batch sequence (global, +1 per frame)
//! 16  u64 segment sequence (the file this frame was written to)
//! 24  u32 payload bytes
//! 28  u32 record count
//! 32  u64 reserved, zero
//! 40  records
//! ```
//! A record: `u8 type, u32 body length, u32 crc, body`, where the crc is crc32 of
//! `batch sequence (u64) ++ segment sequence (u64) ++ type ++ length ++ body`: a
//! record verifies only inside the frame it was written in, so stale records left
//! in a recycled segment never verify under a newer frame's header.
//! All integers little endian.

pub const BLOCK_BYTES: usize = 4096;
/// The unit a device is assumed to write whole or not at all, even when a power
/// cut interrupts a larger write: the smallest sector size in use.
pub const SECTOR_BYTES: usize = 512;
pub const FRAME_HEADER_BYTES: usize = 40;
pub const RECORD_HEADER_BYTES: usize = 9;
const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"RKVF");

const TYPE_ENTRY: u8 = 1;
const TYPE_HARD_STATE: u8 = 2;
const TYPE_SNAPSHOT: u8 = 3;
const TYPE_METADATA: u8 = 4;

/// A raft log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryRecord {
    pub index: u64,
    pub term: u64,
    pub kind: u8,
    pub data: Vec<u8>,
    pub context: Vec<u8>,
}

/// raft's hard state: term, vote, commit index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HardStateRecord {
    pub term: u64,
    pub vote: u64,
    pub commit: u64,
}

/// Everything up to `index` is durable outside the WAL; `conf_state` is the raft
/// configuration there (opaque bytes to the WAL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRecord {
    pub index: u64,
    pub term: u64,
    pub conf_state: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Entry(EntryRecord),
    HardState(HardStateRecord),
    Snapshot(SnapshotRecord),
    /// The server's identity blob given at creation; repeated in every segment.
    Metadata(Vec<u8>),
}

impl Record {
    /// Bytes this record takes in a frame.
    pub fn encoded_len(&self) -> usize {
        RECORD_HEADER_BYTES + self.body_len()
    }

    fn body_len(&self) -> usize {
        match self {
            Record::Entry(e) => 8 + 8 + 1 + 4 + e.data.len() + 4 + e.context.len(),
            Record::HardState(_) => HARD_STATE_RECORD_BYTES - RECORD_HEADER_BYTES,
            Record::Snapshot(s) => snapshot_record_bytes(s) - RECORD_HEADER_BYTES,
            Record::Metadata(m) => metadata_record_bytes(m) - RECORD_HEADER_BYTES,
        }
    }

    fn encode(&self, frame: FrameId, out: &mut Vec<u8>) {
        let start = out.len();
        let kind = match self {
            Record::Entry(_) => TYPE_ENTRY,
            Record::HardState(_) => TYPE_HARD_STATE,
            Record::Snapshot(_) => TYPE_SNAPSHOT,
            Record::Metadata(_) => TYPE_METADATA,
        };
        let body_len = u32::try_from(self.body_len()).expect("records are far below 4 GiB");
        out.push(kind);
        out.extend_from_slice(&body_len.to_le_bytes());
        out.extend_from_slice(&[0; 4]); // crc, filled below
        match self {
            Record::Entry(e) => {
                out.extend_from_slice(&e.index.to_le_bytes());
                out.extend_from_slice(&e.term.to_le_bytes());
                out.push(e.kind);
                put_bytes(out, &e.data);
                put_bytes(out, &e.context);
            }
            Record::HardState(h) => {
                out.extend_from_slice(&h.term.to_le_bytes());
                out.extend_from_slice(&h.vote.to_le_bytes());
                out.extend_from_slice(&h.commit.to_le_bytes());
            }
            Record::Snapshot(s) => {
                out.extend_from_slice(&s.index.to_le_bytes());
                out.extend_from_slice(&s.term.to_le_bytes());
                put_bytes(out, &s.conf_state);
            }
            Record::Metadata(m) => out.extend_from_slice(m),
        }
        let crc = record_crc(frame, kind, body_len, &out[start + RECORD_HEADER_BYTES..]);
        out[start + 5..start + 9].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(out.len() - start, self.encoded_len());
    }
}

/// Bytes a `HardState` record takes in a frame.
pub const HARD_STATE_RECORD_BYTES: usize = RECORD_HEADER_BYTES + 24;

/// Bytes a `Snapshot` record of `snapshot` takes in a frame.
pub fn snapshot_record_bytes(snapshot: &SnapshotRecord) -> usize {
    RECORD_HEADER_BYTES + 8 + 8 + 4 + snapshot.conf_state.len()
}

/// Bytes a `Metadata` record of `metadata` takes in a frame.
pub fn metadata_record_bytes(metadata: &[u8]) -> usize {
    RECORD_HEADER_BYTES + metadata.len()
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&u32::try_from(bytes.len()).expect("fits").to_le_bytes());
    out.extend_from_slice(bytes);
}

/// The frame a record belongs to; part of the record's checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FrameId {
    batch_seq: u64,
    segment_seq: u64,
}

fn record_crc(frame: FrameId, kind: u8, body_len: u32, body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&frame.batch_seq.to_le_bytes());
    hasher.update(&frame.segment_seq.to_le_bytes());
    hasher.update(&[kind]);
    hasher.update(&body_len.to_le_bytes());
    hasher.update(body);
    hasher.finalize()
}

/// Bytes a frame holding `records` takes on disk, padded to whole blocks.
pub fn frame_len(records: &[&Record]) -> usize {
    let payload: usize = records.iter().map(|r| r.encoded_len()).sum();
    align_up(FRAME_HEADER_BYTES + payload)
}

/// How many of `records` fit, after `start`, in a frame of at most `room` bytes
/// (padded). One pass over the records: a running payload size.
pub fn records_fitting(start: &[Record], records: &[Record], room: usize) -> usize {
    let mut payload: usize = start.iter().map(Record::encoded_len).sum();
    let mut taken = 0;
    for record in records {
        payload += record.encoded_len();
        if align_up(FRAME_HEADER_BYTES + payload) > room {
            break;
        }
        taken += 1;
    }
    taken
}

pub fn align_up(bytes: usize) -> usize {
    bytes.div_ceil(BLOCK_BYTES) * BLOCK_BYTES
}

/// Encodes one frame, padded with zeros to whole blocks.
pub fn encode_frame(batch_seq: u64, segment_seq: u64, records: &[&Record]) -> Vec<u8> {
    let total = frame_len(records);
    let mut out = Vec::with_capacity(total);
    out.resize(FRAME_HEADER_BYTES, 0);
    let frame = FrameId { batch_seq, segment_seq };
    for record in records {
        record.encode(frame, &mut out);
    }
    let payload = u32::try_from(out.len() - FRAME_HEADER_BYTES).expect("frames are far below 4 GiB");
    out[0..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
    out[8..16].copy_from_slice(&batch_seq.to_le_bytes());
    out[16..24].copy_from_slice(&segment_seq.to_le_bytes());
    out[24..28].copy_from_slice(&payload.to_le_bytes());
    out[28..32].copy_from_slice(&u32::try_from(records.len()).expect("fits").to_le_bytes());
    let crc = crc32fast::hash(&out[8..FRAME_HEADER_BYTES]);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    out.resize(total, 0);
    out
}

/// A frame header that verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub batch_seq: u64,
    pub segment_seq: u64,
    pub payload_bytes: usize,
    pub record_count: usize,
}

impl FrameHeader {
    /// Bytes the whole frame takes, padded.
    pub fn frame_len(&self) -> usize {
        align_up(FRAME_HEADER_BYTES + self.payload_bytes)
    }
}

/// Reads a frame header from the start of `block`; None unless magic and crc verify.
pub fn parse_frame_header(block: &[u8]) -> Option<FrameHeader> {
    if block.len() < FRAME_HEADER_BYTES {
        return None;
    }
    let u32_at = |at: usize| u32::from_le_bytes(block[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_le_bytes(block[at..at + 8].try_into().expect("8 bytes"));
    if u32_at(0) != FRAME_MAGIC || u32_at(4) != crc32fast::hash(&block[8..FRAME_HEADER_BYTES]) {
        return None;
    }
    if u64_at(32) != 0 {
        return None;
    }
    Some(FrameHeader {
        batch_seq: u64_at(8),
        segment_seq: u64_at(16),
        payload_bytes: u32_at(24) as usize,
        record_count: u32_at(28) as usize,
    })
}

/// Decodes the records of a frame whose header verified; `frame` starts at the
/// header. Any bad record makes the whole frame invalid (a torn write).
pub fn parse_frame_records(header: &FrameHeader, frame: &[u8]) -> Result<Vec<Record>, &'static str> {
    let end = FRAME_HEADER_BYTES + header.payload_bytes;
    if frame.len() < end {
        return Err(bad("frame payload runs past the data"));
    }
    // The count comes from disk: bound the allocation by what the payload can hold.
    let mut records = Vec::with_capacity(header.record_count.min(header.payload_bytes / RECORD_HEADER_BYTES));
    let frame_id = FrameId {
        batch_seq: header.batch_seq,
        segment_seq: header.segment_seq,
    };
    let mut at = FRAME_HEADER_BYTES;
    while at < end {
        if end - at < RECORD_HEADER_BYTES {
            return Err(bad("record header runs past the payload"));
        }
        let kind = frame[at];
        let body_len = u32::from_le_bytes(frame[at + 1..at + 5].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(frame[at + 5..at + 9].try_into().expect("4 bytes"));
        let body_start = at + RECORD_HEADER_BYTES;
        let body_end = body_start
            .checked_add(body_len as usize)
            .filter(|&e| e <= end)
            .ok_or_else(|| bad("record body runs past the payload"))?;
        let body = &frame[body_start..body_end];
        if record_crc(frame_id, kind, body_len, body) != crc {
            return Err(bad("record checksum mismatch"));
        }
        records.push(decode_body(kind, body)?);
        at = body_end;
    }
    if records.len() != header.record_count {
        return Err(bad("record count mismatch"));
    }
    Ok(records)
}

fn bad(reason: &'static str) -> &'static str {
    reason
}

fn decode_body(kind: u8, body: &[u8]) -> Result<Record, &'static str> {
    let mut reader = Reader { bytes: body, at: 0 };
    let record = match kind {
        TYPE_ENTRY => Record::Entry(EntryRecord {
            index: reader.u64()?,
            term: reader.u64()?,
            kind: reader.u8()?,
            data: reader.bytes()?,
            context: reader.bytes()?,
        }),
        TYPE_HARD_STATE => Record::HardState(HardStateRecord {
            term: reader.u64()?,
            vote: reader.u64()?,
            commit: reader.u64()?,
        }),
        TYPE_SNAPSHOT => Record::Snapshot(SnapshotRecord {
            index: reader.u64()?,
            term: reader.u64()?,
            conf_state: reader.bytes()?,
        }),
        TYPE_METADATA => Record::Metadata(reader.rest()),
        _ => return Err(bad("unknown record type")),
    };
    if reader.at != body.len() {
        return Err(bad("record body has trailing bytes"));
    }
    Ok(record)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], &'static str> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| bad("record body too short"))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }
    fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Result<u64, &'static str> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn bytes(&mut self) -> Result<Vec<u8>, &'static str> {
        let len = u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")) as usize;
        Ok(self.take(len)?.to_vec())
    }
    fn rest(&mut self) -> Vec<u8> {
        let rest = self.bytes[self.at..].to_vec();
        self.at = self.bytes.len();
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_refs(records: &[Record]) -> Vec<&Record> {
        records.iter().collect()
    }

    fn sample() -> Vec<Record> {
        vec![
            Record::Metadata(b"identity".to_vec()),
            Record::Entry(EntryRecord {
                index: 7,
                term: 2,
                kind: 0,
                data: vec![1; 5000],
                context: b"c".to_vec(),
            }),
            Record::HardState(HardStateRecord {
                term: 2,
                vote: 9,
                commit: 7,
            }),
            Record::Snapshot(SnapshotRecord {
                index: 5,
                term: 1,
                conf_state: vec![8, 1],
            }),
        ]
    }

    #[test]
    fn frames_round_trip_and_are_block_aligned() {
        let frame = encode_frame(42, 3, &sample_refs(&sample()));
        assert_eq!(frame.len() % BLOCK_BYTES, 0);
        assert_eq!(frame.len(), frame_len(&sample_refs(&sample())));
        let header = parse_frame_header(&frame).unwrap();
        assert_eq!((header.batch_seq, header.segment_seq, header.record_count), (42, 3, 4));
        assert_eq!(parse_frame_records(&header, &frame).unwrap(), sample());
    }

    #[test]
    fn any_flipped_payload_byte_invalidates_the_frame() {
        let frame = encode_frame(1, 0, &sample_refs(&sample()));
        let header = parse_frame_header(&frame).unwrap();
        for at in (FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + header.payload_bytes).step_by(97) {
            let mut damaged = frame.clone();
            damaged[at] ^= 0x40;
            assert!(
                parse_frame_records(&header, &damaged).is_err(),
                "flip at {at} went unnoticed"
            );
        }
    }

    #[test]
    fn a_flipped_header_byte_invalidates_the_header() {
        let frame = encode_frame(1, 0, &sample_refs(&sample()));
        for at in 0..FRAME_HEADER_BYTES {
            let mut damaged = frame.clone();
            damaged[at] ^= 1;
            assert!(parse_frame_header(&damaged).is_none(), "flip at {at} went unnoticed");
        }
    }

    #[test]
    fn a_record_count_from_disk_does_not_size_an_allocation() {
        let mut frame = encode_frame(1, 0, &sample_refs(&sample()));
        frame[28..32].copy_from_slice(&u32::MAX.to_le_bytes());
        let crc = crc32fast::hash(&frame[8..FRAME_HEADER_BYTES]);
        frame[4..8].copy_from_slice(&crc.to_le_bytes());
        let header = parse_frame_header(&frame).unwrap();
        assert_eq!(parse_frame_records(&header, &frame), Err("record count mismatch"));
    }

    #[test]
    fn records_fitting_takes_the_longest_prefix_whose_padded_frame_fits() {
        let start = vec![Record::Metadata(vec![0; 100])];
        let records = sample();
        for room in (BLOCK_BYTES..=4 * BLOCK_BYTES).step_by(BLOCK_BYTES) {
            let taken = records_fitting(&start, &records, room);
            let frame = |n: usize| frame_len(&start.iter().chain(&records[..n]).collect::<Vec<_>>());
            assert!(frame(taken) <= room, "room {room}");
            assert!(taken == records.len() || frame(taken + 1) > room, "room {room}");
        }
    }

    #[test]
    fn records_verify_only_under_the_frame_they_were_written_in() {
        let records = sample();
        let old = encode_frame(7, 2, &sample_refs(&records));
        // A newer frame header of the same shape over the old records, as a torn
        // write into a recycled segment leaves it: another batch, another segment.
        for (batch_seq, segment_seq) in [(8, 2), (7, 5), (1_000, 9)] {
            let mut torn = encode_frame(batch_seq, segment_seq, &sample_refs(&records));
            torn[FRAME_HEADER_BYTES..].copy_from_slice(&old[FRAME_HEADER_BYTES..]);
            let header = parse_frame_header(&torn).unwrap();
            assert_eq!(parse_frame_records(&header, &torn), Err("record checksum mismatch"));
        }
        let header = parse_frame_header(&old).unwrap();
        assert_eq!(parse_frame_records(&header, &old).unwrap(), records);
    }

    #[test]
    fn zeros_are_not_a_frame() {
        assert!(parse_frame_header(&[0; BLOCK_BYTES]).is_none());
    }
}
