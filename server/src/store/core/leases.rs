//! The store core's lease calls: Grant and Revoke go through raft like any write;
//! KeepAlive and TimeToLive are answered by the leader from the applied leases
//! and its [`LeaseClock`] (a follower forwards them to the leader over the peer
//! transport, as etcd's followers do); the leader renews only after a
//! ReadIndex round (`keep_alive`). A new leader keeps time for leases only
//! once it has applied its first entry. Leases is answered by any member;
//! expired leases are revoked by proposing a Revoke.
//!
//! Only a member that raft says leads keeps time: the lease clock follows
//! raft's role at the next Ready, and events handled before it (a message from
//! a newer leader, then a tick) must not renew or expire anything meanwhile.

use std::time::Instant;

use raft::StateRole;

use ringkv_proto::etcdserverpb as pb;
use ringkv_proto::ringkvpb::{
    lease_forward, lease_forward_reply, raft_request, AuthHeader, LeaseForward, LeaseForwardReply,
};

use super::super::lease_clock::{KeepAliveFrom, Renewal, EXPIRED_REVOKES_PER_CHECK_MAX};
use super::super::reads::AwaitingReadIndex;
use super::Effect;
use super::{Awaited, StoreCore};
use crate::apply::{self, ApplyError};
use crate::auth::ROOT_USER;
use crate::etcd_error::EtcdError;
use crate::peer::PeerMessage;
use crate::store::messages::Response;

/// KeepAlives waiting for a ReadIndex on the leader at once, at most; more
/// are refused with etcd's "too many requests" (a forwarded one is dropped).
/// Each waits for one heartbeat round, so a leader holds far fewer.
const KEEP_ALIVES_WAITING_MAX: usize = 4096;

impl StoreCore {
    /// LeaseGrant with id 0 gets a server-chosen id before proposing, so that
    /// applying the entry is deterministic.
    pub(super) fn grant_lease(&mut self, client: usize, call_id: u64, mut grant: pb::LeaseGrantRequest) {
        if grant.id == 0 {
            let leases = self.mvcc.leases();
            grant.id = self.lease_ids.next(|id| leases.contains(id));
        }
        self.propose(client, call_id, raft_request::Request::LeaseGrant(grant));
    }

    pub(super) fn apply_lease_grant(&mut self, grant: &pb::LeaseGrantRequest) -> Result<Response, ApplyError> {
        let response = apply::lease::grant(&mut self.mvcc, grant, self.settings.min_lease_ttl_seconds)?;
        self.lease_clock.granted(self.now, response.id, response.ttl);
        Ok(Response::LeaseGrant(response))
    }

    /// Applies entry `entry_id`, a revoke of lease `revoke.id`.
    pub(super) fn apply_lease_revoke(
        &mut self,
        entry_id: u64,
        revoke: &pb::LeaseRevokeRequest,
    ) -> Result<Response, ApplyError> {
        let result = self.write(|view| apply::lease::revoke(view, revoke).map(Response::LeaseRevoke));
        #[cfg(feature = "sim")]
        self.lease_audit.push(LeaseAudit::RevokeApplied {
            lease: revoke.id,
            entry_id,
            removed: result.is_ok(),
        });
        #[cfg(not(feature = "sim"))]
        let _ = entry_id;
        // Whether this revoke or an earlier one removed it, the lease is gone now.
        for parked in self.lease_clock.revoked(revoke.id) {
            self.answer_keep_alive(parked, revoke.id, Some(0));
        }
        result
    }

    /// Whether this member keeps time for leases: its lease clock leads, and
    /// raft still says it leads (see the module's note).
    fn leads_leases(&self) -> bool {
        self.lease_clock.is_leading() && self.raw.raft.state == StateRole::Leader
    }

    pub(super) fn keep_lease_alive(&mut self, client: usize, call_id: u64, request: pb::LeaseKeepAliveRequest) {
        self.keep_alive(KeepAliveFrom::Client { client, call_id }, request.id);
    }

    /// etcd's `LeaseRenew` with its `ensureLeadership` and
    /// `waitAppliedIndex`: the leader renews lease `id` once a ReadIndex asked
    /// after the KeepAlive came confirms that it still leads, and it has
    /// applied what was committed then (`keep_alive_confirmed`); a follower
    /// forwards a client's KeepAlive to the leader. Without the round, a
    /// leader cut off from the others, or paused, and already replaced,
    /// would renew a lease the new leader expires on its own deadline, or
    /// call a lease granted since unknown; and one just elected, or whose
    /// last entries are committed but not applied, would answer from the
    /// state before a grant or a revoke. (etcd asks for the round only when
    /// its raft loop has not ticked for three ticks: a paused leader, not a
    /// cut-off one.) A leader whose WAL has no room cannot run the round (it
    /// comes with a Ready) and renews at once, as no revoke can be proposed
    /// then either.
    fn keep_alive(&mut self, from: KeepAliveFrom, id: i64) {
        if self.raw.raft.state != StateRole::Leader {
            return self.keep_alive_elsewhere(from, id);
        }
        if self.disk_full.wal_stuck() {
            return self.keep_alive_confirmed(from, id);
        }
        if self.reads.keep_alives() >= KEEP_ALIVES_WAITING_MAX {
            // A forwarded one is dropped: the follower's call times out.
            if let KeepAliveFrom::Client { client, call_id } = from {
                self.reply(client, call_id, Err(EtcdError::TooManyRequests));
            }
            return;
        }
        self.reads.enqueue(AwaitingReadIndex::KeepAlive { from, lease: id });
    }

    /// A KeepAlive whose ReadIndex is applied: renewed if this member still
    /// leads, and keeps time for leases (see `empty_entry_applied`).
    pub(super) fn keep_alive_confirmed(&mut self, from: KeepAliveFrom, id: i64) {
        if self.leads_leases() {
            self.renew_for(from, id);
        } else {
            self.keep_alive_elsewhere(from, id);
        }
    }

    /// A KeepAlive this member does not renew: a client's goes to the leader,
    /// a follower's is told this member does not lead.
    fn keep_alive_elsewhere(&mut self, from: KeepAliveFrom, id: i64) {
        match from {
            KeepAliveFrom::Client { client, call_id } => {
                let request = pb::LeaseKeepAliveRequest { id };
                self.forward_lease_call(client, call_id, lease_forward::Request::KeepAlive(request));
            }
            KeepAliveFrom::Peer { .. } => self.answer_keep_alive(from, id, None),
        }
    }

    /// The leader renews lease `id` for `from`; a KeepAlive of an expiring
    /// lease waits for its revoke (see `Renewal::Expiring`).
    fn renew_for(&mut self, from: KeepAliveFrom, id: i64) {
        match self.renew_lease(id) {
            Some(ttl) => self.answer_keep_alive(from, id, Some(ttl)),
            None => self.lease_clock.park(id, from),
        }
    }

    /// Answers `from`'s KeepAlive of lease `id` with `ttl`, or (None) with
    /// "this member does not lead": etcd's "no leader" to a client.
    fn answer_keep_alive(&mut self, from: KeepAliveFrom, id: i64, ttl: Option<i64>) {
        let response = ttl.map(|ttl| pb::LeaseKeepAliveResponse { header: None, id, ttl });
        match from {
            KeepAliveFrom::Client { client, call_id } => {
                let result = response.map(Response::LeaseKeepAlive).ok_or(EtcdError::NoLeader);
                self.reply(client, call_id, result);
            }
            KeepAliveFrom::Peer { from, request_id } => {
                let result = match response {
                    Some(response) => lease_forward_reply::Result::KeepAlive(response),
                    None => lease_forward_reply::Result::NotLeader(true),
                };
                self.reply_to_forward(from, request_id, result);
            }
        }
    }

    /// The leader renews lease `id`: its full TTL, 0 for an unknown lease, or
    /// None for one past its deadline whose revoke is on the way.
    fn renew_lease(&mut self, id: i64) -> Option<i64> {
        let Some(ttl) = self.mvcc.leases().ttl(id) else {
            return Some(0);
        };
        match self.lease_clock.renew(self.now, id, ttl) {
            Renewal::Renewed(ttl) => Some(ttl),
            Renewal::Expiring => None,
            Renewal::NotLeader => unreachable!("only the leader renews"),
        }
    }

    /// etcd's `LeaseTimeToLive` on the leader; an unknown lease answers TTL -1.
    pub(super) fn lease_time_to_live(&self, request: &pb::LeaseTimeToLiveRequest) -> Result<Response, EtcdError> {
        if !self.mvcc.leases().contains(request.id) {
            return Ok(Response::LeaseTimeToLive(apply::lease::time_to_live_unknown(request)));
        }
        let remaining = self
            .lease_clock
            .remaining_seconds(self.now, request.id)
            .ok_or(EtcdError::NoLeader)?;
        Ok(Response::LeaseTimeToLive(apply::lease::time_to_live(
            &self.mvcc, request, remaining,
        )))
    }

    /// etcd's `LeaseLeases`: every lease, soonest expiry first (by id where
    /// this member keeps no time).
    pub(super) fn lease_list(&self) -> pb::LeaseLeasesResponse {
        let mut leases: Vec<(Option<Instant>, i64)> = self
            .mvcc
            .leases()
            .iter()
            .map(|(id, _)| (self.lease_clock.deadline(id), id))
            .collect();
        leases.sort_unstable();
        pb::LeaseLeasesResponse {
            header: None,
            leases: leases.into_iter().map(|(_, id)| pb::LeaseStatus { id }).collect(),
        }
    }

    /// LeaseTimeToLive: answered here when leading, else by the leader.
    pub(super) fn lease_time_to_live_call(&mut self, client: usize, call_id: u64, request: pb::LeaseTimeToLiveRequest) {
        if !self.leads_leases() {
            self.forward_lease_call(client, call_id, lease_forward::Request::TimeToLive(request));
            return;
        }
        let result = self.lease_time_to_live(&request);
        self.reply(client, call_id, result);
    }

    /// Sends a lease call to the leader; answered by `finish_lease_forward`, or
    /// by `expire_waits` if no answer comes within the request timeout.
    fn forward_lease_call(&mut self, client: usize, call_id: u64, request: lease_forward::Request) {
        let leader = self.raw.raft.leader_id;
        if leader == raft::INVALID_ID || leader == self.settings.member_id {
            // No leader, or this member just became one and keeps no time yet.
            self.reply(client, call_id, Err(EtcdError::NoLeader));
            return;
        }
        let request_id = self.request_ids.next(|_| false) as u64;
        let forward = LeaseForward {
            request_id,
            request: Some(request),
        };
        let message = PeerMessage::LeaseForward(forward);
        self.outbox.push(Effect::ToPeer { to: leader, message });
        self.wait_for(request_id, client, call_id, Awaited::LeaseAnswer);
    }

    /// The leader's side of a forwarded call.
    pub(super) fn answer_lease_forward(&mut self, from: u64, forward: LeaseForward) {
        let request_id = forward.request_id;
        let result = match forward.request {
            Some(lease_forward::Request::KeepAlive(request)) => {
                return self.keep_alive(KeepAliveFrom::Peer { from, request_id }, request.id);
            }
            _ if !self.leads_leases() => lease_forward_reply::Result::NotLeader(true),
            Some(lease_forward::Request::TimeToLive(request)) => match self.lease_time_to_live(&request) {
                Ok(Response::LeaseTimeToLive(response)) => lease_forward_reply::Result::TimeToLive(response),
                _ => lease_forward_reply::Result::NotLeader(true),
            },
            None => return, // nothing asked: a malformed forward
        };
        self.reply_to_forward(from, request_id, result);
    }

    /// Answers follower `to`'s forwarded call `request_id`; lost with the
    /// connection, the follower's call times out.
    fn reply_to_forward(&mut self, to: u64, request_id: u64, result: lease_forward_reply::Result) {
        let reply = LeaseForwardReply {
            request_id,
            result: Some(result),
        };
        let message = PeerMessage::LeaseForwardReply(reply);
        self.outbox.push(Effect::ToPeer { to, message });
    }

    /// A forwarded call's answer came back from the leader.
    pub(super) fn finish_lease_forward(&mut self, reply: LeaseForwardReply) {
        let request_id = reply.request_id;
        let Some(call) = self
            .waiting
            .remove_if(request_id, |awaited| *awaited == Awaited::LeaseAnswer)
        else {
            return; // timed out already
        };
        let result = match reply.result {
            Some(lease_forward_reply::Result::KeepAlive(mut response)) => {
                response.header = None; // this member's header, filled by `reply`
                Ok(Response::LeaseKeepAlive(response))
            }
            Some(lease_forward_reply::Result::TimeToLive(mut response)) => {
                response.header = None;
                Ok(Response::LeaseTimeToLive(response))
            }
            Some(lease_forward_reply::Result::NotLeader(_)) | None => Err(EtcdError::NoLeader),
        };
        self.reply(call.client, call.call_id, result);
    }

    /// On each tick the leader proposes a Revoke for every expired lease (at most
    /// `EXPIRED_REVOKES_PER_CHECK_MAX`); nobody waits for these entries.
    pub(super) fn revoke_expired_leases(&mut self) {
        if !self.leads_leases() {
            // A follower's raft would forward the proposal to the new leader
            // (etcd's issue 15247): this clock no longer decides expiry.
            return;
        }
        let due = self.lease_clock.due_for_revoke(self.now, EXPIRED_REVOKES_PER_CHECK_MAX);
        // As root at the current auth revision (etcd's `WithRoot`): applied
        // after an auth change, the revoke fails and is proposed again.
        let root = AuthHeader {
            username: ROOT_USER.to_string(),
            revision: self.auth.revision(),
        };
        for id in due {
            let request = raft_request::Request::LeaseRevoke(pb::LeaseRevokeRequest { id });
            match self.propose_entry_as(request, Some(root.clone())) {
                #[cfg(feature = "sim")]
                Ok(entry_id) => self
                    .lease_audit
                    .push(LeaseAudit::ExpiryProposed { lease: id, entry_id }),
                #[cfg(not(feature = "sim"))]
                Ok(_) => {}
                // Proposed again after the retry interval.
                Err(error) => tracing::warn!(lease = id, %error, "could not propose the revoke of an expired lease"),
            }
        }
    }

    /// A follower keeps no time for leases: a member that stops leading
    /// forgets its deadlines (it starts timing them once leading: see
    /// `empty_entry_applied`).
    pub(super) fn lease_leadership_changed(&mut self, leading: bool) {
        if leading || !self.lease_clock.is_leading() {
            return;
        }
        for (lease, from) in self.lease_clock.demote() {
            self.answer_keep_alive(from, lease, None);
        }
    }

    /// A leader's empty entry of term `term` was applied. Once its own is,
    /// the leader has applied every entry of earlier terms, and it starts
    /// timing leases, each with its full TTL and an election timeout more.
    /// etcd promotes its lessor there too: on winning the election, a lease
    /// granted or revoked in an earlier term may not be applied here yet.
    pub(super) fn empty_entry_applied(&mut self, term: u64) {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader || term != raft.term || self.lease_clock.is_leading() {
            return;
        }
        let leases = self.mvcc.leases().iter();
        self.lease_clock
            .promote(self.now, self.settings.election_timeout, leases);
    }
}

/// The core's lease decisions, for the simulation's lease check (only with
/// the `sim` feature): which member's clock expired a lease, and which entry
/// removed it.
#[cfg(feature = "sim")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseAudit {
    /// Leading, this member proposed entry `entry_id` to revoke lease
    /// `lease`, expired by its clock.
    ExpiryProposed { lease: i64, entry_id: u64 },
    /// This member applied entry `entry_id`, a revoke of lease `lease`;
    /// `removed`: the lease existed until then.
    RevokeApplied { lease: i64, entry_id: u64, removed: bool },
}
