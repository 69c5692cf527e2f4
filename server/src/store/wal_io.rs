//! The store core's WAL task: owns the WAL, persists raft Readies in order, and
//! reports back, also whether the WAL has room for its next segment. Raft's
//! types become the WAL's records in `ringkv_datadir::wal`.

use std::rc::Rc;
use std::time::Duration;

use futures_lite::future;
use glommio::channels::local_channel::{LocalReceiver, LocalSender};
use ringkv_engine::wal::{Record, SnapshotRecord, Wal, WalDir, WalError};

use super::event::Event;

/// Work for the WAL task, done strictly in order.
pub enum WalJob {
    /// Persist one raft Ready (entries and/or hard state): one write + one fdatasync.
    Persist { ready: u64, records: Vec<Record> },
    /// Everything up to the snapshot's index is durable in the page store.
    Release(SnapshotRecord),
    /// Prepare the next segment again: the last attempt found no room.
    RetrySpare,
}

/// Runs until the job channel closes. A WAL error is fatal: it is reported and the
/// store core stops the process (an fsync error must never be retried). Finding
/// no room is not an error: a Persist whose records need a segment there is no
/// room for reports the records it could not write (`PersistNoSpace`), and a
/// change in whether the next segment has room is reported (`WalSpace`).
pub async fn run(mut wal: Wal, jobs: LocalReceiver<WalJob>, events: Rc<LocalSender<Event>>) {
    #[cfg(feature = "fault-injection")]
    let disk_delay = super::fault::DiskDelay::from_env();
    let mut out_of_space = false;
    loop {
        // The next job, or the end of a segment's preparation in the background.
        let next = future::or(async { Some(jobs.recv().await) }, async {
            wal.settle_spare().await;
            None
        })
        .await;
        let event = match next {
            Some(None) => return,
            Some(Some(job)) => {
                #[cfg(feature = "fault-injection")]
                let delay = disk_delay.as_ref().and_then(super::fault::DiskDelay::current);
                #[cfg(not(feature = "fault-injection"))]
                let delay = None;
                run_job(&mut wal, job, delay).await
            }
            None => None,
        };
        if let Some(event) = event {
            if events.try_send(event).is_err() {
                return;
            }
        }
        if wal.out_of_space() != out_of_space {
            out_of_space = wal.out_of_space();
            if events.try_send(Event::WalSpace { out_of_space }).is_err() {
                return;
            }
        }
    }
}

/// Does one job; the event that reports it, if any. `disk_delay` (the fault
/// suite's slow disk, test builds only) is waited before a Persist's write.
pub(crate) async fn run_job<D: WalDir + Clone + 'static>(
    wal: &mut Wal<D>,
    job: WalJob,
    disk_delay: Option<Duration>,
) -> Option<Event> {
    Some(match job {
        WalJob::Persist { ready, mut records } => {
            let started = std::time::Instant::now();
            if let Some(delay) = disk_delay {
                glommio::timer::sleep(delay).await;
            }
            match wal.append(&records).await {
                Err(WalError::NoSpace { written, .. }) => {
                    // Those are durable; the rest is to be written once, later.
                    records.drain(..written);
                    Event::PersistNoSpace { ready, records }
                }
                result => Event::Persisted {
                    ready,
                    result,
                    elapsed: started.elapsed(),
                },
            }
        }
        WalJob::Release(snapshot) => Event::Released(wal.release_to(snapshot).await),
        WalJob::RetrySpare => {
            wal.retry_spare();
            return None;
        }
    })
}

#[cfg(test)]
mod tests {
    use ringkv_engine::wal::sim::SimDir;
    use ringkv_engine::wal::{EntryRecord, WalOptions, BLOCK_BYTES};

    use super::*;

    /// 16 blocks: the creation frame and 15 one-block appends fill one.
    fn small() -> WalOptions {
        WalOptions {
            segment_bytes: 16 * BLOCK_BYTES as u64,
        }
    }

    fn entry(index: u64, bytes: usize) -> Record {
        Record::Entry(EntryRecord {
            index,
            term: 1,
            kind: 0,
            data: vec![index as u8; bytes],
            context: Vec::new(),
        })
    }

    async fn persist(wal: &mut Wal<SimDir>, ready: u64, records: Vec<Record>) -> Result<(), Vec<Record>> {
        match run_job(wal, WalJob::Persist { ready, records }, None).await {
            Some(Event::Persisted {
                ready: done, result, ..
            }) => {
                assert_eq!(done, ready);
                result.expect("persisted");
                Ok(())
            }
            Some(Event::PersistNoSpace {
                ready: waiting,
                records,
            }) => {
                assert_eq!(waiting, ready);
                Err(records)
            }
            _ => panic!("a Persist is answered with Persisted or PersistNoSpace"),
        }
    }

    #[test]
    fn records_without_room_come_back_and_sent_again_land_once_in_order() {
        glommio::LocalExecutor::default().run(async {
            let dir = SimDir::new();
            let initial = SnapshotRecord {
                index: 0,
                term: 0,
                conf_state: Vec::new(),
            };
            let mut wal = Wal::create_in(dir.clone(), small(), Vec::new(), initial).await.unwrap();
            dir.set_disk_full(true);
            for index in 1..=13 {
                persist(&mut wal, index, vec![entry(index, 10)]).await.unwrap();
            }
            // Two blocks left: part of this Ready fits, the rest needs a segment.
            let ready: Vec<Record> = (14..=18).map(|index| entry(index, 2000)).collect();
            let rest = persist(&mut wal, 14, ready.clone()).await.unwrap_err();
            assert!(!rest.is_empty() && rest.len() < ready.len(), "{} came back", rest.len());
            assert_eq!(rest[..], ready[ready.len() - rest.len()..], "the rest, as it was");
            let (_, recovered) = Wal::open_in(dir.clone(), small()).await.unwrap();
            let durable = 13 + (ready.len() - rest.len()) as u64;
            assert_eq!(
                recovered.entries.last().map(|e| e.index),
                Some(durable),
                "what did not come back is durable"
            );
            let again = persist(&mut wal, 14, rest.clone()).await.unwrap_err();
            assert_eq!(again, rest, "nothing more was written");

            dir.set_disk_full(false);
            persist(&mut wal, 14, again).await.unwrap();
            drop(wal);
            let (_, recovered) = Wal::open_in(dir, small()).await.unwrap();
            let indexes: Vec<u64> = recovered.entries.iter().map(|e| e.index).collect();
            assert_eq!(indexes, (1..=18).collect::<Vec<_>>());
        });
    }
}
