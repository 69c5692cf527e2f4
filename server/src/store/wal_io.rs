//! The store core's WAL task: owns the WAL, persists raft Readies in order, and
//! reports back. Converting between raft's types and the WAL's record types
//! happens here, so `engine` never depends on raft.

use std::rc::Rc;

use glommio::channels::local_channel::{LocalReceiver, LocalSender};
use prost::Message;
use raft::eraftpb::{ConfState, Entry, HardState};
use ringkv_engine::wal::{EntryRecord, HardStateRecord, Record, SnapshotRecord, Wal};

use super::core::Event;

/// Work for the WAL task, done strictly in order.
pub enum WalJob {
    /// Persist one raft Ready (entries and/or hard state): one write + one fdatasync.
    Persist { ready: u64, records: Vec<Record> },
    /// Everything up to the snapshot's index is durable in the page store.
    Release(SnapshotRecord),
}

/// Runs until the job channel closes. A WAL error is fatal: it is reported and the
/// store core stops the process (an fsync error must never be retried).
pub async fn run(mut wal: Wal, jobs: LocalReceiver<WalJob>, events: Rc<LocalSender<Event>>) {
    #[cfg(feature = "fault-injection")]
    let disk_delay = super::fault::DiskDelay::from_env();
    while let Some(job) = jobs.recv().await {
        let event = match job {
            WalJob::Persist { ready, records } => {
                let started = std::time::Instant::now();
                #[cfg(feature = "fault-injection")]
                if let Some(delay) = disk_delay.as_ref().and_then(super::fault::DiskDelay::current) {
                    glommio::timer::sleep(delay).await;
                }
                let result = wal.append(&records).await;
                Event::Persisted {
                    ready,
                    result,
                    elapsed: started.elapsed(),
                }
            }
            WalJob::Release(snapshot) => Event::Released(wal.release_to(snapshot).await),
        };
        if events.try_send(event).is_err() {
            return;
        }
    }
}

pub fn entry_record(entry: &Entry) -> Record {
    Record::Entry(EntryRecord {
        index: entry.index,
        term: entry.term,
        kind: u8::try_from(entry.entry_type).expect("raft entry types fit a byte"),
        data: entry.data.to_vec(),
        context: entry.context.to_vec(),
    })
}

pub fn hard_state_record(hard_state: &HardState) -> Record {
    Record::HardState(HardStateRecord {
        term: hard_state.term,
        vote: hard_state.vote,
        commit: hard_state.commit,
    })
}

pub fn snapshot_record(index: u64, term: u64, conf_state: &ConfState) -> SnapshotRecord {
    SnapshotRecord {
        index,
        term,
        conf_state: conf_state.encode_to_vec(),
    }
}

pub fn entry_from_record(record: EntryRecord) -> Entry {
    Entry {
        entry_type: i32::from(record.kind),
        term: record.term,
        index: record.index,
        data: record.data,
        context: record.context,
        ..Default::default()
    }
}

pub fn hard_state_from_record(record: &HardStateRecord) -> HardState {
    HardState {
        term: record.term,
        vote: record.vote,
        commit: record.commit,
    }
}
