//! Raft snapshots' way through the store core, as state (the steps are in
//! `snapshots`): MsgSnapshots due to be sent, the stream to each peer and the
//! commit it reads, the page-store commits pinned (by streams and by Snapshot
//! calls), and a snapshot from the leader being installed.

use std::collections::HashMap;

use raft::eraftpb::{Entry, Message as RaftMessage, SnapshotMetadata};

/// A snapshot from the leader whose WAL record is being made durable.
pub(super) struct Install {
    pub metadata: SnapshotMetadata,
    /// Committed entries after the snapshot that came with its Ready.
    pub committed: Vec<Entry>,
}

/// Which page store a released pin was taken in.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum PinnedIn {
    /// The store in use: unpin the commit there.
    Current,
    /// A store an installed snapshot replaced: nothing left to unpin.
    Replaced,
}

#[derive(Default)]
pub(super) struct SnapshotFlow {
    /// MsgSnapshots waiting for a moment between page-store commits.
    due: Vec<RaftMessage>,
    /// Peer → the pinned commit a snapshot is streaming to it from.
    sending: HashMap<u64, u64>,
    /// Commits pinned in the page store in use, once per pin.
    pinned: Vec<u64>,
    /// Pins taken in page stores an installed snapshot replaced.
    pinned_in_replaced: Vec<u64>,
    installing: Option<Install>,
}

impl SnapshotFlow {
    /// A MsgSnapshot raft wants sent, once no commit is in flight.
    pub fn queue(&mut self, message: RaftMessage) {
        self.due.push(message);
    }

    pub fn has_due(&self) -> bool {
        !self.due.is_empty()
    }

    pub fn take_due(&mut self) -> Vec<RaftMessage> {
        std::mem::take(&mut self.due)
    }

    /// One stream per peer: raft waits for the report of the one in flight
    /// before it asks again.
    pub fn sending_to(&self, peer: u64) -> bool {
        self.sending.contains_key(&peer)
    }

    /// A stream to `peer` from pinned commit `txid` started.
    pub fn started(&mut self, peer: u64, txid: u64) {
        assert!(self.sending.insert(peer, txid).is_none(), "one stream per peer");
    }

    /// The stream to `peer` from `txid` ended (its pin is to be released).
    pub fn ended(&mut self, peer: u64, txid: u64) {
        assert_eq!(self.sending.remove(&peer), Some(txid), "one stream per peer");
    }

    /// Commit `txid` is pinned in the store in use.
    pub fn pinned(&mut self, txid: u64) {
        self.pinned.push(txid);
    }

    /// A pin of `txid` is released. When a txid is pinned in both a replaced
    /// store and the current one, the replaced one's goes first, which holds
    /// the current store's pages longer, never shorter.
    pub fn release(&mut self, txid: u64) -> PinnedIn {
        if let Some(at) = self.pinned_in_replaced.iter().position(|&pin| pin == txid) {
            self.pinned_in_replaced.swap_remove(at);
            return PinnedIn::Replaced;
        }
        let at = self
            .pinned
            .iter()
            .position(|&pin| pin == txid)
            .unwrap_or_else(|| panic!("commit {txid} released but not pinned"));
        self.pinned.swap_remove(at);
        PinnedIn::Current
    }

    /// True from the moment the snapshot's Ready is handed to the WAL until
    /// it is installed.
    pub fn installing(&self) -> bool {
        self.installing.is_some()
    }

    pub fn begin_install(&mut self, metadata: SnapshotMetadata) {
        assert!(self.installing.is_none(), "one install at a time");
        self.installing = Some(Install {
            metadata,
            committed: Vec::new(),
        });
    }

    /// Committed entries that came with the install's Ready: applied on the
    /// new store. None: no install is in progress.
    pub fn hold_back(&mut self, committed: Vec<Entry>) -> Option<Vec<Entry>> {
        match &mut self.installing {
            Some(install) => {
                install.committed = committed;
                None
            }
            None => Some(committed),
        }
    }

    /// The install whose WAL record is now durable, if any.
    pub fn take_install(&mut self) -> Option<Install> {
        self.installing.take()
    }

    /// The page store was replaced: its pins are released by their holders
    /// later, with nothing left to unpin.
    pub fn store_replaced(&mut self) {
        self.pinned_in_replaced.append(&mut self.pinned);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_of_a_replaced_store_is_released_first() {
        let mut flow = SnapshotFlow::default();
        flow.pinned(5);
        flow.store_replaced();
        flow.pinned(5);
        assert_eq!(flow.release(5), PinnedIn::Replaced);
        assert_eq!(flow.release(5), PinnedIn::Current);
    }

    #[test]
    #[should_panic(expected = "released but not pinned")]
    fn a_pin_is_released_once() {
        let mut flow = SnapshotFlow::default();
        flow.pinned(5);
        flow.release(5);
        flow.release(5);
    }

    #[test]
    fn one_stream_per_peer() {
        let mut flow = SnapshotFlow::default();
        flow.started(2, 7);
        assert!(flow.sending_to(2));
        assert!(!flow.sending_to(3));
        flow.ended(2, 7);
        assert!(!flow.sending_to(2));
    }

    #[test]
    fn entries_committed_with_an_install_wait_for_it() {
        let mut flow = SnapshotFlow::default();
        let entry = Entry {
            index: 9,
            ..Default::default()
        };
        assert_eq!(flow.hold_back(vec![entry.clone()]), Some(vec![entry.clone()]));
        flow.begin_install(SnapshotMetadata {
            index: 8,
            ..Default::default()
        });
        assert!(flow.installing());
        assert_eq!(flow.hold_back(vec![entry.clone()]), None);
        let install = flow.take_install().expect("installing");
        assert_eq!(install.metadata.index, 8);
        assert_eq!(install.committed, vec![entry]);
        assert!(!flow.installing());
    }
}
