//! Reading the WAL back at open: replay every whole frame in order, find where
//! the log ends, and tell a torn tail (the log ends there) from damage or
//! corruption (refuse to open). One segment is in memory at a time.
//!
//! Segment files must be full-size and numbered without gaps. The log ends at
//! the first position that does not hold the next whole frame, unless the next
//! segment starts with it (the writer rolled over, leaving the tail of this one
//! unused). What is there decides whether it may end there: only what a crash
//! during the write of the next frame can leave (zeros or older frames' sectors
//! where the header would be, or the header with some sectors unwritten) is a
//! torn tail; a sector that fails its checksum and is not zeros may be damage to
//! an acknowledged frame, so the WAL refuses to open rather than drop it. So it
//! does if any later block, in the same segment or a later one, starts a frame
//! of its own segment with a batch sequence at or past the expected one (the log
//! was damaged in the middle), or if a frame of this segment with a batch
//! sequence past the expected one sits where the expected one should be.

use super::io::{WalDir, WalFile};
use super::record::{
    check_frame, is_old_format_frame, parse_frame_header, read_frame_start, EntryRecord, FrameCheck, FrameStart,
    HardStateRecord, Record, SnapshotRecord, BLOCK_BYTES,
};
use super::{Recovered, WalError};
use crate::CorruptReason;

/// A segment file on disk: `{sequence:016x}.wal`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentName {
    pub seq: u64,
    pub name: String,
}

impl SegmentName {
    pub fn new(seq: u64) -> SegmentName {
        SegmentName {
            seq,
            name: format!("{seq:016x}.wal"),
        }
    }

    pub fn parse(name: &str) -> Option<SegmentName> {
        let hex = name.strip_suffix(".wal")?;
        if hex.len() != 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
            return None;
        }
        let seq = u64::from_str_radix(hex, 16).ok()?;
        Some(SegmentName::new(seq))
    }
}

/// A segment that held live frames, and the newest entry index in it.
#[derive(Debug, Clone)]
pub struct LiveSegment {
    pub name: SegmentName,
    pub max_entry_index: u64,
}

/// What a scan found.
pub struct Scan {
    pub recovered: Recovered,
    /// Segments with live frames, oldest first. The last is where the log ends,
    /// unless the end is at the start of the following (first spare) segment.
    pub live: Vec<LiveSegment>,
    /// Where the next frame goes: segment and byte offset.
    pub end_segment: SegmentName,
    pub end_offset: u64,
    /// The end segment's file exists (else the end is at offset 0 of a segment
    /// after the last file, which is full).
    pub end_segment_exists: bool,
    pub next_batch_seq: u64,
    /// Segment files after the end that held nothing live (prepared or recycled).
    pub spares: Vec<SegmentName>,
}

/// Records that no writer puts in this order: the log says two things at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error("snapshot record at {index} after one at {previous}")]
    SnapshotGoesBack { index: u64, previous: u64 },
    #[error("entry {index} follows entry {last}")]
    EntryGap { index: u64, last: u64 },
    #[error("entries resume at {first} after a snapshot at {snapshot}")]
    ResumeGap { first: u64, snapshot: u64 },
}

/// Replay state while scanning.
#[derive(Default)]
struct Replay {
    metadata: Vec<u8>,
    snapshot: Option<SnapshotRecord>,
    hard_state: Option<HardStateRecord>,
    entries: Vec<EntryRecord>,
}

impl Replay {
    /// Applies one record; returns the entry index it wrote, if any.
    fn apply(&mut self, record: Record) -> Result<Option<u64>, ReplayError> {
        match record {
            Record::Metadata(metadata) => self.metadata = metadata,
            Record::HardState(hard_state) => self.hard_state = Some(hard_state),
            Record::Snapshot(snapshot) => {
                if let Some(previous) = &self.snapshot {
                    if snapshot.index < previous.index {
                        return Err(ReplayError::SnapshotGoesBack {
                            index: snapshot.index,
                            previous: previous.index,
                        });
                    }
                }
                // A snapshot installed from the leader replaces this member's
                // log: the entries replayed so far, if they do not reach the
                // snapshot's index or disagree with it there, are from a history
                // the snapshot supersedes (raft-rs restores only then). A release
                // point always agrees with the entry at its index.
                let superseded = match self.entries.last() {
                    Some(last) if last.index < snapshot.index => true,
                    Some(_) => self
                        .entries
                        .iter()
                        .rev()
                        .find(|entry| entry.index == snapshot.index)
                        .is_some_and(|entry| entry.term != snapshot.term),
                    None => false,
                };
                if superseded {
                    self.entries.clear();
                } else {
                    // Entries before a release point are never part of the
                    // recovered log (`finish` keeps those after the last one):
                    // let them go now, so replay holds the entries between two
                    // release points, not every entry of the segments read. The
                    // entry at the point stays: the checks of the records after
                    // it look at the last entry.
                    let released = self.entries.partition_point(|entry| entry.index < snapshot.index);
                    self.entries.drain(..released);
                }
                self.snapshot = Some(snapshot);
            }
            Record::Entry(entry) => {
                let index = entry.index;
                if let Some(last) = self.entries.last() {
                    if index <= last.index {
                        // raft replaced a suffix of the log.
                        let keep = self.entries.partition_point(|e| e.index < index);
                        self.entries.truncate(keep);
                    } else if index != last.index + 1 {
                        return Err(ReplayError::EntryGap {
                            index,
                            last: last.index,
                        });
                    }
                }
                self.entries.push(entry);
                return Ok(Some(index));
            }
        }
        Ok(None)
    }

    fn finish(mut self) -> Result<Recovered, ReplayError> {
        if let Some(snapshot) = &self.snapshot {
            self.entries.retain(|e| e.index > snapshot.index);
            if let Some(first) = self.entries.first() {
                if first.index != snapshot.index + 1 {
                    return Err(ReplayError::ResumeGap {
                        first: first.index,
                        snapshot: snapshot.index,
                    });
                }
            }
        }
        Ok(Recovered {
            metadata: self.metadata,
            snapshot: self.snapshot,
            hard_state: self.hard_state,
            entries: self.entries,
        })
    }
}

/// Why the log does not go on at a position.
enum End {
    /// What a crash during the write of the next frame can leave there: the
    /// log may end here (a torn tail), if nothing live follows.
    Unwritten(String),
    /// A damaged sector where the next frame is or would start: perhaps an
    /// acknowledged frame, so the log does not end here.
    Damaged(String),
}

/// Why a WAL of the frame format before sector stamps is refused.
const OLD_FORMAT_REASON: &str = "frame magic \"RKVF\": a WAL of the frame format before sector stamps, which \
    this ringkv does not read (it reads \"RKF2\"; no release wrote the older one and there is no converter): \
    start this member from a new data directory";

/// Scans every segment of `dir`, whose files must all be `segment_bytes` long.
/// `None` if there is no segment at all.
pub async fn scan<D: WalDir>(dir: &D, segment_bytes: u64) -> Result<Option<Scan>, WalError> {
    let segments = list_segments(dir).await?;
    if segments.is_empty() {
        return Ok(None);
    }
    check_segment_files(dir, &segments, segment_bytes).await?;
    let corrupt = |index: usize, offset: u64, reason: CorruptReason| WalError::Corrupt {
        file: dir.display_path(&segments[index].name),
        offset,
        reason,
    };
    let mut replay = Replay::default();
    let mut live: Vec<LiveSegment> = Vec::new();
    let mut expected_batch: Option<u64> = None;
    // One segment in memory at a time: the log may be many segments long, and
    // replay keeps only what it needs of each (see `Replay::apply`).
    for (index, segment) in segments.iter().enumerate() {
        let bytes = read_segment(dir, segment, 0, segment_bytes as usize).await?;
        // Every segment starts with a frame, so the oldest one tells the format.
        if index == 0 && is_old_format_frame(&bytes) {
            return Err(corrupt(0, 0, OLD_FORMAT_REASON.into()));
        }
        let mut offset = 0usize;
        let mut max_entry_index = 0u64;
        let mut frames = 0usize;
        let end = loop {
            if offset + BLOCK_BYTES > bytes.len() {
                break None; // segment full: continue in the next one
            }
            let header = match read_frame_start(&bytes[offset..]) {
                FrameStart::Header(header) => header,
                FrameStart::Unwritten(found) => break Some(End::Unwritten(found.to_string())),
                FrameStart::Damaged(found) => break Some(End::Damaged(found.to_string())),
            };
            if header.segment_seq != segment.seq {
                break Some(End::Unwritten(format!(
                    "a frame of segment {} (stale)",
                    header.segment_seq
                )));
            }
            if let Some(expected) = expected_batch {
                if header.batch_seq > expected {
                    // Written after the expected frame, which is not here: a gap.
                    return Err(corrupt(
                        index,
                        offset as u64,
                        format!(
                            "batch {} where {expected} was expected: frames are missing",
                            header.batch_seq
                        )
                        .into(),
                    ));
                }
                if header.batch_seq < expected {
                    break Some(End::Unwritten(format!(
                        "batch {} where {expected} was expected",
                        header.batch_seq
                    )));
                }
            }
            if offset + header.frame_len() > bytes.len() {
                break Some(End::Damaged(format!(
                    "the header of batch {} gives a frame running past the segment",
                    header.batch_seq
                )));
            }
            let records = match check_frame(&header, &bytes[offset..offset + header.frame_len()]) {
                FrameCheck::Whole(records) => records,
                FrameCheck::Torn { at, found } => {
                    break Some(End::Unwritten(format!(
                        "batch {} is torn: {found} at offset {}",
                        header.batch_seq,
                        offset + at
                    )))
                }
                FrameCheck::Damaged { at, found } => {
                    break Some(End::Damaged(format!(
                        "batch {}: {found} at offset {}",
                        header.batch_seq,
                        offset + at
                    )))
                }
            };
            for record in records {
                let applied = replay.apply(record);
                if let Some(entry_index) = applied.map_err(|error| corrupt(index, offset as u64, error.into()))? {
                    max_entry_index = max_entry_index.max(entry_index);
                }
            }
            expected_batch = Some(header.batch_seq + 1);
            frames += 1;
            offset += header.frame_len();
        };
        if frames > 0 {
            live.push(LiveSegment {
                name: segment.clone(),
                max_entry_index,
            });
        }
        let Some(end) = end else {
            continue;
        };
        // A writer that found no room here rolled to the next segment and left
        // this tail unwritten: the sequence then goes on at the next one's start.
        let next_start = match segments.get(index + 1) {
            Some(next) => Some(read_segment(dir, next, 0, BLOCK_BYTES).await?),
            None => None,
        };
        if let (Some(next), Some(next_start)) = (segments.get(index + 1), &next_start) {
            let rolled = next.seq == segment.seq + 1
                && parse_frame_header(next_start)
                    .is_some_and(|h| h.segment_seq == next.seq && Some(h.batch_seq) == expected_batch);
            if rolled {
                continue;
            }
        }
        // Not rolled because the next segment's first sector is damaged (a roll
        // leaves zeros behind, a crash never leaves a damaged sector): the
        // sequence went on there, and there is where it is broken. Ending the
        // log at this tail would drop that frame, acknowledged or not.
        let end_of_reading = index;
        let (index, offset, end) = match (&end, segments.get(index + 1), &next_start) {
            (End::Unwritten(_), Some(next), Some(next_start)) if next.seq == segment.seq + 1 => {
                match read_frame_start(next_start) {
                    FrameStart::Damaged(found) => (index + 1, 0, End::Damaged(found.to_string())),
                    _ => (index, offset, end),
                }
            }
            _ => (index, offset, end),
        };
        let segment = &segments[index];
        let next_batch = expected_batch.unwrap_or(0);
        let found = match &end {
            End::Unwritten(found) | End::Damaged(found) => found,
        };
        let read = (end_of_reading, bytes.as_slice());
        let later = find_later_frame(dir, &segments, segment_bytes as usize, read, index, offset, next_batch).await?;
        if let Some((at_segment, at_offset)) = later {
            return Err(corrupt(
                index,
                offset as u64,
                format!(
                    "{found}, but a valid frame follows in {} at offset {at_offset}",
                    segments[at_segment].name
                )
                .into(),
            ));
        }
        if let End::Damaged(found) = end {
            return Err(corrupt(
                index,
                offset as u64,
                format!(
                    "the log ends in damage ({found}); a crash leaves only whole sectors, so this is no torn \
                     write, and the frame may have been acknowledged"
                )
                .into(),
            ));
        }
        if live.is_empty() {
            return Err(corrupt(
                index,
                offset as u64,
                format!("no valid frame at all: {found}").into(),
            ));
        }
        // A torn tail: the log ends here.
        let recovered = replay
            .finish()
            .map_err(|error| corrupt(index, offset as u64, error.into()))?;
        return Ok(Some(Scan {
            recovered,
            live,
            end_segment: segment.clone(),
            end_offset: offset as u64,
            end_segment_exists: true,
            next_batch_seq: next_batch,
            spares: segments[index + 1..].to_vec(),
        }));
    }
    // Every segment was full to its last block: the next frame starts a new one.
    let last = segments.last().expect("at least one segment");
    if live.is_empty() {
        return Err(corrupt(segments.len() - 1, 0, "no valid frame at all".into()));
    }
    let recovered = replay
        .finish()
        .map_err(|error| corrupt(segments.len() - 1, 0, error.into()))?;
    Ok(Some(Scan {
        recovered,
        live,
        end_segment: SegmentName::new(last.seq + 1),
        end_offset: 0,
        end_segment_exists: false,
        next_batch_seq: expected_batch.expect("live segments have frames"),
        spares: Vec::new(),
    }))
}

/// Segment files in the directory, by sequence.
async fn list_segments<D: WalDir>(dir: &D) -> Result<Vec<SegmentName>, WalError> {
    let mut segments: Vec<SegmentName> = dir
        .list()
        .await
        .map_err(|source| WalError::io("listing the WAL directory", source))?
        .iter()
        .filter_map(|name| SegmentName::parse(name))
        .collect();
    segments.sort_by_key(|s| s.seq);
    Ok(segments)
}

/// `len` bytes of a segment file from `offset`.
async fn read_segment<D: WalDir>(dir: &D, segment: &SegmentName, offset: u64, len: usize) -> Result<Vec<u8>, WalError> {
    let file = dir
        .open(&segment.name)
        .await
        .map_err(|source| WalError::io(&format!("opening {}", segment.name), source))?;
    file.read_at(offset, len)
        .await
        .map_err(|source| WalError::io(&format!("reading {}", segment.name), source))
}

/// A segment file gets its name only once it is full-size (pre-written, or a
/// recycled one), and segments are only ever added as `newest + 1` and released
/// oldest first: a short or long file, or a gap in the numbers, is damage.
async fn check_segment_files<D: WalDir>(dir: &D, segments: &[SegmentName], segment_bytes: u64) -> Result<(), WalError> {
    for segment in segments {
        let len = dir
            .open(&segment.name)
            .await
            .map_err(|source| WalError::io(&format!("opening {}", segment.name), source))?
            .size()
            .await
            .map_err(|source| WalError::io(&format!("sizing {}", segment.name), source))?;
        if len != segment_bytes {
            return Err(WalError::Corrupt {
                file: dir.display_path(&segment.name),
                offset: 0,
                reason: format!("segment file of {len} bytes, segments are {segment_bytes} bytes").into(),
            });
        }
    }
    for pair in segments.windows(2) {
        if pair[1].seq != pair[0].seq + 1 {
            let missing = SegmentName::new(pair[0].seq + 1);
            return Err(WalError::Corrupt {
                file: dir.display_path(&missing.name),
                offset: 0,
                reason: format!("segment is missing between {} and {}", pair[0].name, pair[1].name).into(),
            });
        }
    }
    Ok(())
}

/// The first frame header of the live sequence after (segment, offset): a
/// frame's intact first sector, of its own file's segment, with a batch
/// sequence at or past `next_batch`. `read` is a segment already in memory
/// (its index and bytes); the others are read one at a time.
async fn find_later_frame<D: WalDir>(
    dir: &D,
    segments: &[SegmentName],
    segment_bytes: usize,
    read: (usize, &[u8]),
    segment: usize,
    offset: usize,
    next_batch: u64,
) -> Result<Option<(usize, usize)>, WalError> {
    for (index, name) in segments.iter().enumerate().skip(segment) {
        let start = if index == segment { offset + BLOCK_BYTES } else { 0 };
        if start + BLOCK_BYTES > segment_bytes {
            continue;
        }
        let bytes = if index == read.0 {
            std::borrow::Cow::Borrowed(&read.1[start..])
        } else {
            std::borrow::Cow::Owned(read_segment(dir, name, start as u64, segment_bytes - start).await?)
        };
        let mut at = 0;
        while at + BLOCK_BYTES <= bytes.len() {
            if let Some(header) = parse_frame_header(&bytes[at..]) {
                if header.segment_seq == name.seq && header.batch_seq >= next_batch {
                    return Ok(Some((index, start + at)));
                }
            }
            at += BLOCK_BYTES;
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_are_sixteen_lowercase_hex_digits() {
        assert_eq!(SegmentName::new(26).name, "000000000000001a.wal");
        assert_eq!(SegmentName::parse("000000000000001a.wal"), Some(SegmentName::new(26)));
        assert_eq!(SegmentName::parse("000000000000001A.wal"), None);
        assert_eq!(SegmentName::parse("1a.wal"), None);
        assert_eq!(SegmentName::parse("000000000000001a.wal.tmp"), None);
    }

    #[test]
    fn replay_follows_raft_truncation() {
        let mut replay = Replay::default();
        let entry = |index, term| {
            Record::Entry(EntryRecord {
                index,
                term,
                kind: 0,
                data: vec![],
                context: vec![],
            })
        };
        for index in 1..=10 {
            replay.apply(entry(index, 1)).unwrap();
        }
        for index in 6..=8 {
            replay.apply(entry(index, 2)).unwrap();
        }
        let recovered = replay.finish().unwrap();
        let got: Vec<(u64, u64)> = recovered.entries.iter().map(|e| (e.index, e.term)).collect();
        let mut want: Vec<(u64, u64)> = (1..=5).map(|i| (i, 1)).collect();
        want.extend((6..=8).map(|i| (i, 2)));
        assert_eq!(got, want);
    }

    #[test]
    fn a_gap_in_entries_is_refused() {
        let mut replay = Replay::default();
        let entry = |index| {
            Record::Entry(EntryRecord {
                index,
                term: 1,
                kind: 0,
                data: vec![],
                context: vec![],
            })
        };
        replay.apply(entry(1)).unwrap();
        assert!(replay.apply(entry(3)).is_err());
    }
}
