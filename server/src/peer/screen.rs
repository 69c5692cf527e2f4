//! The raft screen: what a peer's raft message must look like before the store
//! core steps it.
//!
//! raft-rs 0.7 trusts its peers. Some messages a peer can send reach a
//! `panic!` or `fatal!` on the member that steps them, or bend raft's state so
//! that a later step, tick or Ready does (the raft-rs audit behind each rule is
//! in docs/architecture.md, "Peer transport"). Every rule here is an invariant
//! that a correct raft-rs 0.7 member running ringkv keeps in what it sends, so
//! a message that breaks one was never sent by such a member, and dropping it
//! loses nothing raft needs. A message with a term below this member's is
//! ignored by raft-rs (answered at most with this member's term), so the rules
//! that depend on this member's log apply only at its term or above.
//!
//! Forgery as such (a well-formed message under another member's id) is not
//! caught here: authenticating peers is mTLS's job.

use std::collections::HashSet;

use raft::eraftpb::{ConfState, EntryType, Message, MessageType};
use raft::{Raft, StateRole, Storage};

/// Highest term, and highest snapshot index, a message may carry. raft-rs adds
/// one to both (a candidate's next term, the first index after a snapshot)
/// without checking for overflow; this leaves 2^63 elections of room. A
/// cluster holding an election every millisecond would take 290 million years
/// to come near it.
pub const RAFT_TERM_MAX: u64 = u64::MAX >> 1;

/// Why a raft message from a peer is dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Dropped {
    #[error("unknown message type {0}")]
    UnknownType(i32),
    #[error("{0:?} is a member's own message, never sent to a peer")]
    LocalType(MessageType),
    #[error("from {from:x} to {to:x}, not from a peer to this member")]
    Misaddressed { from: u64, to: u64 },
    #[error("{kind:?} at term {term}")]
    Term { kind: MessageType, term: u64 },
    #[error("entry {index} of unknown type {entry_type}")]
    UnknownEntryType { index: u64, entry_type: i32 },
    #[error("{kind:?} with {count} entries")]
    EntryCount { kind: MessageType, count: usize },
    #[error("append after index {index}: {why}")]
    Append { index: u64, why: String },
    #[error("heartbeat commits index {commit}, past this member's last index {last_index}")]
    CommitPastLog { commit: u64, last_index: u64 },
    #[error("append response for index {index} (hint {hint}), past this leader's last index {last_index}")]
    ResponsePastLog { index: u64, hint: u64, last_index: u64 },
    #[error("asks for a snapshot at index {0}; ringkv members never do")]
    RequestSnapshot(u64),
    #[error("snapshot message: {0}")]
    Snapshot(String),
    #[error("{0:?} to a member that is not the leader")]
    NotLeader(MessageType),
}

/// Checks `message` from a peer against the raft node `raft` that is about to
/// step it; Ok if stepping it cannot stop this member.
pub fn check<S: Storage>(raft: &Raft<S>, message: &Message) -> Result<(), Dropped> {
    let kind = check_shape(raft.id, message)?;
    check_against_log(raft, kind, message)
}

/// Checks the MsgSnapshot at the end of a snapshot stream to `member_id`: the
/// only way a snapshot reaches raft (see `serve_peer`).
pub fn check_snapshot_message(member_id: u64, message: &Message) -> Result<(), Dropped> {
    match check_shape(member_id, message)? {
        MessageType::MsgSnapshot => Ok(()),
        kind => Err(Dropped::Snapshot(format!("a {kind:?} where a MsgSnapshot belongs"))),
    }
}

/// The rules that hold whatever this member's state.
fn check_shape(member_id: u64, message: &Message) -> Result<MessageType, Dropped> {
    // raft-rs's `get_msg_type` panics on a value the enum lacks.
    let kind = MessageType::from_i32(message.msg_type).ok_or(Dropped::UnknownType(message.msg_type))?;
    if is_local(kind) {
        return Err(Dropped::LocalType(kind));
    }
    // raft-rs reads a message from 0 or from itself as its own (a MsgReadIndex
    // from either is answered from `entries[0]` without a check).
    if message.from == 0 || message.from == member_id || message.to != member_id {
        return Err(Dropped::Misaddressed {
            from: message.from,
            to: message.to,
        });
    }
    check_term(kind, message.term)?;
    // raft-rs's `get_entry_type` panics on a value the enum lacks, and the WAL
    // stores the type in a byte. (What an entry holds is apply's to judge: it
    // skips what it cannot apply, see `store::entry`.)
    if let Some(entry) = message
        .entries
        .iter()
        .find(|entry| EntryType::from_i32(entry.entry_type).is_none())
    {
        return Err(Dropped::UnknownEntryType {
            index: entry.index,
            entry_type: entry.entry_type,
        });
    }
    let count = message.entries.len();
    match kind {
        // A leader stepping an empty MsgPropose is `fatal!("stepped empty MsgProp")`.
        MessageType::MsgPropose if count == 0 => Err(Dropped::EntryCount { kind, count }),
        // A leader takes a read's context from `entries[0]` unchecked; a
        // follower drops a response without exactly one.
        MessageType::MsgReadIndex | MessageType::MsgReadIndexResp if count != 1 => {
            Err(Dropped::EntryCount { kind, count })
        }
        MessageType::MsgAppend => check_append(message),
        MessageType::MsgSnapshot => check_snapshot(message),
        // A leader keeps trying to send the snapshot asked for and sends that
        // follower nothing else meanwhile; ringkv never calls `request_snapshot`.
        MessageType::MsgAppendResponse if message.request_snapshot != 0 => {
            Err(Dropped::RequestSnapshot(message.request_snapshot))
        }
        _ => Ok(()),
    }
    .map(|()| kind)
}

/// raft-rs's `is_local_msg`: types a member steps into itself.
fn is_local(kind: MessageType) -> bool {
    matches!(
        kind,
        MessageType::MsgHup
            | MessageType::MsgBeat
            | MessageType::MsgUnreachable
            | MessageType::MsgSnapStatus
            | MessageType::MsgCheckQuorum
    )
}

/// raft-rs sends proposals and read requests to the leader without a term, and
/// every other message with the sender's term, which is at least 1. It treats
/// term 0 as "local": no term check at all. A candidate stepping a MsgAppend,
/// MsgHeartbeat or MsgSnapshot of term 0 follows term 0 (a `debug_assert!` in
/// debug builds, the term going back in release ones: the WAL's hard state
/// refuses that); a follower stepping a MsgReadIndexResp of term 0 commits its
/// index unchecked (`fatal!` past the last index). A term near `u64::MAX`
/// overflows at the next election.
fn check_term(kind: MessageType, term: u64) -> Result<(), Dropped> {
    let valid = match kind {
        MessageType::MsgPropose | MessageType::MsgReadIndex => term == 0,
        _ => (1..=RAFT_TERM_MAX).contains(&term),
    };
    if valid {
        Ok(())
    } else {
        Err(Dropped::Term { kind, term })
    }
}

/// A leader's append carries entries that follow `index` one by one, with
/// terms that never go back (from the term at `index`) and never pass the
/// leader's. raft-rs assumes all of it: entries that skip an index are sliced
/// out of range (a panic), an entry at or below the commit index that differs
/// is `fatal!("entry conflicts with committed entry")`, and a log with a hole
/// fails the raft log's own checks once written.
fn check_append(message: &Message) -> Result<(), Dropped> {
    let refuse = |why: String| {
        Err(Dropped::Append {
            index: message.index,
            why,
        })
    };
    if message.log_term > message.term {
        return refuse(format!(
            "log term {} past the message's term {}",
            message.log_term, message.term
        ));
    }
    let mut previous_term = message.log_term;
    for (offset, entry) in (1u64..).zip(&message.entries) {
        let Some(expected) = message.index.checked_add(offset) else {
            return refuse("entry indexes overflow".to_string());
        };
        if entry.index != expected {
            return refuse(format!("entry at index {} where {expected} follows", entry.index));
        }
        if entry.term < previous_term || entry.term > message.term {
            return refuse(format!(
                "entry {} of term {} after term {previous_term}, in a message of term {}",
                entry.index, entry.term, message.term
            ));
        }
        previous_term = entry.term;
    }
    Ok(())
}

/// A leader's snapshot has an index and a term (at most the leader's), and a
/// configuration raft-rs can restore. raft-rs restores without checking: a
/// snapshot of term 0 past the last index "matches" (terms past the log read as
/// 0) and its index is committed (`fatal!` past the last index); a
/// configuration that does not restore to itself is `fatal!("unable to restore
/// config")` or `fatal!("invalid restore")`. ringkv changes the configuration
/// one member at a time, never through a joint configuration.
fn check_snapshot(message: &Message) -> Result<(), Dropped> {
    let refuse = |why: String| Err(Dropped::Snapshot(why));
    let Some(metadata) = message
        .snapshot
        .as_ref()
        .and_then(|snapshot| snapshot.metadata.as_ref())
    else {
        return refuse("no snapshot metadata".to_string());
    };
    if !(1..=RAFT_TERM_MAX).contains(&metadata.index) || !(1..=message.term).contains(&metadata.term) {
        return refuse(format!(
            "index {} and term {} in a message of term {}",
            metadata.index, metadata.term, message.term
        ));
    }
    let Some(conf_state) = &metadata.conf_state else {
        return refuse("no configuration".to_string());
    };
    check_conf_state(conf_state).or_else(|why| refuse(format!("configuration {conf_state:?}: {why}")))
}

fn check_conf_state(conf_state: &ConfState) -> Result<(), String> {
    if conf_state.voters.is_empty() {
        return Err("no voters".to_string());
    }
    if !conf_state.voters_outgoing.is_empty() || !conf_state.learners_next.is_empty() || conf_state.auto_leave {
        return Err("a joint configuration".to_string());
    }
    let mut seen = HashSet::new();
    for id in conf_state.voters.iter().chain(&conf_state.learners) {
        if *id == 0 || !seen.insert(*id) {
            return Err(format!("member {id:x} is not one distinct member"));
        }
    }
    Ok(())
}

/// The rules that depend on this member's log, for messages raft-rs acts on.
fn check_against_log<S: Storage>(raft: &Raft<S>, kind: MessageType, message: &Message) -> Result<(), Dropped> {
    if message.term != 0 && message.term < raft.term {
        return Ok(());
    }
    let last_index = raft.raft_log.last_index();
    match kind {
        // A leader sends min(the follower's match, its commit index), never
        // past the follower's log; raft-rs commits it unchecked
        // (`fatal!("to_commit is out of range")`).
        MessageType::MsgHeartbeat if message.commit > last_index => Err(Dropped::CommitPastLog {
            commit: message.commit,
            last_index,
        }),
        // A follower answers this leader's appends of this term, which end at
        // or before the leader's last index. raft-rs takes the index as the
        // follower's match unchecked: the leader then sends that follower no
        // entries, only heartbeats whose commit may pass its log (see above),
        // and an index of u64::MAX overflows.
        MessageType::MsgAppendResponse
            if raft.state == StateRole::Leader
                && message.term == raft.term
                && (message.index > last_index || (message.reject && message.reject_hint > last_index)) =>
        {
            Err(Dropped::ResponsePastLog {
                index: message.index,
                hint: message.reject_hint,
                last_index,
            })
        }
        // A follower forwards a leader transfer to the leader it knows, term
        // and all, and raft-rs's `send` refuses a set term on one (`fatal!("term
        // should not be set when sending MsgTransferLeader")`): only the leader
        // may step one. (Honest peers hit this too: a transfer forwarded to a
        // member that has just stepped down.)
        MessageType::MsgTransferLeader if raft.state != StateRole::Leader => Err(Dropped::NotLeader(kind)),
        _ => Ok(()),
    }
}

#[cfg(test)]
#[path = "screen_tests.rs"]
mod tests;
