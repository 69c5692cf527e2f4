//! A client call's way into the store core: refused (removed member, learner,
//! no leader), read from the applied state (linearizable reads after their
//! ReadIndex), answered from what the core holds, or proposed to raft with the
//! caller waiting for the entry to be applied.

use ringkv_proto::etcdserverpb as pb;
use ringkv_proto::ringkvpb::{raft_request, AuthHeader};

use super::super::entry;
use super::super::messages::{AuthCall, Call, Request, Response};
use super::super::reads::{AwaitingReadIndex, PendingRead, Read};
use super::super::stepped_read::{ReadFor, SteppedRead};
use super::{maintenance, Awaited, StoreCore};
use crate::apply;
use crate::auth::Caller;
use crate::etcd_error::EtcdError;

impl StoreCore {
    pub(super) fn handle_call(&mut self, client: usize, call: Call) {
        if self.removed_at.is_some() {
            self.reply(client, call.id, Err(EtcdError::Stopped));
            return;
        }
        if call.client_rpc && !self.serves_client_rpc(&call.request) {
            self.reply(client, call.id, Err(EtcdError::NotSupportedForLearner));
            return;
        }
        if call.require_leader && self.raw.raft.leader_id == raft::INVALID_ID {
            self.reply(client, call.id, Err(EtcdError::NoLeader));
            return;
        }
        let caller = if call.client_rpc {
            // etcd's Maintenance service returns these calls' auth errors unmapped.
            let unmapped = matches!(
                call.request,
                Request::Hash | Request::HashKv(_) | Request::Defragment | Request::Snapshot
            );
            let checked = self
                .call_user(call.auth)
                .and_then(|info| self.check_call(info.as_ref(), &call.request).map(|()| info));
            match checked {
                Ok(info) => Caller::Client(info),
                Err(error) if unmapped => return self.reply(client, call.id, Err(error.unmapped())),
                Err(error) => return self.reply(client, call.id, Err(error)),
            }
        } else {
            Caller::Server
        };
        // Writes are checked again when applied, as this user at this revision.
        let header = match &caller {
            Caller::Client(info) => Self::auth_header(info.as_ref()),
            Caller::Server => None,
        };
        match call.request {
            Request::Range(range) => {
                let serializable = range.serializable;
                self.read(client, call.id, PendingRead::range(range, caller), serializable);
            }
            Request::Txn(txn) if apply::is_read_only(&txn) => {
                let serializable = apply::is_serializable(&txn);
                self.read(client, call.id, PendingRead::txn(txn, caller), serializable);
            }
            Request::Put(put) => {
                let cost = maintenance::put_cost(&put);
                if self.check_quota(client, call.id, cost) {
                    self.propose_as(client, call.id, raft_request::Request::Put(put), header);
                }
            }
            Request::DeleteRange(delete) => {
                self.propose_as(client, call.id, raft_request::Request::DeleteRange(delete), header);
            }
            Request::Txn(txn) => {
                let cost = maintenance::txn_cost(&txn);
                if self.check_quota(client, call.id, cost) {
                    self.propose_as(client, call.id, raft_request::Request::Txn(txn), header);
                }
            }
            Request::Compact(compact) => self.propose(client, call.id, raft_request::Request::Compaction(compact)),
            Request::LeaseGrant(grant) => {
                if self.check_quota(client, call.id, maintenance::lease_grant_cost()) {
                    self.grant_lease(client, call.id, grant);
                }
            }
            Request::LeaseRevoke(revoke) => {
                self.propose_as(client, call.id, raft_request::Request::LeaseRevoke(revoke), header);
            }
            Request::LeaseKeepAlive(keep_alive) => self.keep_lease_alive(client, call.id, keep_alive),
            Request::LeaseTimeToLive(request) => self.lease_time_to_live_call(client, call.id, request),
            Request::LeaseLeases(_) => {
                let response = self.lease_list();
                self.reply(client, call.id, Ok(Response::LeaseLeases(response)));
            }
            Request::Alarm(alarm) if alarm.action != pb::alarm_request::AlarmAction::Get as i32 => {
                self.propose(client, call.id, raft_request::Request::Alarm(alarm));
            }
            Request::Defragment => self.defragment(client, call.id),
            Request::MoveLeader(request) => self.move_leader(client, call.id, &request),
            Request::MemberAdd(request) => self.member_add(client, call.id, request),
            Request::MemberRemove(request) => self.member_remove(client, call.id, &request),
            Request::MemberUpdate(request) => self.member_update(client, call.id, request),
            Request::MemberPromote(request) => self.member_promote(client, call.id, &request),
            Request::Snapshot => self.snapshot(client, call.id),
            Request::HashKv(request) => {
                let reader = ReadFor::Client {
                    client,
                    call_id: call.id,
                };
                self.serve_stepped(reader, SteppedRead::HashKv(request.revision));
            }
            Request::Auth(AuthCall::Propose(request)) => {
                self.propose_as(client, call.id, raft_request::Request::Auth(request), header);
            }
            Request::Auth(query) => {
                let result = self.auth_query(&query);
                self.reply(client, call.id, result);
            }
            Request::SnapshotRelease(txid) => {
                let response = self.release_snapshot(txid);
                self.reply(client, call.id, Ok(response));
            }
            query => {
                let result = self.maintenance_query(query);
                self.reply(client, call.id, result);
            }
        }
    }

    pub(super) fn read(&mut self, client: usize, call_id: u64, read: PendingRead, serializable: bool) {
        if !serializable && self.disk_full.wal_stuck() {
            // Its ReadIndex would come with a Ready, which waits for the WAL.
            self.reply(client, call_id, Err(EtcdError::NoSpace));
            return;
        }
        if serializable {
            self.serve_read(client, call_id, read);
        } else {
            self.reads.enqueue(AwaitingReadIndex::Read { client, call_id, read });
        }
    }

    /// Proposes `request`; call `call_id` of client core `client` waits for
    /// it to be applied.
    pub(super) fn propose(&mut self, client: usize, call_id: u64, request: raft_request::Request) {
        self.propose_as(client, call_id, request, None);
    }

    /// `propose` for a request the user `header` names made.
    pub(super) fn propose_as(
        &mut self,
        client: usize,
        call_id: u64,
        request: raft_request::Request,
        header: Option<AuthHeader>,
    ) {
        let physical_compaction = matches!(&request, raft_request::Request::Compaction(c) if c.physical);
        match self.propose_entry_as(request, header) {
            Ok(id) => self.wait_for(id, client, call_id, Awaited::Entry { physical_compaction }),
            Err(error) => {
                if error == EtcdError::NoLeader {
                    self.metrics.proposals_failed += 1;
                }
                self.reply(client, call_id, Err(error));
            }
        }
    }

    /// Proposes `request` to raft; returns the id its result will carry.
    /// Refused while the WAL has no room to persist it.
    pub(super) fn propose_entry(&mut self, request: raft_request::Request) -> Result<u64, EtcdError> {
        self.propose_entry_as(request, None)
    }

    /// `propose_entry` for a request the user `header` names made.
    pub(super) fn propose_entry_as(
        &mut self,
        request: raft_request::Request,
        header: Option<AuthHeader>,
    ) -> Result<u64, EtcdError> {
        if self.disk_full.wal_stuck() {
            return Err(EtcdError::NoSpace);
        }
        self.propose_to_raft_as(request, header)
    }

    /// `propose_entry` without the room check (the NOSPACE alarm itself).
    pub(super) fn propose_to_raft(&mut self, request: raft_request::Request) -> Result<u64, EtcdError> {
        self.propose_to_raft_as(request, None)
    }

    fn propose_to_raft_as(
        &mut self,
        request: raft_request::Request,
        header: Option<AuthHeader>,
    ) -> Result<u64, EtcdError> {
        let id = self.request_ids.next(|_| false) as u64;
        let data = entry::encode_as(id, header, request);
        // etcd checks the size of the proposal, not of the gRPC message.
        if data.len() > self.settings.max_request_bytes {
            return Err(EtcdError::RequestTooLarge);
        }
        // Dropped: no leader to take it (only possible mid-election).
        self.raw.propose(Vec::new(), data).map_err(|_| EtcdError::NoLeader)?;
        Ok(id)
    }

    pub(super) fn issue_read_index(&mut self) {
        // raft-rs silently drops a ReadIndex until the leader has committed an
        // entry of its own term (its no-op after an election): asked earlier, the
        // batch would wait to be asked again (`requeue_older_than`). Keep it
        // unrequested; the commit of that entry comes with a Ready, and the next
        // `drive` asks then. A follower learns that commit from the leader's next
        // append or heartbeat, and asks then too.
        // A follower's ReadIndex goes to the leader (raft-rs drops it when there is
        // none known); the leader may drop it too, so unanswered ones are retried.
        if self.raw.raft.leader_id == raft::INVALID_ID || !self.raw.raft.commit_to_current_term() {
            return;
        }
        if let Some(context) = self.reads.take_unrequested(self.ticks) {
            self.raw.read_index(context);
        }
    }

    /// Serves a read from the applied state: at once if one step finishes
    /// it, else in steps between events (`background_step`).
    pub(super) fn serve_read(&mut self, client: usize, call_id: u64, read: PendingRead) {
        if let Caller::Client(info) = &read.caller {
            let checked = match &read.read {
                Read::Range(range) => self.check_range(info.as_ref(), range),
                Read::Txn(txn) => self.check_txn(info.as_ref(), txn),
            };
            if let Err(error) = checked {
                return self.reply(client, call_id, Err(error));
            }
        }
        self.serve_stepped(ReadFor::Client { client, call_id }, SteppedRead::Read(read));
    }

    /// Serves `read` for `reader` from the applied state, as `serve_read`.
    pub(super) fn serve_stepped(&mut self, reader: ReadFor, read: SteppedRead) {
        let header = self.outer_header();
        if let Some(result) = self.stepped_reads.start(&self.mvcc, &header, reader, read) {
            self.deliver_read(reader, result);
        }
    }

    /// A stepped read's answer, to whoever waits for it.
    pub(super) fn deliver_read(&mut self, reader: ReadFor, result: Result<Response, apply::ApplyError>) {
        match reader {
            ReadFor::Client { client, call_id } => {
                let result = self.client_result(result);
                self.reply(client, call_id, result);
            }
            ReadFor::PeerHashKv { query, from } => self.answer_hash_kv_query(query, from, result),
            ReadFor::CorruptCheck { check } => self.corrupt_check_hashed(check, result),
        }
    }

    /// Reads and KeepAlives whose read index is applied.
    pub(super) fn answer_applied_reads(&mut self) {
        let applied = self.mvcc.applied_index();
        while let Some(batch) = self.reads.take_applied(applied) {
            for waiting in batch {
                match waiting {
                    AwaitingReadIndex::Read { client, call_id, read } => self.serve_read(client, call_id, read),
                    AwaitingReadIndex::KeepAlive { from, lease } => self.keep_alive_confirmed(from, lease),
                }
            }
        }
    }
}
