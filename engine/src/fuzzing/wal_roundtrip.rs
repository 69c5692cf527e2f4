//! The `wal_roundtrip` target: whatever the writer appends, releases and
//! reopens, recovery returns exactly.

use arbitrary::{Arbitrary, Unstructured};

use crate::wal::sim::SimDir;
use crate::wal::{EntryRecord, HardStateRecord, Record, SnapshotRecord, Wal, WalOptions, BLOCK_BYTES};

use super::run;

/// What a real writer does to a WAL: appends of entries and hard states,
/// releases up to an index (segments recycled), raft replacing a suffix of
/// its log, reopens. The model is what recovery must return.
#[derive(Debug, PartialEq, Arbitrary)]
enum Op {
    Entries {
        count: u8,
        bytes: u16,
    },
    HardState {
        term: u8,
        vote: u8,
        commit: u8,
    },
    /// Raft replaces the entries from `back` before the last one on (with
    /// one entry or more).
    Replace {
        back: u8,
        count: u8,
    },
    /// Released up to `back` entries before the last one.
    Release {
        back: u8,
    },
    Reopen,
}

/// The WAL as recovery must return it.
#[derive(Debug)]
struct Model {
    snapshot: SnapshotRecord,
    hard_state: Option<HardStateRecord>,
    /// Entries after the snapshot's index.
    entries: Vec<EntryRecord>,
}

impl Model {
    fn new() -> Model {
        Model {
            snapshot: SnapshotRecord {
                index: 0,
                term: 0,
                conf_state: Vec::new(),
            },
            hard_state: None,
            entries: Vec::new(),
        }
    }

    fn last_index(&self) -> u64 {
        self.entries.last().map_or(self.snapshot.index, |entry| entry.index)
    }

    fn term_at(&self, index: u64) -> u64 {
        self.entries
            .iter()
            .find(|entry| entry.index == index)
            .map_or(self.snapshot.term, |entry| entry.term)
    }

    /// `count` new entries from `first`, replacing any from there on.
    fn entries_from(&mut self, first: u64, count: u8, bytes: u16, term: u64) -> Vec<Record> {
        self.entries.retain(|entry| entry.index < first);
        let new: Vec<EntryRecord> = (0..u64::from(count))
            .map(|offset| EntryRecord {
                index: first + offset,
                term,
                kind: 0,
                data: vec![(first + offset) as u8; usize::from(bytes) % ENTRY_BYTES_MAX],
                context: Vec::new(),
            })
            .collect();
        self.entries.extend(new.iter().cloned());
        new.into_iter().map(Record::Entry).collect()
    }
}

/// Bytes of an entry's data at most: a few entries fill a segment.
const ENTRY_BYTES_MAX: usize = 6000;
/// Writer segments: 4 blocks, so a few appends roll and release recycles.
const ROUNDTRIP_SEGMENT_BYTES: u64 = 4 * BLOCK_BYTES as u64;
const ROUNDTRIP_OPS_MAX: usize = 64;
const METADATA: &[u8] = b"fuzz member";

/// Input: a sequence of [`Op`]s. Every reopen, and the last, must recover
/// exactly what the model holds.
pub fn wal_roundtrip(data: &[u8]) {
    let Ok(ops) = Vec::<Op>::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let options = WalOptions {
        segment_bytes: ROUNDTRIP_SEGMENT_BYTES,
    };
    run(async move {
        let dir = SimDir::new();
        let mut model = Model::new();
        let mut wal = Wal::create_in(dir.clone(), options, METADATA.to_vec(), model.snapshot.clone())
            .await
            .expect("a new WAL in an empty directory");
        let mut term = 1;
        for op in ops.iter().take(ROUNDTRIP_OPS_MAX) {
            match *op {
                Op::Entries { count, bytes } => {
                    let records = model.entries_from(model.last_index() + 1, count % 8, bytes, term);
                    wal.append(&records).await.expect("an append of small entries");
                }
                Op::HardState { term: t, vote, commit } => {
                    let hard_state = HardStateRecord {
                        term: u64::from(t),
                        vote: u64::from(vote),
                        commit: u64::from(commit),
                    };
                    model.hard_state = Some(hard_state);
                    wal.append(&[Record::HardState(hard_state)]).await.expect("an append");
                }
                Op::Replace { back, count } => {
                    // Raft never replaces entries at or below the snapshot.
                    let first = model
                        .last_index()
                        .saturating_sub(u64::from(back))
                        .max(model.snapshot.index + 1);
                    term += 1;
                    // At least one entry: an empty append writes (and replaces) nothing.
                    let records = model.entries_from(first, 1 + count % 8, 100, term);
                    wal.append(&records).await.expect("an append of small entries");
                }
                Op::Release { back } => {
                    let index = model
                        .last_index()
                        .saturating_sub(u64::from(back))
                        .max(model.snapshot.index);
                    let snapshot = SnapshotRecord {
                        index,
                        term: model.term_at(index),
                        conf_state: vec![1, 2, 3],
                    };
                    model.entries.retain(|entry| entry.index > index);
                    model.snapshot = snapshot.clone();
                    wal.release_to(snapshot).await.expect("a release");
                }
                Op::Reopen => {
                    drop(wal);
                    wal = reopen_and_compare(&dir, options, &model).await;
                }
            }
        }
        drop(wal);
        reopen_and_compare(&dir, options, &model).await;
    });
}

async fn reopen_and_compare(dir: &SimDir, options: WalOptions, model: &Model) -> Wal<SimDir> {
    let (wal, recovered) = Wal::open_in(dir.clone(), options)
        .await
        .unwrap_or_else(|error| panic!("a WAL only the writer wrote does not open: {error}"));
    let summary = |entries: &[EntryRecord]| -> Vec<(u64, u64, usize)> {
        entries.iter().map(|e| (e.index, e.term, e.data.len())).collect()
    };
    assert_eq!(recovered.metadata, METADATA);
    assert_eq!(recovered.snapshot.as_ref(), Some(&model.snapshot));
    assert_eq!(recovered.hard_state, model.hard_state);
    assert_eq!(
        summary(&recovered.entries),
        summary(&model.entries),
        "(index, term, bytes)"
    );
    assert!(recovered.entries == model.entries, "entries read back as written");
    wal
}

/// Appends, a roll, a replaced suffix, a release, reopens.
pub(super) fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    // Each element of a Vec starts with a "one more" byte.
    let op = |variant: u32, fields: &[u8]| [&[1][..], &super::variant(variant, 5)[..], fields].concat();
    let entries = |count: u8, bytes: u16| op(0, &[&[count][..], &bytes.to_le_bytes()[..]].concat());
    let hard_state = op(1, &[2, 1, 3]);
    let replace = op(2, &[2, 3]);
    let release = op(3, &[1]);
    let reopen = op(4, &[]);
    vec![
        (
            "appends",
            [entries(3, 100), hard_state.clone(), reopen.clone()].concat(),
        ),
        (
            "roll-replace-release",
            [
                entries(7, 2000),
                entries(7, 2000),
                replace,
                hard_state,
                release,
                reopen.clone(),
                entries(5, 1500),
                reopen,
            ]
            .concat(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_roundtrip_seeds_decode_to_the_ops_they_were_made_of() {
        let seeds = seeds();
        let ops = Vec::<Op>::arbitrary_take_rest(Unstructured::new(&seeds[0].1)).unwrap();
        assert_eq!(
            ops,
            vec![
                Op::Entries { count: 3, bytes: 100 },
                Op::HardState {
                    term: 2,
                    vote: 1,
                    commit: 3
                },
                Op::Reopen
            ]
        );
    }
}
