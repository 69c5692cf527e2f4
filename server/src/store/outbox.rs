//! What the store core asks of the world, as messages: the core never holds a
//! channel, a socket, a file or a clock. After each event (and each `drive`)
//! whoever runs the core takes the effects, in order, and carries them out:
//! the glommio shell (`store::run`) with the WAL task, blocking threads, the
//! peer transport and the client cores' channels; a test with simulated disks
//! and a simulated network. What comes of an effect comes back as an `Event`.

use std::time::Duration;

use raft::eraftpb::Message as RaftMessage;
use ringkv_engine::mvcc::{CommitPlan, SnapshotSource};
use ringkv_proto::ringkvpb;

use super::messages::Reply;
use super::wal_io::WalJob;
use crate::peer::PeerMessage;
use crate::watch::WatchPush;

/// One thing the store core asks for.
pub enum Effect {
    /// Work for the WAL, done strictly in order; a Persist is answered by
    /// `Event::Persisted` (or `PersistNoSpace`), a Release by `Event::Released`.
    Wal(WalJob),
    /// A page-store commit's writes and fsyncs, off the core; answered by
    /// `Event::Committed`. At most one is in flight.
    Commit(CommitPlan),
    /// The answer to call `reply.id` of client core `client`.
    Reply { client: usize, reply: Reply },
    /// Watch notices for client core `client`.
    WatchPush { client: usize, push: WatchPush },
    /// Raft messages for peers (never a MsgSnapshot: see `SendSnapshot`).
    /// Lost ones are reported as `PeerEvent::Unreachable`.
    Raft(Vec<RaftMessage>),
    /// A message of ringkv's own for peer `to`; one that cannot be queued
    /// comes back as `PeerEvent::Undelivered`.
    ToPeer { to: u64, message: PeerMessage },
    /// Stream the pinned commit `source` to peer `to`, with `message` (its
    /// MsgSnapshot) at the end; answered by `PeerEvent::SnapshotSent`.
    SendSnapshot {
        to: u64,
        message: RaftMessage,
        source: SnapshotSource,
    },
    /// Connect to exactly these peers (id, peer URLs), and answer membership
    /// queries on the peer port with `membership`.
    Peers {
        peers: Vec<(u64, Vec<String>)>,
        membership: ringkvpb::Membership,
    },
    /// Ask each of `peers` (id, peer URLs) for its HashKV at `revision`,
    /// within `timeout` each (a corruption check); answered by
    /// `PeerEvent::HashKvAnswers` with `check`.
    AskHashKvs {
        check: u64,
        revision: i64,
        peers: Vec<(u64, Vec<String>)>,
        timeout: Duration,
    },
    /// The answer to a peer's HashKV query `query` (`PeerEvent::HashKvAsked`).
    AnswerHashKv { query: u64, answer: ringkvpb::HashKvAnswer },
    /// This member applied its own removal and its stop delay has passed.
    Stop,
}

/// The effects one event produced, in the order they were asked for.
#[derive(Default)]
pub struct Outbox {
    effects: Vec<Effect>,
}

impl Outbox {
    pub fn push(&mut self, effect: Effect) {
        self.effects.push(effect);
    }

    pub fn take(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }
}
