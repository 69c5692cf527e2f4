//! The raft log as raft-rs sees it (`raft::Storage`): hard state, conf state and the
//! entries after the last point the page store has made durable.
//!
//! This is an in-memory mirror. Durability comes from the WAL: the store core
//! appends a Ready's entries here (raft-rs requires them readable before
//! `advance_append_async`) and writes the same entries to the WAL; raft only
//! learns they are persisted (`on_persist_ready`) once the WAL's fdatasync returned.

use std::collections::VecDeque;

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};

/// Entries `first_index()..=last_index()`, preceded by a compaction point whose
/// index and term are remembered (raft matches logs by the term before the first entry).
pub struct RaftLog {
    hard_state: HardState,
    conf_state: ConfState,
    compacted_index: u64,
    compacted_term: u64,
    entries: VecDeque<Entry>,
    /// What a lagging follower is sent: the latest durable page-store commit
    /// (applied index, its term, the configuration then). None until one is made.
    snapshot_point: Option<SnapshotMetadata>,
}

impl RaftLog {
    /// A log whose entries up to `compacted_index` live in the page store.
    pub fn new(
        hard_state: HardState,
        conf_state: ConfState,
        compacted_index: u64,
        compacted_term: u64,
        entries: Vec<Entry>,
    ) -> RaftLog {
        let log = RaftLog {
            hard_state,
            conf_state,
            compacted_index,
            compacted_term,
            entries: entries.into(),
            snapshot_point: None,
        };
        log.assert_contiguous();
        log
    }

    pub fn set_hard_state(&mut self, hard_state: HardState) {
        assert!(hard_state.term >= self.hard_state.term, "raft term never goes back");
        self.hard_state = hard_state;
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    pub fn set_conf_state(&mut self, conf_state: ConfState) {
        self.conf_state = conf_state;
    }

    pub fn last_index(&self) -> u64 {
        self.entries.back().map_or(self.compacted_index, |entry| entry.index)
    }

    /// Appends entries, first dropping any existing suffix they replace (a new
    /// leader may overwrite uncommitted entries).
    pub fn append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else {
            return;
        };
        assert!(first.index > self.compacted_index, "cannot rewrite compacted entries");
        assert!(first.index <= self.last_index() + 1, "appended entries leave a gap");
        let keep = (first.index - self.compacted_index - 1) as usize;
        self.entries.truncate(keep);
        self.entries.extend(entries.iter().cloned());
        self.assert_contiguous();
    }

    /// Forgets entries up to `index` (inclusive): the page store holds their effect.
    pub fn compact_to(&mut self, index: u64) {
        if index <= self.compacted_index {
            return;
        }
        assert!(index <= self.last_index(), "cannot compact past the last entry");
        let term = self.term_of(index).expect("index is inside the log");
        let drop = (index - self.compacted_index) as usize;
        self.entries.drain(..drop);
        self.compacted_index = index;
        self.compacted_term = term;
        self.assert_contiguous();
    }

    /// The page store made everything up to `index` durable: that commit is
    /// what raft sends a follower whose next entry is no longer in the log.
    pub fn set_snapshot_point(&mut self, index: u64, term: u64, conf_state: ConfState) {
        assert!(
            index >= self.compacted_index,
            "the log keeps what the page store has not made durable"
        );
        assert!(
            self.snapshot_point.as_ref().is_none_or(|point| point.index <= index),
            "durable commits only move forward"
        );
        self.snapshot_point = Some(SnapshotMetadata {
            conf_state: Some(conf_state),
            index,
            term,
        });
    }

    pub fn snapshot_point(&self) -> Option<&SnapshotMetadata> {
        self.snapshot_point.as_ref()
    }

    /// Replaces the log with a snapshot installed from the leader: nothing
    /// before or after its index is kept (raft-rs restores only when its log
    /// does not hold the snapshot's entry), and it is the new compaction point.
    pub fn apply_snapshot(&mut self, metadata: &SnapshotMetadata) {
        assert!(
            metadata.index > self.compacted_index,
            "an installed snapshot is past the local compaction point"
        );
        self.entries.clear();
        self.compacted_index = metadata.index;
        self.compacted_term = metadata.term;
        self.conf_state = metadata.conf_state.clone().unwrap_or_default();
        self.hard_state.commit = self.hard_state.commit.max(metadata.index);
        self.snapshot_point = Some(metadata.clone());
    }

    pub fn compacted_index(&self) -> u64 {
        self.compacted_index
    }

    pub fn term_of(&self, index: u64) -> Option<u64> {
        if index == self.compacted_index {
            return Some(self.compacted_term);
        }
        if index < self.compacted_index || index > self.last_index() {
            return None;
        }
        let entry = &self.entries[(index - self.compacted_index - 1) as usize];
        assert_eq!(entry.index, index);
        Some(entry.term)
    }

    fn assert_contiguous(&self) {
        if let Some(front) = self.entries.front() {
            assert_eq!(
                front.index,
                self.compacted_index + 1,
                "log starts after the compaction point"
            );
        }
        if let (Some(front), Some(back)) = (self.entries.front(), self.entries.back()) {
            assert_eq!(
                back.index - front.index + 1,
                self.entries.len() as u64,
                "log has no holes"
            );
        }
    }
}

impl raft::Storage for RaftLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.hard_state.clone(), self.conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.compacted_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        assert!(high <= self.last_index() + 1, "raft asked past the last entry");
        let max_bytes = max_size.into().unwrap_or(u64::MAX);
        let start = (low - self.compacted_index - 1) as usize;
        let end = (high - self.compacted_index - 1) as usize;
        let mut out = Vec::with_capacity(end - start);
        let mut total_bytes = 0u64;
        for entry in self.entries.range(start..end) {
            total_bytes += (entry.data.len() + entry.context.len()) as u64;
            // Always at least one entry, as the trait demands.
            if !out.is_empty() && total_bytes > max_bytes {
                break;
            }
            out.push(entry.clone());
        }
        Ok(out)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        if index < self.compacted_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        self.term_of(index).ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.compacted_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(RaftLog::last_index(self))
    }

    /// The latest durable page-store commit, as metadata only: the store core
    /// streams the page file itself (see `store::core::snapshots`), patching the
    /// metadata to the commit it pins then, which is never older than this one.
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        match &self.snapshot_point {
            Some(point) if point.index >= request_index && point.index > 0 => Ok(Snapshot {
                data: Vec::new(),
                metadata: Some(point.clone()),
            }),
            _ => Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: vec![index as u8; 10],
            ..Default::default()
        }
    }

    fn log_with(entries: Vec<Entry>) -> RaftLog {
        RaftLog::new(HardState::default(), ConfState::default(), 0, 0, entries)
    }

    #[test]
    fn append_replaces_the_conflicting_suffix() {
        let mut log = log_with((1..=10).map(|i| entry(i, 1)).collect());
        log.append(&[entry(6, 2), entry(7, 2)]);
        assert_eq!(log.last_index(), 7);
        assert_eq!(log.term_of(5), Some(1));
        assert_eq!(log.term_of(6), Some(2));
        assert_eq!(log.term_of(8), None);
    }

    #[test]
    fn compaction_keeps_the_term_of_the_compaction_point() {
        let mut log = log_with((1..=5).map(|i| entry(i, i)).collect());
        log.compact_to(3);
        assert_eq!(log.first_index().unwrap(), 4);
        assert_eq!(log.term(3).unwrap(), 3);
        assert!(matches!(log.term(2), Err(raft::Error::Store(StorageError::Compacted))));
        let context = GetEntriesContext::empty(false);
        assert!(log.entries(3, 5, None, context).is_err());
    }

    #[test]
    fn the_snapshot_is_the_last_durable_commit_and_installing_one_replaces_the_log() {
        let mut log = log_with((1..=10).map(|i| entry(i, 1)).collect());
        assert!(matches!(
            log.snapshot(0, 2),
            Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable))
        ));
        let voters = ConfState {
            voters: vec![1, 2, 3],
            ..Default::default()
        };
        log.set_snapshot_point(8, 1, voters.clone());
        let snapshot = log.snapshot(0, 2).unwrap();
        assert_eq!((snapshot.get_metadata().index, snapshot.get_metadata().term), (8, 1));
        assert_eq!(snapshot.get_metadata().get_conf_state(), &voters);
        assert!(log.snapshot(9, 2).is_err(), "older than what was asked for");

        let installed = SnapshotMetadata {
            conf_state: Some(voters.clone()),
            index: 20,
            term: 3,
        };
        log.apply_snapshot(&installed);
        assert_eq!(log.first_index().unwrap(), 21);
        assert_eq!(log.last_index(), 20);
        assert_eq!(log.term(20).unwrap(), 3);
        assert_eq!(log.conf_state(), &voters);
        assert_eq!(log.initial_state().unwrap().hard_state.commit, 20);
        log.append(&[entry(21, 3)]);
        assert_eq!(log.last_index(), 21);
    }

    #[test]
    fn entries_respects_the_size_limit_but_returns_at_least_one() {
        let log = log_with((1..=5).map(|i| entry(i, 1)).collect());
        let one = log.entries(1, 6, Some(1), GetEntriesContext::empty(false)).unwrap();
        assert_eq!(one.len(), 1);
        let two = log.entries(1, 6, Some(20), GetEntriesContext::empty(false)).unwrap();
        assert_eq!(two.len(), 2);
    }
}
