//! The store core's lease calls: Grant and Revoke go through raft like any write;
//! KeepAlive and TimeToLive are answered by the leader from the applied leases
//! and its [`LeaseClock`] (a follower forwards them to the leader over the peer
//! transport, as etcd's followers do); Leases is answered by any member; expired
//! leases are revoked by proposing a Revoke.

use std::time::Instant;

use ringkv_proto::etcdserverpb as pb;
use ringkv_proto::ringkvpb::{lease_forward, lease_forward_reply, raft_request, LeaseForward, LeaseForwardReply};

use super::super::lease_clock::{ParkedKeepAlive, Renewal, EXPIRED_REVOKES_PER_CHECK_MAX};
use super::Effect;
use super::{Awaited, StoreCore};
use crate::apply::{self, ApplyError};
use crate::etcd_error::EtcdError;
use crate::peer::PeerMessage;
use crate::store::messages::Response;

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

    pub(super) fn apply_lease_revoke(&mut self, revoke: &pb::LeaseRevokeRequest) -> Result<Response, ApplyError> {
        let result = self.write(|view| apply::lease::revoke(view, revoke).map(Response::LeaseRevoke));
        // Whether this revoke or an earlier one removed it, the lease is gone now.
        for parked in self.lease_clock.revoked(revoke.id) {
            let response = pb::LeaseKeepAliveResponse {
                header: None,
                id: revoke.id,
                ttl: 0,
            };
            self.reply(parked.client, parked.call_id, Ok(Response::LeaseKeepAlive(response)));
        }
        result
    }

    /// etcd's `LeaseRenew` on the leader: an unknown lease answers TTL 0 (v3rpc
    /// turns ErrLeaseNotFound into that); an expired one waits for its revoke.
    pub(super) fn keep_lease_alive(&mut self, client: usize, call_id: u64, request: pb::LeaseKeepAliveRequest) {
        if !self.lease_clock.is_leading() {
            self.forward_lease_call(client, call_id, lease_forward::Request::KeepAlive(request));
            return;
        }
        let response = |ttl| {
            Ok(Response::LeaseKeepAlive(pb::LeaseKeepAliveResponse {
                header: None,
                id: request.id,
                ttl,
            }))
        };
        match self.renew_lease(request.id) {
            Some(ttl) => self.reply(client, call_id, response(ttl)),
            None => self.lease_clock.park(request.id, ParkedKeepAlive { client, call_id }),
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
        if !self.lease_clock.is_leading() {
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

    /// The leader's side of a forwarded call. An expiring lease answers TTL 0
    /// at once (a local KeepAlive would wait for the revoke): it is past its
    /// deadline and its revoke is being proposed.
    pub(super) fn answer_lease_forward(&mut self, from: u64, forward: LeaseForward) {
        let result = match forward.request {
            _ if !self.lease_clock.is_leading() => lease_forward_reply::Result::NotLeader(true),
            Some(lease_forward::Request::KeepAlive(request)) => {
                let ttl = self.renew_lease(request.id).unwrap_or(0);
                lease_forward_reply::Result::KeepAlive(pb::LeaseKeepAliveResponse {
                    header: None,
                    id: request.id,
                    ttl,
                })
            }
            Some(lease_forward::Request::TimeToLive(request)) => match self.lease_time_to_live(&request) {
                Ok(Response::LeaseTimeToLive(response)) => lease_forward_reply::Result::TimeToLive(response),
                _ => lease_forward_reply::Result::NotLeader(true),
            },
            None => return, // nothing asked: a malformed forward
        };
        let reply = LeaseForwardReply {
            request_id: forward.request_id,
            result: Some(result),
        };
        // Lost with the connection: the follower's call times out.
        let message = PeerMessage::LeaseForwardReply(reply);
        self.outbox.push(Effect::ToPeer { to: from, message });
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
        let due = self.lease_clock.due_for_revoke(self.now, EXPIRED_REVOKES_PER_CHECK_MAX);
        for id in due {
            let request = raft_request::Request::LeaseRevoke(pb::LeaseRevokeRequest { id });
            if let Err(error) = self.propose_entry(request) {
                // Proposed again after the retry interval.
                tracing::warn!(lease = id, %error, "could not propose the revoke of an expired lease");
            }
        }
    }

    /// The leader keeps time for leases; a follower keeps none.
    pub(super) fn lease_leadership_changed(&mut self, leading: bool) {
        if leading == self.lease_clock.is_leading() {
            return;
        }
        if leading {
            let leases = self.mvcc.leases().iter();
            self.lease_clock
                .promote(self.now, self.settings.election_timeout, leases);
            return;
        }
        for parked in self.lease_clock.demote() {
            self.reply(parked.client, parked.call_id, Err(EtcdError::NoLeader));
        }
    }
}
