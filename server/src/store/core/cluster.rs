//! The store core's cluster side: publishing this member's attributes, the
//! membership MemberList reports, proposal timeouts, and leader transfer.

use std::time::Instant;

use raft::StateRole;
use ringkv_proto::etcdserverpb as pb;
use ringkv_proto::ringkvpb::{raft_request, MemberAttributes};

use super::StoreCore;
use crate::etcd_error::EtcdError;

impl StoreCore {
    /// etcd's `publish`: once there is a leader, propose this member's name and
    /// client URLs, every start, until an applied entry holds them; clients are
    /// let in only then, as etcd's `ReadyNotify` waits for the publish. Retried
    /// every few ticks (a proposal may be lost with a leader change).
    pub(super) fn publish_attributes(&mut self) {
        if self.attributes_published || self.raw.raft.leader_id == raft::INVALID_ID {
            return;
        }
        if let Some(attempted) = self.publish_attempted_at {
            if self.ticks < attempted + self.settings.retry_ticks {
                return; // one attempt in flight is enough
            }
        }
        self.publish_attempted_at = Some(self.ticks);
        let attributes = MemberAttributes {
            member_id: self.settings.member_id,
            name: self.settings.member.name.clone(),
            client_urls: self.settings.member.client_urls.clone(),
        };
        match self.propose_entry(raft_request::Request::MemberAttributes(attributes)) {
            Ok(id) => self.publish_ids.push(id),
            Err(error) => tracing::debug!(%error, "publishing member attributes: will retry"),
        }
    }

    pub(super) fn apply_member_attributes(&mut self, id: u64, attributes: &MemberAttributes) {
        if self.membership.set_attributes(attributes) {
            self.mvcc.set_membership(self.membership.encode());
            self.transport.set_membership(self.membership.to_stored());
            // Stored with the data: make the change durable soon.
            self.applied_since_commit += 1;
            tracing::info!(
                member_id = format_args!("{:x}", attributes.member_id),
                name = %attributes.name,
                client_urls = ?attributes.client_urls,
                "member attributes applied"
            );
        }
        if self.publish_ids.contains(&id) {
            self.attributes_published = true;
            self.publish_ids = Vec::new();
        }
    }

    pub(super) fn member_list(&self) -> pb::MemberListResponse {
        pb::MemberListResponse {
            header: None,
            members: self.membership.to_pb(),
        }
    }

    /// Answers proposals that were not applied within the request timeout, as
    /// etcd does. Their outcome is unknown to the client: the entry may still
    /// commit later (the error says so: "request timed out").
    pub(super) fn expire_proposals(&mut self) {
        let now = Instant::now();
        while let Some(&(deadline, id)) = self.proposal_deadlines.front() {
            if deadline > now {
                break;
            }
            self.proposal_deadlines.pop_front();
            let Some(waiter) = self.waiters.remove(&id) else {
                continue; // applied in time
            };
            let proposed_at = deadline - self.settings.request_timeout;
            let error = if self.leader_changed_since > proposed_at {
                EtcdError::TimeoutDueToLeaderFail
            } else {
                EtcdError::Timeout
            };
            self.metrics.proposals_failed += 1;
            self.reply(waiter.client, waiter.call_id, Err(error));
        }
    }

    /// etcd's MoveLeader: only the leader transfers, only to a voting member.
    /// Answered once the target leads, or with etcd's timeout error.
    pub(super) fn move_leader(&mut self, client: usize, call_id: u64, request: &pb::MoveLeaderRequest) {
        if self.raw.raft.state != StateRole::Leader {
            self.reply(client, call_id, Err(EtcdError::NotLeader));
            return;
        }
        let target = request.target_id;
        if !self.membership.voter_ids().contains(&target) {
            self.reply(client, call_id, Err(EtcdError::BadLeaderTransferee));
            return;
        }
        if target == self.settings.member_id {
            let response = super::Response::MoveLeader(pb::MoveLeaderResponse { header: None });
            self.reply(client, call_id, Ok(response));
            return;
        }
        tracing::info!(target = format_args!("{target:x}"), "transferring leadership");
        self.raw.transfer_leader(target);
        self.leader_transfers.push(super::LeaderTransfer {
            client,
            call_id,
            target,
            deadline: Instant::now() + self.settings.request_timeout,
        });
    }

    /// Answers MoveLeader calls whose target now leads or whose time ran out.
    pub(super) fn settle_leader_transfers(&mut self) {
        let leader = self.raw.raft.leader_id;
        let now = Instant::now();
        for transfer in std::mem::take(&mut self.leader_transfers) {
            if leader == transfer.target {
                let response = super::Response::MoveLeader(pb::MoveLeaderResponse { header: None });
                self.reply(transfer.client, transfer.call_id, Ok(response));
            } else if now >= transfer.deadline {
                self.reply(transfer.client, transfer.call_id, Err(EtcdError::TimeoutLeaderTransfer));
            } else {
                self.leader_transfers.push(transfer);
            }
        }
    }
}
