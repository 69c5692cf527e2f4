//! The `wal_open` target: recovery (`Wal::open_in` on the simulated
//! directory) over arbitrary segment files, raw or built from frames the
//! writer's encoder makes and then disordered.

use arbitrary::{Arbitrary, Unstructured};

use crate::wal::sim::SimDir;
use crate::wal::{
    encode_frame, EntryRecord, HardStateRecord, Record, SnapshotRecord, Wal, WalDir, WalFile, WalOptions, BLOCK_BYTES,
};

use super::run;

/// Segments of the raw mode and of the seeds: 4 blocks, small enough for a
/// fuzzer's inputs, large enough for frames of several blocks and for rolls.
const RAW_SEGMENT_BYTES: u64 = 4 * BLOCK_BYTES as u64;
/// Segment files an input describes at most.
const FILES_MAX: usize = 4;
/// Bytes of one record's data or context in a built frame at most.
const RECORD_DATA_BYTES_MAX: usize = 6000;

/// Input: one mode byte, then files. Raw mode (bit 0 clear): each file is a
/// tag byte, a u16 LE length and that many bytes (the start of the file, the
/// rest zeros; see [`raw_files`]). Built mode: a [`BuiltWal`] from the rest.
/// The recovered WAL must also take an append and open again.
pub fn wal_open(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (segment_bytes, files) = if mode & 1 == 0 {
        (RAW_SEGMENT_BYTES, raw_files(mode >> 1, rest))
    } else {
        let Ok(built) = BuiltWal::arbitrary_take_rest(Unstructured::new(rest)) else {
            return;
        };
        built.files()
    };
    let options = WalOptions { segment_bytes };
    run(async move {
        let dir = SimDir::new();
        for (name, bytes) in &files {
            put_file(&dir, name, bytes).await;
        }
        let Ok((mut wal, recovered)) = Wal::open_in(dir.clone(), options).await else {
            return;
        };
        let last = recovered
            .entries
            .last()
            .map(|entry| entry.index)
            .or(recovered.snapshot.as_ref().map(|snapshot| snapshot.index))
            .unwrap_or(0);
        let Some(index) = last.checked_add(1) else {
            return;
        };
        let next = Record::Entry(EntryRecord {
            index,
            term: 1,
            kind: 0,
            data: b"after recovery".to_vec(),
            context: Vec::new(),
        });
        if wal.append(&[next]).await.is_ok() {
            drop(wal);
            let _ = Wal::open_in(dir, options).await;
        }
    });
}

/// Files of the raw mode: segments numbered from `first` (bits 0-1 of
/// `flags`), in the order given. A file's tag says what it is: 0 the next
/// segment, 1 the segment after a missing one, 2 the next segment cut to its
/// given length (a wrong size), 3 a half-prepared `.tmp`, else a file
/// recovery must ignore. Segments are zero-padded to `RAW_SEGMENT_BYTES`.
fn raw_files(flags: u8, mut rest: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut seq = u64::from(flags & 3);
    let mut files = Vec::new();
    while files.len() < FILES_MAX && rest.len() >= 3 {
        let tag = rest[0];
        let len = usize::from(u16::from_le_bytes([rest[1], rest[2]]));
        let bytes = &rest[3..];
        let (mut contents, after) = bytes.split_at(len.min(bytes.len()));
        rest = after;
        if contents.len() as u64 > RAW_SEGMENT_BYTES {
            contents = &contents[..RAW_SEGMENT_BYTES as usize];
        }
        let mut padded = contents.to_vec();
        padded.resize(RAW_SEGMENT_BYTES as usize, 0);
        match tag {
            0 => files.push((segment_name(seq), padded)),
            1 => {
                seq += 1;
                files.push((segment_name(seq), padded));
            }
            2 => files.push((segment_name(seq), contents.to_vec())),
            3 => files.push((format!("{}.tmp", segment_name(seq)), padded)),
            _ => files.push(("notes.txt".to_string(), contents.to_vec())),
        }
        seq += 1;
    }
    // A name given twice: the first file keeps it.
    let mut seen = std::collections::HashSet::new();
    files.retain(|(name, _)| seen.insert(name.clone()));
    files
}

fn segment_name(seq: u64) -> String {
    format!("{seq:016x}.wal")
}

/// A file with these durable bytes.
async fn put_file(dir: &SimDir, name: &str, bytes: &[u8]) {
    let file = dir
        .create_prewritten(name, bytes.len() as u64)
        .await
        .expect("a new name in an empty directory");
    file.write_at(0, bytes).await.expect("the simulated write");
    file.sync().await.expect("the simulated sync");
}

/// Segments built from frames the writer's encoder makes, with their batch
/// and segment numbers, their order and their contents chosen by the fuzzer:
/// the recovery rules get valid checksums to decide on.
#[derive(Debug, Arbitrary)]
struct BuiltWal {
    /// Segment size: 4 to 11 blocks.
    blocks_per_segment: u8,
    first_seq: u8,
    segments: Vec<BuiltSegment>,
}

#[derive(Debug, Arbitrary)]
struct BuiltSegment {
    /// A missing segment before this one.
    skip_seq: bool,
    pieces: Vec<Piece>,
}

#[derive(Debug, Arbitrary)]
enum Piece {
    Frame {
        /// Added to the next batch sequence (mostly 0: the expected one).
        batch_step: i8,
        /// Stamped with another segment's sequence (a recycled segment's stale frame).
        stale: bool,
        records: Vec<RecordSpec>,
    },
    Zeros {
        blocks: u8,
    },
    Bytes(Vec<u8>),
}

#[derive(Debug, Arbitrary)]
enum RecordSpec {
    /// The entry after the last one built.
    NextEntry {
        term: u8,
        data_bytes: u16,
    },
    Entry {
        index: u64,
        term: u64,
        kind: u8,
        data: Vec<u8>,
        context: Vec<u8>,
    },
    HardState {
        term: u64,
        vote: u64,
        commit: u64,
    },
    /// A snapshot at the last entry built.
    SnapshotAtLast {
        term: u8,
    },
    Snapshot {
        index: u64,
        term: u64,
        conf_state: Vec<u8>,
    },
    Metadata(Vec<u8>),
}

impl BuiltWal {
    fn files(&self) -> (u64, Vec<(String, Vec<u8>)>) {
        let segment_bytes = (4 + u64::from(self.blocks_per_segment % 8)) * BLOCK_BYTES as u64;
        let mut seq = u64::from(self.first_seq % 4);
        let mut batch = 0u64;
        let mut last_index = 0u64;
        let mut files = Vec::new();
        for segment in self.segments.iter().take(FILES_MAX) {
            seq += u64::from(segment.skip_seq);
            let mut bytes = Vec::new();
            for piece in &segment.pieces {
                if bytes.len() as u64 >= segment_bytes {
                    break;
                }
                match piece {
                    Piece::Frame {
                        batch_step,
                        stale,
                        records,
                    } => {
                        let batch_seq = batch.saturating_add_signed(i64::from(*batch_step));
                        batch = batch_seq.saturating_add(1);
                        let segment_seq = if *stale { seq ^ 1 } else { seq };
                        let records: Vec<Record> = records.iter().map(|spec| spec.record(&mut last_index)).collect();
                        let refs: Vec<&Record> = records.iter().collect();
                        bytes.extend_from_slice(&encode_frame(batch_seq, segment_seq, &refs));
                    }
                    Piece::Zeros { blocks } => bytes.resize(bytes.len() + usize::from(*blocks % 4) * BLOCK_BYTES, 0),
                    Piece::Bytes(raw) => bytes.extend_from_slice(raw),
                }
            }
            bytes.resize(segment_bytes as usize, 0);
            files.push((segment_name(seq), bytes));
            seq += 1;
        }
        (segment_bytes, files)
    }
}

impl RecordSpec {
    fn record(&self, last_index: &mut u64) -> Record {
        let bounded = |bytes: &[u8]| bytes[..bytes.len().min(RECORD_DATA_BYTES_MAX)].to_vec();
        match self {
            RecordSpec::NextEntry { term, data_bytes } => {
                *last_index = last_index.wrapping_add(1);
                Record::Entry(EntryRecord {
                    index: *last_index,
                    term: u64::from(*term),
                    kind: 0,
                    data: vec![7; usize::from(*data_bytes) % RECORD_DATA_BYTES_MAX],
                    context: Vec::new(),
                })
            }
            RecordSpec::Entry {
                index,
                term,
                kind,
                data,
                context,
            } => {
                *last_index = *index;
                Record::Entry(EntryRecord {
                    index: *index,
                    term: *term,
                    kind: *kind,
                    data: bounded(data),
                    context: bounded(context),
                })
            }
            RecordSpec::HardState { term, vote, commit } => Record::HardState(HardStateRecord {
                term: *term,
                vote: *vote,
                commit: *commit,
            }),
            RecordSpec::SnapshotAtLast { term } => Record::Snapshot(SnapshotRecord {
                index: *last_index,
                term: u64::from(*term),
                conf_state: Vec::new(),
            }),
            RecordSpec::Snapshot {
                index,
                term,
                conf_state,
            } => Record::Snapshot(SnapshotRecord {
                index: *index,
                term: *term,
                conf_state: bounded(conf_state),
            }),
            RecordSpec::Metadata(metadata) => Record::Metadata(bounded(metadata)),
        }
    }
}

/// Real WALs as the writer leaves them, in the raw input format: one
/// segment with two frames; two segments after a roll; a released and
/// recycled segment after the live ones; a half-prepared `.tmp`.
pub(super) fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let options = WalOptions {
        segment_bytes: RAW_SEGMENT_BYTES,
    };
    let written = |appends: Vec<Vec<Record>>, release: Option<u64>| {
        run(async move {
            let dir = SimDir::new();
            let snapshot = SnapshotRecord {
                index: 0,
                term: 0,
                conf_state: vec![8, 1],
            };
            let mut wal = Wal::create_in(dir.clone(), options, b"member".to_vec(), snapshot)
                .await
                .expect("a new WAL");
            for records in appends {
                wal.append(&records).await.expect("an append");
            }
            if let Some(index) = release {
                wal.release_to(SnapshotRecord {
                    index,
                    term: 1,
                    conf_state: vec![8, 1],
                })
                .await
                .expect("a release");
            }
            drop(wal);
            let mut names = dir.list().await.expect("the simulated directory");
            names.sort();
            names
                .into_iter()
                .map(|name| {
                    let bytes = dir.durable_bytes(&name);
                    (name, bytes)
                })
                .collect::<Vec<_>>()
        })
    };
    let entries = |first: u64, count: u64, bytes: usize| -> Vec<Record> {
        (first..first + count)
            .map(|index| {
                Record::Entry(EntryRecord {
                    index,
                    term: 1,
                    kind: 0,
                    data: vec![index as u8; bytes],
                    context: Vec::new(),
                })
            })
            .collect()
    };
    let hard_state = Record::HardState(HardStateRecord {
        term: 1,
        vote: 1,
        commit: 2,
    });
    let two_frames = written(vec![[entries(1, 2, 30), vec![hard_state.clone()]].concat()], None);
    let rolled = written((0..4).map(|i| entries(1 + i * 2, 2, 1800)).collect(), None);
    let recycled = written((0..6).map(|i| entries(1 + i * 2, 2, 1800)).collect(), Some(8));
    let mut half_prepared = encode_raw(&two_frames);
    half_prepared.extend_from_slice(&raw_file(3, &[0; 16]));
    vec![
        ("two-frames", encode_raw(&two_frames)),
        ("rolled", encode_raw(&rolled)),
        ("recycled", encode_raw(&recycled)),
        ("half-prepared", half_prepared),
    ]
}

/// Consecutive segment files (by name) in the raw input format: the mode
/// byte with the first sequence, then each file tagged as the next segment,
/// its trailing zeros left out.
fn encode_raw(segments: &[(String, Vec<u8>)]) -> Vec<u8> {
    let first = segments
        .first()
        .and_then(|(name, _)| u64::from_str_radix(name.trim_end_matches(".wal"), 16).ok())
        .expect("a segment");
    let mut out = vec![u8::try_from(first).expect("a low sequence") << 1];
    for (_, segment) in segments {
        out.extend_from_slice(&raw_file(0, segment));
    }
    out
}

fn raw_file(tag: u8, bytes: &[u8]) -> Vec<u8> {
    let used = bytes.iter().rposition(|&b| b != 0).map_or(0, |at| at + 1);
    let mut out = vec![tag];
    out.extend_from_slice(&u16::try_from(used).expect("a small segment").to_le_bytes());
    out.extend_from_slice(&bytes[..used]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_seeds_are_wals_that_open_with_their_entries() {
        for (name, seed) in seeds() {
            let files = raw_files(seed[0] >> 1, &seed[1..]);
            let recovered = run(async move {
                let dir = SimDir::new();
                for (file, bytes) in &files {
                    put_file(&dir, file, bytes).await;
                }
                let options = WalOptions {
                    segment_bytes: RAW_SEGMENT_BYTES,
                };
                Wal::open_in(dir, options).await.map(|(_, recovered)| recovered)
            });
            let recovered = recovered.unwrap_or_else(|error| panic!("seed {name}: {error}"));
            assert!(
                !recovered.entries.is_empty() && recovered.snapshot.is_some(),
                "seed {name}"
            );
        }
    }
}
