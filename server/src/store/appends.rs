//! Joins a Ready's consecutive appends to one follower into one message.
//!
//! In the replicate state a raft-rs leader sends each follower an append for
//! every proposal it steps, without waiting, so a pass of the store core that
//! takes many proposals hands its Ready one MsgAppend per proposal per
//! follower, and each follower answers each one. Appends to one follower that
//! follow each other are continuous (each starts where the one before ended),
//! so they join into one message holding all their entries and the latest
//! commit index: the follower answers it once, and the leader's progress
//! already counts every entry as sent. raft-rs's own `batch_append` joins them
//! with no bound on the size; here a joined append holds at most `bytes_max`
//! of entries, as raft's own appends do (`max_size_per_msg`), so its frame
//! stays one the peer accepts.

use prost::Message as _;
use raft::eraftpb::{Message, MessageType};

/// `messages` with each append joined into the one before it to the same
/// follower, when that one is an append it continues and the two hold at most
/// `bytes_max` of entries. Every other message keeps its place, and so does
/// the order of the messages to each peer.
pub fn join_appends(messages: Vec<Message>, bytes_max: usize) -> Vec<Message> {
    let mut joined: Vec<Message> = Vec::with_capacity(messages.len());
    // Per peer: where its latest message is in `joined`, and that message's entry bytes.
    let mut latest: Vec<Latest> = Vec::new();
    for message in messages {
        let bytes = entry_bytes(&message);
        let seen = latest.iter().position(|latest| latest.to == message.to);
        if let Some(seen) = seen {
            let Latest { at, bytes: held, .. } = &mut latest[seen];
            let previous = &mut joined[*at];
            if continues(previous, &message) && *held + bytes <= bytes_max {
                previous.commit = previous.commit.max(message.commit);
                previous.entries.extend(message.entries);
                *held += bytes;
                continue;
            }
        }
        let this = Latest {
            to: message.to,
            at: joined.len(),
            bytes,
        };
        match seen {
            Some(seen) => latest[seen] = this,
            None => latest.push(this),
        }
        joined.push(message);
    }
    joined
}

struct Latest {
    to: u64,
    at: usize,
    bytes: usize,
}

/// Whether `next` continues `previous`: appends with entries, of one term and
/// one leader, `next` starting right after `previous`'s last entry.
fn continues(previous: &Message, next: &Message) -> bool {
    let carries_entries =
        |message: &Message| message.get_msg_type() == MessageType::MsgAppend && !message.entries.is_empty();
    let Some(last) = previous.entries.last() else {
        return false;
    };
    carries_entries(previous)
        && carries_entries(next)
        && previous.term == next.term
        && previous.from == next.from
        && next.index == last.index
        && next.log_term == last.term
}

fn entry_bytes(message: &Message) -> usize {
    message.entries.iter().map(|entry| entry.encoded_len()).sum()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use raft::eraftpb::Entry;

    use super::*;

    const LEADER: u64 = 1;

    fn entry(index: u64, term: u64, bytes: usize) -> Entry {
        Entry {
            index,
            term,
            data: vec![7; bytes],
            ..Default::default()
        }
    }

    /// A message of `kind` from the leader, in its term, to `to`.
    fn from_leader(kind: MessageType, to: u64) -> Message {
        let mut message = Message {
            to,
            from: LEADER,
            term: 2,
            ..Default::default()
        };
        message.set_msg_type(kind);
        message
    }

    /// An append to `to` after `(index, log_term)` carrying `entries`.
    fn append(to: u64, index: u64, log_term: u64, entries: Vec<Entry>, commit: u64) -> Message {
        Message {
            index,
            log_term,
            commit,
            entries,
            ..from_leader(MessageType::MsgAppend, to)
        }
    }

    fn heartbeat(to: u64) -> Message {
        from_leader(MessageType::MsgHeartbeat, to)
    }

    fn indexes(message: &Message) -> Vec<u64> {
        message.entries.iter().map(|entry| entry.index).collect()
    }

    #[test]
    fn one_append_per_proposal_becomes_one_per_follower() {
        let messages = vec![
            append(2, 10, 2, vec![entry(11, 2, 100)], 9),
            append(3, 10, 2, vec![entry(11, 2, 100)], 9),
            append(2, 11, 2, vec![entry(12, 2, 100)], 10),
            append(3, 11, 2, vec![entry(12, 2, 100)], 10),
            append(2, 12, 2, vec![entry(13, 2, 100)], 10),
        ];
        let joined = join_appends(messages, 1 << 20);
        assert_eq!(joined.len(), 2);
        assert_eq!((joined[0].to, joined[0].index, joined[0].log_term), (2, 10, 2));
        assert_eq!(indexes(&joined[0]), vec![11, 12, 13]);
        assert_eq!(joined[0].commit, 10);
        assert_eq!(joined[1].to, 3);
        assert_eq!(indexes(&joined[1]), vec![11, 12]);
    }

    #[test]
    fn appends_that_do_not_continue_or_would_be_too_large_stay_apart() {
        let messages = vec![
            append(2, 10, 2, vec![entry(11, 2, 100)], 9),
            // A gap: not the entry after 11.
            append(2, 12, 2, vec![entry(13, 2, 100)], 9),
            // The previous term does not match the last entry's.
            append(2, 13, 1, vec![entry(14, 2, 100)], 9),
            // Too large to join.
            append(2, 14, 2, vec![entry(15, 2, 2000)], 9),
            // An empty append (a commit update) is not joined.
            append(2, 15, 2, Vec::new(), 15),
        ];
        let joined = join_appends(messages.clone(), 1000);
        assert_eq!(joined, messages);
    }

    #[test]
    fn another_message_between_two_appends_keeps_them_apart() {
        let messages = vec![
            append(2, 10, 2, vec![entry(11, 2, 100)], 9),
            heartbeat(2),
            append(2, 11, 2, vec![entry(12, 2, 100)], 9),
            // Messages to another peer in between do not matter.
            heartbeat(3),
            append(2, 12, 2, vec![entry(13, 2, 100)], 9),
        ];
        let joined = join_appends(messages, 1 << 20);
        let kinds: Vec<_> = joined.iter().map(|m| (m.to, m.get_msg_type())).collect();
        assert_eq!(
            kinds,
            vec![
                (2, MessageType::MsgAppend),
                (2, MessageType::MsgHeartbeat),
                (2, MessageType::MsgAppend),
                (3, MessageType::MsgHeartbeat),
            ]
        );
        assert_eq!(indexes(&joined[2]), vec![12, 13]);
    }

    /// Appends to a few followers, as a leader makes them: each follower's
    /// appends continue one another, entries of varied sizes.
    fn leader_messages() -> impl Strategy<Value = Vec<Message>> {
        prop::collection::vec((2u64..5, 1usize..4, 0usize..600, any::<bool>()), 0..40).prop_map(|steps| {
            let mut next = [0u64, 0, 10, 20, 30];
            let mut messages = Vec::new();
            for (to, count, bytes, beat) in steps {
                if beat {
                    messages.push(heartbeat(to));
                    continue;
                }
                let follower = to as usize;
                let start = next[follower];
                let entries = (1..=count as u64).map(|i| entry(start + i, 2, bytes)).collect();
                messages.push(append(to, start, 2, entries, start));
                next[follower] = start + count as u64;
            }
            messages
        })
    }

    proptest! {
        /// Each peer is sent the same entries in the same order, every joined
        /// append within the bound unless it was a single message already, and
        /// nothing but appends changes.
        #[test]
        fn each_peer_gets_the_same_entries_in_order(messages in leader_messages(), bytes_max in 0usize..3000) {
            let joined = join_appends(messages.clone(), bytes_max);
            for to in 2..5 {
                let sent = |messages: &[Message]| -> Vec<(MessageType, Vec<u64>)> {
                    messages.iter().filter(|m| m.to == to).map(|m| (m.get_msg_type(), indexes(m))).collect()
                };
                let flatten = |list: Vec<(MessageType, Vec<u64>)>| -> Vec<u64> {
                    list.into_iter().flat_map(|(_, indexes)| indexes).collect()
                };
                prop_assert_eq!(flatten(sent(&messages)), flatten(sent(&joined)));
                let beats = |list: &[Message]| list.iter().filter(|m| m.to == to && m.get_msg_type() == MessageType::MsgHeartbeat).count();
                prop_assert_eq!(beats(&messages), beats(&joined));
            }
            for message in &joined {
                if message.get_msg_type() == MessageType::MsgAppend {
                    for (expected, entry) in (message.index + 1..).zip(message.entries.iter()) {
                        prop_assert_eq!(entry.index, expected);
                    }
                    let alone = messages.iter().any(|m| m == message);
                    prop_assert!(alone || entry_bytes(message) <= bytes_max);
                }
            }
        }
    }
}
