//! Bytes and failed sends per peer, for etcd's `etcd_network_peer_*` series:
//! counted by the sender tasks and the receiving connections, which share the
//! store core's thread, and read by its shell at a scrape.

use std::cell::RefCell;
use std::collections::BTreeMap;

use crate::metrics::PeerTraffic;

/// Every peer's counts, by member id.
#[derive(Debug, Default)]
pub(super) struct Traffic(RefCell<BTreeMap<u64, PeerTraffic>>);

impl Traffic {
    fn with(&self, peer: u64, change: impl FnOnce(&mut PeerTraffic)) {
        let mut peers = self.0.borrow_mut();
        let counts = peers.entry(peer).or_insert(PeerTraffic {
            peer,
            ..PeerTraffic::default()
        });
        change(counts);
    }

    pub(super) fn sent(&self, to: u64, bytes: usize) {
        self.with(to, |counts| counts.sent_bytes += bytes as u64);
    }

    pub(super) fn received(&self, from: u64, bytes: usize) {
        self.with(from, |counts| counts.received_bytes += bytes as u64);
    }

    /// `messages` raft messages for `to` were not sent.
    pub(super) fn failed(&self, to: u64, messages: usize) {
        self.with(to, |counts| counts.sent_failures += messages as u64);
    }

    /// Only peers `keep` says are members keep their counts: the labels stay
    /// bounded by the membership.
    pub(super) fn retain(&self, keep: impl Fn(u64) -> bool) {
        self.0.borrow_mut().retain(|&peer, _| keep(peer));
    }

    pub(super) fn snapshot(&self) -> Vec<PeerTraffic> {
        self.0.borrow().values().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_by_peer_and_leave_with_the_peer() {
        let traffic = Traffic::default();
        traffic.sent(2, 100);
        traffic.sent(2, 20);
        traffic.received(3, 7);
        traffic.failed(2, 4);
        assert_eq!(
            traffic.snapshot(),
            vec![
                PeerTraffic {
                    peer: 2,
                    sent_bytes: 120,
                    received_bytes: 0,
                    sent_failures: 4
                },
                PeerTraffic {
                    peer: 3,
                    sent_bytes: 0,
                    received_bytes: 7,
                    sent_failures: 0
                },
            ]
        );
        traffic.retain(|peer| peer == 3);
        assert_eq!(traffic.snapshot().len(), 1);
    }
}
