//! The raft-step target: raft messages a peer could forge, each put through
//! the peer port's screen (`peer::screen`) and, if admitted, stepped into a
//! raft node as the store core steps it, then its Ready persisted. raft-rs
//! stops the process (`fatal!`, a panic) on messages it trusts its peers not
//! to send; the screen exists so that none reaches it. Any panic here is a
//! message from the network that would stop a member.

use prost::Message as _;
use raft::eraftpb::{Entry, Message, MessageType};
use raft::storage::MemStorage;
use raft::{RawNode, StateRole};

use crate::peer::raft_fixture::{candidate, follower, leader, message, settle, LAST, PEER};
use crate::peer::screen;

/// Messages stepped from one input at most.
const MESSAGES_MAX: usize = 64;

/// Input: a role byte (the node is a follower, the leader or a candidate, see
/// `peer::raft_fixture`), then messages, each a u16 LE length and an encoded
/// `eraftpb.Message`.
pub fn raft_step(data: &[u8]) {
    let Some((&role, rest)) = data.split_first() else {
        return;
    };
    let mut raw = match role % 3 {
        0 => follower(),
        1 => leader(),
        _ => candidate(),
    };
    step_admitted(&mut raw, rest);
    goes_on(&mut raw);
}

/// Steps the messages in `rest` the screen admits; returns how many it did.
fn step_admitted(raw: &mut RawNode<MemStorage>, rest: &[u8]) -> usize {
    let mut admitted = 0;
    for payload in payloads(rest) {
        let Ok(message) = Message::decode(payload) else {
            continue;
        };
        if screen::check(&raw.raft, &message).is_err() {
            continue;
        }
        admitted += 1;
        let _ = raw.step(message);
        settle(raw);
        raw.tick();
    }
    admitted
}

/// The first [`MESSAGES_MAX`] payloads of `rest`: `[u16 LE length, bytes]...`.
fn payloads(mut rest: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while rest.len() >= 2 && out.len() < MESSAGES_MAX {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
        let (payload, after) = rest[2..].split_at(len.min(rest.len() - 2));
        out.push(payload);
        rest = after;
    }
    out
}

/// The node still works: it ticks, a leader takes a proposal, Ready runs.
fn goes_on(raw: &mut RawNode<MemStorage>) {
    for _ in 0..3 {
        raw.tick();
    }
    if raw.raft.state == StateRole::Leader {
        let _ = raw.propose(Vec::new(), b"after".to_vec());
    }
    settle(raw);
}

/// Messages as the input carries them.
fn encoded(role: u8, messages: &[Message]) -> Vec<u8> {
    let mut out = vec![role];
    for message in messages {
        let bytes = message.encode_to_vec();
        out.extend_from_slice(&u16::try_from(bytes.len()).expect("a small message").to_le_bytes());
        out.extend_from_slice(&bytes);
    }
    out
}

pub(super) fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut heartbeat = message(MessageType::MsgHeartbeat, 2);
    heartbeat.commit = 3;
    let mut append = message(MessageType::MsgAppend, 2);
    (append.index, append.log_term, append.commit) = (LAST, 1, LAST);
    append.entries = vec![Entry {
        index: LAST + 1,
        term: 2,
        data: b"entry".to_vec(),
        ..Default::default()
    }];
    let mut vote = message(MessageType::MsgRequestPreVote, 3);
    (vote.index, vote.log_term) = (LAST, 1);
    let mut acknowledged = message(MessageType::MsgAppendResponse, 2);
    acknowledged.index = LAST + 1;
    let mut read = message(MessageType::MsgReadIndex, 0);
    read.entries = vec![Entry {
        data: b"read-1".to_vec(),
        ..Default::default()
    }];
    let mut granted = message(MessageType::MsgRequestVoteResponse, 2);
    granted.from = PEER + 1;
    vec![
        ("follower-heartbeat-append", encoded(0, &[heartbeat.clone(), append])),
        ("follower-pre-vote", encoded(0, &[heartbeat, vote])),
        ("leader-append-response-read", encoded(1, &[acknowledged, read])),
        ("candidate-vote-granted", encoded(2, &[granted])),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_screen_admits_every_seed_message() {
        let nodes = [follower, leader, candidate];
        for (name, seed) in seeds() {
            let mut raw = nodes[usize::from(seed[0])]();
            let admitted = step_admitted(&mut raw, &seed[1..]);
            assert_eq!(admitted, payloads(&seed[1..]).len(), "{name}");
        }
    }
}
