//! What ringkv keeps in the engine's WAL: who the member is (the metadata),
//! and raft's entries, hard states and configurations as the WAL's records.
//! Converting between raft's types and the WAL's record types happens here,
//! so `engine` never depends on raft. And a new member's WAL: made at first
//! start, by a restore, or by a member joining a running cluster.

use std::path::Path;

use prost::Message;
use raft_proto::eraftpb::{ConfState, Entry, HardState};
use ringkv_engine::wal::{
    EntryRecord, HardStateRecord, Record, Recovered, SnapshotRecord, Wal, WalDir, WalError, WalOptions,
};

/// Who this member is; stored in the WAL at creation and authoritative afterwards
/// (as in etcd, changing identity flags later does not change a member's id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub member_id: u64,
    pub cluster_id: u64,
}

impl Identity {
    /// WAL metadata: member id then cluster id, 8 bytes big endian each.
    pub fn encode(self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(16);
        bytes.extend_from_slice(&self.member_id.to_be_bytes());
        bytes.extend_from_slice(&self.cluster_id.to_be_bytes());
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Option<Identity> {
        let member_id = u64::from_be_bytes(bytes.get(0..8)?.try_into().ok()?);
        let cluster_id = u64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?);
        (bytes.len() == 16).then_some(Identity { member_id, cluster_id })
    }
}

/// A new WAL: identity in the metadata, and a snapshot record at `index`, `term`
/// holding the initial configuration (`voters`), both in its first frame, so
/// that a crash right after creation leaves a WAL that opens. A restored store
/// starts its raft log at its applied index. `voters` holds this member unless
/// it joins a running cluster (the callers assert which).
pub async fn create(
    wal_dir: &Path,
    identity: Identity,
    voters: &[u64],
    index: u64,
    term: u64,
) -> Result<(Wal, Recovered), WalError> {
    let (metadata, snapshot) = initial_records(identity, voters, index, term);
    let wal = Wal::create(wal_dir, WalOptions::default(), metadata, snapshot.clone()).await?;
    Ok((wal, recovered_at_creation(identity, snapshot)))
}

/// [`create`] in any WAL directory (a simulation's), with `options`.
pub async fn create_in<D: WalDir + Clone + 'static>(
    dir: D,
    options: WalOptions,
    identity: Identity,
    voters: &[u64],
) -> Result<(Wal<D>, Recovered), WalError> {
    let (metadata, snapshot) = initial_records(identity, voters, 0, 0);
    let wal = Wal::create_in(dir, options, metadata, snapshot.clone()).await?;
    Ok((wal, recovered_at_creation(identity, snapshot)))
}

/// A new WAL's metadata (the member's identity) and first snapshot record
/// (the configuration of `voters` at `index`, `term`).
fn initial_records(identity: Identity, voters: &[u64], index: u64, term: u64) -> (Vec<u8>, SnapshotRecord) {
    assert!(!voters.is_empty(), "a configuration has a voter");
    let conf_state = ConfState {
        voters: voters.to_vec(),
        ..Default::default()
    };
    (identity.encode(), snapshot_record(index, term, &conf_state))
}

/// What opening a WAL just created would recover.
fn recovered_at_creation(identity: Identity, snapshot: SnapshotRecord) -> Recovered {
    Recovered {
        metadata: identity.encode(),
        snapshot: Some(snapshot),
        hard_state: None,
        entries: Vec::new(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_round_trips_through_wal_metadata() {
        let identity = Identity {
            member_id: 0x8e9e05c52164694d,
            cluster_id: 0xcdf818194e3a8c32,
        };
        assert_eq!(Identity::decode(&identity.encode()), Some(identity));
        assert_eq!(Identity::decode(&[1, 2, 3]), None);
    }

    #[test]
    fn entries_and_hard_states_round_trip_through_records() {
        let entry = Entry {
            entry_type: 2,
            term: 7,
            index: 42,
            data: b"data".to_vec(),
            context: b"context".to_vec(),
            ..Default::default()
        };
        let Record::Entry(record) = entry_record(&entry) else {
            panic!("an entry record");
        };
        assert_eq!(entry_from_record(record), entry);
        let hard_state = HardState {
            term: 7,
            vote: 3,
            commit: 40,
        };
        let Record::HardState(record) = hard_state_record(&hard_state) else {
            panic!("a hard state record");
        };
        assert_eq!(hard_state_from_record(&record), hard_state);
    }
}
