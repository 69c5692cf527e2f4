//! WAL records and the frames (batches) that carry them, byte by byte as
//! documented in docs/wal-format.md, and the check that reads a frame back and
//! tells, sector by sector, a whole frame from one a crash tore and one damaged.
//!
//! A frame is whole 4 KiB blocks of eight 512-byte sectors. Every sector ends
//! with an 8-byte trailer:
//! ```text
//! 504 u32 stamp: bit 31 set on a frame's first sector; bits 0..=30 the frame tag
//! 508 u32 crc32 of sector bytes 0..508
//! ```
//! The frame's bytes, a 32-byte header and then the records, are laid over the
//! sectors' first 504 bytes in order, and the rest is zeros:
//! ```text
//! 0   u32 magic "RKF2"
//! 4   u32 reserved, zero
//! 8   u64 batch sequence (global, +1 per frame)
//! 16  u64 segment sequence (the file this frame was written to)
//! 24  u32 payload bytes
//! 28  u32 record count
//! 32  records
//! ```
//! The frame tag is crc32 of the crc32s of each sector's bytes 0..504, bit 31
//! cleared: it tells this frame's sectors from those of every other write
//! (another frame, an older life of a recycled segment, an earlier attempt at
//! the same batch). A sector's crc is then that of its data resumed over the
//! stamp, so a frame costs one crc pass.
//! A record: `u8 type, u32 body length, body`. All integers little endian.

pub const BLOCK_BYTES: usize = 4096;
/// The unit a device is assumed to write whole or not at all, even when a power
/// cut interrupts a larger write: the smallest sector size in use.
pub const SECTOR_BYTES: usize = 512;
const SECTOR_TRAILER_BYTES: usize = 8;
/// Frame bytes a sector carries in front of its trailer.
pub const SECTOR_DATA_BYTES: usize = SECTOR_BYTES - SECTOR_TRAILER_BYTES;
/// Frame bytes a block carries: its sectors' data.
pub const BLOCK_DATA_BYTES: usize = BLOCK_BYTES / SECTOR_BYTES * SECTOR_DATA_BYTES;
pub const FRAME_HEADER_BYTES: usize = 32;
pub const RECORD_HEADER_BYTES: usize = 5;
const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"RKF2");
/// The stamp bit of a frame's first sector, the one that holds its header.
const FIRST_SECTOR: u32 = 1 << 31;
/// The magic of the frame format before sector stamps, whose 40-byte header had
/// a crc32 of its bytes 8..40 at offset 4. Known only to refuse such a WAL by
/// name instead of reporting it as damage.
const OLD_FRAME_MAGIC: u32 = u32::from_le_bytes(*b"RKVF");
const OLD_FRAME_HEADER_BYTES: usize = 40;

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

    fn encode(&self, out: &mut FrameWriter) {
        let start = out.len;
        let kind = match self {
            Record::Entry(_) => TYPE_ENTRY,
            Record::HardState(_) => TYPE_HARD_STATE,
            Record::Snapshot(_) => TYPE_SNAPSHOT,
            Record::Metadata(_) => TYPE_METADATA,
        };
        let body_len = u32::try_from(self.body_len()).expect("records are far below 4 GiB");
        out.put(&[kind]);
        out.put(&body_len.to_le_bytes());
        match self {
            Record::Entry(e) => {
                out.put(&e.index.to_le_bytes());
                out.put(&e.term.to_le_bytes());
                out.put(&[e.kind]);
                put_bytes(out, &e.data);
                put_bytes(out, &e.context);
            }
            Record::HardState(h) => {
                out.put(&h.term.to_le_bytes());
                out.put(&h.vote.to_le_bytes());
                out.put(&h.commit.to_le_bytes());
            }
            Record::Snapshot(s) => {
                out.put(&s.index.to_le_bytes());
                out.put(&s.term.to_le_bytes());
                put_bytes(out, &s.conf_state);
            }
            Record::Metadata(m) => out.put(m),
        }
        assert_eq!(out.len - start, self.encoded_len());
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

fn put_bytes(out: &mut FrameWriter, bytes: &[u8]) {
    out.put(&u32::try_from(bytes.len()).expect("fits").to_le_bytes());
    out.put(bytes);
}

/// Bytes a frame carrying `payload_bytes` of records takes on disk: whole blocks.
pub fn frame_bytes(payload_bytes: usize) -> usize {
    (FRAME_HEADER_BYTES + payload_bytes).div_ceil(BLOCK_DATA_BYTES) * BLOCK_BYTES
}

/// The most record bytes a frame of `frame_bytes` (whole blocks) can carry.
pub fn payload_bytes_max(frame_bytes: usize) -> usize {
    (frame_bytes / BLOCK_BYTES * BLOCK_DATA_BYTES).saturating_sub(FRAME_HEADER_BYTES)
}

/// How many of `records` fit, after `start`, in a frame of at most `room` bytes
/// on disk. One pass over the records: a running payload size.
pub fn records_fitting(start: &[Record], records: &[Record], room: usize) -> usize {
    let mut payload: usize = start.iter().map(Record::encoded_len).sum();
    let mut taken = 0;
    for record in records {
        payload += record.encoded_len();
        if frame_bytes(payload) > room {
            break;
        }
        taken += 1;
    }
    taken
}

/// Encodes one frame: header and records laid over stamped sectors, whole blocks.
pub fn encode_frame(batch_seq: u64, segment_seq: u64, records: &[&Record]) -> Vec<u8> {
    let payload: usize = records.iter().map(|r| r.encoded_len()).sum();
    let mut out = FrameWriter::new(frame_bytes(payload));
    out.put(&FRAME_MAGIC.to_le_bytes());
    out.put(&0u32.to_le_bytes());
    out.put(&batch_seq.to_le_bytes());
    out.put(&segment_seq.to_le_bytes());
    out.put(
        &u32::try_from(payload)
            .expect("frames are far below 4 GiB")
            .to_le_bytes(),
    );
    out.put(&u32::try_from(records.len()).expect("fits").to_le_bytes());
    assert_eq!(out.len, FRAME_HEADER_BYTES);
    for record in records {
        record.encode(&mut out);
    }
    assert_eq!(out.len, FRAME_HEADER_BYTES + payload);
    out.finish()
}

/// What every sector of a frame is stamped with: crc32 of its sectors' data
/// crcs in order, so two writes differ in it unless their bytes are the same.
/// (From the sectors' crcs rather than the bytes: one crc pass over a frame.)
fn frame_tag(data_crcs: impl IntoIterator<Item = u32>) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    for crc in data_crcs {
        hasher.update(&crc.to_le_bytes());
    }
    hasher.finalize() & !FIRST_SECTOR
}

/// crc32 of a sector's first 504 bytes: its share of the frame.
fn data_crc(sector: &[u8]) -> u32 {
    crc32fast::hash(&sector[..SECTOR_DATA_BYTES])
}

/// A sector's crc: crc32 of its bytes 0..508 (data, then stamp), resumed from
/// the crc of its data.
fn sector_crc(data_crc: u32, stamp: u32) -> u32 {
    let mut hasher = crc32fast::Hasher::new_with_initial(data_crc);
    hasher.update(&stamp.to_le_bytes());
    hasher.finalize()
}

/// Lays a frame's bytes over the data of its sectors as they are encoded, into
/// one buffer written once.
struct FrameWriter {
    frame: Vec<u8>,
    frame_bytes: usize,
    /// Frame bytes put so far, trailers not counted.
    len: usize,
}

impl FrameWriter {
    fn new(frame_bytes: usize) -> FrameWriter {
        FrameWriter {
            frame: Vec::with_capacity(frame_bytes),
            frame_bytes,
            len: 0,
        }
    }

    fn put(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let taken = (SECTOR_DATA_BYTES - self.len % SECTOR_DATA_BYTES).min(bytes.len());
            self.frame.extend_from_slice(&bytes[..taken]);
            self.len += taken;
            bytes = &bytes[taken..];
            if self.len.is_multiple_of(SECTOR_DATA_BYTES) {
                self.frame.extend_from_slice(&[0; SECTOR_TRAILER_BYTES]); // stamped in `finish`
            }
        }
    }

    /// Stamps every sector (the frame's first with `FIRST_SECTOR`) and its crc.
    fn finish(mut self) -> Vec<u8> {
        assert!(
            self.frame.len() <= self.frame_bytes,
            "the frame's bytes fit its sectors"
        );
        self.frame.resize(self.frame_bytes, 0);
        let data_crcs: Vec<u32> = self.frame.chunks_exact(SECTOR_BYTES).map(data_crc).collect();
        let tag = frame_tag(data_crcs.iter().copied());
        for (index, (sector, data_crc)) in self.frame.chunks_exact_mut(SECTOR_BYTES).zip(data_crcs).enumerate() {
            let stamp = if index == 0 { tag | FIRST_SECTOR } else { tag };
            sector[SECTOR_DATA_BYTES..SECTOR_DATA_BYTES + 4].copy_from_slice(&stamp.to_le_bytes());
            sector[SECTOR_BYTES - 4..].copy_from_slice(&sector_crc(data_crc, stamp).to_le_bytes());
        }
        self.frame
    }
}

/// The frame's bytes (header and records), `len` of them, from its sectors.
fn gather(frame: &[u8], len: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(len);
    for sector in frame.chunks_exact(SECTOR_BYTES) {
        let take = (len - bytes.len()).min(SECTOR_DATA_BYTES);
        bytes.extend_from_slice(&sector[..take]);
    }
    assert_eq!(bytes.len(), len, "the frame's sectors hold its bytes");
    bytes
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// What one sector holds, read on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sector {
    /// Written whole, by the frame whose stamp it carries; with its data crc.
    Stamped { stamp: u32, data_crc: u32 },
    /// All zeros: pre-written and not written by any frame since. (A stamped
    /// sector is never all zeros: crc32 of 508 zero bytes is not zero.)
    Zeros,
    /// Neither: it fails its checksum.
    Damaged,
}

fn read_sector(sector: &[u8]) -> Sector {
    let stamp = u32_at(sector, SECTOR_DATA_BYTES);
    let data_crc = data_crc(sector);
    if sector_crc(data_crc, stamp) == u32_at(sector, SECTOR_BYTES - 4) {
        Sector::Stamped { stamp, data_crc }
    } else if sector.iter().all(|&b| b == 0) {
        Sector::Zeros
    } else {
        Sector::Damaged
    }
}

/// The header of a frame whose first sector is intact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub batch_seq: u64,
    pub segment_seq: u64,
    pub payload_bytes: usize,
    pub record_count: usize,
    /// The frame tag the frame's sectors are stamped with.
    tag: u32,
}

impl FrameHeader {
    /// Bytes the whole frame takes on disk.
    pub fn frame_len(&self) -> usize {
        frame_bytes(self.payload_bytes)
    }
}

/// What a frame position holds, read from its first sector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameStart {
    /// The intact first sector of a frame: its header.
    Header(FrameHeader),
    /// What a position holds before a frame is written there: zeros, or a sector
    /// from inside another frame (`found` says which).
    Unwritten(&'static str),
    /// A sector that fails its checksum and is not zeros.
    Damaged(&'static str),
}

/// Reads the first sector of `block`. Only a sector its writer stamped as a
/// frame's first holds a header: bytes inside a record (a client's value) that
/// look like one sit in a sector stamped otherwise.
pub fn read_frame_start(block: &[u8]) -> FrameStart {
    let sector = &block[..SECTOR_BYTES];
    match read_sector(sector) {
        Sector::Zeros => FrameStart::Unwritten("zeros"),
        Sector::Damaged => FrameStart::Damaged("a sector that fails its checksum and is not zeros"),
        Sector::Stamped { stamp, .. } if stamp & FIRST_SECTOR == 0 => {
            FrameStart::Unwritten("a sector from inside another frame")
        }
        Sector::Stamped { stamp, .. } => {
            if u32_at(sector, 0) != FRAME_MAGIC || u32_at(sector, 4) != 0 {
                return FrameStart::Damaged("a frame's first sector without a frame header");
            }
            FrameStart::Header(FrameHeader {
                batch_seq: u64_at(sector, 8),
                segment_seq: u64_at(sector, 16),
                payload_bytes: u32_at(sector, 24) as usize,
                record_count: u32_at(sector, 28) as usize,
                tag: stamp & !FIRST_SECTOR,
            })
        }
    }
}

/// The header at the start of `block`, if its first sector is a frame's, intact.
pub fn parse_frame_header(block: &[u8]) -> Option<FrameHeader> {
    match read_frame_start(block) {
        FrameStart::Header(header) => Some(header),
        FrameStart::Unwritten(_) | FrameStart::Damaged(_) => None,
    }
}

/// True if `block` starts with a frame header of the format before sector stamps.
pub fn is_old_format_frame(block: &[u8]) -> bool {
    block.len() >= OLD_FRAME_HEADER_BYTES
        && u32_at(block, 0) == OLD_FRAME_MAGIC
        && u32_at(block, 4) == crc32fast::hash(&block[8..OLD_FRAME_HEADER_BYTES])
}

/// A frame read back, sector by sector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameCheck {
    /// Every sector is this frame's and the records decode.
    Whole(Vec<Record>),
    /// No sector is damaged, and some hold what was there before the frame was
    /// written (zeros, or another frame's sector): a write a crash interrupted.
    /// `at` is the first such sector's offset in the frame.
    Torn { at: usize, found: &'static str },
    /// A sector at `at` is neither this frame's nor what was there before; or
    /// (at 0) every sector is this frame's and its bytes do not check out.
    Damaged { at: usize, found: &'static str },
}

/// Checks the frame whose first sector gave `header`; `frame` is its
/// `header.frame_len()` bytes. Any damaged sector makes it damaged, even next
/// to unwritten ones: a torn write leaves sectors whole, old or new.
pub fn check_frame(header: &FrameHeader, frame: &[u8]) -> FrameCheck {
    assert_eq!(frame.len(), header.frame_len());
    let mut data_crcs = Vec::with_capacity(frame.len() / SECTOR_BYTES);
    data_crcs.push(data_crc(frame)); // the first sector's, read by `read_frame_start`
    let mut torn = None;
    for (index, sector) in frame.chunks_exact(SECTOR_BYTES).enumerate().skip(1) {
        let at = index * SECTOR_BYTES;
        let found = match read_sector(sector) {
            Sector::Stamped { stamp, data_crc } if stamp == header.tag => {
                data_crcs.push(data_crc);
                continue;
            }
            Sector::Stamped { stamp, .. } if stamp & !FIRST_SECTOR == header.tag => {
                return FrameCheck::Damaged {
                    at,
                    found: "a second first sector of this frame",
                };
            }
            Sector::Stamped { .. } => "a sector of another frame",
            Sector::Zeros => "zeros",
            Sector::Damaged => {
                return FrameCheck::Damaged {
                    at,
                    found: "a sector that fails its checksum and is not zeros",
                };
            }
        };
        torn.get_or_insert(FrameCheck::Torn { at, found });
    }
    if let Some(torn) = torn {
        return torn;
    }
    if frame_tag(data_crcs) != header.tag {
        return FrameCheck::Damaged {
            at: 0,
            found: "sectors all stamped for this frame whose data does not match its tag",
        };
    }
    let bytes = gather(frame, FRAME_HEADER_BYTES + header.payload_bytes);
    match parse_records(header, &bytes[FRAME_HEADER_BYTES..]) {
        Ok(records) => FrameCheck::Whole(records),
        Err(found) => FrameCheck::Damaged { at: 0, found },
    }
}

/// Decodes the records of a frame whose bytes checked out.
fn parse_records(header: &FrameHeader, payload: &[u8]) -> Result<Vec<Record>, &'static str> {
    // The count comes from disk: bound the allocation by what the payload can hold.
    let mut records = Vec::with_capacity(header.record_count.min(payload.len() / RECORD_HEADER_BYTES));
    let mut at = 0;
    while at < payload.len() {
        if payload.len() - at < RECORD_HEADER_BYTES {
            return Err("a record header runs past the payload");
        }
        let kind = payload[at];
        let body_len = u32_at(payload, at + 1) as usize;
        let body_start = at + RECORD_HEADER_BYTES;
        let body_end = body_start
            .checked_add(body_len)
            .filter(|&e| e <= payload.len())
            .ok_or("a record body runs past the payload")?;
        records.push(decode_body(kind, &payload[body_start..body_end])?);
        at = body_end;
    }
    if records.len() != header.record_count {
        return Err("the record count does not match the records");
    }
    Ok(records)
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
        _ => return Err("unknown record type"),
    };
    if reader.at != body.len() {
        return Err("record body has trailing bytes");
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
        let end = end.ok_or("record body too short")?;
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

    fn encode(batch_seq: u64, segment_seq: u64, records: &[Record]) -> Vec<u8> {
        encode_frame(batch_seq, segment_seq, &records.iter().collect::<Vec<_>>())
    }

    fn header(frame: &[u8]) -> FrameHeader {
        parse_frame_header(frame).expect("a frame header")
    }

    #[test]
    fn frames_round_trip_and_are_block_aligned() {
        let frame = encode(42, 3, &sample());
        let payload: usize = sample().iter().map(Record::encoded_len).sum();
        assert_eq!(frame.len() % BLOCK_BYTES, 0);
        assert_eq!(frame.len(), frame_bytes(payload));
        let header = header(&frame);
        assert_eq!((header.batch_seq, header.segment_seq, header.record_count), (42, 3, 4));
        assert_eq!(header.payload_bytes, payload);
        assert_eq!(check_frame(&header, &frame), FrameCheck::Whole(sample()));
    }

    #[test]
    fn a_frame_fills_each_block_with_4032_bytes_of_header_and_records() {
        assert_eq!(frame_bytes(0), BLOCK_BYTES);
        assert_eq!(frame_bytes(BLOCK_DATA_BYTES - FRAME_HEADER_BYTES), BLOCK_BYTES);
        assert_eq!(frame_bytes(BLOCK_DATA_BYTES - FRAME_HEADER_BYTES + 1), 2 * BLOCK_BYTES);
        for blocks in 1..5 {
            let frame = blocks * BLOCK_BYTES;
            assert_eq!(frame_bytes(payload_bytes_max(frame)), frame);
            assert_eq!(frame_bytes(payload_bytes_max(frame) + 1), frame + BLOCK_BYTES);
        }
    }

    #[test]
    fn a_zero_sector_is_never_a_stamped_one() {
        // A stamped sector is never all zeros, so "zeros" always means unwritten.
        assert_ne!(crc32fast::hash(&[0; SECTOR_BYTES - 4]), 0);
        assert_eq!(read_sector(&[0; SECTOR_BYTES]), Sector::Zeros);
        assert_eq!(read_frame_start(&[0; BLOCK_BYTES]), FrameStart::Unwritten("zeros"));
    }

    #[test]
    fn any_flipped_byte_of_a_frame_is_damage_never_a_tear() {
        let frame = encode(1, 0, &sample());
        let header = header(&frame);
        for at in 0..frame.len() {
            for mask in [0x01, 0x80, 0xff] {
                let mut damaged = frame.clone();
                damaged[at] ^= mask;
                if at < SECTOR_BYTES {
                    assert!(
                        matches!(read_frame_start(&damaged), FrameStart::Damaged(_)),
                        "flip {mask:#x} at {at}"
                    );
                } else {
                    let sector = at / SECTOR_BYTES * SECTOR_BYTES;
                    assert!(
                        matches!(check_frame(&header, &damaged), FrameCheck::Damaged { at, .. } if at == sector),
                        "flip {mask:#x} at {at}"
                    );
                }
            }
        }
    }

    /// Every subset of `new`'s sectors over `old`: what a power cut during the
    /// write of `new` can leave. Calls `check` with the mixed bytes and the subset.
    fn every_tear(new: &[u8], old: &[u8], mut check: impl FnMut(&[u8], u32)) {
        let sectors = new.len() / SECTOR_BYTES;
        assert!(sectors <= 16, "2^{sectors} subsets");
        for kept in 0..(1u32 << sectors) {
            let mut mixed = old.to_vec();
            for sector in (0..sectors).filter(|s| kept & (1 << s) != 0) {
                let range = sector * SECTOR_BYTES..(sector + 1) * SECTOR_BYTES;
                mixed[range.clone()].copy_from_slice(&new[range]);
            }
            check(&mixed, kept);
        }
    }

    #[test]
    fn every_tear_of_a_frame_over_zeros_or_older_frames_is_torn_not_damaged() {
        let records = sample();
        let new = encode(8, 5, &records);
        let all = (1u32 << (new.len() / SECTOR_BYTES)) - 1;
        let older_same_place = encode(3, 2, &[Record::Metadata(vec![3; new.len()])]);
        let mut older_elsewhere = encode(3, 2, &[Record::Metadata(vec![4; 2 * new.len()])]);
        older_elsewhere.drain(..BLOCK_BYTES); // the old frame started a block earlier
        let mut attempt = records.clone();
        attempt.push(Record::Metadata(b"another attempt at batch 8".to_vec()));
        let earlier_attempt = encode(8, 5, &attempt);
        for old in [
            &vec![0; new.len()],
            &older_same_place,
            &older_elsewhere,
            &earlier_attempt,
        ] {
            every_tear(&new, &old[..new.len()], |mixed, kept| match read_frame_start(mixed) {
                FrameStart::Header(h) if h == header(&new) => {
                    let check = check_frame(&h, mixed);
                    if kept == all {
                        assert_eq!(check, FrameCheck::Whole(records.clone()));
                    } else {
                        assert!(matches!(check, FrameCheck::Torn { .. }), "kept {kept:#x}: {check:?}");
                    }
                }
                // The header sector did not land: what is there is the old one.
                FrameStart::Header(h) => assert!(kept & 1 == 0 && h != header(&new), "kept {kept:#x}"),
                FrameStart::Unwritten(_) => assert!(kept & 1 == 0, "kept {kept:#x}"),
                FrameStart::Damaged(found) => panic!("kept {kept:#x}: {found}"),
            });
        }
    }

    #[test]
    fn a_frame_header_inside_a_record_never_starts_a_frame() {
        // A client's value that holds the bytes of a frame header, placed so that
        // they land at the start of the frame's second block: block-aligned, where
        // recovery looks for frames.
        let fake = encode(1_000, 0, &[]);
        let entry_data_at = FRAME_HEADER_BYTES + RECORD_HEADER_BYTES + 8 + 8 + 1 + 4;
        let mut data = vec![0; BLOCK_DATA_BYTES - entry_data_at];
        data.extend_from_slice(&fake[..SECTOR_DATA_BYTES]);
        let frame = encode(
            1,
            0,
            &[Record::Entry(EntryRecord {
                index: 1,
                term: 1,
                kind: 0,
                data,
                context: vec![],
            })],
        );
        let block = &frame[BLOCK_BYTES..];
        assert_eq!(block[..SECTOR_DATA_BYTES], fake[..SECTOR_DATA_BYTES]);
        assert_eq!(
            read_frame_start(block),
            FrameStart::Unwritten("a sector from inside another frame")
        );
    }

    #[test]
    fn a_record_count_from_disk_does_not_size_an_allocation() {
        let frame = encode(1, 0, &sample());
        let header = header(&frame);
        let mut bytes = gather(&frame, FRAME_HEADER_BYTES + header.payload_bytes);
        bytes[28..32].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut restamped = FrameWriter::new(frame.len());
        restamped.put(&bytes);
        let restamped = restamped.finish();
        let header = parse_frame_header(&restamped).unwrap();
        assert_eq!(header.record_count, u32::MAX as usize);
        assert_eq!(
            check_frame(&header, &restamped),
            FrameCheck::Damaged {
                at: 0,
                found: "the record count does not match the records"
            }
        );
    }

    #[test]
    fn records_fitting_takes_the_longest_prefix_whose_frame_fits() {
        let start = vec![Record::Metadata(vec![0; 100])];
        let records = sample();
        for room in (BLOCK_BYTES..=4 * BLOCK_BYTES).step_by(BLOCK_BYTES) {
            let taken = records_fitting(&start, &records, room);
            let frame = |n: usize| frame_bytes(start.iter().chain(&records[..n]).map(Record::encoded_len).sum());
            assert!(frame(taken) <= room, "room {room}");
            assert!(taken == records.len() || frame(taken + 1) > room, "room {room}");
        }
    }

    #[test]
    fn a_frame_of_the_format_before_sector_stamps_is_recognised() {
        let mut old = vec![0; BLOCK_BYTES];
        old[0..4].copy_from_slice(b"RKVF");
        old[24..28].copy_from_slice(&100u32.to_le_bytes());
        let crc = crc32fast::hash(&old[8..40]);
        old[4..8].copy_from_slice(&crc.to_le_bytes());
        assert!(is_old_format_frame(&old));
        assert!(!is_old_format_frame(&encode(0, 0, &sample())));
        old[30] ^= 1;
        assert!(!is_old_format_frame(&old), "a damaged one is damage");
    }
}
