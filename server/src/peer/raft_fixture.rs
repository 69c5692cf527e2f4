//! Raft nodes in known states for the screen's tests and the raft_step fuzz
//! target: member 1 of the voters 1, 2, 3 on raft-rs's `MemStorage`, as a
//! follower, a leader or a candidate, and the Ready loop that persists and
//! applies in one step.

use raft::eraftpb::{ConfState, Entry, HardState, Message, MessageType};
use raft::storage::MemStorage;
use raft::{Config, RawNode, StateRole};

pub const ME: u64 = 1;
pub const PEER: u64 = 2;
/// Entries 1..=LAST of term 1 are in every test node's log.
pub const LAST: u64 = 5;

pub fn logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

pub fn config(id: u64) -> Config {
    // As ringkv configures raft (store::bootstrap), with small tick counts.
    Config {
        id,
        election_tick: 10,
        heartbeat_tick: 1,
        pre_vote: true,
        check_quorum: true,
        max_size_per_msg: 1024 * 1024,
        max_inflight_msgs: 256,
        ..Default::default()
    }
}

/// Member 1 of the voters 1, 2, 3: entries 1..=LAST of term 1, `committed` of
/// them committed, at `term`, a follower that knows no leader yet.
pub fn node(committed: u64, term: u64) -> RawNode<MemStorage> {
    let storage = MemStorage::new_with_conf_state(ConfState::from((vec![1, 2, 3], vec![])));
    let entries: Vec<Entry> = (1..=LAST).map(|index| entry(index, 1)).collect();
    storage.wl().append(&entries).unwrap();
    storage.wl().set_hardstate(HardState {
        term,
        vote: 0,
        commit: committed,
    });
    RawNode::new(&config(ME), storage, &logger()).unwrap()
}

pub fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: vec![1, 2, 3],
        ..Default::default()
    }
}

pub fn message(kind: MessageType, term: u64) -> Message {
    Message {
        msg_type: kind as i32,
        from: PEER,
        to: ME,
        term,
        ..Default::default()
    }
}

/// A follower of PEER at term 2, with entries up to 3 committed.
pub fn follower() -> RawNode<MemStorage> {
    let mut raw = node(3, 2);
    let mut heartbeat = message(MessageType::MsgHeartbeat, 2);
    heartbeat.commit = 3;
    raw.step(heartbeat).unwrap();
    settle(&mut raw);
    assert_eq!((raw.raft.state, raw.raft.leader_id), (StateRole::Follower, PEER));
    raw
}

/// The leader of term 2, its first entry of the term committed (so it serves
/// reads), with PEER's log matching its own.
pub fn leader() -> RawNode<MemStorage> {
    let mut raw = node(LAST, 1);
    raw.campaign().unwrap();
    let mut granted = message(MessageType::MsgRequestPreVoteResponse, 2);
    raw.step(granted.clone()).unwrap();
    granted.msg_type = MessageType::MsgRequestVoteResponse as i32;
    raw.step(granted).unwrap();
    settle(&mut raw);
    assert_eq!(raw.raft.state, StateRole::Leader);
    let mut acknowledged = message(MessageType::MsgAppendResponse, 2);
    acknowledged.index = raw.raft.raft_log.last_index();
    raw.step(acknowledged).unwrap();
    settle(&mut raw);
    assert_eq!(raw.raft.raft_log.committed, LAST + 1);
    raw
}

/// A candidate of term 2 (it won the pre-vote, the vote is open).
pub fn candidate() -> RawNode<MemStorage> {
    let mut raw = node(3, 1);
    raw.campaign().unwrap();
    raw.step(message(MessageType::MsgRequestPreVoteResponse, 2)).unwrap();
    settle(&mut raw);
    assert_eq!((raw.raft.state, raw.raft.term), (StateRole::Candidate, 2));
    raw
}

/// Persists and applies what raft has ready, as the store core does (in one
/// step: these tests need no WAL); returns the messages it would send.
pub fn settle(raw: &mut RawNode<MemStorage>) -> Vec<Message> {
    let mut sent = Vec::new();
    while raw.has_ready() {
        let mut ready = raw.ready();
        if !ready.snapshot().is_empty() {
            raw.mut_store().wl().apply_snapshot(ready.snapshot().clone()).unwrap();
        }
        raw.mut_store().wl().append(ready.entries()).unwrap();
        if let Some(hard_state) = ready.hs() {
            raw.mut_store().wl().set_hardstate(hard_state.clone());
        }
        sent.extend(ready.take_messages());
        sent.extend(ready.take_persisted_messages());
        let mut light = raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            raw.mut_store().wl().mut_hard_state().commit = commit;
        }
        sent.extend(light.take_messages());
        raw.advance_apply();
    }
    sent
}
