//! The store core's membership changes: Cluster.MemberAdd, MemberRemove,
//! MemberPromote (raft configuration changes) and MemberUpdate (peer URLs).
//!
//! As in etcd, the member a client calls runs the strict reconfiguration check
//! (`mayAddMember`, `mayRemoveMember`, `mayPromoteMember`), then proposes; the
//! change is checked against the membership (`Membership::validate`) when it is
//! applied, on every member alike, and the caller is answered then. Promote is
//! checked by the leader (only it knows how far a learner has caught up): a
//! follower asks it with a `PromoteCheck` peer message first.
//!
//! Add, remove and promote are `ConfChangeV2` entries with one change, whose
//! context is a `ringkvpb.ConfChangeContext` (request id and member). raft-rs
//! takes one configuration change at a time: a leader silently turns a second
//! one into an empty entry while the first is unapplied. So each member proposes
//! its own one at a time and, when leading, only once raft has none pending;
//! the others wait here, in order, within their request timeout. (A change
//! proposed on a follower while the leader has another pending is still
//! dropped by the leader, and its caller gets etcd's request timeout.)
//! Update changes no raft configuration: it is an ordinary entry.

use std::time::{Duration, Instant, SystemTime};

use prost::Message;
use raft::eraftpb::{
    ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, Message as RaftMessage, MessageType,
};
use raft::{GetEntriesContext, StateRole};
use ringkv_datadir::ids;
use ringkv_proto::etcdserverpb as pb;
use ringkv_proto::ringkvpb::{self, raft_request, ConfChangeContext, PromoteCheck, PromoteVerdict};

use super::conf_changes::QueuedConfChange;
use super::Effect;
use super::{Awaited, Request, Response, StoreCore};
use crate::apply::ApplyError;
use crate::etcd_error::EtcdError;
use crate::peer::PeerMessage;
use crate::store::membership::{member_to_pb, MemberChange};

/// etcd's `HealthInterval`: a peer counts as active for the strict
/// reconfiguration check once connected for this long (`StoreSettings`).
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
/// etcd's `readyPercent`: a learner may be promoted once its match index is at
/// least this fraction of the leader's.
const LEARNER_READY_FRACTION: f64 = 0.9;
/// A member that applied its own removal keeps running this long, so that the
/// commit reaches the others (etcd's `stopWithDelay`, 1 s).
pub(super) const REMOVED_STOP_DELAY: Duration = Duration::from_secs(1);
/// Bytes of entries in the last append to a removed member (raft's own limit).
const FAREWELL_BYTES_MAX: u64 = 1024 * 1024;

impl StoreCore {
    pub(super) fn member_add(&mut self, client: usize, call_id: u64, request: pb::MemberAddRequest) {
        let (then, wall_clock_then) = self.wall_clock;
        let unix_seconds = (wall_clock_then + self.now.saturating_duration_since(then))
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs());
        let member = ringkvpb::Member {
            id: ids::added_member_id(&request.peer_ur_ls, unix_seconds),
            name: String::new(),
            peer_urls: request.peer_ur_ls,
            client_urls: Vec::new(),
            is_learner: request.is_learner,
        };
        let result = self.may_add_member(&member);
        self.propose_member_change(client, call_id, result.map(|()| MemberChange::Add(member)));
    }

    pub(super) fn member_remove(&mut self, client: usize, call_id: u64, request: &pb::MemberRemoveRequest) {
        let result = self.may_remove_member(request.id);
        self.propose_member_change(client, call_id, result.map(|()| MemberChange::Remove(request.id)));
    }

    /// Only the leader knows whether a learner has caught up: a follower asks
    /// it (`PromoteCheck`) and proposes once it says yes.
    pub(super) fn member_promote(&mut self, client: usize, call_id: u64, request: &pb::MemberPromoteRequest) {
        if self.raw.raft.state != StateRole::Leader {
            return self.ask_leader_to_promote(client, call_id, request.id);
        }
        let result = self.may_promote_member(request.id);
        self.propose_member_change(client, call_id, result.map(|()| MemberChange::Promote(request.id)));
    }

    fn ask_leader_to_promote(&mut self, client: usize, call_id: u64, member_id: u64) {
        let leader = self.raw.raft.leader_id;
        let request_id = self.request_ids.next(|_| false) as u64;
        let check = PromoteCheck {
            request_id,
            member_id,
            answered: false,
            verdict: PromoteVerdict::PromoteReady as i32,
        };
        if leader == raft::INVALID_ID {
            return self.reply(client, call_id, Err(EtcdError::NoLeader));
        }
        let message = PeerMessage::PromoteCheck(check);
        self.outbox.push(Effect::ToPeer { to: leader, message });
        self.wait_for(request_id, client, call_id, Awaited::PromoteVerdict { member_id });
    }

    /// A follower's question (answered if this member leads) or the leader's
    /// answer to this member's.
    pub(super) fn promote_check(&mut self, from: u64, check: PromoteCheck) {
        if !check.answered {
            let verdict = match self.may_promote_member(check.member_id) {
                Ok(()) => PromoteVerdict::PromoteReady,
                Err(EtcdError::LearnerNotReady) => PromoteVerdict::PromoteLearnerNotReady,
                Err(EtcdError::NotEnoughStarted) => PromoteVerdict::PromoteNotEnoughStarted,
                Err(_) => PromoteVerdict::PromoteNotLeader,
            };
            let answer = PromoteCheck {
                answered: true,
                verdict: verdict as i32,
                ..check
            };
            let message = PeerMessage::PromoteCheck(answer);
            self.outbox.push(Effect::ToPeer { to: from, message });
            return;
        }
        let asked = |awaited: &Awaited| matches!(awaited, Awaited::PromoteVerdict { .. });
        let Some(asked) = self.waiting.remove_if(check.request_id, asked) else {
            return; // expired meanwhile
        };
        let Awaited::PromoteVerdict { member_id } = asked.kind else {
            unreachable!("removed as a promote verdict")
        };
        let result = match PromoteVerdict::from_i32(check.verdict) {
            Some(PromoteVerdict::PromoteReady) => Ok(MemberChange::Promote(member_id)),
            Some(PromoteVerdict::PromoteLearnerNotReady) => Err(EtcdError::LearnerNotReady),
            Some(PromoteVerdict::PromoteNotEnoughStarted) => Err(EtcdError::NotEnoughStarted),
            // The leader changed in between; etcd would ask the next one.
            Some(PromoteVerdict::PromoteNotLeader) | None => Err(EtcdError::NotLeader),
        };
        self.propose_member_change(asked.client, asked.call_id, result);
    }

    pub(super) fn member_update(&mut self, client: usize, call_id: u64, request: pb::MemberUpdateRequest) {
        self.propose(client, call_id, raft_request::Request::MemberUpdate(request));
    }

    /// etcd's `isRPCSupportedForLearner`: a learner serves clients only Status
    /// and serializable Range (a voter serves everything).
    pub(super) fn serves_client_rpc(&self, request: &Request) -> bool {
        let learner = self
            .membership
            .member(self.settings.member_id)
            .is_some_and(|member| member.is_learner);
        !learner
            || matches!(request, Request::Status | Request::Snapshot)
            || matches!(request, Request::Range(range) if range.serializable)
    }

    /// etcd's `mayAddMember`.
    fn may_add_member(&self, member: &ringkvpb::Member) -> Result<(), EtcdError> {
        if !member.is_learner && !self.membership.ready_to_add_voter() {
            return Err(EtcdError::NotEnoughStarted);
        }
        let voters = self.membership.voter_ids();
        if self.voters_connected_since(self.now - self.settings.health_interval) < voters.len() {
            return Err(EtcdError::Unhealthy);
        }
        Ok(())
    }

    /// etcd's `mayRemoveMember`.
    fn may_remove_member(&self, id: u64) -> Result<(), EtcdError> {
        if self.membership.member(id).is_some_and(|member| member.is_learner) {
            return Ok(());
        }
        if !self.membership.ready_to_remove_voter(id) {
            return Err(EtcdError::NotEnoughStarted);
        }
        // A member that is down is not part of the active quorum.
        if id != self.settings.member_id && !self.peers_active_since.contains_key(&id) {
            return Ok(());
        }
        let voters = self.membership.voter_ids().len();
        let active = self.voters_connected_since(self.now - self.settings.health_interval);
        if active < 1 + 1 + (voters.saturating_sub(1)) / 2 {
            return Err(EtcdError::Unhealthy);
        }
        Ok(())
    }

    /// etcd's `mayPromoteMember`: `isLearnerReady` (leader only), then the quorum rule.
    fn may_promote_member(&self, id: u64) -> Result<(), EtcdError> {
        if self.raw.raft.state != StateRole::Leader {
            return Err(EtcdError::NotLeader);
        }
        let progress = self.raw.raft.prs();
        if let Some(learner) = progress.get(id) {
            let leader_match = progress.get(self.settings.member_id).map_or(0, |leader| leader.matched);
            if (learner.matched as f64) < leader_match as f64 * LEARNER_READY_FRACTION {
                return Err(EtcdError::LearnerNotReady);
            }
        }
        if !self.membership.ready_to_promote() {
            return Err(EtcdError::NotEnoughStarted);
        }
        Ok(())
    }

    /// etcd's `numConnectedSince` over the voters: this member, and each peer
    /// whose connection has been up since before `since`.
    fn voters_connected_since(&self, since: Instant) -> usize {
        let me = self.settings.member_id;
        self.membership
            .voter_ids()
            .into_iter()
            .filter(|&id| id == me || self.peers_active_since.get(&id).is_some_and(|&(_, up)| up <= since))
            .count()
    }

    fn propose_member_change(&mut self, client: usize, call_id: u64, change: Result<MemberChange, EtcdError>) {
        let change = match change {
            Ok(change) => change,
            Err(error) => return self.reply(client, call_id, Err(error)),
        };
        let request_id = self.request_ids.next(|_| false) as u64;
        let change = conf_change(request_id, &change);
        if self.conf_changes.push(QueuedConfChange { request_id, change }).is_err() {
            return self.reply(client, call_id, Err(EtcdError::TooManyRequests));
        }
        let physical_compaction = false;
        self.wait_for(request_id, client, call_id, Awaited::Entry { physical_compaction });
        self.propose_queued_conf_changes();
    }

    /// Proposes the next queued configuration change once raft takes it.
    pub(super) fn propose_queued_conf_changes(&mut self) {
        loop {
            let leader_busy = self.raw.raft.state == StateRole::Leader && self.raw.raft.has_pending_conf();
            let waiting = &self.waiting;
            let Some(next) = self.conf_changes.next(|id| waiting.contains(id), leader_busy) else {
                return;
            };
            if self.raw.propose_conf_change(Vec::new(), next.change).is_ok() {
                self.conf_changes.proposed(next.request_id);
            } else {
                // Dropped: no leader to take it.
                self.metrics.proposals_failed += 1;
                let waiter = self.waiting.remove(next.request_id).expect("checked above");
                self.reply(waiter.client, waiter.call_id, Err(EtcdError::NoLeader));
            }
        }
    }

    /// Applies a committed `ConfChangeV2`: checked against the membership, then
    /// applied to raft and the membership, or refused (raft's configuration
    /// stays as it is), and the waiting caller answered either way.
    pub(super) fn apply_conf_change(&mut self, index: u64, change: ConfChangeV2) {
        let (request_id, member_change) = match read_conf_change(&change) {
            Ok(read) => read,
            Err(why) => return self.skip_entry(index, &why),
        };
        let result = self.membership.validate(&member_change);
        if result.is_ok() {
            let farewell = match member_change {
                MemberChange::Remove(id) => self.farewell_append(id),
                _ => None,
            };
            // raft refuses only changes no member proposes (its checks run
            // before it changes anything): skipped like any bad entry.
            let conf_state = match self.raw.apply_conf_change(&change) {
                Ok(conf_state) => conf_state,
                Err(error) => return self.skip_entry(index, &format!("conf change refused by raft: {error}")),
            };
            // Stored with the data: raft does not re-apply this entry after a restart.
            self.mvcc.set_conf_state(conf_state.encode_to_vec());
            self.raw.mut_store().set_conf_state(conf_state);
            if let Some(farewell) = farewell {
                // Queued before the peer's sender goes; it still sends it.
                let to = farewell.to;
                let message = PeerMessage::Raft(farewell);
                self.outbox.push(Effect::ToPeer { to, message });
            }
            self.apply_membership_change(&member_change);
        } else {
            tracing::info!(index, change = ?member_change, error = ?result, "membership change refused");
        }
        let result = result.map(|()| self.member_change_response(&member_change));
        if let Some(waiter) = self.waiting.remove_if(request_id, Awaited::is_entry) {
            self.reply(waiter.client, waiter.call_id, result);
        }
    }

    /// A leader forgets a removed peer as it applies the removal, so raft would
    /// never tell that peer the removal committed, and it would never stop.
    /// This is the append raft would send it next: every entry it lacks, up to
    /// the commit index, which it then applies, its removal included. (etcd
    /// tells a removed member instead when it next calls a peer.)
    fn farewell_append(&self, id: u64) -> Option<RaftMessage> {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader || id == self.settings.member_id {
            return None;
        }
        let matched = raft.prs().get(id)?.matched;
        let log = &raft.raft_log;
        let log_term = log.term(matched).ok()?;
        let entries = log
            .entries(matched + 1, FAREWELL_BYTES_MAX, GetEntriesContext::empty(false))
            .ok()?;
        let entries: Vec<_> = entries
            .into_iter()
            .take_while(|entry| entry.index <= log.committed)
            .collect();
        Some(RaftMessage {
            msg_type: MessageType::MsgAppend as i32,
            to: id,
            from: self.settings.member_id,
            term: raft.term,
            log_term,
            index: matched,
            entries,
            commit: log.committed,
            ..Default::default()
        })
    }

    /// Applies a MemberUpdate entry.
    pub(super) fn apply_member_update(&mut self, update: pb::MemberUpdateRequest) -> Result<Response, ApplyError> {
        let change = MemberChange::Update {
            id: update.id,
            peer_urls: update.peer_ur_ls,
        };
        self.membership.validate(&change).map_err(ApplyError::Client)?;
        self.apply_membership_change(&change);
        Ok(self.member_change_response(&change))
    }

    fn apply_membership_change(&mut self, change: &MemberChange) {
        self.membership.apply(change);
        self.mvcc.set_membership(self.membership.encode());
        // Stored with the data: make the change durable soon.
        self.commits.note_change();
        tracing::info!(change = ?change, "membership change applied");
        self.membership_changed();
        if self.membership.is_removed(self.settings.member_id) && self.removed_at.is_none() {
            self.removed_from_cluster();
        }
    }

    /// Peer connections and membership queries follow the membership.
    pub(super) fn membership_changed(&mut self) {
        let me = self.settings.member_id;
        let mut peers = self.membership.peers_of(me);
        // A joining member replays the log from the bootstrap membership, which
        // may lack the leader: it talks to the members it joined until it has
        // caught up.
        if !self.caught_up() {
            for (id, urls) in &self.join_peers {
                if *id != me && !peers.iter().any(|(peer, _)| peer == id) {
                    peers.push((*id, urls.clone()));
                }
            }
        }
        self.metrics
            .peer_timing
            .retain_peers(|id| peers.iter().any(|(peer, _)| *peer == id));
        let membership = self.membership.to_stored();
        self.outbox.push(Effect::Peers { peers, membership });
    }

    /// etcd stops a member once it applies its own removal, after a delay for
    /// the commit to reach the others. A leader hands its leadership to the
    /// most caught-up voter first, so the others need not wait out an election.
    fn removed_from_cluster(&mut self) {
        tracing::warn!("this member was removed from the cluster; stopping in {REMOVED_STOP_DELAY:?}");
        self.removed_at = Some(self.now);
        if self.raw.raft.state == StateRole::Leader {
            let me = self.settings.member_id;
            let successor = self
                .membership
                .voter_ids()
                .into_iter()
                .filter(|&id| id != me)
                .max_by_key(|&id| self.raw.raft.prs().get(id).map_or(0, |progress| progress.matched));
            if let Some(successor) = successor {
                self.raw.transfer_leader(successor);
            }
            // raft-rs keeps a removed leader leading, and panics when it next
            // counts its own progress, which it no longer tracks: an append
            // response that moves a follower on, or its own entries persisted
            // (`maybe_commit`, `on_persist_entries`). Step down now: the
            // transfer's TimeoutNow (or the append it waits on) is already out.
            let term = self.raw.raft.term;
            self.raw.raft.become_follower(term, raft::INVALID_ID);
        }
    }

    /// Asks to stop once a removed member's delay has passed.
    pub(super) fn stop_if_removed(&mut self) {
        let removed_at = self.removed_at;
        if removed_at.is_some_and(|at| self.now.saturating_duration_since(at) >= REMOVED_STOP_DELAY) {
            self.outbox.push(Effect::Stop);
        }
    }

    fn member_change_response(&self, change: &MemberChange) -> Response {
        let members = self.membership.to_pb();
        match change {
            MemberChange::Add(member) => Response::MemberAdd(pb::MemberAddResponse {
                header: None,
                member: Some(member_to_pb(member)),
                members,
            }),
            MemberChange::Remove(_) => Response::MemberRemove(pb::MemberRemoveResponse { header: None, members }),
            MemberChange::Promote(_) => Response::MemberPromote(pb::MemberPromoteResponse { header: None, members }),
            MemberChange::Update { .. } => Response::MemberUpdate(pb::MemberUpdateResponse { header: None, members }),
        }
    }
}

/// The raft configuration change for a membership change (not Update).
fn conf_change(request_id: u64, change: &MemberChange) -> ConfChangeV2 {
    let (change_type, member, promote) = match change {
        MemberChange::Add(member) if member.is_learner => (ConfChangeType::AddLearnerNode, member.clone(), false),
        MemberChange::Add(member) => (ConfChangeType::AddNode, member.clone(), false),
        MemberChange::Promote(id) => (ConfChangeType::AddNode, id_only(*id), true),
        MemberChange::Remove(id) => (ConfChangeType::RemoveNode, id_only(*id), false),
        MemberChange::Update { .. } => unreachable!("an update is an ordinary entry"),
    };
    let single = ConfChangeSingle {
        change_type: change_type as i32,
        node_id: member.id,
    };
    let context = ConfChangeContext {
        request_id,
        member: Some(member),
        promote,
    };
    ConfChangeV2 {
        changes: vec![single],
        context: context.encode_to_vec(),
        ..Default::default()
    }
}

fn id_only(id: u64) -> ringkvpb::Member {
    ringkvpb::Member {
        id,
        ..Default::default()
    }
}

/// The waiting call's request id and the membership change a committed
/// `ConfChangeV2` carries; anything else (only `conf_change` makes these
/// entries, so it came from a peer) is a reason to skip it.
fn read_conf_change(change: &ConfChangeV2) -> Result<(u64, MemberChange), String> {
    let context = ConfChangeContext::decode(change.context.as_slice())
        .map_err(|error| format!("conf change context does not decode: {error}"))?;
    let [single] = change.changes.as_slice() else {
        return Err(format!("conf change has {} changes, not one", change.changes.len()));
    };
    // One change with the automatic transition is a simple change to raft;
    // any other transition would enter a joint configuration.
    if change.transition != ConfChangeTransition::Auto as i32 {
        return Err(format!("conf change with transition {}", change.transition));
    }
    let member = context
        .member
        .clone()
        .ok_or_else(|| "conf change names no member".to_string())?;
    if member.id != single.node_id {
        return Err(format!(
            "conf change changes {:x} but names {:x}",
            single.node_id, member.id
        ));
    }
    let member_change = match ConfChangeType::from_i32(single.change_type) {
        Some(ConfChangeType::AddNode) if context.promote => MemberChange::Promote(member.id),
        Some(ConfChangeType::AddNode) => MemberChange::Add(member),
        Some(ConfChangeType::AddLearnerNode) if member.is_learner => MemberChange::Add(member),
        Some(ConfChangeType::RemoveNode) => MemberChange::Remove(member.id),
        other => return Err(format!("conf change of unexpected type {other:?}")),
    };
    Ok((context.request_id, member_change))
}

#[cfg(test)]
mod tests {
    use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2, MessageType};
    use raft::storage::MemStorage;
    use raft::{RawNode, StateRole};

    use crate::peer::raft_fixture::{self, LAST, ME, PEER};

    /// The voter that has none of the leader's entries.
    const BEHIND: u64 = 3;

    /// The fixture's leader (PEER up to date, BEHIND not) with its own
    /// removal committed and applied, and an entry proposed after it that
    /// PEER holds: raft-rs keeps it leading.
    fn leader_removed() -> RawNode<MemStorage> {
        let mut raw = raft_fixture::leader();
        let change = ConfChangeV2 {
            changes: vec![ConfChangeSingle {
                change_type: ConfChangeType::RemoveNode as i32,
                node_id: ME,
            }],
            ..Default::default()
        };
        raw.propose_conf_change(Vec::new(), change.clone()).unwrap();
        raw.propose(Vec::new(), b"after".to_vec()).unwrap();
        raft_fixture::settle(&mut raw);
        raw.step(acknowledgement(PEER, LAST + 2)).unwrap();
        raft_fixture::settle(&mut raw);
        assert_eq!(raw.raft.raft_log.committed, LAST + 2, "the removal is committed");
        raw.apply_conf_change(&change).unwrap();
        assert_eq!(
            raw.raft.state,
            StateRole::Leader,
            "raft-rs keeps a removed leader leading"
        );
        assert!(!raw.raft.prs().conf().voters().contains(ME));
        raw.step(acknowledgement(PEER, LAST + 3)).unwrap();
        raw
    }

    /// Follower `from` holds the leader's entries up to `index`.
    fn acknowledgement(from: u64, index: u64) -> raft::eraftpb::Message {
        let mut acknowledged = raft_fixture::message(MessageType::MsgAppendResponse, 2);
        acknowledged.from = from;
        acknowledged.index = index;
        acknowledged
    }

    /// Why `removed_from_cluster` steps down: this is raft-rs 0.7 itself.
    #[test]
    #[should_panic(expected = "called `Option::unwrap()` on a `None` value")]
    fn raft_rs_panics_when_a_removed_leader_counts_an_append_response() {
        let mut raw = leader_removed();
        // BEHIND's acknowledgement commits the entry in the new configuration.
        let _ = raw.step(acknowledgement(BEHIND, LAST + 3));
    }

    #[test]
    fn a_removed_leader_that_stepped_down_takes_append_responses() {
        let mut raw = leader_removed();
        let term = raw.raft.term;
        raw.raft.become_follower(term, raft::INVALID_ID);
        let _ = raw.step(acknowledgement(BEHIND, LAST + 3));
        raft_fixture::settle(&mut raw);
        assert_eq!(raw.raft.state, StateRole::Follower);
        assert!(!raw.raft.promotable(), "a removed member never campaigns");
    }
}
