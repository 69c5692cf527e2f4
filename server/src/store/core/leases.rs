//! The store core's lease calls: Grant and Revoke go through raft like any write;
//! KeepAlive, TimeToLive and Leases are answered by the leader from the applied
//! leases and its [`LeaseClock`]; expired leases are revoked by proposing a Revoke.

use std::time::Instant;

use ringkv_proto::etcdserverpb as pb;
use ringkv_proto::ringkvpb::raft_request;

use super::super::lease_clock::{ParkedKeepAlive, Renewal, EXPIRED_REVOKES_PER_CHECK_MAX};
use super::StoreCore;
use crate::apply::{self, ApplyError};
use crate::etcd_error::EtcdError;
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
        self.lease_clock.granted(Instant::now(), response.id, response.ttl);
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
            self.reply(client, call_id, Err(EtcdError::NoLeader));
            return;
        }
        let answer = |ttl| {
            Ok(Response::LeaseKeepAlive(pb::LeaseKeepAliveResponse {
                header: None,
                id: request.id,
                ttl,
            }))
        };
        let Some(ttl) = self.mvcc.leases().ttl(request.id) else {
            self.reply(client, call_id, answer(0));
            return;
        };
        match self.lease_clock.renew(Instant::now(), request.id, ttl) {
            Renewal::Renewed(ttl) => self.reply(client, call_id, answer(ttl)),
            Renewal::Expiring => self.lease_clock.park(request.id, ParkedKeepAlive { client, call_id }),
            Renewal::NotLeader => unreachable!("checked above"),
        }
    }

    /// etcd's `LeaseTimeToLive` on the leader; an unknown lease answers TTL -1.
    pub(super) fn lease_time_to_live(&self, request: &pb::LeaseTimeToLiveRequest) -> Result<Response, EtcdError> {
        if !self.mvcc.leases().contains(request.id) {
            return Ok(Response::LeaseTimeToLive(apply::lease::time_to_live_unknown(request)));
        }
        let remaining = self
            .lease_clock
            .remaining_seconds(Instant::now(), request.id)
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

    /// On each tick the leader proposes a Revoke for every expired lease (at most
    /// `EXPIRED_REVOKES_PER_CHECK_MAX`); nobody waits for these entries.
    pub(super) fn revoke_expired_leases(&mut self) {
        let due = self
            .lease_clock
            .due_for_revoke(Instant::now(), EXPIRED_REVOKES_PER_CHECK_MAX);
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
                .promote(Instant::now(), self.settings.election_timeout, leases);
            return;
        }
        for parked in self.lease_clock.demote() {
            self.reply(parked.client, parked.call_id, Err(EtcdError::NoLeader));
        }
    }
}
