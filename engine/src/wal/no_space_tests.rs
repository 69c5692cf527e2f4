//! The WAL on a full disk: a segment that cannot be prepared is reported, the
//! append that needs it writes nothing more and does not poison the WAL, and
//! the records it left are appended later exactly once, in order.

use std::future::Future;

use super::sim::SimDir;
use super::*;

/// 16 blocks: the creation frame and 15 one-block appends fill segment 0.
const SMALL_SEGMENT_BYTES: u64 = 16 * BLOCK_BYTES as u64;

fn run<T>(test: impl Future<Output = T> + 'static) -> T {
    glommio::LocalExecutor::default().run(test)
}

fn small() -> WalOptions {
    WalOptions {
        segment_bytes: SMALL_SEGMENT_BYTES,
    }
}

fn entry(index: u64, bytes: usize) -> Record {
    Record::Entry(EntryRecord {
        index,
        term: 1,
        kind: 0,
        data: vec![(index % 251) as u8; bytes],
        context: Vec::new(),
    })
}

fn snapshot_at(index: u64) -> SnapshotRecord {
    SnapshotRecord {
        index,
        term: if index == 0 { 0 } else { 1 },
        conf_state: Vec::new(),
    }
}

async fn create(dir: &SimDir) -> Wal<SimDir> {
    Wal::create_in(dir.clone(), small(), Vec::new(), snapshot_at(0))
        .await
        .unwrap()
}

/// Opens the WAL again, as a restart after a crash would: what is durable.
async fn recovered_indexes(dir: &SimDir) -> Vec<u64> {
    let (_, recovered) = Wal::open_in(dir.clone(), small()).await.unwrap();
    recovered.entries.iter().map(|e| e.index).collect()
}

async fn append_each(wal: &mut Wal<SimDir>, indexes: std::ops::RangeInclusive<u64>) {
    for index in indexes {
        wal.append(&[entry(index, 10)]).await.unwrap();
    }
}

/// `settle_spare`, bounded: a test whose WAL prepares nothing fails, not hangs.
async fn settle(wal: &mut Wal<SimDir>) {
    let settled = futures_lite::future::or(
        async {
            wal.settle_spare().await;
            true
        },
        async {
            glommio::timer::sleep(std::time::Duration::from_secs(5)).await;
            false
        },
    );
    assert!(settled.await, "no segment was being prepared");
}

fn written_of(result: Result<(), WalError>) -> usize {
    match result {
        Err(WalError::NoSpace { written, .. }) => written,
        other => panic!("expected NoSpace, got {other:?}"),
    }
}

#[test]
fn a_spare_without_room_is_reported_while_the_active_segment_still_takes_appends() {
    run(async {
        let dir = SimDir::new();
        let mut wal = create(&dir).await;
        dir.set_disk_full(true);
        // Half of segment 0 used: its successor is prepared in the background.
        append_each(&mut wal, 1..=7).await;
        assert!(!wal.out_of_space(), "not known before the preparation ends");
        settle(&mut wal).await;
        assert!(wal.out_of_space());
        append_each(&mut wal, 8..=15).await;
        assert_eq!(wal.segment_count(), 1, "segment 0 is full, nothing else was made");
        assert_eq!(dir.list().await.unwrap(), vec![format!("{:016x}.wal", 0)]);

        for _ in 0..2 {
            let result = wal.append(&[entry(16, 10)]).await;
            assert_eq!(written_of(result), 0, "not poisoned: the same answer again");
        }
        assert!(wal.out_of_space());
        assert_eq!(recovered_indexes(&dir).await, (1..=15).collect::<Vec<_>>());

        dir.set_disk_full(false);
        wal.retry_spare();
        settle(&mut wal).await;
        assert!(!wal.out_of_space(), "the room is back");
        append_each(&mut wal, 16..=16).await;
        assert_eq!(wal.segment_count(), 2);
        assert_eq!(recovered_indexes(&dir).await, (1..=16).collect::<Vec<_>>());
    });
}

#[test]
fn an_append_stopped_by_a_full_disk_has_its_durable_prefix_and_the_rest_lands_once() {
    run(async {
        let dir = SimDir::new();
        let mut wal = create(&dir).await;
        dir.set_disk_full(true);
        append_each(&mut wal, 1..=13).await;
        // Two blocks are left in segment 0; the batch needs more.
        let batch: Vec<Record> = vec![
            entry(14, 10),
            entry(15, 10),
            entry(16, 5000),
            entry(17, 5000),
            Record::HardState(HardStateRecord {
                term: 1,
                vote: 1,
                commit: 17,
            }),
        ];
        let written = written_of(wal.append(&batch).await);
        assert!((1..batch.len()).contains(&written), "{written} of the batch fitted");
        let durable: Vec<u64> = (1..=13 + written as u64).collect();
        assert_eq!(
            recovered_indexes(&dir).await,
            durable,
            "exactly the records it counts are durable, nothing after them"
        );

        let rest = &batch[written..];
        assert_eq!(
            written_of(wal.append(rest).await),
            0,
            "still no room: nothing more written"
        );
        assert_eq!(recovered_indexes(&dir).await, durable);

        dir.set_disk_full(false);
        wal.append(rest).await.unwrap();
        drop(wal);
        let (_, recovered) = Wal::open_in(dir.clone(), small()).await.unwrap();
        let got: Vec<(u64, usize)> = recovered.entries.iter().map(|e| (e.index, e.data.len())).collect();
        let mut want: Vec<(u64, usize)> = (1..=15).map(|index| (index, 10)).collect();
        want.extend([(16, 5000), (17, 5000)]);
        assert_eq!(got, want, "every record once, in order");
        assert_eq!(recovered.hard_state.map(|h| h.commit), Some(17));
    });
}

#[test]
fn opening_a_wal_whose_newest_segment_is_full_makes_no_segment() {
    run(async {
        let dir = SimDir::new();
        let mut wal = create(&dir).await;
        dir.set_disk_full(true);
        append_each(&mut wal, 1..=15).await;
        settle(&mut wal).await;
        drop(wal);
        let (mut wal, recovered) = Wal::open_in(dir.clone(), small()).await.unwrap();
        assert_eq!(recovered.entries.len(), 15);
        settle(&mut wal).await;
        assert!(wal.out_of_space(), "the spare tried at open found no room");
        assert_eq!(dir.list().await.unwrap(), vec![format!("{:016x}.wal", 0)]);
        assert_eq!(written_of(wal.append(&[entry(16, 10)]).await), 0);

        // A restart on the still full disk opens again.
        drop(wal);
        let (mut wal, _) = Wal::open_in(dir.clone(), small()).await.unwrap();
        dir.set_disk_full(false);
        append_each(&mut wal, 16..=17).await;
        assert_eq!(recovered_indexes(&dir).await, (1..=17).collect::<Vec<_>>());
    });
}

/// Segment 0 full, segment 1 made (with room), then the disk full: segment 1
/// holds 16 from its first frame on, and segment 2 finds no room.
async fn two_segments_then_a_full_disk(dir: &SimDir) -> Wal<SimDir> {
    let mut wal = create(dir).await;
    append_each(&mut wal, 1..=15).await;
    settle(&mut wal).await;
    append_each(&mut wal, 16..=16).await;
    assert_eq!(wal.segment_count(), 2);
    dir.set_disk_full(true);
    wal
}

#[test]
fn a_released_segment_recycled_as_the_spare_ends_the_shortage() {
    run(async {
        let dir = SimDir::new();
        let mut wal = two_segments_then_a_full_disk(&dir).await;
        append_each(&mut wal, 17..=24).await;
        settle(&mut wal).await;
        assert!(wal.out_of_space(), "segment 2 found no room");
        // Everything in segment 0 is held elsewhere: it becomes the spare.
        wal.release_to(snapshot_at(15)).await.unwrap();
        assert!(!wal.out_of_space(), "a recycled segment needs no room");
        append_each(&mut wal, 25..=40).await;
        assert_eq!(recovered_indexes(&dir).await, (16..=40).collect::<Vec<_>>());
    });
}

#[test]
fn a_release_without_room_for_its_record_releases_nothing_and_the_wal_goes_on() {
    run(async {
        let dir = SimDir::new();
        let mut wal = two_segments_then_a_full_disk(&dir).await;
        append_each(&mut wal, 17..=31).await;
        settle(&mut wal).await;
        // Segment 1 is full and segment 2 found no room.
        assert_eq!(written_of(wal.release_to(snapshot_at(15)).await), 0);
        assert_eq!(wal.segment_count(), 2, "nothing released");
        let (_, recovered) = Wal::open_in(dir.clone(), small()).await.unwrap();
        assert_eq!(recovered.snapshot, Some(snapshot_at(0)));
        assert_eq!(recovered.entries.len(), 31);

        dir.set_disk_full(false);
        wal.release_to(snapshot_at(31)).await.unwrap();
        assert_eq!(wal.segment_count(), 1, "both full segments went with the later release");
        append_each(&mut wal, 32..=32).await;
        assert_eq!(recovered_indexes(&dir).await, vec![32]);
    });
}
