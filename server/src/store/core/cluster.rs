//! The store core's cluster side: publishing this member's attributes, the
//! membership MemberList reports, and leader transfer.

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
        if self.raw.raft.leader_id == raft::INVALID_ID || !self.publication.due(self.ticks, self.settings.retry_ticks) {
            return;
        }
        let attributes = MemberAttributes {
            member_id: self.settings.member_id,
            name: self.settings.member.name.clone(),
            client_urls: self.settings.member.client_urls.clone(),
        };
        let proposed = self.propose_entry(raft_request::Request::MemberAttributes(attributes));
        if let Err(error) = &proposed {
            tracing::debug!(%error, "publishing member attributes: will retry");
        }
        self.publication.attempted(self.ticks, proposed.ok());
    }

    pub(super) fn apply_member_attributes(&mut self, id: u64, attributes: &MemberAttributes) {
        if self.membership.set_attributes(attributes) {
            self.mvcc.set_membership(self.membership.encode());
            self.membership_changed();
            // Stored with the data: make the change durable soon.
            self.commits.note_change();
            tracing::info!(
                member_id = format_args!("{:x}", attributes.member_id),
                name = %attributes.name,
                client_urls = ?attributes.client_urls,
                "member attributes applied"
            );
        }
        self.publication.applied(id);
    }

    pub(super) fn member_list(&self) -> pb::MemberListResponse {
        pb::MemberListResponse {
            header: None,
            members: self.membership.to_pb(),
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
        // Answered when the target leads (`settle_leader_transfers`).
        let request_id = self.request_ids.next(|_| false) as u64;
        self.wait_for(request_id, client, call_id, super::Awaited::Leader { target });
    }
}
