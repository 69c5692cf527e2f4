//! The leader's periodic corruption check (etcd's `monitorKVHash` and
//! `checkHashKV`, every `--experimental-corrupt-check-time`): the leader's
//! HashKV, the peers asked for theirs at its revision (by the transport, off
//! the core), then, once everything committed when they answered is applied
//! here too, the leader's HashKV again; any mismatch
//! (`corruption::periodic_mismatches`) raises the CORRUPT alarm through raft.
//! Also the answers to peers' HashKV queries. Every hash is taken as
//! Maintenance.HashKV's is: in bounded steps on the core between events
//! (`stepped_read`), never while applying.

use std::time::{Duration, Instant};

use raft::StateRole;
use ringkv_engine::mvcc::KvHash;
use ringkv_proto::etcdserverpb as pb;
use ringkv_proto::ringkvpb::{raft_request, HashKvRefusal};

use super::super::corruption::{self, PeriodicMismatch};
use super::super::messages::Response;
use super::super::outbox::Effect;
use super::super::stepped_read::{ReadFor, SteppedRead};
use super::StoreCore;
use crate::apply::ApplyError;
use crate::etcd_error::EtcdError;
use crate::peer::hash_kv;
use crate::peer::PeerHashKv;

/// When checks run, and the one running.
pub(super) struct PeriodicCheck {
    /// None: off (`--experimental-corrupt-check-time` 0).
    interval: Option<Duration>,
    /// No check starts before this: an interval after the last one ended.
    next_at: Instant,
    running: Option<Running>,
    /// Checks started so far: the next one's number.
    started: u64,
}

/// A check between its start and its verdict. Its hashes are taken in steps
/// on the core (`SteppedRead::HashKv`), like a client's HashKV.
struct Running {
    number: u64,
    /// The term it started in, as leader: in another term it ends unjudged.
    term: u64,
    /// The leader's first hash, once taken.
    first: Option<KvHash>,
    answered: Option<Answered>,
    /// The second hash is being taken.
    second_asked: bool,
}

/// What the peers said, and what must be applied before the second hash.
struct Answered {
    answers: Vec<PeerHashKv>,
    /// The commit index when the answers came: every entry a peer had applied
    /// when it answered is at or below it.
    commit_index: u64,
    /// The wait for it ends here (etcd's request timeout).
    deadline: Instant,
}

impl PeriodicCheck {
    pub(super) fn new(interval: Option<Duration>, now: Instant) -> PeriodicCheck {
        PeriodicCheck {
            interval,
            next_at: now + interval.unwrap_or_default(),
            running: None,
            started: 0,
        }
    }

    /// A check should start.
    fn due(&self, now: Instant) -> bool {
        self.running.is_none() && self.interval.is_some() && now >= self.next_at
    }

    /// The next check is an interval from `now`.
    fn rest(&mut self, now: Instant) {
        self.next_at = now + self.interval.unwrap_or_default();
    }

    /// Starts a check, whose first hash is asked now; its number.
    fn start(&mut self, term: u64) -> u64 {
        assert!(self.running.is_none(), "one check at a time");
        let number = self.started;
        self.started += 1;
        self.running = Some(Running {
            number,
            term,
            first: None,
            answered: None,
            second_asked: false,
        });
        number
    }

    /// The running check, if it is check `number`.
    fn running_as(&mut self, number: u64) -> Option<&mut Running> {
        self.running.as_mut().filter(|running| running.number == number)
    }

    /// The term of the running check.
    fn running_term(&self) -> Option<u64> {
        self.running.as_ref().map(|running| running.term)
    }

    /// The running check's answers are in; false if `number` is not it (it
    /// ended meanwhile).
    fn answered(&mut self, number: u64, answers: Vec<PeerHashKv>, commit_index: u64, deadline: Instant) -> bool {
        match &mut self.running {
            Some(running) if running.number == number && running.answered.is_none() => {
                running.answered = Some(Answered {
                    answers,
                    commit_index,
                    deadline,
                });
                true
            }
            _ => false,
        }
    }

    /// True if the running check's wait for its commit index is over.
    fn overdue(&self, now: Instant) -> bool {
        self.running
            .as_ref()
            .filter(|running| !running.second_asked)
            .and_then(|running| running.answered.as_ref())
            .is_some_and(|answered| now > answered.deadline)
    }

    /// The running check's number once `applied` has reached its commit
    /// index, when its second hash is to be asked (once).
    fn settled(&mut self, applied: u64) -> Option<u64> {
        let running = self.running.as_mut()?;
        let settled = running
            .answered
            .as_ref()
            .is_some_and(|answered| applied >= answered.commit_index);
        if !settled || running.second_asked {
            return None;
        }
        running.second_asked = true;
        Some(running.number)
    }

    /// Ends check `number` once its second hash is in: its first hash and the
    /// answers, for the verdict.
    fn take_judged(&mut self, number: u64, now: Instant) -> Option<(KvHash, Vec<PeerHashKv>)> {
        let running = self
            .running
            .take_if(|running| running.number == number && running.second_asked)?;
        self.rest(now);
        let first = running.first.expect("a second hash comes after the first");
        let answered = running.answered.expect("a second hash comes after the answers");
        Some((first, answered.answers))
    }

    /// Ends the running check without a verdict.
    fn abandon(&mut self, now: Instant) {
        self.running = None;
        self.rest(now);
    }
}

impl StoreCore {
    /// On every raft tick: ends a check whose leadership or time ran out,
    /// starts one when due and this member leads (etcd checks on the leader
    /// only).
    pub(super) fn corrupt_check_tick(&mut self) {
        if let Some(term) = self.corrupt_check.running_term() {
            if !self.leads_in(term) {
                tracing::warn!(error = "not leader", "failed to check hash KV");
                self.corrupt_check.abandon(self.now);
            } else if self.corrupt_check.overdue(self.now) {
                tracing::warn!(error = "etcdserver: request timed out", "failed to check hash KV");
                self.corrupt_check.abandon(self.now);
            }
        }
        if !self.corrupt_check.due(self.now) {
            return;
        }
        let term = self.raw.raft.term;
        // A leader that has not committed in its term may not know the commit
        // index yet: the check waits for the next interval.
        if !self.leads_in(term) || !self.raw.raft.commit_to_current_term() {
            self.corrupt_check.rest(self.now);
            return;
        }
        let check = self.corrupt_check.start(term);
        self.serve_stepped(ReadFor::CorruptCheck { check }, SteppedRead::HashKv(0));
    }

    /// One of check `check`'s own hashes is in: after the first, the peers
    /// are asked for theirs at its revision; after the second, the verdict.
    pub(super) fn corrupt_check_hashed(&mut self, check: u64, hashed: Result<Response, ApplyError>) {
        let hash = match self.client_result(hashed) {
            Ok(Response::HashKv(response)) => KvHash {
                hash: response.hash,
                compact_revision: response.compact_revision,
                hash_revision: response.hash_revision,
            },
            other => unreachable!("the current revision's HashKV is a hash, not {other:?}"),
        };
        let Some(running) = self.corrupt_check.running_as(check) else {
            return; // ended meanwhile
        };
        if running.first.is_some() {
            return self.judge_corrupt_check(check, hash);
        }
        running.first = Some(hash);
        let peers = self.membership.peers_of(self.settings.member_id);
        self.outbox.push(Effect::AskHashKvs {
            check,
            revision: hash.hash_revision,
            peers,
            timeout: self.settings.request_timeout,
        });
    }

    /// The peers answered check `check`: its verdict once everything
    /// committed now is applied here (etcd waits for a linearizable read).
    pub(super) fn corrupt_check_answered(&mut self, check: u64, answers: Vec<PeerHashKv>) {
        let commit_index = self.raw.raft.raft_log.committed;
        let deadline = self.now + self.settings.request_timeout;
        if self.corrupt_check.answered(check, answers, commit_index, deadline) {
            self.finish_corrupt_check();
        }
    }

    /// Once the running check has settled, the leader's second hash is
    /// asked.
    pub(super) fn finish_corrupt_check(&mut self) {
        let Some(term) = self.corrupt_check.running_term() else {
            return;
        };
        if !self.leads_in(term) {
            return; // ended at the next tick
        }
        if let Some(check) = self.corrupt_check.settled(self.mvcc.applied_index()) {
            self.serve_stepped(ReadFor::CorruptCheck { check }, SteppedRead::HashKv(0));
        }
    }

    /// The verdict of check `check`, with the leader's second hash: every
    /// mismatch warned about as etcd does, CORRUPT raised if there is one.
    fn judge_corrupt_check(&mut self, check: u64, second: KvHash) {
        let Some(term) = self.corrupt_check.running_term() else {
            return;
        };
        if !self.leads_in(term) {
            return; // ended at the next tick
        }
        let Some((first, answers)) = self.corrupt_check.take_judged(check, self.now) else {
            return;
        };
        let mismatches = corruption::periodic_mismatches(first, second, &answers);
        for mismatch in &mismatches {
            warn_mismatch(first, second, mismatch);
        }
        if !mismatches.is_empty() {
            self.raise_corrupt();
        }
        tracing::info!(
            number_of_peers_checked = corruption::peers_checked(&answers),
            "finished peer corruption check"
        );
    }

    /// Proposes the CORRUPT alarm unless it is raised already. Its member is
    /// 0, as etcd 3.4 raises it: which member's data is bad is not known.
    fn raise_corrupt(&mut self) {
        let active = self
            .mvcc
            .alarms()
            .any(|alarm| alarm.member_id == 0 && alarm.kind == pb::AlarmType::Corrupt as i32);
        if active {
            return;
        }
        let alarm = pb::AlarmRequest {
            action: pb::alarm_request::AlarmAction::Activate as i32,
            member_id: 0,
            alarm: pb::AlarmType::Corrupt as i32,
        };
        // No waiter; a proposal that does not commit is made again by the
        // next check that finds the mismatch.
        if let Err(error) = self.propose_entry(raft_request::Request::Alarm(alarm)) {
            self.metrics.proposals_failed += 1;
            tracing::warn!(%error, "the CORRUPT alarm could not be proposed");
        }
    }

    /// A peer's HashKV query, hashed in steps as a client's HashKV is.
    pub(super) fn hash_kv_asked(&mut self, query: u64, from: u64, revision: i64) {
        self.serve_stepped(ReadFor::PeerHashKv { query, from }, SteppedRead::HashKv(revision));
    }

    /// The answer to a peer's HashKV query, as etcd's `/members/hashkv`
    /// handler answers: the HashKV at the revision asked, or why not.
    pub(super) fn answer_hash_kv_query(&mut self, query: u64, from: u64, hashed: Result<Response, ApplyError>) {
        // A storage failure stops the server here, as for a client's HashKV.
        let answer = match self.client_result(hashed) {
            Ok(Response::HashKv(response)) => hash_kv::hashed(KvHash {
                hash: response.hash,
                compact_revision: response.compact_revision,
                hash_revision: response.hash_revision,
            }),
            Err(EtcdError::Compacted) => hash_kv::refused(HashKvRefusal::HashKvCompacted),
            Err(EtcdError::FutureRev) => hash_kv::refused(HashKvRefusal::HashKvFutureRevision),
            other => unreachable!("a HashKV answers a hash, compacted or future revision, not {other:?}"),
        };
        tracing::debug!(from = format_args!("{from:x}"), "answered a peer's HashKV query");
        self.outbox.push(Effect::AnswerHashKv { query, answer });
    }

    /// This member leads, in `term`.
    fn leads_in(&self, term: u64) -> bool {
        self.raw.raft.state == StateRole::Leader && self.raw.raft.term == term
    }
}

/// etcd's warning for one mismatch, with its fields.
fn warn_mismatch(first: KvHash, second: KvHash, mismatch: &PeriodicMismatch) {
    match *mismatch {
        PeriodicMismatch::OwnHashChanged { .. } => tracing::warn!(
            revision_1 = first.hash_revision,
            compact_revision_1 = first.compact_revision,
            hash_1 = first.hash,
            revision_2 = second.hash_revision,
            compact_revision_2 = second.compact_revision,
            hash_2 = second.hash,
            "found hash mismatch"
        ),
        PeriodicMismatch::PeerRevisionAhead { peer, revision } => tracing::warn!(
            leader_revision = second.hash_revision,
            follower_revision = revision,
            follower_peer_id = format_args!("{peer:x}"),
            "revision from follower must be less than or equal to leader's"
        ),
        PeriodicMismatch::PeerCompactionAhead { peer, compact_revision } => tracing::warn!(
            leader_compact_revision = second.compact_revision,
            follower_compact_revision = compact_revision,
            follower_peer_id = format_args!("{peer:x}"),
            "compact revision from follower must be less than or equal to leader's"
        ),
        PeriodicMismatch::HashDiffers { peer, hash } => tracing::warn!(
            leader_compact_revision = second.compact_revision,
            leader_hash = first.hash,
            follower_compact_revision = first.compact_revision,
            follower_hash = hash,
            follower_peer_id = format_args!("{peer:x}"),
            "same compact revision then hashes must match"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(hash: u32) -> KvHash {
        KvHash {
            hash,
            compact_revision: -1,
            hash_revision: 5,
        }
    }

    /// Starts a check and gives it its first hash, as the store core does.
    fn start_hashed(check: &mut PeriodicCheck, first: KvHash) -> u64 {
        let number = check.start(3);
        check.running_as(number).expect("running").first = Some(first);
        number
    }

    #[test]
    fn checks_run_an_interval_apart_one_at_a_time() {
        let start = Instant::now();
        let second = Duration::from_secs(1);
        let mut check = PeriodicCheck::new(Some(second), start);
        assert!(!check.due(start));
        assert!(check.due(start + second));
        let number = start_hashed(&mut check, hash(1));
        assert!(!check.due(start + 5 * second), "one at a time");
        assert!(check.answered(number, Vec::new(), 10, start + 9 * second));
        assert_eq!(check.settled(9), None, "index 10 not applied");
        assert!(check.take_judged(number, start).is_none(), "no second hash asked");
        assert_eq!(check.settled(10), Some(number));
        assert_eq!(check.settled(11), None, "the second hash is asked once");
        assert!(!check.overdue(start + 60 * second), "hashing, not waiting");
        let (first, answers) = check.take_judged(number, start + 2 * second).expect("judged");
        assert_eq!(first, hash(1));
        assert!(answers.is_empty());
        assert!(!check.due(start + 2 * second), "an interval after the last one ended");
        assert!(check.due(start + 3 * second));
    }

    #[test]
    fn answers_to_an_ended_check_are_ignored() {
        let start = Instant::now();
        let mut check = PeriodicCheck::new(Some(Duration::from_secs(1)), start);
        let first = start_hashed(&mut check, hash(1));
        check.abandon(start);
        assert!(check.running_as(first).is_none(), "a late hash finds no check");
        let next = start_hashed(&mut check, hash(2));
        assert!(!check.answered(first, Vec::new(), 10, start));
        assert!(check.answered(next, Vec::new(), 10, start));
        assert!(!check.answered(next, Vec::new(), 10, start), "answered once");
    }

    #[test]
    fn a_check_waiting_past_its_deadline_is_overdue() {
        let start = Instant::now();
        let mut check = PeriodicCheck::new(Some(Duration::from_secs(1)), start);
        let number = start_hashed(&mut check, hash(1));
        assert!(
            !check.overdue(start + Duration::from_secs(60)),
            "asking has its own timeouts"
        );
        check.answered(number, Vec::new(), 10, start + Duration::from_secs(7));
        assert!(!check.overdue(start + Duration::from_secs(7)));
        assert!(check.overdue(start + Duration::from_secs(8)));
    }

    #[test]
    fn without_an_interval_no_check_is_ever_due() {
        let start = Instant::now();
        let check = PeriodicCheck::new(None, start);
        assert!(!check.due(start + Duration::from_secs(3600)));
    }
}
