//! The operator: membership changes as calls of the workload, one at a time
//! (MemberAdd of a voter or a learner, MemberPromote, MemberRemove of any
//! member, the leader too), within the simulation's bounds: at most
//! `VOTERS_MAX` voters and one learner (etcd's limit), never fewer than
//! `VOTERS_MIN` voters. A member added gets a slot of its own and is started
//! as a joiner once a running member's applied membership holds it (what
//! `--initial-cluster-state existing` asks a peer for); one removed stops
//! itself when it applies its removal, and the operator stops it when the
//! faults end if it never learned.

use std::time::Duration;

use rand::Rng;
use ringkv_proto::etcdserverpb as pb;

use super::super::clock::MemberClock;
use super::super::member::{index_of_url, peer_url, Boot, Member};
use super::{Action, Cluster, CLIENT_TIMEOUT};
use crate::etcd_error::EtcdError;
use crate::sim::SimFailure;
use crate::store::membership::{Membership, LEARNERS_MAX};
use crate::store::messages::{Request, Response};

/// Voters the cluster may grow to.
const VOTERS_MAX: usize = 5;
/// Voters the operator does not remove below: a fault then still leaves a quorum.
const VOTERS_MIN: usize = 3;
/// The operator's number in its call ids' high half (clients have small numbers).
const OPERATOR: u64 = 0xffff;
/// How long the operator waits between changes, at most.
const OPERATOR_THINK_MAX: Duration = Duration::from_millis(800);
/// The operator's first change comes this far into the run, at least: once
/// a leader is elected and the members have been connected a while.
pub(super) const OPERATOR_START: Duration = Duration::from_millis(1_200);
/// Calls the operator makes per change it means to make, at most (a change
/// refused is tried again, within this).
const CALLS_PER_CHANGE_MAX: usize = 4;
/// How long after its addition the operator starts a member, at most.
const JOIN_DELAY_MAX: Duration = Duration::from_millis(300);
/// A joiner no running member knows of yet is tried again after this.
const JOIN_RETRY: Duration = Duration::from_millis(200);

/// One membership change.
#[derive(Debug, Clone, Copy)]
enum Change {
    /// A new member in slot `slot`.
    Add {
        slot: usize,
    },
    Promote,
    Remove,
}

/// The operator's call in flight.
struct OperatorCall {
    member: usize,
    call_id: u64,
    change: Change,
}

#[derive(Default)]
pub(super) struct Operator {
    calling: Option<OperatorCall>,
    /// Changes still to make (a refused one is given back).
    changes_left: usize,
    calls_left: usize,
    calls: u64,
    /// The slot of a member whose addition was refused: the next one takes it.
    spare_slot: Option<usize>,
}

impl Operator {
    pub(super) fn new(changes: usize) -> Operator {
        Operator {
            changes_left: changes,
            calls_left: changes * CALLS_PER_CHANGE_MAX,
            ..Operator::default()
        }
    }

    pub(super) fn owns(call_id: u64) -> bool {
        call_id >> 32 == OPERATOR
    }
}

impl Cluster {
    /// The membership applied by the running member that has applied most.
    pub(super) fn cluster_membership(&self) -> Option<Membership> {
        let freshest = self
            .members
            .iter()
            .filter_map(|member| {
                let running = member.running.as_ref()?;
                Some((running.core.applied_and_leases().0, member.membership.as_ref()?))
            })
            .max_by_key(|(applied, _)| *applied)?;
        Some(freshest.1.clone())
    }

    /// The slots of the members of `membership`, with whether each is a learner.
    pub(super) fn slots_of(&self, membership: &Membership) -> Vec<(usize, bool)> {
        membership
            .members()
            .filter_map(|member| {
                let slot = member.peer_urls.first().and_then(|url| index_of_url(url))?;
                (slot < self.members.len()).then_some((slot, member.is_learner))
            })
            .collect()
    }

    /// The operator's next change, made through a random running member;
    /// then the next step after a while.
    pub(super) async fn operator_step(&mut self) -> Result<(), SimFailure> {
        let operator = &self.operator;
        if self.calm || operator.changes_left == 0 || operator.calls_left == 0 || operator.calling.is_some() {
            return Ok(());
        }
        let think = Duration::from_micros(self.rng.gen_range(0..OPERATOR_THINK_MAX.as_micros() as u64));
        self.at(think, Action::OperatorStep);
        let Some(membership) = self.cluster_membership() else {
            return Ok(());
        };
        let member = self.rng.gen_range(0..self.members.len());
        if !self.is_running(member, None) {
            return Ok(()); // connection refused
        }
        let Some((change, request)) = self.next_change(&membership) else {
            return Ok(());
        };
        self.operator.changes_left -= 1;
        self.operator.calls_left -= 1;
        let call_id = OPERATOR << 32 | self.operator.calls;
        self.operator.calls += 1;
        self.operator.calling = Some(OperatorCall {
            member,
            call_id,
            change,
        });
        self.at(CLIENT_TIMEOUT, Action::OperatorTimeout { call_id });
        self.call(member, call_id, request, true).await
    }

    /// A change within the bounds for the cluster `membership`, at random.
    fn next_change(&mut self, membership: &Membership) -> Option<(Change, Request)> {
        let voters = membership.voter_ids();
        let learners: Vec<u64> = membership
            .members()
            .filter(|member| member.is_learner)
            .map(|member| member.id)
            .collect();
        let mut choices = Vec::new();
        if voters.len() < VOTERS_MAX {
            choices.push(0);
        }
        if learners.len() < LEARNERS_MAX {
            choices.push(1);
        }
        if !learners.is_empty() {
            choices.push(2);
        }
        choices.push(3);
        match choices[self.rng.gen_range(0..choices.len())] {
            choice @ (0 | 1) => {
                let learner = choice == 1;
                let slot = match self.operator.spare_slot.take() {
                    Some(slot) => slot,
                    None => {
                        let slot = self.members.len();
                        let clock = MemberClock::random(&mut self.rng);
                        self.members.push(Member::added(slot, clock));
                        slot
                    }
                };
                let request = pb::MemberAddRequest {
                    peer_ur_ls: vec![peer_url(slot)],
                    is_learner: learner,
                };
                Some((Change::Add { slot }, Request::MemberAdd(request)))
            }
            2 => {
                let id = learners[self.rng.gen_range(0..learners.len())];
                Some((Change::Promote, Request::MemberPromote(pb::MemberPromoteRequest { id })))
            }
            _ => {
                let removable: Vec<u64> = membership
                    .members()
                    .filter(|member| member.is_learner || voters.len() > VOTERS_MIN)
                    .map(|member| member.id)
                    .collect();
                if removable.is_empty() {
                    return None;
                }
                let id = removable[self.rng.gen_range(0..removable.len())];
                Some((Change::Remove, Request::MemberRemove(pb::MemberRemoveRequest { id })))
            }
        }
    }

    /// The operator's call ended: with the member's answer, or (None) none.
    pub(super) fn operator_answered(&mut self, call_id: u64, answer: Option<Result<Response, EtcdError>>) {
        if self
            .operator
            .calling
            .as_ref()
            .is_none_or(|calling| calling.call_id != call_id)
        {
            return; // given up on already
        }
        let calling = self.operator.calling.take().expect("checked above");
        let response = match answer {
            Some(Ok(response)) => response,
            // The change may still be applied: the next reconcile finds out.
            None | Some(Err(EtcdError::Timeout | EtcdError::TimeoutDueToLeaderFail)) => return,
            Some(Err(_)) => {
                // Refused: try again, and a member not added leaves its slot.
                self.operator.changes_left += 1;
                if let Change::Add { slot } = calling.change {
                    self.operator.spare_slot = Some(slot);
                }
                return;
            }
        };
        self.report.member_changes += 1;
        if let (Change::Add { slot }, Response::MemberAdd(added)) = (calling.change, response) {
            let id = added.member.expect("MemberAdd answers with the member").id;
            self.learn_member_id(slot, id);
            let delay = Duration::from_micros(self.rng.gen_range(0..JOIN_DELAY_MAX.as_micros() as u64));
            self.at(delay, Action::Join(slot));
        }
    }

    pub(super) fn operator_calling(&self) -> bool {
        self.operator.calling.is_some()
    }

    pub(super) fn operator_call_id(&self) -> u64 {
        self.operator.calling.as_ref().expect("a call in flight").call_id
    }

    /// The operator's call to `member`, which crashed or stopped, is lost.
    pub(super) fn operator_lost(&mut self, member: usize) {
        if let Some(call_id) = self
            .operator
            .calling
            .as_ref()
            .filter(|calling| calling.member == member)
            .map(|calling| calling.call_id)
        {
            self.operator_answered(call_id, None);
        }
    }

    /// Slot `slot`'s member has id `id` (a MemberAdd's answer, or a membership).
    pub(super) fn learn_member_id(&mut self, slot: usize, id: u64) {
        let member = &mut self.members[slot];
        if member.id == 0 {
            member.id = id;
            self.index_of.insert(id, slot);
        }
        assert_eq!(member.id, id, "slot {slot} holds one member");
    }

    /// Learns the ids of added members from a membership a member applied.
    pub(super) fn learn_member_ids(&mut self, membership: &Membership) {
        for (slot, _) in self.slots_of(membership) {
            let url = peer_url(slot);
            let id = membership
                .member_with_peer_urls(std::slice::from_ref(&url))
                .expect("listed above")
                .id;
            self.learn_member_id(slot, id);
        }
    }

    /// Starts the member added in slot `slot` for the first time, as a
    /// joiner, once a running member's applied membership holds it.
    pub(super) async fn join(&mut self, slot: usize) -> Result<(), SimFailure> {
        let member = &self.members[slot];
        if member.running.is_some() || member.removed || member.has_started() {
            return Ok(());
        }
        let url = peer_url(slot);
        let knowing = self.members.iter().find_map(|peer| {
            let membership = peer.membership.as_ref().filter(|_| peer.running.is_some())?;
            membership
                .member_with_peer_urls(std::slice::from_ref(&url))
                .is_some()
                .then(|| membership.clone())
        });
        let Some(current) = knowing else {
            if !self.calm {
                self.at(JOIN_RETRY, Action::Join(slot));
            }
            return Ok(());
        };
        self.learn_member_ids(&current);
        let joined = self.members[slot]
            .joining(&current)
            .map_err(|error| self.failure(format!("member {slot} cannot join: {error}")))?;
        self.start_member_as(slot, Boot::Join(joined)).await
    }

    /// At the end of the faults: every member of the cluster runs (one
    /// added with an unknown outcome is started now), and every member
    /// removed is stopped.
    pub(super) async fn reconcile_members(&mut self) -> Result<(), SimFailure> {
        let Some(membership) = self.cluster_membership() else {
            return Ok(());
        };
        self.learn_member_ids(&membership);
        let removed = membership.to_stored().removed_ids;
        for slot in 0..self.members.len() {
            let id = self.members[slot].id;
            if removed.contains(&id) {
                self.stop_member(slot);
            } else if membership.contains(id) && self.members[slot].running.is_none() {
                if self.members[slot].has_started() {
                    self.start_member(slot).await?;
                } else {
                    self.join(slot).await?;
                }
            }
        }
        Ok(())
    }

    /// Member `slot` is gone for good: it applied its removal and stopped,
    /// or the operator stops it.
    pub(super) fn stop_member(&mut self, slot: usize) {
        self.members[slot].removed = true;
        if self.members[slot].running.take().is_some() {
            self.disconnected(slot);
            self.calls_lost(slot);
        }
    }
}
