//! What client calls on the store core wait for, and how each wait ends when
//! its time runs out: etcd's errors for a proposal, a forwarded lease call, a
//! promotion the leader was asked about, and a leader transfer.

use raft::INVALID_ID;

use super::pending::Waiting;
use super::StoreCore;
use crate::etcd_error::EtcdError;

/// What a waiting call waits for (see `pending`).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Awaited {
    /// Its proposed entry to be applied. A physical compaction then waits for
    /// its removal to be durable (`commit_pipeline`), with no deadline.
    Entry { physical_compaction: bool },
    /// The leader's answer to a lease call forwarded to it.
    LeaseAnswer,
    /// The leader's verdict on promoting learner `member_id`.
    PromoteVerdict { member_id: u64 },
    /// Member `target` to lead (MoveLeader).
    Leader { target: u64 },
}

impl Awaited {
    pub(super) fn is_entry(&self) -> bool {
        matches!(self, Awaited::Entry { .. })
    }
}

impl StoreCore {
    /// Registers call `call_id` of client core `client` as waiting under
    /// `request_id` for `awaited`, until the request timeout.
    pub(super) fn wait_for(&mut self, request_id: u64, client: usize, call_id: u64, awaited: Awaited) {
        let waiting = Waiting {
            client,
            call_id,
            deadline: self.now + self.settings.request_timeout,
            kind: awaited,
        };
        self.waiting.insert(request_id, waiting);
    }

    /// Answers every wait whose deadline has passed with its kind's error, as
    /// etcd does. A proposal's outcome is unknown to the client: the entry may
    /// still commit later (the error says so: "request timed out").
    pub(super) fn expire_waits(&mut self) {
        for (_, waiting) in self.waiting.take_expired(self.now) {
            let error = match waiting.kind {
                Awaited::Entry { .. } => {
                    self.metrics.proposals_failed += 1;
                    let proposed_at = waiting.deadline - self.settings.request_timeout;
                    if self.leader_changed_since > proposed_at {
                        EtcdError::TimeoutDueToLeaderFail
                    } else {
                        EtcdError::Timeout
                    }
                }
                Awaited::LeaseAnswer | Awaited::PromoteVerdict { .. } => EtcdError::Timeout,
                Awaited::Leader { .. } => EtcdError::TimeoutLeaderTransfer,
            };
            self.reply(waiting.client, waiting.call_id, Err(error));
        }
    }

    /// Answers MoveLeader calls whose target now leads.
    pub(super) fn settle_leader_transfers(&mut self) {
        let leader = self.raw.raft.leader_id;
        if leader == INVALID_ID {
            return;
        }
        for (_, waiting) in self
            .waiting
            .take_done(|awaited| *awaited == Awaited::Leader { target: leader })
        {
            let response = super::Response::MoveLeader(ringkv_proto::etcdserverpb::MoveLeaderResponse { header: None });
            self.reply(waiting.client, waiting.call_id, Ok(response));
        }
    }

    /// Calls waiting for the proposals in flight, as `/metrics` counts them.
    pub(super) fn proposals_pending(&self) -> usize {
        self.waiting.count(Awaited::is_entry)
    }
}
